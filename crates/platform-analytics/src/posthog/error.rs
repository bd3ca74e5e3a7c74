//! The one place PostHog failures become [`platform_core::Error`]s.

use platform_core::{Error, ErrorKind};

/// The provider name on every error and span of this adapter.
pub(crate) const PROVIDER: &str = "posthog";

/// Maps a posthog-rs error from `operation` to a platform error, keeping the
/// original as `source()`.
///
/// posthog-rs reports capture statuses as variants (401 → `Unauthorized`, 429 →
/// `RateLimit`, 400/413 → `BadRequest`, 5xx → `ServerError`) and a failed `/flags`
/// answer as `Connection("API request failed with status <code> …")`, whose status
/// is read back from the message.
pub(crate) fn map_posthog_error(operation: &'static str, err: posthog_rs::Error) -> Error {
    let (kind, status, message): (ErrorKind, Option<u16>, String) = match &err {
        posthog_rs::Error::Unauthorized => (
            ErrorKind::Unauthenticated,
            Some(401),
            "the PostHog project API key was rejected".to_owned(),
        ),
        posthog_rs::Error::BillingLimitExceeded(msg) => (
            ErrorKind::PermissionDenied,
            Some(402),
            format!("PostHog billing limit exceeded: {}", short(msg)),
        ),
        posthog_rs::Error::RateLimit => (
            ErrorKind::RateLimited,
            Some(429),
            "PostHog rate limited the request".to_owned(),
        ),
        posthog_rs::Error::BadRequest(msg) => (
            ErrorKind::InvalidInput,
            Some(400),
            format!("PostHog rejected the request: {}", short(msg)),
        ),
        posthog_rs::Error::ServerError { status, message } => (
            ErrorKind::from_http_status(*status).unwrap_or(ErrorKind::Unavailable),
            Some(*status),
            format!("PostHog server error: {}", short(message)),
        ),
        posthog_rs::Error::Connection(msg) => match status_in(msg) {
            Some(status) => (
                ErrorKind::from_http_status(status).unwrap_or(ErrorKind::Provider),
                Some(status),
                format!("PostHog answered HTTP {status}"),
            ),
            None if msg.contains("timed out") || msg.contains("timeout") => {
                (ErrorKind::Timeout, None, "PostHog request timed out".to_owned())
            }
            None => (ErrorKind::Unavailable, None, "could not reach PostHog".to_owned()),
        },
        posthog_rs::Error::Serialization(_) if operation == "flags" => (
            ErrorKind::Provider,
            None,
            "PostHog's flags answer is not the expected JSON".to_owned(),
        ),
        posthog_rs::Error::Serialization(_) | posthog_rs::Error::InvalidTimestamp(_) => (
            ErrorKind::InvalidInput,
            None,
            "the event cannot be encoded for PostHog".to_owned(),
        ),
        posthog_rs::Error::InconclusiveMatch(_) => (
            ErrorKind::Provider,
            None,
            "a flag could not be evaluated locally".to_owned(),
        ),
        _ => (
            ErrorKind::Unexpected,
            None,
            "unexpected posthog-rs error".to_owned(),
        ),
    };
    let mut error = Error::new(kind, message)
        .with_provider(PROVIDER)
        .with_operation(operation)
        .with_source(err);
    if let Some(status) = status {
        error = error.with_status(status);
    }
    error
}

/// The answer to a PostHog `request` made by `operation`, its error mapped (see
/// [`map_posthog_error`]); `Timeout` when it is not answered within `timeout`. The
/// timeout is enforced here (see `Sender`): posthog-rs reports its own as connection
/// failures.
pub(crate) async fn answer_within<T>(
    operation: &'static str,
    timeout: std::time::Duration,
    request: impl Future<Output = std::result::Result<T, posthog_rs::Error>>,
) -> platform_core::Result<T> {
    match tokio::time::timeout(timeout, request).await {
        Ok(answered) => answered.map_err(|e| map_posthog_error(operation, e)),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("PostHog request timed out after {} ms", timeout.as_millis()),
        )
        .with_provider(PROVIDER)
        .with_operation(operation)),
    }
}

/// The status in posthog-rs's "… failed with status 401 Unauthorized: …" messages.
fn status_in(msg: &str) -> Option<u16> {
    let rest = &msg[msg.find("status ")? + "status ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|s| (100..=599).contains(s))
}

fn short(msg: &str) -> String {
    let msg = msg.trim();
    match msg.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &msg[..cut]),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
    use super::*;
    use std::error::Error as _;

    #[test]
    fn mapping_table() {
        let table: Vec<(posthog_rs::Error, &str, ErrorKind, Option<u16>)> = vec![
            (
                posthog_rs::Error::Unauthorized,
                "capture",
                ErrorKind::Unauthenticated,
                Some(401),
            ),
            (
                posthog_rs::Error::BillingLimitExceeded("quota".into()),
                "capture",
                ErrorKind::PermissionDenied,
                Some(402),
            ),
            (
                posthog_rs::Error::RateLimit,
                "capture",
                ErrorKind::RateLimited,
                Some(429),
            ),
            (
                posthog_rs::Error::BadRequest("bad".into()),
                "capture",
                ErrorKind::InvalidInput,
                Some(400),
            ),
            (
                posthog_rs::Error::ServerError {
                    status: 500,
                    message: "boom".into(),
                },
                "capture",
                ErrorKind::Unavailable,
                Some(500),
            ),
            (
                posthog_rs::Error::ServerError {
                    status: 504,
                    message: "slow".into(),
                },
                "capture",
                ErrorKind::Timeout,
                Some(504),
            ),
            (
                posthog_rs::Error::Connection("API request failed with status 401 Unauthorized: {}".into()),
                "flags",
                ErrorKind::Unauthenticated,
                Some(401),
            ),
            (
                posthog_rs::Error::Connection(
                    "API request failed with status 503 Service Unavailable: x".into(),
                ),
                "flags",
                ErrorKind::Unavailable,
                Some(503),
            ),
            (
                posthog_rs::Error::Connection("API request failed with status 403 Forbidden: x".into()),
                "flags",
                ErrorKind::PermissionDenied,
                Some(403),
            ),
            (
                posthog_rs::Error::Connection("connection refused".into()),
                "capture",
                ErrorKind::Unavailable,
                None,
            ),
            (
                posthog_rs::Error::Connection("operation timed out".into()),
                "capture",
                ErrorKind::Timeout,
                None,
            ),
            (
                posthog_rs::Error::Serialization("eof".into()),
                "flags",
                ErrorKind::Provider,
                None,
            ),
            (
                posthog_rs::Error::Serialization("nan".into()),
                "capture",
                ErrorKind::InvalidInput,
                None,
            ),
        ];
        for (err, op, kind, status) in table {
            let shown = format!("{err:?}");
            let mapped = map_posthog_error(op, err);
            assert_eq!(mapped.kind(), kind, "{shown}");
            assert_eq!(mapped.status(), status, "{shown}");
            assert_eq!(mapped.provider(), Some("posthog"));
            assert_eq!(mapped.operation(), Some(op));
            assert!(mapped.source().is_some(), "source kept for {shown}");
        }
    }

    #[test]
    fn retryable_statuses_are_retryable() {
        assert!(map_posthog_error("capture", posthog_rs::Error::RateLimit).is_retryable());
        let e = posthog_rs::Error::ServerError {
            status: 502,
            message: String::new(),
        };
        assert!(map_posthog_error("capture", e).is_retryable());
        assert!(!map_posthog_error("capture", posthog_rs::Error::Unauthorized).is_retryable());
        assert!(!map_posthog_error("capture", posthog_rs::Error::BadRequest(String::new())).is_retryable());
    }
}
