//! Provider-neutral requests and responses of the queue.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use platform_core::{Error, ErrorKind, Product, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The metadata envelope every job carries (the seed's `{product, timestamp, version}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobMeta {
    /// The product the job belongs to, if any.
    pub product: Option<Product>,
    /// When the job was enqueued, from the queue's clock.
    pub timestamp: DateTime<Utc>,
    /// The payload's schema version (default `"1"`).
    pub version: String,
}

/// When a new job may first run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Schedule {
    Now,
    After(Duration),
    At(DateTime<Utc>),
}

/// How deeply arrays and objects may nest in a job payload: a stored job must read
/// back (Redis keeps it as JSON text, and serde_json parses at most 128 levels, the
/// envelope around the payload included), so deeper payloads are refused at enqueue by
/// every implementation.
pub const MAX_PAYLOAD_DEPTH: usize = 100;

/// The largest job payload, as JSON text: 1 MiB, a policy rather than a protocol
/// limit (Redis takes arguments up to its `proto-max-bulk-len`, 512 MB by default).
/// Every attempt's start carries the payload back from Redis, so large payloads slow
/// every worker of the queue; larger ones are refused at enqueue by every
/// implementation: put large data in object storage and pass its key.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Passes what is written to it on to `W`, failing beyond [`MAX_PAYLOAD_BYTES`]
/// (before any byte too many reaches `W`).
struct Limited<W> {
    written: usize,
    inner: W,
}

impl<W: std::io::Write> std::io::Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len();
        if self.written > MAX_PAYLOAD_BYTES {
            return Err(std::io::Error::other("over MAX_PAYLOAD_BYTES"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A job to enqueue: a JSON payload plus options.
#[derive(Debug, Clone)]
#[must_use]
pub struct NewJob {
    pub(crate) payload: Value,
    pub(crate) product: Option<Product>,
    pub(crate) version: String,
    pub(crate) job_id: Option<String>,
    pub(crate) schedule: Schedule,
}

impl NewJob {
    /// A job with this JSON payload, no product, version `"1"`, a generated id, to run now.
    pub fn new(payload: Value) -> Self {
        Self {
            payload,
            product: None,
            version: "1".to_owned(),
            job_id: None,
            schedule: Schedule::Now,
        }
    }

    /// A job whose payload is `payload` serialised to JSON.
    ///
    /// # Errors
    /// `InvalidInput` if the payload cannot be serialised.
    pub fn json<T: Serialize + ?Sized>(payload: &T) -> Result<Self> {
        serde_json::to_value(payload)
            .map(Self::new)
            .map_err(|e| Error::invalid_input("job payload cannot be serialised to JSON").with_source(e))
    }

    /// Tags the job with a product.
    pub fn with_product(mut self, product: Product) -> Self {
        self.product = Some(product);
        self
    }

    /// Sets the payload's schema version.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the job id: enqueueing the same id again while the job is known gives the
    /// existing job instead of a second one. So an enqueue that failed with
    /// `Unavailable` or `Timeout` (the reply was lost, but the job may be stored) can
    /// be retried safely; without an id, such a retry may enqueue the job twice.
    pub fn with_job_id(mut self, id: impl Into<String>) -> Self {
        self.job_id = Some(id.into());
        self
    }

    /// Runs the job no earlier than `delay` from now.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.schedule = Schedule::After(delay);
        self
    }

    /// Runs the job no earlier than `at` (by the queue's clock).
    pub fn with_run_at(mut self, at: DateTime<Utc>) -> Self {
        self.schedule = Schedule::At(at);
        self
    }

    /// The delay from `now` before the job may run.
    ///
    /// # Errors
    /// `InvalidInput` if it is over [`MAX_DELAY`](crate::MAX_DELAY).
    pub(crate) fn delay_from(&self, now: DateTime<Utc>) -> Result<Duration> {
        let delay = match &self.schedule {
            Schedule::Now => Duration::ZERO,
            Schedule::After(d) => *d,
            Schedule::At(at) => (*at - now).to_std().unwrap_or(Duration::ZERO),
        };
        if delay > crate::MAX_DELAY {
            return Err(Error::invalid_input(format!(
                "a job may be delayed at most {} days, got {delay:?}",
                crate::MAX_DELAY.as_secs() / 86_400
            )));
        }
        Ok(delay)
    }

    /// `InvalidInput` if the payload is nested deeper than [`MAX_PAYLOAD_DEPTH`] or
    /// longer than [`MAX_PAYLOAD_BYTES`] as JSON.
    pub(crate) fn check_payload(&self) -> Result<()> {
        // Measured without keeping the text; writing stops at the first byte too many.
        self.write_payload(std::io::sink()).map(drop)
    }

    /// The payload as JSON text, checked as [`check_payload`](Self::check_payload)
    /// checks it, in one pass.
    pub(crate) fn payload_text(&self) -> Result<String> {
        let text = self.write_payload(Vec::new())?;
        String::from_utf8(text).map_err(|e| Error::unexpected("JSON text is not UTF-8").with_source(e))
    }

    /// Checks the payload's depth, then writes it as JSON to `out`, refusing it past
    /// [`MAX_PAYLOAD_BYTES`]; returns `out`.
    fn write_payload<W: std::io::Write>(&self, out: W) -> Result<W> {
        let mut stack = vec![(&self.payload, 0usize)];
        while let Some((value, depth)) = stack.pop() {
            let children: Box<dyn Iterator<Item = &Value>> = match value {
                Value::Array(items) => Box::new(items.iter()),
                Value::Object(fields) => Box::new(fields.values()),
                _ => continue,
            };
            if depth == MAX_PAYLOAD_DEPTH {
                return Err(Error::invalid_input(format!(
                    "job payload is nested deeper than {MAX_PAYLOAD_DEPTH} arrays or objects"
                )));
            }
            stack.extend(children.map(|child| (child, depth + 1)));
        }
        let mut limited = Limited {
            written: 0,
            inner: out,
        };
        if serde_json::to_writer(&mut limited, &self.payload).is_err() {
            return Err(Error::invalid_input(format!(
                "job payload is over {MAX_PAYLOAD_BYTES} bytes as JSON; store large data elsewhere (object storage) and pass its key"
            )));
        }
        Ok(limited.inner)
    }

    /// Validates the id, assigning a fresh one when none was given.
    pub(crate) fn resolve_id(&self) -> Result<String> {
        match &self.job_id {
            None => Ok(uuid::Uuid::new_v4().to_string()),
            Some(id) => {
                if id.is_empty() || id.len() > 128 {
                    return Err(Error::invalid_input(format!(
                        "invalid job id {id:?}: must be 1 to 128 bytes"
                    )));
                }
                if id.chars().any(char::is_control) {
                    return Err(Error::invalid_input(format!(
                        "invalid job id {id:?}: control characters are not allowed"
                    )));
                }
                Ok(id.clone())
            }
        }
    }

    pub(crate) fn meta(&self, now: DateTime<Utc>) -> JobMeta {
        JobMeta {
            product: self.product.clone(),
            timestamp: now,
            version: self.version.clone(),
        }
    }
}

/// What [`crate::JobQueue::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Enqueued {
    /// The job's id (also the workflow run id).
    pub job_id: String,
    /// False when a job with this id already existed and nothing new was enqueued.
    pub created: bool,
    /// The job's state right after the call.
    pub state: JobState,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting to run (possibly delayed).
    Pending,
    /// Being processed by a worker.
    Running,
    /// An attempt failed; waiting for the retry.
    Retrying,
    /// Succeeded.
    Done,
    /// Every attempt failed; on the dead list.
    Dead,
}

impl JobState {
    /// The lowercase name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Done => "done",
            Self::Dead => "dead",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "retrying" => Self::Retrying,
            "done" => Self::Done,
            "dead" => Self::Dead,
            other => return Err(Error::unexpected(format!("unknown stored job state {other:?}"))),
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as the queue knows it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobInfo {
    /// The job id.
    pub id: String,
    /// The queue it is on.
    pub queue: String,
    /// Its state.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed before it is dead.
    pub max_attempts: u32,
    /// The metadata envelope.
    ///
    /// When the stored envelope cannot be read (written by an incompatible version,
    /// or changed by hand; workers dead-letter such a job), `meta` is empty (no
    /// product, timestamp at the Unix epoch, version `""`), `payload` is null and
    /// `last_error` says why.
    pub meta: JobMeta,
    /// The payload.
    pub payload: Value,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
}

/// Counts of a queue's jobs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Waiting to run, including delayed jobs and jobs waiting for a retry.
    pub pending: u64,
    /// Being processed.
    pub running: u64,
    /// Succeeded (since the queue was created).
    pub done: u64,
    /// Failed attempts (since the queue was created).
    pub failed: u64,
    /// On the dead list now.
    pub dead: u64,
    /// Tasks set aside because no worker could read or run them and whose job is
    /// unknown or has a record that cannot be read (Redis only, e.g. written by an
    /// incompatible version, or a key of another type; listed by
    /// [`RedisQueue::unreadable_tasks`](crate::RedisQueue::unreadable_tasks)). A task
    /// whose job can be read is dead-lettered instead. Always 0 for the in-process
    /// queue.
    pub unreadable: u64,
}

/// A task set aside because no worker could read or run it and its job is unknown or
/// its record cannot be read (Redis only; see
/// [`RedisQueue::unreadable_tasks`](crate::RedisQueue::unreadable_tasks)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnreadableTask {
    /// The apalis task id.
    pub task_id: String,
    /// What was wrong with it (for arguments that cannot be read, their first 200
    /// bytes as stored).
    pub reason: String,
}

/// Why a job attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    message: String,
    permanent: bool,
}

impl JobError {
    /// A failure worth retrying (the job goes back to the queue with backoff).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that retrying cannot fix: the job goes straight to the dead list.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the job should be dead-lettered without further attempts.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JobError {}

impl From<Error> for JobError {
    /// Invalid input and configuration errors are permanent; everything else is retried.
    fn from(e: Error) -> Self {
        let permanent = matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Config);
        Self {
            message: e.to_string(),
            permanent,
        }
    }
}

/// The stored form of a job: envelope plus payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredJob {
    pub(crate) meta: JobMeta,
    pub(crate) payload: Value,
}

impl StoredJob {
    /// The stored text of a job of `meta` whose payload is the JSON text `payload`
    /// (from [`NewJob::payload_text`]): what serialising the `StoredJob` gives, without
    /// serialising the payload a second time.
    pub(crate) fn text(meta: &JobMeta, payload: &str) -> Result<String> {
        let meta = serde_json::to_string(meta)
            .map_err(|e| Error::invalid_input("job metadata cannot be serialised").with_source(e))?;
        Ok(format!(r#"{{"meta":{meta},"payload":{payload}}}"#))
    }

    /// What a job whose stored envelope cannot be read shows (see [`JobInfo`]).
    pub(crate) fn unreadable() -> Self {
        Self {
            meta: JobMeta {
                product: None,
                timestamp: DateTime::UNIX_EPOCH,
                version: String::new(),
            },
            payload: Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    /// The text built from the payload's text is byte for byte what serialising the
    /// whole `StoredJob` gives.
    #[test]
    fn stored_text_is_the_serialised_stored_job() {
        for (product, payload) in [
            (None, Value::Null),
            (
                Some(Product::KUMORI),
                serde_json::json!({"to": "a\"b\\c\u{1}", "n": [1.5, -0.0, 1e300], "deep": {"x": []}}),
            ),
        ] {
            let job = NewJob::new(payload.clone()).with_version("2\n\"v\"");
            let job = match product {
                Some(p) => job.with_product(p),
                None => job,
            };
            let meta = job.meta(DateTime::UNIX_EPOCH);
            let expected = serde_json::to_string(&StoredJob {
                meta: meta.clone(),
                payload,
            })
            .unwrap();
            let text = StoredJob::text(&meta, &job.payload_text().unwrap()).unwrap();
            assert_eq!(text, expected);
        }
    }
}
