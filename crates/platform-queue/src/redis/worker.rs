//! Redis workers: an apalis `Worker` on `apalis_redis::RedisStorage` (registration,
//! heartbeats, orphan re-delivery, concurrency limit, graceful stop) with a fetch of
//! its own (see [`FetchBackend`]),
//! whose task function runs our attempt logic (start, timeout, retry with backoff,
//! dead letters, step results) and acknowledges the task, through the Lua scripts.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{
    Backend, BackendExt, PollWith, WorkerBuilder, WorkerBuilderExt, WorkerContext, WorkerError,
};
use apalis_core::backend::{BackendConfig, WireFormatBackend};
use apalis_redis::RedisStorage;
use async_trait::async_trait;
use platform_core::{Error, Idempotency, Result, RetryPolicy};
use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::batch::{Batcher, Gate};
use super::client::{Inner, Keys, RedisQueue, TaskArgs, is_transient, run_at_secs, system_now_ms, traced};
use super::idle_poll::IdlePoll;
use super::scripts;
use crate::config::QueueConfig;
use crate::context::{JobContext, StepStore, stale_step};
use crate::types::{JobError, StoredJob};
use crate::worker::{Outcome, ShutdownReport, WorkerControl, WorkerHandle, run_attempt};
use crate::{JobHandler, JobWorkers, lock};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct RunState {
    inner: Arc<Inner>,
    cfg: QueueConfig,
    keys: Keys,
    /// This worker's in-flight set: the scripts acknowledge tasks by removing them.
    inflight: String,
    handler: Arc<dyn JobHandler>,
    settle: Batcher<Settle, Settled>,
    held: Held,
    /// Ids of this worker's deliveries: each task handed to its job function takes the
    /// next one. Starts at a random value, so that two workers never use the same.
    deliveries: AtomicU64,
}

/// The tasks a worker has handed to its job function and not finished: the only
/// members of its in-flight set it will ever run (see `WorkerConnection::recover`).
/// Also counts the tasks its fetches returned and those handed over, so that the
/// settle batcher knows how many of its jobs can still make a request (see
/// [`HeldTasks::quorum`]).
#[derive(Default)]
struct HeldTasks {
    tasks: std::sync::Mutex<HashSet<String>>,
    /// Tasks the worker's fetches returned to apalis.
    fetched: AtomicU64,
    /// Tasks apalis handed to the job function.
    handed: AtomicU64,
}

type Held = Arc<HeldTasks>;

impl HeldTasks {
    /// The settle batcher's quorum (see `Batcher::with_quorum`) for a worker of
    /// `slots` concurrent jobs, while every slot is taken: how many of its jobs may be
    /// making a settle request now, those holding a task and the tasks the worker
    /// fetched and has not handed over yet (each asks to start once handed over). Once
    /// that many requests are unanswered, none other can come before an answer, and no
    /// fetch either (apalis asks for a task for a free slot only): the batch is sent at
    /// once instead of lingering. While a slot is free there is no quorum
    /// (`u64::MAX`): the worker is about to fetch, and its fetch sends the batch (see
    /// `WorkerConnection::fetch`), with the completions and the starts made until then
    /// in one call (measured: sending the completions as soon as they were all made,
    /// one more round trip per fetch, cost about 12 % of the end-to-end bench's
    /// throughput).
    fn quorum(&self, slots: u64) -> u64 {
        let held = lock(&self.tasks).len() as u64;
        let buffered = self
            .fetched
            .load(Ordering::SeqCst)
            .saturating_sub(self.handed.load(Ordering::SeqCst));
        let requesters = held + buffered;
        if requesters < slots { u64::MAX } else { requesters }
    }

    /// Forgets the tasks fetched and not handed over (the apalis loop holding them
    /// ended).
    fn forget_buffered(&self) {
        self.fetched
            .store(self.handed.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Marks one task held while alive: from the moment apalis hands it over until its
/// attempt ends (or is cancelled).
struct HeldTask {
    held: Held,
    task: String,
}

impl HeldTask {
    fn new(held: &Held, task: &str) -> Self {
        lock(&held.tasks).insert(task.to_owned());
        held.handed.fetch_add(1, Ordering::SeqCst);
        Self {
            held: held.clone(),
            task: task.to_owned(),
        }
    }
}

impl Drop for HeldTask {
    fn drop(&mut self) {
        lock(&self.held.tasks).remove(&self.task);
    }
}

/// One state change of an attempt that goes to Redis batched with others.
enum Settle {
    /// Start a delivery: apalis task id, job id and the delivery's id (see
    /// `RunState::deliveries`).
    Start {
        task: String,
        job: String,
        delivery: u64,
    },
    /// Record a successful attempt.
    Complete { task: String, job: String, attempt: u32 },
}

impl Settle {
    fn start(args: &TaskArgs, delivery: u64) -> Self {
        Self::Start {
            task: args.task.clone(),
            job: args.job.clone(),
            delivery,
        }
    }

    fn complete(args: &TaskArgs, attempt: u32) -> Self {
        Self::Complete {
            task: args.task.clone(),
            job: args.job.clone(),
            attempt,
        }
    }
}

/// What `SETTLE` answered for one operation.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// The delivery or completion is stale: it changed nothing.
    Stale,
    /// The completion was recorded.
    Completed,
    /// The delivery started: its attempt, the attempts allowed and the job's envelope.
    Started {
        attempt: u32,
        max_attempts: u32,
        envelope: Vec<u8>,
    },
    /// The operation raised this Redis error (its job's keys cannot be read or
    /// written); it changed nothing, and the rest of its batch applied.
    Failed(String),
}

impl Settled {
    /// Decodes the reply of a `SETTLE` call of `n` operations: one string of `n`
    /// entries (see `scripts::SETTLE`).
    fn decode_all(reply: &[u8], n: usize) -> Result<Vec<Self>> {
        let malformed =
            || Error::unexpected("malformed reply of the settle script").with_operation("settle_jobs");
        let mut out = Vec::with_capacity(n);
        let mut rest = reply;
        while let Some((&kind, tail)) = rest.split_first() {
            rest = tail;
            out.push(match kind {
                b'-' => Self::Stale,
                b'+' => Self::Completed,
                b'e' => {
                    let (head, message, tail) = sized(rest).ok_or_else(malformed)?;
                    if !head.is_empty() {
                        return Err(malformed());
                    }
                    rest = tail;
                    Self::Failed(String::from_utf8_lossy(message).into_owned())
                }
                b's' => {
                    let (head, envelope, tail) = sized(rest).ok_or_else(malformed)?;
                    let mut nums = head.split(',').map(str::parse::<u32>);
                    let (Some(Ok(attempt)), Some(Ok(max_attempts)), None) =
                        (nums.next(), nums.next(), nums.next())
                    else {
                        return Err(malformed());
                    };
                    rest = tail;
                    Self::Started {
                        attempt,
                        max_attempts,
                        // Read in `process`: one that is not JSON (or not UTF-8) has
                        // its job dead-lettered for that, not the whole batch failed.
                        envelope: envelope.to_vec(),
                    }
                }
                _ => return Err(malformed()),
            });
        }
        if out.len() == n { Ok(out) } else { Err(malformed()) }
    }
}

/// Splits a `SETTLE` entry's `{fields,}{byte length}:{bytes}` (after its kind): the
/// fields before the length (without the comma), the bytes, and what follows them.
fn sized(entry: &[u8]) -> Option<(&str, &[u8], &[u8])> {
    let colon = entry.iter().position(|&b| b == b':')?;
    let head = std::str::from_utf8(&entry[..colon]).ok()?;
    let (fields, len) = head.rsplit_once(',').unwrap_or(("", head));
    let end = colon + 1 + len.parse::<usize>().ok()?;
    Some((fields, entry.get(colon + 1..end)?, &entry[end..]))
}

/// How long a task whose processing failed waits before it is put back on the queue
/// (see `RunState::run_task`).
const PUT_BACK_DELAY: Duration = Duration::from_secs(1);

/// Most operations settled by one script call; a worker fetches at most 100 tasks at
/// once, and as many can complete together.
const MAX_BATCH: usize = 200;
/// How long a settle request waits for others when no fetch flushes it first (see
/// `batch`): the most a job's start or completion is delayed.
const SETTLE_LINGER: Duration = Duration::from_millis(1);

/// Settles batches of starts and completions with one `SETTLE` script call each.
fn settle_batcher(
    conn: ConnectionManager,
    keys: Keys,
    inflight: String,
    cfg: &QueueConfig,
) -> Batcher<Settle, Settled> {
    let queue = cfg.name.clone();
    let window_ms = u64::try_from(cfg.dedupe_window.as_millis()).unwrap_or(u64::MAX);
    Batcher::new(
        "settle_jobs",
        MAX_BATCH,
        SETTLE_LINGER,
        move |ops: Vec<Settle>| {
            let mut conn = conn.clone();
            let mut inv = scripts::SETTLE.prepare_invoke();
            inv.key(keys.counts())
                .key(&inflight)
                .key(keys.data())
                .key(keys.dead())
                .key(keys.active())
                .arg(system_now_ms())
                .arg(window_ms)
                .arg(keys.record(""))
                .arg(keys.steps(""))
                .arg(keys.task_meta(""));
            for op in &ops {
                // The fourth value: a start's delivery id, a completion's attempt.
                let (kind, task, job, num) = match op {
                    Settle::Start { task, job, delivery } => ("s", task, job, *delivery),
                    Settle::Complete { task, job, attempt } => ("c", task, job, u64::from(*attempt)),
                };
                inv.arg(kind).arg(task).arg(job).arg(num);
            }
            let (queue, n) = (queue.clone(), ops.len());
            async move {
                let reply: Vec<u8> = traced("settle_jobs", &queue, inv.invoke_async(&mut conn)).await?;
                Settled::decode_all(&reply, n)
            }
        },
    )
}

/// How a worker retries its Redis calls while Redis is unreachable. Recording an
/// attempt is retried until it succeeds (the task stays in the worker's in-flight set
/// meanwhile; a shutdown past its deadline cancels the attempt and re-queues it): every
/// script is safe to run again after a lost reply (a repeated start returns the attempt
/// it counted, a repeated completion is stale, a repeated acknowledgement a no-op).
/// apalis's calls are retried for a bounded time (see `WorkerConnection`).
fn redis_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(u32::MAX)
        .with_max_elapsed(None)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(5))
}

/// The step results of one attempt's job (`Q:pq:steps:{id}`). Its keys are formatted
/// when a step is loaded or saved, not for every job.
struct RedisSteps {
    state: Arc<RunState>,
    job: String,
    /// The attempt's task, number and delivery: results are saved only while it is
    /// current.
    task: String,
    attempt: u32,
    delivery: u64,
}

#[async_trait]
impl StepStore for RedisSteps {
    async fn load(&self, name: &str) -> Result<Option<Value>> {
        let mut conn = self.state.inner.conn.clone();
        let raw: Option<String> = traced(
            "load_step",
            &self.state.cfg.name,
            redis::cmd("HGET")
                .arg(self.state.keys.steps(&self.job))
                .arg(name)
                .query_async(&mut conn),
        )
        .await?;
        raw.map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| Error::unexpected("stored step result is not valid JSON").with_source(e))
    }

    async fn save(&self, name: &str, value: &Value) -> Result<()> {
        let mut conn = self.state.inner.conn.clone();
        let saved: u8 = traced(
            "save_step",
            &self.state.cfg.name,
            scripts::SAVE_STEP
                .key(self.state.keys.steps(&self.job))
                .key(self.state.keys.record(&self.job))
                .arg(name)
                .arg(value.to_string())
                .arg(&self.task)
                .arg(self.attempt)
                .arg(self.delivery)
                .invoke_async(&mut conn),
        )
        .await?;
        if saved == 1 {
            Ok(())
        } else {
            Err(stale_step(name, self.attempt, &self.job))
        }
    }
}

impl RunState {
    /// One settle request, retried while Redis is unreachable (see [`redis_retry`]).
    /// An operation the script failed alone (see [`Settled::Failed`]) is an error.
    async fn settle(&self, op: impl Fn() -> Settle) -> Result<Settled> {
        let settled = redis_retry()
            .retry(&Idempotency::Idempotent, |_| self.settle.call(op()))
            .await?;
        match settled {
            Settled::Failed(message) => {
                let err = Error::unexpected(format!("settle script: {message}"))
                    .with_provider("redis")
                    .with_operation("settle_jobs");
                // Only a key of another type fails the same way next time; any other
                // error (Redis out of memory, say) may heal, so the task is put back.
                Err(if message.contains("WRONGTYPE") {
                    err.with_source(KeysUnusable)
                } else {
                    err
                })
            }
            settled => Ok(settled),
        }
    }

    /// Runs one apalis task (see [`process`](Self::process)). When processing fails
    /// with an error retrying cannot fix (a script error, a reply it cannot read), the
    /// task is put back on the queue after [`PUT_BACK_DELAY`] (so that an error that
    /// persists does not spin), to run again rather than wait in the worker's in-flight
    /// set until the worker stops; should that fail too, the recovery before the
    /// worker's next retried fetch (see `WorkerConnection::recover`) or its release
    /// re-queues it. A task whose job's keys cannot be used (the settle script failed
    /// its operation alone with `WRONGTYPE`, see [`Settled::Failed`]) would fail the
    /// same way each time: it is set aside instead (see [`set_aside`]), its job
    /// dead-lettered with the reason or, when its record cannot be read, the task kept
    /// as unreadable with the job's id in the reason.
    async fn run_task(self: &Arc<Self>, args: TaskArgs) -> std::result::Result<(), BoxError> {
        let Err(e) = self.process(&args).await else {
            return Ok(());
        };
        let queue = self.cfg.name.as_str();
        if KeysUnusable::caused(e.as_ref()) {
            // Not put back: it would fail the same way each time it is fetched, once a
            // second, for ever.
            let why = format!("job {:?}: its keys cannot be used: {e}", args.job);
            let unusable = Unreadable {
                task: args.task.clone(),
                job: args.job.clone(),
                why,
            };
            match set_aside(&self.inner, &self.keys, queue, &self.inflight, &[unusable]).await {
                Ok(_) => return Err(e),
                Err(again) => {
                    tracing::error!(queue, task = %args.task, error = %again, "setting aside a task whose job's keys cannot be used failed; it is put back");
                }
            }
        }
        let task = args.task;
        tokio::time::sleep(PUT_BACK_DELAY).await;
        let mut conn = self.inner.conn.clone();
        let mut put_back = scripts::PUT_BACK.prepare_invoke();
        put_back.key(&self.inflight).key(self.keys.active()).arg(&task);
        match traced("put_back_task", queue, put_back.invoke_async::<u8>(&mut conn)).await {
            Ok(1) => {
                tracing::error!(queue, task, error = %e, "processing a task failed; it is back on the queue")
            }
            Ok(_) => {
                tracing::error!(queue, task, error = %e, "processing a task failed; it had already left the worker's in-flight set")
            }
            Err(again) => {
                tracing::error!(queue, task, error = %e, put_back_error = %again, "processing a task failed; it stays in the worker's in-flight set")
            }
        }
        Err(e)
    }

    /// Processes one apalis task (one attempt of one job): starts it, runs the handler
    /// and records its outcome, acknowledging the task in the same script call.
    async fn process(self: &Arc<Self>, args: &TaskArgs) -> std::result::Result<(), BoxError> {
        let queue = self.cfg.name.as_str();
        let delivery = self.deliveries.fetch_add(1, Ordering::Relaxed);
        let started = self.settle(|| Settle::start(args, delivery)).await?;
        let Settled::Started {
            attempt,
            max_attempts,
            envelope,
        } = started
        else {
            tracing::debug!(queue, job_id = %args.job, task = %args.task, "stale delivery skipped");
            return Ok(());
        };
        // A job whose stored envelope cannot be read (written by an incompatible
        // version, or changed by hand) can never run: it is dead-lettered with the
        // reason, not left running.
        let outcome = match serde_json::from_slice::<StoredJob>(&envelope) {
            Ok(stored) => {
                let ctx = JobContext {
                    queue: queue.to_owned(),
                    job_id: args.job.clone(),
                    attempt,
                    max_attempts,
                    meta: stored.meta,
                    payload: stored.payload,
                    steps: Arc::new(RedisSteps {
                        state: self.clone(),
                        job: args.job.clone(),
                        task: args.task.clone(),
                        attempt,
                        delivery,
                    }),
                    done_steps: Arc::default(),
                };
                run_attempt(&self.handler, ctx, self.cfg.timeout).await
            }
            Err(e) => Outcome::Failed(JobError::permanent(format!(
                "the stored job envelope cannot be read: {e}"
            ))),
        };
        let applied: u8 = match outcome {
            Outcome::Success => {
                let settled = self.settle(|| Settle::complete(args, attempt)).await?;
                u8::from(settled == Settled::Completed)
            }
            Outcome::Failed(err) if err.is_permanent() || attempt >= max_attempts => {
                let mut script = self.failed_attempt(&scripts::DEAD, args, attempt, err.message());
                script.key(self.keys.dead()).arg(system_now_ms());
                self.invoke("dead_letter_job", &script).await?
            }
            Outcome::Failed(err) => {
                let next = TaskArgs::new(&args.job);
                let mut script = self.failed_attempt(&scripts::RETRY, args, attempt, err.message());
                script
                    .key(self.keys.delayed())
                    .arg(&next.task)
                    .arg(next.to_json()?)
                    .arg(run_at_secs(self.cfg.backoff(attempt)));
                self.invoke("retry_job", &script).await?
            }
        };
        if applied == 0 {
            tracing::debug!(queue, job_id = %args.job, task = %args.task, "stale outcome ignored");
        }
        Ok(())
    }

    /// The keys and arguments `RETRY` and `DEAD` share (see `failed_attempt!`).
    fn failed_attempt<'a>(
        &self,
        script: &'a redis::Script,
        args: &TaskArgs,
        attempt: u32,
        error: &str,
    ) -> redis::ScriptInvocation<'a> {
        let keys = &self.keys;
        let mut inv = script.prepare_invoke();
        inv.key(keys.record(&args.job))
            .key(keys.counts())
            .key(&self.inflight)
            .key(keys.data())
            .key(keys.task_meta(&args.task))
            .key(keys.active())
            .arg(&args.task)
            .arg(&args.job)
            .arg(attempt)
            .arg(error);
        inv
    }

    /// One script call recording an attempt's outcome, retried while Redis is
    /// unreachable (see [`redis_retry`]).
    async fn invoke(&self, operation: &'static str, script: &redis::ScriptInvocation<'_>) -> Result<u8> {
        redis_retry()
            .retry(&Idempotency::Idempotent, |_| {
                let mut conn = self.inner.conn.clone();
                async move { traced(operation, &self.cfg.name, script.invoke_async(&mut conn)).await }
            })
            .await
    }
}

struct RedisWorker {
    name: String,
    queue: String,
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    /// The supervisor (see [`run_supervised`]) and the apalis loop it runs now.
    task: JoinHandle<std::result::Result<(), WorkerError>>,
    current_loop: CurrentLoop,
    /// Moves due delayed tasks to `Q:active` every poll interval (see [`spawn_promoter`]).
    promoter: JoinHandle<()>,
    /// Keeps the worker's registration fresh until it is released (see
    /// [`spawn_heartbeat`]).
    heartbeat: JoinHandle<()>,
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
                .key(keys.active())
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

/// Refreshes the worker's registration (its score, unix seconds, in apalis's workers
/// zset, and the expiry of its metadata hash) every heartbeat interval until aborted.
///
/// apalis sends heartbeats only from its loop's readiness check (its `Persisted`
/// backend's `poll_ready`, between two hand-overs): not while it drains at shutdown,
/// and with its own fetch not while it holds fetched tasks it cannot start yet (every
/// slot busy with long jobs). Past the orphan timeout the other workers' heartbeats
/// would then take this worker for dead, put its tasks back on the queue and run its
/// jobs a second time while they still run here (and apalis stops this worker at its
/// next heartbeat, "not registered"). This task keeps it registered whatever its
/// loop is doing. A failed refresh is logged and retried every second until it
/// succeeds. See [`Registration::refresh`].
fn spawn_heartbeat(
    mut conn: ConnectionManager,
    registration: Registration,
    queue: String,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A failed refresh is retried every second, not at the next tick: after an
            // outage the worker must be fresh again before other workers' orphan
            // checks run.
            while let Err(e) = traced("heartbeat", &queue, registration.refresh(&mut conn)).await {
                tracing::warn!(queue = %queue, worker = %registration.name, error = %e, "worker heartbeat failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tick.reset();
        }
    })
}

/// A worker's registration in apalis-redis: its entry in the workers zset and its
/// metadata hash (`Q:workers:metadata:{name}`, written once by apalis when it
/// registers the worker).
#[derive(Clone)]
struct Registration {
    workers: String,
    metadata: String,
    name: String,
    /// How long the metadata hash outlives the worker's last heartbeat.
    ttl: Duration,
}

impl Registration {
    /// Adds to `pipe` the command giving the metadata hash its expiry, `ttl` (in
    /// milliseconds, at least 1).
    fn expire_metadata<'a>(&self, pipe: &'a mut redis::Pipeline) -> &'a mut redis::Pipeline {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        pipe.cmd("PEXPIRE").arg(&self.metadata).arg(ttl_ms).ignore()
    }

    /// Creates the worker's metadata hash with an expiry of `ttl`, before apalis
    /// registers the worker: apalis's `HMSET` then keeps that expiry, so a worker that
    /// crashes before its first heartbeat refresh leaves no hash for ever either. The
    /// hash gets one field of its own, `registered_by`.
    async fn prepare(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&self.metadata)
            .arg("registered_by")
            .arg("platform-queue")
            .ignore();
        self.expire_metadata(&mut pipe).query_async(conn).await
    }

    /// Refreshes the worker's zset score (`ZADD XX`: only an existing entry, so a worker
    /// already taken for dead, its tasks re-queued, is not brought back) and gives its
    /// metadata hash an expiry of `ttl`, in one atomic call. A worker stopped
    /// gracefully deletes both ([`release`]); a worker that crashed is removed from the
    /// zset by apalis's orphan check in another worker, which leaves its metadata hash
    /// behind: the expiry removes that, so crashed workers leave nothing for ever.
    async fn refresh(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(&self.workers)
            .arg("XX")
            // Rounded up: apalis's orphan check compares whole seconds (`floor(now)`),
            // and a refresh just before a second boundary must not look a second old.
            .arg(system_now_ms().div_ceil(1000))
            .arg(&self.name)
            .ignore();
        self.expire_metadata(&mut pipe).query_async(conn).await
    }
}

/// Puts every task `worker` holds back on the queue and deregisters it (`RELEASE`).
/// Returns how many tasks were re-queued.
async fn release(inner: &Inner, keys: &Keys, queue: &str, worker: &str) -> Result<u64> {
    let mut conn = inner.conn.clone();
    traced(
        "release_worker",
        queue,
        scripts::RELEASE
            .key(keys.inflight(worker))
            .key(keys.active())
            .key(keys.signal())
            .key(keys.workers())
            .key(keys.worker_metadata(worker))
            .key(keys.data())
            .key(keys.counts())
            .arg(worker)
            .arg(keys.record(""))
            .invoke_async(&mut conn),
    )
    .await
}

/// Takes the tasks of a stopped worker's in-flight set that apalis cannot read out of it
/// (see `scripts::SET_ASIDE`), before the rest are released. apalis fails a whole fetch,
/// and stops the worker, at a single task whose `Q:data` field is missing or malformed,
/// or whose `Q:meta:{task}` hash (this crate writes none) is malformed (e.g. written by
/// an incompatible version during a rolling deploy, or changed by hand); released with
/// the others, such a task would stop every worker that fetched it, each time cancelling
/// the jobs it was running. Logs how many tasks were dead-lettered and how many kept as
/// unreadable.
async fn set_aside_unreadable(inner: &Inner, keys: &Keys, queue: &str, worker: &str) -> Result<()> {
    let inflight = keys.inflight(worker);
    let mut conn = inner.conn.clone();
    let (data, meta): (Vec<redis::Value>, Vec<redis::Value>) = traced(
        "inspect_worker_tasks",
        queue,
        scripts::INSPECT
            .key(&inflight)
            .key(keys.data())
            .arg(keys.task_meta(""))
            .invoke_async(&mut conn),
    )
    .await?;
    let unreadable: Vec<Unreadable> = data
        .into_iter()
        .zip(meta)
        .filter_map(|(data, meta)| why_unreadable(data, meta))
        .collect();
    if unreadable.is_empty() {
        return Ok(());
    }
    set_aside(inner, keys, queue, &inflight, &unreadable).await?;
    Ok(())
}

/// Takes `tasks` out of the in-flight set `inflight` with [`scripts::SET_ASIDE`]: each
/// one's job is dead-lettered with the reason, or (when its job is unknown or its record
/// cannot be read) the task is kept as unreadable. Logs each task and the totals;
/// returns them (dead-lettered, kept).
async fn set_aside(
    inner: &Inner,
    keys: &Keys,
    queue: &str,
    inflight: &str,
    tasks: &[Unreadable],
) -> Result<(u64, u64)> {
    let mut conn = inner.conn.clone();
    let mut script = scripts::SET_ASIDE.prepare_invoke();
    script
        .key(inflight)
        .key(keys.data())
        .key(keys.unreadable())
        .key(keys.counts())
        .key(keys.dead())
        .arg(system_now_ms())
        .arg(keys.record(""))
        .arg(keys.task_meta(""));
    for Unreadable { task, job, why } in tasks {
        tracing::error!(queue, inflight, task, job_id = %job, reason = %why, "task no worker can run set aside");
        script.arg(task).arg(job).arg(why);
    }
    let (dead, kept): (u64, u64) = traced("set_aside_tasks", queue, script.invoke_async(&mut conn)).await?;
    tracing::warn!(
        queue,
        inflight,
        dead,
        kept,
        "set aside the tasks no worker can run"
    );
    Ok((dead, kept))
}

/// Marks (as an error's source) a settle operation that the script failed alone with
/// `WRONGTYPE` (see [`Settled::Failed`]): a key of its job holds another type, and will
/// the next time too. The queue's shared keys are checked by `scripts::SET_ASIDE`,
/// which refuses to set anything aside while one of them is of the wrong type.
#[derive(Debug)]
struct KeysUnusable;

impl std::fmt::Display for KeysUnusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the job's keys cannot be used")
    }
}

impl std::error::Error for KeysUnusable {}

impl KeysUnusable {
    /// Whether `e` or one of its sources is [`KeysUnusable`].
    fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(e);
        while let Some(e) = next {
            if e.is::<Self>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

/// An in-flight task apalis cannot read (see [`why_unreadable`]).
struct Unreadable {
    task: String,
    /// Its job's id; empty when its arguments name none (see [`job_named_in`]).
    job: String,
    /// What is wrong with it.
    why: String,
}

/// Whether apalis can read one in-flight task as [`scripts::INSPECT`] returns it (its
/// `Q:data` field, and its id followed by its `Q:meta:{task}` hash), decoded as a
/// worker's fetch decodes it (the meta fields it lacks added, see [`add_default_meta`];
/// then apalis's `deserialize_with_meta`, then its JSON codec, which is
/// `serde_json::from_slice`). Returns `None` when it can.
fn why_unreadable(data: redis::Value, meta: redis::Value) -> Option<Unreadable> {
    let task = match &meta {
        redis::Value::Array(fields) => fields
            .first()
            .and_then(|id| <String as redis::FromRedisValue>::from_redis_value_ref(id).ok()),
        _ => None,
    }?;
    let args = match &data {
        redis::Value::BulkString(raw) => serde_json::from_slice::<TaskArgs>(raw).map_err(|e| {
            let shown = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
            format!("its arguments cannot be read ({e}): {shown:?}")
        }),
        _ => Err("it has no arguments (no `Q:data` field)".to_owned()),
    };
    let named = if args.is_err() {
        job_named_in(&data)
    } else {
        String::new()
    };
    let mut meta = [meta];
    add_default_meta(&mut meta);
    let fetched = apalis_redis::queries::deserialize_with_meta(vec![
        redis::Value::Array(vec![data]),
        redis::Value::Array(meta.into()),
    ]);
    let (job, why) = match (args, fetched) {
        (Ok(_), Ok(_)) => return None,
        (Ok(args), Err(e)) => (args.job, format!("the task cannot be read by apalis: {e}")),
        (Err(why), _) => (named, format!("the task cannot be read: {why}")),
    };
    Some(Unreadable { task, job, why })
}

/// The job id that task arguments we cannot read still name, if any: a JSON object
/// with a string `job` field (arguments of another version of this crate), so that
/// its job is dead-lettered rather than left waiting for ever. Empty when none.
fn job_named_in(data: &redis::Value) -> String {
    let redis::Value::BulkString(raw) = data else {
        return String::new();
    };
    let args = serde_json::from_slice::<Value>(raw).unwrap_or_default();
    args.get("job")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The task running one apalis worker loop; aborted when dropped, so that aborting the
/// supervising task (a shutdown past its deadline, `kill`) stops the loop too.
struct AbortOnDrop(JoinHandle<std::result::Result<(), WorkerError>>);

impl AbortOnDrop {
    /// Waits for the loop to end; a panic in it is the loop's error.
    async fn join(mut self) -> std::result::Result<(), WorkerError> {
        (&mut self.0)
            .await
            .unwrap_or_else(|e| Err(WorkerError::PanicError(e.to_string())))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Aborts a stopping worker's tasks when dropped: after a shutdown cut short, the worker
/// is as after [`WorkerHandle::kill`](crate::WorkerHandle::kill): its tasks are
/// re-delivered once its registration is seen dead. The supervisor's task ends the
/// apalis loop it runs (an `AbortOnDrop`) when aborted.
struct KillOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The apalis loop a supervisor runs now, so that a shutdown past its deadline can
/// stop it and wait for it (see `RedisWorker::shutdown`).
type CurrentLoop = Arc<std::sync::Mutex<Option<tokio::task::AbortHandle>>>;

/// Resolves once a stop is requested; never when the handle was dropped without one
/// (a dropped `WorkerHandle` leaves its worker running).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How long a supervised loop must run before an error for its restart backoff to
/// start again from the shortest (see [`run_supervised`]).
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The number of a restart after a loop that ran for `ran` stopped on an error, the
/// previous restart being number `restarts`: a loop that ran well for a while before
/// its error starts a new series of restarts (1, the shortest backoff).
fn next_restart(restarts: u32, ran: Duration) -> u32 {
    if ran >= HEALTHY_RUN {
        1
    } else {
        restarts.saturating_add(1)
    }
}

/// How long a worker waits before restart number `restart` (see [`next_restart`]).
fn restart_backoff(restart: u32) -> Duration {
    redis_retry().backoff_cap(restart)
}

/// Runs the worker's apalis loop until `stop` says true, restarting it when it stops
/// on an error.
///
/// apalis stops a worker for good at an error it cannot handle: a fetch or heartbeat
/// failing other than transiently (see [`WorkerConnection`]), e.g. "worker not
/// registered" after other workers took it for dead, or Redis restarted without its
/// data, or a fetched task it cannot read. Its in-flight jobs are dropped with it. Tasks
/// no worker can read are then set aside (see [`set_aside_unreadable`]), the worker is
/// released (its other tasks go back on the queue, so the dropped jobs run again, and
/// its registration is removed) and started again under the same name after a
/// backoff, so a queue never silently loses its workers. The error is logged each
/// time.
async fn run_supervised(
    registration: Registration,
    state: Arc<RunState>,
    conn: WorkerConnection,
    config: apalis_redis::Config,
    poll_interval: Duration,
    mut stop: watch::Receiver<bool>,
    current_loop: CurrentLoop,
) -> std::result::Result<(), WorkerError> {
    let queue = state.cfg.name.clone();
    let name = registration.name.clone();
    let mut restarts = 0u32;
    loop {
        let mut admin = state.inner.conn.clone();
        if let Err(e) = traced("prepare_registration", &queue, registration.prepare(&mut admin)).await {
            // The heartbeat gives the hash its expiry later.
            tracing::warn!(queue = %queue, worker = %name, error = %e, "creating the worker's metadata hash failed");
        }
        // A loop that stopped dropped the tasks its backend had fetched and not
        // handed over; the new one starts with none.
        state.held.forget_buffered();
        let job_state = state.clone();
        let worker = WorkerBuilder::new(name.as_str())
            .backend(worker_backend(conn.clone(), config.clone(), poll_interval))
            .concurrency(state.cfg.concurrency)
            .build(move |args: TaskArgs| {
                let state = job_state.clone();
                let hold = HeldTask::new(&state.held, &args.task);
                async move {
                    let _hold = hold;
                    state.run_task(args).await
                }
            });
        let mut stopped = stop.clone();
        // A task of its own, as apalis's loop is meant to run (polled inside this
        // loop's future instead, the same worker was measurably slower: 5-6 % fewer
        // jobs per second in three A/B runs of the throughput bench).
        let run = AbortOnDrop(tokio::spawn(worker.run_until(async move {
            stop_requested(&mut stopped).await;
            Ok::<(), WorkerError>(())
        })));
        *lock(&current_loop) = Some(run.0.abort_handle());
        let started = tokio::time::Instant::now();
        let error = match run.join().await {
            Ok(()) => return Ok(()),
            Err(e) if *stop.borrow() => return Err(e),
            Err(e) => e,
        };
        restarts = next_restart(restarts, started.elapsed());
        tracing::error!(queue = %queue, worker = %name, error = %error, restarts, "worker stopped on an error; releasing its tasks and restarting it");
        // Both retried while Redis is unreachable, before the loop starts again: the
        // new loop's registration would otherwise re-queue the dropped jobs' tasks itself
        // (apalis's orphan re-queue), with the cut-off attempts still counted. A stop
        // meanwhile ends the supervisor; the shutdown releases the worker itself.
        let cleanup = async {
            let aside = redis_retry()
                .retry(&Idempotency::Idempotent, |_| {
                    set_aside_unreadable(&state.inner, &state.keys, &queue, &name)
                })
                .await;
            if let Err(e) = aside {
                tracing::warn!(queue = %queue, worker = %name, error = %e, "inspecting the stopped worker's tasks failed; retrying with the restart");
            }
            redis_retry()
                .retry(&Idempotency::Idempotent, |_| {
                    release(&state.inner, &state.keys, &queue, &name)
                })
                .await
        };
        let released = tokio::select! {
            () = stop_requested(&mut stop) => return Ok(()),
            released = cleanup => released,
        };
        match released {
            Ok(requeued) => {
                tracing::info!(queue = %queue, worker = %name, requeued, "released the stopped worker's tasks")
            }
            Err(e) => {
                tracing::warn!(queue = %queue, worker = %name, error = %e, "releasing the stopped worker failed; retrying with the restart")
            }
        }
        tokio::select! {
            () = stop_requested(&mut stop) => return Ok(()),
            () = tokio::time::sleep(restart_backoff(restarts)) => {}
        }
    }
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
            current_loop,
            promoter,
            heartbeat,
        } = *self;
        // Dropped before the end (the caller's own timeout cancelled this future), the
        // shutdown leaves the worker killed, not half-stopped with a heartbeat keeping
        // its registration, and so its in-flight tasks, alive for ever.
        let _kill_on_drop = KillOnDrop(vec![
            task.abort_handle(),
            heartbeat.abort_handle(),
            promoter.abort_handle(),
        ]);
        promoter.abort();
        let _ = stop.send(true);
        let drained = match tokio::time::timeout(deadline, &mut task).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                tracing::warn!(worker = %name, error = %e, "worker ended with an error");
                false
            }
            Ok(Err(_join)) => false,
            Err(_elapsed) => {
                // Stop the apalis loop and wait until it has ended (a job may be in the
                // middle of a poll on another thread): the supervisor returns once it
                // has seen the loop end. Only then may the release below put its
                // tasks back on the queue.
                let running = lock(&current_loop).take();
                match running {
                    Some(running) => running.abort(),
                    None => task.abort(),
                }
                let _ = task.await;
                false
            }
        };
        // Anything still held by this worker (cancelled mid-job, or never acknowledged)
        // goes back on the queue; also deregisters the worker. Its heartbeat stops
        // first (a refresh after the release would change nothing: `ZADD XX`).
        heartbeat.abort();
        let (_, keys) = inner.queue(&queue)?;
        // As on a restart: a task no worker can read (fetched and not handed over at
        // the stop, so never decoded) must not go back on the queue, where it would stop
        // the next worker that fetches it and cancel that worker's jobs.
        if let Err(e) = set_aside_unreadable(&inner, keys, &queue, &name).await {
            tracing::warn!(queue = %queue, worker = %name, error = %e, "inspecting the stopping worker's tasks failed");
        }
        let requeued = release(&inner, keys, &queue, &name).await?;
        tracing::info!(provider = "redis", operation = "shutdown_worker", queue, worker = %name, drained, requeued, "worker stopped");
        Ok(ShutdownReport {
            drained: drained && requeued == 0,
            requeued,
        })
    }

    fn kill(self: Box<Self>) {
        self.promoter.abort();
        self.heartbeat.abort();
        self.task.abort();
    }
}

/// A worker's connection: its own fetches (see [`fetch`](Self::fetch)), and apalis's
/// calls (registration, heartbeats, the orphan re-queue, deregistration).
///
/// A call that meets a dropped or refused connection, or a server still loading its
/// data after a restart (see `is_transient`), is retried with backoff for up to
/// `patience` (the orphan timeout: past it, other workers re-queue this worker's tasks
/// anyway): apalis stops a worker for good at the first failed fetch or heartbeat, so
/// without this a Redis restart would stop every worker.
#[derive(Clone)]
struct WorkerConnection {
    /// The worker's connection, queue, in-flight set and the tasks it holds.
    state: Arc<RunState>,
    /// The worker's settle requests, which a fetch waits for.
    gate: Gate<Settle, Settled>,
    patience: Duration,
}

impl WorkerConnection {
    /// `call`, retried while Redis is unreachable (see above).
    async fn retried<T, F, Fut>(&self, call: F) -> redis::RedisResult<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        redis_retry()
            .with_max_elapsed(Some(self.patience))
            .retry_if(is_transient, call)
            .await
    }

    /// Fetches the next tasks of worker `name` with apalis-redis's own fetch script
    /// (see `scripts::FETCH`), once the worker's settle requests made so far are
    /// answered, and no more of them than the worker has free slots.
    ///
    /// The wait: apalis's own fetch loop waits for its acknowledgements before the
    /// next fetch (its `Persisted` backend processes task events, then fetches). This
    /// crate acknowledges in its settle scripts instead, so without the gate the worker
    /// would fetch again while the previous batch is still being started: many more
    /// fetches of one or two tasks each, and as many small settle calls, when jobs
    /// trickle in. The wait is bounded by the settle batches already queued (see
    /// [`Gate::wait`]).
    ///
    /// The limit: apalis fetches up to its batch size (the queue's concurrency) as soon
    /// as one slot is free. The tasks it could not start would wait in its buffer, in
    /// this worker's in-flight set: neither pending nor running in the stats, and out
    /// of reach of idle workers, until one of the worker's jobs ends (up to the queue's
    /// timeout). Fetching only as many as it can start leaves the rest on the queue.
    ///
    /// Before a retry, the tasks a lost reply may have left in the in-flight set go
    /// back on the queue (see [`recover`](Self::recover)). The reply's tasks get the
    /// meta fields they lack (see [`with_default_meta`]) and count as fetched (see
    /// [`HeldTasks::quorum`]).
    async fn fetch(&self, name: &str) -> redis::RedisResult<Vec<apalis_redis::RedisTask>> {
        let state = &self.state;
        let keys = &state.keys;
        self.gate.wait().await;
        let free = state
            .cfg
            .concurrency
            .saturating_sub(lock(&state.held.tasks).len());
        // At least one: `LRANGE 0 -1` (a batch of 0) would take the whole queue.
        let limit = state.cfg.concurrency.clamp(1, 100).min(free).max(1);
        let reply: redis::Value = self
            .retried(|attempt| async move {
                if attempt > 1 {
                    self.recover().await?;
                }
                let mut conn = state.inner.conn.clone();
                fetch_invocation(keys, &state.inflight, limit, name)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let (reply, tasks) = with_default_meta(reply);
        state.held.fetched.fetch_add(tasks, Ordering::SeqCst);
        let redis::Value::Array(parts) = reply else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "the fetch script's reply is not an array",
            )));
        };
        Ok(apalis_redis::queries::deserialize_with_meta(parts)?
            .into_iter()
            .map(apalis_redis::queries::CompactTask::into_full_compact)
            .collect())
    }

    /// Puts back on the queue every task of this worker's in-flight set that it does
    /// not hold. Run before a failed fetch is retried (the retry waits until this
    /// succeeds): a fetch whose reply was lost (the connection dropped, or the reply
    /// missed the client's response timeout) may have moved tasks into the set, but
    /// the worker, retrying the fetch, never receives them: without this they would
    /// wait there until the worker stops. The worker fetches only when it has no
    /// fetched task left to hand over, so every task in the set that is not held then
    /// is one it will never run. A task whose attempt ended without being acknowledged
    /// (a script error) is not held either: it goes back on the queue too.
    async fn recover(&self) -> redis::RedisResult<()> {
        let state = &self.state;
        let held: Vec<String> = lock(&state.held.tasks).iter().cloned().collect();
        let mut conn = state.inner.conn.clone();
        let requeued: u64 = scripts::RECOVER
            .key(&state.inflight)
            .key(state.keys.active())
            .key(state.keys.data())
            .key(state.keys.counts())
            .arg(state.keys.record(""))
            .arg(held)
            .invoke_async(&mut conn)
            .await?;
        if requeued > 0 {
            tracing::warn!(queue = %state.cfg.name, requeued, "re-queued fetched tasks the worker will not run");
        }
        Ok(())
    }
}

/// The fetch of up to `limit` tasks for worker `name` (its in-flight set
/// `inflight`), with the keys and arguments apalis-redis's `fetch_next` gives the same
/// script.
fn fetch_invocation(
    keys: &Keys,
    inflight: &str,
    limit: usize,
    name: &str,
) -> redis::ScriptInvocation<'static> {
    let mut invocation = scripts::FETCH.prepare_invoke();
    invocation
        .key(keys.workers())
        .key(keys.active())
        .key(inflight)
        .key(keys.data())
        .key(keys.signal())
        .key(keys.meta_prefix())
        .key(keys.scheduled())
        .arg(system_now_ms() / 1000)
        .arg(limit)
        .arg(name);
    invocation
}

impl redis::aio::ConnectionLike for WorkerConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        let this: &'a Self = self;
        Box::pin(this.retried(move |_| {
            let mut conn = this.state.inner.conn.clone();
            async move { conn.req_packed_command(cmd).await }
        }))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        let this: &'a Self = self;
        Box::pin(this.retried(move |_| {
            let mut conn = this.state.inner.conn.clone();
            async move { conn.req_packed_commands(pipeline, offset, count).await }
        }))
    }

    fn get_db(&self) -> i64 {
        self.state.inner.conn.get_db()
    }
}

/// The fields apalis requires of a task's `Q:meta:{task}` hash (see
/// `apalis_redis::queries::deserialize_with_meta`), with the values a worker gives
/// those a task lacks. This crate writes no such hash (see `scripts`); apalis writes
/// one field itself when its `Persisted` backend puts back fetched tasks it never
/// started (`status`; not with [`FetchBackend`], whose worker releases them, but a
/// task left by an older version may carry it). Nothing here reads them: attempts are
/// counted in the job record.
const DEFAULT_META: [(&str, &str); 3] = [("attempts", "0"), ("max_attempts", "1"), ("status", "Pending")];

/// Gives every task of `metas` (each its id followed by its `Q:meta:{task}` hash's
/// fields and values, as the fetch script returns them) the fields of
/// [`DEFAULT_META`] it lacks. A field it has keeps its value: a malformed one stays
/// unreadable, and so does a hash whose fields and values do not pair up.
fn add_default_meta(metas: &mut [redis::Value]) {
    for meta in metas {
        let redis::Value::Array(fields) = meta else {
            continue;
        };
        if fields.is_empty() || fields.len() % 2 == 0 {
            continue;
        }
        for (name, value) in DEFAULT_META {
            let present = fields[1..]
                .iter()
                .step_by(2)
                .any(|f| matches!(f, redis::Value::BulkString(n) if n == name.as_bytes()));
            if !present {
                fields.push(redis::Value::BulkString(name.as_bytes().to_vec()));
                fields.push(redis::Value::BulkString(value.as_bytes().to_vec()));
            }
        }
    }
}

/// A reply of the shape of the fetch script's (`{data, meta}`) with
/// [`add_default_meta`] applied, and how many tasks it holds; any other reply
/// unchanged, with none.
fn with_default_meta(mut reply: redis::Value) -> (redis::Value, u64) {
    let mut tasks = 0;
    if let redis::Value::Array(parts) = &mut reply
        && let [redis::Value::Array(data), redis::Value::Array(metas)] = parts.as_mut_slice()
    {
        tasks = data.len() as u64;
        add_default_meta(metas);
    }
    (reply, tasks)
}

/// apalis-redis's backend, on a worker's connection.
type Storage = RedisStorage<TaskArgs, WorkerConnection>;

type Fetching = Pin<Box<dyn Future<Output = redis::RedisResult<Vec<apalis_redis::RedisTask>>> + Send>>;

/// The backend a worker's apalis loop runs on: apalis-redis's `RedisStorage`
/// (registration, heartbeats, the orphan re-queue, its task codec and middleware),
/// except for the fetches, which are the worker's own (see
/// [`WorkerConnection::fetch`]): apalis builds its fetch script anew, hashing its
/// source, for every fetch, which cost a worker about a third of its instructions.
/// Like apalis's, it hands over the tasks of a fetch one at a time, fetches again
/// once it has none left, and ends at its first failed fetch (the supervisor restarts
/// the loop).
struct FetchBackend {
    storage: Storage,
    conn: WorkerConnection,
    fetching: Option<Fetching>,
    fetched: VecDeque<apalis_redis::RedisTask>,
    failed: bool,
}

impl FetchBackend {
    fn new(conn: WorkerConnection, config: apalis_redis::Config) -> Self {
        Self {
            storage: RedisStorage::new(conn.clone()).with_config(config),
            conn,
            fetching: None,
            fetched: VecDeque::new(),
            failed: false,
        }
    }
}

impl Backend for FetchBackend {
    type Task = apalis_redis::RedisTask;
    type Error = apalis_redis::Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        self.storage.poll_ready(cx, worker)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<std::result::Result<Self::Task, Self::Error>>> {
        loop {
            if self.failed {
                return Poll::Ready(None);
            }
            if let Some(task) = self.fetched.pop_front() {
                return Poll::Ready(Some(Ok(task)));
            }
            let Self { fetching, conn, .. } = self;
            let fetch = fetching.get_or_insert_with(|| {
                let (conn, name) = (conn.clone(), worker.name().to_owned());
                Box::pin(async move { conn.fetch(&name).await })
            });
            let Poll::Ready(fetched) = fetch.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.fetching = None;
            match fetched {
                // Woken again by the poll strategy (see `IdlePoll`) or a job's end.
                Ok(tasks) if tasks.is_empty() => return Poll::Pending,
                Ok(tasks) => self.fetched.extend(tasks),
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        // Fetched tasks never handed over stay in the worker's in-flight set: the
        // stopped worker sets aside those no worker can read and releases the rest
        // (see `release`), as after a loop that ended on an error.
        self.fetched.clear();
        self.storage.poll_close(cx, worker)
    }
}

impl BackendConfig for FetchBackend {
    type Args = TaskArgs;
    type Id = <Storage as BackendConfig>::Id;
    type Kind = <Storage as BackendConfig>::Kind;
    type Config = apalis_redis::Config;
    type Layer = <Storage as BackendConfig>::Layer;

    fn config(&self) -> &Self::Config {
        self.storage.config()
    }

    fn middleware(&mut self, worker: &mut WorkerContext) -> Self::Layer {
        self.storage.middleware(worker)
    }
}

impl WireFormatBackend for FetchBackend {
    type Codec = <Storage as WireFormatBackend>::Codec;
    type Compact = <Storage as WireFormatBackend>::Compact;

    fn codec(&self) -> &Self::Codec {
        self.storage.codec()
    }
}

/// The backend a worker fetches from. Its idle polling is [`IdlePoll`], not apalis's
/// `poll_with_interval`: that interval can drop its wake-up and park an idle worker
/// until its next heartbeat (30 s by default) while jobs wait (see [`IdlePoll`]).
/// The return type pins the strategy.
fn worker_backend(
    conn: WorkerConnection,
    config: apalis_redis::Config,
    poll_interval: Duration,
) -> PollWith<FetchBackend, IdlePoll> {
    FetchBackend::new(conn, config).poll_with_strategy(IdlePoll::new(poll_interval))
}

#[async_trait]
impl JobWorkers for RedisQueue {
    async fn start_worker(&self, queue: &str, handler: Arc<dyn JobHandler>) -> Result<WorkerHandle> {
        let (cfg, keys) = self.inner.queue(queue)?;
        let (cfg, keys) = (cfg.clone(), keys.clone());
        let name = format!("{queue}-{}", uuid::Uuid::new_v4().simple());
        // Acknowledgement is done by our scripts and leases are off (see `scripts`).
        // Each fetch takes at most the free slots (see `WorkerConnection::fetch`).
        let apalis_config = keys
            .apalis
            .clone()
            .batch_size(cfg.concurrency.clamp(1, 100))
            .persist_results(false)
            .lock_tasks(false);
        let inflight = keys.inflight(&name);
        let held = Held::default();
        let (tasks, slots) = (held.clone(), cfg.concurrency as u64);
        let settle = settle_batcher(self.inner.conn.clone(), keys.clone(), inflight.clone(), &cfg)
            .with_quorum(move || tasks.quorum(slots));
        let promoter = spawn_promoter(
            self.inner.conn.clone(),
            keys.clone(),
            queue.to_owned(),
            self.inner.poll_interval,
        );
        let registration = Registration {
            workers: keys.workers().to_owned(),
            metadata: keys.worker_metadata(&name),
            name: name.clone(),
            // Past the orphan timeout the worker is taken for dead anyway.
            ttl: 2 * self.inner.orphan_timeout,
        };
        let heartbeat = spawn_heartbeat(
            self.inner.conn.clone(),
            registration.clone(),
            queue.to_owned(),
            keys.apalis.heartbeat_interval,
        );
        let state = Arc::new(RunState {
            settle,
            inner: self.inner.clone(),
            cfg,
            keys,
            inflight,
            handler,
            held,
            deliveries: AtomicU64::new(uuid::Uuid::new_v4().as_u64_pair().0),
        });
        let conn = WorkerConnection {
            gate: state.settle.gate(),
            patience: self.inner.orphan_timeout,
            state: state.clone(),
        };
        let (stop, stopped) = watch::channel(false);
        let current_loop = CurrentLoop::default();
        let task = tokio::spawn(run_supervised(
            registration,
            state,
            conn,
            apalis_config,
            self.inner.poll_interval,
            stopped,
            current_loop.clone(),
        ));
        tracing::info!(provider = "redis", operation = "start_worker", queue, worker = %name, "worker started");
        Ok(WorkerHandle {
            name: name.clone(),
            control: Box::new(RedisWorker {
                name,
                queue: queue.to_owned(),
                inner: self.inner.clone(),
                stop,
                task,
                current_loop,
                promoter,
                heartbeat,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

    use super::*;
    use crate::config::QueueCatalog;
    use crate::redis::RedisQueueBuilder;
    use crate::{JobQueue, JobState, NewJob};

    fn bulk(s: &str) -> redis::Value {
        redis::Value::BulkString(s.as_bytes().to_vec())
    }

    /// A task as `INSPECT` returns it: its `Q:data` field and its id followed by the
    /// given `Q:meta:{task}` fields.
    fn inspected(data: Option<&str>, task: &str, meta: &[&str]) -> (redis::Value, redis::Value) {
        let mut fields = vec![bulk(task)];
        fields.extend(meta.iter().map(|f| bulk(f)));
        (data.map_or(redis::Value::Nil, bulk), redis::Value::Array(fields))
    }

    /// The settle batcher's quorum counts the tasks a worker holds and those its
    /// fetches returned that apalis has not handed over yet, when they take every
    /// slot; with a slot free there is none. The tasks a stopped loop had buffered are
    /// forgotten.
    #[test]
    fn the_quorum_is_every_slots_job_held_or_to_come() {
        let held = Held::default();
        held.fetched.fetch_add(3, Ordering::SeqCst);
        assert_eq!(held.quorum(3), 3, "three to come");
        assert_eq!(held.quorum(4), u64::MAX, "a slot free: the next fetch sends");
        let a = HeldTask::new(&held, "a");
        assert_eq!(held.quorum(3), 3, "one held, two to come");
        let b = HeldTask::new(&held, "b");
        drop(a);
        assert_eq!(held.quorum(2), 2, "one held, one to come");
        assert_eq!(held.quorum(3), u64::MAX);
        held.forget_buffered();
        assert_eq!(held.quorum(1), 1, "one held");
        drop(b);
        assert_eq!(held.quorum(1), u64::MAX, "nothing held");
    }

    /// A fetch reply counts its tasks; any other reply none.
    #[test]
    fn a_fetch_reply_counts_its_tasks() {
        let fetch = redis::Value::Array(vec![
            redis::Value::Array(vec![bulk("{}"), bulk("{}")]),
            redis::Value::Array(vec![
                redis::Value::Array(vec![bulk("t1")]),
                redis::Value::Array(vec![bulk("t2")]),
            ]),
        ]);
        let tasks = |reply| with_default_meta(reply).1;
        assert_eq!(tasks(fetch), 2);
        assert_eq!(tasks(redis::Value::Array(Vec::new())), 0);
        assert_eq!(tasks(redis::Value::Okay), 0);
        assert_eq!(tasks(redis::Value::Int(2)), 0);
    }

    /// Restarts after quick failures back off longer each time, up to the cap; a loop
    /// that ran healthily for a while before failing restarts after the shortest wait.
    #[test]
    fn restarts_back_off_until_a_healthy_run_resets_them() {
        let quick = Duration::from_secs(1);
        let mut restarts = 0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            restarts = next_restart(restarts, quick);
            waits.push(restart_backoff(restarts));
        }
        assert_eq!(waits[0], Duration::from_millis(50));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert!(waits[3] > waits[0], "{waits:?}");
        assert_eq!(waits[9], Duration::from_secs(5), "capped");
        assert_eq!(next_restart(restarts, HEALTHY_RUN), 1);
        assert_eq!(restart_backoff(next_restart(restarts, HEALTHY_RUN)), waits[0]);
        assert_eq!(next_restart(restarts, HEALTHY_RUN - quick), 11);
    }

    /// The settle script's reply, one string of entries, decodes to one answer per
    /// operation; an envelope is taken by its byte length, whatever it holds; a reply
    /// that is cut short, has an unknown entry or the wrong count is an error.
    #[test]
    fn settle_replies_decode_to_one_answer_per_operation() {
        let envelope = r#"{"meta":{"product":"k:ö,1"},"payload":"s1,2,3:+-"}"#;
        let error = "WRONGTYPE Operation against a key: e3:x";
        let reply = format!(
            "-s2,3,{}:{envelope}+-s1,1,0:e{}:{error}",
            envelope.len(),
            error.len()
        );
        let started = |attempt, max_attempts, envelope: &str| Settled::Started {
            attempt,
            max_attempts,
            envelope: envelope.as_bytes().to_vec(),
        };
        assert_eq!(
            Settled::decode_all(reply.as_bytes(), 6).unwrap(),
            vec![
                Settled::Stale,
                started(2, 3, envelope),
                Settled::Completed,
                Settled::Stale,
                started(1, 1, ""),
                Settled::Failed(error.to_owned()),
            ]
        );
        assert_eq!(Settled::decode_all(b"", 0).unwrap(), vec![]);
        let cut = &reply[..reply.len() - 10];
        for bad in [
            cut,
            "+-",
            "+x",
            "s1,2:{}",
            "s1,2,3,4:abc",
            "s1,2,9:{}",
            "sx,2,2:{}",
            "e9:short",
            "ex:abc",
        ] {
            let err = Settled::decode_all(bad.as_bytes(), 3).unwrap_err();
            assert!(err.to_string().contains("malformed reply"), "{bad}: {err}");
        }
    }

    /// Decoding as a worker's fetch does: what enqueue writes (no meta hash) is
    /// readable, and so are a task with apalis's own meta hash and one with the lone
    /// `status` apalis writes when it puts a task back; a task with a malformed meta hash
    /// names its job; one without readable arguments does not.
    /// A connection that records the arguments of the one command sent to it and
    /// fails it.
    #[derive(Clone, Default)]
    struct Recorder(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

    impl redis::aio::ConnectionLike for Recorder {
        fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
            *self.0.lock().unwrap() = cmd
                .args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(arg) => arg.to_vec(),
                    _ => Vec::new(),
                })
                .collect();
            Box::pin(async { Err(redis::RedisError::from((redis::ErrorKind::Client, "recorded"))) })
        }

        fn req_packed_commands<'a>(
            &'a mut self,
            _: &'a redis::Pipeline,
            _: usize,
            _: usize,
        ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
            Box::pin(async {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "not a pipeline",
                )))
            })
        }

        fn get_db(&self) -> i64 {
            0
        }
    }

    /// The worker's fetch is apalis-redis's own: the script apalis-redis's
    /// `fetch_next` sends is `fetch_next.lua` without the licence notice it carries
    /// here, and it gets the same keys and arguments (the time aside). An apalis-redis
    /// release that changes its fetch fails this, so that the copy follows it.
    #[tokio::test]
    async fn the_worker_fetches_as_apalis_redis_does() {
        let keys = Keys::new("pqtest", "q", Duration::from_secs(30), 3);
        let worker = apalis::prelude::WorkerContext::from("w");
        let config = keys.apalis.clone().batch_size(7);
        let apalis = Recorder::default();
        let fetched = apalis_redis::queries::fetch_next(&mut apalis.clone(), &worker, &config).await;
        assert!(fetched.is_err(), "the recorder fails every command");
        let ours = Recorder::default();
        let inflight = config.inflight_set_for(&worker);
        let _ = fetch_invocation(&keys, &inflight, 7, "w")
            .invoke_async::<redis::Value>(&mut ours.clone())
            .await;
        let (apalis, ours) = (apalis.0.lock().unwrap().clone(), ours.0.lock().unwrap().clone());
        let source = include_str!("fetch_next.lua");
        let (_, body) = source.split_once("-- SOFTWARE.\n\n").unwrap();
        assert_eq!(apalis[0], b"EVALSHA");
        assert_eq!(
            apalis[1],
            redis::Script::new(body).get_hash().as_bytes(),
            "apalis-redis's fetch script changed"
        );
        assert_eq!(ours[1], scripts::FETCH.get_hash().as_bytes());
        // EVALSHA, the hash, 7 keys and their names, now (unix seconds), the batch, the
        // worker's name.
        let now = 3 + 7;
        assert_eq!(apalis.len(), now + 3, "{apalis:?}");
        let without_hash_and_now = |args: &[Vec<u8>]| {
            let mut args = args.to_vec();
            args.remove(now);
            args.remove(1);
            args
        };
        assert_eq!(without_hash_and_now(&ours), without_hash_and_now(&apalis));
    }

    #[test]
    fn unreadable_tasks_are_told_apart_from_readable_ones() {
        let task = ulid::Ulid::generate().to_string();
        let args = TaskArgs {
            job: "j".to_owned(),
            task: task.clone(),
        }
        .to_json()
        .unwrap();
        let apalis = ["attempts", "0", "max_attempts", "25", "status", "Pending"];
        for written in [&[][..], &apalis, &["status", "Pending"]] {
            let (data, fields) = inspected(Some(&args), &task, written);
            assert!(why_unreadable(data, fields).is_none(), "{written:?}");
        }

        for (malformed, why) in [
            (&["attempts", "x"][..], "invalid digit"),
            (&["status", "Pending", "attempts"], "odd"),
            (&["status", "Sleeping"], "Sleeping"),
        ] {
            let (data, fields) = inspected(Some(&args), &task, malformed);
            let u = why_unreadable(data, fields).unwrap();
            assert_eq!((u.task.as_str(), u.job.as_str()), (task.as_str(), "j"));
            assert!(u.why.contains(why), "{malformed:?}: {}", u.why);
        }

        for data in [Some(r#"{"job_id":"j"}"#), Some(r#"{"job":7}"#), Some("[1"), None] {
            let (data, fields) = inspected(data, &task, &[]);
            let u = why_unreadable(data, fields).unwrap();
            assert_eq!((u.task.as_str(), u.job.as_str()), (task.as_str(), ""));
            assert!(u.why.contains("cannot be read"), "{}", u.why);
        }
        // Arguments of another version that still name their job.
        let (data, fields) = inspected(Some(r#"{"job":"j","v":2}"#), &task, &[]);
        let u = why_unreadable(data, fields).unwrap();
        assert_eq!(u.job, "j");
        assert!(u.why.contains("missing field `task`"), "{}", u.why);
    }

    /// A fetch reply's tasks get the default meta fields they lack (all of them without
    /// a hash, the others beside apalis's lone `status`) and keep those they have; any
    /// other reply is unchanged.
    #[test]
    fn fetch_replies_get_the_default_meta_fields_tasks_lack() {
        let array = |items: &[&str]| redis::Value::Array(items.iter().map(|i| bulk(i)).collect());
        let own = ["t2", "attempts", "3", "max_attempts", "5", "status", "Running"];
        let reply = redis::Value::Array(vec![
            array(&["{}", "{}", "{}"]),
            redis::Value::Array(vec![
                array(&["t1"]),
                array(&own),
                array(&["t3", "status", "Pending"]),
            ]),
        ]);
        let expected = redis::Value::Array(vec![
            array(&["{}", "{}", "{}"]),
            redis::Value::Array(vec![
                array(&["t1", "attempts", "0", "max_attempts", "1", "status", "Pending"]),
                array(&own),
                array(&["t3", "status", "Pending", "attempts", "0", "max_attempts", "1"]),
            ]),
        ]);
        assert_eq!(with_default_meta(reply).0, expected);
        let fetch_shaped_but_not = redis::Value::Array(vec![redis::Value::Int(1), array(&["x"])]);
        for other in [
            redis::Value::Nil,
            redis::Value::Int(3),
            array(&["a", "b"]),
            redis::Value::Array(vec![]),
            fetch_shaped_but_not,
        ] {
            assert_eq!(with_default_meta(other.clone()).0, other);
        }
    }

    /// A queue on Redis (`REDIS_URL`, default 127.0.0.1:6379, like the Redis
    /// integration tests) under a fresh key prefix, returned with the prefix.
    async fn redis_queue(catalog: QueueCatalog) -> (RedisQueue, String) {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!("pqtest:{}", uuid::Uuid::new_v4().simple());
        let queue = RedisQueueBuilder::new()
            .with_url(&url)
            .with_prefix(&prefix)
            .with_catalog(catalog)
            .build()
            .await
            .unwrap_or_else(|e| {
                panic!("Redis is not reachable at {url} ({e}); start it with scripts/services.sh")
            });
        (queue, prefix)
    }

    /// Job "j", enqueued on queue "q" (configured as `q`), as fetched by a worker "w":
    /// its task moved from the active list into w's in-flight set. Returns the queue,
    /// the task id and a batcher settling as w.
    async fn held_job(q: QueueConfig) -> (RedisQueue, String, Batcher<Settle, Settled>) {
        let (queue, _prefix) = redis_queue(QueueCatalog::empty().with_queue(q).unwrap()).await;
        let task = enqueue_held(&queue, "j").await;
        let (cfg, keys) = queue.inner.queue("q").unwrap();
        let settle = settle_batcher(queue.inner.conn.clone(), keys.clone(), keys.inflight("w"), cfg);
        (queue, task, settle)
    }

    /// Enqueues job `id` on queue "q" and moves its task into worker "w"'s in-flight set
    /// (see [`hold`]); returns the task.
    async fn enqueue_held(queue: &RedisQueue, id: &str) -> String {
        queue
            .enqueue("q", NewJob::new(Value::Null).with_job_id(id))
            .await
            .unwrap();
        let (_, keys) = queue.inner.queue("q").unwrap();
        let task: String = redis::cmd("HGET")
            .arg(keys.record(id))
            .arg("task")
            .query_async(&mut queue.inner.conn.clone())
            .await
            .unwrap();
        hold(queue, &task).await;
        task
    }

    /// Moves `task` from queue "q"'s active list into worker "w"'s in-flight set, as
    /// its fetch does.
    async fn hold(queue: &RedisQueue, task: &str) {
        let (_, keys) = queue.inner.queue("q").unwrap();
        let _: () = redis::pipe()
            .cmd("LREM")
            .arg(keys.active())
            .arg(0)
            .arg(task)
            .ignore()
            .cmd("SADD")
            .arg(keys.inflight("w"))
            .arg(task)
            .ignore()
            .query_async(&mut queue.inner.conn.clone())
            .await
            .unwrap();
    }

    /// The run state of worker "w" on queue "q", settling through `settle`, with a
    /// handler that succeeds.
    fn worker_w(queue: &RedisQueue, settle: Batcher<Settle, Settled>) -> Arc<RunState> {
        worker_w_running(queue, settle, crate::handler_fn(|_| async { Ok(()) }))
    }

    /// [`worker_w`] with `handler` as its jobs' handler.
    fn worker_w_running(
        queue: &RedisQueue,
        settle: Batcher<Settle, Settled>,
        handler: Arc<dyn JobHandler>,
    ) -> Arc<RunState> {
        let (cfg, keys) = queue.inner.queue("q").unwrap();
        Arc::new(RunState {
            inner: queue.inner.clone(),
            cfg: cfg.clone(),
            keys: keys.clone(),
            inflight: keys.inflight("w"),
            handler,
            settle,
            held: Held::default(),
            deliveries: AtomicU64::new(1),
        })
    }

    /// Enqueues job `id` on queue "q", moves its task into worker "w"'s in-flight set and
    /// replaces its record with a string (a key of the wrong type); returns the task.
    async fn held_unreadable_job(queue: &RedisQueue, id: &str) -> String {
        let task = enqueue_held(queue, id).await;
        let (_, keys) = queue.inner.queue("q").unwrap();
        replace_with_string(queue.inner.conn.clone(), &keys.record(id)).await;
        task
    }

    /// Replaces `key` with a string (a key of the wrong type for every script).
    async fn replace_with_string(mut conn: ConnectionManager, key: &str) {
        let _: () = redis::pipe()
            .cmd("DEL")
            .arg(key)
            .ignore()
            .cmd("SET")
            .arg(key)
            .arg("not a hash")
            .ignore()
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    /// Runs task `task` of job "j" through `state`, which must fail it; returns the error.
    async fn failed_run_of_j(state: &Arc<RunState>, task: &str) -> BoxError {
        let args = TaskArgs {
            job: "j".to_owned(),
            task: task.to_owned(),
        };
        state.run_task(args).await.unwrap_err()
    }

    /// Worker "w" stopped with job "j" started and an unreadable job beside it: the
    /// release skips the record it cannot read and still puts both tasks back, with job
    /// "j" pending, its cut-off attempt uncounted and no job counted as running.
    #[tokio::test]
    async fn a_release_skips_a_record_it_cannot_read() {
        let (queue, task, settle) = held_job(QueueConfig::new("q")).await;
        assert_eq!(start(&settle, &task, 1).await, Some(1));
        held_unreadable_job(&queue, "bad").await;
        let (_, keys) = queue.inner.queue("q").unwrap();
        let released = release(&queue.inner, keys, "q", "w").await;
        let stats = queue.stats("q").await.unwrap();
        let job = queue.job("q", "j").await.unwrap().unwrap();
        queue.purge().await.unwrap();
        assert_eq!(released.unwrap(), 2);
        assert_eq!(stats.running, 0, "{stats:?}");
        assert_eq!(
            (job.state, job.attempts),
            (crate::JobState::Pending, 0),
            "{job:?}"
        );
    }

    /// A started task the worker no longer holds (its apalis loop ended on an error,
    /// dropping the job) goes back on the queue through `recover` with its attempt
    /// uncounted: a job on its only attempt runs again instead of being dead-lettered
    /// as if it had crashed its worker.
    #[tokio::test]
    async fn a_recovered_task_of_a_dropped_job_does_not_count_its_attempt() {
        let retry = RetryPolicy::default().with_max_attempts(1);
        let (queue, task, settle) = held_job(QueueConfig::new("q").with_retry(retry)).await;
        let state = worker_w(&queue, settle);
        assert_eq!(start(&state.settle, &task, 1).await, Some(1));
        let conn = WorkerConnection {
            gate: state.settle.gate(),
            patience: Duration::from_secs(1),
            state: state.clone(),
        };
        conn.recover().await.unwrap();
        let (active, held) = active_and_held(&queue, &task).await;
        assert_eq!((active.as_slice(), held), (std::slice::from_ref(&task), false));
        assert_eq!(queue.stats("q").await.unwrap().running, 0);
        // Fetched again by the worker: the job runs, as its first attempt.
        hold(&queue, &task).await;
        let again = start(&state.settle, &task, 2).await;
        queue.purge().await.unwrap();
        assert_eq!(again, Some(1), "the dropped attempt was not counted");
    }

    /// Queue "q"'s active list, and whether `task` is in worker "w"'s in-flight set.
    async fn active_and_held(queue: &RedisQueue, task: &str) -> (Vec<String>, bool) {
        let (_, keys) = queue.inner.queue("q").unwrap();
        redis::pipe()
            .cmd("LRANGE")
            .arg(keys.active())
            .arg(0)
            .arg(-1)
            .cmd("SISMEMBER")
            .arg(keys.inflight("w"))
            .arg(task)
            .query_async(&mut queue.inner.conn.clone())
            .await
            .unwrap()
    }

    /// `task`'s arguments in queue "q"'s data hash, if it still has them.
    async fn task_args(queue: &RedisQueue, task: &str) -> Option<String> {
        let (_, keys) = queue.inner.queue("q").unwrap();
        redis::cmd("HGET")
            .arg(keys.data())
            .arg(task)
            .query_async(&mut queue.inner.conn.clone())
            .await
            .unwrap()
    }

    /// Starts delivery `delivery` of `task` (job "j"): the attempt it counted, or None
    /// when stale.
    async fn start(settle: &Batcher<Settle, Settled>, task: &str, delivery: u64) -> Option<u32> {
        let op = Settle::Start {
            task: task.to_owned(),
            job: "j".to_owned(),
            delivery,
        };
        match settle.call(op).await.unwrap() {
            Settled::Started { attempt, .. } => Some(attempt),
            other => {
                assert_eq!(other, Settled::Stale);
                None
            }
        }
    }

    /// A job whose every attempt was cut off without an outcome (its worker crashed each
    /// time, and the task was delivered again) is dead-lettered at its next delivery
    /// instead of running once more; its task is acknowledged. Needs Redis.
    #[tokio::test]
    async fn a_delivery_past_the_last_attempt_dead_letters_the_job() {
        let retry = RetryPolicy::default().with_max_attempts(2);
        let (queue, task, settle) = held_job(QueueConfig::new("q").with_retry(retry)).await;
        assert_eq!(start(&settle, &task, 1).await, Some(1));
        assert_eq!(
            start(&settle, &task, 2).await,
            Some(2),
            "re-delivered after a crash"
        );
        assert_eq!(start(&settle, &task, 3).await, None, "not run a third time");
        let job = queue.job("q", "j").await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Dead, 2), "{job:?}");
        let why = job.last_error.unwrap_or_default();
        assert!(why.contains("cut off without an outcome"), "{why}");
        let stats = queue.stats("q").await.unwrap();
        assert_eq!((stats.dead, stats.running, stats.pending), (1, 0, 0), "{stats:?}");
        let (active, held) = active_and_held(&queue, &task).await;
        queue.purge().await.unwrap();
        assert!(active.is_empty() && !held, "its task is acknowledged");
    }

    /// An outcome whose start was lost (Redis restarted without its last writes: the
    /// record still names the task as pending) is stale, and its task goes back on the
    /// queue to run again instead of being acknowledged away. Needs Redis.
    #[tokio::test]
    async fn an_outcome_whose_start_was_lost_puts_the_task_back() {
        let (queue, task, settle) = held_job(QueueConfig::new("q")).await;
        assert_eq!(start(&settle, &task, 1).await, Some(1));
        let (_, keys) = queue.inner.queue("q").unwrap();
        let mut conn = queue.inner.conn.clone();
        // The record as it was before the start.
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(keys.record("j"))
            .arg("state")
            .arg("pending")
            .ignore()
            .cmd("HDEL")
            .arg(keys.record("j"))
            .arg("attempts")
            .arg("delivery")
            .ignore()
            .query_async(&mut conn)
            .await
            .unwrap();
        let complete = Settle::Complete {
            task: task.clone(),
            job: "j".to_owned(),
            attempt: 1,
        };
        assert_eq!(settle.call(complete).await.unwrap(), Settled::Stale);
        let (active, held) = active_and_held(&queue, &task).await;
        let args = task_args(&queue, &task).await;
        queue.purge().await.unwrap();
        assert_eq!(active, std::slice::from_ref(&task), "back on the queue");
        assert!(!held);
        assert!(args.is_some(), "its arguments are kept");
    }

    /// A task whose job's keys cannot be used (here: its record is not a hash, so the
    /// settle script fails its start) is set aside, kept as unreadable with the reason,
    /// instead of going back on the queue to fail the same way once a second for ever
    /// (or waiting in the worker's in-flight set until the worker stops). Needs Redis.
    #[tokio::test]
    async fn a_task_whose_jobs_keys_cannot_be_used_is_set_aside() {
        let (queue, task, settle) = held_job(QueueConfig::new("q")).await;
        let (_, keys) = queue.inner.queue("q").unwrap();
        replace_with_string(queue.inner.conn.clone(), &keys.record("j")).await;
        let err = failed_run_of_j(&worker_w(&queue, settle), &task).await;
        assert!(err.to_string().contains("WRONGTYPE"), "{err}");
        let (active, held) = active_and_held(&queue, &task).await;
        let unreadable = queue.unreadable_tasks("q").await.unwrap();
        let stats = queue.stats("q").await.unwrap();
        queue.purge().await.unwrap();
        assert!(active.is_empty(), "not put back: {active:?}");
        assert!(!held);
        assert_eq!(unreadable.len(), 1, "{unreadable:?}");
        assert_eq!(unreadable[0].task_id, task);
        assert!(unreadable[0].reason.contains("WRONGTYPE"), "{unreadable:?}");
        assert_eq!(stats.unreadable, 1, "{stats:?}");
    }

    /// Only a `WRONGTYPE` failure of a settle operation marks the job's keys unusable
    /// (its task is then set aside); any other (here Redis out of memory, which may
    /// heal) leaves the task to be put back. Needs Redis (see `redis_queue`).
    #[tokio::test]
    async fn only_a_key_of_the_wrong_type_marks_a_jobs_keys_unusable() {
        let (queue, _task, _) = held_job(QueueConfig::new("q")).await;
        let mut seen = Vec::new();
        for (message, unusable) in [
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                true,
            ),
            ("OOM command not allowed when used memory > 'maxmemory'.", false),
        ] {
            let failing = Batcher::new("settle_jobs", 10, SETTLE_LINGER, move |ops: Vec<Settle>| {
                let n = ops.len();
                async move { Ok((0..n).map(|_| Settled::Failed(message.to_owned())).collect()) }
            });
            let state = worker_w(&queue, failing);
            let args = TaskArgs::new("j");
            seen.push((message, unusable, state.settle(|| Settle::start(&args, 1)).await));
        }
        queue.purge().await.unwrap();
        for (message, unusable, settled) in seen {
            let err = settled.unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
            assert_eq!(KeysUnusable::caused(&err), unusable, "{message}");
        }
    }

    /// `SET_ASIDE` writes nothing while one of the queue's shared keys is of the wrong
    /// type (Lua would not undo its first writes when a later one failed): the task
    /// stays in the worker's in-flight set with its arguments, to be put back. Needs
    /// Redis (see `redis_queue`).
    #[tokio::test]
    async fn setting_aside_writes_nothing_while_a_shared_key_is_of_the_wrong_type() {
        let (queue, task, _) = held_job(QueueConfig::new("q")).await;
        let (_, keys) = queue.inner.queue("q").unwrap();
        let mut conn = queue.inner.conn.clone();
        replace_with_string(conn.clone(), keys.unreadable()).await;
        let unusable = Unreadable {
            task: task.clone(),
            job: "j".to_owned(),
            why: "test".to_owned(),
        };
        let res = set_aside(&queue.inner, keys, "q", &keys.inflight("w"), &[unusable]).await;
        let (active, held) = active_and_held(&queue, &task).await;
        let args = task_args(&queue, &task).await;
        let state: Option<String> = redis::cmd("HGET")
            .arg(keys.record("j"))
            .arg("state")
            .query_async(&mut conn)
            .await
            .unwrap();
        queue.purge().await.unwrap();
        let err = res.unwrap_err();
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            cause.as_deref().is_some_and(|c| c.contains("WRONGTYPE")),
            "{err}: {cause:?}"
        );
        assert!(held && active.is_empty(), "still in the in-flight set");
        assert!(args.is_some(), "its arguments are kept");
        assert_eq!(state.as_deref(), Some("pending"), "its job is not dead-lettered");
    }

    /// A task whose attempt's outcome cannot be recorded by a script call as a whole
    /// (here: the handler replaced its job's record with a string, then failed, so the
    /// retry script raises an error) goes back on the queue instead of waiting in the
    /// worker's in-flight set until the worker stops. Needs Redis.
    #[tokio::test]
    async fn a_task_whose_outcome_cannot_be_recorded_goes_back_on_the_queue() {
        let (queue, task, settle) = held_job(QueueConfig::new("q")).await;
        let (_, keys) = queue.inner.queue("q").unwrap();
        let (record, conn) = (keys.record("j"), queue.inner.conn.clone());
        let handler = crate::handler_fn(move |_| {
            let (record, conn) = (record.clone(), conn.clone());
            async move {
                replace_with_string(conn, &record).await;
                Err(JobError::retryable("failed after breaking its record"))
            }
        });
        let err = failed_run_of_j(&worker_w_running(&queue, settle, handler), &task).await;
        assert!(err.to_string().contains("retry_job"), "{err}");
        let (active, held) = active_and_held(&queue, &task).await;
        let unreadable = queue.unreadable_tasks("q").await.unwrap();
        queue.purge().await.unwrap();
        assert_eq!(active, std::slice::from_ref(&task), "back on the queue");
        assert!(!held);
        assert!(unreadable.is_empty(), "{unreadable:?}");
    }

    /// A job whose record cannot be read (a key of the wrong type) fails alone: the
    /// other operations of its batch apply, with their counts. Needs Redis.
    #[tokio::test]
    async fn an_unreadable_record_fails_only_its_own_operation() {
        let (queue, task, settle) = held_job(QueueConfig::new("q")).await;
        let bad_task = held_unreadable_job(&queue, "bad").await;
        let start = |task: &str, job: &str| Settle::Start {
            task: task.to_owned(),
            job: job.to_owned(),
            delivery: 1,
        };
        // Made together: one batch.
        let (good, bad) = tokio::join!(
            settle.call(start(&task, "j")),
            settle.call(start(&bad_task, "bad"))
        );
        let good = good.unwrap();
        assert!(matches!(good, Settled::Started { attempt: 1, .. }), "{good:?}");
        let bad = bad.unwrap();
        assert!(
            matches!(&bad, Settled::Failed(m) if m.contains("WRONGTYPE")),
            "{bad:?}"
        );
        assert_eq!(queue.stats("q").await.unwrap().running, 1);
        let complete = Settle::Complete {
            task: task.clone(),
            job: "j".to_owned(),
            attempt: 1,
        };
        assert_eq!(settle.call(complete).await.unwrap(), Settled::Completed);
        let stats = queue.stats("q").await.unwrap();
        queue.purge().await.unwrap();
        assert_eq!((stats.running, stats.done), (0, 1), "{stats:?}");
    }

    /// A start sent again after its reply was lost (same delivery) counts no second
    /// attempt; the next delivery of the same task counts one; a start for a task no
    /// longer in the worker's in-flight set is stale and counts none. Needs Redis (see
    /// `redis_queue`).
    #[tokio::test]
    async fn a_start_counts_one_attempt_per_delivery_of_a_held_task() {
        let (queue, task, settle) = held_job(QueueConfig::new("q")).await;
        let (_, keys) = queue.inner.queue("q").unwrap();
        let mut conn = queue.inner.conn.clone();
        let start = |delivery| start(&settle, &task, delivery);
        assert_eq!(start(7).await, Some(1));
        assert_eq!(start(7).await, Some(1), "the same delivery again");
        assert_eq!(start(8).await, Some(2), "a new delivery");
        // Put back on the queue (the worker released): a start arriving late is stale.
        let _: () = redis::pipe()
            .cmd("SREM")
            .arg(keys.inflight("w"))
            .arg(&task)
            .ignore()
            .cmd("RPUSH")
            .arg(keys.active())
            .arg(&task)
            .ignore()
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            start(9).await,
            None,
            "a task no longer in the worker's in-flight set"
        );
        let (attempts, running): (u32, u32) = redis::pipe()
            .cmd("HGET")
            .arg(keys.record("j"))
            .arg("attempts")
            .cmd("HGET")
            .arg(keys.counts())
            .arg("running")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!((attempts, running), (2, 1));
        queue.purge().await.unwrap();
    }

    /// A worker's metadata hash is created with its expiry before apalis registers the
    /// worker, and apalis's registration (`HMSET` of its fields, as its
    /// `register_worker.lua` does) keeps that expiry: a worker that crashes before its
    /// first heartbeat refresh (e.g. just after a restart, which deleted the hash)
    /// leaves no hash for ever. Needs Redis (see `redis_queue`).
    #[tokio::test]
    async fn a_workers_metadata_expires_from_before_its_registration() {
        let catalog = QueueCatalog::empty().with_queue(QueueConfig::new("q")).unwrap();
        let (queue, prefix) = redis_queue(catalog).await;
        let mut conn = queue.inner.conn.clone();
        // Queue "q"'s keys, which `purge` removes.
        let registration = Registration {
            workers: format!("{prefix}:q:workers"),
            metadata: format!("{prefix}:q:workers:metadata:w"),
            name: "w".to_owned(),
            ttl: Duration::from_secs(600),
        };
        registration.prepare(&mut conn).await.unwrap();
        let (ttl, fields): (i64, Vec<String>) = redis::pipe()
            .cmd("HMSET")
            .arg(&registration.metadata)
            .arg(&[("backend_name", "b"), ("service", "s")])
            .ignore()
            .cmd("PTTL")
            .arg(&registration.metadata)
            .cmd("HKEYS")
            .arg(&registration.metadata)
            .query_async(&mut conn)
            .await
            .unwrap();
        queue.purge().await.unwrap();
        assert!((1..=600_000).contains(&ttl), "PTTL {ttl}");
        assert_eq!(fields, ["registered_by", "backend_name", "service"]);
    }

    /// A heartbeat refreshes a registered worker's score and gives its metadata hash an
    /// expiry (what removes a crashed worker's hash); it does not register a worker
    /// that is no longer in the zset. Needs Redis (see `redis_queue`).
    #[tokio::test]
    async fn a_heartbeat_refreshes_the_registration_and_expires_its_metadata() {
        let (queue, prefix) = redis_queue(QueueCatalog::empty()).await;
        let mut conn = queue.inner.conn.clone();
        let registration = |name: &str| Registration {
            workers: format!("{prefix}:workers"),
            metadata: format!("{prefix}:workers:metadata:{name}"),
            name: name.to_owned(),
            ttl: Duration::from_secs(600),
        };
        let (alive, gone) = (registration("alive"), registration("gone"));
        let _: () = redis::pipe()
            .cmd("ZADD")
            .arg(&alive.workers)
            .arg(1)
            .arg("alive")
            .cmd("HSET")
            .arg(&alive.metadata)
            .arg("service")
            .arg("s")
            .cmd("HSET")
            .arg(&gone.metadata)
            .arg("service")
            .arg("s")
            .query_async(&mut conn)
            .await
            .unwrap();
        alive.refresh(&mut conn).await.unwrap();
        gone.refresh(&mut conn).await.unwrap();
        let (score, alive_ttl, gone_score, gone_ttl): (u64, i64, Option<u64>, i64) = redis::pipe()
            .cmd("ZSCORE")
            .arg(&alive.workers)
            .arg("alive")
            .cmd("TTL")
            .arg(&alive.metadata)
            .cmd("ZSCORE")
            .arg(&gone.workers)
            .arg("gone")
            .cmd("TTL")
            .arg(&gone.metadata)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&alive.workers)
            .arg(&alive.metadata)
            .arg(&gone.metadata)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            score > 1_700_000_000,
            "score refreshed to now (unix seconds): {score}"
        );
        assert!(
            (1..=600).contains(&alive_ttl),
            "metadata expires: TTL {alive_ttl}"
        );
        assert_eq!(
            gone_score, None,
            "a worker taken for dead is not registered again"
        );
        assert!(
            (1..=600).contains(&gone_ttl),
            "its metadata expires too: TTL {gone_ttl}"
        );
    }
}
