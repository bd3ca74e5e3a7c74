//! What the S3 adapter puts on the wire, checked against a wiremock server answering
//! as S3 documents: normal requests (put, streamed put, multipart upload, get) carry no
//! `x-amz-checksum-*`, `x-amz-sdk-checksum-algorithm` or `x-amz-trailer` headers and no
//! `aws-chunked` encoding, which R2 rejects. A raw SDK client with the SDK's default
//! checksum settings proves the check can fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::Arc;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use platform_core::SecretString;
use platform_storage::s3::MIN_PART_SIZE;
use platform_storage::{
    ObjectMeta, ObjectStore as _, ObjectStoreExt as _, PutOptions, S3ObjectStore, S3ObjectStoreBuilder,
    body_in_chunks,
};
use tokio::sync::Notify;
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const BODY: &[u8] = b"hello from the wire";

/// A call of verb `method` on the multipart upload `up1` of `wire-bucket/big`.
fn upload_call(verb: &str) -> wiremock::MockBuilder {
    Mock::given(method(verb))
        .and(path("/wire-bucket/big"))
        .and(query_param("uploadId", "up1"))
}

/// An S3 error answer: `status` with error code `code`.
fn s3_error(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_string(format!("<Error><Code>{code}</Code><Message>x</Message></Error>"))
}

/// Mocks PutObject, GetObject, HeadObject and the multipart calls of bucket `wire-bucket`.
async fn s3_mock() -> MockServer {
    let server = MockServer::start().await;
    let etag = || ResponseTemplate::new(200).insert_header("etag", "\"0123456789abcdef\"");
    Mock::given(method("POST"))
        .and(path("/wire-bucket/big"))
        .and(query_param("uploads", ""))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            "<InitiateMultipartUploadResult><Bucket>wire-bucket</Bucket><Key>big</Key>\
             <UploadId>up1</UploadId></InitiateMultipartUploadResult>",
        ))
        .mount(&server)
        .await;
    upload_call("PUT").respond_with(etag()).mount(&server).await;
    upload_call("POST")
        .respond_with(ResponseTemplate::new(200).set_body_string(
            "<CompleteMultipartUploadResult><Bucket>wire-bucket</Bucket><Key>big</Key>\
             <ETag>\"abc-3\"</ETag></CompleteMultipartUploadResult>",
        ))
        .mount(&server)
        .await;
    Mock::given(method("HEAD"))
        .and(path("/wire-bucket/big"))
        .respond_with(etag().insert_header("content-length", "11534336"))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(query_param_is_missing("uploadId"))
        .respond_with(etag())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/wire-bucket/k"))
        .respond_with(
            etag()
                .insert_header("content-type", "text/plain")
                .set_body_bytes(BODY),
        )
        .mount(&server)
        .await;
    server
}

/// A store builder for `server`, with test credentials.
fn builder(server: &MockServer) -> S3ObjectStoreBuilder {
    S3ObjectStoreBuilder::new()
        .with_endpoint(server.uri())
        .with_credentials("AK", SecretString::from("SK"))
}

fn store(server: &MockServer) -> S3ObjectStore {
    builder(server).with_part_size(MIN_PART_SIZE).build().unwrap()
}

/// The checksum-related headers of one request, as `name: value` lines.
fn checksum_headers(req: &Request) -> Vec<String> {
    req.headers
        .iter()
        .filter(|(name, value)| {
            let name = name.as_str();
            name.starts_with("x-amz-checksum")
                || name == "x-amz-sdk-checksum-algorithm"
                || name == "x-amz-trailer"
                || (name == "content-encoding" && value.to_str().unwrap_or_default().contains("aws-chunked"))
        })
        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
        .collect()
}

fn describe(req: &Request) -> String {
    format!("{} {}", req.method, req.url)
}

#[tokio::test]
async fn normal_requests_carry_no_checksum_headers() {
    let server = s3_mock().await;
    let s = store(&server);

    s.put(
        "wire-bucket",
        "k",
        Bytes::from_static(BODY),
        PutOptions::new().with_content_type("text/plain"),
    )
    .await
    .unwrap();
    s.put_stream(
        "wire-bucket",
        "sized",
        body_in_chunks(Bytes::from_static(BODY), 4),
        PutOptions::new().with_content_length(BODY.len() as u64),
    )
    .await
    .unwrap();
    let big = Bytes::from(vec![9u8; 2 * MIN_PART_SIZE + 1024 * 1024]);
    let meta = s
        .put_stream(
            "wire-bucket",
            "big",
            body_in_chunks(big.clone(), 1 << 20),
            PutOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(meta.size, big.len() as u64);
    assert_eq!(
        s.get_bytes("wire-bucket", "k").await.unwrap(),
        Bytes::from_static(BODY)
    );

    let requests = server.received_requests().await.unwrap();
    let seen: Vec<String> = requests.iter().map(describe).collect();
    // put, sized put, create + 3 parts + complete + head, get
    assert_eq!(requests.len(), 9, "{seen:#?}");
    for req in &requests {
        assert_eq!(checksum_headers(req), Vec::<String>::new(), "{}", describe(req));
        assert!(
            req.headers.contains_key("authorization"),
            "signed: {}",
            describe(req)
        );
    }
    // The sized stream went as one unsigned PutObject with its length, byte for byte.
    let sized = requests
        .iter()
        .find(|r| r.url.path() == "/wire-bucket/sized")
        .unwrap();
    assert_eq!(sized.method.as_str(), "PUT");
    assert_eq!(sized.headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
    assert_eq!(sized.headers["content-length"], BODY.len().to_string().as_str());
    assert_eq!(sized.body, BODY);
    // The in-memory put keeps a signed payload.
    let put = requests
        .iter()
        .find(|r| r.url.path() == "/wire-bucket/k" && r.method.as_str() == "PUT")
        .unwrap();
    assert_ne!(put.headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
    assert_eq!(put.body, BODY);
    // The multipart parts are equal-size but the last, add up to the body and, like
    // any streamed data, are sent unsigned (headers still signed).
    let parts: Vec<&Request> = requests
        .iter()
        .filter(|r| r.method.as_str() == "PUT" && r.url.query().is_some_and(|q| q.contains("partNumber")))
        .collect();
    let mut sizes: Vec<(u32, usize)> = parts
        .iter()
        .map(|r| {
            let n = r.url.query_pairs().find(|(k, _)| k == "partNumber").unwrap().1;
            (n.parse().unwrap(), r.body.len())
        })
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [(1, MIN_PART_SIZE), (2, MIN_PART_SIZE), (3, 1024 * 1024)]);
    for part in parts {
        assert_eq!(part.headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
    }
}

/// The detector above is not vacuous: the SDK's default settings (checksums "when
/// supported") do put these headers on a PutObject.
#[tokio::test]
async fn sdk_defaults_would_send_checksum_headers() {
    let server = s3_mock().await;
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("auto"))
        .endpoint_url(server.uri())
        .credentials_provider(Credentials::new("AK", "SK", None, None, "test"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
        .put_object()
        .bucket("wire-bucket")
        .key("k")
        .body(Bytes::from_static(BODY).into())
        .send()
        .await
        .unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert!(
        !checksum_headers(&requests[0]).is_empty(),
        "{:?}",
        requests[0].headers
    );
}

/// The requests of one kind to the multipart upload `up1`.
async fn upload_requests(server: &MockServer, method: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == method && r.url.query().is_some_and(|q| q.contains("uploadId=up1")))
        .collect()
}

/// A declared length that the configured parts (5 MiB here) could only hold in more
/// than 10,000 parts, the most a multipart upload takes, is uploaded in parts large
/// enough to fit (whole MiB, all equal): 100 GiB in parts of 11 MiB.
#[tokio::test]
async fn a_large_declared_length_sizes_its_parts_to_fit() {
    use futures::StreamExt as _;
    let server = s3_mock().await;
    let s = store(&server);
    let part = 11 * 1024 * 1024;
    // Two parts' worth, then the body stalls: the test stops once both parts arrived.
    let body: platform_storage::BodyStream =
        Box::pin(body_in_chunks(Bytes::from(vec![7u8; 2 * part]), 1 << 20).chain(futures::stream::pending()));
    let put = s.put_stream(
        "wire-bucket",
        "big",
        body,
        PutOptions::new().with_content_length(100 << 30),
    );
    tokio::select! {
        _ = put => panic!("a body that never ends cannot be stored"),
        arrived = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while upload_requests(&server, "PUT").await.len() < 2 {
                tokio::task::yield_now().await;
            }
        }) => arrived.expect("both parts reach the server within 30 s"),
    }
    let sizes: Vec<usize> = upload_requests(&server, "PUT")
        .await
        .iter()
        .map(|p| p.body.len())
        .collect();
    assert_eq!(sizes, [part, part]);
    // Over S3's largest object (5 TiB): refused before anything is sent.
    let before = server.received_requests().await.unwrap().len();
    let err = s
        .put_stream(
            "wire-bucket",
            "big",
            body_in_chunks(Bytes::new(), 1),
            PutOptions::new().with_content_length(6 << 40),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), platform_core::ErrorKind::InvalidInput, "{err}");
    assert_eq!(server.received_requests().await.unwrap().len(), before);
}

/// A transient failure of the completion (503 SlowDown) is retried: the upload
/// completes, its parts are not thrown away by an abort.
#[tokio::test]
async fn a_transient_completion_failure_is_retried() {
    let server = s3_mock().await;
    upload_call("POST")
        .respond_with(s3_error(503, "SlowDown"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    let s = store(&server);
    put_big(&s).await.unwrap();
    assert_eq!(
        upload_requests(&server, "POST").await.len(),
        2,
        "completed on the second try"
    );
    assert!(upload_requests(&server, "DELETE").await.is_empty(), "not aborted");
}

/// A server that takes a put's body and never answers does not hold the call for
/// ever: a body held in memory gets the response timeout plus its length at
/// `MIN_UPLOAD_RATE` per attempt, then the call fails with `Timeout` (here long before
/// the server's answer, a minute later, which would make the put succeed).
#[tokio::test]
async fn an_upload_the_server_never_answers_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/wire-bucket/silent"))
        .respond_with(ResponseTemplate::new(200).set_delay(std::time::Duration::from_secs(60)))
        .mount(&server)
        .await;
    let s = builder(&server)
        .with_timeouts(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(1),
        )
        .with_retry_policy(platform_core::RetryPolicy::default().with_max_attempts(1))
        .build()
        .unwrap();
    let err = s
        .put(
            "wire-bucket",
            "silent",
            Bytes::from_static(BODY),
            PutOptions::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), platform_core::ErrorKind::Timeout, "{err}");
    assert!(
        err.message()
            .ends_with(r#"(object "silent" in bucket "wire-bucket")"#),
        "{err}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "one attempt");
}

/// A streamed put whose server answers a while after the whole body arrived (R2
/// storing a large object) succeeds: the SDK's stalled-stream protection must learn
/// that the body is complete, or it counts the wait for the answer as a stalled
/// upload and fails the put after its 5 s grace period, whether or not the object
/// was stored.
#[tokio::test]
async fn a_streamed_put_answered_late_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/wire-bucket/slow-answer"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"0123456789abcdef\"")
                .set_delay(std::time::Duration::from_secs(8)),
        )
        .mount(&server)
        .await;
    let s = builder(&server)
        .with_timeouts(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(30),
        )
        .build()
        .unwrap();
    let meta = s
        .put_stream(
            "wire-bucket",
            "slow-answer",
            body_in_chunks(Bytes::from_static(BODY), 4),
            PutOptions::new().with_content_length(BODY.len() as u64),
        )
        .await
        .unwrap();
    assert_eq!(meta.size, BODY.len() as u64);
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "one request");
}

/// A multipart put whose future is dropped mid-upload (the caller's timeout) aborts its
/// upload, so its parts do not stay stored.
#[tokio::test]
async fn a_cancelled_multipart_upload_is_aborted() {
    let server = s3_mock().await;
    let (part_started, aborted) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    upload_call("PUT")
        .respond_with(Notifying(
            part_started.clone(),
            ResponseTemplate::new(200).set_delay(std::time::Duration::from_secs(60)),
        ))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/wire-bucket/big"))
        .respond_with(Notifying(aborted.clone(), ResponseTemplate::new(204)))
        .mount(&server)
        .await;
    let s = store(&server);
    // Cancelled once a part upload has started (and will not finish for a minute).
    tokio::select! {
        _ = put_big(&s) => panic!("a part upload that never ends cannot finish"),
        () = part_started.notified() => {}
    }
    // Bounded only so that a missing abort fails instead of hanging.
    tokio::time::timeout(std::time::Duration::from_secs(10), aborted.notified())
        .await
        .expect("the upload was not aborted");
}

/// A multipart put whose stream fails after a part went out aborts its upload, once,
/// so the part does not stay stored; no part arrives after the abort.
#[tokio::test]
async fn a_failed_multipart_upload_is_aborted() {
    let server = s3_mock().await;
    upload_call("DELETE")
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let s = store(&server);
    // Three parts (5 MiB each) and a bit more, then the producer fails.
    let chunks = (0..16)
        .map(|_| Ok(Bytes::from(vec![9u8; 1 << 20])))
        .chain(std::iter::once(Err(platform_core::Error::unexpected(
            "the producer failed",
        ))));
    let body: platform_storage::BodyStream = Box::pin(futures::stream::iter(chunks));
    let err = s
        .put_stream("wire-bucket", "big", body, PutOptions::new())
        .await
        .unwrap_err();
    assert!(err.message().contains("the producer failed"), "{err}");
    let calls: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.query().is_some_and(|q| q.contains("uploadId=up1")))
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(calls.iter().filter(|m| *m == "DELETE").count(), 1, "{calls:?}");
    assert_eq!(calls.last().map(String::as_str), Some("DELETE"), "{calls:?}");
}

/// Answers `.1` and wakes whoever waits on `.0` (a permit is kept for a waiter that
/// comes later, so no arrival is missed).
struct Notifying(Arc<Notify>, ResponseTemplate);

impl wiremock::Respond for Notifying {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.0.notify_one();
        self.1.clone()
    }
}

/// Puts an object of a little over two parts (`MIN_PART_SIZE` each), streamed in 1 MiB
/// chunks, as `wire-bucket/big`: a multipart upload.
async fn put_big(s: &S3ObjectStore) -> platform_core::Result<ObjectMeta> {
    let big = Bytes::from(vec![9u8; 2 * MIN_PART_SIZE + 1024 * 1024]);
    s.put_stream(
        "wire-bucket",
        "big",
        body_in_chunks(big, 1 << 20),
        PutOptions::new(),
    )
    .await
}

/// A completion retried after a failure whose outcome is unknown, that then finds the
/// upload gone (`NoSuchUpload`: the first try may have completed it), fails with
/// `Unavailable` (try again, or check the object), not `NotFound`.
#[tokio::test]
async fn a_retried_completion_that_finds_the_upload_gone_is_unavailable() {
    let server = s3_mock().await;
    // The first try fails with a 503; every retry finds the upload gone.
    for (priority, times, response) in [
        (1, 1, s3_error(503, "SlowDown")),
        (2, u64::MAX, s3_error(404, "NoSuchUpload")),
    ] {
        upload_call("POST")
            .respond_with(response)
            .up_to_n_times(times)
            .with_priority(priority)
            .mount(&server)
            .await;
    }
    let s = store(&server);
    let err = put_big(&s).await.unwrap_err();
    assert_eq!(err.kind(), platform_core::ErrorKind::Unavailable, "{err}");
    assert!(
        err.message()
            .ends_with(r#"(object "big" in bucket "wire-bucket")"#),
        "{err}"
    );
    assert!(upload_requests(&server, "POST").await.len() >= 2);
}

/// Errors name what the call acted on, which S3's answers do not: a refused read names
/// the object, a failed listing the bucket (a missing object is named as locally).
#[tokio::test]
async fn errors_name_the_object_or_bucket() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/wire-bucket/secret"))
        .respond_with(s3_error(403, "AccessDenied"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/wire-bucket/gone"))
        .respond_with(s3_error(404, "NoSuchKey"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(query_param("list-type", "2"))
        .respond_with(s3_error(500, "InternalError"))
        .mount(&server)
        .await;
    let s = builder(&server)
        .with_retry_policy(platform_core::RetryPolicy::default().with_max_attempts(1))
        .build()
        .unwrap();
    let err = s
        .get("wire-bucket", "secret", Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), platform_core::ErrorKind::PermissionDenied, "{err}");
    assert!(err.message().starts_with("AccessDenied"), "{err}");
    assert!(
        err.message()
            .ends_with(r#"(object "secret" in bucket "wire-bucket")"#),
        "{err}"
    );
    let err = s.head("wire-bucket", "gone").await.unwrap_err();
    assert_eq!(err.kind(), platform_core::ErrorKind::NotFound, "{err}");
    assert!(
        err.message()
            .starts_with(r#"no object "gone" in bucket "wire-bucket""#),
        "{err}"
    );
    let err = s.list("wire-bucket", "", Default::default()).await.unwrap_err();
    assert_eq!(err.kind(), platform_core::ErrorKind::Unavailable, "{err}");
    assert!(err.message().ends_with(r#"(bucket "wire-bucket")"#), "{err}");
    // S3's answers of the kinds the stores build naming the object (a missing bucket,
    // a failed precondition) name nothing either: they are named too.
    Mock::given(method("PUT"))
        .and(path("/wire-bucket/taken"))
        .respond_with(s3_error(412, "PreconditionFailed"))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/no-bucket/k"))
        .respond_with(s3_error(404, "NoSuchBucket"))
        .mount(&server)
        .await;
    let body = || Bytes::from_static(BODY);
    let err = s
        .put("wire-bucket", "taken", body(), PutOptions::new().create_only())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), platform_core::ErrorKind::Conflict, "{err}");
    assert!(
        err.message()
            .ends_with(r#"(object "taken" in bucket "wire-bucket")"#),
        "{err}"
    );
    let err = s
        .put("no-bucket", "k", body(), PutOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), platform_core::ErrorKind::NotFound, "{err}");
    assert!(
        err.message().ends_with(r#"(object "k" in bucket "no-bucket")"#),
        "{err}"
    );
}
