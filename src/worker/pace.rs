//! A destination's `rate_limit` in one worker: its share of the limit (the limit over
//! the workers live now, from their heartbeats) as evenly spaced send times.
//!
//! A delivery reserves the next send time and waits for it before it is claimed, so the
//! wait is not an attempt, holds no lease and no in-flight slot. Send times sit on a grid
//! one interval apart: a send that starts late does not push the grid back (the next
//! may follow at once), but an idle destination gains at most one interval of credit,
//! so over any minute the sends stay within one interval of the limit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Pacer {
    /// The destination's whole limit, per second, across all workers.
    limit: f64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Between two sends of this worker.
    interval: Duration,
    /// The next free send time.
    next: Instant,
}

impl Pacer {
    /// Paces at the whole `per_second` until told how many workers share it.
    pub fn new(per_second: f64) -> Self {
        Self {
            limit: per_second,
            inner: Mutex::new(Inner {
                interval: Duration::from_secs_f64(1.0 / per_second),
                next: Instant::now(),
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `live` workers share the limit now.
    pub fn share_with(&self, live: i64) {
        let live = live.max(1) as f64;
        self.inner().interval = Duration::from_secs_f64(live / self.limit);
    }

    /// This worker's share, per second.
    pub fn share(&self) -> f64 {
        1.0 / self.inner().interval.as_secs_f64()
    }

    /// Reserves the next send time: `None` to send now, or the instant to wait for.
    pub fn reserve(&self, now: Instant) -> Option<Instant> {
        let mut inner = self.inner();
        let earliest = now.checked_sub(inner.interval).unwrap_or(now);
        let at = inner.next.max(earliest);
        inner.next = at + inner.interval;
        (at > now).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_spaced_by_the_share_and_idle_time_gives_one_interval_of_credit() {
        let pacer = Pacer::new(10.0);
        let t0 = Instant::now();
        // A burst: the first goes at once, each later one 100 ms after the one before.
        let times: Vec<Duration> = (0..5)
            .map(|_| pacer.reserve(t0).map_or(Duration::ZERO, |at| at - t0))
            .collect();
        assert_eq!(times[0], Duration::ZERO);
        assert!(times[1] > Duration::from_millis(99), "{:?}", times[1]);
        assert_eq!(times[2] - times[1], Duration::from_millis(100));
        assert_eq!(times[4] - times[1], Duration::from_millis(300));
        // After a long idle time, one interval of credit: two sends at once, then the
        // next an interval later.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(pacer.reserve(later), None);
        assert_eq!(pacer.reserve(later), None);
        assert_eq!(pacer.reserve(later), Some(later + Duration::from_millis(100)));
    }

    #[test]
    fn over_a_minute_the_sends_stay_within_one_interval_of_the_limit() {
        // Each send starts 3 ms after its reserved time (a late timer): the grid holds.
        let pacer = Pacer::new(200.0);
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent = 0;
        while now < t0 + Duration::from_secs(60) {
            if let Some(at) = pacer.reserve(now) {
                now = at + Duration::from_millis(3);
            }
            sent += 1;
        }
        assert!((11_999..=12_002).contains(&sent), "{sent} sends in 60 s at 200/s");
    }

    #[test]
    fn live_workers_share_the_limit() {
        let pacer = Pacer::new(90.0);
        pacer.share_with(3);
        assert!((pacer.share() - 30.0).abs() < 1e-6, "{}", pacer.share());
        pacer.share_with(0);
        assert!((pacer.share() - 90.0).abs() < 1e-6);
    }
}
