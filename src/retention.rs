//! Retention: pruning old finished events in small batches so the outbox stays small.
//!
//! Three rules, each disabled by a duration of `0`: events whose every delivery is
//! `delivered` or `skipped` (or that had none) after `retention.delivered`; events with
//! a `dead` delivery and nothing in flight after `retention.dead`; attempt rows after
//! `retention.attempts`; and ordering keys idle (nothing of theirs live or waiting)
//! since `retention.delivered`, whose numbering starts again with their next event, and
//! replay jobs ended that long ago. An event with a delivery `pending`, `queued`, `delivering`,
//! `retrying` or `waiting` (for its ordering key's turn) is never pruned, however old,
//! nor one whose dead delivery holds its key (`ordering.on_dead = "block"`): the key
//! waits for an operator's replay or skip, and that needs the delivery. Deleting an event deletes its deliveries and
//! attempts (`ON DELETE CASCADE`) and frees its idempotency key.
//!
//! Deletes run `retention.batch_size` rows at a time, each batch its own short
//! transaction, with a pause between batches so pruning never holds long locks or
//! starves ingest. One pruner at a time across replicas: a pass runs only while holding
//! a PostgreSQL advisory lock on its own connection; a replica that cannot take it skips
//! the pass. The periodic task lives in the relay role and stops with its shutdown token.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use diesel::sql_types::{BigInt, Double};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::context::AppContext;

/// Advisory lock key held by the pruning leader ("relaydpr").
pub const LEADER_LOCK_KEY: i64 = 0x7265_6c61_7964_7072;

/// Pause between two delete batches.
const BATCH_PAUSE: Duration = Duration::from_millis(100);

/// What a rule deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    DeliveredEvents,
    DeadEvents,
    Attempts,
    /// Idle ordering keys (no delivery live or waiting) unchanged for
    /// `retention.delivered`.
    OrderingKeys,
    /// Replay jobs that ended (done, cancelled) longer than `retention.delivered` ago.
    ReplayJobs,
    /// Dedup keys whose window ended over a minute ago (always on: an expired key
    /// decides nothing).
    DedupKeys,
}

impl Kind {
    /// In pass order. Attempts go first, so their count (and the dry run's) is only what
    /// the attempts rule deletes; attempts of pruned events then go with their event,
    /// uncounted.
    pub const ALL: [Kind; 6] = [
        Kind::Attempts,
        Kind::DeliveredEvents,
        Kind::DeadEvents,
        Kind::OrderingKeys,
        Kind::ReplayJobs,
        Kind::DedupKeys,
    ];

    /// The metric label and report name.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::DeliveredEvents => "delivered_events",
            Kind::DeadEvents => "dead_events",
            Kind::Attempts => "attempts",
            Kind::OrderingKeys => "ordering_keys",
            Kind::ReplayJobs => "replay_jobs",
            Kind::DedupKeys => "dedup_keys",
        }
    }

    fn horizon(self, config: &RetentionConfig) -> Duration {
        match self {
            Kind::DeliveredEvents | Kind::OrderingKeys | Kind::ReplayJobs => config.delivered,
            Kind::DeadEvents => config.dead,
            Kind::Attempts => config.attempts,
            Kind::DedupKeys => Duration::from_secs(60),
        }
    }

    /// The rows this rule selects, older than `$1` seconds (oldest first).
    fn candidates(self) -> &'static str {
        match self {
            Kind::DeliveredEvents => {
                "SELECT e.id FROM events e \
                 WHERE e.received_at < now() - make_interval(secs => $1) \
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id \
                                   AND d.status NOT IN ('delivered', 'skipped')) \
                 ORDER BY e.received_at"
            }
            Kind::DeadEvents => {
                "SELECT e.id FROM events e \
                 WHERE e.received_at < now() - make_interval(secs => $1) \
                   AND EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status = 'dead') \
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id \
                                   AND d.status IN ('pending', 'queued', 'delivering', 'retrying', 'waiting')) \
                   AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN ordering_keys k \
                                     ON k.destination = d.destination AND k.key = d.ordering_key \
                                    AND k.head = d.id \
                                   WHERE d.event_id = e.id AND d.status = 'dead') \
                 ORDER BY e.received_at"
            }
            Kind::Attempts => {
                "SELECT a.id FROM delivery_attempts a \
                 WHERE a.started_at < now() - make_interval(secs => $1) \
                 ORDER BY a.started_at"
            }
            Kind::OrderingKeys => {
                "SELECT k.destination, k.key FROM ordering_keys k \
                 WHERE k.head IS NULL AND k.changed_at < now() - make_interval(secs => $1) \
                 ORDER BY k.changed_at"
            }
            Kind::ReplayJobs => {
                "SELECT j.id FROM replay_jobs j \
                 WHERE j.status <> 'running' AND j.finished_at < now() - make_interval(secs => $1) \
                 ORDER BY j.finished_at"
            }
            Kind::DedupKeys => {
                "SELECT d.source, d.key FROM dedup_keys d \
                 WHERE d.expires_at < now() - make_interval(secs => $1) \
                 ORDER BY d.expires_at"
            }
        }
    }

    /// Deletes one batch (`$2` rows at most) and counts them. An event takes its
    /// deliveries along (`ON DELETE CASCADE`) and their attempts (no foreign key there:
    /// see the migration that dropped it); the attempts are found through the
    /// deliveries as they were when the statement began.
    fn delete_batch(self) -> String {
        let candidates = self.candidates();
        match self {
            Kind::DeliveredEvents | Kind::DeadEvents => format!(
                "WITH gone AS (DELETE FROM events WHERE id IN ({candidates} LIMIT $2) RETURNING id), \
                      attempts AS (DELETE FROM delivery_attempts a USING deliveries d, gone \
                                   WHERE d.event_id = gone.id AND a.delivery_id = d.id) \
                 SELECT count(*) AS n FROM gone"
            ),
            Kind::Attempts => format!(
                "WITH gone AS (DELETE FROM delivery_attempts WHERE id IN ({candidates} LIMIT $2) RETURNING id) \
                 SELECT count(*) AS n FROM gone"
            ),
            Kind::ReplayJobs => format!(
                "WITH gone AS (DELETE FROM replay_jobs WHERE id IN ({candidates} LIMIT $2) RETURNING id) \
                 SELECT count(*) AS n FROM gone"
            ),
            // Re-checked on the row itself: a key an ingest claimed again meanwhile stays.
            Kind::DedupKeys => format!(
                "WITH gone AS (DELETE FROM dedup_keys d USING ({candidates} LIMIT $2) c \
                                WHERE d.source = c.source AND d.key = c.key AND d.expires_at < now() \
                                RETURNING 1) \
                 SELECT count(*) AS n FROM gone"
            ),
            // Re-checked on the row itself: a key that an ingest made live meanwhile stays.
            Kind::OrderingKeys => format!(
                "WITH gone AS (DELETE FROM ordering_keys k USING ({candidates} LIMIT $2) c \
                                WHERE k.destination = c.destination AND k.key = c.key AND k.head IS NULL \
                                RETURNING 1) \
                 SELECT count(*) AS n FROM gone"
            ),
        }
    }
}

/// What one pass deleted (or, for a dry run, would delete), per rule.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// `(kind, rows)`; rules that are disabled are absent.
    pub deleted: Vec<(Kind, u64)>,
}

impl Report {
    pub fn total(&self) -> u64 {
        self.deleted.iter().map(|(_, n)| n).sum()
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Counts what a pass would delete now, without deleting.
pub async fn dry_run(conn: &mut AsyncPgConnection, config: &RetentionConfig) -> diesel::QueryResult<Report> {
    let mut report = Report::default();
    for kind in Kind::ALL {
        let horizon = kind.horizon(config);
        if horizon.is_zero() {
            continue;
        }
        let count: Count = diesel::sql_query(format!("SELECT count(*) AS n FROM ({}) c", kind.candidates()))
            .bind::<Double, _>(horizon.as_secs_f64())
            .get_result(conn)
            .await?;
        report.deleted.push((kind, u64::try_from(count.n).unwrap_or(0)));
    }
    Ok(report)
}

/// Runs one full pass if this process can become the pruning leader; `Ok(None)` when
/// another replica holds the leader lock. `on_batch` sees every batch deleted (for
/// metrics); `shutdown` ends the pass between batches.
pub async fn prune(
    database_url: &str,
    config: &RetentionConfig,
    shutdown: &CancellationToken,
    mut on_batch: impl FnMut(Kind, u64),
) -> anyhow::Result<Option<Report>> {
    // A connection of its own: the session-level lock lives as long as it does.
    let mut conn = crate::db::connect(database_url).await?;
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let lock: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<BigInt, _>(LEADER_LOCK_KEY)
        .get_result(&mut conn)
        .await?;
    if !lock.locked {
        return Ok(None);
    }
    let result = prune_as_leader(&mut conn, config, shutdown, &mut on_batch).await;
    // Closing the connection would release the lock too; release it explicitly anyway.
    let _ = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(LEADER_LOCK_KEY)
        .execute(&mut conn)
        .await;
    result.map(Some)
}

async fn prune_as_leader(
    conn: &mut AsyncPgConnection,
    config: &RetentionConfig,
    shutdown: &CancellationToken,
    on_batch: &mut impl FnMut(Kind, u64),
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let batch = i64::try_from(config.batch_size).unwrap_or(i64::MAX);
    for kind in Kind::ALL {
        let horizon = kind.horizon(config);
        if horizon.is_zero() {
            continue;
        }
        let statement = kind.delete_batch();
        let mut deleted = 0u64;
        loop {
            let n = diesel::sql_query(&statement)
                .bind::<Double, _>(horizon.as_secs_f64())
                .bind::<BigInt, _>(batch)
                .get_result::<Count>(conn)
                .await?
                .n as u64;
            deleted += n;
            if n > 0 {
                on_batch(kind, n);
            }
            if n < config.batch_size as u64 || shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(BATCH_PAUSE) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        report.deleted.push((kind, deleted));
    }
    Ok(report)
}

/// The relay role's periodic pruning task.
pub async fn run_periodically(ctx: Arc<AppContext>, shutdown: CancellationToken) {
    let config = ctx.config.retention.clone();
    let url = ctx.config.database.url.expose().to_string();
    for kind in Kind::ALL {
        ctx.metrics.retention_started(kind.name());
    }
    loop {
        let metrics = &ctx.metrics;
        match prune(&url, &config, &shutdown, |kind, n| {
            metrics.retention_deleted(kind.name(), n)
        })
        .await
        {
            Ok(Some(report)) => {
                metrics.retention_ran(SystemTime::now());
                if report.total() > 0 {
                    let summary: Vec<String> = report
                        .deleted
                        .iter()
                        .map(|(k, n)| format!("{}={n}", k.name()))
                        .collect();
                    tracing::info!(deleted = %summary.join(" "), "retention pass");
                }
            }
            Ok(None) => tracing::debug!("another replica is pruning; skipping this pass"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "retention pass failed; retrying next interval")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
