//! The outbox rows: one per (event, destination).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::models::NewDelivery;
use super::schema::deliveries;

/// Inserts the outbox rows of a newly stored event (same transaction as the event).
pub async fn insert_all(conn: &mut AsyncPgConnection, rows: &[NewDelivery<'_>]) -> QueryResult<usize> {
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
pub async fn claim_due(conn: &mut AsyncPgConnection, limit: usize) -> QueryResult<Vec<DueDelivery>> {
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

/// What a worker needs after claiming a delivery.
#[derive(Debug, QueryableByName)]
pub struct Claimed {
    /// The attempt this claim starts (1 for the first); also the fencing token for
    /// recording its outcome.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub destination: String,
}

/// Claims a delivery for one attempt: it becomes `delivering` with `attempts + 1` and a
/// lease until `now() + lease`. Returns `None` when the row is not claimable (already
/// delivered, dead, held by another worker, not yet due, or gone): the message that
/// asked for it is a duplicate.
///
/// Claimable: `queued`; `delivering` whose lease expired; and the states a relay
/// publishes from — `pending`, due `retrying` — because a message can arrive before the
/// relay's transaction that marks its row `queued` has committed. PostgreSQL only waits
/// for the lock of a row that matches the WHERE clause in its committed version, so
/// matching those states is what makes this UPDATE wait for the relay's commit (then
/// re-check the row, now `queued`) instead of missing it.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
    lease: std::time::Duration,
) -> QueryResult<Option<Claimed>> {
    diesel::sql_query(
        "UPDATE deliveries \
         SET status = 'delivering', attempts = attempts + 1, updated_at = now(), \
             lease_until = now() + make_interval(secs => $2), \
             next_attempt_at = now() + make_interval(secs => $2) \
         WHERE id = $1 \
           AND (status IN ('queued', 'pending') \
                OR (status = 'retrying' AND next_attempt_at <= now()) \
                OR (status = 'delivering' AND lease_until <= now())) \
         RETURNING attempts, destination",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .get_result(conn)
    .await
    .optional()
}

/// The outcome of one attempt, as stored on the delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        status_code: i32,
    },
    /// Failed; the relay republishes it after `retry_in`.
    Retrying {
        retry_in: std::time::Duration,
        status_code: Option<i32>,
        error: String,
    },
    /// Failed with no retry left.
    Dead {
        status_code: Option<i32>,
        error: String,
    },
}

/// Records `outcome` for the attempt `attempt` of delivery `id`. Only the holder of
/// that attempt may: if another worker claimed the row since (its lease expired), this
/// changes nothing and returns false.
pub async fn record_outcome(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
    attempt: i32,
    outcome: &Outcome,
) -> QueryResult<bool> {
    let query = match outcome {
        Outcome::Delivered { status_code } => diesel::sql_query(
            "UPDATE deliveries SET status = 'delivered', delivered_at = now(), updated_at = now(), \
                    lease_until = NULL, last_status_code = $3, last_error = NULL \
             WHERE id = $1 AND attempts = $2 AND status = 'delivering'",
        )
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<diesel::sql_types::Integer, _>(attempt)
        .bind::<diesel::sql_types::Integer, _>(*status_code)
        .execute(conn),
        Outcome::Retrying {
            retry_in,
            status_code,
            error,
        } => diesel::sql_query(
            "UPDATE deliveries SET status = 'retrying', updated_at = now(), lease_until = NULL, \
                    next_attempt_at = now() + make_interval(secs => $5), \
                    last_status_code = $3, last_error = $4 \
             WHERE id = $1 AND attempts = $2 AND status = 'delivering'",
        )
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<diesel::sql_types::Integer, _>(attempt)
        .bind::<diesel::sql_types::Nullable<diesel::sql_types::Integer>, _>(*status_code)
        .bind::<diesel::sql_types::Text, _>(error.as_str())
        .bind::<diesel::sql_types::Double, _>(retry_in.as_secs_f64())
        .execute(conn),
        Outcome::Dead { status_code, error } => diesel::sql_query(
            "UPDATE deliveries SET status = 'dead', updated_at = now(), lease_until = NULL, \
                    last_status_code = $3, last_error = $4 \
             WHERE id = $1 AND attempts = $2 AND status = 'delivering'",
        )
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<diesel::sql_types::Integer, _>(attempt)
        .bind::<diesel::sql_types::Nullable<diesel::sql_types::Integer>, _>(*status_code)
        .bind::<diesel::sql_types::Text, _>(error.as_str())
        .execute(conn),
    };
    Ok(query.await? == 1)
}
