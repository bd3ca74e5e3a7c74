//! The behaviour suite of [`Mailer`]: one async function per `# Behavior` bullet,
//! written once against `&dyn Mailer` and run against every implementation with
//! [`mailer_conformance!`](crate::mailer_conformance).
//!
//! ```text
//! async fn make() -> platform_email::conformance::Fixture {
//!     platform_email::conformance::Fixture::new(std::sync::Arc::new(platform_email::RecordingMailer::new()))
//! }
//! platform_email::mailer_conformance!(make);
//! ```
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test suite fails loudly"
)]

use std::any::Any;
use std::collections::HashSet;

use platform_core::{ErrorKind, Product, Result};

use crate::templates::Welcome;
use crate::{Batch, DynMailer, Email, Mailer, MessageId, Senders};

/// A mailer under test plus whatever must live as long as it (a mock server, a
/// temporary directory).
pub struct Fixture {
    /// The mailer under test.
    pub mailer: DynMailer,
    _guard: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("mailer", &self.mailer)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// A fixture for `mailer` with nothing else to keep alive.
    pub fn new(mailer: DynMailer) -> Self {
        Self {
            mailer,
            _guard: Box::new(()),
        }
    }

    /// Keeps `guard` alive as long as the fixture.
    #[must_use]
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self._guard = Box::new(guard);
        self
    }
}

const FROM: &str = "Arbor <noreply@arbor.example.com>";

fn email(n: usize) -> Email {
    Email::new(FROM, [format!("user{n}@example.com")], format!("Message {n}"))
        .with_text(format!("Hello number {n}"))
        .with_html(format!("<p>Hello number {n}</p>"))
        .with_entity_ref(format!("user_{n}"))
        .with_tag("category", "conformance")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

fn expect_invalid<T: std::fmt::Debug>(result: Result<T>, field: &str) {
    let err = result.expect_err("expected InvalidInput");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(
        err.message().starts_with(&format!("{field}:")),
        "the error names {field}: {err}"
    );
}

/// `send` returns a non-empty id.
pub async fn send_returns_an_id(mailer: &dyn Mailer) {
    let id = mailer.send(&email(1)).await.unwrap();
    assert!(!id.as_str().is_empty());
}

/// Two different messages get different ids.
pub async fn send_assigns_distinct_ids(mailer: &dyn Mailer) {
    let a = mailer.send(&email(1)).await.unwrap();
    let b = mailer.send(&email(2)).await.unwrap();
    assert_ne!(a, b);
}

/// A bad recipient is `InvalidInput` naming `to[i]`.
pub async fn send_rejects_an_invalid_recipient_naming_it(mailer: &dyn Mailer) {
    let mut e = email(1);
    e.to.push("not-an-address".into());
    expect_invalid(mailer.send(&e).await, "to[1]");
}

/// A bad sender is `InvalidInput` naming `from`.
pub async fn send_rejects_an_invalid_sender(mailer: &dyn Mailer) {
    let mut e = email(1);
    e.from = "Arbor <noreply@>".into();
    expect_invalid(mailer.send(&e).await, "from");
}

/// A bad reply-to / cc / bcc is `InvalidInput` naming the field.
pub async fn send_rejects_invalid_reply_to_cc_and_bcc(mailer: &dyn Mailer) {
    expect_invalid(
        mailer.send(&email(1).with_reply_to("support at arbor")).await,
        "reply_to[0]",
    );
    expect_invalid(
        mailer.send(&email(1).with_cc("a@b.com").with_cc("x@")).await,
        "cc[1]",
    );
    expect_invalid(mailer.send(&email(1).with_bcc("@example.com")).await, "bcc[0]");
}

/// No recipient is `InvalidInput` naming `to`.
pub async fn send_rejects_no_recipient(mailer: &dyn Mailer) {
    let mut e = email(1);
    e.to.clear();
    expect_invalid(mailer.send(&e).await, "to");
}

/// More than 50 recipients is `InvalidInput` naming `to`.
pub async fn send_rejects_more_than_50_recipients(mailer: &dyn Mailer) {
    let mut e = email(1);
    e.to = (0..51).map(|i| format!("u{i}@example.com")).collect();
    expect_invalid(mailer.send(&e).await, "to");
}

/// A message without a body is `InvalidInput` naming `body`.
pub async fn send_rejects_a_message_without_a_body(mailer: &dyn Mailer) {
    let e = Email::new(FROM, ["a@example.com"], "Hi");
    expect_invalid(mailer.send(&e).await, "body");
}

/// An empty or multi-line subject is `InvalidInput` naming `subject`.
pub async fn send_rejects_a_bad_subject(mailer: &dyn Mailer) {
    let mut e = email(1);
    e.subject = "Hi\r\nBcc: victim@example.com".into();
    expect_invalid(mailer.send(&e).await, "subject");
    e.subject = "  ".into();
    expect_invalid(mailer.send(&e).await, "subject");
}

/// A header with a line break or a reserved name is `InvalidInput` naming it.
pub async fn send_rejects_bad_headers(mailer: &dyn Mailer) {
    let e = email(1).with_header("X-Entity-Ref-ID", "u1\r\nBcc: victim@example.com");
    expect_invalid(mailer.send(&e).await, "headers.X-Entity-Ref-ID");
    let e = email(1).with_header("Bcc", "victim@example.com");
    expect_invalid(mailer.send(&e).await, "headers.Bcc");
}

/// A tag outside `[A-Za-z0-9_-]` is `InvalidInput` naming it.
pub async fn send_rejects_an_invalid_tag(mailer: &dyn Mailer) {
    let e = email(1).with_tag("bad tag", "x");
    expect_invalid(mailer.send(&e).await, "tags[1].name");
    let e = email(1).with_tag("ok", "ü");
    expect_invalid(mailer.send(&e).await, "tags[1].value");
}

/// The same idempotency key and message returns the first id.
pub async fn send_with_the_same_key_delivers_once(mailer: &dyn Mailer) {
    let e = email(7).with_idempotency_key(unique("conformance-send"));
    let first = mailer.send(&e).await.unwrap();
    let again = mailer.send(&e).await.unwrap();
    assert_eq!(first, again);
}

/// The same idempotency key with a different message is `Conflict`.
pub async fn send_reusing_a_key_for_another_message_conflicts(mailer: &dyn Mailer) {
    let key = unique("conformance-conflict");
    mailer.send(&email(1).with_idempotency_key(&key)).await.unwrap();
    let err = mailer
        .send(&email(2).with_idempotency_key(&key))
        .await
        .expect_err("reusing a key for another message must fail");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
}

/// A rendered template sends like any message.
pub async fn send_delivers_a_rendered_template(mailer: &dyn Mailer) {
    let sender = Senders::new().for_product(&Product::ARBOR);
    let template = Welcome::new("Ada <script>", "Arbor", "https://arbor.example.com/dashboard");
    let e = Email::from_template(&sender, "ada@example.com", &template)
        .unwrap()
        .with_entity_ref("user_ada");
    let id = mailer.send(&e).await.unwrap();
    assert!(!id.as_str().is_empty());
}

/// A batch reports one outcome per message, in order, with distinct ids.
pub async fn batch_reports_each_message_in_order(mailer: &dyn Mailer) {
    let report = mailer.send_batch(&Batch::new((0..3).map(email))).await.unwrap();
    assert_eq!(report.len(), 3);
    assert!(report.is_complete());
    let ids: HashSet<&MessageId> = report.sent().collect();
    assert_eq!(ids.len(), 3);
}

/// A batch of more than one chunk (150 messages) is sent completely.
pub async fn batch_larger_than_a_chunk_is_sent_completely(mailer: &dyn Mailer) {
    let report = mailer.send_batch(&Batch::new((0..150).map(email))).await.unwrap();
    assert_eq!(report.len(), 150);
    assert_eq!(report.sent_count(), 150);
    assert_eq!(report.failed_count(), 0);
    let ids: HashSet<&MessageId> = report.sent().collect();
    assert_eq!(ids.len(), 150, "ids are distinct across chunks");
    assert_eq!(report.into_result().unwrap().len(), 150);
}

/// One bad message rejects the whole batch up front, naming it.
pub async fn batch_rejects_an_invalid_message_naming_it(mailer: &dyn Mailer) {
    let mut emails: Vec<Email> = (0..5).map(email).collect();
    emails[3].to = vec!["ok@example.com".into(), "broken@".into()];
    expect_invalid(mailer.send_batch(&Batch::new(emails)).await, "emails[3].to[1]");
}

/// A message carrying its own idempotency key is rejected inside a batch.
pub async fn batch_rejects_per_message_keys(mailer: &dyn Mailer) {
    let emails = vec![email(0), email(1).with_idempotency_key("k")];
    expect_invalid(
        mailer.send_batch(&Batch::new(emails)).await,
        "emails[1].idempotency_key",
    );
}

/// An empty batch reports nothing.
pub async fn empty_batch_reports_nothing(mailer: &dyn Mailer) {
    let report = mailer.send_batch(&Batch::default()).await.unwrap();
    assert!(report.is_empty());
    assert!(report.is_complete());
}

/// The same batch with the same key returns the same ids.
pub async fn batch_with_the_same_key_delivers_once(mailer: &dyn Mailer) {
    let batch = Batch::new((0..120).map(email)).with_idempotency_key(unique("conformance-batch"));
    let first = mailer.send_batch(&batch).await.unwrap().into_result().unwrap();
    let again = mailer.send_batch(&batch).await.unwrap().into_result().unwrap();
    assert_eq!(first, again);
}

/// Generates one `#[tokio::test]` per behaviour case; `$factory` is an async fn
/// returning a [`Fixture`].
#[macro_export]
macro_rules! mailer_conformance {
    ($factory:path) => {
        $crate::mailer_conformance!(@cases $factory;
            send_returns_an_id,
            send_assigns_distinct_ids,
            send_rejects_an_invalid_recipient_naming_it,
            send_rejects_an_invalid_sender,
            send_rejects_invalid_reply_to_cc_and_bcc,
            send_rejects_no_recipient,
            send_rejects_more_than_50_recipients,
            send_rejects_a_message_without_a_body,
            send_rejects_a_bad_subject,
            send_rejects_bad_headers,
            send_rejects_an_invalid_tag,
            send_with_the_same_key_delivers_once,
            send_reusing_a_key_for_another_message_conflicts,
            send_delivers_a_rendered_template,
            batch_reports_each_message_in_order,
            batch_larger_than_a_chunk_is_sent_completely,
            batch_rejects_an_invalid_message_naming_it,
            batch_rejects_per_message_keys,
            empty_batch_reports_nothing,
            batch_with_the_same_key_delivers_once
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let fixture: $crate::conformance::Fixture = $factory().await;
                $crate::conformance::$case(&*fixture.mailer).await;
            }
        )*
    };
}
