//! The admin API's bulk replays, each a replay job ([`crate::replay`]): created (or only
//! counted), listed, followed and cancelled under `/replays`; `POST /replay` is the
//! older form that answers when its job has ended.

use actix_web::{web, HttpResponse};
use diesel_async::AsyncPgConnection;
use serde_json::json;

use super::{connection, parse_id};
use crate::context::AppContext;
use crate::db::deliveries;
use crate::db::replay_jobs::{self, JobStatus, ReplayJob};
use crate::http_error::ApiError;
use crate::replay::{jobs, Checked, Request};
use crate::search;

/// The request's checks, as a 400.
fn checked(body: web::Json<Request>) -> Result<Checked, ApiError> {
    body.into_inner()
        .check()
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// A job as the API shows it: its row and its progress.
fn job_view(job: &ReplayJob) -> serde_json::Value {
    let mut view = serde_json::to_value(job).unwrap_or_default();
    view["progress"] = json!(job.progress());
    view
}

/// The job `checked` asks for, created; or, for a dry run, the answer with the count
/// of matching deliveries (`200 {dry_run, matching, complete}`; `complete` is false
/// when a `where` had more candidates than a count evaluates).
/// Each statement is bounded by the query timeout (a count that would read
/// everything answers 503 `search_too_broad`, [`search::bounded`]).
async fn begin(
    conn: &mut AsyncPgConnection,
    checked: &Checked,
    timeout: std::time::Duration,
) -> Result<Result<ReplayJob, HttpResponse>, ApiError> {
    Ok(search::bounded(conn, timeout, async |conn| {
        Ok(counted_or_created(conn, checked).await?)
    })
    .await?)
}

async fn counted_or_created(
    conn: &mut AsyncPgConnection,
    checked: &Checked,
) -> diesel::QueryResult<Result<ReplayJob, HttpResponse>> {
    if checked.dry_run {
        let counted = deliveries::count_replayable(conn, &checked.filter).await?;
        return Ok(Err(HttpResponse::Ok().json(json!({
            "dry_run": true,
            "matching": counted.matching,
            "complete": counted.complete,
        }))));
    }
    Ok(Ok(
        replay_jobs::create(conn, &checked.filter, checked.max_rate).await?
    ))
}

/// `POST /admin/api/replays`: `200 {dry_run, matching}` for a dry run, else `202`
/// with the new job, which the relays work in the background.
pub(super) async fn create(
    ctx: web::Data<AppContext>,
    body: web::Json<Request>,
) -> Result<HttpResponse, ApiError> {
    let checked = checked(body)?;
    let mut conn = connection(&ctx).await?;
    let job = match begin(&mut conn, &checked, ctx.config.database.query_timeout).await? {
        Ok(job) => job,
        Err(counted) => return Ok(counted),
    };
    tracing::info!(
        job = %job.id, matching = job.matching, max_rate = ?checked.max_rate, filter = ?checked.filter,
        "replay job created by an operator"
    );
    Ok(HttpResponse::Accepted().json(job_view(&job)))
}

/// `POST /admin/api/replay`, the form from before replay jobs: the same body, but the
/// job is worked here and the answer, `200 {"replayed": N, "job": …}`, comes once it has
/// ended. Kept for the scripts that call it; `/replays` answers at once and shows
/// progress, and is what a large replay should use (this request lasts as long as its
/// job, at `max_rate` if one is given).
pub(super) async fn replay_now(
    ctx: web::Data<AppContext>,
    body: web::Json<Request>,
) -> Result<HttpResponse, ApiError> {
    let checked = checked(body)?;
    let mut conn = connection(&ctx).await?;
    let job = match begin(&mut conn, &checked, ctx.config.database.query_timeout).await? {
        Ok(job) => job,
        Err(counted) => return Ok(counted),
    };
    let job = jobs::work_to_end(&mut conn, job.id, checked.max_rate, Some(&ctx.wake), |_| {}).await?;
    tracing::info!(job = %job.id, replayed = job.replayed, filter = ?checked.filter, "bulk replay by an operator");
    Ok(HttpResponse::Ok().json(json!({ "replayed": job.replayed, "job": job_view(&job) })))
}

/// `GET /admin/api/replays`: the newest jobs.
pub(super) async fn list(ctx: web::Data<AppContext>) -> Result<HttpResponse, ApiError> {
    let mut conn = connection(&ctx).await?;
    let jobs = replay_jobs::list(&mut conn, 50).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": jobs.iter().map(job_view).collect::<Vec<_>>() })))
}

/// `GET /admin/api/replays/{id}`: one job and its progress.
pub(super) async fn get(ctx: web::Data<AppContext>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "replay job id")?;
    let mut conn = connection(&ctx).await?;
    match replay_jobs::get(&mut conn, id).await? {
        Some(job) => Ok(HttpResponse::Ok().json(job_view(&job))),
        None => Err(ApiError::NotFoundDetail(format!("no replay job {id}"))),
    }
}

/// `POST /admin/api/replays/{id}/cancel`: the job stops after the page in hand (what
/// it replayed stays replayed); `409` when it had already ended.
pub(super) async fn cancel(
    ctx: web::Data<AppContext>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "replay job id")?;
    let mut conn = connection(&ctx).await?;
    match replay_jobs::cancel(&mut conn, id).await? {
        None => Err(ApiError::NotFoundDetail(format!("no replay job {id}"))),
        Some(job) if job.status == JobStatus::Cancelled => {
            tracing::info!(job = %id, replayed = job.replayed, "replay job cancelled by an operator");
            Ok(HttpResponse::Ok().json(job_view(&job)))
        }
        Some(job) => Err(ApiError::Conflict(format!("replay job {id} is {}", job.status))),
    }
}
