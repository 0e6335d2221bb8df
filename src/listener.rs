//! HTTP plumbing shared by the ingest and ops listeners: serving until shutdown, and the
//! JSON answers they give for paths they do not serve; and [`LocalServer`], the small
//! loopback server that relayd-bench and the tests receive deliveries and traces on.

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

/// `GET /healthz` on the ingest listener: it is up and serving. (The process's health,
/// with its roles' progress, is the ops listener's `/healthz`.)
pub async fn alive() -> HttpResponse {
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

/// An HTTP server on a free loopback port, serving `routes` on the calling tokio runtime
/// until [`LocalServer::stop`] (or the runtime ends): the embedded receivers of
/// relayd-bench and of the tests (destinations that record what they get, an OTLP
/// collector). No signal handling, no graceful wait on stop.
pub struct LocalServer {
    /// Where it listens (`127.0.0.1:<port>`).
    pub addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl LocalServer {
    /// Binds `127.0.0.1:0` and starts `workers` threads serving what `routes` mounts.
    pub fn start<F>(workers: usize, routes: F) -> std::io::Result<Self>
    where
        F: Fn(&mut actix_web::web::ServiceConfig) + Clone + Send + 'static,
    {
        Self::start_at("127.0.0.1:0", workers, routes)
    }

    /// [`LocalServer::start`] on `addr` (a receiver that comes back where it was).
    pub fn start_at<F>(addr: &str, workers: usize, routes: F) -> std::io::Result<Self>
    where
        F: Fn(&mut actix_web::web::ServiceConfig) + Clone + Send + 'static,
    {
        let listener = std::net::TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let server = actix_web::HttpServer::new(move || actix_web::App::new().configure(routes.clone()))
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(0)
            .listen(listener)?
            .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self { addr, handle })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops it; open connections are dropped.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}
