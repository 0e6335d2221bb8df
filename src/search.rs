//! Finding stored events by what they hold: the admin API's event list, replay jobs and
//! the event stream all take one search — the event's fields (source, type, time), a
//! JSON document its body must contain (`match`, answered by the body's GIN index) and
//! an expression in the payload-filter language (`where`, [`crate::filter`]) — parsed
//! and checked here, so a search means the same wherever it is asked.
//!
//! A `where` is evaluated by relayd on the events the database's conditions leave;
//! those conditions include what the expression requires ([`crate::filter::Narrowing`]),
//! so `body.customer == "cus_1" && …` reads the index, not every event. A page reads at
//! most [`SCAN_BUDGET`] candidates or [`SCAN_TIME`], then answers with where it got to;
//! each statement is bounded by PostgreSQL's `statement_timeout`, and one that hits it
//! is [`Failed::TooBroad`] (503 with how to narrow it), never a connection held for
//! minutes. Only sources with `searchable = true` keep a searchable body (its index costs
//! ingest); their bodies that are not JSON, other sources' events and events stored
//! before searches existed have none: a `match`, or a `where` that reads `body`, never
//! matches them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::events::{self, EventConditions, EventFilter, Found};
use crate::filter::{Filter, Outcome};

/// The longest `match` document accepted.
pub const MAX_MATCH_BYTES: usize = 4096;

/// Candidates one page of a `where` search evaluates at most before it answers with a
/// cursor to go on from.
pub const SCAN_BUDGET: usize = 20_000;

/// How long one page of a `where` search reads at most before it answers with a cursor.
pub const SCAN_TIME: Duration = Duration::from_secs(2);

/// Candidates read per statement by a `where` search.
const CHUNK: i64 = 500;

/// What the answer says of bodies that cannot be searched.
pub const NOT_SEARCHED: &str = "events of sources without `searchable = true`, whose body is not JSON, or \
     stored before relayd searched bodies, are found by source, type, status, time and provider id \
     only: `match` and a `where` reading `body` never select them";

/// A checked search.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// What the database checks: the caller's fields, the `match` document and the
    /// `where`'s narrowing.
    pub conditions: EventConditions,
    /// The `where` expression, evaluated on what the conditions leave.
    pub filter: Option<Arc<Filter>>,
    /// The texts asked, kept to be stored with a replay job and shown back.
    pub terms: Terms,
}

/// A search's `match` and `where` as asked.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Terms {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

impl Terms {
    pub fn is_empty(&self) -> bool {
        self.matches.is_none() && self.filter.is_none()
    }
}

/// Why a search is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("match is not JSON: line {line}, column {column}: {message}")]
    Match {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("match is at most {MAX_MATCH_BYTES} bytes")]
    MatchTooLong,
    #[error("match may not hold \\u0000, which no stored body holds")]
    MatchNul,
    #[error("where: {0}")]
    Where(#[from] crate::filter::CompileError),
}

impl Search {
    /// `conditions` (the event fields asked) with `terms` parsed and checked.
    pub fn new(mut conditions: EventConditions, terms: Terms) -> Result<Self, Invalid> {
        let terms = Terms {
            matches: terms.matches.filter(|t| !t.trim().is_empty()),
            filter: terms.filter.filter(|t| !t.trim().is_empty()),
        };
        if let Some(text) = &terms.matches {
            if text.len() > MAX_MATCH_BYTES {
                return Err(Invalid::MatchTooLong);
            }
            let document: serde_json::Value = serde_json::from_str(text).map_err(|e| Invalid::Match {
                line: e.line(),
                column: e.column(),
                message: e
                    .to_string()
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            })?;
            if text.contains("\\u0000") {
                return Err(Invalid::MatchNul);
            }
            conditions.contains.push(document);
        }
        let filter = match &terms.filter {
            Some(text) => {
                let filter = Filter::compile(text)?;
                let narrowing = filter.narrowing();
                conditions.contains.extend(narrowing.contains);
                if conditions.event_type.is_none() {
                    conditions.event_type = narrowing.event_type;
                }
                if conditions.event_type_prefix.is_none() {
                    conditions.event_type_prefix = narrowing.event_type_prefix;
                }
                if conditions.source.is_none() {
                    conditions.source = narrowing.source;
                }
                Some(Arc::new(filter))
            }
            None => None,
        };
        Ok(Self {
            conditions,
            filter,
            terms,
        })
    }

    /// Whether an event the conditions selected is found: its `where` is true.
    pub fn accepts(&self, body: Option<&serde_json::Value>, source: &str, event_type: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|filter| filter.evaluate(body, source, event_type) == Outcome::Match)
    }
}

/// Why a search gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    /// A statement hit the statement timeout.
    #[error(
        "the search ran into the {0:?} statement timeout: narrow it (source, event_type, since/until, \
         or a match / where equality the index answers)"
    )]
    TooBroad(Duration),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

/// One page of a search.
#[derive(Debug)]
pub struct Page {
    pub found: Vec<Found>,
    /// Where the next page starts (`before`), if there may be more.
    pub next_cursor: Option<uuid::Uuid>,
    /// Candidates read (the `where` evaluated on each).
    pub scanned: usize,
    /// False when the page stopped at its budget before it was full: the next cursor
    /// goes on with the scan.
    pub complete: bool,
}

/// The newest events `list` (its cursor and limit) and `search` select, each statement
/// under a `statement_timeout` of `timeout`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    search: &Search,
    mut list: EventFilter,
    timeout: Duration,
) -> Result<Page, Failed> {
    list.conditions = search.conditions.clone();
    let limit = usize::try_from(list.limit).unwrap_or(0);
    bounded(conn, timeout, async |conn| {
        if search.filter.is_none() {
            let found = events::list(conn, &list).await?;
            let next_cursor = (found.len() == limit)
                .then(|| found.last().map(|f| f.summary.id))
                .flatten();
            let scanned = found.len();
            return Ok(Page {
                found,
                next_cursor,
                scanned,
                complete: true,
            });
        }
        let started = Instant::now();
        let mut found = Vec::new();
        let mut scanned = 0;
        let mut chunk = list.clone();
        chunk.limit = CHUNK;
        loop {
            let candidates = events::list(conn, &chunk).await?;
            let exhausted = candidates.len() < CHUNK as usize;
            for candidate in candidates {
                scanned += 1;
                chunk.before = Some(candidate.summary.id);
                let summary = &candidate.summary;
                if search.accepts(candidate.body.as_ref(), &summary.source, &summary.event_type) {
                    found.push(candidate);
                    if found.len() == limit {
                        let next_cursor = found.last().map(|f| f.summary.id);
                        return Ok(Page {
                            found,
                            next_cursor,
                            scanned,
                            complete: true,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(Page {
                    found,
                    next_cursor: None,
                    scanned,
                    complete: true,
                });
            }
            if scanned >= SCAN_BUDGET || started.elapsed() >= SCAN_TIME {
                return Ok(Page {
                    found,
                    next_cursor: chunk.before,
                    scanned,
                    complete: false,
                });
            }
        }
    })
    .await
}

/// Runs `work` in a read transaction whose statements PostgreSQL cancels after
/// `timeout`. A statement error once that long has passed is the timeout (told by the
/// time, not by the server's message, whose language is the server's).
pub async fn bounded<T>(
    conn: &mut AsyncPgConnection,
    timeout: Duration,
    work: impl AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, Failed>,
) -> Result<T, Failed> {
    use diesel_async::{AnsiTransactionManager, TransactionManager};
    let started = Instant::now();
    let milliseconds = timeout.as_millis().clamp(1, i32::MAX as u128);
    // By hand rather than `transaction()`, which wants work it can send: a caller that
    // stops waiting leaves the transaction open, and the pool then discards the
    // connection (its transaction manager is not idle), never reusing the setting.
    AnsiTransactionManager::begin_transaction(conn).await?;
    let outcome = match diesel::sql_query(format!("SET LOCAL statement_timeout = {milliseconds}"))
        .execute(conn)
        .await
    {
        Ok(_) => work(conn).await,
        Err(error) => Err(error.into()),
    };
    let ended = match &outcome {
        Ok(_) => AnsiTransactionManager::commit_transaction(conn).await,
        Err(_) => AnsiTransactionManager::rollback_transaction(conn).await,
    };
    match (outcome, ended) {
        (Err(Failed::Query(diesel::result::Error::DatabaseError(..))), _) if started.elapsed() >= timeout => {
            Err(Failed::TooBroad(timeout))
        }
        (Ok(_), Err(error)) => Err(error.into()),
        (outcome, _) => outcome,
    }
}

impl From<Failed> for crate::http_error::ApiError {
    fn from(failed: Failed) -> Self {
        match failed {
            Failed::TooBroad(_) => Self::SearchTooBroad(failed.to_string()),
            Failed::Query(error) => error.into(),
        }
    }
}

impl From<Invalid> for crate::http_error::ApiError {
    fn from(invalid: Invalid) -> Self {
        Self::BadRequest(invalid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(matches: Option<&str>, filter: Option<&str>) -> Terms {
        Terms {
            matches: matches.map(str::to_string),
            filter: filter.map(str::to_string),
        }
    }

    #[test]
    fn a_where_adds_its_narrowing_to_the_conditions() {
        let search = Search::new(
            EventConditions::default(),
            terms(
                Some(r#"{"livemode": true}"#),
                Some(r#"body.data.customer == "cus_1" && event_type.startsWith("invoice.")"#),
            ),
        )
        .unwrap();
        assert_eq!(
            search.conditions.contains,
            vec![
                serde_json::json!({"livemode": true}),
                serde_json::json!({"data": {"customer": "cus_1"}})
            ]
        );
        assert_eq!(search.conditions.event_type_prefix.as_deref(), Some("invoice."));
        assert!(search.accepts(
            Some(&serde_json::json!({"data": {"customer": "cus_1"}})),
            "s",
            "invoice.paid"
        ));
        assert!(!search.accepts(None, "s", "invoice.paid"), "no body: no match");
    }

    #[test]
    fn bad_terms_are_refused_with_their_position() {
        let error = Search::new(EventConditions::default(), terms(Some(r#"{"a": }"#), None)).unwrap_err();
        assert!(
            matches!(
                error,
                Invalid::Match {
                    line: 1,
                    column: 7,
                    ..
                }
            ),
            "{error}"
        );
        let error = Search::new(EventConditions::default(), terms(None, Some("body.a >"))).unwrap_err();
        assert!(error.to_string().starts_with("where: line 1, column"), "{error}");
        let error = Search::new(
            EventConditions::default(),
            terms(Some(r#"{"a": "\u0000"}"#), None),
        )
        .unwrap_err();
        assert_eq!(error, Invalid::MatchNul);
        let long = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_MATCH_BYTES));
        assert_eq!(
            Search::new(EventConditions::default(), terms(Some(&long), None)).unwrap_err(),
            Invalid::MatchTooLong
        );
        let blank = Search::new(EventConditions::default(), terms(Some(" "), Some(""))).unwrap();
        assert!(blank.terms.is_empty() && blank.conditions.is_empty());
    }
}
