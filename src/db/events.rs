//! Storing events exactly once.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::NewEvent;
use super::schema::events;

/// Inserts the event unless `(source, event_id)` is already stored. Returns `Some(id)`
/// when this call stored it, `None` for a duplicate. Concurrent duplicates are settled
/// by the unique constraint (`ON CONFLICT DO NOTHING`), never by a prior SELECT: the
/// loser waits for the winner's commit and then sees the conflict.
pub async fn insert_if_new(conn: &mut AsyncPgConnection, event: &NewEvent<'_>) -> QueryResult<Option<Uuid>> {
    diesel::insert_into(events::table)
        .values(event)
        .on_conflict((events::source, events::event_id))
        .do_nothing()
        .returning(events::id)
        .get_result(conn)
        .await
        .optional()
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
