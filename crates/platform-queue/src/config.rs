//! The queue catalogue: which queues exist and how their workers behave.
//!
//! Defaults follow the seed: `email` (concurrency 100), `webhooks` (50),
//! `agent-execution` (workflow, timeout 30 min), `memory-processing` (20),
//! `image-generation` (workflow, timeout 5 min) and `thumbnail-creation` (50).

use std::collections::BTreeMap;
use std::time::Duration;

use platform_core::{EnvMap, Error, Result, RetryPolicy};

/// The longest a job may be delayed ([`NewJob::with_delay`](crate::NewJob::with_delay),
/// [`with_run_at`](crate::NewJob::with_run_at)) and the longest de-duplication window:
/// 3,650 days. Longer retry backoffs are shortened to it.
pub const MAX_DELAY: Duration = Duration::from_secs(3650 * 24 * 3600);

/// The most jobs one worker may run at once. Each running job holds a semaphore
/// permit (tokio's semaphores take at most `usize::MAX >> 3`) and, on Redis, a place in
/// the worker's fetches; beyond this, start more workers instead.
pub const MAX_CONCURRENCY: usize = 10_000;

/// How one queue's workers behave.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// The queue name: 1–64 lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// Jobs one worker runs at once (1 to [`MAX_CONCURRENCY`]).
    pub concurrency: usize,
    /// Longest an attempt may run before it is cancelled and counted as failed.
    pub timeout: Duration,
    /// Attempts and exponential backoff between them (the delay before attempt
    /// `n + 1` is `retry.backoff_cap(n)`; jitter is not applied).
    pub retry: RetryPolicy,
    /// Whether the queue runs workflows (triggered by `{name}.requested`).
    pub workflow: bool,
    /// How long a finished job's id keeps de-duplicating new enqueues (to the
    /// millisecond; zero: not at all once it is done; at most [`MAX_DELAY`]).
    pub dedupe_window: Duration,
}

impl QueueConfig {
    /// A plain job queue: concurrency 10, timeout 60 s, 3 attempts with backoff from
    /// 1 s doubling up to 5 min, de-duplication for 24 h after completion.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            concurrency: 10,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_secs(1))
                .with_max_backoff(Duration::from_secs(300))
                .with_multiplier(2.0)
                .with_max_elapsed(None)
                .with_jitter(false),
            workflow: false,
            dedupe_window: Duration::from_secs(24 * 3600),
        }
    }

    /// A workflow queue: like [`QueueConfig::new`] but 4 attempts (the seed's
    /// "3 retries").
    pub fn workflow(name: impl Into<String>) -> Self {
        let mut q = Self::new(name);
        q.workflow = true;
        q.retry = q.retry.with_max_attempts(4);
        q
    }

    /// Sets the concurrency.
    #[must_use]
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the de-duplication window after completion.
    #[must_use]
    pub fn with_dedupe_window(mut self, window: Duration) -> Self {
        self.dedupe_window = window;
        self
    }

    /// The delay before the attempt after failed attempt `attempt` (1-based), at most
    /// [`MAX_DELAY`].
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.retry.backoff_cap(attempt).min(MAX_DELAY)
    }

    fn validate(&self) -> Result<()> {
        validate_queue_name(&self.name)?;
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(Error::invalid_input(format!(
                "queue {:?}: concurrency must be 1 to {MAX_CONCURRENCY}, got {}",
                self.name, self.concurrency
            )));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid_input(format!(
                "queue {:?}: timeout must be positive",
                self.name
            )));
        }
        if self.dedupe_window > MAX_DELAY {
            return Err(Error::invalid_input(format!(
                "queue {:?}: the de-duplication window must be at most {} days, got {:?}",
                self.name,
                MAX_DELAY.as_secs() / 86_400,
                self.dedupe_window
            )));
        }
        Ok(())
    }
}

pub(crate) fn validate_queue_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "invalid queue name {name:?}: use 1 to 64 lowercase letters, digits, '-' or '_'"
        )))
    }
}

/// The set of queues a deployment uses.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueCatalog {
    queues: BTreeMap<String, QueueConfig>,
}

impl Default for QueueCatalog {
    /// The seed's queues.
    fn default() -> Self {
        Self::seed()
    }
}

impl QueueCatalog {
    /// An empty catalogue.
    pub fn empty() -> Self {
        Self {
            queues: BTreeMap::new(),
        }
    }

    /// The seed's queues: `email` (100), `webhooks` (50), `agent-execution`
    /// (workflow, 30 min), `memory-processing` (20), `image-generation` (workflow,
    /// 5 min), `thumbnail-creation` (50).
    pub fn seed() -> Self {
        let queues = [
            QueueConfig::new("email").with_concurrency(100),
            QueueConfig::new("webhooks").with_concurrency(50),
            QueueConfig::workflow("agent-execution").with_timeout(Duration::from_secs(30 * 60)),
            QueueConfig::new("memory-processing").with_concurrency(20),
            QueueConfig::workflow("image-generation").with_timeout(Duration::from_secs(5 * 60)),
            QueueConfig::new("thumbnail-creation").with_concurrency(50),
        ];
        Self {
            queues: queues.into_iter().map(|q| (q.name.clone(), q)).collect(),
        }
    }

    /// Adds or replaces a queue.
    ///
    /// # Errors
    /// `InvalidInput` for a bad name, zero concurrency or a zero timeout.
    pub fn with_queue(mut self, queue: QueueConfig) -> Result<Self> {
        queue.validate()?;
        self.queues.insert(queue.name.clone(), queue);
        Ok(self)
    }

    /// The seed catalogue with queues added and tuned from the environment (so a new
    /// product's queues need no code): `PLATFORM_QUEUES` and `PLATFORM_WORKFLOWS` name
    /// extra queues and workflow queues, comma-separated (a workflow `w` is started by
    /// the event `w.requested`); then, per queue `NAME` (upper-cased, `-` as `_`):
    /// `PLATFORM_QUEUE_<NAME>_CONCURRENCY`, `PLATFORM_QUEUE_<NAME>_TIMEOUT_SECS`,
    /// `PLATFORM_QUEUE_<NAME>_MAX_ATTEMPTS`.
    ///
    /// # Errors
    /// `Config` naming a variable that does not parse or is out of range, or a queue
    /// name that is invalid or listed twice.
    pub fn from_env(env: &EnvMap) -> Result<Self> {
        let mut out = Self::seed();
        for (var, workflow) in [("PLATFORM_QUEUES", false), ("PLATFORM_WORKFLOWS", true)] {
            let names = env.optional(var).unwrap_or_default();
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if out.queues.contains_key(name) {
                    return Err(Error::config(format!(
                        "{var}: queue {name:?} is already in the queue catalogue"
                    )));
                }
                let queue = if workflow {
                    QueueConfig::workflow(name)
                } else {
                    QueueConfig::new(name)
                };
                out = out
                    .with_queue(queue)
                    .map_err(|e| Error::config(format!("{var}: {}", e.message())))?;
                // `note-sync` and `note_sync` would both be tuned by the same
                // `PLATFORM_QUEUE_NOTE_SYNC_*` variables.
                if let Some(other) = out
                    .queues
                    .keys()
                    .find(|q| q.as_str() != name && env_part(q) == env_part(name))
                {
                    return Err(Error::config(format!(
                        "{var}: queue {name:?} and queue {other:?} would share the variables PLATFORM_QUEUE_{}_*; rename one",
                        env_part(name)
                    )));
                }
            }
        }
        for q in out.queues.values_mut() {
            let var = env_part(&q.name);
            let name = |field: &str| format!("PLATFORM_QUEUE_{var}_{field}");
            if let Some(n) = positive(env, &name("CONCURRENCY"))? {
                if n > MAX_CONCURRENCY {
                    return Err(Error::config(format!(
                        "{} must be at most {MAX_CONCURRENCY}, got {n}",
                        name("CONCURRENCY")
                    )));
                }
                q.concurrency = n;
            }
            if let Some(s) = positive(env, &name("TIMEOUT_SECS"))? {
                q.timeout = Duration::from_secs(s);
            }
            if let Some(a) = positive(env, &name("MAX_ATTEMPTS"))? {
                q.retry = q.retry.clone().with_max_attempts(a);
            }
        }
        Ok(out)
    }

    /// The queue `name`.
    ///
    /// # Errors
    /// `InvalidInput` naming an unknown queue.
    pub fn get(&self, name: &str) -> Result<&QueueConfig> {
        self.queues.get(name).ok_or_else(|| {
            Error::invalid_input(format!("unknown queue {name:?}: not in the queue catalogue"))
        })
    }

    /// Every queue, by name.
    pub fn queues(&self) -> impl Iterator<Item = &QueueConfig> {
        self.queues.values()
    }
}

/// Queue `name` as it appears in its variables' names (`PLATFORM_QUEUE_<NAME>_*`):
/// upper-cased, `-` as `_`.
fn env_part(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The whole number in variable `name`, if set; a value that does not parse (or does
/// not fit `T`) or is zero is a `Config` error naming the variable.
fn positive<T>(env: &EnvMap, name: &str) -> Result<Option<T>>
where
    T: std::str::FromStr + PartialEq + From<u8>,
    T::Err: std::fmt::Display,
{
    match env.parse::<T>(name)? {
        Some(n) if n == T::from(0) => Err(Error::config(format!("{name} must be at least 1, got 0"))),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_catalogue_matches_the_issue() {
        let c = QueueCatalog::seed();
        let email = c.get("email").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(email.concurrency, 100);
        assert!(!email.workflow);
        let agent = c.get("agent-execution").unwrap_or_else(|e| unreachable!("{e}"));
        assert!(agent.workflow);
        assert_eq!(agent.timeout, Duration::from_secs(1800));
        assert_eq!(agent.retry.max_attempts(), 4);
        assert_eq!(c.queues().count(), 6);
        assert!(c.get("nope").is_err_and(|e| e.to_string().contains("nope")));
    }

    #[test]
    fn env_overrides_and_errors_name_the_variable() {
        let env = EnvMap::from_iter([("PLATFORM_QUEUE_EMAIL_CONCURRENCY", "7")]);
        let c = QueueCatalog::from_env(&env).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.get("email").map(|q| q.concurrency).ok(), Some(7));
        let bad = EnvMap::from_iter([("PLATFORM_QUEUE_IMAGE_GENERATION_TIMEOUT_SECS", "soon")]);
        let err = QueueCatalog::from_env(&bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("PLATFORM_QUEUE_IMAGE_GENERATION_TIMEOUT_SECS"),
            "{err}"
        );
        for var in [
            "PLATFORM_QUEUE_WEBHOOKS_CONCURRENCY",
            "PLATFORM_QUEUE_WEBHOOKS_TIMEOUT_SECS",
            "PLATFORM_QUEUE_WEBHOOKS_MAX_ATTEMPTS",
        ] {
            let zero = EnvMap::from_iter([(var, "0")]);
            let err = QueueCatalog::from_env(&zero).err().map(|e| e.to_string());
            assert!(err.as_deref().is_some_and(|e| e.contains(var)), "{var}: {err:?}");
        }
    }

    /// Queues and workflows named in the environment join the seed's, tuned like them;
    /// a bad or repeated name is a `Config` error naming the variable.
    #[test]
    fn queues_are_added_from_the_environment() {
        let env = EnvMap::from_iter([
            ("PLATFORM_QUEUES", " note-sync, mori-export "),
            ("PLATFORM_WORKFLOWS", "mori-render"),
            ("PLATFORM_QUEUE_NOTE_SYNC_CONCURRENCY", "4"),
        ]);
        let c = QueueCatalog::from_env(&env).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.get("note-sync").map(|q| q.concurrency).ok(), Some(4));
        assert_eq!(c.get("mori-export").map(|q| q.workflow).ok(), Some(false));
        assert_eq!(c.get("mori-render").map(|q| q.workflow).ok(), Some(true));
        assert!(c.get("email").is_ok(), "the seed's queues stay");
        for (var, names, says) in [
            ("PLATFORM_QUEUES", "email", "already in the queue catalogue"),
            (
                "PLATFORM_QUEUES",
                "note-sync,note_sync",
                "would share the variables PLATFORM_QUEUE_NOTE_SYNC_*",
            ),
            (
                "PLATFORM_WORKFLOWS",
                "agent_execution",
                "\"agent-execution\" would share",
            ),
            ("PLATFORM_WORKFLOWS", "Bad Name", "Bad Name"),
        ] {
            let env = EnvMap::from_iter([(var, names)]);
            let err = QueueCatalog::from_env(&env).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains(var) && e.contains(says)),
                "{var}: {err:?}"
            );
        }
    }

    /// Concurrency beyond [`MAX_CONCURRENCY`] (which tokio's semaphore would panic
    /// on near `usize::MAX`) is refused up front, from code and from the environment.
    #[test]
    fn concurrency_over_the_ceiling_is_refused() {
        for n in [MAX_CONCURRENCY + 1, usize::MAX] {
            let q = QueueConfig::new("wide").with_concurrency(n);
            let err = QueueCatalog::empty().with_queue(q).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("\"wide\"") && e.contains("concurrency must be 1 to 10000")),
                "{n}: {err:?}"
            );
            let var = "PLATFORM_QUEUE_EMAIL_CONCURRENCY";
            let env = EnvMap::from_iter([(var, n.to_string())]);
            let err = QueueCatalog::from_env(&env).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains(var) && e.contains("at most 10000")),
                "{n}: {err:?}"
            );
        }
        let widest = QueueConfig::new("widest").with_concurrency(MAX_CONCURRENCY);
        assert!(QueueCatalog::empty().with_queue(widest).is_ok());
    }

    #[test]
    fn backoff_grows() {
        let q = QueueConfig::new("x");
        assert_eq!(q.backoff(1), Duration::from_secs(1));
        assert_eq!(q.backoff(2), Duration::from_secs(2));
        assert_eq!(q.backoff(3), Duration::from_secs(4));
        let uncapped = q.with_retry(RetryPolicy::default().with_max_backoff(Duration::MAX));
        assert_eq!(uncapped.backoff(200), MAX_DELAY);
    }

    /// A window Redis could not set as an expiry ("keep for ever") is refused with
    /// the reason, by every implementation (they share the catalogue).
    #[test]
    fn an_endless_dedupe_window_is_refused() {
        for window in [MAX_DELAY + Duration::from_secs(1), Duration::MAX] {
            let q = QueueConfig::new("forever").with_dedupe_window(window);
            let err = QueueCatalog::empty().with_queue(q).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("de-duplication window must be at most 3650 days")),
                "{err:?}"
            );
        }
        let longest = QueueConfig::new("longest").with_dedupe_window(MAX_DELAY);
        assert!(QueueCatalog::empty().with_queue(longest).is_ok());
    }
}
