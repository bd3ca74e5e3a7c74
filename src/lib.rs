#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::fmt;
use std::sync::Arc;

pub use platform_core as core;

#[cfg(feature = "analytics")]
pub use platform_analytics as analytics;
pub use platform_core::{
    Clock, DynClock, EnvMap, Error, ErrorKind, ManualClock, Product, ProductCatalog, ProductConfig, Result,
    RetryPolicy,
};
#[cfg(feature = "db")]
pub use platform_db as db;
#[cfg(feature = "email")]
pub use platform_email as email;
#[cfg(feature = "queue")]
pub use platform_queue as queue;
#[cfg(feature = "storage")]
pub use platform_storage as storage;

/// How a [`Platform`] was assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Every service on its embedded default: no network, no keys.
    Local,
    /// Real providers where configured.
    Configured,
}

/// Settings shared by every service, read once at start-up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// `local` or `configured`.
    pub mode: Mode,
    /// Deployment environment (`PLATFORM_ENV`, default `development`), attached to
    /// analytics events and error reports.
    pub environment: String,
    /// The application's version (`PLATFORM_APP_VERSION`, default this crate's version).
    pub app_version: String,
}

/// The shared-services layer of a product backend: one handle, cheap to clone,
/// holding every service.
///
/// Build it with [`Platform::local`] (embedded defaults, for laptops and tests) or
/// [`Platform::from_env`] (real providers where configured), then scope it to a
/// product with [`Platform::product`].
#[derive(Clone)]
pub struct Platform {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    catalog: ProductCatalog,
    clock: DynClock,
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Platform")
            .field("settings", &self.inner.settings)
            .field(
                "products",
                &self.inner.catalog.products().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Assembles a [`Platform`] piece by piece; what `local()` and `from_env()` use.
#[derive(Debug)]
pub struct PlatformBuilder {
    settings: Settings,
    catalog: ProductCatalog,
    clock: DynClock,
}

impl PlatformBuilder {
    /// Local mode, the seed's catalogue, the system clock.
    pub fn new() -> Self {
        Self {
            settings: Settings {
                mode: Mode::Local,
                environment: "development".into(),
                app_version: env!("CARGO_PKG_VERSION").into(),
            },
            catalog: ProductCatalog::default(),
            clock: platform_core::system_clock(),
        }
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

    /// Builds the platform.
    pub fn build(self) -> Result<Platform> {
        Ok(Platform {
            inner: Arc::new(Inner {
                settings: self.settings,
                catalog: self.catalog,
                clock: self.clock,
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
    /// A builder, for custom catalogues and clocks.
    pub fn builder() -> PlatformBuilder {
        PlatformBuilder::new()
    }

    /// Every service on its embedded default: in memory or on the local
    /// filesystem, no network, no keys. What a laptop and a product's own tests use.
    pub fn local() -> Result<Self> {
        PlatformBuilder::new().build()
    }

    /// Real providers where the environment configures them; see
    /// [`from_iter`](Self::from_iter) for the variables read.
    pub fn from_env() -> Result<Self> {
        Self::from_env_map(EnvMap::from_env())
    }

    /// [`from_env`](Self::from_env) from explicit variables.
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `PLATFORM_MODE` | `local` forces every service local; `configured` (default) uses providers where configured |
    /// | `PLATFORM_ENV` | environment name (default `development`) |
    /// | `PLATFORM_APP_VERSION` | application version attached to events |
    /// | `PLATFORM_CATALOG` | path of a product catalogue (TOML, or JSON by extension); default: the seed's |
    ///
    /// # Errors
    /// `Config` naming the variable that is missing or invalid.
    #[allow(
        clippy::should_implement_trait,
        reason = "the workspace-wide name for from_env's twin; it returns Result, so FromIterator cannot fit"
    )]
    pub fn from_iter(env: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        Self::from_env_map(env.into_iter().collect())
    }

    fn from_env_map(env: EnvMap) -> Result<Self> {
        let mut builder = PlatformBuilder::new();
        builder.settings.mode = match env.optional("PLATFORM_MODE") {
            None | Some("configured") => Mode::Configured,
            Some("local") => Mode::Local,
            Some(_) => {
                return Err(Error::config(
                    "environment variable PLATFORM_MODE is invalid: expected `local` or `configured`",
                ));
            }
        };
        if let Some(environment) = env.optional("PLATFORM_ENV") {
            builder.settings.environment = environment.to_owned();
        }
        if let Some(version) = env.optional("PLATFORM_APP_VERSION") {
            builder.settings.app_version = version.to_owned();
        }
        if let Some(path) = env.optional("PLATFORM_CATALOG") {
            builder.catalog = ProductCatalog::load(path)?;
        }
        builder.build()
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

    /// This platform scoped to `product`.
    ///
    /// # Errors
    /// `NotFound` when the catalogue does not list the product.
    pub fn product(&self, product: &Product) -> Result<ProductContext> {
        let config = Arc::new(self.inner.catalog.get(product)?.clone());
        Ok(ProductContext {
            platform: self.clone(),
            product: product.clone(),
            config,
        })
    }
}

/// A [`Platform`] scoped to one product: what it hands out is tagged with the
/// product (analytics events, job metadata, object keys, DB schema, email sender).
#[derive(Debug, Clone)]
pub struct ProductContext {
    platform: Platform,
    product: Product,
    config: Arc<ProductConfig>,
}

impl ProductContext {
    /// The product.
    pub fn product(&self) -> &Product {
        &self.product
    }

    /// The product's catalogue entry: tiers, roles, quotas.
    pub fn config(&self) -> &ProductConfig {
        &self.config
    }

    /// The platform this context belongs to.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }
}
