//! Secrets and redaction: a [`Secret`] never prints, `env:NAME` is read at load, and
//! the effective configuration is shown with every secret `[redacted]` (URLs with only
//! their credentials and query values hidden).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{invalid, Config, Error};

/// A secret value. Written `env:NAME` in configuration, it is read from that variable
/// when the configuration is loaded. It never prints.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Call sites are the few places that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces an `env:NAME` reference with the variable's value.
    pub(super) fn resolve(&mut self, key: &str) -> Result<(), Error> {
        if let Some(name) = self.0.strip_prefix("env:") {
            match std::env::var(name) {
                Ok(value) if !value.is_empty() => self.0 = value,
                Ok(_) => return Err(invalid(key, format!("environment variable {name} is empty"))),
                Err(_) => return Err(invalid(key, format!("environment variable {name} is not set"))),
            }
        }
        Ok(())
    }
}

pub(super) const REDACTED: &str = "[redacted]";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// `scheme://user:secret@host/…` → `scheme://user:[redacted]@host/…`.
/// `value` with its password and the value of every query parameter replaced by
/// `redacted` (the user, host, port, path and parameter names stay); `[redacted]` as a
/// whole when it does not parse as one URL (a multi-host database URL, say).
pub(super) fn redact_url(value: &str) -> String {
    let Ok(mut url) = url::Url::parse(value) else {
        return REDACTED.to_string();
    };
    if url.password().is_some() {
        // Only fails for URLs that cannot have a password, which this one has.
        let _ = url.set_password(Some("redacted"));
    }
    if url.query().is_some() {
        let names: Vec<String> = url.query_pairs().map(|(name, _)| name.into_owned()).collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(names.iter().map(|name| (name.as_str(), "redacted")));
    }
    url.to_string()
}

impl Config {
    /// The effective configuration as TOML, every secret shown as `[redacted]`.
    pub fn to_redacted_toml(&self) -> String {
        let mut table = toml::Table::try_from(self).unwrap_or_default();
        // URLs are secrets as a whole (they may hold credentials), but the host, port
        // and path are what an operator checks: show them with the credentials hidden.
        let shown = |url: &Secret| toml::Value::String(redact_url(url.expose()));
        for (section, url) in [("database", &self.database.url), ("broker", &self.broker.url)] {
            if let Some(toml::Value::Table(t)) = table.get_mut(section) {
                t.insert("url".into(), shown(url));
            }
        }
        if let Some(toml::Value::Table(broker)) = table.get_mut("broker") {
            let urls = self.broker.urls.iter().map(shown).collect();
            broker.insert("urls".into(), toml::Value::Array(urls));
        }
        let urls: [(&str, Vec<&Secret>); 2] = [
            ("destinations", self.destinations.iter().map(|d| &d.url).collect()),
            (
                "operator_hooks",
                self.operator_hooks.iter().map(|h| &h.url).collect(),
            ),
        ];
        for (section, urls) in urls {
            if let Some(toml::Value::Array(shown_items)) = table.get_mut(section) {
                for (t, url) in shown_items.iter_mut().zip(urls) {
                    if let toml::Value::Table(t) = t {
                        t.insert("url".into(), shown(url));
                    }
                }
            }
        }
        toml::to_string_pretty(&table).unwrap_or_default()
    }
}
