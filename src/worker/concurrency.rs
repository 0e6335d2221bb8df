//! Adaptive concurrency per destination (after Vector's adaptive request concurrency):
//! how many deliveries this worker keeps in flight to one destination.
//!
//! Time is cut into windows of about one round trip. At the end of a window the limit
//! grows by one (doubles, until the first push-back) if the limit was used in full, nothing pushed back and the window's
//! mean round trip was no slower than the destination's baseline; it shrinks by
//! [`DECREASE`] if something pushed back: a timeout, a connection error, a 5xx or 429,
//! or a mean round trip [`SLOWER`] times the baseline (the destination queueing our
//! requests). The baseline is the fastest recent window's mean, rising by at most
//! [`BASELINE_DRIFT`] a window, and only in windows not judged slower or with the
//! limit at its floor. The limit stays within `min_in_flight..=max_in_flight`.

use std::time::{Duration, Instant};

/// The factor of a decrease.
const DECREASE: f64 = 0.9;

/// A window whose mean round trip exceeds the baseline by this factor (and by
/// [`SLOWER_BY`]) counts as back-pressure.
const SLOWER: f64 = 1.5;

/// …and by at least this much, so that jitter on fast destinations is not pressure.
/// Measured: on a busy two-core machine a sink answering in 0.3–1 ms unloaded took
/// 2.5–10 ms per window at 2,000 deliveries/s — the machine's own contention, not the
/// destination's queue — and with 5 ms here the limit hovered at 15–40 and the shipped
/// defaults' end-to-end p99 was 0.6–2.4 s, against 0.24–0.27 s with 64 in flight.
/// A destination that really queues adds its service time per excess request, far
/// more than this for any destination slower than a few milliseconds.
const SLOWER_BY: Duration = Duration::from_millis(20);

/// How fast the baseline may rise per window: the baseline is the fastest recent
/// window's mean, so queueing we cause does not become the new normal, while a
/// destination that became slower for good is followed (doubling in ~70 windows).
const BASELINE_DRIFT: f64 = 1.01;

/// The shortest window.
const MIN_WINDOW: Duration = Duration::from_millis(20);

/// What one attempt says about the destination's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Answered 2xx in `round_trip`.
    Success,
    /// Timed out, refused, 5xx or 429: too much, or the destination is struggling.
    BackPressure,
    /// Any other answer (a 4xx is about the request, not about load).
    Neutral,
}

impl Signal {
    /// What an attempt's HTTP status (`None`: no answer) says.
    pub fn of(status: Option<u16>) -> Self {
        match status {
            Some(200..=299) => Signal::Success,
            Some(429 | 500..=599) | None => Signal::BackPressure,
            Some(_) => Signal::Neutral,
        }
    }
}

/// One destination's in-flight limit and its measurements.
#[derive(Debug)]
pub struct AdaptiveLimit {
    limit: f64,
    min: usize,
    max: usize,
    in_flight: usize,
    /// Mean round trip of successful attempts, in seconds, over past windows.
    baseline: Option<f64>,
    window: Window,
    /// Until the first push-back the limit doubles per window instead of growing by
    /// one (TCP's slow start): a fast destination reaches its ceiling in a few round
    /// trips instead of one per request slot, while the first windows, at the initial
    /// limit, still measure it unloaded.
    slow_start: bool,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    successes: u32,
    round_trips: f64,
    back_pressure: bool,
    /// Whether some attempt started with the limit in full use.
    saturated: bool,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            successes: 0,
            round_trips: 0.0,
            back_pressure: false,
            saturated: false,
        }
    }
}

impl AdaptiveLimit {
    /// Starts at `initial`, kept within `min..=max` (at least 1).
    pub fn new(min: usize, max: usize, initial: usize) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Self {
            limit: initial.clamp(min, max) as f64,
            min,
            max,
            in_flight: 0,
            baseline: None,
            window: Window::new(Instant::now()),
            slow_start: true,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        (self.limit as usize).clamp(self.min, self.max)
    }

    /// Deliveries holding a place now (claiming, sending or recording).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether another delivery may start now.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.limit()
    }

    /// A request starts.
    pub fn start(&mut self) {
        self.in_flight += 1;
        // "In full use" allows for the pipeline: between an ack and the broker's next
        // message a slot is briefly free even when the queue is long.
        if self.in_flight * 10 >= self.limit() * 8 {
            self.window.saturated = true;
        }
    }

    /// A request ended (or a delivery ended without one): its place is free.
    pub fn leave(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// What a request said, when it ended at `now` after `round_trip` (its place is
    /// given back with [`Self::leave`]); returns the new limit when this ended a
    /// window that changed it.
    pub fn finish(&mut self, now: Instant, round_trip: Duration, signal: Signal) -> Option<usize> {
        match signal {
            Signal::Success => {
                self.window.successes += 1;
                self.window.round_trips += round_trip.as_secs_f64();
            }
            Signal::BackPressure => self.window.back_pressure = true,
            Signal::Neutral => {}
        }
        let length = self
            .baseline
            .map_or(MIN_WINDOW, Duration::from_secs_f64)
            .max(MIN_WINDOW);
        if now.duration_since(self.window.started) < length {
            return None;
        }
        let before = self.limit();
        let window = std::mem::replace(&mut self.window, Window::new(now));
        let mean = (window.successes > 0).then(|| window.round_trips / f64::from(window.successes));
        let slower = match (mean, self.baseline) {
            (Some(mean), Some(baseline)) => {
                mean > baseline * SLOWER && mean - baseline > SLOWER_BY.as_secs_f64()
            }
            _ => false,
        };
        if window.back_pressure || slower {
            self.limit = (self.limit * DECREASE).max(self.min as f64);
            self.slow_start = false;
        } else if window.saturated && mean.is_some() {
            let grown = if self.slow_start {
                self.limit * 2.0
            } else {
                self.limit + 1.0
            };
            self.limit = grown.min(self.max as f64);
        }
        if let Some(mean) = mean {
            self.baseline = Some(match self.baseline {
                // A slow window leaves the baseline alone while the limit can still come
                // down; at the floor the destination is simply slower now.
                Some(baseline) if slower && before > self.min => baseline,
                Some(baseline) => mean.min(baseline * BASELINE_DRIFT),
                None => mean,
            });
        }
        let after = self.limit();
        tracing::trace!(
            before,
            after,
            mean_ms = mean.map(|m| m * 1000.0),
            baseline_ms = self.baseline.map(|b| b * 1000.0),
            back_pressure = window.back_pressure,
            slower,
            saturated = window.saturated,
            "in-flight window"
        );
        (after != before).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `windows` windows against a destination whose round trip for `n` in flight
    /// is `round_trip(n)`, keeping the limit in full use; returns the limits seen.
    fn drive(
        limit: &mut AdaptiveLimit,
        windows: usize,
        round_trip: impl Fn(usize) -> Duration,
    ) -> Vec<usize> {
        let mut now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..windows {
            let n = limit.limit();
            let rtt = round_trip(n);
            for _ in 0..n {
                limit.start();
            }
            now += rtt.max(MIN_WINDOW);
            for _ in 0..n {
                limit.finish(now, rtt, Signal::Success);
                limit.leave();
            }
            seen.push(limit.limit());
        }
        seen
    }

    #[test]
    fn a_fast_destination_used_in_full_grows_to_the_maximum() {
        let mut limit = AdaptiveLimit::new(1, 64, 4);
        let seen = drive(&mut limit, 100, |_| Duration::from_millis(10));
        assert_eq!(*seen.last().unwrap(), 64, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[1] >= w[0]), "never shrinks: {seen:?}");
    }

    #[test]
    fn a_destination_that_queues_beyond_its_capacity_settles_near_it() {
        // 8 at a time in 100 ms; beyond that requests wait their turn.
        let capacity = 8;
        let round_trip = |n: usize| Duration::from_millis(100 * n.div_ceil(capacity) as u64);
        let mut limit = AdaptiveLimit::new(1, 256, 1);
        let seen = drive(&mut limit, 400, round_trip);
        let settled = &seen[200..];
        assert!(
            settled.iter().all(|&l| (4..=2 * capacity).contains(&l)),
            "settles near 8, not at 256: {settled:?}"
        );
    }

    #[test]
    fn until_the_first_push_back_the_limit_doubles_per_window() {
        let mut limit = AdaptiveLimit::new(1, 64, 4);
        let seen = drive(&mut limit, 6, |_| Duration::from_millis(10));
        assert_eq!(seen, [8, 16, 32, 64, 64, 64]);
    }

    #[test]
    fn a_destination_that_became_slower_for_good_is_followed() {
        let mut limit = AdaptiveLimit::new(1, 64, 32);
        drive(&mut limit, 20, |_| Duration::from_millis(10));
        // From now on every answer takes 100 ms whatever the load.
        let seen = drive(&mut limit, 300, |_| Duration::from_millis(100));
        assert!(seen[..40].contains(&1), "backs off first: {seen:?}");
        assert!(*seen.last().unwrap() > 30, "then grows again: {seen:?}");
    }

    #[test]
    fn back_pressure_shrinks_the_limit_by_a_tenth_down_to_the_floor() {
        let mut limit = AdaptiveLimit::new(2, 64, 40);
        let mut now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..60 {
            limit.start();
            now += Duration::from_millis(50);
            limit.finish(now, Duration::from_secs(5), Signal::BackPressure);
            limit.leave();
            seen.push(limit.limit());
        }
        assert_eq!(seen[0], 36);
        assert_eq!(*seen.last().unwrap(), 2, "{seen:?}");
    }

    #[test]
    fn a_limit_not_in_full_use_does_not_grow() {
        let mut limit = AdaptiveLimit::new(1, 64, 10);
        let mut now = Instant::now();
        for _ in 0..100 {
            limit.start();
            now += Duration::from_millis(30);
            limit.finish(now, Duration::from_millis(10), Signal::Success);
            limit.leave();
        }
        assert_eq!(limit.limit(), 10);
        assert_eq!(limit.in_flight, 0);
    }

    #[test]
    fn statuses_are_read_as_success_pressure_or_neither() {
        assert_eq!(Signal::of(Some(204)), Signal::Success);
        assert_eq!(Signal::of(Some(429)), Signal::BackPressure);
        assert_eq!(Signal::of(Some(503)), Signal::BackPressure);
        assert_eq!(Signal::of(None), Signal::BackPressure);
        assert_eq!(Signal::of(Some(410)), Signal::Neutral);
        assert_eq!(Signal::of(Some(302)), Signal::Neutral);
    }

    #[test]
    fn client_errors_neither_grow_nor_shrink_it() {
        let mut limit = AdaptiveLimit::new(1, 64, 10);
        let mut now = Instant::now();
        for _ in 0..100 {
            for _ in 0..10 {
                limit.start();
            }
            now += Duration::from_millis(30);
            for _ in 0..10 {
                limit.finish(now, Duration::from_millis(10), Signal::Neutral);
                limit.leave();
            }
        }
        assert_eq!(limit.limit(), 10);
    }
}
