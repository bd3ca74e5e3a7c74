//! [`InMemoryRepositories`]: every repository in one process-local state.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use platform_core::{DynClock, Error, Product, ProductCatalog, Result};
use uuid::Uuid;

use crate::types::{
    as_stored, usage_key_conflict, validate_batch, validate_clerk_id, validate_email, validate_event,
    validate_metric, validate_product, validate_stripe_customer_id, validate_upsert, validate_usage,
};
use crate::{
    Period, ProcessedEventRepository, Subscription, SubscriptionRepository, SubscriptionStatus,
    SubscriptionUpsert, UsageRecord, UsageRepository, User, UserRepository,
};

/// Users, subscriptions, usage and processed events in memory: complete and
/// deterministic, honouring the same contract as the Postgres repositories (same
/// `InvalidInput`/`NotFound`/`Conflict`, same de-duplication). Timestamps come from the
/// injected clock. Cheap to share behind an `Arc`; all state is lost on drop.
pub struct InMemoryRepositories {
    catalog: ProductCatalog,
    clock: DynClock,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    users: HashMap<Uuid, User>,
    by_clerk: HashMap<String, Uuid>,
    by_stripe: HashMap<String, Uuid>,
    subscriptions: Vec<Subscription>,
    usage: Vec<UsageRow>,
    /// Idempotency key → index of its row in `usage`.
    usage_keys: HashMap<String, usize>,
    events: HashSet<(String, String)>,
}

struct UsageRow {
    user_id: Uuid,
    product: Product,
    metric: String,
    quantity: i64,
    recorded_at: DateTime<Utc>,
}

impl UsageRow {
    /// As [`UsageRecord::payload`].
    fn payload(&self) -> (Uuid, &Product, &str, i64) {
        (self.user_id, &self.product, &self.metric, self.quantity)
    }
}

impl fmt::Debug for InMemoryRepositories {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("InMemoryRepositories")
            .field("users", &state.users.len())
            .field("subscriptions", &state.subscriptions.len())
            .field("usage_rows", &state.usage.len())
            .field("processed_events", &state.events.len())
            .finish_non_exhaustive()
    }
}

impl InMemoryRepositories {
    /// Empty repositories validating products and tiers against `catalog`, reading time from `clock`.
    pub fn new(catalog: ProductCatalog, clock: DynClock) -> Self {
        Self {
            catalog,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The clock's now, as stored (see [`as_stored`]).
    fn now(&self) -> DateTime<Utc> {
        as_stored(self.clock.now())
    }

    fn count_active(&self, product: &Product, after: DateTime<Utc>) -> Result<u64> {
        validate_product(&self.catalog, product)?;
        let after = as_stored(after);
        let state = self.lock();
        let users: HashSet<Uuid> = state
            .usage
            .iter()
            .filter(|r| &r.product == product && r.recorded_at > after)
            .map(|r| r.user_id)
            .collect();
        Ok(users.len() as u64)
    }

    fn sum_where(
        &self,
        user_id: Uuid,
        product: &Product,
        metric: &str,
        keep: impl Fn(DateTime<Utc>) -> bool,
    ) -> Result<i64> {
        self.lock()
            .usage
            .iter()
            .filter(|r| r.user_id == user_id && &r.product == product && r.metric == metric)
            .filter(|r| keep(r.recorded_at))
            .try_fold(0i64, |sum, r| sum.checked_add(r.quantity))
            // As Postgres: the total does not fit its `int8` result.
            .ok_or_else(|| {
                Error::invalid_input(format!("the total of {metric:?} is out of the 64-bit range"))
            })
    }
}

fn unknown_user(id: Uuid) -> Error {
    Error::invalid_input(format!("unknown user {id}"))
}

#[async_trait]
impl UserRepository for InMemoryRepositories {
    async fn get_or_create_user(&self, clerk_id: &str, email: &str) -> Result<User> {
        validate_clerk_id(clerk_id)?;
        validate_email(email)?;
        let now = self.now();
        let mut state = self.lock();
        if let Some(id) = state.by_clerk.get(clerk_id).copied()
            && let Some(user) = state.users.get_mut(&id)
        {
            if user.email != email {
                user.email = email.to_owned();
                user.updated_at = now;
            }
            return Ok(user.clone());
        }
        let user = User {
            id: Uuid::new_v4(),
            clerk_id: clerk_id.to_owned(),
            email: email.to_owned(),
            stripe_customer_id: None,
            created_at: now,
            updated_at: now,
        };
        state.by_clerk.insert(clerk_id.to_owned(), user.id);
        state.users.insert(user.id, user.clone());
        Ok(user)
    }

    async fn get_user(&self, id: Uuid) -> Result<Option<User>> {
        Ok(self.lock().users.get(&id).cloned())
    }

    async fn get_user_by_clerk_id(&self, clerk_id: &str) -> Result<Option<User>> {
        let state = self.lock();
        Ok(state
            .by_clerk
            .get(clerk_id)
            .and_then(|id| state.users.get(id))
            .cloned())
    }

    async fn update_email(&self, id: Uuid, email: &str) -> Result<User> {
        validate_email(email)?;
        let now = self.now();
        let mut state = self.lock();
        let user = state
            .users
            .get_mut(&id)
            .ok_or_else(|| Error::not_found(format!("user {id} not found")))?;
        user.email = email.to_owned();
        user.updated_at = now;
        Ok(user.clone())
    }

    async fn set_stripe_customer_id(&self, id: Uuid, stripe_customer_id: &str) -> Result<User> {
        validate_stripe_customer_id(stripe_customer_id)?;
        let now = self.now();
        let mut state = self.lock();
        if !state.users.contains_key(&id) {
            return Err(Error::not_found(format!("user {id} not found")));
        }
        if let Some(owner) = state.by_stripe.get(stripe_customer_id)
            && *owner != id
        {
            return Err(Error::conflict(
                "stripe customer id already belongs to another user",
            ));
        }
        let State { users, by_stripe, .. } = &mut *state;
        let user = users
            .get_mut(&id)
            .ok_or_else(|| Error::not_found(format!("user {id} not found")))?;
        if user.stripe_customer_id.as_deref() != Some(stripe_customer_id) {
            if let Some(old) = user.stripe_customer_id.take() {
                by_stripe.remove(&old);
            }
            user.stripe_customer_id = Some(stripe_customer_id.to_owned());
            user.updated_at = now;
            by_stripe.insert(stripe_customer_id.to_owned(), id);
        }
        Ok(user.clone())
    }
}

#[async_trait]
impl SubscriptionRepository for InMemoryRepositories {
    async fn upsert_current(&self, upsert: SubscriptionUpsert) -> Result<Subscription> {
        validate_upsert(&self.catalog, &upsert)?;
        let now = self.now();
        let mut state = self.lock();
        if !state.users.contains_key(&upsert.user_id) {
            return Err(unknown_user(upsert.user_id));
        }
        let current = state
            .subscriptions
            .iter()
            .position(|s| s.current && s.user_id == upsert.user_id && s.product == upsert.product);
        let started_at = upsert.started_at.map(as_stored);
        let expires_at = upsert.expires_at.map(as_stored);
        if let Some(i) = current {
            let existing = &mut state.subscriptions[i];
            if existing.tier == upsert.tier {
                let start = started_at.unwrap_or(existing.started_at);
                if expires_at.is_some_and(|e| e < start) {
                    return Err(Error::invalid_input(
                        "subscription expires_at is before started_at",
                    ));
                }
                existing.status = upsert.status;
                existing.started_at = start;
                existing.expires_at = expires_at;
                existing.updated_at = now;
                return Ok(existing.clone());
            }
        }
        let start = started_at.unwrap_or(now);
        if expires_at.is_some_and(|e| e < start) {
            return Err(Error::invalid_input(
                "subscription expires_at is before started_at",
            ));
        }
        if let Some(i) = current {
            let old = &mut state.subscriptions[i];
            old.current = false;
            old.ended_at = Some(now);
            old.updated_at = now;
        }
        let sub = Subscription {
            id: Uuid::new_v4(),
            user_id: upsert.user_id,
            product: upsert.product,
            tier: upsert.tier,
            status: upsert.status,
            current: true,
            started_at: start,
            expires_at,
            ended_at: None,
            created_at: now,
            updated_at: now,
        };
        state.subscriptions.push(sub.clone());
        Ok(sub)
    }

    async fn get_current(&self, user_id: Uuid, product: &Product) -> Result<Option<Subscription>> {
        validate_product(&self.catalog, product)?;
        Ok(self
            .lock()
            .subscriptions
            .iter()
            .find(|s| s.current && s.user_id == user_id && &s.product == product)
            .cloned())
    }

    async fn list_for_user(&self, user_id: Uuid) -> Result<Vec<Subscription>> {
        Ok(self
            .lock()
            .subscriptions
            .iter()
            .filter(|s| s.user_id == user_id)
            .cloned()
            .collect())
    }

    async fn expire(&self, user_id: Uuid, product: &Product) -> Result<Subscription> {
        validate_product(&self.catalog, product)?;
        let now = self.now();
        let mut state = self.lock();
        let sub = state
            .subscriptions
            .iter_mut()
            .find(|s| s.current && s.user_id == user_id && &s.product == product)
            .ok_or_else(|| {
                Error::not_found(format!("user {user_id} has no current subscription to {product}"))
            })?;
        sub.current = false;
        sub.status = SubscriptionStatus::Expired;
        sub.ended_at = Some(now);
        sub.updated_at = now;
        Ok(sub.clone())
    }
}

#[async_trait]
impl UsageRepository for InMemoryRepositories {
    async fn record(&self, record: &UsageRecord) -> Result<bool> {
        validate_usage(&self.catalog, record)?;
        self.record_batch(std::slice::from_ref(record))
            .await
            .map(|n| n == 1)
    }

    async fn record_batch(&self, records: &[UsageRecord]) -> Result<u64> {
        validate_batch(&self.catalog, records)?;
        let now = self.now();
        let mut state = self.lock();
        // As on Postgres: a row that would be inserted (its key neither recorded nor
        // earlier in the batch) must name a known user; a row whose key is taken is
        // then checked against the key's payload, so an unknown user there is a
        // conflict.
        let mut new_keys = HashSet::with_capacity(records.len());
        if let Some(r) = records.iter().find(|r| {
            !state.usage_keys.contains_key(&r.idempotency_key)
                && new_keys.insert(r.idempotency_key.as_str())
                && !state.users.contains_key(&r.user_id)
        }) {
            return Err(unknown_user(r.user_id));
        }
        // Check every row before writing any: a key reused with a different payload
        // (against the ledger or earlier in this batch) refuses the whole batch.
        let mut batch_keys: HashMap<&str, &UsageRecord> = HashMap::with_capacity(records.len());
        for r in records {
            let key = r.idempotency_key.as_str();
            let same = match state.usage_keys.get(key) {
                Some(&i) => state.usage[i].payload() == r.payload(),
                None => batch_keys.entry(key).or_insert(r).payload() == r.payload(),
            };
            if !same {
                return Err(usage_key_conflict(key));
            }
        }
        let mut inserted = 0;
        for r in records {
            if !state.usage_keys.contains_key(&r.idempotency_key) {
                let index = state.usage.len();
                state.usage_keys.insert(r.idempotency_key.clone(), index);
                state.usage.push(UsageRow {
                    user_id: r.user_id,
                    product: r.product.clone(),
                    metric: r.metric.clone(),
                    quantity: r.quantity,
                    recorded_at: r.recorded_at.map_or(now, as_stored),
                });
                inserted += 1;
            }
        }
        Ok(inserted)
    }

    async fn sum(&self, user_id: Uuid, product: &Product, metric: &str, period: Period) -> Result<i64> {
        validate_product(&self.catalog, product)?;
        validate_metric(metric)?;
        let period = stored_period(period);
        self.sum_where(user_id, product, metric, |t| period.contains(t))
    }

    async fn usage_since(
        &self,
        user_id: Uuid,
        product: &Product,
        metric: &str,
        since: DateTime<Utc>,
    ) -> Result<i64> {
        validate_product(&self.catalog, product)?;
        validate_metric(metric)?;
        let since = as_stored(since);
        self.sum_where(user_id, product, metric, |t| t >= since)
    }

    async fn active_users(&self, product: &Product, period: Period) -> Result<u64> {
        validate_product(&self.catalog, product)?;
        let period = stored_period(period);
        let state = self.lock();
        let users: HashSet<Uuid> = state
            .usage
            .iter()
            .filter(|r| &r.product == product && period.contains(r.recorded_at))
            .map(|r| r.user_id)
            .collect();
        Ok(users.len() as u64)
    }

    async fn daily_active_users(&self, product: &Product) -> Result<u64> {
        self.count_active(product, self.now() - TimeDelta::days(1))
    }

    async fn monthly_active_users(&self, product: &Product) -> Result<u64> {
        self.count_active(product, self.now() - TimeDelta::days(30))
    }
}

#[async_trait]
impl ProcessedEventRepository for InMemoryRepositories {
    async fn first_time(&self, provider: &str, event_id: &str) -> Result<bool> {
        validate_event(provider, event_id)?;
        Ok(self
            .lock()
            .events
            .insert((provider.to_owned(), event_id.to_owned())))
    }

    async fn forget(&self, provider: &str, event_id: &str) -> Result<bool> {
        validate_event(provider, event_id)?;
        Ok(self
            .lock()
            .events
            .remove(&(provider.to_owned(), event_id.to_owned())))
    }
}

fn stored_period(period: Period) -> Period {
    Period {
        from: as_stored(period.from),
        to: as_stored(period.to),
    }
}
