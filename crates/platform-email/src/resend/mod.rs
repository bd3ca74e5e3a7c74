//! The Resend adapter: [`ResendMailer`], built by [`ResendMailerBuilder`].
//!
//! It talks to Resend's REST API (`POST /emails`, `POST /emails/batch`) through the
//! shared [`platform_core::HttpClient`] rather than the `resend-rs` SDK, because
//! `resend-rs` 0.35 drops the HTTP status and the `Retry-After` header of a 429
//! (it reports only `ratelimit-*` headers) and applies its own fixed rate limiter
//! read from the process environment.

mod builder;
mod client;
mod error;

pub use builder::{DEFAULT_BASE_URL, DEFAULT_REQUESTS_PER_SECOND, ResendMailerBuilder};
pub use client::ResendMailer;
pub use error::map_response_error;

/// The provider name in errors and tracing spans.
pub const PROVIDER: &str = "resend";
