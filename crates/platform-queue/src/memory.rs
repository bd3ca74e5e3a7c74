//! [`LocalQueue`]: the embedded, in-process implementation (no Redis).
//!
//! Same contract as the Redis queue: concurrency, per-attempt timeouts, retries that
//! go back to the queue with exponential backoff, dead letters, de-duplication by job
//! id, delayed jobs and durable workflow steps (kept in memory). Time for delays and
//! backoff is `tokio::time`, so tests can run it on a paused clock; metadata
//! timestamps come from the injected [`Clock`](platform_core::Clock).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{DynClock, Error, Result, system_clock};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{QueueCatalog, QueueConfig};
use crate::context::{JobContext, StepStore, stale_step};
use crate::types::{Enqueued, JobInfo, JobState, NewJob, QueueStats, StoredJob};
use crate::worker::{Outcome, ShutdownReport, WorkerControl, WorkerHandle, run_attempt};
use crate::{JobHandler, JobQueue, JobWorkers, lock};

/// The in-process job queue: the embedded default, complete and deterministic.
///
/// Cheap to clone; clones share the same queues.
#[derive(Clone)]
pub struct LocalQueue {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: QueueCatalog,
    clock: DynClock,
    queues: Mutex<HashMap<String, QState>>,
}

#[derive(Default)]
struct QState {
    jobs: HashMap<String, Rec>,
    ready: VecDeque<String>,
    delayed: BTreeSet<(Instant, u64, String)>,
    seq: u64,
    running: HashSet<String>,
    dead: VecDeque<String>,
    /// Done jobs in the order they finished, with when: forgotten once their
    /// de-duplication window has passed (see [`QState::forget_expired`]), as Redis
    /// expires their records.
    finished: VecDeque<(Instant, String)>,
    done: u64,
    failed: u64,
    /// Deliveries handed out so far: each attempt started takes the next number.
    deliveries: u64,
    notify: Arc<Notify>,
}

struct Rec {
    stored: StoredJob,
    state: JobState,
    attempts: u32,
    max_attempts: u32,
    last_error: Option<String>,
    steps: HashMap<String, Value>,
    /// The current delivery (see `deliveries`): step results are saved only by it.
    delivery: u64,
}

impl QState {
    /// Forgets the done jobs whose de-duplication window has passed (with their step
    /// results): `job` no longer finds them and their id may be enqueued again.
    fn forget_expired(&mut self, window: Duration) {
        while let Some((at, id)) = self.finished.front() {
            if at.elapsed() < window {
                break;
            }
            // A done record stays until its entry here expires (enqueueing its id meanwhile
            // gives the existing job), so the record found is the one that finished then.
            if self.jobs.get(id).is_some_and(|r| r.state == JobState::Done) {
                self.jobs.remove(id);
            }
            self.finished.pop_front();
        }
    }
}

impl fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalQueue")
            .field(
                "queues",
                &self.inner.catalog.queues().map(|q| &q.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for LocalQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalQueue {
    /// A local queue serving the seed catalogue, on the system clock.
    pub fn new() -> Self {
        Self::from_parts(QueueCatalog::seed(), system_clock())
    }

    /// A local queue serving `catalog`, stamping metadata with `clock`.
    pub fn from_parts(catalog: QueueCatalog, clock: DynClock) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog,
                clock,
                queues: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, QState>> {
        lock(&self.queues)
    }

    fn with_queue<T>(&self, queue: &str, f: impl FnOnce(&mut QState) -> T) -> T {
        let mut all = self.lock();
        f(all.entry(queue.to_owned()).or_default())
    }

    fn notify(&self, queue: &str) -> Arc<Notify> {
        self.with_queue(queue, |q| q.notify.clone())
    }

    /// Takes the next runnable job, with its delivery's id, or says when the next
    /// delayed one is due.
    fn take_next(
        self: &Arc<Self>,
        cfg: &QueueConfig,
    ) -> std::result::Result<(JobContext, u64), Option<Instant>> {
        let now = Instant::now();
        let steps_owner = self.clone();
        self.with_queue(&cfg.name, |q| {
            while let Some(first) = q.delayed.first() {
                if first.0 > now {
                    break;
                }
                if let Some((_, _, id)) = q.delayed.pop_first() {
                    q.ready.push_back(id);
                }
            }
            while let Some(id) = q.ready.pop_front() {
                let Some(rec) = q.jobs.get_mut(&id) else { continue };
                if !matches!(rec.state, JobState::Pending | JobState::Retrying) {
                    continue;
                }
                if rec.attempts >= rec.max_attempts {
                    // Every attempt started and none recorded an outcome (each one's
                    // worker was killed): a dead letter, not one more delivery.
                    rec.state = JobState::Dead;
                    rec.last_error = Some(format!(
                        "attempt {} of {} was cut off without an outcome (its worker crashed or was killed while running it)",
                        rec.attempts, rec.max_attempts
                    ));
                    q.dead.push_back(id);
                    continue;
                }
                rec.state = JobState::Running;
                rec.attempts += 1;
                q.deliveries += 1;
                rec.delivery = q.deliveries;
                q.running.insert(id.clone());
                let delivery = rec.delivery;
                return Ok((JobContext {
                    queue: cfg.name.clone(),
                    job_id: id.clone(),
                    attempt: rec.attempts,
                    max_attempts: rec.max_attempts,
                    meta: rec.stored.meta.clone(),
                    payload: rec.stored.payload.clone(),
                    steps: Arc::new(LocalSteps {
                        inner: steps_owner.clone(),
                        queue: cfg.name.clone(),
                        job_id: id,
                        attempt: rec.attempts,
                        delivery,
                    }),
                    done_steps: Arc::default(),
                }, delivery));
            }
            Err(q.delayed.first().map(|d| d.0))
        })
    }

    /// Records the outcome of delivery `delivery` of job `id`, if it is still the job's
    /// running delivery (not one a `kill` or a shutdown took back, whose job may be
    /// running again elsewhere, even as the same attempt number).
    fn finish(&self, cfg: &QueueConfig, id: &str, delivery: u64, outcome: Outcome) {
        self.with_queue(&cfg.name, |q| {
            let Some(rec) = q.jobs.get_mut(id) else { return };
            if rec.state != JobState::Running || rec.delivery != delivery {
                return;
            }
            q.running.remove(id);
            match outcome {
                Outcome::Success => {
                    rec.state = JobState::Done;
                    q.done += 1;
                    q.finished.push_back((Instant::now(), id.to_owned()));
                }
                Outcome::Failed(err) => {
                    q.failed += 1;
                    rec.last_error = Some(err.message().to_owned());
                    if err.is_permanent() || rec.attempts >= rec.max_attempts {
                        rec.state = JobState::Dead;
                        q.dead.push_back(id.to_owned());
                    } else {
                        rec.state = JobState::Retrying;
                        let due = Instant::now() + cfg.backoff(rec.attempts);
                        q.seq += 1;
                        q.delayed.insert((due, q.seq, id.to_owned()));
                        q.notify.notify_waiters();
                    }
                }
            }
        });
    }

    /// Puts running jobs back on the queue. `Attempt::Uncounted` when the worker was
    /// stopped (its shutdown deadline passed): the cut-off attempt does not count, as on
    /// Redis; `Attempt::Counted` when it was killed, as a crash counts.
    /// Each of `jobs` is a job id and the delivery taken back: a job that finished
    /// meanwhile, or runs again in a later delivery, is left alone.
    fn requeue(&self, queue: &str, jobs: &[(String, u64)], attempt: Attempt) -> u64 {
        self.with_queue(queue, |q| {
            let mut n = 0;
            for (id, delivery) in jobs {
                if let Some(rec) = q.jobs.get_mut(id)
                    && rec.state == JobState::Running
                    && rec.delivery == *delivery
                {
                    rec.state = JobState::Pending;
                    if attempt == Attempt::Uncounted {
                        rec.attempts = rec.attempts.saturating_sub(1);
                    }
                    q.running.remove(id);
                    // At the back, behind the jobs already waiting, as on Redis (our
                    // `RELEASE` and apalis's orphan re-queue both append).
                    q.ready.push_back(id.clone());
                    n += 1;
                }
            }
            q.notify.notify_waiters();
            n
        })
    }
}

/// Whether the attempt a re-queued job was cut off in counts (see `Inner::requeue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Counted,
    Uncounted,
}

struct LocalSteps {
    inner: Arc<Inner>,
    queue: String,
    job_id: String,
    /// The attempt's number and delivery: results are saved only while it is current.
    attempt: u32,
    delivery: u64,
}

impl LocalSteps {
    fn with_rec<T>(&self, f: impl FnOnce(&mut Rec) -> T) -> Option<T> {
        self.inner
            .with_queue(&self.queue, |q| q.jobs.get_mut(&self.job_id).map(f))
    }
}

#[async_trait]
impl StepStore for LocalSteps {
    async fn load(&self, name: &str) -> Result<Option<Value>> {
        Ok(self.with_rec(|r| r.steps.get(name).cloned()).flatten())
    }

    /// As on Redis: nothing is saved for an attempt that is no longer the job's
    /// current one (its worker was killed and the job delivered again, or it already
    /// ended), which would overwrite the current attempt's results.
    async fn save(&self, name: &str, value: &Value) -> Result<()> {
        let saved = self.with_rec(|r| {
            let current = r.state == JobState::Running && r.delivery == self.delivery;
            if current {
                r.steps.insert(name.to_owned(), value.clone());
            }
            current
        });
        if saved == Some(true) {
            Ok(())
        } else {
            Err(stale_step(name, self.attempt, &self.job_id))
        }
    }
}

impl Rec {
    fn info(&self, queue: &str, id: &str) -> JobInfo {
        JobInfo {
            id: id.to_owned(),
            queue: queue.to_owned(),
            state: self.state,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            meta: self.stored.meta.clone(),
            payload: self.stored.payload.clone(),
            last_error: self.last_error.clone(),
        }
    }
}

#[async_trait]
impl JobQueue for LocalQueue {
    async fn enqueue(&self, queue: &str, job: NewJob) -> Result<Enqueued> {
        let cfg = self.inner.catalog.get(queue)?;
        let id = job.resolve_id()?;
        job.check_payload()?;
        let now = self.inner.clock.now();
        let delay = job.delay_from(now)?;
        let stored = StoredJob {
            meta: job.meta(now),
            payload: job.payload,
        };
        let out = self.inner.with_queue(queue, |q| {
            q.forget_expired(cfg.dedupe_window);
            if let Some(existing) = q.jobs.get(&id) {
                return Enqueued {
                    job_id: id.clone(),
                    created: false,
                    state: existing.state,
                };
            }
            q.jobs.insert(
                id.clone(),
                Rec {
                    stored,
                    state: JobState::Pending,
                    attempts: 0,
                    max_attempts: cfg.retry.max_attempts(),
                    last_error: None,
                    steps: HashMap::new(),
                    delivery: 0,
                },
            );
            if delay.is_zero() {
                q.ready.push_back(id.clone());
            } else {
                q.seq += 1;
                q.delayed.insert((Instant::now() + delay, q.seq, id.clone()));
            }
            q.notify.notify_waiters();
            Enqueued {
                job_id: id.clone(),
                created: true,
                state: JobState::Pending,
            }
        });
        tracing::debug!(provider = "local", operation = "enqueue", queue, job_id = %out.job_id, created = out.created, "enqueued");
        Ok(out)
    }

    async fn job(&self, queue: &str, id: &str) -> Result<Option<JobInfo>> {
        let cfg = self.inner.catalog.get(queue)?;
        Ok(self.inner.with_queue(queue, |q| {
            q.forget_expired(cfg.dedupe_window);
            q.jobs.get(id).map(|r| r.info(queue, id))
        }))
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.inner.catalog.get(queue)?;
        Ok(self.inner.with_queue(queue, |q| QueueStats {
            pending: q
                .jobs
                .values()
                .filter(|r| matches!(r.state, JobState::Pending | JobState::Retrying))
                .count() as u64,
            running: q.running.len() as u64,
            done: q.done,
            failed: q.failed,
            dead: q.dead.len() as u64,
            // Jobs in memory are never written by another version.
            unreadable: 0,
        }))
    }

    async fn dead_jobs(&self, queue: &str, limit: usize) -> Result<Vec<JobInfo>> {
        self.inner.catalog.get(queue)?;
        Ok(self.inner.with_queue(queue, |q| {
            q.dead
                .iter()
                .filter_map(|id| q.jobs.get(id).map(|r| r.info(queue, id)))
                .take(limit)
                .collect()
        }))
    }

    async fn retry_dead(&self, queue: &str, id: &str) -> Result<()> {
        self.inner.catalog.get(queue)?;
        self.inner.with_queue(queue, |q| {
            let Some(rec) = q.jobs.get_mut(id).filter(|r| r.state == JobState::Dead) else {
                return Err(Error::not_found(format!("no dead job {id:?} on queue {queue:?}")));
            };
            rec.state = JobState::Pending;
            rec.attempts = 0;
            q.dead.retain(|d| d != id);
            q.ready.push_back(id.to_owned());
            q.notify.notify_waiters();
            Ok(())
        })
    }

    fn catalog(&self) -> &QueueCatalog {
        &self.inner.catalog
    }
}

/// Commands from a worker handle to its loop.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Command {
    Run,
    Stop(Duration),
}

/// A worker's jobs in flight (job id, attempt), and whether it was killed: a killed
/// worker takes no more jobs (checked under the same lock as the jobs it takes, so
/// that `kill` re-queues every job the worker took).
#[derive(Default)]
struct InFlight {
    killed: bool,
    /// The jobs it runs: each job's id and delivery.
    jobs: HashSet<(String, u64)>,
}

/// One job a worker is running, in its in-flight set until dropped. Dropped before
/// its outcome was recorded and still in the set (its task was dropped with its
/// runtime, not cancelled by `shutdown` or `kill`, which take their jobs out of the
/// set first), the job goes back on the queue, its attempt counted (as after a
/// `kill`), instead of staying `running` for ever.
struct HeldJob {
    inner: Arc<Inner>,
    queue: String,
    /// The job's id and delivery.
    key: (String, u64),
    inflight: Arc<Mutex<InFlight>>,
    finished: bool,
}

impl HeldJob {
    /// Records the attempt's outcome (if its delivery is still the job's) and lets
    /// the job go.
    fn finish(mut self, cfg: &QueueConfig, outcome: Outcome) {
        self.inner.finish(cfg, &self.key.0, self.key.1, outcome);
        self.finished = true;
    }
}

impl Drop for HeldJob {
    fn drop(&mut self) {
        let held = lock(&self.inflight).jobs.remove(&self.key);
        if held && !self.finished {
            self.inner
                .requeue(&self.queue, std::slice::from_ref(&self.key), Attempt::Counted);
        }
    }
}

struct LocalWorker {
    queue: String,
    inner: Arc<Inner>,
    inflight: Arc<Mutex<InFlight>>,
    commands: watch::Sender<Command>,
    task: tokio::task::JoinHandle<ShutdownReport>,
}

#[async_trait]
impl WorkerControl for LocalWorker {
    async fn shutdown(self: Box<Self>, deadline: Duration) -> Result<ShutdownReport> {
        let _ = self.commands.send(Command::Stop(deadline));
        match self.task.await {
            Ok(report) => Ok(report),
            Err(e) => Err(Error::unexpected("local worker task failed").with_source(e)),
        }
    }

    fn kill(self: Box<Self>) {
        let jobs: Vec<(String, u64)> = {
            let mut inflight = lock(&self.inflight);
            inflight.killed = true;
            inflight.jobs.drain().collect()
        };
        self.task.abort();
        self.inner.requeue(&self.queue, &jobs, Attempt::Counted);
    }
}

#[async_trait]
impl JobWorkers for LocalQueue {
    async fn start_worker(&self, queue: &str, handler: Arc<dyn JobHandler>) -> Result<WorkerHandle> {
        let cfg = self.inner.catalog.get(queue)?.clone();
        let name = format!("local-{queue}-{}", uuid::Uuid::new_v4());
        let (tx, rx) = watch::channel(Command::Run);
        let inflight = Arc::new(Mutex::new(InFlight::default()));
        let task = tokio::spawn(worker_loop(
            self.inner.clone(),
            cfg,
            handler,
            rx,
            inflight.clone(),
        ));
        tracing::info!(provider = "local", operation = "start_worker", queue, worker = %name, "worker started");
        Ok(WorkerHandle {
            name,
            control: Box::new(LocalWorker {
                queue: queue.to_owned(),
                inner: self.inner.clone(),
                inflight,
                commands: tx,
                task,
            }),
        })
    }
}

/// Resolves when the worker's handle sends a command; never once the handle was
/// dropped (a dropped `WorkerHandle` leaves its worker running).
async fn command_changed(commands: &mut watch::Receiver<Command>) {
    if commands.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn worker_loop(
    inner: Arc<Inner>,
    cfg: QueueConfig,
    handler: Arc<dyn JobHandler>,
    mut commands: watch::Receiver<Command>,
    inflight: Arc<Mutex<InFlight>>,
) -> ShutdownReport {
    let permits = Arc::new(Semaphore::new(cfg.concurrency));
    let notify = inner.notify(&cfg.name);
    let cfg = Arc::new(cfg);
    let mut running = JoinSet::new();
    let deadline = 'fetch: loop {
        while running.try_join_next().is_some() {}
        if let Command::Stop(d) = *commands.borrow_and_update() {
            break d;
        }
        let permit = tokio::select! {
            () = command_changed(&mut commands) => continue,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break 'fetch Duration::ZERO,
            },
        };
        let (ctx, delivery) = loop {
            // A stop that came as the permit did (the select above picks either), or
            // while waiting for a job (below): no job is taken after it.
            if matches!(*commands.borrow(), Command::Stop(_)) {
                drop(permit);
                continue 'fetch;
            }
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = {
                let mut inflight = lock(&inflight);
                let taken = (!inflight.killed).then(|| inner.take_next(&cfg));
                if let Some(Ok((ctx, delivery))) = &taken {
                    inflight.jobs.insert((ctx.job_id.clone(), *delivery));
                }
                taken
            };
            match taken {
                // Killed: `kill` aborts this task and re-queues what it took.
                None => std::future::pending::<()>().await,
                Some(Ok(taken)) => break taken,
                Some(Err(next_due)) => {
                    let sleep = async {
                        match next_due {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = command_changed(&mut commands) => {}
                        () = &mut notified => {}
                        () = sleep => {}
                    }
                }
            }
        };
        let held = HeldJob {
            inner: inner.clone(),
            queue: cfg.name.clone(),
            key: (ctx.job_id.clone(), delivery),
            inflight: inflight.clone(),
            finished: false,
        };
        let (cfg2, handler2) = (cfg.clone(), handler.clone());
        running.spawn(async move {
            let outcome = run_attempt(&handler2, ctx, cfg2.timeout).await;
            held.finish(&cfg2, outcome);
            drop(permit);
        });
    };
    // Stop fetching; let in-flight jobs finish until the deadline.
    let drained = tokio::time::timeout(deadline, async { while running.join_next().await.is_some() {} })
        .await
        .is_ok();
    let mut requeued = 0;
    if !drained {
        // Taken out of the in-flight set first: the cancelled jobs' guards leave them
        // to this re-queue, which does not count the attempt they were cut off in.
        let jobs: Vec<(String, u64)> = lock(&inflight).jobs.drain().collect();
        running.abort_all();
        // Not waited for: a job blocked in synchronous code is cancelled only once it
        // returns to the runtime. Whatever it records then is ignored, its delivery
        // being re-queued here (see `Inner::finish`).
        running.detach_all();
        requeued = inner.requeue(&cfg.name, &jobs, Attempt::Uncounted);
    }
    tracing::info!(provider = "local", operation = "shutdown_worker", queue = %cfg.name, drained, requeued, "worker stopped");
    ShutdownReport { drained, requeued }
}
