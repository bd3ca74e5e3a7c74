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
use crate::config::{QueueCatalog, QueueConfig};
use crate::types::{Enqueued, JobInfo, JobState, NewJob, QueueStats, StoredJob, UnreadableTask};

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
    pub(crate) poll_interval: Duration,
    /// How long a worker may miss heartbeats before others re-queue its tasks.
    pub(crate) orphan_timeout: Duration,
    /// Keys of every catalogue queue.
    pub(crate) keys: HashMap<String, Keys>,
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

/// Whether a Redis call that failed this way may succeed later: the connection
/// dropped, was refused or failed, or the server answered that it cannot serve yet
/// (`LOADING` while it reads its data after a restart, `BUSY` while another script
/// runs past the busy threshold, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`).
pub(crate) fn is_transient(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind::{BusyLoading, ClusterDown, MasterDown, TryAgain};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(BusyLoading | TryAgain | MasterDown | ClusterDown)
        )
        || e.code() == Some("BUSY")
}

/// The one mapping of Redis errors: transient trouble (see [`is_transient`]) is
/// retryable `Unavailable`, a timeout is `Timeout`, anything else (a script error, a
/// wrong type) `Provider`.
pub(crate) fn map_redis_error(operation: &'static str, e: redis::RedisError) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if is_transient(&e) {
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

/// Keys of one queue, built once per queue when the queue is built (enqueueing and
/// settling only format the per-job keys).
#[derive(Clone)]
pub(crate) struct Keys {
    /// apalis-redis's configuration for this queue (key names, heartbeat).
    pub(crate) apalis: apalis_redis::Config,
    base: String,
    counts: String,
    delayed: String,
    dead: String,
    unreadable: String,
    data: String,
    active: String,
    scheduled: String,
    signal: String,
    workers: String,
    meta_prefix: String,
    inflight_prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, queue: &str, heartbeat: Duration, missed_heartbeats: usize) -> Self {
        let base = format!("{prefix}:{queue}");
        let apalis = apalis_redis::Config::default()
            .queue(&base)
            .heartbeat_interval(heartbeat)
            .missed_heartbeats(missed_heartbeats)
            .emit_events(false);
        Self {
            counts: format!("{base}:pq:counts"),
            delayed: format!("{base}:pq:delayed"),
            dead: format!("{base}:pq:dead"),
            unreadable: format!("{base}:pq:unreadable"),
            data: apalis.job_data_hash(),
            active: apalis.active_jobs_list(),
            scheduled: apalis.scheduled_jobs_set(),
            signal: apalis.signal_list(),
            workers: apalis.workers_set(),
            meta_prefix: apalis.job_meta_hash(),
            inflight_prefix: apalis.inflight_jobs_set(),
            apalis,
            base,
        }
    }

    pub(crate) fn record(&self, id: &str) -> String {
        format!("{}:pq:job:{id}", self.base)
    }
    pub(crate) fn steps(&self, id: &str) -> String {
        format!("{}:pq:steps:{id}", self.base)
    }
    pub(crate) fn counts(&self) -> &str {
        &self.counts
    }
    /// Our delayed set (see `scripts`): delayed tasks wait here, not in `Q:scheduled`.
    pub(crate) fn delayed(&self) -> &str {
        &self.delayed
    }
    pub(crate) fn dead(&self) -> &str {
        &self.dead
    }
    /// Tasks set aside because no worker can read them, with the reason (see
    /// `scripts::SET_ASIDE`).
    pub(crate) fn unreadable(&self) -> &str {
        &self.unreadable
    }
    /// apalis's `Q:data` hash: task id → task arguments.
    pub(crate) fn data(&self) -> &str {
        &self.data
    }
    /// apalis's `Q:active` list of runnable task ids.
    pub(crate) fn active(&self) -> &str {
        &self.active
    }
    /// apalis's own scheduled set (not written by this crate).
    pub(crate) fn scheduled(&self) -> &str {
        &self.scheduled
    }
    pub(crate) fn signal(&self) -> &str {
        &self.signal
    }
    /// apalis's registry of live workers (zset, score = last heartbeat).
    pub(crate) fn workers(&self) -> &str {
        &self.workers
    }
    /// apalis's prefix of the `Q:meta:{task}` hashes.
    pub(crate) fn meta_prefix(&self) -> &str {
        &self.meta_prefix
    }
    pub(crate) fn task_meta(&self, task: &str) -> String {
        format!("{}:{task}", self.meta_prefix)
    }
    /// The set of tasks `worker` holds (apalis's `inflight_set_for`).
    pub(crate) fn inflight(&self, worker: &str) -> String {
        format!("{}:{worker}", self.inflight_prefix)
    }
    pub(crate) fn worker_metadata(&self, worker: &str) -> String {
        format!("{}:workers:metadata:{worker}", self.base)
    }
}

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
    /// The configuration and keys of a catalogue queue.
    pub(crate) fn queue(&self, name: &str) -> Result<(&QueueConfig, &Keys)> {
        let cfg = self.catalog.get(name)?;
        let keys = self
            .keys
            .get(name)
            .ok_or_else(|| Error::unexpected(format!("no keys for queue {name:?}")))?;
        Ok((cfg, keys))
    }
}

fn parse_info(queue: &str, id: &str, fields: HashMap<String, Vec<u8>>) -> Result<Option<JobInfo>> {
    // Read as bytes: a record another writer left with text that is not UTF-8 is
    // still shown (lossily), not an error for every listing it is in.
    let text = |k: &str| fields.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    let Some(state) = text("state") else {
        return Ok(None);
    };
    let mut last_error = text("last_error");
    // A job whose envelope cannot be read (the worker dead-letters it for that) is
    // still shown, so that the dead list stays readable: see `JobInfo`.
    let stored = serde_json::from_slice::<StoredJob>(fields.get("envelope").map_or(&[], Vec::as_slice))
        .unwrap_or_else(|e| {
            last_error.get_or_insert_with(|| format!("the stored job envelope cannot be read: {e}"));
            StoredJob::unreadable()
        });
    let num = |k: &str| text(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    Ok(Some(JobInfo {
        id: id.to_owned(),
        queue: queue.to_owned(),
        state: JobState::parse(&state)?,
        attempts: num("attempts"),
        max_attempts: num("max_attempts"),
        meta: stored.meta,
        payload: stored.payload,
        last_error,
    }))
}

impl RedisQueue {
    /// The tasks of `queue` set aside because no worker could read or run them and
    /// their job is unknown or its record cannot be read (counted in
    /// [`QueueStats::unreadable`]), ordered by task id; the reason names the job when it
    /// is known. A task whose job can be read is dead-lettered instead (see
    /// [`JobQueue::dead_jobs`]). Once handled (e.g. re-enqueued
    /// from what the reason shows), remove one with [`discard_unreadable`](Self::discard_unreadable).
    ///
    /// # Errors
    /// `InvalidInput` for an unknown queue; `Unavailable` when Redis cannot be reached.
    pub async fn unreadable_tasks(&self, queue: &str) -> Result<Vec<UnreadableTask>> {
        let (_, keys) = self.inner.queue(queue)?;
        let mut conn = self.inner.conn.clone();
        let kept: std::collections::BTreeMap<String, String> = traced(
            "unreadable_tasks",
            queue,
            redis::cmd("HGETALL")
                .arg(keys.unreadable())
                .query_async(&mut conn),
        )
        .await?;
        Ok(kept
            .into_iter()
            .map(|(task_id, reason)| UnreadableTask { task_id, reason })
            .collect())
    }

    /// Removes one task from `queue`'s unreadable tasks (see
    /// [`unreadable_tasks`](Self::unreadable_tasks)). Returns false when there was no
    /// such task.
    ///
    /// # Errors
    /// `InvalidInput` for an unknown queue; `Unavailable` when Redis cannot be reached.
    pub async fn discard_unreadable(&self, queue: &str, task_id: &str) -> Result<bool> {
        let (_, keys) = self.inner.queue(queue)?;
        let mut conn = self.inner.conn.clone();
        let removed: u64 = traced(
            "discard_unreadable",
            queue,
            redis::cmd("HDEL")
                .arg(keys.unreadable())
                .arg(task_id)
                .query_async(&mut conn),
        )
        .await?;
        Ok(removed == 1)
    }

    /// Deletes every key of the catalogue's queues (their jobs, dead letters, worker
    /// registrations: everything under `{prefix}:{queue}:`) and their entries in
    /// apalis-redis's global registry of queues, and returns how many keys were
    /// removed. Another namespace nested under the prefix (`{prefix}:staging` next to
    /// `{prefix}`) is left alone unless the catalogue has a queue of its next name
    /// segment (`staging`). Meant for tests and development; never call it on a shared
    /// production namespace.
    ///
    /// # Errors
    /// `Unavailable` when Redis cannot be reached.
    pub async fn purge(&self) -> Result<u64> {
        let mut conn = self.inner.conn.clone();
        let mut removed = 0u64;
        for keys in self.inner.keys.values() {
            // The prefix has no glob characters (see the builder); queue names neither.
            let pattern = format!("{}:*", keys.base);
            let mut cursor: u64 = 0;
            loop {
                let (next, found): (u64, Vec<String>) = traced(
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
                if !found.is_empty() {
                    removed += traced(
                        "purge",
                        "*",
                        redis::cmd("DEL").arg(&found).query_async::<u64>(&mut conn),
                    )
                    .await?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        // apalis registers each queue's worker set in one global sorted set.
        let registered: Vec<&str> = self.inner.keys.values().map(Keys::workers).collect();
        if !registered.is_empty() {
            traced(
                "purge",
                "*",
                redis::cmd("ZREM")
                    .arg("core:apalis:queues:list")
                    .arg(registered)
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
        let (cfg, keys) = self.inner.queue(queue)?;
        let id = job.resolve_id()?;
        let payload = job.payload_text()?;
        let now = self.inner.clock.now();
        let delay = job.delay_from(now)?;
        let envelope = StoredJob::text(&job.meta(now), &payload)?;
        let args = TaskArgs::new(&id);
        let run_at = if delay.is_zero() { 0 } else { run_at_secs(delay) };
        let mut conn = self.inner.conn.clone();
        let generated = job.job_id.is_none();
        let script = if generated {
            &*scripts::NEW_JOB
        } else {
            &*scripts::ENQUEUE
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.record(&id))
            .key(keys.data())
            .key(keys.active())
            .key(keys.delayed())
            .arg(&args.task)
            .arg(envelope)
            .arg(args.to_json()?)
            .arg(run_at)
            .arg(cfg.retry.max_attempts());
        if generated {
            let _: u8 = traced("enqueue", queue, invocation.invoke_async(&mut conn)).await?;
            return Ok(Enqueued {
                job_id: id,
                created: true,
                state: JobState::Pending,
            });
        }
        let (created, state): (u8, String) =
            traced("enqueue", queue, invocation.invoke_async(&mut conn)).await?;
        Ok(Enqueued {
            job_id: id,
            created: created == 1,
            state: JobState::parse(&state)?,
        })
    }

    async fn job(&self, queue: &str, id: &str) -> Result<Option<JobInfo>> {
        let (_, keys) = self.inner.queue(queue)?;
        let mut conn = self.inner.conn.clone();
        let fields: HashMap<String, Vec<u8>> = traced(
            "get_job",
            queue,
            redis::cmd("HGETALL").arg(keys.record(id)).query_async(&mut conn),
        )
        .await?;
        parse_info(queue, id, fields)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        let (_, keys) = self.inner.queue(queue)?;
        let mut conn = self.inner.conn.clone();
        let (active, scheduled, delayed, counts, dead, unreadable): (
            u64,
            u64,
            u64,
            (Option<i64>, Option<u64>, Option<u64>),
            u64,
            u64,
        ) = traced(
            "stats",
            queue,
            redis::pipe()
                .cmd("LLEN")
                .arg(keys.active())
                .cmd("ZCARD")
                .arg(keys.scheduled())
                .cmd("ZCARD")
                .arg(keys.delayed())
                .cmd("HMGET")
                .arg(keys.counts())
                .arg("running")
                .arg("done")
                .arg("failed")
                .cmd("ZCARD")
                .arg(keys.dead())
                .cmd("HLEN")
                .arg(keys.unreadable())
                .query_async(&mut conn),
        )
        .await?;
        Ok(QueueStats {
            pending: active + scheduled + delayed,
            // Never negative; the scripts keep it exact (see `scripts::SETTLE`).
            running: u64::try_from(counts.0.unwrap_or(0)).unwrap_or(0),
            done: counts.1.unwrap_or(0),
            failed: counts.2.unwrap_or(0),
            dead,
            unreadable,
        })
    }

    async fn dead_jobs(&self, queue: &str, limit: usize) -> Result<Vec<JobInfo>> {
        let (_, keys) = self.inner.queue(queue)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.inner.conn.clone();
        let ids: Vec<String> = traced(
            "list_dead",
            queue,
            redis::cmd("ZRANGE")
                .arg(keys.dead())
                .arg(0)
                .arg(i64::try_from(limit - 1).unwrap_or(i64::MAX))
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
        let (_, keys) = self.inner.queue(queue)?;
        let args = TaskArgs::new(id);
        let mut conn = self.inner.conn.clone();
        let applied: u8 = traced(
            "retry_dead",
            queue,
            scripts::RETRY_DEAD
                .key(keys.record(id))
                .key(keys.dead())
                .key(keys.data())
                .key(keys.active())
                .key(keys.signal())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(reply: &str) -> redis::RedisError {
        match redis::parse_redis_value(reply.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn a_server_that_cannot_serve_yet_is_unavailable_and_other_errors_are_not() {
        for reply in [
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-MASTERDOWN Link with MASTER is down\r\n",
            "-CLUSTERDOWN The cluster is down\r\n",
            "-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.\r\n",
        ] {
            let err = map_redis_error("enqueue", server_error(reply));
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{reply}");
            assert!(err.is_retryable(), "{reply}");
        }
        for reply in [
            "-ERR user_script:1: Script attempted to access nonexistent global variable\r\n",
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
        ] {
            let err = map_redis_error("enqueue", server_error(reply));
            assert_eq!(err.kind(), ErrorKind::Provider, "{reply}");
        }
    }
}
