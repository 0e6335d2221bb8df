//! `[[operator_hooks]]` and `[operator]`: where relayd sends its operator notices
//! (a destination's circuit opening or closing, one disabled, a delivery dead, the
//! outbox stalled and recovered) and when the outbox counts as stalled, with their
//! checks. Each hook is delivered as a destination of its own (same queue, worker,
//! retries, signing), subscribed to notices only.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_url, invalid, is_valid_name, DestinationConfig, Error, Secret, NAME_RULE};

/// The source name operator notices are stored under; no `[[sources]]` may take it.
pub const NOTICE_SOURCE: &str = "relayd";

/// Every notice type relayd sends.
pub const NOTICE_TYPES: &[&str] = &[
    "destination.circuit_opened",
    "destination.circuit_closed",
    "destination.disabled",
    "delivery.dead",
    "outbox.stalled",
    "outbox.recovered",
];

/// One URL that receives operator notices, signed as Standard Webhooks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorHookConfig {
    /// Shares the namespace of `[[destinations]]` (it is delivered as one).
    pub name: String,
    pub url: Secret,
    /// Standard Webhooks `whsec_…` secret the notices are signed with.
    pub signing_secret: Secret,
    /// Notice type globs (`destination.*`); empty means every notice.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

impl OperatorHookConfig {
    /// The destination its notices are delivered as.
    pub fn destination(&self) -> DestinationConfig {
        DestinationConfig {
            event_types: self.events.clone(),
            timeout: self.timeout,
            ..DestinationConfig::new(&self.name, self.url.clone(), self.signing_secret.clone())
        }
    }
}

/// `[operator]`: how the notices are watched for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperatorConfig {
    /// The outbox is stalled while its oldest due delivery is older than this.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// How often destination states, dead deliveries and the outbox are looked at.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(600),
            interval: Duration::from_secs(1),
        }
    }
}

impl OperatorConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.stall_after < Duration::from_secs(1) {
            return Err(invalid("operator.stall_after", "must be at least 1s"));
        }
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(60) {
            return Err(invalid("operator.interval", "must be between 100ms and 60s"));
        }
        Ok(())
    }
}

pub(super) fn validate_hooks(
    hooks: &[OperatorHookConfig],
    destinations: &[DestinationConfig],
) -> Result<(), Error> {
    let mut names: HashSet<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
    for (i, hook) in hooks.iter().enumerate() {
        let key = |field: &str| format!("operator_hooks[{i}].{field}");
        if !is_valid_name(&hook.name) {
            return Err(invalid(key("name"), NAME_RULE));
        }
        if !names.insert(hook.name.as_str()) {
            return Err(invalid(
                key("name"),
                format!(
                    "{:?} is already the name of a destination or operator hook",
                    hook.name
                ),
            ));
        }
        check_url(&key("url"), hook.url.expose(), &["http", "https"])?;
        if crate::signing::decode_whsec(hook.signing_secret.expose()).is_none() {
            return Err(invalid(
                key("signing_secret"),
                "must be a Standard Webhooks secret: `whsec_` followed by base64",
            ));
        }
        for (j, pattern) in hook.events.iter().enumerate() {
            let compiled = glob::Pattern::new(pattern)
                .map_err(|e| invalid(format!("operator_hooks[{i}].events[{j}]"), e.to_string()))?;
            if !NOTICE_TYPES.iter().any(|t| compiled.matches(t)) {
                return Err(invalid(
                    format!("operator_hooks[{i}].events[{j}]"),
                    format!("matches no notice type (one of: {})", NOTICE_TYPES.join(", ")),
                ));
            }
        }
        if hook.timeout.is_zero() {
            return Err(invalid(key("timeout"), "must be more than 0"));
        }
    }
    Ok(())
}
