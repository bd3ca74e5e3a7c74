//! The behaviour suite against [`LocalObjectStore`], plus filesystem-specific checks:
//! atomic writes leave no temporary files, objects survive a reopen, nothing is
//! written outside the root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use platform_core::{Error, ErrorKind, ManualClock};
use platform_storage::conformance::{Harness, InProcessClient};
use platform_storage::{
    BodyStream, LocalObjectStore, ObjectStore, ObjectStoreExt as _, PutOptions, Storage, UploadPurpose,
    body_in_chunks,
};

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(chrono::Utc::now());
    let store = Arc::new(
        LocalObjectStore::new(dir.path())
            .unwrap()
            .with_clock(clock.shared()),
    );
    let handler = store.clone();
    let http = InProcessClient::new(Box::new(move |req| {
        let _keep_dir_alive = &dir;
        let store = handler.clone();
        Box::pin(async move { store.handle_presigned(req).await })
    }));
    Harness::new(store, clock, Arc::new(http)).await
}

platform_storage::object_store_conformance!(harness());

fn files_under(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The keys `list_all` finds in `bucket`, in its order.
async fn listed_keys(store: &LocalObjectStore, bucket: &str) -> Vec<String> {
    let objects = store.list_all(bucket, "").await.unwrap();
    objects.into_iter().map(|m| m.key).collect()
}

#[tokio::test]
async fn writes_are_atomic_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = LocalObjectStore::new(&root).unwrap();
    store.create_bucket("fs-bucket").await.unwrap();
    for key in ["a", "a/b", "a/b/c.txt", "weird name ü.txt", "dir/"] {
        store
            .put(
                "fs-bucket",
                key,
                Bytes::from(key.to_owned()),
                PutOptions::new().with_metadata("k", "v"),
            )
            .await
            .unwrap();
    }
    // A failing stream leaves neither an object nor a temporary file.
    let failing: BodyStream = Box::pin(futures::StreamExt::chain(
        body_in_chunks(Bytes::from(vec![1u8; 100_000]), 1000),
        futures::stream::once(async { Err(Error::new(ErrorKind::Unavailable, "cut")) }),
    ));
    assert!(
        store
            .put_stream("fs-bucket", "partial", failing, PutOptions::new())
            .await
            .is_err()
    );
    // Nor does a put cancelled mid-stream (its future dropped: a timeout, a client
    // gone), once its first chunks were written.
    let (written, stalled_now) = tokio::sync::oneshot::channel();
    let stalled: BodyStream = Box::pin(futures::StreamExt::chain(
        body_in_chunks(Bytes::from(vec![2u8; 10_000]), 1000),
        futures::stream::once(async move {
            let _ = written.send(());
            futures::future::pending::<Result<Bytes, Error>>().await
        }),
    ));
    tokio::select! {
        _ = store.put_stream("fs-bucket", "cancelled", stalled, PutOptions::new()) => {
            panic!("a put whose body never ends cannot finish")
        }
        _ = stalled_now => {}
    }
    let files = files_under(&root);
    assert_eq!(files.len(), 5, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.starts_with(&root) && f.extension().is_some_and(|e| e == "obj")),
        "{files:?}"
    );

    let reopened = LocalObjectStore::new(&root).unwrap();
    assert_eq!(
        reopened.get_bytes("fs-bucket", "a/b").await.unwrap(),
        Bytes::from_static(b"a/b")
    );
    assert_eq!(
        listed_keys(&reopened, "fs-bucket").await,
        ["a", "a/b", "a/b/c.txt", "dir/", "weird name ü.txt"]
    );
    assert_eq!(
        reopened
            .head("fs-bucket", "a")
            .await
            .unwrap()
            .metadata
            .get("k")
            .map(String::as_str),
        Some("v")
    );
}

/// An object file that cannot be read (here cut short) fails a listing with the
/// reason, as it fails `head`: it is not silently left out of the list. A file that is
/// not an object file is ignored. Each error names what the call acted on.
#[tokio::test]
async fn a_corrupt_object_fails_the_listing_instead_of_vanishing_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalObjectStore::new(dir.path()).unwrap();
    store.create_bucket("fs-bucket").await.unwrap();
    let put = |key| store.put("fs-bucket", key, Bytes::from_static(b"body"), PutOptions::new());
    put("cut").await.unwrap();
    let [cut_file] = files_under(dir.path()).try_into().unwrap();
    put("kept").await.unwrap();
    // A stray file beside the objects (a `.DS_Store`) is not an object: not listed.
    std::fs::write(cut_file.with_file_name(".DS_Store"), b"finder").unwrap();
    assert_eq!(listed_keys(&store, "fs-bucket").await, ["cut", "kept"]);
    std::fs::write(&cut_file, b"xy").unwrap();
    for (err, subject) in [
        (
            store.list_all("fs-bucket", "").await.unwrap_err(),
            r#"(bucket "fs-bucket")"#,
        ),
        (
            store.head("fs-bucket", "cut").await.unwrap_err(),
            r#"(object "cut" in bucket "fs-bucket")"#,
        ),
    ] {
        assert_eq!(err.kind(), ErrorKind::Unexpected, "{err}");
        assert!(err.to_string().contains("corrupt local object file"), "{err}");
        assert!(err.message().ends_with(subject), "{err}");
    }
}

/// The temporary file of a write whose process died (never removed, not written to
/// for a day) is deleted when the bucket is created again at start-up; a fresh one,
/// maybe another process's write in progress, is kept.
#[tokio::test]
async fn a_dead_writers_temporary_file_is_swept_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalObjectStore::new(dir.path()).unwrap();
    store.create_bucket("tmp-bucket").await.unwrap();
    let tmp = dir.path().join("tmp-bucket").join(".tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let (stale, fresh) = (tmp.join("stale"), tmp.join("fresh"));
    let old = std::time::SystemTime::now()
        - platform_storage::local::STALE_TEMP
        - std::time::Duration::from_secs(60);
    std::fs::File::create(&stale).unwrap().set_modified(old).unwrap();
    std::fs::File::create(&fresh).unwrap();
    LocalObjectStore::new(dir.path())
        .unwrap()
        .create_bucket("tmp-bucket")
        .await
        .unwrap();
    assert!(!stale.exists(), "the dead writer's file is gone");
    assert!(fresh.exists(), "a recent one is kept");
}

/// A write the filesystem refuses fails with the operating system's reason and the
/// object in the message (here the bucket's temporary directory was replaced by a
/// file), and stores nothing; so does a lifecycle write.
#[tokio::test]
async fn a_refused_write_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalObjectStore::new(dir.path()).unwrap();
    store.create_bucket("io-bucket").await.unwrap();
    let tmp = dir.path().join("io-bucket").join(".tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::write(&tmp, b"not a directory").unwrap();
    let err = store
        .put("io-bucket", "k", Bytes::from_static(b"x"), PutOptions::new())
        .await
        .unwrap_err();
    // "File exists (os error 17)" on Linux: the directory cannot be created.
    assert!(
        err.message().contains("during put: ") && err.message().contains("os error"),
        "{err}"
    );
    assert!(
        err.message().ends_with(r#"(object "k" in bucket "io-bucket")"#),
        "{err}"
    );
    assert_eq!(
        store.head("io-bucket", "k").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let err = store.put_lifecycle("io-bucket", &[]).await.unwrap_err();
    assert_eq!(err.operation(), Some("put_lifecycle"), "{err}");
    assert!(err.message().ends_with(r#"(bucket "io-bucket")"#), "{err}");
}

/// A signer given with its secret keeps it when the clock is set afterwards: its URLs
/// verify in another process (or after a restart) holding the same secret.
#[tokio::test]
async fn a_configured_signer_keeps_its_secret_across_with_clock() {
    use platform_storage::{PresignOptions, UrlSigner};
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(chrono::Utc::now());
    let base = "http://127.0.0.1:8787/storage";
    let signer = || UrlSigner::new(platform_core::SecretString::from("shared"), base, clock.shared());
    let store = LocalObjectStore::new(dir.path())
        .unwrap()
        .with_signer(signer())
        .with_clock(clock.shared());
    let req = store
        .presign(
            "bkt",
            "k",
            PresignOptions::get(std::time::Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let verified = signer().verify(&req.url).unwrap();
    assert_eq!((verified.bucket.as_str(), verified.key.as_str()), ("bkt", "k"));
}

#[tokio::test]
async fn traversal_never_touches_files_outside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("inner");
    let store = LocalObjectStore::new(&root).unwrap();
    store.create_bucket("fs-bucket").await.unwrap();
    std::fs::write(dir.path().join("victim"), b"keep").unwrap();
    for key in ["../victim", "../../inner/victim", "/tmp/victim"] {
        let err = store
            .put("fs-bucket", key, Bytes::from_static(b"x"), PutOptions::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{key}");
        assert_eq!(
            store.delete("fs-bucket", key).await.unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
    assert_eq!(std::fs::read(dir.path().join("victim")).unwrap(), b"keep");
    assert!(store.create_bucket("..").await.is_err());
}

#[tokio::test]
async fn storage_local_default_uploads_presigns_and_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::local(dir.path()).unwrap();
    storage.ensure_buckets().await.unwrap();
    storage.apply_lifecycle().await.unwrap();
    let meta = storage
        .upload(
            "arbor-artifacts",
            "runs/1/out.json",
            Bytes::from_static(b"{}"),
            PutOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(meta.metadata.get("product").map(String::as_str), Some("arbor"));
    let slot = storage
        .temp_uploads()
        .issue(UploadPurpose::TempUploads, "x.txt", "text/plain", 5)
        .await
        .unwrap();
    assert!(
        slot.upload
            .url
            .starts_with("http://127.0.0.1/local/platform-temp/tmp/temp-uploads/")
    );
    assert_eq!(storage.temp_uploads().sweep_expired().await.unwrap(), 0);
}
