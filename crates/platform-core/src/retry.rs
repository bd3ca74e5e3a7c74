//! Retries with exponential backoff and full jitter.
//!
//! [`RetryPolicy::retry`] runs an async operation until it succeeds, fails with an
//! error that is not [retryable](crate::Error::is_retryable), or the policy's budget
//! (attempts, elapsed time) runs out. A `Retry-After` the provider sent is honoured.
//! An operation that is not idempotent is never retried unless it carries an
//! idempotency key, so a retry can never perform a side effect twice.
//!
//! Timing uses `tokio::time`, so tests drive it with a paused clock.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};

/// Whether an operation may safely be performed more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Idempotency {
    /// Repeating the operation has the same effect as doing it once (GET, PUT, DELETE).
    Idempotent,
    /// The operation must not be repeated: it is tried exactly once.
    NonIdempotent,
    /// The operation is not idempotent by itself, but carries this key, which the
    /// provider uses to de-duplicate repeats; it may be retried.
    Key(String),
}

impl Idempotency {
    /// Whether a failed attempt may be repeated.
    pub fn allows_retry(&self) -> bool {
        match self {
            Self::Idempotent => true,
            Self::NonIdempotent => false,
            Self::Key(key) => !key.is_empty(),
        }
    }

    /// The idempotency key, if there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Key(key) => Some(key),
            _ => None,
        }
    }
}

/// How to retry: attempts, backoff bounds and elapsed-time budget.
///
/// The delay before attempt `n + 1` is drawn uniformly from
/// `0..=min(max_backoff, initial_backoff * multiplier^(n - 1))` ("full jitter").
/// When the error carries a `retry_after`, the delay is at least that long; a
/// `retry_after` longer than [`with_max_retry_after`](Self::with_max_retry_after) (60 s
/// by default) is not waited for: the error is returned, still carrying it, for the
/// caller to schedule (a queue job's retry, say). If the next delay would exceed the
/// elapsed-time budget, the last error is returned.
///
/// The budget bounds the waiting: it is checked before each wait, so the last attempt
/// may end past it by up to that attempt's own duration, which its own timeout bounds
/// (e.g. the HTTP client's request timeout).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    max_elapsed: Option<Duration>,
    max_retry_after: Duration,
    jitter: bool,
}

impl Default for RetryPolicy {
    /// 3 attempts, 200 ms initial backoff doubling up to 10 s, 60 s budget, a
    /// `retry_after` waited for up to 60 s, jitter on.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            max_elapsed: Some(Duration::from_secs(60)),
            max_retry_after: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// A policy that tries once and never retries.
    pub fn never() -> Self {
        Self::default().with_max_attempts(1)
    }

    /// Total attempts including the first (at least 1).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The backoff cap before the first retry.
    #[must_use]
    pub fn with_initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// The largest backoff between two attempts (a `retry_after` may exceed it).
    #[must_use]
    pub fn with_max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Growth factor of the backoff cap per attempt (at least 1.0).
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            2.0
        };
        self
    }

    /// Gives up rather than wait past this much time since the first attempt.
    /// `None` means attempts alone bound the retries.
    #[must_use]
    pub fn with_max_elapsed(mut self, budget: Option<Duration>) -> Self {
        self.max_elapsed = budget;
        self
    }

    /// The longest `retry_after` waited for: a provider asking for a longer wait (a
    /// daily quota, say) gets its error returned at once, `retry_after` included.
    #[must_use]
    pub fn with_max_retry_after(mut self, wait: Duration) -> Self {
        self.max_retry_after = wait;
        self
    }

    /// Turns full jitter off, so delays are exactly the exponential caps
    /// (useful for deterministic tests; keep it on in production).
    #[must_use]
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Total attempts including the first.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff cap before attempt `attempt + 1`, where `attempt` is 1-based. It
    /// saturates at the maximum backoff, which may be as large as `Duration::MAX`.
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        if self.initial_backoff.is_zero() {
            // Not 0 × ∞ (NaN) once the multiplier's power overflows.
            return Duration::ZERO;
        }
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        let max = self.max_backoff.as_secs_f64();
        // `Duration::MAX` in seconds rounds up to 2^64, which no `Duration` holds.
        Duration::try_from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
            .map_or(self.max_backoff, |cap| cap.min(self.max_backoff))
    }

    /// The backoff before attempt `attempt + 1`: the cap, jittered when jitter is on.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.backoff_cap(attempt);
        if self.jitter {
            Duration::try_from_secs_f64(cap.as_secs_f64() * fastrand::f64()).unwrap_or(cap)
        } else {
            cap
        }
    }

    /// Runs `op` until it succeeds or retrying stops making sense.
    ///
    /// `op` receives the 1-based attempt number. Retries happen only when the error
    /// [is retryable](Error::is_retryable) and `idempotency` [allows it](Idempotency::allows_retry).
    /// The error of the last attempt is returned unchanged.
    pub async fn retry<T, F, Fut>(&self, idempotency: &Idempotency, op: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run(op, |attempt, error: &Error| {
            if !error.is_retryable() {
                return None;
            }
            if !idempotency.allows_retry() {
                tracing::debug!(
                    attempt,
                    error = %error,
                    "not retrying a non-idempotent operation without an idempotency key"
                );
                return None;
            }
            let backoff = self.backoff(attempt);
            match error.retry_after() {
                Some(ra) if ra > self.max_retry_after => {
                    tracing::debug!(attempt, retry_after = ?ra, error = %error, "not waiting out a long retry-after");
                    None
                }
                Some(ra) => Some(ra.max(backoff)),
                None => Some(backoff),
            }
        })
        .await
    }

    /// [`retry`](Self::retry) for an operation whose error is not this crate's
    /// [`Error`] and must be handed back unchanged (e.g. through a client library's
    /// connection trait): `retryable` decides which errors are retried, with the
    /// policy's backoff and budget.
    pub async fn retry_if<T, E, F, Fut>(
        &self,
        retryable: impl Fn(&E) -> bool,
        op: F,
    ) -> std::result::Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        self.run(op, |attempt, error: &E| {
            retryable(error).then(|| self.backoff(attempt))
        })
        .await
    }

    /// The retry loop: `delay` gives the wait before the next attempt, or `None` to
    /// return the error; attempts and the elapsed-time budget bound it.
    async fn run<T, E, F, Fut>(
        &self,
        mut op: F,
        mut delay: impl FnMut(u32, &E) -> Option<Duration>,
    ) -> std::result::Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let started = tokio::time::Instant::now();
        let mut attempt = 1;
        loop {
            let error = match op(attempt).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if attempt >= self.max_attempts {
                return Err(error);
            }
            let Some(delay) = delay(attempt, &error) else {
                return Err(error);
            };
            if let Some(budget) = self.max_elapsed
                && started.elapsed().saturating_add(delay) > budget
            {
                tracing::debug!(attempt, ?delay, ?budget, error = %error, "retry budget exhausted");
                return Err(error);
            }
            tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %error, "retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}
