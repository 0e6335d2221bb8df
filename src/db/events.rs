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
