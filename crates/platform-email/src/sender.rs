//! Per-product sender addresses (`from` and `reply_to`) from configuration.

use std::collections::BTreeMap;

use platform_core::{EnvMap, Error, Product, ProductCatalog, Result};

use crate::types::check_mailbox;

/// The domain default senders live under when `EMAIL_DOMAIN` is unset.
pub const DEFAULT_EMAIL_DOMAIN: &str = "example.com";

/// Who a product's messages come from and where replies go.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sender {
    /// The `from` mailbox, e.g. `Arbor <noreply@arbor.example.com>`.
    pub from: String,
    /// The `reply_to` mailbox, e.g. `Arbor Support <support@arbor.example.com>`.
    pub reply_to: Option<String>,
}

impl Sender {
    /// A sender with `from` and an optional `reply_to`.
    pub fn new(from: impl Into<String>, reply_to: Option<String>) -> Self {
        Self {
            from: from.into(),
            reply_to,
        }
    }
}

/// The senders of every product: configured ones, and for any other product the
/// default `<Product> <noreply@<product>.<domain>>` with replies to
/// `<Product> Support <support@<product>.<domain>>`.
///
/// A new product therefore gets working senders by configuration alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Senders {
    domain: String,
    display_names: BTreeMap<String, String>,
    overrides: BTreeMap<String, Sender>,
}

impl Default for Senders {
    fn default() -> Self {
        Self {
            domain: DEFAULT_EMAIL_DOMAIN.to_owned(),
            display_names: BTreeMap::new(),
            overrides: BTreeMap::new(),
        }
    }
}

impl Senders {
    /// Defaults under [`DEFAULT_EMAIL_DOMAIN`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the process environment for the products of `catalog`; see
    /// [`Senders::from_env_map`].
    ///
    /// # Errors
    /// As [`Senders::from_env_map`].
    pub fn from_env(catalog: &ProductCatalog) -> Result<Self> {
        Self::from_env_map(&EnvMap::from_env(), catalog)
    }

    /// Reads the configuration for every product of `catalog` (display names come
    /// from the catalogue):
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `EMAIL_DOMAIN` | domain of the default senders (default `example.com`) |
    /// | `EMAIL_FROM_<PRODUCT>` | `from` of one product, e.g. `EMAIL_FROM_ARBOR="Arbor <hi@arbor.ai>"` |
    /// | `EMAIL_REPLY_TO_<PRODUCT>` | `reply_to` of one product |
    ///
    /// `<PRODUCT>` is the slug upper-cased with `-` as `_`.
    ///
    /// # Errors
    /// `Config` naming the variable whose value is invalid.
    pub fn from_env_map(env: &EnvMap, catalog: &ProductCatalog) -> Result<Self> {
        let mut senders = Self::new();
        if let Some(domain) = env.optional("EMAIL_DOMAIN") {
            senders = senders.with_domain(domain).map_err(|e| {
                Error::config(format!(
                    "environment variable EMAIL_DOMAIN is invalid: {}",
                    e.message()
                ))
            })?;
        }
        for (product, config) in catalog.products() {
            senders
                .display_names
                .insert(product.as_str().to_owned(), config.display_name.clone());
            let (from_var, reply_var) = (
                variable("EMAIL_FROM", product),
                variable("EMAIL_REPLY_TO", product),
            );
            let from = env.optional(&from_var);
            let reply_to = env.optional(&reply_var);
            for (var, value) in [(&from_var, from), (&reply_var, reply_to)] {
                if let Some(value) = value {
                    check_mailbox(value).map_err(|why| {
                        Error::config(format!("environment variable {var} is invalid: {why}"))
                    })?;
                }
            }
            if from.is_some() || reply_to.is_some() {
                let default = senders.for_product(product);
                let sender = Sender::new(
                    from.map_or(default.from, str::to_owned),
                    reply_to.map(str::to_owned).or(default.reply_to),
                );
                senders.overrides.insert(product.as_str().to_owned(), sender);
            }
        }
        Ok(senders)
    }

    /// Uses `domain` for default senders.
    ///
    /// # Errors
    /// `InvalidInput` if `noreply@<product>.<domain>` would not be a valid address.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Result<Self> {
        let domain = domain.into();
        check_mailbox(&format!("noreply@product.{domain}"))
            .map_err(|why| Error::invalid_input(format!("email domain {domain:?}: {why}")))?;
        self.domain = domain;
        Ok(self)
    }

    /// Uses `name` as the display name of `product`'s default senders.
    #[must_use]
    pub fn with_display_name(mut self, product: &Product, name: impl Into<String>) -> Self {
        self.display_names
            .insert(product.as_str().to_owned(), name.into());
        self
    }

    /// Sets `product`'s sender explicitly.
    ///
    /// # Errors
    /// `InvalidInput` naming `from` or `reply_to` when an address is invalid.
    pub fn with_sender(mut self, product: &Product, sender: Sender) -> Result<Self> {
        check_mailbox(&sender.from).map_err(|why| Error::invalid_input(format!("from: {why}")))?;
        if let Some(reply_to) = &sender.reply_to {
            check_mailbox(reply_to).map_err(|why| Error::invalid_input(format!("reply_to: {why}")))?;
        }
        self.overrides.insert(product.as_str().to_owned(), sender);
        Ok(self)
    }

    /// The domain of default senders.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `product`'s sender: the configured one, or the default
    /// `<Name> <noreply@<product>.<domain>>` replying to `<Name> Support <support@…>`.
    pub fn for_product(&self, product: &Product) -> Sender {
        if let Some(sender) = self.overrides.get(product.as_str()) {
            return sender.clone();
        }
        let slug = product.as_str();
        let name = self
            .display_names
            .get(slug)
            .cloned()
            .unwrap_or_else(|| title_case(slug));
        let name = name.replace(['<', '>', '"', '\r', '\n'], "");
        Sender::new(
            format!("{name} <noreply@{slug}.{}>", self.domain),
            Some(format!("{name} Support <support@{slug}.{}>", self.domain)),
        )
    }

    /// `Config` error when a real provider is to send for `catalog` and a product's
    /// sender is a placeholder (see [`placeholder_products`](Self::placeholder_products)),
    /// naming the variables that fix it; `provider_key` names the variable that chose
    /// the provider.
    ///
    /// # Errors
    /// As above.
    pub fn check_sendable(&self, catalog: &ProductCatalog, provider_key: &str) -> Result<()> {
        let placeholders = self.placeholder_products(catalog);
        if placeholders.is_empty() {
            return Ok(());
        }
        let slugs: Vec<&str> = placeholders.iter().map(|p| p.as_str()).collect();
        let vars: Vec<String> = placeholders.iter().map(|p| variable("EMAIL_FROM", p)).collect();
        Err(Error::config(format!(
            "{provider_key} is set but the senders of {} would be placeholder addresses under {DEFAULT_EMAIL_DOMAIN}, which the provider refuses: set EMAIL_DOMAIN to a verified domain (or {})",
            slugs.join(", "),
            vars.join(", ")
        )))
    }

    /// The products of `catalog` whose `from` address is under [`DEFAULT_EMAIL_DOMAIN`]
    /// (neither `EMAIL_DOMAIN` nor their `EMAIL_FROM_<PRODUCT>` set): a placeholder that
    /// a real provider refuses to send from.
    pub fn placeholder_products<'a>(&self, catalog: &'a ProductCatalog) -> Vec<&'a Product> {
        catalog
            .products()
            .map(|(product, _)| product)
            .filter(|product| {
                let from = self.for_product(product).from;
                let address = from
                    .rsplit_once('<')
                    .map_or(from.as_str(), |(_, rest)| rest.trim_end_matches('>'));
                address.rsplit_once('@').is_some_and(|(_, domain)| {
                    let domain = domain.to_ascii_lowercase();
                    domain == DEFAULT_EMAIL_DOMAIN || domain.ends_with(&format!(".{DEFAULT_EMAIL_DOMAIN}"))
                })
            })
            .collect()
    }
}

/// The environment variable `{prefix}_{PRODUCT}` of `product`: its slug upper-cased
/// with `-` as `_`.
fn variable(prefix: &str, product: &Product) -> String {
    format!(
        "{prefix}_{}",
        product.as_str().to_ascii_uppercase().replace('-', "_")
    )
}

fn title_case(slug: &str) -> String {
    let mut chars = slug.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
