//! The daemon: starts the chosen roles side by side and stops them together.
//!
//! Each role gets the same `Arc<AppContext>` ([`crate::context`], below the roles) and
//! a child of one `CancellationToken`. When any role fails, the others are cancelled,
//! so a process never runs with a dead role. Listeners are bound before the roles
//! start, so the addresses are known (and `127.0.0.1:0` works in tests). The outbox
//! `NOTIFY` task ([`crate::wake::notify_relays`]) runs beside the roles; every task
//! stops with the shutdown token.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::context::{AppContext, Role};
use crate::{ingest, ops, relay, wake, worker};

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
            }
        }
        if ctx.wake.notifies_others() {
            let notifier = wake::notify_relays(
                ctx.wake.clone(),
                ctx.pool.clone(),
                ctx.config.database.query_timeout,
                shutdown.child_token(),
            );
            tasks.spawn(named("outbox notifier", async move {
                notifier.await;
                Ok(())
            }));
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
