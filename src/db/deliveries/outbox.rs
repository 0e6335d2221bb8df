//! The relay's side of the outbox: the due rows it claims and publishes, and what it
//! marks after the broker's confirms (queued, quarantined, postponed); the due backlog.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::prepared::prepared;

/// A due outbox row with what publishing it needs from its event.
#[derive(Debug, QueryableByName)]
pub struct DueDelivery {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub event_uuid: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub destination: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: super::DeliveryStatus,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub event_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub source: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub event_type: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub content_type: String,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    pub payload: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub traceparent: Option<String>,
}

/// What [`claim_due`] runs first in its transaction (see there why).
pub const CLAIM_DUE_SETUP: &str = "SET LOCAL enable_bitmapscan = off";

/// [`claim_due`]'s statement (`$1`: the limit); public so that tests can EXPLAIN it.
pub const CLAIM_DUE_SQL: &str = "WITH due AS ( \
             SELECT id, event_id, destination, status, attempts, next_attempt_at FROM deliveries \
             WHERE status IN ('pending', 'queued', 'delivering', 'retrying') \
               AND next_attempt_at <= now() \
               AND (status <> 'delivering' OR lease_until IS NULL OR lease_until <= now()) \
             ORDER BY next_attempt_at \
             LIMIT $1 \
             FOR UPDATE SKIP LOCKED) \
         SELECT d.id, d.event_id AS event_uuid, d.destination, d.status, d.attempts, \
                e.event_id, e.source, e.event_type, e.content_type, e.payload, e.traceparent \
         FROM due d JOIN events e ON e.id = d.event_id \
         ORDER BY d.next_attempt_at";

/// Locks up to `limit` rows the relay must publish now, oldest due first, skipping rows
/// another relay holds: `pending`; `retrying` whose retry time has come; `delivering`
/// whose lease expired; `queued` whose re-check time has come. `next_attempt_at` is
/// "when the relay must look at this row next" for every state, so one range scan of
/// the partial due index finds them all. Must run inside a transaction (it holds the
/// row locks until the caller commits).
///
/// The plan must not depend on statistics: the outbox goes from empty to a backlog of
/// 100,000 rows faster than autovacuum re-analyzes it, and with statistics that say
/// "almost nothing is due" the planner bitmap-scans every due row, joins each to its
/// event, sorts them all and keeps 500. Bitmap scans are switched off for this
/// transaction so that the only sensible plan is the ordered walk of the due index that
/// stops after `limit` rows; the events are joined to those rows only.
pub async fn claim_due(conn: &mut AsyncPgConnection, limit: usize) -> QueryResult<Vec<DueDelivery>> {
    prepared(CLAIM_DUE_SETUP).execute(conn).await?;
    prepared(CLAIM_DUE_SQL)
        .bind::<diesel::sql_types::BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
        .load(conn)
        .await
}

/// Marks rows the broker confirmed as `queued`; the relay looks at them again after
/// `recheck_after` in case the broker loses them.
pub async fn mark_queued(
    conn: &mut AsyncPgConnection,
    ids: &[uuid::Uuid],
    recheck_after: std::time::Duration,
) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    prepared(
        "UPDATE deliveries SET status = 'queued', lease_until = NULL, updated_at = now(), \
                next_attempt_at = now() + make_interval(secs => $1) \
         WHERE id = ANY($2)",
    )
    .bind::<diesel::sql_types::Double, _>(recheck_after.as_secs_f64())
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .execute(conn)
    .await
}

/// Sets rows aside that no broker message can carry, each with its reason (see
/// [`super::DeliveryStatus::Quarantined`]). Only rows the caller holds locked
/// (claimed in its transaction) are passed.
pub async fn quarantine(conn: &mut AsyncPgConnection, rows: &[(uuid::Uuid, String)]) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let (ids, reasons): (Vec<uuid::Uuid>, Vec<String>) = rows.iter().cloned().unzip();
    prepared(
        "UPDATE deliveries d \
         SET status = 'quarantined', last_error = q.reason, lease_until = NULL, updated_at = now() \
         FROM unnest($1::uuid[], $2::text[]) AS q(id, reason) \
         WHERE d.id = q.id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(reasons)
    .execute(conn)
    .await
}

/// Leaves `queued` rows queued but looks at them again only after `recheck_after`:
/// their queue still has a backlog, so they are waiting, not lost. (The state test is a
/// `CASE` for the reason given at [`super::claim`].)
pub async fn postpone_queued(
    conn: &mut AsyncPgConnection,
    ids: &[uuid::Uuid],
    recheck_after: std::time::Duration,
) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    prepared(
        "UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => $1) \
         WHERE id = ANY($2) AND CASE WHEN status = 'queued' THEN true ELSE false END",
    )
    .bind::<diesel::sql_types::Double, _>(recheck_after.as_secs_f64())
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .execute(conn)
    .await
}

/// The due backlog: how many rows the relay should publish now, and how long the
/// oldest has waited. Both read only the partial due index.
#[derive(Debug, QueryableByName)]
pub struct DueSummary {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub due: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    pub oldest_due_age_seconds: Option<f64>,
}

pub async fn due_summary(conn: &mut AsyncPgConnection) -> QueryResult<DueSummary> {
    diesel::sql_query(
        "SELECT count(*) AS due, \
                EXTRACT(EPOCH FROM now() - min(next_attempt_at))::float8 AS oldest_due_age_seconds \
         FROM deliveries \
         WHERE status IN ('pending', 'queued', 'delivering', 'retrying') AND next_attempt_at <= now()",
    )
    .get_result(conn)
    .await
}
