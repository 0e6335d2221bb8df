//! Operator notices in the outbox: each one is an event of source
//! [`crate::config::NOTICE_SOURCE`] with one `pending` delivery per
//! subscribed operator hook, stored under an id that names the change it tells of, so
//! the same change is stored once however often it is seen. `operator_watch` keeps
//! what the watcher ([`crate::notices`]) last saw.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Bytea, Integer, Nullable, Text, Timestamptz, Uuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::config::NOTICE_SOURCE;

/// Takes the watcher's lock for this transaction ("relaydop"); `false`: another
/// process is watching.
pub async fn try_lead(conn: &mut AsyncPgConnection) -> diesel::QueryResult<bool> {
    #[derive(diesel::QueryableByName)]
    struct Led {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        led: bool,
    }
    let led: Led = diesel::sql_query("SELECT pg_try_advisory_xact_lock(8243118282553995376) AS led")
        .get_result(conn)
        .await?;
    Ok(led.led)
}

/// What the watcher last saw under `key`, and when.
pub async fn seen(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> diesel::QueryResult<Option<(String, DateTime<Utc>)>> {
    use super::schema::operator_watch::dsl;
    use diesel::{OptionalExtension, QueryDsl};
    dsl::operator_watch
        .find(key)
        .select((dsl::state, dsl::seen_at))
        .first(conn)
        .await
        .optional()
}

/// What the watcher last saw under every key that starts with `prefix`, in one query.
pub async fn seen_under(
    conn: &mut AsyncPgConnection,
    prefix: &str,
) -> diesel::QueryResult<std::collections::HashMap<String, String>> {
    use super::schema::operator_watch::dsl;
    use diesel::{QueryDsl, TextExpressionMethods};
    let rows: Vec<(String, String)> = dsl::operator_watch
        .filter(dsl::key.like(format!("{prefix}%")))
        .select((dsl::key, dsl::state))
        .load(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Records what the watcher sees under `key` now (`at`: when, for cursors).
pub async fn see(
    conn: &mut AsyncPgConnection,
    key: &str,
    state: &str,
    at: DateTime<Utc>,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO operator_watch (key, state, seen_at) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO UPDATE SET state = $2, seen_at = $3",
    )
    .bind::<Text, _>(key)
    .bind::<Text, _>(state)
    .bind::<Timestamptz, _>(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores a notice for `hooks` unless one with `id` is stored already. Returns
/// whether it was new (the caller wakes the relays after the commit).
pub async fn store(
    conn: &mut AsyncPgConnection,
    id: &str,
    notice_type: &str,
    payload: &serde_json::Value,
    hooks: &[String],
) -> diesel::QueryResult<bool> {
    if hooks.is_empty() {
        return Ok(false);
    }
    let delivery_ids: Vec<uuid::Uuid> = hooks.iter().map(|_| uuid::Uuid::now_v7()).collect();
    let stored = diesel::sql_query(
        "WITH e AS ( \
             INSERT INTO events (id, source, event_id, event_type, payload, content_type, headers) \
             VALUES ($1, $2, $3, $4, $5, 'application/json', '{}') \
             ON CONFLICT (source, event_id) DO NOTHING RETURNING id) \
         INSERT INTO deliveries (id, event_id, destination, status, next_attempt_at) \
         SELECT d.id, e.id, d.destination, 'pending', now() \
         FROM e, unnest($6::uuid[], $7::text[]) AS d(id, destination)",
    )
    .bind::<Uuid, _>(uuid::Uuid::now_v7())
    .bind::<Text, _>(NOTICE_SOURCE)
    .bind::<Text, _>(id)
    .bind::<Text, _>(notice_type)
    .bind::<Bytea, _>(payload.to_string().into_bytes())
    .bind::<Array<Uuid>, _>(delivery_ids)
    .bind::<Array<Text>, _>(hooks)
    .execute(conn)
    .await?;
    Ok(stored > 0)
}

/// A delivery that went dead, as a notice tells of it.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct Dead {
    #[diesel(sql_type = Uuid)]
    pub id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    pub destination: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Nullable<Integer>)]
    pub last_status_code: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
    #[diesel(sql_type = Uuid)]
    pub event_uuid: uuid::Uuid,
    #[diesel(sql_type = Text)]
    pub source: String,
    #[diesel(sql_type = Text)]
    pub event_id: String,
    #[diesel(sql_type = Text)]
    pub event_type: String,
}

/// How long a dead delivery waits before it is looked at: longer than any
/// transaction that records an outcome stays open, so none commits behind the cursor.
pub const DEAD_SETTLE_SECONDS: f64 = 10.0;

/// Deliveries dead after the cursor `(at, id)` and at least [`DEAD_SETTLE_SECONDS`]
/// ago (not those to `excluded`: the hooks), in cursor order, `limit` at most
/// (`deliveries_dead_updated_idx`).
pub async fn dead_after(
    conn: &mut AsyncPgConnection,
    cursor: (DateTime<Utc>, uuid::Uuid),
    excluded: &[String],
    limit: i64,
) -> diesel::QueryResult<Vec<Dead>> {
    diesel::sql_query(
        "SELECT d.id, d.destination, d.attempts, d.last_status_code, d.last_error, d.updated_at, \
                e.id AS event_uuid, e.source, e.event_id, e.event_type \
         FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.status = 'dead' AND d.updated_at >= $1 AND (d.updated_at, d.id) > ($1, $2) \
           AND d.updated_at < now() - make_interval(secs => $5) AND d.destination <> ALL($3) \
         ORDER BY d.updated_at, d.id LIMIT $4",
    )
    .bind::<Timestamptz, _>(cursor.0)
    .bind::<Uuid, _>(cursor.1)
    .bind::<Array<Text>, _>(excluded)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .bind::<diesel::sql_types::Double, _>(DEAD_SETTLE_SECONDS)
    .load(conn)
    .await
}

/// The database's clock now.
pub async fn now(conn: &mut AsyncPgConnection) -> diesel::QueryResult<DateTime<Utc>> {
    #[derive(diesel::QueryableByName)]
    struct Now {
        #[diesel(sql_type = Timestamptz)]
        now: DateTime<Utc>,
    }
    let now: Now = diesel::sql_query("SELECT now() AS now").get_result(conn).await?;
    Ok(now.now)
}
