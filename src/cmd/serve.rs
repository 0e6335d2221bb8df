//! The daemon: `relayd [--role ROLES]`. Applies pending migrations, starts the chosen
//! roles, reloads the configuration on SIGHUP ([`crate::reload`]), and on
//! SIGTERM/SIGINT stops them gracefully, flushes the traces still queued
//! ([`crate::telemetry::traces`]) and exits 0.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::{select_roles, Cli};
use crate::context::AppContext;
use crate::daemon::Daemon;
use crate::db::migrate;

pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = super::load_config(cli)?;
    let traces = crate::telemetry::init_with_traces(
        cli.log_format.unwrap_or(config.log.format),
        &config.log.level,
        &config.telemetry,
    )?;
    let roles = select_roles(&cli.role).map_err(anyhow::Error::msg)?;
    // What check-config warns of, once at startup too (a development secret in use, …).
    for warning in config.warnings() {
        tracing::warn!(%warning, "configuration");
    }
    let served = super::runtime()?.block_on(async {
        let url = config.database.url.expose();
        migrate::ensure_database(url).await?;
        let applied = migrate::run_pending(url).await?;
        if !applied.is_empty() {
            tracing::info!(count = applied.len(), "applied migrations");
        }

        let ctx = AppContext::new(config, roles)?;
        ctx.live.reload_from(cli.config.clone());
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone())?);
        tokio::spawn(reload_on_hangup(ctx.clone())?);
        let daemon = Daemon::start(ctx.clone(), shutdown).await?;
        let roles: Vec<&str> = ctx.roles.iter().map(|r| r.name()).collect();
        tracing::info!(
            roles = %roles.join(","),
            ingest = %daemon.ingest_addr.map_or_else(|| "-".to_string(), |a| a.to_string()),
            ops = %daemon.ops_addr,
            version = env!("CARGO_PKG_VERSION"),
            "relayd started"
        );
        daemon.wait().await?;
        tracing::info!("relayd stopped");
        Ok(())
    });
    // Outside the runtime: flushing blocks on the exporter's thread.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    served
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal arriving right after
/// startup is not fatal) and returns a task that cancels `shutdown` on the first one.
fn cancel_on_signal(shutdown: CancellationToken) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
        }
        shutdown.cancel();
    })
}

/// Installs the SIGHUP handler now and returns a task that reloads the configuration on
/// each one (a reload logs its own outcome). It ends with the runtime.
fn reload_on_hangup(
    ctx: std::sync::Arc<AppContext>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            let _ = ctx.live.reload("SIGHUP").await;
        }
    })
}
