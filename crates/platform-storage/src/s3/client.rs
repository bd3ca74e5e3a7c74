//! [`S3ObjectStore`]: the [`ObjectStore`] trait over aws-sdk-s3.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration, Delete, ExpirationStatus,
    LifecycleExpiration, LifecycleRuleFilter, MetadataDirective, ObjectIdentifier, Transition,
    TransitionStorageClass,
};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt as _;
use platform_core::{DynClock, Error, ErrorKind, Idempotency, Result, RetryPolicy};
use tracing::Instrument as _;

use super::error::{build_error, map_sdk_error};
use crate::ObjectStore;
use crate::memory::{Subject, acting_on, body_acting_on};
use crate::types::{
    BodyStream, ByteRange, GetOptions, GetResult, LifecycleRule, ListOptions, ListPage, ObjectMeta,
    PresignMethod, PresignOptions, PresignedRequest, PutOptions, validate_rules,
};
use crate::validate::{
    DELETE_BATCH_LIMIT, encode_key, validate_bucket, validate_key, validate_object, validate_prefix,
    validate_put,
};

pub(crate) const PROVIDER: &str = "s3";

/// Object storage on R2 or any S3-compatible server. Build it with
/// [`S3ObjectStoreBuilder`](super::S3ObjectStoreBuilder).
#[derive(Clone)]
pub struct S3ObjectStore {
    client: aws_sdk_s3::Client,
    region: String,
    part_size: usize,
    concurrency: usize,
    single_put_limit: u64,
    clock: DynClock,
    retry: RetryPolicy,
}

impl fmt::Debug for S3ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3ObjectStore")
            .field("region", &self.region)
            .field("part_size", &self.part_size)
            .field("concurrency", &self.concurrency)
            .field("single_put_limit", &self.single_put_limit)
            .finish_non_exhaustive()
    }
}

fn to_chrono(dt: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<DateTime<Utc>> {
    dt.and_then(|d| DateTime::<Utc>::from_timestamp(d.secs(), 0))
}

fn size_of(len: Option<i64>) -> u64 {
    len.and_then(|l| u64::try_from(l).ok()).unwrap_or(0)
}

fn to_i64(n: u64, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::invalid_input(format!("{what} {n} is too large")))
}

/// Parses `bytes 0-9/100` into the total size.
fn total_from_content_range(range: Option<&str>) -> Option<u64> {
    range?.rsplit_once('/')?.1.parse().ok()
}

/// Runs one S3 call inside a tracing span (provider, operation, outcome), retried
/// through the policy when `idempotency` allows.
async fn traced<T, F, Fut>(
    retry: &RetryPolicy,
    operation: &'static str,
    idempotency: Idempotency,
    op: F,
) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let span = tracing::info_span!(
        "storage.call",
        provider = PROVIDER,
        operation,
        outcome = tracing::field::Empty
    );
    let result = retry.retry(&idempotency, op).instrument(span.clone()).await;
    match &result {
        Ok(_) => span.record("outcome", "ok"),
        Err(e) => span.record("outcome", tracing::field::display(e.kind())),
    };
    result
}

/// The slowest upload an attempt to send a body held in memory is given time for:
/// such an attempt fails as timed out after the response timeout plus its body's
/// length at this rate (`PutObject` of bytes), or the length of all the parts in flight
/// at once (`UploadPart`: they share the link).
pub const MIN_UPLOAD_RATE: u64 = 64 * 1024;

impl S3ObjectStore {
    /// The timeouts of a call that sends a body (`PutObject`, `UploadPart`). The
    /// response timeout is off, since it counts from the start of the request and so
    /// includes sending the body (a large upload would always be cut off); the connect
    /// timeout stays. A body of `in_memory` bytes, which nothing but the network holds
    /// up, gets a deadline per attempt instead: the response timeout plus its length
    /// at [`MIN_UPLOAD_RATE`], so that a server that takes the body and never answers
    /// cannot hold the call for ever. A streamed body (`None`) goes at its producer's
    /// pace, which no deadline can know: the SDK's stalled-stream protection fails an
    /// upload whose body stops moving, and the caller's own timeout does the rest.
    fn upload_timeouts(&self, in_memory: Option<u64>) -> aws_sdk_s3::config::Builder {
        let configured = self.client.config().timeout_config();
        let mut timeouts = TimeoutConfig::builder().disable_read_timeout();
        if let Some(connect) = configured.and_then(TimeoutConfig::connect_timeout) {
            timeouts = timeouts.connect_timeout(connect);
        }
        if let (Some(len), Some(response)) = (in_memory, configured.and_then(TimeoutConfig::read_timeout)) {
            let sending = Duration::from_secs_f64(len as f64 / MIN_UPLOAD_RATE as f64);
            timeouts = timeouts.operation_attempt_timeout(response.saturating_add(sending));
        }
        aws_sdk_s3::config::Builder::default().timeout_config(timeouts.build())
    }

    pub(crate) fn from_parts(
        client: aws_sdk_s3::Client,
        region: String,
        part_size: usize,
        concurrency: usize,
        single_put_limit: u64,
        clock: DynClock,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            client,
            region,
            part_size,
            concurrency,
            single_put_limit,
            clock,
            retry,
        }
    }

    /// The multipart part size in bytes.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// One `PutObject` of an in-memory body (retried: the body can be re-sent), but for
    /// a create-only put: after a lost response, a retry would find the object this
    /// call stored and report `Conflict`.
    async fn put_single(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<ObjectMeta> {
        let len = body.len() as u64;
        let idempotency = if opts.create_only {
            Idempotency::NonIdempotent
        } else {
            Idempotency::Idempotent
        };
        self.put_object(bucket, key, len, opts, idempotency, || {
            Ok(ByteStream::from(body.clone()))
        })
        .await
    }

    /// One streaming `PutObject` of a body of known length: nothing is buffered, the
    /// payload is sent unsigned (`UNSIGNED-PAYLOAD`, as the SDK does for any stream)
    /// and the call is not retried (the stream cannot be replayed). An error of the
    /// stream (including a length mismatch) is returned as is; the server stores
    /// nothing from a cut-short request.
    async fn put_streaming(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
        body: BodyStream,
        opts: &PutOptions,
    ) -> Result<ObjectMeta> {
        let failure = Arc::new(Mutex::new(None));
        let mut body = Some(StreamingBody {
            body: std::sync::Mutex::new(body),
            failure: failure.clone(),
            len,
            sent: 0,
        });
        let result = self
            .put_object(bucket, key, len, opts, Idempotency::NonIdempotent, || {
                body.take()
                    .map(|b| ByteStream::new(SdkBody::from_body_1_x(b)))
                    .ok_or_else(|| Error::unexpected("a streamed body can be sent only once"))
            })
            .await;
        let failed = failure.lock().unwrap_or_else(PoisonError::into_inner).take();
        match (result, failed) {
            (Err(_), Some(stream_error)) => Err(stream_error),
            (result, _) => result,
        }
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
        opts: &PutOptions,
        idempotency: Idempotency,
        mut body: impl FnMut() -> Result<ByteStream>,
    ) -> Result<ObjectMeta> {
        let metadata: HashMap<String, String> = opts.metadata.clone().into_iter().collect();
        let content_length = to_i64(len, "content length")?;
        let out = traced(&self.retry, "put_object", idempotency, |_| {
            let req = body().map(|body| {
                // A body in memory gets a deadline (see `upload_timeouts`).
                let timeouts = self.upload_timeouts(body.bytes().map(|b| b.len() as u64));
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body)
                    .content_length(content_length)
                    .set_content_type(opts.content_type.clone())
                    .set_cache_control(opts.cache_control.clone())
                    .set_metadata(Some(metadata.clone()))
                    .set_if_none_match(opts.create_only.then(|| "*".to_owned()))
                    .customize()
                    .config_override(timeouts)
            });
            async move { req?.send().await.map_err(|e| map_sdk_error("put_object", e)) }
        })
        .await?;
        let mut meta = ObjectMeta::new(key, len);
        meta.etag = out.e_tag().map(str::to_owned);
        meta.last_modified = DateTime::from_timestamp(self.clock.unix_seconds(), 0);
        meta.content_type = Some(
            opts.content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
        );
        meta.cache_control = opts.cache_control.clone();
        meta.metadata = opts.metadata.clone();
        Ok(meta)
    }

    /// Uploads the parts (`first`, then the rest of `reader`) with at most
    /// `concurrency` in flight; returns them in order.
    async fn upload_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        first: Vec<Bytes>,
        reader: &mut PartReader,
    ) -> Result<Vec<CompletedPart>> {
        // A set that aborts its part uploads when dropped (the caller gave up); on an
        // error they are cancelled and waited for before the upload is aborted, so that
        // no part lands after the abort.
        let mut in_flight = tokio::task::JoinSet::new();
        let result = self
            .send_parts(&mut in_flight, bucket, key, upload_id, first, reader)
            .await;
        if result.is_err() {
            in_flight.shutdown().await;
        }
        result
    }

    /// [`upload_parts`](Self::upload_parts)' work, its part uploads spawned in `in_flight`.
    async fn send_parts(
        &self,
        in_flight: &mut tokio::task::JoinSet<Result<CompletedPart>>,
        bucket: &str,
        key: &str,
        upload_id: &str,
        first: Vec<Bytes>,
        reader: &mut PartReader,
    ) -> Result<Vec<CompletedPart>> {
        let mut pending = first.into_iter();
        let mut done = Vec::new();
        let mut number = 0i32;
        let mut exhausted = false;
        loop {
            while !exhausted && in_flight.len() < self.concurrency {
                let part = match pending.next() {
                    Some(p) => Some(p),
                    None => reader.next_part().await?,
                };
                let Some(part) = part else {
                    exhausted = true;
                    break;
                };
                number += 1;
                if number > MAX_PARTS {
                    return Err(Error::invalid_input(format!(
                        "object {key:?} is larger than {MAX_PARTS} parts of {} bytes, the most a multipart \
                         upload holds: declare its content length, which sizes the parts to fit",
                        part.len()
                    )));
                }
                let (client, retry) = (self.client.clone(), self.retry.clone());
                // The parts in flight share the link: each is given the time to send
                // all of them.
                let sharing = part.len() as u64 * self.concurrency as u64;
                let timeouts = self.upload_timeouts(Some(sharing));
                let (bucket, key, upload_id) = (bucket.to_owned(), key.to_owned(), upload_id.to_owned());
                let n = number;
                in_flight.spawn(async move {
                    traced(&retry, "upload_part", Idempotency::Idempotent, |_| {
                        let req = client
                            .upload_part()
                            .bucket(&bucket)
                            .key(&key)
                            .upload_id(&upload_id)
                            .part_number(n)
                            .content_length(i64::try_from(part.len()).unwrap_or(i64::MAX))
                            .body(ByteStream::from(part.clone()))
                            .customize()
                            .config_override(timeouts.clone())
                            .disable_payload_signing();
                        async move { req.send().await.map_err(|e| map_sdk_error("upload_part", e)) }
                    })
                    .await
                    .map(|out| {
                        CompletedPart::builder()
                            .part_number(n)
                            .set_e_tag(out.e_tag().map(str::to_owned))
                            .build()
                    })
                });
            }
            match in_flight.join_next().await {
                Some(joined) => {
                    let part =
                        joined.map_err(|e| Error::unexpected("upload task failed").with_source(e))??;
                    done.push(part);
                }
                None => break,
            }
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }

    /// A streamed put (see `put_stream`): empty, in one request, or in parts.
    async fn upload_stream(
        &self,
        bucket: &str,
        key: &str,
        body: BodyStream,
        opts: &PutOptions,
    ) -> Result<ObjectMeta> {
        let mut body = opts.checked_body(body);
        if opts.content_length == Some(0) {
            // HTTP never reads a body declared empty: read it here (it must be).
            while let Some(chunk) = body.next().await {
                chunk?;
            }
            return self.put_single(bucket, key, Bytes::new(), opts).await;
        }
        if let Some(len) = opts.content_length
            && len <= self.single_put_limit
        {
            return self.put_streaming(bucket, key, len, body, opts).await;
        }
        let part_size = match opts.content_length {
            Some(len) => part_size_for(len, self.part_size)?,
            None => self.part_size,
        };
        let mut reader = PartReader::new(body, part_size);
        let first = reader.next_part().await?.unwrap_or_default();
        match reader.next_part().await? {
            None => self.put_single(bucket, key, first, opts).await,
            Some(second) => {
                self.multipart(bucket, key, vec![first, second], &mut reader, opts)
                    .await
            }
        }
    }

    async fn multipart(
        &self,
        bucket: &str,
        key: &str,
        first: Vec<Bytes>,
        reader: &mut PartReader,
        opts: &PutOptions,
    ) -> Result<ObjectMeta> {
        let metadata: HashMap<String, String> = opts.metadata.clone().into_iter().collect();
        let created = traced(
            &self.retry,
            "create_multipart_upload",
            Idempotency::NonIdempotent,
            |_| {
                let req = self
                    .client
                    .create_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .set_content_type(opts.content_type.clone())
                    .set_cache_control(opts.cache_control.clone())
                    .set_metadata(Some(metadata.clone()));
                async move {
                    req.send()
                        .await
                        .map_err(|e| map_sdk_error("create_multipart_upload", e))
                }
            },
        )
        .await?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                Error::new(ErrorKind::Provider, "S3 returned no upload id").with_provider(PROVIDER)
            })?
            .to_owned();
        let mut cancelled = AbortOnCancel {
            client: self.client.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        let result = async {
            let parts = self.upload_parts(bucket, key, &upload_id, first, reader).await?;
            let completed = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
            // Retried (a transient failure would otherwise throw every part away), but
            // not for a create-only put: a repeat after a lost reply would find the
            // object it made and fail.
            let idempotency = if opts.create_only {
                Idempotency::NonIdempotent
            } else {
                Idempotency::Idempotent
            };
            traced(&self.retry, "complete_multipart_upload", idempotency, |attempt| {
                let req = self
                    .client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(completed.clone())
                    .set_if_none_match(opts.create_only.then(|| "*".to_owned()));
                async move {
                    req.send()
                        .await
                        .map_err(|e| completion_error(attempt, map_sdk_error("complete_multipart_upload", e)))
                }
            })
            .await
        }
        .await;
        match result {
            Ok(_) => {
                cancelled.armed = false;
                self.head(bucket, key).await
            }
            Err(e) => {
                // Still armed: should this future be dropped during the abort, the
                // upload is aborted from a task of its own instead.
                let aborted = traced(
                    &self.retry,
                    "abort_multipart_upload",
                    Idempotency::Idempotent,
                    |_| {
                        let req = self
                            .client
                            .abort_multipart_upload()
                            .bucket(bucket)
                            .key(key)
                            .upload_id(&upload_id);
                        async move {
                            req.send()
                                .await
                                .map_err(|e| map_sdk_error("abort_multipart_upload", e))
                        }
                    },
                )
                .await;
                cancelled.armed = false;
                if let Err(abort) = aborted {
                    tracing::warn!(error = %abort, "could not abort a failed multipart upload");
                }
                Err(e)
            }
        }
    }

    fn lifecycle_rule(rule: &LifecycleRule) -> Result<aws_sdk_s3::types::LifecycleRule> {
        let days = |d: u32| i32::try_from(d).unwrap_or(i32::MAX);
        let mut b = aws_sdk_s3::types::LifecycleRule::builder()
            .id(&rule.id)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix(&rule.prefix).build());
        if let Some(d) = rule.transition_days {
            b = b.transitions(
                Transition::builder()
                    .days(days(d))
                    .storage_class(TransitionStorageClass::StandardIa)
                    .build(),
            );
        }
        if let Some(d) = rule.expiration_days {
            b = b.expiration(LifecycleExpiration::builder().days(days(d)).build());
        }
        if let Some(d) = rule.abort_incomplete_multipart_days {
            b = b.abort_incomplete_multipart_upload(
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(days(d))
                    .build(),
            );
        }
        b.build().map_err(|e| build_error("put_bucket_lifecycle", e))
    }

    fn rule_from_s3(rule: &aws_sdk_s3::types::LifecycleRule) -> LifecycleRule {
        let days = |d: Option<i32>| d.and_then(|d| u32::try_from(d).ok());
        #[allow(deprecated, reason = "old servers return the rule-level prefix")]
        let prefix = rule
            .filter()
            .and_then(|f| f.prefix())
            .or_else(|| rule.prefix())
            .unwrap_or_default();
        let mut r = LifecycleRule::new(rule.id().unwrap_or_default(), prefix);
        r.transition_days = days(rule.transitions().first().and_then(Transition::days));
        r.expiration_days = days(rule.expiration().and_then(LifecycleExpiration::days));
        r.abort_incomplete_multipart_days = days(
            rule.abort_incomplete_multipart_upload()
                .and_then(AbortIncompleteMultipartUpload::days_after_initiation),
        );
        r
    }
}

/// A [`BodyStream`] as an HTTP body of known length; the first error of the stream is
/// kept in `failure` so the caller returns it rather than the SDK's dispatch error.
struct StreamingBody {
    // A Mutex makes the `Send` stream `Sync`, as the SDK's body requires; only
    // `get_mut` is used, so it is never locked.
    body: std::sync::Mutex<BodyStream>,
    failure: Arc<Mutex<Option<Error>>>,
    len: u64,
    /// Bytes yielded so far (see `is_end_stream`).
    sent: u64,
}

impl http_body::Body for StreamingBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        let body = self.body.get_mut().unwrap_or_else(PoisonError::into_inner);
        match body.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.sent += chunk.len() as u64;
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => {
                let shown = std::io::Error::other(e.to_string());
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                Poll::Ready(Some(Err(shown)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// True once the declared length is yielded. hyper stops polling a body there, so
    /// its end is never seen otherwise, and the SDK's stalled-stream protection would
    /// count the wait for the answer as a stalled upload (failing a put answered more
    /// than ~5 s after its last byte). The length is checked before the last chunk is
    /// yielded (`PutOptions::checked_body`), so nothing can follow it.
    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// The error of a call on one object, naming the object: S3's answer does not. A
/// `NotFound` (`NoSuchKey: The specified key does not exist.`, or a bodiless 404 to a
/// HEAD) reads as the local stores' does; any other names it as [`acting_on`] does.
fn name_missing(bucket: &str, key: &str, e: Error) -> Error {
    if e.kind() != ErrorKind::NotFound {
        return acting_on(e, &Subject::Object(bucket, key));
    }
    let mut named = Error::new(
        ErrorKind::NotFound,
        format!("no object {key:?} in bucket {bucket:?} ({})", e.message()),
    )
    .with_provider(PROVIDER);
    if let Some(operation) = e.operation() {
        named = named.with_operation(operation.to_owned());
    }
    if let Some(status) = e.status() {
        named = named.with_status(status);
    }
    named.with_source(e)
}

/// The error of try `attempt` to complete a multipart upload. A retry that finds the
/// upload gone (`NoSuchUpload`) may follow a first try that completed it and lost its
/// reply: the outcome is unknown (`Unavailable`), not a missing object.
fn completion_error(attempt: u32, e: Error) -> Error {
    if attempt > 1 && e.kind() == ErrorKind::NotFound {
        Error::new(
            ErrorKind::Unavailable,
            "the multipart upload was gone when its completion was retried: \
             the first try may have stored the object",
        )
        .with_provider(PROVIDER)
        .with_operation("complete_multipart_upload")
        .with_source(e)
    } else {
        e
    }
}

/// Aborts a multipart upload from a task of its own when dropped while armed: the put's
/// future was dropped (a caller's timeout, a client gone) before the upload completed or
/// was aborted, and its parts would otherwise stay stored, and billed, until a bucket
/// lifecycle rule removes them (if the bucket has one).
struct AbortOnCancel {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortOnCancel {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(std::mem::take(&mut self.bucket))
            .key(std::mem::take(&mut self.key))
            .upload_id(std::mem::take(&mut self.upload_id));
        runtime.spawn(async move {
            if let Err(e) = request.send().await {
                let e = map_sdk_error("abort_multipart_upload", e);
                tracing::warn!(error = %e, "could not abort a cancelled multipart upload");
            }
        });
    }
}

/// The most parts a multipart upload may have (S3 and R2).
const MAX_PARTS: i32 = 10_000;
/// The largest object S3 stores (5 TiB).
const MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024 * 1024;

/// The part size for an upload of `len` bytes: the configured one, or, when that would
/// take more than [`MAX_PARTS`] parts, the smallest whole number of MiB that fits
/// (parts stay equal, as R2 requires).
fn part_size_for(len: u64, configured: usize) -> Result<usize> {
    if len > MAX_OBJECT_SIZE {
        return Err(Error::invalid_input(format!(
            "an object of {len} bytes is over S3's largest, {MAX_OBJECT_SIZE} bytes"
        )));
    }
    const MIB: u64 = 1024 * 1024;
    let fitting = len.div_ceil(MAX_PARTS as u64).div_ceil(MIB) * MIB;
    Ok(configured.max(usize::try_from(fitting).unwrap_or(usize::MAX)))
}

/// Cuts a body stream into parts of exactly `part_size` bytes (the last may be shorter),
/// holding at most one part plus one chunk in memory.
struct PartReader {
    body: BodyStream,
    buf: BytesMut,
    part_size: usize,
    ended: bool,
}

impl PartReader {
    fn new(body: BodyStream, part_size: usize) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            part_size,
            ended: false,
        }
    }

    async fn next_part(&mut self) -> Result<Option<Bytes>> {
        while !self.ended && self.buf.len() < self.part_size {
            match self.body.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    if self.buf.capacity() == 0 {
                        self.buf.reserve(self.part_size.max(chunk.len()));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                None => self.ended = true,
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let take = self.buf.len().min(self.part_size);
        let part = self.buf.split_to(take).freeze();
        if self.buf.is_empty() {
            // Give the next part a fresh buffer instead of growing this one.
            self.buf = BytesMut::new();
        }
        Ok(Some(part))
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    async fn create_bucket(&self, bucket: &str) -> Result<()> {
        validate_bucket(bucket)?;
        let config = (self.region != "us-east-1").then(|| {
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                .build()
        });
        let result = traced(&self.retry, "create_bucket", Idempotency::Idempotent, |_| {
            let req = self
                .client
                .create_bucket()
                .bucket(bucket)
                .set_create_bucket_configuration(config.clone());
            async move { req.send().await.map_err(|e| map_sdk_error("create_bucket", e)) }
        })
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.message().starts_with("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(acting_on(e, &Subject::Bucket(bucket))),
        }
    }

    async fn put(&self, bucket: &str, key: &str, body: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        validate_put(bucket, key, &opts)?;
        opts.check_length(body.len() as u64)?;
        self.put_single(bucket, key, body, &opts)
            .await
            .map_err(|e| acting_on(e, &Subject::Object(bucket, key)))
    }

    async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        body: BodyStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        validate_put(bucket, key, &opts)?;
        self.upload_stream(bucket, key, body, &opts)
            .await
            .map_err(|e| acting_on(e, &Subject::Object(bucket, key)))
    }

    async fn get(&self, bucket: &str, key: &str, opts: GetOptions) -> Result<GetResult> {
        validate_object(bucket, key)?;
        // S3 would answer an empty range with one byte (`bytes=0-0`) or the whole
        // object (an inverted range is ignored); locally it is an error.
        let range = opts.range.map(ByteRange::non_empty).transpose()?;
        let out = traced(&self.retry, "get_object", Idempotency::Idempotent, |_| {
            let req = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .set_range(range.map(ByteRange::to_header));
            async move { req.send().await.map_err(|e| map_sdk_error("get_object", e)) }
        })
        .await
        .map_err(|e| name_missing(bucket, key, e))?;
        let length = size_of(out.content_length());
        let size = total_from_content_range(out.content_range()).unwrap_or(length);
        let mut meta = ObjectMeta::new(key, size);
        meta.etag = out.e_tag().map(str::to_owned);
        meta.last_modified = to_chrono(out.last_modified());
        meta.content_type = out.content_type().map(str::to_owned);
        meta.cache_control = out.cache_control().map(str::to_owned);
        meta.metadata = out
            .metadata()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let start = match out.content_range().and_then(|r| r.strip_prefix("bytes ")) {
            Some(r) => r.split('-').next().and_then(|s| s.parse().ok()).unwrap_or(0),
            None => 0,
        };
        let body = futures::stream::try_unfold(out.body, |mut body| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, body))),
                Ok(None) => Ok(None),
                Err(e) => Err(Error::new(ErrorKind::Unavailable, "S3 body stream failed")
                    .with_provider(PROVIDER)
                    .with_operation("get_object")
                    .with_source(e)),
            }
        });
        let body = body_acting_on(Box::pin(body), &Subject::Object(bucket, key));
        Ok(GetResult::new(meta, (start, start + length), body))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta> {
        validate_object(bucket, key)?;
        let out = traced(&self.retry, "head_object", Idempotency::Idempotent, |_| {
            let req = self.client.head_object().bucket(bucket).key(key);
            async move { req.send().await.map_err(|e| map_sdk_error("head_object", e)) }
        })
        .await
        .map_err(|e| name_missing(bucket, key, e))?;
        let mut meta = ObjectMeta::new(key, size_of(out.content_length()));
        meta.etag = out.e_tag().map(str::to_owned);
        meta.last_modified = to_chrono(out.last_modified());
        meta.content_type = out.content_type().map(str::to_owned);
        meta.cache_control = out.cache_control().map(str::to_owned);
        meta.metadata = out
            .metadata()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default();
        Ok(meta)
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        validate_object(bucket, key)?;
        traced(&self.retry, "delete_object", Idempotency::Idempotent, |_| {
            let req = self.client.delete_object().bucket(bucket).key(key);
            async move { req.send().await.map_err(|e| map_sdk_error("delete_object", e)) }
        })
        .await
        .map_err(|e| acting_on(e, &Subject::Object(bucket, key)))?;
        Ok(())
    }

    async fn delete_many(&self, bucket: &str, keys: &[String]) -> Result<()> {
        validate_bucket(bucket)?;
        keys.iter().try_for_each(|k| validate_key(k))?;
        for chunk in keys.chunks(DELETE_BATCH_LIMIT) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| acting_on(build_error("delete_objects", e), &Subject::Bucket(bucket)))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| acting_on(build_error("delete_objects", e), &Subject::Bucket(bucket)))?;
            let out = traced(&self.retry, "delete_objects", Idempotency::Idempotent, |_| {
                let req = self.client.delete_objects().bucket(bucket).delete(delete.clone());
                async move { req.send().await.map_err(|e| map_sdk_error("delete_objects", e)) }
            })
            .await
            .map_err(|e| acting_on(e, &Subject::Bucket(bucket)))?;
            if let Some(first) = out.errors().first() {
                return Err(Error::new(
                    ErrorKind::Provider,
                    format!(
                        "{} of {} keys were not deleted from bucket {bucket:?}; first: {:?} ({})",
                        out.errors().len(),
                        chunk.len(),
                        first.key().unwrap_or_default(),
                        first.code().unwrap_or("unknown error")
                    ),
                )
                .with_provider(PROVIDER)
                .with_operation("delete_objects"));
            }
        }
        Ok(())
    }

    async fn list(&self, bucket: &str, prefix: &str, opts: ListOptions) -> Result<ListPage> {
        validate_bucket(bucket)?;
        validate_prefix(prefix)?;
        let max = i32::try_from(opts.page_size()?).unwrap_or(1000);
        let out = traced(&self.retry, "list_objects_v2", Idempotency::Idempotent, |_| {
            let req = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .max_keys(max)
                .set_continuation_token(opts.continuation.clone());
            async move { req.send().await.map_err(|e| map_sdk_error("list_objects_v2", e)) }
        })
        .await
        .map_err(|e| acting_on(e, &Subject::Bucket(bucket)))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                let mut m = ObjectMeta::new(o.key()?, size_of(o.size()));
                m.etag = o.e_tag().map(str::to_owned);
                m.last_modified = to_chrono(o.last_modified());
                Some(m)
            })
            .collect();
        let next = if out.is_truncated().unwrap_or(false) {
            out.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok(ListPage::new(objects, next))
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
        if let Some(o) = &replace {
            validate_put(to_bucket, to_key, o)?;
            if o.create_only {
                // `CopyObject` with `If-None-Match` is not honoured by every
                // S3-compatible server (it overwrote the destination): a create-only
                // copy streams the object through a conditional put instead.
                let source = self.get(from_bucket, from_key, GetOptions::new()).await?;
                let body = body_acting_on(source.body, &Subject::Source(from_bucket, from_key));
                let opts = o.clone().with_content_length(source.meta.size);
                return self.put_stream(to_bucket, to_key, body, opts).await;
            }
        }
        let source = format!("{from_bucket}/{}", encode_key(from_key));
        traced(&self.retry, "copy_object", Idempotency::Idempotent, |_| {
            let mut req = self
                .client
                .copy_object()
                .bucket(to_bucket)
                .key(to_key)
                .copy_source(&source);
            if let Some(o) = &replace {
                req = req
                    .metadata_directive(MetadataDirective::Replace)
                    .set_content_type(Some(
                        o.content_type
                            .clone()
                            .unwrap_or_else(|| "application/octet-stream".to_owned()),
                    ))
                    .set_cache_control(o.cache_control.clone())
                    .set_metadata(Some(o.metadata.clone().into_iter().collect()));
            }
            async move { req.send().await.map_err(|e| map_sdk_error("copy_object", e)) }
        })
        .await
        .map_err(|e| acting_on(e, &Subject::Copy(to_bucket, to_key, from_bucket, from_key)))?;
        self.head(to_bucket, to_key).await
    }

    async fn presign(&self, bucket: &str, key: &str, opts: PresignOptions) -> Result<PresignedRequest> {
        validate_object(bucket, key)?;
        opts.validate()?;
        let now = self.clock.now();
        let config = PresigningConfig::builder()
            .start_time(self.clock.now_system())
            .expires_in(opts.expires_in)
            .build()
            .map_err(|e| Error::invalid_input("invalid presign expiry").with_source(e))?;
        let span = tracing::info_span!(
            "storage.presign",
            provider = PROVIDER,
            method = opts.method.as_str()
        );
        let presigned = match opts.method {
            PresignMethod::Get => self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .presigned(config)
                .instrument(span)
                .await
                .map_err(|e| acting_on(map_sdk_error("presign_get", e), &Subject::Object(bucket, key)))?,
            PresignMethod::Put => self
                .client
                .put_object()
                .bucket(bucket)
                .key(key)
                .set_content_type(opts.content_type.clone())
                .content_length(to_i64(opts.content_length.unwrap_or(0), "content length")?)
                .presigned(config)
                .instrument(span)
                .await
                .map_err(|e| acting_on(map_sdk_error("presign_put", e), &Subject::Object(bucket, key)))?,
        };
        let mut headers: Vec<(String, String)> = presigned
            .headers()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        if opts.method == PresignMethod::Put && !headers.iter().any(|(k, _)| k == "content-length") {
            headers.push((
                "content-length".to_owned(),
                opts.content_length.unwrap_or(0).to_string(),
            ));
        }
        let expires_at = now + TimeDelta::from_std(opts.expires_in).unwrap_or(TimeDelta::zero());
        Ok(PresignedRequest::new(
            opts.method,
            presigned.uri().to_owned(),
            headers,
            expires_at,
        ))
    }

    async fn put_lifecycle(&self, bucket: &str, rules: &[LifecycleRule]) -> Result<()> {
        validate_bucket(bucket)?;
        validate_rules(rules)?;
        if rules.is_empty() {
            traced(
                &self.retry,
                "delete_bucket_lifecycle",
                Idempotency::Idempotent,
                |_| {
                    let req = self.client.delete_bucket_lifecycle().bucket(bucket);
                    async move {
                        req.send()
                            .await
                            .map_err(|e| map_sdk_error("delete_bucket_lifecycle", e))
                    }
                },
            )
            .await
            .map_err(|e| acting_on(e, &Subject::Bucket(bucket)))?;
            return Ok(());
        }
        let config = rules
            .iter()
            .map(Self::lifecycle_rule)
            .collect::<Result<Vec<_>>>()
            .and_then(|rules| {
                BucketLifecycleConfiguration::builder()
                    .set_rules(Some(rules))
                    .build()
                    .map_err(|e| build_error("put_bucket_lifecycle", e))
            })
            .map_err(|e| acting_on(e, &Subject::Bucket(bucket)))?;
        traced(
            &self.retry,
            "put_bucket_lifecycle",
            Idempotency::Idempotent,
            |_| {
                let req = self
                    .client
                    .put_bucket_lifecycle_configuration()
                    .bucket(bucket)
                    .lifecycle_configuration(config.clone());
                async move {
                    req.send()
                        .await
                        .map_err(|e| map_sdk_error("put_bucket_lifecycle", e))
                }
            },
        )
        .await
        .map_err(|e| acting_on(e, &Subject::Bucket(bucket)))?;
        Ok(())
    }

    async fn get_lifecycle(&self, bucket: &str) -> Result<Vec<LifecycleRule>> {
        validate_bucket(bucket)?;
        let result = traced(
            &self.retry,
            "get_bucket_lifecycle",
            Idempotency::Idempotent,
            |_| {
                let req = self.client.get_bucket_lifecycle_configuration().bucket(bucket);
                async move {
                    req.send()
                        .await
                        .map_err(|e| map_sdk_error("get_bucket_lifecycle", e))
                }
            },
        )
        .await;
        match result {
            Ok(out) => Ok(out.rules().iter().map(Self::rule_from_s3).collect()),
            Err(e) if e.message().starts_with("NoSuchLifecycleConfiguration") => Ok(Vec::new()),
            Err(e) => Err(acting_on(e, &Subject::Bucket(bucket))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::body_in_chunks;

    #[tokio::test]
    async fn part_reader_cuts_equal_parts() {
        let data = Bytes::from((0..2500u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let mut r = PartReader::new(body_in_chunks(data.clone(), 333), 1000);
        let mut parts = Vec::new();
        while let Some(p) = r.next_part().await.unwrap() {
            parts.push(p);
        }
        assert_eq!(
            parts.iter().map(Bytes::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        assert_eq!(parts.concat(), data.to_vec());
    }

    #[test]
    fn content_range_total() {
        assert_eq!(total_from_content_range(Some("bytes 0-9/100")), Some(100));
        assert_eq!(total_from_content_range(None), None);
    }
}
