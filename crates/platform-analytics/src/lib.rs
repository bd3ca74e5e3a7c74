#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use platform_core::Result;
use serde_json::{Map, Value};

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod events;
pub mod memory;
mod pipeline;
pub mod posthog;
pub mod types;

pub use events::{
    AgentCreated, AgentExecuted, FilterApplied, ImageGenerated, ImageShared, ProductEvent, SignUpMethod,
    ToolUsed, UserLoggedIn, UserSignedUp, UserUpgraded,
};
pub use memory::{LocalAnalytics, LocalAnalyticsBuilder, StaticFlags};
pub use posthog::{PostHogAnalytics, PostHogAnalyticsBuilder};
pub use types::{
    ALIAS_EVENT, AnalyticsEvent, BeforeSend, Enrichment, FeatureFlags, FlagState, FlagValue, FlushReport,
    IDENTIFY_EVENT, PROP_APP_VERSION, PROP_ENVIRONMENT, PROP_PRODUCT, UserTraits,
};

/// A shared analytics handle, what callers hold.
pub type DynAnalytics = Arc<dyn Analytics>;

/// Product analytics: fire-and-forget event capture, user identification,
/// feature flags, and a flush that accounts for every event.
///
/// Like sentry's `Transport`, the hot path ([`capture`](Self::capture)) is
/// synchronous, cannot fail and never waits for the network; delivery happens in
/// the background and [`flush`](Self::flush)/[`shutdown`](Self::shutdown) report
/// what became of every event. Use [`capture_now`](Self::capture_now) when the
/// caller must know an event was delivered.
///
/// Typed events go through [`AnalyticsExt::track`].
#[async_trait]
pub trait Analytics: Send + Sync + Debug + 'static {
    /// Queues `event` for delivery and returns at once.
    ///
    /// # Behavior
    /// - Never blocks on the network and never fails: an event that cannot be
    ///   queued is counted in [`FlushReport::dropped`] and logged.
    /// - The event is stamped with the clock's time (unless it has a timestamp) and
    ///   enriched with `environment`, `app_version` and `product`; properties the
    ///   caller set win.
    /// - The `before_send` hook runs next; if it returns `None` the event is counted
    ///   in [`FlushReport::filtered`] and never sent.
    /// - Events are delivered in capture order.
    /// - When the queue is full (queue capacity counts queued and in-flight events),
    ///   the new event is dropped and counted; events already queued are kept.
    /// - After [`shutdown`](Self::shutdown), events are dropped and counted.
    fn capture(&self, event: AnalyticsEvent);

    /// Delivers `event` now, bypassing the queue, for billing-grade events.
    ///
    /// # Behavior
    /// - Enriched and filtered like [`capture`](Self::capture); a filtered event
    ///   returns `Ok` and is counted as filtered.
    /// - Returns `Ok` only once the backend accepted the event (counted as delivered).
    /// - Retries transient failures (5xx, 429, timeouts) with backoff; the event's
    ///   uuid lets the backend de-duplicate a retried delivery.
    /// - A rejected API key is `Unauthenticated`; other failures keep their kind.
    ///   A failed event is not counted as dropped: the caller has the error.
    /// - After [`shutdown`](Self::shutdown): `Unavailable`.
    async fn capture_now(&self, event: AnalyticsEvent) -> Result<()>;

    /// Sets person properties (`$set`) on `distinct_id`: sends an `$identify` event.
    ///
    /// # Behavior
    /// - Queued like [`capture`](Self::capture) (never blocks on the network).
    /// - The event's `$set` property is [`UserTraits::to_json`].
    /// - A blank or invalid `distinct_id`, or a non-finite amount, is `InvalidInput`
    ///   and nothing is queued.
    fn identify(&self, distinct_id: &str, traits: UserTraits) -> Result<()> {
        traits.validate()?;
        let mut set = Map::new();
        set.insert("$set".to_owned(), Value::Object(traits.to_json()));
        let mut event = AnalyticsEvent::new(IDENTIFY_EVENT, distinct_id)?;
        *event.properties_mut() = set;
        self.capture(event);
        Ok(())
    }

    /// Links `previous_id` (e.g. an anonymous id) to `distinct_id`: sends a
    /// `$create_alias` event from `previous_id` with properties
    /// `{distinct_id: previous_id, alias: distinct_id}`, as PostHog's SDKs do.
    ///
    /// # Behavior
    /// - Queued like [`capture`](Self::capture).
    /// - Blank or equal ids are `InvalidInput` and nothing is queued.
    fn alias(&self, distinct_id: &str, previous_id: &str) -> Result<()> {
        AnalyticsEvent::new(ALIAS_EVENT, distinct_id)?;
        if distinct_id == previous_id {
            return Err(platform_core::Error::invalid_input(
                "alias: distinct_id and previous_id must differ",
            ));
        }
        let event = AnalyticsEvent::new(ALIAS_EVENT, previous_id)?
            .with_property("distinct_id", previous_id)?
            .with_property("alias", distinct_id)?;
        self.capture(event);
        Ok(())
    }

    /// Evaluates every feature flag for `distinct_id`.
    ///
    /// # Behavior
    /// - Returns each flag's value (on/off or a variant) and payload; flags the
    ///   backend does not know read as off.
    /// - A blank `distinct_id` is `InvalidInput`.
    /// - Reading the returned flags sends no event.
    /// - Backend failures keep their kind (`Unauthenticated`, `Unavailable`, `Timeout`, …).
    async fn flags(&self, distinct_id: &str) -> Result<FeatureFlags>;

    /// Waits up to `timeout` for every event captured before the call to be
    /// delivered or dropped, and reports the counts.
    ///
    /// # Behavior
    /// - Sends queued events at once, without waiting for the flush interval.
    /// - Returns early when everything captured before the call has settled;
    ///   otherwise returns after `timeout` with the rest counted as `pending`
    ///   (they stay queued and are retried).
    /// - Never fails; counts are cumulative since the client was built.
    async fn flush(&self, timeout: Duration) -> FlushReport;

    /// Flushes (up to `timeout`), then stops background delivery.
    ///
    /// # Behavior
    /// - Delivers everything pending if the backend allows it within `timeout`.
    /// - Events still pending at the deadline are reported as `pending`, logged, and
    ///   discarded: later reports count them as `dropped`, and a later `flush` or
    ///   `shutdown` does not wait for them.
    /// - Idempotent; later captures are dropped and counted, later `capture_now`
    ///   calls fail with `Unavailable`.
    async fn shutdown(&self, timeout: Duration) -> FlushReport;
}

#[async_trait]
impl<T: Analytics + ?Sized> Analytics for Arc<T> {
    fn capture(&self, event: AnalyticsEvent) {
        (**self).capture(event);
    }
    async fn capture_now(&self, event: AnalyticsEvent) -> Result<()> {
        (**self).capture_now(event).await
    }
    fn identify(&self, distinct_id: &str, traits: UserTraits) -> Result<()> {
        (**self).identify(distinct_id, traits)
    }
    fn alias(&self, distinct_id: &str, previous_id: &str) -> Result<()> {
        (**self).alias(distinct_id, previous_id)
    }
    async fn flags(&self, distinct_id: &str) -> Result<FeatureFlags> {
        (**self).flags(distinct_id).await
    }
    async fn flush(&self, timeout: Duration) -> FlushReport {
        (**self).flush(timeout).await
    }
    async fn shutdown(&self, timeout: Duration) -> FlushReport {
        (**self).shutdown(timeout).await
    }
}

/// Typed conveniences over any [`Analytics`].
#[async_trait]
pub trait AnalyticsExt: Analytics {
    /// Captures the typed `event` about `distinct_id` (see [`Analytics::capture`]).
    ///
    /// # Errors
    /// `InvalidInput` only, for an invalid `distinct_id` or an event that does not
    /// serialize to a JSON object; delivery problems are never returned here.
    fn track<E: ProductEvent + ?Sized>(&self, distinct_id: &str, event: &E) -> Result<()> {
        self.capture(AnalyticsEvent::from_typed(distinct_id, event)?);
        Ok(())
    }

    /// Delivers the typed `event` now (see [`Analytics::capture_now`]).
    async fn track_now<E: ProductEvent + Sync + ?Sized>(&self, distinct_id: &str, event: &E) -> Result<()> {
        let event = AnalyticsEvent::from_typed(distinct_id, event)?;
        self.capture_now(event).await
    }

    /// Whether `flag` is on for `distinct_id` (a variant counts as on).
    async fn is_enabled(&self, flag: &str, distinct_id: &str) -> Result<bool> {
        Ok(self.flags(distinct_id).await?.is_enabled(flag))
    }

    /// The payload of `flag` for `distinct_id`, if it has one.
    async fn flag_payload(&self, flag: &str, distinct_id: &str) -> Result<Option<Value>> {
        Ok(self.flags(distinct_id).await?.payload(flag).cloned())
    }
}

impl<T: Analytics + ?Sized> AnalyticsExt for T {}
