//! [`RedisQueueBuilder`]: configuration of the Redis queue.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use platform_core::{DynClock, EnvMap, Error, ExposeSecret, Result, SecretString, system_clock};

use super::client::{Inner, Keys, RedisQueue, map_redis_error};
use crate::config::QueueCatalog;

/// The longest orphan timeout (heartbeat interval × missed heartbeats): a day.
const MAX_ORPHAN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Builds a [`RedisQueue`].
///
/// `from_env()` reads:
/// - `REDIS_URL` (required at `build`): e.g. `redis://127.0.0.1:6379`;
/// - `PLATFORM_QUEUE_PREFIX` (default `platform`): the key namespace;
/// - `PLATFORM_QUEUE_<NAME>_CONCURRENCY` / `_TIMEOUT_SECS` / `_MAX_ATTEMPTS`: see
///   [`QueueCatalog::from_env`].
pub struct RedisQueueBuilder {
    url: Option<SecretString>,
    prefix: String,
    catalog: Result<QueueCatalog>,
    clock: DynClock,
    heartbeat: Duration,
    missed_heartbeats: usize,
    poll_interval: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for RedisQueueBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueueBuilder")
            .field("url", &self.url.as_ref().map(|_| "[redacted]"))
            .field("prefix", &self.prefix)
            .field("heartbeat", &self.heartbeat)
            .field("missed_heartbeats", &self.missed_heartbeats)
            .field("poll_interval", &self.poll_interval)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

/// Like [`RedisQueueBuilder::from_env`], from explicit pairs (for tests):
/// `RedisQueueBuilder::from_iter([("REDIS_URL", "redis://127.0.0.1:6379")])`.
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for RedisQueueBuilder {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        Self::from_env_map(&EnvMap::from_iter(pairs))
    }
}

impl Default for RedisQueueBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisQueueBuilder {
    /// Defaults: no URL, prefix `platform`, the seed catalogue, the system clock,
    /// heartbeat every 30 s with an orphan timeout of 3 missed heartbeats, idle
    /// polling every 100 ms, a response timeout of 5 s.
    pub fn new() -> Self {
        Self {
            url: None,
            prefix: "platform".to_owned(),
            catalog: Ok(QueueCatalog::seed()),
            clock: system_clock(),
            heartbeat: Duration::from_secs(30),
            missed_heartbeats: 3,
            poll_interval: Duration::from_millis(100),
            response_timeout: Duration::from_secs(5),
        }
    }

    /// Reads the process environment (see the type docs). Never fails; problems are
    /// reported by [`build`](Self::build).
    pub fn from_env() -> Self {
        Self::from_env_map(&EnvMap::from_env())
    }

    /// [`from_env`](Self::from_env) from an explicit [`EnvMap`].
    pub fn from_env_map(env: &EnvMap) -> Self {
        let mut b = Self::new();
        b.url = env.optional_secret("REDIS_URL");
        if let Some(p) = env.optional("PLATFORM_QUEUE_PREFIX") {
            b.prefix = p.to_owned();
        }
        b.catalog = QueueCatalog::from_env(env);
        b
    }

    /// The Redis URL (`redis://host:port/db`); it may carry a password, so it is
    /// kept secret.
    #[must_use]
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(SecretString::from(url.into()));
        self
    }

    /// The key namespace: every key this queue touches starts with `{prefix}:`, except
    /// apalis-redis's global registry of queues (`core:apalis:queues:list`, a sorted set
    /// that lists each queue's workers key; [`RedisQueue::purge`](super::RedisQueue::purge)
    /// removes this namespace's entries from it).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The queue catalogue.
    #[must_use]
    pub fn with_catalog(mut self, catalog: QueueCatalog) -> Self {
        self.catalog = Ok(catalog);
        self
    }

    /// The clock stamping job metadata.
    #[must_use]
    pub fn with_clock(mut self, clock: DynClock) -> Self {
        self.clock = clock;
        self
    }

    /// Worker heartbeat interval (whole seconds, at least 1) and how many may be
    /// missed (at least 2) before a worker's jobs are re-delivered to other workers;
    /// the two multiplied (the orphan timeout) at most a day.
    #[must_use]
    pub fn with_heartbeat(mut self, interval: Duration, missed: usize) -> Self {
        self.heartbeat = interval;
        self.missed_heartbeats = missed;
        self
    }

    /// How long a call waits for Redis's reply before it fails with `Timeout`
    /// (workers retry their calls; see the crate docs). The redis crate's own default,
    /// 500 ms, is shorter than one large script (re-queueing thousands of tasks)
    /// takes on a busy server, during which every other call waits.
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How often an idle worker looks for new or due jobs: from 1 ms to the orphan
    /// timeout (see [`with_heartbeat`](Self::with_heartbeat)).
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Connects and checks Redis answers `PING`.
    ///
    /// # Errors
    /// `Config` for a missing `REDIS_URL`, a bad prefix, heartbeat or catalogue;
    /// `Unavailable` when Redis cannot be reached.
    pub async fn build(self) -> Result<RedisQueue> {
        let url = self
            .url
            .ok_or_else(|| Error::config("missing required environment variable REDIS_URL"))?;
        let catalog = self.catalog?;
        // Glob characters would make `purge`'s key pattern match other namespaces.
        if self.prefix.is_empty()
            || self
                .prefix
                .contains(|c: char| c.is_whitespace() || matches!(c, '*' | '?' | '[' | ']' | '\\'))
        {
            return Err(Error::config(format!(
                "invalid queue key prefix {:?}: it must be non-empty, without whitespace or any of * ? [ ] \\",
                self.prefix
            )));
        }
        if self.heartbeat < Duration::from_secs(1) || self.missed_heartbeats < 2 {
            return Err(Error::config(
                "queue heartbeat must be at least 1 s with at least 2 missed heartbeats before orphaning",
            ));
        }
        let orphan_timeout = u32::try_from(self.missed_heartbeats)
            .ok()
            .and_then(|missed| self.heartbeat.checked_mul(missed))
            .filter(|timeout| *timeout <= MAX_ORPHAN_TIMEOUT)
            .ok_or_else(|| {
                Error::config(format!(
                    "queue heartbeat {:?} × {} missed heartbeats is over the longest orphan timeout, {} h",
                    self.heartbeat,
                    self.missed_heartbeats,
                    MAX_ORPHAN_TIMEOUT.as_secs() / 3600
                ))
            })?;
        if self.poll_interval < Duration::from_millis(1) || self.poll_interval > orphan_timeout {
            return Err(Error::config(format!(
                "queue poll interval {:?} must be from 1 ms to the orphan timeout, {orphan_timeout:?}",
                self.poll_interval
            )));
        }
        let client = redis::Client::open(url.expose_secret()).map_err(|e| {
            Error::config("invalid REDIS_URL")
                .with_provider("redis")
                .with_source(e)
        })?;
        if self.response_timeout.is_zero() {
            return Err(Error::config("queue response timeout must be more than zero"));
        }
        let config =
            redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(self.response_timeout));
        let mut conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| map_redis_error("connect", e))?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| map_redis_error("ping", e))?;
        let keys = catalog
            .queues()
            .map(|q| {
                let keys = Keys::new(&self.prefix, &q.name, self.heartbeat, self.missed_heartbeats);
                (q.name.clone(), keys)
            })
            .collect();
        Ok(RedisQueue {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                catalog,
                clock: self.clock,
                poll_interval: self.poll_interval,
                orphan_timeout,
                keys,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use platform_core::ErrorKind;

    use super::*;

    /// Heartbeats whose orphan timeout overflows or is out of range are a `Config`
    /// error, found before connecting (nothing listens on this URL).
    #[tokio::test]
    async fn an_out_of_range_heartbeat_is_a_config_error() {
        for (interval, missed) in [
            (Duration::from_secs(u64::MAX / 2), 3),
            (Duration::from_secs(30), 1 << 32),
            (Duration::from_secs(3600), 25),
            (Duration::from_millis(500), 3),
            (Duration::from_secs(30), 1),
        ] {
            let err = RedisQueueBuilder::new()
                .with_url("redis://127.0.0.1:1")
                .with_heartbeat(interval, missed)
                .build()
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{interval:?} × {missed}: {err}");
        }
    }

    /// A prefix with glob characters (which would make `purge` match other
    /// namespaces' keys) and a poll interval outside 1 ms to the orphan timeout are
    /// `Config` errors naming them, found before connecting; the limits themselves
    /// pass those checks (and then fail on the next one, the URL's).
    #[tokio::test]
    async fn bad_prefixes_and_poll_intervals_are_config_errors() {
        let builder = || RedisQueueBuilder::new().with_url("redis://127.0.0.1:1");
        for prefix in ["", "app*", "t[1]", "a?b", "back\\slash", "two words"] {
            let err = builder().with_prefix(prefix).build().await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{prefix:?}: {err}");
            assert!(err.to_string().contains(&format!("{prefix:?}")), "{err}");
        }
        // The default orphan timeout: 3 missed heartbeats of 30 s.
        for poll in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_secs(91),
        ] {
            let err = builder().with_poll_interval(poll).build().await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{poll:?}: {err}");
            assert!(err.to_string().contains("poll interval"), "{err}");
        }
        for poll in [Duration::from_millis(1), Duration::from_secs(90)] {
            let err = builder()
                .with_url("not a URL")
                .with_prefix("app:prod")
                .with_poll_interval(poll)
                .build()
                .await
                .unwrap_err();
            assert!(err.to_string().contains("invalid REDIS_URL"), "{poll:?}: {err}");
        }
    }
}
