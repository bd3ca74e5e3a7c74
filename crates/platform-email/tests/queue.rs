//! The `email` job queue (feature `queue`): jobs enqueued with [`EmailJob::enqueue`]
//! and processed by [`email_job_handler`] on a [`LocalQueue`] (tokio's paused clock
//! makes the queue's backoff instant), against [`RecordingMailer`] and the Resend
//! adapter on wiremock, and once on a real Redis (`RedisQueue`). Tests wait for handler
//! signals, never for time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{Error, ErrorKind, Product, Result, RetryPolicy, system_clock};
use platform_email::queue::{EMAIL_QUEUE, EmailJob, email_job_handler, job_error};
use platform_email::templates::Welcome;
use platform_email::{
    Batch, BatchReport, DynMailer, ENTITY_REF_HEADER, Email, Mailer, MessageId, RecordingMailer,
    ResendMailerBuilder, Senders,
};
use platform_queue::{
    JobError, JobQueue, JobState, JobWorkers, LocalQueue, NewJob, QueueCatalog, QueueConfig,
    RedisQueueBuilder, WorkerHandle, handler_fn,
};
use serde_json::json;
use tokio::sync::mpsc;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

type Attempt = (String, u32, std::result::Result<(), JobError>);

/// Starts a worker on the email queue running `email_job_handler(mailer)`, and a
/// receiver of every attempt's `(job id, attempt, outcome)`, sent after the handler
/// returned.
async fn start(
    queue: &dyn JobWorkers,
    mailer: DynMailer,
) -> (WorkerHandle, mpsc::UnboundedReceiver<Attempt>) {
    let inner = email_job_handler(mailer);
    let (tx, rx) = mpsc::unbounded_channel();
    let observed = handler_fn(move |ctx| {
        let inner = Arc::clone(&inner);
        let tx = tx.clone();
        async move {
            let (id, attempt) = (ctx.job_id().to_owned(), ctx.attempt());
            let outcome = inner.handle(ctx).await;
            tx.send((id, attempt, outcome.clone())).ok();
            outcome
        }
    });
    let worker = queue.start_worker(EMAIL_QUEUE, observed).await.unwrap();
    (worker, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Attempt>) -> Attempt {
    rx.recv().await.expect("the worker reports every attempt")
}

/// A mailer in front of a recorder that notes the idempotency key of every call and
/// can lose the answer of the first call after the recorder accepted the message
/// (a connection reset after the request went out).
#[derive(Debug)]
struct Spy {
    inner: RecordingMailer,
    lose_first_answer: bool,
    keys: Mutex<Vec<Option<String>>>,
}

impl Spy {
    fn new(inner: &RecordingMailer, lose_first_answer: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: inner.clone(),
            lose_first_answer,
            keys: Mutex::new(Vec::new()),
        })
    }

    fn keys(&self) -> Vec<Option<String>> {
        self.keys.lock().unwrap().clone()
    }
}

#[async_trait]
impl Mailer for Spy {
    async fn send(&self, email: &Email) -> Result<MessageId> {
        let first = {
            let mut keys = self.keys.lock().unwrap();
            keys.push(email.idempotency_key.clone());
            keys.len() == 1
        };
        let id = self.inner.send(email).await?;
        if first && self.lose_first_answer {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "connection reset after the request was sent",
            ));
        }
        Ok(id)
    }

    async fn send_batch(&self, batch: &Batch) -> Result<BatchReport> {
        self.inner.send_batch(batch).await
    }
}

fn welcome_job(to: &str, user_id: &str) -> EmailJob {
    let sender = Senders::new().for_product(&Product::ARBOR);
    let welcome = Welcome::new("Ada", "Arbor", "https://arbor.example.com/dashboard");
    EmailJob::from_template(&sender, to, Some(user_id), &welcome)
        .unwrap()
        .with_product(Product::ARBOR)
}

#[tokio::test(start_paused = true)]
async fn a_job_is_sent_once_with_the_jobs_idempotency_key() {
    let queue = LocalQueue::new();
    let recorder = RecordingMailer::new();
    let spy = Spy::new(&recorder, false);
    let job = welcome_job("Ada <ada@example.com>", "user_42");

    let first = job.enqueue(&queue, "welcome-user_42").await.unwrap();
    let again = job.enqueue(&queue, "welcome-user_42").await.unwrap();
    assert!(first.created);
    assert!(!again.created, "the same job id is de-duplicated");
    assert_eq!(again.job_id, "welcome-user_42");

    let (worker, mut rx) = start(&queue, spy.clone()).await;
    let (id, attempt, outcome) = next(&mut rx).await;
    assert_eq!((id.as_str(), attempt), ("welcome-user_42", 1));
    assert_eq!(outcome, Ok(()));
    assert!(worker.shutdown(Duration::from_secs(5)).await.unwrap().drained);

    assert_eq!(spy.keys(), vec![Some("email:welcome-user_42".to_owned())]);
    let sent = recorder.sent();
    assert_eq!(sent.len(), 1, "one job, one message");
    assert_eq!(sent[0].email, job.email);
    assert_eq!(sent[0].email.subject, "Welcome to our platform!");
    assert_eq!(sent[0].email.to, vec!["Ada <ada@example.com>".to_owned()]);
    assert_eq!(
        sent[0].email.headers.get(ENTITY_REF_HEADER).map(String::as_str),
        Some("user_42")
    );

    // The recorder holds the message under the job's key: the same key gives the same
    // id and sends nothing more; the key with another message is a conflict.
    let replay = job.email.clone().with_idempotency_key("email:welcome-user_42");
    assert_eq!(recorder.send(&replay).await.unwrap(), sent[0].id);
    assert_eq!(recorder.len(), 1);
    let other = replay.clone().with_text("something else");
    assert_eq!(
        recorder.send(&other).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );

    let info = queue.job(EMAIL_QUEUE, "welcome-user_42").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Done);
    assert_eq!(info.attempts, 1);
    assert_eq!(info.meta.product, Some(Product::ARBOR));
    assert_eq!(queue.stats(EMAIL_QUEUE).await.unwrap().done, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_retried_and_delivered_exactly_once() {
    let queue = LocalQueue::new();
    let recorder = RecordingMailer::new();
    let spy = Spy::new(&recorder, true);
    let job = welcome_job("ada@example.com", "user_7");
    job.enqueue(&queue, "welcome-user_7").await.unwrap();

    let (worker, mut rx) = start(&queue, spy.clone()).await;
    let (_, attempt, outcome) = next(&mut rx).await;
    assert_eq!(attempt, 1);
    let err = outcome.unwrap_err();
    assert!(!err.is_permanent(), "an outage is retried: {err}");
    assert!(err.message().contains("connection reset"), "{err}");
    let (_, attempt, outcome) = next(&mut rx).await;
    assert_eq!((attempt, outcome), (2, Ok(())));
    assert!(worker.shutdown(Duration::from_secs(5)).await.unwrap().drained);

    // Both attempts reached the mailer with the same key, and the recorder's
    // idempotency turned the second into a no-op: one message delivered.
    let key = Some("email:welcome-user_7".to_owned());
    assert_eq!(spy.keys(), vec![key.clone(), key]);
    assert_eq!(recorder.len(), 1);
    let stats = queue.stats(EMAIL_QUEUE).await.unwrap();
    assert_eq!((stats.done, stats.failed, stats.dead), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_send_is_retried_then_delivered_once() {
    let queue = LocalQueue::new();
    let recorder = RecordingMailer::new();
    recorder.fail_next(ErrorKind::RateLimited, "slow down");
    let job = welcome_job("ada@example.com", "user_8");
    job.enqueue(&queue, "welcome-user_8").await.unwrap();

    let (worker, mut rx) = start(&queue, Arc::new(recorder.clone())).await;
    let (_, attempt, outcome) = next(&mut rx).await;
    assert_eq!(attempt, 1);
    assert!(!outcome.unwrap_err().is_permanent());
    let (_, attempt, outcome) = next(&mut rx).await;
    assert_eq!((attempt, outcome), (2, Ok(())));
    assert!(worker.shutdown(Duration::from_secs(5)).await.unwrap().drained);
    assert_eq!(recorder.len(), 1);
}

/// A message larger than the queue's payload limit (1 MiB of JSON) is refused at
/// enqueue, saying so, and nothing is enqueued: it is not lost in the queue.
#[tokio::test]
async fn an_email_over_the_queue_payload_limit_is_refused_at_enqueue() {
    let queue = LocalQueue::new();
    let body = "x".repeat(platform_queue::MAX_PAYLOAD_BYTES);
    let large = EmailJob::new(
        Email::new("Arbor <noreply@arbor.example.com>", ["ada@example.com"], "Report").with_text(body),
    );
    let err = large.enqueue(&queue, "large").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("bytes"), "{}", err.message());
    assert!(queue.job(EMAIL_QUEUE, "large").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn invalid_jobs_are_dead_lettered_without_reaching_the_mailer() {
    let queue = LocalQueue::new();
    let recorder = RecordingMailer::new();
    let spy = Spy::new(&recorder, false);
    let bad =
        EmailJob::new(Email::new("Arbor <noreply@arbor.example.com>", ["ada@example"], "Hi").with_text("hi"));

    // The helper refuses it up front and enqueues nothing.
    let err = bad.enqueue(&queue, "bad-helper").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().starts_with("to[0]:"), "{}", err.message());
    assert!(queue.job(EMAIL_QUEUE, "bad-helper").await.unwrap().is_none());

    // A producer that bypasses the helper, and a payload that is no EmailJob at all.
    queue
        .enqueue(
            EMAIL_QUEUE,
            NewJob::json(&bad).unwrap().with_job_id("bad-address"),
        )
        .await
        .unwrap();
    queue
        .enqueue(
            EMAIL_QUEUE,
            NewJob::new(json!({ "to": "ada@example.com" })).with_job_id("bad-payload"),
        )
        .await
        .unwrap();

    let (worker, mut rx) = start(&queue, spy.clone()).await;
    let mut outcomes = vec![next(&mut rx).await, next(&mut rx).await];
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, attempt, outcome) in &outcomes {
        assert_eq!(*attempt, 1, "{id}: no retry");
        assert!(outcome.as_ref().unwrap_err().is_permanent(), "{id}: {outcome:?}");
    }
    assert!(worker.shutdown(Duration::from_secs(5)).await.unwrap().drained);

    assert!(spy.keys().is_empty(), "the mailer was never called");
    assert!(recorder.is_empty());
    let dead = queue.dead_jobs(EMAIL_QUEUE, 10).await.unwrap();
    let mut ids: Vec<&str> = dead.iter().map(|j| j.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["bad-address", "bad-payload"]);
    let address = dead.iter().find(|j| j.id == "bad-address").unwrap();
    assert!(
        address.last_error.as_deref().unwrap().contains("to[0]"),
        "{address:?}"
    );
    assert_eq!(queue.stats(EMAIL_QUEUE).await.unwrap().dead, 2);
}

#[tokio::test]
async fn enqueue_rejects_job_ids_that_cannot_be_idempotency_keys() {
    let queue = LocalQueue::new();
    let job = welcome_job("ada@example.com", "user_9");
    for id in ["", "has space", "ünïcode", &"x".repeat(129)] {
        let err = job.enqueue(&queue, id).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{id:?}");
        assert!(err.message().starts_with("job_id:"), "{id:?}: {}", err.message());
    }
    assert_eq!(queue.stats(EMAIL_QUEUE).await.unwrap().pending, 0);
    assert!(job.enqueue(&queue, &"x".repeat(128)).await.unwrap().created);
}

/// A job id whose key (`email:` and the id, `%` and `:` percent-encoded) would be
/// longer than Resend accepts is refused at enqueue, naming the key's length; the
/// longest that fits is enqueued and sent with exactly that key, not dead-lettered.
#[tokio::test]
async fn enqueue_rejects_job_ids_whose_encoded_key_is_too_long() {
    let queue = LocalQueue::new();
    let job = welcome_job("ada@example.com", "user_9");
    // "email:" (6) + 78 × "%3A" (234) = 240 characters: the most Resend takes.
    let fits = ":".repeat(78);
    let too_long = ":".repeat(79);
    let err = job.enqueue(&queue, &too_long).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.message().starts_with("job_id:") && err.message().contains("243 characters"),
        "{}",
        err.message()
    );
    assert_eq!(queue.stats(EMAIL_QUEUE).await.unwrap().pending, 0);
    assert!(job.enqueue(&queue, &fits).await.unwrap().created);
    let recorder = RecordingMailer::new();
    let spy = Spy::new(&recorder, false);
    let (worker, mut rx) = start(&queue, spy.clone()).await;
    let (id, attempt, outcome) = next(&mut rx).await;
    assert_eq!((id, attempt, outcome), (fits, 1, Ok(())));
    assert!(worker.shutdown(Duration::from_secs(5)).await.unwrap().drained);
    assert_eq!(spy.keys(), vec![Some(format!("email:{}", "%3A".repeat(78)))]);
    assert_eq!(recorder.sent().len(), 1);
}

#[test]
fn email_jobs_round_trip_through_json() {
    let job = welcome_job("ada@example.com", "user_1");
    let value = serde_json::to_value(&job).unwrap();
    assert_eq!(value["email"]["subject"], "Welcome to our platform!");
    assert_eq!(value["product"], "arbor");
    assert_eq!(serde_json::from_value::<EmailJob>(value).unwrap(), job);

    // A minimal payload from another producer: empty lists and bodies may be left out.
    let minimal: EmailJob = serde_json::from_value(json!({
        "email": { "from": "a@example.com", "to": ["b@example.com"], "subject": "Hi", "text": "hi" }
    }))
    .unwrap();
    assert_eq!(
        minimal.email,
        Email::new("a@example.com", ["b@example.com"], "Hi").with_text("hi")
    );
    assert_eq!(minimal.product, None);
}

#[test]
fn mailer_errors_map_to_retryable_or_permanent_job_errors() {
    for kind in [
        ErrorKind::RateLimited,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Provider,
        ErrorKind::Unexpected,
    ] {
        let e = job_error(&Error::new(kind, "x"));
        assert!(!e.is_permanent(), "{kind:?}");
    }
    for kind in [
        ErrorKind::InvalidInput,
        ErrorKind::Config,
        ErrorKind::Conflict,
        ErrorKind::Unsupported,
        ErrorKind::NotFound,
        ErrorKind::Unauthenticated,
        ErrorKind::PermissionDenied,
    ] {
        let e = job_error(&Error::new(kind, "bad").with_provider("resend"));
        assert!(e.is_permanent(), "{kind:?}");
        assert!(e.message().contains("bad"), "{}", e.message());
    }
}

#[tokio::test]
async fn resend_gets_the_jobs_key_as_idempotency_key_across_a_retry() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({
            "statusCode": 429,
            "message": "Too many requests. You can only make 2 requests per second.",
            "name": "rate_limit_exceeded"
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "id": "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794" })),
        )
        .expect(1)
        .mount(&server)
        .await;
    // The adapter tries once, so the 429 reaches the queue, which retries the job.
    let resend = ResendMailerBuilder::new()
        .with_api_key("re_test_0123456789")
        .with_base_url(server.uri())
        .with_requests_per_second(0)
        .with_retry_policy(RetryPolicy::never())
        .build()
        .unwrap();
    let fast = RetryPolicy::default()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(5))
        .with_jitter(false);
    let catalog = QueueCatalog::empty()
        .with_queue(QueueConfig::new(EMAIL_QUEUE).with_retry(fast))
        .unwrap();
    let queue = LocalQueue::from_parts(catalog, system_clock());
    let job = welcome_job("ada@example.com", "user_5");
    job.enqueue(&queue, "welcome-user_5").await.unwrap();

    let (worker, mut rx) = start(&queue, Arc::new(resend)).await;
    let (_, attempt, outcome) = next(&mut rx).await;
    assert_eq!(attempt, 1);
    let err = outcome.unwrap_err();
    assert!(!err.is_permanent(), "a 429 is retried: {err}");
    let (_, attempt, outcome) = next(&mut rx).await;
    assert_eq!((attempt, outcome), (2, Ok(())));
    assert!(worker.shutdown(Duration::from_secs(5)).await.unwrap().drained);

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok());
        assert_eq!(key, Some("email:welcome-user_5"));
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["subject"], "Welcome to our platform!");
        assert_eq!(body["to"], json!(["ada@example.com"]));
    }
    assert_eq!(
        requests[0].body, requests[1].body,
        "a retry sends the same request"
    );
    assert_eq!(
        queue
            .job(EMAIL_QUEUE, "welcome-user_5")
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Done
    );
}

/// The same contract on a real Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`;
/// `scripts/services.sh` starts it): a lost answer is retried by the `RedisQueue` and
/// the message is delivered once. Fails if Redis is down; the key prefix is unique
/// and purged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_retries_a_lost_answer_and_delivers_once() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let fast = RetryPolicy::default()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(1))
        .with_jitter(false);
    let catalog = QueueCatalog::empty()
        .with_queue(QueueConfig::new(EMAIL_QUEUE).with_retry(fast))
        .unwrap();
    let queue = RedisQueueBuilder::new()
        .with_url(&url)
        .with_prefix(format!("pemailtest:{}", uuid::Uuid::new_v4().simple()))
        .with_catalog(catalog)
        .with_poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap_or_else(|e| {
            panic!("Redis is not reachable at {url} ({e}); start it with scripts/services.sh")
        });

    let recorder = RecordingMailer::new();
    let spy = Spy::new(&recorder, true);
    let job = welcome_job("ada@example.com", "user_r");
    let first = job.enqueue(&queue, "welcome-user_r").await;
    let again = job.enqueue(&queue, "welcome-user_r").await;
    let (worker, mut rx) = start(&queue, spy.clone()).await;
    // A guard against a hang, not a wait: both attempts normally arrive in ~1 s (Redis
    // schedules retries with one-second granularity).
    let attempts = tokio::time::timeout(Duration::from_secs(30), async {
        vec![next(&mut rx).await, next(&mut rx).await]
    })
    .await;
    let drained = worker.shutdown(Duration::from_secs(5)).await.map(|r| r.drained);
    let state = queue
        .job(EMAIL_QUEUE, "welcome-user_r")
        .await
        .map(|j| j.map(|j| j.state));
    queue.purge().await.unwrap();

    assert!(first.unwrap().created);
    assert!(!again.unwrap().created);
    let attempts = attempts.expect("both attempts ran within 30 s");
    assert_eq!((attempts[0].1, attempts[1].1), (1, 2));
    assert!(!attempts[0].2.as_ref().unwrap_err().is_permanent());
    assert_eq!(attempts[1].2, Ok(()));
    assert!(drained.unwrap());
    assert_eq!(state.unwrap(), Some(JobState::Done));
    let key = Some("email:welcome-user_r".to_owned());
    assert_eq!(spy.keys(), vec![key.clone(), key]);
    assert_eq!(recorder.len(), 1, "delivered exactly once");
}
