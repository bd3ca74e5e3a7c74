//! [`PostHogAnalytics`]: the [`Analytics`] implementation on PostHog.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{Error, ErrorKind, ExposeSecret, Idempotency, Result, RetryPolicy};
use posthog_rs::{ClientOptionsBuilder, EvaluateFlagsOptions};
use serde_json::Value;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::builder::{PostHogAnalyticsBuilder, ceil_secs};
use super::error::{PROVIDER, answer_within};
use super::queue::{Batch, Queue, Take};
use crate::Analytics;
use crate::pipeline::Enricher;
use crate::types::{AnalyticsEvent, FeatureFlags, FlagState, FlagValue, FlushReport, validate_text};

/// Analytics on PostHog: events are queued in a bounded in-memory queue and sent
/// in `/batch/` requests by a background task through posthog-rs; flags come from
/// PostHog's flags endpoint (or local evaluation with a personal API key).
///
/// Build it with [`PostHogAnalyticsBuilder`]; call [`Analytics::shutdown`] before
/// exiting so pending events are delivered.
pub struct PostHogAnalytics {
    queue: Arc<Queue>,
    sender: Sender,
    enricher: Enricher,
    retry: RetryPolicy,
    host: String,
    batcher: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for PostHogAnalytics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostHogAnalytics")
            .field("host", &self.host)
            .field("enricher", &self.enricher)
            .field("report", &self.queue.report())
            .finish_non_exhaustive()
    }
}

/// The wire client: posthog-rs's inline batch capture and flag evaluation.
#[derive(Clone)]
struct Sender {
    client: Arc<posthog_rs::Client>,
    /// Enforced here: posthog-rs reports its own timeouts as connection failures
    /// ("error sending request"), and takes whole seconds (its timeouts are set one
    /// second longer, as a backstop).
    request_timeout: Duration,
    flags_timeout: Duration,
}

impl Sender {
    /// Sends `events` in one `/batch/` request (no retry: the caller retries).
    async fn send(&self, events: &[AnalyticsEvent], operation: &'static str) -> Result<()> {
        let batch = events.iter().map(to_posthog).collect::<Result<Vec<_>>>()?;
        let span = tracing::info_span!(
            "provider_call",
            provider = PROVIDER,
            operation,
            events = events.len(),
            outcome = tracing::field::Empty,
        );
        async move {
            let sent = self.client.capture_batch_immediate(batch, false);
            let result = answer_within(operation, self.request_timeout, sent)
                .await
                .and_then(|summary| check_summary(&summary, events.len(), operation));
            record_outcome(&result);
            result
        }
        .instrument(span)
        .await
    }

    async fn flags(&self, distinct_id: &str) -> Result<FeatureFlags> {
        let span = tracing::info_span!(
            "provider_call",
            provider = PROVIDER,
            operation = "flags",
            outcome = tracing::field::Empty,
        );
        async move {
            let evaluated = self
                .client
                .evaluate_flags(distinct_id, EvaluateFlagsOptions::default());
            let result = answer_within("flags", self.flags_timeout, evaluated)
                .await
                .map(|evals| {
                    // `with_flags` reads every value without counting it as an access,
                    // so no `$feature_flag_called` event is sent for the conversion.
                    let mut probe = posthog_rs::Event::new("flags", "probe");
                    probe.with_flags(&evals);
                    let props = probe.properties();
                    evals
                        .keys()
                        .into_iter()
                        .map(|key| {
                            let value = match props.get(&format!("$feature/{key}")) {
                                Some(Value::String(v)) => FlagValue::Variant(v.clone()),
                                Some(Value::Bool(b)) => FlagValue::Enabled(*b),
                                _ => FlagValue::Enabled(false),
                            };
                            let payload = evals.get_flag_payload(&key);
                            (key, FlagState { value, payload })
                        })
                        .collect::<FeatureFlags>()
                });
            record_outcome(&result);
            result
        }
        .instrument(span)
        .await
    }
}

fn record_outcome<T>(result: &Result<T>) {
    let span = tracing::Span::current();
    match result {
        Ok(_) => {
            span.record("outcome", "ok");
        }
        Err(e) => {
            span.record("outcome", e.kind().as_str());
            tracing::debug!(error = %e, "posthog call failed");
        }
    }
}

/// Converts to posthog-rs's event (off the hot path: only when sending).
fn to_posthog(event: &AnalyticsEvent) -> Result<posthog_rs::Event> {
    let mut out = posthog_rs::Event::new(event.name().to_owned(), event.distinct_id().to_owned());
    out.set_uuid(event.uuid());
    if let Some(at) = event.timestamp()
        && let Err(e) = out.set_timestamp(at)
    {
        // posthog-rs refuses timestamps in the future; PostHog then uses receive time.
        tracing::debug!(event = event.name(), error = %e, "event timestamp not sent");
    }
    for (key, value) in event.properties() {
        out.insert_prop(key.clone(), value).map_err(|e| {
            Error::invalid_input(format!(
                "event {}: property {key} cannot be encoded",
                event.name()
            ))
            .with_source(e)
        })?;
    }
    Ok(out)
}

impl PostHogAnalytics {
    /// A builder with the defaults.
    pub fn builder() -> PostHogAnalyticsBuilder {
        PostHogAnalyticsBuilder::new()
    }

    pub(crate) async fn start(b: PostHogAnalyticsBuilder) -> Result<Self> {
        let api_key = b
            .api_key
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
            .unwrap_or_default();
        let mut options = ClientOptionsBuilder::default();
        options
            .api_key(api_key)
            .host(b.host.trim().to_owned())
            .request_timeout_seconds(ceil_secs(b.request_timeout).saturating_add(1))
            .feature_flags_request_timeout_seconds(ceil_secs(b.flags_timeout).saturating_add(1))
            // This crate retries with platform_core::RetryPolicy; one attempt per call here.
            .max_capture_attempts(1u32)
            .feature_flags_request_max_retries(0u32)
            // Server-side events: do not geolocate the server's IP as the user's.
            .disable_geoip(true);
        if let Some(key) = &b.personal_api_key {
            options
                .secret_key(key.expose_secret().to_owned())
                .enable_local_evaluation(true);
        }
        if let Some(http) = &b.http_client {
            options.http_client(http.reqwest().clone());
        }
        let options = options
            .build()
            .map_err(|e| Error::config("invalid PostHog client options").with_source(e))?;
        let client = Arc::new(posthog_rs::client(options).await);

        let queue = Arc::new(Queue::new(b.queue_capacity, b.batch_size));
        let sender = Sender {
            client,
            request_timeout: b.request_timeout,
            flags_timeout: b.flags_timeout,
        };
        let batcher = tokio::spawn(run_batcher(
            Arc::clone(&queue),
            sender.clone(),
            b.retry_policy.clone(),
            b.flush_interval,
        ));
        Ok(Self {
            queue,
            sender,
            enricher: b.enricher.build(),
            retry: b.retry_policy,
            host: b.host,
            batcher: Mutex::new(Some(batcher)),
        })
    }

    fn take_batcher(&self) -> Option<JoinHandle<()>> {
        self.batcher.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

async fn run_batcher(queue: Arc<Queue>, sender: Sender, retry: RetryPolicy, flush_interval: Duration) {
    let mut timer_fired = false;
    loop {
        match queue.take(timer_fired) {
            Take::Batch(batch) => {
                deliver(&queue, &sender, &retry, batch).await;
                timer_fired = false;
                continue;
            }
            Take::Done => return,
            Take::Wait => {}
        }
        timer_fired = false;
        tokio::select! {
            () = queue.wake.notified() => {}
            () = tokio::time::sleep(flush_interval) => timer_fired = true,
        }
    }
}

/// `Ok` only if posthog-rs sent all `sent` events and PostHog persisted them all. It
/// answers `Ok` without sending when its client is disabled (it could not build its
/// HTTP client): that is a permanent `Provider` error, not a delivery. Events PostHog
/// did not persist (its v1 capture's per-event verdicts) are `Unavailable`: the batch
/// is resent, and PostHog de-duplicates on the events' uuids.
fn check_summary(summary: &posthog_rs::CaptureSummary, sent: usize, operation: &'static str) -> Result<()> {
    if summary.submitted() != sent {
        return Err(Error::new(
            ErrorKind::Provider,
            format!(
                "posthog-rs sent {} of {sent} events (its client is disabled)",
                summary.submitted()
            ),
        )
        .with_provider(PROVIDER)
        .with_operation(operation));
    }
    if !summary.all_persisted() {
        return Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "PostHog did not persist {} of {sent} events",
                summary.not_persisted()
            ),
        )
        .with_provider(PROVIDER)
        .with_operation(operation));
    }
    Ok(())
}

/// Sends one batch's events and settles it. A batch PostHog refuses as invalid (400,
/// 413, or an event that cannot be encoded) is split in halves, each sent on its own,
/// down to single events: one malformed or oversized event costs only itself, not the
/// events batched with it. So is a batch answered with a server error round after
/// round (see [`send_until_answered`]): a proxy failing on one large request must not
/// hold every later event behind it. Any other permanent refusal (a refused API key, a
/// billing limit, a status posthog-rs does not classify) drops the batch, as its parts
/// would meet the same answer. Each part is counted once answered (see
/// [`Queue::resolve`]).
async fn deliver(queue: &Queue, sender: &Sender, retry: &RetryPolicy, batch: Batch) {
    // Parts still to send, the next one last.
    let mut parts = vec![batch.events.as_slice()];
    while let Some(part) = parts.pop() {
        let Err(e) = send_until_answered(sender, retry, part).await else {
            queue.resolve(part.len(), 0);
            continue;
        };
        if (refused_as_invalid(&e) || e.is_retryable()) && part.len() > 1 {
            let (first, second) = part.split_at(part.len() / 2);
            tracing::warn!(
                provider = PROVIDER,
                events = part.len(),
                error = %e,
                "PostHog rejected a batch, or kept failing on it; sending it in halves"
            );
            parts.extend([second, first]);
            continue;
        }
        queue.resolve(0, part.len());
        let first = part.first();
        tracing::error!(
            provider = PROVIDER,
            dropped = part.len(),
            event = first.map(AnalyticsEvent::name),
            uuid = %first.map(AnalyticsEvent::uuid).unwrap_or_default(),
            error = %e,
            "PostHog rejected events; they are dropped"
        );
    }
    queue.settle(batch.last_seq);
}

/// Whether PostHog refused a request for what it holds (400, 413: a part of it may
/// pass), or an event could not be encoded (no status).
fn refused_as_invalid(e: &Error) -> bool {
    e.kind() == ErrorKind::InvalidInput && matches!(e.status(), Some(400 | 413) | None)
}

/// Rounds of server errors (5xx) after which a batch of several events is returned to
/// be split (see [`deliver`]).
const SPLIT_AFTER_ROUNDS: u32 = 3;

/// The least wait between two rounds: a policy without backoff must not make an
/// outage spin.
const MIN_ROUND_WAIT: Duration = Duration::from_millis(100);

/// Sends `events` in one request, retrying per `retry`; when the policy gives up on a
/// transient failure the request is sent again after the largest backoff (at least
/// [`MIN_ROUND_WAIT`]; an outage loses nothing), so this returns PostHog's acceptance,
/// a permanent rejection, or, for several events answered with a server error for
/// [`SPLIT_AFTER_ROUNDS`] rounds, that error (the caller splits them).
async fn send_until_answered(sender: &Sender, retry: &RetryPolicy, events: &[AnalyticsEvent]) -> Result<()> {
    // Every event carries a uuid PostHog de-duplicates on, so resending is safe.
    let key = Idempotency::Key(events.first().map(|e| e.uuid().to_string()).unwrap_or_default());
    let mut rounds: u32 = 0;
    loop {
        match retry.retry(&key, |_| sender.send(events, "capture_batch")).await {
            Err(e) if e.is_retryable() => {
                rounds = rounds.saturating_add(1);
                if events.len() > 1
                    && rounds >= SPLIT_AFTER_ROUNDS
                    && e.status().is_some_and(|s| (500..600).contains(&s))
                {
                    return Err(e);
                }
                let wait = retry
                    .backoff_cap(retry.max_attempts().saturating_add(rounds))
                    .max(e.retry_after().unwrap_or_default())
                    .max(MIN_ROUND_WAIT);
                tracing::warn!(
                    provider = PROVIDER,
                    events = events.len(),
                    rounds,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %e,
                    "PostHog unavailable; keeping the batch and retrying"
                );
                tokio::time::sleep(wait).await;
            }
            answered => return answered,
        }
    }
}

fn shut_down(operation: &'static str) -> Error {
    Error::new(ErrorKind::Unavailable, "the analytics client is shut down")
        .with_provider(PROVIDER)
        .with_operation(operation)
}

#[async_trait]
impl Analytics for PostHogAnalytics {
    fn capture(&self, event: AnalyticsEvent) {
        match self.enricher.prepare(event) {
            Some(event) => self.queue.push(event),
            None => self.queue.counters.add_filtered(),
        }
    }

    async fn capture_now(&self, event: AnalyticsEvent) -> Result<()> {
        if self.queue.is_closed() {
            return Err(shut_down("capture"));
        }
        let Some(event) = self.enricher.prepare(event) else {
            self.queue.counters.add_filtered();
            return Ok(());
        };
        let key = Idempotency::Key(event.uuid().to_string());
        let events = [event];
        self.retry
            .retry(&key, |_| self.sender.send(&events, "capture"))
            .await?;
        self.queue.counters.add_delivered(1);
        Ok(())
    }

    async fn flags(&self, distinct_id: &str) -> Result<FeatureFlags> {
        validate_text("distinct_id", distinct_id, 200)?;
        self.retry
            .retry(&Idempotency::Idempotent, |_| self.sender.flags(distinct_id))
            .await
    }

    async fn flush(&self, timeout: Duration) -> FlushReport {
        let target = self.queue.request_flush();
        self.queue.wait_settled(target, timeout).await;
        self.queue.report()
    }

    async fn shutdown(&self, timeout: Duration) -> FlushReport {
        let target = self.queue.close();
        let settled = self.queue.wait_settled(target, timeout).await;
        let mut stopped = false;
        if let Some(handle) = self.take_batcher() {
            if !settled {
                handle.abort();
                stopped = true;
            }
            // Closed and drained, the task returns on its own; aborted, it stops at its
            // next await. Either way it has ended before the report is taken, so no
            // batch it was sending resolves after the discard below.
            if let Err(e) = handle.await
                && !e.is_cancelled()
            {
                tracing::debug!(error = %e, "analytics batching task ended abnormally");
            }
        }
        let report = self.queue.report();
        if stopped {
            // Reported as pending this once; dropped from now on, so that a later
            // `flush` or `shutdown` does not wait out its timeout for them.
            let discarded = self.queue.discard_all();
            tracing::warn!(
                provider = PROVIDER,
                discarded,
                "analytics shutdown timed out; discarding undelivered events"
            );
        }
        self.sender.client.shutdown().await;
        report
    }
}

impl Drop for PostHogAnalytics {
    fn drop(&mut self) {
        if self.take_batcher().is_none() {
            return; // shut down already
        }
        // Dropped without shutdown: the batching task drains what is queued and
        // exits, rather than lose it.
        self.queue.close();
        let pending = self.queue.pending();
        if pending > 0 {
            tracing::warn!(
                provider = PROVIDER,
                pending,
                "PostHogAnalytics dropped without shutdown(); delivering pending events in the background"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summary of nothing sent (what posthog-rs answers when its client is disabled)
    /// for a batch of events is a permanent error, not a delivery; a batch of none
    /// passes.
    #[test]
    fn a_summary_of_fewer_events_than_sent_is_an_error() {
        let nothing = posthog_rs::CaptureSummary::default();
        let err = check_summary(&nothing, 3, "capture_batch").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Provider, "{err}");
        assert!(err.message().contains("0 of 3"), "{err}");
        assert!(check_summary(&nothing, 0, "capture_batch").is_ok());
    }
}
