//! The behaviour suite against the PostHog adapter pointed at wiremock answering
//! like PostHog's `/batch/` and `/flags/?v=2` endpoints, plus wire-shape,
//! batching, retry, outage, overflow, shutdown and error-mapping tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use platform_analytics::conformance::{FLAGS_USER, Received, ReceivedEvent, Setup, Subject, setup_time};
use platform_analytics::{
    AgentCreated, Analytics, AnalyticsEvent, DynAnalytics, FlushReport, PostHogAnalytics,
    PostHogAnalyticsBuilder,
};
use platform_core::{ErrorKind, ManualClock, RetryPolicy, SecretString};
use serde_json::{Value, json};
use tokio::sync::Notify;
use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const API_KEY: &str = "phc_test_project_key_123";

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(10))
        .with_jitter(false)
}

/// An adapter for `server` with a long flush interval, so only full batches and
/// explicit flushes send.
fn builder(server: &MockServer) -> PostHogAnalyticsBuilder {
    PostHogAnalytics::builder()
        .with_api_key(SecretString::from(API_KEY))
        .with_base_url(server.uri())
        .with_flush_interval(Duration::from_secs(3600))
        .with_retry_policy(fast_retry())
        .with_clock(ManualClock::new(setup_time()).shared())
}

async fn mount_ok(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("batch_ok.json")))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/flags/"))
        .and(query_param("v", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("flags_v2.json")))
        .mount(server)
        .await;
}

/// The `/batch/` request bodies the server received.
async fn batch_bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == "/batch/")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// Events in arrival order, de-duplicated on uuid as PostHog does.
async fn received_events(server: &MockServer) -> Vec<ReceivedEvent> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for body in batch_bodies(server).await {
        for e in body["batch"].as_array().unwrap() {
            if !seen.insert(e["uuid"].as_str().unwrap().to_owned()) {
                continue;
            }
            out.push(ReceivedEvent {
                name: e["event"].as_str().unwrap().to_owned(),
                distinct_id: e["distinct_id"].as_str().unwrap().to_owned(),
                properties: e["properties"].as_object().unwrap().clone(),
                timestamp: e["timestamp"].as_str().map(|t| t.parse().unwrap()),
            });
        }
    }
    out
}

struct Wire(MockServer);

#[async_trait]
impl Received for Wire {
    async fn events(&self) -> Vec<ReceivedEvent> {
        received_events(&self.0).await
    }
}

async fn make(setup: Setup) -> Subject {
    let server = MockServer::start().await;
    mount_ok(&server).await;
    let analytics = builder(&server)
        .with_clock(setup.clock.shared())
        .with_enrichment(setup.enrichment)
        .with_before_send_hook(setup.before_send)
        .build()
        .await
        .unwrap();
    Subject {
        analytics: Arc::new(analytics),
        received: Box::new(Wire(server)),
    }
}

platform_analytics::analytics_conformance!(make);

/// Counts requests and wakes whoever waits for them, the moment each one arrives (before
/// any delay of its answer), so a test awaits "the request is on the wire" instead of
/// polling or sleeping.
#[derive(Clone, Default)]
struct Arrivals {
    count: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
}

impl Arrivals {
    fn arrive(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        // `notify_one` keeps a permit if nobody waits yet: no lost wake-up.
        self.arrived.notify_one();
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests arrived; fails (rather than hangs) after a bound
    /// far above anything a loaded machine needs. Not a timing assertion: only a hang trips it.
    async fn wait_for(&self, n: usize) {
        let arrived = async {
            while self.count() < n {
                self.arrived.notified().await;
            }
        };
        tokio::time::timeout(GENEROUS, arrived)
            .await
            .unwrap_or_else(|_| panic!("{n} requests never arrived (got {})", self.count()));
    }
}

/// Answers `template` to every `/batch/` request, counting arrivals.
struct Answer(Arrivals, ResponseTemplate);

impl Respond for Answer {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.0.arrive();
        self.1.clone()
    }
}

async fn mount_batch(server: &MockServer, template: ResponseTemplate) -> Arrivals {
    let arrivals = Arrivals::default();
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .respond_with(Answer(arrivals.clone(), template))
        .mount(server)
        .await;
    arrivals
}

/// Answers 503 while `down` is set, PostHog's batch answer otherwise; counts arrivals.
struct Switch(Arc<AtomicBool>, Arrivals);

impl Respond for Switch {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.1.arrive();
        if self.0.load(Ordering::SeqCst) {
            ResponseTemplate::new(503).set_body_json(fixture("error_500.json"))
        } else {
            ResponseTemplate::new(200).set_body_json(fixture("batch_ok.json"))
        }
    }
}

async fn switchable_server() -> (MockServer, Arc<AtomicBool>, Arrivals) {
    let server = MockServer::start().await;
    let down = Arc::new(AtomicBool::new(true));
    let arrivals = Arrivals::default();
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .respond_with(Switch(Arc::clone(&down), arrivals.clone()))
        .mount(&server)
        .await;
    (server, down, arrivals)
}

/// A bound that only a hang (never a slow, loaded machine) exceeds: it turns a hang
/// into a failure instead of a stuck test run.
const GENEROUS: Duration = Duration::from_secs(60);

fn event(name: &str, user: &str) -> AnalyticsEvent {
    AnalyticsEvent::new(name, user).unwrap()
}

/// `e{i}` for every `i` in `range`.
fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("e{i}")).collect()
}

/// Captures one event named `e{i}` (user `u-1`) for every `i` in `range`.
fn capture_numbered(analytics: &impl Analytics, range: std::ops::Range<usize>) {
    for name in numbered(range) {
        analytics.capture(event(&name, "u-1"));
    }
}

/// The names of the events the server received, in arrival order, de-duplicated.
async fn received_names(server: &MockServer) -> Vec<String> {
    received_events(server)
        .await
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// `(delivered, pending, dropped)` of a report.
fn counts(report: &FlushReport) -> (u64, u64, u64) {
    (report.delivered, report.pending, report.dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_shape_of_a_batch() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(
            json!({"api_key": API_KEY, "historical_migration": false}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("batch_ok.json")))
        .expect(1)
        .mount(&server)
        .await;
    let analytics = builder(&server).build().await.unwrap();
    let ev = AnalyticsEvent::from_typed(
        "user-1",
        &AgentCreated {
            agent_id: "ag-1".into(),
            agent_type: "coder".into(),
        },
    )
    .unwrap();
    let uuid = ev.uuid();
    analytics.capture(ev);
    let report = analytics.flush(Duration::from_secs(10)).await;
    assert_eq!(report.delivered, 1, "{report}");
    let bodies = batch_bodies(&server).await;
    assert_eq!(bodies.len(), 1);
    let body = &bodies[0];
    assert!(body["sent_at"].is_string(), "{body}");
    let e = &body["batch"][0];
    assert_eq!(e["event"], "agent_created");
    assert_eq!(e["distinct_id"], "user-1");
    assert_eq!(e["uuid"], uuid.to_string());
    assert_eq!(
        e["timestamp"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap(),
        setup_time()
    );
    let props = &e["properties"];
    assert_eq!(props["agent_id"], "ag-1");
    assert_eq!(props["type"], "coder");
    assert_eq!(props["product"], "arbor");
    assert_eq!(props["environment"], "development");
    assert_eq!(props["app_version"], "unknown");
    assert_eq!(props["$lib"], "posthog-rs");
    assert_eq!(props["$geoip_disable"], true);
    analytics.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_shape_of_a_flags_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/flags/"))
        .and(query_param("v", "2"))
        .and(body_partial_json(
            json!({"api_key": API_KEY, "distinct_id": FLAGS_USER}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("flags_v2.json")))
        .expect(1)
        .mount(&server)
        .await;
    let analytics = builder(&server).build().await.unwrap();
    let flags = analytics.flags(FLAGS_USER).await.unwrap();
    assert_eq!(flags.variant("checkout"), Some("b"));
    analytics.shutdown(Duration::from_secs(5)).await;
    assert!(
        batch_bodies(&server).await.is_empty(),
        "no $feature_flag_called side events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_arrive_in_as_few_requests_as_batching_implies() {
    let server = MockServer::start().await;
    mount_ok(&server).await;
    let analytics = builder(&server)
        .with_batch_size(100)
        .with_queue_capacity(10_000)
        .build()
        .await
        .unwrap();
    for i in 0..10_000 {
        analytics.capture(event("bulk", &format!("u-{}", i % 97)));
    }
    let report = analytics.flush(Duration::from_secs(60)).await;
    assert_eq!(counts(&report), (10_000, 0, 0), "{report}");
    let bodies = batch_bodies(&server).await;
    assert_eq!(bodies.len(), 100, "10 000 events / batches of 100");
    assert!(bodies.iter().all(|b| b["batch"].as_array().unwrap().len() == 100));
    assert_eq!(received_events(&server).await.len(), 10_000, "all distinct");
    analytics.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_then_200_delivers_the_same_batch_without_loss() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .respond_with(ResponseTemplate::new(500).set_body_json(fixture("error_500.json")))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    mount_ok(&server).await;
    let analytics = builder(&server).build().await.unwrap();
    capture_numbered(&analytics, 0..3);
    let report = analytics.flush(Duration::from_secs(10)).await;
    assert_eq!(counts(&report), (3, 0, 0), "{report}");
    let bodies = batch_bodies(&server).await;
    assert_eq!(bodies.len(), 2, "one failed attempt, one retry");
    assert_eq!(
        bodies[0]["batch"], bodies[1]["batch"],
        "the retry resends the same events (same uuids)"
    );
    let names = received_names(&server).await;
    assert_eq!(names, ["e0", "e1", "e2"]);
    analytics.shutdown(Duration::from_secs(5)).await;
}

/// Answers 502 (as a proxy failing on a large body may) to batches of more than four
/// events, PostHog's batch answer to the others.
struct FailsOnLarge;

impl Respond for FailsOnLarge {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        if body["batch"].as_array().unwrap().len() > 4 {
            ResponseTemplate::new(502).set_body_json(fixture("error_500.json"))
        } else {
            ResponseTemplate::new(200).set_body_json(fixture("batch_ok.json"))
        }
    }
}

/// A batch answered with a server error round after round is split, so that the
/// events behind it are not held for ever: every event arrives, in order, in batches
/// the server takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failing_with_5xx_round_after_round_is_split() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .respond_with(FailsOnLarge)
        .mount(&server)
        .await;
    let analytics = builder(&server).with_batch_size(10).build().await.unwrap();
    capture_numbered(&analytics, 0..10);
    // Returns as soon as everything is delivered; the deadline only catches a hang.
    let report = analytics.flush(GENEROUS).await;
    assert_eq!(counts(&report), (10, 0, 0), "{report}");
    assert_eq!(
        received_names(&server).await,
        numbered(0..10),
        "every event, in order"
    );
    analytics.shutdown(Duration::from_secs(5)).await;
}

/// A retry policy without backoff does not make an outage spin: rounds are at least
/// 100 ms apart (a spinning sender makes hundreds of requests in the window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_a_zero_backoff_policy_does_not_spin() {
    let (server, _down, arrivals) = switchable_server().await;
    let no_backoff = RetryPolicy::default()
        .with_max_attempts(2)
        .with_initial_backoff(Duration::ZERO)
        .with_max_backoff(Duration::ZERO);
    let analytics = builder(&server)
        .with_retry_policy(no_backoff)
        .build()
        .await
        .unwrap();
    analytics.capture(event("e0", "user-1"));
    // The flush sends at once; the outage keeps the event pending through the window.
    let during = analytics.flush(Duration::from_millis(500)).await;
    assert_eq!(counts(&during), (0, 1, 0), "{during}");
    arrivals.wait_for(2).await;
    // 2 attempts per round, a round at most every 100 ms: about 12 in the window.
    assert!(arrivals.count() <= 40, "{} requests", arrivals.count());
    analytics.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    mount_ok(&server).await;
    let analytics = builder(&server).build().await.unwrap();
    analytics
        .capture_now(event("billing.usage", "cust-1"))
        .await
        .unwrap();
    assert_eq!(batch_bodies(&server).await.len(), 2);
    analytics.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_captured_during_an_outage_arrive_once_it_is_back() {
    let (server, down, attempts) = switchable_server().await;
    let analytics = builder(&server)
        .with_batch_size(10)
        .with_queue_capacity(1000)
        .build()
        .await
        .unwrap();
    capture_numbered(&analytics, 0..30);
    // The endpoint is tried (and fails) during the outage; the events are kept.
    attempts.wait_for(3).await;
    let during = analytics.flush(Duration::from_millis(100)).await;
    assert_eq!(counts(&during), (0, 30, 0), "kept, not dropped: {during}");
    capture_numbered(&analytics, 30..50);
    let still = analytics.flush(Duration::from_millis(100)).await;
    assert_eq!(counts(&still), (0, 50, 0), "{still}");

    down.store(false, Ordering::SeqCst);
    // Returns as soon as everything is delivered; the deadline only catches a hang.
    let after = analytics.flush(GENEROUS).await;
    assert_eq!(counts(&after), (50, 0, 0), "{after}");
    assert_eq!(
        received_names(&server).await,
        numbered(0..50),
        "every event, in order"
    );
    analytics.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_beyond_capacity_is_counted_in_the_report() {
    let (server, down, _) = switchable_server().await;
    let analytics = builder(&server)
        .with_batch_size(10)
        .with_queue_capacity(20)
        .build()
        .await
        .unwrap();
    capture_numbered(&analytics, 0..50);
    let during = analytics.flush(Duration::from_millis(200)).await;
    assert_eq!(counts(&during), (0, 20, 30), "{during}");
    down.store(false, Ordering::SeqCst);
    let after = analytics.flush(Duration::from_secs(20)).await;
    assert_eq!(counts(&after), (20, 0, 30), "{after}");
    let names = received_names(&server).await;
    let expected = numbered(0..20);
    assert_eq!(
        names, expected,
        "the queued events survive, the overflow is the newest"
    );
    analytics.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_everything_pending() {
    let server = MockServer::start().await;
    mount_ok(&server).await;
    let analytics = builder(&server).with_batch_size(100).build().await.unwrap();
    for i in 0..42 {
        analytics.capture(event("tick", &format!("u-{i}")));
    }
    assert!(
        batch_bodies(&server).await.is_empty(),
        "a partial batch waits for the flush interval"
    );
    let report = analytics.shutdown(Duration::from_secs(10)).await;
    assert_eq!(counts(&report), (42, 0, 0), "{report}");
    assert_eq!(received_events(&server).await.len(), 42);
    assert_eq!(batch_bodies(&server).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flush_interval_sends_a_partial_batch() {
    let server = MockServer::start().await;
    let arrivals = mount_batch(
        &server,
        ResponseTemplate::new(200).set_body_json(fixture("batch_ok.json")),
    )
    .await;
    let analytics = builder(&server)
        .with_batch_size(100)
        .with_flush_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    analytics.capture(event("lonely", "u-1"));
    // Nobody flushes and the batch is far from full: only the interval can send it.
    arrivals.wait_for(1).await;
    assert_eq!(arrivals.count(), 1);
    assert_eq!(received_events(&server).await[0].name, "lonely");
    analytics.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_endpoint_down_reports_pending_at_the_deadline() {
    let (server, _down, _) = switchable_server().await;
    let analytics = builder(&server).with_batch_size(10).build().await.unwrap();
    capture_numbered(&analytics, 0..15);
    // The endpoint never comes back: shutdown gives up at its own 300 ms deadline and
    // reports what it could not deliver. The outer bound only catches a shutdown that
    // ignores its timeout altogether (it would otherwise retry forever).
    let report = tokio::time::timeout(GENEROUS, analytics.shutdown(Duration::from_millis(300)))
        .await
        .expect("shutdown ignored its timeout");
    assert_eq!(counts(&report), (0, 15, 0), "{report}");
    // The discarded events are dropped from then on: a later flush or shutdown has
    // nothing to wait for (with an hour's timeout, the outer bound catches one that
    // waits anyway).
    let later = tokio::time::timeout(GENEROUS, analytics.flush(Duration::from_secs(3600)))
        .await
        .expect("a flush after shutdown waited for discarded events");
    assert_eq!(counts(&later), (0, 0, 15), "{later}");
    let again = tokio::time::timeout(GENEROUS, analytics.shutdown(Duration::from_secs(3600)))
        .await
        .expect("a second shutdown waited for discarded events");
    assert_eq!(counts(&again), (0, 0, 15), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_now_surfaces_a_401_as_unauthenticated_without_retrying() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .respond_with(ResponseTemplate::new(401).set_body_json(fixture("error_401.json")))
        .expect(1)
        .mount(&server)
        .await;
    let analytics = builder(&server).build().await.unwrap();
    let err = analytics
        .capture_now(event("invoice.paid", "cust-1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.provider(), Some("posthog"));
    assert!(!err.to_string().contains(API_KEY), "{err}");
    let report = analytics.flush(Duration::from_secs(1)).await;
    assert_eq!(
        (report.delivered, report.dropped),
        (0, 0),
        "the caller has the error: {report}"
    );
    analytics.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_batch_is_dropped_and_counted_not_retried_forever() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .respond_with(ResponseTemplate::new(401).set_body_json(fixture("error_401.json")))
        .expect(1)
        .mount(&server)
        .await;
    let analytics = builder(&server).build().await.unwrap();
    capture_numbered(&analytics, 0..5);
    let report = analytics.flush(Duration::from_secs(10)).await;
    assert_eq!(counts(&report), (0, 0, 5), "{report}");
    analytics.shutdown(Duration::from_secs(5)).await;
}

/// Answers `/batch/` as PostHog does when it refuses some batches (`refuse` says
/// which, by their event names) and keeps the names of the batches it accepts.
struct Refusing {
    refuse: fn(&[String]) -> Option<ResponseTemplate>,
    accepted: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Respond for Refusing {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let names: Vec<String> = body["batch"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect();
        if let Some(refusal) = (self.refuse)(&names) {
            return refusal;
        }
        self.accepted.lock().unwrap().extend(names);
        ResponseTemplate::new(200).set_body_json(fixture("batch_ok.json"))
    }
}

/// Captures through an adapter whose `/batch/` answers as [`Refusing`] with `refuse`,
/// and flushes; returns the flush's report, the names of the events accepted and how
/// many `/batch/` requests were made.
async fn capture_refused(
    refuse: fn(&[String]) -> Option<ResponseTemplate>,
    capture: impl FnOnce(&PostHogAnalytics),
) -> (FlushReport, Vec<String>, usize) {
    let server = MockServer::start().await;
    let accepted = Arc::default();
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .respond_with(Refusing {
            refuse,
            accepted: Arc::clone(&accepted),
        })
        .mount(&server)
        .await;
    let analytics = builder(&server).with_batch_size(100).build().await.unwrap();
    capture(&analytics);
    let report = analytics.flush(Duration::from_secs(10)).await;
    analytics.shutdown(Duration::from_secs(5)).await;
    let accepted = accepted.lock().unwrap().clone();
    (report, accepted, batch_bodies(&server).await.len())
}

/// A batch PostHog refuses as invalid (400) for one malformed event is sent again in
/// halves: every other event of it arrives, in order, and only that one is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_event_costs_only_itself() {
    let poisoned = |names: &[String]| {
        names
            .iter()
            .any(|n| n == "poison")
            .then(|| ResponseTemplate::new(400).set_body_json(fixture("error_400.json")))
    };
    let (report, accepted, _) = capture_refused(poisoned, |analytics| {
        capture_numbered(analytics, 0..6);
        analytics.capture(event("poison", "u-1"));
        capture_numbered(analytics, 6..10);
    })
    .await;
    assert_eq!(counts(&report), (10, 0, 1), "{report}");
    assert_eq!(accepted, numbered(0..10));
}

/// A batch refused as too large (413) is sent in smaller parts, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_as_too_large_arrives_in_parts() {
    let too_large = |names: &[String]| {
        (names.len() > 3).then(|| ResponseTemplate::new(413).set_body_string("Payload Too Large"))
    };
    let (report, accepted, _) = capture_refused(too_large, |a| capture_numbered(a, 0..10)).await;
    assert_eq!(counts(&report), (10, 0, 0), "{report}");
    assert_eq!(accepted, numbered(0..10));
}

/// A refusal that is not about what the batch holds (here a proxy's 415) drops the batch
/// in one request: its parts would meet the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_refusal_drops_the_batch_without_splitting_it() {
    let proxy = |_: &[String]| Some(ResponseTemplate::new(415).set_body_string("Unsupported Media Type"));
    let (report, accepted, requests) = capture_refused(proxy, |a| capture_numbered(a, 0..10)).await;
    assert_eq!(counts(&report), (0, 0, 10), "{report}");
    assert!(accepted.is_empty(), "{accepted:?}");
    assert_eq!(requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_errors_keep_their_kind() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/flags/"))
        .respond_with(ResponseTemplate::new(401).set_body_json(fixture("error_401.json")))
        .expect(1)
        .mount(&server)
        .await;
    let analytics = builder(&server).build().await.unwrap();
    let err = analytics.flags("u-1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert_eq!(err.status(), Some(401));
    analytics.shutdown(Duration::from_secs(5)).await;
}

/// A request PostHog does not answer within the request timeout fails with `Timeout`
/// (not `Unavailable`), also for a timeout under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_times_out_as_timeout() {
    let server = MockServer::start().await;
    let slow = ResponseTemplate::new(200).set_delay(Duration::from_secs(30));
    mount_batch(&server, slow.clone()).await;
    Mock::given(method("POST"))
        .and(path("/flags/"))
        .respond_with(slow)
        .mount(&server)
        .await;
    let analytics = builder(&server)
        .with_request_timeout(Duration::from_millis(300))
        .with_flags_timeout(Duration::from_millis(300))
        .with_retry_policy(RetryPolicy::never())
        .build()
        .await
        .unwrap();
    let err = analytics
        .capture_now(event("invoice.paid", "cust-1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(err.provider(), Some("posthog"));
    let err = analytics.flags("u-1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    analytics.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_does_not_block_when_the_endpoint_hangs() {
    let server = MockServer::start().await;
    // The endpoint accepts the request and then says nothing for ten minutes.
    let arrivals = mount_batch(
        &server,
        ResponseTemplate::new(200).set_delay(Duration::from_secs(600)),
    )
    .await;
    let analytics: DynAnalytics = Arc::new(
        builder(&server)
            .with_batch_size(10)
            .with_queue_capacity(100_000)
            .with_request_timeout(Duration::from_secs(3600))
            .build()
            .await
            .unwrap(),
    );
    // Fill a batch and wait until its request is on the wire: the batching task is now
    // stuck in a request that will not be answered for ten minutes.
    for i in 0..10 {
        analytics.capture(event(&format!("warm{i}"), "u-1"));
    }
    arrivals.wait_for(1).await;

    // `capture` is synchronous: if it waited on the network it could only return after the
    // ten-minute answer. Run the captures off the runtime so a blocking `capture` fails the
    // test at the generous bound instead of hanging it (no speed is asserted).
    let capturing = Arc::clone(&analytics);
    tokio::time::timeout(
        GENEROUS,
        tokio::task::spawn_blocking(move || {
            for i in 0..20_000 {
                capturing.capture(event("while_hanging", &format!("u-{i}")));
            }
        }),
    )
    .await
    .expect("capture was held by the hanging request")
    .unwrap();

    // The captures returned while the first request is still unanswered: one request
    // arrived, none was answered (nothing delivered, no retry), and every event is queued.
    assert_eq!(arrivals.count(), 1, "still the one hanging request");
    let report = analytics.flush(Duration::ZERO).await;
    assert_eq!(counts(&report), (0, 20_010, 0), "{report}");
    let report = tokio::time::timeout(GENEROUS, analytics.shutdown(Duration::from_millis(200)))
        .await
        .expect("shutdown ignored its timeout");
    assert_eq!(counts(&report), (0, 20_010, 0), "{report}");
}

#[tokio::test]
async fn configuration_errors_name_the_variable() {
    let err = PostHogAnalyticsBuilder::from_iter([("POSTHOG_HOST", "http://127.0.0.1:1")])
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("POSTHOG_API_KEY"), "{err}");

    let err =
        PostHogAnalyticsBuilder::from_iter([("POSTHOG_API_KEY", "phc_x"), ("POSTHOG_BATCH_SIZE", "lots")])
            .build()
            .await
            .unwrap_err();
    assert!(err.to_string().contains("POSTHOG_BATCH_SIZE"), "{err}");
    assert!(!err.to_string().contains("lots"), "{err}");

    let err = PostHogAnalyticsBuilder::from_iter([("POSTHOG_API_KEY", "phc_x"), ("POSTHOG_HOST", "ftp://x")])
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("POSTHOG_HOST"), "{err}");

    // "No timeout" as Duration::MAX is refused, not overflowed into a 1 s timeout.
    for (request, flags) in [
        (Duration::MAX, Duration::from_secs(3)),
        (Duration::from_secs(10), Duration::MAX),
    ] {
        let err = PostHogAnalyticsBuilder::from_iter([("POSTHOG_API_KEY", "phc_x")])
            .with_request_timeout(request)
            .with_flags_timeout(flags)
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("POSTHOG_REQUEST_TIMEOUT_SECS"), "{err}");
    }

    let err = PostHogAnalyticsBuilder::from_iter([
        ("POSTHOG_API_KEY", "phc_x"),
        ("POSTHOG_BATCH_SIZE", "50"),
        ("POSTHOG_QUEUE_CAPACITY", "10"),
    ])
    .build()
    .await
    .unwrap_err();
    assert!(err.to_string().contains("POSTHOG_QUEUE_CAPACITY"), "{err}");
}

#[tokio::test]
async fn debug_never_prints_the_keys() {
    let server = MockServer::start().await;
    let b = PostHogAnalyticsBuilder::from_iter([
        ("POSTHOG_API_KEY", API_KEY),
        ("POSTHOG_PERSONAL_API_KEY", "phx_personal_secret_987"),
        ("POSTHOG_HOST", server.uri().as_str()),
        ("PLATFORM_ENV", "staging"),
    ]);
    let shown = format!("{b:?}");
    assert!(
        !shown.contains(API_KEY) && !shown.contains("phx_personal_secret_987"),
        "{shown}"
    );
    assert!(shown.contains("staging"), "{shown}");
    let analytics = b.with_personal_api_key(SecretString::from("phx_personal_secret_987"));
    let shown = format!("{analytics:?}");
    assert!(!shown.contains("phx_personal_secret_987"), "{shown}");
    let built = builder(&server).build().await.unwrap();
    let shown = format!("{built:?}");
    assert!(!shown.contains(API_KEY), "{shown}");
    built.shutdown(Duration::from_secs(1)).await;
}
