//! Redis workers: an apalis `Worker` on `apalis_redis::RedisStorage` (fetching,
//! leases, heartbeats, orphan re-delivery, concurrency limit, graceful stop), whose
//! task function runs our attempt logic (timeout, retry with backoff, dead letters,
//! step results) through the Lua scripts.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BackendExt, PollWith, WorkerBuilder, WorkerBuilderExt, WorkerError};
use apalis_redis::RedisStorage;
use async_trait::async_trait;
use platform_core::{Error, Result};
use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::batch::Batcher;
use super::client::{Inner, Keys, RedisQueue, TaskArgs, run_at_secs, system_now_ms, traced};
use super::idle_poll::IdlePoll;
use super::scripts;
use crate::config::QueueConfig;
use crate::context::{JobContext, StepStore};
use crate::types::StoredJob;
use crate::worker::{Outcome, ShutdownReport, WorkerControl, WorkerHandle, run_attempt};
use crate::{JobHandler, JobWorkers};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct RunState {
    inner: Arc<Inner>,
    cfg: QueueConfig,
    keys: Keys,
    handler: Arc<dyn JobHandler>,
    settle: Batcher<Settle, redis::Value>,
}

/// One state change of an attempt that goes to Redis batched with others.
enum Settle {
    /// Start a delivery: apalis task id and job id.
    Start { task: String, job: String },
    /// Record a successful attempt.
    Complete { task: String, job: String, attempt: u32 },
}

/// Most operations settled by one script call; apalis fetches at most 100 tasks at
/// once, and as many can complete together.
const MAX_BATCH: usize = 200;

/// Settles batches of starts and completions with one `SETTLE` script call each.
fn settle_batcher(conn: ConnectionManager, keys: Keys, cfg: &QueueConfig) -> Batcher<Settle, redis::Value> {
    let queue = cfg.name.clone();
    let window = cfg.dedupe_window.as_secs().max(1);
    Batcher::spawn("settle_jobs", MAX_BATCH, move |ops: Vec<Settle>| {
        let (mut conn, keys, queue) = (conn.clone(), keys.clone(), queue.clone());
        async move {
            let mut inv = scripts::SETTLE.prepare_invoke();
            inv.key(keys.running())
                .key(keys.counts())
                .arg(system_now_ms())
                .arg(window);
            for op in &ops {
                match op {
                    Settle::Start { task, job } => {
                        inv.key(keys.record(job)).arg("s").arg(task).arg(job).arg(0);
                    }
                    Settle::Complete { task, job, attempt } => {
                        inv.key(keys.record(job))
                            .key(keys.steps(job))
                            .arg("c")
                            .arg(task)
                            .arg(job)
                            .arg(*attempt);
                    }
                }
            }
            traced("settle_jobs", &queue, inv.invoke_async(&mut conn)).await
        }
    })
}

fn settle_reply<T: redis::FromRedisValue>(value: redis::Value) -> Result<T> {
    redis::from_redis_value(value)
        .map_err(|e| Error::unexpected("unexpected reply of the settle script").with_source(e))
}

struct RedisSteps {
    conn: ConnectionManager,
    key: String,
    queue: String,
}

#[async_trait]
impl StepStore for RedisSteps {
    async fn load(&self, name: &str) -> Result<Option<Value>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = traced(
            "load_step",
            &self.queue,
            redis::cmd("HGET").arg(&self.key).arg(name).query_async(&mut conn),
        )
        .await?;
        raw.map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| Error::unexpected("stored step result is not valid JSON").with_source(e))
    }

    async fn save(&self, name: &str, value: &Value) -> Result<()> {
        let mut conn = self.conn.clone();
        traced(
            "save_step",
            &self.queue,
            redis::cmd("HSET")
                .arg(&self.key)
                .arg(name)
                .arg(value.to_string())
                .query_async::<u64>(&mut conn),
        )
        .await?;
        Ok(())
    }
}

impl RunState {
    /// Processes one apalis task (one attempt of one job). Returns `Ok` once the job's
    /// new state is recorded, so apalis acknowledges the task; an `Err` (Redis
    /// unreachable) leaves apalis to re-deliver it.
    async fn process(&self, args: TaskArgs) -> std::result::Result<(), BoxError> {
        let queue = self.cfg.name.as_str();
        let mut conn = self.inner.conn.clone();
        let record = self.keys.record(&args.job);
        let started: Option<(u32, String, u32)> = settle_reply(
            self.settle
                .call(Settle::Start {
                    task: args.task.clone(),
                    job: args.job.clone(),
                })
                .await?,
        )?;
        let Some((attempt, envelope, max_attempts)) = started else {
            tracing::debug!(queue, job_id = %args.job, task = %args.task, "stale delivery skipped");
            return Ok(());
        };
        let stored: StoredJob = serde_json::from_str(&envelope)?;
        let ctx = JobContext {
            queue: queue.to_owned(),
            job_id: args.job.clone(),
            attempt,
            max_attempts,
            meta: stored.meta,
            payload: stored.payload,
            steps: Arc::new(RedisSteps {
                conn: self.inner.conn.clone(),
                key: self.keys.steps(&args.job),
                queue: queue.to_owned(),
            }),
        };
        let outcome = run_attempt(&self.handler, ctx, self.cfg.timeout).await;
        match outcome {
            Outcome::Success => {
                let applied: u8 = settle_reply(
                    self.settle
                        .call(Settle::Complete {
                            task: args.task.clone(),
                            job: args.job.clone(),
                            attempt,
                        })
                        .await?,
                )?;
                if applied == 0 {
                    tracing::debug!(queue, job_id = %args.job, task = %args.task, "stale completion ignored");
                }
            }
            Outcome::Failed(err) if err.is_permanent() || attempt >= max_attempts => {
                traced(
                    "dead_letter_job",
                    queue,
                    scripts::DEAD
                        .key(&record)
                        .key(self.keys.running())
                        .key(self.keys.counts())
                        .key(self.keys.dead())
                        .arg(&args.task)
                        .arg(&args.job)
                        .arg(err.message())
                        .arg(system_now_ms())
                        .arg(attempt)
                        .invoke_async::<u8>(&mut conn),
                )
                .await?;
            }
            Outcome::Failed(err) => {
                let next = TaskArgs::new(&args.job);
                let run_at = run_at_secs(self.cfg.backoff(attempt));
                traced(
                    "retry_job",
                    queue,
                    scripts::RETRY
                        .key(&record)
                        .key(self.keys.running())
                        .key(self.keys.counts())
                        .key(self.keys.apalis.job_data_hash())
                        .key(self.keys.delayed())
                        .key(self.keys.task_meta(&next.task))
                        .arg(&args.task)
                        .arg(&args.job)
                        .arg(&next.task)
                        .arg(next.to_json()?)
                        .arg(run_at)
                        .arg(err.message())
                        .arg(attempt)
                        .invoke_async::<u8>(&mut conn),
                )
                .await?;
            }
        }
        Ok(())
    }
}

struct RedisWorker {
    name: String,
    queue: String,
    inner: Arc<Inner>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::result::Result<(), WorkerError>>,
    /// The periodic [`RedisQueue::trim`] of this worker's queue, if enabled.
    trimmer: Option<JoinHandle<()>>,
    /// Moves due delayed tasks to `Q:active` every poll interval (see [`spawn_promoter`]).
    promoter: JoinHandle<()>,
}

/// Due delayed tasks one `PROMOTE` script call moves at most (the script `unpack`s
/// them: Lua's limit is ~8,000).
const PROMOTE_CHUNK: usize = 500;

/// Moves every due task of the queue's delayed set (`Q:pq:delayed`) to apalis's
/// `Q:active` list, [`PROMOTE_CHUNK`] tasks per atomic script call. Returns how many
/// tasks were moved.
async fn promote_due(conn: &mut ConnectionManager, keys: &Keys, queue: &str) -> Result<u64> {
    let mut moved = 0u64;
    loop {
        let now_secs = system_now_ms() / 1000;
        let n: u64 = traced(
            "promote_delayed",
            queue,
            scripts::PROMOTE
                .key(keys.delayed())
                .key(keys.apalis.active_jobs_list())
                .arg(now_secs)
                .arg(PROMOTE_CHUNK)
                .invoke_async(conn),
        )
        .await?;
        moved += n;
        if n < PROMOTE_CHUNK as u64 {
            return Ok(moved);
        }
    }
}

/// Promotes the queue's due delayed tasks every `every` (first at once) until aborted,
/// so apalis's own `Q:scheduled` (whose fetch script fails beyond ~8,000 due tasks)
/// never receives any. A failed promotion is logged and retried at the next tick; the
/// tasks stay in the delayed set meanwhile (nothing is lost).
fn spawn_promoter(mut conn: ConnectionManager, keys: Keys, queue: String, every: Duration) -> JoinHandle<()> {
    let every = every.max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = promote_due(&mut conn, &keys, &queue).await {
                tracing::warn!(queue = %queue, error = %e, "promoting due delayed tasks failed");
            }
        }
    })
}

/// Trims the queue's acknowledged tasks every `every` (first after one period) until
/// aborted. A failed trim is logged and retried at the next tick.
fn spawn_trimmer(queue: RedisQueue, name: String, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = queue.trim(&name).await {
                tracing::warn!(queue = %name, error = %e, "trimming acknowledged tasks failed");
            }
        }
    })
}

#[async_trait]
impl WorkerControl for RedisWorker {
    async fn shutdown(self: Box<Self>, deadline: Duration) -> Result<ShutdownReport> {
        let RedisWorker {
            name,
            queue,
            inner,
            stop,
            mut task,
            trimmer,
            promoter,
        } = *self;
        if let Some(t) = &trimmer {
            t.abort();
        }
        promoter.abort();
        let _ = stop.send(());
        let drained = match tokio::time::timeout(deadline, &mut task).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                tracing::warn!(worker = %name, error = %e, "worker ended with an error");
                false
            }
            Ok(Err(_join)) => false,
            Err(_elapsed) => {
                task.abort();
                let _ = task.await;
                false
            }
        };
        // Anything still held by this worker (cancelled mid-job, or never acknowledged)
        // goes back on the queue; also deregisters the worker.
        let keys = inner.keys(&queue);
        let mut conn = inner.conn.clone();
        let requeued: u64 = traced(
            "release_worker",
            &queue,
            scripts::RELEASE
                .key(format!("{}:{name}", keys.apalis.inflight_jobs_set()))
                .key(keys.apalis.active_jobs_list())
                .key(keys.apalis.signal_list())
                .key(keys.apalis.workers_set())
                .key(keys.worker_metadata(&name))
                .arg(&name)
                .invoke_async(&mut conn),
        )
        .await?;
        // Every task this worker acknowledged is settled: remove apalis's entries now
        // rather than leave them to another worker's next tick.
        if trimmer.is_some() {
            let queue_handle = RedisQueue { inner: inner.clone() };
            if let Err(e) = queue_handle.trim(&queue).await {
                tracing::warn!(queue = %queue, error = %e, "trimming acknowledged tasks failed");
            }
        }
        tracing::info!(provider = "redis", operation = "shutdown_worker", queue, worker = %name, drained, requeued, "worker stopped");
        Ok(ShutdownReport {
            drained: drained && requeued == 0,
            requeued,
        })
    }

    fn kill(self: Box<Self>) {
        if let Some(t) = &self.trimmer {
            t.abort();
        }
        self.promoter.abort();
        self.task.abort();
    }
}

/// The backend a worker fetches from. Its idle polling is [`IdlePoll`], not apalis's
/// `poll_with_interval`: that interval can drop its wake-up and park an idle worker
/// until its next heartbeat (30 s by default) while jobs wait (see [`IdlePoll`]).
/// The return type pins the strategy.
fn worker_backend(
    conn: ConnectionManager,
    config: apalis_redis::Config,
    poll_interval: Duration,
) -> PollWith<RedisStorage<TaskArgs>, IdlePoll> {
    RedisStorage::<TaskArgs>::new(conn)
        .with_config(config)
        .poll_with_strategy(IdlePoll::new(poll_interval))
}

#[async_trait]
impl JobWorkers for RedisQueue {
    async fn start_worker(&self, queue: &str, handler: Arc<dyn JobHandler>) -> Result<WorkerHandle> {
        let cfg = self.inner.catalog.get(queue)?.clone();
        let name = format!("{queue}-{}", uuid::Uuid::new_v4().simple());
        let keys = self.inner.keys(queue);
        let apalis_config = keys.apalis.clone().batch_size(cfg.concurrency.clamp(1, 100));
        let storage = worker_backend(self.inner.conn.clone(), apalis_config, self.inner.poll_interval);
        let concurrency = cfg.concurrency;
        let state = Arc::new(RunState {
            settle: settle_batcher(self.inner.conn.clone(), keys.clone(), &cfg),
            inner: self.inner.clone(),
            cfg,
            keys,
            handler,
        });
        let worker = WorkerBuilder::new(name.as_str())
            .backend(storage)
            .concurrency(concurrency)
            .build(move |args: TaskArgs| {
                let state = state.clone();
                async move { state.process(args).await }
            });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run_until(async move {
            let _ = stopped.await;
            Ok::<(), WorkerError>(())
        }));
        let promoter = spawn_promoter(
            self.inner.conn.clone(),
            self.inner.keys(queue),
            queue.to_owned(),
            self.inner.poll_interval,
        );
        let trimmer = self
            .inner
            .trim_interval
            .map(|every| spawn_trimmer(self.clone(), queue.to_owned(), every));
        tracing::info!(provider = "redis", operation = "start_worker", queue, worker = %name, "worker started");
        Ok(WorkerHandle {
            name: name.clone(),
            control: Box::new(RedisWorker {
                name,
                queue: queue.to_owned(),
                inner: self.inner.clone(),
                stop,
                task,
                trimmer,
                promoter,
            }),
        })
    }
}
