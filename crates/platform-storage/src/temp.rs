//! [`TempUploads`]: short-lived uploads (the seed's Vercel Blob), on any [`ObjectStore`](crate::ObjectStore).
//!
//! A client asks for an upload slot for a purpose, gets a presigned PUT pinned to the
//! declared content type and exact length (sizes over the limit, 50 MiB by default,
//! are refused), and uploads directly. The object's expiry is recorded in its key
//! (`tmp/{purpose}/{expires-at-unix}/{id}/{filename}`), so a sweep needs only a
//! listing. [`TempUploads::promote`] moves a finished upload into permanent storage;
//! [`TempUploads::sweep_expired`] (for a scheduled job) deletes what is past its TTL;
//! a 1-day lifecycle rule on the prefix is the safety net if sweeps stop.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use platform_core::{Error, Result};

use crate::catalog::{TEMP_BUCKET, TEMP_PREFIX};
use crate::storage::Storage;
use crate::types::{ObjectMeta, PresignOptions, PresignedRequest, PutOptions};
use crate::validate::validate_header_value;
use crate::{ObjectStore as _, ObjectStoreExt as _};

/// What a temporary upload is for; each has its own key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UploadPurpose {
    /// General temporary uploads (`temp-uploads`).
    TempUploads,
    /// Files uploaded for a preview (`preview-files`).
    PreviewFiles,
    /// Exports waiting to be picked up (`export-queue`).
    ExportQueue,
}

impl UploadPurpose {
    /// The slug used in keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TempUploads => "temp-uploads",
            Self::PreviewFiles => "preview-files",
            Self::ExportQueue => "export-queue",
        }
    }
}

impl fmt::Display for UploadPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest time to live of a temporary upload: one day, after which the `tmp/`
/// lifecycle rule of the temporary bucket (see [`BucketCatalog`](crate::BucketCatalog))
/// deletes it on R2 whatever the TTL.
pub const MAX_TEMP_TTL: Duration = Duration::from_secs(24 * 3600);

/// Settings of [`TempUploads`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TempUploadsConfig {
    /// The bucket (default `platform-temp`).
    pub bucket: String,
    /// The key prefix, ending in `/` (default `tmp/`).
    pub prefix: String,
    /// Largest upload accepted (default 50 MiB).
    pub max_bytes: u64,
    /// How long an upload lives (default 24 h, at most [`MAX_TEMP_TTL`]).
    pub ttl: Duration,
    /// How long the presigned PUT stays valid (default 15 min, never beyond the TTL).
    pub url_expiry: Duration,
}

impl Default for TempUploadsConfig {
    fn default() -> Self {
        Self {
            bucket: TEMP_BUCKET.to_owned(),
            prefix: TEMP_PREFIX.to_owned(),
            max_bytes: 50 * 1024 * 1024,
            ttl: Duration::from_secs(24 * 3600),
            url_expiry: Duration::from_secs(15 * 60),
        }
    }
}

impl TempUploadsConfig {
    /// Sets the bucket.
    #[must_use]
    pub fn with_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// Sets the size limit.
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Sets the time to live: at most [`MAX_TEMP_TTL`], which [`TempUploads::issue`]
    /// checks.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// An issued upload slot: where to PUT, and until when the upload lives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadSlot {
    /// A unique id.
    pub id: String,
    /// What it is for.
    pub purpose: UploadPurpose,
    /// The bucket of the temporary object.
    pub bucket: String,
    /// The key of the temporary object (it records the expiry).
    pub key: String,
    /// The content type the upload must send.
    pub content_type: String,
    /// The exact length the upload must have.
    pub content_length: u64,
    /// When the upload is swept.
    pub expires_at: DateTime<Utc>,
    /// The presigned PUT to upload with.
    pub upload: PresignedRequest,
}

/// Temporary uploads with a TTL on top of a [`Storage`].
#[derive(Debug, Clone)]
pub struct TempUploads {
    storage: Storage,
    config: TempUploadsConfig,
}

fn sanitize(filename: &str) -> String {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let clean = clean.trim_start_matches('.');
    if clean.is_empty() {
        "upload".to_owned()
    } else {
        clean.to_owned()
    }
}

impl TempUploads {
    /// Temporary uploads on `storage`.
    pub fn new(storage: Storage, config: TempUploadsConfig) -> Self {
        Self { storage, config }
    }

    /// The settings.
    pub fn config(&self) -> &TempUploadsConfig {
        &self.config
    }

    /// Issues an upload slot: a presigned PUT of exactly `content_length` bytes of
    /// `content_type`, living for the TTL.
    ///
    /// # Errors
    /// `InvalidInput` when the length is 0 or over the limit, or the content type is
    /// invalid (empty, or not printable ASCII: `promote` could not store it); `Config`
    /// when the TTL exceeds [`MAX_TEMP_TTL`].
    pub async fn issue(
        &self,
        purpose: UploadPurpose,
        filename: &str,
        content_type: &str,
        content_length: u64,
    ) -> Result<UploadSlot> {
        if content_length == 0 {
            return Err(Error::invalid_input("an upload must not be empty"));
        }
        validate_header_value("content type", content_type)?;
        if self.config.ttl > MAX_TEMP_TTL {
            return Err(Error::config(format!(
                "temporary upload TTL of {} s exceeds {} s: the `tmp/` lifecycle rule deletes uploads after one day",
                self.config.ttl.as_secs(),
                MAX_TEMP_TTL.as_secs()
            )));
        }
        if content_length > self.config.max_bytes {
            return Err(Error::invalid_input(format!(
                "upload of {content_length} bytes exceeds the limit of {} bytes",
                self.config.max_bytes
            )));
        }
        let now = self.storage.clock().now();
        let ttl = TimeDelta::from_std(self.config.ttl)
            .map_err(|e| Error::config("temporary upload TTL out of range").with_source(e))?;
        // Whole seconds, as the expiry is recorded in the key: rounded up, so that a
        // slot never expires before its TTL has passed.
        let due = now + ttl;
        let secs = due.timestamp() + i64::from(due.timestamp_subsec_nanos() > 0);
        let expires_at = DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| Error::config("temporary upload expiry out of range"))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let key = format!(
            "{}{}/{}/{id}/{}",
            self.config.prefix,
            purpose.as_str(),
            expires_at.timestamp(),
            sanitize(filename)
        );
        let url_expiry = self.config.url_expiry.min(self.config.ttl);
        let upload = self
            .storage
            .store()
            .presign(
                &self.config.bucket,
                &key,
                PresignOptions::put(url_expiry, content_type, content_length),
            )
            .await?;
        tracing::debug!(
            purpose = purpose.as_str(),
            key,
            content_length,
            "issued temporary upload slot"
        );
        Ok(UploadSlot {
            id,
            purpose,
            bucket: self.config.bucket.clone(),
            key,
            content_type: content_type.to_owned(),
            content_length,
            expires_at,
            upload,
        })
    }

    /// The expiry recorded in a temporary key, if it is one.
    pub fn expiry_of(&self, key: &str) -> Option<DateTime<Utc>> {
        let rest = key.strip_prefix(&self.config.prefix)?;
        let secs = rest.split('/').nth(1)?.parse().ok()?;
        DateTime::from_timestamp(secs, 0)
    }

    /// Moves a finished upload into permanent storage at `bucket`/`key` (a catalogue
    /// bucket; `uploaded-at` and `product` metadata are added), then deletes the
    /// temporary object.
    ///
    /// # Errors
    /// `NotFound` when nothing was uploaded or the slot expired; `Conflict` when the
    /// uploaded size differs from the slot's.
    pub async fn promote(&self, slot: &UploadSlot, bucket: &str, key: &str) -> Result<ObjectMeta> {
        let expires = self
            .expiry_of(&slot.key)
            .ok_or_else(|| Error::invalid_input(format!("{:?} is not a temporary upload key", slot.key)))?;
        if self.storage.clock().now() >= expires {
            return Err(Error::not_found(format!(
                "temporary upload {:?} expired",
                slot.key
            )));
        }
        let store = self.storage.store();
        let temp = store.head(&self.config.bucket, &slot.key).await?;
        if temp.size != slot.content_length {
            return Err(Error::conflict(format!(
                "uploaded {} bytes but the slot declared {}",
                temp.size, slot.content_length
            )));
        }
        let mut opts = PutOptions::new().with_content_type(slot.content_type.clone());
        opts.metadata = temp.metadata.clone();
        let opts = self.storage.upload_options(bucket, opts)?;
        let meta = store
            .copy(&self.config.bucket, &slot.key, bucket, key, Some(opts))
            .await?;
        store.delete(&self.config.bucket, &slot.key).await?;
        Ok(meta)
    }

    /// Deletes every temporary upload past its TTL; returns how many. Idempotent and
    /// safe to run concurrently (deleting a missing key is not an error).
    ///
    /// # Errors
    /// A listing or deletion failure.
    pub async fn sweep_expired(&self) -> Result<usize> {
        let now = self.storage.clock().now();
        let all = self
            .storage
            .store()
            .list_all(&self.config.bucket, &self.config.prefix)
            .await?;
        let expired: Vec<String> = all
            .into_iter()
            .filter(|m| self.expiry_of(&m.key).is_some_and(|e| e <= now))
            .map(|m| m.key)
            .collect();
        if !expired.is_empty() {
            self.storage
                .store()
                .delete_many(&self.config.bucket, &expired)
                .await?;
        }
        tracing::info!(swept = expired.len(), "swept expired temporary uploads");
        Ok(expired.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_sanitized() {
        assert_eq!(sanitize("../../etc/passwd"), "passwd");
        assert_eq!(sanitize("my photo (1).PNG"), "my_photo__1_.PNG");
        assert_eq!(sanitize("..."), "upload");
        assert_eq!(sanitize(""), "upload");
        assert_eq!(sanitize("C:\\x\\y.txt"), "y.txt");
    }
}
