//! The behaviour suite against `RecordingMailer` (directly and through `Arc<dyn Mailer>`),
//! plus what only the recorder shows: what was recorded, and that nothing was recorded
//! for rejected input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::Arc;
use std::time::Duration;

use platform_core::{ErrorKind, ManualClock, Product};
use platform_email::conformance::Fixture;
use platform_email::templates::AgentComplete;
use platform_email::{Batch, DynMailer, Email, Mailer, MailerExt, RecordingMailer, Senders};

async fn recorder() -> Fixture {
    Fixture::new(Arc::new(RecordingMailer::new()))
}

mod recording {
    use super::*;
    platform_email::mailer_conformance!(recorder);
}

async fn boxed_recorder() -> Fixture {
    let inner: DynMailer = Arc::new(RecordingMailer::new());
    // An Arc<dyn Mailer> wrapped again: the forwarding impl.
    Fixture::new(Arc::new(inner))
}

mod through_arc_dyn {
    use super::*;
    platform_email::mailer_conformance!(boxed_recorder);
}

fn email(n: usize) -> Email {
    Email::new(
        "Arbor <noreply@arbor.example.com>",
        [format!("u{n}@example.com")],
        "Hi",
    )
    .with_text("hello")
}

#[tokio::test]
async fn records_every_field_with_the_clock_time() {
    let clock = ManualClock::at_unix(1_800_000_000);
    let mailer = RecordingMailer::with_clock(clock.shared());
    let sender = Senders::new().for_product(&Product::ARBOR);
    let template = AgentComplete::new("Ada", "Researcher", "done", "https://arbor.example.com/r/1");
    let id = mailer
        .send_template(&sender, "ada@example.com", Some("user_42"), &template)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5));
    let sent = mailer.last().unwrap();
    assert_eq!(sent.id, id);
    assert_eq!(id.as_str(), "mem-00000001");
    assert_eq!(sent.sent_at.timestamp(), 1_800_000_000);
    assert_eq!(sent.email.subject, "Your agent has finished processing");
    assert_eq!(sent.email.to, ["ada@example.com"]);
    assert_eq!(sent.email.from, "Arbor <noreply@arbor.example.com>");
    assert_eq!(sent.email.reply_to, ["Arbor Support <support@arbor.example.com>"]);
    assert_eq!(
        sent.email.headers.get("X-Entity-Ref-ID").map(String::as_str),
        Some("user_42")
    );
    assert_eq!(sent.email.tags[0].value, "agent_complete");
    assert_eq!(mailer.sent_to("ada@example.com").len(), 1);
    assert_eq!(
        mailer.sent_to("ADA@example.com").len(),
        1,
        "addresses ignore case"
    );
    assert!(
        mailer.sent_to("da@example.com").is_empty(),
        "whole addresses only"
    );
}

#[tokio::test]
async fn rejected_input_records_nothing() {
    let mailer = RecordingMailer::new();
    let mut emails: Vec<Email> = (0..250).map(email).collect();
    emails[249].to = vec!["broken".into()];
    let err = mailer.send_batch(&Batch::new(emails)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().starts_with("emails[249].to[0]"), "{err}");
    assert!(
        mailer.is_empty(),
        "no chunk went out before the bad message was found"
    );
}

#[tokio::test]
async fn idempotent_sends_record_once() {
    let mailer = RecordingMailer::new();
    let batch = Batch::new((0..250).map(email)).with_idempotency_key("nightly-1");
    let a = mailer.send_batch(&batch).await.unwrap().into_result().unwrap();
    let b = mailer.send_batch(&batch).await.unwrap().into_result().unwrap();
    assert_eq!(a, b);
    assert_eq!(mailer.len(), 250);
    let one = email(1).with_idempotency_key("single-1");
    let x = mailer.send(&one).await.unwrap();
    let y = mailer.send(&one).await.unwrap();
    assert_eq!(x, y);
    assert_eq!(mailer.len(), 251);
}

/// A key is remembered for 24 hours, as Resend keeps it: reused within them for
/// another message it is a `Conflict`, after them it is a new key.
#[tokio::test(start_paused = true)]
async fn an_idempotency_key_is_remembered_for_24_hours() {
    let mailer = RecordingMailer::new();
    let first = email(1).with_idempotency_key("daily-digest");
    let other = email(2).with_idempotency_key("daily-digest");
    let id = mailer.send(&first).await.unwrap();
    tokio::time::advance(Duration::from_secs(24 * 3600 - 1)).await;
    assert_eq!(mailer.send(&first).await.unwrap(), id, "the same message: its id");
    let err = mailer.send(&other).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ne!(mailer.send(&other).await.unwrap(), id, "forgotten after 24 hours");
    assert_eq!(mailer.len(), 2);
}

#[tokio::test]
async fn concurrent_sends_with_one_key_deliver_once() {
    let mailer = RecordingMailer::new();
    let one = email(1).with_idempotency_key("race");
    let (a, b) = tokio::join!(mailer.send(&one), mailer.send(&one));
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(mailer.len(), 1);
}

#[tokio::test]
async fn a_failed_chunk_fails_only_its_messages() {
    let mailer = RecordingMailer::new();
    mailer.fail_next(ErrorKind::Unavailable, "injected outage");
    let report = mailer.send_batch(&Batch::new((0..150).map(email))).await.unwrap();
    assert_eq!(report.len(), 150);
    assert_eq!(report.failed_count(), 100, "the first chunk failed");
    assert_eq!(report.sent_count(), 50);
    let failures: Vec<usize> = report.failures().map(|(i, _)| i).collect();
    assert_eq!(failures, (0..100).collect::<Vec<_>>());
    assert!(report.failures().all(|(_, e)| e.kind() == ErrorKind::Unavailable));
    assert!(!report.is_complete());
    let err = report.into_result().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.message().contains("100 of 150 messages failed"), "{err}");
    assert_eq!(mailer.len(), 50);
}

#[test]
fn debug_is_short() {
    let shown = format!("{:?}", RecordingMailer::new());
    assert!(shown.starts_with("RecordingMailer"), "{shown}");
}
