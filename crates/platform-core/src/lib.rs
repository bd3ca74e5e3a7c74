#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod product;
pub mod retry;
pub mod webhook;

pub use clock::{Clock, DynClock, ManualClock, SystemClock, system_clock};
pub use config::{EnvMap, ExposeSecret, SecretString};
pub use error::{Error, ErrorKind, Result, parse_retry_after};
pub use http::{Call, ErrorResponse, HttpClient, HttpClientBuilder};
pub use product::{Product, ProductCatalog, ProductConfig, Quota, Role, Tier, TierChange};
pub use retry::{Idempotency, RetryPolicy};
pub use webhook::{StandardWebhookVerifier, StripeWebhookVerifier, VerifiedWebhook, WebhookError};
