//! [`RedisQueue`]: the enqueue side on Redis.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use platform_core::{DynClock, Error, ErrorKind, Result};
use redis::aio::ConnectionManager;
use tracing::Instrument;

use super::scripts;
use crate::JobQueue;
use crate::config::QueueCatalog;
use crate::types::{Enqueued, JobInfo, JobState, NewJob, QueueStats, StoredJob};

/// The Redis-backed job queue. Cheap to clone; clones share one connection manager.
///
/// Build it with [`RedisQueueBuilder`](super::RedisQueueBuilder).
#[derive(Clone)]
pub struct RedisQueue {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) conn: ConnectionManager,
    pub(crate) prefix: String,
    pub(crate) catalog: QueueCatalog,
    pub(crate) clock: DynClock,
    pub(crate) heartbeat: Duration,
    pub(crate) missed_heartbeats: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) trim_interval: Option<Duration>,
}

impl fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.inner.prefix)
            .field(
                "queues",
                &self.inner.catalog.queues().map(|q| &q.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The one mapping of Redis errors: connection trouble is retryable `Unavailable`,
/// a timeout is `Timeout`, anything else (a script error, a wrong type) `Provider`.
pub(crate) fn map_redis_error(operation: &'static str, e: redis::RedisError) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Provider
    };
    Error::new(kind, "redis call failed")
        .with_provider("redis")
        .with_operation(operation)
        .with_source(e)
}

/// Runs one Redis call inside a span with provider, operation and outcome.
pub(crate) async fn traced<T, F>(operation: &'static str, queue: &str, fut: F) -> Result<T>
where
    F: Future<Output = std::result::Result<T, redis::RedisError>>,
{
    let span = tracing::debug_span!(
        "redis",
        provider = "redis",
        operation,
        queue,
        outcome = tracing::field::Empty
    );
    let res = fut.instrument(span.clone()).await;
    span.record("outcome", if res.is_ok() { "ok" } else { "error" });
    res.map_err(|e| map_redis_error(operation, e))
}

/// Unix time in milliseconds from the system clock (what apalis-redis compares against).
pub(crate) fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The delayed-set score (whole seconds) at which a job delayed by `delay`
/// may run: rounded up, so it never runs early.
pub(crate) fn run_at_secs(delay: Duration) -> u64 {
    let due_ms = system_now_ms() + delay.as_millis() as u64;
    due_ms.div_ceil(1000)
}

/// Keys of one queue.
#[derive(Clone)]
pub(crate) struct Keys {
    pub(crate) apalis: apalis_redis::Config,
    pub(crate) base: String,
}

impl Keys {
    pub(crate) fn record(&self, id: &str) -> String {
        format!("{}:pq:job:{id}", self.base)
    }
    pub(crate) fn steps(&self, id: &str) -> String {
        format!("{}:pq:steps:{id}", self.base)
    }
    pub(crate) fn running(&self) -> String {
        format!("{}:pq:running", self.base)
    }
    pub(crate) fn counts(&self) -> String {
        format!("{}:pq:counts", self.base)
    }
    /// Our delayed set (see `scripts`): delayed tasks wait here, not in `Q:scheduled`.
    pub(crate) fn delayed(&self) -> String {
        format!("{}:pq:delayed", self.base)
    }
    pub(crate) fn dead(&self) -> String {
        format!("{}:pq:dead", self.base)
    }
    pub(crate) fn task_meta(&self, task: &str) -> String {
        format!("{}:{task}", self.apalis.job_meta_hash())
    }
    pub(crate) fn worker_metadata(&self, worker: &str) -> String {
        format!("{}:workers:metadata:{worker}", self.base)
    }
}

/// Acknowledged tasks removed by one `TRIM` script call (one bounded chunk).
const TRIM_CHUNK: usize = 500;
/// Chunks one [`RedisQueue::trim`] call removes at most (`TRIM_CHUNK` × this tasks).
const TRIM_MAX_CHUNKS: usize = 200;

/// The arguments of one apalis task: one attempt of a job.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct TaskArgs {
    pub(crate) job: String,
    pub(crate) task: String,
}

impl TaskArgs {
    pub(crate) fn new(job: &str) -> Self {
        Self {
            job: job.to_owned(),
            task: ulid::Ulid::generate().to_string(),
        }
    }

    pub(crate) fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::unexpected("cannot encode task").with_source(e))
    }
}

impl Inner {
    pub(crate) fn keys(&self, queue: &str) -> Keys {
        let base = format!("{}:{queue}", self.prefix);
        Keys {
            apalis: apalis_redis::Config::default()
                .queue(&base)
                .heartbeat_interval(self.heartbeat)
                .missed_heartbeats(self.missed_heartbeats)
                .emit_events(false),
            base,
        }
    }
}

fn parse_info(queue: &str, id: &str, fields: HashMap<String, String>) -> Result<Option<JobInfo>> {
    let Some(state) = fields.get("state") else {
        return Ok(None);
    };
    let stored: StoredJob = serde_json::from_str(fields.get("envelope").map(String::as_str).unwrap_or(""))
        .map_err(|e| Error::unexpected("stored job envelope is not valid JSON").with_source(e))?;
    let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    Ok(Some(JobInfo {
        id: id.to_owned(),
        queue: queue.to_owned(),
        state: JobState::parse(state)?,
        attempts: num("attempts"),
        max_attempts: num("max_attempts"),
        meta: stored.meta,
        payload: stored.payload,
        last_error: fields.get("last_error").cloned(),
    }))
}

impl RedisQueue {
    /// Removes the entries apalis-redis keeps for each acknowledged task of `queue`
    /// (its `Q:done` member, `Q:data` field and `Q:meta:{task}` hash; apalis itself
    /// keeps them until the namespace is purged) and returns how many tasks were
    /// removed.
    ///
    /// Every attempt of a job is one apalis task, acknowledged by apalis after the
    /// attempt's outcome is stored in the job record (done, retry scheduled as a new
    /// task, or dead), so nothing reads these entries any more. Job records, step
    /// results and dead letters are untouched (a done job's record still expires after
    /// the de-duplication window). Tasks that are pending, scheduled or in flight are
    /// never touched.
    ///
    /// Works in bounded chunks of 500 tasks, each removed by one atomic script, up to
    /// 100,000 tasks per call. Workers call it every `trim_interval` and once when they
    /// shut down (see [`RedisQueueBuilder::with_trim_interval`](super::RedisQueueBuilder::with_trim_interval)),
    /// so calling it by hand is only needed when worker trimming is disabled.
    ///
    /// # Errors
    /// `NotFound` for an unknown queue; `Unavailable` when Redis cannot be reached
    /// (tasks removed by earlier chunks stay removed).
    pub async fn trim(&self, queue: &str) -> Result<u64> {
        self.inner.catalog.get(queue)?;
        let keys = self.inner.keys(queue);
        let done = keys.apalis.done_jobs_set();
        let data = keys.apalis.job_data_hash();
        let mut conn = self.inner.conn.clone();
        let mut removed = 0u64;
        for _ in 0..TRIM_MAX_CHUNKS {
            let ids: Vec<String> = traced(
                "trim_tasks",
                queue,
                redis::cmd("SRANDMEMBER")
                    .arg(&done)
                    .arg(TRIM_CHUNK)
                    .query_async(&mut conn),
            )
            .await?;
            if ids.is_empty() {
                break;
            }
            let mut inv = scripts::TRIM.prepare_invoke();
            inv.key(&done).key(&data);
            for id in &ids {
                inv.key(keys.task_meta(id)).arg(id);
            }
            removed += traced("trim_tasks", queue, inv.invoke_async::<u64>(&mut conn)).await?;
            if ids.len() < TRIM_CHUNK {
                break;
            }
        }
        if removed > 0 {
            tracing::debug!(
                provider = "redis",
                operation = "trim_tasks",
                queue,
                removed,
                "trimmed acknowledged tasks"
            );
        }
        Ok(removed)
    }

    /// Deletes every key under this queue's prefix (all queues, jobs, dead letters,
    /// worker registrations) and returns how many keys were removed. Meant for tests
    /// and development; never call it on a shared production namespace.
    ///
    /// # Errors
    /// `Unavailable` when Redis cannot be reached.
    pub async fn purge(&self) -> Result<u64> {
        let mut conn = self.inner.conn.clone();
        let pattern = format!("{}:*", self.inner.prefix);
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = traced(
                "purge",
                "*",
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn),
            )
            .await?;
            if !keys.is_empty() {
                removed += traced(
                    "purge",
                    "*",
                    redis::cmd("DEL").arg(&keys).query_async::<u64>(&mut conn),
                )
                .await?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // apalis registers each queue's worker set in one global sorted set.
        let listed: Vec<String> = traced(
            "purge",
            "*",
            redis::cmd("ZRANGE")
                .arg("core:apalis:queues:list")
                .arg(0)
                .arg(-1)
                .query_async(&mut conn),
        )
        .await?;
        let ours: Vec<&String> = listed
            .iter()
            .filter(|k| k.starts_with(&pattern[..pattern.len() - 1]))
            .collect();
        if !ours.is_empty() {
            traced(
                "purge",
                "*",
                redis::cmd("ZREM")
                    .arg("core:apalis:queues:list")
                    .arg(ours)
                    .query_async::<u64>(&mut conn),
            )
            .await?;
        }
        Ok(removed)
    }
}

#[async_trait]
impl JobQueue for RedisQueue {
    async fn enqueue(&self, queue: &str, job: NewJob) -> Result<Enqueued> {
        let cfg = self.inner.catalog.get(queue)?;
        let id = job.resolve_id()?;
        let now = self.inner.clock.now();
        let delay = job.delay_from(now);
        let envelope = serde_json::to_string(&StoredJob {
            meta: job.meta(now),
            payload: job.payload,
        })
        .map_err(|e| Error::invalid_input("job payload cannot be serialised").with_source(e))?;
        let keys = self.inner.keys(queue);
        let args = TaskArgs::new(&id);
        let run_at = if delay.is_zero() { 0 } else { run_at_secs(delay) };
        let mut conn = self.inner.conn.clone();
        let (created, state): (u8, String) = traced(
            "enqueue",
            queue,
            scripts::ENQUEUE
                .key(keys.record(&id))
                .key(keys.apalis.job_data_hash())
                .key(keys.apalis.active_jobs_list())
                .key(keys.delayed())
                .key(keys.task_meta(&args.task))
                .arg(&args.task)
                .arg(envelope)
                .arg(args.to_json()?)
                .arg(run_at)
                .arg(cfg.retry.max_attempts())
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(Enqueued {
            job_id: id,
            created: created == 1,
            state: JobState::parse(&state)?,
        })
    }

    async fn job(&self, queue: &str, id: &str) -> Result<Option<JobInfo>> {
        self.inner.catalog.get(queue)?;
        let keys = self.inner.keys(queue);
        let mut conn = self.inner.conn.clone();
        let fields: HashMap<String, String> = traced(
            "get_job",
            queue,
            redis::cmd("HGETALL").arg(keys.record(id)).query_async(&mut conn),
        )
        .await?;
        parse_info(queue, id, fields)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.inner.catalog.get(queue)?;
        let keys = self.inner.keys(queue);
        let mut conn = self.inner.conn.clone();
        let (active, scheduled, delayed, running, counts, dead): (
            u64,
            u64,
            u64,
            u64,
            (Option<u64>, Option<u64>),
            u64,
        ) = traced(
            "stats",
            queue,
            redis::pipe()
                .cmd("LLEN")
                .arg(keys.apalis.active_jobs_list())
                .cmd("ZCARD")
                .arg(keys.apalis.scheduled_jobs_set())
                .cmd("ZCARD")
                .arg(keys.delayed())
                .cmd("SCARD")
                .arg(keys.running())
                .cmd("HMGET")
                .arg(keys.counts())
                .arg("done")
                .arg("failed")
                .cmd("ZCARD")
                .arg(keys.dead())
                .query_async(&mut conn),
        )
        .await?;
        Ok(QueueStats {
            pending: active + scheduled + delayed,
            running,
            done: counts.0.unwrap_or(0),
            failed: counts.1.unwrap_or(0),
            dead,
        })
    }

    async fn dead_jobs(&self, queue: &str, limit: usize) -> Result<Vec<JobInfo>> {
        self.inner.catalog.get(queue)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = self.inner.keys(queue);
        let mut conn = self.inner.conn.clone();
        let ids: Vec<String> = traced(
            "list_dead",
            queue,
            redis::cmd("ZRANGE")
                .arg(keys.dead())
                .arg(0)
                .arg(limit as i64 - 1)
                .query_async(&mut conn),
        )
        .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(info) = self.job(queue, &id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn retry_dead(&self, queue: &str, id: &str) -> Result<()> {
        self.inner.catalog.get(queue)?;
        let keys = self.inner.keys(queue);
        let args = TaskArgs::new(id);
        let mut conn = self.inner.conn.clone();
        let applied: u8 = traced(
            "retry_dead",
            queue,
            scripts::RETRY_DEAD
                .key(keys.record(id))
                .key(keys.dead())
                .key(keys.apalis.job_data_hash())
                .key(keys.apalis.active_jobs_list())
                .key(keys.apalis.signal_list())
                .key(keys.task_meta(&args.task))
                .arg(id)
                .arg(&args.task)
                .arg(args.to_json()?)
                .invoke_async(&mut conn),
        )
        .await?;
        if applied == 1 {
            Ok(())
        } else {
            Err(Error::not_found(format!("no dead job {id:?} on queue {queue:?}")))
        }
    }

    fn catalog(&self) -> &QueueCatalog {
        &self.inner.catalog
    }
}
