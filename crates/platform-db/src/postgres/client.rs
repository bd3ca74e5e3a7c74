//! [`PostgresRepositories`]: the repository traits on Postgres, with schema-qualified SQL.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use platform_core::{DynClock, Error, ErrorKind, Idempotency, Product, ProductCatalog, Result, RetryPolicy};
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use super::builder::outcome;
use super::error::{PROVIDER, map_sqlx_error};
use crate::types::{
    as_stored, earliest_time, usage_key_conflict, validate_batch, validate_clerk_id, validate_email,
    validate_event, validate_metric, validate_product, validate_stripe_customer_id, validate_upsert,
    validate_usage,
};
use crate::{
    Database, Period, ProcessedEventRepository, Subscription, SubscriptionRepository, SubscriptionStatus,
    SubscriptionUpsert, UsageRecord, UsageRepository, User, UserRepository,
};

/// The repositories on Postgres (`shared.*` tables, created by [`Database::migrate`]).
///
/// Every statement is schema-qualified, so it works on any pool and behind a
/// transaction-mode pooler. Timestamps the crate chooses come from the database's
/// clock and are bound as parameters, so behaviour matches the in-memory
/// implementation under a `ManualClock`. Reads and idempotent writes are retried on
/// retryable errors (a dropped connection, a pool timeout) with the database's
/// retry policy; [`first_time`](ProcessedEventRepository::first_time) is not.
#[derive(Debug, Clone)]
pub struct PostgresRepositories {
    pool: PgPool,
    catalog: ProductCatalog,
    clock: DynClock,
    retry: RetryPolicy,
    call_timeout: Duration,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    clerk_id: String,
    email: String,
    stripe_customer_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            clerk_id: r.clerk_id,
            email: r.email,
            stripe_customer_id: r.stripe_customer_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    id: Uuid,
    user_id: Uuid,
    product: String,
    tier: String,
    status: String,
    is_current: bool,
    started_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = Error;
    fn try_from(r: SubscriptionRow) -> Result<Self> {
        let corrupt = |e: Error| {
            Error::unexpected(format!(
                "stored subscription {} is invalid: {}",
                r.id,
                e.message()
            ))
            .with_provider(PROVIDER)
        };
        Ok(Subscription {
            id: r.id,
            user_id: r.user_id,
            product: Product::new(r.product.clone()).map_err(corrupt)?,
            tier: r.tier,
            status: SubscriptionStatus::parse(&r.status).map_err(corrupt)?,
            current: r.is_current,
            started_at: r.started_at,
            expires_at: r.expires_at,
            ended_at: r.ended_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

macro_rules! user_cols {
    () => {
        "id, clerk_id, email, stripe_customer_id, created_at, updated_at"
    };
}

macro_rules! sub_cols {
    () => {
        "id, user_id, product, tier, status, is_current, started_at, expires_at, ended_at, created_at, updated_at"
    };
}

/// The statement behind `get_or_create_user` (the seed's upsert, safe under
/// concurrency: `ON CONFLICT DO UPDATE` always returns the one row). Public so the
/// benchmark can compare the repository with raw sqlx running the same statement.
#[doc(hidden)]
pub const GET_OR_CREATE_USER_SQL: &str = concat!(
    "INSERT INTO shared.users AS u (clerk_id, email, created_at, updated_at) VALUES ($1, $2, $3, $3) \
     ON CONFLICT (clerk_id) DO UPDATE SET email = EXCLUDED.email, \
     updated_at = CASE WHEN u.email IS DISTINCT FROM EXCLUDED.email THEN EXCLUDED.updated_at ELSE u.updated_at END \
     RETURNING ",
    user_cols!()
);

/// The single-row insert `record` runs (public for the benchmark's baseline).
#[doc(hidden)]
pub const RECORD_USAGE_SQL: &str = "INSERT INTO shared.usage_metrics \
     (user_id, product, metric, quantity, idempotency_key, recorded_at) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (idempotency_key) DO NOTHING";

const RECORD_BATCH_SQL: &str = "INSERT INTO shared.usage_metrics \
     (user_id, product, metric, quantity, idempotency_key, recorded_at) \
     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::timestamptz[]) \
     ON CONFLICT (idempotency_key) DO NOTHING";

/// The first key of the given rows already recorded with a different user, product,
/// metric or quantity (the rows' own earlier inserts included, so a key repeated within
/// one batch with two payloads is found too).
const USAGE_KEY_CONFLICT_SQL: &str = "SELECT i.key FROM \
     UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[]) \
     WITH ORDINALITY AS i(user_id, product, metric, quantity, key, n) \
     JOIN shared.usage_metrics m ON m.idempotency_key = i.key \
     WHERE (m.user_id, m.product, m.metric, m.quantity) IS DISTINCT FROM (i.user_id, i.product, i.metric, i.quantity) \
     ORDER BY i.n LIMIT 1";

/// Usage rows as the column arrays `UNNEST` takes.
struct UsageColumns<'a> {
    users: Vec<Uuid>,
    products: Vec<&'a str>,
    metrics: Vec<&'a str>,
    quantities: Vec<i64>,
    keys: Vec<&'a str>,
    times: Vec<DateTime<Utc>>,
}

impl<'a> UsageColumns<'a> {
    fn new(records: &'a [UsageRecord], now: DateTime<Utc>) -> Self {
        let n = records.len();
        let mut cols = Self {
            users: Vec::with_capacity(n),
            products: Vec::with_capacity(n),
            metrics: Vec::with_capacity(n),
            quantities: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            times: Vec::with_capacity(n),
        };
        for r in records {
            cols.users.push(r.user_id);
            cols.products.push(r.product.as_str());
            cols.metrics.push(r.metric.as_str());
            cols.quantities.push(r.quantity);
            cols.keys.push(r.idempotency_key.as_str());
            cols.times.push(r.recorded_at.unwrap_or(now));
        }
        cols
    }

    /// `Conflict` naming the first key already recorded with a different payload.
    ///
    /// Run it after the `ON CONFLICT DO NOTHING` insert, as its own statement: that
    /// insert waited for any concurrent writer of the same key to commit, and this
    /// statement's snapshot sees its row.
    async fn check_conflicts(&self, conn: &mut sqlx::PgConnection) -> Result<()> {
        let conflicting: Option<String> = sqlx::query_scalar(USAGE_KEY_CONFLICT_SQL)
            .bind(&self.users)
            .bind(&self.products)
            .bind(&self.metrics)
            .bind(&self.quantities)
            .bind(&self.keys)
            .fetch_optional(conn)
            .await
            .map_err(map_sqlx_error)?;
        match conflicting {
            Some(key) => Err(usage_key_conflict(&key).with_provider(PROVIDER)),
            None => Ok(()),
        }
    }
}

impl PostgresRepositories {
    /// The repositories on `database`, with its catalogue, clock and retry policy.
    pub fn new(database: &Database) -> Self {
        Self {
            pool: database.pool().clone(),
            catalog: database.catalog().clone(),
            clock: database.clock().clone(),
            retry: database.retry_policy().clone(),
            call_timeout: database.call_timeout(),
        }
    }

    /// Runs `op` in a span (`provider`, `operation`, `outcome`), each attempt within
    /// the call timeout, retrying as `idempotency` allows.
    async fn call<T, F, Fut>(&self, operation: &'static str, idempotency: Idempotency, mut op: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let limit = self.call_timeout;
        let op = move |attempt| {
            let attempt = op(attempt);
            async move {
                tokio::time::timeout(limit, attempt).await.unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::Timeout,
                        format!("no answer within the call timeout ({limit:?}, DATABASE_CALL_TIMEOUT_SECS)"),
                    )
                    .with_provider(PROVIDER))
                })
            }
        };
        let span = tracing::info_span!(
            "db.call",
            provider = PROVIDER,
            operation,
            outcome = tracing::field::Empty
        );
        let result = self
            .retry
            .retry(&idempotency, op)
            .instrument(span.clone())
            .await
            .map_err(|e| e.with_operation(operation));
        span.record("outcome", outcome(&result));
        result
    }

    async fn upsert_once(
        &self,
        upsert: &SubscriptionUpsert,
        now: DateTime<Utc>,
    ) -> Result<Option<Subscription>> {
        let mut tx = begin(&self.pool).await?;
        lock_subscriptions(&mut tx, upsert.user_id, &upsert.product).await?;
        let current: Option<SubscriptionRow> = sqlx::query_as(concat!(
            "SELECT ",
            sub_cols!(),
            " FROM shared.subscriptions WHERE user_id = $1 AND product = $2 AND is_current FOR UPDATE"
        ))
        .bind(upsert.user_id)
        .bind(upsert.product.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_sqlx_error)?;
        // Compared as stored (whole microseconds), as the in-memory repositories do.
        let check_period = |start: DateTime<Utc>| {
            if upsert.expires_at.is_some_and(|e| as_stored(e) < as_stored(start)) {
                Err(Error::invalid_input(
                    "subscription expires_at is before started_at",
                ))
            } else {
                Ok(())
            }
        };
        if let Some(cur) = &current
            && cur.tier == upsert.tier
        {
            let start = upsert.started_at.unwrap_or(cur.started_at);
            check_period(start)?;
            let row: SubscriptionRow = sqlx::query_as(concat!(
                "UPDATE shared.subscriptions SET status = $2, started_at = $3, expires_at = $4, updated_at = $5 \
                 WHERE id = $1 RETURNING ",
                sub_cols!()
            ))
            .bind(cur.id)
            .bind(upsert.status.as_str())
            .bind(start)
            .bind(upsert.expires_at)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx_error)?;
            tx.commit().await.map_err(map_sqlx_error)?;
            return Subscription::try_from(row).map(Some);
        }
        let start = upsert.started_at.unwrap_or(now);
        check_period(start)?;
        if let Some(cur) = &current {
            sqlx::query(
                "UPDATE shared.subscriptions SET is_current = false, ended_at = $2, updated_at = $2 WHERE id = $1",
            )
            .bind(cur.id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx_error)?;
        }
        let inserted: Option<SubscriptionRow> = sqlx::query_as(concat!(
            "INSERT INTO shared.subscriptions \
             (user_id, product, tier, status, started_at, expires_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (user_id, product) WHERE is_current DO NOTHING RETURNING ",
            sub_cols!()
        ))
        .bind(upsert.user_id)
        .bind(upsert.product.as_str())
        .bind(&upsert.tier)
        .bind(upsert.status.as_str())
        .bind(start)
        .bind(upsert.expires_at)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_sqlx_error)?;
        match inserted {
            Some(row) => {
                tx.commit().await.map_err(map_sqlx_error)?;
                Subscription::try_from(row).map(Some)
            }
            // Another transaction made a current subscription first: start over.
            None => Ok(None),
        }
    }

    /// The total of `metric` for the user in `product` recorded in `[from, to)` (`to`: open-ended if `None`).
    async fn sum_usage(
        &self,
        operation: &'static str,
        user_id: Uuid,
        product: &Product,
        metric: &str,
        from: DateTime<Utc>,
        to: Option<DateTime<Utc>>,
    ) -> Result<i64> {
        validate_product(&self.catalog, product)?;
        validate_metric(metric)?;
        self.call(operation, Idempotency::Idempotent, |_| async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COALESCE(SUM(quantity), 0)::int8 FROM shared.usage_metrics \
                 WHERE user_id = $1 AND product = $2 AND metric = $3 AND recorded_at >= $4 \
                 AND ($5::timestamptz IS NULL OR recorded_at < $5)",
            )
            .bind(user_id)
            .bind(product.as_str())
            .bind(metric)
            .bind(from.max(earliest_time()))
            .bind(to.map(|to| to.max(earliest_time())))
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx_error)
        })
        .await
    }

    async fn count_active_after(
        &self,
        operation: &'static str,
        product: &Product,
        after: DateTime<Utc>,
    ) -> Result<u64> {
        validate_product(&self.catalog, product)?;
        self.call(operation, Idempotency::Idempotent, |_| async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(DISTINCT user_id) FROM shared.usage_metrics WHERE product = $1 AND recorded_at > $2",
            )
            .bind(product.as_str())
            .bind(after)
            .fetch_one(&self.pool)
            .await
            .map(|n| n.unsigned_abs())
            .map_err(map_sqlx_error)
        })
        .await
    }
}

#[async_trait]
impl UserRepository for PostgresRepositories {
    async fn get_or_create_user(&self, clerk_id: &str, email: &str) -> Result<User> {
        validate_clerk_id(clerk_id)?;
        validate_email(email)?;
        let now = self.clock.now();
        self.call("get_or_create_user", Idempotency::Idempotent, |_| async move {
            sqlx::query_as::<_, UserRow>(GET_OR_CREATE_USER_SQL)
                .bind(clerk_id)
                .bind(email)
                .bind(now)
                .fetch_one(&self.pool)
                .await
                .map(User::from)
                .map_err(map_sqlx_error)
        })
        .await
    }

    async fn get_user(&self, id: Uuid) -> Result<Option<User>> {
        self.call("get_user", Idempotency::Idempotent, |_| async move {
            sqlx::query_as::<_, UserRow>(concat!(
                "SELECT ",
                user_cols!(),
                " FROM shared.users WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map(|r| r.map(User::from))
            .map_err(map_sqlx_error)
        })
        .await
    }

    async fn get_user_by_clerk_id(&self, clerk_id: &str) -> Result<Option<User>> {
        // No stored id holds NUL (see `validate_clerk_id`), and Postgres would refuse
        // the parameter: no such user, as in memory.
        if clerk_id.contains('\0') {
            return Ok(None);
        }
        self.call("get_user_by_clerk_id", Idempotency::Idempotent, |_| async move {
            sqlx::query_as::<_, UserRow>(concat!(
                "SELECT ",
                user_cols!(),
                " FROM shared.users WHERE clerk_id = $1"
            ))
            .bind(clerk_id)
            .fetch_optional(&self.pool)
            .await
            .map(|r| r.map(User::from))
            .map_err(map_sqlx_error)
        })
        .await
    }

    async fn update_email(&self, id: Uuid, email: &str) -> Result<User> {
        validate_email(email)?;
        let now = self.clock.now();
        self.call("update_email", Idempotency::Idempotent, |_| async move {
            sqlx::query_as::<_, UserRow>(concat!(
                "UPDATE shared.users SET email = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                user_cols!()
            ))
            .bind(id)
            .bind(email)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx_error)?
            .map(User::from)
            .ok_or_else(|| Error::not_found(format!("user {id} not found")))
        })
        .await
    }

    async fn set_stripe_customer_id(&self, id: Uuid, stripe_customer_id: &str) -> Result<User> {
        validate_stripe_customer_id(stripe_customer_id)?;
        let now = self.clock.now();
        self.call(
            "set_stripe_customer_id",
            Idempotency::Idempotent,
            |_| async move {
                sqlx::query_as::<_, UserRow>(concat!(
                    "UPDATE shared.users SET stripe_customer_id = $2, updated_at = CASE \
                 WHEN stripe_customer_id IS DISTINCT FROM $2 THEN $3 ELSE updated_at END \
                 WHERE id = $1 RETURNING ",
                    user_cols!()
                ))
                .bind(id)
                .bind(stripe_customer_id)
                .bind(now)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| {
                    let e = map_sqlx_error(e);
                    if e.kind() == platform_core::ErrorKind::Conflict {
                        Error::conflict("stripe customer id already belongs to another user")
                            .with_provider(PROVIDER)
                            .with_source(e)
                    } else {
                        e
                    }
                })?
                .map(User::from)
                .ok_or_else(|| Error::not_found(format!("user {id} not found")))
            },
        )
        .await
    }
}

#[async_trait]
impl SubscriptionRepository for PostgresRepositories {
    async fn upsert_current(&self, upsert: SubscriptionUpsert) -> Result<Subscription> {
        validate_upsert(&self.catalog, &upsert)?;
        let now = self.clock.now();
        let upsert = &upsert;
        self.call("upsert_subscription", Idempotency::Idempotent, |_| async move {
            for _ in 0..5 {
                if let Some(sub) = self.upsert_once(upsert, now).await? {
                    return Ok(sub);
                }
            }
            Err(Error::conflict(
                "the current subscription kept changing concurrently; try again",
            ))
        })
        .await
        .map_err(|e| {
            if sqlstate(&e).as_deref() == Some("23503") {
                Error::invalid_input(format!("unknown user {} or invalid subscription", upsert.user_id))
                    .with_provider(PROVIDER)
                    .with_operation("upsert_subscription")
                    .with_source(e)
            } else {
                e
            }
        })
    }

    async fn get_current(&self, user_id: Uuid, product: &Product) -> Result<Option<Subscription>> {
        validate_product(&self.catalog, product)?;
        self.call(
            "get_current_subscription",
            Idempotency::Idempotent,
            |_| async move {
                sqlx::query_as::<_, SubscriptionRow>(concat!(
                    "SELECT ",
                    sub_cols!(),
                    " FROM shared.subscriptions WHERE user_id = $1 AND product = $2 AND is_current"
                ))
                .bind(user_id)
                .bind(product.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_sqlx_error)?
                .map(Subscription::try_from)
                .transpose()
            },
        )
        .await
    }

    async fn list_for_user(&self, user_id: Uuid) -> Result<Vec<Subscription>> {
        self.call("list_subscriptions", Idempotency::Idempotent, |_| async move {
            sqlx::query_as::<_, SubscriptionRow>(concat!(
                "SELECT ",
                sub_cols!(),
                " FROM shared.subscriptions WHERE user_id = $1 ORDER BY seq"
            ))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx_error)?
            .into_iter()
            .map(Subscription::try_from)
            .collect()
        })
        .await
    }

    async fn expire(&self, user_id: Uuid, product: &Product) -> Result<Subscription> {
        validate_product(&self.catalog, product)?;
        let now = self.clock.now();
        // Not retried: a repeat after a lost reply would report NotFound.
        self.call(
            "expire_subscription",
            Idempotency::NonIdempotent,
            |_| async move {
                let mut tx = begin(&self.pool).await?;
                lock_subscriptions(&mut tx, user_id, product).await?;
                let expired = sqlx::query_as::<_, SubscriptionRow>(concat!(
                    "UPDATE shared.subscriptions SET is_current = false, status = 'expired', ended_at = $3, \
                 updated_at = $3 WHERE user_id = $1 AND product = $2 AND is_current RETURNING ",
                    sub_cols!()
                ))
                .bind(user_id)
                .bind(product.as_str())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_sqlx_error)?
                .map(Subscription::try_from)
                .transpose()?
                .ok_or_else(|| {
                    Error::not_found(format!("user {user_id} has no current subscription to {product}"))
                })?;
                tx.commit().await.map_err(map_sqlx_error)?;
                Ok(expired)
            },
        )
        .await
    }
}

#[async_trait]
impl UsageRepository for PostgresRepositories {
    async fn record(&self, record: &UsageRecord) -> Result<bool> {
        validate_usage(&self.catalog, record)?;
        let at = record.recorded_at.unwrap_or_else(|| self.clock.now());
        let key = Idempotency::Key(record.idempotency_key.clone());
        self.call("record_usage", key, |_| async move {
            let new = sqlx::query(RECORD_USAGE_SQL)
                .bind(record.user_id)
                .bind(record.product.as_str())
                .bind(&record.metric)
                .bind(record.quantity)
                .bind(&record.idempotency_key)
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err(map_sqlx_error)?
                .rows_affected()
                == 1;
            if !new {
                // The key was recorded before: a no-op if it is the same measurement.
                let mut conn = self.pool.acquire().await.map_err(map_sqlx_error)?;
                UsageColumns::new(std::slice::from_ref(record), at)
                    .check_conflicts(&mut conn)
                    .await?;
            }
            Ok(new)
        })
        .await
        .map_err(|e| unknown_user_on_fk(e, "record_usage"))
    }

    async fn record_batch(&self, records: &[UsageRecord]) -> Result<u64> {
        validate_batch(&self.catalog, records)?;
        if records.is_empty() {
            return Ok(0);
        }
        let cols = &UsageColumns::new(records, self.clock.now());
        // One transaction, one insert statement for the whole batch (plus one conflict
        // check when some keys were already known). Every row carries its idempotency
        // key, so a retried batch never counts twice; a key reused with a different
        // payload rolls the whole batch back.
        self.call("record_usage_batch", Idempotency::Idempotent, |_| async move {
            let mut tx = begin(&self.pool).await?;
            let inserted = sqlx::query(RECORD_BATCH_SQL)
                .bind(&cols.users)
                .bind(&cols.products)
                .bind(&cols.metrics)
                .bind(&cols.quantities)
                .bind(&cols.keys)
                .bind(&cols.times)
                .execute(&mut *tx)
                .await
                .map_err(map_sqlx_error)?
                .rows_affected();
            if inserted < cols.keys.len() as u64 {
                // Dropping `tx` on a conflict rolls the batch back.
                cols.check_conflicts(&mut tx).await?;
            }
            tx.commit().await.map_err(map_sqlx_error)?;
            Ok(inserted)
        })
        .await
        .map_err(|e| unknown_user_on_fk(e, "record_usage_batch"))
    }

    async fn sum(&self, user_id: Uuid, product: &Product, metric: &str, period: Period) -> Result<i64> {
        self.sum_usage(
            "sum_usage",
            user_id,
            product,
            metric,
            period.from,
            Some(period.to),
        )
        .await
    }

    async fn usage_since(
        &self,
        user_id: Uuid,
        product: &Product,
        metric: &str,
        since: DateTime<Utc>,
    ) -> Result<i64> {
        self.sum_usage("usage_since", user_id, product, metric, since, None)
            .await
    }

    async fn active_users(&self, product: &Product, period: Period) -> Result<u64> {
        validate_product(&self.catalog, product)?;
        self.call("active_users", Idempotency::Idempotent, |_| async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(DISTINCT user_id) FROM shared.usage_metrics \
                 WHERE product = $1 AND recorded_at >= $2 AND recorded_at < $3",
            )
            .bind(product.as_str())
            .bind(period.from.max(earliest_time()))
            .bind(period.to.max(earliest_time()))
            .fetch_one(&self.pool)
            .await
            .map(|n| n.unsigned_abs())
            .map_err(map_sqlx_error)
        })
        .await
    }

    async fn daily_active_users(&self, product: &Product) -> Result<u64> {
        let after = self.clock.now() - TimeDelta::days(1);
        self.count_active_after("daily_active_users", product, after)
            .await
    }

    async fn monthly_active_users(&self, product: &Product) -> Result<u64> {
        let after = self.clock.now() - TimeDelta::days(30);
        self.count_active_after("monthly_active_users", product, after)
            .await
    }
}

/// A foreign-key violation on usage means an unknown user: say so. Other errors
/// (e.g. a value out of range) keep what they say.
fn unknown_user_on_fk(e: Error, operation: &'static str) -> Error {
    if sqlstate(&e).as_deref() == Some("23503") {
        let message = match fk_value(&e) {
            Some(id) => format!("unknown user {id} in usage record"),
            None => "unknown user in usage record".to_owned(),
        };
        Error::invalid_input(message)
            .with_provider(PROVIDER)
            .with_operation(operation)
            .with_source(e)
    } else {
        e
    }
}

/// The key value a foreign-key violation under `e` names (Postgres's detail: `Key
/// (user_id)=(…) is not present in table "users".`), if any.
fn fk_value(e: &Error) -> Option<String> {
    let detail = database_error(e)?
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?
        .detail()?;
    let start = detail.find(")=(")? + 3;
    let end = start + detail[start..].find(')')?;
    Some(detail[start..end].to_owned())
}

/// The SQLSTATE of the database error under `e`, if any.
fn sqlstate(e: &Error) -> Option<String> {
    Some(database_error(e)?.code()?.into_owned())
}

/// The database error under `e` (as [`map_sqlx_error`] wraps it), if any.
fn database_error(e: &Error) -> Option<&dyn sqlx::error::DatabaseError> {
    std::error::Error::source(e)?
        .downcast_ref::<sqlx::Error>()?
        .as_database_error()
}

#[async_trait]
impl ProcessedEventRepository for PostgresRepositories {
    async fn first_time(&self, provider: &str, event_id: &str) -> Result<bool> {
        validate_event(provider, event_id)?;
        let now = self.clock.now();
        // Not retried: if the insert committed but the reply was lost, a retry would
        // answer `false` and the event would never be processed.
        self.call("first_time", Idempotency::NonIdempotent, |_| async move {
            let sql = "INSERT INTO shared.processed_events (provider, event_id, processed_at) VALUES ($1, $2, $3) \
                       ON CONFLICT (provider, event_id) DO NOTHING";
            let query = sqlx::query(sql).bind(provider).bind(event_id).bind(now);
            execute_in_tx(&self.pool, query).await.map(|rows| rows == 1)
        })
        .await
    }

    async fn forget(&self, provider: &str, event_id: &str) -> Result<bool> {
        validate_event(provider, event_id)?;
        // Retried: a repeated delete changes nothing (it may answer `false` after a
        // lost reply; the mark is gone either way).
        self.call("forget_event", Idempotency::Idempotent, |_| async move {
            let sql = "DELETE FROM shared.processed_events WHERE provider = $1 AND event_id = $2";
            let query = sqlx::query(sql).bind(provider).bind(event_id);
            execute_in_tx(&self.pool, query).await.map(|rows| rows == 1)
        })
        .await
    }
}

/// Begins a transaction on a connection of `pool`, in a task of its own.
///
/// sqlx 0.9.0 does not roll back a `BEGIN` whose caller is cancelled while it is in
/// flight (its rollback guard does nothing before the transaction is counted;
/// launchbadge/sqlx#4393), so a call cut off there by its timeout would put the
/// connection back in the pool inside a transaction: the next borrower's writes
/// would never commit. Spawned, the `BEGIN` always completes, and a transaction
/// whose caller is gone by then is dropped, which rolls it back.
async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await })
        .await
        .map_err(|e| {
            Error::unexpected(format!("beginning a transaction failed: {e}")).with_provider(PROVIDER)
        })?
        .map_err(map_sqlx_error)
}

/// Runs one write in a transaction of its own; returns the rows it affected.
///
/// A call timeout drops the attempt but cannot take back a statement already sent: on
/// its own, the statement would still commit whenever the server gets to it (after a
/// lock wait, say), after the caller was told `Timeout`. In a transaction, an attempt
/// dropped before its `COMMIT` was sent is rolled back instead (sqlx rolls back a
/// dropped transaction before its connection returns to the pool), so that `Timeout`
/// means not written, except while the `COMMIT` itself is in flight. For the processed
/// events this matters: a `first_time` insert committing after the caller's `forget`
/// would leave a mark that makes the provider's redelivery skipped.
async fn execute_in_tx(
    pool: &PgPool,
    query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<u64> {
    let mut tx = begin(pool).await?;
    let rows = query
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx_error)?
        .rows_affected();
    tx.commit().await.map_err(map_sqlx_error)?;
    Ok(rows)
}

/// Serialises, until `tx` ends, the writers of one user's subscription to `product`
/// (tier changes and expiries). Without it, a writer waiting on the current row's lock
/// finds no current row once the other commits: a concurrent upsert's insert then
/// loses to the other's new row (20 concurrent upserts could exhaust their retries),
/// and an expiry misses the new row and reports `NotFound`, leaving it current.
async fn lock_subscriptions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    user_id: Uuid,
    product: &Product,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2, 0))")
        .bind(user_id)
        .bind(product.as_str())
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx_error)?;
    Ok(())
}
