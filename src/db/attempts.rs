//! One row per HTTP attempt, for operators: what the destination answered and when.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::delivery_attempts;

/// An attempt to record. Exactly one of `status_code` and `error` is set.
#[derive(Debug, Insertable)]
#[diesel(table_name = delivery_attempts)]
pub struct NewAttempt<'a> {
    pub delivery_id: uuid::Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<&'a str>,
    pub response_snippet: Option<&'a str>,
}

pub async fn insert(conn: &mut AsyncPgConnection, attempt: &NewAttempt<'_>) -> QueryResult<usize> {
    diesel::insert_into(delivery_attempts::table)
        .values(attempt)
        .execute(conn)
        .await
}
