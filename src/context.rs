//! [`ProductContext`]: the platform scoped to one product.

use std::sync::Arc;

#[cfg(any(
    feature = "analytics",
    feature = "queue",
    feature = "storage",
    feature = "email",
    feature = "db"
))]
use platform_core::Result;
use platform_core::{Product, ProductConfig};

use crate::Platform;

/// A [`Platform`] scoped to one product: what it hands out is tagged with the
/// product — analytics events, job metadata, the product's bucket, its DB schema
/// and its email sender.
#[derive(Debug, Clone)]
pub struct ProductContext {
    platform: Platform,
    product: Product,
    config: Arc<ProductConfig>,
}

impl ProductContext {
    pub(crate) fn new(platform: Platform, product: Product, config: Arc<ProductConfig>) -> Self {
        Self {
            platform,
            product,
            config,
        }
    }

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

    /// Captures a typed event for `distinct_id`, tagged with this product. Never
    /// blocks on the network (see [`platform_analytics::Analytics::capture`]).
    ///
    /// # Errors
    /// `InvalidInput` when the event's properties do not serialise or the id is empty.
    #[cfg(feature = "analytics")]
    pub fn track<E>(&self, distinct_id: &str, event: &E) -> Result<()>
    where
        E: platform_analytics::ProductEvent + ?Sized,
    {
        let event = platform_analytics::AnalyticsEvent::from_typed(distinct_id, event)?
            .with_product(self.product.clone());
        self.platform.analytics().capture(event);
        Ok(())
    }

    /// Enqueues `job` on `queue` with this product in its metadata envelope.
    ///
    /// # Errors
    /// As [`platform_queue::JobQueue::enqueue`].
    #[cfg(feature = "queue")]
    pub async fn enqueue(
        &self,
        queue: &str,
        job: platform_queue::NewJob,
    ) -> Result<platform_queue::Enqueued> {
        self.platform
            .queue()
            .enqueue(queue, job.with_product(self.product.clone()))
            .await
    }

    /// The name of this product's bucket in the bucket catalogue.
    ///
    /// # Errors
    /// `NotFound` when no bucket of the catalogue belongs to this product.
    #[cfg(feature = "storage")]
    pub fn bucket(&self) -> Result<&str> {
        self.platform
            .storage()
            .catalog()
            .bucket_of(&self.product)
            .map(|b| b.name.as_str())
            .ok_or_else(|| {
                platform_core::Error::not_found(format!(
                    "no bucket of the bucket catalogue belongs to product {}",
                    self.product
                ))
            })
    }

    /// The address this product's email goes out from (and replies go to).
    #[cfg(feature = "email")]
    pub fn sender(&self) -> platform_email::Sender {
        self.platform.senders().for_product(&self.product)
    }

    /// Renders `template` and sends it from this product's sender to `to`, with the
    /// `X-Entity-Ref-ID` header set to `user_id` when given.
    ///
    /// # Errors
    /// As [`platform_email::MailerExt::send_template`].
    #[cfg(feature = "email")]
    pub async fn send_email<T>(
        &self,
        to: &str,
        user_id: Option<&str>,
        template: &T,
    ) -> Result<platform_email::MessageId>
    where
        T: platform_email::EmailTemplate + Sync + ?Sized,
    {
        use platform_email::MailerExt as _;
        self.platform
            .mailer()
            .send_template(&self.sender(), to, user_id, template)
            .await
    }

    /// A Postgres pool whose connections use this product's schema as `search_path`.
    ///
    /// # Errors
    /// `Unsupported` when the platform runs on the in-memory repositories (no
    /// `DATABASE_URL`); as [`platform_db::Database::pool_for`] otherwise.
    #[cfg(feature = "db")]
    pub fn db_pool(&self) -> Result<platform_db::sqlx::PgPool> {
        match self.platform.database() {
            Some(database) => database.pool_for(self.product.clone()),
            None => Err(platform_core::Error::unsupported(
                "no database configured (set DATABASE_URL): the in-memory repositories have no pools",
            )),
        }
    }
}
