//! `relayd migrate`: create the database if needed, apply pending migrations, exit.

use crate::cli::Cli;
use crate::db::migrate;

pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = super::load_config_and_init_logging(cli)?;
    super::runtime()?.block_on(async {
        let url = config.database.url.expose();
        if migrate::ensure_database(url).await? {
            tracing::info!("created the database");
        }
        let applied = migrate::run_pending(url).await?;
        if applied.is_empty() {
            tracing::info!("database schema is up to date");
        } else {
            tracing::info!(count = applied.len(), versions = ?applied, "applied migrations");
        }
        Ok(())
    })
}
