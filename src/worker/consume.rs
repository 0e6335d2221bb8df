//! One destination's consume loop: messages from its queue to delivery tasks, as many
//! as its lane lets through, the prefetch and the gate kept in step, its liveness
//! beaten; on shutdown it stops taking messages and drains within the grace period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::gate::Intake;
use super::lane::{prefetch, Lane};
use super::Worker;
use crate::broker::Consumer;

/// How often a consume loop looks at its gate without being told: a `Retry-After`
/// pause ends, or an open circuit's probe comes due, within this.
const GATE_TICK: Duration = Duration::from_millis(250);

/// How often, at most, each consume loop beats while it turns.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// Feeds one destination's messages to delivery tasks, as many at once as its adaptive
/// limit allows, until shutdown, then drains. The loop beats its part on
/// [`crate::liveness`] every few seconds while it turns, so a loop wedged for
/// `ops.liveness_stall` (waiting for a permit that never comes back, say) fails
/// `/healthz`; an idle one keeps beating.
pub(super) async fn consume(
    worker: Arc<Worker>,
    mut consumer: Consumer,
    lane: Arc<Lane>,
    shutdown: CancellationToken,
) {
    let part = lane.part.clone();
    let mut shown = lane.limit().limit();
    let mut shown_in_flight = None;
    let mut intake = Some(prefetch(shown));
    let mut in_flight = JoinSet::new();
    // How often a held gate is looked at: a `Retry-After` pause ending, a probe due.
    let mut gate_tick = tokio::time::interval(GATE_TICK);
    gate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Several beats within the stall time, so that a turning loop never looks stalled.
    let mut heartbeat = tokio::time::interval(
        (worker.ctx.config.ops.liveness_stall / 4).clamp(std::time::Duration::from_millis(10), HEARTBEAT),
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = heartbeat.tick() => worker.ctx.liveness.beat(&part),
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            () = lane.intake_changed.notified() => {}
            _ = gate_tick.tick() => {
                if lane.gate.probe_due(chrono::Utc::now()) {
                    worker.take_probe(&lane).await;
                }
            }
            // At most the prefetch: the broker hands over no more unacknowledged.
            message = consumer.recv() => {
                let Some(message) = message else { break };
                let worker = worker.clone();
                let lane = lane.clone();
                in_flight.spawn(async move { worker.handle(message, &lane).await });
            }
        }
        // The broker holds back what the limit (or the gate) does not let through.
        let (limit, now_in_flight) = {
            let limit = lane.limit();
            (limit.limit(), limit.in_flight())
        };
        if limit != shown {
            shown = limit;
            worker.ctx.metrics.in_flight_limit(&lane.destination, limit);
        }
        if shown_in_flight != Some(now_in_flight) {
            shown_in_flight = Some(now_in_flight);
            worker.ctx.metrics.in_flight(&lane.destination, now_in_flight);
        }
        let wanted = match lane.gate.intake(Instant::now()) {
            Intake::Consume => Some(prefetch(limit)),
            Intake::Probe => Some(1),
            Intake::Hold => None,
        };
        if wanted != intake {
            intake = wanted;
            consumer.set_intake(intake);
        }
    }
    let grace = worker.ctx.config.shutdown.grace_period;
    let drain = async { while in_flight.join_next().await.is_some() {} };
    // Both at once: the consumer thread applies the acks of the deliveries finishing.
    let (drained, ()) = tokio::join!(tokio::time::timeout(grace, drain), consumer.stop(grace));
    if drained.is_err() {
        tracing::warn!("grace period over: unfinished deliveries stay unacked and will be redelivered");
    }
    // A loop started again (a reload) beats anew; one whose destination is gone is over.
    worker.ctx.liveness.forget(&part);
}
