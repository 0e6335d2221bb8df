//! Liveness: whether each part of this process is still making progress.
//!
//! A role's loop calls [`Liveness::beat`] after each turn that did its job (the relay
//! after a turn that reached the database and the broker; each worker consume loop
//! every few seconds while it turns). `/healthz` fails once any
//! loop has gone `ops.liveness_stall` without a beat — or, from
//! [`crate::broker::Health::down_for`], a broker connection has been down that long — so
//! that an orchestrator restarts a process that cannot heal itself, never for a short
//! outage, which the process rides out on its own. It owns no task and never blocks.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Liveness {
    /// Last beat of each loop.
    beats: Mutex<BTreeMap<String, Instant>>,
}

impl Liveness {
    /// `part` made progress now.
    pub fn beat(&self, part: &str) {
        if let Ok(mut beats) = self.beats.lock() {
            beats.insert(part.to_string(), Instant::now());
        }
    }

    /// `part` has stopped for good (a destination's consume loop after a reload
    /// removed it): it can no longer stall.
    pub fn forget(&self, part: &str) {
        if let Ok(mut beats) = self.beats.lock() {
            beats.remove(part);
        }
    }

    /// Every part that has made no progress for longer than `stall`, with how long.
    pub fn stalled(&self, stall: Duration) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut stalled = Vec::new();
        if let Ok(beats) = self.beats.lock() {
            for (part, at) in beats.iter() {
                let quiet = now - *at;
                if quiet > stall {
                    stalled.push((part.clone(), quiet));
                }
            }
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_stalled_only_after_the_stall_time_without_a_beat() {
        let liveness = Liveness::default();
        liveness.beat("relay");
        assert!(liveness.stalled(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(30));
        let stalled: Vec<String> = liveness
            .stalled(Duration::from_millis(10))
            .into_iter()
            .map(|(part, _)| part)
            .collect();
        assert_eq!(stalled, ["relay"]);
        liveness.beat("relay");
        assert!(liveness.stalled(Duration::from_millis(10)).is_empty());
    }
}
