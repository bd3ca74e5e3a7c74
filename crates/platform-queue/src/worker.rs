//! Worker handles and the attempt runner shared by both implementations.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use platform_core::Result;
use tracing::Instrument;

use crate::JobHandler;
use crate::context::JobContext;
use crate::types::JobError;

/// What a graceful shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Whether every in-flight job finished before the deadline and nothing had to
    /// be put back on the queue.
    pub drained: bool,
    /// Jobs put back on the queue by the stop: those still in flight at the deadline,
    /// and on Redis those fetched but not started yet.
    pub requeued: u64,
}

#[async_trait]
pub(crate) trait WorkerControl: Send + Sync + 'static {
    async fn shutdown(self: Box<Self>, deadline: Duration) -> Result<ShutdownReport>;
    fn kill(self: Box<Self>);
}

/// A running worker. Dropping the handle leaves the worker running; call
/// [`shutdown`](Self::shutdown) to stop it without losing jobs.
pub struct WorkerHandle {
    pub(crate) name: String,
    pub(crate) control: Box<dyn WorkerControl>,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// The worker's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops fetching new jobs, waits up to `deadline` for in-flight jobs to finish,
    /// then cancels the rest and puts them back on the queue. No job is lost.
    ///
    /// A job blocked in synchronous code (it does not yield to the runtime) cannot be
    /// cancelled until it returns. The in-process queue re-queues it at the deadline
    /// without waiting for it and ignores its outcome; the job may then run again
    /// while the blocked attempt still runs (on a current-thread runtime nothing else
    /// runs until it returns). On Redis, such a job also blocks its worker's loop, so
    /// the shutdown returns only once the job does. Blocking work belongs in
    /// `tokio::task::spawn_blocking`, whose closure is never cancelled either: a job
    /// cut off while awaiting it is re-queued and may run again while the closure
    /// still runs; keep such work idempotent (see `JobContext::idempotency_key`).
    ///
    /// # Errors
    /// `Unavailable` if the queue's store cannot be reached to re-queue jobs (they are
    /// then recovered by the orphan check of the next worker).
    pub async fn shutdown(self, deadline: Duration) -> Result<ShutdownReport> {
        self.control.shutdown(deadline).await
    }

    /// Stops the worker abruptly, as a crash would: in-flight jobs are neither
    /// finished nor acknowledged. On Redis they are re-delivered to another worker
    /// after the heartbeat/orphan timeout; the in-process queue, where a real crash
    /// loses the process anyway, puts them back on the queue at once.
    pub fn kill(self) {
        self.control.kill();
    }
}

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Success,
    Failed(JobError),
}

/// Runs one attempt with the queue's timeout; a panic or timeout is a failure.
pub(crate) async fn run_attempt(
    handler: &Arc<dyn JobHandler>,
    ctx: JobContext,
    timeout: Duration,
) -> Outcome {
    let span = tracing::info_span!(
        "queue.job",
        provider = "queue",
        operation = "run_job",
        queue = %ctx.queue,
        job_id = %ctx.job_id,
        attempt = ctx.attempt,
        outcome = tracing::field::Empty,
    );
    // `handle` is called inside the guarded future: a handler that panics before
    // returning its future fails the attempt as one that panics while running does.
    let fut =
        AssertUnwindSafe(async move { handler.handle(ctx).await }.instrument(span.clone())).catch_unwind();
    let outcome = match tokio::time::timeout(timeout, fut).await {
        Err(_) => Outcome::Failed(JobError::retryable(format!(
            "job timed out after {} ms and was cancelled",
            timeout.as_millis()
        ))),
        Ok(Err(_panic)) => Outcome::Failed(JobError::retryable("job handler panicked")),
        Ok(Ok(Err(e))) => Outcome::Failed(e),
        Ok(Ok(Ok(()))) => Outcome::Success,
    };
    let label = match &outcome {
        Outcome::Success => "success",
        Outcome::Failed(e) if e.is_permanent() => "permanent_failure",
        Outcome::Failed(_) => "failure",
    };
    span.record("outcome", label);
    if let Outcome::Failed(e) = &outcome {
        tracing::warn!(parent: &span, error = %e, "job attempt failed");
    }
    outcome
}
