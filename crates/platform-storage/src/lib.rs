#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::Result;

/// The `bytes` crate, re-exported so callers name [`Bytes`] without a direct dependency.
pub use bytes;

pub mod catalog;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod local;
pub mod memory;
pub mod presign;
pub mod s3;
pub mod storage;
pub mod temp;
pub mod types;
pub mod validate;

pub use catalog::{BucketAccess, BucketCatalog, BucketConfig, StorageTiers};
pub use local::LocalObjectStore;
pub use memory::InMemoryObjectStore;
pub use presign::{LocalHttpRequest, LocalHttpResponse, UrlSigner};
pub use s3::{S3ObjectStore, S3ObjectStoreBuilder};
pub use storage::Storage;
pub use temp::{MAX_TEMP_TTL, TempUploads, TempUploadsConfig, UploadPurpose, UploadSlot};
pub use types::{
    BodyStream, ByteRange, GetOptions, GetResult, LifecycleRule, ListOptions, ListPage, ObjectMeta,
    PresignMethod, PresignOptions, PresignedRequest, PutOptions, body_from_bytes, body_in_chunks,
    collect_body,
};
pub use validate::{DELETE_BATCH_LIMIT, validate_bucket, validate_key};

/// A shared object store handle, what callers hold.
pub type DynObjectStore = Arc<dyn ObjectStore>;

/// Object storage across buckets: S3/R2 ([`S3ObjectStore`]), a local directory
/// ([`LocalObjectStore`], the embedded default) or memory ([`InMemoryObjectStore`]).
///
/// Every method validates its input first (see [`validate_key`]: keys that could
/// escape a directory such as `../x` or `/etc/passwd` are refused with `InvalidInput`
/// by every implementation). Operations on a bucket that does not exist fail with
/// `NotFound`.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug + 'static {
    /// The provider name used in errors and spans (`"s3"`, `"local"`, `"memory"`).
    fn provider(&self) -> &'static str;

    /// Creates a bucket.
    ///
    /// # Behavior
    /// - Creating a bucket that already exists (and is ours) succeeds.
    /// - An invalid bucket name fails with `InvalidInput`.
    async fn create_bucket(&self, bucket: &str) -> Result<()>;

    /// Stores `body` under `key`, replacing any object there.
    ///
    /// # Behavior
    /// - Content type, cache control and user metadata round-trip through `head` and `get`.
    /// - Overwriting replaces content and metadata.
    /// - With `create_only`, an existing key fails with `Conflict` and is left unchanged.
    /// - A key such as `../x` or `/x` fails with `InvalidInput`; a missing bucket with `NotFound`.
    async fn put(&self, bucket: &str, key: &str, body: Bytes, opts: PutOptions) -> Result<ObjectMeta>;

    /// Stores a streamed body with bounded memory.
    ///
    /// S3 uses a multipart upload of equal-size parts (R2 requires it) once a body of
    /// unknown length exceeds one part, aborting the upload on error (its part uploads
    /// are cancelled first) so nothing partial is left; a body of declared length up to
    /// the single-put limit is streamed as one `PutObject`. A declared length sizes the
    /// parts so that the upload fits in S3's 10,000 parts (whole MiB, at least the
    /// configured part size); a body of unknown length that needs more parts fails with
    /// `InvalidInput`. A caller that drops the future mid-upload cancels the parts, and
    /// the upload is aborted from a task of its own.
    ///
    /// # Behavior
    /// - The stored object equals the concatenated stream, byte for byte (20 MiB in the suite).
    /// - If the stream yields an error, nothing is stored and the error is returned.
    /// - With a declared [`PutOptions::content_length`], a body of another length fails
    ///   with `InvalidInput` and nothing is stored (on S3 a declared length up to the
    ///   single-put limit is sent as one streaming `PutObject`, never buffered).
    /// - Metadata round-trips as with `put`.
    async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        body: BodyStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta>;

    /// Streams an object, or a byte range of it.
    ///
    /// # Behavior
    /// - Returns the object's bytes and its metadata (`size` is the whole object's).
    /// - A range returns only those bytes; a range starting past the end fails with `InvalidInput`.
    /// - A missing key fails with `NotFound`.
    async fn get(&self, bucket: &str, key: &str, opts: GetOptions) -> Result<GetResult>;

    /// Facts about an object without its body.
    ///
    /// # Behavior
    /// - A missing key fails with `NotFound`.
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta>;

    /// Deletes an object.
    ///
    /// # Behavior
    /// - Deleting a missing key succeeds (idempotent, as on S3).
    async fn delete(&self, bucket: &str, key: &str) -> Result<()>;

    /// Deletes many objects, in batches of at most [`DELETE_BATCH_LIMIT`] (R2's limit).
    ///
    /// # Behavior
    /// - Every listed key is gone afterwards, however many (more than 700 in the suite).
    /// - Missing keys are not an error; an invalid key fails before anything is deleted.
    async fn delete_many(&self, bucket: &str, keys: &[String]) -> Result<()>;

    /// One page of the objects whose key starts with `prefix`, in key order.
    ///
    /// # Behavior
    /// - Pages of `max_keys` chain through `next_token` and together list each object once.
    /// - Objects outside the prefix are not listed.
    async fn list(&self, bucket: &str, prefix: &str, opts: ListOptions) -> Result<ListPage>;

    /// Copies an object, within or across buckets.
    ///
    /// # Behavior
    /// - With `replace = None` the copy keeps the source's content type and metadata;
    ///   with `Some(opts)` they are replaced by `opts`.
    /// - A missing source fails with `NotFound`.
    async fn copy(
        &self,
        from_bucket: &str,
        from_key: &str,
        to_bucket: &str,
        to_key: &str,
        replace: Option<PutOptions>,
    ) -> Result<ObjectMeta>;

    /// A URL that lets anyone download (GET) or upload (PUT) one object until it expires.
    ///
    /// # Behavior
    /// - A presigned GET fetched with a plain HTTP client returns the object.
    /// - A presigned PUT accepts exactly the signed content type and length, and the
    ///   object is then readable; another length or content type is refused.
    /// - An expired URL is refused (403), and so is a tampered one (403).
    /// - Presigning is offline: a URL for a missing bucket or object is issued, and
    ///   using it gets 404.
    /// - An expiry outside 1 s–7 days, or a PUT without type and length, fails with `InvalidInput`.
    async fn presign(&self, bucket: &str, key: &str, opts: PresignOptions) -> Result<PresignedRequest>;

    /// Replaces a bucket's lifecycle rules.
    ///
    /// # Behavior
    /// - The rules read back with `get_lifecycle` equal those put.
    /// - Invalid rules (no action, duplicate ids) fail with `InvalidInput`.
    async fn put_lifecycle(&self, bucket: &str, rules: &[LifecycleRule]) -> Result<()>;

    /// A bucket's lifecycle rules (empty when none are set).
    ///
    /// # Behavior
    /// - A bucket without rules returns an empty list.
    async fn get_lifecycle(&self, bucket: &str) -> Result<Vec<LifecycleRule>>;
}

/// Conveniences over any [`ObjectStore`].
#[async_trait]
pub trait ObjectStoreExt: ObjectStore {
    /// Reads a whole object into memory.
    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Bytes> {
        self.get(bucket, key, GetOptions::new()).await?.bytes().await
    }

    /// Lists every object under `prefix`, following pages.
    async fn list_all(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut opts = ListOptions::new();
        loop {
            let page = self.list(bucket, prefix, opts.clone()).await?;
            out.extend(page.objects);
            match page.next_token {
                Some(token) => opts = ListOptions::new().after(token),
                None => return Ok(out),
            }
        }
    }
}

impl<T: ObjectStore + ?Sized> ObjectStoreExt for T {}

#[async_trait]
impl<T: ObjectStore + ?Sized> ObjectStore for Arc<T> {
    fn provider(&self) -> &'static str {
        (**self).provider()
    }
    async fn create_bucket(&self, bucket: &str) -> Result<()> {
        (**self).create_bucket(bucket).await
    }
    async fn put(&self, bucket: &str, key: &str, body: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        (**self).put(bucket, key, body, opts).await
    }
    async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        body: BodyStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        (**self).put_stream(bucket, key, body, opts).await
    }
    async fn get(&self, bucket: &str, key: &str, opts: GetOptions) -> Result<GetResult> {
        (**self).get(bucket, key, opts).await
    }
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta> {
        (**self).head(bucket, key).await
    }
    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        (**self).delete(bucket, key).await
    }
    async fn delete_many(&self, bucket: &str, keys: &[String]) -> Result<()> {
        (**self).delete_many(bucket, keys).await
    }
    async fn list(&self, bucket: &str, prefix: &str, opts: ListOptions) -> Result<ListPage> {
        (**self).list(bucket, prefix, opts).await
    }
    async fn copy(
        &self,
        from_bucket: &str,
        from_key: &str,
        to_bucket: &str,
        to_key: &str,
        replace: Option<PutOptions>,
    ) -> Result<ObjectMeta> {
        (**self)
            .copy(from_bucket, from_key, to_bucket, to_key, replace)
            .await
    }
    async fn presign(&self, bucket: &str, key: &str, opts: PresignOptions) -> Result<PresignedRequest> {
        (**self).presign(bucket, key, opts).await
    }
    async fn put_lifecycle(&self, bucket: &str, rules: &[LifecycleRule]) -> Result<()> {
        (**self).put_lifecycle(bucket, rules).await
    }
    async fn get_lifecycle(&self, bucket: &str) -> Result<Vec<LifecycleRule>> {
        (**self).get_lifecycle(bucket).await
    }
}
