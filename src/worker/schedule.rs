//! What a failed attempt leads to: another try after the next delay of
//! `worker.retry.schedule` (±20 % jitter, or the destination's `Retry-After` when that is
//! longer), or `dead` when the schedule is exhausted.

use std::time::{Duration, SystemTime};

use crate::config::RetryConfig;
use crate::db::deliveries::Outcome;

/// Jitter applied to every scheduled delay, as a fraction either way.
const JITTER: f64 = 0.2;

/// A `Retry-After` longer than this is treated as this: a destination cannot park a
/// delivery for longer than the default schedule's longest step.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How one attempt ended, as seen by the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub status_code: Option<i32>,
    pub error: String,
    /// The destination's `Retry-After`, when it sent one with 429 or 503.
    pub retry_after: Option<Duration>,
}

/// The outcome of failed attempt number `attempt` (1-based).
pub fn after_failure(retry: &RetryConfig, attempt: i32, failure: Failure) -> Outcome {
    let retries_used = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
    match retry.delay(retries_used) {
        Some(delay) => {
            let jittered = jitter(delay, rand::random::<f64>());
            let retry_in = match failure.retry_after {
                Some(asked) if asked > jittered => asked.min(MAX_RETRY_AFTER),
                _ => jittered,
            };
            Outcome::Retrying {
                retry_in,
                status_code: failure.status_code,
                error: failure.error,
            }
        }
        None => Outcome::Dead {
            status_code: failure.status_code,
            error: failure.error,
        },
    }
}

/// `delay` scaled by a factor in `[1 - JITTER, 1 + JITTER]`; `unit` is uniform in [0, 1).
fn jitter(delay: Duration, unit: f64) -> Duration {
    delay.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(seconds: &[u64]) -> RetryConfig {
        RetryConfig {
            schedule: seconds.iter().map(|s| Duration::from_secs(*s).into()).collect(),
        }
    }

    fn failure(retry_after: Option<u64>) -> Failure {
        Failure {
            status_code: Some(503),
            error: "HTTP 503".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn retry_in(outcome: Outcome) -> Duration {
        match outcome {
            Outcome::Retrying { retry_in, .. } => retry_in,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn each_failure_takes_the_next_delay_within_twenty_percent() {
        let retry = schedule(&[10, 100]);
        for _ in 0..100 {
            let first = retry_in(after_failure(&retry, 1, failure(None)));
            assert!(
                first >= Duration::from_secs(8) && first <= Duration::from_secs(12),
                "{first:?}"
            );
            let second = retry_in(after_failure(&retry, 2, failure(None)));
            assert!(
                second >= Duration::from_secs(80) && second <= Duration::from_secs(120),
                "{second:?}"
            );
        }
    }

    #[test]
    fn an_exhausted_schedule_is_dead() {
        let retry = schedule(&[10, 100]);
        assert!(matches!(
            after_failure(&retry, 3, failure(None)),
            Outcome::Dead { .. }
        ));
        assert!(matches!(
            after_failure(&schedule(&[]), 1, failure(None)),
            Outcome::Dead { .. }
        ));
    }

    #[test]
    fn a_longer_retry_after_wins_and_a_shorter_one_does_not() {
        let retry = schedule(&[10]);
        assert_eq!(
            retry_in(after_failure(&retry, 1, failure(Some(60)))),
            Duration::from_secs(60)
        );
        assert!(retry_in(after_failure(&retry, 1, failure(Some(1)))) >= Duration::from_secs(8));
        assert_eq!(
            retry_in(after_failure(&retry, 1, failure(Some(10_000_000)))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn jitter_bounds() {
        assert_eq!(jitter(Duration::from_secs(10), 0.0), Duration::from_secs(8));
        assert_eq!(jitter(Duration::from_secs(10), 1.0), Duration::from_secs(12));
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
