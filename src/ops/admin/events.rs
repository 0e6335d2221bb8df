//! The admin API's events: the list (filtered, with each event's deliveries) and one
//! event with its payload and every attempt.

use actix_web::{web, HttpResponse};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{connection, cursor, limit, non_empty, parse_id, parse_status, parse_time};
use crate::context::AppContext;
use crate::db::events::{self, EventConditions, EventFilter};
use crate::db::{attempts, deliveries};
use crate::http_error::ApiError;
use crate::search::{self, Search, Terms};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    source: Option<String>,
    event_type: Option<String>,
    status: Option<String>,
    destination: Option<String>,
    q: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// JSON the body contains ([`crate::search`]).
    #[serde(rename = "match")]
    matches: Option<String>,
    /// A filter-language expression the event satisfies.
    #[serde(rename = "where")]
    filter: Option<String>,
    limit: Option<i64>,
    before: Option<String>,
}

#[derive(Serialize)]
struct DeliverySummary {
    id: Uuid,
    destination: String,
    status: crate::db::deliveries::DeliveryStatus,
    attempts: i32,
    last_status_code: Option<i32>,
}

/// `GET /admin/api/events`: newest first, filtered, each with its deliveries.
pub(super) async fn list(
    ctx: web::Data<AppContext>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let search = Search::new(
        EventConditions {
            since: parse_time("since", query.since)?,
            until: parse_time("until", query.until)?,
            ..EventConditions::of_type(non_empty(query.source), non_empty(query.event_type))
        },
        Terms {
            matches: query.matches,
            filter: query.filter,
        },
    )?;
    let filter = EventFilter {
        status: parse_status(&query.status)?,
        destination: non_empty(query.destination),
        q: non_empty(query.q),
        before: cursor(query.before)?,
        limit: limit(query.limit)?,
        ..EventFilter::default()
    };
    let mut conn = connection(&ctx).await?;
    let found = search::page(&mut conn, &search, filter, ctx.config.database.query_timeout).await?;
    let page: Vec<_> = found.found.iter().map(|f| &f.summary).collect();
    let ids: Vec<Uuid> = page.iter().map(|e| e.id).collect();
    let mut by_event: std::collections::HashMap<Uuid, Vec<DeliverySummary>> = Default::default();
    for d in deliveries::for_events(&mut conn, &ids).await? {
        by_event.entry(d.event_id).or_default().push(DeliverySummary {
            id: d.id,
            destination: d.destination,
            status: d.status,
            attempts: d.attempts,
            last_status_code: d.last_status_code,
        });
    }
    let items: Vec<serde_json::Value> = found
        .found
        .iter()
        .map(|event| {
            let deliveries = by_event.remove(&event.summary.id).unwrap_or_default();
            let mut item = serde_json::to_value(&event.summary).unwrap_or_default();
            item["deliveries"] = serde_json::to_value(deliveries).unwrap_or_default();
            item["body_searchable"] = event.body.is_some().into();
            item
        })
        .collect();
    let mut answer = json!({ "items": items, "next_cursor": found.next_cursor });
    if !search.terms.is_empty() {
        // A `where` page that stopped at its budget says how far it read; every
        // payload search says what it cannot see.
        answer["scanned"] = found.scanned.into();
        answer["complete"] = found.complete.into();
        answer["not_searched"] = search::NOT_SEARCHED.into();
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// `GET /admin/api/events/{id}`: the event with its payload, headers, deliveries and
/// their attempts.
pub(super) async fn get(ctx: web::Data<AppContext>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "event id")?;
    let mut conn = connection(&ctx).await?;
    let event = events::get(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::NotFoundDetail(format!("no event {id}")))?;
    let event_deliveries = deliveries::for_events(&mut conn, &[id]).await?;
    let delivery_ids: Vec<Uuid> = event_deliveries.iter().map(|d| d.id).collect();
    let attempts = attempts::for_deliveries(&mut conn, &delivery_ids).await?;
    let (payload, encoding) = payload_text(event.payload);
    let deliveries: Vec<serde_json::Value> = event_deliveries
        .into_iter()
        .map(|d| {
            let own: Vec<&attempts::Attempt> = attempts.iter().filter(|a| a.delivery_id == d.id).collect();
            let mut item = serde_json::to_value(&d).unwrap_or_default();
            item["attempt_history"] = serde_json::to_value(own).unwrap_or_default();
            item
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "id": event.id,
        "source": event.source,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "received_at": event.received_at,
        "content_type": event.content_type,
        "headers": event.headers,
        "trace_id": event.traceparent.as_deref().and_then(crate::telemetry::context::trace_id),
        "payload": payload,
        "payload_encoding": encoding,
        "deliveries": deliveries,
        // The destinations that subscribe to it but whose payload filter refused it,
        // each with why ("no match", or the evaluation's error).
        "filtered": event.filtered.unwrap_or_else(|| json!({})),
    })))
}

/// A payload as JSON can carry it: its text when it is UTF-8, else base64; and which.
pub(super) fn payload_text(payload: Vec<u8>) -> (String, &'static str) {
    match String::from_utf8(payload) {
        Ok(text) => (text, "utf-8"),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
            "base64",
        ),
    }
}
