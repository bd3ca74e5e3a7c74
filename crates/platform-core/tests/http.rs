//! The shared HTTP helper against wiremock: success, status mapping, Retry-After,
//! request ids, malformed bodies, timeouts and refused connections.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::time::Duration;

use platform_core::http::{Call, HttpClient, HttpClientBuilder, USER_AGENT};
use platform_core::{ErrorKind, ErrorResponse};
use serde::Deserialize;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CALL: Call = Call::new("acme", "get_thing");

#[derive(Debug, Deserialize, PartialEq)]
struct Thing {
    id: String,
}

async fn get(server: &MockServer, client: &HttpClient) -> platform_core::Result<Thing> {
    let req = client.reqwest().get(format!("{}/thing", server.uri()));
    client
        .send_json(CALL, req, |r: ErrorResponse| r.default_error())
        .await
}

#[tokio::test]
async fn decodes_json_and_sends_the_platform_user_agent() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/thing"))
        .and(header("user-agent", USER_AGENT))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "t_1"})))
        .expect(1)
        .mount(&server)
        .await;
    let thing = get(&server, &HttpClient::new().unwrap()).await.unwrap();
    assert_eq!(thing, Thing { id: "t_1".into() });
}

#[tokio::test]
async fn maps_error_statuses_with_message_retry_after_and_request_id() {
    let table: [(u16, Option<&str>, serde_json::Value, ErrorKind); 9] = [
        (
            400,
            None,
            serde_json::json!({"error": {"message": "bad field"}}),
            ErrorKind::InvalidInput,
        ),
        (
            401,
            None,
            serde_json::json!({"message": "bad key"}),
            ErrorKind::Unauthenticated,
        ),
        (
            403,
            None,
            serde_json::json!({"detail": "forbidden"}),
            ErrorKind::PermissionDenied,
        ),
        (
            404,
            None,
            serde_json::json!({"error": "no such thing"}),
            ErrorKind::NotFound,
        ),
        (
            409,
            None,
            serde_json::json!({"message": "exists"}),
            ErrorKind::Conflict,
        ),
        (
            422,
            None,
            serde_json::json!({"message": "invalid `to`"}),
            ErrorKind::InvalidInput,
        ),
        (
            429,
            Some("2"),
            serde_json::json!({"message": "slow down"}),
            ErrorKind::RateLimited,
        ),
        (
            500,
            None,
            serde_json::json!({"message": "boom"}),
            ErrorKind::Unavailable,
        ),
        (503, Some("1"), serde_json::json!({}), ErrorKind::Unavailable),
    ];
    let client = HttpClient::new().unwrap();
    for (status, retry_after, body, kind) in table {
        let server = MockServer::start().await;
        let mut resp = ResponseTemplate::new(status)
            .set_body_json(body.clone())
            .insert_header("x-request-id", "req_abc");
        if let Some(ra) = retry_after {
            resp = resp.insert_header("retry-after", ra);
        }
        Mock::given(method("GET"))
            .respond_with(resp)
            .expect(1)
            .mount(&server)
            .await;
        let err = get(&server, &client).await.unwrap_err();
        assert_eq!(err.kind(), kind, "status {status}");
        assert_eq!(err.status(), Some(status));
        assert_eq!(err.provider(), Some("acme"));
        assert_eq!(err.operation(), Some("get_thing"));
        assert_eq!(err.request_id(), Some("req_abc"));
        assert_eq!(
            err.is_retryable(),
            status == 429 || status >= 500,
            "status {status}"
        );
        assert_eq!(
            err.retry_after(),
            retry_after.map(|s| Duration::from_secs(s.parse().unwrap()))
        );
        let expected_message = ["/error/message", "/message", "/detail", "/error"]
            .iter()
            .find_map(|p| body.pointer(p).and_then(|v| v.as_str()))
            .unwrap_or("no message in its 2-byte JSON body");
        assert_eq!(err.message(), expected_message, "status {status}");
    }
}

#[tokio::test]
async fn a_success_with_a_malformed_body_is_a_provider_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>not json</html>"))
        .mount(&server)
        .await;
    let err = get(&server, &HttpClient::new().unwrap()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Provider);
    assert!(!err.is_retryable());
    assert!(
        std::error::Error::source(&err).is_some(),
        "the serde error is kept as source"
    );
}

#[tokio::test]
async fn an_error_status_with_a_non_json_body_keeps_the_text() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(502).set_body_string("upstream exploded"))
        .mount(&server)
        .await;
    let err = get(&server, &HttpClient::new().unwrap()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.message(), "upstream exploded");
}

#[tokio::test]
async fn a_slow_provider_is_a_retryable_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"id": "late"}))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let client = HttpClientBuilder::new()
        .with_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = get(&server, &client).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_refused_connection_is_retryable_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = HttpClient::new().unwrap();
    let req = client.reqwest().get(format!("http://{addr}/thing"));
    let err = client
        .send_json::<Thing>(CALL, req, |r| r.default_error())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
    assert_eq!(err.provider(), Some("acme"));
}

/// An error response's `Debug` form keeps header names and harmless values, but not
/// the values of credential-bearing headers nor the body.
#[test]
fn an_error_responses_debug_form_hides_credentials_and_the_body() {
    let mut headers = http::HeaderMap::new();
    headers.insert("set-cookie", http::HeaderValue::from_static("session=s3cr3t"));
    headers.insert("x-request-id", http::HeaderValue::from_static("req_42"));
    let resp = ErrorResponse {
        call: Call::new("clerk", "get_user"),
        status: 401,
        headers,
        body: b"{\"token\":\"t0k3n\"}".to_vec(),
    };
    let shown = format!("{resp:?}");
    assert!(!shown.contains("s3cr3t") && !shown.contains("t0k3n"), "{shown}");
    assert!(
        shown.contains("set-cookie") && shown.contains("req_42"),
        "{shown}"
    );
    assert!(shown.contains("body_len: 17"), "{shown}");
    // Nor its error: a JSON body without a message field gives only its length.
    let err = resp.default_error();
    let (display, debug) = (err.to_string(), format!("{err:?}"));
    assert!(!display.contains("t0k3n") && !debug.contains("t0k3n"), "{debug}");
    assert!(display.contains("17-byte JSON body"), "{display}");
    // A body that is a JSON string is the message.
    let quoted = ErrorResponse {
        body: b"\"Forbidden\"".to_vec(),
        ..resp
    };
    assert_eq!(quoted.default_error().message(), "Forbidden");
}
