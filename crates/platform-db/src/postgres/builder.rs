//! [`DatabaseBuilder`] and [`Database`]: connection settings, pools per schema,
//! migrations, health and close.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use platform_core::{
    DynClock, EnvMap, Error, ExposeSecret, Product, ProductCatalog, Result, RetryPolicy, SecretString,
};
use sqlx::AssertSqlSafe;
use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tracing::Instrument;

use super::error::{PROVIDER, map_migrate_error, map_sqlx_error};
use crate::{Repositories, Schema};

/// The longest acquire timeout and call timeout `build` accepts.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The shortest and longest idle timeout and connection lifetime `build` accepts. The
/// pool's maintenance task runs every `min(idle timeout, lifetime)`: at zero it never
/// sleeps (a core spinning per pool, every idle connection closed at once), and
/// `Instant::now()` plus a "for ever" value overflows inside it.
const MIN_CONNECTION_AGE: Duration = Duration::from_secs(1);
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 86_400);

/// How the connection reaches Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PoolerMode {
    /// A direct connection or a session-mode pooler: session state (prepared
    /// statements, `search_path`) lasts for the connection. The default.
    #[default]
    Session,
    /// A transaction-mode pooler such as Neon's PgBouncer (`-pooler` hosts): the
    /// prepared-statement cache is turned off and session state cannot be relied on,
    /// so [`Database::pool_for`] and migrations are refused (`Unsupported`); the
    /// repositories keep working because their SQL is schema-qualified.
    Transaction,
}

impl FromStr for PoolerMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "session" | "direct" | "none" => Ok(Self::Session),
            "transaction" => Ok(Self::Transaction),
            _ => Err(Error::config(
                "environment variable DATABASE_POOLER_MODE is invalid: expected `session` or `transaction`",
            )),
        }
    }
}

/// Builds a [`Database`]: `DatabaseBuilder::from_env().build()?`.
pub struct DatabaseBuilder {
    url: Option<SecretString>,
    max_connections: u32,
    min_connections: u32,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    statement_timeout: Option<Duration>,
    call_timeout: Duration,
    pooler_mode: Option<PoolerMode>,
    catalog: ProductCatalog,
    clock: DynClock,
    retry: RetryPolicy,
    deferred: Option<Error>,
}

impl fmt::Debug for DatabaseBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseBuilder")
            .field("url", &self.url.as_ref().map(|_| "[REDACTED]"))
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("statement_timeout", &self.statement_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("pooler_mode", &self.pooler_mode)
            .finish_non_exhaustive()
    }
}

impl Default for DatabaseBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DatabaseBuilder {
    /// No URL yet; 10 connections per pool, 30 s acquire timeout, 10 min idle timeout,
    /// 30 min lifetime, no statement timeout of its own (the server's or role's
    /// applies), 30 s per repository call attempt, session mode, the seed's catalogue,
    /// the system clock, default retries.
    pub fn new() -> Self {
        Self {
            url: None,
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            statement_timeout: None,
            call_timeout: Duration::from_secs(30),
            pooler_mode: None,
            catalog: ProductCatalog::default(),
            clock: platform_core::system_clock(),
            retry: RetryPolicy::default(),
            deferred: None,
        }
    }

    /// Settings from the process environment; never fails (errors surface in [`build`](Self::build)).
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `DATABASE_URL` | `postgres://user:password@host:port/db` (required by `build`) |
    /// | `DATABASE_MAX_CONNECTIONS` | connections per pool (default 10) |
    /// | `DATABASE_MIN_CONNECTIONS` | idle connections kept open (default 0) |
    /// | `DATABASE_ACQUIRE_TIMEOUT_SECS` | wait for a free connection before `Timeout` (default 30) |
    /// | `DATABASE_IDLE_TIMEOUT_SECS` | close idle connections after this, 1 to 2,592,000 (30 days; default 600) |
    /// | `DATABASE_STATEMENT_TIMEOUT_SECS` | longest a statement may run, lock waits included, before `Timeout` (default: unset, the server's or role's `statement_timeout` applies; 0: no limit) |
    /// | `DATABASE_CALL_TIMEOUT_SECS` | longest one attempt of a repository call may take, waits for a connection or a lock included, before `Timeout` (default 30, at most 3600) |
    /// | `DATABASE_POOLER_MODE` | `session` or `transaction`; default: `transaction` when the host contains `-pooler` (Neon), else `session` |
    pub fn from_env() -> Self {
        Self::from_env_map(&EnvMap::from_env())
    }

    /// [`from_env`](Self::from_env) from explicit pairs (tests never mutate the process env).
    #[allow(
        clippy::should_implement_trait,
        reason = "the workspace-wide name for from_env's twin; the builder defers its errors to build"
    )]
    pub fn from_iter(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self::from_env_map(&pairs.into_iter().collect())
    }

    /// [`from_env`](Self::from_env) from an [`EnvMap`].
    pub fn from_env_map(env: &EnvMap) -> Self {
        let mut b = Self::new();
        b.url = env.optional_secret("DATABASE_URL");
        let mut defer = |r: Result<()>| {
            if let Err(e) = r
                && b.deferred.is_none()
            {
                b.deferred = Some(e);
            }
        };
        let mut max = None;
        let mut min = None;
        let mut acquire = None;
        let mut idle = None;
        let mut mode = None;
        defer(env.parse::<u32>("DATABASE_MAX_CONNECTIONS").map(|v| max = v));
        defer(env.parse::<u32>("DATABASE_MIN_CONNECTIONS").map(|v| min = v));
        defer(
            env.parse::<u64>("DATABASE_ACQUIRE_TIMEOUT_SECS")
                .map(|v| acquire = v),
        );
        defer(env.parse::<u64>("DATABASE_IDLE_TIMEOUT_SECS").map(|v| idle = v));
        let mut statement = None;
        let mut call = None;
        defer(env.parse::<u64>("DATABASE_CALL_TIMEOUT_SECS").map(|v| call = v));
        defer(
            env.parse::<u64>("DATABASE_STATEMENT_TIMEOUT_SECS")
                .map(|v| statement = v),
        );
        defer(
            env.optional("DATABASE_POOLER_MODE")
                .map(PoolerMode::from_str)
                .transpose()
                .map(|v| mode = v),
        );
        if let Some(v) = max {
            b.max_connections = v;
        }
        if let Some(v) = min {
            b.min_connections = v;
        }
        if let Some(v) = acquire {
            b.acquire_timeout = Duration::from_secs(v);
        }
        if let Some(v) = idle {
            b.idle_timeout = Some(Duration::from_secs(v));
        }
        if let Some(v) = statement {
            b.statement_timeout = Some(Duration::from_secs(v));
        }
        if let Some(v) = call {
            b.call_timeout = Duration::from_secs(v);
        }
        b.pooler_mode = mode;
        b
    }

    /// Applies the variables of [`from_env`](Self::from_env) found in `env` over this
    /// builder's catalogue, clock and retry policy, then [`build`](Self::build)s.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn build_from(self, env: &EnvMap) -> Result<Database> {
        let from_env = Self::from_env_map(env);
        Self {
            catalog: self.catalog,
            clock: self.clock,
            retry: self.retry,
            ..from_env
        }
        .build()
    }

    /// The connection URL (a secret: it usually holds the password).
    #[must_use]
    pub fn with_url(mut self, url: impl Into<SecretString>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Connections per pool (at least 1).
    #[must_use]
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Idle connections each pool keeps open.
    #[must_use]
    pub fn with_min_connections(mut self, n: u32) -> Self {
        self.min_connections = n;
        self
    }

    /// The longest a statement may run, waits for locks included, before the server
    /// cancels it and the call fails with `Timeout` (Postgres's `statement_timeout`,
    /// sent when each connection starts, in session mode; it overrides the role's and
    /// the URL's). `None` (the default): not sent, so the server's or role's setting
    /// applies; zero: no limit; otherwise rounded up to whole milliseconds. Behind a
    /// transaction-mode pooler, which does not pass
    /// it on, set it on the role (`ALTER ROLE … SET statement_timeout`). Migrations run
    /// without it.
    #[must_use]
    pub fn with_statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// How long a call waits for a free connection before failing with `Timeout`
    /// (more than zero, at most an hour).
    #[must_use]
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Bounds each attempt of a repository call: past it the attempt is abandoned and
    /// the call fails with `Timeout` (retried as its idempotency allows, like any
    /// timeout). Unlike the statement timeout it holds in transaction mode too, and
    /// over a connection that stopped answering. More than zero, at most an hour.
    #[must_use]
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Closes connections idle for longer than this (`None`: never); 1 s to 30 days.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Replaces connections older than this (`None`: never); 1 s to 30 days.
    #[must_use]
    pub fn with_max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Sets the pooler mode explicitly (overrides the `-pooler` host detection).
    #[must_use]
    pub fn with_pooler_mode(mut self, mode: PoolerMode) -> Self {
        self.pooler_mode = Some(mode);
        self
    }

    /// Validates products, tiers and schema names against `catalog` (default: the seed's).
    #[must_use]
    pub fn with_catalog(mut self, catalog: ProductCatalog) -> Self {
        self.catalog = catalog;
        self
    }

    /// Reads timestamps from `clock` (tests pass a `ManualClock`).
    #[must_use]
    pub fn with_clock(mut self, clock: DynClock) -> Self {
        self.clock = clock;
        self
    }

    /// How the repositories retry idempotent calls that failed with a retryable error.
    #[must_use]
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Validates the settings and creates the (lazy) pools; nothing connects until first use.
    ///
    /// # Errors
    /// `Config` naming `DATABASE_URL` when it is missing or not a Postgres URL, naming
    /// the variable when a setting does not parse, or when called outside a Tokio runtime.
    pub fn build(self) -> Result<Database> {
        if let Some(e) = self.deferred {
            return Err(e);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "Database::build must be called inside a Tokio runtime",
            ));
        }
        let url = self
            .url
            .ok_or_else(|| Error::config("missing required environment variable DATABASE_URL"))?;
        let raw = url.expose_secret();
        if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
            return Err(Error::config(
                "DATABASE_URL is not a Postgres URL: expected postgres://user:password@host:port/db",
            ));
        }
        let options = PgConnectOptions::from_str(raw).map_err(|e| {
            Error::config("DATABASE_URL is not a valid Postgres URL")
                .with_provider(PROVIDER)
                .with_source(e)
        })?;
        if self.max_connections == 0 {
            return Err(Error::config("DATABASE_MAX_CONNECTIONS must be at least 1"));
        }
        // The pool adds the acquire timeout to `Instant::now()` on every acquire, and
        // each call its timeout: a "wait for ever" value would overflow there.
        for (name, timeout) in [
            ("DATABASE_ACQUIRE_TIMEOUT_SECS", self.acquire_timeout),
            ("DATABASE_CALL_TIMEOUT_SECS (call timeout)", self.call_timeout),
        ] {
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                return Err(Error::config(format!(
                    "{name} must be more than zero and at most {} s, got {timeout:?}",
                    MAX_TIMEOUT.as_secs()
                )));
            }
        }
        for (name, age) in [
            ("DATABASE_IDLE_TIMEOUT_SECS (idle timeout)", self.idle_timeout),
            ("max connection lifetime", self.max_lifetime),
        ] {
            if let Some(age) = age
                && !(MIN_CONNECTION_AGE..=MAX_CONNECTION_AGE).contains(&age)
            {
                return Err(Error::config(format!(
                    "{name} must be 1 s to {} days, got {age:?}",
                    MAX_CONNECTION_AGE.as_secs() / 86_400
                )));
            }
        }
        let pooler_mode = self.pooler_mode.unwrap_or_else(|| {
            if options.get_host().contains("-pooler") {
                PoolerMode::Transaction
            } else {
                PoolerMode::Session
            }
        });
        let mut options = options.application_name("platform-db");
        // Migrations connect with these options, without a statement timeout set here.
        let migration_options = options.clone();
        if pooler_mode == PoolerMode::Transaction {
            options = options.statement_cache_capacity(0);
        } else if let Some(timeout) = self.statement_timeout {
            // Whole milliseconds, rounded up: a limit under 1 ms must not become 0,
            // Postgres's "no limit" (which only a zero timeout asks for).
            let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128);
            options = options.options([("statement_timeout", ms.to_string())]);
        }
        let settings = PoolSettings {
            max_connections: self.max_connections,
            min_connections: self.min_connections.min(self.max_connections),
            acquire_timeout: self.acquire_timeout,
            idle_timeout: self.idle_timeout,
            max_lifetime: self.max_lifetime,
        };
        let pool = settings.pool_options().connect_lazy_with(options.clone());
        Ok(Database {
            inner: Arc::new(Inner {
                options,
                migration_options,
                settings,
                pooler_mode,
                catalog: self.catalog,
                clock: self.clock,
                retry: self.retry,
                call_timeout: self.call_timeout,
                pool,
                schema_pools: Mutex::new(HashMap::new()),
            }),
        })
    }
}

#[derive(Debug, Clone)]
struct PoolSettings {
    max_connections: u32,
    min_connections: u32,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
}

impl PoolSettings {
    fn pool_options(&self) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(self.min_connections)
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(self.idle_timeout)
            .max_lifetime(self.max_lifetime)
            // A connection the server dropped (restart, failover, pg_terminate_backend)
            // is detected and replaced before a caller gets it.
            .test_before_acquire(true)
    }
}

/// The shared Postgres database: a pool for schema-qualified SQL, one pool per
/// schema whose connections use that schema as `search_path`, migrations, health
/// and close. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    options: PgConnectOptions,
    /// `options` without the statement timeout (see [`Database::migration_connection`]).
    migration_options: PgConnectOptions,
    settings: PoolSettings,
    pooler_mode: PoolerMode,
    catalog: ProductCatalog,
    clock: DynClock,
    retry: RetryPolicy,
    call_timeout: Duration,
    pool: PgPool,
    schema_pools: Mutex<HashMap<Schema, PgPool>>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Database")
            .field("host", &i.options.get_host())
            .field("port", &i.options.get_port())
            .field("database", &i.options.get_database())
            .field("pooler_mode", &i.pooler_mode)
            .field("pool", &i.settings)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// A builder; see [`DatabaseBuilder::from_env`] for the variables.
    pub fn builder() -> DatabaseBuilder {
        DatabaseBuilder::new()
    }

    /// `DatabaseBuilder::from_env().build()`.
    pub fn from_env() -> Result<Self> {
        DatabaseBuilder::from_env().build()
    }

    /// The pool for schema-qualified SQL (`shared.users`, `arbor.agents`): works
    /// behind every pooler. The connections keep the server's default `search_path`.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// A pool whose connections use `schema` as `search_path`, so unqualified table
    /// names resolve in that schema. Pools are created on first use and cached.
    ///
    /// # Errors
    /// - `InvalidInput` when the product is not in the catalogue or its schema name is
    ///   reserved — checked before anything reaches SQL.
    /// - `Unsupported` in [`PoolerMode::Transaction`], where a session `search_path`
    ///   does not survive between transactions: use schema-qualified SQL on
    ///   [`pool`](Self::pool), or a direct (non-pooler) URL.
    pub fn pool_for(&self, schema: impl Into<Schema>) -> Result<PgPool> {
        let schema = schema.into();
        let quoted = schema.quoted_identifier(&self.inner.catalog)?;
        if self.inner.pooler_mode == PoolerMode::Transaction {
            return Err(Error::unsupported(format!(
                "a pool with search_path {schema} needs session state, which a transaction-mode pooler \
                 does not keep; use schema-qualified SQL on Database::pool or a direct DATABASE_URL"
            ))
            .with_provider(PROVIDER));
        }
        let mut pools = self
            .inner
            .schema_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools.get(&schema) {
            return Ok(pool.clone());
        }
        let options = self.inner.options.clone().options([("search_path", quoted)]);
        let pool = self.inner.settings.pool_options().connect_lazy_with(options);
        pools.insert(schema, pool.clone());
        Ok(pool)
    }

    /// [`pool_for`](Self::pool_for) by name: `shared` or a product slug (`-` or `_`).
    ///
    /// # Errors
    /// `InvalidInput` for anything else (e.g. `"arbor; DROP SCHEMA shared"`), before any SQL.
    pub fn pool_for_name(&self, name: &str) -> Result<PgPool> {
        self.pool_for(Schema::parse(name)?)
    }

    /// The product catalogue tiers and schemas are validated against.
    pub fn catalog(&self) -> &ProductCatalog {
        &self.inner.catalog
    }

    /// The clock timestamps are read from.
    pub fn clock(&self) -> &DynClock {
        &self.inner.clock
    }

    /// The retry policy for idempotent repository calls.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// The bound on each attempt of a repository call (see
    /// [`DatabaseBuilder::with_call_timeout`]).
    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// The pooler mode in use.
    pub fn pooler_mode(&self) -> PoolerMode {
        self.inner.pooler_mode
    }

    /// The repositories on this database, behind their traits.
    pub fn repositories(&self) -> Repositories {
        Repositories::postgres(self)
    }

    fn refuse_behind_pooler(&self, what: &str) -> Result<()> {
        if self.inner.pooler_mode == PoolerMode::Transaction {
            return Err(Error::unsupported(format!(
                "{what} needs a session (advisory lock, search_path); run it with a direct, \
                 non-pooler DATABASE_URL"
            ))
            .with_provider(PROVIDER));
        }
        Ok(())
    }

    /// Applies the embedded migrations (schemas `shared`, `arbor`, `kumori`, the shared
    /// tables), recorded in `shared._sqlx_migrations`, then creates a schema for every
    /// product in the catalogue. Idempotent: running it again changes nothing.
    ///
    /// # Errors
    /// `Unsupported` behind a transaction-mode pooler; `Conflict` when the database
    /// holds migrations that differ from the embedded ones; database errors as
    /// [`map_sqlx_error`](crate::map_sqlx_error).
    pub async fn migrate(&self) -> Result<()> {
        let span = tracing::info_span!(
            "db.migrate",
            provider = PROVIDER,
            operation = "migrate",
            outcome = tracing::field::Empty
        );
        let result = async {
            self.refuse_behind_pooler("migrate")?;
            let mut migrator = sqlx::migrate!("./migrations");
            migrator.create_schema("shared");
            migrator.dangerous_set_table_name("shared._sqlx_migrations");
            self.run_migrator(&migrator, None).await?;
            let products: Vec<Product> = self.inner.catalog.products().map(|(p, _)| p.clone()).collect();
            for product in products {
                self.create_schema(&Schema::from(product)).await?;
            }
            Ok(())
        }
        .instrument(span.clone())
        .await;
        span.record("outcome", outcome(&result));
        result
    }

    async fn create_schema(&self, schema: &Schema) -> Result<String> {
        let quoted = schema.quoted_identifier(&self.inner.catalog)?;
        let sql = format!("CREATE SCHEMA IF NOT EXISTS {quoted}");
        match sqlx::query(AssertSqlSafe(sql)).execute(self.pool()).await {
            Ok(_) => Ok(quoted),
            Err(e) => {
                let e = map_sqlx_error(e);
                // Two instances creating the schema at once: the loser sees a unique violation.
                if e.kind() == platform_core::ErrorKind::Conflict {
                    Ok(quoted)
                } else {
                    Err(e.with_operation("create_schema"))
                }
            }
        }
    }

    /// Runs a product's own migrations into its schema (created from the catalogue if
    /// needed), with unqualified names resolving there, recorded in
    /// `<schema>._sqlx_migrations`. Idempotent.
    ///
    /// ```no_run
    /// # async fn f(db: platform_db::Database) -> platform_core::Result<()> {
    /// let migrator = platform_db::sqlx::migrate!("./tests/product_migrations");
    /// db.migrate_product(&platform_core::Product::ARBOR, &migrator).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `InvalidInput` when the product is not in the catalogue; `Unsupported` behind a
    /// transaction-mode pooler; otherwise as [`migrate`](Self::migrate).
    pub async fn migrate_product(&self, product: &Product, migrator: &Migrator) -> Result<()> {
        let span = tracing::info_span!("db.migrate_product", provider = PROVIDER, operation = "migrate_product", product = %product, outcome = tracing::field::Empty);
        let result = async {
            self.refuse_behind_pooler("migrate_product")?;
            let schema = Schema::from(product);
            let quoted = self.create_schema(&schema).await?;
            let mut scoped = Migrator::with_migrations(migrator.iter().cloned().collect());
            scoped.dangerous_set_table_name(format!("{quoted}._sqlx_migrations"));
            // `with_migrations` starts from the defaults: keep the product's settings.
            scoped
                .set_ignore_missing(migrator.ignore_missing)
                .set_locking(migrator.locking);
            self.run_migrator(&scoped, Some(quoted)).await
        }
        .instrument(span.clone())
        .await;
        span.record("outcome", outcome(&result));
        result
    }

    /// Runs `migrator` on a connection of its own (see
    /// [`migration_connection`](Self::migration_connection)), closed afterwards.
    async fn run_migrator(&self, migrator: &Migrator, search_path: Option<String>) -> Result<()> {
        let mut conn = self.migration_connection(search_path).await?;
        let ran = migrator.run(&mut conn).await.map_err(map_migrate_error);
        let _ = conn.close().await;
        ran
    }

    /// A connection of its own for running migrations, without the statement timeout
    /// (a migration may rightly take longer), with `search_path` set to the given
    /// quoted schema.
    async fn migration_connection(&self, search_path: Option<String>) -> Result<PgConnection> {
        let mut options = self.inner.migration_options.clone();
        if let Some(schema) = search_path {
            options = options.options([("search_path", schema)]);
        }
        // Bounded as a pool's acquire is.
        let timeout = self.inner.settings.acquire_timeout;
        tokio::time::timeout(timeout, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                Error::new(
                    platform_core::ErrorKind::Timeout,
                    format!("timed out after {timeout:?} connecting to the database"),
                )
                .with_provider(PROVIDER)
                .with_operation("migrate")
            })?
            .map_err(|e| map_sqlx_error(e).with_operation("migrate"))
    }

    /// Checks that the database answers (`SELECT 1`).
    ///
    /// # Errors
    /// `Unavailable` or `Timeout` when it does not.
    pub async fn health(&self) -> Result<()> {
        let span = tracing::info_span!(
            "db.health",
            provider = PROVIDER,
            operation = "health",
            outcome = tracing::field::Empty
        );
        let result = sqlx::query("SELECT 1")
            .execute(self.pool())
            .instrument(span.clone())
            .await
            .map(|_| ())
            .map_err(|e| map_sqlx_error(e).with_operation("health"));
        span.record("outcome", outcome(&result));
        result
    }

    /// Closes every pool gracefully: waits for checked-out connections to come back,
    /// then closes them. Later calls fail with `Unavailable`.
    pub async fn close(&self) {
        let pools: Vec<PgPool> = self
            .inner
            .schema_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for pool in pools {
            pool.close().await;
        }
        self.inner.pool.close().await;
    }
}

pub(crate) fn outcome<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.kind().as_str(),
    }
}
