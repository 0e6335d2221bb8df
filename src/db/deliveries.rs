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
