//! HTTP plumbing shared by the ingest and ops listeners: serving until shutdown, and the
//! JSON answers every listener gives for liveness and for paths it does not serve.

use actix_web::HttpResponse;
use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::http_error::ApiError;

/// Runs an actix server until `shutdown` is cancelled, then stops it gracefully:
/// no new connections, in-flight requests finish within the server's shutdown timeout.
pub async fn serve_until_cancelled(
    server: actix_web::dev::Server,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handle = server.handle();
    let stopper = tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
    let result = server.await.context("HTTP server failed");
    stopper.abort();
    result
}

/// `GET /healthz` on every listener: the process is alive and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The JSON 404 for every path a listener does not serve.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// The JSON 405 for a served path asked with the wrong method.
pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}
