//! The process around the roles: `[log]`, `[telemetry]`, `[shutdown]` and
//! `[retention]`, with their defaults and their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_url, invalid, Error};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` target filter such as `info` or `relayd=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// OpenTelemetry traces ([`crate::telemetry::traces`]): off unless a collector is named
/// here or by the standard `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it
    /// (`http://otel-collector:4318`): spans are posted as JSON to `/v1/traces` under it.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        match &self.otlp_endpoint {
            Some(url) => check_url("telemetry.otlp_endpoint", url, &["http", "https"]),
            None => Ok(()),
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM/SIGINT, in-flight work gets this long to finish.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(25),
        }
    }
}

/// How long finished events are kept. A duration of `0` disables that rule. Events with
/// a delivery still in flight are never pruned.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events whose every delivery is `delivered` (or that had none), after `received_at`.
    #[serde(with = "humantime_serde")]
    pub delivered: Duration,
    /// Events with a `dead` delivery and nothing in flight.
    #[serde(with = "humantime_serde")]
    pub dead: Duration,
    /// Attempt rows, even while their event is kept.
    #[serde(with = "humantime_serde")]
    pub attempts: Duration,
    /// How often the relay's pruning task runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows deleted per statement.
    pub batch_size: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let days = |d: u64| Duration::from_secs(d * 24 * 3600);
        Self {
            delivered: days(30),
            dead: days(90),
            attempts: days(30),
            interval: Duration::from_secs(60),
            batch_size: 1000,
        }
    }
}

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.level.parse::<tracing_subscriber::filter::Targets>().is_err() {
            return Err(invalid(
                "log.level",
                "not a valid filter such as `info` or `relayd=debug,info`",
            ));
        }
        Ok(())
    }
}

impl RetentionConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.interval.is_zero() {
            return Err(invalid("retention.interval", "must be longer than 0s"));
        }
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return Err(invalid("retention.batch_size", "must be between 1 and 100000"));
        }
        Ok(())
    }
}
