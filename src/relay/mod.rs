//! The relay role: outbox → RabbitMQ.
//!
//! Each turn claims due delivery rows (`FOR UPDATE SKIP LOCKED`, so replicas never
//! publish the same row at once), publishes them as one confirmed batch, and marks
//! `queued` exactly the rows the broker confirmed, all in one transaction. A crash
//! before the commit leaves the rows claimable: they are published again, and the
//! worker's claim drops the duplicate. The relay never marks a row it did not see
//! confirmed. It wakes on [`crate::wake`] (from ingest or admin in this process, or
//! their `NOTIFY` from others) or on `relay.poll_interval`; a full batch is followed at
//! once by the next. A row that breaks the broker session is found and set aside
//! (`isolate`). Beside it run the role's housekeeping tasks: retention
//! ([`crate::retention`]), replay jobs ([`crate::replay::jobs`]) and operator notices
//! ([`crate::notices`]). On shutdown it finishes (publishes and commits) the batch in
//! hand, then stops.

mod isolate;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use tokio_util::sync::CancellationToken;

use crate::broker::{OutgoingMessage, Publisher, Topology};
use crate::context::AppContext;
use crate::db::deliveries::DeliveryStatus;
use crate::db::deliveries::{self, DueDelivery};
use isolate::Isolation;

/// Runs the relay until `shutdown` is cancelled.
pub async fn run(ctx: Arc<AppContext>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut live = ctx.live.subscribe();
    let topology = topology_of(&live.borrow_and_update());
    let publisher = Publisher::start(&ctx.config.broker, topology, ctx.broker_health.clone())
        .context("starting the publisher")?;
    let reloads = tokio::spawn(declare_reloaded_destinations(publisher.clone(), live));
    let pruner = tokio::spawn(crate::retention::run_periodically(ctx.clone(), shutdown.clone()));
    let replays = tokio::spawn(crate::replay::jobs::run_periodically(
        ctx.clone(),
        shutdown.clone(),
    ));
    let notices = tokio::spawn(crate::notices::run_periodically(ctx.clone(), shutdown.clone()));
    let listener = tokio::spawn(crate::wake::listen(
        ctx.wake.clone(),
        ctx.config.database.url.expose().to_string(),
        ctx.config.database.connect_timeout,
        ctx.config.database.query_timeout,
        shutdown.clone(),
    ));

    let relay = Relay {
        ctx: ctx.clone(),
        publisher,
        isolation: std::sync::Mutex::default(),
    };
    let mut gauges_refreshed = Instant::now()
        .checked_sub(GAUGE_REFRESH)
        .unwrap_or_else(Instant::now);
    let poll_interval = ctx.config.relay.poll_interval;
    let mut error_delays = backoff();
    while !shutdown.is_cancelled() {
        // A wake-up that arrives while this turn runs leaves a permit, so the wait below
        // returns at once: no notification is lost between the query and the wait.
        let turn = relay.turn().await;
        if matches!(&turn, Ok(turn) if turn.failed == 0) {
            // Reached the database, and the broker took whatever there was to publish.
            ctx.liveness.beat("relay");
        }
        if let Ok(turn) = &turn {
            let claimed = turn.published + turn.failed + turn.postponed;
            if claimed > 0 {
                ctx.metrics.relay_published.inc_by(turn.published as u64);
                ctx.metrics.relay_batch_size.observe(claimed as f64);
            }
        }
        if gauges_refreshed.elapsed() >= GAUGE_REFRESH {
            gauges_refreshed = Instant::now();
            relay.refresh_gauges().await;
        }
        let wait = match turn {
            Ok(turn) if turn.published > 0 && turn.published == turn.claimed_up_to => {
                error_delays = backoff();
                continue;
            }
            Ok(turn) => {
                error_delays = backoff();
                if turn.failed > 0 {
                    // The broker is down or refusing: retry on the poll interval rather
                    // than spinning on wake-ups.
                    Some(poll_interval)
                } else {
                    None
                }
            }
            Err(e) => {
                let delay = error_delays.next().unwrap_or(poll_interval);
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "relay turn failed");
                Some(delay)
            }
        };
        match wait {
            Some(delay) => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            None => {
                tokio::select! {
                    _ = ctx.wake.notified() => {}
                    _ = tokio::time::sleep(poll_interval) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }
    // It holds a handle of the publisher, whose thread stops with the last one.
    reloads.abort();
    let _ = listener.await;
    let _ = pruner.await;
    let _ = replays.await;
    let _ = notices.await;
    Ok(())
}

/// The broker names for the destinations `config` delivers to (operator hooks too).
fn topology_of(config: &crate::config::Config) -> Topology {
    Topology::new(
        &config.broker,
        config.delivered_destinations().into_iter().map(|d| d.name),
    )
}

/// Declares the queues of the destinations each reload adds (the worker declares them
/// too, but it may run in another process, and the relay publishes first); aborted
/// when the role stops. A removed destination's queue stays in the broker with what
/// it holds.
async fn declare_reloaded_destinations(
    publisher: Publisher,
    mut live: tokio::sync::watch::Receiver<Arc<crate::config::Config>>,
) {
    let mut declared = topology_of(&live.borrow_and_update());
    while live.changed().await.is_ok() {
        let topology = topology_of(&live.borrow_and_update());
        if topology.destinations() != declared.destinations() {
            publisher.redeclare(topology.clone());
            declared = topology;
        }
    }
}

/// How often the relay refreshes the outbox gauges (two index-backed queries).
const GAUGE_REFRESH: Duration = Duration::from_secs(5);

/// Retry delays after a failed turn (database unreachable, …): 100 ms doubling to 5 s.
fn backoff() -> impl Iterator<Item = Duration> {
    crate::retry::backoff(Duration::from_millis(100), Duration::from_secs(5))
}

struct Relay {
    ctx: Arc<AppContext>,
    publisher: Publisher,
    /// Held only between awaits, never across one.
    isolation: std::sync::Mutex<Isolation>,
}

/// What one turn did.
#[derive(Debug, Default)]
struct Turn {
    /// The most rows the turn could claim.
    claimed_up_to: usize,
    published: usize,
    failed: usize,
    postponed: usize,
}

impl Relay {
    /// Claims, publishes and marks one batch in one transaction.
    async fn turn(&self) -> anyhow::Result<Turn> {
        // Relaxed commits (see `db::Durability::Relaxed`): a mark forgotten in a
        // PostgreSQL crash only makes the relay publish the row again.
        let conn = self
            .ctx
            .relaxed_pool
            .get()
            .await
            .context("getting a database connection")?;
        // The claim and the marks (with the commit) each get `database.query_timeout`;
        // the publish between them the broker's confirm timeout on top.
        let query_timeout = self.ctx.config.database.query_timeout;
        let turn = crate::db::watched(conn, query_timeout, async |conn, watchdog| {
            conn.transaction::<_, anyhow::Error, _>(async |conn| self.publish_due(conn, watchdog).await)
                .await
        })
        .await??;
        Ok(turn)
    }

    /// Inside the turn's transaction: claim due rows, publish them, mark what the broker
    /// confirmed, arming `watchdog` for each phase.
    async fn publish_due(
        &self,
        conn: &mut AsyncPgConnection,
        watchdog: &crate::db::Watchdog,
    ) -> anyhow::Result<Turn> {
        let config = &self.ctx.config.relay;
        let query_timeout = self.ctx.config.database.query_timeout;
        let started = Instant::now();
        let (pace, limit) = {
            let isolation = self.isolation.lock().expect("isolation lock");
            (isolation.pace(), isolation.batch_size(config.batch_size))
        };
        let due = deliveries::claim_due(conn, limit).await?;
        let claimed_in = started.elapsed();
        if due.is_empty() {
            return Ok(Turn::default());
        }
        watchdog.arm(self.ctx.config.broker.confirm_timeout + query_timeout);
        let (to_publish, to_postpone) = self.split_lost_from_waiting(due).await;
        let ids: Vec<uuid::Uuid> = to_publish.iter().map(|d| d.id).collect();
        let (messages, spans): (Vec<OutgoingMessage>, Vec<Option<tracing::Span>>) =
            to_publish.into_iter().map(outgoing).unzip();
        let results = self.publisher.publish_batch(messages, pace).await;
        for (span, result) in spans.iter().zip(&results) {
            if let (Some(span), Err(e)) = (span, result) {
                span.record("otel.status_code", "error");
                span.record("error", tracing::field::display(e));
            }
        }
        // Each publish span ends with the broker's answer.
        drop(spans);
        let published_in = started.elapsed();
        watchdog.arm(query_timeout);

        let mut confirmed = Vec::with_capacity(ids.len());
        let mut quarantined = Vec::new();
        let mut first_error = None;
        for (id, result) in ids.iter().zip(&results) {
            match result {
                Ok(()) => confirmed.push(*id),
                Err(crate::broker::Error::Unpublishable(reason)) => {
                    tracing::error!(delivery.id = %id, %reason, "delivery quarantined: no broker message can carry it");
                    quarantined.push((*id, reason.clone()));
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        let breaking = self
            .isolation
            .lock()
            .expect("isolation lock")
            .observe(&ids, &results);
        if let Some((id, reason)) = breaking {
            tracing::error!(delivery.id = %id, %reason, "delivery quarantined: it breaks the broker session");
            quarantined.push((id, reason));
        }
        deliveries::mark_queued(conn, &confirmed, config.requeue_after).await?;
        deliveries::postpone_queued(conn, &to_postpone, config.requeue_after).await?;
        deliveries::quarantine(conn, &quarantined).await?;
        let turn = Turn {
            claimed_up_to: limit,
            published: confirmed.len(),
            failed: ids.len() - confirmed.len() - quarantined.len(),
            postponed: to_postpone.len(),
        };
        if let Some(error) = first_error {
            tracing::warn!(failed = turn.failed, published = turn.published, %error, "some deliveries were not published; they stay due");
        } else {
            tracing::debug!(published = turn.published, postponed = turn.postponed, ?claimed_in, ?published_in, marked_in = ?started.elapsed(), "relayed a batch");
        }
        Ok(turn)
    }

    /// Updates `relayd_outbox_due` and `relayd_outbox_oldest_due_age_seconds`.
    async fn refresh_gauges(&self) {
        let summary = crate::db::with_connection(
            &self.ctx.relaxed_pool,
            self.ctx.config.database.query_timeout,
            async |conn| deliveries::due_summary(conn).await,
        )
        .await;
        match summary {
            Ok(summary) => {
                self.ctx.metrics.outbox_due.set(summary.due);
                self.ctx
                    .metrics
                    .outbox_oldest_due_age
                    .set(summary.oldest_due_age_seconds.unwrap_or(0.0));
            }
            Err(e) => tracing::debug!(error = %e, "cannot refresh the outbox gauges"),
        }
    }

    /// Splits due rows into those to publish and `queued` rows to leave alone for now.
    /// A row still `queued` past its re-check time is re-published only when its
    /// destination queue is empty (the broker lost it); behind a backlog it is only
    /// waiting, and re-publishing it would make the backlog feed itself.
    async fn split_lost_from_waiting(&self, due: Vec<DueDelivery>) -> (Vec<DueDelivery>, Vec<uuid::Uuid>) {
        let queued = DeliveryStatus::Queued;
        let destinations: BTreeSet<String> = due
            .iter()
            .filter(|d| d.status == queued)
            .map(|d| d.destination.clone())
            .collect();
        if destinations.is_empty() {
            return (due, Vec::new());
        }
        let busy: HashSet<String> = match self
            .publisher
            .ready_counts(destinations.iter().cloned().collect())
            .await
        {
            Ok(counts) => counts
                .into_iter()
                .filter(|(_, ready)| *ready > 0)
                .map(|(d, _)| d)
                .collect(),
            // Unknown depth: assume a backlog rather than risk feeding one.
            Err(_) => destinations.into_iter().collect(),
        };
        let (waiting, publish): (Vec<DueDelivery>, Vec<DueDelivery>) = due
            .into_iter()
            .partition(|d| d.status == queued && busy.contains(&d.destination));
        (publish, waiting.into_iter().map(|d| d.id).collect())
    }
}

/// The message for a due row, with the span of its publish when its event is traced (a
/// child of the ingest request's span; the worker continues it). A process that does
/// not trace itself passes the stored context on unchanged.
fn outgoing(row: DueDelivery) -> (OutgoingMessage, Option<tracing::Span>) {
    let span = row.traceparent.as_deref().map(|stored| {
        let span = tracing::info_span!(
            parent: None,
            "publish",
            otel.name = %format!("publish {}", row.destination),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            error = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.destination.name = %row.destination,
            delivery.id = %row.id,
        );
        crate::telemetry::context::continue_from_traceparent(&span, stored);
        span
    });
    let traceparent = match &span {
        Some(span) => crate::telemetry::context::passed_on(span, row.traceparent.as_deref()),
        None => None,
    };
    let message = OutgoingMessage {
        delivery_id: row.id,
        destination: row.destination,
        event_uuid: row.event_uuid,
        event_id: row.event_id,
        source: row.source,
        event_type: row.event_type,
        attempt: row.attempts + 1,
        content_type: row.content_type,
        body: row.payload,
        traceparent,
    };
    (message, span)
}
