//! The bucket catalogue: which buckets exist, who may read them, which product owns
//! them, and their lifecycle tiers.
//!
//! # Hot, warm and cold on R2
//!
//! R2 has two storage classes: **Standard** and **Infrequent Access** (cheaper
//! storage, a per-GB retrieval fee, 30-day minimum). The three tiers map onto them so:
//!
//! | tier | R2 storage class | lifecycle rule |
//! |---|---|---|
//! | hot (day 0 to `warm_after_days`) | Standard | none: objects start there |
//! | warm (from `warm_after_days + 1`) | Infrequent Access | transition after `warm_after_days` |
//! | cold (from `cold_after_days + 1`) | Infrequent Access (R2 has no colder class) | optional expiration after `expire_after_days` |
//!
//! Cold is kept in the catalogue as the point after which objects are archival and
//! may be expired; on R2 it costs the same as warm. Every bucket aborts incomplete
//! multipart uploads after 1 day: a tiered one in its tiers rule, any other in a rule of
//! its own (see [`BucketConfig::lifecycle_rules`]).

use std::collections::BTreeMap;

use platform_core::{EnvMap, Error, Product, Result};
use serde::{Deserialize, Serialize};

use crate::types::LifecycleRule;
use crate::validate::{encode_key, validate_bucket, validate_key};

/// Who can read a bucket's objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BucketAccess {
    /// Public read through `base_url` (an R2 custom domain or `r2.dev` URL).
    PublicRead {
        /// Public URLs are `{base_url}/{key}`.
        base_url: Option<String>,
    },
    /// Private, served through a CDN at `base_url` (which authenticates to the bucket).
    Cdn {
        /// CDN URLs are `{base_url}/{key}`.
        base_url: Option<String>,
    },
    /// Private: only presigned URLs.
    Private,
}

/// Lifecycle tiers of a bucket, in days since an object was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StorageTiers {
    /// Last day of the hot tier: objects move to Infrequent Access after this many days.
    pub warm_after_days: u32,
    /// Last day of the warm tier (cold starts the day after).
    pub cold_after_days: u32,
    /// Optionally delete objects after this many days.
    pub expire_after_days: Option<u32>,
}

impl StorageTiers {
    /// Hot until `warm_after_days`, warm until `cold_after_days`, then cold; never expire.
    pub fn new(warm_after_days: u32, cold_after_days: u32) -> Self {
        Self {
            warm_after_days,
            cold_after_days,
            expire_after_days: None,
        }
    }

    /// Deletes objects after `days`.
    #[must_use]
    pub fn expire_after(mut self, days: u32) -> Self {
        self.expire_after_days = Some(days);
        self
    }
}

/// One bucket of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BucketConfig {
    /// The bucket name.
    pub name: String,
    /// Who may read.
    pub access: BucketAccess,
    /// The product owning the bucket (stored as `product` metadata on uploads), if any.
    pub product: Option<Product>,
    /// Lifecycle tiers, if any.
    pub tiers: Option<StorageTiers>,
    /// Extra lifecycle rules (e.g. the 1-day safety net on the temporary-uploads prefix).
    #[serde(default)]
    pub extra_rules: Vec<LifecycleRule>,
}

impl BucketConfig {
    /// A private bucket without product, tiers or rules.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            access: BucketAccess::Private,
            product: None,
            tiers: None,
            extra_rules: Vec::new(),
        }
    }

    /// Sets the access.
    #[must_use]
    pub fn with_access(mut self, access: BucketAccess) -> Self {
        self.access = access;
        self
    }

    /// Sets the owning product.
    #[must_use]
    pub fn with_product(mut self, product: Product) -> Self {
        self.product = Some(product);
        self
    }

    /// Sets the lifecycle tiers.
    #[must_use]
    pub fn with_tiers(mut self, tiers: StorageTiers) -> Self {
        self.tiers = Some(tiers);
        self
    }

    /// Adds a lifecycle rule.
    #[must_use]
    pub fn with_rule(mut self, rule: LifecycleRule) -> Self {
        self.extra_rules.push(rule);
        self
    }

    /// The S3 lifecycle rules of this bucket: the tiers (transition to Infrequent
    /// Access, optional expiry, abort incomplete multipart uploads after 1 day), then
    /// the extra rules, then, unless a rule already does so for the whole bucket, one
    /// that aborts incomplete multipart uploads after 1 day (`abort-incomplete-uploads`):
    /// the parts of an upload that never completed (its client crashed) are billed
    /// storage until aborted.
    pub fn lifecycle_rules(&self) -> Vec<LifecycleRule> {
        let mut rules = Vec::new();
        if let Some(t) = self.tiers {
            let mut r = LifecycleRule::new("tiers", "")
                .transition_after(t.warm_after_days)
                .abort_incomplete_multipart_after(1);
            r.expiration_days = t.expire_after_days;
            rules.push(r);
        }
        rules.extend(self.extra_rules.iter().cloned());
        // A rule of the caller's named `ABORT_RULE` takes its place (two rules of one id
        // are refused).
        let aborts = |r: &LifecycleRule| {
            r.id == ABORT_RULE || (r.prefix.is_empty() && r.abort_incomplete_multipart_days.is_some())
        };
        if !rules.iter().any(aborts) {
            rules.push(abort_rule());
        }
        rules
    }
}

/// The buckets an application uses, keyed by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketCatalog {
    buckets: BTreeMap<String, BucketConfig>,
}

/// The id of the rule that aborts a bucket's incomplete multipart uploads when no other
/// rule does (see [`BucketConfig::lifecycle_rules`]).
pub const ABORT_RULE: &str = "abort-incomplete-uploads";

/// The rule a bucket gets when none of its rules aborts its incomplete multipart uploads.
pub(crate) fn abort_rule() -> LifecycleRule {
    LifecycleRule::new(ABORT_RULE, "").abort_incomplete_multipart_after(1)
}

/// The seed's public assets bucket.
pub const ASSETS_BUCKET: &str = "platform-assets";
/// The seed's Arbor artifacts bucket.
pub const ARBOR_BUCKET: &str = "arbor-artifacts";
/// The seed's Kumori images bucket.
pub const KUMORI_BUCKET: &str = "kumori-images";
/// The private bucket of temporary uploads (replacing the seed's Vercel Blob).
pub const TEMP_BUCKET: &str = "platform-temp";
/// The key prefix of temporary uploads.
pub const TEMP_PREFIX: &str = "tmp/";

impl Default for BucketCatalog {
    /// The seed's buckets: `platform-assets` (public read), `arbor-artifacts` (private;
    /// hot 0–30 d, warm 31–90 d, cold 91+ d), `kumori-images` (CDN; hot 0–7 d, warm
    /// 8–30 d, cold 31+ d), plus `platform-temp` (private; temporary uploads under
    /// `tmp/`, deleted after 1 day by a lifecycle rule as a safety net).
    fn default() -> Self {
        Self::from_buckets([
            BucketConfig::new(ASSETS_BUCKET).with_access(BucketAccess::PublicRead { base_url: None }),
            BucketConfig::new(ARBOR_BUCKET)
                .with_product(Product::ARBOR)
                .with_tiers(StorageTiers::new(30, 90)),
            BucketConfig::new(KUMORI_BUCKET)
                .with_access(BucketAccess::Cdn { base_url: None })
                .with_product(Product::KUMORI)
                .with_tiers(StorageTiers::new(7, 30)),
            BucketConfig::new(TEMP_BUCKET).with_rule(
                LifecycleRule::new("temp-uploads-ttl", TEMP_PREFIX)
                    .expire_after(1)
                    .abort_incomplete_multipart_after(1),
            ),
        ])
    }
}

impl BucketCatalog {
    /// A catalogue of exactly these buckets.
    pub fn from_buckets(buckets: impl IntoIterator<Item = BucketConfig>) -> Self {
        Self {
            buckets: buckets.into_iter().map(|b| (b.name.clone(), b)).collect(),
        }
    }

    /// The seed catalogue with base URLs from the environment:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `STORAGE_PUBLIC_BASE_URL` | public URL base of `platform-assets` |
    /// | `STORAGE_KUMORI_CDN_URL` | CDN URL base of `kumori-images` |
    /// | `STORAGE_CATALOG_JSON` | a whole catalogue as JSON (replaces the seed) |
    ///
    /// # Errors
    /// `Config` when the JSON is invalid.
    pub fn from_env_map(env: &EnvMap) -> Result<Self> {
        let mut catalog = match env.optional("STORAGE_CATALOG_JSON") {
            Some(json) => Self::from_json(json)
                .map_err(|e| Error::config(format!("STORAGE_CATALOG_JSON is invalid: {}", e.message())))?,
            None => Self::default(),
        };
        if let Some(url) = env.optional("STORAGE_PUBLIC_BASE_URL")
            && let Some(b) = catalog.buckets.get_mut(ASSETS_BUCKET)
        {
            b.access = BucketAccess::PublicRead {
                base_url: Some(url.to_owned()),
            };
        }
        if let Some(url) = env.optional("STORAGE_KUMORI_CDN_URL")
            && let Some(b) = catalog.buckets.get_mut(KUMORI_BUCKET)
        {
            b.access = BucketAccess::Cdn {
                base_url: Some(url.to_owned()),
            };
        }
        Ok(catalog)
    }

    /// This catalogue with a private bucket `{slug}-files` for each of `products` that
    /// owns no bucket of it, so that a product added by configuration alone has one
    /// (its [`bucket_of`](Self::bucket_of)). A product owning a bucket already is left
    /// as it is, and so is one whose `{slug}-files` name another bucket holds.
    #[must_use]
    pub fn with_product_buckets<'a>(mut self, products: impl IntoIterator<Item = &'a Product>) -> Self {
        for product in products {
            let name = format!("{product}-files");
            let owned = self.buckets.values().any(|b| b.product.as_ref() == Some(product));
            if !owned && !self.buckets.contains_key(&name) {
                let bucket = BucketConfig::new(name.clone()).with_product(product.clone());
                self.buckets.insert(name, bucket);
            }
        }
        self
    }

    /// A catalogue from JSON: `{"buckets": {"name": {"name": .., "access": {"kind": "private"}, ..}}}`.
    ///
    /// # Errors
    /// `InvalidInput` when the JSON or a bucket name is invalid.
    pub fn from_json(json: &str) -> Result<Self> {
        let catalog: Self = serde_json::from_str(json)
            .map_err(|e| Error::invalid_input(format!("invalid bucket catalogue: {e}")))?;
        for b in catalog.buckets.values() {
            validate_bucket(&b.name)?;
        }
        Ok(catalog)
    }

    /// Sets a bucket's access (e.g. its public base URL).
    #[must_use]
    pub fn with_access(mut self, bucket: &str, access: BucketAccess) -> Self {
        if let Some(b) = self.buckets.get_mut(bucket) {
            b.access = access;
        }
        self
    }

    /// The bucket's configuration.
    ///
    /// # Errors
    /// `NotFound` when the bucket is not in the catalogue.
    pub fn get(&self, bucket: &str) -> Result<&BucketConfig> {
        self.buckets
            .get(bucket)
            .ok_or_else(|| Error::not_found(format!("bucket {bucket:?} is not in the catalogue")))
    }

    /// Every bucket, by name.
    pub fn buckets(&self) -> impl Iterator<Item = &BucketConfig> {
        self.buckets.values()
    }

    /// The product owning `bucket`, from the catalogue (never from string matching).
    pub fn product_of(&self, bucket: &str) -> Option<&Product> {
        self.buckets.get(bucket).and_then(|b| b.product.as_ref())
    }

    /// The bucket owned by `product`, if exactly one is.
    pub fn bucket_of(&self, product: &Product) -> Option<&BucketConfig> {
        let mut owned = self
            .buckets
            .values()
            .filter(|b| b.product.as_ref() == Some(product));
        let first = owned.next()?;
        owned.next().is_none().then_some(first)
    }

    /// The URL anyone can read `key` at: `{base_url}/{key}` for a public or CDN bucket.
    ///
    /// # Errors
    /// `NotFound` for an unknown bucket, `PermissionDenied` for a private one, `Config`
    /// when the base URL is not configured, `InvalidInput` for a bad key.
    pub fn public_url(&self, bucket: &str, key: &str) -> Result<String> {
        validate_key(key)?;
        let base = match &self.get(bucket)?.access {
            BucketAccess::PublicRead { base_url } | BucketAccess::Cdn { base_url } => base_url.as_deref(),
            BucketAccess::Private => {
                return Err(Error::new(
                    platform_core::ErrorKind::PermissionDenied,
                    format!("bucket {bucket:?} is private: use a presigned URL"),
                ));
            }
        };
        let base = base.ok_or_else(|| {
            Error::config(format!(
                "no public base URL configured for bucket {bucket:?} (STORAGE_PUBLIC_BASE_URL / STORAGE_KUMORI_CDN_URL)"
            ))
        })?;
        Ok(format!("{}/{}", base.trim_end_matches('/'), encode_key(key)))
    }
}

#[cfg(test)]
mod tests {
    use platform_core::ErrorKind;

    use super::*;

    /// A product owning no bucket gets `{slug}-files`; one owning a bucket, or whose
    /// `{slug}-files` name is taken, is left as it is.
    #[test]
    fn products_without_a_bucket_get_one() {
        let (mori, taken) = (Product::new("mori").unwrap(), Product::new("taken").unwrap());
        let catalog = BucketCatalog::from_buckets([
            BucketConfig::new(ARBOR_BUCKET).with_product(Product::ARBOR),
            BucketConfig::new("taken-files"),
        ])
        .with_product_buckets([&Product::ARBOR, &mori, &taken]);
        assert_eq!(
            catalog.bucket_of(&Product::ARBOR).map(|b| b.name.as_str()),
            Some(ARBOR_BUCKET)
        );
        let bucket = catalog.bucket_of(&mori).unwrap();
        assert_eq!(bucket.name, "mori-files");
        assert_eq!(bucket.access, BucketAccess::Private);
        assert!(catalog.bucket_of(&taken).is_none());
        assert!(catalog.get("taken-files").unwrap().product.is_none());
    }

    #[test]
    fn seed_catalogue_products_tiers_and_urls() {
        let env = EnvMap::from_iter([
            ("STORAGE_PUBLIC_BASE_URL", "https://assets.example.com/"),
            ("STORAGE_KUMORI_CDN_URL", "https://img.example.com"),
        ]);
        let c = BucketCatalog::from_env_map(&env).unwrap();
        assert_eq!(c.product_of(ARBOR_BUCKET), Some(&Product::ARBOR));
        assert_eq!(c.product_of(KUMORI_BUCKET), Some(&Product::KUMORI));
        assert_eq!(c.product_of(ASSETS_BUCKET), None);
        assert_eq!(
            c.bucket_of(&Product::KUMORI).map(|b| b.name.as_str()),
            Some(KUMORI_BUCKET)
        );
        assert_eq!(
            c.public_url(ASSETS_BUCKET, "logos/a b.png").unwrap(),
            "https://assets.example.com/logos/a%20b.png"
        );
        assert_eq!(
            c.public_url(KUMORI_BUCKET, "x.webp").unwrap(),
            "https://img.example.com/x.webp"
        );
        assert_eq!(
            c.public_url(ARBOR_BUCKET, "x").unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            c.public_url("nope-bucket", "x").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            c.public_url(ASSETS_BUCKET, "../x").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let unset = BucketCatalog::default();
        assert_eq!(
            unset.public_url(ASSETS_BUCKET, "x").unwrap_err().kind(),
            ErrorKind::Config
        );

        let arbor = c.get(ARBOR_BUCKET).unwrap().lifecycle_rules();
        assert_eq!(arbor.len(), 1);
        assert_eq!(arbor[0].transition_days, Some(30));
        assert_eq!(arbor[0].abort_incomplete_multipart_days, Some(1));
        assert_eq!(
            c.get(KUMORI_BUCKET).unwrap().lifecycle_rules()[0].transition_days,
            Some(7)
        );
        let temp = c.get(TEMP_BUCKET).unwrap().lifecycle_rules();
        assert_eq!(
            (temp[0].prefix.as_str(), temp[0].expiration_days),
            (TEMP_PREFIX, Some(1))
        );
        // Every bucket aborts incomplete uploads, once: the tiered ones by their tiers
        // rule, the others by a rule of their own (the temporary bucket's own rule
        // covers only its prefix).
        assert_eq!(temp[1..], [abort_rule()]);
        assert_eq!(c.get(ASSETS_BUCKET).unwrap().lifecycle_rules(), [abort_rule()]);
        assert_eq!(arbor.iter().filter(|r| r.id == ABORT_RULE).count(), 0);
        // A rule of the caller's by that name takes its place.
        let own = LifecycleRule::new(ABORT_RULE, "uploads/").abort_incomplete_multipart_after(3);
        let config = BucketConfig::new("b").with_rule(own.clone());
        assert_eq!(config.lifecycle_rules(), [own]);
    }

    #[test]
    fn catalogue_from_json_round_trips() {
        let c = BucketCatalog::default();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(BucketCatalog::from_json(&json).unwrap(), c);
        let env = EnvMap::from_iter([("STORAGE_CATALOG_JSON", "{nope")]);
        let err = BucketCatalog::from_env_map(&env).unwrap_err();
        assert!(err.to_string().contains("STORAGE_CATALOG_JSON"));
    }
}
