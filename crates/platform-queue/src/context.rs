//! What a job handler sees: the job, its attempt, and durable workflow steps.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use platform_core::Result;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::types::{JobError, JobMeta};

/// Durable storage of one job's completed step results.
#[async_trait]
pub(crate) trait StepStore: Send + Sync + 'static {
    /// The stored result of step `name`, if it completed before.
    async fn load(&self, name: &str) -> Result<Option<Value>>;
    /// Records that step `name` completed with `value`.
    async fn save(&self, name: &str, value: &Value) -> Result<()>;
}

/// One attempt of a job, as the handler sees it.
#[derive(Clone)]
pub struct JobContext {
    pub(crate) queue: String,
    pub(crate) job_id: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) meta: JobMeta,
    pub(crate) payload: Value,
    pub(crate) steps: Arc<dyn StepStore>,
    /// The steps this attempt completed or found stored, shared by the context's
    /// clones (see [`step`](Self::step)).
    pub(crate) done_steps: Arc<Mutex<HashSet<String>>>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("queue", &self.queue)
            .field("job_id", &self.job_id)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// The queue the job is on.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The job id (for a workflow, the run id).
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// This attempt's number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Attempts allowed in total.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether this is the last attempt before the job is dead-lettered.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The metadata envelope.
    pub fn meta(&self) -> &JobMeta {
        &self.meta
    }

    /// The raw JSON payload.
    pub fn payload_json(&self) -> &Value {
        &self.payload
    }

    /// The payload as `T`.
    ///
    /// # Errors
    /// A permanent [`JobError`] when the payload does not match `T` (retrying the
    /// same payload cannot help).
    pub fn payload<T: DeserializeOwned>(&self) -> std::result::Result<T, JobError> {
        T::deserialize(&self.payload)
            .map_err(|e| JobError::permanent(format!("job payload does not match the expected type: {e}")))
    }

    /// A key that is the same for every attempt of this job, for provider calls that
    /// de-duplicate by idempotency key (Stripe, Resend): `"{queue}:{job_id}"`, with any
    /// `%` and `:` of the job id percent-encoded (`%25`, `%3A`), so that no job's key
    /// is another's or a step's.
    pub fn idempotency_key(&self) -> String {
        job_idempotency_key(&self.queue, &self.job_id)
    }

    /// The idempotency key of step `name` of this job: `"{queue}:{job_id}:{name}"`,
    /// encoded as in [`idempotency_key`](Self::idempotency_key) (job `a:b` and step `b`
    /// of job `a` get different keys).
    pub fn step_idempotency_key(&self, name: &str) -> String {
        format!("{}:{}:{}", self.queue, key_part(&self.job_id), key_part(name))
    }

    /// Runs a durable workflow step.
    ///
    /// If step `name` of this job succeeded in an earlier attempt, its stored result is
    /// returned and `f` is not called; otherwise `f` runs and, if it succeeds, its
    /// result is stored (in Redis for the Redis queue) before it is returned. A retried
    /// run therefore resumes at the step that failed.
    ///
    /// Step names must be unique within a job: a name this attempt already completed
    /// (a loop calling `step("send", ..)` once per recipient) would otherwise return
    /// the first result and skip the work, so it is refused. Calling a step again
    /// after it failed runs it again.
    ///
    /// # Errors
    /// `f`'s error; a retryable error if the step store cannot be reached; a permanent
    /// error if a stored result does not deserialise to `T`, `f`'s result cannot be
    /// serialised (retrying would not change either), or this attempt already
    /// completed step `name`.
    pub async fn step<T, F, Fut>(&self, name: &str, f: F) -> std::result::Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, JobError>>,
    {
        if crate::lock(&self.done_steps).contains(name) {
            return Err(JobError::permanent(format!(
                "step {name:?} already completed in this run of job {:?}: step names must be unique within a job (add an index, e.g. \"{name}-2\")",
                self.job_id
            )));
        }
        let result = self.run_step(name, f).await;
        if result.is_ok() {
            crate::lock(&self.done_steps).insert(name.to_owned());
        }
        result
    }

    /// [`step`](Self::step) once its name is known to be new in this attempt.
    async fn run_step<T, F, Fut>(&self, name: &str, f: F) -> std::result::Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, JobError>>,
    {
        if let Some(stored) = self.steps.load(name).await.map_err(JobError::from_store)? {
            tracing::debug!(job_id = %self.job_id, step = name, "step already done; using its stored result");
            return T::deserialize(&stored).map_err(|e| {
                JobError::permanent(format!(
                    "stored result of step {name:?} does not match its type: {e}"
                ))
            });
        }
        let value = f().await?;
        let text = serde_json::to_string(&value)
            .map_err(|e| JobError::permanent(format!("result of step {name:?} cannot be serialised: {e}")))?;
        // Read back as a later attempt would read it from Redis. A result that does
        // not (a NaN float is written as null; JSON nested deeper than serde_json's
        // recursion limit of 128 cannot be parsed) would make every later attempt
        // fail on it, `retry_dead` included: not stored.
        let json = serde_json::from_str::<Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(|json| T::deserialize(&json).map(|_| json).map_err(|e| e.to_string()))
            .map_err(|e| {
                JobError::permanent(format!(
                    "result of step {name:?} does not read back from JSON: {e}"
                ))
            })?;
        self.steps.save(name, &json).await.map_err(JobError::from_store)?;
        Ok(value)
    }
}

/// The idempotency key every attempt of job `job_id` on `queue` gets
/// ([`JobContext::idempotency_key`]): `"{queue}:{job_id}"`, with any `%` and `:` of the
/// job id percent-encoded. For checking, before enqueueing, that a provider will
/// accept the key a job's handler will send (its length, say).
pub fn job_idempotency_key(queue: &str, job_id: &str) -> String {
    format!("{queue}:{}", key_part(job_id))
}

/// `part` with `%` and `:` percent-encoded: an idempotency key's parts are then told
/// apart by its colons. Parts without either (uuids, most ids) are unchanged.
fn key_part(part: &str) -> std::borrow::Cow<'_, str> {
    if part.contains(['%', ':']) {
        part.replace('%', "%25").replace(':', "%3A").into()
    } else {
        part.into()
    }
}

/// The error of a step result not saved because its attempt is no longer its job's
/// current one (both implementations refuse it alike).
pub(crate) fn stale_step(name: &str, attempt: u32, job_id: &str) -> platform_core::Error {
    platform_core::Error::new(
        platform_core::ErrorKind::Conflict,
        format!(
            "result of step {name:?} not saved: attempt {attempt} is no longer the current attempt of job {job_id:?}"
        ),
    )
    .with_operation("save_step")
}

impl JobError {
    fn from_store(e: platform_core::Error) -> Self {
        JobError::retryable(format!("step store: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoSteps;

    #[async_trait]
    impl StepStore for NoSteps {
        async fn load(&self, _: &str) -> Result<Option<Value>> {
            Ok(None)
        }
        async fn save(&self, _: &str, _: &Value) -> Result<()> {
            Ok(())
        }
    }

    fn ctx(job_id: &str) -> JobContext {
        JobContext {
            queue: "q".to_owned(),
            job_id: job_id.to_owned(),
            attempt: 1,
            max_attempts: 1,
            meta: JobMeta {
                product: None,
                timestamp: chrono::DateTime::UNIX_EPOCH,
                version: "1".to_owned(),
            },
            payload: Value::Null,
            steps: Arc::new(NoSteps),
            done_steps: Arc::default(),
        }
    }

    /// Keys of different jobs and steps never collide, whatever their ids hold; ids
    /// without `%` or `:` keep the plain form.
    #[test]
    fn idempotency_keys_of_different_jobs_and_steps_differ() {
        assert_eq!(ctx("job-1").idempotency_key(), "q:job-1");
        assert_eq!(ctx("job-1").step_idempotency_key("send"), "q:job-1:send");
        assert_eq!(ctx("a:b%c").idempotency_key(), "q:a%3Ab%25c");
        assert_ne!(ctx("a:b").idempotency_key(), ctx("a").step_idempotency_key("b"));
        assert_ne!(
            ctx("a").step_idempotency_key("b:c"),
            ctx("a:b").step_idempotency_key("c")
        );
        assert_ne!(ctx("a%3Ab").idempotency_key(), ctx("a:b").idempotency_key());
    }
}
