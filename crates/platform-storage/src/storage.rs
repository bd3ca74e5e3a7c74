//! [`Storage`]: an [`ObjectStore`] plus the bucket catalogue and a clock — what
//! applications hold. It adds the metadata the seed attached to every upload
//! (`uploaded-at`, `product`), resolves public URLs and applies lifecycle rules.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use platform_core::{DynClock, ErrorKind, Result, system_clock};

use crate::catalog::{BucketCatalog, abort_rule};
use crate::temp::{TempUploads, TempUploadsConfig};
use crate::types::{BodyStream, ObjectMeta, PresignOptions, PresignedRequest, PutOptions};
use crate::{DynObjectStore, LocalObjectStore, ObjectStore};

/// Metadata key holding the upload time (RFC 3339, UTC, from the clock).
pub const UPLOADED_AT: &str = "uploaded-at";
/// Metadata key holding the owning product's slug (from the bucket catalogue).
pub const PRODUCT: &str = "product";

/// Object storage with the bucket catalogue: cheap to clone.
#[derive(Debug, Clone)]
pub struct Storage {
    store: DynObjectStore,
    catalog: Arc<BucketCatalog>,
    clock: DynClock,
}

impl Storage {
    /// Storage over `store` with `catalog`, timestamps from `clock`.
    pub fn new(store: DynObjectStore, catalog: BucketCatalog, clock: DynClock) -> Self {
        Self {
            store,
            catalog: Arc::new(catalog),
            clock,
        }
    }

    /// The embedded default: a [`LocalObjectStore`] under `root`, the seed catalogue,
    /// the system clock.
    ///
    /// # Errors
    /// `Config` if the root cannot be created.
    pub fn local(root: impl Into<PathBuf>) -> Result<Self> {
        let clock = system_clock();
        let store = LocalObjectStore::new(root)?.with_clock(clock.clone());
        Ok(Self::new(Arc::new(store), BucketCatalog::default(), clock))
    }

    /// The object store.
    pub fn store(&self) -> &DynObjectStore {
        &self.store
    }

    /// The bucket catalogue.
    pub fn catalog(&self) -> &BucketCatalog {
        &self.catalog
    }

    /// The clock.
    pub fn clock(&self) -> &DynClock {
        &self.clock
    }

    /// Creates every bucket of the catalogue that does not exist yet.
    ///
    /// # Errors
    /// The first failure.
    pub async fn ensure_buckets(&self) -> Result<()> {
        for b in self.catalog.buckets() {
            self.store.create_bucket(&b.name).await?;
        }
        Ok(())
    }

    /// Applies every catalogue bucket's lifecycle rules (tiers, expiry, abort of
    /// incomplete multipart uploads, the temporary-uploads safety net), replacing the
    /// bucket's rules, so that a rule taken out of the catalogue stops expiring
    /// objects. On a store without lifecycle support, a bucket whose only rule is the
    /// abort of incomplete uploads every bucket gets is left as it is.
    ///
    /// # Errors
    /// The first failure.
    pub async fn apply_lifecycle(&self) -> Result<()> {
        for b in self.catalog.buckets() {
            let rules = b.lifecycle_rules();
            let only_default = rules == [abort_rule()];
            match self.store.put_lifecycle(&b.name, &rules).await {
                Err(e) if only_default && e.kind() == ErrorKind::Unsupported => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// `opts` plus `uploaded-at` (now) and `product` (the bucket's owner in the catalogue).
    ///
    /// # Errors
    /// `NotFound` when the bucket is not in the catalogue.
    pub fn upload_options(&self, bucket: &str, mut opts: PutOptions) -> Result<PutOptions> {
        let config = self.catalog.get(bucket)?;
        opts.metadata.insert(
            UPLOADED_AT.to_owned(),
            self.clock.now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        if let Some(p) = &config.product {
            opts.metadata.insert(PRODUCT.to_owned(), p.as_str().to_owned());
        }
        Ok(opts)
    }

    /// Uploads `body` to a catalogue bucket, adding `uploaded-at` and `product`.
    ///
    /// # Errors
    /// `NotFound` for a bucket outside the catalogue; otherwise as [`ObjectStore::put`].
    pub async fn upload(&self, bucket: &str, key: &str, body: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        let opts = self.upload_options(bucket, opts)?;
        self.store.put(bucket, key, body, opts).await
    }

    /// Uploads a streamed body with bounded memory, adding `uploaded-at` and `product`.
    ///
    /// # Errors
    /// As [`Storage::upload`] and [`ObjectStore::put_stream`].
    pub async fn upload_stream(
        &self,
        bucket: &str,
        key: &str,
        body: BodyStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        let opts = self.upload_options(bucket, opts)?;
        self.store.put_stream(bucket, key, body, opts).await
    }

    /// A presigned download URL valid for `expires_in`.
    ///
    /// # Errors
    /// As [`ObjectStore::presign`].
    pub async fn presign_download(
        &self,
        bucket: &str,
        key: &str,
        expires_in: Duration,
    ) -> Result<PresignedRequest> {
        self.store
            .presign(bucket, key, PresignOptions::get(expires_in))
            .await
    }

    /// The public (or CDN) URL of `key`; see [`BucketCatalog::public_url`].
    ///
    /// # Errors
    /// As [`BucketCatalog::public_url`].
    pub fn public_url(&self, bucket: &str, key: &str) -> Result<String> {
        self.catalog.public_url(bucket, key)
    }

    /// Temporary uploads on this storage with the default settings.
    pub fn temp_uploads(&self) -> TempUploads {
        TempUploads::new(self.clone(), TempUploadsConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use platform_core::ManualClock;

    use super::*;
    use crate::{InMemoryObjectStore, ObjectStoreExt as _};

    #[tokio::test]
    async fn uploads_get_product_from_the_catalogue_and_time_from_the_clock() {
        let clock = ManualClock::at_unix(1_795_000_000);
        let store = Arc::new(InMemoryObjectStore::with_clock(clock.shared()));
        let storage = Storage::new(store.clone(), BucketCatalog::default(), clock.shared());
        storage.ensure_buckets().await.unwrap();
        let meta = storage
            .upload(
                "kumori-images",
                "a.png",
                Bytes::from_static(b"png"),
                PutOptions::new().with_metadata("k", "v"),
            )
            .await
            .unwrap();
        assert_eq!(meta.metadata.get("product").map(String::as_str), Some("kumori"));
        assert_eq!(
            meta.metadata.get("uploaded-at").map(String::as_str),
            Some("2026-11-18T11:06:40Z")
        );
        assert_eq!(meta.metadata.get("k").map(String::as_str), Some("v"));
        let head = store.head("platform-assets", "x").await.unwrap_err();
        assert_eq!(head.kind(), ErrorKind::NotFound);
        let assets = storage
            .upload(
                "platform-assets",
                "x",
                Bytes::from_static(b"x"),
                PutOptions::new(),
            )
            .await
            .unwrap();
        assert!(!assets.metadata.contains_key("product"));
        let err = storage
            .upload("not-in-catalogue", "x", Bytes::new(), PutOptions::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        storage.apply_lifecycle().await.unwrap();
        let rules = store.get_lifecycle("arbor-artifacts").await.unwrap();
        assert_eq!(rules[0].transition_days, Some(30));
        assert_eq!(
            store.get_bytes("kumori-images", "a.png").await.unwrap(),
            Bytes::from_static(b"png")
        );
    }
}
