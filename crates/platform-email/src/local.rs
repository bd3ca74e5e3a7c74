//! What the local mailers share: validation, idempotency keys, chunking, and
//! per-message outcomes, around a sink that stores messages all-or-nothing.

use std::collections::HashMap;

use async_trait::async_trait;
use platform_core::{Error, Result};
use tokio::sync::Mutex;

use crate::types::{BATCH_CHUNK_SIZE, Batch, BatchReport, Email, MessageId, copy_error};

/// Where a local mailer puts messages: all of `emails` or none.
#[async_trait]
pub(crate) trait Sink: Send + Sync {
    /// Stores `emails` (without idempotency keys) and returns their ids in order.
    async fn deliver(&self, emails: &[Email]) -> Result<Vec<MessageId>>;
}

#[derive(Debug)]
struct KeyEntry {
    payload: Vec<Email>,
    ids: Vec<MessageId>,
}

/// Idempotency keys seen by one local mailer (for the life of the process).
///
/// The lock is held across delivery, so two concurrent sends with one key deliver
/// once and both get the same ids.
#[derive(Debug, Default)]
pub(crate) struct LocalCore {
    keys: Mutex<HashMap<String, KeyEntry>>,
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
        let mut keys = self.keys.lock().await;
        if let Some(entry) = keys.get(key) {
            if entry.payload == payload {
                return Ok(entry.ids.clone());
            }
            return Err(Error::conflict(format!(
                "idempotency key {key:?} was already used with a different message"
            )));
        }
        let ids = sink.deliver(&payload).await?;
        keys.insert(
            key.to_owned(),
            KeyEntry {
                payload,
                ids: ids.clone(),
            },
        );
        Ok(ids)
    }
}
