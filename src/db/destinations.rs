//! The flow state every worker replica shares per destination (`destination_states`):
//! its circuit (closed, open, half_open) and an operator's hold (paused, or disabled
//! after a `410 Gone`). A destination without a row is closed.
//!
//! Every change is one statement that also `NOTIFY`s [`CHANNEL`] when it changed
//! something (delivered at its commit), so workers elsewhere re-read at once; they also
//! re-read every second. Each change is conditional on the state it leaves, so that two
//! replicas racing for one transition make it once.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Double, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// The channel `NOTIFY`ed after a destination's state changed.
pub const CHANNEL: &str = "relayd_destinations";

/// A destination's shared flow state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Delivering.
    Closed,
    /// Too many consecutive failures: nothing is sent but one probe per interval.
    Open,
    /// A probe is out.
    HalfOpen,
    /// Held by an operator until resumed.
    Paused,
    /// The destination answered `410 Gone`: held until an operator resumes it.
    Disabled,
}

impl State {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::Paused => "paused",
            Self::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Closed,
            Self::Open,
            Self::HalfOpen,
            Self::Paused,
            Self::Disabled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A `destination_states` row.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct Row {
    #[diesel(sql_type = Text)]
    pub destination: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub reason: Option<String>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
    pub next_probe_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
    pub probe_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub changed_at: DateTime<Utc>,
}

impl Row {
    #[cfg(test)]
    pub fn new(destination: &str, state: State, changed_at: DateTime<Utc>) -> Self {
        Self {
            destination: destination.to_string(),
            state: state.as_str().to_string(),
            reason: None,
            next_probe_at: Some(changed_at),
            probe_until: Some(changed_at),
            changed_at,
        }
    }

    /// The state (an unknown text, impossible under the CHECK constraint, reads closed).
    pub fn state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Closed)
    }
}

const COLUMNS: &str = "destination, state, reason, next_probe_at, probe_until, changed_at";

/// Every destination that has a row.
pub async fn load(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<Row>> {
    diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM destination_states ORDER BY destination"
    ))
    .load(conn)
    .await
}

/// `statement` (an `INSERT … ON CONFLICT DO UPDATE … WHERE` or an `UPDATE`) wrapped so
/// that it returns the row it changed and notifies [`CHANNEL`] when it did.
fn notifying(statement: &str) -> String {
    format!(
        "WITH changed AS ({statement} RETURNING {COLUMNS}) \
         SELECT {COLUMNS}, pg_notify('{CHANNEL}', destination) FROM changed"
    )
}

/// The changed row, if the change applied.
type Changed = diesel::QueryResult<Option<Row>>;

/// Opens a closed circuit after consecutive failures: the first probe may go after
/// `probe_interval`. The row, when this call opened it (another replica may have first).
pub async fn open(
    conn: &mut AsyncPgConnection,
    destination: &str,
    reason: &str,
    probe_interval: std::time::Duration,
) -> Changed {
    let sql = notifying(
        "INSERT INTO destination_states AS s \
             (destination, state, reason, probe_interval, next_probe_at, probe_until, changed_at) \
         VALUES ($1, 'open', $2, $3, now() + make_interval(secs => $3), NULL, now()) \
         ON CONFLICT (destination) DO UPDATE \
             SET state = 'open', reason = $2, probe_interval = $3, \
                 next_probe_at = now() + make_interval(secs => $3), probe_until = NULL, changed_at = now() \
             WHERE s.state = 'closed'",
    );
    let changed = diesel::sql_query(sql)
        .bind::<Text, _>(destination)
        .bind::<Text, _>(reason)
        .bind::<Double, _>(probe_interval.as_secs_f64())
        .load(conn)
        .await?;
    Ok(changed.into_iter().next())
}

/// Takes the probe of an open circuit whose probe is due (or whose last probe's holder
/// has not reported within its time): the circuit becomes half_open until `hold` from
/// now. The row when this caller holds the probe; across replicas one does per
/// interval.
pub async fn take_probe(
    conn: &mut AsyncPgConnection,
    destination: &str,
    hold: std::time::Duration,
) -> Changed {
    let sql = notifying(
        "UPDATE destination_states \
         SET state = 'half_open', probe_until = now() + make_interval(secs => $2), changed_at = now() \
         WHERE destination = $1 \
           AND ((state = 'open' AND next_probe_at <= now()) \
                OR (state = 'half_open' AND probe_until <= now()))",
    );
    let changed = diesel::sql_query(sql)
        .bind::<Text, _>(destination)
        .bind::<Double, _>(hold.as_secs_f64())
        .load(conn)
        .await?;
    Ok(changed.into_iter().next())
}

/// The probe succeeded: the circuit closes.
pub async fn close(conn: &mut AsyncPgConnection, destination: &str) -> Changed {
    let sql = notifying(
        "UPDATE destination_states \
         SET state = 'closed', reason = NULL, probe_interval = NULL, next_probe_at = NULL, \
             probe_until = NULL, changed_at = now() \
         WHERE destination = $1 AND state IN ('open', 'half_open')",
    );
    let changed = diesel::sql_query(sql)
        .bind::<Text, _>(destination)
        .load(conn)
        .await?;
    Ok(changed.into_iter().next())
}

/// The probe failed: open again, with the wait before the next probe doubled up to
/// `max_probe_interval`.
pub async fn reopen(
    conn: &mut AsyncPgConnection,
    destination: &str,
    reason: &str,
    max_probe_interval: std::time::Duration,
) -> Changed {
    let sql = notifying(
        "UPDATE destination_states \
         SET state = 'open', reason = $2, probe_interval = least(probe_interval * 2, $3), \
             next_probe_at = now() + make_interval(secs => least(probe_interval * 2, $3)), \
             probe_until = NULL, changed_at = now() \
         WHERE destination = $1 AND state = 'half_open'",
    );
    let changed = diesel::sql_query(sql)
        .bind::<Text, _>(destination)
        .bind::<Text, _>(reason)
        .bind::<Double, _>(max_probe_interval.as_secs_f64())
        .load(conn)
        .await?;
    Ok(changed.into_iter().next())
}

/// Holds a destination: `paused` by an operator (from any state), or `disabled` after
/// a `410 Gone` (unless an operator has paused it, which stays).
pub async fn hold(conn: &mut AsyncPgConnection, destination: &str, state: State, reason: &str) -> Changed {
    debug_assert!(matches!(state, State::Paused | State::Disabled));
    let sql = notifying(
        "INSERT INTO destination_states AS s (destination, state, reason, changed_at) \
         VALUES ($1, $2, $3, now()) \
         ON CONFLICT (destination) DO UPDATE \
             SET state = $2, reason = $3, probe_interval = NULL, next_probe_at = NULL, \
                 probe_until = NULL, changed_at = now() \
             WHERE s.state <> $2 AND ($2 = 'paused' OR s.state <> 'paused')",
    );
    let changed = diesel::sql_query(sql)
        .bind::<Text, _>(destination)
        .bind::<Text, _>(state.as_str())
        .bind::<Text, _>(reason)
        .load(conn)
        .await?;
    Ok(changed.into_iter().next())
}

/// An operator pauses a destination (from any state; it stays paused until resumed).
pub async fn pause(conn: &mut AsyncPgConnection, destination: &str) -> Changed {
    hold(conn, destination, State::Paused, "paused by an operator").await
}

/// An operator resumes a destination from any state: closed, delivering at once.
pub async fn resume(conn: &mut AsyncPgConnection, destination: &str) -> Changed {
    let sql = notifying(
        "UPDATE destination_states \
         SET state = 'closed', reason = NULL, probe_interval = NULL, next_probe_at = NULL, \
             probe_until = NULL, changed_at = now() \
         WHERE destination = $1 AND state <> 'closed'",
    );
    let changed = diesel::sql_query(sql)
        .bind::<Text, _>(destination)
        .load(conn)
        .await?;
    Ok(changed.into_iter().next())
}

/// What an operator sees of one destination.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overview {
    pub name: String,
    pub state: State,
    /// Why it left `closed`.
    pub reason: Option<String>,
    /// When an open circuit's next probe may go.
    pub next_probe_at: Option<DateTime<Utc>>,
    /// Deliveries not yet delivered, dead or quarantined.
    pub undelivered: i64,
    /// Of those, the ones in its queue (published, not yet taken).
    pub queued: i64,
    /// Of those, the ones due now (the relay's or a worker's to act on).
    pub due: i64,
    pub oldest_undelivered_age_seconds: Option<f64>,
}

#[derive(diesel::QueryableByName)]
struct Backlog {
    #[diesel(sql_type = Text)]
    destination: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    undelivered: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    queued: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    due: i64,
    #[diesel(sql_type = Nullable<Double>)]
    oldest_undelivered_age_seconds: Option<f64>,
}

/// The state and backlog of each of `names` (the configured destinations), in order.
/// The backlog reads only the partial due index's rows.
pub async fn overview(conn: &mut AsyncPgConnection, names: &[String]) -> diesel::QueryResult<Vec<Overview>> {
    let states = load(conn).await?;
    let backlogs: Vec<Backlog> = diesel::sql_query(
        "SELECT destination, count(*) AS undelivered, \
                count(*) FILTER (WHERE status = 'queued') AS queued, \
                count(*) FILTER (WHERE next_attempt_at <= now()) AS due, \
                EXTRACT(EPOCH FROM now() - min(created_at))::float8 AS oldest_undelivered_age_seconds \
         FROM deliveries WHERE status IN ('pending', 'queued', 'delivering', 'retrying') \
         GROUP BY destination",
    )
    .load(conn)
    .await?;
    Ok(names
        .iter()
        .map(|name| {
            let row = states.iter().find(|s| &s.destination == name);
            let backlog = backlogs.iter().find(|b| &b.destination == name);
            Overview {
                name: name.clone(),
                state: row.map_or(State::Closed, Row::state),
                reason: row.and_then(|r| r.reason.clone()),
                next_probe_at: row.and_then(|r| r.next_probe_at),
                undelivered: backlog.map_or(0, |b| b.undelivered),
                queued: backlog.map_or(0, |b| b.queued),
                due: backlog.map_or(0, |b| b.due),
                oldest_undelivered_age_seconds: backlog.and_then(|b| b.oldest_undelivered_age_seconds),
            }
        })
        .collect())
}
