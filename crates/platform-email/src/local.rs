//! What the local mailers share: validation, idempotency keys, chunking, and
//! per-message outcomes, around a sink that stores messages all-or-nothing.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{Error, Result};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::types::{BATCH_CHUNK_SIZE, Batch, BatchReport, Email, MessageId, copy_error};

/// Where a local mailer puts messages: all of `emails` or none.
#[async_trait]
pub(crate) trait Sink: Send + Sync {
    /// Stores `emails` (without idempotency keys) and returns their ids in order.
    async fn deliver(&self, emails: &[Email]) -> Result<Vec<MessageId>>;
}

/// How long a local mailer remembers an idempotency key: Resend's 24 hours.
const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
struct KeyEntry {
    /// A digest of the message(s) sent with the key (see [`digest`]), not the messages:
    /// a long-running worker sends one per job.
    digest: u64,
    ids: Vec<MessageId>,
}

/// The idempotency keys seen in the last [`KEY_TTL`], and when each was first used
/// (oldest first).
#[derive(Debug, Default)]
struct Keys {
    entries: HashMap<String, KeyEntry>,
    used: VecDeque<(Instant, String)>,
}

impl Keys {
    /// Forgets the keys first used [`KEY_TTL`] or more before `now`.
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.used.front() {
            if now.duration_since(*at) < KEY_TTL {
                break;
            }
            if let Some((_, key)) = self.used.pop_front() {
                self.entries.remove(&key);
            }
        }
    }
}

/// Idempotency keys seen by one local mailer in the last 24 hours (as Resend keeps
/// them).
///
/// The lock is held across delivery, so two concurrent sends with one key deliver
/// once and both get the same ids.
#[derive(Debug, Default)]
pub(crate) struct LocalCore {
    keys: Mutex<Keys>,
}

/// A digest of `payload` as JSON, to compare a key's later uses with its first.
fn digest(payload: &[Email]) -> Result<u64> {
    let json = serde_json::to_vec(payload)
        .map_err(|e| Error::unexpected("an email cannot be serialised").with_source(e))?;
    let mut hasher = DefaultHasher::new();
    json.hash(&mut hasher);
    Ok(hasher.finish())
}

impl LocalCore {
    pub(crate) async fn send(&self, sink: &dyn Sink, email: &Email) -> Result<MessageId> {
        email.validate()?;
        let payload = vec![email.without_key()];
        let ids = match &email.idempotency_key {
            Some(key) => self.deliver_once(sink, key, payload).await?,
            None => sink.deliver(&payload).await?,
        };
        ids.into_iter()
            .next()
            .ok_or_else(|| Error::unexpected("the local sink returned no id"))
    }

    pub(crate) async fn send_batch(&self, sink: &dyn Sink, batch: &Batch) -> Result<BatchReport> {
        batch.validate()?;
        let mut outcomes = Vec::with_capacity(batch.emails.len());
        for (index, chunk) in batch.emails.chunks(BATCH_CHUNK_SIZE).enumerate() {
            let payload = chunk.to_vec();
            let result = match &batch.idempotency_key {
                Some(base) => {
                    self.deliver_once(sink, &Batch::chunk_key(base, index), payload)
                        .await
                }
                None => sink.deliver(&payload).await,
            };
            match result {
                Ok(ids) if ids.len() == chunk.len() => outcomes.extend(ids.into_iter().map(Ok)),
                Ok(_) => outcomes.extend(chunk.iter().map(|_| {
                    Err(Error::unexpected(
                        "the local sink returned the wrong number of ids",
                    ))
                })),
                Err(e) => outcomes.extend(chunk.iter().map(|_| Err(copy_error(&e, e.message())))),
            }
        }
        Ok(BatchReport::new(outcomes))
    }

    async fn deliver_once(&self, sink: &dyn Sink, key: &str, payload: Vec<Email>) -> Result<Vec<MessageId>> {
        let digest = digest(&payload)?;
        let mut keys = self.keys.lock().await;
        let now = Instant::now();
        keys.expire(now);
        if let Some(entry) = keys.entries.get(key) {
            if entry.digest == digest {
                return Ok(entry.ids.clone());
            }
            return Err(Error::conflict(format!(
                "idempotency key {key:?} was already used with a different message"
            )));
        }
        let ids = sink.deliver(&payload).await?;
        keys.entries.insert(
            key.to_owned(),
            KeyEntry {
                digest,
                ids: ids.clone(),
            },
        );
        keys.used.push_back((now, key.to_owned()));
        Ok(ids)
    }
}
