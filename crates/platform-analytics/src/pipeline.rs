//! What every implementation does to an event before queueing it: stamp the
//! clock's time, add environment/app version/product, run `before_send`; and the
//! counters behind [`FlushReport`](crate::FlushReport).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use platform_core::DynClock;
use serde_json::Value;

use crate::types::{
    AnalyticsEvent, BeforeSend, Enrichment, PROP_APP_VERSION, PROP_ENVIRONMENT, PROP_PRODUCT,
};

/// Enrichment and the `before_send` hook, shared by every implementation.
#[derive(Clone)]
pub(crate) struct Enricher {
    clock: DynClock,
    environment: Value,
    app_version: Value,
    enrichment: Enrichment,
    before_send: Option<BeforeSend>,
}

impl fmt::Debug for Enricher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enricher")
            .field("clock", &self.clock)
            .field("enrichment", &self.enrichment)
            .field("before_send", &self.before_send.is_some())
            .finish_non_exhaustive()
    }
}

impl Enricher {
    pub(crate) fn new(clock: DynClock, enrichment: Enrichment, before_send: Option<BeforeSend>) -> Self {
        Self {
            clock,
            environment: Value::String(enrichment.environment.clone()),
            app_version: Value::String(enrichment.app_version.clone()),
            enrichment,
            before_send,
        }
    }

    /// Enriches `event`; `None` if `before_send` dropped it.
    ///
    /// Properties the caller set win over enrichment of the same name.
    pub(crate) fn prepare(&self, mut event: AnalyticsEvent) -> Option<AnalyticsEvent> {
        event.set_timestamp_if_missing(self.clock.now());
        if event.product().is_none()
            && let Some(p) = &self.enrichment.default_product
        {
            event = event.with_product(p.clone());
        }
        let product = event.product().map(|p| Value::String(p.as_str().to_owned()));
        let props = event.properties_mut();
        if !props.contains_key(PROP_ENVIRONMENT) {
            props.insert(PROP_ENVIRONMENT.to_owned(), self.environment.clone());
        }
        if !props.contains_key(PROP_APP_VERSION) {
            props.insert(PROP_APP_VERSION.to_owned(), self.app_version.clone());
        }
        if let Some(product) = product
            && !props.contains_key(PROP_PRODUCT)
        {
            props.insert(PROP_PRODUCT.to_owned(), product);
        }
        match &self.before_send {
            Some(hook) => hook(event),
            None => Some(event),
        }
    }
}

/// Cumulative outcome counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) filtered: AtomicU64,
}

impl Counters {
    pub(crate) fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` drops and returns the new total.
    pub(crate) fn add_dropped(&self, n: u64) -> u64 {
        self.dropped.fetch_add(n, Ordering::Relaxed) + n
    }

    pub(crate) fn add_filtered(&self) {
        self.filtered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn report(&self, pending: u64) -> crate::FlushReport {
        crate::FlushReport {
            delivered: self.delivered.load(Ordering::Relaxed),
            pending,
            dropped: self.dropped.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
        }
    }
}

/// Logs a drop at `warn` for the first one and then at powers of two (so a long
/// overflow is visible without flooding the log), at `debug` otherwise.
pub(crate) fn log_drop(total_dropped: u64, count: u64, reason: &str) {
    if total_dropped.is_power_of_two() || count > 1 {
        tracing::warn!(
            provider = "analytics",
            dropped = count,
            total_dropped,
            reason,
            "analytics events dropped"
        );
    } else {
        tracing::debug!(dropped = count, total_dropped, reason, "analytics event dropped");
    }
}
