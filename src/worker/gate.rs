//! One destination's gate: whether its deliveries may go now.
//!
//! It combines the destination's shared flow state (its circuit and an operator's hold,
//! kept in PostgreSQL by [`crate::db::destinations`] and refreshed by the worker's
//! watcher) with what only this process knows: a `Retry-After` pause, and the count of
//! consecutive failed sends that opens the circuit. The gate decides; it never waits
//! and never touches the database: [`Gate::report`] returns the shared transition the
//! caller must make, and the row that transition returns is applied back with
//! [`Gate::apply`], so that a poll read before the change cannot undo it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::BreakerConfig;
use crate::db::destinations::{Row, State};

/// The longest pause a destination's `Retry-After` can ask for; it may ask again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What an attempt's answer says about the destination (not about the delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Healthy,
    /// Answered, but about the request (a 4xx other than 410 and 429): the service is up.
    Answered,
    /// Refused, timed out, or 5xx (without `Retry-After`): counts toward opening.
    Failed(String),
    /// 429 or 503 with `Retry-After`: send nothing for this long.
    Throttled(Duration),
    /// `410 Gone`: the endpoint is no more; disable the destination.
    Gone,
}

impl Verdict {
    /// The verdict on an answer (`status`: `None` when none came).
    pub fn of(status: Option<u16>, retry_after: Option<Duration>, error: Option<&str>) -> Self {
        match (status, retry_after) {
            (Some(429 | 503), Some(after)) => Verdict::Throttled(after.min(MAX_RETRY_AFTER)),
            (Some(200..=299), _) => Verdict::Healthy,
            (Some(410), _) => Verdict::Gone,
            (Some(code @ 500..=599), _) => Verdict::Failed(format!("HTTP {code}")),
            (Some(_), _) => Verdict::Answered,
            (None, _) => Verdict::Failed(error.unwrap_or("no answer").to_string()),
        }
    }
}

/// Whether a delivery may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Pass,
    /// Go, as the open circuit's probe.
    Probe,
    /// Not now: give the message back to the queue.
    Hold,
}

/// What the consumer should take from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// As many as the in-flight limit's prefetch.
    Consume,
    /// One message, to be the probe.
    Probe,
    /// Nothing: messages stay in the queue.
    Hold,
}

/// A change of the shared state that the caller must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Open { reason: String },
    Close,
    Reopen { reason: String },
    Disable,
}

/// This process's probe of an open circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    None,
    /// Taken in the shared state; the next message goes as the probe.
    Held,
    /// Sent; its answer decides.
    Out,
}

pub struct Gate {
    breaker: BreakerConfig,
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    next_probe_at: Option<DateTime<Utc>>,
    probe_until: Option<DateTime<Utc>>,
    /// `changed_at` of the newest row applied: an older one is stale.
    seen: Option<DateTime<Utc>>,
    probe: Probe,
    throttled_until: Option<Instant>,
    /// Consecutive failed sends, and when the first of them was.
    failures: u32,
    first_failure: Option<Instant>,
}

impl Gate {
    pub fn new(breaker: BreakerConfig) -> Self {
        Self {
            breaker,
            inner: Mutex::new(Inner {
                state: State::Closed,
                next_probe_at: None,
                probe_until: None,
                seen: None,
                probe: Probe::None,
                throttled_until: None,
                failures: 0,
                first_failure: None,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The shared state as this process knows it.
    pub fn state(&self) -> State {
        self.inner().state
    }

    /// The breaker settings.
    pub fn breaker(&self) -> &BreakerConfig {
        &self.breaker
    }

    /// Whether a delivery may go now (a probe is handed out once).
    pub fn admit(&self, now: Instant) -> Admit {
        let mut inner = self.inner();
        match inner.state {
            State::Paused | State::Disabled => Admit::Hold,
            State::Open | State::HalfOpen => {
                if inner.probe == Probe::Held {
                    inner.probe = Probe::Out;
                    Admit::Probe
                } else {
                    Admit::Hold
                }
            }
            State::Closed if inner.throttled_until.is_some_and(|until| until > now) => Admit::Hold,
            State::Closed => Admit::Pass,
        }
    }

    /// What the consumer should take now.
    pub fn intake(&self, now: Instant) -> Intake {
        let inner = self.inner();
        match inner.state {
            State::Closed if inner.throttled_until.is_some_and(|until| until > now) => Intake::Hold,
            State::Closed => Intake::Consume,
            State::Open | State::HalfOpen if inner.probe == Probe::Held => Intake::Probe,
            _ => Intake::Hold,
        }
    }

    /// Whether this process should try to take the probe: the circuit is open and its
    /// probe is due, or half-open and the probe's holder (perhaps this process, still
    /// waiting for a message to send) let its time run out.
    pub fn probe_due(&self, now: DateTime<Utc>) -> bool {
        let inner = self.inner();
        inner.probe != Probe::Out
            && match inner.state {
                State::Open => inner.next_probe_at.is_none_or(|at| at <= now),
                State::HalfOpen => inner.probe_until.is_none_or(|until| until <= now),
                _ => false,
            }
    }

    /// This process took the probe (the row is what [`crate::db::destinations::take_probe`]
    /// returned).
    pub fn probe_taken(&self, row: &Row) {
        self.apply(Some(row));
        self.inner().probe = Probe::Held;
    }

    /// The probe handed out sent nothing: the next message goes as the probe, if this
    /// process still holds it.
    pub fn probe_unsent(&self) {
        let mut inner = self.inner();
        if inner.probe == Probe::Out {
            inner.probe = Probe::Held;
        }
    }

    /// Applies the shared state read from the database (`None`: no row, closed). A row
    /// older than the newest applied is ignored.
    pub fn apply(&self, row: Option<&Row>) {
        let mut inner = self.inner();
        let Some(row) = row else {
            if inner.seen.is_none() {
                inner.state = State::Closed;
            }
            return;
        };
        if inner.seen.is_some_and(|seen| row.changed_at < seen) {
            return;
        }
        if inner.seen == Some(row.changed_at) && inner.state == row.state() {
            return;
        }
        inner.seen = Some(row.changed_at);
        inner.state = row.state();
        inner.next_probe_at = row.next_probe_at;
        inner.probe_until = row.probe_until;
        // A probe taken is the half-open state's; any other state has none of ours.
        if inner.state != State::HalfOpen && (inner.probe == Probe::Held || inner.state != State::Open) {
            inner.probe = Probe::None;
        }
        if inner.state == State::Closed {
            inner.failures = 0;
            inner.first_failure = None;
        }
    }

    /// An attempt ended with `verdict` (`probe`: it was the probe). Returns the shared
    /// transition it calls for, if any.
    pub fn report(&self, verdict: &Verdict, probe: bool, now: Instant) -> Option<Transition> {
        let mut inner = self.inner();
        if let Verdict::Throttled(after) = verdict {
            let until = now + *after;
            inner.throttled_until = Some(inner.throttled_until.map_or(until, |t| t.max(until)));
        }
        if probe {
            inner.probe = Probe::None;
            return Some(match verdict {
                Verdict::Gone => Transition::Disable,
                Verdict::Failed(reason) => Transition::Reopen {
                    reason: reason.clone(),
                },
                // It answered: the service is back.
                Verdict::Healthy | Verdict::Answered | Verdict::Throttled(_) => Transition::Close,
            });
        }
        match verdict {
            Verdict::Gone => Some(Transition::Disable),
            Verdict::Failed(reason) => {
                let within = inner
                    .first_failure
                    .is_some_and(|first| now.duration_since(first) <= self.breaker.window);
                if within {
                    inner.failures += 1;
                } else {
                    inner.failures = 1;
                    inner.first_failure = Some(now);
                }
                (inner.state == State::Closed && inner.failures >= self.breaker.failures).then(|| {
                    Transition::Open {
                        reason: format!("{} consecutive failures, the last: {reason}", inner.failures),
                    }
                })
            }
            Verdict::Healthy | Verdict::Answered | Verdict::Throttled(_) => {
                inner.failures = 0;
                inner.first_failure = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: State, changed_at: DateTime<Utc>) -> Row {
        Row::new("d", state, changed_at)
    }

    fn breaker(failures: u32) -> BreakerConfig {
        BreakerConfig {
            failures,
            ..BreakerConfig::default()
        }
    }

    fn failed() -> Verdict {
        Verdict::Failed("HTTP 500".into())
    }

    #[test]
    fn answers_get_their_verdicts() {
        let after = Some(Duration::from_secs(7));
        assert_eq!(Verdict::of(Some(204), None, None), Verdict::Healthy);
        assert_eq!(
            Verdict::of(Some(429), after, None),
            Verdict::Throttled(Duration::from_secs(7))
        );
        assert_eq!(
            Verdict::of(Some(503), after, None),
            Verdict::Throttled(Duration::from_secs(7))
        );
        assert_eq!(
            Verdict::of(Some(429), Some(Duration::from_secs(86_400)), None),
            Verdict::Throttled(MAX_RETRY_AFTER)
        );
        assert_eq!(
            Verdict::of(Some(503), None, None),
            Verdict::Failed("HTTP 503".into())
        );
        assert_eq!(Verdict::of(Some(429), None, None), Verdict::Answered);
        assert_eq!(Verdict::of(Some(410), None, None), Verdict::Gone);
        assert_eq!(Verdict::of(Some(404), None, None), Verdict::Answered);
        assert_eq!(
            Verdict::of(None, None, Some("connect: refused")),
            Verdict::Failed("connect: refused".into())
        );
    }

    #[test]
    fn consecutive_failures_within_the_window_open_the_circuit_once() {
        let gate = Gate::new(breaker(3));
        let now = Instant::now();
        assert_eq!(gate.report(&failed(), false, now), None);
        assert_eq!(gate.report(&failed(), false, now), None);
        assert!(matches!(
            gate.report(&failed(), false, now),
            Some(Transition::Open { .. })
        ));
        // A success in between starts the count again.
        let gate = Gate::new(breaker(2));
        assert_eq!(gate.report(&failed(), false, now), None);
        assert_eq!(gate.report(&Verdict::Healthy, false, now), None);
        assert_eq!(gate.report(&failed(), false, now), None);
        // Failures further apart than the window do not add up.
        let later = now + BreakerConfig::default().window + Duration::from_secs(1);
        assert_eq!(gate.report(&failed(), false, later), None);
    }

    #[test]
    fn an_open_circuit_holds_all_but_one_probe() {
        let gate = Gate::new(breaker(1));
        let now = Instant::now();
        let t0 = Utc::now();
        gate.apply(Some(&row(State::Open, t0)));
        assert_eq!(gate.admit(now), Admit::Hold);
        assert_eq!(gate.intake(now), Intake::Hold);
        assert!(gate.probe_due(t0 + chrono::TimeDelta::seconds(1)));
        gate.probe_taken(&row(State::HalfOpen, t0 + chrono::TimeDelta::seconds(1)));
        assert_eq!(gate.intake(now), Intake::Probe);
        assert_eq!(gate.admit(now), Admit::Probe);
        assert_eq!(gate.admit(now), Admit::Hold, "one probe only");
        // A probe whose message was a duplicate sent nothing: the next one is the probe.
        gate.probe_unsent();
        assert_eq!(gate.intake(now), Intake::Probe);
        assert_eq!(gate.admit(now), Admit::Probe);
        assert!(
            !gate.probe_due(t0 + chrono::TimeDelta::hours(1)),
            "the probe is out"
        );
        assert_eq!(gate.report(&Verdict::Healthy, true, now), Some(Transition::Close));
        assert_eq!(
            gate.report(&failed(), true, now),
            Some(Transition::Reopen {
                reason: "HTTP 500".into()
            })
        );
        assert_eq!(gate.report(&Verdict::Gone, true, now), Some(Transition::Disable));
    }

    #[test]
    fn a_stale_row_does_not_undo_a_newer_one() {
        let gate = Gate::new(breaker(1));
        let t0 = Utc::now();
        gate.apply(Some(&row(State::Paused, t0)));
        gate.apply(Some(&row(State::Closed, t0 - chrono::TimeDelta::seconds(1))));
        assert_eq!(gate.state(), State::Paused);
        gate.apply(None);
        assert_eq!(gate.state(), State::Paused);
        gate.apply(Some(&row(State::Closed, t0 + chrono::TimeDelta::seconds(1))));
        assert_eq!(gate.state(), State::Closed);
        assert_eq!(gate.admit(Instant::now()), Admit::Pass);
    }

    #[test]
    fn retry_after_holds_the_destination_for_that_long() {
        let gate = Gate::new(breaker(1));
        let now = Instant::now();
        assert_eq!(
            gate.report(&Verdict::Throttled(Duration::from_secs(2)), false, now),
            None
        );
        assert_eq!(gate.admit(now + Duration::from_secs(1)), Admit::Hold);
        assert_eq!(gate.intake(now + Duration::from_secs(1)), Intake::Hold);
        assert_eq!(gate.admit(now + Duration::from_secs(3)), Admit::Pass);
        assert_eq!(gate.report(&Verdict::Gone, false, now), Some(Transition::Disable));
    }
}
