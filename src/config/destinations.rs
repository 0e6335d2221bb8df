//! `[[destinations]]`: the downstream services, what they subscribe to, how hard they
//! may be pushed (in-flight bounds, rate limit, breaker override) and their ordering,
//! with their checks.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::delivery::validate_breaker;
use super::{check_url, invalid, is_valid_name, BreakerConfig, BreakerOverride, Error, Secret, NAME_RULE};

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
    /// A CEL expression over `body`, `event_type` and `source` that an event must
    /// satisfy too ([`crate::filter`]); every event passes when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
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

impl DestinationConfig {
    /// A destination of every source and type, with the defaults of the file.
    pub fn new(name: &str, url: Secret, signing_secret: Secret) -> Self {
        Self {
            name: name.to_string(),
            url,
            signing_secret,
            sources: Vec::new(),
            event_types: Vec::new(),
            filter: None,
            max_in_flight: default_max_in_flight(),
            min_in_flight: default_min_in_flight(),
            timeout: default_timeout(),
            breaker: BreakerOverride::default(),
            rate_limit: None,
            ordering: None,
        }
    }
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

fn default_max_in_flight() -> usize {
    256
}

fn default_min_in_flight() -> usize {
    1
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

/// Every destination's rules: names unique, URLs and secrets well formed, subscriptions
/// to configured `sources` only, breakers over `defaults` sound.
pub(super) fn validate_destinations(
    destinations: &[DestinationConfig],
    sources: &HashSet<&str>,
    defaults: &BreakerConfig,
) -> Result<(), Error> {
    let mut names = HashSet::new();
    for (i, destination) in destinations.iter().enumerate() {
        let key = |field: &str| format!("destinations[{i}].{field}");
        if !is_valid_name(&destination.name) {
            return Err(invalid(key("name"), NAME_RULE));
        }
        if !names.insert(destination.name.as_str()) {
            return Err(invalid(
                key("name"),
                format!("duplicate destination name {:?}", destination.name),
            ));
        }
        check_url(&key("url"), destination.url.expose(), &["http", "https"])?;
        validate_breaker(&key("breaker"), &destination.breaker.over(defaults))?;
        if crate::signing::decode_whsec(destination.signing_secret.expose()).is_none() {
            return Err(invalid(
                key("signing_secret"),
                "must be a Standard Webhooks secret: `whsec_` followed by base64",
            ));
        }
        for (j, source) in destination.sources.iter().enumerate() {
            if !sources.contains(source.as_str()) {
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
        if let Some(filter) = &destination.filter {
            if let Err(e) = crate::filter::Filter::compile(filter) {
                return Err(invalid(key("filter"), e.to_string()));
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
