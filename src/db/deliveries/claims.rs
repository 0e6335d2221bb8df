//! The worker's side: claiming a delivery for one attempt, and recording the attempt's
//! outcome, each batched across concurrent deliveries ([`crate::db::batch`]).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::prepared::prepared;

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
    pub row: Option<crate::db::attempts::NewAttempt>,
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
        let row = self.row.clone().map(|row| crate::db::attempts::NewAttempt {
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
    let rows: Vec<&crate::db::attempts::NewAttempt> = records.iter().filter_map(|r| r.row.as_ref()).collect();
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

/// The worker's claims ([`crate::db::batch`]): one [`claim`] for the deliveries whose
/// messages arrived together; each gets its claim, or `None` when not claimable.
pub struct Claims {
    pub pool: crate::db::DbPool,
    pub timeout: std::time::Duration,
    pub lease: std::time::Duration,
}

impl crate::db::batch::Statement for Claims {
    type Item = uuid::Uuid;
    type Output = Option<Claimed>;
    const WHAT: &'static str = "claiming";

    async fn run(&self, ids: &[uuid::Uuid]) -> Result<Vec<Option<Claimed>>, crate::db::batch::BatchError> {
        let claimed = crate::db::with_connection(&self.pool, self.timeout, async |conn| {
            claim(conn, ids, self.lease).await
        })
        .await?;
        let mut by_id: std::collections::HashMap<uuid::Uuid, Claimed> =
            claimed.into_iter().map(|c| (c.id, c)).collect();
        Ok(ids.iter().map(|id| by_id.remove(id)).collect())
    }
}

/// The worker's outcome records ([`crate::db::batch`]): one [`record_outcomes`] for the
/// attempts that finished together; each learns whether its delivery changed (false:
/// another worker holds it now). When some of them end their key's turn, the same
/// transaction hands their keys on ([`crate::db::ordering::release_and_promote`]) and the
/// relays are woken for the deliveries that became pending.
pub struct Records {
    pub pool: crate::db::DbPool,
    pub timeout: std::time::Duration,
    pub wake: std::sync::Arc<crate::wake::OutboxWake>,
}

impl crate::db::batch::Statement for Records {
    type Item = Record;
    type Output = bool;
    const WHAT: &'static str = "recording";

    async fn run(&self, records: &[Record]) -> Result<Vec<bool>, crate::db::batch::BatchError> {
        let (changed, promoted) = crate::db::with_connection(&self.pool, self.timeout, async |conn| {
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
                let promoted = crate::db::ordering::release_and_promote(conn, &released).await?;
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
