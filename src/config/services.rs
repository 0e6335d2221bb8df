//! The services relayd depends on: `[database]` (PostgreSQL) and `[broker]`
//! (RabbitMQ), with their defaults and their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_url, invalid, is_valid_name, Error, Secret, NAME_RULE};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user[:password]@host[:port]/database`; may be `env:NAME`.
    pub url: Secret,
    /// Connections shared by every role of this process.
    pub pool_size: usize,
    /// How long a request waits for a free connection (or a new one) before failing.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one unit of database work (an ingest commit, a worker's statement, the
    /// relay's statements) may go unanswered before it is abandoned and its connection
    /// closed: a hung server, or one behind a half-open connection, fails fast instead
    /// of holding requests until the provider gives up.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/relayd"),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `amqp://user:password@host:port/vhost` (or `amqps://` with a hostname); may be `env:NAME`.
    pub url: Secret,
    /// The nodes of a RabbitMQ cluster, each a URL like `url`; instead of `url`, never
    /// beside it. Each process tries them from its own starting point (so replicas
    /// spread out) and fails over to the next when a connection is lost.
    pub urls: Vec<Secret>,
    /// Namespace for every exchange and queue, so tenants and tests never share one.
    pub prefix: String,
    /// Destination queues are `quorum` (replicated, the default) or `classic`.
    pub queue_type: QueueType,
    /// How long a dead-lettered message stays in the dead-letter queue.
    #[serde(with = "humantime_serde")]
    pub dead_letter_ttl: Duration,
    /// A published batch not confirmed within this fails (and is published again later).
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// AMQP heartbeat: a silent broker is detected after about twice this.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            urls: Vec::new(),
            prefix: "relayd".into(),
            queue_type: QueueType::Quorum,
            dead_letter_ttl: Duration::from_secs(7 * 24 * 3600),
            confirm_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(10),
        }
    }
}

impl BrokerConfig {
    /// The broker's nodes: `urls`, or the one `url`.
    pub fn nodes(&self) -> &[Secret] {
        if self.urls.is_empty() {
            std::slice::from_ref(&self.url)
        } else {
            &self.urls
        }
    }
}

/// The RabbitMQ queue type of destination queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, durable, poison-message aware: RabbitMQ's recommendation for data
    /// that must not be lost.
    Quorum,
    /// Single-node queues, for brokers without quorum support.
    Classic,
}

impl DatabaseConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        crate::db::check_url(self.url.expose()).map_err(|e| invalid("database.url", e))?;
        if self.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be at least 1"));
        }
        if self.query_timeout.is_zero() {
            return Err(invalid("database.query_timeout", "must be longer than 0s"));
        }
        Ok(())
    }
}

impl BrokerConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        check_url("broker.url", self.url.expose(), &["amqp", "amqps"])?;
        for (i, url) in self.urls.iter().enumerate() {
            check_url(&format!("broker.urls[{i}]"), url.expose(), &["amqp", "amqps"])?;
        }
        if !is_valid_name(&self.prefix) {
            return Err(invalid("broker.prefix", NAME_RULE));
        }
        if self.confirm_timeout.is_zero() {
            return Err(invalid("broker.confirm_timeout", "must be longer than 0s"));
        }
        if self.heartbeat.as_secs() > u64::from(u16::MAX) {
            return Err(invalid("broker.heartbeat", "must be at most 65535s"));
        }
        if self.dead_letter_ttl.as_millis() > u128::from(u32::MAX) {
            return Err(invalid(
                "broker.dead_letter_ttl",
                "must be at most 49 days (RabbitMQ's limit)",
            ));
        }
        Ok(())
    }
}
