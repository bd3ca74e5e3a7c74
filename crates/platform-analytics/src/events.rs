//! Typed product events: the seed's events, and the trait products implement for their own.
//!
//! An event is a plain struct deriving `Serialize`; its fields become the event's
//! properties, so a missing or mistyped property is a compile error. A product
//! defines its own events in its own crate:
//!
//! ```
//! use platform_analytics::ProductEvent;
//! use platform_core::Product;
//!
//! #[derive(serde::Serialize)]
//! struct ReportExported {
//!     report_id: String,
//!     pages: u32,
//! }
//!
//! impl ProductEvent for ReportExported {
//!     const NAME: &'static str = "report_exported";
//!     fn product(&self) -> Option<Product> {
//!         Product::new("ledger").ok()
//!     }
//! }
//! ```

use std::time::Duration;

use platform_core::Product;
use serde::{Serialize, Serializer};

/// An event type with a fixed name and compile-time checked properties.
///
/// The type's serde serialization (a JSON object) is the event's properties.
pub trait ProductEvent: Serialize {
    /// The event name sent to the analytics backend.
    const NAME: &'static str;

    /// The product the event belongs to, if the type knows it (Arbor's events do;
    /// `user.*` events carry it as a field). `None` falls back to the product set on
    /// the event or the client's default product.
    fn product(&self) -> Option<Product> {
        None
    }
}

fn duration_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How a user signed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SignUpMethod {
    /// Email and password (or magic link).
    Email,
    /// Google OAuth.
    Google,
    /// GitHub OAuth.
    Github,
    /// Any other identity provider.
    Sso,
}

/// `user.signed_up {product, method}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserSignedUp {
    /// The product signed up to.
    pub product: Product,
    /// How.
    pub method: SignUpMethod,
}

impl ProductEvent for UserSignedUp {
    const NAME: &'static str = "user.signed_up";
    fn product(&self) -> Option<Product> {
        Some(self.product.clone())
    }
}

/// `user.logged_in {product}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserLoggedIn {
    /// The product logged in to.
    pub product: Product,
}

impl ProductEvent for UserLoggedIn {
    const NAME: &'static str = "user.logged_in";
    fn product(&self) -> Option<Product> {
        Some(self.product.clone())
    }
}

/// `user.upgraded {product, from_tier, to_tier}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserUpgraded {
    /// The product whose tier changed.
    pub product: Product,
    /// The previous tier.
    pub from_tier: String,
    /// The new tier.
    pub to_tier: String,
}

impl ProductEvent for UserUpgraded {
    const NAME: &'static str = "user.upgraded";
    fn product(&self) -> Option<Product> {
        Some(self.product.clone())
    }
}

/// Arbor `agent_created {agent_id, type}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentCreated {
    /// The new agent.
    pub agent_id: String,
    /// The agent's type (sent as `type`).
    #[serde(rename = "type")]
    pub agent_type: String,
}

impl ProductEvent for AgentCreated {
    const NAME: &'static str = "agent_created";
    fn product(&self) -> Option<Product> {
        Some(Product::ARBOR)
    }
}

/// Arbor `agent_executed {agent_id, duration}` (duration sent as `duration_ms`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentExecuted {
    /// The agent that ran.
    pub agent_id: String,
    /// How long the run took (sent in whole milliseconds as `duration_ms`).
    #[serde(rename = "duration_ms", serialize_with = "duration_ms")]
    pub duration: Duration,
}

impl ProductEvent for AgentExecuted {
    const NAME: &'static str = "agent_executed";
    fn product(&self) -> Option<Product> {
        Some(Product::ARBOR)
    }
}

/// Arbor `tool_used {tool_name, success}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolUsed {
    /// The tool called.
    pub tool_name: String,
    /// Whether the call succeeded.
    pub success: bool,
}

impl ProductEvent for ToolUsed {
    const NAME: &'static str = "tool_used";
    fn product(&self) -> Option<Product> {
        Some(Product::ARBOR)
    }
}

/// Kumori `image_generated {filter_id, duration}` (duration sent as `duration_ms`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageGenerated {
    /// The filter used.
    pub filter_id: String,
    /// How long generation took (sent in whole milliseconds as `duration_ms`).
    #[serde(rename = "duration_ms", serialize_with = "duration_ms")]
    pub duration: Duration,
}

impl ProductEvent for ImageGenerated {
    const NAME: &'static str = "image_generated";
    fn product(&self) -> Option<Product> {
        Some(Product::KUMORI)
    }
}

/// Kumori `filter_applied {filter_name}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterApplied {
    /// The filter's name.
    pub filter_name: String,
}

impl ProductEvent for FilterApplied {
    const NAME: &'static str = "filter_applied";
    fn product(&self) -> Option<Product> {
        Some(Product::KUMORI)
    }
}

/// Kumori `image_shared {platform}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageShared {
    /// Where it was shared (`instagram`, `x`, `link`, …).
    pub platform: String,
}

impl ProductEvent for ImageShared {
    const NAME: &'static str = "image_shared";
    fn product(&self) -> Option<Product> {
        Some(Product::KUMORI)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
    use super::*;
    use crate::AnalyticsEvent;
    use serde_json::json;

    #[test]
    fn seed_events_serialize_to_their_documented_properties() {
        let e = AnalyticsEvent::from_typed(
            "u1",
            &AgentExecuted {
                agent_id: "a1".into(),
                duration: Duration::from_millis(1500),
            },
        )
        .unwrap();
        assert_eq!(e.name(), "agent_executed");
        assert_eq!(e.uuid().get_version_num(), 4, "random v4 ids");
        let other = AnalyticsEvent::new("x", "u1").unwrap();
        assert_ne!(e.uuid(), other.uuid());
        assert_eq!(e.product(), Some(&Product::ARBOR));
        assert_eq!(
            serde_json::Value::Object(e.properties().clone()),
            json!({"agent_id": "a1", "duration_ms": 1500})
        );

        let e = AnalyticsEvent::from_typed(
            "u1",
            &AgentCreated {
                agent_id: "a1".into(),
                agent_type: "research".into(),
            },
        )
        .unwrap();
        assert_eq!(e.property("type"), Some(&json!("research")));

        let e = AnalyticsEvent::from_typed(
            "u2",
            &UserSignedUp {
                product: Product::KUMORI,
                method: SignUpMethod::Google,
            },
        )
        .unwrap();
        assert_eq!(e.name(), "user.signed_up");
        assert_eq!(e.product(), Some(&Product::KUMORI));
        assert_eq!(e.property("product"), Some(&json!("kumori")));
        assert_eq!(e.property("method"), Some(&json!("google")));
    }

    #[test]
    fn a_type_that_is_not_an_object_is_invalid_input() {
        #[derive(Serialize)]
        struct NotAnObject(u32);
        impl ProductEvent for NotAnObject {
            const NAME: &'static str = "bad";
        }
        let err = AnalyticsEvent::from_typed("u1", &NotAnObject(3)).unwrap_err();
        assert_eq!(err.kind(), platform_core::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("bad"), "{err}");
    }
}
