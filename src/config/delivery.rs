//! How work moves: `[relay]` (outbox to broker) and `[worker]` (broker to HTTP: its
//! retry schedule and the circuit breaker every destination starts from), with their
//! defaults and their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Error};

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

/// A breaker that can open and whose probes back off.
pub(super) fn validate_breaker(key: &str, breaker: &BreakerConfig) -> Result<(), Error> {
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

impl RelayConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(invalid("relay.batch_size", "must be between 1 and 10000"));
        }
        if self.poll_interval.is_zero() {
            return Err(invalid("relay.poll_interval", "must be longer than 0s"));
        }
        Ok(())
    }
}

impl WorkerConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1"));
        }
        validate_breaker("worker.breaker", &self.breaker)
    }
}
