//! The behaviour suite against [`S3ObjectStore`] talking to a real S3 server on loopback:
//! s3s-fs 0.14.1 in-process (checks SigV4 for real: presigned expiry and tampering are
//! refused by the server), and moto (`scripts/services.sh`) for bucket lifecycle, which
//! s3s-fs lacks. Presigned URLs are fetched with a plain HTTP client (reqwest).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::{ErrorKind, ManualClock, SecretString};
use platform_storage::conformance::{self, Harness, PresignedClient};
use platform_storage::{
    ObjectStore, PresignMethod, PresignOptions, PutOptions, S3ObjectStore, S3ObjectStoreBuilder,
};
use tempfile::TempDir;

#[derive(Debug)]
struct Http {
    client: reqwest::Client,
    _dir: Option<TempDir>,
}

#[async_trait]
impl PresignedClient for Http {
    async fn send(
        &self,
        method: PresignMethod,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> (u16, Bytes) {
        let m = match method {
            PresignMethod::Get => reqwest::Method::GET,
            _ => reqwest::Method::PUT,
        };
        let mut req = self.client.request(m, url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if method == PresignMethod::Put {
            req = req.body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap())
    }
}

#[path = "support/server.rs"]
mod server;

/// s3s-fs on a fresh directory, kept alive by the returned guard.
async fn start_s3s() -> (String, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (server::start_s3s(dir.path()).await, dir)
}

fn store(endpoint: &str, clock: &ManualClock, ak: &str, sk: &str) -> S3ObjectStore {
    S3ObjectStoreBuilder::new()
        .with_endpoint(endpoint)
        .with_credentials(ak, SecretString::from(sk.to_owned()))
        .with_clock(clock.shared())
        .build()
        .unwrap()
}

async fn harness() -> Harness {
    let (endpoint, dir) = start_s3s().await;
    let clock = ManualClock::new(chrono::Utc::now());
    let http = Http {
        client: reqwest::Client::new(),
        _dir: Some(dir),
    };
    Harness::new(
        Arc::new(store(&endpoint, &clock, "AK", "SK")),
        clock,
        Arc::new(http),
    )
    .await
    .without_lifecycle()
    .without_bucket_check_on_put()
}

platform_storage::object_store_conformance!(harness());

// --- moto: lifecycle ---------------------------------------------------------

fn moto_url() -> String {
    let url = std::env::var("PLATFORM_TEST_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:9000".to_owned());
    let host = url
        .trim_start_matches("http://")
        .split([':', '/'])
        .next()
        .unwrap_or_default();
    assert!(
        ["127.0.0.1", "localhost", "[::1]"].contains(&host),
        "PLATFORM_TEST_MOTO_URL must point at loopback, got {url}"
    );
    url
}

async fn moto_harness() -> Harness {
    let url = moto_url();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    if let Err(e) = client.get(&url).send().await {
        panic!("moto is not reachable at {url} ({e}): run scripts/services.sh (it starts scripts/moto.sh)");
    }
    let clock = ManualClock::new(chrono::Utc::now());
    let http = Http { client, _dir: None };
    Harness::new(
        Arc::new(store(&url, &clock, "testing", "testing")),
        clock,
        Arc::new(http),
    )
    .await
}

#[tokio::test]
async fn moto_lifecycle_round_trips() {
    conformance::lifecycle_round_trips(&moto_harness().await).await;
}

#[tokio::test]
async fn moto_apply_lifecycle_reads_back() {
    conformance::apply_lifecycle_reads_back(&moto_harness().await).await;
}

// --- adapter specifics ----------------------------------------------------------

#[tokio::test]
async fn wrong_secret_is_unauthenticated() {
    let (endpoint, _dir) = start_s3s().await;
    let clock = ManualClock::new(chrono::Utc::now());
    let good = store(&endpoint, &clock, "AK", "SK");
    good.create_bucket("auth-bucket").await.unwrap();
    let bad = store(&endpoint, &clock, "AK", "wrong");
    let err = bad
        .put("auth-bucket", "k", Bytes::from_static(b"x"), PutOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert_eq!(err.provider(), Some("s3"));
    assert_eq!(err.status(), Some(403));
    assert!(
        std::error::Error::source(&err).is_some(),
        "the SDK error is kept as source"
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_retryable() {
    // Bind then drop a listener: the port is closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let clock = ManualClock::new(chrono::Utc::now());
    let s = S3ObjectStoreBuilder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_credentials("AK", SecretString::from("SK"))
        .with_retry_policy(platform_core::RetryPolicy::never())
        .with_clock(clock.shared())
        .build()
        .unwrap();
    let err = s.head("some-bucket", "k").await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

/// A store on `endpoint` with a 300 ms response timeout and no retries.
fn short_timeout_store(endpoint: &str) -> S3ObjectStore {
    S3ObjectStoreBuilder::new()
        .with_endpoint(endpoint)
        .with_credentials("AK", SecretString::from("SK"))
        .with_retry_policy(platform_core::RetryPolicy::never())
        .with_timeouts(Duration::from_secs(5), Duration::from_millis(300))
        .build()
        .unwrap()
}

/// A server that accepts the connection and never answers: the call fails with a
/// retryable `Timeout` after the response timeout instead of hanging.
#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_held, held) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut open = Vec::new();
        tokio::select! {
            _ = held => {}
            () = async {
                while let Ok((socket, _)) = listener.accept().await {
                    open.push(socket); // read nothing, answer nothing
                }
            } => {}
        }
    });
    let s = short_timeout_store(&format!("http://127.0.0.1:{port}"));
    let err = tokio::time::timeout(Duration::from_secs(60), s.head("some-bucket", "k"))
        .await
        .expect("the call must time out by itself")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
    let zero = S3ObjectStoreBuilder::new()
        .with_endpoint("http://127.0.0.1:9")
        .with_credentials("AK", SecretString::from("SK"))
        .with_timeouts(Duration::ZERO, Duration::from_secs(1))
        .build();
    assert_eq!(zero.err().map(|e| e.kind()), Some(ErrorKind::Config));
    // "For ever" would overflow an upload's deadline (response timeout + sending
    // time): refused at build, not a panic on the first put.
    let endless = S3ObjectStoreBuilder::new()
        .with_endpoint("http://127.0.0.1:9")
        .with_credentials("AK", SecretString::from("SK"))
        .with_timeouts(Duration::from_secs(1), Duration::MAX)
        .build();
    let err = endless.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("at most 24 hours"), "{err}");
}

/// The response timeout does not cut off an upload: it counts from the start of the
/// request, so on `PutObject` and `UploadPart` it would include sending the body. Here
/// the body arrives more slowly than the response timeout allows (a slow client
/// streaming its upload through), and the upload still succeeds; other calls keep
/// the timeout.
#[tokio::test]
async fn an_upload_slower_than_the_response_timeout_succeeds() {
    let (endpoint, _dir) = start_s3s().await;
    let s = short_timeout_store(&endpoint);
    s.create_bucket("slow-uploads").await.unwrap();
    // Three chunks, 200 ms apart: the last byte is sent ~600 ms after the request began.
    let chunks = futures::stream::unfold(0u8, |n| async move {
        if n == 3 {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await; // a slow producer
        }
        Some((Ok(Bytes::from(vec![n; 1024])), n + 1))
    });
    let meta = s
        .put_stream(
            "slow-uploads",
            "slow.bin",
            Box::pin(chunks),
            PutOptions::new().with_content_length(3 * 1024),
        )
        .await
        .unwrap();
    assert_eq!(meta.size, 3 * 1024);
    let head = s.head("slow-uploads", "slow.bin").await.unwrap();
    assert_eq!(head.size, 3 * 1024);
}

#[tokio::test]
async fn presigned_put_signs_content_type_and_length() {
    let clock = ManualClock::new(chrono::Utc::now());
    let s = store("http://127.0.0.1:1", &clock, "AK", "SK");
    let req = s
        .presign(
            "some-bucket",
            "a b.png",
            PresignOptions::put(Duration::from_secs(60), "image/png", 42),
        )
        .await
        .unwrap();
    assert!(
        req.url.starts_with("http://127.0.0.1:1/some-bucket/a%20b.png?"),
        "path-style: {}",
        req.url
    );
    let signed = req
        .url
        .split('&')
        .find_map(|p| p.strip_prefix("X-Amz-SignedHeaders="))
        .unwrap();
    assert_eq!(signed, "content-length%3Bcontent-type%3Bhost");
    assert!(!req.url.contains("x-amz-checksum"), "{}", req.url);
    assert!(
        req.url.contains("%2Fauto%2Fs3%2F"),
        "region auto in the credential scope: {}",
        req.url
    );
}

#[test]
fn builder_from_env_names_missing_variables_and_hides_secrets() {
    let err = S3ObjectStoreBuilder::from_iter([("R2_ENDPOINT", "http://127.0.0.1:9")])
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("R2_ACCESS_KEY_ID"), "{err}");
    let err = S3ObjectStoreBuilder::from_iter([("R2_ACCESS_KEY_ID", "ak"), ("R2_SECRET_ACCESS_KEY", "sk")])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("R2_ENDPOINT"), "{err}");
    // A key pair is never mixed across families.
    let err = S3ObjectStoreBuilder::from_iter([
        ("R2_ENDPOINT", "http://127.0.0.1:9"),
        ("R2_ACCESS_KEY_ID", "ak"),
        ("AWS_SECRET_ACCESS_KEY", "sk"),
    ])
    .build()
    .unwrap_err();
    assert!(err.to_string().contains("R2_SECRET_ACCESS_KEY"), "{err}");
    let b = S3ObjectStoreBuilder::from_iter([
        ("R2_ACCOUNT_ID", "acct123"),
        ("R2_ACCESS_KEY_ID", "ak"),
        ("R2_SECRET_ACCESS_KEY", "super-secret-value"),
        ("AWS_REGION", "eu-west-1"),
    ]);
    assert!(b.is_configured());
    let shown = format!("{b:?}");
    assert!(shown.contains("acct123.r2.cloudflarestorage.com"), "{shown}");
    assert!(shown.contains("\"auto\""), "R2 keeps region auto: {shown}");
    assert!(!shown.contains("super-secret-value"), "{shown}");
    let built = b.build().unwrap();
    assert!(!format!("{built:?}").contains("super-secret-value"));
    let aws = S3ObjectStoreBuilder::from_iter([
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ACCESS_KEY_ID", "ak"),
        ("AWS_SECRET_ACCESS_KEY", "sk"),
        ("AWS_REGION", "eu-west-1"),
    ]);
    assert!(format!("{aws:?}").contains("eu-west-1"));
    assert!(!S3ObjectStoreBuilder::from_iter(Vec::<(String, String)>::new()).is_configured());
    let small = S3ObjectStoreBuilder::from_iter([
        ("AWS_ENDPOINT_URL", "http://x"),
        ("AWS_ACCESS_KEY_ID", "a"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
    ])
    .with_part_size(1024)
    .build()
    .unwrap_err();
    assert_eq!(small.kind(), ErrorKind::Config);
}
