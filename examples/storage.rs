//! Object storage: upload, presign, temporary uploads, sweep.
//!
//! ```sh
//! cargo run --example storage            # local filesystem (a temporary directory)
//! R2_ENDPOINT=… R2_ACCESS_KEY_ID=… R2_SECRET_ACCESS_KEY=… cargo run --example storage
//! ```
//!
//! Runs offline on the local filesystem by default; on R2/S3 when `R2_*` (or the
//! standard `AWS_*`) variables are set.
#![allow(clippy::print_stdout, reason = "an example talks to its reader")]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use platform::core::{EnvMap, ManualClock};
use platform::storage::bytes::Bytes;
use platform::storage::{
    BucketCatalog, LocalHttpRequest, LocalObjectStore, ObjectStoreExt as _, PutOptions, S3ObjectStoreBuilder,
    Storage, UploadPurpose,
};

#[tokio::main]
async fn main() -> platform::Result<()> {
    let env = EnvMap::from_env();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A manual clock so the example can jump past the 24 h TTL instead of waiting.
    let clock = ManualClock::at_unix(i64::try_from(now).unwrap_or(0));
    let catalog = BucketCatalog::from_env_map(&env)?;

    let s3 = S3ObjectStoreBuilder::from_env_map(&env).with_clock(clock.shared());
    let temp_dir = std::env::temp_dir().join(format!("platform-storage-example-{}", std::process::id()));
    let (storage, local) = if s3.is_configured() {
        println!("storage: R2/S3 (configured by R2_*/AWS_* variables)");
        (Storage::new(Arc::new(s3.build()?), catalog, clock.shared()), None)
    } else {
        println!("storage: local filesystem under {}", temp_dir.display());
        let store = Arc::new(LocalObjectStore::new(&temp_dir)?.with_clock(clock.shared()));
        (Storage::new(store.clone(), catalog, clock.shared()), Some(store))
    };
    storage.ensure_buckets().await?;
    if local.is_some() {
        // On R2, lifecycle rules are applied once by an operator; locally they are just recorded.
        storage.apply_lifecycle().await?;
    }

    // 1. Upload: the product comes from the bucket catalogue, uploaded-at from the clock.
    let meta = storage
        .upload(
            "arbor-artifacts",
            "examples/run-1/output.json",
            Bytes::from_static(br#"{"ok":true}"#),
            PutOptions::new().with_content_type("application/json"),
        )
        .await?;
    println!(
        "  uploaded {} ({} bytes), metadata {:?}",
        meta.key, meta.size, meta.metadata
    );

    // 2. A presigned download URL, valid for 5 minutes.
    let url = storage
        .presign_download(
            "arbor-artifacts",
            "examples/run-1/output.json",
            Duration::from_secs(300),
        )
        .await?;
    // Its Debug form hides the query: the signature is a credential.
    println!("  presigned GET, expires {}: {url:?}", url.expires_at);

    // 3. Temporary uploads: a slot (presigned PUT pinned to type and length), the upload, promote.
    let temp = storage.temp_uploads();
    let refused = temp
        .issue(
            UploadPurpose::TempUploads,
            "huge.bin",
            "application/octet-stream",
            60 * 1024 * 1024,
        )
        .await;
    println!("  a 60 MiB slot is refused: {}", refused.is_err());
    let body = Bytes::from_static(b"\x89PNG preview");
    let slot = temp
        .issue(
            UploadPurpose::PreviewFiles,
            "preview.png",
            "image/png",
            body.len() as u64,
        )
        .await?;
    println!("  upload slot {} expires {}", slot.key, slot.expires_at);
    upload_through_slot(&storage, local.as_deref(), &slot, body.clone()).await?;
    let promoted = temp
        .promote(&slot, "kumori-images", "examples/preview.png")
        .await?;
    println!(
        "  promoted to kumori-images/{} with {:?}",
        promoted.key, promoted.metadata
    );

    // 4. An upload nobody promotes is swept once its TTL has passed.
    let abandoned = temp
        .issue(UploadPurpose::ExportQueue, "export.csv", "text/csv", 3)
        .await?;
    upload_through_slot(&storage, local.as_deref(), &abandoned, Bytes::from_static(b"a,b")).await?;
    println!("  sweep now: {} expired", temp.sweep_expired().await?);
    clock.advance(Duration::from_secs(25 * 3600));
    println!("  sweep 25 h later: {} expired", temp.sweep_expired().await?);
    let left = storage.store().list_all("platform-temp", "tmp/").await?;
    println!("  temporary uploads left: {}", left.len());

    if local.is_some() {
        let _ = std::fs::remove_dir_all(&temp_dir);
    }
    Ok(())
}

/// What a browser does with the slot. Locally, the store's presigned handler serves the
/// PUT; on R2/S3 a client would PUT to `slot.upload.url` (this example has no HTTP
/// client, so it writes the same object through the store).
async fn upload_through_slot(
    storage: &Storage,
    local: Option<&LocalObjectStore>,
    slot: &platform::storage::UploadSlot,
    body: Bytes,
) -> platform::Result<()> {
    match local {
        Some(store) => {
            let mut req = LocalHttpRequest::new("PUT", &slot.upload.url).with_body(body);
            for (k, v) in &slot.upload.headers {
                req = req.with_header(k, v);
            }
            let resp = store.handle_presigned(req).await;
            println!("  PUT {} -> HTTP {}", slot.key, resp.status);
            Ok(())
        }
        None => {
            let opts = PutOptions::new().with_content_type(slot.content_type.clone());
            storage
                .store()
                .put(&slot.bucket, &slot.key, body, opts)
                .await
                .map(|_| ())
        }
    }
}
