//! Reading deliveries for the admin API: filtered lists, an event's deliveries, one by
//! id, and counts by destination and status.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::schema::deliveries;

/// Filters of the delivery list.
#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    pub status: Option<String>,
    pub destination: Option<String>,
    /// Only this ordering key's, as stored ([`crate::db::ordering::stored_key`]).
    pub ordering_key: Option<String>,
    /// Keyset cursor: only deliveries older than this id (UUIDv7, time-ordered).
    pub before: Option<uuid::Uuid>,
    pub limit: i64,
}

/// A delivery with the event it carries.
#[derive(Debug, Clone, Queryable, serde::Serialize)]
pub struct DeliveryWithEvent {
    #[serde(flatten)]
    pub delivery: super::Delivery,
    pub source: String,
    #[serde(rename = "provider_event_id")]
    pub provider_event_id: String,
    pub event_type: String,
}

/// Newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &DeliveryFilter,
) -> QueryResult<Vec<DeliveryWithEvent>> {
    use super::Delivery;
    use crate::db::schema::events;
    let mut query = deliveries::table
        .inner_join(events::table)
        .select((
            Delivery::as_select(),
            events::source,
            events::event_id,
            events::event_type,
        ))
        .order(deliveries::id.desc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(status) = &filter.status {
        query = query.filter(deliveries::status.eq(status.clone()));
    }
    if let Some(destination) = &filter.destination {
        query = query.filter(deliveries::destination.eq(destination.clone()));
    }
    if let Some(key) = &filter.ordering_key {
        query = query.filter(deliveries::ordering_key.eq(key.clone()));
    }
    if let Some(before) = filter.before {
        query = query.filter(deliveries::id.lt(before));
    }
    query.load(conn).await
}

/// The deliveries of these events.
pub async fn for_events(
    conn: &mut AsyncPgConnection,
    event_ids: &[uuid::Uuid],
) -> QueryResult<Vec<super::Delivery>> {
    use super::Delivery;
    deliveries::table
        .filter(deliveries::event_id.eq_any(event_ids))
        .order(deliveries::destination)
        .select(Delivery::as_select())
        .load(conn)
        .await
}

pub async fn get(conn: &mut AsyncPgConnection, id: uuid::Uuid) -> QueryResult<Option<super::Delivery>> {
    use super::Delivery;
    deliveries::table
        .find(id)
        .select(Delivery::as_select())
        .first(conn)
        .await
        .optional()
}

/// Delivery counts by destination and status (an index-only scan of
/// `deliveries_destination_status_idx`).
pub async fn counts(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(String, String, i64)>> {
    deliveries::table
        .group_by((deliveries::destination, deliveries::status))
        .select((
            deliveries::destination,
            deliveries::status,
            diesel::dsl::count_star(),
        ))
        .load(conn)
        .await
}
