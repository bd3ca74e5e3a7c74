//! [`InMemoryObjectStore`]: complete, deterministic, for tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use platform_core::{DynClock, Error, Result, system_clock};
use sha2::{Digest as _, Sha256};

use crate::ObjectStore;
use crate::presign::{LocalHttpRequest, LocalHttpResponse, UrlSigner, serve_presigned};
use crate::types::{
    BodyStream, GetOptions, GetResult, LifecycleRule, ListOptions, ListPage, ObjectMeta, PresignOptions,
    PresignedRequest, PutOptions, body_from_bytes, collect_body, validate_rules,
};
use crate::validate::{
    DELETE_BATCH_LIMIT, validate_bucket, validate_key, validate_object, validate_prefix, validate_put,
};

const PROVIDER: &str = "memory";

#[derive(Debug, Default)]
struct Bucket {
    objects: BTreeMap<String, (ObjectMeta, Bytes)>,
    lifecycle: Vec<LifecycleRule>,
}

/// Objects in memory, with the same rules and errors as S3.
///
/// Presigned URLs are HMAC-signed ([`UrlSigner`]) and served by
/// [`InMemoryObjectStore::handle_presigned`].
#[derive(Debug)]
pub struct InMemoryObjectStore {
    buckets: Mutex<HashMap<String, Bucket>>,
    clock: DynClock,
    signer: UrlSigner,
}

impl Default for InMemoryObjectStore {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn etag_of(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

pub(crate) fn meta_for(
    key: &str,
    data: &[u8],
    opts: &PutOptions,
    now: chrono::DateTime<chrono::Utc>,
) -> ObjectMeta {
    let mut meta = ObjectMeta::new(key, data.len() as u64);
    meta.etag = Some(etag_of(data));
    meta.last_modified = chrono::DateTime::from_timestamp(now.timestamp(), 0);
    meta.content_type = Some(
        opts.content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
    );
    meta.cache_control = opts.cache_control.clone();
    meta.metadata = opts.metadata.clone();
    meta
}

pub(crate) fn missing_bucket(provider: &'static str, bucket: &str) -> Error {
    Error::not_found(format!("bucket {bucket:?} does not exist")).with_provider(provider)
}

pub(crate) fn missing_key(provider: &'static str, bucket: &str, key: &str) -> Error {
    Error::not_found(format!("no object {key:?} in bucket {bucket:?}")).with_provider(provider)
}

/// What a store's call acted on, as its errors name it.
pub(crate) enum Subject<'a> {
    Bucket(&'a str),
    /// Bucket, then key.
    Object(&'a str, &'a str),
    /// The source object of a copy (bucket, key), whose body failed.
    Source(&'a str, &'a str),
    /// A server-side copy: destination bucket and key, then source bucket and key.
    Copy(&'a str, &'a str, &'a str, &'a str),
}

impl Subject<'_> {
    /// The bucket the error is about (a copy's destination).
    fn bucket(&self) -> &str {
        match self {
            Self::Bucket(bucket)
            | Self::Object(bucket, _)
            | Self::Source(bucket, _)
            | Self::Copy(bucket, ..) => bucket,
        }
    }
}

impl std::fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bucket(bucket) => write!(f, "bucket {bucket:?}"),
            Self::Object(bucket, key) => write!(f, "object {key:?} in bucket {bucket:?}"),
            Self::Source(bucket, key) => write!(f, "source object {key:?} in bucket {bucket:?}"),
            Self::Copy(to_bucket, to_key, from_bucket, from_key) => write!(
                f,
                "object {to_key:?} in bucket {to_bucket:?} copied from object {from_key:?} in bucket {from_bucket:?}"
            ),
        }
    }
}

/// `e` naming `subject` (see [`Error::with_subject`]), unless its message names the
/// subject's bucket already (quoted, as the stores name it: a missing bucket or object,
/// a conflict, an error named once already).
pub(crate) fn acting_on(e: Error, subject: &Subject<'_>) -> Error {
    named(e, &format!("{:?}", subject.bucket()), subject)
}

/// `body` whose errors name `subject` (see [`acting_on`]).
pub(crate) fn body_acting_on(body: BodyStream, subject: &Subject<'_>) -> BodyStream {
    let (bucket, subject) = (format!("{:?}", subject.bucket()), subject.to_string());
    Box::pin(body.map(move |chunk| chunk.map_err(|e| named(e, &bucket, &subject))))
}

/// `e` naming `subject` unless its message contains `quoted_bucket`.
fn named(e: Error, quoted_bucket: &str, subject: impl std::fmt::Display) -> Error {
    if e.message().contains(quoted_bucket) {
        e
    } else {
        e.with_subject(subject)
    }
}

pub(crate) fn page_of(mut all: Vec<ObjectMeta>, prefix: &str, opts: &ListOptions) -> Result<ListPage> {
    let size = opts.page_size()?;
    all.retain(|m| {
        m.key.starts_with(prefix) && opts.continuation.as_deref().is_none_or(|c| m.key.as_str() > c)
    });
    all.sort_by(|a, b| a.key.cmp(&b.key));
    let more = all.len() > size;
    all.truncate(size);
    let next = if more {
        all.last().map(|m| m.key.clone())
    } else {
        None
    };
    for m in &mut all {
        m.content_type = None;
        m.cache_control = None;
        m.metadata.clear();
    }
    Ok(ListPage::new(all, next))
}

impl InMemoryObjectStore {
    /// An empty store on the system clock, presigning under `http://127.0.0.1/memory`.
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// An empty store on `clock` (used for timestamps and presigned URL expiry).
    pub fn with_clock(clock: DynClock) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            signer: UrlSigner::random("http://127.0.0.1/memory", clock.clone()),
            clock,
        }
    }

    /// Uses `signer` for presigned URLs (its base URL and secret).
    #[must_use]
    pub fn with_signer(mut self, signer: UrlSigner) -> Self {
        self.signer = signer;
        self
    }

    /// The signer of this store's presigned URLs.
    pub fn signer(&self) -> &UrlSigner {
        &self.signer
    }

    /// Serves a presigned URL of this store (see [`serve_presigned`]).
    pub async fn handle_presigned(&self, req: LocalHttpRequest) -> LocalHttpResponse {
        serve_presigned(self, &self.signer, req).await
    }

    fn with_bucket<T>(&self, bucket: &str, f: impl FnOnce(&mut Bucket) -> Result<T>) -> Result<T> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let b = buckets
            .get_mut(bucket)
            .ok_or_else(|| missing_bucket(PROVIDER, bucket))?;
        f(b)
    }
}

#[async_trait]
impl ObjectStore for InMemoryObjectStore {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    async fn create_bucket(&self, bucket: &str) -> Result<()> {
        validate_bucket(bucket)?;
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(bucket.to_owned())
            .or_default();
        Ok(())
    }

    async fn put(&self, bucket: &str, key: &str, body: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        validate_put(bucket, key, &opts)?;
        opts.check_length(body.len() as u64)?;
        let meta = meta_for(key, &body, &opts, self.clock.now());
        self.with_bucket(bucket, |b| {
            if opts.create_only && b.objects.contains_key(key) {
                return Err(
                    Error::conflict(format!("object {key:?} already exists in bucket {bucket:?}"))
                        .with_provider(PROVIDER),
                );
            }
            b.objects.insert(key.to_owned(), (meta.clone(), body));
            Ok(meta)
        })
    }

    async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        body: BodyStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        validate_put(bucket, key, &opts)?;
        self.with_bucket(bucket, |_| Ok(()))?;
        let data = collect_body(body).await?;
        self.put(bucket, key, data, opts).await
    }

    async fn get(&self, bucket: &str, key: &str, opts: GetOptions) -> Result<GetResult> {
        validate_object(bucket, key)?;
        let (meta, data) = self.with_bucket(bucket, |b| {
            b.objects
                .get(key)
                .cloned()
                .ok_or_else(|| missing_key(PROVIDER, bucket, key))
        })?;
        let (start, end) = match opts.range {
            Some(r) => r.resolve(meta.size)?,
            None => (0, meta.size),
        };
        let body = data.slice(usize::try_from(start).unwrap_or(0)..usize::try_from(end).unwrap_or(0));
        Ok(GetResult::new(meta, (start, end), body_from_bytes(body)))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta> {
        validate_object(bucket, key)?;
        self.with_bucket(bucket, |b| {
            b.objects
                .get(key)
                .map(|(m, _)| m.clone())
                .ok_or_else(|| missing_key(PROVIDER, bucket, key))
        })
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        validate_object(bucket, key)?;
        self.with_bucket(bucket, |b| {
            b.objects.remove(key);
            Ok(())
        })
    }

    async fn delete_many(&self, bucket: &str, keys: &[String]) -> Result<()> {
        validate_bucket(bucket)?;
        keys.iter().try_for_each(|k| validate_key(k))?;
        for chunk in keys.chunks(DELETE_BATCH_LIMIT) {
            self.with_bucket(bucket, |b| {
                for k in chunk {
                    b.objects.remove(k);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    async fn list(&self, bucket: &str, prefix: &str, opts: ListOptions) -> Result<ListPage> {
        validate_bucket(bucket)?;
        validate_prefix(prefix)?;
        let all = self.with_bucket(bucket, |b| {
            Ok(b.objects
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, (m, _))| m.clone())
                .collect::<Vec<_>>())
        })?;
        page_of(all, prefix, &opts)
    }

    async fn copy(
        &self,
        from_bucket: &str,
        from_key: &str,
        to_bucket: &str,
        to_key: &str,
        replace: Option<PutOptions>,
    ) -> Result<ObjectMeta> {
        validate_object(from_bucket, from_key)?;
        validate_object(to_bucket, to_key)?;
        let (src, data) = self.with_bucket(from_bucket, |b| {
            b.objects
                .get(from_key)
                .cloned()
                .ok_or_else(|| missing_key(PROVIDER, from_bucket, from_key))
        })?;
        let opts = match replace {
            Some(o) => o,
            None => {
                let mut o = PutOptions::new();
                o.content_type = src.content_type;
                o.cache_control = src.cache_control;
                o.metadata = src.metadata;
                o
            }
        };
        self.put(to_bucket, to_key, data, opts).await
    }

    async fn presign(&self, bucket: &str, key: &str, opts: PresignOptions) -> Result<PresignedRequest> {
        validate_object(bucket, key)?;
        opts.validate()?;
        // Offline, as on S3: the bucket is checked when the URL is used.
        self.signer.sign(bucket, key, &opts)
    }

    async fn put_lifecycle(&self, bucket: &str, rules: &[LifecycleRule]) -> Result<()> {
        validate_bucket(bucket)?;
        validate_rules(rules)?;
        self.with_bucket(bucket, |b| {
            b.lifecycle = rules.to_vec();
            Ok(())
        })
    }

    async fn get_lifecycle(&self, bucket: &str) -> Result<Vec<LifecycleRule>> {
        validate_bucket(bucket)?;
        self.with_bucket(bucket, |b| Ok(b.lifecycle.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error is named once, after its message; one naming the subject's bucket
    /// already (as the stores' own errors do) is left as it is.
    #[test]
    fn errors_are_named_once() {
        let subject = Subject::Object("b", "k");
        let named = acting_on(Error::unexpected("disk full"), &subject);
        assert_eq!(named.message(), r#"disk full (object "k" in bucket "b")"#);
        let again = acting_on(named, &subject);
        assert_eq!(again.message(), r#"disk full (object "k" in bucket "b")"#);
        let missing = acting_on(missing_key(PROVIDER, "b", "k"), &subject);
        assert_eq!(missing.message(), r#"no object "k" in bucket "b""#);
        let copy = Subject::Copy("to", "k2", "from", "k1");
        assert_eq!(
            acting_on(Error::unexpected("x"), &copy).message(),
            r#"x (object "k2" in bucket "to" copied from object "k1" in bucket "from")"#
        );
        // A source read named by the copy's body, then the write to another bucket.
        let read = acting_on(Error::unexpected("x"), &Subject::Source("from", "k1"));
        assert_eq!(
            acting_on(read, &Subject::Object("to", "k2")).message(),
            r#"x (source object "k1" in bucket "from") (object "k2" in bucket "to")"#
        );
    }
}
