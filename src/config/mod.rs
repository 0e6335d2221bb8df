//! Typed, layered, validated configuration.
//!
//! Layers, later wins: built-in defaults → the TOML file (`config/relayd.toml` or
//! `--config FILE`) → environment variables `RELAYD__SECTION__KEY`. Unknown keys are
//! errors. A secret written as `env:NAME` is read from that variable during
//! [`Config::load`]; secrets never appear in `Debug`, `Display` or serialized output.
//! This module only reads and checks; it opens no connection.
//!
//! One file per concern: `load` (layering), `secret` (secrets and redaction),
//! `warnings`, and the sections with their defaults and their own short check —
//! `services` (database, broker), `listeners` (ingest, ops), `delivery` (relay,
//! worker), `housekeeping` (log, telemetry, shutdown, retention), `sources`, `destinations`.

mod delivery;
mod destinations;
mod housekeeping;
mod listeners;
mod load;
mod operator;
mod secret;
mod services;
mod sources;
mod warnings;

pub use delivery::{BreakerConfig, BreakerOverride, RelayConfig, RetryConfig, WorkerConfig};
pub use destinations::{DestinationConfig, OnDead, OrderingConfig, RateLimit};
pub use housekeeping::{LogConfig, LogFormat, RetentionConfig, ShutdownConfig, TelemetryConfig};
pub use listeners::{IngestConfig, OpsConfig};
pub use operator::{OperatorConfig, OperatorHookConfig, NOTICE_SOURCE, NOTICE_TYPES};
pub use secret::Secret;
pub use services::{BrokerConfig, DatabaseConfig, QueueType};
pub use sources::{DedupConfig, SignatureEncoding, SourceConfig, SourceKind};

use serde::{Deserialize, Serialize};

/// The file read when `--config` is not given. Missing is fine: defaults apply.
pub const DEFAULT_CONFIG_PATH: &str = "config/relayd.toml";

/// The secrets written in the shipped `config/relayd.toml` so that it runs as it is on
/// a developer's machine. Public: a configuration that uses one gets a warning.
pub const DEVELOPMENT_SECRETS: [&str; 2] = [
    "whsec_local_development_secret",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
];

/// A configuration error that names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration of one relayd process.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    pub ingest: IngestConfig,
    pub ops: OpsConfig,
    pub relay: RelayConfig,
    pub worker: WorkerConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub shutdown: ShutdownConfig,
    pub retention: RetentionConfig,
    pub sources: Vec<SourceConfig>,
    pub destinations: Vec<DestinationConfig>,
    pub operator: OperatorConfig,
    pub operator_hooks: Vec<OperatorHookConfig>,
}

impl Config {
    /// Checks what serde cannot — URLs, names, bounds, references between sections —
    /// one section at a time.
    pub fn validate(&self) -> Result<(), Error> {
        self.database.validate()?;
        self.broker.validate()?;
        self.ingest.validate()?;
        self.ops.validate()?;
        self.relay.validate()?;
        self.worker.validate()?;
        self.log.validate()?;
        self.telemetry.validate()?;
        self.retention.validate()?;
        let sources = sources::validate_sources(&self.sources)?;
        destinations::validate_destinations(&self.destinations, &sources, &self.worker.breaker)?;
        self.operator.validate()?;
        operator::validate_hooks(&self.operator_hooks, &self.destinations)
    }

    /// Every destination the relay and the worker deliver to: the configured ones,
    /// then each operator hook as one.
    pub fn delivered_destinations(&self) -> Vec<DestinationConfig> {
        let hooks = self.operator_hooks.iter().map(OperatorHookConfig::destination);
        self.destinations.iter().cloned().chain(hooks).collect()
    }

    /// Whether `destination` is an operator hook (its own circuit and dead deliveries
    /// send no notices, which would go to it).
    pub fn is_operator_hook(&self, destination: &str) -> bool {
        self.operator_hooks.iter().any(|h| h.name == destination)
    }
}

const NAME_RULE: &str = "must be 1-64 characters of a-z, 0-9, '-' or '_'";

/// Names become URL path segments and broker queue names: keep them plain.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_url(key: &str, value: &str, schemes: &[&str]) -> Result<(), Error> {
    let url = url::Url::parse(value).map_err(|e| invalid(key, format!("not a valid URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(invalid(
            key,
            format!(
                "scheme must be one of {}, not {:?}",
                schemes.join(", "),
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(key, "URL has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
