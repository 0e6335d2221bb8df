//! The daemon: `relayd [--role ROLES]`. Applies pending migrations, starts the chosen
//! roles, and on SIGTERM/SIGINT stops them gracefully and exits 0.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::app::{AppContext, Daemon};
use crate::cli::{role_name, select_roles, Cli};
use crate::db::migrate;

pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = super::load_config_and_init_logging(cli)?;
    let selection = select_roles(&cli.role).map_err(anyhow::Error::msg)?;
    if !selection.unavailable.is_empty() {
        let missing: Vec<&str> = selection
            .unavailable
            .iter()
            .map(|r| role_name(*r))
            .collect();
        tracing::warn!(
            missing = %missing.join(","),
            "--role all: these roles are not available in this build and do not run"
        );
    }
    super::runtime()?.block_on(async {
        let url = config.database.url.expose();
        migrate::ensure_database(url).await?;
        let applied = migrate::run_pending(url).await?;
        if !applied.is_empty() {
            tracing::info!(count = applied.len(), "applied migrations");
        }

        let ctx = AppContext::new(config, selection.roles)?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let daemon = Daemon::start(ctx.clone(), shutdown).await?;
        let roles: Vec<&str> = ctx.roles.iter().map(|r| role_name(*r)).collect();
        tracing::info!(
            roles = %roles.join(","),
            ingest = ?daemon.ingest_addr,
            ops = %daemon.ops_addr,
            version = env!("CARGO_PKG_VERSION"),
            "relayd started"
        );
        daemon.wait().await?;
        tracing::info!("relayd stopped");
        Ok(())
    })
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
    shutdown.cancel();
    Ok(())
}
