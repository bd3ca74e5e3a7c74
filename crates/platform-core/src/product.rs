//! Products and the product catalogue: tiers, roles, permissions and quotas.
//!
//! A product is identified by a validated slug ([`Product`]). What each product
//! sells (tiers, in order), who can do what (roles and permissions) and how much
//! (quotas per tier) lives in a [`ProductCatalog`], loaded from configuration.
//! Adding a product is adding an entry to the catalogue: no code changes.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A product's identifier: a slug of 1–32 characters, lowercase ASCII letters,
/// digits and `-`, starting with a letter and not ending with `-` (so it is also a
/// safe Postgres schema name, bucket prefix and tag).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Product(Cow<'static, str>);

impl Product {
    /// Arbor: AI agents.
    pub const ARBOR: Product = Product(Cow::Borrowed("arbor"));
    /// Kumori: image generation.
    pub const KUMORI: Product = Product(Cow::Borrowed("kumori"));

    /// Validates `slug` and makes a product of it.
    ///
    /// # Errors
    /// `InvalidInput` naming the rule broken.
    pub fn new(slug: impl Into<String>) -> Result<Self> {
        let slug = slug.into();
        validate_slug(&slug, "product")?;
        Ok(Self(Cow::Owned(slug)))
    }

    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks the slug rules shared by products and tier names.
pub(crate) fn validate_slug(slug: &str, what: &str) -> Result<()> {
    let invalid = |why: &str| {
        Err(Error::invalid_input(format!(
            "invalid {what} slug {slug:?}: {why}"
        )))
    };
    if slug.is_empty() || slug.len() > 32 {
        return invalid("must be 1 to 32 characters");
    }
    if !slug
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("only lowercase letters, digits and '-' are allowed");
    }
    if !slug.as_bytes()[0].is_ascii_lowercase() {
        return invalid("must start with a lowercase letter");
    }
    if slug.ends_with('-') {
        return invalid("must not end with '-'");
    }
    Ok(())
}

impl fmt::Debug for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Product").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Product {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for Product {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<Product> for String {
    fn from(p: Product) -> String {
        p.0.into_owned()
    }
}

impl AsRef<str> for Product {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// A usage limit per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quota {
    /// At most this many units.
    Limited(u64),
    /// No limit (written `"unlimited"` in configuration).
    Unlimited(Unlimited),
}

/// The `"unlimited"` marker of [`Quota::Unlimited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlimited {
    /// No limit.
    Unlimited,
}

impl Quota {
    /// No limit.
    pub const UNLIMITED: Quota = Quota::Unlimited(Unlimited::Unlimited);

    /// Whether `used + amount` stays within the quota.
    pub fn allows(self, used: u64, amount: u64) -> bool {
        match self {
            Quota::Limited(limit) => used.checked_add(amount).is_some_and(|total| total <= limit),
            Quota::Unlimited(_) => true,
        }
    }
}

/// One tier a product sells (`free`, `pro`, …) and its quotas by metric name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// The tier's slug.
    pub name: String,
    /// Limits by metric name (e.g. `api_calls_per_month`); a metric not listed is unlimited.
    #[serde(default)]
    pub quotas: BTreeMap<String, Quota>,
}

impl Tier {
    /// The quota for `metric` (unlimited when the tier does not list it).
    pub fn quota(&self, metric: &str) -> Quota {
        self.quotas.get(metric).copied().unwrap_or(Quota::UNLIMITED)
    }
}

/// A role and the permissions it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// The role's name.
    pub name: String,
    /// Permission strings, e.g. `agents:run`.
    #[serde(default)]
    pub permissions: BTreeSet<String>,
}

/// Whether a tier change moves up, down or nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierChange {
    /// To a higher tier.
    Upgrade,
    /// To a lower tier.
    Downgrade,
    /// To the same tier.
    Unchanged,
}

/// Everything the catalogue knows about one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductConfig {
    /// Human-readable name (`"Arbor"`).
    pub display_name: String,
    /// Tiers from lowest to highest; the first is what a new user gets.
    pub tiers: Vec<Tier>,
    /// Roles users can hold in this product.
    #[serde(default)]
    pub roles: Vec<Role>,
}

impl ProductConfig {
    fn validate(&self, product: &str) -> Result<()> {
        if self.tiers.is_empty() {
            return Err(Error::invalid_input(format!("product {product} has no tiers")));
        }
        let mut seen = BTreeSet::new();
        for tier in &self.tiers {
            validate_slug(&tier.name, "tier")?;
            if !seen.insert(tier.name.as_str()) {
                return Err(Error::invalid_input(format!(
                    "product {product} lists tier {} twice",
                    tier.name
                )));
            }
        }
        let mut roles = BTreeSet::new();
        for role in &self.roles {
            if role.name.is_empty() || !roles.insert(role.name.as_str()) {
                return Err(Error::invalid_input(format!(
                    "product {product} has an empty or repeated role name {:?}",
                    role.name
                )));
            }
        }
        Ok(())
    }

    /// The tier named `name`, if the product sells it.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// The tier a new user starts on (the lowest); `None` only for a config
    /// built by hand with no tiers, which no catalogue accepts.
    pub fn default_tier(&self) -> Option<&Tier> {
        self.tiers.first()
    }

    /// The position of `tier` from the lowest (0).
    ///
    /// # Errors
    /// `InvalidInput` naming the tier when the product does not sell it.
    pub fn tier_rank(&self, tier: &str) -> Result<usize> {
        self.tiers.iter().position(|t| t.name == tier).ok_or_else(|| {
            let known: Vec<&str> = self.tiers.iter().map(|t| t.name.as_str()).collect();
            Error::invalid_input(format!(
                "unknown tier {tier:?} for {}; expected one of {}",
                self.display_name,
                known.join(", ")
            ))
        })
    }

    /// Whether moving from `from` to `to` is an upgrade, a downgrade or neither.
    pub fn compare_tiers(&self, from: &str, to: &str) -> Result<TierChange> {
        let (a, b) = (self.tier_rank(from)?, self.tier_rank(to)?);
        Ok(match a.cmp(&b) {
            std::cmp::Ordering::Less => TierChange::Upgrade,
            std::cmp::Ordering::Greater => TierChange::Downgrade,
            std::cmp::Ordering::Equal => TierChange::Unchanged,
        })
    }

    /// The role named `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// Whether `role` grants `permission` (false for unknown roles).
    pub fn role_has_permission(&self, role: &str, permission: &str) -> bool {
        self.role(role)
            .is_some_and(|r| r.permissions.contains(permission))
    }
}

/// The products this deployment serves, with their tiers, roles and quotas.
///
/// `ProductCatalog::default()` is the seed's catalogue (Arbor and Kumori). Load
/// another with [`from_toml_str`](Self::from_toml_str), [`from_json_str`](Self::from_json_str)
/// or [`load`](Self::load); every way in validates slugs, tiers and roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCatalog")]
pub struct ProductCatalog {
    products: BTreeMap<Product, ProductConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    products: BTreeMap<Product, ProductConfig>,
}

impl TryFrom<RawCatalog> for ProductCatalog {
    type Error = Error;
    fn try_from(raw: RawCatalog) -> Result<Self> {
        for (product, config) in &raw.products {
            config.validate(product.as_str())?;
        }
        Ok(Self {
            products: raw.products,
        })
    }
}

fn role(name: &str, permissions: &[&str]) -> Role {
    Role {
        name: name.to_owned(),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn tier(name: &str, quotas: &[(&str, Quota)]) -> Tier {
    Tier {
        name: name.to_owned(),
        quotas: quotas.iter().map(|(k, q)| ((*k).to_owned(), *q)).collect(),
    }
}

impl Default for ProductCatalog {
    /// The seed's catalogue: Arbor (user < pro < enterprise) and Kumori
    /// (free < premium < creator). Quota figures are defaults meant to be
    /// overridden by configuration.
    fn default() -> Self {
        use Quota::Limited;
        let arbor = ProductConfig {
            display_name: "Arbor".into(),
            tiers: vec![
                tier(
                    "user",
                    &[("api_calls_per_month", Limited(1_000)), ("agents", Limited(3))],
                ),
                tier(
                    "pro",
                    &[("api_calls_per_month", Limited(100_000)), ("agents", Limited(50))],
                ),
                tier(
                    "enterprise",
                    &[
                        ("api_calls_per_month", Quota::UNLIMITED),
                        ("agents", Quota::UNLIMITED),
                    ],
                ),
            ],
            roles: vec![
                role("member", &["agents:read", "agents:run", "artifacts:read"]),
                role(
                    "admin",
                    &[
                        "agents:read",
                        "agents:run",
                        "agents:write",
                        "artifacts:read",
                        "billing:manage",
                    ],
                ),
            ],
        };
        let kumori = ProductConfig {
            display_name: "Kumori".into(),
            tiers: vec![
                tier("free", &[("images_per_month", Limited(25))]),
                tier("premium", &[("images_per_month", Limited(500))]),
                tier("creator", &[("images_per_month", Quota::UNLIMITED)]),
            ],
            roles: vec![
                role("member", &["images:generate", "images:share", "filters:use"]),
                role(
                    "admin",
                    &[
                        "images:generate",
                        "images:share",
                        "filters:use",
                        "filters:manage",
                        "billing:manage",
                    ],
                ),
            ],
        };
        Self {
            products: BTreeMap::from([(Product::ARBOR, arbor), (Product::KUMORI, kumori)]),
        }
    }
}

impl ProductCatalog {
    /// A catalogue from TOML text (`[products.<slug>]` tables).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::config(format!("invalid product catalogue: {e}")))
    }

    /// A catalogue from JSON text (`{"products": {"<slug>": {...}}}`).
    pub fn from_json_str(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::config(format!("invalid product catalogue: {e}")))
    }

    /// Reads a catalogue file; `.json` is parsed as JSON, anything else as TOML.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read product catalogue {}", path.display())).with_source(e)
        })?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            Self::from_json_str(&text)
        } else {
            Self::from_toml_str(&text)
        };
        parsed.map_err(|e| Error::config(format!("{}: {}", path.display(), e.message())))
    }

    /// Adds or replaces a product (validated).
    pub fn with_product(mut self, product: Product, config: ProductConfig) -> Result<Self> {
        config.validate(product.as_str())?;
        self.products.insert(product, config);
        Ok(self)
    }

    /// The configuration of `product`.
    ///
    /// # Errors
    /// `NotFound` naming the product when the catalogue does not list it.
    pub fn get(&self, product: &Product) -> Result<&ProductConfig> {
        self.products
            .get(product)
            .ok_or_else(|| Error::not_found(format!("product {product} is not in the product catalogue")))
    }

    /// Whether the catalogue lists `product`.
    pub fn contains(&self, product: &Product) -> bool {
        self.products.contains_key(product)
    }

    /// Every product, in slug order.
    pub fn products(&self) -> impl Iterator<Item = (&Product, &ProductConfig)> {
        self.products.iter()
    }

    /// This catalogue with every product of `other` added, replacing one of the same
    /// slug (both were validated when built).
    #[must_use]
    pub fn merged_with(mut self, other: ProductCatalog) -> Self {
        self.products.extend(other.products);
        self
    }
}
