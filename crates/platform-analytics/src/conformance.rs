//! The behaviour suite of [`Analytics`](crate::Analytics): every `# Behavior` bullet of the trait
//! that can be observed from outside, as a free async function.
//!
//! Each case takes a factory `make(Setup) -> Subject`: the implementation under
//! test built with the [`Setup`]'s clock, enrichment and hook, plus a
//! [`Received`] view of what its backend got (the recorder for the local
//! implementation; the mock server's requests for an HTTP adapter). The backend
//! must answer flags for [`FLAGS_USER`] with [`expected_flags`].
//!
//! [`analytics_conformance!`](crate::analytics_conformance) generates one
//! `#[tokio::test]` per case.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone as _, Utc};
use platform_core::{ErrorKind, ManualClock, Product};
use serde_json::{Map, Value, json};

use crate::{
    AgentCreated, AgentExecuted, AnalyticsEvent, AnalyticsExt as _, BeforeSend, DynAnalytics, Enrichment,
    FeatureFlags, FlagState, ImageShared, SignUpMethod, UserSignedUp, UserTraits,
};

/// How long cases wait for a flush; generous, since flush returns as soon as done.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The user whose flags the backend must answer with [`expected_flags`].
pub const FLAGS_USER: &str = "flag-user-1";

/// The flags the backend must return for [`FLAGS_USER`]: `new-editor` on,
/// `checkout` variant `b` with payload `{"color":"blue"}`, `beta` off.
pub fn expected_flags() -> FeatureFlags {
    FeatureFlags::new()
        .with("new-editor", FlagState::enabled(true))
        .with(
            "checkout",
            FlagState::variant("b").with_payload(json!({"color": "blue"})),
        )
        .with("beta", FlagState::enabled(false))
}

/// The time the [`Setup`] clock shows.
pub fn setup_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// What a case asks the factory to build with.
#[derive(Clone)]
#[non_exhaustive]
pub struct Setup {
    /// The clock (stopped at [`setup_time`]).
    pub clock: ManualClock,
    /// Environment `test`, app version `1.2.3`.
    pub enrichment: Enrichment,
    /// The hook under test, if any.
    pub before_send: Option<BeforeSend>,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("clock", &self.clock)
            .field("enrichment", &self.enrichment)
            .field("before_send", &self.before_send.is_some())
            .finish()
    }
}

impl Setup {
    fn new() -> Self {
        Self {
            clock: ManualClock::new(setup_time()),
            enrichment: Enrichment::new("test", "1.2.3"),
            before_send: None,
        }
    }
}

/// An event as the backend received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// Event name.
    pub name: String,
    /// Distinct id.
    pub distinct_id: String,
    /// Properties (an HTTP backend may add its own, e.g. `$lib`).
    pub properties: Map<String, Value>,
    /// The event's timestamp.
    pub timestamp: Option<DateTime<Utc>>,
}

impl From<AnalyticsEvent> for ReceivedEvent {
    fn from(e: AnalyticsEvent) -> Self {
        Self {
            name: e.name().to_owned(),
            distinct_id: e.distinct_id().to_owned(),
            properties: e.properties().clone(),
            timestamp: e.timestamp(),
        }
    }
}

/// What the backend of a [`Subject`] has received so far, in order.
#[async_trait]
pub trait Received: Send + Sync {
    /// Every event received, in arrival order.
    async fn events(&self) -> Vec<ReceivedEvent>;
}

/// An implementation under test and a view of its backend.
pub struct Subject {
    /// The implementation.
    pub analytics: DynAnalytics,
    /// Its backend.
    pub received: Box<dyn Received>,
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject")
            .field("analytics", &self.analytics)
            .finish_non_exhaustive()
    }
}

fn prop<'a>(e: &'a ReceivedEvent, key: &str) -> Option<&'a Value> {
    e.properties.get(key)
}

/// capture: stamped with the clock, enriched with environment/app version/product,
/// delivered by flush, counted as delivered.
pub async fn capture_is_enriched_and_delivered_on_flush<F, Fut>(make: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = Subject>,
{
    let s = make(Setup::new()).await;
    let ev = AnalyticsEvent::new("report.opened", "user-1")
        .and_then(|e| e.with_property("report_id", "r-9"))
        .map(|e| e.with_product(Product::KUMORI));
    let Ok(ev) = ev else {
        return fail("building an event failed");
    };
    s.analytics.capture(ev);
    let report = s.analytics.flush(FLUSH_TIMEOUT).await;
    assert_eq!(
        (report.delivered, report.pending, report.dropped),
        (1, 0, 0),
        "{report}"
    );
    let got = s.received.events().await;
    assert_eq!(got.len(), 1, "{got:?}");
    let e = &got[0];
    assert_eq!(e.name, "report.opened");
    assert_eq!(e.distinct_id, "user-1");
    assert_eq!(prop(e, "report_id"), Some(&json!("r-9")));
    assert_eq!(prop(e, "environment"), Some(&json!("test")));
    assert_eq!(prop(e, "app_version"), Some(&json!("1.2.3")));
    assert_eq!(prop(e, "product"), Some(&json!("kumori")));
    assert_eq!(e.timestamp, Some(setup_time()));
}

/// capture: typed events carry their fields as properties and their product;
/// caller-set properties win over enrichment.
pub async fn typed_events_carry_fields_and_product<F, Fut>(make: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = Subject>,
{
    let s = make(Setup::new()).await;
    let a = &s.analytics;
    let results = [
        a.track(
            "u-7",
            &AgentCreated {
                agent_id: "ag-1".into(),
                agent_type: "research".into(),
            },
        ),
        a.track(
            "u-7",
            &AgentExecuted {
                agent_id: "ag-1".into(),
                duration: Duration::from_millis(2500),
            },
        ),
        a.track(
            "u-8",
            &ImageShared {
                platform: "instagram".into(),
            },
        ),
        a.track(
            "u-9",
            &UserSignedUp {
                product: Product::ARBOR,
                method: SignUpMethod::Email,
            },
        ),
    ];
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let custom =
        AnalyticsEvent::new("custom", "u-9").and_then(|e| e.with_property("environment", "override"));
    let Ok(custom) = custom else {
        return fail("building an event failed");
    };
    a.capture(custom);
    let report = a.flush(FLUSH_TIMEOUT).await;
    assert_eq!((report.delivered, report.pending), (5, 0), "{report}");
    let got = s.received.events().await;
    let names: Vec<&str> = got.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "agent_created",
            "agent_executed",
            "image_shared",
            "user.signed_up",
            "custom"
        ],
        "delivered in capture order"
    );
    assert_eq!(prop(&got[0], "type"), Some(&json!("research")));
    assert_eq!(prop(&got[0], "agent_id"), Some(&json!("ag-1")));
    assert_eq!(prop(&got[0], "product"), Some(&json!("arbor")));
    assert_eq!(prop(&got[1], "duration_ms"), Some(&json!(2500)));
    assert_eq!(prop(&got[2], "platform"), Some(&json!("instagram")));
    assert_eq!(prop(&got[2], "product"), Some(&json!("kumori")));
    assert_eq!(prop(&got[3], "method"), Some(&json!("email")));
    assert_eq!(prop(&got[3], "product"), Some(&json!("arbor")));
    assert_eq!(prop(&got[4], "environment"), Some(&json!("override")));
}

/// flush: every captured event is accounted for, in order; nothing pending after.
pub async fn flush_accounts_for_every_event<F, Fut>(make: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = Subject>,
{
    let s = make(Setup::new()).await;
    for i in 0..25 {
        match AnalyticsEvent::new(format!("step.{i}"), "u-1") {
            Ok(e) => s.analytics.capture(e),
            Err(e) => return fail(&e.to_string()),
        }
    }
    let report = s.analytics.flush(FLUSH_TIMEOUT).await;
    assert_eq!(report.delivered, 25, "{report}");
    assert_eq!(report.pending, 0, "{report}");
    assert_eq!(report.dropped, 0, "{report}");
    assert!(report.is_complete());
    let names: Vec<String> = s.received.events().await.into_iter().map(|e| e.name).collect();
    let expected: Vec<String> = (0..25).map(|i| format!("step.{i}")).collect();
    assert_eq!(names, expected);
    let again = s.analytics.flush(FLUSH_TIMEOUT).await;
    assert_eq!(again, report, "a second flush changes nothing");
}

/// before_send: can scrub properties and drop events (counted as filtered).
pub async fn before_send_scrubs_and_drops<F, Fut>(make: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = Subject>,
{
    let mut setup = Setup::new();
    setup.before_send = Some(std::sync::Arc::new(|mut e: AnalyticsEvent| {
        if e.name() == "internal.debug" {
            return None;
        }
        e.remove_property("email");
        Some(e)
    }));
    let s = make(setup).await;
    let kept = AnalyticsEvent::new("profile.updated", "u-1")
        .and_then(|e| e.with_property("email", "a@example.com"))
        .and_then(|e| e.with_property("field", "name"));
    let dropped = AnalyticsEvent::new("internal.debug", "u-1");
    let (Ok(kept), Ok(dropped)) = (kept, dropped) else {
        return fail("building events failed");
    };
    s.analytics.capture(kept);
    s.analytics.capture(dropped);
    let report = s.analytics.flush(FLUSH_TIMEOUT).await;
    assert_eq!(
        (report.delivered, report.filtered, report.dropped),
        (1, 1, 0),
        "{report}"
    );
    let got = s.received.events().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].name, "profile.updated");
    assert_eq!(prop(&got[0], "email"), None, "scrubbed");
    assert_eq!(prop(&got[0], "field"), Some(&json!("name")));
}

/// identify: an `$identify` event whose `$set` carries the caller's traits.
pub async fn identify_sends_traits<F, Fut>(make: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = Subject>,
{
    let s = make(Setup::new()).await;
    let traits = UserTraits::new()
        .with_products([Product::ARBOR, Product::KUMORI])
        .with_total_spend(120.5)
        .with_lifetime_value(300.0)
        .with("plan", "pro");
    let Ok(traits) = traits else {
        return fail("building traits failed");
    };
    assert!(s.analytics.identify("user-42", traits).is_ok());
    s.analytics.flush(FLUSH_TIMEOUT).await;
    let got = s.received.events().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].name, "$identify");
    assert_eq!(got[0].distinct_id, "user-42");
    let set = prop(&got[0], "$set").cloned().unwrap_or_default();
    assert_eq!(set["products"], json!(["arbor", "kumori"]));
    assert_eq!(set["total_spend"], json!(120.5));
    assert_eq!(set["lifetime_value"], json!(300.0));
    assert_eq!(set["plan"], json!("pro"));
}

/// identify/alias/flags: blank or invalid ids are `InvalidInput` and nothing is sent.
pub async fn invalid_ids_are_rejected<F, Fut>(make: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = Subject>,
{
    let s = make(Setup::new()).await;
    let a = &s.analytics;
    let kind = |r: platform_core::Result<()>| r.err().map(|e| e.kind());
    assert_eq!(
        kind(a.identify(" ", UserTraits::new())),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(
        kind(a.identify("u-1", UserTraits::new().with_total_spend(f64::NAN))),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(kind(a.alias("", "anon-1")), Some(ErrorKind::InvalidInput));
    assert_eq!(kind(a.alias("u-1", "u-1")), Some(ErrorKind::InvalidInput));
    assert_eq!(
        a.flags("").await.err().map(|e| e.kind()),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(
        AnalyticsEvent::new("", "u-1").err().map(|e| e.kind()),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(
        AnalyticsEvent::new("ok", "line\nbreak").err().map(|e| e.kind()),
        Some(ErrorKind::InvalidInput)
    );
    let report = a.flush(FLUSH_TIMEOUT).await;
    assert_eq!(report.delivered + report.pending + report.dropped, 0, "{report}");
    assert!(s.received.events().await.is_empty());
}

/// alias: a `$create_alias` event from the previous id naming the new one.
pub async fn alias_links_ids<F, Fut>(make: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = Subject>,
{
    let s = make(Setup::new()).await;
    assert!(s.analytics.alias("user-42", "anon-abc").is_ok());
    s.analytics.flush(FLUSH_TIMEOUT).await;
    let got = s.received.events().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].name, "$create_alias");
    assert_eq!(got[0].distinct_id, "anon-abc");
    assert_eq!(prop(&got[0], "alias"), Some(&json!("user-42")));
    assert_eq!(prop(&got[0], "distinct_id"), Some(&json!("anon-abc")));
}

/// capture_now: delivered before it returns, without a flush; counted as delivered.
pub async fn capture_now_delivers_immediately<F, Fut>(make: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = Subject>,
{
    let s = make(Setup::new()).await;
    let Ok(ev) = AnalyticsEvent::new("invoice.paid", "cust-1").and_then(|e| e.with_property("amount", 4200))
    else {
        return fail("building an event failed");
    };
    let result = s.analytics.capture_now(ev).await;
    assert!(result.is_ok(), "{result:?}");
    let got = s.received.events().await;
    assert_eq!(got.len(), 1, "delivered before capture_now returned: {got:?}");
    assert_eq!(got[0].name, "invoice.paid");
    assert_eq!(prop(&got[0], "amount"), Some(&json!(4200)));
    assert_eq!(prop(&got[0], "environment"), Some(&json!("test")));
    let report = s.analytics.flush(FLUSH_TIMEOUT).await;
    assert_eq!((report.delivered, report.pending), (1, 0), "{report}");
}

/// flags: values, variants and payloads for the user; unknown flags are off.
pub async fn flags_are_evaluated_for_the_user<F, Fut>(make: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = Subject>,
{
    let s = make(Setup::new()).await;
    let flags = match s.analytics.flags(FLAGS_USER).await {
        Ok(f) => f,
        Err(e) => return fail(&format!("flags failed: {e}")),
    };
    assert_eq!(flags, expected_flags());
    assert!(flags.is_enabled("new-editor"));
    assert!(flags.is_enabled("checkout"));
    assert_eq!(flags.variant("checkout"), Some("b"));
    assert_eq!(flags.payload("checkout"), Some(&json!({"color": "blue"})));
    assert!(!flags.is_enabled("beta"));
    assert!(!flags.is_enabled("no-such-flag"));
    assert!(matches!(
        s.analytics.is_enabled("new-editor", FLAGS_USER).await,
        Ok(true)
    ));
    assert!(matches!(
        s.analytics.flag_payload("checkout", FLAGS_USER).await,
        Ok(Some(p)) if p == json!({"color": "blue"})
    ));
    let report = s.analytics.flush(FLUSH_TIMEOUT).await;
    assert_eq!(report.delivered, 0, "reading flags sends no event: {report}");
    assert!(s.received.events().await.is_empty());
}

/// shutdown: delivers everything pending; later captures are dropped and counted,
/// later `capture_now` is `Unavailable`; a second shutdown changes nothing.
pub async fn shutdown_delivers_then_refuses<F, Fut>(make: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = Subject>,
{
    let s = make(Setup::new()).await;
    for i in 0..7 {
        match AnalyticsEvent::new("tick", format!("u-{i}")) {
            Ok(e) => s.analytics.capture(e),
            Err(e) => return fail(&e.to_string()),
        }
    }
    let report = s.analytics.shutdown(FLUSH_TIMEOUT).await;
    assert_eq!(
        (report.delivered, report.pending, report.dropped),
        (7, 0, 0),
        "{report}"
    );
    assert_eq!(s.received.events().await.len(), 7);
    let Ok(late) = AnalyticsEvent::new("late", "u-1") else {
        return fail("building an event failed");
    };
    s.analytics.capture(late.clone());
    let after = s.analytics.flush(Duration::from_millis(100)).await;
    assert_eq!(
        (after.delivered, after.dropped, after.pending),
        (7, 1, 0),
        "{after}"
    );
    let now = s.analytics.capture_now(late).await;
    assert_eq!(now.err().map(|e| e.kind()), Some(ErrorKind::Unavailable));
    let again = s.analytics.shutdown(FLUSH_TIMEOUT).await;
    assert_eq!(again, after);
    assert_eq!(s.received.events().await.len(), 7);
}

#[track_caller]
fn fail(msg: &str) {
    assert!(msg.is_empty(), "{msg}");
}

/// Generates one `#[tokio::test]` per behaviour case, calling `$make` (an
/// `async fn(Setup) -> Subject`) for each.
#[macro_export]
macro_rules! analytics_conformance {
    ($make:path) => {
        $crate::analytics_conformance!(@cases $make;
            capture_is_enriched_and_delivered_on_flush,
            typed_events_carry_fields_and_product,
            flush_accounts_for_every_event,
            before_send_scrubs_and_drops,
            identify_sends_traits,
            invalid_ids_are_rejected,
            alias_links_ids,
            capture_now_delivers_immediately,
            flags_are_evaluated_for_the_user,
            shutdown_delivers_then_refuses,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$case($make).await;
            }
        )*
    };
}
