//! Provider-neutral requests and responses of the [`ObjectStore`](crate::ObjectStore) trait.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use platform_core::{Error, Result};

/// A streamed object body: chunks of bytes, or the error that cut the stream short.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send + 'static>>;

/// Turns one buffer into a [`BodyStream`] of one chunk (none when empty).
pub fn body_from_bytes(bytes: impl Into<Bytes>) -> BodyStream {
    let bytes = bytes.into();
    if bytes.is_empty() {
        Box::pin(futures::stream::empty())
    } else {
        Box::pin(futures::stream::once(async move { Ok(bytes) }))
    }
}

/// Reads a whole [`BodyStream`] into memory.
///
/// # Errors
/// The first error the stream yields.
pub async fn collect_body(body: BodyStream) -> Result<Bytes> {
    let chunks: Vec<Bytes> = body.try_collect().await?;
    if chunks.len() == 1 {
        return Ok(chunks.into_iter().next().unwrap_or_default());
    }
    let mut out = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        out.extend_from_slice(&c);
    }
    Ok(Bytes::from(out))
}

/// Splits `bytes` into a stream of chunks of `chunk` bytes (for tests and examples).
pub fn body_in_chunks(bytes: Bytes, chunk: usize) -> BodyStream {
    let chunk = chunk.max(1);
    let count = bytes.len().div_ceil(chunk);
    Box::pin(
        futures::stream::iter(0..count)
            .map(move |i| Ok(bytes.slice(i * chunk..((i + 1) * chunk).min(bytes.len())))),
    )
}

/// Options of a put: content type, cache control, user metadata, precondition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutOptions {
    /// `Content-Type` stored with the object (default `application/octet-stream`).
    pub content_type: Option<String>,
    /// `Cache-Control` stored with the object and served back.
    pub cache_control: Option<String>,
    /// User metadata (S3's `x-amz-meta-*`): keys are lowercase ASCII letters, digits
    /// and `-`; values printable ASCII. At most 2 KiB in total.
    pub metadata: BTreeMap<String, String>,
    /// Only create: fail with `Conflict` when the key already exists (`If-None-Match: *`).
    /// On S3 such a put is not retried: after a lost response, a retry would find this
    /// call's own object and report `Conflict`.
    pub create_only: bool,
    /// The exact length of the body, when known. A body of another length fails with
    /// `InvalidInput` and nothing is stored. For `put_stream` on S3 it also picks the
    /// transfer: a known length up to the single-put limit is sent as one streaming
    /// `PutObject` instead of a multipart upload.
    pub content_length: Option<u64>,
}

impl PutOptions {
    /// No content type, no metadata, overwrite allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the content type.
    #[must_use]
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets the cache control.
    #[must_use]
    pub fn with_cache_control(mut self, cache_control: impl Into<String>) -> Self {
        self.cache_control = Some(cache_control.into());
        self
    }

    /// Adds one metadata entry.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Fails with `Conflict` if the key already exists.
    #[must_use]
    pub fn create_only(mut self) -> Self {
        self.create_only = true;
        self
    }

    /// Declares the exact length of the body (see [`PutOptions::content_length`]).
    #[must_use]
    pub fn with_content_length(mut self, bytes: u64) -> Self {
        self.content_length = Some(bytes);
        self
    }

    /// `InvalidInput` when a declared length differs from `actual`.
    pub(crate) fn check_length(&self, actual: u64) -> Result<()> {
        match self.content_length {
            Some(expected) if expected != actual => Err(length_mismatch(expected, actual)),
            _ => Ok(()),
        }
    }

    /// `body`, failing with `InvalidInput` once it yields more or fewer bytes than the
    /// declared length (unchanged when no length is declared).
    ///
    /// The chunk that completes the declared length is held back until the stream is
    /// seen to end: an HTTP client sends exactly the declared length and stops reading
    /// the body there, so an excess found only afterwards would be silently dropped
    /// while the first bytes are stored.
    pub(crate) fn checked_body(&self, body: BodyStream) -> BodyStream {
        let Some(expected) = self.content_length else {
            return body;
        };
        Box::pin(futures::stream::unfold(
            (body, 0u64, false),
            move |(mut body, seen, done)| async move {
                if done {
                    return None;
                }
                let item = match body.next().await {
                    Some(Ok(chunk)) => {
                        let seen = seen + chunk.len() as u64;
                        if seen < expected {
                            return Some((Ok(chunk), (body, seen, false)));
                        }
                        match bytes_after_end(&mut body).await {
                            Ok(0) if seen == expected => return Some((Ok(chunk), (body, seen, true))),
                            Ok(more) => Err(length_mismatch(expected, seen + more)),
                            Err(e) => Err(e),
                        }
                    }
                    Some(Err(e)) => Err(e),
                    None if seen != expected => Err(length_mismatch(expected, seen)),
                    None => return None,
                };
                Some((item, (body, seen, true)))
            },
        ))
    }
}

/// Reads `body` up to its end or its first non-empty chunk: that chunk's length (0 at
/// the end).
async fn bytes_after_end(body: &mut BodyStream) -> Result<u64> {
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if !chunk.is_empty() {
            return Ok(chunk.len() as u64);
        }
    }
    Ok(0)
}

fn length_mismatch(expected: u64, actual: u64) -> Error {
    Error::invalid_input(format!(
        "body of {}{actual} bytes differs from the declared content length {expected}",
        if actual > expected { "at least " } else { "" }
    ))
}

/// Stored facts about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectMeta {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// An opaque version tag (S3's ETag), changes when the content changes.
    pub etag: Option<String>,
    /// When the object was last written (second precision).
    pub last_modified: Option<DateTime<Utc>>,
    /// The content type (not filled by `list`).
    pub content_type: Option<String>,
    /// The cache control (not filled by `list`).
    pub cache_control: Option<String>,
    /// User metadata (not filled by `list`).
    pub metadata: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// Facts with only a key and a size.
    pub fn new(key: impl Into<String>, size: u64) -> Self {
        Self {
            key: key.into(),
            size,
            etag: None,
            last_modified: None,
            content_type: None,
            cache_control: None,
            metadata: BTreeMap::new(),
        }
    }
}

/// A byte range of an object, inclusive start and exclusive end like Rust ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ByteRange {
    /// `start..end` (end exclusive, clamped to the object size).
    Bounded {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// From `start` to the end.
    From(u64),
    /// The last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Resolves the range against an object of `size` bytes: the half-open `(start, end)`.
    ///
    /// # Errors
    /// `InvalidInput` when the range is empty or starts past the end (S3 answers 416).
    pub fn resolve(self, size: u64) -> Result<(u64, u64)> {
        let (start, end) = match self {
            Self::Bounded { start, end } => (start, end.min(size)),
            Self::From(start) => (start, size),
            Self::Suffix(n) => (size.saturating_sub(n), size),
        };
        if start >= end || start >= size {
            return Err(Error::invalid_input(format!(
                "range {self:?} is not satisfiable for an object of {size} bytes"
            )));
        }
        Ok((start, end))
    }

    /// The range, unless it is empty whatever the object's size (`InvalidInput`): a
    /// bounded range that ends where or before it starts, or a suffix of 0 bytes.
    pub(crate) fn non_empty(self) -> Result<Self> {
        match self {
            Self::Bounded { start, end } if start >= end => {}
            Self::Suffix(0) => {}
            _ => return Ok(self),
        }
        Err(Error::invalid_input(format!("range {self:?} is empty")))
    }

    /// The HTTP `Range` header value.
    pub fn to_header(self) -> String {
        match self {
            Self::Bounded { start, end } => format!("bytes={start}-{}", end.saturating_sub(1)),
            Self::From(start) => format!("bytes={start}-"),
            Self::Suffix(n) => format!("bytes=-{n}"),
        }
    }
}

/// Options of a get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GetOptions {
    /// Only these bytes.
    pub range: Option<ByteRange>,
}

impl GetOptions {
    /// The whole object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only `range`.
    #[must_use]
    pub fn with_range(mut self, range: ByteRange) -> Self {
        self.range = Some(range);
        self
    }
}

/// The answer of a get: facts about the object and its (possibly partial) body.
#[non_exhaustive]
pub struct GetResult {
    /// Facts about the whole object (`size` is the whole object's size).
    pub meta: ObjectMeta,
    /// The half-open byte range the body holds.
    pub range: (u64, u64),
    /// The body, streamed.
    pub body: BodyStream,
}

impl GetResult {
    /// A result (for implementations).
    pub fn new(meta: ObjectMeta, range: (u64, u64), body: BodyStream) -> Self {
        Self { meta, range, body }
    }

    /// Reads the whole body into memory.
    ///
    /// # Errors
    /// The first error of the stream.
    pub async fn bytes(self) -> Result<Bytes> {
        collect_body(self.body).await
    }
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// Options of a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListOptions {
    /// The token of the previous page's [`ListPage::next_token`].
    pub continuation: Option<String>,
    /// At most this many objects per page (1–1000, default 1000).
    pub max_keys: Option<usize>,
}

impl ListOptions {
    /// The first page, 1000 keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues after a previous page.
    #[must_use]
    pub fn after(mut self, token: impl Into<String>) -> Self {
        self.continuation = Some(token.into());
        self
    }

    /// Sets the page size.
    #[must_use]
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = Some(max_keys);
        self
    }

    pub(crate) fn page_size(&self) -> Result<usize> {
        match self.max_keys {
            None => Ok(1000),
            Some(n @ 1..=1000) => Ok(n),
            Some(n) => Err(Error::invalid_input(format!(
                "max_keys must be 1 to 1000, got {n}"
            ))),
        }
    }
}

/// One page of a listing, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListPage {
    /// The objects (key, size, etag, last modified).
    pub objects: Vec<ObjectMeta>,
    /// Where the next page starts; `None` on the last page.
    pub next_token: Option<String>,
}

impl ListPage {
    /// A page (for implementations).
    pub fn new(objects: Vec<ObjectMeta>, next_token: Option<String>) -> Self {
        Self { objects, next_token }
    }
}

/// The HTTP method a presigned URL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PresignMethod {
    /// Download.
    Get,
    /// Upload.
    Put,
}

impl PresignMethod {
    /// `GET` or `PUT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Put => "PUT",
        }
    }
}

/// What to presign.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresignOptions {
    /// GET or PUT.
    pub method: PresignMethod,
    /// How long the URL stays valid (1 s to 7 days).
    pub expires_in: Duration,
    /// PUT only: the `Content-Type` the uploader must send (signed).
    pub content_type: Option<String>,
    /// PUT only: the exact `Content-Length` the uploader must send (signed).
    pub content_length: Option<u64>,
}

impl PresignOptions {
    /// A presigned download valid for `expires_in`.
    pub fn get(expires_in: Duration) -> Self {
        Self {
            method: PresignMethod::Get,
            expires_in,
            content_type: None,
            content_length: None,
        }
    }

    /// A presigned upload valid for `expires_in`, pinned to a content type and exact length.
    pub fn put(expires_in: Duration, content_type: impl Into<String>, content_length: u64) -> Self {
        Self {
            method: PresignMethod::Put,
            expires_in,
            content_type: Some(content_type.into()),
            content_length: Some(content_length),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.expires_in < Duration::from_secs(1) || self.expires_in > MAX_PRESIGN_EXPIRY {
            return Err(Error::invalid_input(format!(
                "presigned URL expiry must be 1 s to 7 days, got {:?}",
                self.expires_in
            )));
        }
        if self.method == PresignMethod::Put && (self.content_type.is_none() || self.content_length.is_none())
        {
            return Err(Error::invalid_input(
                "a presigned PUT needs a content type and a content length",
            ));
        }
        Ok(())
    }
}

/// The longest expiry of a presigned URL (S3's limit).
pub const MAX_PRESIGN_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// A presigned request: anyone holding it may perform it until it expires. Its
/// `Debug` output leaves out the URL's query, which holds the signature.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresignedRequest {
    /// GET or PUT.
    pub method: PresignMethod,
    /// The URL.
    pub url: String,
    /// Headers the caller must send exactly as given (content type and length for PUT).
    pub headers: Vec<(String, String)>,
    /// When the URL stops working.
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for PresignedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresignedRequest")
            .field("method", &self.method)
            .field("url", &RedactedUrl(&self.url))
            .field("headers", &self.headers)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Shows a URL without its query (`?[redacted]`): a presigned URL's query is its
/// credential (signature, credential scope).
pub(crate) struct RedactedUrl<'a>(pub(crate) &'a str);

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once('?') {
            Some((base, _)) => write!(f, "\"{base}?[redacted]\""),
            None => write!(f, "{:?}", self.0),
        }
    }
}

impl PresignedRequest {
    /// A presigned request (for implementations).
    pub fn new(
        method: PresignMethod,
        url: String,
        headers: Vec<(String, String)>,
        expires_at: DateTime<Utc>,
    ) -> Self {
        Self {
            method,
            url,
            headers,
            expires_at,
        }
    }
}

/// One lifecycle rule of a bucket, provider-neutral.
///
/// On R2 there are two storage classes, Standard and Infrequent Access: a rule can
/// move objects under `prefix` to Infrequent Access after `transition_days`, delete
/// them after `expiration_days`, and abort multipart uploads left incomplete after
/// `abort_incomplete_multipart_days`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct LifecycleRule {
    /// The rule's id (unique within the bucket).
    pub id: String,
    /// Objects whose key starts with this (empty: every object).
    pub prefix: String,
    /// Days after creation when objects move to Infrequent Access.
    pub transition_days: Option<u32>,
    /// Days after creation when objects are deleted.
    pub expiration_days: Option<u32>,
    /// Days after which an incomplete multipart upload is aborted.
    pub abort_incomplete_multipart_days: Option<u32>,
}

impl LifecycleRule {
    /// A rule with an id and prefix and no action yet.
    pub fn new(id: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            prefix: prefix.into(),
            transition_days: None,
            expiration_days: None,
            abort_incomplete_multipart_days: None,
        }
    }

    /// Moves objects to Infrequent Access after `days`.
    #[must_use]
    pub fn transition_after(mut self, days: u32) -> Self {
        self.transition_days = Some(days);
        self
    }

    /// Deletes objects after `days`.
    #[must_use]
    pub fn expire_after(mut self, days: u32) -> Self {
        self.expiration_days = Some(days);
        self
    }

    /// Aborts incomplete multipart uploads after `days`.
    #[must_use]
    pub fn abort_incomplete_multipart_after(mut self, days: u32) -> Self {
        self.abort_incomplete_multipart_days = Some(days);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.id.is_empty() || self.id.len() > 255 {
            return Err(Error::invalid_input(
                "lifecycle rule id must be 1 to 255 characters",
            ));
        }
        if self.transition_days.is_none()
            && self.expiration_days.is_none()
            && self.abort_incomplete_multipart_days.is_none()
        {
            return Err(Error::invalid_input(format!(
                "lifecycle rule {:?} has no action",
                self.id
            )));
        }
        if let (Some(t), Some(e)) = (self.transition_days, self.expiration_days)
            && e <= t
        {
            return Err(Error::invalid_input(format!(
                "lifecycle rule {:?} expires objects (day {e}) before or when it transitions them (day {t})",
                self.id
            )));
        }
        Ok(())
    }
}

/// Validates a set of lifecycle rules: each valid, ids unique.
pub(crate) fn validate_rules(rules: &[LifecycleRule]) -> Result<()> {
    let mut ids = std::collections::BTreeSet::new();
    for r in rules {
        r.validate()?;
        if !ids.insert(r.id.as_str()) {
            return Err(Error::invalid_input(format!(
                "duplicate lifecycle rule id {:?}",
                r.id
            )));
        }
    }
    Ok(())
}
