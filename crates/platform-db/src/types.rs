//! Provider-neutral rows and requests, and the validation every implementation shares.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use platform_core::{Error, Product, ProductCatalog, Result};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user of the platform, shared by every product (`shared.users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct User {
    /// The platform's id for the user.
    pub id: Uuid,
    /// The user's Clerk id (`user_…`); unique.
    pub clerk_id: String,
    /// The user's email address.
    pub email: String,
    /// The user's Stripe customer id (`cus_…`), once billing created one; unique.
    pub stripe_customer_id: Option<String>,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

/// The state of a subscription, as billing reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SubscriptionStatus {
    /// Paid and in force.
    Active,
    /// In a free trial.
    Trialing,
    /// A payment failed; still in force while billing retries.
    PastDue,
    /// Cancelled by the user or billing.
    Canceled,
    /// Ran out ([`SubscriptionRepository::expire`](crate::SubscriptionRepository::expire)).
    Expired,
}

impl SubscriptionStatus {
    /// The name stored in the database (`active`, `past_due`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Trialing => "trialing",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
        }
    }

    /// Parses a stored name.
    ///
    /// # Errors
    /// `InvalidInput` for an unknown name.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "active" => Self::Active,
            "trialing" => Self::Trialing,
            "past_due" => Self::PastDue,
            "canceled" => Self::Canceled,
            "expired" => Self::Expired,
            other => {
                return Err(Error::invalid_input(format!(
                    "unknown subscription status {other:?}"
                )));
            }
        })
    }

    /// Whether a subscription in this state grants its tier (active, trialing, past due).
    pub fn grants_access(self) -> bool {
        matches!(self, Self::Active | Self::Trialing | Self::PastDue)
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One subscription row (`shared.subscriptions`): current, or kept as history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Subscription {
    /// The subscription's id.
    pub id: Uuid,
    /// Whose subscription it is.
    pub user_id: Uuid,
    /// Which product it is for.
    pub product: Product,
    /// The tier, one of the product's tiers in the catalogue.
    pub tier: String,
    /// Billing's state.
    pub status: SubscriptionStatus,
    /// Whether this is the user's current subscription to the product (at most one is).
    pub current: bool,
    /// When the subscription (period) started.
    pub started_at: DateTime<Utc>,
    /// When it runs out, if it does.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it stopped being current (a tier change or [`expire`](crate::SubscriptionRepository::expire)).
    pub ended_at: Option<DateTime<Utc>>,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

impl Subscription {
    /// Whether the subscription grants its tier at `now`: current, in a state that
    /// grants access, and not past `expires_at`.
    pub fn is_active_at(&self, now: DateTime<Utc>) -> bool {
        self.current && self.status.grants_access() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// The subscription a user should now have to a product: what
/// [`SubscriptionRepository::upsert_current`](crate::SubscriptionRepository::upsert_current) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionUpsert {
    /// Whose subscription.
    pub user_id: Uuid,
    /// Which product.
    pub product: Product,
    /// The tier, which must be one of the product's tiers in the catalogue.
    pub tier: String,
    /// Billing's state (default `active`).
    pub status: SubscriptionStatus,
    /// When it started (default: the clock's now).
    pub started_at: Option<DateTime<Utc>>,
    /// When it runs out (default: never).
    pub expires_at: Option<DateTime<Utc>>,
}

impl SubscriptionUpsert {
    /// An active subscription of `user_id` to `tier` of `product`, starting now, not expiring.
    pub fn new(user_id: Uuid, product: Product, tier: impl Into<String>) -> Self {
        Self {
            user_id,
            product,
            tier: tier.into(),
            status: SubscriptionStatus::Active,
            started_at: None,
            expires_at: None,
        }
    }

    /// Sets the status.
    #[must_use]
    pub fn with_status(mut self, status: SubscriptionStatus) -> Self {
        self.status = status;
        self
    }

    /// Sets when the subscription started.
    #[must_use]
    pub fn with_started_at(mut self, started_at: DateTime<Utc>) -> Self {
        self.started_at = Some(started_at);
        self
    }

    /// Sets when the subscription runs out.
    #[must_use]
    pub fn with_expires_at(mut self, expires_at: DateTime<Utc>) -> Self {
        self.expires_at = Some(expires_at);
        self
    }
}

/// One usage measurement to record (`shared.usage_metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageRecord {
    /// Whose usage.
    pub user_id: Uuid,
    /// In which product.
    pub product: Product,
    /// What was used (`api_calls`, `images`, …): 1–64 of `a-z 0-9 _ . : -`, starting
    /// with a letter or digit.
    pub metric: String,
    /// How much (zero or more).
    pub quantity: i64,
    /// Unique per measurement: recording the same key again never counts twice, and
    /// reusing it for a different user, product, metric or quantity is a `Conflict`.
    pub idempotency_key: String,
    /// When it happened (default: the clock's now).
    pub recorded_at: Option<DateTime<Utc>>,
}

impl UsageRecord {
    /// `quantity` of `metric` used by `user_id` in `product`, de-duplicated by `idempotency_key`.
    pub fn new(
        user_id: Uuid,
        product: Product,
        metric: impl Into<String>,
        quantity: i64,
        idempotency_key: impl Into<String>,
    ) -> Self {
        Self {
            user_id,
            product,
            metric: metric.into(),
            quantity,
            idempotency_key: idempotency_key.into(),
            recorded_at: None,
        }
    }

    /// Sets when the usage happened.
    #[must_use]
    pub fn with_recorded_at(mut self, at: DateTime<Utc>) -> Self {
        self.recorded_at = Some(at);
        self
    }

    /// What a reused idempotency key must match to be the same measurement: user,
    /// product, metric and quantity. `recorded_at` is not part of it (a retry stamped by
    /// the clock later is still the same measurement).
    pub(crate) fn payload(&self) -> (Uuid, &Product, &str, i64) {
        (self.user_id, &self.product, &self.metric, self.quantity)
    }
}

/// The error for an idempotency key reused with a different payload (nothing written).
pub(crate) fn usage_key_conflict(key: &str) -> Error {
    Error::conflict(format!(
        "usage idempotency key {key:?} was already recorded with a different user, product, metric \
         or quantity"
    ))
}

/// A time range `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Inclusive start.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
}

impl Period {
    /// The period `[from, to)`.
    ///
    /// # Errors
    /// `InvalidInput` when `to` is before `from`.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Self> {
        if to < from {
            return Err(Error::invalid_input(format!(
                "period end {to} is before its start {from}"
            )));
        }
        Ok(Self { from, to })
    }

    /// Whether `at` falls in the period.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from <= at && at < self.to
    }
}

/// A Postgres schema the platform manages: `shared`, or one per product.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Schema {
    /// The `shared` schema (users, subscriptions, usage, processed events).
    Shared,
    /// A product's own schema, named after its slug with `-` mapped to `_`.
    Product(Product),
}

impl Schema {
    /// The schema named `name`: `shared` or a product slug (either spelling, `-` or `_`).
    ///
    /// # Errors
    /// `InvalidInput` when `name` is neither `shared` nor a valid product slug; nothing
    /// reaches SQL. Whether the product is in the catalogue is checked by
    /// [`Database::pool_for`](crate::Database::pool_for).
    pub fn parse(name: &str) -> Result<Self> {
        if name == "shared" {
            return Ok(Self::Shared);
        }
        let slug = name.replace('_', "-");
        Product::new(slug)
            .map(Self::Product)
            .map_err(|e| Error::invalid_input(format!("invalid schema name {name:?}: {}", e.message())))
    }

    /// The schema's name in Postgres (`shared`, `arbor`, `my_product`).
    pub fn name(&self) -> String {
        match self {
            Self::Shared => "shared".to_owned(),
            Self::Product(p) => p.as_str().replace('-', "_"),
        }
    }

    /// The validated, double-quoted identifier, the only form ever put into SQL.
    ///
    /// # Errors
    /// `InvalidInput` for a product that is not in `catalog` or whose schema name is
    /// reserved (`shared`, `public`, `information_schema`, `pg_*`).
    pub fn quoted_identifier(&self, catalog: &ProductCatalog) -> Result<String> {
        let name = self.name();
        if let Self::Product(product) = self {
            if !catalog.contains(product) {
                return Err(Error::invalid_input(format!(
                    "schema {name:?}: product {product} is not in the product catalogue"
                )));
            }
            if matches!(name.as_str(), "shared" | "public" | "information_schema") || name.starts_with("pg_")
            {
                return Err(Error::invalid_input(format!(
                    "schema {name:?} of product {product} is reserved"
                )));
            }
        }
        // Defence in depth: whatever built the name, only this alphabet is quoted into SQL.
        let safe = !name.is_empty()
            && name.len() <= 32
            && name.as_bytes()[0].is_ascii_lowercase()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !safe {
            return Err(Error::invalid_input(format!("invalid schema name {name:?}")));
        }
        Ok(format!("\"{name}\""))
    }
}

impl From<Product> for Schema {
    fn from(p: Product) -> Self {
        Self::Product(p)
    }
}

impl From<&Product> for Schema {
    fn from(p: &Product) -> Self {
        Self::Product(p.clone())
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

// ---------------------------------------------------------------------------
// Validation shared by every implementation (and mirrored by the SQL CHECKs).

/// Most rows one `record_batch` call accepts.
pub const MAX_BATCH: usize = 50_000;

/// The earliest time every implementation stores: 1 January 4713 BC (year -4712),
/// where Postgres's `timestamptz` range starts (within days). Sums and counts over
/// earlier times treat them as this one.
pub(crate) fn earliest_time() -> DateTime<Utc> {
    chrono::NaiveDate::from_ymd_opt(-4712, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(DateTime::<Utc>::MIN_UTC, |t| t.and_utc())
}

/// A stored time (`field`) must be one Postgres can hold: refused up front, naming
/// the field, rather than failing as a database error (the in-memory store would
/// take it).
fn storable_time(field: &str, at: Option<DateTime<Utc>>) -> Result<()> {
    match at {
        Some(at) if at < earliest_time() => Err(Error::invalid_input(format!(
            "{field} {at} is before 4713 BC, the earliest time the database stores"
        ))),
        _ => Ok(()),
    }
}

/// Postgres text cannot hold NUL: refused up front, naming the field, rather than
/// failing as a database error that names none (the in-memory store would take it).
fn no_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid_input(format!(
            "{field} must not contain a NUL character"
        )));
    }
    Ok(())
}

pub(crate) fn validate_clerk_id(clerk_id: &str) -> Result<()> {
    if clerk_id.is_empty() || clerk_id.len() > 255 {
        return Err(Error::invalid_input("clerk_id must be 1 to 255 bytes"));
    }
    no_nul("clerk_id", clerk_id)
}

pub(crate) fn validate_email(email: &str) -> Result<()> {
    let ok = email.len() <= 320
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !email.chars().any(|c| c.is_whitespace() || c == '\0')
            }
            None => false,
        };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "invalid email {email:?}: expected local@domain, at most 320 bytes, no spaces or NUL"
        )))
    }
}

pub(crate) fn validate_stripe_customer_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 255 {
        return Err(Error::invalid_input("stripe_customer_id must be 1 to 255 bytes"));
    }
    no_nul("stripe_customer_id", id)
}

pub(crate) fn validate_product(catalog: &ProductCatalog, product: &Product) -> Result<()> {
    if catalog.contains(product) {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "product {product} is not in the product catalogue"
        )))
    }
}

pub(crate) fn validate_upsert(catalog: &ProductCatalog, s: &SubscriptionUpsert) -> Result<()> {
    validate_product(catalog, &s.product)?;
    storable_time("subscription started_at", s.started_at)?;
    storable_time("subscription expires_at", s.expires_at)?;
    catalog.get(&s.product)?.tier_rank(&s.tier)?;
    if let (Some(start), Some(end)) = (s.started_at, s.expires_at)
        && end < start
    {
        return Err(Error::invalid_input(format!(
            "subscription expires_at {end} is before started_at {start}"
        )));
    }
    Ok(())
}

pub(crate) fn validate_metric(metric: &str) -> Result<()> {
    let b = metric.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "invalid metric name {metric:?}: 1-64 of a-z 0-9 _ . : -, starting with a letter or digit"
        )))
    }
}

pub(crate) fn validate_usage(catalog: &ProductCatalog, r: &UsageRecord) -> Result<()> {
    validate_product(catalog, &r.product)?;
    validate_metric(&r.metric)?;
    if r.quantity < 0 {
        return Err(Error::invalid_input(format!(
            "usage quantity must be zero or more, got {}",
            r.quantity
        )));
    }
    if r.idempotency_key.is_empty() || r.idempotency_key.len() > 255 {
        return Err(Error::invalid_input(
            "usage idempotency_key must be 1 to 255 bytes",
        ));
    }
    no_nul("usage idempotency_key", &r.idempotency_key)?;
    storable_time("usage recorded_at", r.recorded_at)
}

pub(crate) fn validate_batch(catalog: &ProductCatalog, records: &[UsageRecord]) -> Result<()> {
    if records.len() > MAX_BATCH {
        return Err(Error::invalid_input(format!(
            "record_batch takes at most {MAX_BATCH} rows, got {}",
            records.len()
        )));
    }
    for (i, r) in records.iter().enumerate() {
        validate_usage(catalog, r)
            .map_err(|e| Error::invalid_input(format!("usage row {i}: {}", e.message())))?;
    }
    Ok(())
}

pub(crate) fn validate_event(provider: &str, event_id: &str) -> Result<()> {
    let b = provider.as_bytes();
    let provider_ok = !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'));
    if !provider_ok {
        return Err(Error::invalid_input(format!(
            "invalid provider name {provider:?}: 1-32 of a-z 0-9 _ -, starting with a letter"
        )));
    }
    if event_id.is_empty() || event_id.len() > 255 {
        return Err(Error::invalid_input("event_id must be 1 to 255 bytes"));
    }
    no_nul("event_id", event_id)
}

/// `t` as Postgres stores it: in whole microseconds (sqlx drops the rest, counting
/// from 2000-01-01). The in-memory repositories cut every time so before storing or
/// comparing it, and the Postgres ones compare a subscription's period so, so that a
/// boundary falls the same way on both.
pub(crate) fn as_stored(t: DateTime<Utc>) -> DateTime<Utc> {
    let Some(pg_epoch) = DateTime::from_timestamp(946_684_800, 0) else {
        return t;
    };
    match (t - pg_epoch).num_microseconds() {
        Some(us) => pg_epoch + TimeDelta::microseconds(us),
        None => t,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use platform_core::{ErrorKind, ProductConfig};

    fn catalog_with(slug: &str) -> ProductCatalog {
        let arbor = ProductCatalog::default().get(&Product::ARBOR).unwrap().clone();
        ProductCatalog::default()
            .with_product(Product::new(slug).unwrap(), ProductConfig { ..arbor })
            .unwrap()
    }

    #[test]
    fn schema_names_are_slugs_with_underscores_and_always_quoted() {
        let catalog = catalog_with("tree-house");
        assert_eq!(Schema::Shared.quoted_identifier(&catalog).unwrap(), "\"shared\"");
        assert_eq!(
            Schema::from(Product::ARBOR).quoted_identifier(&catalog).unwrap(),
            "\"arbor\""
        );
        let th = Schema::parse("tree_house").unwrap();
        assert_eq!(th, Schema::parse("tree-house").unwrap());
        assert_eq!(th.name(), "tree_house");
        assert_eq!(th.quoted_identifier(&catalog).unwrap(), "\"tree_house\"");
    }

    #[test]
    fn malicious_unknown_and_reserved_schemas_are_refused() {
        for name in [
            "arbor\"; DROP SCHEMA shared; --",
            "a b",
            "",
            "Arbor",
            "x".repeat(40).as_str(),
            "1abc",
        ] {
            assert_eq!(
                Schema::parse(name).unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{name:?}"
            );
        }
        let unknown = Schema::parse("kumori2").unwrap();
        assert_eq!(
            unknown
                .quoted_identifier(&ProductCatalog::default())
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
        for reserved in ["public", "pg-temp", "information-schema"] {
            let catalog = catalog_with(reserved);
            let schema = Schema::parse(reserved).unwrap();
            assert_eq!(
                schema.quoted_identifier(&catalog).unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{reserved}"
            );
        }
        // A product called "shared" would alias the shared schema.
        let shared = Schema::Product(Product::new("shared").unwrap());
        assert!(shared.quoted_identifier(&catalog_with("shared")).is_err());
    }

    #[test]
    fn emails_metrics_and_events_are_validated() {
        assert!(validate_email("a@b.c").is_ok());
        for bad in ["", "a", "@b", "a@", "a@b@c", "a b@c", "a@b c"] {
            assert!(validate_email(bad).is_err(), "{bad:?}");
        }
        assert!(validate_metric("api_calls").is_ok());
        assert!(validate_metric("images.hd:v2-x").is_ok());
        for bad in ["", "Api", "_x", "a b", &"m".repeat(65)] {
            assert!(validate_metric(bad).is_err(), "{bad:?}");
        }
        assert!(validate_event("stripe", "evt_1").is_ok());
        assert!(validate_event("stripe", "").is_err());
        assert!(validate_event("Stripe", "e").is_err());
    }

    #[test]
    fn status_names_round_trip_and_periods_are_half_open() {
        for s in [
            SubscriptionStatus::Active,
            SubscriptionStatus::Trialing,
            SubscriptionStatus::PastDue,
            SubscriptionStatus::Canceled,
            SubscriptionStatus::Expired,
        ] {
            assert_eq!(SubscriptionStatus::parse(s.as_str()).unwrap(), s);
        }
        assert!(SubscriptionStatus::parse("paused").is_err());
        let t = DateTime::from_timestamp(1_000, 0).unwrap();
        let p = Period::new(t, t + chrono::TimeDelta::seconds(10)).unwrap();
        assert!(p.contains(t));
        assert!(!p.contains(t + chrono::TimeDelta::seconds(10)));
        assert!(Period::new(t, t - chrono::TimeDelta::seconds(1)).is_err());
    }
}
