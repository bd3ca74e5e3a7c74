//! Webhook signature verification: Standard Webhooks / Svix (Clerk, Resend,
//! Replicate) and Stripe's `Stripe-Signature` scheme.
//!
//! Both verifiers take the raw body bytes exactly as received (never re-serialised
//! JSON), accept several secrets so a secret can be rotated without downtime,
//! check the timestamp against a tolerance in both directions using an injectable
//! [`Clock`](crate::Clock), and compare signatures in constant time. Failures are
//! [`WebhookError`]s with distinct reasons; none of them ever contains a secret.
//!
//! ```
//! use platform_core::webhook::StandardWebhookVerifier;
//! use platform_core::ManualClock;
//! use secrecy::SecretString;
//!
//! let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
//! let verifier = StandardWebhookVerifier::new([secret])?
//!     .with_clock(ManualClock::at_unix(1614265330).shared());
//! let verified = verifier.verify_parts(
//!     "msg_p5jXN8AQM9LWM0D4loKWxJek",
//!     "1614265330",
//!     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
//!     br#"{"test": 2432232314}"#,
//! )?;
//! assert_eq!(verified.id, "msg_p5jXN8AQM9LWM0D4loKWxJek");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::clock::{DynClock, system_clock};
use crate::error::{Error, ErrorKind};

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook was refused. Never contains a secret or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A required header is absent.
    #[error("missing webhook header {0}")]
    MissingHeader(&'static str),
    /// A header is present but cannot be parsed.
    #[error("malformed webhook header {0}")]
    MalformedHeader(&'static str),
    /// The signed timestamp is further from now than the tolerance allows.
    #[error("webhook timestamp {timestamp} is outside the tolerance of {tolerance_secs} s")]
    TimestampOutsideTolerance {
        /// The timestamp the sender signed (Unix seconds).
        timestamp: i64,
        /// The tolerance in seconds.
        tolerance_secs: u64,
    },
    /// No signature in the header matches the body under any configured secret.
    #[error("no webhook signature matches the payload")]
    NoMatchingSignature,
}

impl From<WebhookError> for Error {
    fn from(e: WebhookError) -> Self {
        let kind = match e {
            WebhookError::MissingHeader(_) | WebhookError::MalformedHeader(_) => ErrorKind::InvalidInput,
            _ => ErrorKind::Unauthenticated,
        };
        Error::new(kind, e.to_string())
            .with_operation("verify_webhook")
            .with_source(e)
    }
}

/// What a verified Standard Webhooks message said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedWebhook {
    /// The message id (`webhook-id`), stable across redeliveries: use it to de-duplicate.
    pub id: String,
    /// When the sender signed the message.
    pub timestamp: DateTime<Utc>,
}

/// The default tolerance of both schemes: 5 minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// What both schemes share: the secrets (as HMAC keys), the tolerance and the clock.
struct Keys {
    secrets: Vec<SecretSlice<u8>>,
    tolerance: Duration,
    clock: DynClock,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("secrets", &format_args!("[{} redacted]", self.secrets.len()))
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl Keys {
    fn new(secrets: Vec<SecretSlice<u8>>, scheme: &str) -> Result<Self, Error> {
        if secrets.is_empty() {
            return Err(Error::config(format!(
                "a {scheme} webhook verifier needs at least one secret"
            )));
        }
        Ok(Self {
            secrets,
            tolerance: DEFAULT_TOLERANCE,
            clock: system_clock(),
        })
    }

    fn check_tolerance(&self, timestamp: i64) -> Result<(), WebhookError> {
        let tolerance_secs = self.tolerance.as_secs();
        if self.clock.unix_seconds().abs_diff(timestamp) > tolerance_secs {
            return Err(WebhookError::TimestampOutsideTolerance {
                timestamp,
                tolerance_secs,
            });
        }
        Ok(())
    }

    /// Whether any candidate signature equals the HMAC of `parts` under any secret
    /// (constant-time comparison).
    fn matches(&self, candidates: &[Vec<u8>], parts: &[&[u8]]) -> bool {
        self.secrets.iter().any(|secret| {
            let expected = mac(secret.expose_secret(), parts);
            candidates
                .iter()
                .any(|c| bool::from(c.as_slice().ct_eq(&expected)))
        })
    }

    /// The HMAC of `parts` under the first secret, for signing.
    fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        mac(
            self.secrets
                .first()
                .map(|s| s.expose_secret())
                .unwrap_or_default(),
            parts,
        )
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn header<'a>(headers: &'a HeaderMap, names: &[&'static str]) -> Result<&'a str, WebhookError> {
    for name in names {
        if let Some(value) = headers.get(*name) {
            return value.to_str().map_err(|_| WebhookError::MalformedHeader(name));
        }
    }
    Err(WebhookError::MissingHeader(names[0]))
}

/// Verifies [Standard Webhooks](https://www.standardwebhooks.com/) signatures, as
/// sent by Svix and so by Clerk, Resend and Replicate.
///
/// Reads `webhook-id`, `webhook-timestamp` and `webhook-signature` (or their
/// `svix-*` aliases). The signature header may hold several space-separated
/// `v1,<base64>` entries; one match under any configured secret suffices.
#[derive(Debug)]
pub struct StandardWebhookVerifier {
    keys: Keys,
}

impl StandardWebhookVerifier {
    /// A verifier accepting signatures made with any of `secrets` (`whsec_<base64>`,
    /// or bare base64).
    ///
    /// # Errors
    /// `Config` when no secret is given, or one is empty (`""`, `whsec_`: an empty
    /// HMAC key would let anyone sign) or not valid base64 (the secret is not echoed).
    pub fn new(secrets: impl IntoIterator<Item = SecretString>) -> Result<Self, Error> {
        let secrets = secrets
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let raw = s.expose_secret().trim();
                let b64 = raw.strip_prefix("whsec_").unwrap_or(raw);
                match BASE64.decode(b64) {
                    Ok(key) if key.is_empty() => {
                        Err(Error::config(format!("webhook secret #{} is empty", i + 1)))
                    }
                    Ok(key) => Ok(SecretSlice::from(key)),
                    Err(_) => Err(Error::config(format!(
                        "webhook secret #{} is not valid base64",
                        i + 1
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            keys: Keys::new(secrets, "Standard Webhooks")?,
        })
    }

    /// Accepts timestamps at most this far from now, either way (default 5 minutes).
    #[must_use]
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.keys.tolerance = tolerance;
        self
    }

    /// Reads the current time from `clock` (default: the system clock).
    #[must_use]
    pub fn with_clock(mut self, clock: DynClock) -> Self {
        self.keys.clock = clock;
        self
    }

    /// Verifies a request from its headers and raw body.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<VerifiedWebhook, WebhookError> {
        let id = header(headers, &["webhook-id", "svix-id"])?;
        let timestamp = header(headers, &["webhook-timestamp", "svix-timestamp"])?;
        let signatures = header(headers, &["webhook-signature", "svix-signature"])?;
        self.verify_parts(id, timestamp, signatures, body)
    }

    /// Verifies from the three header values and the raw body.
    pub fn verify_parts(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
    ) -> Result<VerifiedWebhook, WebhookError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| WebhookError::MalformedHeader("webhook-timestamp"))?;
        let signed_at =
            DateTime::from_timestamp(ts, 0).ok_or(WebhookError::MalformedHeader("webhook-timestamp"))?;
        self.keys.check_tolerance(ts)?;

        let candidates: Vec<Vec<u8>> = signatures
            .split_whitespace()
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, sig)| BASE64.decode(sig).ok())
            .collect();
        if candidates.is_empty() {
            return Err(WebhookError::MalformedHeader("webhook-signature"));
        }
        let ts = ts.to_string();
        if self
            .keys
            .matches(&candidates, &[id.as_bytes(), b".", ts.as_bytes(), b".", body])
        {
            return Ok(VerifiedWebhook {
                id: id.to_owned(),
                timestamp: signed_at,
            });
        }
        Err(WebhookError::NoMatchingSignature)
    }

    /// Signs a message with the first secret, giving a `webhook-signature` value
    /// (`v1,<base64>`). For tests and for sending webhooks of your own.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let sig = self.keys.sign(&[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
        format!("v1,{}", BASE64.encode(sig))
    }
}

/// Verifies Stripe's `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` header:
/// HMAC-SHA256 over `"{t}.{body}"` keyed with the endpoint secret (`whsec_…`, used
/// as is). Default tolerance 300 s, checked in both directions.
#[derive(Debug)]
pub struct StripeWebhookVerifier {
    keys: Keys,
}

impl StripeWebhookVerifier {
    /// A verifier accepting signatures made with any of `secrets`.
    ///
    /// # Errors
    /// `Config` when no non-empty secret is given.
    pub fn new(secrets: impl IntoIterator<Item = SecretString>) -> Result<Self, Error> {
        let secrets = secrets
            .into_iter()
            .map(|s| s.expose_secret().trim().as_bytes().to_vec())
            .filter(|key| !key.is_empty())
            .map(SecretSlice::from)
            .collect();
        Ok(Self {
            keys: Keys::new(secrets, "Stripe")?,
        })
    }

    /// Accepts timestamps at most this far from now, either way (default 300 s).
    #[must_use]
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.keys.tolerance = tolerance;
        self
    }

    /// Reads the current time from `clock` (default: the system clock).
    #[must_use]
    pub fn with_clock(mut self, clock: DynClock) -> Self {
        self.keys.clock = clock;
        self
    }

    /// Verifies a request from its headers (`Stripe-Signature`) and raw body;
    /// returns the signed timestamp.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<DateTime<Utc>, WebhookError> {
        self.verify_header(header(headers, &["stripe-signature"])?, body)
    }

    /// Verifies the `Stripe-Signature` header value against the raw body.
    pub fn verify_header(&self, signature_header: &str, body: &[u8]) -> Result<DateTime<Utc>, WebhookError> {
        const NAME: &str = "stripe-signature";
        let mut timestamp = None;
        let mut candidates = Vec::new();
        for item in signature_header.split(',') {
            let Some((key, value)) = item.trim().split_once('=') else {
                return Err(WebhookError::MalformedHeader(NAME));
            };
            match key {
                "t" => {
                    timestamp = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| WebhookError::MalformedHeader(NAME))?,
                    )
                }
                // A v1 entry that is not hex cannot match; skip it like Stripe's libraries do.
                "v1" => candidates.extend(hex::decode(value).ok()),
                _ => {} // v0 (test-mode legacy) and future schemes are ignored.
            }
        }
        let ts = timestamp.ok_or(WebhookError::MalformedHeader(NAME))?;
        let signed_at = DateTime::from_timestamp(ts, 0).ok_or(WebhookError::MalformedHeader(NAME))?;
        if candidates.is_empty() {
            return Err(WebhookError::NoMatchingSignature);
        }
        self.keys.check_tolerance(ts)?;
        let ts = ts.to_string();
        if self.keys.matches(&candidates, &[ts.as_bytes(), b".", body]) {
            return Ok(signed_at);
        }
        Err(WebhookError::NoMatchingSignature)
    }

    /// Makes a `Stripe-Signature` header value with the first secret, for tests.
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        format!(
            "t={ts},v1={}",
            hex::encode(self.keys.sign(&[ts.as_bytes(), b".", body]))
        )
    }
}
