//! The behaviour suite of the repository traits (feature `conformance`).
//!
//! Each case is a free async function over a [`Harness`] (the four repositories
//! behind their traits, the `ManualClock` they read, and the catalogue); each
//! `# Behavior` bullet of the traits is at least one case. [`repository_conformance!`](crate::repository_conformance)
//! generates one named `#[tokio::test]` per case for an implementation:
//!
//! ```text
//! async fn harness() -> (platform_db::conformance::Harness, ()) { /* … */ }
//! platform_db::repository_conformance!(harness);
//! ```
//!
//! The factory returns the harness and a guard kept alive until the case ends (a
//! test database to drop, for instance).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a behaviour suite fails by panicking, like a test"
)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use platform_core::{Clock, ErrorKind, ManualClock, Product, ProductCatalog, Result};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::{
    Period, ProcessedEventRepository, Repositories, SubscriptionRepository, SubscriptionStatus,
    SubscriptionUpsert, UsageRecord, UsageRepository, User, UserRepository,
};

/// What every case runs against.
#[derive(Debug, Clone)]
pub struct Harness {
    /// The repositories under test, reading time from `clock` and tiers from `catalog`.
    pub repos: Repositories,
    /// The clock the repositories were built with.
    pub clock: ManualClock,
    /// The catalogue the repositories were built with (the seed's, in the generated tests).
    pub catalog: ProductCatalog,
}

impl Harness {
    /// A harness over `repos`.
    pub fn new(repos: Repositories, clock: ManualClock, catalog: ProductCatalog) -> Self {
        Self {
            repos,
            clock,
            catalog,
        }
    }

    fn users(&self) -> &dyn UserRepository {
        &*self.repos.users
    }
    fn subs(&self) -> &dyn SubscriptionRepository {
        &*self.repos.subscriptions
    }
    fn usage(&self) -> &dyn UsageRepository {
        &*self.repos.usage
    }
    fn events(&self) -> &dyn ProcessedEventRepository {
        &*self.repos.events
    }
}

/// The instant every generated test's `ManualClock` starts at (2026-11-27T12:00:00Z).
pub fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0)
        .single()
        .expect("a valid date")
}

/// Postgres stores microseconds; compare timestamps at that precision.
fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn assert_kind<T: std::fmt::Debug>(result: Result<T>, kind: ErrorKind, what: &str) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "{what}: unexpected error {e:?}"),
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
    }
}

async fn user(h: &Harness, clerk_id: &str) -> User {
    h.users()
        .get_or_create_user(clerk_id, &format!("{clerk_id}@example.com"))
        .await
        .unwrap()
}

// --- users -------------------------------------------------------------------

/// A new Clerk id creates one user stamped with the clock's now.
pub async fn users_create_new(h: &Harness) {
    let u = h
        .users()
        .get_or_create_user("user_new", "new@example.com")
        .await
        .unwrap();
    assert_eq!(u.clerk_id, "user_new");
    assert_eq!(u.email, "new@example.com");
    assert_eq!(u.stripe_customer_id, None);
    assert_eq!(micros(u.created_at), micros(start_time()));
    assert_eq!(micros(u.updated_at), micros(start_time()));
    assert_eq!(h.users().get_user(u.id).await.unwrap(), Some(u.clone()));
    assert_eq!(h.users().get_user_by_clerk_id("user_new").await.unwrap(), Some(u));
}

/// A known Clerk id returns the same user, unchanged.
pub async fn users_existing_returned(h: &Harness) {
    let first = user(h, "user_same").await;
    h.clock.advance(Duration::from_secs(60));
    let second = user(h, "user_same").await;
    assert_eq!(first, second, "same id, email and timestamps");
}

/// A known Clerk id with a new email updates the email and `updated_at`.
pub async fn users_email_change_updates(h: &Harness) {
    let first = user(h, "user_mail").await;
    h.clock.advance(Duration::from_secs(60));
    let second = h
        .users()
        .get_or_create_user("user_mail", "changed@example.com")
        .await
        .unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.email, "changed@example.com");
    assert_eq!(micros(second.created_at), micros(first.created_at));
    assert_eq!(micros(second.updated_at), micros(h.clock.now()));
}

/// 50 concurrent calls for one Clerk id give one row and one id.
pub async fn users_concurrent_get_or_create_one_row(h: &Harness) {
    let mut set = JoinSet::new();
    for _ in 0..50 {
        let users = h.repos.users.clone();
        set.spawn(async move { users.get_or_create_user("user_race", "race@example.com").await });
    }
    let mut ids = Vec::new();
    while let Some(joined) = set.join_next().await {
        ids.push(joined.unwrap().unwrap().id);
    }
    assert_eq!(ids.len(), 50);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "every call returned the same id");
    let stored = h
        .users()
        .get_user_by_clerk_id("user_race")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.id, ids[0]);
}

/// Empty Clerk ids and malformed emails are `InvalidInput`; nothing is written.
pub async fn users_bad_input_rejected(h: &Harness) {
    assert_kind(
        h.users().get_or_create_user("", "a@example.com").await,
        ErrorKind::InvalidInput,
        "empty clerk id",
    );
    // Postgres text cannot hold NUL: refused up front, naming the field, on both.
    assert_kind(
        h.users().get_or_create_user("user_\0nul", "a@example.com").await,
        ErrorKind::InvalidInput,
        "NUL in clerk id",
    );
    for bad in [
        "",
        "no-at-sign",
        "@example.com",
        "a@",
        "a b@example.com",
        "a@b@c",
        "a\0@b.c",
    ] {
        assert_kind(
            h.users().get_or_create_user("user_bad", bad).await,
            ErrorKind::InvalidInput,
            bad,
        );
    }
    assert_eq!(h.users().get_user_by_clerk_id("user_bad").await.unwrap(), None);
}

/// Lookups of unknown users return `None`.
pub async fn users_unknown_is_none(h: &Harness) {
    assert_eq!(h.users().get_user(Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(h.users().get_user_by_clerk_id("user_\0nul").await.unwrap(), None);
    assert_eq!(h.users().get_user_by_clerk_id("user_nobody").await.unwrap(), None);
}

/// `update_email` updates, `NotFound` for unknown users, `InvalidInput` for bad emails.
pub async fn users_update_email(h: &Harness) {
    let u = user(h, "user_upd").await;
    h.clock.advance(Duration::from_secs(5));
    let updated = h.users().update_email(u.id, "upd2@example.com").await.unwrap();
    assert_eq!(updated.email, "upd2@example.com");
    assert_eq!(micros(updated.updated_at), micros(h.clock.now()));
    assert_kind(
        h.users().update_email(Uuid::new_v4(), "x@example.com").await,
        ErrorKind::NotFound,
        "unknown user",
    );
    assert_kind(
        h.users().update_email(u.id, "nope").await,
        ErrorKind::InvalidInput,
        "bad email",
    );
    assert_eq!(
        h.users().get_user(u.id).await.unwrap().unwrap().email,
        "upd2@example.com"
    );
}

/// Stripe customer ids: set, idempotent, unique across users (`Conflict`), `NotFound`.
pub async fn users_stripe_customer_id(h: &Harness) {
    let a = user(h, "user_sa").await;
    let b = user(h, "user_sb").await;
    let set = h.users().set_stripe_customer_id(a.id, "cus_A").await.unwrap();
    assert_eq!(set.stripe_customer_id.as_deref(), Some("cus_A"));
    h.clock.advance(Duration::from_secs(5));
    let again = h.users().set_stripe_customer_id(a.id, "cus_A").await.unwrap();
    assert_eq!(again, set, "setting the same id changes nothing");
    assert_kind(
        h.users().set_stripe_customer_id(b.id, "cus_A").await,
        ErrorKind::Conflict,
        "customer id of another user",
    );
    assert_eq!(
        h.users()
            .get_user(b.id)
            .await
            .unwrap()
            .unwrap()
            .stripe_customer_id,
        None
    );
    assert_kind(
        h.users().set_stripe_customer_id(Uuid::new_v4(), "cus_Z").await,
        ErrorKind::NotFound,
        "unknown user",
    );
    assert_kind(
        h.users().set_stripe_customer_id(a.id, "").await,
        ErrorKind::InvalidInput,
        "empty id",
    );
}

// --- subscriptions --------------------------------------------------------------

/// With no current subscription, upsert creates one; `get_current` returns it.
pub async fn subscriptions_create_current(h: &Harness) {
    let u = user(h, "user_sub1").await;
    assert_eq!(h.subs().get_current(u.id, &Product::ARBOR).await.unwrap(), None);
    let s = h
        .subs()
        .upsert_current(SubscriptionUpsert::new(u.id, Product::ARBOR, "pro"))
        .await
        .unwrap();
    assert!(s.current);
    assert_eq!(s.tier, "pro");
    assert_eq!(s.status, SubscriptionStatus::Active);
    assert_eq!(micros(s.started_at), micros(start_time()));
    assert_eq!(s.expires_at, None);
    assert!(s.is_active_at(h.clock.now()));
    assert_eq!(
        h.subs().get_current(u.id, &Product::ARBOR).await.unwrap(),
        Some(s)
    );
    assert_eq!(h.subs().get_current(u.id, &Product::KUMORI).await.unwrap(), None);
}

/// Same tier: updated in place (same id), status and expiry changed.
pub async fn subscriptions_same_tier_updates_in_place(h: &Harness) {
    let u = user(h, "user_sub2").await;
    let first = h
        .subs()
        .upsert_current(SubscriptionUpsert::new(u.id, Product::KUMORI, "premium"))
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(10));
    let expires = h.clock.now() + TimeDelta::days(30);
    let second = h
        .subs()
        .upsert_current(
            SubscriptionUpsert::new(u.id, Product::KUMORI, "premium")
                .with_status(SubscriptionStatus::PastDue)
                .with_expires_at(expires),
        )
        .await
        .unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.status, SubscriptionStatus::PastDue);
    assert_eq!(second.expires_at.map(micros), Some(micros(expires)));
    assert_eq!(micros(second.started_at), micros(first.started_at));
    assert_eq!(h.subs().list_for_user(u.id).await.unwrap().len(), 1);
}

/// Another tier: the old row is closed and kept, a new current row is created.
pub async fn subscriptions_tier_change_keeps_history(h: &Harness) {
    let u = user(h, "user_sub3").await;
    let free = h
        .subs()
        .upsert_current(SubscriptionUpsert::new(u.id, Product::KUMORI, "free"))
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(3600));
    let premium = h
        .subs()
        .upsert_current(SubscriptionUpsert::new(u.id, Product::KUMORI, "premium"))
        .await
        .unwrap();
    assert_ne!(premium.id, free.id);
    assert_eq!(micros(premium.started_at), micros(h.clock.now()));
    let history = h.subs().list_for_user(u.id).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].id, free.id, "oldest first");
    assert!(!history[0].current);
    assert_eq!(history[0].ended_at.map(micros), Some(micros(h.clock.now())));
    assert_eq!(history[1], premium);
    assert_eq!(history.iter().filter(|s| s.current).count(), 1);
    // Another product's subscription is independent.
    h.subs()
        .upsert_current(SubscriptionUpsert::new(u.id, Product::ARBOR, "user"))
        .await
        .unwrap();
    assert_eq!(h.subs().list_for_user(u.id).await.unwrap().len(), 3);
    assert_eq!(
        h.subs()
            .get_current(u.id, &Product::KUMORI)
            .await
            .unwrap()
            .map(|s| s.id),
        Some(premium.id)
    );
}

/// A tier outside the catalogue, an unknown product, a bad period or an unknown user is rejected.
pub async fn subscriptions_invalid_rejected(h: &Harness) {
    let u = user(h, "user_sub4").await;
    assert_kind(
        h.subs()
            .upsert_current(SubscriptionUpsert::new(u.id, Product::KUMORI, "platinum"))
            .await,
        ErrorKind::InvalidInput,
        "tier outside the catalogue",
    );
    assert_kind(
        h.subs()
            .upsert_current(SubscriptionUpsert::new(u.id, Product::ARBOR, "premium"))
            .await,
        ErrorKind::InvalidInput,
        "another product's tier",
    );
    let unknown = Product::new("unknown-product").unwrap();
    assert_kind(
        h.subs()
            .upsert_current(SubscriptionUpsert::new(u.id, unknown, "free"))
            .await,
        ErrorKind::InvalidInput,
        "product outside the catalogue",
    );
    let now = h.clock.now();
    assert_kind(
        h.subs()
            .upsert_current(
                SubscriptionUpsert::new(u.id, Product::KUMORI, "free")
                    .with_started_at(now)
                    .with_expires_at(now - TimeDelta::seconds(1)),
            )
            .await,
        ErrorKind::InvalidInput,
        "expires before it starts",
    );
    assert_kind(
        h.subs()
            .upsert_current(
                SubscriptionUpsert::new(u.id, Product::KUMORI, "free")
                    .with_expires_at(now - TimeDelta::days(1)),
            )
            .await,
        ErrorKind::InvalidInput,
        "expires before the default start",
    );
    let err = h
        .subs()
        .upsert_current(
            SubscriptionUpsert::new(u.id, Product::KUMORI, "free").with_started_at(DateTime::<Utc>::MIN_UTC),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("started_at"), "{err}");
    assert_kind(
        h.subs()
            .upsert_current(SubscriptionUpsert::new(Uuid::new_v4(), Product::KUMORI, "free"))
            .await,
        ErrorKind::InvalidInput,
        "unknown user",
    );
    assert!(
        h.subs().list_for_user(u.id).await.unwrap().is_empty(),
        "nothing written"
    );
}

/// `expire` closes the current subscription and keeps it; `NotFound` when there is none.
pub async fn subscriptions_expire(h: &Harness) {
    let u = user(h, "user_sub5").await;
    assert_kind(
        h.subs().expire(u.id, &Product::ARBOR).await,
        ErrorKind::NotFound,
        "nothing to expire",
    );
    let s = h
        .subs()
        .upsert_current(SubscriptionUpsert::new(u.id, Product::ARBOR, "enterprise"))
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(7));
    let expired = h.subs().expire(u.id, &Product::ARBOR).await.unwrap();
    assert_eq!(expired.id, s.id);
    assert_eq!(expired.status, SubscriptionStatus::Expired);
    assert!(!expired.current);
    assert!(!expired.is_active_at(h.clock.now()));
    assert_eq!(expired.ended_at.map(micros), Some(micros(h.clock.now())));
    assert_eq!(h.subs().get_current(u.id, &Product::ARBOR).await.unwrap(), None);
    assert_eq!(h.subs().list_for_user(u.id).await.unwrap(), vec![expired]);
    assert_kind(
        h.subs().expire(u.id, &Product::ARBOR).await,
        ErrorKind::NotFound,
        "already expired",
    );
    // A new subscription after expiry starts a new current row.
    let renewed = h
        .subs()
        .upsert_current(SubscriptionUpsert::new(u.id, Product::ARBOR, "enterprise"))
        .await
        .unwrap();
    assert_ne!(renewed.id, s.id);
}

/// Concurrent upserts for one (user, product) leave exactly one current subscription.
pub async fn subscriptions_concurrent_one_current(h: &Harness) {
    let u = user(h, "user_sub6").await;
    let mut set = JoinSet::new();
    for i in 0..20 {
        let subs = h.repos.subscriptions.clone();
        let tier = ["free", "premium", "creator"][i % 3];
        set.spawn(async move {
            subs.upsert_current(SubscriptionUpsert::new(u.id, Product::KUMORI, tier))
                .await
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.unwrap().unwrap();
    }
    let all = h.subs().list_for_user(u.id).await.unwrap();
    assert_eq!(all.iter().filter(|s| s.current).count(), 1, "{all:#?}");
    let current = h
        .subs()
        .get_current(u.id, &Product::KUMORI)
        .await
        .unwrap()
        .unwrap();
    assert!(all.iter().any(|s| s.id == current.id));
}

// --- usage ----------------------------------------------------------------------

/// A duplicate idempotency key records once; the same measurement again (even stamped
/// later by the clock) is a no-op answering "already recorded".
pub async fn usage_duplicate_key_records_once(h: &Harness) {
    let u = user(h, "user_use1").await;
    let r = UsageRecord::new(u.id, Product::ARBOR, "api_calls", 3, "key-1");
    assert!(h.usage().record(&r).await.unwrap());
    assert!(!h.usage().record(&r).await.unwrap());
    h.clock.advance(Duration::from_secs(60));
    assert!(
        !h.usage().record(&r).await.unwrap(),
        "a later retry is the same measurement"
    );
    let since = h.clock.now() - TimeDelta::hours(1);
    assert_eq!(
        h.usage()
            .usage_since(u.id, &Product::ARBOR, "api_calls", since)
            .await
            .unwrap(),
        3
    );
}

fn assert_key_conflict<T: std::fmt::Debug>(result: Result<T>, key: &str, what: &str) {
    match result {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Conflict, "{what}: unexpected error {e:?}");
            assert!(
                e.message().contains(key),
                "{what}: the error names the key {key:?}: {e}"
            );
        }
        Ok(v) => panic!("{what}: expected Conflict, got Ok({v:?})"),
    }
}

/// A key reused with a different user, product, metric or quantity is a `Conflict`
/// naming the key; nothing is written and the first recording stands.
pub async fn usage_key_reused_with_other_payload_conflicts(h: &Harness) {
    let u = user(h, "user_use5").await;
    let other_user = user(h, "user_use5b").await;
    let first = UsageRecord::new(u.id, Product::ARBOR, "api_calls", 3, "reused-1");
    assert!(h.usage().record(&first).await.unwrap());
    let mut by_other_user = first.clone();
    by_other_user.user_id = other_user.id;
    let mut other_product = first.clone();
    other_product.product = Product::KUMORI;
    let mut other_metric = first.clone();
    other_metric.metric = "tokens".into();
    let mut other_quantity = first.clone();
    other_quantity.quantity = 100;
    for (what, r) in [
        ("other user", by_other_user),
        ("other product", other_product),
        ("other metric", other_metric),
        ("other quantity", other_quantity),
    ] {
        assert_key_conflict(h.usage().record(&r).await, "reused-1", what);
    }
    assert!(
        !h.usage().record(&first).await.unwrap(),
        "the first recording stands"
    );
    let since = h.clock.now() - TimeDelta::hours(1);
    for (who, product, metric, expected) in [
        (u.id, Product::ARBOR, "api_calls", 3),
        (other_user.id, Product::ARBOR, "api_calls", 0),
        (u.id, Product::KUMORI, "api_calls", 0),
        (u.id, Product::ARBOR, "tokens", 0),
    ] {
        assert_eq!(
            h.usage().usage_since(who, &product, metric, since).await.unwrap(),
            expected,
            "{product}/{metric}"
        );
    }
}

/// A batch reusing a key with a different payload (against the ledger or within the
/// batch) is refused as a whole: `Conflict` naming the key, no row of it written.
pub async fn usage_batch_key_conflict_refuses_whole_batch(h: &Harness) {
    let u = user(h, "user_use6").await;
    let known = UsageRecord::new(u.id, Product::KUMORI, "images", 1, "c-0");
    assert!(h.usage().record(&known).await.unwrap());
    let fresh = |i: usize| UsageRecord::new(u.id, Product::KUMORI, "images", 1, format!("c-{i}"));
    let mut batch: Vec<UsageRecord> = (1..=10).map(fresh).collect();
    let mut changed = known.clone();
    changed.quantity = 7;
    batch.insert(5, changed);
    assert_key_conflict(h.usage().record_batch(&batch).await, "c-0", "against the ledger");
    // With several keys in conflict, the error names the batch's first.
    let known_too = UsageRecord::new(u.id, Product::KUMORI, "images", 1, "c-99");
    assert!(h.usage().record(&known_too).await.unwrap());
    let mut changed_too = known_too.clone();
    changed_too.quantity = 7;
    batch.insert(2, changed_too);
    assert_key_conflict(h.usage().record_batch(&batch).await, "c-99", "the first of two");

    let mut within: Vec<UsageRecord> = (1..=10).map(fresh).collect();
    let mut twin = within[2].clone();
    twin.metric = "api_calls".into();
    within.push(twin);
    assert_key_conflict(h.usage().record_batch(&within).await, "c-3", "within the batch");

    let since = h.clock.now() - TimeDelta::days(1);
    let total = || async {
        h.usage()
            .usage_since(u.id, &Product::KUMORI, "images", since)
            .await
            .unwrap()
    };
    assert_eq!(total().await, 2, "nothing of a refused batch was written");
    assert_eq!(
        h.usage()
            .usage_since(u.id, &Product::KUMORI, "api_calls", since)
            .await
            .unwrap(),
        0
    );
    // The same batch with the known rows unchanged records the new rows only.
    batch[2] = known_too;
    batch[6] = known;
    assert_eq!(h.usage().record_batch(&batch).await.unwrap(), 10);
    assert_eq!(total().await, 12);
}

/// Invalid records are `InvalidInput` and nothing is written.
pub async fn usage_invalid_rejected(h: &Harness) {
    let u = user(h, "user_use2").await;
    let ok = |key: &str| UsageRecord::new(u.id, Product::ARBOR, "api_calls", 1, key);
    let mut negative = ok("k-neg");
    negative.quantity = -1;
    let mut bad_metric = ok("k-metric");
    bad_metric.metric = "Api Calls; DROP".into();
    let mut empty_key = ok("");
    empty_key.idempotency_key.clear();
    let mut unknown_product = ok("k-prod");
    unknown_product.product = Product::new("nope").unwrap();
    let unknown_user = UsageRecord::new(Uuid::new_v4(), Product::ARBOR, "api_calls", 1, "k-user");
    for (what, r) in [
        ("negative quantity", negative),
        ("bad metric", bad_metric),
        ("empty key", empty_key),
        ("NUL in key", ok("k\0nul")),
        ("unknown product", unknown_product),
        ("unknown user", unknown_user),
    ] {
        assert_kind(h.usage().record(&r).await, ErrorKind::InvalidInput, what);
    }
    let since = h.clock.now() - TimeDelta::days(1);
    assert_eq!(
        h.usage()
            .usage_since(u.id, &Product::ARBOR, "api_calls", since)
            .await
            .unwrap(),
        0
    );
    assert_eq!(h.usage().daily_active_users(&Product::ARBOR).await.unwrap(), 0);
    let unknown = UsageRecord::new(Uuid::new_v4(), Product::ARBOR, "api_calls", 1, "k-who");
    let err = h.usage().record(&unknown).await.unwrap_err();
    assert!(err.to_string().contains("unknown user"), "{err}");
    assert!(
        err.to_string().contains(&unknown.user_id.to_string()),
        "names the user: {err}"
    );
    // A time before any the database stores is refused, naming the field; "since
    // the beginning of time" still sums everything.
    let mut ancient = ok("k-ancient");
    ancient.recorded_at = Some(DateTime::<Utc>::MIN_UTC);
    let err = h.usage().record(&ancient).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("recorded_at"), "{err}");
    assert!(h.usage().record(&ok("k-now")).await.unwrap());
    // A recorded key reused by an unknown user is a key conflict (the key is taken),
    // alone or in a batch; an unknown user with a new key stays `InvalidInput`.
    let stranger = |key: &str| UsageRecord::new(Uuid::new_v4(), Product::ARBOR, "api_calls", 1, key);
    assert_kind(
        h.usage().record(&stranger("k-now")).await,
        ErrorKind::Conflict,
        "taken key",
    );
    assert_kind(
        h.usage().record_batch(&[ok("k-new"), stranger("k-now")]).await,
        ErrorKind::Conflict,
        "taken key in a batch",
    );
    assert_kind(
        h.usage()
            .record_batch(&[stranger("k-new-2"), stranger("k-now")])
            .await,
        ErrorKind::InvalidInput,
        "an unknown user with a new key comes first",
    );
    let all = h
        .usage()
        .usage_since(u.id, &Product::ARBOR, "api_calls", DateTime::<Utc>::MIN_UTC)
        .await
        .unwrap();
    assert_eq!(all, 1);
    // Sums name a valid metric too.
    assert_kind(
        h.usage()
            .usage_since(u.id, &Product::ARBOR, "Api Calls\0", since)
            .await,
        ErrorKind::InvalidInput,
        "bad metric in a sum",
    );
    // A total past the 64-bit range is `InvalidInput`, not a wrapped number.
    for key in ["max-1", "max-2"] {
        let mut r = ok(key);
        r.quantity = i64::MAX;
        assert!(h.usage().record(&r).await.unwrap());
    }
    assert_kind(
        h.usage()
            .usage_since(u.id, &Product::ARBOR, "api_calls", since)
            .await,
        ErrorKind::InvalidInput,
        "a total out of range",
    );
}

/// `record_batch` records new keys once, skipping known and repeated keys (same payload).
pub async fn usage_batch_dedupes(h: &Harness) {
    let u = user(h, "user_use3").await;
    assert!(
        h.usage()
            .record(&UsageRecord::new(u.id, Product::KUMORI, "images", 1, "b-0"))
            .await
            .unwrap()
    );
    let mut batch: Vec<UsageRecord> = (0..100)
        .map(|i| UsageRecord::new(u.id, Product::KUMORI, "images", 1, format!("b-{i}")))
        .collect();
    batch.push(UsageRecord::new(u.id, Product::KUMORI, "images", 1, "b-5"));
    assert_eq!(h.usage().record_batch(&batch).await.unwrap(), 99);
    assert_eq!(
        h.usage().record_batch(&batch).await.unwrap(),
        0,
        "a retried batch counts nothing"
    );
    assert_eq!(h.usage().record_batch(&[]).await.unwrap(), 0);
    let since = h.clock.now() - TimeDelta::days(1);
    assert_eq!(
        h.usage()
            .usage_since(u.id, &Product::KUMORI, "images", since)
            .await
            .unwrap(),
        100
    );
}

/// One invalid row (or unknown user) rejects the whole batch; nothing is written.
pub async fn usage_batch_all_or_nothing(h: &Harness) {
    let u = user(h, "user_use4").await;
    let mut batch: Vec<UsageRecord> = (0..10)
        .map(|i| UsageRecord::new(u.id, Product::ARBOR, "api_calls", 1, format!("n-{i}")))
        .collect();
    batch[7].quantity = -5;
    let err = h.usage().record_batch(&batch).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("row 7"), "names the row: {err}");
    batch[7].quantity = 5;
    batch[3].user_id = Uuid::new_v4();
    assert_kind(
        h.usage().record_batch(&batch).await,
        ErrorKind::InvalidInput,
        "unknown user in a batch",
    );
    let since = h.clock.now() - TimeDelta::days(1);
    assert_eq!(
        h.usage()
            .usage_since(u.id, &Product::ARBOR, "api_calls", since)
            .await
            .unwrap(),
        0
    );
}

/// Sums over a period `[from, to)` on known data; other users/products/metrics never count.
pub async fn usage_period_sums(h: &Harness) {
    let a = user(h, "user_sum_a").await;
    let b = user(h, "user_sum_b").await;
    let t0 = start_time();
    let at = |hours: i64| t0 + TimeDelta::hours(hours);
    let rows = [
        (a.id, Product::ARBOR, "api_calls", 5, at(0)),
        (a.id, Product::ARBOR, "api_calls", 7, at(1)),
        (a.id, Product::ARBOR, "api_calls", 11, at(2)),
        (a.id, Product::ARBOR, "tokens", 1000, at(1)),
        (a.id, Product::KUMORI, "api_calls", 13, at(1)),
        (b.id, Product::ARBOR, "api_calls", 17, at(1)),
    ];
    let batch: Vec<UsageRecord> = rows
        .iter()
        .enumerate()
        .map(|(i, (u, p, m, q, t))| {
            UsageRecord::new(*u, p.clone(), *m, *q, format!("sum-{i}")).with_recorded_at(*t)
        })
        .collect();
    assert_eq!(h.usage().record_batch(&batch).await.unwrap(), 6);
    let sum = |from: i64, to: i64| {
        let period = Period::new(at(from), at(to)).unwrap();
        async move {
            h.usage()
                .sum(a.id, &Product::ARBOR, "api_calls", period)
                .await
                .unwrap()
        }
    };
    assert_eq!(sum(0, 3).await, 23);
    assert_eq!(sum(0, 2).await, 12, "end is exclusive");
    assert_eq!(sum(1, 2).await, 7, "start is inclusive");
    assert_eq!(sum(3, 4).await, 0);
    assert_eq!(
        h.usage()
            .usage_since(a.id, &Product::ARBOR, "api_calls", at(1))
            .await
            .unwrap(),
        18
    );
    assert_eq!(
        h.usage()
            .sum(
                b.id,
                &Product::ARBOR,
                "api_calls",
                Period::new(at(0), at(3)).unwrap()
            )
            .await
            .unwrap(),
        17
    );
    assert!(
        Period::new(at(2), at(1)).is_err(),
        "an inverted period is rejected"
    );
}

/// DAU/MAU and active users over a period on known data.
pub async fn usage_active_users(h: &Harness) {
    let now = start_time();
    let mut users = Vec::new();
    for i in 0..5 {
        users.push(user(h, &format!("user_au{i}")).await);
    }
    // (user index, product, age)
    let rows = [
        (0, Product::ARBOR, TimeDelta::zero()),
        (0, Product::ARBOR, TimeDelta::hours(2)), // same user twice: counts once
        (1, Product::ARBOR, TimeDelta::hours(23)),
        (2, Product::ARBOR, TimeDelta::hours(24)), // exactly 24 h old: not daily
        (2, Product::ARBOR, TimeDelta::days(10)),
        (3, Product::ARBOR, TimeDelta::days(29)),
        (4, Product::ARBOR, TimeDelta::days(30)), // exactly 30 days old: not monthly
        (4, Product::KUMORI, TimeDelta::hours(1)),
    ];
    let batch: Vec<UsageRecord> = rows
        .iter()
        .enumerate()
        .map(|(i, (u, p, age))| {
            UsageRecord::new(users[*u].id, p.clone(), "api_calls", 1, format!("au-{i}"))
                .with_recorded_at(now - *age)
        })
        .collect();
    h.usage().record_batch(&batch).await.unwrap();
    assert_eq!(h.usage().daily_active_users(&Product::ARBOR).await.unwrap(), 2);
    assert_eq!(h.usage().monthly_active_users(&Product::ARBOR).await.unwrap(), 4);
    assert_eq!(h.usage().daily_active_users(&Product::KUMORI).await.unwrap(), 1);
    assert_eq!(h.usage().monthly_active_users(&Product::KUMORI).await.unwrap(), 1);
    let last_week = Period::new(now - TimeDelta::days(7), now + TimeDelta::seconds(1)).unwrap();
    assert_eq!(
        h.usage().active_users(&Product::ARBOR, last_week).await.unwrap(),
        3
    );
    // Time moves on: yesterday's users drop out of the daily count.
    h.clock.advance(Duration::from_secs(22 * 3600));
    assert_eq!(h.usage().daily_active_users(&Product::ARBOR).await.unwrap(), 1);
    assert_kind(
        h.usage().daily_active_users(&Product::new("nope").unwrap()).await,
        ErrorKind::InvalidInput,
        "unknown product",
    );
}

/// `recorded_at` defaults to the clock's now.
pub async fn usage_default_time_from_clock(h: &Harness) {
    let u = user(h, "user_use5").await;
    h.clock.advance(Duration::from_secs(3600));
    let now = h.clock.now();
    h.usage()
        .record(&UsageRecord::new(u.id, Product::KUMORI, "images", 2, "clock-1"))
        .await
        .unwrap();
    let just_now = Period::new(now, now + TimeDelta::microseconds(1)).unwrap();
    assert_eq!(
        h.usage()
            .sum(u.id, &Product::KUMORI, "images", just_now)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        h.usage()
            .usage_since(u.id, &Product::KUMORI, "images", now + TimeDelta::seconds(1))
            .await
            .unwrap(),
        0
    );
}

/// Times are kept to the microsecond, as Postgres stores them: a part below it is
/// dropped before anything is stored or compared, so a boundary falls the same way on
/// every implementation.
pub async fn times_are_kept_to_the_microsecond(h: &Harness) {
    let u = user(h, "user_micros").await;
    let t = h.clock.now();
    let ns = TimeDelta::nanoseconds;
    // Stored as exactly 24 h old: not a daily user.
    let day_old = UsageRecord::new(u.id, Product::ARBOR, "api_calls", 1, "micro-1")
        .with_recorded_at(t - TimeDelta::days(1) + ns(500));
    h.usage().record(&day_old).await.unwrap();
    assert_eq!(h.usage().daily_active_users(&Product::ARBOR).await.unwrap(), 0);
    // Stored at `t`, in a period starting at `t` + 500 ns, that is at `t`.
    let at_t = UsageRecord::new(u.id, Product::ARBOR, "images", 3, "micro-2").with_recorded_at(t + ns(200));
    h.usage().record(&at_t).await.unwrap();
    let period = Period::new(t + ns(500), t + TimeDelta::seconds(1)).unwrap();
    assert_eq!(
        h.usage()
            .sum(u.id, &Product::ARBOR, "images", period)
            .await
            .unwrap(),
        3
    );
    let sub = h
        .subs()
        .upsert_current(SubscriptionUpsert::new(u.id, Product::ARBOR, "pro").with_started_at(t + ns(700)))
        .await
        .unwrap();
    assert_eq!(sub.started_at, t, "started_at as stored");
    // An expiry at `t` + 300 ns is `t`, the stored start: not before it.
    let same = h
        .subs()
        .upsert_current(SubscriptionUpsert::new(u.id, Product::ARBOR, "pro").with_expires_at(t + ns(300)))
        .await
        .unwrap();
    assert_eq!(same.expires_at, Some(t));
    // A new subscription starting now (900 ns into a microsecond) may expire 500 ns
    // earlier: as stored, both are the same microsecond.
    h.clock.advance(Duration::from_nanos(1_000_900));
    let now = h.clock.now();
    let fresh = h
        .subs()
        .upsert_current(
            SubscriptionUpsert::new(u.id, Product::KUMORI, "premium").with_expires_at(now - ns(500)),
        )
        .await
        .unwrap();
    assert_eq!(fresh.started_at, fresh.expires_at.unwrap());
}

// --- processed events ---------------------------------------------------------

/// `first_time` is true once, then false; providers are separate namespaces.
pub async fn events_first_time_once(h: &Harness) {
    assert!(h.events().first_time("stripe", "evt_1").await.unwrap());
    assert!(!h.events().first_time("stripe", "evt_1").await.unwrap());
    assert!(h.events().first_time("clerk", "evt_1").await.unwrap());
    assert!(h.events().first_time("stripe", "evt_2").await.unwrap());
}

/// A forgotten event (its handling failed) is first again when redelivered; forgetting
/// is per provider and safe to repeat.
pub async fn events_forget_lets_a_redelivery_through(h: &Harness) {
    let events = h.events();
    assert!(events.first_time("stripe", "evt_retry").await.unwrap());
    assert!(events.first_time("clerk", "evt_retry").await.unwrap());
    assert!(events.forget("stripe", "evt_retry").await.unwrap());
    assert!(!events.forget("stripe", "evt_retry").await.unwrap());
    assert!(!events.forget("stripe", "evt_never_seen").await.unwrap());
    assert!(events.first_time("stripe", "evt_retry").await.unwrap());
    assert!(!events.first_time("stripe", "evt_retry").await.unwrap());
    // The other provider's event stayed processed.
    assert!(!events.first_time("clerk", "evt_retry").await.unwrap());
}

/// Of 30 concurrent calls for one event exactly one is first.
pub async fn events_concurrent_exactly_one(h: &Harness) {
    let mut set = JoinSet::new();
    for _ in 0..30 {
        let events = Arc::clone(&h.repos.events);
        set.spawn(async move { events.first_time("resend", "msg_race").await });
    }
    let mut firsts = 0;
    while let Some(joined) = set.join_next().await {
        if joined.unwrap().unwrap() {
            firsts += 1;
        }
    }
    assert_eq!(firsts, 1);
}

/// Malformed providers and empty event ids are `InvalidInput`.
pub async fn events_bad_input_rejected(h: &Harness) {
    for (provider, id) in [
        ("", "e"),
        ("Stripe", "e"),
        ("stripe; drop", "e"),
        ("stripe", ""),
        ("stripe", "evt_\0"),
    ] {
        assert_kind(
            h.events().first_time(provider, id).await,
            ErrorKind::InvalidInput,
            &format!("{provider:?}/{id:?}"),
        );
        assert_kind(
            h.events().forget(provider, id).await,
            ErrorKind::InvalidInput,
            &format!("forget {provider:?}/{id:?}"),
        );
    }
}

/// Generates one `#[tokio::test]` per conformance case, calling `$factory().await`
/// for a fresh `(Harness, guard)` in each.
#[macro_export]
macro_rules! repository_conformance {
    ($factory:path) => {
        $crate::repository_conformance!(@cases $factory;
            users_create_new,
            users_existing_returned,
            users_email_change_updates,
            users_concurrent_get_or_create_one_row,
            users_bad_input_rejected,
            users_unknown_is_none,
            users_update_email,
            users_stripe_customer_id,
            subscriptions_create_current,
            subscriptions_same_tier_updates_in_place,
            subscriptions_tier_change_keeps_history,
            subscriptions_invalid_rejected,
            subscriptions_expire,
            subscriptions_concurrent_one_current,
            usage_duplicate_key_records_once,
            usage_key_reused_with_other_payload_conflicts,
            usage_batch_key_conflict_refuses_whole_batch,
            usage_invalid_rejected,
            usage_batch_dedupes,
            usage_batch_all_or_nothing,
            usage_period_sums,
            usage_active_users,
            usage_default_time_from_clock,
            times_are_kept_to_the_microsecond,
            events_first_time_once,
            events_forget_lets_a_redelivery_through,
            events_concurrent_exactly_one,
            events_bad_input_rejected,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let (harness, guard) = $factory().await;
                $crate::conformance::$case(&harness).await;
                drop(harness);
                drop(guard);
            }
        )*
    };
}
