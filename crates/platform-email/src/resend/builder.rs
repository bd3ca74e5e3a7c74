//! Configuration of the Resend adapter.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{Quota, RateLimiter};
use platform_core::{EnvMap, Error, ExposeSecret, HttpClient, Result, RetryPolicy, SecretString};

use super::client::{Inner, ResendMailer};

/// Resend's API.
pub const DEFAULT_BASE_URL: &str = "https://api.resend.com";

/// Resend's documented default rate limit: 2 requests per second per team.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 2;

/// Builds a [`ResendMailer`].
///
/// ```no_run
/// # fn main() -> platform_core::Result<()> {
/// let mailer = platform_email::ResendMailerBuilder::from_env().build()?;
/// # Ok(()) }
/// ```
pub struct ResendMailerBuilder {
    api_key: Option<SecretString>,
    base_url: String,
    http: Option<HttpClient>,
    retry: RetryPolicy,
    requests_per_second: u32,
    env_error: Option<String>,
}

impl fmt::Debug for ResendMailerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResendMailerBuilder")
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("base_url", &self.base_url)
            .field("retry", &self.retry)
            .field("requests_per_second", &self.requests_per_second)
            .finish_non_exhaustive()
    }
}

impl Default for ResendMailerBuilder {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: DEFAULT_BASE_URL.to_owned(),
            http: None,
            retry: RetryPolicy::default(),
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            env_error: None,
        }
    }
}

/// [`ResendMailerBuilder::from_env`] over explicit pairs, for tests:
/// `ResendMailerBuilder::from_iter([("RESEND_API_KEY", "re_…")])`.
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ResendMailerBuilder {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        Self::from_env_map(&pairs.into_iter().collect())
    }
}

impl ResendMailerBuilder {
    /// No API key, Resend's base URL, the default retry policy, 2 requests/s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the process environment (never fails; problems surface in `build`):
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `RESEND_API_KEY` | the API key (required) |
    /// | `RESEND_BASE_URL` | API base URL (default `https://api.resend.com`) |
    /// | `RESEND_RATE_LIMIT` | requests per second (default 2; `0` turns the limiter off) |
    pub fn from_env() -> Self {
        Self::from_env_map(&EnvMap::from_env())
    }

    /// [`from_env`](Self::from_env) over an [`EnvMap`].
    pub fn from_env_map(env: &EnvMap) -> Self {
        let mut builder = Self::new();
        builder.api_key = env.optional_secret("RESEND_API_KEY");
        if let Some(url) = env.optional("RESEND_BASE_URL") {
            builder.base_url = url.to_owned();
        }
        match env.parse::<u32>("RESEND_RATE_LIMIT") {
            Ok(Some(rate)) => builder.requests_per_second = rate,
            Ok(None) => {}
            Err(e) => builder.env_error = Some(e.message().to_owned()),
        }
        builder
    }

    /// Sets the API key.
    #[must_use]
    pub fn with_api_key(mut self, key: impl Into<SecretString>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the API base URL (a wiremock server in tests).
    #[must_use]
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Uses a shared HTTP client instead of a new one.
    #[must_use]
    pub fn with_http_client(mut self, http: HttpClient) -> Self {
        self.http = Some(http);
        self
    }

    /// How rate limits and outages are retried (default: 3 attempts; `Retry-After`
    /// is honoured).
    #[must_use]
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The most requests per second sent to Resend (client-side limiter); `0` turns
    /// the limiter off (for a local mock).
    #[must_use]
    pub fn with_requests_per_second(mut self, rate: u32) -> Self {
        self.requests_per_second = rate;
        self
    }

    /// Validates the settings and builds the mailer.
    ///
    /// # Errors
    /// `Config` naming `RESEND_API_KEY` when no key is set or it cannot be sent in an
    /// HTTP header (it must be printable ASCII), `RESEND_BASE_URL` when the URL is not
    /// http(s), `RESEND_RATE_LIMIT` when it is not a number.
    pub fn build(self) -> Result<ResendMailer> {
        if let Some(message) = self.env_error {
            return Err(Error::config(message));
        }
        let api_key = self
            .api_key
            .ok_or_else(|| Error::config("missing required environment variable RESEND_API_KEY"))?;
        // Checked here, not at the first send (where it would look like a bad message
        // and dead-letter every email job). The key itself is never shown.
        let key = api_key.expose_secret();
        if key.is_empty() || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(Error::config(
                "RESEND_API_KEY must be non-empty printable ASCII without spaces (it is sent in an HTTP header)",
            ));
        }
        let url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| Error::config(format!("RESEND_BASE_URL is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::config("RESEND_BASE_URL must be an http(s) URL"));
        }
        let http = match self.http {
            Some(http) => http,
            None => HttpClient::new()?,
        };
        let limiter = NonZeroU32::new(self.requests_per_second)
            .map(|rate| Arc::new(RateLimiter::direct(Quota::per_second(rate))));
        Ok(ResendMailer::from_inner(Inner {
            http,
            base_url: self.base_url.trim_end_matches('/').to_owned(),
            api_key,
            retry: self.retry,
            limiter,
        }))
    }
}
