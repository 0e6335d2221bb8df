//! An operator's changes to deliveries: replayed (one by id, or a replay job's page)
//! back to `pending` with a fresh attempt budget, or skipped.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::events::EventConditions;
use crate::db::schema::deliveries;
use crate::filter::{Filter, Outcome};

/// The changes of a replay: back to `pending`, due now, with a fresh attempt budget.
/// (A macro because diesel's changeset tuple type is unwieldy to name.)
macro_rules! replay_reset {
    () => {
        (
            deliveries::status.eq(super::DeliveryStatus::Pending.as_str()),
            deliveries::attempts.eq(0),
            deliveries::next_attempt_at.eq(diesel::dsl::now),
            deliveries::lease_until.eq(None::<chrono::DateTime<chrono::Utc>>),
            deliveries::delivered_at.eq(None::<chrono::DateTime<chrono::Utc>>),
            deliveries::updated_at.eq(diesel::dsl::now),
        )
    };
}

/// What a bulk replay selects: the deliveries' fields, the database's conditions on
/// their events ([`crate::search::Search`] built them: the fields asked, the `match`
/// document and what the `where` requires), and the `where` itself, evaluated here on
/// the events those conditions leave. Stored with a replay job as JSON (the event
/// fields at the top level, as jobs stored before searches have them).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplayFilter {
    pub status: Option<String>,
    pub destination: Option<String>,
    #[serde(flatten)]
    pub conditions: EventConditions,
    /// The `match` as asked, shown back (its document is in `conditions`).
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// The `where` expression in the payload-filter language.
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

impl ReplayFilter {
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.destination.is_none()
            && self.conditions.is_empty()
            && self.filter.is_none()
    }

    /// The `where`, compiled (it was checked when the replay was asked for).
    fn compiled(&self) -> QueryResult<Option<Filter>> {
        self.filter
            .as_deref()
            .map(Filter::compile)
            .transpose()
            .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))
    }
}

/// The ids of the replayable deliveries whose fields and events' conditions match
/// `filter` (its `where` is not evaluated here).
fn replayable(
    filter: &ReplayFilter,
) -> deliveries::BoxedQuery<'static, diesel::pg::Pg, diesel::sql_types::Uuid> {
    use super::DeliveryStatus;
    use crate::db::schema::events;
    let mut target = deliveries::table
        .select(deliveries::id)
        .filter(deliveries::status.eq_any(DeliveryStatus::REPLAYABLE))
        .into_boxed();
    if let Some(status) = &filter.status {
        target = target.filter(deliveries::status.eq(status.clone()));
    }
    if let Some(destination) = &filter.destination {
        target = target.filter(deliveries::destination.eq(destination.clone()));
    }
    if !filter.conditions.is_empty() {
        let events_query = filter
            .conditions
            .apply(events::table.select(events::id).into_boxed());
        target = target.filter(deliveries::event_id.eq_any(events_query));
    }
    target
}

/// The deliveries among `ids` whose event `where_` accepts (all of them without one).
async fn accepted(
    conn: &mut AsyncPgConnection,
    ids: Vec<uuid::Uuid>,
    where_: Option<&Filter>,
) -> QueryResult<Vec<uuid::Uuid>> {
    use crate::db::schema::events;
    let Some(where_) = where_ else { return Ok(ids) };
    let candidates: Vec<(uuid::Uuid, Option<serde_json::Value>, String, String)> = deliveries::table
        .inner_join(events::table)
        .filter(deliveries::id.eq_any(ids))
        .select((deliveries::id, events::body, events::source, events::event_type))
        .load(conn)
        .await?;
    Ok(candidates
        .into_iter()
        .filter(|(_, body, source, event_type)| {
            where_.evaluate(body.as_ref(), source, event_type) == Outcome::Match
        })
        .map(|(id, ..)| id)
        .collect())
}

/// Candidates a count with a `where` evaluates at most.
pub const COUNT_BUDGET: usize = 200_000;

/// Candidates read per statement by a count with a `where`.
const COUNT_CHUNK: i64 = 1_000;

/// How many deliveries a replay would reset now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counted {
    pub matching: i64,
    /// False when a `where` had more than [`COUNT_BUDGET`] candidates to evaluate:
    /// `matching` counts those evaluated, and the replay itself reads them all.
    pub complete: bool,
}

/// How many deliveries `filter` would replay now.
pub async fn count_replayable(conn: &mut AsyncPgConnection, filter: &ReplayFilter) -> QueryResult<Counted> {
    let Some(where_) = filter.compiled()? else {
        let matching = replayable(filter).count().get_result(conn).await?;
        return Ok(Counted {
            matching,
            complete: true,
        });
    };
    let (mut matching, mut scanned, mut after) = (0, 0, None);
    loop {
        let mut chunk = replayable(filter).order(deliveries::id).limit(COUNT_CHUNK);
        if let Some(after) = after {
            chunk = chunk.filter(deliveries::id.gt(after));
        }
        let ids: Vec<uuid::Uuid> = chunk.load(conn).await?;
        let exhausted = ids.len() < COUNT_CHUNK as usize;
        scanned += ids.len();
        after = ids.last().copied();
        matching += accepted(conn, ids, Some(&where_)).await?.len() as i64;
        if exhausted || scanned >= COUNT_BUDGET {
            return Ok(Counted {
                matching,
                complete: exhausted,
            });
        }
    }
}

/// Resets the deliveries among `target` that are still replayable, handing ordered
/// ones to the end of their key; returns how many.
async fn reset(
    conn: &mut AsyncPgConnection,
    target: deliveries::BoxedQuery<'static, diesel::pg::Pg, diesel::sql_types::Uuid>,
) -> QueryResult<usize> {
    use super::DeliveryStatus;
    // Diesel cannot update through a boxed (dynamically filtered) query: select the ids
    // with it instead. The outer status check keeps rows that moved meanwhile out.
    let replayed: Vec<(uuid::Uuid, bool)> = diesel::update(
        deliveries::table
            .filter(deliveries::id.eq_any(target))
            .filter(deliveries::status.eq_any(DeliveryStatus::REPLAYABLE)),
    )
    .set(replay_reset!())
    .returning((deliveries::id, deliveries::ordering_key.is_not_null()))
    .get_results(conn)
    .await?;
    let ordered: Vec<uuid::Uuid> = replayed.iter().filter(|(_, o)| *o).map(|(id, _)| *id).collect();
    crate::db::ordering::requeue_replayed(conn, &ordered).await?;
    Ok(replayed.len())
}

/// One page of a replay job: of the first `limit` deliveries after `after` (by id)
/// that the database's conditions select, those whose event the `where` accepts, reset
/// to `pending` with a fresh attempt budget (their attempts history stays, and so does
/// their event, and with it the `webhook-id` destinations see), in the caller's
/// transaction. Returns how many were reset and the last id looked at
/// (`None`: nothing matched after `after`; the job is done). A delivery reset stays
/// behind the cursor, so a page never meets it again. The relays are woken by the
/// caller once this is committed ([`crate::wake`]).
pub async fn replay_page(
    conn: &mut AsyncPgConnection,
    filter: &ReplayFilter,
    after: Option<uuid::Uuid>,
    limit: i64,
) -> QueryResult<(usize, Option<uuid::Uuid>)> {
    let mut page = replayable(filter).order(deliveries::id).limit(limit);
    if let Some(after) = after {
        page = page.filter(deliveries::id.gt(after));
    }
    let ids: Vec<uuid::Uuid> = page.load(conn).await?;
    let Some(last) = ids.last().copied() else {
        return Ok((0, None));
    };
    let ids = accepted(conn, ids, filter.compiled()?.as_ref()).await?;
    let target = deliveries::table
        .select(deliveries::id)
        .filter(deliveries::id.eq_any(ids))
        .into_boxed();
    Ok((reset(conn, target).await?, Some(last)))
}

/// Replays one delivery (see [`replay_page`]). `Ok(None)` when it is not replayable now.
pub async fn replay_one(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
) -> QueryResult<Option<super::Delivery>> {
    use crate::db::deliveries::{Delivery, DeliveryStatus};
    use diesel_async::AsyncConnection;
    conn.transaction(async |conn| {
        let replayed: Option<Delivery> = diesel::update(
            deliveries::table
                .filter(deliveries::id.eq(id))
                .filter(deliveries::status.eq_any(DeliveryStatus::REPLAYABLE)),
        )
        .set(replay_reset!())
        .returning(Delivery::as_returning())
        .get_result(conn)
        .await
        .optional()?;
        match replayed {
            Some(delivery) if delivery.ordering_key.is_some() => {
                crate::db::ordering::requeue_replayed(conn, &[id]).await?;
                super::get(conn, id).await
            }
            other => Ok(other),
        }
    })
    .await
}

/// Skips one delivery: it is never sent (again), and its key, if it is ordered and
/// this was its turn, moves on to its next delivery — the operator's way past a
/// delivery that holds its key (dead while the key blocks on dead, or retrying). A
/// delivery being sent now cannot be skipped, nor one that has ended. `Ok(None)` when
/// it is not skippable; the caller wakes the relays when `promoted` is more than 0.
pub async fn skip(conn: &mut AsyncPgConnection, id: uuid::Uuid) -> QueryResult<Option<Skipped>> {
    use crate::db::deliveries::{Delivery, DeliveryStatus};
    use diesel_async::AsyncConnection;
    conn.transaction(async |conn| {
        let skipped: Option<Delivery> = diesel::update(
            deliveries::table
                .filter(deliveries::id.eq(id))
                .filter(deliveries::status.eq_any(DeliveryStatus::SKIPPABLE)),
        )
        .set((
            deliveries::status.eq(DeliveryStatus::Skipped.as_str()),
            deliveries::lease_until.eq(None::<chrono::DateTime<chrono::Utc>>),
            deliveries::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Delivery::as_returning())
        .get_result(conn)
        .await
        .optional()?;
        let Some(delivery) = skipped else {
            return Ok(None);
        };
        let promoted = if delivery.ordering_key.is_some() {
            crate::db::ordering::release_and_promote(conn, &[id]).await?
        } else {
            0
        };
        Ok(Some(Skipped { delivery, promoted }))
    })
    .await
}

/// A skipped delivery, and how many deliveries of its key became pending.
#[derive(Debug)]
pub struct Skipped {
    pub delivery: super::Delivery,
    pub promoted: usize,
}
