//! Typed, layered, validated configuration.
//!
//! Layers, later wins: built-in defaults → the TOML file (`config/relayd.toml` or
//! `--config FILE`) → environment variables `RELAYD__SECTION__KEY`. Unknown keys are
//! errors. A secret written as `env:NAME` is read from that variable during
//! [`Config::load`]; secrets never appear in `Debug`, `Display` or serialized output.
//! This module only reads and checks; it opens no connection.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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
    pub shutdown: ShutdownConfig,
    pub retention: RetentionConfig,
    pub sources: Vec<SourceConfig>,
    pub destinations: Vec<DestinationConfig>,
}

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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Public listener for `POST /webhooks/{source}`.
    pub listen: SocketAddr,
    /// Bodies larger than this are refused with 413 before anything is verified.
    pub max_body_bytes: usize,
    /// A request whose body has not fully arrived this long after its head is answered
    /// 408 and closed.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A connection that has not sent a whole request head this long after it opened
    /// (or after its previous request) is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Bytes of request bodies held in memory across all requests at once; a request
    /// that would go beyond is answered 503 + `Retry-After` (before its body is read
    /// when it declares its length).
    pub max_buffered_bytes: usize,
    /// Open connections at most; further ones wait in the listen queue.
    pub max_connections: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3000)),
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(5),
            max_buffered_bytes: 64 * 1024 * 1024,
            max_connections: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Health, readiness, metrics and admin; keep it off the public network.
    pub listen: SocketAddr,
    /// Bearer token for `/admin`; the admin API is disabled while unset.
    pub admin_token: Option<Secret>,
    /// `/healthz` fails (and an orchestrator restarts the process) once a role has made
    /// no progress, or a broker connection has been down, for longer than this. Shorter
    /// outages are ridden out in the process.
    #[serde(with = "humantime_serde")]
    pub liveness_stall: Duration,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_token: None,
            liveness_stall: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Outbox rows claimed and published per transaction.
    pub batch_size: usize,
    /// Fallback polling when no wake-up arrives.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A row still `queued` this long after publication is published again — but only
    /// when its destination queue holds no ready message (then the broker lost it; a
    /// backlog means it is only waiting).
    #[serde(with = "humantime_serde")]
    pub requeue_after: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            requeue_after: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// HTTP requests in flight per process, across every destination.
    pub concurrency: usize,
    /// A claim's lease is the destination's timeout plus this: the time a worker has to
    /// record an outcome. After a worker crash its deliveries are retried once it expires.
    #[serde(with = "humantime_serde")]
    pub lease_margin: Duration,
    pub retry: RetryConfig,
    /// Every destination's circuit breaker, unless the destination says otherwise.
    pub breaker: BreakerConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            lease_margin: Duration::from_secs(30),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay before each retry; when exhausted the delivery is `dead`. The default spans
    /// about three days, like Stripe's own schedule.
    pub schedule: Vec<humantime_serde::Serde<Duration>>,
}

impl RetryConfig {
    /// The delay before retry `n` (0-based), or `None` when the schedule is exhausted.
    pub fn delay(&self, retry: usize) -> Option<Duration> {
        self.schedule.get(retry).map(|d| **d)
    }

    /// The whole schedule's time: a delivery throttled for longer is dead.
    pub fn total(&self) -> Duration {
        self.schedule.iter().map(|d| **d).sum()
    }
}

/// A destination's circuit breaker (see the README's "Flow control").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed sends (refused, timed out, 5xx) that open the circuit…
    pub failures: u32,
    /// …when they all fall within this.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The wait before the first probe of an open circuit…
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// …doubling after each failed probe up to this.
    #[serde(with = "humantime_serde")]
    pub max_probe_interval: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(60),
            probe_interval: Duration::from_secs(30),
            max_probe_interval: Duration::from_secs(300),
        }
    }
}

/// A destination's own breaker settings; what it leaves out comes from `[worker.breaker]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerOverride {
    pub failures: Option<u32>,
    #[serde(with = "humantime_serde::option")]
    pub window: Option<Duration>,
    #[serde(with = "humantime_serde::option")]
    pub probe_interval: Option<Duration>,
    #[serde(with = "humantime_serde::option")]
    pub max_probe_interval: Option<Duration>,
}

impl BreakerOverride {
    /// These settings over `defaults`.
    pub fn over(&self, defaults: &BreakerConfig) -> BreakerConfig {
        BreakerConfig {
            failures: self.failures.unwrap_or(defaults.failures),
            window: self.window.unwrap_or(defaults.window),
            probe_interval: self.probe_interval.unwrap_or(defaults.probe_interval),
            max_probe_interval: self.max_probe_interval.unwrap_or(defaults.max_probe_interval),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        let hours = |h: u64| Duration::from_secs(3600 * h);
        Self {
            schedule: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                minutes(2),
                minutes(10),
                minutes(30),
                hours(1),
                hours(2),
                hours(4),
                hours(8),
                hours(12),
                hours(24),
                hours(24),
            ]
            .into_iter()
            .map(Into::into)
            .collect(),
        }
    }
}

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

/// One inbound endpoint: `POST /webhooks/{name}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    /// Several secrets allow rotation: any one may match.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// For timestamped schemes, `|now - t|` must be within this.
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
    /// `hmac` only: the header carrying the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    /// `hmac` only: how the MAC is written in the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SignatureEncoding>,
    /// `hmac` only: text before the MAC in the header, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `hmac`/`none`: the event id comes from this request header…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_header: Option<String>,
    /// …or from this JSON pointer into the body (`/id`, `/data/id`)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_pointer: Option<String>,
    /// …or, only when set, is the SHA-256 of the body (identical bodies are duplicates).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub id_from_body_hash: bool,
    /// `hmac`/`none`: the event type comes from this header…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_header: Option<String>,
    /// …or from this JSON pointer; without either it is `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_pointer: Option<String>,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

impl SourceConfig {
    /// A source with the default tolerance and no `hmac` settings.
    pub fn new(name: impl Into<String>, kind: SourceKind, secrets: Vec<Secret>) -> Self {
        Self {
            name: name.into(),
            kind,
            secrets,
            tolerance: default_tolerance(),
            signature_header: None,
            encoding: None,
            prefix: None,
            id_header: None,
            id_pointer: None,
            id_from_body_hash: false,
            type_header: None,
            type_pointer: None,
        }
    }
}

/// Which signature scheme a source speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `Stripe-Signature: t=…,v1=…`.
    Stripe,
    /// `X-Hub-Signature-256: sha256=<hex>`.
    Github,
    /// `X-Shopify-Hmac-Sha256: <base64>`.
    Shopify,
    /// `webhook-id` / `webhook-timestamp` / `webhook-signature: v1,<base64>`.
    StandardWebhooks,
    /// A configurable HMAC-SHA256 over the body.
    Hmac,
    /// No verification at all: for local testing only.
    None,
}

/// How an `hmac` source's MAC is encoded in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// One downstream HTTP service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub name: String,
    /// May hold credentials (userinfo, a token in the query), so it is a secret: it may
    /// be `env:NAME`, and `check-config` shows it with those parts redacted.
    pub url: Secret,
    /// Standard Webhooks `whsec_…` secret the deliveries are signed with.
    pub signing_secret: Secret,
    /// Sources this destination subscribes to; empty means every source.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Event type globs (`invoice.*`); empty means every type.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// The most concurrent requests one worker sends to this destination (also bounded
    /// by `worker.concurrency`); within it the limit adapts to how the destination
    /// answers (see the README's "Worker and delivery").
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The fewest: the adaptive limit never goes below this.
    #[serde(default = "default_min_in_flight")]
    pub min_in_flight: usize,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// This destination's circuit breaker, over `[worker.breaker]`.
    #[serde(default)]
    pub breaker: BreakerOverride,
    /// At most this many requests to the destination, across every worker replica
    /// (`"200/s"`, `"600/m"`, `"1000/h"`); unlimited when unset.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Per-key ordered delivery (see the README's "Ordered delivery"); unordered when
    /// unset.
    #[serde(default)]
    pub ordering: Option<OrderingConfig>,
}

/// `ordering = { key = "/data/object/customer" }`, `{ key_header = "X-Shop" }` or
/// `{ key = "source" }`: what an event's key is for this destination, and what a dead
/// delivery does to its key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderingConfig {
    /// A JSON pointer into the payload (starts with `/`), or `"source"`.
    #[serde(default)]
    pub key: Option<String>,
    /// A request header whose value is the key.
    #[serde(default)]
    pub key_header: Option<String>,
    #[serde(default)]
    pub on_dead: OnDead,
}

/// What a key does when its delivery goes dead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDead {
    /// The key moves on to its next delivery.
    #[default]
    Skip,
    /// The key waits until an operator replays or skips the dead delivery.
    Block,
}

/// A rate of requests, written `"N/s"`, `"N/m"` or `"N/h"` (N may have a fraction).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    per_second: f64,
    /// As written, for `check-config`.
    count: f64,
    unit: char,
}

impl RateLimit {
    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        const RULE: &str = "a rate such as \"200/s\", \"600/m\" or \"1000/h\" (more than 0)";
        let (count, unit) = text.trim().split_once('/').ok_or(RULE)?;
        let count: f64 = count.trim().parse().map_err(|_| RULE)?;
        let (unit, seconds) = match unit.trim() {
            "s" => ('s', 1.0),
            "m" => ('m', 60.0),
            "h" => ('h', 3600.0),
            _ => return Err(RULE.into()),
        };
        if !count.is_finite() || count <= 0.0 {
            return Err(RULE.into());
        }
        Ok(Self {
            per_second: count / seconds,
            count,
            unit,
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit)
    }
}

impl Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Exactly one of `key` (a JSON pointer or `"source"`) and `key_header` (a header name).
fn validate_ordering(key: &str, ordering: &OrderingConfig) -> Result<(), Error> {
    match (&ordering.key, &ordering.key_header) {
        (Some(pointer), None) => {
            if pointer != "source" && !pointer.starts_with('/') {
                return Err(invalid(
                    format!("{key}.key"),
                    "must be a JSON pointer such as \"/data/object/customer\", or \"source\"",
                ));
            }
        }
        (None, Some(header)) => {
            if actix_web::http::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(invalid(
                    format!("{key}.key_header"),
                    "must be a valid header name",
                ));
            }
        }
        _ => {
            return Err(invalid(
                key,
                "must set exactly one of key (a JSON pointer, or \"source\") and key_header",
            ))
        }
    }
    Ok(())
}

/// A breaker that can open and whose probes back off.
fn validate_breaker(key: &str, breaker: &BreakerConfig) -> Result<(), Error> {
    if breaker.failures == 0 {
        return Err(invalid(format!("{key}.failures"), "must be at least 1"));
    }
    if breaker.window.is_zero() || breaker.probe_interval.is_zero() {
        return Err(invalid(
            format!("{key}.window"),
            "window and probe_interval must be longer than 0s",
        ));
    }
    if breaker.max_probe_interval < breaker.probe_interval {
        return Err(invalid(
            format!("{key}.max_probe_interval"),
            "must be at least probe_interval",
        ));
    }
    Ok(())
}

fn default_max_in_flight() -> usize {
    256
}

fn default_min_in_flight() -> usize {
    1
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

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
    fn resolve(&mut self, key: &str) -> Result<(), Error> {
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

const REDACTED: &str = "[redacted]";

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

impl Config {
    /// Loads defaults, then the file, then `RELAYD__…` variables; resolves `env:`
    /// secrets and validates. `path` is `--config`; without it the default file is
    /// optional.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let file = match path {
            Some(path) => config::File::from(path).required(true),
            None => config::File::with_name(DEFAULT_CONFIG_PATH).required(false),
        };
        let path_shown = path.map_or(DEFAULT_CONFIG_PATH.to_string(), |p| p.display().to_string());
        let layered = config::Config::builder()
            .add_source(file.format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("RELAYD")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("broker.urls"),
            )
            .build()
            .map_err(|e| Error::File {
                path: path_shown,
                message: e.to_string(),
            })?;
        // `broker.url` has a default, so only the layers can tell whether it was set.
        let url_set = layered.get_string("broker.url").is_ok();
        let mut config: Config = layered
            .try_deserialize()
            .map_err(|e| Error::Parse(tidy_key_paths(&e.to_string())))?;
        if url_set && !config.broker.urls.is_empty() {
            return Err(invalid(
                "broker.urls",
                "set beside broker.url; give one node as broker.url or all nodes as broker.urls",
            ));
        }
        config.resolve_secrets()?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_secrets(&mut self) -> Result<(), Error> {
        self.database.url.resolve("database.url")?;
        self.broker.url.resolve("broker.url")?;
        for (i, url) in self.broker.urls.iter_mut().enumerate() {
            url.resolve(&format!("broker.urls[{i}]"))?;
        }
        if let Some(token) = &mut self.ops.admin_token {
            token.resolve("ops.admin_token")?;
        }
        for (i, source) in self.sources.iter_mut().enumerate() {
            for (j, secret) in source.secrets.iter_mut().enumerate() {
                secret.resolve(&format!("sources[{i}].secrets[{j}]"))?;
            }
        }
        for (i, destination) in self.destinations.iter_mut().enumerate() {
            destination
                .signing_secret
                .resolve(&format!("destinations[{i}].signing_secret"))?;
            destination.url.resolve(&format!("destinations[{i}].url"))?;
        }
        Ok(())
    }

    /// Checks what serde cannot: URLs, names, references between sections.
    pub fn validate(&self) -> Result<(), Error> {
        crate::db::check_url(self.database.url.expose()).map_err(|e| invalid("database.url", e))?;
        check_url("broker.url", self.broker.url.expose(), &["amqp", "amqps"])?;
        for (i, url) in self.broker.urls.iter().enumerate() {
            check_url(&format!("broker.urls[{i}]"), url.expose(), &["amqp", "amqps"])?;
        }
        if self.database.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be at least 1"));
        }
        if self.ops.liveness_stall.is_zero() {
            return Err(invalid("ops.liveness_stall", "must be longer than 0s"));
        }
        if self.database.query_timeout.is_zero() {
            return Err(invalid("database.query_timeout", "must be longer than 0s"));
        }
        if !is_valid_name(&self.broker.prefix) {
            return Err(invalid("broker.prefix", NAME_RULE));
        }
        if self.ingest.body_timeout.is_zero() {
            return Err(invalid("ingest.body_timeout", "must be longer than 0s"));
        }
        if self.ingest.header_timeout.is_zero() {
            return Err(invalid("ingest.header_timeout", "must be longer than 0s"));
        }
        if self.ingest.max_buffered_bytes < self.ingest.max_body_bytes {
            return Err(invalid(
                "ingest.max_buffered_bytes",
                "must be at least ingest.max_body_bytes (one largest body must fit)",
            ));
        }
        if self.ingest.max_connections == 0 {
            return Err(invalid("ingest.max_connections", "must be at least 1"));
        }
        if self.ingest.max_body_bytes == 0 {
            return Err(invalid("ingest.max_body_bytes", "must be at least 1"));
        }
        if self.relay.batch_size == 0 || self.relay.batch_size > 10_000 {
            return Err(invalid("relay.batch_size", "must be between 1 and 10000"));
        }
        if self.relay.poll_interval.is_zero() {
            return Err(invalid("relay.poll_interval", "must be longer than 0s"));
        }
        if self.broker.confirm_timeout.is_zero() {
            return Err(invalid("broker.confirm_timeout", "must be longer than 0s"));
        }
        if self.broker.heartbeat.as_secs() > u64::from(u16::MAX) {
            return Err(invalid("broker.heartbeat", "must be at most 65535s"));
        }
        if self.broker.dead_letter_ttl.as_millis() > u128::from(u32::MAX) {
            return Err(invalid(
                "broker.dead_letter_ttl",
                "must be at most 49 days (RabbitMQ's limit)",
            ));
        }
        if self.retention.interval.is_zero() {
            return Err(invalid("retention.interval", "must be longer than 0s"));
        }
        if self.retention.batch_size == 0 || self.retention.batch_size > 100_000 {
            return Err(invalid("retention.batch_size", "must be between 1 and 100000"));
        }
        if self.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1"));
        }
        validate_breaker("worker.breaker", &self.worker.breaker)?;
        if self
            .log
            .level
            .parse::<tracing_subscriber::filter::Targets>()
            .is_err()
        {
            return Err(invalid(
                "log.level",
                "not a valid filter such as `info` or `relayd=debug,info`",
            ));
        }
        if let Some(token) = &self.ops.admin_token {
            if token.expose().len() < 16 {
                return Err(invalid("ops.admin_token", "must be at least 16 characters"));
            }
        }

        let mut source_names = HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let key = |field: &str| format!("sources[{i}].{field}");
            if !is_valid_name(&source.name) {
                return Err(invalid(key("name"), NAME_RULE));
            }
            if !source_names.insert(source.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate source name {:?}", source.name),
                ));
            }
            validate_source(source, &key)?;
        }

        let mut destination_names = HashSet::new();
        for (i, destination) in self.destinations.iter().enumerate() {
            let key = |field: &str| format!("destinations[{i}].{field}");
            if !is_valid_name(&destination.name) {
                return Err(invalid(key("name"), NAME_RULE));
            }
            if !destination_names.insert(destination.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate destination name {:?}", destination.name),
                ));
            }
            check_url(&key("url"), destination.url.expose(), &["http", "https"])?;
            validate_breaker(&key("breaker"), &destination.breaker.over(&self.worker.breaker))?;
            if crate::signing::decode_whsec(destination.signing_secret.expose()).is_none() {
                return Err(invalid(
                    key("signing_secret"),
                    "must be a Standard Webhooks secret: `whsec_` followed by base64",
                ));
            }
            for (j, source) in destination.sources.iter().enumerate() {
                if !source_names.contains(source.as_str()) {
                    return Err(invalid(
                        format!("destinations[{i}].sources[{j}]"),
                        format!("unknown source {source:?}"),
                    ));
                }
            }
            for (j, pattern) in destination.event_types.iter().enumerate() {
                if let Err(e) = glob::Pattern::new(pattern) {
                    return Err(invalid(
                        format!("destinations[{i}].event_types[{j}]"),
                        e.to_string(),
                    ));
                }
            }
            if destination.min_in_flight == 0 || destination.min_in_flight > destination.max_in_flight {
                return Err(invalid(
                    key("min_in_flight"),
                    "must be at least 1 and at most max_in_flight",
                ));
            }
            if destination.max_in_flight == 0 {
                return Err(invalid(key("max_in_flight"), "must be at least 1"));
            }
            if destination.timeout.is_zero() {
                return Err(invalid(key("timeout"), "must be longer than 0s"));
            }
            if let Some(ordering) = &destination.ordering {
                validate_ordering(&key("ordering"), ordering)?;
            }
        }
        Ok(())
    }

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
        if let Some(toml::Value::Array(shown_destinations)) = table.get_mut("destinations") {
            for (t, destination) in shown_destinations.iter_mut().zip(&self.destinations) {
                if let toml::Value::Table(t) = t {
                    t.insert("url".into(), shown(&destination.url));
                }
            }
        }
        toml::to_string_pretty(&table).unwrap_or_default()
    }
}

impl Config {
    /// Valid but risky settings, for `check-config` to point out.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = Vec::new();
        // Stripe retries for 3 days: pruning sooner would accept its late retries again.
        let three_days = Duration::from_secs(3 * 24 * 3600);
        for (key, horizon) in [
            ("retention.delivered", self.retention.delivered),
            ("retention.dead", self.retention.dead),
        ] {
            if !horizon.is_zero() && horizon < three_days {
                warnings.push(format!(
                    "{key}: {} is shorter than providers' retry windows (Stripe: 3 days); a provider \
                     re-sending an older event would have it accepted again",
                    humantime::format_duration(horizon)
                ));
            }
        }
        let development = |secret: &Secret| DEVELOPMENT_SECRETS.contains(&secret.expose());
        for (i, source) in self.sources.iter().enumerate() {
            for (j, _) in source.secrets.iter().enumerate().filter(|(_, s)| development(s)) {
                warnings.push(format!(
                    "sources[{i}].secrets[{j}]: source {:?} uses the development secret shipped in \
                     config/relayd.toml; set the provider's real one before real use",
                    source.name
                ));
            }
        }
        for (i, destination) in self.destinations.iter().enumerate() {
            if development(&destination.signing_secret) {
                warnings.push(format!(
                    "destinations[{i}].signing_secret: destination {:?} is signed with the development \
                     secret shipped in config/relayd.toml; set a secret of its own before real use",
                    destination.name
                ));
            }
        }
        warnings.extend(
            self.sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.kind == SourceKind::None)
                .map(|(i, s)| {
                    format!(
                        "sources[{i}].kind: source {:?} has kind \"none\": anyone can post events to it \
                     (for local testing only)",
                        s.name
                    )
                }),
        );
        warnings
    }
}

/// The per-kind rules of one `[[sources]]` entry.
fn validate_source(source: &SourceConfig, key: &dyn Fn(&str) -> String) -> Result<(), Error> {
    if source.kind == SourceKind::None {
        if !source.secrets.is_empty() {
            return Err(invalid(
                key("secrets"),
                "kind \"none\" verifies nothing: remove the secrets",
            ));
        }
    } else {
        if source.secrets.is_empty() {
            return Err(invalid(
                key("secrets"),
                "at least one secret is required (kind = \"none\" disables verification, for local testing only)",
            ));
        }
        if source.secrets.iter().any(|s| s.expose().is_empty()) {
            return Err(invalid(key("secrets"), "a secret must not be empty"));
        }
    }
    if source.kind == SourceKind::StandardWebhooks {
        for (j, secret) in source.secrets.iter().enumerate() {
            if crate::signing::decode_whsec(secret.expose()).is_none() {
                return Err(invalid(
                    format!("{}[{j}]", key("secrets")),
                    "a Standard Webhooks secret is `whsec_` followed by base64",
                ));
            }
        }
    }
    let hmac_only = [
        ("signature_header", source.signature_header.is_some()),
        ("encoding", source.encoding.is_some()),
        ("prefix", source.prefix.is_some()),
    ];
    let custom_ids = [
        ("id_header", source.id_header.is_some()),
        ("id_pointer", source.id_pointer.is_some()),
        ("id_from_body_hash", source.id_from_body_hash),
        ("type_header", source.type_header.is_some()),
        ("type_pointer", source.type_pointer.is_some()),
    ];
    let takes_custom_ids = matches!(source.kind, SourceKind::Hmac | SourceKind::None);
    for (field, set) in hmac_only {
        if set && source.kind != SourceKind::Hmac {
            return Err(invalid(key(field), "only applies to kind = \"hmac\""));
        }
    }
    for (field, set) in custom_ids {
        if set && !takes_custom_ids {
            return Err(invalid(key(field), "only applies to kinds \"hmac\" and \"none\""));
        }
    }
    for (field, pointer) in [
        ("id_pointer", &source.id_pointer),
        ("type_pointer", &source.type_pointer),
    ] {
        if pointer.as_deref().is_some_and(|p| !p.starts_with('/')) {
            return Err(invalid(
                key(field),
                "a JSON pointer starts with '/', e.g. \"/id\"",
            ));
        }
    }
    for (field, header) in [
        ("signature_header", &source.signature_header),
        ("id_header", &source.id_header),
        ("type_header", &source.type_header),
    ] {
        if header
            .as_deref()
            .is_some_and(|h| actix_web::http::header::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(invalid(key(field), "not a valid HTTP header name"));
        }
    }
    if source.kind == SourceKind::Hmac {
        if source.signature_header.is_none() {
            return Err(invalid(key("signature_header"), "required for kind = \"hmac\""));
        }
        let id_sources = [
            source.id_header.is_some(),
            source.id_pointer.is_some(),
            source.id_from_body_hash,
        ];
        if id_sources.iter().filter(|set| **set).count() != 1 {
            return Err(invalid(
                key("id_header"),
                "kind = \"hmac\" needs exactly one of id_header, id_pointer or id_from_body_hash = true",
            ));
        }
    }
    if source.id_header.is_some() && source.id_pointer.is_some() {
        return Err(invalid(
            key("id_pointer"),
            "set id_header or id_pointer, not both",
        ));
    }
    if source.type_header.is_some() && source.type_pointer.is_some() {
        return Err(invalid(
            key("type_pointer"),
            "set type_header or type_pointer, not both",
        ));
    }
    Ok(())
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

/// The config crate writes `sources[0]kind`; show `sources[0].kind` like our own errors.
fn tidy_key_paths(message: &str) -> String {
    let mut tidy = String::with_capacity(message.len() + 8);
    let mut previous = None;
    for c in message.chars() {
        if previous == Some(']') && (c.is_ascii_alphabetic() || c == '_') {
            tidy.push('.');
        }
        tidy.push(c);
        previous = Some(c);
    }
    tidy
}

/// `scheme://user:secret@host/…` → `scheme://user:[redacted]@host/…`.
/// `value` with its password and the value of every query parameter replaced by
/// `redacted` (the user, host, port, path and parameter names stay); `[redacted]` as a
/// whole when it does not parse as one URL (a multi-host database URL, say).
fn redact_url(value: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn key_paths_get_their_dots() {
        assert_eq!(
            tidy_key_paths("bad value for key `sources[0]kind` and `a[1][2]b`"),
            "bad value for key `sources[0].kind` and `a[1][2].b`"
        );
    }

    #[test]
    fn url_passwords_and_query_values_are_redacted() {
        let shown = redact_url("amqp://guest:hunter2@127.0.0.1:5672/%2f");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("guest"), "{shown}");
        let shown = redact_url("https://h.example/in?token=t0k&x=1");
        assert_eq!(shown, "https://h.example/in?token=redacted&x=redacted");
        assert_eq!(redact_url("postgres://a:b@h1:5432,h2:5433/db"), REDACTED);
    }

    fn load_toml(text: &str) -> Result<Config, Error> {
        let path = std::env::temp_dir().join(format!("relayd-config-{}.toml", uuid::Uuid::now_v7().simple()));
        std::fs::write(&path, text).unwrap();
        let loaded = Config::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        loaded
    }

    #[test]
    fn broker_urls_name_the_nodes_and_are_refused_beside_broker_url() {
        let config = load_toml(
            "[broker]\nurls = [\"amqp://a:5672/%2f\", \"amqp://b:5672/%2f\", \"amqps://c:5671/%2f\"]\n",
        )
        .unwrap();
        let nodes: Vec<&str> = config.broker.nodes().iter().map(Secret::expose).collect();
        assert_eq!(
            nodes,
            ["amqp://a:5672/%2f", "amqp://b:5672/%2f", "amqps://c:5671/%2f"]
        );
        let one = load_toml("[broker]\nurl = \"amqp://only:5672/%2f\"\n").unwrap();
        let nodes: Vec<&str> = one.broker.nodes().iter().map(Secret::expose).collect();
        assert_eq!(nodes, ["amqp://only:5672/%2f"]);
        let both = load_toml("[broker]\nurl = \"amqp://a:5672/%2f\"\nurls = [\"amqp://b:5672/%2f\"]\n");
        assert!(
            matches!(&both, Err(Error::Invalid { key, .. }) if key == "broker.urls"),
            "{both:?}"
        );
        let bad = load_toml("[broker]\nurls = [\"amqp://a:5672/%2f\", \"http://b/\"]\n");
        assert!(
            matches!(&bad, Err(Error::Invalid { key, .. }) if key == "broker.urls[1]"),
            "{bad:?}"
        );
    }

    #[test]
    fn the_in_flight_bounds_must_be_ordered_and_positive() {
        let destination = "[[destinations]]\nname = \"d\"\nurl = \"http://h/\"\nsigning_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
        let loaded = load_toml(destination).unwrap();
        assert_eq!(
            (
                loaded.destinations[0].min_in_flight,
                loaded.destinations[0].max_in_flight
            ),
            (1, 256)
        );
        for bounds in ["min_in_flight = 0\n", "min_in_flight = 9\nmax_in_flight = 8\n"] {
            let refused = load_toml(&format!("{destination}{bounds}"));
            assert!(
                matches!(&refused, Err(Error::Invalid { key, .. }) if key.ends_with("min_in_flight")),
                "{bounds}: {refused:?}"
            );
        }
    }

    #[test]
    fn names_are_restricted_to_path_and_queue_safe_characters() {
        assert!(is_valid_name("stripe-live_2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("Stripe"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(&"a".repeat(65)));
    }

    #[test]
    fn rate_limits_are_written_per_second_minute_or_hour() {
        let rate = |text: &str| text.parse::<RateLimit>().map(|r| r.per_second());
        assert_eq!(rate("200/s"), Ok(200.0));
        assert_eq!(rate("600/m"), Ok(10.0));
        assert_eq!(rate("1800/h"), Ok(0.5));
        assert_eq!(rate(" 2.5 / s "), Ok(2.5));
        for bad in ["200", "0/s", "-1/s", "x/s", "5/d", "inf/s", ""] {
            assert!(rate(bad).is_err(), "{bad:?}");
        }
        assert_eq!("600/m".parse::<RateLimit>().unwrap().to_string(), "600/m");
        let loaded = load_toml(
            "[[destinations]]\nname = \"d\"\nurl = \"http://127.0.0.1:1/\"\nsigning_secret = \"whsec_AQID\"\nrate_limit = \"7/x\"\n",
        );
        assert!(loaded.is_err(), "{loaded:?}");
    }

    #[test]
    fn ordering_takes_one_pointer_header_or_the_source() {
        let with = |ordering: &str| {
            load_toml(&format!(
                "[[destinations]]\nname = \"d\"\nurl = \"http://127.0.0.1:1/\"\nsigning_secret = \"whsec_AQID\"\nordering = {ordering}\n"
            ))
        };
        let ok = with(r#"{ key = "/data/object/customer", on_dead = "block" }"#).expect("a pointer");
        let ordering = ok.destinations[0].ordering.clone().expect("ordered");
        assert_eq!(ordering.on_dead, OnDead::Block);
        assert_eq!(
            with(r#"{ key = "source" }"#).unwrap().destinations[0]
                .ordering
                .as_ref()
                .map(|o| o.on_dead),
            Some(OnDead::Skip),
            "skip is the default"
        );
        assert!(with(r#"{ key_header = "X-Shopify-Shop-Domain" }"#).is_ok());
        for (bad, says) in [
            (r#"{ key = "data.object.customer" }"#, "JSON pointer"),
            (r#"{ key = "/a", key_header = "X-A" }"#, "exactly one"),
            (r#"{ on_dead = "block" }"#, "exactly one"),
            (r#"{ key_header = "bad header" }"#, "header name"),
            (r#"{ key = "/a", on_dead = "wait" }"#, "on_dead"),
            (r#"{ key = "/a", order = 1 }"#, "order"),
        ] {
            let error = with(bad).expect_err(bad).to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
