//! The PostHog adapter: posthog-rs as the wire client, behind this crate's own
//! bounded queue and batching task (see the crate README for why).

mod builder;
mod client;
mod error;
mod queue;

pub use builder::{DEFAULT_HOST, PostHogAnalyticsBuilder};
pub use client::PostHogAnalytics;
