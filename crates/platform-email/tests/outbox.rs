//! The behaviour suite against the local outbox, and the `.eml` files it writes
//! parsed back with a standard MIME parser (mail-parser).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::Arc;

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders};
use platform_core::{ErrorKind, ManualClock, Product};
use platform_email::conformance::Fixture;
use platform_email::outbox::render_eml;
use platform_email::templates::{GenerationComplete, NewFollower};
use platform_email::{Batch, Email, Mailer, MailerExt, MessageId, OutboxMailer, Senders};

async fn outbox() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mailer = OutboxMailer::new(dir.path().join("outbox")).unwrap();
    Fixture::new(Arc::new(mailer)).with_guard(dir)
}

mod local_outbox {
    use super::*;
    platform_email::mailer_conformance!(outbox);
}

fn addresses(addr: Option<&Address<'_>>) -> Vec<(Option<String>, String)> {
    addr.map(|a| {
        a.iter()
            .map(|m| {
                (
                    m.name().map(str::to_owned),
                    m.address().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

#[tokio::test]
async fn eml_files_parse_back_to_the_same_message() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_unix(1_795_000_000);
    let mailer = OutboxMailer::with_clock(dir.path(), clock.shared()).unwrap();
    let sender = Senders::new().for_product(&Product::KUMORI);
    let template = GenerationComplete::new(
        "Zoë <b>",
        "a fox in the snow, ukiyo-e — 雪",
        "https://cdn.kumori.example.com/i/1.png",
        "https://kumori.example.com/g/1",
    );
    let email = Email::from_template(&sender, "Zoë Doe <zoe@example.com>", &template)
        .unwrap()
        .with_cc("art@example.com")
        .with_entity_ref("user_7");
    let id = mailer.send(&email).await.unwrap();

    let files = mailer.files().unwrap();
    assert_eq!(files.len(), 1);
    let path = mailer.file_of(&id).unwrap().unwrap();
    assert_eq!(files[0], path);
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("20261118T110640Z-"),
        "file names start with the clock's time: {name}"
    );

    let raw = std::fs::read(&path).unwrap();
    let parsed = MessageParser::default()
        .parse(&raw)
        .expect("a valid RFC 5322 message");
    assert_eq!(parsed.subject(), Some("Your image is ready!"));
    assert_eq!(
        addresses(parsed.from()),
        [(Some("Kumori".to_owned()), "noreply@kumori.example.com".to_owned())]
    );
    assert_eq!(
        addresses(parsed.to()),
        [(Some("Zoë Doe".to_owned()), "zoe@example.com".to_owned())]
    );
    assert_eq!(addresses(parsed.cc()), [(None, "art@example.com".to_owned())]);
    assert_eq!(
        addresses(parsed.reply_to()),
        [(
            Some("Kumori Support".to_owned()),
            "support@kumori.example.com".to_owned()
        )]
    );
    assert_eq!(parsed.date().map(|d| d.to_timestamp()), Some(1_795_000_000));
    assert_eq!(
        parsed.message_id(),
        Some(format!("{id}@outbox.platform.invalid").as_str())
    );
    let entity = parsed
        .header("X-Entity-Ref-ID")
        .and_then(HeaderValue::as_text)
        .map(str::to_owned);
    assert_eq!(entity.as_deref(), Some("user_7"));
    let tags = parsed
        .header("X-Platform-Tags")
        .and_then(HeaderValue::as_text)
        .map(str::to_owned);
    assert_eq!(tags.as_deref(), Some("template=generation_complete"));

    // multipart/alternative with both bodies, byte for byte after decoding.
    let ct = parsed.content_type().unwrap();
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("alternative"));
    // RFC 5322 lines end in CRLF on the wire; compare with the message's own line ends.
    let lf = |t: std::borrow::Cow<'_, str>| t.replace("\r\n", "\n");
    assert_eq!(
        parsed.body_text(0).map(lf),
        email.text.clone(),
        "plain-text body round-trips"
    );
    assert_eq!(
        parsed.body_html(0).map(lf),
        email.html.clone(),
        "HTML body round-trips"
    );
    assert!(email.html.as_deref().unwrap().contains("Zoë &#60;b&#62;"));
}

#[tokio::test]
async fn batch_writes_one_file_per_message_and_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let mailer = OutboxMailer::new(dir.path()).unwrap();
    let sender = Senders::new().for_product(&Product::KUMORI);
    let emails: Vec<Email> = (0..130)
        .map(|i| {
            let t = NewFollower::new(format!("user {i}"), "Bob", "https://kumori.example.com/u/bob");
            Email::from_template(&sender, format!("u{i}@example.com"), &t).unwrap()
        })
        .collect();
    let report = mailer
        .send_batch(&Batch::new(emails).with_idempotency_key("followers-1"))
        .await
        .unwrap();
    let ids = report.into_result().unwrap();
    assert_eq!(ids.len(), 130);
    let all: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(all.len(), 130, "only .eml files, no leftovers: {all:?}");
    for id in &ids {
        let path = mailer.file_of(id).unwrap().expect("one file per id");
        let raw = std::fs::read(path).unwrap();
        let parsed = MessageParser::default().parse(&raw).unwrap();
        assert_eq!(parsed.subject(), Some("You have a new follower"));
    }
    // The same batch again: same ids, no new files.
    let again = mailer
        .send_batch(
            &Batch::new((0..130).map(|i| {
                let t = NewFollower::new(format!("user {i}"), "Bob", "https://kumori.example.com/u/bob");
                Email::from_template(&sender, format!("u{i}@example.com"), &t).unwrap()
            }))
            .with_idempotency_key("followers-1"),
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(again, ids);
    assert_eq!(mailer.files().unwrap().len(), 130);
}

#[tokio::test]
async fn invalid_input_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mailer = OutboxMailer::new(dir.path()).unwrap();
    let sender = Senders::new().for_product(&Product::ARBOR);
    let err = mailer
        .send_template(
            &sender,
            "ada@@example.com",
            None,
            &NewFollower::new("a", "b", "https://a.example.com"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().starts_with("to[0]"), "{err}");
    assert!(mailer.files().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_write_leaves_no_partial_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let mailer = OutboxMailer::new(dir.path().join("outbox")).unwrap();
    // Remove the directory under the mailer: writes fail, nothing is half-written.
    std::fs::remove_dir_all(dir.path().join("outbox")).unwrap();
    let report = mailer
        .send_batch(&Batch::new((0..3).map(|i| {
            Email::new("a@example.com", [format!("u{i}@example.com")], "Hi").with_text("x")
        })))
        .await
        .unwrap();
    assert_eq!(report.failed_count(), 3);
    assert!(report.failures().all(|(_, e)| e.kind() == ErrorKind::Unavailable));
    assert!(!dir.path().join("outbox").exists());
}

#[test]
fn render_eml_validates_first() {
    let bad = Email::new("a@example.com", ["x"], "Hi").with_text("x");
    let err = render_eml(&bad, &MessageId::new("1"), chrono::Utc::now()).unwrap_err();
    assert!(err.message().starts_with("to[0]"), "{err}");
}

/// A send cancelled while its message is being written (the queue's attempt timeout,
/// a shutdown past its deadline) still records its idempotency key with the message
/// it wrote: the retry returns that message's id and writes nothing more, as Resend
/// answers a repeated key.
#[test]
fn a_send_cancelled_mid_write_is_not_sent_twice_on_retry() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let mailer = OutboxMailer::new(&outbox).unwrap();
    let email = Email::new("a@example.com", ["b@example.com"], "Hi")
        .with_text("x")
        .with_idempotency_key("email:job-1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Polled once, then dropped: the write has started on the blocking pool. (Not a
    // zero timeout: the send may finish before such a timer fires on a busy machine.)
    let cut_off = rt.block_on(async {
        let mut send = std::pin::pin!(mailer.send(&email));
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(send.as_mut(), cx).is_pending())
        })
        .await
    });
    assert!(cut_off, "the first send must be cut off mid-write");
    let retried = rt.block_on(mailer.send(&email)).unwrap();
    drop(rt); // waits for every write started on the blocking pool
    let written: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".eml"))
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(
        written[0].contains(retried.as_str()),
        "{written:?} vs {retried:?}"
    );
}
