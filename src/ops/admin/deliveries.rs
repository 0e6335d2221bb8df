//! The admin API's deliveries: counts (`/stats`), the list, and one delivery replayed or
//! skipped by id.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{connection, cursor, limit, next_cursor, non_empty, parse_id, parse_status};
use crate::context::AppContext;
use crate::db::deliveries::{self, DeliveryFilter};
use crate::db::deliveries::{Delivery, DeliveryStatus};
use crate::db::events;
use crate::http_error::ApiError;

/// `GET /admin/api/stats`: deliveries by status and by destination, and the due backlog.
pub(super) async fn stats(ctx: web::Data<AppContext>) -> Result<HttpResponse, ApiError> {
    let mut conn = connection(&ctx).await?;
    let counts = deliveries::counts(&mut conn).await?;
    let due = deliveries::due_summary(&mut conn).await?;
    let oldest_event = events::oldest_received_at(&mut conn).await?;
    let mut by_status = serde_json::Map::new();
    for status in DeliveryStatus::ALL {
        by_status.insert(status.as_str().into(), 0.into());
    }
    let mut by_destination: std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>> =
        Default::default();
    for (destination, status, count) in counts {
        let total = by_status.get(&status).and_then(|v| v.as_i64()).unwrap_or(0) + count;
        by_status.insert(status.clone(), total.into());
        by_destination
            .entry(destination)
            .or_default()
            .insert(status, count.into());
    }
    Ok(HttpResponse::Ok().json(json!({
        "deliveries": by_status,
        "destinations": by_destination,
        "due": due.due,
        "oldest_due_age_seconds": due.oldest_due_age_seconds.unwrap_or(0.0),
        "oldest_event_received_at": oldest_event,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
    status: Option<String>,
    destination: Option<String>,
    /// An ordering key, as the event carries it.
    key: Option<String>,
    limit: Option<i64>,
    before: Option<String>,
}

/// `GET /admin/api/deliveries`: newest first, filtered, a keyset page.
pub(super) async fn list(
    ctx: web::Data<AppContext>,
    query: web::Query<DeliveriesQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let filter = DeliveryFilter {
        status: parse_status(&query.status)?,
        destination: non_empty(query.destination),
        ordering_key: non_empty(query.key).map(|k| crate::db::ordering::stored_key(&k)),
        before: cursor(query.before)?,
        limit: limit(query.limit)?,
    };
    let mut conn = connection(&ctx).await?;
    let page = deliveries::list(&mut conn, &filter).await?;
    let next_cursor = next_cursor(page.len(), filter.limit, page.last().map(|d| d.delivery.id));
    Ok(HttpResponse::Ok().json(json!({ "items": page, "next_cursor": next_cursor })))
}

/// `POST /admin/api/deliveries/{id}/replay`: one delivery back to `pending`.
pub(super) async fn replay(
    ctx: web::Data<AppContext>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "delivery id")?;
    let mut conn = connection(&ctx).await?;
    let replayed: Option<Delivery> = deliveries::replay_one(&mut conn, id).await?;
    match replayed {
        Some(delivery) => {
            ctx.wake.wake();
            tracing::info!(delivery.id = %id, "delivery replayed by an operator");
            Ok(HttpResponse::Accepted().json(delivery))
        }
        None => match deliveries::get(&mut conn, id).await? {
            None => Err(ApiError::NotFoundDetail(format!("no delivery {id}"))),
            Some(current) => Err(ApiError::Conflict(format!(
                "delivery is {} (in flight); only dead, delivered, retrying, quarantined or skipped deliveries are replayed",
                current.status
            ))),
        },
    }
}

/// `POST /admin/api/deliveries/{id}/skip`: the delivery is never sent (again), and its
/// key, when ordered, moves on.
pub(super) async fn skip(
    ctx: web::Data<AppContext>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "delivery id")?;
    let mut conn = connection(&ctx).await?;
    match deliveries::skip(&mut conn, id).await? {
        Some(skipped) => {
            if skipped.promoted > 0 {
                ctx.wake.wake();
            }
            tracing::info!(delivery.id = %id, key_moved_on = skipped.promoted > 0, "delivery skipped by an operator");
            Ok(HttpResponse::Ok().json(skipped.delivery))
        }
        None => match deliveries::get(&mut conn, id).await? {
            None => Err(ApiError::NotFoundDetail(format!("no delivery {id}"))),
            Some(current) => Err(ApiError::Conflict(format!(
                "delivery is {}; only {} deliveries are skipped",
                current.status,
                DeliveryStatus::SKIPPABLE.join(", ")
            ))),
        },
    }
}
