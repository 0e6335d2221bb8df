//! Backoff schedules for retrying transient failures (database, LISTEN connection):
//! tokio-retry's exponential backoff, doubling from `first` up to `max`, with full
//! jitter so replicas do not retry in lockstep. An infinite iterator: `.take(n)` to
//! bound the tries.

use std::time::Duration;

use tokio_retry::strategy::{jitter, ExponentialBackoff};

/// Delays `first`, 2×`first`, 4×`first`… capped at `max`, each jittered in `[0, d)`.
pub fn backoff(first: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    // `from_millis(2)` is the doubling base; `factor` scales it to `first`.
    let factor = u64::try_from(first.as_millis() / 2).unwrap_or(u64::MAX).max(1);
    ExponentialBackoff::from_millis(2)
        .factor(factor)
        .max_delay(max)
        .map(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_doubling_and_the_cap() {
        let delays: Vec<Duration> = backoff(Duration::from_millis(100), Duration::from_secs(2))
            .take(8)
            .collect();
        for (i, delay) in delays.iter().enumerate() {
            let bound = Duration::from_millis(100 << i).min(Duration::from_secs(2));
            assert!(*delay <= bound, "try {i}: {delay:?} > {bound:?}");
        }
    }
}
