//! The admin API's destinations: their shared flow state and backlog, paused and
//! resumed by an operator.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::json;

use super::connection;
use crate::context::AppContext;
use crate::db::destinations;
use crate::http_error::ApiError;

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
    let overviews = destinations::overview(&mut conn, names).await?;
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

/// `GET /admin/api/destinations`: each configured destination's state and backlog.
pub(super) async fn list(ctx: web::Data<AppContext>) -> Result<HttpResponse, ApiError> {
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

pub(super) async fn pause(
    ctx: web::Data<AppContext>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change_destination(&ctx, &name, Change::Pause).await
}

pub(super) async fn resume(
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
        }?;
        if changed.is_some() {
            tracing::warn!(destination = %name, ?change, "destination changed by an operator");
        }
    }
    let view = destination_views(ctx, std::slice::from_ref(&name)).await?;
    Ok(HttpResponse::Ok().json(&view[0]))
}
