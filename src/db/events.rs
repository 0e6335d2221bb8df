//! Storing events exactly once.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::NewEvent;
use super::schema::events;

/// Stores a new event and its outbox rows (one `pending` delivery per destination) in
/// one statement, hence atomically and with a single round trip; or nothing, when
/// `(source, event_id)` is already stored. Returns the number of deliveries inserted,
/// or `None` for a duplicate. Concurrent duplicates are settled by the unique
/// constraint (`ON CONFLICT DO NOTHING`), never by a prior SELECT: the loser waits for
/// the winner's commit and then sees the conflict.
pub async fn insert_with_outbox(
    conn: &mut AsyncPgConnection,
    event: &NewEvent<'_>,
    delivery_ids: &[Uuid],
    destinations: &[&str],
) -> QueryResult<Option<usize>> {
    use diesel::sql_types::{Array, BigInt, Bytea, Jsonb, Text};
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = BigInt)]
        deliveries: i64,
    }
    let inserted: Option<Inserted> = diesel::sql_query(
        "WITH event AS ( \
             INSERT INTO events (id, source, event_id, event_type, payload, content_type, headers) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (source, event_id) DO NOTHING \
             RETURNING id), \
         outbox AS ( \
             INSERT INTO deliveries (id, event_id, destination, status) \
             SELECT d.id, event.id, d.destination, 'pending' \
             FROM event, unnest($8::uuid[], $9::text[]) AS d(id, destination) \
             RETURNING 1) \
         SELECT (SELECT count(*) FROM outbox) AS deliveries FROM event",
    )
    .bind::<diesel::sql_types::Uuid, _>(event.id)
    .bind::<Text, _>(event.source)
    .bind::<Text, _>(event.event_id)
    .bind::<Text, _>(event.event_type)
    .bind::<Bytea, _>(event.payload)
    .bind::<Text, _>(event.content_type)
    .bind::<Jsonb, _>(&event.headers)
    .bind::<Array<diesel::sql_types::Uuid>, _>(delivery_ids)
    .bind::<Array<Text>, _>(destinations)
    .get_result(conn)
    .await
    .optional()?;
    Ok(inserted.map(|i| usize::try_from(i.deliveries).unwrap_or(0)))
}

/// The stored id of a provider event, if any.
pub async fn find_id(
    conn: &mut AsyncPgConnection,
    source: &str,
    event_id: &str,
) -> QueryResult<Option<Uuid>> {
    events::table
        .filter(events::source.eq(source))
        .filter(events::event_id.eq(event_id))
        .select(events::id)
        .first(conn)
        .await
        .optional()
}

/// An event in a list: no payload.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
pub struct EventSummary {
    pub id: Uuid,
    pub source: String,
    pub event_id: String,
    pub event_type: String,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// An event with everything stored about it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
pub struct Event {
    pub id: Uuid,
    pub source: String,
    pub event_id: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub headers: serde_json::Value,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// Filters of the event list; every field optional.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub source: Option<String>,
    pub event_type: Option<String>,
    /// Events with at least one delivery in this status.
    pub status: Option<String>,
    /// A prefix of the provider's event id.
    pub q: Option<String>,
    /// Keyset cursor: only events older than this id (ids are time-ordered UUIDv7).
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(conn: &mut AsyncPgConnection, filter: &EventFilter) -> QueryResult<Vec<EventSummary>> {
    use super::schema::deliveries;
    let mut query = events::table
        .select(EventSummary::as_select())
        .order(events::id.desc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(source) = &filter.source {
        query = query.filter(events::source.eq(source));
    }
    if let Some(event_type) = &filter.event_type {
        query = query.filter(events::event_type.eq(event_type));
    }
    if let Some(q) = &filter.q {
        query = query.filter(events::event_id.like(format!("{}%", escape_like(q))));
    }
    if let Some(before) = filter.before {
        query = query.filter(events::id.lt(before));
    }
    if let Some(status) = &filter.status {
        query = query.filter(diesel::dsl::exists(
            deliveries::table
                .filter(deliveries::event_id.eq(events::id))
                .filter(deliveries::status.eq(status.clone())),
        ));
    }
    query.load(conn).await
}

/// `LIKE` treats `%`, `_` and `\` specially; a user's search text must not.
fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

pub async fn get(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Event>> {
    events::table
        .find(id)
        .select(Event::as_select())
        .first(conn)
        .await
        .optional()
}

/// When the oldest kept event was received (retention's horizon in practice).
pub async fn oldest_received_at(
    conn: &mut AsyncPgConnection,
) -> QueryResult<Option<chrono::DateTime<chrono::Utc>>> {
    events::table
        .select(diesel::dsl::min(events::received_at))
        .first(conn)
        .await
}
