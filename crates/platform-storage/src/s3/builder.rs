//! [`S3ObjectStoreBuilder`]: R2/S3 settings from code or the environment.

use std::fmt;
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig, timeout::TimeoutConfig,
};
use platform_core::{DynClock, EnvMap, Error, ExposeSecret, Result, RetryPolicy, SecretString, system_clock};

use super::client::S3ObjectStore;

/// Smallest part size S3 accepts for all but the last part of a multipart upload.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// Largest body S3 (and R2) accept in one `PutObject`.
pub const MAX_SINGLE_PUT: u64 = 5 * 1024 * 1024 * 1024;

/// The longest connect or response timeout `build` accepts.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Builds an [`S3ObjectStore`].
///
/// Defaults suit Cloudflare R2: region `auto`, path-style addressing, checksums
/// calculated and validated only when an operation requires them (R2 rejects the
/// SDK's default checksum headers), 8 MiB multipart parts, 4 parts in flight, streamed
/// bodies of a declared length up to 256 MiB sent as one streaming `PutObject`, the
/// SDK's own retries off (retries go through [`RetryPolicy`]), a 10 s connect timeout
/// and a 5 min response timeout.
#[derive(Clone)]
pub struct S3ObjectStoreBuilder {
    endpoint: Option<String>,
    region: String,
    access_key_id: Option<String>,
    secret_access_key: Option<SecretString>,
    path_style: bool,
    part_size: usize,
    concurrency: usize,
    single_put_limit: u64,
    clock: DynClock,
    retry: RetryPolicy,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// Whether any `R2_*` variable was set (see [`is_requested`](Self::is_requested)).
    r2_variables: bool,
}

impl fmt::Debug for S3ObjectStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3ObjectStoreBuilder")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("path_style", &self.path_style)
            .field("part_size", &self.part_size)
            .field("concurrency", &self.concurrency)
            .field("single_put_limit", &self.single_put_limit)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for S3ObjectStoreBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl S3ObjectStoreBuilder {
    /// The R2 defaults, with no endpoint or credentials yet.
    pub fn new() -> Self {
        Self {
            endpoint: None,
            region: "auto".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            path_style: true,
            part_size: 8 * 1024 * 1024,
            concurrency: 4,
            single_put_limit: 256 * 1024 * 1024,
            clock: system_clock(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(300),
            r2_variables: false,
        }
    }

    /// Settings from the process environment; see [`S3ObjectStoreBuilder::from_iter`]
    /// for the variables. Never fails: `build()` reports what is missing.
    pub fn from_env() -> Self {
        Self::from_env_map(&EnvMap::from_env())
    }

    /// Settings from explicit variables (the testable twin of [`from_env`](Self::from_env)):
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `R2_ENDPOINT`, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` | endpoint URL |
    /// | `R2_ACCOUNT_ID` | endpoint `https://{id}.r2.cloudflarestorage.com` when no endpoint is set |
    /// | `R2_ACCESS_KEY_ID`, else `AWS_ACCESS_KEY_ID` | access key id |
    /// | `R2_SECRET_ACCESS_KEY`, else `AWS_SECRET_ACCESS_KEY` | secret key (of the same family as the key id: an `R2_*` key is never paired with an `AWS_*` one) |
    /// | `AWS_REGION` | region, when no `R2_*` variable is set (default `auto`) |
    #[allow(
        clippy::should_implement_trait,
        reason = "the workspace's from_iter(pairs) convention"
    )]
    pub fn from_iter<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self::from_env_map(&pairs.into_iter().collect())
    }

    /// Settings from an [`EnvMap`].
    pub fn from_env_map(env: &EnvMap) -> Self {
        let mut b = Self::new();
        let r2 = env.has_prefix("R2_");
        b.r2_variables = r2;
        b.endpoint = ["R2_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|v| env.optional(v))
            .map(str::to_owned)
            .or_else(|| {
                env.optional("R2_ACCOUNT_ID")
                    .map(|id| format!("https://{id}.r2.cloudflarestorage.com"))
            });
        // The key pair comes from one family: an R2 key id with an AWS secret (or the
        // reverse) would never authenticate.
        let family =
            if env.optional("R2_ACCESS_KEY_ID").is_some() || env.optional("R2_SECRET_ACCESS_KEY").is_some() {
                "R2"
            } else {
                "AWS"
            };
        b.access_key_id = env
            .optional(&format!("{family}_ACCESS_KEY_ID"))
            .map(str::to_owned);
        b.secret_access_key = env.optional_secret(&format!("{family}_SECRET_ACCESS_KEY"));
        if !r2 && let Some(region) = env.optional("AWS_REGION") {
            b.region = region.to_owned();
        }
        b
    }

    /// Whether S3 was asked for: any `R2_*` variable, or either half of the key pair.
    /// What the facade checks to pick S3 over local, so that a half-configured store
    /// fails in [`build`](Self::build), naming what is missing, instead of objects
    /// quietly landing on the local disk.
    pub fn is_requested(&self) -> bool {
        self.r2_variables || self.access_key_id.is_some() || self.secret_access_key.is_some()
    }

    /// Whether both halves of the credentials are configured.
    pub fn is_configured(&self) -> bool {
        self.access_key_id.is_some() && self.secret_access_key.is_some()
    }

    /// The endpoint URL (`https://<account>.r2.cloudflarestorage.com`, `http://127.0.0.1:9000`).
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The region (`auto` for R2).
    #[must_use]
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Static credentials.
    #[must_use]
    pub fn with_credentials(mut self, access_key_id: impl Into<String>, secret: SecretString) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret);
        self
    }

    /// Path-style (`/bucket/key`, the default) or virtual-hosted addressing.
    #[must_use]
    pub fn with_path_style(mut self, path_style: bool) -> Self {
        self.path_style = path_style;
        self
    }

    /// Size of every multipart part but the last (at least 5 MiB; default 8 MiB).
    #[must_use]
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes;
        self
    }

    /// How many parts upload at once (default 4). Peak memory of a streamed upload is
    /// about `(concurrency + 1) × part_size`.
    #[must_use]
    pub fn with_upload_concurrency(mut self, parts: usize) -> Self {
        self.concurrency = parts.max(1);
        self
    }

    /// The largest declared length ([`PutOptions::with_content_length`](crate::PutOptions::with_content_length))
    /// that `put_stream` sends as one streaming `PutObject` (default 256 MiB, at most
    /// 5 GiB; 0 always uses multipart). Such a body is never buffered (memory is one
    /// chunk) but is not retried, as the stream cannot be replayed; multipart uploads
    /// retry each part.
    #[must_use]
    pub fn with_single_put_limit(mut self, bytes: u64) -> Self {
        self.single_put_limit = bytes;
        self
    }

    /// The clock presigned URLs are signed with (tests use a manual clock).
    #[must_use]
    pub fn with_clock(mut self, clock: DynClock) -> Self {
        self.clock = clock;
        self
    }

    /// How long a connection may take to open, and a response to start arriving (its
    /// first byte, counted from the start of the request). A call past either fails
    /// with `Timeout`, retried as the retry policy says. An upload of a body held in
    /// memory (`PutObject` of bytes, `UploadPart`) gets the response timeout plus its
    /// length at [`MIN_UPLOAD_RATE`](super::MIN_UPLOAD_RATE) per attempt, since its
    /// request includes sending the body; a streamed `PutObject` has no response
    /// timeout (its producer sets the pace). Each more than zero, at most 24 hours.
    #[must_use]
    pub fn with_timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.connect_timeout = connect;
        self.response_timeout = response;
        self
    }

    /// The retry policy of idempotent calls.
    #[must_use]
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Builds the store. Does no I/O.
    ///
    /// # Errors
    /// `Config` naming the missing variable (endpoint, access key, secret), a part
    /// size under 5 MiB or a single-put limit over 5 GiB.
    pub fn build(self) -> Result<S3ObjectStore> {
        let endpoint = self.endpoint.ok_or_else(|| {
            Error::config("missing S3 endpoint: set R2_ENDPOINT (or R2_ACCOUNT_ID, or AWS_ENDPOINT_URL)")
        })?;
        let access_key_id = self.access_key_id.ok_or_else(|| {
            Error::config(
                "missing S3 access key: set R2_ACCESS_KEY_ID (with R2_SECRET_ACCESS_KEY) or AWS_ACCESS_KEY_ID (with AWS_SECRET_ACCESS_KEY)",
            )
        })?;
        let secret = self.secret_access_key.ok_or_else(|| {
            Error::config(
                "missing S3 secret key: set R2_SECRET_ACCESS_KEY (with R2_ACCESS_KEY_ID) or AWS_SECRET_ACCESS_KEY (with AWS_ACCESS_KEY_ID)",
            )
        })?;
        if self.part_size < MIN_PART_SIZE {
            return Err(Error::config(format!(
                "multipart part size must be at least {MIN_PART_SIZE} bytes, got {}",
                self.part_size
            )));
        }
        // An upper bound too: an upload's deadline adds its sending time to the
        // response timeout, which "for ever" (`Duration::MAX`) would overflow.
        let valid = |t: Duration| !t.is_zero() && t <= MAX_TIMEOUT;
        if !valid(self.connect_timeout) || !valid(self.response_timeout) {
            return Err(Error::config(format!(
                "S3 connect and response timeouts must be more than zero and at most {} hours, got {:?} and {:?}",
                MAX_TIMEOUT.as_secs() / 3600,
                self.connect_timeout,
                self.response_timeout
            )));
        }
        if self.single_put_limit > MAX_SINGLE_PUT {
            return Err(Error::config(format!(
                "single-put limit must be at most {MAX_SINGLE_PUT} bytes, got {}",
                self.single_put_limit
            )));
        }
        let credentials = Credentials::new(access_key_id, secret.expose_secret(), None, None, "platform");
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(endpoint)
            .credentials_provider(credentials)
            .force_path_style(self.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.connect_timeout)
                    .read_timeout(self.response_timeout)
                    .build(),
            )
            .build();
        Ok(S3ObjectStore::from_parts(
            aws_sdk_s3::Client::from_conf(config),
            self.region,
            self.part_size,
            self.concurrency,
            self.single_put_limit,
            self.clock,
            self.retry,
        ))
    }
}
