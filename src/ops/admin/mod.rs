//! The admin API (`/admin/api/…`, JSON) and the dashboard page (`/admin/`).
//!
//! Mounted on the ops listener only when `ops.admin_token` is set; otherwise the whole
//! `/admin` tree is the listener's JSON 404. Every API request needs
//! `Authorization: Bearer <token>`, compared in constant time; a missing or wrong token
//! is 401. The dashboard page itself holds no data (it asks for the token and calls the
//! API), so the browser can load it without a header. Malformed ids, unknown query
//! parameters and bad cursors are 400; unknown ids 404. This module mounts the routes
//! and holds what every endpoint shares; each resource's handlers are in a module of
//! their own (events, the event stream, deliveries, destinations, replays).

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use uuid::Uuid;

use crate::context::AppContext;
use crate::db::deliveries::DeliveryStatus;
use crate::db::PooledConnection;
use crate::http_error::ApiError;
use crate::signing::TokenMatcher;

mod deliveries;
mod destinations;
mod events;
mod replays;
mod stream;

pub use stream::Streams;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// The dashboard: one page with its styles inline, and its script, both embedded in
/// the binary. The script is its own resource so that the page's policy allows no
/// inline script at all.
const DASHBOARD: &str = include_str!("dashboard.html");
const DASHBOARD_SCRIPT: &str = include_str!("dashboard.js");

/// Mounts `/admin` when a token is configured.
pub fn configure(cfg: &mut web::ServiceConfig, ctx: &AppContext, streams: &Streams) {
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
    .app_data(web::Data::new(streams.clone()))
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
            .route("/stats", web::get().to(deliveries::stats))
            .route("/events", web::get().to(events::list))
            .route("/events/stream", web::get().to(stream::stream))
            .route("/events/{id}", web::get().to(events::get))
            .route("/deliveries", web::get().to(deliveries::list))
            .route("/deliveries/{id}/replay", web::post().to(deliveries::replay))
            .route("/deliveries/{id}/skip", web::post().to(deliveries::skip))
            .route("/replay", web::post().to(replays::replay_now))
            .route("/replays", web::post().to(replays::create))
            .route("/replays", web::get().to(replays::list))
            .route("/replays/{id}", web::get().to(replays::get))
            .route("/replays/{id}/cancel", web::post().to(replays::cancel))
            .route("/destinations", web::get().to(destinations::list))
            .route("/destinations/{name}/pause", web::post().to(destinations::pause))
            .route(
                "/destinations/{name}/resume",
                web::post().to(destinations::resume),
            )
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

/// A connection from the synchronous pool (admin changes are committed as ingest's are).
pub(super) async fn connection(ctx: &AppContext) -> Result<PooledConnection, ApiError> {
    Ok(ctx.pool.get().await?)
}

pub(super) fn parse_id(text: &str, what: &str) -> Result<Uuid, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("{what} is not a valid id: {text:?}")))
}

pub(super) fn parse_status(text: &Option<String>) -> Result<Option<String>, ApiError> {
    match text.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => DeliveryStatus::parse(s)
            .map(|s| Some(s.as_str().to_string()))
            .ok_or_else(|| ApiError::BadRequest(format!("unknown status {s:?}"))),
    }
}

/// `since`/`until`: an RFC 3339 time (`2026-12-07T10:00:00Z`).
pub(super) fn parse_time(
    name: &str,
    text: Option<String>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    non_empty(text)
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(&t)
                .map(|at| at.with_timezone(&chrono::Utc))
                .map_err(|e| ApiError::BadRequest(format!("{name} is not an RFC 3339 time ({e}): {t:?}")))
        })
        .transpose()
}

pub(super) fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit must be 1..={MAX_LIMIT}, not {n}"
        ))),
    }
}

/// The keyset cursor `before`: an id from a previous page's `next_cursor`.
pub(super) fn cursor(before: Option<String>) -> Result<Option<Uuid>, ApiError> {
    non_empty(before)
        .map(|c| parse_id(&c, "before (cursor)"))
        .transpose()
}

/// A full page may have more after it: its last id is the next page's cursor.
pub(super) fn next_cursor(len: usize, limit: i64, last: Option<Uuid>) -> Option<Uuid> {
    (len as i64 == limit).then_some(last).flatten()
}

pub(super) fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}
