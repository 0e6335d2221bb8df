//! An operator's changes to deliveries: replayed (one by id, or a replay job's page)
//! back to `pending` with a fresh attempt budget, or skipped.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::schema::deliveries;

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

/// What a bulk replay selects. Event fields filter through the event.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplayFilter {
    pub status: Option<String>,
    pub destination: Option<String>,
    pub source: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl ReplayFilter {
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.destination.is_none()
            && self.source.is_none()
            && self.event_type.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// The ids of the replayable deliveries `filter` selects.
fn replayable(
    filter: &ReplayFilter,
) -> deliveries::BoxedQuery<'static, diesel::pg::Pg, diesel::sql_types::Uuid> {
    use super::DeliveryStatus;
    use crate::db::schema::events;
    let mut events_query = events::table.select(events::id).into_boxed();
    let mut by_event = false;
    if let Some(source) = &filter.source {
        events_query = events_query.filter(events::source.eq(source.clone()));
        by_event = true;
    }
    if let Some(event_type) = &filter.event_type {
        events_query = events_query.filter(events::event_type.eq(event_type.clone()));
        by_event = true;
    }
    if let Some(since) = filter.since {
        events_query = events_query.filter(events::received_at.ge(since));
        by_event = true;
    }
    if let Some(until) = filter.until {
        events_query = events_query.filter(events::received_at.lt(until));
        by_event = true;
    }
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
    if by_event {
        target = target.filter(deliveries::event_id.eq_any(events_query));
    }
    target
}

/// How many deliveries `filter` would replay now.
pub async fn count_replayable(conn: &mut AsyncPgConnection, filter: &ReplayFilter) -> QueryResult<i64> {
    replayable(filter).count().get_result(conn).await
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

/// One page of a replay job: the first `limit` matching deliveries after `after` (by
/// id), reset to `pending` with a fresh attempt budget (their attempts history stays,
/// and so does their event, and with it the `webhook-id` destinations see), in the
/// caller's transaction. Returns how many were reset and the last id looked at
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
