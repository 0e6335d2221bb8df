//! The outbox rows: one per (event, destination).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::prepared::prepared;
use super::schema::deliveries;

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
/// [`super::models::DeliveryStatus::Quarantined`]). Only rows the caller holds locked
/// (claimed in its transaction) are passed.
pub async fn quarantine(conn: &mut AsyncPgConnection, rows: &[(uuid::Uuid, String)]) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let (ids, reasons): (Vec<uuid::Uuid>, Vec<String>) = rows.iter().cloned().unzip();
    prepared(
        "UPDATE deliveries d SET status = 'quarantined', last_error = q.reason, lease_until = NULL,                 updated_at = now()          FROM unnest($1::uuid[], $2::text[]) AS q(id, reason) WHERE d.id = q.id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(reasons)
    .execute(conn)
    .await
}

/// Leaves `queued` rows queued but looks at them again only after `recheck_after`:
/// their queue still has a backlog, so they are waiting, not lost. (The state test is a
/// `CASE` for the reason given at [`claim`].)
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

/// What a worker needs after claiming a delivery.
#[derive(Debug, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: uuid::Uuid,
    /// The attempt this claim starts (1 for the first); also the fencing token for
    /// recording its outcome.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub destination: String,
    /// When the delivery was created: a delivery throttled for longer than the whole
    /// retry schedule is dead.
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// It has an ordering key: its key's next delivery waits for it to end.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub ordered: bool,
}

/// [`claim`]'s statement (`$1`, `$2`: the lease in seconds; `$3`: the ids); public so
/// that tests can EXPLAIN it.
pub const CLAIM_SQL: &str = "UPDATE deliveries \
         SET status = 'delivering', attempts = attempts + 1, updated_at = now(), \
             lease_until = now() + make_interval(secs => $1), \
             next_attempt_at = now() + make_interval(secs => $2) \
         WHERE id = ANY($3) \
           AND CASE status \
                   WHEN 'queued' THEN true \
                   WHEN 'pending' THEN true \
                   WHEN 'retrying' THEN next_attempt_at <= now() \
                   WHEN 'delivering' THEN lease_until <= now() \
                   ELSE false \
               END \
         RETURNING id, attempts, destination, created_at, ordering_key IS NOT NULL AS ordered";

/// Claims deliveries for one attempt each: they become `delivering` with
/// `attempts + 1` and a lease until `now() + lease`. Rows that are not claimable
/// (already delivered, dead, held by another worker, not yet due, or gone) are left
/// alone and absent from the result: the messages that asked for them are duplicates.
///
/// Claimable: `queued`; `delivering` whose lease expired; and the states a relay
/// publishes from — `pending`, due `retrying` — because a message can arrive before the
/// relay's transaction that marks its row `queued` has committed. PostgreSQL only waits
/// for the lock of a row that matches the WHERE clause in its committed version, so
/// matching those states is what makes this UPDATE wait for the relay's commit (then
/// re-check the row, now `queued`) instead of missing it.
///
/// The state test is a `CASE`, not an `OR` of conditions, on purpose: the `OR` form
/// implies the partial due index's predicate, and with statistics gathered while the
/// outbox was nearly empty the planner chose to scan that whole index (every due row)
/// for each claim. A `CASE` leaves the primary key as the only index that applies.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    ids: &[uuid::Uuid],
    lease: std::time::Duration,
) -> QueryResult<Vec<Claimed>> {
    prepared(CLAIM_SQL)
        .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
        .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
        .load(conn)
        .await
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
    /// Throttled (429 or 503 with `Retry-After`) or refused with `410 Gone`: retried
    /// after `retry_in` like `Retrying`, but the try is given back (the next attempt has
    /// the same number) and the attempt row is marked throttled.
    Throttled {
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

/// One attempt's result to record.
#[derive(Debug, Clone)]
pub struct Record {
    pub delivery_id: uuid::Uuid,
    /// The attempt's number: only its holder may change the delivery.
    pub attempt: i32,
    pub outcome: Outcome,
    /// The attempt's row, when a request was made.
    pub row: Option<super::attempts::NewAttempt>,
    /// The outcome ends the delivery's turn in its key's order (it is ordered, and
    /// delivered, or dead while its key does not block on dead): the key's next
    /// delivery is made pending with it.
    pub releases_key: bool,
}

impl Record {
    /// Whether the attempt gives its try back.
    pub fn is_throttled(&self) -> bool {
        matches!(self.outcome, Outcome::Throttled { .. })
    }

    /// The same record without the text that came from the destination (its response
    /// snippet and error messages): what is left when the database refused the details.
    pub fn without_details(&self) -> Self {
        const UNSTORABLE: &str = "the attempt's details could not be stored";
        let outcome = match &self.outcome {
            Outcome::Delivered { status_code } => Outcome::Delivered {
                status_code: *status_code,
            },
            Outcome::Retrying {
                retry_in,
                status_code,
                ..
            } => Outcome::Retrying {
                retry_in: *retry_in,
                status_code: *status_code,
                error: UNSTORABLE.to_string(),
            },
            Outcome::Throttled {
                retry_in,
                status_code,
                ..
            } => Outcome::Throttled {
                retry_in: *retry_in,
                status_code: *status_code,
                error: UNSTORABLE.to_string(),
            },
            Outcome::Dead { status_code, .. } => Outcome::Dead {
                status_code: *status_code,
                error: UNSTORABLE.to_string(),
            },
        };
        let row = self.row.clone().map(|row| super::attempts::NewAttempt {
            // Exactly one of `status_code` and `error` is set.
            error: row.status_code.is_none().then(|| UNSTORABLE.to_string()),
            response_snippet: None,
            ..row
        });
        Self {
            delivery_id: self.delivery_id,
            attempt: self.attempt,
            outcome,
            row,
            releases_key: self.releases_key,
        }
    }
}

/// [`record_outcomes`]'s statement (`$1`–`$8`: the attempt rows' columns; `$9`–`$15`:
/// the outcomes' id, attempt, status, status code, error, retry delay, whether the try
/// is given back); public so that tests can EXPLAIN it.
pub const RECORD_OUTCOMES_SQL: &str = "WITH attempt AS ( \
             INSERT INTO delivery_attempts \
                 (delivery_id, attempt, started_at, duration_ms, status_code, error, response_snippet, \
                  throttled) \
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::int[], $5::int[], \
                                  $6::text[], $7::text[], $8::bool[])), \
         outcome AS ( \
             SELECT * FROM unnest($9::uuid[], $10::int[], $11::text[], $12::int[], $13::text[], \
                                  $14::float8[], $15::bool[]) \
                 AS o(id, attempt, status, status_code, error, retry_in, refund)) \
         UPDATE deliveries d SET status = o.status, updated_at = now(), lease_until = NULL, \
                attempts = CASE WHEN o.refund THEN d.attempts - 1 ELSE d.attempts END, \
                last_status_code = o.status_code, last_error = o.error, \
                delivered_at = CASE WHEN o.status = 'delivered' THEN now() ELSE d.delivered_at END, \
                next_attempt_at = CASE WHEN o.status = 'retrying' THEN now() + make_interval(secs => o.retry_in) \
                                       ELSE d.next_attempt_at END \
         FROM outcome o \
         WHERE d.id = o.id AND CASE WHEN d.status = 'delivering' THEN d.attempts = o.attempt ELSE false END \
         RETURNING d.id";

/// Records outcomes (and their attempt rows) in a single statement, hence in one
/// implicit transaction. A delivery changes only if it is still `delivering` with the
/// same attempt number: if another worker claimed it since (its lease expired), it is
/// left alone. Attempt rows are recorded either way, since the attempts happened.
/// Returns the ids of the deliveries changed.
///
/// As in [`claim`], the state test is written so that it does not imply the partial due
/// index's predicate: only the primary key can find the rows, whatever the statistics.
pub async fn record_outcomes(
    conn: &mut AsyncPgConnection,
    records: &[Record],
) -> QueryResult<std::collections::HashSet<uuid::Uuid>> {
    use diesel::sql_types::{Array, Bool, Double, Integer, Nullable, Text, Timestamptz, Uuid};
    #[derive(QueryableByName)]
    struct Changed {
        #[diesel(sql_type = Uuid)]
        id: uuid::Uuid,
    }
    let mut ids = Vec::new();
    let mut attempts = Vec::new();
    let mut statuses = Vec::new();
    let mut codes = Vec::new();
    let mut errors = Vec::new();
    let mut retry_ins = Vec::new();
    let mut refunds = Vec::new();
    for record in records {
        let (status, code, error, retry_in) = match &record.outcome {
            Outcome::Delivered { status_code } => ("delivered", Some(*status_code), None, None),
            Outcome::Retrying {
                retry_in,
                status_code,
                error,
            }
            | Outcome::Throttled {
                retry_in,
                status_code,
                error,
            } => (
                "retrying",
                *status_code,
                Some(error.as_str()),
                Some(retry_in.as_secs_f64()),
            ),
            Outcome::Dead { status_code, error } => ("dead", *status_code, Some(error.as_str()), None),
        };
        refunds.push(record.is_throttled());
        ids.push(record.delivery_id);
        attempts.push(record.attempt);
        statuses.push(status);
        codes.push(code);
        errors.push(error);
        retry_ins.push(retry_in);
    }
    let rows: Vec<&super::attempts::NewAttempt> = records.iter().filter_map(|r| r.row.as_ref()).collect();
    let changed: Vec<Changed> = prepared(RECORD_OUTCOMES_SQL)
        .bind::<Array<Uuid>, _>(rows.iter().map(|r| r.delivery_id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(rows.iter().map(|r| r.attempt).collect::<Vec<_>>())
        .bind::<Array<Timestamptz>, _>(rows.iter().map(|r| r.started_at).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(rows.iter().map(|r| r.duration_ms).collect::<Vec<_>>())
        .bind::<Array<Nullable<Integer>>, _>(rows.iter().map(|r| r.status_code).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(
            rows.iter()
                .map(|r| r.response_snippet.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Bool>, _>(
            records
                .iter()
                .filter(|r| r.row.is_some())
                .map(Record::is_throttled)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Uuid>, _>(&ids)
        .bind::<Array<Integer>, _>(&attempts)
        .bind::<Array<Text>, _>(&statuses)
        .bind::<Array<Nullable<Integer>>, _>(&codes)
        .bind::<Array<Nullable<Text>>, _>(&errors)
        .bind::<Array<Nullable<Double>>, _>(&retry_ins)
        .bind::<Array<Bool>, _>(&refunds)
        .load(conn)
        .await?;
    Ok(changed.into_iter().map(|c| c.id).collect())
}

/// The worker's claims ([`super::batch`]): one [`claim`] for the deliveries whose
/// messages arrived together; each gets its claim, or `None` when not claimable.
pub struct Claims {
    pub pool: super::DbPool,
    pub timeout: std::time::Duration,
    pub lease: std::time::Duration,
}

impl super::batch::Statement for Claims {
    type Item = uuid::Uuid;
    type Output = Option<Claimed>;
    const WHAT: &'static str = "claiming";

    async fn run(&self, ids: &[uuid::Uuid]) -> Result<Vec<Option<Claimed>>, super::batch::BatchError> {
        let claimed = super::batch::on_connection(&self.pool, self.timeout, async |conn| {
            claim(conn, ids, self.lease).await
        })
        .await?;
        let mut by_id: std::collections::HashMap<uuid::Uuid, Claimed> =
            claimed.into_iter().map(|c| (c.id, c)).collect();
        Ok(ids.iter().map(|id| by_id.remove(id)).collect())
    }
}

/// The worker's outcome records ([`super::batch`]): one [`record_outcomes`] for the
/// attempts that finished together; each learns whether its delivery changed (false:
/// another worker holds it now). When some of them end their key's turn, the same
/// transaction hands their keys on ([`super::ordering::release_and_promote`]) and the
/// relays are woken for the deliveries that became pending.
pub struct Records {
    pub pool: super::DbPool,
    pub timeout: std::time::Duration,
    pub wake: std::sync::Arc<crate::wake::OutboxWake>,
}

impl super::batch::Statement for Records {
    type Item = Record;
    type Output = bool;
    const WHAT: &'static str = "recording";

    async fn run(&self, records: &[Record]) -> Result<Vec<bool>, super::batch::BatchError> {
        let (changed, promoted) = super::batch::on_connection(&self.pool, self.timeout, async |conn| {
            if !records.iter().any(|r| r.releases_key) {
                // Unordered: the one statement, in its implicit transaction.
                return Ok((record_outcomes(conn, records).await?, 0));
            }
            use diesel_async::AsyncConnection;
            conn.transaction(async |conn| {
                let changed = record_outcomes(conn, records).await?;
                let released: Vec<uuid::Uuid> = records
                    .iter()
                    .filter(|r| r.releases_key && changed.contains(&r.delivery_id))
                    .map(|r| r.delivery_id)
                    .collect();
                let promoted = super::ordering::release_and_promote(conn, &released).await?;
                Ok((changed, promoted))
            })
            .await
        })
        .await?;
        if promoted > 0 {
            self.wake.wake();
        }
        Ok(records.iter().map(|r| changed.contains(&r.delivery_id)).collect())
    }
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

/// Filters of the delivery list.
#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    pub status: Option<String>,
    pub destination: Option<String>,
    /// Only this ordering key's, as stored ([`super::ordering::stored_key`]).
    pub ordering_key: Option<String>,
    /// Keyset cursor: only deliveries older than this id (UUIDv7, time-ordered).
    pub before: Option<uuid::Uuid>,
    pub limit: i64,
}

/// A delivery with the event it carries.
#[derive(Debug, Clone, Queryable, serde::Serialize)]
pub struct DeliveryWithEvent {
    #[serde(flatten)]
    pub delivery: super::models::Delivery,
    pub source: String,
    #[serde(rename = "provider_event_id")]
    pub provider_event_id: String,
    pub event_type: String,
}

/// Newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &DeliveryFilter,
) -> QueryResult<Vec<DeliveryWithEvent>> {
    use super::models::Delivery;
    use super::schema::events;
    let mut query = deliveries::table
        .inner_join(events::table)
        .select((
            Delivery::as_select(),
            events::source,
            events::event_id,
            events::event_type,
        ))
        .order(deliveries::id.desc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(status) = &filter.status {
        query = query.filter(deliveries::status.eq(status.clone()));
    }
    if let Some(destination) = &filter.destination {
        query = query.filter(deliveries::destination.eq(destination.clone()));
    }
    if let Some(key) = &filter.ordering_key {
        query = query.filter(deliveries::ordering_key.eq(key.clone()));
    }
    if let Some(before) = filter.before {
        query = query.filter(deliveries::id.lt(before));
    }
    query.load(conn).await
}

/// The deliveries of these events.
pub async fn for_events(
    conn: &mut AsyncPgConnection,
    event_ids: &[uuid::Uuid],
) -> QueryResult<Vec<super::models::Delivery>> {
    use super::models::Delivery;
    deliveries::table
        .filter(deliveries::event_id.eq_any(event_ids))
        .order(deliveries::destination)
        .select(Delivery::as_select())
        .load(conn)
        .await
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
) -> QueryResult<Option<super::models::Delivery>> {
    use super::models::Delivery;
    deliveries::table
        .find(id)
        .select(Delivery::as_select())
        .first(conn)
        .await
        .optional()
}

/// Delivery counts by destination and status (an index-only scan of
/// `deliveries_destination_status_idx`).
pub async fn counts(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(String, String, i64)>> {
    deliveries::table
        .group_by((deliveries::destination, deliveries::status))
        .select((
            deliveries::destination,
            deliveries::status,
            diesel::dsl::count_star(),
        ))
        .load(conn)
        .await
}

/// The changes of a replay: back to `pending`, due now, with a fresh attempt budget.
/// (A macro because diesel's changeset tuple type is unwieldy to name.)
macro_rules! replay_reset {
    () => {
        (
            deliveries::status.eq(super::models::DeliveryStatus::Pending.as_str()),
            deliveries::attempts.eq(0),
            deliveries::next_attempt_at.eq(diesel::dsl::now),
            deliveries::lease_until.eq(None::<chrono::DateTime<chrono::Utc>>),
            deliveries::delivered_at.eq(None::<chrono::DateTime<chrono::Utc>>),
            deliveries::updated_at.eq(diesel::dsl::now),
        )
    };
}

/// What a bulk replay selects. Event fields filter through the event.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplayFilter {
    pub status: Option<String>,
    pub destination: Option<String>,
    pub source: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl ReplayFilter {
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.destination.is_none()
            && self.source.is_none()
            && self.event_type.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// The ids of the replayable deliveries `filter` selects.
fn replayable(
    filter: &ReplayFilter,
) -> deliveries::BoxedQuery<'static, diesel::pg::Pg, diesel::sql_types::Uuid> {
    use super::models::DeliveryStatus;
    use super::schema::events;
    let mut events_query = events::table.select(events::id).into_boxed();
    let mut by_event = false;
    if let Some(source) = &filter.source {
        events_query = events_query.filter(events::source.eq(source.clone()));
        by_event = true;
    }
    if let Some(event_type) = &filter.event_type {
        events_query = events_query.filter(events::event_type.eq(event_type.clone()));
        by_event = true;
    }
    if let Some(since) = filter.since {
        events_query = events_query.filter(events::received_at.ge(since));
        by_event = true;
    }
    if let Some(until) = filter.until {
        events_query = events_query.filter(events::received_at.lt(until));
        by_event = true;
    }
    let mut target = deliveries::table
        .select(deliveries::id)
        .filter(deliveries::status.eq_any(DeliveryStatus::REPLAYABLE))
        .into_boxed();
    if let Some(status) = &filter.status {
        target = target.filter(deliveries::status.eq(status.clone()));
    }
    if let Some(destination) = &filter.destination {
        target = target.filter(deliveries::destination.eq(destination.clone()));
    }
    if by_event {
        target = target.filter(deliveries::event_id.eq_any(events_query));
    }
    target
}

/// How many deliveries `filter` would replay now.
pub async fn count_replayable(conn: &mut AsyncPgConnection, filter: &ReplayFilter) -> QueryResult<i64> {
    replayable(filter).count().get_result(conn).await
}

/// Resets the deliveries among `target` that are still replayable, handing ordered
/// ones to the end of their key; returns how many.
async fn reset(
    conn: &mut AsyncPgConnection,
    target: deliveries::BoxedQuery<'static, diesel::pg::Pg, diesel::sql_types::Uuid>,
) -> QueryResult<usize> {
    use super::models::DeliveryStatus;
    // Diesel cannot update through a boxed (dynamically filtered) query: select the ids
    // with it instead. The outer status check keeps rows that moved meanwhile out.
    let replayed: Vec<(uuid::Uuid, bool)> = diesel::update(
        deliveries::table
            .filter(deliveries::id.eq_any(target))
            .filter(deliveries::status.eq_any(DeliveryStatus::REPLAYABLE)),
    )
    .set(replay_reset!())
    .returning((deliveries::id, deliveries::ordering_key.is_not_null()))
    .get_results(conn)
    .await?;
    let ordered: Vec<uuid::Uuid> = replayed.iter().filter(|(_, o)| *o).map(|(id, _)| *id).collect();
    super::ordering::requeue_replayed(conn, &ordered).await?;
    Ok(replayed.len())
}

/// Resets matching replayable deliveries (`dead`, `delivered`, `retrying`, …) to
/// `pending` with a fresh attempt budget, in one statement; their attempts history
/// stays, and so does their event (and with it the `webhook-id` destinations see).
/// Returns how many; the caller wakes the relays ([`crate::wake`]) once this is
/// committed. A large set goes through a replay job instead ([`replay_page`]).
pub async fn replay(conn: &mut AsyncPgConnection, filter: &ReplayFilter) -> QueryResult<usize> {
    use diesel_async::AsyncConnection;
    let target = replayable(filter);
    conn.transaction(async |conn| reset(conn, target).await).await
}

/// One page of a replay job: the first `limit` matching deliveries after `after` (by
/// id), reset as [`replay`] does, in the caller's transaction. Returns how many were
/// reset and the last id looked at (`None`: nothing matched after `after`; the job is
/// done). A delivery reset stays behind the cursor, so a page never meets it again.
pub async fn replay_page(
    conn: &mut AsyncPgConnection,
    filter: &ReplayFilter,
    after: Option<uuid::Uuid>,
    limit: i64,
) -> QueryResult<(usize, Option<uuid::Uuid>)> {
    let mut page = replayable(filter).order(deliveries::id).limit(limit);
    if let Some(after) = after {
        page = page.filter(deliveries::id.gt(after));
    }
    let ids: Vec<uuid::Uuid> = page.load(conn).await?;
    let Some(last) = ids.last().copied() else {
        return Ok((0, None));
    };
    let target = deliveries::table
        .select(deliveries::id)
        .filter(deliveries::id.eq_any(ids))
        .into_boxed();
    Ok((reset(conn, target).await?, Some(last)))
}

/// Replays one delivery (see [`replay`]). `Ok(None)` when it is not replayable now.
pub async fn replay_one(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
) -> QueryResult<Option<super::models::Delivery>> {
    use super::models::{Delivery, DeliveryStatus};
    use diesel_async::AsyncConnection;
    conn.transaction(async |conn| {
        let replayed: Option<Delivery> = diesel::update(
            deliveries::table
                .filter(deliveries::id.eq(id))
                .filter(deliveries::status.eq_any(DeliveryStatus::REPLAYABLE)),
        )
        .set(replay_reset!())
        .returning(Delivery::as_returning())
        .get_result(conn)
        .await
        .optional()?;
        match replayed {
            Some(delivery) if delivery.ordering_key.is_some() => {
                super::ordering::requeue_replayed(conn, &[id]).await?;
                get(conn, id).await
            }
            other => Ok(other),
        }
    })
    .await
}

/// Skips one delivery: it is never sent (again), and its key, if it is ordered and
/// this was its turn, moves on to its next delivery — the operator's way past a
/// delivery that holds its key (dead while the key blocks on dead, or retrying). A
/// delivery being sent now cannot be skipped, nor one that has ended. `Ok(None)` when
/// it is not skippable; the caller wakes the relays when `promoted` is more than 0.
pub async fn skip(conn: &mut AsyncPgConnection, id: uuid::Uuid) -> QueryResult<Option<Skipped>> {
    use super::models::{Delivery, DeliveryStatus};
    use diesel_async::AsyncConnection;
    conn.transaction(async |conn| {
        let skipped: Option<Delivery> = diesel::update(
            deliveries::table
                .filter(deliveries::id.eq(id))
                .filter(deliveries::status.eq_any(DeliveryStatus::SKIPPABLE)),
        )
        .set((
            deliveries::status.eq(DeliveryStatus::Skipped.as_str()),
            deliveries::lease_until.eq(None::<chrono::DateTime<chrono::Utc>>),
            deliveries::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Delivery::as_returning())
        .get_result(conn)
        .await
        .optional()?;
        let Some(delivery) = skipped else {
            return Ok(None);
        };
        let promoted = if delivery.ordering_key.is_some() {
            super::ordering::release_and_promote(conn, &[id]).await?
        } else {
            0
        };
        Ok(Some(Skipped { delivery, promoted }))
    })
    .await
}

/// A skipped delivery, and how many deliveries of its key became pending.
#[derive(Debug)]
pub struct Skipped {
    pub delivery: super::models::Delivery,
    pub promoted: usize,
}
