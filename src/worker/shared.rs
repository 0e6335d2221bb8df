//! What the workers share through PostgreSQL: the destinations' flow states (read
//! every second and on `NOTIFY`, applied to each lane's gate) and the heartbeats that
//! divide a destination's `rate_limit` between the live workers. Both tasks stop with
//! the worker's shutdown token; the heartbeat task removes this worker's row as it goes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{pace, Lane};
use crate::context::AppContext;
use crate::db::destinations;

/// How often the shared destination states are read without a `NOTIFY`.
const STATES_POLL: Duration = Duration::from_secs(1);

/// Keeps every lane's gate in line with the shared destination states: read every
/// [`STATES_POLL`] and at once on a `NOTIFY` from any process (an operator's pause, a
/// replica opening a circuit). Stops with `shutdown`.
pub(super) async fn watch_states(ctx: Arc<AppContext>, lanes: Vec<Arc<Lane>>, shutdown: CancellationToken) {
    if lanes.is_empty() {
        return;
    }
    let notified = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::spawn(crate::wake::listen_on(
        destinations::CHANNEL,
        {
            let notified = notified.clone();
            move || notified.notify_one()
        },
        ctx.config.database.url.expose().to_string(),
        ctx.config.database.connect_timeout,
        ctx.config.database.query_timeout,
        shutdown.clone(),
    ));
    let mut poll = tokio::time::interval(STATES_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = poll.tick() => {}
            () = notified.notified() => {}
        }
        let timeout = ctx.config.database.query_timeout;
        match crate::db::with_connection(&ctx.relaxed_pool, timeout, destinations::load).await {
            Ok(rows) => {
                for lane in &lanes {
                    let before = lane.gate.state();
                    lane.gate
                        .apply(rows.iter().find(|r| r.destination == lane.destination));
                    let after = lane.gate.state();
                    if after != before {
                        tracing::info!(destination = %lane.destination, state = after.as_str(), "destination state changed");
                        ctx.metrics.destination_state(&lane.destination, after.as_str());
                    }
                    lane.changed();
                }
            }
            Err(error) => {
                tracing::debug!(%error, "cannot read the destination states; keeping the last known")
            }
        }
    }
    let _ = listener.await;
}

/// How often a worker with rate-limited destinations beats in `worker_heartbeats`; a
/// worker is live while its last beat is younger than three of these.
const WORKER_BEAT: Duration = Duration::from_secs(2);

/// Shares the rate-limited destinations' limits with the other live workers: beats
/// every [`WORKER_BEAT`] and gives each pacer its share of the live count. A beat that
/// fails keeps the last share. On shutdown the worker's row is removed, so that the
/// others take its share at their next beat.
pub(super) async fn share_rate_limits(
    ctx: Arc<AppContext>,
    lanes: Vec<Arc<Lane>>,
    shutdown: CancellationToken,
) {
    if lanes.is_empty() {
        return;
    }
    let id = uuid::Uuid::now_v7();
    let timeout = ctx.config.database.query_timeout;
    let mut beat = tokio::time::interval(WORKER_BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = beat.tick() => {}
        }
        let live = crate::db::with_connection(&ctx.relaxed_pool, timeout, async |conn| {
            crate::db::workers::beat(conn, id, WORKER_BEAT * 3).await
        })
        .await;
        match live {
            Ok(live) => {
                for lane in &lanes {
                    if let Some(pacer) = &lane.pacer {
                        pacer.share_with(live);
                    }
                }
                if live != shown {
                    shown = live;
                    for lane in &lanes {
                        let share = lane.pacer.as_ref().map_or(0.0, pace::Pacer::share);
                        tracing::info!(destination = %lane.destination, workers = live, share_per_second = share, "rate limit shared between the live workers");
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "cannot beat; keeping the last rate-limit share"),
        }
    }
    let left = crate::db::with_connection(&ctx.relaxed_pool, timeout, async |conn| {
        crate::db::workers::leave(conn, id).await
    })
    .await;
    if let Err(error) = left {
        tracing::debug!(%error, "cannot remove this worker's heartbeat; it expires by itself");
    }
}
