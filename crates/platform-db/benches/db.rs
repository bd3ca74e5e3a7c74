//! Repository overhead and batch speed-up on the local Postgres (start it with
//! `scripts/services.sh`; admin URL from `PLATFORM_TEST_DATABASE_URL`, else
//! `DATABASE_URL`, else `postgres://postgres:postgres@127.0.0.1:5432/postgres`).
//! Each benchmark runs in a fresh database, dropped at the end.
//!
//! - `get_or_create_user/repository` vs `get_or_create_user/raw_sqlx`: the same
//!   statement through the repository (validation, span, retry wrapper, mapping) and
//!   through bare sqlx. Target: within 5 %.
//! - `usage_10k/record_batch` vs `usage_10k/single_inserts`: 10,000 rows in one
//!   `record_batch` vs 10,000 single-row inserts. Target: at least 20x faster.
//!
//! `cargo bench -p platform-db --bench db -- --warm-up-time 1 --measurement-time 3`
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "criterion_group! generates undocumented items; a benchmark fails loudly"
)]

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use platform_core::{Product, ProductCatalog, SecretString, system_clock};
use platform_db::{DatabaseBuilder, GET_OR_CREATE_USER_SQL, RECORD_USAGE_SQL, UsageRecord};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

fn admin_url() -> String {
    ["PLATFORM_TEST_DATABASE_URL", "DATABASE_URL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn admin_exec(sql: String) {
    let mut conn = PgConnection::connect(&admin_url()).await.unwrap_or_else(|e| {
        panic!("cannot reach the bench Postgres server ({e}); start it with `scripts/services.sh`")
    });
    sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
    conn.close().await.ok();
}

type UserTuple = (Uuid, String, String, Option<String>, DateTime<Utc>, DateTime<Utc>);

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let name = format!("platform_b_{}", Uuid::new_v4().simple());
    rt.block_on(admin_exec(format!("CREATE DATABASE \"{name}\"")));
    let url = PgConnectOptions::from_str(&admin_url())
        .unwrap()
        .database(&name)
        .to_url_lossy()
        .to_string();
    let db = rt.block_on(async {
        let db = DatabaseBuilder::new()
            .with_url(SecretString::from(url))
            .with_catalog(ProductCatalog::default())
            .with_clock(system_clock())
            .with_max_connections(4)
            .build()
            .unwrap();
        db.migrate().await.unwrap();
        db
    });
    let repos = db.repositories();
    let pool = db.pool().clone();

    let mut group = c.benchmark_group("get_or_create_user");
    group.bench_function("repository", |b| {
        b.iter(|| {
            rt.block_on(repos.users.get_or_create_user("user_bench", "bench@example.com"))
                .unwrap()
        })
    });
    group.bench_function("raw_sqlx", |b| {
        b.iter(|| {
            rt.block_on(
                sqlx::query_as::<_, UserTuple>(GET_OR_CREATE_USER_SQL)
                    .bind("user_bench")
                    .bind("bench@example.com")
                    .bind(Utc::now())
                    .fetch_one(&pool),
            )
            .unwrap()
        })
    });
    group.finish();

    let user = rt
        .block_on(repos.users.get_or_create_user("user_bench", "bench@example.com"))
        .unwrap();
    let counter = AtomicU64::new(0);
    let rows = |counter: &AtomicU64| -> Vec<UsageRecord> {
        let batch = counter.fetch_add(1, Ordering::Relaxed);
        (0..10_000)
            .map(|i| UsageRecord::new(user.id, Product::ARBOR, "api_calls", 1, format!("b{batch}-{i}")))
            .collect()
    };
    let mut group = c.benchmark_group("usage_10k");
    group.sample_size(10);
    group.bench_function("record_batch", |b| {
        b.iter(|| {
            let records = rows(&counter);
            let n = rt.block_on(repos.usage.record_batch(&records)).unwrap();
            assert_eq!(n, 10_000);
        })
    });
    group.bench_function("single_inserts", |b| {
        b.iter(|| {
            let records = rows(&counter);
            rt.block_on(async {
                let now = Utc::now();
                for r in &records {
                    sqlx::query(RECORD_USAGE_SQL)
                        .bind(r.user_id)
                        .bind(r.product.as_str())
                        .bind(&r.metric)
                        .bind(r.quantity)
                        .bind(&r.idempotency_key)
                        .bind(now)
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            })
        })
    });
    group.finish();

    rt.block_on(db.close());
    rt.block_on(admin_exec(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )));
}

criterion_group!(db_benches, benches);
criterion_main!(db_benches);
