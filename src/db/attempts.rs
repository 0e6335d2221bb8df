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

/// `bytes` as a text column can hold them: invalid UTF-8 and NUL replaced by U+FFFD,
/// cut at a character boundary to at most `max` bytes. A destination's answer is
/// whatever it sends; recording it must never fail because of it.
pub fn storable(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut stored = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c == '\0' { char::REPLACEMENT_CHARACTER } else { c };
        if stored.len() + c.len_utf8() > max {
            break;
        }
        stored.push(c);
    }
    stored
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
    /// Answered 429 or 503 with `Retry-After` (or 410): the try was given back.
    pub throttled: bool,
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

#[cfg(test)]
mod tests {
    use super::storable;

    #[test]
    fn storable_text_has_no_nul_no_invalid_utf8_and_ends_on_a_character() {
        assert_eq!(storable(b"ok\0then \xff", 100), "ok\u{FFFD}then \u{FFFD}");
        assert_eq!(storable("aé".as_bytes(), 2), "a", "never half a character");
        assert_eq!(storable("aé".as_bytes(), 3), "aé");
        assert_eq!(storable(b"", 10), "");
    }
}
