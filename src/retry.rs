//! Backoff schedules for retrying transient failures (database, LISTEN connection,
//! broker reconnects): tokio-retry's exponential backoff, doubling from `first` up to
//! `max`, with jitter so replicas do not retry in lockstep. Infinite iterators: `.take(n)`
//! to bound the tries.

use std::time::Duration;

use tokio_retry::strategy::{jitter, ExponentialBackoff};

/// Delays `first`, 2×`first`, 4×`first`… capped at `max`, each jittered in `[0, d)`
/// ("full jitter").
pub fn backoff(first: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    doubling(first, max).map(jitter)
}

/// The same steps with "equal jitter": each delay is half fixed, half random, in
/// `[d/2, d]`, so a try never comes much sooner than its step (a broker that accepts
/// and drops connections is not hammered) while replicas still spread out.
pub fn backoff_with_floor(first: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    doubling(first, max).map(|delay| delay / 2 + jitter(delay / 2))
}

/// `first`, 2×`first`, 4×`first`… capped at `max`, unjittered.
fn doubling(first: Duration, max: Duration) -> ExponentialBackoff {
    // `from_millis(2)` is the doubling base; `factor` scales it to `first`.
    let factor = u64::try_from(first.as_millis() / 2).unwrap_or(u64::MAX).max(1);
    ExponentialBackoff::from_millis(2).factor(factor).max_delay(max)
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

    #[test]
    fn delays_with_a_floor_stay_within_half_and_all_of_each_step() {
        let delays: Vec<Duration> = backoff_with_floor(Duration::from_millis(200), Duration::from_secs(5))
            .take(8)
            .collect();
        for (i, delay) in delays.iter().enumerate() {
            let step = Duration::from_millis(200 << i).min(Duration::from_secs(5));
            assert!(
                *delay >= step / 2 && *delay <= step,
                "try {i}: {delay:?} for a step of {step:?}"
            );
        }
    }
}
