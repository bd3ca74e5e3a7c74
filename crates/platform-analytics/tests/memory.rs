//! The behaviour suite against `LocalAnalytics`, plus its query API, JSON-lines
//! file, capacity and static flags.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use platform_analytics::conformance::{FLAGS_USER, Received, ReceivedEvent, Setup, Subject, expected_flags};
use platform_analytics::{
    Analytics, AnalyticsEvent, AnalyticsExt, DynAnalytics, FilterApplied, FlagState, ImageGenerated,
    LocalAnalytics, StaticFlags, ToolUsed, UserLoggedIn,
};
use platform_core::{ErrorKind, Product};
use serde_json::json;

struct Recorder(LocalAnalytics);

#[async_trait]
impl Received for Recorder {
    async fn events(&self) -> Vec<ReceivedEvent> {
        self.0.events().into_iter().map(ReceivedEvent::from).collect()
    }
}

async fn make(setup: Setup) -> Subject {
    let local = LocalAnalytics::builder()
        .with_clock(setup.clock.shared())
        .with_enrichment(setup.enrichment)
        .with_before_send_hook(setup.before_send)
        .with_flags(StaticFlags::from_flags(expected_flags()))
        .build()
        .unwrap();
    Subject {
        analytics: Arc::new(local.clone()),
        received: Box::new(Recorder(local)),
    }
}

platform_analytics::analytics_conformance!(make);

#[tokio::test]
async fn events_named_and_events_for_query_the_recording() {
    let local = LocalAnalytics::new();
    local
        .track(
            "u1",
            &ToolUsed {
                tool_name: "search".into(),
                success: true,
            },
        )
        .unwrap();
    local
        .track(
            "u2",
            &FilterApplied {
                filter_name: "noir".into(),
            },
        )
        .unwrap();
    local
        .track(
            "u1",
            &ToolUsed {
                tool_name: "browse".into(),
                success: false,
            },
        )
        .unwrap();
    let tools = local.events_named("tool_used");
    assert_eq!(tools.len(), 2);
    assert_eq!(tools[1].property("tool_name"), Some(&json!("browse")));
    assert_eq!(tools[1].property("success"), Some(&json!(false)));
    assert_eq!(local.events_for("u2").len(), 1);
    assert_eq!(local.events_named("nothing").len(), 0);
    local.clear();
    assert!(local.events().is_empty());
    assert_eq!(
        local.flush(Duration::from_secs(1)).await.delivered,
        3,
        "counters survive clear"
    );
}

#[tokio::test]
async fn through_arc_dyn_and_default_product() {
    let local = LocalAnalytics::builder()
        .with_enrichment(
            platform_analytics::Enrichment::new("production", "9.9.9").with_default_product(Product::ARBOR),
        )
        .build()
        .unwrap();
    let dynamic: DynAnalytics = Arc::new(local.clone());
    dynamic.capture(AnalyticsEvent::new("page.viewed", "u1").unwrap());
    dynamic
        .track(
            "u1",
            &UserLoggedIn {
                product: Product::KUMORI,
            },
        )
        .unwrap();
    let events = local.events();
    assert_eq!(
        events[0].property("product"),
        Some(&json!("arbor")),
        "default product"
    );
    assert_eq!(
        events[1].property("product"),
        Some(&json!("kumori")),
        "the event's own product wins"
    );
    assert_eq!(events[0].property("environment"), Some(&json!("production")));
    assert!(events[0].timestamp().is_some());
}

#[tokio::test]
async fn capacity_overflow_is_counted_not_silent() {
    let local = LocalAnalytics::builder().with_capacity(3).build().unwrap();
    for i in 0..5 {
        local.capture(AnalyticsEvent::new(format!("e{i}"), "u1").unwrap());
    }
    let report = local.flush(Duration::from_secs(1)).await;
    assert_eq!(
        (report.delivered, report.dropped, report.pending),
        (3, 2, 0),
        "{report}"
    );
    let names: Vec<String> = local.events().iter().map(|e| e.name().to_owned()).collect();
    assert_eq!(names, ["e0", "e1", "e2"], "the oldest events are kept");
    let err = local
        .capture_now(AnalyticsEvent::new("billing", "u1").unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Unavailable,
        "capture_now reports what capture counts"
    );
}

#[tokio::test]
async fn jsonl_file_gets_one_line_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let local = LocalAnalytics::builder().with_jsonl_file(&path).build().unwrap();
    local
        .track(
            "u1",
            &ImageGenerated {
                filter_id: "f1".into(),
                duration: Duration::from_millis(830),
            },
        )
        .unwrap();
    local.capture(AnalyticsEvent::new("second", "u2").unwrap());
    local.flush(Duration::from_secs(1)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["name"], "image_generated");
    assert_eq!(lines[0]["properties"]["duration_ms"], 830);
    assert_eq!(lines[0]["properties"]["product"], "kumori");
    assert_eq!(lines[1]["distinct_id"], "u2");
    // The file round-trips into events.
    let back: AnalyticsEvent = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(back, local.events()[0]);
}

/// An event whose line cannot be written (`/dev/full`: the disk is full) is dropped
/// and counted, not reported as delivered.
#[tokio::test]
async fn an_event_the_jsonl_file_cannot_take_is_dropped_and_counted() {
    let local = LocalAnalytics::builder()
        .with_jsonl_file("/dev/full")
        .build()
        .unwrap();
    local.capture(AnalyticsEvent::new("lost", "u1").unwrap());
    let report = local.flush(Duration::from_secs(1)).await;
    assert_eq!((report.delivered, report.dropped), (0, 1), "{report:?}");
    assert!(local.events().is_empty());
}

#[tokio::test]
async fn jsonl_file_that_cannot_be_opened_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("events.jsonl");
    let err = LocalAnalytics::builder()
        .with_jsonl_file(&path)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("missing-dir"), "{err}");
}

#[tokio::test]
async fn static_flags_have_per_user_overrides() {
    let flags = StaticFlags::new()
        .with_flag("beta", FlagState::enabled(false))
        .with_flag("theme", FlagState::variant("dark"))
        .with_user_flag(
            "vip",
            "beta",
            FlagState::enabled(true).with_payload(json!({"limit": 10})),
        );
    let local = LocalAnalytics::builder().with_flags(flags).build().unwrap();
    assert!(!local.is_enabled("beta", "anyone").await.unwrap());
    assert!(local.is_enabled("beta", "vip").await.unwrap());
    assert_eq!(
        local.flag_payload("beta", "vip").await.unwrap(),
        Some(json!({"limit": 10}))
    );
    assert_eq!(local.flags("vip").await.unwrap().variant("theme"), Some("dark"));
    assert!(!local.is_enabled("beta", FLAGS_USER).await.unwrap());
}
