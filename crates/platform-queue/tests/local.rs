//! The behaviour suite against the in-process [`LocalQueue`], on tokio's paused clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::Arc;

use async_trait::async_trait;
use platform_core::system_clock;
use platform_queue::conformance::Harness;
use platform_queue::{LocalQueue, QueueCatalog, QueueService};

struct Local;

#[async_trait]
impl Harness for Local {
    async fn open(&self, catalog: QueueCatalog) -> Arc<dyn QueueService> {
        Arc::new(LocalQueue::from_parts(catalog, system_clock()))
    }

    async fn cleanup(&self) {}
}

async fn harness() -> Local {
    Local
}

platform_queue::queue_conformance_tests!(harness(), paused);

#[tokio::test]
async fn local_queue_is_usable_through_dyn_job_queue() {
    use platform_queue::{DynJobQueue, JobQueueExt, NewJob};
    let q: DynJobQueue = Arc::new(LocalQueue::new());
    let out = q
        .enqueue_json("email", &serde_json::json!({"to": "a@b.c"}))
        .await
        .unwrap();
    assert!(out.created);
    let again = q
        .enqueue(
            "email",
            NewJob::new(serde_json::json!({})).with_job_id(out.job_id.clone()),
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(q.stats("email").await.unwrap().pending, 1);
    assert!(format!("{q:?}").contains("email"));
}

/// Dropping a `WorkerHandle` leaves its worker running, as documented.
#[tokio::test]
async fn a_dropped_handle_leaves_its_worker_running() {
    use platform_queue::conformance::{recv, reporting};
    use platform_queue::{JobQueue, JobWorkers, NewJob};
    let q = LocalQueue::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = q
        .start_worker("email", reporting(tx, |ctx| ctx.job_id().to_owned()))
        .await
        .unwrap();
    drop(worker);
    let job = q
        .enqueue("email", NewJob::new(serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx, "a job enqueued after the drop").await, job.job_id);
}

/// A worker whose runtime is dropped mid-job (its task dropped, not cancelled by
/// `shutdown` or `kill`) puts the job back on the queue, its attempt counted, instead
/// of leaving it `running` for ever; a worker on another runtime then runs it.
#[test]
fn a_job_whose_runtime_is_dropped_goes_back_on_the_queue() {
    use platform_queue::conformance::{recv, reporting};
    use platform_queue::{JobQueue, JobState, JobWorkers, NewJob, handler_fn};
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let q = LocalQueue::new();
    let first = runtime();
    first.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = q
            .start_worker(
                "email",
                handler_fn(move |_| {
                    let tx = tx.clone();
                    async move {
                        tx.send(()).unwrap();
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                }),
            )
            .await
            .unwrap();
        q.enqueue(
            "email",
            NewJob::new(serde_json::json!({})).with_job_id("stranded"),
        )
        .await
        .unwrap();
        recv(&mut rx, "the job to start").await;
        drop(worker);
    });
    drop(first);
    runtime().block_on(async {
        let job = q.job("email", "stranded").await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Pending, 1), "{job:?}");
        assert_eq!(q.stats("email").await.unwrap().running, 0);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = q
            .start_worker(
                "email",
                reporting(tx, |ctx| (ctx.job_id().to_owned(), ctx.attempt())),
            )
            .await
            .unwrap();
        assert_eq!(
            recv(&mut rx, "the job to run again").await,
            ("stranded".to_owned(), 2)
        );
        assert!(
            worker
                .shutdown(std::time::Duration::from_secs(5))
                .await
                .unwrap()
                .drained
        );
    });
}

/// Starts a worker on `queue` whose handler reports each attempt, then blocks its
/// runtime thread (as synchronous I/O in a handler does) until released, then
/// succeeds; enqueues job "x" and waits for its attempt. Returns the worker, the
/// attempts' receiver (closed once the worker's tasks have all ended) and the release.
async fn blocked_attempt(
    q: &LocalQueue,
    queue: &str,
) -> (
    platform_queue::WorkerHandle,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    std::sync::mpsc::Sender<()>,
) {
    use platform_queue::conformance::recv;
    use platform_queue::{JobQueue, JobWorkers, NewJob, handler_fn};
    let (started, mut attempts) = tokio::sync::mpsc::unbounded_channel();
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = Arc::new(std::sync::Mutex::new(blocked));
    let worker = q
        .start_worker(
            queue,
            handler_fn(move |_| {
                let (started, blocked) = (started.clone(), blocked.clone());
                async move {
                    started.send(()).unwrap();
                    blocked.lock().unwrap().recv().unwrap();
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    q.enqueue(queue, NewJob::new(serde_json::json!({})).with_job_id("x"))
        .await
        .unwrap();
    recv(&mut attempts, "the blocking attempt").await;
    (worker, attempts, release)
}

/// The outcome of a delivery a `kill` took back is not recorded, even when the job
/// runs again under the same attempt number (here: retried from the dead list). A
/// killed worker's handler blocked in a system call outlives the kill on a
/// multi-thread runtime; its late success must not finish the new run, whose own
/// outcome stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_killed_deliverys_late_outcome_is_ignored() {
    use platform_core::RetryPolicy;
    use platform_queue::conformance::recv;
    use platform_queue::{JobError, JobQueue, JobState, JobWorkers, NewJob, QueueConfig, handler_fn};
    let catalog = QueueCatalog::empty()
        .with_queue(
            QueueConfig::new("once")
                .with_concurrency(1)
                .with_retry(RetryPolicy::default().with_max_attempts(1)),
        )
        .unwrap();
    let q = LocalQueue::from_parts(catalog, system_clock());
    // Worker A: blocks its thread until released, then succeeds.
    let (a, mut a_started, release_a) = blocked_attempt(&q, "once").await;
    a.kill();
    // Worker B: the job, back with its only attempt used, is dead-lettered; the marker
    // enqueued behind it runs, then "x" runs again from the dead list and fails.
    let (seen, mut b_seen) = tokio::sync::mpsc::unbounded_channel();
    let release_b = Arc::new(tokio::sync::Notify::new());
    let gate = release_b.clone();
    let b = q
        .start_worker(
            "once",
            handler_fn(move |ctx| {
                let (seen, gate) = (seen.clone(), gate.clone());
                async move {
                    seen.send((ctx.job_id().to_owned(), ctx.attempt())).unwrap();
                    if ctx.job_id() == "marker" {
                        return Ok(());
                    }
                    gate.notified().await;
                    Err(JobError::permanent("B's run failed"))
                }
            }),
        )
        .await
        .unwrap();
    q.enqueue("once", NewJob::new(serde_json::json!({})).with_job_id("marker"))
        .await
        .unwrap();
    assert_eq!(recv(&mut b_seen, "the marker").await, ("marker".to_owned(), 1));
    assert_eq!(q.job("once", "x").await.unwrap().unwrap().state, JobState::Dead);
    q.retry_dead("once", "x").await.unwrap();
    assert_eq!(recv(&mut b_seen, "x again").await, ("x".to_owned(), 1));
    // A's handler returns now, as attempt 1 of "x": not B's delivery. Its task ends
    // after recording (or not) its outcome, dropping the last handle on A's handler
    // and with it the sender of `a_started`: that is when B may finish.
    release_a.send(()).unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), a_started.recv())
        .await
        .expect("worker A's task never ended");
    assert!(closed.is_none(), "A ran only once");
    release_b.notify_one();
    assert!(
        b.shutdown(std::time::Duration::from_secs(30))
            .await
            .unwrap()
            .drained
    );
    let job = q.job("once", "x").await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Dead, "B's outcome stands: {job:?}");
    assert_eq!(job.last_error.as_deref(), Some("B's run failed"));
}

/// A job blocked in synchronous code past the shutdown's deadline (it never yields, so
/// it cannot be cancelled) does not hold up the shutdown: the shutdown re-queues it
/// with its attempt uncounted and returns. The blocked attempt's late success, when it
/// finally returns, is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_blocked_in_synchronous_code_does_not_hold_up_shutdown() {
    use platform_queue::{JobQueue, JobState, QueueConfig};

    /// Releases the blocked handler when dropped, also when an assertion fails: a
    /// runtime thread left blocked would hang the test instead of failing it.
    struct Release(std::sync::mpsc::Sender<()>);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    let catalog = QueueCatalog::empty()
        .with_queue(QueueConfig::new("sync").with_concurrency(1))
        .unwrap();
    let q = LocalQueue::from_parts(catalog, system_clock());
    let (worker, mut attempt_started, release) = blocked_attempt(&q, "sync").await;
    let release = Release(release);
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        worker.shutdown(std::time::Duration::from_millis(50)),
    )
    .await
    .expect("the shutdown waited for a job blocked in synchronous code")
    .unwrap();
    assert!(!report.drained, "{report:?}");
    assert_eq!(report.requeued, 1, "{report:?}");
    let job = q.job("sync", "x").await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Pending, 0), "{job:?}");
    // The blocked attempt returns now; its task ends after recording (or not) its
    // success, dropping the last handle on the handler and with it the sender of
    // `attempt_started`.
    drop(release);
    // Closed (`None`) once the blocked attempt's task has ended.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), attempt_started.recv())
        .await
        .expect("the blocked attempt's task never ended");
    let job = q.job("sync", "x").await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Pending, 0),
        "the late success is ignored: {job:?}"
    );
}

/// A job whose every attempt was cut off (its worker killed each time) is
/// dead-lettered at its next delivery instead of running once more; the job behind it
/// then runs.
#[tokio::test]
async fn a_delivery_past_the_last_attempt_dead_letters_the_job() {
    use platform_core::RetryPolicy;
    use platform_queue::conformance::recv;
    use platform_queue::{JobQueue, JobState, JobWorkers, NewJob, QueueConfig};
    let catalog = QueueCatalog::empty()
        .with_queue(
            QueueConfig::new("q")
                .with_concurrency(1)
                .with_retry(RetryPolicy::default().with_max_attempts(2)),
        )
        .unwrap();
    let q = LocalQueue::from_parts(catalog, system_clock());
    let enqueue = |id: &'static str| q.enqueue("q", NewJob::new(serde_json::json!({})).with_job_id(id));
    enqueue("poison").await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Reports each job it starts; never finishes "poison".
    let handler = platform_queue::handler_fn(move |ctx| {
        let tx = tx.clone();
        async move {
            tx.send((ctx.job_id().to_owned(), ctx.attempt())).unwrap();
            if ctx.job_id() == "poison" {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    });
    for attempt in 1..=2 {
        let worker = q.start_worker("q", handler.clone()).await.unwrap();
        assert_eq!(recv(&mut rx, "poison").await, ("poison".to_owned(), attempt));
        worker.kill();
    }
    // Behind the re-queued job (a killed worker's jobs go to the back, as on Redis).
    enqueue("after").await.unwrap();
    let worker = q.start_worker("q", handler).await.unwrap();
    assert_eq!(recv(&mut rx, "the next job").await, ("after".to_owned(), 1));
    let job = q.job("q", "poison").await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Dead, 2), "{job:?}");
    assert!(job.last_error.unwrap_or_default().contains("cut off"));
    worker.shutdown(std::time::Duration::from_secs(5)).await.unwrap();
}

/// A done job is kept for its de-duplication window and then forgotten, as Redis
/// expires its record: `job` stops finding it and its id runs again.
#[tokio::test(start_paused = true)]
async fn a_done_job_is_forgotten_after_its_window() {
    use std::time::Duration;

    use platform_queue::conformance::{recv, reporting};
    use platform_queue::{JobQueue, JobState, JobWorkers, NewJob, QueueConfig};
    let window = Duration::from_secs(60);
    let catalog = QueueCatalog::empty()
        .with_queue(QueueConfig::new("q").with_dedupe_window(window))
        .unwrap();
    let q = LocalQueue::from_parts(catalog, system_clock());
    let job = || NewJob::new(serde_json::json!({})).with_job_id("once");
    for run in 1..=2 {
        assert!(q.enqueue("q", job()).await.unwrap().created, "run {run}");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = q
            .start_worker("q", reporting(tx, |ctx| ctx.job_id().to_owned()))
            .await
            .unwrap();
        assert_eq!(recv(&mut rx, "the job").await, "once");
        assert!(worker.shutdown(window).await.unwrap().drained);
        tokio::time::advance(window - Duration::from_secs(1)).await;
        let kept = q.job("q", "once").await.unwrap().map(|j| j.state);
        assert_eq!(kept, Some(JobState::Done), "run {run}: inside the window");
        assert!(!q.enqueue("q", job()).await.unwrap().created, "run {run}");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            q.job("q", "once").await.unwrap().is_none(),
            "run {run}: past the window"
        );
    }
}

/// Runs one workflow job whose only step returns what `result` makes and returns the
/// job once its worker stopped: the step must have failed.
async fn job_after_step<T, F>(job_id: &str, result: F) -> platform_queue::JobInfo
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    F: Fn() -> T + Send + Sync + 'static,
{
    use platform_queue::{JobQueue, JobWorkers, NewJob, QueueConfig};
    let catalog = QueueCatalog::empty()
        .with_queue(QueueConfig::workflow("flow"))
        .unwrap();
    let q = LocalQueue::from_parts(catalog, system_clock());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = Arc::new(result);
    let handler = platform_queue::handler_fn(move |ctx| {
        let (tx, result) = (tx.clone(), result.clone());
        async move {
            let stepped = ctx.step("only", || async move { Ok(result()) }).await;
            tx.send(stepped.is_err()).unwrap();
            stepped.map(|_| ())
        }
    });
    q.enqueue("flow", NewJob::new(serde_json::json!({})).with_job_id(job_id))
        .await
        .unwrap();
    let worker = q.start_worker("flow", handler).await.unwrap();
    let failed = platform_queue::conformance::recv(&mut rx, "the step").await;
    assert!(failed, "the step must fail");
    worker.shutdown(std::time::Duration::from_secs(5)).await.unwrap();
    q.job("flow", job_id).await.unwrap().unwrap()
}

/// A step result that does not read back from JSON is a permanent error on the attempt
/// that made it, not a stored value that would fail every later attempt: a NaN float
/// (stored as null), and JSON nested deeper than serde_json parses (128 levels; Redis
/// stores such a result as text that a later attempt cannot parse).
#[tokio::test]
async fn a_step_result_that_does_not_read_back_is_refused() {
    let nested = || (0..200).fold(serde_json::json!(1), |inner, _| serde_json::json!([inner]));
    for job in [
        job_after_step("nan", || f64::NAN).await,
        job_after_step("deep", nested).await,
    ] {
        assert_eq!(
            (job.state, job.attempts),
            (platform_queue::JobState::Dead, 1),
            "{job:?}"
        );
        let error = job.last_error.unwrap_or_default();
        assert!(error.contains("does not read back"), "{error}");
    }
}
