//! Configuration from environment variables, testable without touching the process env.
//!
//! Builders in every crate read their settings from an [`EnvMap`]: `from_env()`
//! snapshots the process environment, `from_iter(pairs)` takes explicit pairs (what
//! tests use, since mutating the process env is `unsafe` in edition 2024).
//! Lookups that fail return [`ErrorKind::Config`](crate::ErrorKind::Config) errors
//! naming the variable, never its value.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};

/// A snapshot of configuration variables.
///
/// Empty values count as unset. `Debug` prints variable names only, never values,
/// since values may be secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EnvMap {
    vars: BTreeMap<String, String>,
}

impl fmt::Debug for EnvMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvMap")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl EnvMap {
    /// A snapshot of the process environment (variables that are not UTF-8 are skipped).
    pub fn from_env() -> Self {
        Self::from_iter(
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// An empty map: every lookup is unset.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value` (builder style, for tests and layering).
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// The value of `name`, if it is set and not empty (surrounding whitespace trimmed).
    pub fn optional(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// The value of `name`, or a `Config` error naming it.
    pub fn required(&self, name: &str) -> Result<&str> {
        self.optional(name)
            .ok_or_else(|| Error::config(format!("missing required environment variable {name}")))
    }

    /// The first of `names` that is set, or a `Config` error naming all of them.
    pub fn required_any(&self, names: &[&str]) -> Result<&str> {
        names.iter().find_map(|n| self.optional(n)).ok_or_else(|| {
            Error::config(format!(
                "missing required environment variable: set one of {}",
                names.join(", ")
            ))
        })
    }

    /// `name` parsed as `T`, `None` if unset, or a `Config` error naming the variable
    /// (the value is not echoed, in case it is a secret).
    pub fn parse<T>(&self, name: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.optional(name) {
            None => Ok(None),
            Some(raw) => raw
                .parse::<T>()
                .map(Some)
                .map_err(|e| Error::config(format!("environment variable {name} is invalid: {e}"))),
        }
    }

    /// `name` as a boolean: `1/true/yes/on` or `0/false/no/off` (any case).
    pub fn flag(&self, name: &str) -> Result<Option<bool>> {
        match self.optional(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(None),
            Some("1" | "true" | "yes" | "on") => Ok(Some(true)),
            Some("0" | "false" | "no" | "off") => Ok(Some(false)),
            Some(_) => Err(Error::config(format!(
                "environment variable {name} is invalid: expected true/false, 1/0, yes/no or on/off"
            ))),
        }
    }

    /// `name` as a secret, if set.
    pub fn optional_secret(&self, name: &str) -> Option<SecretString> {
        self.optional(name).map(|v| SecretString::from(v.to_owned()))
    }

    /// `name` as a secret, or a `Config` error naming it.
    pub fn required_secret(&self, name: &str) -> Result<SecretString> {
        self.required(name).map(|v| SecretString::from(v.to_owned()))
    }

    /// Whether any variable is set whose name starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.vars
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .any(|(_, v)| !v.trim().is_empty())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EnvMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            vars: iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn env() -> EnvMap {
        EnvMap::from_iter([
            ("STRIPE_SECRET_KEY", "sk_test_supersecret"),
            ("POOL_SIZE", "12"),
            ("BAD_NUMBER", "twelve"),
            ("EMPTY", "   "),
            ("DEBUG_ON", "Yes"),
        ])
    }

    #[test]
    fn required_names_the_missing_variable() {
        let err = env().required("RESEND_API_KEY").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("RESEND_API_KEY"), "{err}");
    }

    #[test]
    fn empty_values_count_as_unset() {
        assert_eq!(env().optional("EMPTY"), None);
        assert!(env().required("EMPTY").is_err());
    }

    #[test]
    fn required_any_lists_every_alternative() {
        let err = env()
            .required_any(&["R2_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"])
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("R2_ACCESS_KEY_ID") && msg.contains("AWS_ACCESS_KEY_ID"),
            "{msg}"
        );
        assert_eq!(env().required_any(&["NOPE", "POOL_SIZE"]).unwrap(), "12");
    }

    #[test]
    fn parse_reports_variable_not_value() {
        assert_eq!(env().parse::<u32>("POOL_SIZE").unwrap(), Some(12));
        assert_eq!(env().parse::<u32>("UNSET").unwrap(), None);
        let err = env().parse::<u32>("BAD_NUMBER").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("BAD_NUMBER"));
        assert!(!err.to_string().contains("twelve"));
    }

    #[test]
    fn flags() {
        assert_eq!(env().flag("DEBUG_ON").unwrap(), Some(true));
        assert_eq!(env().flag("UNSET").unwrap(), None);
        assert!(env().flag("POOL_SIZE").is_err());
    }

    #[test]
    fn prefix_detection() {
        assert!(env().has_prefix("STRIPE_"));
        assert!(!env().has_prefix("EMPTY_"));
        assert!(!env().has_prefix("EMPTY"), "a blank value does not count");
        assert!(!env().has_prefix("RESEND_"));
    }

    #[test]
    fn debug_never_prints_values() {
        let shown = format!("{:?}", env());
        assert!(shown.contains("STRIPE_SECRET_KEY"));
        assert!(!shown.contains("supersecret"), "{shown}");
        let secret = env().required_secret("STRIPE_SECRET_KEY").unwrap();
        assert!(!format!("{secret:?}").contains("supersecret"));
        assert_eq!(secret.expose_secret(), "sk_test_supersecret");
    }
}
