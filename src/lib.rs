#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod context;
mod services;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use platform_core as core;
pub use platform_core::{
    Clock, DynClock, EnvMap, Error, ErrorKind, ManualClock, Product, ProductCatalog, ProductConfig, Result,
    RetryPolicy,
};

#[cfg(feature = "analytics")]
pub use platform_analytics as analytics;
#[cfg(feature = "db")]
pub use platform_db as db;
#[cfg(feature = "email")]
pub use platform_email as email;
#[cfg(feature = "queue")]
pub use platform_queue as queue;
#[cfg(feature = "storage")]
pub use platform_storage as storage;

pub use context::ProductContext;
pub use services::{Backend, HealthReport, PlatformShutdownReport, ServiceHealth};

/// How a [`Platform`] chooses each service's implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Every service on its embedded default: no network, no keys.
    Local,
    /// The real provider for every service whose variables are set; the embedded
    /// default for the others (each choice is logged at `info`).
    Configured,
    /// The real provider for every service; a service whose variables are missing is
    /// a `Config` error naming the variable.
    Production,
}

/// Settings shared by every service, read once at start-up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// How services were chosen.
    pub mode: Mode,
    /// Deployment environment (`PLATFORM_ENV`, default `development`), attached to
    /// analytics events and error reports.
    pub environment: String,
    /// The application's version (`PLATFORM_APP_VERSION`, default this crate's version).
    pub app_version: String,
    /// Where local implementations keep their files (storage objects, the email
    /// outbox): `PLATFORM_DATA_DIR`, or a fresh directory under the system temp dir.
    pub data_dir: PathBuf,
}

/// The shared-services layer of a product backend: one handle, cheap to clone,
/// holding every service.
///
/// Build it with [`Platform::local`] (embedded defaults, for laptops and tests) or
/// [`Platform::from_env`] (real providers where configured), then scope it to a
/// product with [`Platform::product`]. Call [`Platform::shutdown`] before exiting so
/// queued analytics are delivered and workers drain.
#[derive(Clone)]
pub struct Platform {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    catalog: ProductCatalog,
    clock: DynClock,
    services: services::Services,
    #[cfg_attr(
        not(feature = "queue"),
        allow(dead_code, reason = "workers exist only with the queue")
    )]
    /// The workers to drain at shutdown; `None` once shutdown has begun.
    workers: Mutex<Option<Vec<services::Worker>>>,
    /// Held by a shutdown from start to end: a second or concurrent one waits for it
    /// (see [`Platform::shutdown`]).
    #[cfg(feature = "queue")]
    shutting_down: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Platform")
            .field("settings", &self.inner.settings)
            .field(
                "products",
                &self.inner.catalog.products().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("services", &self.inner.services.backends())
            .finish_non_exhaustive()
    }
}

/// Assembles a [`Platform`]: what `local()` and `from_env()` use, and what tests use
/// to inject a catalogue or a [`ManualClock`].
#[derive(Debug)]
pub struct PlatformBuilder {
    env: EnvMap,
    settings: Settings,
    catalog: ProductCatalog,
    clock: DynClock,
}

fn fresh_data_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("platform-local-{}-{n}", std::process::id()))
}

impl PlatformBuilder {
    /// Local mode, the seed's catalogue, the system clock, a fresh data directory.
    pub fn new() -> Self {
        Self {
            env: EnvMap::new(),
            settings: Settings {
                mode: Mode::Local,
                environment: "development".into(),
                app_version: env!("CARGO_PKG_VERSION").into(),
                data_dir: fresh_data_dir(),
            },
            catalog: ProductCatalog::default(),
            clock: platform_core::system_clock(),
        }
    }

    /// Reads settings and provider variables from `env` (see [`Platform::from_iter`]).
    ///
    /// # Errors
    /// `Config` naming a variable that is invalid.
    pub fn with_env(mut self, env: EnvMap) -> Result<Self> {
        self.settings.mode = match env.optional("PLATFORM_MODE") {
            None | Some("configured") => Mode::Configured,
            Some("local") => Mode::Local,
            Some("production") => Mode::Production,
            Some(_) => {
                return Err(Error::config(
                    "environment variable PLATFORM_MODE is invalid: expected local, configured or production",
                ));
            }
        };
        if let Some(environment) = env.optional("PLATFORM_ENV") {
            self.settings.environment = environment.to_owned();
        }
        if let Some(version) = env.optional("PLATFORM_APP_VERSION") {
            self.settings.app_version = version.to_owned();
        }
        if let Some(dir) = env.optional("PLATFORM_DATA_DIR") {
            self.settings.data_dir = PathBuf::from(dir);
        }
        if let Some(path) = env.optional("PLATFORM_CATALOG") {
            let loaded = ProductCatalog::load(path)
                .map_err(|e| Error::config(format!("PLATFORM_CATALOG: {}", e.message())).with_source(e))?;
            // Added to the products already known (the seed's), not instead of them.
            self.catalog = std::mem::take(&mut self.catalog).merged_with(loaded);
        }
        self.env = env;
        Ok(self)
    }

    /// Uses `catalog` instead of the seed's.
    #[must_use]
    pub fn with_catalog(mut self, catalog: ProductCatalog) -> Self {
        self.catalog = catalog;
        self
    }

    /// Reads time from `clock` (tests pass a [`ManualClock`]).
    #[must_use]
    pub fn with_clock(mut self, clock: DynClock) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the deployment environment name.
    #[must_use]
    pub fn with_environment(mut self, environment: impl Into<String>) -> Self {
        self.settings.environment = environment.into();
        self
    }

    /// Keeps local files (storage objects, email outbox) under `dir`.
    #[must_use]
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.data_dir = dir.into();
        self
    }

    /// Builds every service.
    ///
    /// # Errors
    /// `Config` naming the variable when a provider is half-configured (or, in
    /// [`Mode::Production`], not configured); the provider's error when it cannot start.
    pub async fn build(self) -> Result<Platform> {
        let services =
            services::Services::build(&self.env, &self.settings, &self.catalog, &self.clock).await?;
        Ok(Platform {
            inner: Arc::new(Inner {
                settings: self.settings,
                catalog: self.catalog,
                clock: self.clock,
                services,
                workers: Mutex::new(Some(Vec::new())),
                #[cfg(feature = "queue")]
                shutting_down: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

impl Default for PlatformBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl Platform {
    /// A builder, for custom catalogues, clocks and data directories.
    pub fn builder() -> PlatformBuilder {
        PlatformBuilder::new()
    }

    /// Every service on its embedded default: in memory or under a fresh temp
    /// directory, no network, no keys. What a laptop and a product's own tests use.
    pub async fn local() -> Result<Self> {
        PlatformBuilder::new().build().await
    }

    /// Real providers where the process environment configures them; see
    /// [`from_iter`](Self::from_iter) for the variables read.
    pub async fn from_env() -> Result<Self> {
        PlatformBuilder::new().with_env(EnvMap::from_env())?.build().await
    }

    /// [`from_env`](Self::from_env) from explicit variables.
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `PLATFORM_MODE` | `local` (every service embedded), `configured` (default: real where configured), `production` (real everywhere, missing variables are errors) |
    /// | `PLATFORM_ENV` | environment name (default `development`) |
    /// | `PLATFORM_APP_VERSION` | application version attached to events |
    /// | `PLATFORM_CATALOG` | path of a product catalogue (TOML, or JSON by extension) whose products are added to the seed's (one of the same slug replaces the seed's) |
    /// | `PLATFORM_DATA_DIR` | where local implementations keep files; default: a fresh temp directory |
    ///
    /// Each service reads its provider's conventional variables: `POSTHOG_API_KEY`,
    /// `DATABASE_URL`, `R2_ENDPOINT`/`R2_ACCESS_KEY_ID`/`R2_SECRET_ACCESS_KEY`,
    /// `REDIS_URL`, `RESEND_API_KEY` (see each crate's README for the rest).
    ///
    /// # Errors
    /// `Config` naming the variable that is missing or invalid.
    #[allow(
        clippy::should_implement_trait,
        reason = "the workspace-wide name for from_env's twin; it is async and returns Result, so FromIterator cannot fit"
    )]
    pub async fn from_iter(env: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        PlatformBuilder::new()
            .with_env(env.into_iter().collect())?
            .build()
            .await
    }

    /// The settings this platform was built with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The product catalogue.
    pub fn catalog(&self) -> &ProductCatalog {
        &self.inner.catalog
    }

    /// The clock every service reads.
    pub fn clock(&self) -> &DynClock {
        &self.inner.clock
    }

    /// Which implementation each service runs on.
    pub fn backends(&self) -> Vec<(&'static str, Backend)> {
        self.inner.services.backends()
    }

    /// This platform scoped to `product`.
    ///
    /// # Errors
    /// `NotFound` when the catalogue does not list the product.
    pub fn product(&self, product: &Product) -> Result<ProductContext> {
        let config = Arc::new(self.inner.catalog.get(product)?.clone());
        Ok(ProductContext::new(self.clone(), product.clone(), config))
    }

    /// Checks every service that has something to check (a database round trip, a
    /// queue read, a storage listing).
    pub async fn health(&self) -> HealthReport {
        self.inner.services.health().await
    }

    /// Stops the platform within `timeout` (one deadline for all steps): workers stop
    /// fetching and drain until four fifths of it (a fifth, at most 5 s, is kept for
    /// what follows; jobs not finished by then go back on their queue)
    /// while the analytics events captured so far are sent, then the rest of the
    /// analytics (what finishing jobs captured) is delivered and database pools close
    /// in the time left. Reports what was delivered and what is left.
    ///
    /// A second or concurrent call waits until the first is done (it would otherwise
    /// close analytics and the database pools under jobs still draining), for at most
    /// its own `timeout`, then has nothing left to drain: its report lists no workers.
    /// Past its timeout it returns an empty report, having done nothing.
    pub async fn shutdown(&self, timeout: Duration) -> PlatformShutdownReport {
        #[cfg(feature = "queue")]
        let Ok(_one_at_a_time) = tokio::time::timeout(timeout, self.inner.shutting_down.lock()).await else {
            return PlatformShutdownReport::default();
        };
        let workers = self
            .inner
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        self.inner.services.shutdown(workers, timeout).await
    }
}
