//! What every implementation does to an event before queueing it: stamp the
//! clock's time, add environment/app version/product, run `before_send`; and the
//! counters behind [`FlushReport`](crate::FlushReport).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use platform_core::{DynClock, system_clock};
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

/// The builder settings behind an [`Enricher`], shared by every implementation's builder
/// (their `with_clock`/`with_enrichment`/`with_before_send*` setters come from
/// [`enricher_setters!`]).
#[derive(Clone)]
pub(crate) struct EnricherSettings {
    pub(crate) clock: DynClock,
    pub(crate) enrichment: Enrichment,
    pub(crate) before_send: Option<BeforeSend>,
}

impl Default for EnricherSettings {
    fn default() -> Self {
        Self {
            clock: system_clock(),
            enrichment: Enrichment::default(),
            before_send: None,
        }
    }
}

impl EnricherSettings {
    pub(crate) fn build(self) -> Enricher {
        Enricher::new(self.clock, self.enrichment, self.before_send)
    }
}

/// The setters every builder with an `enricher: EnricherSettings` field offers.
macro_rules! enricher_setters {
    () => {
        /// The clock that stamps events.
        #[must_use]
        pub fn with_clock(mut self, clock: platform_core::DynClock) -> Self {
            self.enricher.clock = clock;
            self
        }

        /// Environment, app version and default product added to every event.
        #[must_use]
        pub fn with_enrichment(mut self, enrichment: $crate::Enrichment) -> Self {
            self.enricher.enrichment = enrichment;
            self
        }

        /// A hook to scrub or drop events (see [`BeforeSend`](crate::BeforeSend)).
        #[must_use]
        pub fn with_before_send(
            mut self,
            hook: impl Fn($crate::AnalyticsEvent) -> Option<$crate::AnalyticsEvent> + Send + Sync + 'static,
        ) -> Self {
            self.enricher.before_send = Some(std::sync::Arc::new(hook));
            self
        }

        /// A hook already wrapped as [`BeforeSend`](crate::BeforeSend) (or none).
        #[must_use]
        pub fn with_before_send_hook(mut self, hook: Option<$crate::BeforeSend>) -> Self {
            self.enricher.before_send = hook;
            self
        }
    };
}
pub(crate) use enricher_setters;

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
