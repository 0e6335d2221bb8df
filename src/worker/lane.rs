//! A destination's lane: its adaptive in-flight limit, its gate and the slots that
//! deliveries take within the limit (given back when dropped, waking the waiters), and
//! the prefetch that follows the limit. Owned by its consume loop; nothing here stops on
//! its own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::concurrency::{AdaptiveLimit, Signal};
use super::gate::{Admit, Gate};
use super::pace;

/// The prefetch for a limit of deliveries in flight: a message also waits for its
/// record and ack after its request, so about three times the limit keeps the requests
/// going; rounded up to a power of two, so that it changes (and the consumer is
/// restarted) only when the limit has moved by about half.
pub(super) fn prefetch(limit: usize) -> u16 {
    u16::try_from(limit.saturating_mul(3).next_power_of_two()).unwrap_or(u16::MAX)
}

/// One destination's consume loop: its name, its liveness part, its in-flight limit
/// and its gate.
pub(super) struct Lane {
    /// Its place among the worker's destinations (for [`permits::FairPermits`]).
    pub(super) index: usize,
    pub(super) destination: String,
    pub(super) part: String,
    /// Its deliveries' span name (`deliver <destination>`), made once.
    pub(super) span_name: String,
    pub(super) limit: Mutex<AdaptiveLimit>,
    pub(super) gate: Gate,
    /// This worker's share of the destination's `rate_limit`, if it has one.
    pub(super) pacer: Option<pace::Pacer>,
    /// Ordered, and a dead delivery holds its key (`ordering.on_dead = "block"`).
    pub(super) blocks_on_dead: bool,
    /// Woken when a request ends (a slot may be free, or the limit changed) and when
    /// the gate changes.
    pub(super) room: tokio::sync::Notify,
    /// Tells the consume loop that the gate changed (it keeps one permit).
    pub(super) intake_changed: tokio::sync::Notify,
}

impl Lane {
    pub(super) fn limit(&self) -> std::sync::MutexGuard<'_, AdaptiveLimit> {
        self.limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the limit lets one more delivery at the destination, before its
    /// claim (a claim waiting here would run down its lease); `None` when the gate
    /// holds the destination (the message goes back to the queue).
    pub(super) async fn enter(&self) -> Option<Slot<'_>> {
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let probe = match self.gate.admit(Instant::now()) {
                Admit::Hold => return None,
                Admit::Probe => true,
                Admit::Pass => false,
            };
            {
                let mut limit = self.limit();
                // The probe goes whatever the limit: it is the only request.
                if probe || limit.has_room() {
                    limit.start();
                    return Some(Slot { lane: self, probe });
                }
            }
            notified.await;
        }
    }

    /// The gate changed: waiters re-check, the consume loop re-reads its intake.
    pub(super) fn changed(&self) {
        self.room.notify_waiters();
        self.intake_changed.notify_one();
    }
}

/// One delivery's place within its destination's limit, given back when dropped.
pub(super) struct Slot<'a> {
    pub(super) lane: &'a Lane,
    /// It is the open circuit's probe.
    pub(super) probe: bool,
}

impl Slot<'_> {
    /// The request ended after `round_trip`, saying `signal` (and the gate has heard
    /// the answer).
    pub(super) fn done(mut self, round_trip: Duration, signal: Signal) {
        self.lane.limit().finish(Instant::now(), round_trip, signal);
        self.probe = false;
        // `drop` wakes the waiters.
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.probe {
            // A probe that sent nothing (its message was a duplicate, or could not be
            // claimed): the next message is the probe.
            self.lane.gate.probe_unsent();
            self.lane.changed();
        }
        self.lane.limit().leave();
        self.lane.room.notify_waiters();
    }
}
