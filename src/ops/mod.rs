//! The ops listener, present in every process whatever its roles: liveness
//! (`/healthz`), readiness (`/readyz`), Prometheus metrics (`/metrics`), and the admin
//! API and dashboard (`/admin`, only with `ops.admin_token`). None of it is ever
//! exposed on the ingest listener. It stops with the process's shutdown token.

mod admin;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::context::{AppContext, Role};

/// A readiness probe answers within this, whatever the database does.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the ops listener on `listener` until `shutdown` is cancelled.
pub async fn run(
    ctx: Arc<AppContext>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = web::Data::from(ctx);
    let streams = admin::Streams::new(shutdown.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .configure(|cfg| admin::configure(cfg, &state, &streams))
            .default_service(web::to(crate::listener::not_found))
    })
    // Probes and scrapes are light: one worker thread is plenty and keeps the cores for
    // the roles.
    .workers(1)
    .listen(listener)
    .context("listening for ops")?
    .disable_signals()
    .shutdown_timeout(2)
    .run();
    crate::listener::serve_until_cancelled(server, shutdown).await
}

/// `GET /healthz`: 200 while every role makes progress; 503 naming what has been stuck
/// (a loop without progress, a broker connection down) for over `ops.liveness_stall`,
/// so that an orchestrator restarts a process that did not heal itself.
async fn healthz(ctx: web::Data<AppContext>) -> HttpResponse {
    let stall = ctx.config.ops.liveness_stall;
    let mut stalled = ctx.liveness.stalled(stall);
    stalled.extend(
        ctx.broker_health
            .down_for(stall)
            .into_iter()
            .map(|(component, down)| (format!("{component} disconnected"), down)),
    );
    if stalled.is_empty() {
        return HttpResponse::Ok().json(json!({ "status": "ok" }));
    }
    let reasons: serde_json::Map<String, serde_json::Value> = stalled
        .into_iter()
        .map(|(part, quiet)| (part, format!("no progress for {}s", quiet.as_secs()).into()))
        .collect();
    tracing::error!(stalled = %serde_json::Value::Object(reasons.clone()), "not live: no progress for longer than ops.liveness_stall");
    HttpResponse::ServiceUnavailable().json(json!({ "status": "stalled", "stalled": reasons }))
}

/// `GET /metrics`: the Prometheus exposition of this process, with `relayd_ready` from
/// the same checks as `/readyz` made now (so an alert sees what a probe would).
async fn metrics(ctx: web::Data<AppContext>) -> HttpResponse {
    let ready = readiness(&ctx).await.ready;
    ctx.metrics.ready(ready);
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(ctx.metrics.encode(&ctx.broker_health))
}

/// What `/readyz` answers.
struct Readiness {
    ready: bool,
    checks: serde_json::Map<String, serde_json::Value>,
    /// Which broker node each connection is on (or was last on, while disconnected).
    nodes: serde_json::Map<String, serde_json::Value>,
}

/// `GET /readyz`: 200 when every dependency of this process's roles is reachable
/// (the database always; the broker for roles that use it), 503 with the reasons
/// otherwise.
async fn readyz(ctx: web::Data<AppContext>) -> HttpResponse {
    let Readiness { ready, checks, nodes } = readiness(&ctx).await;
    if ready {
        HttpResponse::Ok().json(json!({ "status": "ready", "checks": checks, "broker_nodes": nodes }))
    } else {
        tracing::warn!(checks = %serde_json::Value::Object(checks.clone()), "not ready");
        HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "unavailable", "checks": checks, "broker_nodes": nodes }))
    }
}

async fn readiness(ctx: &AppContext) -> Readiness {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    match crate::db::ping(&ctx.pool, READINESS_TIMEOUT).await {
        Ok(()) => {
            checks.insert("database".into(), "ok".into());
        }
        Err(reason) => {
            ready = false;
            checks.insert("database".into(), reason.to_string().into());
        }
    }
    // A relay always publishes; a worker consumes when it has destinations. Until their
    // broker threads have registered, the broker counts as not connected: readiness must
    // not race the roles' startup.
    let needs_broker = ctx.roles.contains(&Role::Relay)
        || (ctx.roles.contains(&Role::Worker) && {
            let config = ctx.live.current();
            !(config.destinations.is_empty() && config.operator_hooks.is_empty())
        });
    match ctx.broker_health.status() {
        None if needs_broker => {
            ready = false;
            checks.insert("broker".into(), "not connected yet".into());
        }
        None => {}
        Some(Ok(())) => {
            checks.insert("broker".into(), "ok".into());
        }
        Some(Err(down)) => {
            ready = false;
            checks.insert(
                "broker".into(),
                format!("not connected: {}", down.join(", ")).into(),
            );
        }
    }
    let nodes = ctx
        .broker_health
        .components()
        .into_iter()
        .map(|state| {
            (
                state.component,
                state.node.map_or(serde_json::Value::Null, Into::into),
            )
        })
        .collect();
    Readiness { ready, checks, nodes }
}
