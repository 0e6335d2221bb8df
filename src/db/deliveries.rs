//! The outbox rows: one per (event, destination).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::models::NewDelivery;
use super::schema::deliveries;

/// Inserts the outbox rows of a newly stored event (same transaction as the event).
pub async fn insert_all(
    conn: &mut AsyncPgConnection,
    rows: &[NewDelivery<'_>],
) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    diesel::insert_into(deliveries::table)
        .values(rows)
        .execute(conn)
        .await
}

/// Wakes relays listening on [`super::OUTBOX_CHANNEL`]; delivered at commit.
pub async fn notify_outbox(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query(format!("NOTIFY {}", super::OUTBOX_CHANNEL))
        .execute(conn)
        .await
        .map(|_| ())
}

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
    pub status: String,
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
}

/// Locks up to `limit` rows the relay must publish now, oldest due first, skipping rows
/// another relay holds: `pending`; `retrying` whose retry time has come; `delivering`
/// whose lease expired; `queued` whose re-check time has come. `next_attempt_at` is
/// "when the relay must look at this row next" for every state, so one range scan of
/// the partial due index finds them all.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    limit: usize,
) -> QueryResult<Vec<DueDelivery>> {
    diesel::sql_query(
        "SELECT d.id, d.event_id AS event_uuid, d.destination, d.status, d.attempts, \
                e.event_id, e.source, e.event_type, e.content_type, e.payload \
         FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.status IN ('pending', 'queued', 'delivering', 'retrying') \
           AND d.next_attempt_at <= now() \
           AND (d.status <> 'delivering' OR d.lease_until IS NULL OR d.lease_until <= now()) \
         ORDER BY d.next_attempt_at \
         LIMIT $1 \
         FOR UPDATE OF d SKIP LOCKED",
    )
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
    diesel::sql_query(
        "UPDATE deliveries SET status = 'queued', lease_until = NULL, updated_at = now(), \
                next_attempt_at = now() + make_interval(secs => $2) \
         WHERE id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Double, _>(recheck_after.as_secs_f64())
    .execute(conn)
    .await
}

/// Leaves `queued` rows queued but looks at them again only after `recheck_after`:
/// their queue still has a backlog, so they are waiting, not lost.
pub async fn postpone_queued(
    conn: &mut AsyncPgConnection,
    ids: &[uuid::Uuid],
    recheck_after: std::time::Duration,
) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(
        "UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => $2) \
         WHERE id = ANY($1) AND status = 'queued'",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Double, _>(recheck_after.as_secs_f64())
    .execute(conn)
    .await
}
