//! One row per HTTP attempt, for operators: what the destination answered and when.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::delivery_attempts;

/// An attempt to record (see `deliveries::record_outcomes`). Exactly one of
/// `status_code` and `error` is set.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    pub delivery_id: uuid::Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub response_snippet: Option<String>,
}

/// An attempt as stored.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = delivery_attempts, check_for_backend(diesel::pg::Pg))]
pub struct Attempt {
    #[serde(skip)]
    pub id: i64,
    pub delivery_id: uuid::Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub response_snippet: Option<String>,
}

/// The attempts of these deliveries, oldest first.
pub async fn for_deliveries(conn: &mut AsyncPgConnection, ids: &[uuid::Uuid]) -> QueryResult<Vec<Attempt>> {
    delivery_attempts::table
        .filter(delivery_attempts::delivery_id.eq_any(ids))
        .order((delivery_attempts::started_at, delivery_attempts::id))
        .select(Attempt::as_select())
        .load(conn)
        .await
}
