//! What a failed attempt leads to: another try after the next delay of
//! `worker.retry.schedule` (±20 % jitter), or `dead` when the schedule is exhausted; and
//! what a throttled one leads to: a re-send after the destination's `Retry-After`
//! without spending a try, until the schedule's whole time has passed.

use std::time::{Duration, SystemTime};

use crate::config::RetryConfig;
use crate::db::deliveries::Outcome;

/// Jitter applied to every scheduled delay, as a fraction either way.
const JITTER: f64 = 0.2;

/// How one attempt ended, as seen by the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub status_code: Option<i32>,
    pub error: String,
}

/// The outcome of failed attempt number `attempt` (1-based).
pub fn after_failure(retry: &RetryConfig, attempt: i32, failure: Failure) -> Outcome {
    let retries_used = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
    match retry.delay(retries_used) {
        Some(delay) => Outcome::Retrying {
            retry_in: jitter(delay, rand::random::<f64>()),
            status_code: failure.status_code,
            error: failure.error,
        },
        None => Outcome::Dead {
            status_code: failure.status_code,
            error: failure.error,
        },
    }
}

/// The outcome of an attempt the destination throttled (asking for `retry_after`, at
/// most [`super::gate::MAX_RETRY_AFTER`]) or refused as gone: sent again after it
/// without spending a try, unless the delivery (created at `created_at`) has already
/// waited the retry schedule's whole time — a destination that throttles forever
/// cannot keep a delivery from ending.
pub fn after_throttle(
    retry: &RetryConfig,
    created_at: chrono::DateTime<chrono::Utc>,
    retry_after: Duration,
    failure: Failure,
) -> Outcome {
    let waited = (chrono::Utc::now() - created_at).to_std().unwrap_or_default();
    if waited >= retry.total() {
        return Outcome::Dead {
            status_code: failure.status_code,
            error: format!(
                "{} (throttled past the retry schedule's {:?})",
                failure.error,
                retry.total()
            ),
        };
    }
    Outcome::Throttled {
        retry_in: retry_after,
        status_code: failure.status_code,
        error: failure.error,
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

    fn failure() -> Failure {
        Failure {
            status_code: Some(503),
            error: "HTTP 503".into(),
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
            let first = retry_in(after_failure(&retry, 1, failure()));
            assert!(
                first >= Duration::from_secs(8) && first <= Duration::from_secs(12),
                "{first:?}"
            );
            let second = retry_in(after_failure(&retry, 2, failure()));
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
            after_failure(&retry, 3, failure()),
            Outcome::Dead { .. }
        ));
        assert!(matches!(
            after_failure(&schedule(&[]), 1, failure()),
            Outcome::Dead { .. }
        ));
    }

    #[test]
    fn a_throttled_attempt_keeps_its_try_until_the_schedule_s_time_has_passed() {
        let retry = schedule(&[10, 100]);
        let after = Duration::from_secs(7);
        let fresh = chrono::Utc::now();
        assert!(matches!(
            after_throttle(&retry, fresh, after, failure()),
            Outcome::Throttled { retry_in, .. } if retry_in == after
        ));
        let old = fresh - chrono::TimeDelta::seconds(111);
        assert!(matches!(
            after_throttle(&retry, old, after, failure()),
            Outcome::Dead { error, .. } if error.contains("throttled past")
        ));
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
