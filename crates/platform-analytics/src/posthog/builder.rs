//! [`PostHogAnalyticsBuilder`]: configuration of the PostHog adapter.

use std::fmt;
use std::time::Duration;

use platform_core::{EnvMap, Error, ExposeSecret, HttpClient, Result, RetryPolicy, SecretString};

use super::client::PostHogAnalytics;
use crate::pipeline::EnricherSettings;
use crate::types::Enrichment;

/// PostHog's US ingestion host, the default.
pub const DEFAULT_HOST: &str = "https://us.i.posthog.com";

/// Settings of a [`PostHogAnalytics`].
///
/// `build()` validates everything and names what is wrong.
pub struct PostHogAnalyticsBuilder {
    pub(crate) api_key: Option<SecretString>,
    pub(crate) personal_api_key: Option<SecretString>,
    pub(crate) host: String,
    pub(crate) batch_size: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) flags_timeout: Duration,
    pub(crate) retry_policy: RetryPolicy,
    pub(crate) enricher: EnricherSettings,
    pub(crate) http_client: Option<HttpClient>,
    env_error: Option<Error>,
}

impl fmt::Debug for PostHogAnalyticsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostHogAnalyticsBuilder")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field(
                "personal_api_key",
                &self.personal_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("host", &self.host)
            .field("batch_size", &self.batch_size)
            .field("flush_interval", &self.flush_interval)
            .field("queue_capacity", &self.queue_capacity)
            .field("request_timeout", &self.request_timeout)
            .field("flags_timeout", &self.flags_timeout)
            .field("enrichment", &self.enricher.enrichment)
            .finish_non_exhaustive()
    }
}

impl Default for PostHogAnalyticsBuilder {
    fn default() -> Self {
        Self {
            api_key: None,
            personal_api_key: None,
            host: DEFAULT_HOST.to_owned(),
            batch_size: 100,
            flush_interval: Duration::from_secs(5),
            queue_capacity: 10_000,
            request_timeout: Duration::from_secs(10),
            flags_timeout: Duration::from_secs(3),
            retry_policy: RetryPolicy::default(),
            enricher: EnricherSettings::default(),
            http_client: None,
            env_error: None,
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for PostHogAnalyticsBuilder {
    /// The twin of [`from_env`](PostHogAnalyticsBuilder::from_env) over explicit pairs (for tests).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_env_map(&EnvMap::from_iter(iter))
    }
}

impl PostHogAnalyticsBuilder {
    /// The defaults: US host, batches of 100, flush every 5 s, 10 000 queued events,
    /// 10 s request timeout, 3 s flags timeout, [`RetryPolicy::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Settings from the process environment; never fails or panics (problems are
    /// reported by [`build`](Self::build), naming the variable).
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `POSTHOG_API_KEY` | project API key (required) | – |
    /// | `POSTHOG_HOST` | ingestion host or proxy | `https://us.i.posthog.com` |
    /// | `POSTHOG_PERSONAL_API_KEY` | enables local flag evaluation | off |
    /// | `POSTHOG_BATCH_SIZE` | events per request | 100 |
    /// | `POSTHOG_FLUSH_INTERVAL_MS` | max wait before a partial batch is sent | 5000 |
    /// | `POSTHOG_QUEUE_CAPACITY` | queued + in-flight events before drops | 10000 |
    /// | `POSTHOG_REQUEST_TIMEOUT_SECS` | capture request timeout | 10 |
    /// | `POSTHOG_FLAGS_TIMEOUT_SECS` | flags request timeout | 3 |
    /// | `PLATFORM_ENV` | `environment` property | `development` |
    /// | `PLATFORM_APP_VERSION` | `app_version` property | `unknown` |
    pub fn from_env() -> Self {
        Self::from_env_map(&EnvMap::from_env())
    }

    /// Settings from `env` (see [`from_env`](Self::from_env) for the variables).
    pub fn from_env_map(env: &EnvMap) -> Self {
        let mut b = Self {
            api_key: env.optional_secret("POSTHOG_API_KEY"),
            personal_api_key: env.optional_secret("POSTHOG_PERSONAL_API_KEY"),
            ..Self::default()
        };
        if let Some(host) = env.optional("POSTHOG_HOST") {
            b.host = host.to_owned();
        }
        let mut enrichment = Enrichment::default();
        if let Some(v) = env.optional("PLATFORM_ENV") {
            enrichment.environment = v.to_owned();
        }
        if let Some(v) = env.optional("PLATFORM_APP_VERSION") {
            enrichment.app_version = v.to_owned();
        }
        b.enricher.enrichment = enrichment;
        let parsed = (|| -> Result<()> {
            if let Some(n) = env.parse::<usize>("POSTHOG_BATCH_SIZE")? {
                b.batch_size = n;
            }
            if let Some(ms) = env.parse::<u64>("POSTHOG_FLUSH_INTERVAL_MS")? {
                b.flush_interval = Duration::from_millis(ms);
            }
            if let Some(n) = env.parse::<usize>("POSTHOG_QUEUE_CAPACITY")? {
                b.queue_capacity = n;
            }
            if let Some(s) = env.parse::<u64>("POSTHOG_REQUEST_TIMEOUT_SECS")? {
                b.request_timeout = Duration::from_secs(s);
            }
            if let Some(s) = env.parse::<u64>("POSTHOG_FLAGS_TIMEOUT_SECS")? {
                b.flags_timeout = Duration::from_secs(s);
            }
            Ok(())
        })();
        b.env_error = parsed.err();
        b
    }

    /// The project API key (`phc_…`).
    #[must_use]
    pub fn with_api_key(mut self, key: SecretString) -> Self {
        self.api_key = Some(key);
        self
    }

    /// A personal (`phx_…`) or project secret (`phs_…`) key: flags are then
    /// evaluated locally from polled definitions, falling back to the flags endpoint.
    #[must_use]
    pub fn with_personal_api_key(mut self, key: SecretString) -> Self {
        self.personal_api_key = Some(key);
        self
    }

    /// The host (`https://eu.i.posthog.com`, a reverse proxy, or a mock server).
    #[must_use]
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.host = url.into();
        self
    }

    /// Events per `/batch/` request (1 to 1000).
    #[must_use]
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// How long a partial batch may wait before it is sent.
    #[must_use]
    pub fn with_flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every;
        self
    }

    /// Queued plus in-flight events kept before new captures are dropped and
    /// counted (at least the batch size).
    #[must_use]
    pub fn with_queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Timeout of one capture request (more than zero, at most a day); a request
    /// unanswered by then fails with `Timeout`.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Timeout of one flags request (more than zero, at most a day); a request
    /// unanswered by then fails with `Timeout`.
    #[must_use]
    pub fn with_flags_timeout(mut self, timeout: Duration) -> Self {
        self.flags_timeout = timeout;
        self
    }

    /// How a failing delivery is retried. After the policy gives up on a
    /// transient failure (outage), the batch is kept and tried again after a
    /// backoff that grows each round up to the policy's largest, until it is
    /// delivered or the client shuts down.
    #[must_use]
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = policy;
        self
    }

    crate::pipeline::enricher_setters!();

    /// The HTTP client for capture and flags requests (its connection pool is
    /// shared; posthog-rs applies this builder's timeouts to it).
    #[must_use]
    pub fn with_http_client(mut self, client: HttpClient) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Validates the settings, starts the batching task and returns the client.
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// `Config` naming the variable or setting that is missing or invalid.
    pub async fn build(self) -> Result<PostHogAnalytics> {
        if let Some(e) = self.env_error {
            return Err(e);
        }
        let Some(api_key) = self.api_key.as_ref() else {
            return Err(Error::config(
                "missing required environment variable POSTHOG_API_KEY",
            ));
        };
        if api_key.expose_secret().trim().is_empty() {
            return Err(Error::config("POSTHOG_API_KEY must not be blank"));
        }
        let host = self.host.trim();
        let rest = host
            .strip_prefix("https://")
            .or_else(|| host.strip_prefix("http://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
            return Err(Error::config(format!(
                "POSTHOG_HOST must be an http(s) URL, got {host:?}"
            )));
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err(Error::config("POSTHOG_BATCH_SIZE must be between 1 and 1000"));
        }
        if self.queue_capacity < self.batch_size {
            return Err(Error::config(
                "POSTHOG_QUEUE_CAPACITY must be at least POSTHOG_BATCH_SIZE",
            ));
        }
        if self.flush_interval.is_zero() {
            return Err(Error::config("POSTHOG_FLUSH_INTERVAL_MS must be positive"));
        }
        let valid = |t: Duration| !t.is_zero() && t <= MAX_TIMEOUT;
        if !valid(self.request_timeout) || !valid(self.flags_timeout) {
            return Err(Error::config(format!(
                "POSTHOG_REQUEST_TIMEOUT_SECS and POSTHOG_FLAGS_TIMEOUT_SECS must be positive and at most {} s",
                MAX_TIMEOUT.as_secs()
            )));
        }
        PostHogAnalytics::start(self).await
    }
}

/// The longest request timeout `build` accepts (a day).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Whole seconds, rounded up, at least 1 (posthog-rs takes timeouts in seconds; this
/// crate enforces the exact timeout itself).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    secs.max(1)
}
