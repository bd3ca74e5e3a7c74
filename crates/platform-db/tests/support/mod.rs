//! A fresh database per test on the local server, dropped at the end.

use std::str::FromStr;

use platform_core::{ManualClock, ProductCatalog, SecretString};
use platform_db::{Database, DatabaseBuilder};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};

const DEFAULT_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

/// The admin URL: `PLATFORM_TEST_DATABASE_URL`, else `DATABASE_URL`, else the local default.
pub(crate) fn admin_url() -> String {
    ["PLATFORM_TEST_DATABASE_URL", "DATABASE_URL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

async fn admin() -> PgConnection {
    let url = admin_url();
    match PgConnection::connect(&url).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "cannot reach the test Postgres server ({e}); start it with `scripts/services.sh` \
             (or point PLATFORM_TEST_DATABASE_URL at one)"
        ),
    }
}

/// A database created for one test. `drop_db` removes it; if the test panics first,
/// `Drop` removes it on a helper thread.
pub(crate) struct TestDb {
    name: String,
    url: String,
    dropped: bool,
}

impl TestDb {
    pub(crate) async fn create() -> Self {
        let name = format!("platform_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin().await;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        let url = PgConnectOptions::from_str(&admin_url())
            .unwrap()
            .database(&name)
            .to_url_lossy()
            .to_string();
        Self {
            name,
            url,
            dropped: false,
        }
    }

    pub(crate) fn builder(&self, catalog: ProductCatalog, clock: ManualClock) -> DatabaseBuilder {
        DatabaseBuilder::new()
            .with_url(SecretString::from(self.url.clone()))
            .with_catalog(catalog)
            .with_clock(clock.shared())
    }

    /// The URL of this database.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn database(&self, catalog: ProductCatalog, clock: ManualClock) -> Database {
        self.builder(catalog, clock).build().unwrap()
    }

    /// Terminates every other backend connected to this database; returns how many.
    pub(crate) async fn terminate_backends(&self) -> i64 {
        let mut conn = admin().await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) t",
        )
        .bind(&self.name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.ok();
        n
    }

    pub(crate) async fn drop_db(mut self) {
        drop_database(&self.name).await;
        self.dropped = true;
    }
}

async fn drop_database(name: &str) {
    let mut conn = admin().await;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(drop_database(&name)))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("could not drop test database {}", self.name);
        }
    }
}
