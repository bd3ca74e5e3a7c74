//! The behaviour suite of [`JobQueue`](crate::JobQueue) + [`JobWorkers`](crate::JobWorkers), run against every
//! implementation (feature `conformance`).
//!
//! Each case is a free async function over a [`Harness`] that opens a fresh
//! [`QueueService`] with a catalogue of the case's choosing, in its own namespace.
//! [`queue_conformance_tests!`](crate::queue_conformance_tests) makes one named
//! `#[tokio::test]` per case. Cases wait on signals from the handlers and on
//! [`WorkerHandle::shutdown`] (which drains), never on sleeps; delays are measured
//! with `tokio::time::Instant`, so the in-process queue can run on a paused clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test suite fails loudly"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use platform_core::{ErrorKind, Product, RetryPolicy};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::context::JobContext;
use crate::{
    JobError, JobHandler, JobQueueExt, JobState, MAX_DELAY, NewJob, QueueCatalog, QueueConfig, QueueService,
    WorkerHandle, handler_fn,
};

/// Opens fresh queue services for the suite and cleans up after each case.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A queue service serving `catalog`, isolated from every other case.
    async fn open(&self, catalog: QueueCatalog) -> Arc<dyn QueueService>;
    /// Removes whatever the cases stored (called even when a case fails).
    async fn cleanup(&self);
}

/// Runs `case` against `harness`, always cleaning up, then re-raises a failure.
pub async fn run_case<H: Harness>(harness: &H, case: impl FnOnce(&H) -> BoxFuture<'_, ()>) {
    let result = AssertUnwindSafe(case(harness)).catch_unwind().await;
    harness.cleanup().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

const WAIT: Duration = Duration::from_secs(30);

fn quick_retry(attempts: u32, initial: Duration, multiplier: f64) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(attempts)
        .with_initial_backoff(initial)
        .with_multiplier(multiplier)
        .with_max_backoff(Duration::from_secs(60))
        .with_max_elapsed(None)
        .with_jitter(false)
}

fn catalog(queue: QueueConfig) -> QueueCatalog {
    QueueCatalog::empty().with_queue(queue).unwrap()
}

/// The next message from a handler, failing the test after a generous bound (a hang
/// guard, not a timing assertion).
pub async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("channel closed waiting for {what}"))
}

/// A handler that sends `report(ctx)` to `tx` and succeeds: how cases observe jobs.
pub fn reporting<T, F>(tx: mpsc::UnboundedSender<T>, report: F) -> Arc<dyn JobHandler>
where
    T: Send + 'static,
    F: Fn(JobContext) -> T + Send + Sync + 'static,
{
    handler_fn(move |ctx| {
        tx.send(report(ctx)).unwrap();
        async { Ok(()) }
    })
}

async fn drain(worker: WorkerHandle) {
    let report = worker.shutdown(WAIT).await.unwrap();
    assert!(report.drained, "worker did not drain: {report:?}");
}

/// Jobs are processed with their payload and metadata envelope; the handler sees the
/// attempt number and a stable idempotency key; unknown queues and bad ids are
/// `InvalidInput`.
pub async fn processes_jobs_with_metadata(h: &impl Harness) {
    let svc = h
        .open(catalog(QueueConfig::new("jobs").with_concurrency(2)))
        .await;
    let before = chrono::Utc::now() - chrono::TimeDelta::seconds(60);
    let mut ids = BTreeSet::new();
    for n in 0..3 {
        let job = NewJob::new(json!({ "n": n }))
            .with_product(Product::ARBOR)
            .with_version("2");
        let out = svc.enqueue("jobs", job).await.unwrap();
        assert!(out.created);
        assert_eq!(out.state, JobState::Pending);
        ids.insert(out.job_id);
    }
    let pending = svc.job("jobs", ids.first().unwrap()).await.unwrap().unwrap();
    assert_eq!(pending.state, JobState::Pending);
    assert_eq!(pending.meta.product, Some(Product::ARBOR));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = svc.start_worker("jobs", reporting(tx, |ctx| ctx)).await.unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let ctx = recv(&mut rx, "a job").await;
        assert_eq!(ctx.meta().product, Some(Product::ARBOR));
        assert_eq!(ctx.meta().version, "2");
        assert!(ctx.meta().timestamp > before && ctx.meta().timestamp <= chrono::Utc::now());
        assert_eq!(ctx.attempt(), 1);
        assert_eq!(ctx.queue(), "jobs");
        assert_eq!(ctx.idempotency_key(), format!("jobs:{}", ctx.job_id()));
        assert!(ctx.payload_json()["n"].is_u64());
        seen.insert(ctx.job_id().to_owned());
    }
    assert_eq!(seen, ids);
    drain(worker).await;
    let stats = svc.stats("jobs").await.unwrap();
    assert_eq!(
        (stats.pending, stats.running, stats.done, stats.dead),
        (0, 0, 3, 0),
        "{stats:?}"
    );
    for id in &ids {
        assert_eq!(svc.job("jobs", id).await.unwrap().unwrap().state, JobState::Done);
    }
    assert!(svc.job("jobs", "no-such-job").await.unwrap().is_none());
    let err = svc.enqueue("nope", NewJob::new(json!({}))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("nope"), "{err}");
    for (id, why) in [
        (String::new(), "1 to 128 bytes"),
        ("x".repeat(129), "1 to 128 bytes"),
        ("line\nbreak".to_owned(), "control characters"),
    ] {
        let err = svc
            .enqueue("jobs", NewJob::new(json!({})).with_job_id(id.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{id:?}");
        assert!(err.to_string().contains(why), "{id:?}: {err}");
    }
    let longest = "x".repeat(128);
    let out = svc
        .enqueue("jobs", NewJob::new(json!({})).with_job_id(longest.clone()))
        .await
        .unwrap();
    assert_eq!(out.job_id, longest);
    assert!(
        svc.start_worker("nope", handler_fn(|_| async { Ok(()) }))
            .await
            .is_err()
    );
}

/// A payload reads back exactly as it was enqueued, in `job()` and in the handler:
/// floats to the last bit, the extremes of integers, any string. One nested deeper
/// than [`MAX_PAYLOAD_DEPTH`](crate::MAX_PAYLOAD_DEPTH) is refused at enqueue, on every
/// implementation (Redis could not read it back); one at the limit runs. Likewise one
/// longer than [`MAX_PAYLOAD_BYTES`](crate::MAX_PAYLOAD_BYTES) as JSON is refused, and
/// one of exactly that length runs.
pub async fn payloads_read_back_exactly(h: &impl Harness) {
    // One at a time: the jobs are reported in the order they were enqueued.
    let svc = h
        .open(catalog(QueueConfig::new("exact").with_concurrency(1)))
        .await;
    let nested = |depth: usize| (0..depth).fold(json!(1), |inner, _| json!([inner]));
    let exact = json!({
        "floats": [0.09144338512092887, 1e-300, 1.7976931348623157e308, -0.1, 5e-324],
        "ints": [u64::MAX, i64::MIN],
        "text": "ü\u{0}\"\\",
        "deepest": nested(crate::MAX_PAYLOAD_DEPTH - 1),
    });
    svc.enqueue("exact", NewJob::new(exact.clone()).with_job_id("exact"))
        .await
        .unwrap();
    assert_eq!(svc.job("exact", "exact").await.unwrap().unwrap().payload, exact);
    let err = svc
        .enqueue(
            "exact",
            NewJob::new(json!({ "deep": nested(crate::MAX_PAYLOAD_DEPTH) })),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("nested"), "{err}");
    // A JSON string of n characters 'x' is n + 2 bytes long.
    let largest = json!("x".repeat(crate::MAX_PAYLOAD_BYTES - 2));
    svc.enqueue("exact", NewJob::new(largest.clone()).with_job_id("largest"))
        .await
        .unwrap();
    let err = svc
        .enqueue(
            "exact",
            NewJob::new(json!("x".repeat(crate::MAX_PAYLOAD_BYTES - 1))),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("over 1048576 bytes"), "{err}");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = svc
        .start_worker("exact", reporting(tx, |ctx| ctx.payload_json().clone()))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx, "the job").await, exact);
    let run = recv(&mut rx, "the largest job").await;
    assert!(run == largest, "the largest payload read back changed");
    drain(worker).await;
    let stats = svc.stats("exact").await.unwrap();
    assert_eq!(
        (stats.done, stats.pending),
        (2, 0),
        "only the readable jobs were enqueued: {stats:?}"
    );
}

/// Observed in-flight jobs never exceed the queue's concurrency, and do reach it: the
/// first three jobs wait for each other (a worker that ran fewer at once would never
/// finish them), every job then holds its slot for a while of simulated work.
pub async fn concurrency_is_never_exceeded(h: &impl Harness) {
    let svc = h
        .open(catalog(QueueConfig::new("limited").with_concurrency(3)))
        .await;
    for n in 0..12 {
        svc.enqueue("limited", NewJob::new(json!({ "n": n })))
            .await
            .unwrap();
    }
    let current = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let arrivals = Arc::new(AtomicUsize::new(0));
    let together = Arc::new(tokio::sync::Barrier::new(3));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (c, m, a, t) = (current.clone(), max.clone(), arrivals.clone(), together.clone());
    let worker = svc
        .start_worker(
            "limited",
            handler_fn(move |_ctx| {
                let (c, m, a, t, tx) = (c.clone(), m.clone(), a.clone(), t.clone(), tx.clone());
                async move {
                    let now = c.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    if a.fetch_add(1, Ordering::SeqCst) < 3 {
                        t.wait().await;
                    }
                    // Simulated work: keeps the slot busy so that a worker over its
                    // limit would start a fourth job meanwhile (not a wait for anything).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    c.fetch_sub(1, Ordering::SeqCst);
                    tx.send(()).unwrap();
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    for _ in 0..12 {
        recv(&mut rx, "a job (the first three must run at once)").await;
    }
    drain(worker).await;
    let max = max.load(Ordering::SeqCst);
    assert_eq!(max, 3, "saw at most {max} jobs in flight with concurrency 3");
    assert_eq!(svc.stats("limited").await.unwrap().done, 12);
}

/// A failing job is retried with growing delays, dead-lettered after its last
/// attempt (keeping payload and error), and runs again when retried from the dead list.
pub async fn failing_job_backs_off_then_dead_letters_and_can_be_retried(h: &impl Harness) {
    let q = QueueConfig::new("flaky").with_retry(quick_retry(3, Duration::from_secs(1), 3.0));
    let svc = h.open(catalog(q)).await;
    let failing = Arc::new(AtomicBool::new(true));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let f = failing.clone();
    let handler = handler_fn(move |ctx| {
        let (tx, f) = (tx.clone(), f.clone());
        async move {
            tx.send((ctx.attempt(), Instant::now(), ctx.idempotency_key()))
                .unwrap();
            if f.load(Ordering::SeqCst) {
                Err(JobError::retryable(format!("boom on attempt {}", ctx.attempt())))
            } else {
                Ok(())
            }
        }
    });
    let out = svc
        .enqueue(
            "flaky",
            NewJob::new(json!({ "to": "a@example.com" })).with_job_id("flaky-1"),
        )
        .await
        .unwrap();
    let worker = svc.start_worker("flaky", handler.clone()).await.unwrap();
    let mut attempts = Vec::new();
    for _ in 0..3 {
        attempts.push(recv(&mut rx, "an attempt").await);
        // Running, or backing off before its next attempt: its id still de-duplicates.
        let again = svc
            .enqueue("flaky", NewJob::new(json!({})).with_job_id("flaky-1"))
            .await
            .unwrap();
        assert!(!again.created, "attempt {}: {again:?}", attempts.len());
        assert!(
            matches!(
                again.state,
                JobState::Running | JobState::Retrying | JobState::Dead
            ),
            "attempt {}: {again:?}",
            attempts.len()
        );
    }
    drain(worker).await;
    assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    let keys: BTreeSet<_> = attempts.iter().map(|a| a.2.clone()).collect();
    assert_eq!(
        keys.len(),
        1,
        "idempotency key must be stable across attempts: {keys:?}"
    );
    let d1 = attempts[1].1 - attempts[0].1;
    let d2 = attempts[2].1 - attempts[1].1;
    assert!(
        d1 >= Duration::from_millis(990),
        "first retry came after {d1:?}, backoff is 1 s"
    );
    assert!(
        d2 >= Duration::from_millis(2990),
        "second retry came after {d2:?}, backoff is 3 s"
    );
    assert!(d2 > d1, "delays must grow: {d1:?} then {d2:?}");

    let job = svc.job("flaky", &out.job_id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(job.attempts, 3);
    assert!(
        job.last_error
            .as_deref()
            .unwrap_or("")
            .contains("boom on attempt 3"),
        "{job:?}"
    );
    let dead = svc.dead_jobs("flaky", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, "flaky-1");
    assert_eq!(dead[0].payload, json!({ "to": "a@example.com" }));
    let all = svc.dead_jobs("flaky", usize::MAX).await.unwrap();
    assert_eq!(all.len(), 1, "no limit: every dead job");
    assert!(svc.dead_jobs("flaky", 0).await.unwrap().is_empty());
    let stats = svc.stats("flaky").await.unwrap();
    assert_eq!(
        (stats.dead, stats.failed, stats.done, stats.pending),
        (1, 3, 0, 0),
        "{stats:?}"
    );

    // While dead, the id still de-duplicates.
    let again = svc
        .enqueue("flaky", NewJob::new(json!({})).with_job_id("flaky-1"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.state, JobState::Dead);

    failing.store(false, Ordering::SeqCst);
    svc.retry_dead("flaky", "flaky-1").await.unwrap();
    assert!(svc.dead_jobs("flaky", 10).await.unwrap().is_empty());
    let worker = svc.start_worker("flaky", handler).await.unwrap();
    let (attempt, _, _) = recv(&mut rx, "the retried job").await;
    assert_eq!(
        attempt, 1,
        "a job retried from the dead list gets a fresh attempt budget"
    );
    drain(worker).await;
    assert_eq!(
        svc.job("flaky", "flaky-1").await.unwrap().unwrap().state,
        JobState::Done
    );
    let err = svc.retry_dead("flaky", "flaky-1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// A failed job waits for its retry on the queue, not in a worker slot: with
/// concurrency 1, the job behind it runs before its next attempt, and it is
/// `Retrying`, not running, meanwhile.
pub async fn a_job_backing_off_leaves_its_slot_free(h: &impl Harness) {
    let retry = quick_retry(2, Duration::from_secs(60), 1.0);
    let q = QueueConfig::new("slot").with_concurrency(1).with_retry(retry);
    let svc = h.open(catalog(q)).await;
    for id in ["slot-fails", "slot-next"] {
        svc.enqueue("slot", NewJob::new(json!({})).with_job_id(id))
            .await
            .unwrap();
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = handler_fn(move |ctx| {
        let tx = tx.clone();
        async move {
            tx.send((ctx.job_id().to_owned(), ctx.attempt())).unwrap();
            if ctx.job_id() == "slot-fails" {
                Err(JobError::retryable("fails once"))
            } else {
                Ok(())
            }
        }
    });
    let worker = svc.start_worker("slot", handler).await.unwrap();
    assert_eq!(
        recv(&mut rx, "the failing job").await,
        ("slot-fails".to_owned(), 1)
    );
    assert_eq!(
        recv(&mut rx, "the next job, during the backoff").await,
        ("slot-next".to_owned(), 1),
        "the failing job's retry held the only slot"
    );
    drain(worker).await;
    let job = svc.job("slot", "slot-fails").await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Retrying, 1), "{job:?}");
    let stats = svc.stats("slot").await.unwrap();
    assert_eq!((stats.done, stats.running, stats.failed), (1, 0, 1), "{stats:?}");
}

/// A permanent error dead-letters the job without further attempts. Dead jobs are
/// listed oldest first, at most `limit` (the ids here also sort in the order the jobs
/// die: Redis orders deaths within one millisecond by id).
pub async fn permanent_error_dead_letters_at_once(h: &impl Harness) {
    let svc = h
        .open(catalog(QueueConfig::new("strict").with_concurrency(1)))
        .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ids = ["strict-1", "strict-2", "strict-3"];
    for id in ids {
        svc.enqueue("strict", NewJob::new(json!("not an object")).with_job_id(id))
            .await
            .unwrap();
    }
    let worker = svc
        .start_worker(
            "strict",
            handler_fn(move |ctx| {
                let tx = tx.clone();
                async move {
                    tx.send((ctx.job_id().to_owned(), ctx.attempt())).unwrap();
                    let _: BTreeMap<String, String> = ctx.payload()?;
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    for id in ids {
        assert_eq!(recv(&mut rx, "an attempt").await, (id.to_owned(), 1));
    }
    drain(worker).await;
    let stats = svc.stats("strict").await.unwrap();
    assert_eq!((stats.dead, stats.failed, stats.pending), (3, 3, 0), "{stats:?}");
    let listed = |limit| {
        let svc = svc.clone();
        async move {
            let dead = svc.dead_jobs("strict", limit).await.unwrap();
            dead.into_iter().map(|j| j.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(2).await, ids[..2]);
    assert_eq!(listed(10).await, ids);
    assert!(listed(0).await.is_empty());
}

struct DropSignal(Option<mpsc::UnboundedSender<&'static str>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send("cancelled");
        }
    }
}

/// An attempt that runs over the queue's timeout is cancelled and retried.
pub async fn timed_out_job_is_cancelled_and_retried(h: &impl Harness) {
    let q = QueueConfig::new("slow")
        .with_timeout(Duration::from_millis(300))
        .with_retry(quick_retry(3, Duration::from_secs(1), 2.0));
    let svc = h.open(catalog(q)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    svc.enqueue("slow", NewJob::new(json!({})).with_job_id("slow-1"))
        .await
        .unwrap();
    let worker = svc
        .start_worker(
            "slow",
            handler_fn(move |ctx| {
                let tx = tx.clone();
                async move {
                    if ctx.attempt() == 1 {
                        tx.send("started").unwrap();
                        let _guard = DropSignal(Some(tx.clone()));
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        tx.send("finished").unwrap();
                    } else {
                        tx.send("retried").unwrap();
                    }
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    assert_eq!(recv(&mut rx, "first attempt").await, "started");
    assert_eq!(recv(&mut rx, "cancellation").await, "cancelled");
    assert_eq!(recv(&mut rx, "second attempt").await, "retried");
    drain(worker).await;
    let job = svc.job("slow", "slow-1").await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.attempts, 2);
    assert!(job.last_error.unwrap_or_default().contains("timed out"));
}

/// Enqueueing the same job id while it is pending or recently done gives the existing
/// job and it runs once.
pub async fn duplicate_job_ids_run_once(h: &impl Harness) {
    let svc = h
        .open(catalog(QueueConfig::new("dedupe").with_concurrency(1)))
        .await;
    let first = svc
        .enqueue("dedupe", NewJob::new(json!({ "v": 1 })).with_job_id("order-1"))
        .await
        .unwrap();
    let second = svc
        .enqueue("dedupe", NewJob::new(json!({ "v": 2 })).with_job_id("order-1"))
        .await
        .unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(second.job_id, "order-1");
    assert_eq!(second.state, JobState::Pending);
    let runs: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = runs.clone();
    let handler = handler_fn(move |ctx| {
        let (r, tx) = (r.clone(), tx.clone());
        async move {
            r.lock()
                .unwrap()
                .push((ctx.job_id().to_owned(), ctx.payload_json().clone()));
            tx.send(ctx.job_id().to_owned()).unwrap();
            Ok(())
        }
    });
    let worker = svc.start_worker("dedupe", handler.clone()).await.unwrap();
    assert_eq!(recv(&mut rx, "order-1").await, "order-1");
    drain(worker).await;
    let third = svc
        .enqueue("dedupe", NewJob::new(json!({ "v": 3 })).with_job_id("order-1"))
        .await
        .unwrap();
    assert!(!third.created, "a recently done id must still de-duplicate");
    assert_eq!(third.state, JobState::Done);
    // FIFO with concurrency 1: a duplicate enqueued above would run before this sentinel.
    svc.enqueue("dedupe", NewJob::new(json!({})).with_job_id("sentinel"))
        .await
        .unwrap();
    let worker = svc.start_worker("dedupe", handler).await.unwrap();
    assert_eq!(recv(&mut rx, "sentinel").await, "sentinel");
    drain(worker).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(
        runs,
        vec![
            ("order-1".to_owned(), json!({ "v": 1 })),
            ("sentinel".to_owned(), json!({}))
        ]
    );
    assert_eq!(svc.stats("dedupe").await.unwrap().done, 2);

    // With no window, a done job is forgotten at once: its id runs again.
    let svc = h
        .open(catalog(
            QueueConfig::new("no-window").with_dedupe_window(Duration::ZERO),
        ))
        .await;
    for v in [1, 2] {
        let job = NewJob::new(json!({ "v": v })).with_job_id("order-2");
        assert!(svc.enqueue("no-window", job).await.unwrap().created, "run {v}");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let worker = svc
            .start_worker("no-window", reporting(tx, |ctx| ctx.payload_json().clone()))
            .await
            .unwrap();
        assert_eq!(recv(&mut rx, "order-2").await, json!({ "v": v }));
        drain(worker).await; // the outcome is recorded
        assert!(
            svc.job("no-window", "order-2").await.unwrap().is_none(),
            "run {v}"
        );
    }
    assert_eq!(svc.stats("no-window").await.unwrap().done, 2);
}

/// A delayed job does not run before its delay; an immediate job enqueued after it
/// runs first. A delay over [`MAX_DELAY`] is `InvalidInput`.
pub async fn delayed_jobs_do_not_run_early(h: &impl Harness) {
    let svc = h.open(catalog(QueueConfig::new("later"))).await;
    // A delay past `MAX_DELAY` ("park it for ever") is refused and stores nothing.
    let too_far = chrono::Utc::now() + chrono::TimeDelta::days(3651);
    for job in [
        NewJob::new(json!({})).with_delay(Duration::MAX),
        NewJob::new(json!({})).with_delay(MAX_DELAY + Duration::from_secs(1)),
        NewJob::new(json!({})).with_job_id("too-far").with_run_at(too_far),
    ] {
        let err = svc.enqueue("later", job).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("at most 3650 days"), "{err}");
    }
    assert!(svc.job("later", "too-far").await.unwrap().is_none());
    assert_eq!(svc.stats("later").await.unwrap().pending, 0);
    let enqueued_at = Instant::now();
    svc.enqueue(
        "later",
        NewJob::new(json!({}))
            .with_job_id("late")
            .with_delay(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    // Due at a moment 3 s from now by the wall clock, which the queue's clock reads;
    // `window` is the real time from reading it to the enqueue's end, by which the
    // queue may count the delay short (a paused test clock does not see it pass).
    let (at_sent, wall) = (Instant::now(), std::time::Instant::now());
    svc.enqueue(
        "later",
        NewJob::new(json!({}))
            .with_job_id("at")
            .with_run_at(chrono::Utc::now() + chrono::TimeDelta::seconds(3)),
    )
    .await
    .unwrap();
    let window = wall.elapsed();
    svc.enqueue("later", NewJob::new(json!({})).with_job_id("now"))
        .await
        .unwrap();
    assert_eq!(svc.stats("later").await.unwrap().pending, 3);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = svc
        .start_worker(
            "later",
            reporting(tx, |ctx| (ctx.job_id().to_owned(), Instant::now())),
        )
        .await
        .unwrap();
    let (first, _) = recv(&mut rx, "the immediate job").await;
    assert_eq!(first, "now");
    let (second, ran_at) = recv(&mut rx, "the delayed job").await;
    assert_eq!(second, "late");
    let waited = ran_at - enqueued_at;
    assert!(
        waited >= Duration::from_secs(2),
        "delayed job ran after only {waited:?}"
    );
    let (third, ran_at) = recv(&mut rx, "the job due at a moment").await;
    assert_eq!(third, "at");
    let waited = ran_at - at_sent;
    assert!(
        waited + window >= Duration::from_secs(3),
        "the job due in 3 s ran after only {waited:?} (+ {window:?})"
    );
    drain(worker).await;
}

/// A workflow run started by `{name}.requested` that fails in step 3 on its first
/// attempt re-runs only step 3 and what follows; earlier step results are reused.
pub async fn workflow_resumes_at_the_failed_step(h: &impl Harness) {
    let q = QueueConfig::workflow("onboard").with_retry(quick_retry(4, Duration::from_secs(1), 2.0));
    let svc = h
        .open(catalog(q.clone()).with_queue(QueueConfig::new("plain")).unwrap())
        .await;
    let err = svc
        .emit("plain.requested", NewJob::new(json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(svc.emit("onboard.started", NewJob::new(json!({}))).await.is_err());

    let run = svc
        .emit(
            "onboard.requested",
            NewJob::new(json!({ "user": "u1" })).with_job_id("run-1"),
        )
        .await
        .unwrap();
    assert_eq!(run.job_id, "run-1");
    let counts: Arc<Mutex<BTreeMap<&'static str, u32>>> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let c = counts.clone();
    let worker = svc
        .start_worker(
            "onboard",
            handler_fn(move |ctx| {
                let (c, tx) = (c.clone(), tx.clone());
                async move {
                    let bump = |name: &'static str| *c.lock().unwrap().entry(name).or_insert(0) += 1;
                    let user: String = ctx
                        .step("load-user", || async {
                            bump("load-user");
                            Ok(ctx.payload_json()["user"].as_str().unwrap_or_default().to_owned())
                        })
                        .await?;
                    let account: u64 = ctx
                        .step("create-account", || async {
                            bump("create-account");
                            Ok(42)
                        })
                        .await?;
                    let email: String = ctx
                        .step("send-email", || async {
                            bump("send-email");
                            if ctx.attempt() == 1 {
                                Err(JobError::retryable("mail provider down"))
                            } else {
                                Ok(format!("sent to {user} for account {account}"))
                            }
                        })
                        .await?;
                    ctx.step("finish", || async {
                        bump("finish");
                        Ok(())
                    })
                    .await?;
                    tx.send((ctx.attempt(), email)).unwrap();
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let (attempt, email) = recv(&mut rx, "the workflow to finish").await;
    drain(worker).await;
    assert_eq!(attempt, 2);
    assert_eq!(email, "sent to u1 for account 42");
    let counts = counts.lock().unwrap().clone();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("load-user", 1),
            ("create-account", 1),
            ("send-email", 2),
            ("finish", 1)
        ])
    );
    let status = svc.job("onboard", "run-1").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Done);
    assert_eq!(status.attempts, 2);
}

/// A step name the run already completed is refused with a permanent error naming it,
/// not answered with the first result: a loop calling `step("send", ..)` once per
/// recipient must not skip every recipient but the first.
pub async fn a_step_name_completed_twice_in_one_run_is_refused(h: &impl Harness) {
    let q = QueueConfig::workflow("loop").with_retry(quick_retry(3, Duration::from_secs(1), 1.0));
    let svc = h.open(catalog(q)).await;
    svc.enqueue("loop", NewJob::new(json!({})).with_job_id("loop-1"))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = svc
        .start_worker(
            "loop",
            handler_fn(move |ctx| {
                let tx = tx.clone();
                async move {
                    let mut sent = Vec::new();
                    let mut result = Ok(());
                    for to in ["ada", "bob"] {
                        match ctx.step("send", || async { Ok(to.to_owned()) }).await {
                            Ok(to) => sent.push(to),
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    tx.send((sent, result.clone())).unwrap();
                    result
                }
            }),
        )
        .await
        .unwrap();
    let (sent, result) = recv(&mut rx, "the run").await;
    drain(worker).await;
    assert_eq!(sent, ["ada"]);
    let err = result.unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(
        err.message().contains("step \"send\" already completed"),
        "{err:?}"
    );
    let job = svc.job("loop", "loop-1").await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Dead, 1), "{job:?}");
}

/// Panics in attempt 1 before returning its future, in attempt 2 while it runs, and
/// reports attempt 3 (see [`a_panicking_handler_is_retried`]).
struct Panicky(mpsc::UnboundedSender<(String, u32)>);

impl JobHandler for Panicky {
    fn handle<'life0, 'async_trait>(
        &'life0 self,
        ctx: JobContext,
    ) -> BoxFuture<'async_trait, std::result::Result<(), JobError>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        assert!(
            ctx.attempt() != 1,
            "a handler that panics before returning its future"
        );
        Box::pin(async move {
            assert!(ctx.attempt() != 2, "a handler that panics while it runs");
            self.0.send((ctx.job_id().to_owned(), ctx.attempt())).unwrap();
            Ok(())
        })
    }
}

/// A handler that panics, before returning its future or while it runs, fails that
/// attempt as an error does: the job is retried and then runs, and the worker goes on
/// to the next job.
pub async fn a_panicking_handler_is_retried(h: &impl Harness) {
    let q = QueueConfig::new("fragile")
        .with_concurrency(1)
        .with_retry(quick_retry(3, Duration::from_secs(1), 1.0));
    let svc = h.open(catalog(q)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = svc.start_worker("fragile", Arc::new(Panicky(tx))).await.unwrap();
    for id in ["fragile-1", "fragile-2"] {
        svc.enqueue("fragile", NewJob::new(json!({})).with_job_id(id))
            .await
            .unwrap();
        assert_eq!(recv(&mut rx, "the third attempt").await, (id.to_owned(), 3));
    }
    drain(worker).await;
    for id in ["fragile-1", "fragile-2"] {
        let job = svc.job("fragile", id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Done, 3), "{job:?}");
    }
}

/// Shutting down with jobs in flight past the deadline re-queues them; a new worker
/// then processes every job: none is lost.
pub async fn graceful_shutdown_loses_no_jobs(h: &impl Harness) {
    let svc = h
        .open(catalog(QueueConfig::new("drain").with_concurrency(2)))
        .await;
    let mut ids = BTreeSet::new();
    for n in 0..6 {
        ids.insert(
            svc.enqueue("drain", NewJob::new(json!({ "n": n })))
                .await
                .unwrap()
                .job_id,
        );
    }
    let block = Arc::new(AtomicBool::new(true));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let b = block.clone();
    let handler = handler_fn(move |ctx| {
        let (b, tx) = (b.clone(), tx.clone());
        async move {
            if b.load(Ordering::SeqCst) {
                tx.send(None).unwrap();
                std::future::pending::<()>().await;
            }
            tx.send(Some(ctx.job_id().to_owned())).unwrap();
            Ok(())
        }
    });
    let worker = svc.start_worker("drain", handler.clone()).await.unwrap();
    assert_eq!(recv(&mut rx, "a blocked job").await, None);
    assert_eq!(recv(&mut rx, "a blocked job").await, None);
    assert_eq!(svc.stats("drain").await.unwrap().running, 2);
    let report = worker.shutdown(Duration::from_millis(200)).await.unwrap();
    assert!(!report.drained);
    assert!(report.requeued >= 2, "{report:?}");
    // The interrupted jobs are pending again, not running.
    let stats = svc.stats("drain").await.unwrap();
    assert_eq!((stats.done, stats.running, stats.pending), (0, 0, 6), "{stats:?}");
    for id in &ids {
        let job = svc.job("drain", id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Pending, "{job:?}");
    }

    block.store(false, Ordering::SeqCst);
    let worker = svc.start_worker("drain", handler).await.unwrap();
    let mut done = BTreeSet::new();
    while done.len() < ids.len() {
        if let Some(id) = recv(&mut rx, "a job after restart").await {
            done.insert(id);
        }
    }
    drain(worker).await;
    assert_eq!(done, ids);
    // The re-delivered jobs were counted as running once per delivery, and no more.
    let stats = svc.stats("drain").await.unwrap();
    assert_eq!((stats.done, stats.pending, stats.running), (6, 0, 0), "{stats:?}");
}

/// A graceful shutdown with jobs in flight stops fetching and lets them finish within
/// its deadline: they are done, nothing is re-queued, and a job still waiting for a
/// slot stays pending, untouched.
pub async fn jobs_in_flight_finish_during_a_graceful_shutdown(h: &impl Harness) {
    let svc = h
        .open(catalog(QueueConfig::new("finish").with_concurrency(2)))
        .await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let job = NewJob::new(json!({ "n": n })).with_job_id(format!("finish-{n}"));
        ids.push(svc.enqueue("finish", job).await.unwrap().job_id);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = handler_fn(move |ctx| {
        let tx = tx.clone();
        async move {
            tx.send(ctx.job_id().to_owned()).unwrap();
            // The job's own work: still under way when the shutdown begins (unless the
            // test is held up this long between the second start and the shutdown).
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        }
    });
    let worker = svc.start_worker("finish", handler).await.unwrap();
    let mut started = BTreeSet::new();
    started.insert(recv(&mut rx, "a first job").await);
    started.insert(recv(&mut rx, "a second job").await);
    let report = worker.shutdown(WAIT).await.unwrap();
    assert!(report.drained && report.requeued == 0, "{report:?}");
    for id in &started {
        let job = svc.job("finish", id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Done, "{job:?}");
    }
    let waiting: Vec<&String> = ids.iter().filter(|id| !started.contains(*id)).collect();
    assert_eq!(waiting.len(), 1, "{started:?}");
    let job = svc.job("finish", waiting[0]).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Pending, 0), "{job:?}");
    assert!(rx.try_recv().is_err(), "no job started after the shutdown began");
    let stats = svc.stats("finish").await.unwrap();
    assert_eq!((stats.done, stats.running, stats.pending), (2, 0, 1), "{stats:?}");
}

/// An attempt cut off by a shutdown past its deadline does not count: a job on its only
/// attempt runs again afterwards, as attempt 1, instead of being dead-lettered.
pub async fn an_attempt_cut_off_by_a_shutdown_does_not_count(h: &impl Harness) {
    let retry = RetryPolicy::default().with_max_attempts(1);
    let svc = h.open(catalog(QueueConfig::new("once").with_retry(retry))).await;
    let id = svc.enqueue("once", NewJob::new(json!({}))).await.unwrap().job_id;
    let block = Arc::new(AtomicBool::new(true));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let b = block.clone();
    let handler = handler_fn(move |ctx| {
        let (b, tx) = (b.clone(), tx.clone());
        async move {
            tx.send(ctx.attempt()).unwrap();
            if b.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    });
    let worker = svc.start_worker("once", handler.clone()).await.unwrap();
    assert_eq!(recv(&mut rx, "the first attempt").await, 1);
    let report = worker.shutdown(Duration::from_millis(100)).await.unwrap();
    assert_eq!(report.requeued, 1, "{report:?}");
    block.store(false, Ordering::SeqCst);
    let worker = svc.start_worker("once", handler).await.unwrap();
    assert_eq!(recv(&mut rx, "the job, again").await, 1, "the same attempt");
    drain(worker).await;
    let job = svc.job("once", &id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Done, 1), "{job:?}");
}

/// A step saved by an attempt that is no longer its job's current one (here, a task
/// the first attempt spawned with its context, still running after that attempt
/// failed and the job was delivered again) is refused, so it cannot overwrite the
/// current attempt's results; the current attempt's step then runs and is kept.
pub async fn a_stale_attempt_cannot_save_step_results(h: &impl Harness) {
    stale_step_is_refused(h, FirstAttempt::Fails).await;
}

/// The same when the first attempt was cut off by a shutdown past its deadline: the
/// job is delivered again as the same attempt (a cut-off attempt does not count), and
/// the leftover of the first delivery still must not save.
pub async fn a_step_of_an_attempt_cut_off_by_a_shutdown_is_refused(h: &impl Harness) {
    stale_step_is_refused(h, FirstAttempt::CutOff).await;
}

/// How the first delivery of [`stale_step_is_refused`]'s job ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FirstAttempt {
    Fails,
    CutOff,
}

async fn stale_step_is_refused(h: &impl Harness, first: FirstAttempt) {
    let q = QueueConfig::workflow("stale").with_retry(quick_retry(2, Duration::from_millis(10), 1.0));
    let svc = h.open(catalog(q)).await;
    // The first delivery leaves a task behind, released by the second delivery.
    let release: Arc<Mutex<Option<oneshot::Sender<()>>>> = Arc::default();
    let (stale_tx, stale_rx) = oneshot::channel::<std::result::Result<u32, String>>();
    let stale_tx = Arc::new(Mutex::new(Some(stale_tx)));
    let stale_rx = Arc::new(tokio::sync::Mutex::new(Some(stale_rx)));
    let deliveries = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = handler_fn(move |ctx| {
        let (release, stale_tx, stale_rx, tx) =
            (release.clone(), stale_tx.clone(), stale_rx.clone(), tx.clone());
        let (deliveries, started_tx) = (deliveries.clone(), started_tx.clone());
        async move {
            if deliveries.fetch_add(1, Ordering::SeqCst) == 0 {
                let (go, wait) = oneshot::channel::<()>();
                *release.lock().unwrap() = Some(go);
                let stale = ctx.clone();
                tokio::spawn(async move {
                    let _ = wait.await;
                    let saved = stale.step("x", || async { Ok::<u32, JobError>(1) }).await;
                    let reply = stale_tx.lock().unwrap().take().unwrap();
                    let _ = reply.send(saved.map_err(|e| e.message().to_owned()));
                });
                started_tx.send(()).unwrap();
                return match first {
                    FirstAttempt::Fails => Err(JobError::retryable("the first attempt fails")),
                    FirstAttempt::CutOff => std::future::pending().await,
                };
            }
            let go = release.lock().unwrap().take().expect("the first delivery ran");
            go.send(()).unwrap();
            let stale = stale_rx.lock().await.take().unwrap().await.unwrap();
            let current = ctx.step("x", || async { Ok::<u32, JobError>(2) }).await?;
            tx.send((stale, current)).unwrap();
            Ok(())
        }
    });
    svc.enqueue("stale", NewJob::new(json!({})).with_job_id("stale-1"))
        .await
        .unwrap();
    let mut worker = svc.start_worker("stale", handler.clone()).await.unwrap();
    recv(&mut started, "the first delivery").await;
    if first == FirstAttempt::CutOff {
        let report = worker.shutdown(Duration::from_millis(100)).await.unwrap();
        assert_eq!(report.requeued, 1, "{report:?}");
        worker = svc.start_worker("stale", handler).await.unwrap();
    }
    let (stale, current) = recv(&mut rx, "the second delivery").await;
    let refused = stale.expect_err("the stale attempt's step result must not be saved");
    assert!(refused.contains("no longer the current attempt"), "{refused}");
    assert_eq!(current, 2, "the current attempt ran its step itself");
    drain(worker).await;
    assert_eq!(
        svc.job("stale", "stale-1").await.unwrap().unwrap().state,
        JobState::Done
    );
}

/// Generates one `#[tokio::test]` per conformance case.
///
/// `queue_conformance_tests!(make_harness(), paused)` runs each case on a
/// current-thread runtime with tokio's clock paused (for the in-process queue);
/// `queue_conformance_tests!(make_harness(), realtime)` on a multi-thread runtime in
/// real time (for a real server). `make_harness()` is an async expression giving a
/// [`Harness`].
#[macro_export]
macro_rules! queue_conformance_tests {
    ($make:expr, paused) => {
        $crate::queue_conformance_tests!(@cases $make, tokio::test(start_paused = true));
    };
    ($make:expr, realtime) => {
        $crate::queue_conformance_tests!(@cases $make, tokio::test(flavor = "multi_thread", worker_threads = 2));
    };
    (@cases $make:expr, $attr:meta) => {
        $crate::queue_conformance_tests!(@each $make, $attr,
            processes_jobs_with_metadata,
            payloads_read_back_exactly,
            concurrency_is_never_exceeded,
            failing_job_backs_off_then_dead_letters_and_can_be_retried,
            a_job_backing_off_leaves_its_slot_free,
            permanent_error_dead_letters_at_once,
            timed_out_job_is_cancelled_and_retried,
            duplicate_job_ids_run_once,
            delayed_jobs_do_not_run_early,
            workflow_resumes_at_the_failed_step,
            a_step_name_completed_twice_in_one_run_is_refused,
            a_panicking_handler_is_retried,
            graceful_shutdown_loses_no_jobs,
            jobs_in_flight_finish_during_a_graceful_shutdown,
            an_attempt_cut_off_by_a_shutdown_does_not_count,
            a_stale_attempt_cannot_save_step_results,
            a_step_of_an_attempt_cut_off_by_a_shutdown_is_refused
        );
    };
    (@each $make:expr, $attr:meta, $($case:ident),*) => {
        $(
            #[$attr]
            async fn $case() {
                let harness = $make.await;
                $crate::conformance::run_case(&harness, |h| Box::pin($crate::conformance::$case(h))).await;
            }
        )*
    };
}
