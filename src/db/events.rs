//! Storing events exactly once.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::events;

/// A verified event ready to store, with the destinations it is owed to.
#[derive(Debug, Clone)]
pub struct BatchEvent {
    pub id: Uuid,
    pub source: String,
    pub event_id: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub headers: serde_json::Value,
    /// The ingest request's W3C trace context, continued by the relay and the worker
    /// ([`crate::telemetry::context`]); `None` when traces are off.
    pub traceparent: Option<String>,
    /// One new delivery per destination.
    pub deliveries: Vec<NewDelivery>,
    /// The destinations a payload filter kept it from, each with why (`None`: none).
    pub filtered: Option<serde_json::Value>,
    /// Its key under its source's dedup rule, if the source has one and it has a key.
    pub dedup: Option<Dedup>,
    /// Its source is `searchable` and the payload is JSON that `jsonb` can hold
    /// ([`searchable`]): it is stored as the searchable `body` too.
    pub searchable: bool,
}

/// Whether a payload can be stored as `jsonb` too: it parsed as JSON (`json`) and holds
/// no `\u0000`, which `jsonb` refuses (the statement would fail for the whole batch).
/// Everything else serde_json accepts, PostgreSQL does: both take strict RFC 8259,
/// serde_json refuses lone surrogates and numbers beyond `f64`, and nests at most 128.
pub fn searchable(json: Option<&serde_json::Value>, payload: &[u8]) -> bool {
    json.is_some() && !payload.windows(6).any(|w| w == b"\\u0000")
}

/// An event's dedup key ([`crate::ingest`]'s rule) and how long it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedup {
    pub key: Vec<u8>,
    pub window: std::time::Duration,
}

/// An outbox row to create with its event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub destination: String,
    /// The event's key for an ordered destination ([`super::ordering::stored_key`]).
    pub ordering_key: Option<String>,
}

/// Stores new events and their outbox rows (one `pending` delivery per destination) in
/// one statement, hence atomically and with a single round trip. Events whose
/// `(source, event_id)` is already stored — or appears earlier in the same batch — are
/// skipped with their deliveries. Returns, for each event stored, its deliveries count.
///
/// A cached statement (see [`super::prepared`]): its plan does not depend on table sizes.
///
/// Deliveries with an ordering key are numbered within their (destination, key) in
/// batch order, after the key's earlier ones ([`super::ordering`]): the key's row is
/// upserted, which sees the last committed numbering even when another statement held
/// it, and the first delivery of an idle key is `pending` and its head, the rest
/// `waiting`. A batch
/// without keys runs the plain statement, which never touches `ordering_keys`.
///
/// Duplicates are settled by the unique constraint (`ON CONFLICT DO NOTHING`), never by
/// a prior SELECT: a concurrent statement inserting the same key waits for this one's
/// commit and then sees the conflict. Rows are inserted in key order, so two batches
/// that share keys lock them in the same order and cannot deadlock.
pub async fn insert_batch_with_outbox(
    conn: &mut AsyncPgConnection,
    batch: &[BatchEvent],
) -> QueryResult<std::collections::HashMap<Uuid, usize>> {
    use diesel::sql_types::{Array, BigInt, Bytea, Jsonb, Text};
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
        #[diesel(sql_type = BigInt)]
        deliveries: i64,
    }
    let outbox: Vec<(Uuid, &NewDelivery)> = batch
        .iter()
        .flat_map(|e| e.deliveries.iter().map(move |d| (e.id, d)))
        .collect();
    let ordered = outbox.iter().any(|(_, d)| d.ordering_key.is_some());
    let query = super::prepared::prepared(if ordered { INSERT_ORDERED_SQL } else { INSERT_SQL })
        .bind::<Array<diesel::sql_types::Uuid>, _>(batch.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(batch.iter().map(|e| e.source.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(batch.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(batch.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
        .bind::<Array<Bytea>, _>(batch.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(batch.iter().map(|e| e.content_type.as_str()).collect::<Vec<_>>())
        .bind::<Array<Jsonb>, _>(batch.iter().map(|e| &e.headers).collect::<Vec<_>>())
        .bind::<Array<diesel::sql_types::Nullable<Text>>, _>(
            batch.iter().map(|e| e.traceparent.as_deref()).collect::<Vec<_>>(),
        )
        .bind::<Array<diesel::sql_types::Nullable<Jsonb>>, _>(
            batch.iter().map(|e| e.filtered.as_ref()).collect::<Vec<_>>(),
        )
        .bind::<Array<diesel::sql_types::Nullable<Bytea>>, _>(
            batch
                .iter()
                .map(|e| e.dedup.as_ref().map(|d| d.key.as_slice()))
                .collect::<Vec<_>>(),
        )
        .bind::<Array<diesel::sql_types::Nullable<BigInt>>, _>(
            batch
                .iter()
                .map(|e| {
                    e.dedup
                        .as_ref()
                        .map(|d| i64::try_from(d.window.as_millis()).unwrap_or(i64::MAX))
                })
                .collect::<Vec<_>>(),
        )
        .bind::<Array<diesel::sql_types::Bool>, _>(batch.iter().map(|e| e.searchable).collect::<Vec<_>>())
        .bind::<Array<diesel::sql_types::Uuid>, _>(outbox.iter().map(|(_, d)| d.id).collect::<Vec<_>>())
        .bind::<Array<diesel::sql_types::Uuid>, _>(outbox.iter().map(|(event, _)| *event).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            outbox
                .iter()
                .map(|(_, d)| d.destination.as_str())
                .collect::<Vec<_>>(),
        );
    let inserted: Vec<Inserted> = if ordered {
        query
            .bind::<Array<diesel::sql_types::Nullable<Text>>, _>(
                outbox
                    .iter()
                    .map(|(_, d)| d.ordering_key.as_deref())
                    .collect::<Vec<_>>(),
            )
            .load(conn)
            .await?
    } else {
        query.load(conn).await?
    };
    Ok(inserted
        .into_iter()
        .map(|i| (i.id, usize::try_from(i.deliveries).unwrap_or(0)))
        .collect())
}

/// The statement of [`INSERT_SQL`] and [`INSERT_ORDERED_SQL`] around their `outbox`
/// part: the events (`$1`–`$9` their columns, `$10`/`$11` their dedup keys and windows
/// in milliseconds, NULL without, `$12` whether the payload is stored as `body` too)
/// first, then `middle`, then the deliveries counted per
/// stored event.
///
/// An event with a dedup key is stored only if it claims the key: inserted, or taking
/// over an expired one (`ON CONFLICT … DO UPDATE … WHERE expires_at <= now()`); a key
/// held by an unexpired claim leaves the event out, a duplicate. Within one batch the
/// first event of a key claims it (one row may not be updated twice by a statement).
/// A concurrent statement claiming the same key waits for this one's commit, then sees
/// the claim and leaves its event out.
macro_rules! insert_events_and {
    ($middle:literal) => {
        concat!(
            "WITH input AS ( \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], \
                                      $6::text[], $7::jsonb[], $8::text[], $9::jsonb[], $10::bytea[], \
                                      $11::bigint[], $12::bool[]) WITH ORDINALITY \
                     AS t(id, source, event_id, event_type, payload, content_type, headers, traceparent, \
                          filtered, dedup_key, dedup_ms, searchable, n)), \
             dedup AS ( \
                 INSERT INTO dedup_keys AS d (source, key, event_id, expires_at) \
                 SELECT source, dedup_key, id, now() + dedup_ms * interval '1 millisecond' \
                 FROM (SELECT DISTINCT ON (source, dedup_key) id, source, dedup_key, dedup_ms FROM input \
                       WHERE dedup_key IS NOT NULL \
                       ORDER BY source, dedup_key, n) first \
                 ORDER BY source, dedup_key \
                 ON CONFLICT (source, key) DO UPDATE \
                     SET event_id = excluded.event_id, expires_at = excluded.expires_at \
                     WHERE d.expires_at <= now() \
                 RETURNING d.event_id), \
             event AS ( \
                 INSERT INTO events (id, source, event_id, event_type, payload, content_type, headers, traceparent, \
                                     filtered, body) \
                 SELECT id, source, event_id, event_type, payload, content_type, headers, traceparent, filtered, \
                        CASE WHEN searchable THEN convert_from(payload, 'UTF8')::jsonb END FROM input \
                 WHERE dedup_key IS NULL OR id IN (SELECT event_id FROM dedup) \
                 ORDER BY source, event_id \
                 ON CONFLICT (source, event_id) DO NOTHING \
                 RETURNING id), ",
            $middle,
            " SELECT event.id, (SELECT count(*) FROM outbox WHERE outbox.event_id = event.id) AS deliveries \
             FROM event"
        )
    };
}

/// The events and their rows: `$13`–`$15` the deliveries' id, event and destination.
const INSERT_SQL: &str = insert_events_and!(
    "outbox AS ( \
         INSERT INTO deliveries (id, event_id, destination, status) \
         SELECT d.id, d.event_uuid, d.destination, 'pending' \
         FROM unnest($13::uuid[], $14::uuid[], $15::text[]) AS d(id, event_uuid, destination) \
         JOIN event ON event.id = d.event_uuid \
         RETURNING event_id)"
);

/// [`INSERT_SQL`] with `$16`, the deliveries' ordering keys (NULL: unordered). Only
/// the stored events' deliveries are numbered (a duplicate leaves no gap); the keys'
/// rows are upserted in key order (after every event row, since the count needs them
/// all), so concurrent batches queue on them in one order.
const INSERT_ORDERED_SQL: &str = insert_events_and!(
    "wanted AS ( \
         SELECT d.id, d.event_uuid, d.destination, d.key, \
                row_number() OVER (PARTITION BY d.destination, d.key ORDER BY d.n) AS rank \
         FROM unnest($13::uuid[], $14::uuid[], $15::text[], $16::text[]) WITH ORDINALITY \
             AS d(id, event_uuid, destination, key, n) \
         JOIN event ON event.id = d.event_uuid), \
     counted AS ( \
         SELECT destination, key, count(*) AS n, \
                (array_agg(id ORDER BY rank))[1] AS first \
         FROM wanted WHERE key IS NOT NULL \
         GROUP BY destination, key), \
     numbered AS ( \
         INSERT INTO ordering_keys AS k (destination, key, last_seq, head) \
         SELECT destination, key, n, first FROM counted ORDER BY destination, key \
         ON CONFLICT (destination, key) DO UPDATE \
             SET last_seq = k.last_seq + excluded.last_seq, head = COALESCE(k.head, excluded.head), \
                 changed_at = now() \
         RETURNING k.destination, k.key, k.last_seq, k.head), \
     outbox AS ( \
         INSERT INTO deliveries (id, event_id, destination, status, ordering_key, ordering_seq) \
         SELECT w.id, w.event_uuid, w.destination, \
                CASE WHEN w.key IS NULL OR w.id = k.head THEN 'pending' ELSE 'waiting' END, \
                w.key, k.last_seq - c.n + w.rank \
         FROM wanted w \
         LEFT JOIN counted c ON c.destination = w.destination AND c.key = w.key \
         LEFT JOIN numbered k ON k.destination = w.destination AND k.key = w.key \
         RETURNING event_id)"
);

/// How a submitted event ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Accepted {
        id: Uuid,
        deliveries: usize,
    },
    /// `id` is the stored event's; `None` only if it was pruned in the meantime.
    Duplicate {
        id: Option<Uuid>,
    },
}

/// Ingest's group commit ([`super::batch`]): the events of requests that arrive
/// together, stored by [`insert_batch_with_outbox`], then their duplicates looked up.
/// Running it again for events it stored answers them as duplicates of themselves, so
/// a re-run half of a rejected batch never stores anything twice.
pub struct StoreEvents {
    pub pool: super::DbPool,
    /// Each statement's database work is abandoned after this long.
    pub timeout: std::time::Duration,
}

impl super::batch::Statement for StoreEvents {
    type Item = BatchEvent;
    type Output = Stored;
    const WHAT: &'static str = "storing events";

    async fn run(&self, events: &[BatchEvent]) -> Result<Vec<Stored>, super::batch::BatchError> {
        Ok(super::with_connection(&self.pool, self.timeout, async |conn| store(conn, events).await).await?)
    }
}

/// One statement for the events, then one lookup for their duplicates (if any).
pub async fn store(conn: &mut AsyncPgConnection, events: &[BatchEvent]) -> QueryResult<Vec<Stored>> {
    let inserted = insert_batch_with_outbox(conn, events).await?;
    let duplicates: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| !inserted.contains_key(&e.id))
        .map(|e| (e.source.as_str(), e.event_id.as_str()))
        .collect();
    let existing = if duplicates.is_empty() {
        std::collections::HashMap::new()
    } else {
        find_ids(conn, &duplicates).await?
    };
    // Left out by a dedup key another event holds: that event is the one answered.
    let by_dedup: Vec<(&str, &[u8])> = events
        .iter()
        .filter(|e| !inserted.contains_key(&e.id))
        .filter(|e| !existing.contains_key(&(e.source.clone(), e.event_id.clone())))
        .filter_map(|e| Some((e.source.as_str(), e.dedup.as_ref()?.key.as_slice())))
        .collect();
    let holders = if by_dedup.is_empty() {
        std::collections::HashMap::new()
    } else {
        find_dedup_holders(conn, &by_dedup).await?
    };
    Ok(events
        .iter()
        .map(|event| match inserted.get(&event.id) {
            Some(&deliveries) => Stored::Accepted {
                id: event.id,
                deliveries,
            },
            None => Stored::Duplicate {
                id: existing
                    .get(&(event.source.clone(), event.event_id.clone()))
                    .or_else(|| {
                        let key = event.dedup.as_ref()?.key.clone();
                        holders.get(&(event.source.clone(), key))
                    })
                    .copied(),
            },
        })
        .collect())
}

/// The stored events holding these dedup keys, keyed by `(source, key)`.
async fn find_dedup_holders(
    conn: &mut AsyncPgConnection,
    keys: &[(&str, &[u8])],
) -> QueryResult<std::collections::HashMap<(String, Vec<u8>), Uuid>> {
    use diesel::sql_types::{Array, Bytea, Text};
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
        #[diesel(sql_type = Text)]
        source: String,
        #[diesel(sql_type = Bytea)]
        key: Vec<u8>,
    }
    let found: Vec<Found> = diesel::sql_query(
        "SELECT e.id, d.source, d.key FROM dedup_keys d \
         JOIN unnest($1::text[], $2::bytea[]) AS k(source, key) ON d.source = k.source AND d.key = k.key \
         JOIN events e ON e.id = d.event_id",
    )
    .bind::<Array<Text>, _>(keys.iter().map(|(s, _)| *s).collect::<Vec<_>>())
    .bind::<Array<Bytea>, _>(keys.iter().map(|(_, k)| *k).collect::<Vec<_>>())
    .load(conn)
    .await?;
    Ok(found.into_iter().map(|f| ((f.source, f.key), f.id)).collect())
}

/// The stored ids of these provider events, keyed by `(source, event_id)`. Planned on
/// each call (it is rare, and its best join depends on the size of `events`).
pub async fn find_ids(
    conn: &mut AsyncPgConnection,
    keys: &[(&str, &str)],
) -> QueryResult<std::collections::HashMap<(String, String), Uuid>> {
    use diesel::sql_types::{Array, Text};
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
        #[diesel(sql_type = Text)]
        source: String,
        #[diesel(sql_type = Text)]
        event_id: String,
    }
    let found: Vec<Found> = diesel::sql_query(
        "SELECT e.id, e.source, e.event_id FROM events e \
         JOIN unnest($1::text[], $2::text[]) AS k(source, event_id) \
           ON e.source = k.source AND e.event_id = k.event_id",
    )
    .bind::<Array<Text>, _>(keys.iter().map(|(s, _)| *s).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(keys.iter().map(|(_, e)| *e).collect::<Vec<_>>())
    .load(conn)
    .await?;
    Ok(found
        .into_iter()
        .map(|f| ((f.source, f.event_id), f.id))
        .collect())
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
    /// The destinations a payload filter kept it from, each with why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filtered: Option<serde_json::Value>,
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
    pub traceparent: Option<String>,
    /// The destinations a payload filter kept it from, each with why.
    pub filtered: Option<serde_json::Value>,
}

/// What the database checks of an event in a search, a replay or the stream: every
/// field optional. (A search's `where` narrows these, [`crate::filter::Narrowing`], and
/// is evaluated on what they leave.)
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EventConditions {
    pub source: Option<String>,
    pub event_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type_prefix: Option<String>,
    /// Received at or after.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Received before.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// JSON documents the body contains (`@>`, the GIN index): events without a JSON
    /// body never match one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub contains: Vec<serde_json::Value>,
}

impl EventConditions {
    /// Events of `source` and of type `event_type`, where `invoice.*` asks for a prefix
    /// (as a destination's `event_types` do).
    pub fn of_type(source: Option<String>, event_type: Option<String>) -> Self {
        let (event_type, event_type_prefix) = match event_type {
            Some(pattern) => match pattern.strip_suffix('*') {
                Some(prefix) => (None, Some(prefix.to_string())),
                None => (Some(pattern), None),
            },
            None => (None, None),
        };
        Self {
            source,
            event_type,
            event_type_prefix,
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `query` narrowed to the events these conditions select.
    pub fn apply<'a, ST: 'a>(
        &self,
        mut query: events::BoxedQuery<'a, diesel::pg::Pg, ST>,
    ) -> events::BoxedQuery<'a, diesel::pg::Pg, ST> {
        use diesel::PgJsonbExpressionMethods;
        if let Some(source) = &self.source {
            query = query.filter(events::source.eq(source.clone()));
        }
        if let Some(event_type) = &self.event_type {
            query = query.filter(events::event_type.eq(event_type.clone()));
        }
        if let Some(prefix) = &self.event_type_prefix {
            query = query.filter(events::event_type.like(format!("{}%", escape_like(prefix))));
        }
        if let Some(since) = self.since {
            query = query.filter(events::received_at.ge(since));
        }
        if let Some(until) = self.until {
            query = query.filter(events::received_at.lt(until));
        }
        for document in &self.contains {
            query = query.filter(events::body.contains(document.clone()));
        }
        query
    }
}

/// Filters of the event list; every field optional.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub conditions: EventConditions,
    /// Events with at least one delivery in this status.
    pub status: Option<String>,
    /// Events with a delivery to this destination.
    pub destination: Option<String>,
    /// A prefix of the provider's event id.
    pub q: Option<String>,
    /// Keyset cursor: only events older than this id (ids are time-ordered UUIDv7).
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// An event a search found: its summary, and its body for a `where` to evaluate.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
pub struct Found {
    #[diesel(embed)]
    pub summary: EventSummary,
    pub body: Option<serde_json::Value>,
}

/// Newest first.
pub async fn list(conn: &mut AsyncPgConnection, filter: &EventFilter) -> QueryResult<Vec<Found>> {
    let mut query = filter.conditions.apply(
        events::table
            .select(Found::as_select())
            .order(events::id.desc())
            .limit(filter.limit)
            .into_boxed(),
    );
    if let Some(q) = &filter.q {
        query = query.filter(events::event_id.like(format!("{}%", escape_like(q))));
    }
    if let Some(before) = filter.before {
        query = query.filter(events::id.lt(before));
    }
    owed(query, filter.status.as_deref(), filter.destination.as_deref())
        .load(conn)
        .await
}

/// `query` narrowed to the events with a delivery in `status` and to `destination`
/// (`None`: either). Written out: diesel cannot box a subquery that reads the outer row.
pub fn owed<'a, ST: 'a>(
    query: events::BoxedQuery<'a, diesel::pg::Pg, ST>,
    status: Option<&str>,
    destination: Option<&str>,
) -> events::BoxedQuery<'a, diesel::pg::Pg, ST> {
    use diesel::sql_types::{Nullable, Text};
    if status.is_none() && destination.is_none() {
        return query;
    }
    query.filter(
        diesel::dsl::sql::<diesel::sql_types::Bool>(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.status = coalesce(",
        )
        .bind::<Nullable<Text>, _>(status.map(str::to_string))
        .sql(", d.status) AND d.destination = coalesce(")
        .bind::<Nullable<Text>, _>(destination.map(str::to_string))
        .sql(", d.destination))"),
    )
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

/// A place in the event stream: the storing transaction's id and the event's. Events
/// are streamed in this order, and only once every transaction before them has ended.
pub type StreamPosition = (i64, Uuid);

/// Where a stream that starts now begins: after every event committed so far, before
/// any transaction still running (its events are new to the stream).
pub async fn stream_start(conn: &mut AsyncPgConnection) -> QueryResult<StreamPosition> {
    #[derive(QueryableByName)]
    struct Horizon {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        xmin: i64,
    }
    let horizon: Horizon =
        diesel::sql_query("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin")
            .get_result(conn)
            .await?;
    Ok((horizon.xmin - 1, Uuid::max()))
}

/// The stream position of event `id` (a client's `Last-Event-ID`); `None` when it is
/// not stored, or was stored before the stream existed.
pub async fn stream_position_of(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<StreamPosition>> {
    let txid: Option<Option<i64>> = events::table
        .find(id)
        .select(events::txid)
        .first(conn)
        .await
        .optional()?;
    Ok(txid.flatten().map(|txid| (txid, id)))
}

/// The next `limit` stream positions after `after`, of events whose transaction ended
/// before the oldest one still running: a transaction that commits later has a larger
/// id than the horizon, so it can never land behind a position already passed.
pub async fn stream_next(
    conn: &mut AsyncPgConnection,
    after: StreamPosition,
    limit: i64,
) -> QueryResult<Vec<StreamPosition>> {
    #[derive(QueryableByName)]
    struct Position {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        txid: i64,
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
    }
    let positions: Vec<Position> = diesel::sql_query(
        "SELECT txid, id FROM events \
         WHERE (txid, id) > ($1, $2) AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
         ORDER BY txid, id LIMIT $3",
    )
    .bind::<diesel::sql_types::BigInt, _>(after.0)
    .bind::<diesel::sql_types::Uuid, _>(after.1)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(positions.into_iter().map(|p| (p.txid, p.id)).collect())
}

/// An event as the stream sends it, with its body for a `where` to evaluate.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
pub struct Streamed {
    #[diesel(embed)]
    pub event: Event,
    pub body: Option<serde_json::Value>,
}

/// The events among `ids` that `conditions` select and that have a delivery to
/// `destination` (if asked), in no particular order.
pub async fn stream_events(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    conditions: &EventConditions,
    destination: Option<&str>,
) -> QueryResult<Vec<Streamed>> {
    let query = conditions.apply(
        events::table
            .select(Streamed::as_select())
            .filter(events::id.eq_any(ids.to_vec()))
            .into_boxed(),
    );
    owed(query, None, destination).load(conn).await
}
