//! The shared HTTP client and the JSON request helper every adapter uses.
//!
//! [`HttpClient`] wraps one `reqwest` client (rustls, connection pooling, timeouts,
//! a `platform/<version>` user agent). [`HttpClient::send`] runs a request inside a
//! tracing span carrying `provider`, `operation`, the HTTP status and the outcome,
//! turns transport failures into [`ErrorKind::Timeout`] / [`ErrorKind::Unavailable`],
//! and hands any error status to the adapter's own `map_response_error`, which
//! usually starts from [`ErrorResponse::default_error`].

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::error::{Error, ErrorKind, Result, parse_retry_after};

/// The user agent every platform request sends.
pub const USER_AGENT: &str = concat!("platform/", env!("CARGO_PKG_VERSION"));

/// Settings of an [`HttpClient`].
#[derive(Debug, Clone)]
pub struct HttpClientBuilder {
    connect_timeout: Duration,
    timeout: Duration,
    pool_idle_timeout: Duration,
    user_agent: String,
}

impl Default for HttpClientBuilder {
    /// Connect timeout 10 s, request timeout 60 s, idle connections kept 90 s.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            user_agent: USER_AGENT.to_owned(),
        }
    }
}

impl HttpClientBuilder {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long to wait for a TCP + TLS connection.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a whole request (including reading the body) may take.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Appends `product/version` to the `platform/<version>` user agent.
    #[must_use]
    pub fn with_user_agent_suffix(mut self, suffix: &str) -> Self {
        self.user_agent = format!("{USER_AGENT} {suffix}");
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// `Config` if the TLS backend cannot be initialised.
    pub fn build(self) -> Result<HttpClient> {
        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .pool_idle_timeout(self.pool_idle_timeout)
            .user_agent(self.user_agent)
            .build()
            .map_err(|e| Error::config("cannot build the HTTP client").with_source(e))?;
        Ok(HttpClient { inner: client })
    }
}

/// A cheap-to-clone HTTP client shared by adapters.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

/// Which provider call a request is, for spans and errors.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// The provider (`"clerk"`, `"resend"`, …).
    pub provider: &'static str,
    /// The operation (`"send_email"`, …).
    pub operation: &'static str,
}

impl Call {
    /// A call to `provider` performing `operation`.
    pub const fn new(provider: &'static str, operation: &'static str) -> Self {
        Self { provider, operation }
    }
}

/// An error answer from a provider, before it is mapped to an [`Error`].
///
/// Its `Debug` form shows header names but not the values of credential-bearing
/// headers (`Set-Cookie`, `Authorization`, …), nor the body (only its length).
#[derive(Clone)]
pub struct ErrorResponse {
    /// The call that failed.
    pub call: Call,
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The response body (possibly truncated to 64 KiB).
    pub body: Vec<u8>,
}

/// Headers whose values are credentials, left out of `Debug` output.
const SENSITIVE_HEADERS: [&str; 6] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "set-cookie",
    "x-amz-security-token",
    "x-api-key",
];

impl std::fmt::Debug for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let name = name.as_str();
                let shown = if SENSITIVE_HEADERS.contains(&name) || value.is_sensitive() {
                    "<redacted>"
                } else {
                    value.to_str().unwrap_or("<binary>")
                };
                (name, shown)
            })
            .collect();
        f.debug_struct("ErrorResponse")
            .field("call", &self.call)
            .field("status", &self.status)
            .field("headers", &headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl ErrorResponse {
    /// The error every adapter starts from: kind from the status, `Retry-After`
    /// honoured, the request id taken from common headers, and `message` as the text.
    pub fn error_with_message(&self, message: impl Into<String>) -> Error {
        let kind = ErrorKind::from_http_status(self.status).unwrap_or(ErrorKind::Provider);
        let mut err = Error::new(kind, message.into())
            .with_provider(self.call.provider)
            .with_operation(self.call.operation)
            .with_status(self.status);
        if let Some(ra) = self
            .header("retry-after")
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
        {
            err = err.with_retry_after(ra);
        }
        if let Some(id) = ["x-request-id", "request-id", "x-amz-request-id", "cf-ray"]
            .iter()
            .find_map(|h| self.header(h))
        {
            err = err.with_request_id(id);
        }
        err
    }

    /// [`error_with_message`](Self::error_with_message) with a message found in the
    /// body (see [`body_message`](Self::body_message)).
    pub fn default_error(&self) -> Error {
        self.error_with_message(self.body_message())
    }

    /// A header value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The most useful human-readable text in the body: a JSON string, or a JSON
    /// `message`, `error.message`, `error`, `detail` or `errors[0].message` string; for a JSON body
    /// with none of them, only its length (its other fields may hold anything, tokens
    /// included, and the message ends up in logs); otherwise the start of the body
    /// text (an HTML or plain-text error page).
    pub fn body_message(&self) -> String {
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&self.body) {
            let pointers = [
                "/message",
                "/error/message",
                "/error",
                "/detail",
                "/errors/0/message",
            ];
            if let Some(text) = json.as_str().or_else(|| {
                pointers
                    .iter()
                    .find_map(|p| json.pointer(p).and_then(|v| v.as_str()))
            }) {
                return text.to_owned();
            }
            return format!("no message in its {}-byte JSON body", self.body.len());
        }
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(200) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_owned(),
        }
    }
}

/// Maps a transport-level `reqwest` failure (no HTTP answer) to an [`Error`].
pub fn map_transport_error(call: Call, err: reqwest::Error) -> Error {
    let (kind, what) = if err.is_timeout() {
        (ErrorKind::Timeout, "request timed out")
    } else if err.is_connect() {
        (ErrorKind::Unavailable, "could not connect")
    } else if err.is_decode() {
        (ErrorKind::Provider, "could not decode the response")
    } else if err.is_builder() {
        (ErrorKind::InvalidInput, "could not build the request")
    } else {
        (ErrorKind::Unavailable, "request failed")
    };
    // reqwest's Display may include the URL; URLs never carry secrets in this workspace.
    Error::new(kind, what)
        .with_provider(call.provider)
        .with_operation(call.operation)
        .with_source(err.without_url())
}

const MAX_ERROR_BODY: usize = 64 * 1024;

impl HttpClient {
    /// A client with the default settings.
    pub fn new() -> Result<Self> {
        HttpClientBuilder::default().build()
    }

    /// Wraps an existing `reqwest` client (for custom TLS roots, proxies, …).
    pub fn from_reqwest(client: reqwest::Client) -> Self {
        Self { inner: client }
    }

    /// The underlying client, to start building a request.
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.inner
    }

    /// Sends `request` as `call`. A 2xx response is returned as is; any other
    /// status is read (up to 64 KiB) and passed to `map_error`.
    pub async fn send(
        &self,
        call: Call,
        request: reqwest::RequestBuilder,
        map_error: impl FnOnce(ErrorResponse) -> Error,
    ) -> Result<reqwest::Response> {
        let span = tracing::info_span!(
            "provider_call",
            provider = call.provider,
            operation = call.operation,
            http.status = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        async move {
            let result = self.send_inner(call, request, map_error).await;
            let span = tracing::Span::current();
            match &result {
                Ok(resp) => {
                    span.record("http.status", resp.status().as_u16());
                    span.record("outcome", "ok");
                }
                Err(err) => {
                    if let Some(s) = err.status() {
                        span.record("http.status", s);
                    }
                    span.record("outcome", err.kind().as_str());
                    tracing::debug!(error = %err, "provider call failed");
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn send_inner(
        &self,
        call: Call,
        request: reqwest::RequestBuilder,
        map_error: impl FnOnce(ErrorResponse) -> Error,
    ) -> Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| map_transport_error(call, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(|e| map_transport_error(call, e))? {
            let room = MAX_ERROR_BODY.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_ERROR_BODY {
                break;
            }
        }
        Err(map_error(ErrorResponse {
            call,
            status: status.as_u16(),
            headers,
            body,
        }))
    }

    /// Sends `request` and decodes a JSON body as `T`.
    ///
    /// A body that is not the expected JSON is a [`ErrorKind::Provider`] error.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        call: Call,
        request: reqwest::RequestBuilder,
        map_error: impl FnOnce(ErrorResponse) -> Error,
    ) -> Result<T> {
        let response = self.send(call, request, map_error).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| map_transport_error(call, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(ErrorKind::Provider, "response body is not the expected JSON")
                .with_provider(call.provider)
                .with_operation(call.operation)
                .with_status(status)
                .with_source(e)
        })
    }
}
