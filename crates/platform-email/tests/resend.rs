//! The Resend adapter against wiremock answering as Resend documents `POST /emails`
//! and `POST /emails/batch` (bodies under `tests/fixtures/`): the behaviour suite on a
//! stateful fake, wire-shape tests with `.expect(n)`, and the error-mapping table.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform_core::{Call, ErrorKind, ErrorResponse, RetryPolicy};
use platform_email::conformance::Fixture;
use platform_email::resend::map_response_error;
use platform_email::{Batch, Email, Mailer, ResendMailer, ResendMailerBuilder};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use wiremock::matchers::{any, body_json, header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const KEY: &str = "re_test_0123456789";

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy::default()
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(20))
        .with_jitter(false)
}

fn mailer_for(server: &MockServer) -> ResendMailer {
    ResendMailerBuilder::new()
        .with_api_key(KEY)
        .with_base_url(server.uri())
        .with_requests_per_second(0)
        .with_retry_policy(fast_retries())
        .build()
        .unwrap()
}

/// A stateful fake of Resend's two send endpoints: checks the API key, the batch
/// limit and idempotency keys (same key + same body → same answer; same key + other
/// body → 409 `invalid_idempotent_request`), and answers with fresh ids.
#[derive(Clone, Default)]
struct FakeResend {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

/// The body a key was first used with, and the answer given.
type Seen = (Vec<u8>, Value);

impl Respond for FakeResend {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let auth = request.headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {KEY}")) {
            return ResponseTemplate::new(401).set_body_json(fixture("missing_api_key.json"));
        }
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return ResponseTemplate::new(422).set_body_json(fixture("validation_error.json"));
        };
        let answer = match (request.url.path(), &body) {
            ("/emails", Value::Object(m)) if m.contains_key("from") && m.contains_key("to") => {
                json!({ "id": uuid::Uuid::new_v4().to_string() })
            }
            ("/emails/batch", Value::Array(items)) if !items.is_empty() && items.len() <= 100 => {
                let data: Vec<Value> = items
                    .iter()
                    .map(|_| json!({ "id": uuid::Uuid::new_v4().to_string() }))
                    .collect();
                json!({ "data": data })
            }
            _ => return ResponseTemplate::new(422).set_body_json(fixture("validation_error.json")),
        };
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(key) = key {
            let mut seen = self.seen.lock().unwrap();
            if let Some((old_body, old_answer)) = seen.get(&key) {
                if *old_body == request.body {
                    return ResponseTemplate::new(200).set_body_json(old_answer.clone());
                }
                return ResponseTemplate::new(409).set_body_json(fixture("invalid_idempotent_request.json"));
            }
            seen.insert(key, (request.body.clone(), answer.clone()));
        }
        ResponseTemplate::new(200).set_body_json(answer)
    }
}

async fn resend_on_wiremock() -> Fixture {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(FakeResend::default())
        .mount(&server)
        .await;
    let mailer = mailer_for(&server);
    Fixture::new(Arc::new(mailer)).with_guard(server)
}

mod resend_adapter {
    use super::*;
    platform_email::mailer_conformance!(resend_on_wiremock);
}

/// Answers a batch with as many ids as it has messages.
struct EchoIds;

impl Respond for EchoIds {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let items: Vec<Value> = serde_json::from_slice(&request.body).unwrap();
        let data: Vec<Value> = (0..items.len())
            .map(|_| json!({ "id": uuid::Uuid::new_v4().to_string() }))
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({ "data": data }))
    }
}

fn email(n: usize) -> Email {
    Email::new(
        "Arbor <noreply@arbor.example.com>",
        [format!("user{n}@example.com")],
        "Hello",
    )
    .with_text(format!("text {n}"))
    .with_html(format!("<p>html {n}</p>"))
    .with_entity_ref(format!("user_{n}"))
}

fn key_of(request: &Request) -> String {
    request.headers["idempotency-key"].to_str().unwrap().to_owned()
}

/// A `POST /emails` whose JSON body is `expected`.
fn post_emails_with_body(expected: &serde_json::Value) -> wiremock::MockBuilder {
    Mock::given(method("POST"))
        .and(path("/emails"))
        .and(body_json(expected))
}

#[tokio::test]
async fn send_has_resends_wire_shape() {
    let server = MockServer::start().await;
    let expected = json!({
        "from": "Arbor <noreply@arbor.example.com>",
        "to": ["ada@example.com"],
        "cc": ["cc@example.com"],
        "reply_to": ["Arbor Support <support@arbor.example.com>"],
        "subject": "Welcome to our platform!",
        "html": "<p>Hi &lt;Ada&gt;</p>",
        "text": "Hi <Ada>",
        "headers": { "X-Entity-Ref-ID": "user_42" },
        "tags": [{ "name": "template", "value": "welcome" }]
    });
    post_emails_with_body(&expected)
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("idempotency-key", "welcome/user_42"))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("email_sent.json")))
        .expect(1)
        .mount(&server)
        .await;
    let email = Email::new(
        "Arbor <noreply@arbor.example.com>",
        ["ada@example.com"],
        "Welcome to our platform!",
    )
    .with_cc("cc@example.com")
    .with_reply_to("Arbor Support <support@arbor.example.com>")
    .with_html("<p>Hi &lt;Ada&gt;</p>")
    .with_text("Hi <Ada>")
    .with_entity_ref("user_42")
    .with_tag("template", "welcome")
    .with_idempotency_key("welcome/user_42");
    let id = mailer_for(&server).send(&email).await.unwrap();
    assert_eq!(id.as_str(), "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794");
}

/// Display names holding RFC 5322 specials (a comma would split the address in two)
/// reach Resend quoted; plain ones and bare addresses as given.
#[tokio::test]
async fn display_names_with_specials_are_quoted_on_the_wire() {
    let server = MockServer::start().await;
    let expected = json!({
        "from": "\"Arbor Inc.\" <noreply@arbor.example.com>",
        "to": ["\"Doe, John\" <john@example.com>", "Ada <ada@example.com>", "bo@example.com"],
        "reply_to": ["\"Support (EU)\" <support@arbor.example.com>"],
        "subject": "Hi",
        "text": "hi"
    });
    post_emails_with_body(&expected)
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("email_sent.json")))
        .expect(1)
        .mount(&server)
        .await;
    let email = Email::new(
        "Arbor Inc. <noreply@arbor.example.com>",
        [
            "Doe, John <john@example.com>",
            "Ada <ada@example.com>",
            "bo@example.com",
        ],
        "Hi",
    )
    .with_reply_to("Support (EU) <support@arbor.example.com>")
    .with_text("hi");
    mailer_for(&server).send(&email).await.unwrap();
}

#[tokio::test]
async fn send_without_a_key_still_sends_one() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("email_sent.json")))
        .expect(2)
        .mount(&server)
        .await;
    let mailer = mailer_for(&server);
    mailer.send(&email(1)).await.unwrap();
    mailer.send(&email(1)).await.unwrap();
    let keys: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(key_of)
        .collect();
    assert!(keys.iter().all(|k| k.starts_with("platform-")), "{keys:?}");
    assert_ne!(keys[0], keys[1], "a random key per call");
}

#[tokio::test]
async fn batch_of_250_goes_out_in_3_requests_with_distinct_keys() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/emails/batch"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("x-batch-validation", "strict"))
        .respond_with(EchoIds)
        .expect(3)
        .mount(&server)
        .await;
    let batch = Batch::new((0..250).map(email)).with_idempotency_key("digest-2026-11-27");
    let report = mailer_for(&server).send_batch(&batch).await.unwrap();
    assert_eq!(report.sent_count(), 250);
    let ids: HashSet<_> = report.sent().cloned().collect();
    assert_eq!(ids.len(), 250);

    let requests = server.received_requests().await.unwrap();
    let sizes: Vec<usize> = requests
        .iter()
        .map(|r| serde_json::from_slice::<Vec<Value>>(&r.body).unwrap().len())
        .collect();
    assert_eq!(sizes, [100, 100, 50]);
    let keys: Vec<String> = requests.iter().map(key_of).collect();
    assert_eq!(
        keys,
        [
            "digest-2026-11-27/0",
            "digest-2026-11-27/1",
            "digest-2026-11-27/2"
        ]
    );
    // Order and shape are kept across chunks.
    let last: Vec<Value> = serde_json::from_slice(&requests[2].body).unwrap();
    assert_eq!(last[49]["to"], json!(["user249@example.com"]));
    assert_eq!(last[49]["subject"], "Hello");
    assert_eq!(last[49]["text"], "text 249");
    assert_eq!(last[49]["html"], "<p>html 249</p>");
    assert_eq!(last[49]["headers"]["X-Entity-Ref-ID"], "user_249");
}

#[tokio::test]
async fn rate_limited_with_retry_after_then_ok_delivers_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(fixture("rate_limit_exceeded.json")),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("email_sent.json")))
        .expect(1)
        .mount(&server)
        .await;
    let started = Instant::now();
    let id = mailer_for(&server)
        .send(&email(1).with_idempotency_key("once-1"))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(id.as_str(), "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794");
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After honoured: waited {waited:?}"
    );
    let keys: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(key_of)
        .collect();
    assert_eq!(keys, ["once-1", "once-1"], "the retry reuses the key");
}

#[tokio::test]
async fn validation_error_surfaces_resends_message_without_retrying() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(422).set_body_json(fixture("validation_error.json")))
        .expect(2)
        .mount(&server)
        .await;
    let mailer = mailer_for(&server);
    let err = mailer.send(&email(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(err.status(), Some(422));
    assert_eq!(err.provider(), Some("resend"));
    let resend_message = fixture("validation_error.json")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(err.message(), resend_message);
    assert!(
        std::error::Error::source(&err).is_some(),
        "Resend's error kept as source"
    );

    let report = mailer.send_batch(&Batch::new((0..3).map(email))).await.unwrap();
    assert_eq!(report.failed_count(), 3);
    for (_, e) in report.failures() {
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(e.message(), resend_message);
    }
}

#[tokio::test]
async fn invalid_address_never_reaches_the_network() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("email_sent.json")))
        .expect(0)
        .mount(&server)
        .await;
    let mailer = mailer_for(&server);
    let mut bad = email(1);
    bad.to.push("nobody@localhost".into());
    let err = mailer.send(&bad).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().starts_with("to[1]:"), "{err}");

    let mut emails: Vec<Email> = (0..250).map(email).collect();
    emails[201].reply_to.push("support@@arbor.example.com".into());
    let err = mailer.send_batch(&Batch::new(emails)).await.unwrap_err();
    assert!(err.message().starts_with("emails[201].reply_to[0]:"), "{err}");
    server.verify().await;
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_json(fixture("internal_server_error.json")))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(EchoIds)
        .expect(1)
        .mount(&server)
        .await;
    let report = mailer_for(&server)
        .send_batch(&Batch::new((0..2).map(email)))
        .await
        .unwrap();
    assert!(report.is_complete());
    let keys: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(key_of)
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1]);
    assert!(keys[0].ends_with("/0"), "{keys:?}");
}

#[tokio::test]
async fn a_rejected_chunk_fails_only_its_messages() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("idempotency-key", "mixed/1"))
        .respond_with(ResponseTemplate::new(422).set_body_json(fixture("validation_error.json")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(EchoIds)
        .expect(2)
        .mount(&server)
        .await;
    let report = mailer_for(&server)
        .send_batch(&Batch::new((0..250).map(email)).with_idempotency_key("mixed"))
        .await
        .unwrap();
    assert_eq!(report.sent_count(), 150);
    let failed: Vec<usize> = report.failures().map(|(i, _)| i).collect();
    assert_eq!(failed, (100..200).collect::<Vec<_>>());
    let err = report.into_result().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.message()
            .starts_with("100 of 250 messages failed; emails[100]"),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_key_is_unauthenticated_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(FakeResend::default())
        .expect(1)
        .mount(&server)
        .await;
    let mailer = ResendMailerBuilder::new()
        .with_api_key("re_wrong")
        .with_base_url(server.uri())
        .with_requests_per_second(0)
        .build()
        .unwrap();
    let err = mailer.send(&email(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
}

#[tokio::test]
async fn the_rate_limiter_spaces_requests() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("email_sent.json")))
        .expect(3)
        .mount(&server)
        .await;
    let mailer = ResendMailerBuilder::new()
        .with_api_key(KEY)
        .with_base_url(server.uri())
        .with_requests_per_second(2)
        .build()
        .unwrap();
    let started = Instant::now();
    for n in 0..3 {
        mailer.send(&email(n)).await.unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "2 per second: the third waits, took {took:?}"
    );
}

fn response(status: u16, headers: &[(&'static str, &str)], body: &[u8]) -> ErrorResponse {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    ErrorResponse {
        call: Call::new("resend", "send_email"),
        status,
        headers: map,
        body: body.to_vec(),
    }
}

fn body(name: &str) -> Vec<u8> {
    serde_json::to_vec(&fixture(name)).unwrap()
}

#[test]
fn error_mapping_table() {
    let generic = |status: u16, name: &str| {
        serde_json::to_vec(&json!({"statusCode": status, "name": name, "message": format!("m{status}")}))
            .unwrap()
    };
    let cases: Vec<(ErrorResponse, ErrorKind, bool)> = vec![
        (
            response(400, &[], &generic(400, "invalid_attachment")),
            ErrorKind::InvalidInput,
            false,
        ),
        (
            response(401, &[], &body("missing_api_key.json")),
            ErrorKind::Unauthenticated,
            false,
        ),
        (
            response(403, &[], &body("invalid_api_key.json")),
            ErrorKind::PermissionDenied,
            false,
        ),
        (
            response(404, &[], &generic(404, "not_found")),
            ErrorKind::NotFound,
            false,
        ),
        (
            response(409, &[], &body("invalid_idempotent_request.json")),
            ErrorKind::Conflict,
            false,
        ),
        (
            response(409, &[], &body("concurrent_idempotent_requests.json")),
            ErrorKind::Unavailable,
            true,
        ),
        (
            response(422, &[], &body("validation_error.json")),
            ErrorKind::InvalidInput,
            false,
        ),
        (
            response(429, &[("retry-after", "7")], &body("rate_limit_exceeded.json")),
            ErrorKind::RateLimited,
            true,
        ),
        (
            response(429, &[], &body("daily_quota_exceeded.json")),
            ErrorKind::PermissionDenied,
            false,
        ),
        (
            response(500, &[], &body("internal_server_error.json")),
            ErrorKind::Unavailable,
            true,
        ),
        (
            response(502, &[], b"<html>bad gateway</html>"),
            ErrorKind::Unavailable,
            true,
        ),
    ];
    for (resp, kind, retryable) in cases {
        let status = resp.status;
        let err = map_response_error(resp);
        assert_eq!(err.kind(), kind, "HTTP {status}: {err}");
        assert_eq!(err.is_retryable(), retryable, "HTTP {status}");
        assert_eq!(err.status(), Some(status));
        assert_eq!(err.provider(), Some("resend"));
        assert_eq!(err.operation(), Some("send_email"));
    }
    let err = map_response_error(response(
        429,
        &[("retry-after", "7"), ("x-request-id", "req_1")],
        &body("rate_limit_exceeded.json"),
    ));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(err.request_id(), Some("req_1"));
    let err = map_response_error(response(
        409,
        &[("retry-after", "2")],
        &body("concurrent_idempotent_requests.json"),
    ));
    assert_eq!(
        err.retry_after(),
        Some(Duration::from_secs(2)),
        "kept when the kind is refined"
    );
    assert!(
        err.message().starts_with("Same idempotency key used while"),
        "{err}"
    );
    let err = map_response_error(response(502, &[], b"<html>bad gateway</html>"));
    assert!(err.message().contains("bad gateway"), "{err}");
    assert!(std::error::Error::source(&err).is_none(), "no JSON error to keep");
    let err = map_response_error(response(422, &[], &body("validation_error.json")));
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("validation_error"), "{source}");
}

#[test]
fn configuration_names_the_variable_and_hides_the_key() {
    let err = ResendMailerBuilder::from_iter([("RESEND_BASE_URL", "http://127.0.0.1:1")])
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("RESEND_API_KEY"), "{err}");
    let err = ResendMailerBuilder::from_iter([("RESEND_API_KEY", KEY), ("RESEND_RATE_LIMIT", "fast")])
        .build()
        .unwrap_err();
    assert!(err.message().contains("RESEND_RATE_LIMIT"), "{err}");
    let err = ResendMailerBuilder::from_iter([("RESEND_API_KEY", KEY), ("RESEND_BASE_URL", "ftp://x")])
        .build()
        .unwrap_err();
    assert!(err.message().contains("RESEND_BASE_URL"), "{err}");
    for bad in ["re_abc\u{2026}", "re abc", ""] {
        let err = ResendMailerBuilder::from_iter([("RESEND_API_KEY", bad)])
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("RESEND_API_KEY"), "{err}");
        assert!(
            bad.is_empty() || !err.to_string().contains(bad),
            "the key is not shown"
        );
    }
    // Set in code, an empty key is refused too (from the environment it reads as unset).
    let err = ResendMailerBuilder::new()
        .with_api_key(String::new())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("RESEND_API_KEY"), "{err}");

    let builder = ResendMailerBuilder::from_iter([
        ("RESEND_API_KEY", KEY),
        ("RESEND_BASE_URL", "http://127.0.0.1:9/"),
        ("RESEND_RATE_LIMIT", "5"),
    ]);
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains(KEY) && shown.contains("requests_per_second: 5"),
        "{shown}"
    );
    let mailer = builder.build().unwrap();
    let shown = format!("{mailer:?}");
    assert!(!shown.contains(KEY), "{shown}");
    assert_eq!(mailer.base_url(), "http://127.0.0.1:9");
}
