#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use platform_core::{DynClock, Product, ProductCatalog, Result};
use uuid::Uuid;

#[cfg(feature = "conformance")]
pub mod conformance;
mod memory;
pub mod postgres;
mod types;

pub use memory::InMemoryRepositories;
pub use postgres::{Database, DatabaseBuilder, PoolerMode, PostgresRepositories, map_sqlx_error};
#[doc(hidden)]
pub use postgres::{GET_OR_CREATE_USER_SQL, RECORD_USAGE_SQL};
pub use types::{
    MAX_BATCH, Period, Schema, Subscription, SubscriptionStatus, SubscriptionUpsert, UsageRecord, User,
};

/// Re-exported so product crates can embed their own migrations
/// (`sqlx::migrate!`) and use the pools without naming sqlx versions themselves.
pub use sqlx;

/// Users shared by every product (`shared.users`).
#[async_trait]
pub trait UserRepository: Send + Sync + Debug + 'static {
    /// Returns the user with this Clerk id, creating it if there is none (the seed's upsert).
    ///
    /// # Behavior
    /// - A new Clerk id creates one user with that email, `created_at == updated_at ==` the clock's now
    ///   and no Stripe customer id.
    /// - A known Clerk id returns the same user (same id, same `created_at`).
    /// - A known Clerk id with a different email updates the email and `updated_at`.
    /// - Concurrent calls for one Clerk id create exactly one row and all return its id.
    /// - An empty Clerk id or an email that is not `local@domain` is `InvalidInput`; nothing is written.
    async fn get_or_create_user(&self, clerk_id: &str, email: &str) -> Result<User>;

    /// The user with this id.
    ///
    /// # Behavior
    /// - `None` for an unknown id.
    async fn get_user(&self, id: Uuid) -> Result<Option<User>>;

    /// The user with this Clerk id.
    ///
    /// # Behavior
    /// - `None` for an unknown Clerk id.
    async fn get_user_by_clerk_id(&self, clerk_id: &str) -> Result<Option<User>>;

    /// Changes a user's email.
    ///
    /// # Behavior
    /// - Returns the updated user with `updated_at` = the clock's now.
    /// - `NotFound` for an unknown user; `InvalidInput` for a malformed email.
    async fn update_email(&self, id: Uuid, email: &str) -> Result<User>;

    /// Records the user's Stripe customer id.
    ///
    /// # Behavior
    /// - Setting it again to the same value succeeds and changes nothing.
    /// - `Conflict` when another user already has this customer id; nothing changes.
    /// - `NotFound` for an unknown user; `InvalidInput` for an empty id.
    async fn set_stripe_customer_id(&self, id: Uuid, stripe_customer_id: &str) -> Result<User>;
}

/// Subscriptions of users to products (`shared.subscriptions`), history kept.
#[async_trait]
pub trait SubscriptionRepository: Send + Sync + Debug + 'static {
    /// Makes `upsert` the user's current subscription to the product.
    ///
    /// # Behavior
    /// - With no current subscription, creates one (`current`, `started_at` defaulting to the clock's now).
    /// - With a current subscription to the same tier, updates it in place (same id): status,
    ///   `started_at` (when given) and `expires_at`.
    /// - With a current subscription to another tier, closes it (`current == false`, `ended_at` = now,
    ///   kept as history) and creates a new current one.
    /// - Concurrent upserts for one (user, product) leave exactly one current subscription.
    /// - A product outside the catalogue, a tier the product does not sell, or `expires_at` before
    ///   `started_at` is `InvalidInput`; an unknown user is `InvalidInput`; nothing is written.
    async fn upsert_current(&self, upsert: SubscriptionUpsert) -> Result<Subscription>;

    /// The user's current subscription to `product`.
    ///
    /// # Behavior
    /// - `None` when there is none (never subscribed, or expired).
    async fn get_current(&self, user_id: Uuid, product: &Product) -> Result<Option<Subscription>>;

    /// Every subscription of the user, current and past, all products, oldest first.
    ///
    /// # Behavior
    /// - Empty for a user without subscriptions.
    async fn list_for_user(&self, user_id: Uuid) -> Result<Vec<Subscription>>;

    /// Ends the user's current subscription to `product`: status `expired`, no longer current.
    ///
    /// # Behavior
    /// - Returns the closed subscription (`ended_at` = now); it stays in the history.
    /// - `NotFound` when there is no current subscription.
    async fn expire(&self, user_id: Uuid, product: &Product) -> Result<Subscription>;
}

/// The usage ledger (`shared.usage_metrics`).
#[async_trait]
pub trait UsageRepository: Send + Sync + Debug + 'static {
    /// Records one measurement; `true` if it was new, `false` if its key was already recorded.
    ///
    /// # Behavior
    /// - A repeated idempotency key with the same user, product, metric and quantity is recorded
    ///   once: the repeat is a no-op answering `false` (`recorded_at` is not compared, so a retry
    ///   stamped later by the clock is the same measurement).
    /// - A repeated key with a different user, product, metric or quantity is `Conflict` naming the
    ///   key; nothing is written and the first recording stands.
    /// - `recorded_at` defaults to the clock's now.
    /// - A product outside the catalogue, a malformed metric, a negative quantity, an empty key or
    ///   an unknown user is `InvalidInput`; nothing is written.
    /// - The call is retried after a lost connection (the key makes that safe): when the first
    ///   try committed but its reply was lost, the retry answers `false` although this call
    ///   recorded the measurement. `false` means "recorded, not necessarily by this call": act
    ///   on the recording (e.g. charge) keyed by the idempotency key, not on this flag alone.
    async fn record(&self, record: &UsageRecord) -> Result<bool>;

    /// Records many measurements in one round trip; returns how many were new.
    ///
    /// # Behavior
    /// - Keys already recorded, or repeated within the batch, with the same payload count once.
    /// - All or nothing: any invalid row (named by its index) or unknown user is `InvalidInput`,
    ///   and a key reused with a different user, product, metric or quantity (against the ledger
    ///   or within the batch) is `Conflict` naming the key (the batch's first such key); either
    ///   way nothing of the batch is written. At most [`MAX_BATCH`] rows.
    /// - Retried after a lost connection, as [`record`](Self::record): when the first try
    ///   committed but its reply was lost, the retry counts 0 new. The count is "new to this
    ///   call", not "recorded": bill from the ledger (keyed by idempotency key), not from it.
    async fn record_batch(&self, records: &[UsageRecord]) -> Result<u64>;

    /// The total of `metric` for the user in `product` over `period` (`from <= t < to`).
    ///
    /// # Behavior
    /// - 0 when nothing was recorded; other users, products and metrics never count.
    async fn sum(&self, user_id: Uuid, product: &Product, metric: &str, period: Period) -> Result<i64>;

    /// The total of `metric` for the user in `product` recorded at or after `since` (quota checks).
    ///
    /// # Behavior
    /// - Same as [`sum`](Self::sum) over `[since, ∞)`.
    async fn usage_since(
        &self,
        user_id: Uuid,
        product: &Product,
        metric: &str,
        since: DateTime<Utc>,
    ) -> Result<i64>;

    /// How many distinct users recorded any usage in `product` over `period`.
    ///
    /// # Behavior
    /// - A user counts once however many rows or metrics they have.
    async fn active_users(&self, product: &Product, period: Period) -> Result<u64>;

    /// Daily active users: distinct users with usage in `product` in the last 24 hours
    /// (`recorded_at > now - 24h`, now from the clock; the seed's DAU).
    ///
    /// # Behavior
    /// - Counts usage recorded exactly at now; not usage exactly 24 hours old.
    async fn daily_active_users(&self, product: &Product) -> Result<u64>;

    /// Monthly active users: as [`daily_active_users`](Self::daily_active_users) over 30 days.
    ///
    /// # Behavior
    /// - Counts usage recorded in the last 30 days only.
    async fn monthly_active_users(&self, product: &Product) -> Result<u64>;
}

/// Webhook de-duplication (`shared.processed_events`).
#[async_trait]
pub trait ProcessedEventRepository: Send + Sync + Debug + 'static {
    /// Marks `(provider, event_id)` processed; `true` only the first time it is seen.
    ///
    /// The mark is written before the event is handled: when handling it fails (or
    /// this call fails, so whether the mark was written is unknown), call
    /// [`forget`](Self::forget) before reporting the failure to the provider, so that
    /// its redelivery is handled instead of skipped.
    ///
    /// # Behavior
    /// - The first call returns `true`, every later call `false`.
    /// - Atomic: of concurrent calls for one event exactly one returns `true`.
    /// - The same event id from another provider is a different event.
    /// - A malformed provider name or an empty event id is `InvalidInput`.
    async fn first_time(&self, provider: &str, event_id: &str) -> Result<bool>;

    /// Removes the processed mark of `(provider, event_id)`, so that the next
    /// [`first_time`](Self::first_time) for it returns `true`; `true` if there was one.
    ///
    /// # Behavior
    /// - Safe to repeat: forgetting an unknown or already forgotten event returns `false`.
    /// - Forgets only that provider's event.
    /// - A malformed provider name or an empty event id is `InvalidInput`.
    async fn forget(&self, provider: &str, event_id: &str) -> Result<bool>;
}

/// Every repository behind its trait: what the facade holds, on Postgres or in memory.
#[derive(Debug, Clone)]
pub struct Repositories {
    /// Users.
    pub users: Arc<dyn UserRepository>,
    /// Subscriptions.
    pub subscriptions: Arc<dyn SubscriptionRepository>,
    /// Usage ledger.
    pub usage: Arc<dyn UsageRepository>,
    /// Processed webhook events.
    pub events: Arc<dyn ProcessedEventRepository>,
}

impl Repositories {
    /// The in-memory repositories (one shared state), validating tiers against `catalog`.
    pub fn in_memory(catalog: ProductCatalog, clock: DynClock) -> Self {
        Self::from_one(Arc::new(InMemoryRepositories::new(catalog, clock)))
    }

    /// The Postgres repositories on `database` (its catalogue and clock).
    pub fn postgres(database: &Database) -> Self {
        Self::from_one(Arc::new(PostgresRepositories::new(database)))
    }

    fn from_one<T>(r: Arc<T>) -> Self
    where
        T: UserRepository + SubscriptionRepository + UsageRepository + ProcessedEventRepository,
    {
        Self {
            users: r.clone(),
            subscriptions: r.clone(),
            usage: r.clone(),
            events: r,
        }
    }
}
