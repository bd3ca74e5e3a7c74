//! Provider-neutral values: events, traits, flags, flush reports and settings.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use platform_core::{Error, Product, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::events::ProductEvent;

/// The property every event carries with its deployment environment.
pub const PROP_ENVIRONMENT: &str = "environment";
/// The property every event carries with the application version.
pub const PROP_APP_VERSION: &str = "app_version";
/// The property every event carries with its product slug (when it has one).
pub const PROP_PRODUCT: &str = "product";

/// The name of the event [`Analytics::identify`](crate::Analytics::identify) sends.
pub const IDENTIFY_EVENT: &str = "$identify";
/// The name of the event [`Analytics::alias`](crate::Analytics::alias) sends.
pub const ALIAS_EVENT: &str = "$create_alias";

const MAX_NAME_LEN: usize = 200;
const MAX_DISTINCT_ID_LEN: usize = 200;

/// One analytics event: a name, the user it is about, properties and a timestamp.
///
/// Built from a typed [`ProductEvent`] with [`AnalyticsEvent::from_typed`] (what
/// product code does) or from a name and properties with [`AnalyticsEvent::new`].
/// Construction validates the name and the distinct id, so
/// [`Analytics::capture`](crate::Analytics::capture) never has to fail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsEvent {
    name: String,
    distinct_id: String,
    properties: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<DateTime<Utc>>,
    uuid: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    product: Option<Product>,
}

impl AnalyticsEvent {
    /// An event named `name` about `distinct_id`, without properties.
    ///
    /// # Errors
    /// `InvalidInput` if the name or the distinct id is blank, longer than 200
    /// characters, or contains control characters.
    pub fn new(name: impl Into<String>, distinct_id: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let distinct_id = distinct_id.into();
        validate_text("event name", &name, MAX_NAME_LEN)?;
        validate_text("distinct_id", &distinct_id, MAX_DISTINCT_ID_LEN)?;
        Ok(Self {
            name,
            distinct_id,
            properties: Map::new(),
            timestamp: None,
            uuid: random_uuid(),
            product: None,
        })
    }

    /// The typed `event` about `distinct_id`: its [`ProductEvent::NAME`], its fields
    /// as properties and its product.
    ///
    /// # Errors
    /// `InvalidInput` if the distinct id is invalid (see [`new`](Self::new)) or the
    /// event does not serialize to a JSON object.
    pub fn from_typed<E: ProductEvent + ?Sized>(distinct_id: impl Into<String>, event: &E) -> Result<Self> {
        let mut out = Self::new(E::NAME, distinct_id)?;
        match serde_json::to_value(event) {
            Ok(Value::Object(map)) => out.properties = map,
            Ok(other) => {
                return Err(Error::invalid_input(format!(
                    "event {} must serialize to a JSON object, got {}",
                    E::NAME,
                    json_kind(&other)
                )));
            }
            Err(e) => {
                return Err(
                    Error::invalid_input(format!("event {} cannot be serialized", E::NAME)).with_source(e),
                );
            }
        }
        out.product = event.product();
        Ok(out)
    }

    /// Sets property `key` to `value` (builder style).
    ///
    /// # Errors
    /// `InvalidInput` if the key is blank or the value cannot be serialized.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Serialize) -> Result<Self> {
        let key = key.into();
        if key.trim().is_empty() {
            return Err(Error::invalid_input(format!(
                "event {}: property names must not be blank",
                self.name
            )));
        }
        let value = serde_json::to_value(value).map_err(|e| {
            Error::invalid_input(format!(
                "event {}: property {key} cannot be serialized",
                self.name
            ))
            .with_source(e)
        })?;
        self.properties.insert(key, value);
        Ok(self)
    }

    /// Tags the event with `product` (it overrides the event type's own product).
    #[must_use]
    pub fn with_product(mut self, product: Product) -> Self {
        self.product = Some(product);
        self
    }

    /// Sets when the event happened; without it, capture stamps the clock's time.
    #[must_use]
    pub fn with_timestamp(mut self, at: DateTime<Utc>) -> Self {
        self.timestamp = Some(at);
        self
    }

    /// Sets the event's unique id (PostHog de-duplicates on it). A random v4 id by default.
    #[must_use]
    pub fn with_uuid(mut self, uuid: Uuid) -> Self {
        self.uuid = uuid;
        self
    }

    /// The event name (`agent_created`, `user.signed_up`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user (or anonymous id) the event is about.
    pub fn distinct_id(&self) -> &str {
        &self.distinct_id
    }

    /// The properties, including enrichment once captured.
    pub fn properties(&self) -> &Map<String, Value> {
        &self.properties
    }

    /// One property.
    pub fn property(&self, key: &str) -> Option<&Value> {
        self.properties.get(key)
    }

    /// The properties, to scrub or add to (what a `before_send` hook uses).
    pub fn properties_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.properties
    }

    /// Removes and returns property `key`.
    pub fn remove_property(&mut self, key: &str) -> Option<Value> {
        self.properties.remove(key)
    }

    /// When the event happened (set at capture from the clock if not given).
    pub fn timestamp(&self) -> Option<DateTime<Utc>> {
        self.timestamp
    }

    /// The event's unique id.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The product the event belongs to.
    pub fn product(&self) -> Option<&Product> {
        self.product.as_ref()
    }

    pub(crate) fn set_timestamp_if_missing(&mut self, at: DateTime<Utc>) {
        if self.timestamp.is_none() {
            self.timestamp = Some(at);
        }
    }
}

/// A random (version 4) uuid from a fast user-space generator: capture is a hot
/// path, and the OS generator costs a system call per event. The id only needs to
/// be unique for PostHog's de-duplication, not unpredictable.
fn random_uuid() -> Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn validate_text(what: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid_input(format!("{what} must not be blank")));
    }
    if value.chars().count() > max {
        return Err(Error::invalid_input(format!(
            "{what} must be at most {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid_input(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Person properties sent by [`Analytics::identify`](crate::Analytics::identify)
/// (PostHog `$set`): the seed's products, total spend and lifetime value, plus any
/// extra traits. Every value is supplied by the caller; nothing is computed here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserTraits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    products: Option<Vec<Product>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total_spend: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lifetime_value: Option<f64>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl UserTraits {
    /// No traits.
    pub fn new() -> Self {
        Self::default()
    }

    /// The products the user has access to.
    #[must_use]
    pub fn with_products(mut self, products: impl IntoIterator<Item = Product>) -> Self {
        self.products = Some(products.into_iter().collect());
        self
    }

    /// What the user has spent in total, in the account currency.
    #[must_use]
    pub fn with_total_spend(mut self, amount: f64) -> Self {
        self.total_spend = Some(amount);
        self
    }

    /// The user's lifetime value, in the account currency.
    #[must_use]
    pub fn with_lifetime_value(mut self, amount: f64) -> Self {
        self.lifetime_value = Some(amount);
        self
    }

    /// Any other trait (`email`, `plan`, …).
    ///
    /// # Errors
    /// `InvalidInput` if the key is blank, collides with a named trait, or the
    /// value cannot be serialized.
    pub fn with(mut self, key: impl Into<String>, value: impl Serialize) -> Result<Self> {
        let key = key.into();
        if key.trim().is_empty() {
            return Err(Error::invalid_input("trait names must not be blank"));
        }
        if matches!(key.as_str(), "products" | "total_spend" | "lifetime_value") {
            return Err(Error::invalid_input(format!(
                "trait {key} has its own setter (with_{key})"
            )));
        }
        let value = serde_json::to_value(value)
            .map_err(|e| Error::invalid_input(format!("trait {key} cannot be serialized")).with_source(e))?;
        self.extra.insert(key, value);
        Ok(self)
    }

    /// The traits as the JSON object sent as `$set`.
    pub fn to_json(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("total_spend", self.total_spend),
            ("lifetime_value", self.lifetime_value),
        ] {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(Error::invalid_input(format!(
                    "trait {name} must be a finite number"
                )));
            }
        }
        Ok(())
    }
}

/// The value of one feature flag for one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlagValue {
    /// A boolean flag: on or off.
    Enabled(bool),
    /// A multivariate flag: the variant the user got (counts as enabled).
    Variant(String),
}

impl FlagValue {
    /// Whether the flag is on (a variant counts as on).
    pub fn is_enabled(&self) -> bool {
        match self {
            Self::Enabled(on) => *on,
            Self::Variant(_) => true,
        }
    }
}

/// One evaluated flag: its value and its optional JSON payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagState {
    /// The value.
    pub value: FlagValue,
    /// The payload configured for the flag (or the variant), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

impl FlagState {
    /// An on/off flag without payload.
    pub fn enabled(on: bool) -> Self {
        Self {
            value: FlagValue::Enabled(on),
            payload: None,
        }
    }

    /// A multivariate flag set to `variant`, without payload.
    pub fn variant(variant: impl Into<String>) -> Self {
        Self {
            value: FlagValue::Variant(variant.into()),
            payload: None,
        }
    }

    /// The same flag with `payload`.
    #[must_use]
    pub fn with_payload(mut self, payload: Value) -> Self {
        self.payload = Some(payload);
        self
    }
}

/// Every feature flag evaluated for one user. Unknown flags read as off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureFlags {
    flags: BTreeMap<String, FlagState>,
}

impl FeatureFlags {
    /// No flags (everything off).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces flag `key`.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, state: FlagState) -> Self {
        self.flags.insert(key.into(), state);
        self
    }

    /// Whether flag `key` is on (a variant counts as on; unknown flags are off).
    pub fn is_enabled(&self, key: &str) -> bool {
        self.flags.get(key).is_some_and(|f| f.value.is_enabled())
    }

    /// The value of flag `key`, if it was evaluated.
    pub fn value(&self, key: &str) -> Option<&FlagValue> {
        self.flags.get(key).map(|f| &f.value)
    }

    /// The variant of multivariate flag `key`.
    pub fn variant(&self, key: &str) -> Option<&str> {
        match self.value(key)? {
            FlagValue::Variant(v) => Some(v),
            FlagValue::Enabled(_) => None,
        }
    }

    /// The payload of flag `key`, if it has one.
    pub fn payload(&self, key: &str) -> Option<&Value> {
        self.flags.get(key).and_then(|f| f.payload.as_ref())
    }

    /// The evaluated flag keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.keys().map(String::as_str)
    }

    /// How many flags were evaluated.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Whether no flag was evaluated.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }
}

impl FromIterator<(String, FlagState)> for FeatureFlags {
    fn from_iter<I: IntoIterator<Item = (String, FlagState)>>(iter: I) -> Self {
        Self {
            flags: iter.into_iter().collect(),
        }
    }
}

/// What happened to the events captured so far, as returned by
/// [`flush`](crate::Analytics::flush) and [`shutdown`](crate::Analytics::shutdown).
///
/// Counts are cumulative since the client was built. Every captured event ends
/// up in exactly one of `delivered`, `dropped` or `filtered`, or is still `pending`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlushReport {
    /// Events the backend accepted.
    pub delivered: u64,
    /// Events accepted by `capture` and not yet delivered (queued or being retried).
    pub pending: u64,
    /// Events lost: the queue was full, the backend rejected them for good
    /// (e.g. 400/401), or they were captured after shutdown. Each drop is logged.
    pub dropped: u64,
    /// Events a `before_send` hook discarded on purpose.
    pub filtered: u64,
}

impl FlushReport {
    /// Whether nothing is pending and nothing was dropped.
    pub fn is_complete(&self) -> bool {
        self.pending == 0 && self.dropped == 0
    }
}

impl fmt::Display for FlushReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} delivered, {} pending, {} dropped, {} filtered",
            self.delivered, self.pending, self.dropped, self.filtered
        )
    }
}

/// A hook run on every event before it is queued: return `None` to drop the
/// event (counted as `filtered`), or change its properties to scrub them.
pub type BeforeSend = Arc<dyn Fn(AnalyticsEvent) -> Option<AnalyticsEvent> + Send + Sync + 'static>;

/// The context added to every event, as the seed's `trackEvent` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrichment {
    /// Deployment environment (`production`, `staging`, `development`).
    pub environment: String,
    /// The application's version.
    pub app_version: String,
    /// The product used for events that do not name one themselves.
    pub default_product: Option<Product>,
}

impl Default for Enrichment {
    /// Environment `development`, app version `unknown`, no default product.
    fn default() -> Self {
        Self {
            environment: "development".to_owned(),
            app_version: "unknown".to_owned(),
            default_product: None,
        }
    }
}

impl Enrichment {
    /// `environment` and `app_version`, no default product.
    pub fn new(environment: impl Into<String>, app_version: impl Into<String>) -> Self {
        Self {
            environment: environment.into(),
            app_version: app_version.into(),
            default_product: None,
        }
    }

    /// Tags events without a product with `product`.
    #[must_use]
    pub fn with_default_product(mut self, product: Product) -> Self {
        self.default_product = Some(product);
        self
    }
}
