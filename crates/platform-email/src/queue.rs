//! Sending email from the `email` job queue (feature `queue`): an [`EmailJob`]
//! payload, [`EmailJob::enqueue`] with a de-duplicating job id, and
//! [`email_job_handler`], which sends each job with the job's idempotency key so a
//! retried job never delivers twice.
//!
//! ```rust
//! use std::sync::Arc;
//! use std::time::Duration;
//! use platform_email::queue::{EmailJob, email_job_handler, EMAIL_QUEUE};
//! use platform_email::templates::Welcome;
//! use platform_email::{RecordingMailer, Senders};
//! use platform_queue::{JobQueue, JobWorkers, LocalQueue};
//! use platform_core::Product;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> platform_core::Result<()> {
//! let queue = LocalQueue::new();
//! let mailer = RecordingMailer::new();
//!
//! // Producer: render now, send later. The job id de-duplicates the enqueue.
//! let sender = Senders::new().for_product(&Product::ARBOR);
//! let welcome = Welcome::new("Ada", "Arbor", "https://arbor.example.com/dashboard");
//! let job = EmailJob::from_template(&sender, "ada@example.com", Some("user_42"), &welcome)?
//!     .with_product(Product::ARBOR);
//! assert!(job.enqueue(&queue, "welcome-user_42").await?.created);
//! assert!(!job.enqueue(&queue, "welcome-user_42").await?.created);
//!
//! // Consumer: a worker on the `email` queue sends with the key `email:<job id>`.
//! let worker = queue.start_worker(EMAIL_QUEUE, email_job_handler(Arc::new(mailer.clone()))).await?;
//! # while queue.stats(EMAIL_QUEUE).await?.done == 0 { tokio::task::yield_now().await; }
//! worker.shutdown(Duration::from_secs(5)).await?;
//! assert_eq!(mailer.len(), 1);
//! assert_eq!(mailer.sent()[0].email.subject, "Welcome to our platform!");
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use platform_core::{Error, ErrorKind, Product, Result};
use platform_queue::{Enqueued, JobContext, JobError, JobHandler, JobQueue, NewJob, job_idempotency_key};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use crate::sender::Sender;
use crate::templates::EmailTemplate;
use crate::types::{Email, MAX_IDEMPOTENCY_KEY_LEN, check_idempotency_key, invalid};
use crate::{DynMailer, Mailer as _};

/// The queue email jobs go on (in the seed catalogue: concurrency 100, 3 attempts).
pub const EMAIL_QUEUE: &str = "email";

/// The payload of a job on the [`EMAIL_QUEUE`]: one message, rendered when the job
/// is made (so the worker needs no template code), and the product it is for.
///
/// The message's own [`Email::idempotency_key`] is not used: the handler sends with
/// the job's key (`email:<job id>`), the same for every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EmailJob {
    /// The message to send.
    pub email: Email,
    /// The product it belongs to (recorded in the job's metadata).
    #[serde(default)]
    pub product: Option<Product>,
}

impl EmailJob {
    /// A job sending `email`.
    pub fn new(email: Email) -> Self {
        Self { email, product: None }
    }

    /// A job sending `template`, rendered now, from `sender` to `to`, with the
    /// `X-Entity-Ref-ID` header set to `user_id` when given (as
    /// [`MailerExt::send_template`](crate::MailerExt::send_template) would send it).
    ///
    /// # Errors
    /// Template errors (`InvalidInput` for bad template data).
    pub fn from_template<T: EmailTemplate + ?Sized>(
        sender: &Sender,
        to: &str,
        user_id: Option<&str>,
        template: &T,
    ) -> Result<Self> {
        crate::templated_email(sender, to, user_id, template).map(Self::new)
    }

    /// Tags the job with a product.
    #[must_use]
    pub fn with_product(mut self, product: Product) -> Self {
        self.product = Some(product);
        self
    }

    /// The job to enqueue: this payload under the de-duplicating id `job_id`, tagged
    /// with the product.
    ///
    /// # Errors
    /// `InvalidInput` when the message is invalid (as [`Email::validate`]) or when
    /// `job_id` cannot form an idempotency key (`job_id: …`): it must be 1 to 128
    /// printable ASCII characters without spaces, and the key the job's handler sends
    /// ([`job_idempotency_key`]: `email:` and the id, each `%` and `:` of it counting
    /// three characters) at most [`MAX_IDEMPOTENCY_KEY_LEN`] characters. Checked here, so
    /// that such a job is refused rather than dead-lettered at its first attempt.
    pub fn to_new_job(&self, job_id: &str) -> Result<NewJob> {
        self.email.validate()?;
        if job_id.len() > 128 {
            return Err(invalid("job_id", "must be 1 to 128 characters"));
        }
        check_idempotency_key(job_id).map_err(|why| invalid("job_id", &why))?;
        let key = job_idempotency_key(EMAIL_QUEUE, job_id);
        if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(invalid(
                "job_id",
                &format!(
                    "its idempotency key ({EMAIL_QUEUE:?} and the id, each '%' and ':' of the id counting three characters) would be {} characters, more than {MAX_IDEMPOTENCY_KEY_LEN}",
                    key.len()
                ),
            ));
        }
        let mut job = NewJob::json(self)?.with_job_id(job_id);
        if let Some(product) = &self.product {
            job = job.with_product(product.clone());
        }
        Ok(job)
    }

    /// Enqueues this job on the [`EMAIL_QUEUE`] of `queue` with the id `job_id`.
    /// Enqueueing the same id again while the job is known returns the existing job
    /// (`created` false) and sends nothing more.
    ///
    /// # Errors
    /// As [`EmailJob::to_new_job`] (nothing is enqueued), then as
    /// [`JobQueue::enqueue`].
    pub async fn enqueue(&self, queue: &(impl JobQueue + ?Sized), job_id: &str) -> Result<Enqueued> {
        queue.enqueue(EMAIL_QUEUE, self.to_new_job(job_id)?).await
    }
}

/// Classifies a mailer error for the queue: what the provider will refuse again within
/// the queue's few attempts (`InvalidInput`, `Config`, `Conflict` — the key was used
/// for another message —, `Unsupported`, `NotFound`, and the account's state:
/// `Unauthenticated`, a revoked key; `PermissionDenied`, e.g. Resend's daily or monthly
/// quota) is permanent and dead-letters the job at once; anything else (rate limits,
/// outages, timeouts, unclassified answers) is retried with the queue's backoff. Once
/// the key is fixed or the quota period has passed, the dead-lettered jobs can be run
/// again with [`JobQueue::retry_dead`].
pub fn job_error(err: &Error) -> JobError {
    let permanent = matches!(
        err.kind(),
        ErrorKind::InvalidInput
            | ErrorKind::Config
            | ErrorKind::Conflict
            | ErrorKind::Unsupported
            | ErrorKind::Unauthenticated
            | ErrorKind::PermissionDenied
            | ErrorKind::NotFound
    );
    let message = format!("sending email failed: {err}");
    if permanent {
        JobError::permanent(message)
    } else {
        JobError::retryable(message)
    }
}

/// The handler for workers on the [`EMAIL_QUEUE`]: reads the [`EmailJob`] payload
/// and sends it through `mailer` with the job's idempotency key
/// ([`JobContext::idempotency_key`]), so an attempt retried after a lost answer
/// returns the first message id instead of sending again.
///
/// A payload that is not an [`EmailJob`], or an invalid message, is dead-lettered
/// without reaching the mailer; other failures are classified by [`job_error`].
pub fn email_job_handler(mailer: DynMailer) -> Arc<dyn JobHandler> {
    Arc::new(EmailJobHandler { mailer })
}

struct EmailJobHandler {
    mailer: DynMailer,
}

#[async_trait]
impl JobHandler for EmailJobHandler {
    async fn handle(&self, ctx: JobContext) -> std::result::Result<(), JobError> {
        let span = tracing::info_span!(
            "email_job",
            queue = ctx.queue(),
            job_id = ctx.job_id(),
            attempt = ctx.attempt(),
            message_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        async move {
            let outcome = self.send(&ctx).await;
            let span = tracing::Span::current();
            match &outcome {
                Ok(()) => span.record("outcome", "ok"),
                Err(e) if e.is_permanent() => span.record("outcome", "dead"),
                Err(_) => span.record("outcome", "retry"),
            };
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, permanent = e.is_permanent(), "email job failed");
            }
            outcome
        }
        .instrument(span)
        .await
    }
}

impl EmailJobHandler {
    async fn send(&self, ctx: &JobContext) -> std::result::Result<(), JobError> {
        let job: EmailJob = ctx.payload()?;
        let email = job.email.with_idempotency_key(ctx.idempotency_key());
        email.validate().map_err(|e| job_error(&e))?;
        let id = self.mailer.send(&email).await.map_err(|e| job_error(&e))?;
        tracing::Span::current().record("message_id", id.as_str());
        Ok(())
    }
}
