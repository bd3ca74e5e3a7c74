//! [`RecordingMailer`]: an in-memory mailer that records every message, for tests.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use platform_core::{DynClock, Error, ErrorKind, Result, system_clock};

use crate::Mailer;
use crate::local::{LocalCore, Sink};
use crate::types::{Batch, BatchReport, Email, MessageId, parse_mailbox};

/// A message a [`RecordingMailer`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentEmail {
    /// The id it was given.
    pub id: MessageId,
    /// The message, as sent (without its idempotency key).
    pub email: Email,
    /// When it was sent, by the mailer's clock.
    pub sent_at: DateTime<Utc>,
}

#[derive(Default)]
struct Recorded {
    sent: Vec<SentEmail>,
    next_id: u64,
    fail_next: Option<(ErrorKind, String)>,
}

struct RecordingSink {
    clock: DynClock,
    state: Mutex<Recorded>,
}

#[async_trait]
impl Sink for RecordingSink {
    async fn deliver(&self, emails: &[Email]) -> Result<Vec<MessageId>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((kind, message)) = state.fail_next.take() {
            return Err(Error::new(kind, message).with_provider("memory"));
        }
        let now = self.clock.now();
        let mut ids = Vec::with_capacity(emails.len());
        for email in emails {
            state.next_id += 1;
            let id = MessageId::new(format!("mem-{:08}", state.next_id));
            state.sent.push(SentEmail {
                id: id.clone(),
                email: email.clone(),
                sent_at: now,
            });
            ids.push(id);
        }
        Ok(ids)
    }
}

/// A complete, deterministic in-memory [`Mailer`]: validates exactly like the real
/// adapter, honours idempotency keys, chunks batches the same way, and records every
/// accepted message for assertions. Ids are `mem-00000001`, `mem-00000002`, …
///
/// Clones share the same record.
#[derive(Clone)]
pub struct RecordingMailer {
    core: Arc<LocalCore>,
    sink: Arc<RecordingSink>,
}

impl fmt::Debug for RecordingMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingMailer")
            .field("sent", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for RecordingMailer {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordingMailer {
    /// An empty recorder on the system clock.
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// An empty recorder whose `sent_at` times come from `clock`.
    pub fn with_clock(clock: DynClock) -> Self {
        Self {
            core: Arc::new(LocalCore::default()),
            sink: Arc::new(RecordingSink {
                clock,
                state: Mutex::new(Recorded::default()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.sink.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every message accepted so far, in order.
    pub fn sent(&self) -> Vec<SentEmail> {
        self.state().sent.clone()
    }

    /// How many messages were accepted.
    pub fn len(&self) -> usize {
        self.state().sent.len()
    }

    /// Whether nothing was accepted yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recent message.
    pub fn last(&self) -> Option<SentEmail> {
        self.state().sent.last().cloned()
    }

    /// The messages with `address` among their `to` recipients (`Name <address>` or a
    /// bare address; compared whole, ignoring case).
    pub fn sent_to(&self, address: &str) -> Vec<SentEmail> {
        let is_address =
            |to: &str| parse_mailbox(to).is_ok_and(|m| m.address.eq_ignore_ascii_case(address.trim()));
        self.state()
            .sent
            .iter()
            .filter(|s| s.email.to.iter().any(|to| is_address(to)))
            .cloned()
            .collect()
    }

    /// Forgets recorded messages (idempotency keys are kept).
    pub fn clear(&self) {
        self.state().sent.clear();
    }

    /// Makes the next delivery (one message, or one batch chunk) fail with `kind`,
    /// to test how callers handle failures. Nothing is recorded for it.
    pub fn fail_next(&self, kind: ErrorKind, message: impl Into<String>) {
        self.state().fail_next = Some((kind, message.into()));
    }
}

#[async_trait]
impl Mailer for RecordingMailer {
    async fn send(&self, email: &Email) -> Result<MessageId> {
        self.core.send(&*self.sink, email).await
    }

    async fn send_batch(&self, batch: &Batch) -> Result<BatchReport> {
        self.core.send_batch(&*self.sink, batch).await
    }
}
