//! The services a [`Platform`] holds: one field and one feature each.

use std::time::Duration;

#[cfg(any(
    feature = "analytics",
    feature = "storage",
    feature = "queue",
    feature = "email"
))]
use std::sync::Arc;
#[cfg(feature = "queue")]
use std::sync::PoisonError;

use platform_core::{DynClock, EnvMap, Error, ProductCatalog, Result};

use crate::{Mode, Platform, Settings};

/// Which implementation a service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The embedded default (memory or local files).
    Local,
    /// A real provider, by name (`"postgres"`, `"posthog"`, `"s3"`, `"redis"`, `"resend"`).
    Provider(&'static str),
}

/// The health of one service.
#[derive(Debug)]
#[non_exhaustive]
pub struct ServiceHealth {
    /// The service (`"db"`, `"queue"`, `"storage"`, …).
    pub service: &'static str,
    /// What it runs on.
    pub backend: Backend,
    /// `Ok` when the check passed.
    pub result: Result<()>,
}

/// What [`Platform::health`] found.
#[derive(Debug)]
#[non_exhaustive]
pub struct HealthReport {
    /// One entry per service.
    pub services: Vec<ServiceHealth>,
}

impl HealthReport {
    /// Whether every check passed.
    pub fn is_healthy(&self) -> bool {
        self.services.iter().all(|s| s.result.is_ok())
    }
}

/// What [`Platform::shutdown`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct PlatformShutdownReport {
    /// Analytics delivery at shutdown (delivered / still pending / dropped).
    #[cfg(feature = "analytics")]
    pub analytics: Option<platform_analytics::FlushReport>,
    /// One report per worker started through [`Platform::start_worker`].
    #[cfg(feature = "queue")]
    pub workers: Vec<Result<platform_queue::ShutdownReport>>,
}

impl PlatformShutdownReport {
    /// Whether nothing was left behind: every analytics event delivered and every
    /// worker drained without error (none had a job still running at the deadline,
    /// cancelled and put back on its queue).
    pub fn is_clean(&self) -> bool {
        #[cfg(feature = "analytics")]
        if self
            .analytics
            .as_ref()
            .is_some_and(|r| r.pending > 0 || r.dropped > 0)
        {
            return false;
        }
        #[cfg(feature = "queue")]
        if !self.workers.iter().all(|w| w.as_ref().is_ok_and(|r| r.drained)) {
            return false;
        }
        true
    }
}

/// A worker started through the platform, drained at shutdown.
#[cfg(feature = "queue")]
pub(crate) type Worker = platform_queue::WorkerHandle;
#[cfg(not(feature = "queue"))]
pub(crate) type Worker = ();

#[derive(Debug)]
pub(crate) struct Services {
    #[cfg(feature = "analytics")]
    analytics: (platform_analytics::DynAnalytics, Backend),
    #[cfg(feature = "db")]
    db: (platform_db::Repositories, Option<platform_db::Database>),
    #[cfg(feature = "storage")]
    storage: (platform_storage::Storage, Backend),
    #[cfg(feature = "queue")]
    queue: (Arc<dyn platform_queue::QueueService>, Backend),
    #[cfg(feature = "email")]
    email: (platform_email::DynMailer, platform_email::Senders, Backend),
}

/// Decides whether a service uses its provider: `configured` says whether its
/// variables are present (in production mode they are: `Services::build` checked every
/// key first, see [`missing_in_production`]); `variable` names its key and `related`
/// are prefixes of its other variables (see [`fallback_warning`]).
#[cfg_attr(
    not(any(
        feature = "analytics",
        feature = "db",
        feature = "storage",
        feature = "queue",
        feature = "email"
    )),
    allow(dead_code, reason = "used only by service features")
)]
fn use_provider(
    settings: &Settings,
    env: &EnvMap,
    service: &str,
    configured: bool,
    (variable, related): (&str, &[&str]),
) -> bool {
    let real = match settings.mode {
        Mode::Local => false,
        Mode::Configured => configured,
        Mode::Production => true,
    };
    tracing::info!(
        service,
        backend = if real { "provider" } else { "local" },
        "platform service"
    );
    if !real && let Some(warning) = fallback_warning(settings, env, service, variable, related) {
        tracing::warn!(service, missing = variable, "{warning}");
    }
    real
}

/// The key variable of each service (of the features built) that is not set: all of
/// them at once, so that a production deploy is fixed in one go.
fn missing_in_production(env: &EnvMap) -> Vec<&'static str> {
    let unset = |var| env.optional(var).is_none();
    [
        (
            cfg!(feature = "analytics") && unset("POSTHOG_API_KEY"),
            "POSTHOG_API_KEY",
        ),
        (cfg!(feature = "db") && unset("DATABASE_URL"), "DATABASE_URL"),
        (cfg!(feature = "queue") && unset("REDIS_URL"), "REDIS_URL"),
        (
            cfg!(feature = "email") && unset("RESEND_API_KEY"),
            "RESEND_API_KEY",
        ),
        (!s3_requested(env), "R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY"),
    ]
    .into_iter()
    .filter_map(|(missing, var)| missing.then_some(var))
    .collect()
}

/// Whether S3 (R2) storage is asked for (any of its variables set); true when storage
/// is not built.
fn s3_requested(env: &EnvMap) -> bool {
    #[cfg(feature = "storage")]
    return platform_storage::S3ObjectStoreBuilder::from_env_map(env).is_requested();
    #[cfg(not(feature = "storage"))]
    {
        let _ = env;
        true
    }
}

/// Why a service left on its local implementation in configured mode looks like a
/// mistake, if it does: `PLATFORM_ENV=production` (a deploy that forgot `variable`),
/// or another variable of the service set (one starting with a prefix of `related`,
/// e.g. `RESEND_APIKEY` for `RESEND_API_KEY`: most likely a misspelt key).
fn fallback_warning(
    settings: &Settings,
    env: &EnvMap,
    service: &str,
    variable: &str,
    related: &[&str],
) -> Option<String> {
    if settings.mode != Mode::Configured {
        return None;
    }
    if settings.environment == "production" {
        return Some(format!(
            "PLATFORM_ENV=production runs {service} on its local implementation: {variable} is not set (PLATFORM_MODE=production refuses to start instead)"
        ));
    }
    let set = related.iter().find(|prefix| env.has_prefix(prefix))?;
    Some(format!(
        "{service} runs on its local implementation because {variable} is not set, although a {set}* variable is (misspelt?)"
    ))
}

/// Whether any of `variables` is set (and not blank).
#[cfg_attr(
    not(feature = "analytics"),
    allow(dead_code, reason = "used only by analytics")
)]
fn any_set(env: &EnvMap, variables: &[&str]) -> bool {
    variables.iter().any(|v| env.optional(v).is_some())
}

impl Services {
    #[cfg_attr(
        not(all(
            feature = "analytics",
            feature = "db",
            feature = "storage",
            feature = "queue",
            feature = "email"
        )),
        allow(unused_variables, reason = "each argument is used by some service feature")
    )]
    pub(crate) async fn build(
        env: &EnvMap,
        settings: &Settings,
        catalog: &ProductCatalog,
        clock: &DynClock,
    ) -> Result<Self> {
        if settings.mode == Mode::Production {
            let missing = missing_in_production(env);
            if !missing.is_empty() {
                return Err(Error::config(format!(
                    "PLATFORM_MODE=production needs every service configured: missing environment variables {}",
                    missing.join(", ")
                )));
            }
        }
        Ok(Self {
            #[cfg(feature = "analytics")]
            analytics: {
                use platform_analytics::{Enrichment, LocalAnalytics, PostHogAnalyticsBuilder};
                let enrichment = Enrichment::new(settings.environment.clone(), settings.app_version.clone());
                // Any PostHog variable counts: one set without the key is a
                // half-configured provider, reported by `build`, not a silent local one.
                let configured = any_set(
                    env,
                    &["POSTHOG_API_KEY", "POSTHOG_HOST", "POSTHOG_PERSONAL_API_KEY"],
                );
                if use_provider(
                    settings,
                    env,
                    "analytics",
                    configured,
                    ("POSTHOG_API_KEY", &["POSTHOG_"]),
                ) {
                    let posthog = PostHogAnalyticsBuilder::from_env_map(env)
                        .with_clock(clock.clone())
                        .with_enrichment(enrichment)
                        .build()
                        .await?;
                    (Arc::new(posthog) as _, Backend::Provider("posthog"))
                } else {
                    let local = LocalAnalytics::builder()
                        .with_clock(clock.clone())
                        .with_enrichment(enrichment)
                        .build()?;
                    (Arc::new(local) as _, Backend::Local)
                }
            },
            #[cfg(feature = "db")]
            db: {
                use platform_db::{Database, Repositories};
                let configured = env.optional("DATABASE_URL").is_some();
                if use_provider(settings, env, "db", configured, ("DATABASE_URL", &["DATABASE_"])) {
                    let database = Database::builder()
                        .with_catalog(catalog.clone())
                        .with_clock(clock.clone())
                        .build_from(env)?;
                    if settings.mode == Mode::Production {
                        // Pools connect lazily: without this a database that is down
                        // (or a wrong URL) would pass start-up and fail the first request.
                        database.health().await.map_err(|e| {
                            e.with_subject("PLATFORM_MODE=production checks the database at start-up")
                        })?;
                    }
                    (database.repositories(), Some(database))
                } else {
                    (Repositories::in_memory(catalog.clone(), clock.clone()), None)
                }
            },
            #[cfg(feature = "storage")]
            storage: {
                use platform_storage::{BucketCatalog, LocalObjectStore, S3ObjectStoreBuilder, Storage};
                let s3 = S3ObjectStoreBuilder::from_env_map(env).with_clock(clock.clone());
                let products = catalog.products().map(|(product, _)| product);
                let buckets = BucketCatalog::from_env_map(env)?.with_product_buckets(products);
                if use_provider(
                    settings,
                    env,
                    "storage",
                    s3.is_requested(),
                    ("R2_ACCESS_KEY_ID", &[]),
                ) {
                    let store = Arc::new(s3.build()?);
                    (
                        Storage::new(store, buckets, clock.clone()),
                        Backend::Provider("s3"),
                    )
                } else {
                    let store =
                        LocalObjectStore::new(settings.data_dir.join("storage"))?.with_clock(clock.clone());
                    let storage = Storage::new(Arc::new(store), buckets, clock.clone());
                    storage.ensure_buckets().await?;
                    (storage, Backend::Local)
                }
            },
            #[cfg(feature = "queue")]
            queue: {
                use platform_queue::{LocalQueue, QueueCatalog, RedisQueueBuilder};
                let configured = env.optional("REDIS_URL").is_some();
                if use_provider(settings, env, "queue", configured, ("REDIS_URL", &["REDIS_"])) {
                    let redis = RedisQueueBuilder::from_env_map(env)
                        .with_clock(clock.clone())
                        .build()
                        .await?;
                    (Arc::new(redis) as _, Backend::Provider("redis"))
                } else {
                    let local = LocalQueue::from_parts(QueueCatalog::from_env(env)?, clock.clone());
                    (Arc::new(local) as _, Backend::Local)
                }
            },
            #[cfg(feature = "email")]
            email: {
                use platform_email::{OutboxMailer, ResendMailerBuilder, Senders};
                let senders = Senders::from_env_map(env, catalog)?;
                let configured = env.optional("RESEND_API_KEY").is_some();
                if use_provider(
                    settings,
                    env,
                    "email",
                    configured,
                    ("RESEND_API_KEY", &["RESEND_"]),
                ) {
                    senders.check_sendable(catalog, "RESEND_API_KEY")?;
                    let resend = ResendMailerBuilder::from_env_map(env).build()?;
                    (Arc::new(resend) as _, senders, Backend::Provider("resend"))
                } else {
                    let outbox = OutboxMailer::with_clock(settings.data_dir.join("outbox"), clock.clone())?;
                    (Arc::new(outbox) as _, senders, Backend::Local)
                }
            },
        })
    }

    pub(crate) fn backends(&self) -> Vec<(&'static str, Backend)> {
        vec![
            #[cfg(feature = "analytics")]
            ("analytics", self.analytics.1),
            #[cfg(feature = "db")]
            ("db", self.db_backend()),
            #[cfg(feature = "storage")]
            ("storage", self.storage.1),
            #[cfg(feature = "queue")]
            ("queue", self.queue.1),
            #[cfg(feature = "email")]
            ("email", self.email.2),
        ]
    }

    #[cfg(feature = "db")]
    fn db_backend(&self) -> Backend {
        match self.db.1 {
            Some(_) => Backend::Provider("postgres"),
            None => Backend::Local,
        }
    }

    pub(crate) async fn health(&self) -> HealthReport {
        #[allow(unused_mut, reason = "empty without service features")]
        let mut services = Vec::new();
        #[cfg(feature = "db")]
        services.push(ServiceHealth {
            service: "db",
            backend: if self.db.1.is_some() {
                Backend::Provider("postgres")
            } else {
                Backend::Local
            },
            result: match &self.db.1 {
                Some(database) => database.health().await,
                None => Ok(()),
            },
        });
        #[cfg(feature = "queue")]
        {
            let queue = &self.queue.0;
            let first = queue.catalog().queues().next().map(|q| q.name.clone());
            let result = match first {
                Some(name) => queue.stats(&name).await.map(|_| ()),
                None => Ok(()),
            };
            services.push(ServiceHealth {
                service: "queue",
                backend: self.queue.1,
                result,
            });
        }
        #[cfg(feature = "storage")]
        {
            let storage = &self.storage.0;
            let first = storage.catalog().buckets().next().map(|b| b.name.clone());
            let result = match first {
                Some(bucket) => storage
                    .store()
                    .list(&bucket, "", platform_storage::ListOptions::new().with_max_keys(1))
                    .await
                    .map(|_| ()),
                None => Ok(()),
            };
            services.push(ServiceHealth {
                service: "storage",
                backend: self.storage.1,
                result,
            });
        }
        HealthReport { services }
    }

    #[cfg_attr(
        not(all(feature = "analytics", feature = "queue")),
        allow(unused_variables, reason = "each argument is used by some service feature")
    )]
    pub(crate) async fn shutdown(&self, workers: Vec<Worker>, timeout: Duration) -> PlatformShutdownReport {
        #[allow(unused_mut, reason = "empty without service features")]
        let mut report = PlatformShutdownReport::default();
        // One deadline for every step: each gets what the previous ones left (no
        // deadline when `timeout` is too long to add to now, e.g. `Duration::MAX`).
        let deadline = std::time::Instant::now().checked_add(timeout);
        #[allow(unused_variables, reason = "unused without service features")]
        let left = || {
            deadline.map_or(timeout, |d| {
                d.saturating_duration_since(std::time::Instant::now())
            })
        };
        // Workers drain while the analytics events captured so far are sent: a job
        // still running at the deadline must not leave analytics no time at all. The
        // analytics shutdown after the drain sends what finishing jobs captured. The
        // workers' own deadline keeps a fifth of the timeout (at most 5 s) for what
        // follows it: re-queueing the jobs cut off, that last analytics delivery and
        // closing the database pools.
        #[cfg(feature = "queue")]
        {
            let reserve = (timeout / 5).min(Duration::from_secs(5));
            let drain = timeout.saturating_sub(reserve);
            let drains = futures::future::join_all(workers.into_iter().map(|w| w.shutdown(drain)));
            #[cfg(feature = "analytics")]
            let (drained, _) = futures::future::join(drains, self.analytics.0.flush(drain)).await;
            #[cfg(not(feature = "analytics"))]
            let drained = drains.await;
            report.workers = drained;
        }
        #[cfg(feature = "analytics")]
        {
            report.analytics = Some(self.analytics.0.shutdown(left()).await);
        }
        #[cfg(feature = "db")]
        if let Some(database) = &self.db.1 {
            // A pool that does not close in time is left to close as it is dropped.
            let _ = tokio::time::timeout(left(), database.close()).await;
        }
        report
    }
}

/// Service accessors: one per feature.
impl Platform {
    /// Product analytics (PostHog, or the local recorder).
    #[cfg(feature = "analytics")]
    pub fn analytics(&self) -> &platform_analytics::DynAnalytics {
        &self.inner.services.analytics.0
    }

    /// The repositories (Postgres, or in memory).
    #[cfg(feature = "db")]
    pub fn repositories(&self) -> &platform_db::Repositories {
        &self.inner.services.db.0
    }

    /// The Postgres database (pools per schema, migrations), when configured.
    #[cfg(feature = "db")]
    pub fn database(&self) -> Option<&platform_db::Database> {
        self.inner.services.db.1.as_ref()
    }

    /// Object storage with the bucket catalogue (R2/S3, or local files).
    #[cfg(feature = "storage")]
    pub fn storage(&self) -> &platform_storage::Storage {
        &self.inner.services.storage.0
    }

    /// The job queue (Redis, or in-process).
    #[cfg(feature = "queue")]
    pub fn queue(&self) -> platform_queue::DynJobQueue {
        let queue: Arc<dyn platform_queue::JobQueue> = self.inner.services.queue.0.clone();
        queue
    }

    /// Starts a worker on `queue`; [`shutdown`](Self::shutdown) drains it.
    ///
    /// # Errors
    /// `InvalidInput` for a queue not in the catalogue; `Unavailable` once shutdown has
    /// begun (a worker started then would never be drained; it is stopped at once);
    /// the backend's error otherwise.
    #[cfg(feature = "queue")]
    pub async fn start_worker(
        &self,
        queue: &str,
        handler: Arc<dyn platform_queue::JobHandler>,
    ) -> Result<()> {
        let shut_down = || {
            Error::new(
                platform_core::ErrorKind::Unavailable,
                "the platform is shutting down: no worker can start",
            )
        };
        if self
            .inner
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            return Err(shut_down());
        }
        let handle = self.inner.services.queue.0.start_worker(queue, handler).await?;
        let late = {
            let mut workers = self.inner.workers.lock().unwrap_or_else(PoisonError::into_inner);
            match workers.as_mut() {
                Some(workers) => {
                    workers.push(handle);
                    None
                }
                None => Some(handle),
            }
        };
        match late {
            None => Ok(()),
            Some(handle) => {
                // Shutdown began while it started: it has taken no job long enough to
                // matter; stop it now rather than leave it running undrained.
                handle.shutdown(Duration::ZERO).await?;
                Err(shut_down())
            }
        }
    }

    /// The mailer (Resend, or the local `.eml` outbox).
    #[cfg(feature = "email")]
    pub fn mailer(&self) -> &platform_email::DynMailer {
        &self.inner.services.email.0
    }

    /// Sender addresses per product.
    #[cfg(feature = "email")]
    pub fn senders(&self) -> &platform_email::Senders {
        &self.inner.services.email.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: Mode, environment: &str) -> Settings {
        Settings {
            mode,
            environment: environment.to_owned(),
            app_version: "1".to_owned(),
            data_dir: std::env::temp_dir(),
        }
    }

    /// A service left local in configured mode is worth a warning in production, or
    /// when another of its variables is set (a misspelt key); otherwise, or in local
    /// mode, it is not.
    #[test]
    fn a_local_fallback_warns_when_it_looks_like_a_mistake() {
        let dev = settings(Mode::Configured, "development");
        let typo = EnvMap::from_iter([("RESEND_APIKEY", "re_x")]);
        let warning = fallback_warning(&dev, &typo, "email", "RESEND_API_KEY", &["RESEND_"]);
        assert!(
            warning
                .as_deref()
                .is_some_and(|w| w.contains("RESEND_API_KEY is not set") && w.contains("RESEND_*")),
            "{warning:?}"
        );
        assert_eq!(
            fallback_warning(&dev, &EnvMap::new(), "email", "RESEND_API_KEY", &["RESEND_"]),
            None
        );
        let local = settings(Mode::Local, "production");
        assert_eq!(
            fallback_warning(&local, &typo, "email", "RESEND_API_KEY", &["RESEND_"]),
            None
        );
        let prod = settings(Mode::Configured, "production");
        let warning = fallback_warning(&prod, &EnvMap::new(), "db", "DATABASE_URL", &["DATABASE_"]);
        assert!(
            warning
                .as_deref()
                .is_some_and(|w| w.contains("PLATFORM_ENV=production")),
            "{warning:?}"
        );
    }
}
