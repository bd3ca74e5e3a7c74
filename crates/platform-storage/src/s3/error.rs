//! The one status/code → [`ErrorKind`] mapping of the S3 adapter.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use platform_core::{Call, Error, ErrorKind, ErrorResponse};

use super::client::PROVIDER;

/// Extracts `<tag>…</tag>` from an S3 XML error body.
fn xml_field<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&close)? + start;
    Some(body[start..end].trim())
}

/// Maps an S3 error answer to an [`Error`]: the status's default kind, refined by the
/// S3 error code (`NoSuchKey` → `NotFound`, `PreconditionFailed` → `Conflict`,
/// `SignatureDoesNotMatch` → `Unauthenticated`, `AccessDenied` → `PermissionDenied`,
/// `SlowDown` → `RateLimited`, 5xx → `Unavailable`, …).
pub fn map_response_error(resp: &ErrorResponse) -> Error {
    let body = String::from_utf8_lossy(&resp.body);
    let code = xml_field(&body, "Code").map(str::to_owned);
    let message = xml_field(&body, "Message").unwrap_or_default();
    let text = match (&code, message) {
        (Some(c), "") => c.clone(),
        (Some(c), m) => format!("{c}: {m}"),
        (None, _) if resp.status == 404 => "no such object or bucket".to_owned(),
        (None, _) => format!("S3 answered HTTP {}", resp.status),
    };
    let mut err = resp.error_with_message(text);
    let refined = match code.as_deref() {
        Some("NoSuchKey" | "NoSuchBucket" | "NotFound" | "NoSuchUpload" | "NoSuchLifecycleConfiguration") => {
            Some(ErrorKind::NotFound)
        }
        Some(
            "PreconditionFailed"
            | "ConditionalRequestConflict"
            | "BucketAlreadyExists"
            | "BucketNotEmpty"
            | "OperationAborted",
        ) => Some(ErrorKind::Conflict),
        Some(
            "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "ExpiredToken"
            | "InvalidToken"
            | "AuthorizationHeaderMalformed"
            | "MissingSecurityHeader",
        ) => Some(ErrorKind::Unauthenticated),
        Some("AccessDenied" | "AllAccessDisabled") => Some(ErrorKind::PermissionDenied),
        Some("SlowDown") => Some(ErrorKind::RateLimited),
        Some("RequestTimeout") => Some(ErrorKind::Timeout),
        Some("InternalError" | "ServiceUnavailable") => Some(ErrorKind::Unavailable),
        Some(
            "InvalidRange" | "EntityTooSmall" | "EntityTooLarge" | "InvalidArgument" | "InvalidRequest"
            | "InvalidPart" | "InvalidPartOrder" | "InvalidBucketName" | "KeyTooLongError",
        ) => Some(ErrorKind::InvalidInput),
        Some("NotImplemented") => Some(ErrorKind::Unsupported),
        _ => None,
    };
    if let Some(kind) = refined
        && kind != err.kind()
    {
        let mut e = Error::new(kind, err.message().to_owned())
            .with_provider(resp.call.provider)
            .with_operation(resp.call.operation)
            .with_status(resp.status);
        if let Some(id) = err.request_id() {
            e = e.with_request_id(id.to_owned());
        }
        if let Some(ra) = err.retry_after() {
            e = e.with_retry_after(ra);
        }
        err = e;
    }
    err
}

/// Maps any SDK failure: service answers through [`map_response_error`], transport
/// failures to `Timeout`/`Unavailable`. The SDK error is kept as `source()`.
pub(crate) fn map_sdk_error<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let base = match &err {
        SdkError::ServiceError(ctx) => {
            let raw = ctx.raw();
            let mut headers = http::HeaderMap::new();
            for (name, value) in raw.headers().iter() {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) {
                    headers.append(n, v);
                }
            }
            let resp = ErrorResponse {
                call: Call::new(PROVIDER, operation),
                status: raw.status().as_u16(),
                headers,
                body: raw.body().bytes().map(<[u8]>::to_vec).unwrap_or_default(),
            };
            map_response_error(&resp)
        }
        SdkError::TimeoutError(_) => Error::new(ErrorKind::Timeout, "S3 request timed out"),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            Error::new(ErrorKind::Timeout, "S3 request timed out")
        }
        SdkError::DispatchFailure(_) => Error::new(ErrorKind::Unavailable, "cannot reach the S3 endpoint"),
        SdkError::ResponseError(_) => Error::new(ErrorKind::Unavailable, "S3 response could not be read"),
        SdkError::ConstructionFailure(_) => {
            Error::new(ErrorKind::InvalidInput, "S3 request could not be built")
        }
        _ => Error::new(ErrorKind::Provider, "S3 call failed"),
    };
    base.with_provider(PROVIDER)
        .with_operation(operation)
        .with_source(err)
}

/// A local failure (a builder that rejected its input) as an `Unexpected` error.
pub(crate) fn build_error(
    operation: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::unexpected("cannot build the S3 request")
        .with_provider(PROVIDER)
        .with_operation(operation)
        .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, code: Option<&str>, headers: &[(&'static str, &'static str)]) -> ErrorResponse {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, http::HeaderValue::from_static(v));
        }
        let body = code
            .map(|c| format!("<?xml version=\"1.0\"?><Error><Code>{c}</Code><Message>m</Message></Error>"))
            .unwrap_or_default();
        ErrorResponse {
            call: Call::new("s3", "get_object"),
            status,
            headers: map,
            body: body.into_bytes(),
        }
    }

    #[test]
    fn mapping_table() {
        let table = [
            (400, Some("InvalidArgument"), ErrorKind::InvalidInput),
            (400, Some("EntityTooSmall"), ErrorKind::InvalidInput),
            (401, None, ErrorKind::Unauthenticated),
            (403, Some("SignatureDoesNotMatch"), ErrorKind::Unauthenticated),
            (403, Some("InvalidAccessKeyId"), ErrorKind::Unauthenticated),
            (403, Some("AccessDenied"), ErrorKind::PermissionDenied),
            (403, None, ErrorKind::PermissionDenied),
            (404, Some("NoSuchKey"), ErrorKind::NotFound),
            (404, Some("NoSuchBucket"), ErrorKind::NotFound),
            (404, None, ErrorKind::NotFound),
            (409, Some("BucketAlreadyExists"), ErrorKind::Conflict),
            (412, Some("PreconditionFailed"), ErrorKind::Conflict),
            (416, Some("InvalidRange"), ErrorKind::InvalidInput),
            (429, None, ErrorKind::RateLimited),
            (500, Some("InternalError"), ErrorKind::Unavailable),
            (501, Some("NotImplemented"), ErrorKind::Unsupported),
            (503, Some("SlowDown"), ErrorKind::RateLimited),
            (503, None, ErrorKind::Unavailable),
            (500, Some("<<garbage"), ErrorKind::Unavailable),
        ];
        for (status, code, kind) in table {
            let e = map_response_error(&resp(status, code, &[]));
            assert_eq!(e.kind(), kind, "{status} {code:?}");
            assert_eq!(e.status(), Some(status));
            assert_eq!(e.provider(), Some("s3"));
        }
        let e = map_response_error(&resp(
            503,
            Some("SlowDown"),
            &[("retry-after", "7"), ("x-amz-request-id", "R1")],
        ));
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)));
        assert_eq!(e.request_id(), Some("R1"));
        assert!(e.to_string().contains("SlowDown"), "{e}");
        assert!(!map_response_error(&resp(404, Some("NoSuchKey"), &[])).is_retryable());
    }
}
