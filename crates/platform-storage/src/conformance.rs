//! The behaviour suite of [`ObjectStore`](crate::ObjectStore) and [`TempUploads`]: one free async function
//! per `# Behavior` bullet, over a [`Harness`] holding a `&dyn ObjectStore`, and
//! [`object_store_conformance!`](crate::object_store_conformance) to generate one named
//! `#[tokio::test]` per case for an implementation.
//!
//! ```text
//! async fn harness() -> Harness { /* store + manual clock + presigned HTTP client */ }
//! platform_storage::object_store_conformance!(harness());
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test suite fails loudly"
)]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use platform_core::{Clock as _, Error, ErrorKind, ManualClock, Product, Result};

use crate::catalog::{BucketCatalog, BucketConfig};
use crate::presign::{LocalHttpRequest, LocalHttpResponse};
use crate::storage::{PRODUCT, Storage, UPLOADED_AT};
use crate::temp::{TempUploads, TempUploadsConfig, UploadPurpose};
use crate::types::{
    BodyStream, ByteRange, GetOptions, LifecycleRule, ListOptions, PresignMethod, PresignOptions,
    PresignedRequest, PutOptions, body_in_chunks,
};
use crate::{DynObjectStore, ObjectStoreExt as _};

/// Performs presigned requests as a browser would: a plain HTTP client for real
/// servers, or the in-process handler of a local store.
#[async_trait]
pub trait PresignedClient: Send + Sync + fmt::Debug {
    /// Sends `method` to `url` with `headers` (the client sets `Content-Length` from
    /// the body itself) and returns the status and body.
    async fn send(
        &self,
        method: PresignMethod,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> (u16, Bytes);
}

/// The handler of a store that serves its own presigned URLs in process, such as
/// `LocalObjectStore::handle_presigned`.
pub type PresignedHandler =
    Box<dyn Fn(LocalHttpRequest) -> BoxFuture<'static, LocalHttpResponse> + Send + Sync>;

/// A [`PresignedClient`] for stores that serve presigned URLs in process: builds the
/// request a browser would send (with `Content-Length` from the body) and hands it to
/// the handler.
pub struct InProcessClient(PresignedHandler);

impl InProcessClient {
    /// A client over `handler`.
    pub fn new(handler: PresignedHandler) -> Self {
        Self(handler)
    }
}

impl fmt::Debug for InProcessClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessClient").finish_non_exhaustive()
    }
}

#[async_trait]
impl PresignedClient for InProcessClient {
    async fn send(
        &self,
        method: PresignMethod,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> (u16, Bytes) {
        let mut req = LocalHttpRequest::new(method.as_str(), url)
            .with_header("content-length", body.len().to_string())
            .with_body(body);
        for (k, v) in headers {
            req = req.with_header(k, v);
        }
        let resp = (self.0)(req).await;
        (resp.status, resp.body)
    }
}

/// What one case needs: the store under test (whose clock is `clock`), a presigned
/// HTTP client, and two fresh buckets.
#[derive(Debug, Clone)]
pub struct Harness {
    /// The store under test.
    pub store: DynObjectStore,
    /// The store's clock (set to the real time for real servers).
    pub clock: ManualClock,
    /// Performs presigned requests.
    pub http: Arc<dyn PresignedClient>,
    /// A fresh bucket.
    pub bucket: String,
    /// Another fresh bucket.
    pub other_bucket: String,
    /// Whether the server implements bucket lifecycle (s3s-fs does not: it must then
    /// answer `Unsupported`).
    pub supports_lifecycle: bool,
    /// Whether a put into a missing bucket fails with `NotFound` (S3, R2 and the local
    /// implementations do; s3s-fs creates the object anyway).
    pub checks_bucket_on_put: bool,
}

impl Harness {
    /// Creates two uniquely named buckets on `store`.
    pub async fn new(store: DynObjectStore, clock: ManualClock, http: Arc<dyn PresignedClient>) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let bucket = format!("conf-{}", &id[..12]);
        let other_bucket = format!("conf-{}-b", &id[..12]);
        store.create_bucket(&bucket).await.unwrap();
        store.create_bucket(&other_bucket).await.unwrap();
        Self {
            store,
            clock,
            http,
            bucket,
            other_bucket,
            supports_lifecycle: true,
            checks_bucket_on_put: true,
        }
    }

    /// Marks the server as accepting puts into missing buckets (s3s-fs).
    #[must_use]
    pub fn without_bucket_check_on_put(mut self) -> Self {
        self.checks_bucket_on_put = false;
        self
    }

    /// Marks the server as lacking lifecycle support.
    #[must_use]
    pub fn without_lifecycle(mut self) -> Self {
        self.supports_lifecycle = false;
        self
    }

    async fn send(&self, req: &PresignedRequest, body: Bytes) -> (u16, Bytes) {
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("content-length"))
            .cloned()
            .collect();
        self.http.send(req.method, &req.url, &headers, body).await
    }
}

fn assert_kind<T: fmt::Debug>(result: Result<T>, kind: ErrorKind, what: &str) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "{what}: {e}"),
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
    }
}

/// Deterministic test data.
pub fn data(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| {
                (i as u64)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(u64::from(seed)) as u8
            })
            .collect::<Vec<u8>>(),
    )
}

/// `put` then `head`/`get`: content, type, cache control and metadata round-trip.
pub async fn put_round_trips_metadata(h: &Harness) {
    let s = &h.store;
    let opts = PutOptions::new()
        .with_content_type("text/plain; charset=utf-8")
        .with_cache_control("max-age=60")
        .with_metadata("owner", "user-1")
        .with_metadata("uploaded-at", "2026-11-27T00:00:00Z");
    let put = s
        .put(&h.bucket, "docs/hello.txt", Bytes::from_static(b"hello"), opts)
        .await
        .unwrap();
    assert_eq!(put.size, 5);
    assert!(put.etag.is_some());
    let head = s.head(&h.bucket, "docs/hello.txt").await.unwrap();
    assert_eq!(head.size, 5);
    assert_eq!(head.content_type.as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(head.cache_control.as_deref(), Some("max-age=60"));
    assert_eq!(head.metadata.get("owner").map(String::as_str), Some("user-1"));
    assert_eq!(
        head.metadata.get("uploaded-at").map(String::as_str),
        Some("2026-11-27T00:00:00Z")
    );
    assert_eq!(head.etag, put.etag);
    let got = s
        .get(&h.bucket, "docs/hello.txt", GetOptions::new())
        .await
        .unwrap();
    assert_eq!(got.meta.metadata, head.metadata);
    assert_eq!(got.meta.content_type, head.content_type);
    assert_eq!(got.bytes().await.unwrap(), Bytes::from_static(b"hello"));
}

/// Overwriting replaces content and metadata.
pub async fn overwrite_replaces(h: &Harness) {
    let s = &h.store;
    s.put(
        &h.bucket,
        "k",
        Bytes::from_static(b"one"),
        PutOptions::new().with_metadata("v", "1"),
    )
    .await
    .unwrap();
    s.put(&h.bucket, "k", Bytes::from_static(b"second"), PutOptions::new())
        .await
        .unwrap();
    let head = s.head(&h.bucket, "k").await.unwrap();
    assert_eq!(head.size, 6);
    assert!(head.metadata.is_empty(), "{:?}", head.metadata);
    assert_eq!(
        s.get_bytes(&h.bucket, "k").await.unwrap(),
        Bytes::from_static(b"second")
    );
}

/// `create_only` on an existing key is a `Conflict` and leaves the object unchanged.
pub async fn create_only_conflicts(h: &Harness) {
    let s = &h.store;
    s.put(
        &h.bucket,
        "once",
        Bytes::from_static(b"first"),
        PutOptions::new().create_only(),
    )
    .await
    .unwrap();
    let again = s
        .put(
            &h.bucket,
            "once",
            Bytes::from_static(b"other"),
            PutOptions::new().create_only(),
        )
        .await;
    assert_kind(again, ErrorKind::Conflict, "create_only on an existing key");
    assert_eq!(
        s.get_bytes(&h.bucket, "once").await.unwrap(),
        Bytes::from_static(b"first")
    );
}

/// Missing keys and buckets are `NotFound`; the error names the missing object.
pub async fn missing_is_not_found(h: &Harness) {
    let s = &h.store;
    for err in [
        s.head(&h.bucket, "nope").await.unwrap_err(),
        s.get(&h.bucket, "nope", GetOptions::new())
            .await
            .map(|g| g.meta)
            .unwrap_err(),
    ] {
        let shown = err.to_string();
        assert!(
            shown.contains("\"nope\"") && shown.contains(&h.bucket),
            "names the object: {shown}"
        );
    }
    assert_kind(
        s.head(&h.bucket, "nope").await,
        ErrorKind::NotFound,
        "head missing",
    );
    assert_kind(
        s.get(&h.bucket, "nope", GetOptions::new()).await.map(|g| g.meta),
        ErrorKind::NotFound,
        "get missing",
    );
    if h.checks_bucket_on_put {
        assert_kind(
            s.put(
                "conf-no-such-bucket",
                "k",
                Bytes::from_static(b"x"),
                PutOptions::new(),
            )
            .await,
            ErrorKind::NotFound,
            "put into a missing bucket",
        );
    }
    assert_kind(
        s.head("conf-no-such-bucket", "k").await,
        ErrorKind::NotFound,
        "head in a missing bucket",
    );
}

/// Ranges return only their bytes; an unsatisfiable range is `InvalidInput`.
pub async fn range_reads(h: &Harness) {
    let s = &h.store;
    let body = data(1000, 1);
    s.put(&h.bucket, "r", body.clone(), PutOptions::new())
        .await
        .unwrap();
    for (range, expect) in [
        (ByteRange::Bounded { start: 10, end: 20 }, body.slice(10..20)),
        (ByteRange::From(990), body.slice(990..)),
        (ByteRange::Suffix(7), body.slice(993..)),
        (
            ByteRange::Bounded {
                start: 995,
                end: 5000,
            },
            body.slice(995..),
        ),
    ] {
        let got = s
            .get(&h.bucket, "r", GetOptions::new().with_range(range))
            .await
            .unwrap();
        assert_eq!(got.meta.size, 1000, "{range:?}");
        let (start, end) = got.range;
        assert_eq!((end - start) as usize, expect.len(), "{range:?}");
        assert_eq!(got.bytes().await.unwrap(), expect, "{range:?}");
    }
    let past = s
        .get(
            &h.bucket,
            "r",
            GetOptions::new().with_range(ByteRange::From(1000)),
        )
        .await
        .map(|g| g.meta);
    assert_kind(past, ErrorKind::InvalidInput, "range past the end");
    for empty in [
        ByteRange::Bounded { start: 0, end: 0 },
        ByteRange::Bounded { start: 10, end: 5 },
        ByteRange::Suffix(0),
    ] {
        let got = s
            .get(&h.bucket, "r", GetOptions::new().with_range(empty))
            .await
            .map(|g| g.meta);
        assert_kind(got, ErrorKind::InvalidInput, &format!("empty range {empty:?}"));
    }
}

/// Deleting is idempotent.
pub async fn delete_is_idempotent(h: &Harness) {
    let s = &h.store;
    s.put(&h.bucket, "gone", Bytes::from_static(b"x"), PutOptions::new())
        .await
        .unwrap();
    s.delete(&h.bucket, "gone").await.unwrap();
    assert_kind(
        s.head(&h.bucket, "gone").await,
        ErrorKind::NotFound,
        "head after delete",
    );
    s.delete(&h.bucket, "gone").await.unwrap();
    s.delete(&h.bucket, "never-existed").await.unwrap();
}

/// `delete_many` removes more keys than one R2 batch (700) holds; missing keys are fine.
pub async fn delete_many_beyond_batch_limit(h: &Harness) {
    let s = &h.store;
    let keys: Vec<String> = (0..705).map(|i| format!("many/{i:04}")).collect();
    futures::stream::iter(keys.clone())
        .for_each_concurrent(16, |k| async move {
            s.put(&h.bucket, &k, Bytes::from_static(b"x"), PutOptions::new())
                .await
                .unwrap();
        })
        .await;
    s.put(&h.bucket, "keep", Bytes::from_static(b"x"), PutOptions::new())
        .await
        .unwrap();
    assert_eq!(s.list_all(&h.bucket, "many/").await.unwrap().len(), 705);
    let mut to_delete = keys.clone();
    to_delete.push("many/missing".to_owned());
    s.delete_many(&h.bucket, &to_delete).await.unwrap();
    assert!(s.list_all(&h.bucket, "many/").await.unwrap().is_empty());
    s.head(&h.bucket, "keep").await.unwrap();
    // An invalid key fails before anything is deleted.
    let bad = vec!["keep".to_owned(), "../escape".to_owned()];
    assert_kind(
        s.delete_many(&h.bucket, &bad).await,
        ErrorKind::InvalidInput,
        "delete_many with ../",
    );
    s.head(&h.bucket, "keep").await.unwrap();
}

/// Listing is by prefix, in key order, and pages chain through the token.
pub async fn list_paginates_by_prefix(h: &Harness) {
    let s = &h.store;
    for k in ["a/3", "a/1", "a/5", "a/2", "a/4", "b/1", "ab"] {
        s.put(&h.bucket, k, Bytes::from(k.to_owned()), PutOptions::new())
            .await
            .unwrap();
    }
    let mut keys = Vec::new();
    let mut opts = ListOptions::new().with_max_keys(2);
    let mut pages = 0;
    loop {
        let page = s.list(&h.bucket, "a/", opts.clone()).await.unwrap();
        pages += 1;
        assert!(page.objects.len() <= 2);
        keys.extend(page.objects.iter().map(|o| (o.key.clone(), o.size)));
        match page.next_token {
            Some(t) => opts = ListOptions::new().with_max_keys(2).after(t),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expect: Vec<(String, u64)> = (1..=5).map(|i| (format!("a/{i}"), 3)).collect();
    assert_eq!(keys, expect);
    // A prefix is a byte prefix: its last segment may be the start of a longer one,
    // `.` or `..` included.
    s.put(&h.bucket, "d/.env", Bytes::from_static(b"x"), PutOptions::new())
        .await
        .unwrap();
    for (prefix, expect) in [("d/.", vec!["d/.env"]), ("d/..", vec![]), (".", vec![])] {
        let listed: Vec<String> = s
            .list_all(&h.bucket, prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(listed, expect, "prefix {prefix:?}");
    }
    assert_kind(
        s.list(&h.bucket, "d/../", ListOptions::new()).await,
        ErrorKind::InvalidInput,
        "a complete '..' segment",
    );
    let all = s.list_all(&h.bucket, "").await.unwrap();
    assert_eq!(all.len(), 8);
    assert_kind(
        s.list(&h.bucket, "", ListOptions::new().with_max_keys(0)).await,
        ErrorKind::InvalidInput,
        "max_keys 0",
    );
}

/// Copy keeps or replaces metadata, works across buckets; a missing source is `NotFound`.
pub async fn copy_keeps_or_replaces_metadata(h: &Harness) {
    let s = &h.store;
    let opts = PutOptions::new()
        .with_content_type("image/png")
        .with_metadata("owner", "u1");
    s.put(&h.bucket, "src.png", data(300, 2), opts).await.unwrap();
    let kept = s
        .copy(&h.bucket, "src.png", &h.other_bucket, "dst.png", None)
        .await
        .unwrap();
    assert_eq!(kept.size, 300);
    let head = s.head(&h.other_bucket, "dst.png").await.unwrap();
    assert_eq!(head.content_type.as_deref(), Some("image/png"));
    assert_eq!(head.metadata.get("owner").map(String::as_str), Some("u1"));
    assert_eq!(
        s.get_bytes(&h.other_bucket, "dst.png").await.unwrap(),
        data(300, 2)
    );
    let replace = PutOptions::new()
        .with_content_type("image/webp")
        .with_metadata("owner", "u2");
    s.copy(
        &h.bucket,
        "src.png",
        &h.bucket,
        "dir/copy with space.png",
        Some(replace),
    )
    .await
    .unwrap();
    let head = s.head(&h.bucket, "dir/copy with space.png").await.unwrap();
    assert_eq!(head.content_type.as_deref(), Some("image/webp"));
    assert_eq!(head.metadata.get("owner").map(String::as_str), Some("u2"));
    assert_kind(
        s.copy(&h.bucket, "missing", &h.bucket, "x", None).await,
        ErrorKind::NotFound,
        "copy of a missing source",
    );
    // A create-only copy onto an existing key fails and leaves it unchanged.
    let create_only = PutOptions::new().with_content_type("image/png").create_only();
    assert_kind(
        s.copy(
            &h.bucket,
            "src.png",
            &h.other_bucket,
            "dst.png",
            Some(create_only),
        )
        .await,
        ErrorKind::Conflict,
        "create-only copy onto an existing key",
    );
    let head = s.head(&h.other_bucket, "dst.png").await.unwrap();
    assert_eq!(head.metadata.get("owner").map(String::as_str), Some("u1"));
    // Onto a new key it copies, with the given options.
    let create_only = PutOptions::new().with_content_type("image/png").create_only();
    let fresh = s
        .copy(
            &h.bucket,
            "src.png",
            &h.other_bucket,
            "fresh.png",
            Some(create_only),
        )
        .await
        .unwrap();
    assert_eq!(
        (fresh.size, fresh.content_type.as_deref()),
        (300, Some("image/png"))
    );
    assert_eq!(
        s.get_bytes(&h.other_bucket, "fresh.png").await.unwrap(),
        data(300, 2)
    );
}

/// Keys that could escape a directory are refused by every operation.
pub async fn path_traversal_is_refused(h: &Harness) {
    let s = &h.store;
    for key in [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "./x",
        "a//b",
        "..",
        "a\\..\\b",
    ] {
        let b = &h.bucket;
        assert_kind(
            s.put(b, key, Bytes::from_static(b"x"), PutOptions::new()).await,
            ErrorKind::InvalidInput,
            key,
        );
        assert_kind(s.head(b, key).await, ErrorKind::InvalidInput, key);
        assert_kind(
            s.get(b, key, GetOptions::new()).await.map(|g| g.meta),
            ErrorKind::InvalidInput,
            key,
        );
        assert_kind(s.delete(b, key).await, ErrorKind::InvalidInput, key);
        assert_kind(s.copy(b, key, b, "ok", None).await, ErrorKind::InvalidInput, key);
        assert_kind(s.copy(b, "ok", b, key, None).await, ErrorKind::InvalidInput, key);
        assert_kind(
            s.presign(b, key, PresignOptions::get(Duration::from_secs(60)))
                .await,
            ErrorKind::InvalidInput,
            key,
        );
        let stream = body_in_chunks(Bytes::from_static(b"x"), 1);
        assert_kind(
            s.put_stream(b, key, stream, PutOptions::new()).await,
            ErrorKind::InvalidInput,
            key,
        );
    }
    assert_kind(
        s.create_bucket("../bucket").await,
        ErrorKind::InvalidInput,
        "bucket ../bucket",
    );
    assert!(
        s.list_all(&h.bucket, "").await.unwrap().is_empty(),
        "nothing was written"
    );
}

/// A 20 MiB streamed upload (multipart on S3) round-trips byte for byte, with metadata.
pub async fn stream_upload_round_trips(h: &Harness) {
    let s = &h.store;
    let body = data(20 * 1024 * 1024, 3);
    let opts = PutOptions::new()
        .with_content_type("application/zip")
        .with_metadata("kind", "export");
    put_stream_stored(
        h,
        "big/export.zip",
        &body,
        100_003,
        opts,
        "application/zip",
        "export",
    )
    .await;
    // A small stream works too (a single put on S3).
    s.put_stream(
        &h.bucket,
        "small",
        body_in_chunks(Bytes::from_static(b"tiny"), 2),
        PutOptions::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_bytes(&h.bucket, "small").await.unwrap(),
        Bytes::from_static(b"tiny")
    );
}

/// A stream that fails stores nothing (a multipart upload is aborted).
pub async fn failed_stream_stores_nothing(h: &Harness) {
    let s = &h.store;
    let failing = cut_short(body_in_chunks(data(18 * 1024 * 1024, 4), 1024 * 1024));
    let result = s
        .put_stream(&h.bucket, "partial", failing, PutOptions::new())
        .await;
    assert_kind(result, ErrorKind::Unavailable, "failing stream");
    assert_absent(h, "partial").await;
}

/// `good`, then an `Unavailable` error, as when a client goes away mid-upload.
fn cut_short(good: BodyStream) -> BodyStream {
    Box::pin(good.chain(futures::stream::once(async {
        Err(Error::new(ErrorKind::Unavailable, "client went away"))
    })))
}

/// Streams `body` in chunks of `chunk` bytes to `key` and checks what was stored.
async fn put_stream_stored(
    h: &Harness,
    key: &str,
    body: &Bytes,
    chunk: usize,
    opts: PutOptions,
    content_type: &str,
    kind: &str,
) {
    let meta = h
        .store
        .put_stream(&h.bucket, key, body_in_chunks(body.clone(), chunk), opts)
        .await
        .unwrap();
    assert_eq!(meta.size, body.len() as u64, "{key}");
    assert_stored(h, key, body, content_type, kind).await;
}

/// `key` holds exactly `body`, with its content type and `kind` metadata.
async fn assert_stored(h: &Harness, key: &str, body: &Bytes, content_type: &str, kind: &str) {
    let head = h.store.head(&h.bucket, key).await.unwrap();
    assert_eq!(head.size, body.len() as u64, "{key}");
    assert_eq!(head.content_type.as_deref(), Some(content_type), "{key}");
    assert_eq!(head.metadata.get("kind").map(String::as_str), Some(kind), "{key}");
    let got = h.store.get_bytes(&h.bucket, key).await.unwrap();
    assert!(got == *body, "{key} differs after the round trip");
}

/// `key` was not stored.
async fn assert_absent(h: &Harness, key: &str) {
    assert_kind(h.store.head(&h.bucket, key).await, ErrorKind::NotFound, key);
}

/// A declared content length: a body of that length round-trips (one streaming
/// `PutObject` on S3), any other length fails with `InvalidInput` and stores nothing,
/// and an error of the stream itself is returned as is.
pub async fn declared_length_is_enforced(h: &Harness) {
    let s = &h.store;
    let body = data(12 * 1024 * 1024 + 5, 6);
    let len = body.len() as u64;
    let opts = PutOptions::new()
        .with_content_type("video/mp4")
        .with_metadata("kind", "clip")
        .with_content_length(len);
    put_stream_stored(h, "sized/clip.mp4", &body, 65_537, opts, "video/mp4", "clip").await;
    for (what, actual) in [("longer", 11usize), ("shorter", 9)] {
        let stream = body_in_chunks(data(actual, 7), 4);
        let opts = PutOptions::new().with_content_length(10);
        assert_kind(
            s.put_stream(&h.bucket, "sized/wrong", stream, opts.clone()).await,
            ErrorKind::InvalidInput,
            what,
        );
        assert_kind(
            s.put(&h.bucket, "sized/wrong", data(actual, 7), opts).await,
            ErrorKind::InvalidInput,
            what,
        );
    }
    // The excess arrives only after the declared length was reached: an HTTP client
    // sends exactly the declared length and stops reading the body there, so the
    // store must look past it before the last byte goes. A declared empty body is
    // never read at all by HTTP.
    for (what, len, stream) in [
        ("longer, exact prefix", 10, body_in_chunks(data(11, 7), 10)),
        ("longer, prefix then more", 10, body_in_chunks(data(14, 7), 5)),
        ("declared empty", 0, body_in_chunks(data(3, 7), 3)),
    ] {
        let opts = PutOptions::new().with_content_length(len);
        assert_kind(
            s.put_stream(&h.bucket, "sized/wrong", stream, opts).await,
            ErrorKind::InvalidInput,
            what,
        );
    }
    let opts = PutOptions::new().with_content_length(0);
    let empty = s
        .put_stream(&h.bucket, "sized/empty", body_in_chunks(Bytes::new(), 1), opts)
        .await
        .unwrap();
    assert_eq!(empty.size, 0, "a declared empty body");
    assert_eq!(s.head(&h.bucket, "sized/empty").await.unwrap().size, 0);
    let failing = cut_short(body_in_chunks(data(1000, 8), 100));
    let opts = PutOptions::new().with_content_length(2000);
    assert_kind(
        s.put_stream(&h.bucket, "sized/wrong", failing, opts).await,
        ErrorKind::Unavailable,
        "failing sized stream",
    );
    assert_absent(h, "sized/wrong").await;
}

/// A presigned GET works with a plain HTTP client.
pub async fn presigned_get_works(h: &Harness) {
    let s = &h.store;
    s.put(&h.bucket, "dl/file.bin", data(2048, 5), PutOptions::new())
        .await
        .unwrap();
    let req = s
        .presign(
            &h.bucket,
            "dl/file.bin",
            PresignOptions::get(Duration::from_secs(300)),
        )
        .await
        .unwrap();
    assert_eq!(req.method, PresignMethod::Get);
    assert!(req.expires_at > h.clock.now());
    assert_signature_not_shown(&req.url, &format!("{req:?}"));
    let (status, body) = h.send(&req, Bytes::new()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, data(2048, 5));
    // Offline: URLs for a missing object or bucket are issued, and answer 404.
    let get = PresignOptions::get(Duration::from_secs(300));
    for (bucket, key) in [(h.bucket.as_str(), "dl/none.bin"), ("no-such-bucket", "k")] {
        let req = s.presign(bucket, key, get.clone()).await.unwrap();
        let (status, body) = h.send(&req, Bytes::new()).await;
        assert_eq!(status, 404, "{bucket}/{key}: {}", String::from_utf8_lossy(&body));
    }
}

/// A presigned URL's query is its credential: `debug`, the `Debug` output of a value
/// holding `url`, must show the URL without it.
fn assert_signature_not_shown(url: &str, debug: &str) {
    let (base, query) = url.split_once('?').expect("a presigned URL has a query");
    assert!(query.to_ascii_lowercase().contains("signature"), "{url}");
    assert!(debug.contains(&format!("{base}?[redacted]")), "{debug}");
    assert!(!debug.contains(query), "{debug}");
    assert!(!debug.to_ascii_lowercase().contains("signature"), "{debug}");
}

/// A presigned PUT accepts exactly the signed type and length; others are refused.
pub async fn presigned_put_pins_type_and_length(h: &Harness) {
    let s = &h.store;
    let body = data(1234, 6);
    let req = s
        .presign(
            &h.bucket,
            "up/photo.png",
            PresignOptions::put(Duration::from_secs(300), "image/png", 1234),
        )
        .await
        .unwrap();
    assert!(
        req.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "image/png"),
        "{:?}",
        req.headers
    );
    // Wrong length.
    let (status, _) = h.send(&req, data(1235, 6)).await;
    assert!((400..500).contains(&status), "longer body got {status}");
    // Wrong content type.
    let mut wrong_type = req.clone();
    for (k, v) in &mut wrong_type.headers {
        if k == "content-type" {
            *v = "text/html".to_owned();
        }
    }
    let (status, _) = h.send(&wrong_type, body.clone()).await;
    assert!((400..500).contains(&status), "other content type got {status}");
    assert_kind(
        s.head(&h.bucket, "up/photo.png").await,
        ErrorKind::NotFound,
        "refused uploads store nothing",
    );
    // The signed upload.
    let (status, resp) = h.send(&req, body.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    let head = s.head(&h.bucket, "up/photo.png").await.unwrap();
    assert_eq!(head.size, 1234);
    assert_eq!(head.content_type.as_deref(), Some("image/png"));
    assert_eq!(s.get_bytes(&h.bucket, "up/photo.png").await.unwrap(), body);
}

/// An expired presigned URL is refused (403).
pub async fn presigned_expired_is_refused(h: &Harness) {
    let s = &h.store;
    s.put(&h.bucket, "old", Bytes::from_static(b"x"), PutOptions::new())
        .await
        .unwrap();
    let now = h.clock.now();
    // Signed two hours ago, valid for a minute.
    h.clock.set(now - chrono::TimeDelta::hours(2));
    let get = s
        .presign(&h.bucket, "old", PresignOptions::get(Duration::from_secs(60)))
        .await
        .unwrap();
    let put = s
        .presign(
            &h.bucket,
            "new",
            PresignOptions::put(Duration::from_secs(60), "text/plain", 1),
        )
        .await
        .unwrap();
    h.clock.set(now);
    let (status, _) = h.send(&get, Bytes::new()).await;
    assert_eq!(status, 403, "expired GET");
    let (status, _) = h.send(&put, Bytes::from_static(b"x")).await;
    assert_eq!(status, 403, "expired PUT");
    assert_kind(
        s.head(&h.bucket, "new").await,
        ErrorKind::NotFound,
        "expired PUT stored nothing",
    );
}

/// A tampered presigned URL is refused (403).
pub async fn presigned_tampered_is_refused(h: &Harness) {
    let s = &h.store;
    s.put(&h.bucket, "secret-a", Bytes::from_static(b"a"), PutOptions::new())
        .await
        .unwrap();
    s.put(&h.bucket, "secret-b", Bytes::from_static(b"b"), PutOptions::new())
        .await
        .unwrap();
    let req = s
        .presign(
            &h.bucket,
            "secret-a",
            PresignOptions::get(Duration::from_secs(300)),
        )
        .await
        .unwrap();
    let mut other_key = req.clone();
    other_key.url = req.url.replacen("secret-a", "secret-b", 1);
    assert_ne!(other_key.url, req.url);
    let (status, body) = h.send(&other_key, Bytes::new()).await;
    assert_eq!(status, 403, "other key: {}", String::from_utf8_lossy(&body));
    // Flip the last hex digit of the signature.
    let mut bad_sig = req.clone();
    let last = bad_sig.url.pop().unwrap();
    bad_sig.url.push(if last == '0' { '1' } else { '0' });
    let (status, _) = h.send(&bad_sig, Bytes::new()).await;
    assert_eq!(status, 403, "bad signature");
    let (status, body) = h.send(&req, Bytes::new()).await;
    assert_eq!(
        (status, body),
        (200, Bytes::from_static(b"a")),
        "the untouched URL still works"
    );
}

/// Presign options out of range are `InvalidInput`.
pub async fn presign_validates_options(h: &Harness) {
    let s = &h.store;
    let b = &h.bucket;
    assert_kind(
        s.presign(b, "k", PresignOptions::get(Duration::ZERO)).await,
        ErrorKind::InvalidInput,
        "0 s",
    );
    assert_kind(
        s.presign(b, "k", PresignOptions::get(Duration::from_secs(8 * 24 * 3600)))
            .await,
        ErrorKind::InvalidInput,
        "8 days",
    );
    let mut put = PresignOptions::put(Duration::from_secs(60), "text/plain", 1);
    put.content_type = None;
    assert_kind(
        s.presign(b, "k", put).await,
        ErrorKind::InvalidInput,
        "PUT without type",
    );
}

/// Lifecycle rules read back as put (or `Unsupported` where the server lacks lifecycle).
pub async fn lifecycle_round_trips(h: &Harness) {
    let s = &h.store;
    let rules = vec![
        LifecycleRule::new("tiers", "")
            .transition_after(30)
            .abort_incomplete_multipart_after(1),
        LifecycleRule::new("temp", "tmp/").expire_after(1),
    ];
    if !h.supports_lifecycle {
        assert_kind(
            s.put_lifecycle(&h.bucket, &rules).await,
            ErrorKind::Unsupported,
            "lifecycle on s3s-fs",
        );
        return;
    }
    assert!(
        s.get_lifecycle(&h.bucket).await.unwrap().is_empty(),
        "no rules yet"
    );
    s.put_lifecycle(&h.bucket, &rules).await.unwrap();
    let mut back = s.get_lifecycle(&h.bucket).await.unwrap();
    back.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expect = rules.clone();
    expect.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(back, expect);
    let dup = vec![
        LifecycleRule::new("x", "").expire_after(1),
        LifecycleRule::new("x", "a").expire_after(2),
    ];
    assert_kind(
        s.put_lifecycle(&h.bucket, &dup).await,
        ErrorKind::InvalidInput,
        "duplicate ids",
    );
    assert_kind(
        s.put_lifecycle(&h.bucket, &[LifecycleRule::new("none", "")])
            .await,
        ErrorKind::InvalidInput,
        "rule without action",
    );
}

/// The catalogue's lifecycle (tiers + temp safety net) applied through [`Storage`] reads back.
pub async fn apply_lifecycle_reads_back(h: &Harness) {
    let catalog = BucketCatalog::from_buckets([
        BucketConfig::new(&h.bucket)
            .with_product(Product::ARBOR)
            .with_tiers(crate::StorageTiers::new(30, 90)),
        BucketConfig::new(&h.other_bucket).with_rule(
            LifecycleRule::new("temp-uploads-ttl", "tmp/")
                .expire_after(1)
                .abort_incomplete_multipart_after(1),
        ),
    ]);
    let storage = Storage::new(h.store.clone(), catalog.clone(), h.clock.shared());
    if !h.supports_lifecycle {
        assert_kind(
            storage.apply_lifecycle().await,
            ErrorKind::Unsupported,
            "lifecycle on s3s-fs",
        );
        return;
    }
    storage.apply_lifecycle().await.unwrap();
    for b in [&h.bucket, &h.other_bucket] {
        let back = h.store.get_lifecycle(b).await.unwrap();
        assert_eq!(back, catalog.get(b).unwrap().lifecycle_rules(), "bucket {b}");
    }
    let tiers = &h.store.get_lifecycle(&h.bucket).await.unwrap()[0];
    assert_eq!(
        (tiers.transition_days, tiers.abort_incomplete_multipart_days),
        (Some(30), Some(1))
    );
    // Rules taken out of the catalogue are removed from the bucket, but for the one
    // aborting incomplete uploads.
    let without = BucketCatalog::from_buckets([
        BucketConfig::new(&h.bucket).with_product(Product::ARBOR),
        catalog.get(&h.other_bucket).unwrap().clone(),
    ]);
    Storage::new(h.store.clone(), without, h.clock.shared())
        .apply_lifecycle()
        .await
        .unwrap();
    assert_eq!(
        h.store.get_lifecycle(&h.bucket).await.unwrap(),
        [crate::catalog::abort_rule()]
    );
    assert_eq!(h.store.get_lifecycle(&h.other_bucket).await.unwrap().len(), 2);
}

fn temp_setup(h: &Harness) -> (Storage, TempUploads) {
    let catalog = BucketCatalog::from_buckets([
        BucketConfig::new(&h.bucket),
        BucketConfig::new(&h.other_bucket).with_product(Product::ARBOR),
    ]);
    let storage = Storage::new(h.store.clone(), catalog, h.clock.shared());
    let temp = TempUploads::new(
        storage.clone(),
        TempUploadsConfig::default()
            .with_bucket(&h.bucket)
            .with_max_bytes(1024 * 1024),
    );
    (storage, temp)
}

/// Temporary uploads: the size limit, upload through the slot, promote with metadata.
pub async fn temp_upload_limit_and_promote(h: &Harness) {
    let (storage, temp) = temp_setup(h);
    assert_kind(
        temp.issue(
            UploadPurpose::TempUploads,
            "big.bin",
            "application/octet-stream",
            1024 * 1024 + 1,
        )
        .await,
        ErrorKind::InvalidInput,
        "over the limit",
    );
    assert_kind(
        temp.issue(UploadPurpose::TempUploads, "e", "text/plain", 0).await,
        ErrorKind::InvalidInput,
        "empty",
    );
    // A content type promote could not store (browsers give "" for unknown files).
    for content_type in ["", "text/plain; \u{2713}"] {
        assert_kind(
            temp.issue(UploadPurpose::TempUploads, "t", content_type, 3).await,
            ErrorKind::InvalidInput,
            "content type",
        );
    }
    // The `tmp/` lifecycle rule deletes uploads after one day: a longer TTL is refused.
    let too_long = TempUploads::new(
        storage,
        temp.config().clone().with_ttl(Duration::from_secs(24 * 3600 + 1)),
    );
    assert_kind(
        too_long
            .issue(UploadPurpose::TempUploads, "t", "text/plain", 3)
            .await,
        ErrorKind::Config,
        "TTL over one day",
    );
    let body = data(4096, 7);
    // Half a second into a second: the expiry, whole seconds, must be rounded up.
    let nanos = h.clock.now().timestamp_subsec_nanos();
    h.clock.advance(Duration::from_nanos(u64::from(
        (1_500_000_000 - nanos) % 1_000_000_000,
    )));
    let issued = h.clock.now();
    let slot = temp
        .issue(
            UploadPurpose::PreviewFiles,
            "../../My File.png",
            "image/png",
            4096,
        )
        .await
        .unwrap();
    assert!(slot.key.starts_with("tmp/preview-files/"), "{}", slot.key);
    assert!(slot.key.ends_with("/My_File.png"), "{}", slot.key);
    assert_eq!(temp.expiry_of(&slot.key), Some(slot.expires_at));
    assert_signature_not_shown(&slot.upload.url, &format!("{slot:?}"));
    let ttl_over = issued + chrono::TimeDelta::hours(24);
    assert_eq!(
        slot.expires_at.timestamp(),
        ttl_over.timestamp() + 1,
        "rounded up"
    );
    // Promoting before the upload is NotFound.
    assert_kind(
        temp.promote(&slot, &h.other_bucket, "final.png").await,
        ErrorKind::NotFound,
        "not uploaded yet",
    );
    let (status, resp) = h.send(&slot.upload, body.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    // Promoted at the very end of its TTL (not half a second after its expiry).
    h.clock.advance((ttl_over - h.clock.now()).to_std().unwrap());
    let meta = temp
        .promote(&slot, &h.other_bucket, "images/final.png")
        .await
        .unwrap();
    assert_eq!(meta.size, 4096);
    let head = h.store.head(&h.other_bucket, "images/final.png").await.unwrap();
    assert_eq!(head.content_type.as_deref(), Some("image/png"));
    assert_eq!(head.metadata.get(PRODUCT).map(String::as_str), Some("arbor"));
    let expected_at = h.clock.now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(head.metadata.get(UPLOADED_AT), Some(&expected_at));
    assert_eq!(
        h.store
            .get_bytes(&h.other_bucket, "images/final.png")
            .await
            .unwrap(),
        body
    );
    assert_kind(
        h.store.head(&h.bucket, &slot.key).await,
        ErrorKind::NotFound,
        "temp object removed",
    );
}

/// Temporary uploads past their TTL are swept (idempotently) and cannot be promoted.
pub async fn temp_upload_sweep(h: &Harness) {
    let (storage, long) = temp_setup(h);
    // A second view of the same prefix with a shorter TTL than the default 24 h. Both
    // slots are issued now: presigned URLs must be signed at the real time for a real
    // server.
    let temp = TempUploads::new(
        storage,
        long.config().clone().with_ttl(Duration::from_secs(12 * 3600)),
    );
    let early = temp
        .issue(UploadPurpose::ExportQueue, "a.csv", "text/csv", 3)
        .await
        .unwrap();
    let (status, _) = h.send(&early.upload, Bytes::from_static(b"a,b")).await;
    assert_eq!(status, 200);
    let late = long
        .issue(UploadPurpose::TempUploads, "b.txt", "text/plain", 2)
        .await
        .unwrap();
    let (status, _) = h.send(&late.upload, Bytes::from_static(b"hi")).await;
    assert_eq!(status, 200);
    // Something outside the temp prefix is never swept.
    h.store
        .put(&h.bucket, "keep/me", Bytes::from_static(b"k"), PutOptions::new())
        .await
        .unwrap();
    assert_eq!(temp.sweep_expired().await.unwrap(), 0, "nothing expired yet");
    h.clock.advance(Duration::from_secs(12 * 3600 + 1));
    assert_eq!(temp.sweep_expired().await.unwrap(), 1, "the 12 h upload expired");
    assert_eq!(
        temp.sweep_expired().await.unwrap(),
        0,
        "sweeping again is a no-op"
    );
    assert_kind(
        h.store.head(&h.bucket, &early.key).await,
        ErrorKind::NotFound,
        "expired upload gone",
    );
    assert_kind(
        temp.promote(&early, &h.other_bucket, "x").await,
        ErrorKind::NotFound,
        "promote after sweep",
    );
    h.store.head(&h.bucket, &late.key).await.unwrap();
    h.clock.advance(Duration::from_secs(12 * 3600));
    assert_kind(
        long.promote(&late, &h.other_bucket, "x").await,
        ErrorKind::NotFound,
        "promote after expiry",
    );
    assert_eq!(long.sweep_expired().await.unwrap(), 1);
    assert!(h.store.list_all(&h.bucket, "tmp/").await.unwrap().is_empty());
    h.store.head(&h.bucket, "keep/me").await.unwrap();
}

/// Generates one `#[tokio::test]` per conformance case, each calling `$harness.await`
/// for a fresh [`Harness`].
#[macro_export]
macro_rules! object_store_conformance {
    ($harness:expr) => {
        $crate::object_store_conformance!(@cases $harness;
            put_round_trips_metadata,
            overwrite_replaces,
            create_only_conflicts,
            missing_is_not_found,
            range_reads,
            delete_is_idempotent,
            delete_many_beyond_batch_limit,
            list_paginates_by_prefix,
            copy_keeps_or_replaces_metadata,
            path_traversal_is_refused,
            stream_upload_round_trips,
            failed_stream_stores_nothing,
            declared_length_is_enforced,
            presigned_get_works,
            presigned_put_pins_type_and_length,
            presigned_expired_is_refused,
            presigned_tampered_is_refused,
            presign_validates_options,
            lifecycle_round_trips,
            apply_lifecycle_reads_back,
            temp_upload_limit_and_promote,
            temp_upload_sweep
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness.await;
                $crate::conformance::$case(&harness).await;
            }
        )*
    };
}
