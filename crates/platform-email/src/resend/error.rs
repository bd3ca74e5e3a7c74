//! The one place Resend's HTTP errors become platform errors.

use std::fmt;

use platform_core::{Error, ErrorKind, ErrorResponse};

/// Resend's error body: `{"statusCode": 422, "name": "validation_error", "message": "…"}`.
#[derive(Debug, Clone, serde::Deserialize)]
struct ResendErrorBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    message: String,
}

/// Resend's own error, kept as the [`source`](std::error::Error::source) of the
/// platform error.
#[derive(Debug, Clone)]
struct ResendApiError {
    status: u16,
    name: String,
    message: String,
}

impl fmt::Display for ResendApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resend {} {}: {}", self.status, self.name, self.message)
    }
}

impl std::error::Error for ResendApiError {}

/// Maps an error answer of Resend to an [`Error`].
///
/// Starts from [`ErrorResponse::default_error`] (kind by status, `Retry-After`,
/// request id, Resend's `message` as the text), then refines by Resend's error
/// `name`:
/// - `concurrent_idempotent_requests` (409) → `Unavailable` (retryable: the first
///   request with that key is still running);
/// - `invalid_idempotent_request` (409, key reused with another payload) → `Conflict`;
/// - `daily_quota_exceeded` / `monthly_quota_exceeded` (429) → `PermissionDenied`
///   (retrying within the period cannot help);
/// - `validation_error` and 422 → `InvalidInput`.
pub fn map_response_error(response: ErrorResponse) -> Error {
    let base = response.default_error();
    let body = serde_json::from_slice::<ResendErrorBody>(&response.body).ok();
    let name = body.as_ref().map(|b| b.name.as_str()).unwrap_or_default();
    let kind = match (response.status, name) {
        (_, "concurrent_idempotent_requests") => ErrorKind::Unavailable,
        (_, "invalid_idempotent_request") => ErrorKind::Conflict,
        (_, "daily_quota_exceeded" | "monthly_quota_exceeded") => ErrorKind::PermissionDenied,
        (_, "validation_error" | "invalid_idempotency_key") | (422, _) => ErrorKind::InvalidInput,
        _ => base.kind(),
    };
    let mapped = if kind == base.kind() {
        base
    } else {
        let mut e = Error::new(kind, base.message().to_owned())
            .with_provider(response.call.provider)
            .with_operation(response.call.operation)
            .with_status(response.status);
        if let Some(ra) = base.retry_after() {
            e = e.with_retry_after(ra);
        }
        if let Some(id) = base.request_id() {
            e = e.with_request_id(id);
        }
        e
    };
    match body {
        Some(body) => mapped.with_source(ResendApiError {
            status: response.status,
            name: body.name,
            message: body.message,
        }),
        None => mapped,
    }
}
