//! The application context shared by the roles, and the daemon that starts the chosen
//! roles side by side and stops them together.
//!
//! Roles meet only here: each gets the same `Arc<AppContext>` and a child of one
//! `CancellationToken`. When any role fails, the others are cancelled, so a process
//! never runs with a dead role. Listeners are bound before the roles start, so the
//! addresses are known (and `127.0.0.1:0` works in tests).

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::HttpResponse;
use anyhow::Context;
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{role_name, Role};
use crate::config::Config;
use crate::db::{self, DbPool};
use crate::http_error::ApiError;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::{broker, ingest, ops, relay, worker};

/// What every role of one process shares.
pub struct AppContext {
    pub config: Config,
    /// Synchronous commits: ingest, admin, retention.
    pub pool: DbPool,
    /// Relaxed commits (see [`db::Durability::Relaxed`]): the relay's and the worker's
    /// state changes. Connects only when used.
    pub relaxed_pool: DbPool,
    /// The roles this process runs; readiness depends on them.
    pub roles: BTreeSet<Role>,
    /// Ingest signals here after committing outbox rows; the relay waits on it (and
    /// forwards PostgreSQL notifications from other processes to it).
    pub outbox_wake: Arc<Notify>,
    /// Connection state of this process's broker threads.
    pub broker_health: Arc<broker::Health>,
    /// Progress of the roles' loops, for `/healthz`.
    pub liveness: Liveness,
    pub metrics: Metrics,
}

impl AppContext {
    /// Builds the context. The pool connects lazily: this succeeds with the database down.
    pub fn new(config: Config, roles: BTreeSet<Role>) -> anyhow::Result<Arc<Self>> {
        let names: Vec<&str> = roles.iter().map(|r| role_name(*r)).collect();
        let application_name = format!("relayd-{}", names.join("-"));
        let pool = db::build_pool(&config.database, &application_name, db::Durability::Synchronous)
            .context("building the database pool")?;
        let relaxed_pool = db::build_pool(&config.database, &application_name, db::Durability::Relaxed)
            .context("building the database pool")?;
        Ok(Arc::new(Self {
            config,
            pool,
            relaxed_pool,
            roles,
            outbox_wake: Arc::new(Notify::new()),
            broker_health: broker::Health::new(),
            liveness: Liveness::default(),
            metrics: Metrics::new(),
        }))
    }
}

/// The running roles of one process.
pub struct Daemon {
    /// Where the ingest role listens, when it runs.
    pub ingest_addr: Option<SocketAddr>,
    /// Where the ops listener (every process) listens.
    pub ops_addr: SocketAddr,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: CancellationToken,
}

impl Daemon {
    /// Binds the listeners and starts the ops listener and every role in `ctx.roles`.
    pub async fn start(ctx: Arc<AppContext>, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let mut tasks = JoinSet::new();
        let ops_listener = bind(ctx.config.ops.listen, "ops.listen")?;
        let ops_addr = ops_listener.local_addr()?;
        tasks.spawn(named(
            "ops",
            ops::run(ctx.clone(), ops_listener, shutdown.child_token()),
        ));

        let mut ingest_addr = None;
        for role in &ctx.roles {
            match role {
                Role::Ingest => {
                    let listener = bind(ctx.config.ingest.listen, "ingest.listen")?;
                    ingest_addr = Some(listener.local_addr()?);
                    tasks.spawn(named(
                        "ingest",
                        ingest::run(ctx.clone(), listener, shutdown.child_token()),
                    ));
                }
                Role::Relay => {
                    tasks.spawn(named("relay", relay::run(ctx.clone(), shutdown.child_token())));
                }
                Role::Worker => {
                    tasks.spawn(named("worker", worker::run(ctx.clone(), shutdown.child_token())));
                }
                // `cli::select_roles` expands `all` before this.
                Role::All => anyhow::bail!("`all` must be expanded into concrete roles"),
            }
        }
        Ok(Self {
            ingest_addr,
            ops_addr,
            tasks,
            shutdown,
        })
    }

    /// Waits until every role has stopped. The first role to fail cancels the others,
    /// and its error is returned once they have stopped.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let (name, result) = match joined {
                Ok(named) => named,
                Err(e) => ("task", Err(anyhow::Error::new(e))),
            };
            match result {
                Ok(()) if self.shutdown.is_cancelled() => tracing::debug!(role = name, "stopped"),
                Ok(()) => {
                    tracing::error!(role = name, "stopped unexpectedly; stopping the process");
                    first_error.get_or_insert_with(|| anyhow::anyhow!("role {name} stopped unexpectedly"));
                    self.shutdown.cancel();
                }
                Err(e) => {
                    tracing::error!(role = name, error = %format!("{e:#}"), "failed; stopping the process");
                    first_error.get_or_insert(e.context(format!("role {name} failed")));
                    self.shutdown.cancel();
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

async fn named<F>(name: &'static str, role: F) -> (&'static str, anyhow::Result<()>)
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    (name, role.await)
}

fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("{key}: cannot listen on {addr}"))
}

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
