//! The admin API (`/admin/api/…`, JSON) and the dashboard page (`/admin/`).
//!
//! Mounted on the ops listener only when `ops.admin_token` is set; otherwise the whole
//! `/admin` tree is the listener's JSON 404. Every API request needs
//! `Authorization: Bearer <token>`, compared in constant time; a missing or wrong token
//! is 401. The dashboard page itself holds no data (it asks for the token and calls the
//! API), so the browser can load it without a header. Malformed ids, unknown query
//! parameters and bad cursors are 400; unknown ids 404.

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::context::AppContext;
use crate::db::deliveries::{self, DeliveryFilter, ReplayFilter};
use crate::db::destinations;
use crate::db::events::{self, EventFilter};
use crate::db::models::{Delivery, DeliveryStatus};
use crate::db::replay_jobs;
use crate::db::{attempts, PooledConnection};
use crate::http_error::ApiError;
use crate::signing::TokenMatcher;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// The dashboard: one page with its styles inline, and its script, both embedded in
/// the binary. The script is its own resource so that the page's policy allows no
/// inline script at all.
const DASHBOARD: &str = include_str!("dashboard.html");
const DASHBOARD_SCRIPT: &str = include_str!("dashboard.js");

/// Mounts `/admin` when a token is configured.
pub fn configure(cfg: &mut web::ServiceConfig, ctx: &AppContext) {
    let Some(token) = &ctx.config.ops.admin_token else {
        return;
    };
    let matcher = match TokenMatcher::new(token.expose().as_bytes()) {
        Ok(matcher) => Arc::new(matcher),
        Err(_) => {
            tracing::error!("no randomness for the admin token check; the admin API stays disabled");
            return;
        }
    };
    cfg.app_data(
        web::QueryConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
    )
    .app_data(web::PathConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()))
    .app_data(web::JsonConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()))
    .route("/admin", web::get().to(redirect_to_dashboard))
    .route("/admin/", web::get().to(dashboard))
    .route("/admin/dashboard.js", web::get().to(dashboard_script))
    .service(
        web::scope("/admin/api")
            // The token is checked here, before any handler's query, path or body is
            // parsed: without it every request is a 401, whatever else is wrong with it.
            .wrap_fn(move |request, service| {
                use actix_web::dev::Service as _;
                match authorize(request.request(), &matcher) {
                    Ok(()) => futures_util::future::Either::Left(service.call(request)),
                    Err(refused) => futures_util::future::Either::Right(std::future::ready(Ok(
                        request.error_response(refused)
                    ))),
                }
            })
            .route("/stats", web::get().to(stats))
            .route("/events", web::get().to(list_events))
            .route("/events/{id}", web::get().to(get_event))
            .route("/deliveries", web::get().to(list_deliveries))
            .route("/deliveries/{id}/replay", web::post().to(replay_one))
            .route("/deliveries/{id}/skip", web::post().to(skip_one))
            .route("/replay", web::post().to(replay_many))
            .route("/replays", web::post().to(create_replay_job))
            .route("/replays", web::get().to(list_replay_jobs))
            .route("/replays/{id}", web::get().to(get_replay_job))
            .route("/replays/{id}/cancel", web::post().to(cancel_replay_job))
            .route("/destinations", web::get().to(list_destinations))
            .route("/destinations/{name}/pause", web::post().to(pause_destination))
            .route("/destinations/{name}/resume", web::post().to(resume_destination))
            .route("/reload", web::post().to(reload))
            .default_service(web::to(crate::listener::not_found)),
    );
}

/// `POST /admin/api/reload`: what SIGHUP does ([`crate::reload`]), answered. The reload
/// logs its own line, so a refusal is answered here without another.
async fn reload(ctx: web::Data<AppContext>) -> HttpResponse {
    use crate::reload::{Refused, Reloaded};
    match ctx.live.reload("admin API").await {
        Ok(Reloaded { changed }) => {
            HttpResponse::Ok().json(json!({ "status": "reloaded", "changed": changed }))
        }
        Err(refused) => {
            let (status, code) = match &refused {
                Refused::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_configuration"),
                Refused::NeedsRestart(_) => (StatusCode::CONFLICT, "needs_restart"),
                Refused::NoFile => (StatusCode::CONFLICT, "no_configuration_file"),
            };
            let keys = match &refused {
                Refused::NeedsRestart(keys) => keys.clone(),
                _ => Vec::new(),
            };
            HttpResponse::build(status)
                .json(json!({ "error": code, "message": refused.to_string(), "keys": keys }))
        }
    }
}

async fn redirect_to_dashboard() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/admin/"))
        .finish()
}

async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The page loads nothing from elsewhere and may not be framed.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ))
        .body(DASHBOARD)
}

async fn dashboard_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(DASHBOARD_SCRIPT)
}

/// Checks `Authorization: Bearer <token>`.
fn authorize(request: &HttpRequest, matcher: &TokenMatcher) -> Result<(), ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if matcher.matches(presented.trim().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

async fn connection(ctx: &AppContext) -> Result<PooledConnection, ApiError> {
    ctx.pool
        .get()
        .await
        .map_err(|e| ApiError::Unavailable(anyhow::Error::new(e).context("getting a database connection")))
}

fn storage(e: diesel::result::Error) -> ApiError {
    ApiError::Unavailable(anyhow::Error::new(e).context("admin query"))
}

fn parse_id(text: &str, what: &str) -> Result<Uuid, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("{what} is not a valid id: {text:?}")))
}

fn parse_status(text: &Option<String>) -> Result<Option<String>, ApiError> {
    match text.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => DeliveryStatus::parse(s)
            .map(|s| Some(s.as_str().to_string()))
            .ok_or_else(|| ApiError::BadRequest(format!("unknown status {s:?}"))),
    }
}

fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit must be 1..={MAX_LIMIT}, not {n}"
        ))),
    }
}

/// The keyset cursor `before`: an id from a previous page's `next_cursor`.
fn cursor(before: Option<String>) -> Result<Option<Uuid>, ApiError> {
    non_empty(before)
        .map(|c| parse_id(&c, "before (cursor)"))
        .transpose()
}

/// A full page may have more after it: its last id is the next page's cursor.
fn next_cursor(len: usize, limit: i64, last: Option<Uuid>) -> Option<Uuid> {
    (len as i64 == limit).then_some(last).flatten()
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

// ---- stats ---------------------------------------------------------------------

async fn stats(ctx: web::Data<AppContext>) -> Result<HttpResponse, ApiError> {
    let mut conn = connection(&ctx).await?;
    let counts = deliveries::counts(&mut conn).await.map_err(storage)?;
    let due = deliveries::due_summary(&mut conn).await.map_err(storage)?;
    let oldest_event = events::oldest_received_at(&mut conn).await.map_err(storage)?;
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

// ---- destinations ----------------------------------------------------------------

/// A destination as the API shows it: its shared state and backlog, and this process's
/// in-flight limit when it runs a worker (`null` otherwise: the limit is per worker).
#[derive(Serialize)]
struct DestinationView {
    #[serde(flatten)]
    overview: destinations::Overview,
    in_flight_limit: Option<i64>,
    max_in_flight: usize,
    /// The configured `rate_limit` (across all workers), if any.
    rate_limit: Option<String>,
}

async fn destination_views(ctx: &AppContext, names: &[String]) -> Result<Vec<DestinationView>, ApiError> {
    let mut conn = connection(ctx).await?;
    let overviews = destinations::overview(&mut conn, names).await.map_err(storage)?;
    let delivered = ctx.live.current().delivered_destinations();
    Ok(overviews
        .into_iter()
        .map(|overview| {
            let config = delivered.iter().find(|d| d.name == overview.name);
            DestinationView {
                in_flight_limit: ctx.metrics.current_in_flight_limit(&overview.name),
                max_in_flight: config.map_or(0, |d| d.max_in_flight),
                rate_limit: config.and_then(|d| d.rate_limit).map(|r| r.to_string()),
                overview,
            }
        })
        .collect())
}

async fn list_destinations(ctx: web::Data<AppContext>) -> Result<HttpResponse, ApiError> {
    let names: Vec<String> = ctx
        .live
        .current()
        .delivered_destinations()
        .into_iter()
        .map(|d| d.name)
        .collect();
    let items = destination_views(&ctx, &names).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// The configured destination `name`, or 404.
fn configured(ctx: &AppContext, name: &str) -> Result<String, ApiError> {
    ctx.live
        .current()
        .delivered_destinations()
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.name.clone())
        .ok_or_else(|| ApiError::NotFoundDetail(format!("no destination {name:?} is configured")))
}

async fn pause_destination(
    ctx: web::Data<AppContext>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change_destination(&ctx, &name, Change::Pause).await
}

async fn resume_destination(
    ctx: web::Data<AppContext>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change_destination(&ctx, &name, Change::Resume).await
}

/// What an operator does to a destination.
#[derive(Debug, Clone, Copy)]
enum Change {
    Pause,
    Resume,
}

/// Pauses or resumes the configured destination `name`; answers with its view.
async fn change_destination(ctx: &AppContext, name: &str, change: Change) -> Result<HttpResponse, ApiError> {
    let name = configured(ctx, name)?;
    {
        let mut conn = connection(ctx).await?;
        let changed = match change {
            Change::Pause => destinations::pause(&mut conn, &name).await,
            Change::Resume => destinations::resume(&mut conn, &name).await,
        }
        .map_err(storage)?;
        if changed.is_some() {
            tracing::warn!(destination = %name, ?change, "destination changed by an operator");
        }
    }
    let view = destination_views(ctx, std::slice::from_ref(&name)).await?;
    Ok(HttpResponse::Ok().json(&view[0]))
}

// ---- events --------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    source: Option<String>,
    event_type: Option<String>,
    status: Option<String>,
    q: Option<String>,
    limit: Option<i64>,
    before: Option<String>,
}

#[derive(Serialize)]
struct DeliverySummary {
    id: Uuid,
    destination: String,
    status: String,
    attempts: i32,
    last_status_code: Option<i32>,
}

async fn list_events(
    ctx: web::Data<AppContext>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let filter = EventFilter {
        source: non_empty(query.source),
        event_type: non_empty(query.event_type),
        status: parse_status(&query.status)?,
        q: non_empty(query.q),
        before: cursor(query.before)?,
        limit: limit(query.limit)?,
    };
    let mut conn = connection(&ctx).await?;
    let page = events::list(&mut conn, &filter).await.map_err(storage)?;
    let ids: Vec<Uuid> = page.iter().map(|e| e.id).collect();
    let mut by_event: std::collections::HashMap<Uuid, Vec<DeliverySummary>> = Default::default();
    for d in deliveries::for_events(&mut conn, &ids).await.map_err(storage)? {
        by_event.entry(d.event_id).or_default().push(DeliverySummary {
            id: d.id,
            destination: d.destination,
            status: d.status,
            attempts: d.attempts,
            last_status_code: d.last_status_code,
        });
    }
    let next_cursor = next_cursor(page.len(), filter.limit, page.last().map(|e| e.id));
    let items: Vec<serde_json::Value> = page
        .into_iter()
        .map(|event| {
            let deliveries = by_event.remove(&event.id).unwrap_or_default();
            let mut item = serde_json::to_value(&event).unwrap_or_default();
            item["deliveries"] = serde_json::to_value(deliveries).unwrap_or_default();
            item
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": next_cursor })))
}

async fn get_event(ctx: web::Data<AppContext>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "event id")?;
    let mut conn = connection(&ctx).await?;
    let event = events::get(&mut conn, id)
        .await
        .map_err(storage)?
        .ok_or_else(|| ApiError::NotFoundDetail(format!("no event {id}")))?;
    let event_deliveries = deliveries::for_events(&mut conn, &[id]).await.map_err(storage)?;
    let delivery_ids: Vec<Uuid> = event_deliveries.iter().map(|d| d.id).collect();
    let attempts = attempts::for_deliveries(&mut conn, &delivery_ids)
        .await
        .map_err(storage)?;
    let (payload, encoding) = match String::from_utf8(event.payload) {
        Ok(text) => (text, "utf-8"),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
            "base64",
        ),
    };
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
    })))
}

// ---- deliveries ----------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    status: Option<String>,
    destination: Option<String>,
    /// An ordering key, as the event carries it.
    key: Option<String>,
    limit: Option<i64>,
    before: Option<String>,
}

async fn list_deliveries(
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
    let page = deliveries::list(&mut conn, &filter).await.map_err(storage)?;
    let next_cursor = next_cursor(page.len(), filter.limit, page.last().map(|d| d.delivery.id));
    Ok(HttpResponse::Ok().json(json!({ "items": page, "next_cursor": next_cursor })))
}

async fn replay_one(ctx: web::Data<AppContext>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "delivery id")?;
    let mut conn = connection(&ctx).await?;
    let replayed: Option<Delivery> = deliveries::replay_one(&mut conn, id).await.map_err(storage)?;
    match replayed {
        Some(delivery) => {
            ctx.wake.wake();
            tracing::info!(delivery.id = %id, "delivery replayed by an operator");
            Ok(HttpResponse::Accepted().json(delivery))
        }
        None => match deliveries::get(&mut conn, id).await.map_err(storage)? {
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
async fn skip_one(ctx: web::Data<AppContext>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "delivery id")?;
    let mut conn = connection(&ctx).await?;
    match deliveries::skip(&mut conn, id).await.map_err(storage)? {
        Some(skipped) => {
            if skipped.promoted > 0 {
                ctx.wake.wake();
            }
            tracing::info!(delivery.id = %id, key_moved_on = skipped.promoted > 0, "delivery skipped by an operator");
            Ok(HttpResponse::Ok().json(skipped.delivery))
        }
        None => match deliveries::get(&mut conn, id).await.map_err(storage)? {
            None => Err(ApiError::NotFoundDetail(format!("no delivery {id}"))),
            Some(current) => Err(ApiError::Conflict(format!(
                "delivery is {}; only {} deliveries are skipped",
                current.status,
                crate::db::models::DeliveryStatus::SKIPPABLE.join(", ")
            ))),
        },
    }
}

/// Body of `POST /admin/api/replay`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub status: Option<String>,
    pub destination: Option<String>,
    pub source: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Required (and alone) to replay every replayable delivery.
    #[serde(default)]
    pub all: bool,
}

impl ReplayRequest {
    /// The database filter; refuses an empty filter unless `all` says so.
    pub fn into_filter(self) -> Result<ReplayFilter, String> {
        let status = match self.status.as_deref() {
            None => None,
            Some(s) if DeliveryStatus::REPLAYABLE.contains(&s) => Some(s.to_string()),
            Some(s) => {
                return Err(format!(
                    "status {s:?} cannot be replayed (one of: {})",
                    DeliveryStatus::REPLAYABLE.join(", ")
                ))
            }
        };
        let filter = ReplayFilter {
            status,
            destination: non_empty(self.destination),
            source: non_empty(self.source),
            event_type: non_empty(self.event_type),
            since: self.since,
            until: self.until,
        };
        match (filter.is_empty(), self.all) {
            (true, false) => Err(
                "an empty filter would replay everything: ask for it explicitly (\"all\": true, or --all)"
                    .into(),
            ),
            (false, true) => Err("\"all\" cannot be combined with other filters".into()),
            _ => Ok(filter),
        }
    }
}

async fn replay_many(
    ctx: web::Data<AppContext>,
    body: web::Json<ReplayRequest>,
) -> Result<HttpResponse, ApiError> {
    let filter = body.into_inner().into_filter().map_err(ApiError::BadRequest)?;
    let mut conn = connection(&ctx).await?;
    let replayed = deliveries::replay(&mut conn, &filter).await.map_err(storage)?;
    if replayed > 0 {
        ctx.wake.wake();
    }
    tracing::info!(replayed, ?filter, "bulk replay by an operator");
    Ok(HttpResponse::Ok().json(json!({ "replayed": replayed })))
}

// ---- replay jobs -----------------------------------------------------------------

/// Body of `POST /admin/api/replays`: the filter of `POST /replay`, a rate, and
/// whether only to count. Its fields are spelled out rather than a flattened
/// [`ReplayRequest`]: serde does not refuse unknown keys through a flatten, and a
/// misspelt filter key must not widen a replay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayJobRequest {
    pub status: Option<String>,
    pub destination: Option<String>,
    pub source: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub all: bool,
    /// Deliveries replayed per second at most (1 to 100,000); unset: as fast as pages go.
    pub max_rate: Option<i32>,
    /// Count the matching deliveries and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl ReplayJobRequest {
    /// The filter (see [`ReplayRequest::into_filter`]) and the checked rate.
    pub fn into_parts(self) -> Result<(ReplayFilter, Option<i32>, bool), String> {
        if let Some(rate) = self.max_rate {
            if !(1..=MAX_REPLAY_RATE).contains(&rate) {
                return Err(format!(
                    "max_rate must be between 1 and {MAX_REPLAY_RATE} deliveries a second"
                ));
            }
        }
        let filter = ReplayRequest {
            status: self.status,
            destination: self.destination,
            source: self.source,
            event_type: self.event_type,
            since: self.since,
            until: self.until,
            all: self.all,
        }
        .into_filter()?;
        Ok((filter, self.max_rate, self.dry_run))
    }
}

/// The highest `max_rate` a replay job takes.
pub const MAX_REPLAY_RATE: i32 = 100_000;

/// A job as the API shows it: its row and its progress.
fn job_view(job: &replay_jobs::ReplayJob) -> serde_json::Value {
    let mut view = serde_json::to_value(job).unwrap_or_default();
    view["progress"] = json!(job.progress());
    view
}

/// `POST /admin/api/replays`: `200 {dry_run, matching}` for a dry run, else `202`
/// with the new job, which the relays work in the background.
async fn create_replay_job(
    ctx: web::Data<AppContext>,
    body: web::Json<ReplayJobRequest>,
) -> Result<HttpResponse, ApiError> {
    let (filter, max_rate, dry_run) = body.into_inner().into_parts().map_err(ApiError::BadRequest)?;
    let mut conn = connection(&ctx).await?;
    if dry_run {
        let matching = deliveries::count_replayable(&mut conn, &filter)
            .await
            .map_err(storage)?;
        return Ok(HttpResponse::Ok().json(json!({ "dry_run": true, "matching": matching })));
    }
    let job = replay_jobs::create(&mut conn, &filter, max_rate)
        .await
        .map_err(storage)?;
    tracing::info!(job = %job.id, matching = job.matching, ?max_rate, ?filter, "replay job created by an operator");
    Ok(HttpResponse::Accepted().json(job_view(&job)))
}

async fn list_replay_jobs(ctx: web::Data<AppContext>) -> Result<HttpResponse, ApiError> {
    let mut conn = connection(&ctx).await?;
    let jobs = replay_jobs::list(&mut conn, 50).await.map_err(storage)?;
    Ok(HttpResponse::Ok().json(json!({ "items": jobs.iter().map(job_view).collect::<Vec<_>>() })))
}

async fn get_replay_job(ctx: web::Data<AppContext>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "replay job id")?;
    let mut conn = connection(&ctx).await?;
    match replay_jobs::get(&mut conn, id).await.map_err(storage)? {
        Some(job) => Ok(HttpResponse::Ok().json(job_view(&job))),
        None => Err(ApiError::NotFoundDetail(format!("no replay job {id}"))),
    }
}

/// `POST /admin/api/replays/{id}/cancel`: the job stops after the page in hand (what
/// it replayed stays replayed); `409` when it had already ended.
async fn cancel_replay_job(
    ctx: web::Data<AppContext>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "replay job id")?;
    let mut conn = connection(&ctx).await?;
    match replay_jobs::cancel(&mut conn, id).await.map_err(storage)? {
        None => Err(ApiError::NotFoundDetail(format!("no replay job {id}"))),
        Some(job) if job.status == replay_jobs::CANCELLED => {
            tracing::info!(job = %id, replayed = job.replayed, "replay job cancelled by an operator");
            Ok(HttpResponse::Ok().json(job_view(&job)))
        }
        Some(job) => Err(ApiError::Conflict(format!("replay job {id} is {}", job.status))),
    }
}
