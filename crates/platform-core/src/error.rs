//! The one error type shared by every platform crate.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::{Duration, SystemTime};

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in provider-neutral terms.
///
/// Callers branch on the kind, never on a provider's message. New kinds may be
/// added, so matches need a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Configuration is missing or invalid (a variable, a builder field, a secret).
    Config,
    /// The caller's input was rejected; retrying the same input will fail again.
    InvalidInput,
    /// Credentials are missing, wrong or expired (HTTP 401, a bad signature).
    Unauthenticated,
    /// Credentials are valid but do not allow the operation (HTTP 403).
    PermissionDenied,
    /// The thing asked for does not exist (HTTP 404).
    NotFound,
    /// The operation conflicts with the current state (HTTP 409/412, a unique key).
    Conflict,
    /// The provider asked us to slow down (HTTP 429); see [`Error::retry_after`].
    RateLimited,
    /// The provider or a server could not be reached or failed (HTTP 5xx); retryable.
    Unavailable,
    /// The operation did not finish in time; retryable.
    Timeout,
    /// The implementation does not support the operation.
    Unsupported,
    /// The provider answered in a way this crate does not classify.
    Provider,
    /// A bug or an invariant broken inside the platform crates.
    Unexpected,
}

impl ErrorKind {
    /// Whether an operation that failed with this kind may succeed if retried unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::Unavailable | Self::Timeout)
    }

    /// The default classification of an HTTP status code.
    ///
    /// Adapters start from this and refine it in their own `map_response_error`.
    /// `None` for statuses that are not errors (below 400).
    pub fn from_http_status(status: u16) -> Option<Self> {
        Some(match status {
            0..=399 => return None,
            401 => Self::Unauthenticated,
            // Payment Required: the account must be settled first; retrying cannot help.
            402 | 403 => Self::PermissionDenied,
            404 | 410 => Self::NotFound,
            408 | 504 => Self::Timeout,
            409 | 412 => Self::Conflict,
            429 => Self::RateLimited,
            400 | 405..=407 | 411 | 413..=428 | 430..=499 => Self::InvalidInput,
            500..=599 => Self::Unavailable,
            _ => Self::Provider,
        })
    }

    /// A short lowercase name, used in `Display` and in tracing fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "configuration error",
            Self::InvalidInput => "invalid input",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission denied",
            Self::NotFound => "not found",
            Self::Conflict => "conflict",
            Self::RateLimited => "rate limited",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timed out",
            Self::Unsupported => "unsupported",
            Self::Provider => "provider error",
            Self::Unexpected => "unexpected error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every platform crate: a [`ErrorKind`], a message, and what is known
/// about the call that failed (provider, operation, HTTP status, request id,
/// retry-after). The underlying error, if any, is kept as [`std::error::Error::source`]
/// and not repeated in `Display`.
///
/// The error is one pointer wide, so `Result<T>` stays small.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    provider: Option<&'static str>,
    operation: Option<Cow<'static, str>>,
    status: Option<u16>,
    request_id: Option<String>,
    retry_after: Option<Duration>,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a human-readable message.
    ///
    /// The message must never contain a secret.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                provider: None,
                operation: None,
                status: None,
                request_id: None,
                retry_after: None,
                source: None,
            }),
        }
    }

    /// Shorthand for [`ErrorKind::Config`].
    pub fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub fn invalid_input(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::Conflict`].
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for [`ErrorKind::Unexpected`].
    pub fn unexpected(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unexpected, message)
    }

    /// Records which provider the failing call went to (`"stripe"`, `"s3"`, …).
    #[must_use]
    pub fn with_provider(mut self, provider: &'static str) -> Self {
        self.inner.provider = Some(provider);
        self
    }

    /// Records which operation failed (`"create_customer"`, `"put_object"`, …).
    #[must_use]
    pub fn with_operation(mut self, operation: impl Into<Cow<'static, str>>) -> Self {
        self.inner.operation = Some(operation.into());
        self
    }

    /// Records the HTTP status the provider answered with.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.inner.status = Some(status);
        self
    }

    /// Records the provider's request id, for support tickets.
    #[must_use]
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.inner.request_id = Some(request_id.into());
        self
    }

    /// Names what the failed call acted on (e.g. `object "a.png" in bucket "b"`) at the
    /// end of the message, in parentheses; everything else is kept. The subject must
    /// never contain a secret.
    #[must_use]
    pub fn with_subject(mut self, subject: impl fmt::Display) -> Self {
        self.inner.message = if self.inner.message.is_empty() {
            format!("({subject})")
        } else {
            format!("{} ({subject})", self.inner.message)
        }
        .into();
        self
    }

    /// Records how long the provider asked us to wait before retrying.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.inner.retry_after = Some(retry_after);
        self
    }

    /// Keeps the underlying error as this error's `source()`.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The human-readable message, without provider context.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Whether retrying the same call unchanged may succeed (rate limits, outages, timeouts).
    pub fn is_retryable(&self) -> bool {
        self.inner.kind.is_retryable()
    }

    /// How long the provider asked us to wait before retrying, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The HTTP status of the provider's answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        self.inner.status
    }

    /// The provider's request id, if it sent one.
    pub fn request_id(&self) -> Option<&str> {
        self.inner.request_id.as_deref()
    }

    /// The provider the failing call went to.
    pub fn provider(&self) -> Option<&'static str> {
        self.inner.provider
    }

    /// The operation that failed.
    pub fn operation(&self) -> Option<&str> {
        self.inner.operation.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        match (inner.provider, inner.operation.as_deref()) {
            (Some(p), Some(op)) => write!(f, "{p} {op}: ")?,
            (Some(p), None) => write!(f, "{p}: ")?,
            (None, Some(op)) => write!(f, "{op}: ")?,
            (None, None) => {}
        }
        write!(f, "{}", inner.kind)?;
        if let Some(status) = inner.status {
            write!(f, " (HTTP {status})")?;
        }
        if !inner.message.is_empty() {
            write!(f, ": {}", inner.message)?;
        }
        if let Some(id) = &inner.request_id {
            write!(f, " [request id {id}]")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &inner.kind).field("message", &inner.message);
        if let Some(p) = inner.provider {
            d.field("provider", &p);
        }
        if let Some(op) = &inner.operation {
            d.field("operation", op);
        }
        if let Some(s) = inner.status {
            d.field("status", &s);
        }
        if let Some(id) = &inner.request_id {
            d.field("request_id", id);
        }
        if let Some(ra) = inner.retry_after {
            d.field("retry_after", &ra);
        }
        if let Some(src) = &inner.source {
            d.field("source", src);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Parses an HTTP `Retry-After` value: delta-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`), relative to `now`.
///
/// Returns `None` for values that are neither, or too large for a `Duration`; a date
/// in the past gives zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_one_pointer_wide() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn status_mapping_table() {
        let table = [
            (200, None),
            (304, None),
            (400, Some(ErrorKind::InvalidInput)),
            (401, Some(ErrorKind::Unauthenticated)),
            (402, Some(ErrorKind::PermissionDenied)),
            (403, Some(ErrorKind::PermissionDenied)),
            (404, Some(ErrorKind::NotFound)),
            (408, Some(ErrorKind::Timeout)),
            (409, Some(ErrorKind::Conflict)),
            (412, Some(ErrorKind::Conflict)),
            (413, Some(ErrorKind::InvalidInput)),
            (422, Some(ErrorKind::InvalidInput)),
            (429, Some(ErrorKind::RateLimited)),
            (430, Some(ErrorKind::InvalidInput)),
            (499, Some(ErrorKind::InvalidInput)),
            (500, Some(ErrorKind::Unavailable)),
            (502, Some(ErrorKind::Unavailable)),
            (503, Some(ErrorKind::Unavailable)),
            (504, Some(ErrorKind::Timeout)),
            (600, Some(ErrorKind::Provider)),
        ];
        for (status, kind) in table {
            assert_eq!(ErrorKind::from_http_status(status), kind, "status {status}");
        }
    }

    #[test]
    fn retryable_kinds() {
        assert!(ErrorKind::RateLimited.is_retryable());
        assert!(ErrorKind::Unavailable.is_retryable());
        assert!(ErrorKind::Timeout.is_retryable());
        for k in [
            ErrorKind::Config,
            ErrorKind::InvalidInput,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Unsupported,
            ErrorKind::Provider,
            ErrorKind::Unexpected,
        ] {
            assert!(!k.is_retryable(), "{k:?}");
        }
    }

    #[test]
    fn a_subject_is_named_after_the_message_and_all_else_is_kept() {
        let e = Error::new(ErrorKind::Unavailable, "disk full")
            .with_provider("local")
            .with_operation("put")
            .with_status(503)
            .with_source(std::io::Error::other("ENOSPC"))
            .with_subject(r#"object "a.png" in bucket "b""#);
        assert_eq!(
            e.to_string(),
            r#"local put: unavailable (HTTP 503): disk full (object "a.png" in bucket "b")"#
        );
        assert_eq!((e.kind(), e.status()), (ErrorKind::Unavailable, Some(503)));
        assert!(StdError::source(&e).is_some());
        let bare = Error::new(ErrorKind::Timeout, "").with_subject("bucket \"b\"");
        assert_eq!(bare.message(), "(bucket \"b\")");
    }

    #[test]
    fn accessors_display_and_source() {
        let io = std::io::Error::other("socket closed");
        let e = Error::new(ErrorKind::RateLimited, "slow down")
            .with_provider("stripe")
            .with_operation("create_customer")
            .with_status(429)
            .with_request_id("req_123")
            .with_retry_after(Duration::from_secs(3))
            .with_source(io);
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.is_retryable());
        assert_eq!(e.provider(), Some("stripe"));
        assert_eq!(e.operation(), Some("create_customer"));
        assert_eq!(e.status(), Some(429));
        assert_eq!(e.request_id(), Some("req_123"));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        let shown = e.to_string();
        assert_eq!(
            shown,
            "stripe create_customer: rate limited (HTTP 429): slow down [request id req_123]"
        );
        assert!(
            !shown.contains("socket closed"),
            "source is not repeated in Display"
        );
        let src = e.source().map(|s| s.to_string());
        assert_eq!(src.as_deref(), Some("socket closed"));
    }

    #[test]
    fn retry_after_delta_seconds_and_http_date() {
        let now =
            httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap_or(SystemTime::UNIX_EPOCH);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5", now), Some(Duration::from_millis(1500)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        // Too large for a Duration: unusable, not a panic.
        assert_eq!(parse_retry_after("1e20", now), None);
        assert_eq!(parse_retry_after("99999999999999999999", now), None);
    }
}
