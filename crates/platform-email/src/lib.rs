#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use platform_core::Result;

#[cfg(feature = "conformance")]
pub mod conformance;
mod local;
pub mod memory;
pub mod outbox;
#[cfg(feature = "queue")]
pub mod queue;
pub mod resend;
pub mod sender;
pub mod templates;
pub mod types;

pub use memory::{RecordingMailer, SentEmail};
pub use outbox::OutboxMailer;
pub use resend::{ResendMailer, ResendMailerBuilder};
pub use sender::{Sender, Senders};
pub use templates::{EmailTemplate, RenderedEmail};
pub use types::{BATCH_CHUNK_SIZE, Batch, BatchReport, ENTITY_REF_HEADER, Email, MessageId, Tag};

/// Sends transactional email.
///
/// Implementations: [`OutboxMailer`] (the local default: `.eml` files in a
/// directory), [`RecordingMailer`] (in memory, for tests) and [`ResendMailer`].
/// Callers hold a [`DynMailer`].
#[async_trait]
pub trait Mailer: Send + Sync + Debug + 'static {
    /// Sends one message and returns its id.
    ///
    /// # Behavior
    /// - Returns a non-empty id; two different messages get different ids.
    /// - Validates the message before anything is sent: a bad address is
    ///   `InvalidInput` naming the field (`from`, `to[1]`, `reply_to[0]`, …); so are
    ///   no recipient, more than 50 recipients in a field, an empty or multi-line
    ///   subject, no body, a header with a line break or a reserved name, and a tag
    ///   outside `[A-Za-z0-9_-]`. Nothing is sent then.
    /// - With an idempotency key, sending the same message again returns the first
    ///   id and delivers nothing more; the same key with a different message is
    ///   `Conflict`.
    /// - Rate limits and outages are retried (honouring `Retry-After`) with the same
    ///   idempotency key, so a retry never delivers twice.
    async fn send(&self, email: &Email) -> Result<MessageId>;

    /// Sends many messages, in chunks of [`BATCH_CHUNK_SIZE`], and reports each
    /// message's outcome in order.
    ///
    /// # Behavior
    /// - Every message is validated first; one bad message is `InvalidInput` naming it
    ///   (`emails[3].to[0]`) and nothing at all is sent.
    /// - A message carrying its own idempotency key is `InvalidInput`: a batch is
    ///   de-duplicated per chunk by the batch's key (`<key>/<chunk>`).
    /// - An empty batch sends nothing and reports nothing.
    /// - The report has one outcome per message, in order, with distinct ids; a
    ///   chunk that fails after retries fails each of its messages, and the other
    ///   chunks are still sent (never a silent partial failure).
    /// - Sending the same batch again with the same key returns the same ids and
    ///   delivers nothing more.
    async fn send_batch(&self, batch: &Batch) -> Result<BatchReport>;
}

/// A shared, type-erased mailer: what services hold.
pub type DynMailer = Arc<dyn Mailer>;

#[async_trait]
impl<T: Mailer + ?Sized> Mailer for Arc<T> {
    async fn send(&self, email: &Email) -> Result<MessageId> {
        (**self).send(email).await
    }

    async fn send_batch(&self, batch: &Batch) -> Result<BatchReport> {
        (**self).send_batch(batch).await
    }
}

#[async_trait]
impl<T: Mailer + ?Sized> Mailer for Box<T> {
    async fn send(&self, email: &Email) -> Result<MessageId> {
        (**self).send(email).await
    }

    async fn send_batch(&self, batch: &Batch) -> Result<BatchReport> {
        (**self).send_batch(batch).await
    }
}

/// Conveniences over any [`Mailer`].
#[async_trait]
pub trait MailerExt: Mailer {
    /// Renders `template`, sends it from `sender` to `to`, with the
    /// `X-Entity-Ref-ID` header set to `user_id` when given.
    ///
    /// # Errors
    /// Template errors, then as [`Mailer::send`].
    async fn send_template<T>(
        &self,
        sender: &Sender,
        to: &str,
        user_id: Option<&str>,
        template: &T,
    ) -> Result<MessageId>
    where
        T: EmailTemplate + ?Sized,
    {
        let email = templated_email(sender, to, user_id, template)?;
        self.send(&email).await
    }
}

impl<M: Mailer + ?Sized> MailerExt for M {}

/// `template` rendered from `sender` to `to`, with the `X-Entity-Ref-ID` header set to
/// `user_id` when given.
pub(crate) fn templated_email<T: EmailTemplate + ?Sized>(
    sender: &Sender,
    to: &str,
    user_id: Option<&str>,
    template: &T,
) -> Result<Email> {
    let email = Email::from_template(sender, to, template)?;
    Ok(match user_id {
        Some(user_id) => email.with_entity_ref(user_id),
        None => email,
    })
}
