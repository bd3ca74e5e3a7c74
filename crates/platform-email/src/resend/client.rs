//! [`ResendMailer`]: the [`Mailer`] over Resend's REST API.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use governor::DefaultDirectRateLimiter;
use platform_core::{
    Call, Error, ErrorKind, ExposeSecret, HttpClient, Idempotency, Result, RetryPolicy, SecretString,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use super::{PROVIDER, map_response_error};
use crate::Mailer;
use crate::types::{
    BATCH_CHUNK_SIZE, Batch, BatchReport, Email, Mailbox, MessageId, copy_error, parse_mailbox,
};

const SEND: Call = Call::new(PROVIDER, "send_email");
const SEND_BATCH: Call = Call::new(PROVIDER, "send_batch");

pub(super) struct Inner {
    pub(super) http: HttpClient,
    pub(super) base_url: String,
    pub(super) api_key: SecretString,
    pub(super) retry: RetryPolicy,
    pub(super) limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

/// Sends through Resend (`POST /emails`, `POST /emails/batch`).
///
/// - Every request carries an `Idempotency-Key`: the caller's, or a random one per
///   call, so the built-in retries (429 with `Retry-After`, 5xx, timeouts) never
///   deliver twice. Batch chunk `n` uses `<key>/<n>`.
/// - Batches go out in chunks of [`BATCH_CHUNK_SIZE`] (Resend's limit) with
///   `x-batch-validation: strict`, so a chunk is accepted or rejected as a whole.
/// - A client-side limiter keeps to Resend's request rate (2/s by default).
///
/// Cheap to clone.
#[derive(Clone)]
pub struct ResendMailer {
    inner: Arc<Inner>,
}

impl fmt::Debug for ResendMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResendMailer")
            .field("base_url", &self.inner.base_url)
            .field("api_key", &"[redacted]")
            .field("rate_limited", &self.inner.limiter.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct WireTag<'a> {
    name: &'a str,
    value: &'a str,
}

/// The JSON body of one message, as Resend documents it.
#[derive(Serialize)]
struct WireEmail<'a> {
    from: Cow<'a, str>,
    to: Vec<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cc: Vec<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bcc: Vec<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reply_to: Vec<Cow<'a, str>>,
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<WireTag<'a>>,
}

impl<'a> From<&'a Email> for WireEmail<'a> {
    fn from(e: &'a Email) -> Self {
        let all = |list: &'a [String]| list.iter().map(|m| wire_mailbox(m)).collect();
        Self {
            from: wire_mailbox(&e.from),
            to: all(&e.to),
            cc: all(&e.cc),
            bcc: all(&e.bcc),
            reply_to: all(&e.reply_to),
            subject: &e.subject,
            html: e.html.as_deref(),
            text: e.text.as_deref(),
            headers: &e.headers,
            tags: e
                .tags
                .iter()
                .map(|t| WireTag {
                    name: &t.name,
                    value: &t.value,
                })
                .collect(),
        }
    }
}

/// A validated mailbox as Resend reads it: a display name holding one of RFC 5322's
/// specials (`Doe, John <j@example.com>`: the comma would separate two addresses) is
/// quoted, `\` and `"` escaped; any other mailbox is sent as given.
fn wire_mailbox(raw: &str) -> Cow<'_, str> {
    match parse_mailbox(raw) {
        Ok(Mailbox {
            name: Some(name),
            address,
        }) if name.contains(['(', ')', '<', '>', '[', ']', ':', ';', '@', '\\', ',', '.', '"']) => {
            let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
            Cow::Owned(format!("\"{quoted}\" <{address}>"))
        }
        _ => Cow::Borrowed(raw),
    }
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct BatchCreated {
    data: Vec<Created>,
}

fn encode<T: Serialize>(call: Call, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| {
        Error::unexpected("cannot encode the request")
            .with_provider(call.provider)
            .with_operation(call.operation)
            .with_source(e)
    })
}

fn random_key() -> String {
    format!("platform-{}", uuid::Uuid::new_v4())
}

impl ResendMailer {
    pub(super) fn from_inner(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The API base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// POSTs `body` to `path` with `key`, retrying per the policy.
    async fn post<T: DeserializeOwned>(&self, call: Call, path: &str, body: Vec<u8>, key: &str) -> Result<T> {
        let inner = &*self.inner;
        let url = format!("{}{path}", inner.base_url);
        let idempotency = Idempotency::Key(key.to_owned());
        inner
            .retry
            .retry(&idempotency, |attempt| {
                let body = body.clone();
                let url = url.as_str();
                async move {
                    if let Some(limiter) = &inner.limiter {
                        limiter.until_ready().await;
                    }
                    tracing::trace!(attempt, key, "resend request");
                    let mut request = inner
                        .http
                        .reqwest()
                        .post(url)
                        .bearer_auth(inner.api_key.expose_secret())
                        .header("Idempotency-Key", key)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body);
                    if call.operation == SEND_BATCH.operation {
                        request = request.header("x-batch-validation", "strict");
                    }
                    inner.http.send_json::<T>(call, request, map_response_error).await
                }
            })
            .await
    }

    async fn send_chunk(&self, chunk: &[Email], key: &str) -> Result<Vec<MessageId>> {
        let wire: Vec<WireEmail<'_>> = chunk.iter().map(WireEmail::from).collect();
        let body = encode(SEND_BATCH, &wire)?;
        let created: BatchCreated = self.post(SEND_BATCH, "/emails/batch", body, key).await?;
        if created.data.len() != chunk.len() {
            return Err(Error::new(
                ErrorKind::Provider,
                format!(
                    "Resend returned {} ids for a chunk of {} messages",
                    created.data.len(),
                    chunk.len()
                ),
            )
            .with_provider(PROVIDER)
            .with_operation(SEND_BATCH.operation));
        }
        Ok(created.data.into_iter().map(|c| MessageId::new(c.id)).collect())
    }
}

#[async_trait]
impl Mailer for ResendMailer {
    async fn send(&self, email: &Email) -> Result<MessageId> {
        email.validate()?;
        let key = email.idempotency_key.clone().unwrap_or_else(random_key);
        let body = encode(SEND, &WireEmail::from(email))?;
        let created: Created = self.post(SEND, "/emails", body, &key).await?;
        if created.id.is_empty() {
            return Err(Error::new(ErrorKind::Provider, "Resend returned an empty id")
                .with_provider(PROVIDER)
                .with_operation(SEND.operation));
        }
        Ok(MessageId::new(created.id))
    }

    async fn send_batch(&self, batch: &Batch) -> Result<BatchReport> {
        batch.validate()?;
        let chunks = batch.emails.len().div_ceil(BATCH_CHUNK_SIZE);
        let span = tracing::info_span!(
            "email_batch",
            provider = PROVIDER,
            operation = SEND_BATCH.operation,
            messages = batch.emails.len(),
            chunks,
            failed = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        async move {
            let base = batch.idempotency_key.clone().unwrap_or_else(random_key);
            let mut outcomes = Vec::with_capacity(batch.emails.len());
            for (index, chunk) in batch.emails.chunks(BATCH_CHUNK_SIZE).enumerate() {
                match self.send_chunk(chunk, &Batch::chunk_key(&base, index)).await {
                    Ok(ids) => outcomes.extend(ids.into_iter().map(Ok)),
                    Err(e) => {
                        tracing::warn!(chunk = index, error = %e, "batch chunk failed");
                        outcomes.extend(chunk.iter().map(|_| Err(copy_error(&e, e.message()))));
                    }
                }
            }
            let report = BatchReport::new(outcomes);
            let span = tracing::Span::current();
            span.record("failed", report.failed_count());
            span.record("outcome", if report.is_complete() { "ok" } else { "partial" });
            Ok(report)
        }
        .instrument(span)
        .await
    }
}
