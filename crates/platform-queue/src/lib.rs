#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
mod context;
pub mod memory;
pub mod redis;
pub mod types;
mod worker;

pub use config::{MAX_CONCURRENCY, MAX_DELAY, QueueCatalog, QueueConfig};
pub use context::{JobContext, job_idempotency_key};
pub use memory::LocalQueue;
pub use platform_core::{Error, ErrorKind, Result, RetryPolicy};
pub use redis::{RedisQueue, RedisQueueBuilder};
pub use types::{
    Enqueued, JobError, JobInfo, JobMeta, JobState, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH, NewJob, QueueStats,
    UnreadableTask,
};
pub use worker::{ShutdownReport, WorkerHandle};

/// Locks `m`; a panic while it was locked leaves its value usable (every value this
/// crate locks stays consistent between statements).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The enqueue side of a job queue: put jobs on named queues, look at them, and
/// manage dead letters. Callers hold a [`DynJobQueue`].
///
/// Queue names come from the implementation's [`QueueCatalog`]; a name that is not in
/// the catalogue is rejected with `InvalidInput`.
#[async_trait]
pub trait JobQueue: Send + Sync + fmt::Debug + 'static {
    /// Enqueues `job` on `queue`.
    ///
    /// # Behavior
    /// - The job carries the metadata envelope: `product` and `version` from the
    ///   request, `timestamp` from the queue's clock at enqueue time.
    /// - Without a job id, a fresh unique id is assigned and `created` is true.
    /// - With a job id that is pending, running, retrying, dead, or done within the
    ///   queue's de-duplication window, nothing is enqueued: the existing job's id and
    ///   state are returned with `created` false, and the job runs only once.
    /// - A delayed job (`with_delay`/`with_run_at`) does not run before its time.
    /// - An unknown queue, an empty or over-long job id (more than 128 bytes), a payload
    ///   nested deeper than [`MAX_PAYLOAD_DEPTH`] or longer than [`MAX_PAYLOAD_BYTES`]
    ///   as JSON → `InvalidInput`.
    async fn enqueue(&self, queue: &str, job: NewJob) -> Result<Enqueued>;

    /// The job `id` on `queue`, if it is known.
    ///
    /// # Behavior
    /// - Reports state, attempts so far, metadata, payload and the last error.
    /// - An unknown id → `Ok(None)`; an unknown queue → `InvalidInput`.
    async fn job(&self, queue: &str, id: &str) -> Result<Option<JobInfo>>;

    /// Counts of jobs on `queue` by state.
    ///
    /// # Behavior
    /// - `pending` counts jobs waiting to run (including delayed ones and failed ones
    ///   waiting for their retry), `running` jobs being processed, `done` jobs that
    ///   succeeded, `failed` failed attempts, `dead` jobs that used every attempt.
    /// - An unknown queue → `InvalidInput`.
    async fn stats(&self, queue: &str) -> Result<QueueStats>;

    /// Dead jobs on `queue`, oldest first (on Redis to the millisecond, and by job id
    /// within one), at most `limit`.
    ///
    /// # Behavior
    /// - A job is dead after its last attempt failed (or it failed with a permanent
    ///   error); it keeps its payload, metadata and last error.
    /// - An unknown queue → `InvalidInput`.
    async fn dead_jobs(&self, queue: &str, limit: usize) -> Result<Vec<JobInfo>>;

    /// Puts the dead job `id` back on `queue` with a fresh attempt budget.
    ///
    /// # Behavior
    /// - The job leaves the dead list and runs again; workflow steps that succeeded
    ///   before are not re-run.
    /// - An id that is not dead → `NotFound`; an unknown queue → `InvalidInput`.
    async fn retry_dead(&self, queue: &str, id: &str) -> Result<()>;

    /// The queue catalogue this implementation serves.
    fn catalog(&self) -> &QueueCatalog;
}

/// A shared [`JobQueue`] handle.
pub type DynJobQueue = Arc<dyn JobQueue>;

/// Something that processes jobs: what a worker calls for each attempt.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Processes one attempt of a job. An error retries the job with backoff (or
    /// dead-letters it after the last attempt, or at once for a permanent error).
    async fn handle(&self, ctx: JobContext) -> std::result::Result<(), JobError>;
}

struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> JobHandler for FnHandler<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), JobError>> + Send + 'static,
{
    async fn handle(&self, ctx: JobContext) -> std::result::Result<(), JobError> {
        (self.0)(ctx).await
    }
}

/// Makes a [`JobHandler`] of an async closure.
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn JobHandler>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), JobError>> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// Starts workers on the queues of a catalogue. Workers take their concurrency,
/// per-job timeout and retry policy from the queue's [`QueueConfig`].
#[async_trait]
pub trait JobWorkers: Send + Sync + fmt::Debug + 'static {
    /// Starts a worker processing `queue` with `handler`.
    ///
    /// # Behavior
    /// - At most `concurrency` jobs of this worker run at once.
    /// - An attempt running longer than `timeout` is cancelled and counts as failed.
    /// - A failed attempt goes back to the queue with an exponentially growing delay
    ///   (the worker does not wait for it); after `max_attempts` the job is dead.
    /// - The handler sees the attempt number (1-based) and a stable idempotency key.
    /// - [`WorkerHandle::shutdown`] stops fetching, lets in-flight jobs finish until
    ///   the deadline and puts the rest back on the queue: no job is lost.
    /// - An unknown queue → `InvalidInput`.
    async fn start_worker(&self, queue: &str, handler: Arc<dyn JobHandler>) -> Result<WorkerHandle>;
}

/// Both halves of a queue service: what [`LocalQueue`] and [`RedisQueue`] implement.
pub trait QueueService: JobQueue + JobWorkers {}

impl<T: JobQueue + JobWorkers> QueueService for T {}

/// Conveniences over [`JobQueue`]: typed payloads and workflow triggers.
#[async_trait]
pub trait JobQueueExt: JobQueue {
    /// Enqueues a typed payload (serialised to JSON) with default options.
    async fn enqueue_json<T: Serialize + Send + Sync>(&self, queue: &str, payload: &T) -> Result<Enqueued> {
        self.enqueue(queue, NewJob::json(payload)?).await
    }

    /// Emits an event. `{name}.requested` starts a run of the workflow `name` (a
    /// catalogue queue marked as a workflow) with `job` as its input; the run id is
    /// the job id (give one to make the trigger idempotent).
    ///
    /// An event that triggers no workflow → `InvalidInput` naming it.
    async fn emit(&self, event: &str, job: NewJob) -> Result<Enqueued> {
        let name = event.strip_suffix(".requested").ok_or_else(|| {
            Error::invalid_input(format!(
                "event {event:?} does not trigger a workflow (expected NAME.requested)"
            ))
        })?;
        let is_workflow = self.catalog().get(name).map(|q| q.workflow).unwrap_or(false);
        if !is_workflow {
            return Err(Error::invalid_input(format!(
                "event {event:?} does not trigger a workflow: no workflow queue named {name:?}"
            )));
        }
        self.enqueue(name, job).await
    }
}

impl<T: JobQueue + ?Sized> JobQueueExt for T {}

#[async_trait]
impl<T: JobQueue + ?Sized> JobQueue for Arc<T> {
    async fn enqueue(&self, queue: &str, job: NewJob) -> Result<Enqueued> {
        (**self).enqueue(queue, job).await
    }
    async fn job(&self, queue: &str, id: &str) -> Result<Option<JobInfo>> {
        (**self).job(queue, id).await
    }
    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        (**self).stats(queue).await
    }
    async fn dead_jobs(&self, queue: &str, limit: usize) -> Result<Vec<JobInfo>> {
        (**self).dead_jobs(queue, limit).await
    }
    async fn retry_dead(&self, queue: &str, id: &str) -> Result<()> {
        (**self).retry_dead(queue, id).await
    }
    fn catalog(&self) -> &QueueCatalog {
        (**self).catalog()
    }
}
