//! The behaviour suite and the Postgres-only guarantees against the real server on
//! 127.0.0.1:5432 (start it with `scripts/services.sh`). Every test creates its own
//! database and drops it at the end.
//!
//! The admin URL comes from `PLATFORM_TEST_DATABASE_URL`, else `DATABASE_URL`, else
//! `postgres://postgres:postgres@127.0.0.1:5432/postgres`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::time::Duration;

use platform_core::{
    Clock, ErrorKind, ManualClock, Product, ProductCatalog, ProductConfig, RetryPolicy, SecretString,
};
use platform_db::conformance::{Harness, start_time};
use platform_db::{Database, DatabaseBuilder, PoolerMode, Repositories, Schema, UsageRecord};
use sqlx::{Connection, PgConnection};
use support::TestDb;

async fn harness() -> (Harness, TestDb) {
    let test_db = TestDb::create().await;
    let clock = ManualClock::new(start_time());
    let catalog = ProductCatalog::default();
    let db = test_db.database(catalog.clone(), clock.clone());
    db.migrate().await.unwrap();
    (Harness::new(Repositories::postgres(&db), clock, catalog), test_db)
}

platform_db::repository_conformance!(harness);

/// Tables, columns, constraints, indexes, triggers and functions of the database.
async fn fingerprint(db: &Database) -> Vec<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT 'col ' || table_schema || '.' || table_name || '.' || column_name || ' ' || data_type || ' ' || coalesce(column_default, '')
           FROM information_schema.columns WHERE table_schema IN ('shared', 'arbor', 'kumori')
         UNION ALL
         SELECT 'con ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
           FROM pg_constraint WHERE connamespace::regnamespace::text IN ('shared', 'arbor', 'kumori')
         UNION ALL
         SELECT 'idx ' || schemaname || ' ' || indexdef FROM pg_indexes WHERE schemaname IN ('shared', 'arbor', 'kumori')
         UNION ALL
         SELECT 'trg ' || tgrelid::regclass::text || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal
         UNION ALL
         SELECT 'fn ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc) FROM pg_proc p
           WHERE p.pronamespace::regnamespace::text = 'shared'
         UNION ALL
         SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
         UNION ALL
         SELECT 'migration ' || version || ' ' || success || ' ' || encode(checksum, 'hex') FROM shared._sqlx_migrations
         ORDER BY 1",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn migrations_applied_twice_change_nothing() {
    let test_db = TestDb::create().await;
    let db = test_db.database(ProductCatalog::default(), ManualClock::new(start_time()));
    db.migrate().await.unwrap();
    let first = fingerprint(&db).await;
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("col shared.users.stripe_customer_id"))
    );
    assert!(
        first
            .iter()
            .any(|l| l.contains("usage_metrics_idempotency_key_key"))
    );
    assert!(
        first
            .iter()
            .any(|l| l.contains("subscriptions_one_current_idx") && l.contains("WHERE is_current"))
    );
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("col shared.processed_events.event_id"))
    );
    assert!(first.iter().any(|l| l == "schema arbor") && first.iter().any(|l| l == "schema kumori"));
    assert!(first.iter().any(|l| l.contains("gen_random_uuid()")));
    db.migrate().await.unwrap();
    // A second process (a fresh pool) running them again changes nothing either.
    let other = test_db.database(ProductCatalog::default(), ManualClock::new(start_time()));
    other.migrate().await.unwrap();
    assert_eq!(fingerprint(&db).await, first);
    // The SQL itself is idempotent too (safe on a database set up by the seed's scripts).
    sqlx::raw_sql(include_str!("../migrations/20261127000001_shared_schema.sql"))
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(fingerprint(&db).await, first);
    test_db.drop_db().await;
}

#[tokio::test]
async fn migrate_creates_a_schema_per_catalogue_product_and_runs_product_migrations() {
    let test_db = TestDb::create().await;
    let arbor = ProductCatalog::default().get(&Product::ARBOR).unwrap().clone();
    let third = Product::new("tree-house").unwrap();
    let catalog = ProductCatalog::default()
        .with_product(
            third.clone(),
            ProductConfig {
                display_name: "Tree House".into(),
                ..arbor
            },
        )
        .unwrap();
    let clock = ManualClock::new(start_time());
    let db = test_db.database(catalog.clone(), clock.clone());
    db.migrate().await.unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'tree_house')")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert!(exists, "schema of a product added by configuration");

    let migrator = sqlx::migrate!("./tests/product_migrations");
    db.migrate_product(&third, &migrator).await.unwrap();
    db.migrate_product(&third, &migrator).await.unwrap();
    let user = db
        .repositories()
        .users
        .get_or_create_user("user_th", "th@example.com")
        .await
        .unwrap();
    let pool = db.pool_for(third.clone()).unwrap();
    sqlx::query("INSERT INTO agents (user_id, name) VALUES ($1, 'a1')")
        .bind(user.id)
        .execute(&pool)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tree_house.agents")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM tree_house._sqlx_migrations")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(applied, 1, "recorded once, in the product's schema");
    // A migrator without the applied migration (a rollback deploy) is a conflict,
    // unless it says to ignore missing migrations: its own settings are kept.
    let mut older = sqlx::migrate::Migrator::with_migrations(Vec::new());
    assert_eq!(
        db.migrate_product(&third, &older).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    older.set_ignore_missing(true);
    db.migrate_product(&third, &older).await.unwrap();
    let unknown = Product::new("not-listed").unwrap();
    assert_eq!(
        db.migrate_product(&unknown, &migrator).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    test_db.drop_db().await;
}

#[tokio::test]
async fn search_path_per_schema_and_malicious_names_refused() {
    let test_db = TestDb::create().await;
    let db = test_db.database(ProductCatalog::default(), ManualClock::new(start_time()));
    db.migrate().await.unwrap();
    for (schema, expected) in [
        (Schema::Shared, "\"shared\""),
        (Schema::from(Product::ARBOR), "\"arbor\""),
        (Schema::from(Product::KUMORI), "\"kumori\""),
    ] {
        let pool = db.pool_for(schema.clone()).unwrap();
        let path: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(path, expected, "{schema}");
        let current: Option<String> = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(current.as_deref(), Some(schema.name().as_str()));
    }
    // Unqualified names resolve in the pool's schema.
    sqlx::query("CREATE TABLE t (product text)")
        .execute(&db.pool_for(Product::ARBOR).unwrap())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (product text)")
        .execute(&db.pool_for(Product::KUMORI).unwrap())
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES ('arbor')")
        .execute(&db.pool_for_name("arbor").unwrap())
        .await
        .unwrap();
    let kumori_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&db.pool_for_name("kumori").unwrap())
        .await
        .unwrap();
    assert_eq!(kumori_rows, 0);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db.pool_for_name("shared").unwrap())
        .await
        .unwrap();
    assert_eq!(users, 0);

    // Malicious or unknown names are refused before any SQL: a database that cannot be
    // reached still answers InvalidInput, never Unavailable.
    let unreachable = DatabaseBuilder::new()
        .with_url(SecretString::from(
            "postgres://postgres:postgres@127.0.0.1:1/nothing",
        ))
        .with_acquire_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    for name in [
        "arbor; DROP SCHEMA shared CASCADE",
        "arbor\"; DROP SCHEMA shared; --",
        "public",
        "pg_catalog",
        "ARBOR",
        "",
        "shared, public",
        "evil",
    ] {
        for database in [&db, &unreachable] {
            let err = database.pool_for_name(name).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}: {err}");
        }
    }
    let shared_still_there: i64 = sqlx::query_scalar("SELECT count(*) FROM shared.users")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(shared_still_there, 0);
    test_db.drop_db().await;
}

#[tokio::test]
async fn pool_recovers_after_backends_are_terminated() {
    let test_db = TestDb::create().await;
    let db = test_db.database(ProductCatalog::default(), ManualClock::new(start_time()));
    db.migrate().await.unwrap();
    let repos = db.repositories();
    let user = repos
        .users
        .get_or_create_user("user_rec", "rec@example.com")
        .await
        .unwrap();
    // Warm several connections so the pool holds idle ones that are about to die.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let users = repos.users.clone();
        set.spawn(async move { users.get_user(user.id).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    let killed = test_db.terminate_backends().await;
    assert!(killed >= 1, "terminated {killed} backends");
    // The very next calls succeed on fresh connections.
    let again = repos.users.get_user(user.id).await.unwrap();
    assert_eq!(again.map(|u| u.id), Some(user.id));
    let same = repos
        .users
        .get_or_create_user("user_rec", "rec@example.com")
        .await
        .unwrap();
    assert_eq!(same.id, user.id);
    db.health().await.unwrap();
    test_db.drop_db().await;
}

/// A statement waiting on a lock another session holds is cancelled by the server
/// after the statement timeout, or abandoned by the client after the call timeout
/// (which also holds in transaction mode, where no statement timeout is sent): either
/// way the call fails with `Timeout` instead of hanging, and the pool's connections
/// stay usable.
#[tokio::test]
async fn a_call_blocked_on_a_lock_times_out() {
    let test_db = TestDb::create().await;
    let builders = [
        test_db
            .builder(ProductCatalog::default(), ManualClock::new(start_time()))
            .with_statement_timeout(Some(Duration::from_millis(500))),
        test_db
            .builder(ProductCatalog::default(), ManualClock::new(start_time()))
            .with_pooler_mode(PoolerMode::Transaction)
            .with_call_timeout(Duration::from_millis(500)),
    ];
    for (i, builder) in builders.into_iter().enumerate() {
        let db = builder.with_retry_policy(RetryPolicy::never()).build().unwrap();
        if i == 0 {
            // Migrations need a session; the transaction-mode database finds them done.
            db.migrate().await.unwrap();
        }
        let users = db.repositories().users;
        let user = users
            .get_or_create_user(&format!("user_lock_{i}"), &format!("lock{i}@example.com"))
            .await
            .unwrap();
        let mut holder = hold_row(
            test_db.url(),
            "SELECT 1 FROM shared.users WHERE id = $1 FOR UPDATE",
            user.id,
        )
        .await;
        let blocked = tokio::time::timeout(
            Duration::from_secs(60),
            users.update_email(user.id, &format!("new{i}@example.com")),
        )
        .await
        .expect("the timeout must end the call");
        let err = blocked.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{i}: {err}");
        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        holder.close().await.unwrap();
        let updated = users
            .update_email(user.id, &format!("new{i}@example.com"))
            .await
            .unwrap();
        assert_eq!(updated.email, format!("new{i}@example.com"));
    }
    test_db.drop_db().await;
}

/// A statement timeout is sent in whole milliseconds, rounded up: one under a
/// millisecond must not become 0, Postgres's "no limit".
#[tokio::test]
async fn a_sub_millisecond_statement_timeout_is_not_no_limit() {
    let test_db = TestDb::create().await;
    for (timeout, shown) in [
        (Duration::from_micros(500), "1ms"),
        (Duration::from_micros(1500), "2ms"),
    ] {
        let db = test_db
            .builder(ProductCatalog::default(), ManualClock::new(start_time()))
            .with_statement_timeout(Some(timeout))
            .build()
            .unwrap();
        let setting: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(setting, shown, "{timeout:?}");
        db.close().await;
    }
    test_db.drop_db().await;
}

/// A connection of its own holding the row `$1` = `id` locks (`lock`: a `SELECT … FOR
/// UPDATE`) in an open transaction, until it rolls back or is dropped.
async fn hold_row(url: &str, lock: &'static str, id: uuid::Uuid) -> PgConnection {
    let mut holder = PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(lock).bind(id).execute(&mut holder).await.unwrap();
    holder
}

/// Waits until `n` sessions of the test database wait for a lock (polling the server's
/// view of its sessions; bounded).
async fn until_waiting_for_locks(conn: &mut PgConnection, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{waiting} of {n} sessions wait for a lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An `expire` made while a tier change is under way applies after it, to the new
/// subscription: it neither misses both rows (`NotFound`, leaving the upgrade current:
/// a cancellation lost) nor expires the row the change replaced.
#[tokio::test]
async fn expire_racing_a_tier_change_expires_the_new_subscription() {
    use platform_db::SubscriptionUpsert;
    let (h, test_db) = harness().await;
    let user = h
        .repos
        .users
        .get_or_create_user("user_race", "race@example.com")
        .await
        .unwrap();
    let subs = h.repos.subscriptions.clone();
    let free = subs
        .upsert_current(SubscriptionUpsert::new(user.id, Product::KUMORI, "free"))
        .await
        .unwrap();
    // Hold the current row so that the tier change stops on it, inside its transaction.
    let mut holder = hold_row(
        test_db.url(),
        "SELECT 1 FROM shared.subscriptions WHERE id = $1 FOR UPDATE",
        free.id,
    )
    .await;
    let mut watcher = PgConnection::connect(test_db.url()).await.unwrap();
    let upgrade = tokio::spawn({
        let subs = subs.clone();
        async move {
            subs.upsert_current(SubscriptionUpsert::new(user.id, Product::KUMORI, "premium"))
                .await
        }
    });
    until_waiting_for_locks(&mut watcher, 1).await;
    let expire = tokio::spawn({
        let subs = subs.clone();
        async move { subs.expire(user.id, &Product::KUMORI).await }
    });
    until_waiting_for_locks(&mut watcher, 2).await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let premium = upgrade.await.unwrap().unwrap();
    let expired = expire
        .await
        .unwrap()
        .expect("the expiry applies after the upgrade");
    assert_eq!(expired.id, premium.id);
    assert_eq!(subs.get_current(user.id, &Product::KUMORI).await.unwrap(), None);
    test_db.drop_db().await;
}

#[tokio::test]
async fn errors_map_to_platform_kinds() {
    let test_db = TestDb::create().await;
    let db = test_db.database(ProductCatalog::default(), ManualClock::new(start_time()));
    db.migrate().await.unwrap();
    let map = platform_db::map_sqlx_error;
    // Unique violation -> Conflict.
    sqlx::query("INSERT INTO shared.users (clerk_id, email) VALUES ('u1', 'a@b.c')")
        .execute(db.pool())
        .await
        .unwrap();
    let e = sqlx::query("INSERT INTO shared.users (clerk_id, email) VALUES ('u1', 'a@b.c')")
        .execute(db.pool())
        .await
        .unwrap_err();
    let e = map(e);
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(e.provider(), Some("postgres"));
    assert!(
        std::error::Error::source(&e).is_some(),
        "sqlx error kept as source"
    );
    // Foreign key and check violations -> InvalidInput.
    let fk =
        sqlx::query("INSERT INTO shared.processed_events (provider, event_id) VALUES ('Bad Provider', 'x')")
            .execute(db.pool())
            .await
            .unwrap_err();
    assert_eq!(map(fk).kind(), ErrorKind::InvalidInput);
    let fk = sqlx::query(
        "INSERT INTO shared.usage_metrics (user_id, product, metric, quantity, idempotency_key) \
         VALUES (gen_random_uuid(), 'arbor', 'm', 1, 'k')",
    )
    .execute(db.pool())
    .await
    .unwrap_err();
    assert_eq!(map(fk).kind(), ErrorKind::InvalidInput);
    // Pool exhausted -> Timeout.
    let tight = test_db
        .builder(ProductCatalog::default(), ManualClock::new(start_time()))
        .with_max_connections(1)
        .with_acquire_timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let held = tight.pool().acquire().await.unwrap();
    let e = tight.health().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.is_retryable());
    drop(held);
    tight.health().await.unwrap();
    // Nothing listening -> Unavailable (retryable).
    let refused = DatabaseBuilder::new()
        .with_url(SecretString::from(
            "postgres://postgres:postgres@127.0.0.1:1/none",
        ))
        .with_acquire_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let e = refused.health().await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{e:?}"
    );
    assert!(e.is_retryable());
    // A closed database -> Unavailable.
    tight.close().await;
    assert_eq!(tight.health().await.unwrap_err().kind(), ErrorKind::Unavailable);
    test_db.drop_db().await;
}

/// Errors the real server raises map to their kinds: each SQLSTATE the mapping names,
/// raised by a `DO` block, and a connection to a database that does not exist.
#[tokio::test]
async fn server_errors_map_to_their_kinds() {
    let test_db = TestDb::create().await;
    let db = test_db.database(ProductCatalog::default(), ManualClock::new(start_time()));
    for (code, kind) in [
        ("23505", ErrorKind::Conflict),
        ("23503", ErrorKind::InvalidInput),
        ("22001", ErrorKind::InvalidInput),
        ("08006", ErrorKind::Unavailable),
        ("53300", ErrorKind::Unavailable),
        ("40001", ErrorKind::Unavailable),
        ("25006", ErrorKind::Unavailable),
        ("57014", ErrorKind::Timeout),
        ("55P03", ErrorKind::Timeout),
        ("28P01", ErrorKind::Unauthenticated),
        ("28000", ErrorKind::Unauthenticated),
        ("42501", ErrorKind::PermissionDenied),
        ("3D000", ErrorKind::Config),
        ("42P01", ErrorKind::Unexpected),
    ] {
        let sql = format!("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}'; END $$");
        let raised = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(db.pool())
            .await
            .unwrap_err();
        let e = platform_db::map_sqlx_error(raised);
        assert_eq!(e.kind(), kind, "{code}: {e}");
        assert!(e.message().contains(code), "{code}: {e}");
    }
    let (base, _) = test_db.url().rsplit_once('/').unwrap();
    let missing = DatabaseBuilder::new()
        .with_url(SecretString::from(format!("{base}/platform_no_such_database")))
        .build()
        .unwrap();
    let e = missing.health().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    test_db.drop_db().await;
}

/// A `first_time` whose insert outlives its call timeout (here it waits on another
/// transaction's uncommitted mark of the same event) is rolled back, not committed
/// once the lock is gone: after the caller's `forget` (as `first_time`'s docs ask after
/// a failure), the provider's redelivery is handled, not skipped.
#[tokio::test]
async fn a_timed_out_first_time_leaves_no_mark_behind() {
    let test_db = TestDb::create().await;
    let db = test_db
        .builder(ProductCatalog::default(), ManualClock::new(start_time()))
        .with_call_timeout(Duration::from_millis(300))
        .with_max_connections(2)
        .build()
        .unwrap();
    db.migrate().await.unwrap();
    let repos = Repositories::postgres(&db);
    let mut other = PgConnection::connect(test_db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query(
        "INSERT INTO shared.processed_events (provider, event_id, processed_at) VALUES ('stripe', 'evt_slow', now())",
    )
    .execute(&mut other)
    .await
    .unwrap();
    let e = repos.events.first_time("stripe", "evt_slow").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        !repos.events.forget("stripe", "evt_slow").await.unwrap(),
        "nothing committed yet"
    );
    // The other transaction gives up its mark: the abandoned insert goes on now.
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    // Both of the pool's connections free: the abandoned attempt's connection is back,
    // its insert answered and its transaction ended.
    let held = (
        db.pool().acquire().await.unwrap(),
        db.pool().acquire().await.unwrap(),
    );
    drop(held);
    assert!(
        repos.events.first_time("stripe", "evt_slow").await.unwrap(),
        "the abandoned insert left a mark: the redelivery would be skipped"
    );
    test_db.drop_db().await;
}

/// Calls cut off by their timeout anywhere, `BEGIN` included, never leave a pool
/// connection inside a transaction (sqlx 0.9.0 does not roll back a `BEGIN` cancelled
/// in flight): after many calls cut short at every point, no connection of the pool is
/// idle in a transaction, and a write through the pool is seen by another connection.
#[tokio::test]
async fn calls_cut_off_anywhere_leave_no_connection_in_a_transaction() {
    let test_db = TestDb::create().await;
    let setup = test_db.database(ProductCatalog::default(), ManualClock::new(start_time()));
    setup.migrate().await.unwrap();
    let db = test_db
        .builder(ProductCatalog::default(), ManualClock::new(start_time()))
        .with_max_connections(2)
        .with_retry_policy(RetryPolicy::default().with_max_attempts(1))
        .build()
        .unwrap();
    let repos = Repositories::postgres(&db);
    let in_transaction = async || -> i64 {
        // Both connections back and idle, each with any abandoned work finished.
        let held = (
            db.pool().acquire().await.unwrap(),
            db.pool().acquire().await.unwrap(),
        );
        drop(held);
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%' AND application_name = 'platform-db'",
        )
        .fetch_one(setup.pool())
        .await
        .unwrap()
    };
    let mut cut_off = 0;
    for i in 0..400u32 {
        // From 0 to 400 µs: about one round trip on loopback, so calls are cut at
        // every step (acquiring, BEGIN, the statement, COMMIT).
        let limit = Duration::from_micros(u64::from(i % 40) * 10);
        let id = format!("evt_cut_{i}");
        if tokio::time::timeout(limit, repos.events.first_time("stripe", &id))
            .await
            .is_err()
        {
            cut_off += 1;
            assert_eq!(
                in_transaction().await,
                0,
                "call {i}: a pool connection left inside a transaction"
            );
        }
    }
    assert!(cut_off > 0, "no call was cut off");
    for n in 0..4 {
        let id = format!("evt_after_{n}");
        assert!(repos.events.first_time("stripe", &id).await.unwrap());
        let seen: i64 =
            sqlx::query_scalar("SELECT count(*) FROM shared.processed_events WHERE event_id = $1")
                .bind(&id)
                .fetch_one(setup.pool())
                .await
                .unwrap();
        assert_eq!(seen, 1, "{id} not committed");
    }
    test_db.drop_db().await;
}

#[tokio::test]
async fn record_batch_of_ten_thousand_rows_in_one_call() {
    let (h, test_db) = harness().await;
    let u = h
        .repos
        .users
        .get_or_create_user("user_bulk", "bulk@example.com")
        .await
        .unwrap();
    let rows: Vec<UsageRecord> = (0..10_000)
        .map(|i| UsageRecord::new(u.id, Product::ARBOR, "api_calls", 1, format!("bulk-{i}")))
        .collect();
    assert_eq!(h.repos.usage.record_batch(&rows).await.unwrap(), 10_000);
    assert_eq!(h.repos.usage.record_batch(&rows).await.unwrap(), 0);
    let since = h.clock.now() - chrono::TimeDelta::days(1);
    assert_eq!(
        h.repos
            .usage
            .usage_since(u.id, &Product::ARBOR, "api_calls", since)
            .await
            .unwrap(),
        10_000
    );
    drop(h);
    test_db.drop_db().await;
}

#[tokio::test]
async fn config_from_env_pairs_and_debug_hides_the_password() {
    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
    };
    let err = DatabaseBuilder::from_iter(pairs(&[])).build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("DATABASE_URL"), "{err}");
    let err = DatabaseBuilder::from_iter(pairs(&[("DATABASE_URL", "mysql://nope")]))
        .build()
        .unwrap_err();
    assert!(err.message().contains("DATABASE_URL"), "{err}");
    let err = DatabaseBuilder::from_iter(pairs(&[
        ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
        ("DATABASE_MAX_CONNECTIONS", "many"),
    ]))
    .build()
    .unwrap_err();
    assert!(err.message().contains("DATABASE_MAX_CONNECTIONS"), "{err}");
    let err = DatabaseBuilder::from_iter(pairs(&[
        ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
        ("DATABASE_POOLER_MODE", "statement"),
    ]))
    .build()
    .unwrap_err();
    assert!(err.message().contains("DATABASE_POOLER_MODE"), "{err}");
    let err = DatabaseBuilder::from_iter(pairs(&[
        ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
        ("DATABASE_STATEMENT_TIMEOUT_SECS", "soon"),
    ]))
    .build()
    .unwrap_err();
    assert!(err.message().contains("DATABASE_STATEMENT_TIMEOUT_SECS"), "{err}");
    // "Wait for ever" would overflow inside the pool on every call; a zero idle
    // timeout would spin the pool's maintenance task, "for ever" overflow in it: all
    // refused, naming the variable.
    for (variable, refused) in [
        (
            "DATABASE_ACQUIRE_TIMEOUT_SECS",
            &["0", "3601", "18446744073709551615"][..],
        ),
        (
            "DATABASE_IDLE_TIMEOUT_SECS",
            &["0", "2592001", "18446744073709551615"],
        ),
        ("DATABASE_CALL_TIMEOUT_SECS", &["0", "3601"]),
    ] {
        for secs in refused {
            let err = DatabaseBuilder::from_iter(pairs(&[
                ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
                (variable, secs),
            ]))
            .build()
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{variable}={secs}");
            assert!(err.message().contains(variable), "{variable}={secs}: {err}");
        }
    }
    // As is a zero lifetime. One second and 30 days of idle timeout build.
    let err = DatabaseBuilder::new()
        .with_url("postgres://u:p@127.0.0.1/db")
        .with_max_lifetime(Some(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(err.message().contains("lifetime"), "{err}");
    for secs in ["1", "2592000"] {
        DatabaseBuilder::from_iter(pairs(&[
            ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
            ("DATABASE_IDLE_TIMEOUT_SECS", secs),
        ]))
        .build()
        .unwrap();
    }

    let builder = DatabaseBuilder::from_iter(pairs(&[(
        "DATABASE_URL",
        "postgres://app:hunter2-secret@ep-cool-123-pooler.eu-central-1.aws.neon.tech/neondb",
    )]));
    assert!(!format!("{builder:?}").contains("hunter2"));
    let db = builder.build().unwrap();
    let shown = format!("{db:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("neondb"), "{shown}");
    // Neon's pooler host switches to transaction mode: no per-schema session state.
    assert_eq!(db.pooler_mode(), PoolerMode::Transaction);
    assert_eq!(
        db.pool_for(Product::ARBOR).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(db.migrate().await.unwrap_err().kind(), ErrorKind::Unsupported);
    let direct = DatabaseBuilder::from_iter(pairs(&[
        (
            "DATABASE_URL",
            "postgres://app:pw@ep-cool-123.eu-central-1.aws.neon.tech/neondb",
        ),
        ("DATABASE_MAX_CONNECTIONS", "3"),
    ]))
    .build()
    .unwrap();
    assert_eq!(direct.pooler_mode(), PoolerMode::Session);
}

#[tokio::test]
async fn repositories_work_behind_transaction_mode_settings() {
    // Transaction mode turns the statement cache off; the schema-qualified repository
    // SQL must still work (here against the direct server with the same settings).
    let test_db = TestDb::create().await;
    let clock = ManualClock::new(start_time());
    let db = test_db.database(ProductCatalog::default(), clock.clone());
    db.migrate().await.unwrap();
    let pooled = test_db
        .builder(ProductCatalog::default(), clock)
        .with_pooler_mode(PoolerMode::Transaction)
        .build()
        .unwrap();
    let repos = pooled.repositories();
    let u = repos
        .users
        .get_or_create_user("user_tx", "tx@example.com")
        .await
        .unwrap();
    assert!(repos.events.first_time("stripe", "evt_tx").await.unwrap());
    assert!(
        repos
            .usage
            .record(&UsageRecord::new(u.id, Product::KUMORI, "images", 1, "tx-1"))
            .await
            .unwrap()
    );
    test_db.drop_db().await;
}

/// A span's fields by name (values as recorded, `#id` added by the collector).
type Fields = std::collections::BTreeMap<String, String>;

/// Collects every span's name and fields (including fields recorded later, like `outcome`).
#[derive(Clone, Default)]
struct SpanCollector {
    spans: std::sync::Arc<std::sync::Mutex<Vec<(String, Fields)>>>,
}

struct FieldVisitor<'a>(&'a mut Fields);

impl tracing::field::Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanCollector
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields::new();
        attrs.record(&mut FieldVisitor(&mut fields));
        fields.insert("#id".to_owned(), id.into_u64().to_string());
        let mut spans = self.spans.lock().unwrap();
        spans.push((attrs.metadata().name().to_owned(), fields));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let id = id.into_u64().to_string();
        let mut spans = self.spans.lock().unwrap();
        if let Some((_, fields)) = spans.iter_mut().rev().find(|(_, f)| f.get("#id") == Some(&id)) {
            values.record(&mut FieldVisitor(fields));
        }
    }
}

impl SpanCollector {
    /// The fields of the spans named `name` whose `operation` is `operation`.
    fn find(&self, name: &str, operation: &str) -> Vec<Fields> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, f)| n == name && f.get("operation").map(String::as_str) == Some(operation))
            .map(|(_, f)| f.clone())
            .collect()
    }
}

// Current-thread runtime: the subscriber is this thread's default, and every span the
// repository creates is created on this thread.
#[tokio::test(flavor = "current_thread")]
async fn repository_calls_emit_spans_with_provider_operation_and_outcome() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let (h, test_db) = harness().await;
    let collector = SpanCollector::default();
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(collector.clone()));

    let u = h
        .repos
        .users
        .get_or_create_user("user_spans", "spans@example.com")
        .await
        .unwrap();
    let first = UsageRecord::new(u.id, Product::ARBOR, "api_calls", 1, "span-1");
    assert!(h.repos.usage.record(&first).await.unwrap());
    let mut changed = first.clone();
    changed.quantity = 2;
    assert_eq!(
        h.repos.usage.record(&changed).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );

    let created = collector.find("db.call", "get_or_create_user");
    assert_eq!(created.len(), 1, "one span per call: {created:?}");
    assert_eq!(created[0].get("provider").map(String::as_str), Some("postgres"));
    assert_eq!(created[0].get("outcome").map(String::as_str), Some("ok"));
    let recorded: Vec<_> = collector
        .find("db.call", "record_usage")
        .into_iter()
        .filter_map(|f| f.get("outcome").cloned())
        .collect();
    assert_eq!(recorded, ["ok", "conflict"]);
    drop(h);
    test_db.drop_db().await;
}
