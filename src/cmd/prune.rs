//! `relayd prune [--dry-run]`: one retention pass now, for operators and cron.

use anyhow::Context;

use tokio_util::sync::CancellationToken;

use crate::cli::Cli;
use crate::retention::{self, Report};

pub fn run(cli: &Cli, dry_run: bool) -> anyhow::Result<()> {
    let config = super::load_config_and_init_logging(cli)?;
    let retention = &config.retention;
    let url = config.database.url.expose();
    super::runtime()?.block_on(async {
        if dry_run {
            let mut conn = crate::db::connect(url)
                .await
                .context("connecting to the database")?;
            let report = retention::dry_run(&mut conn, retention)
                .await
                .context("counting")?;
            print_report("would delete", &report);
            return Ok(());
        }
        match retention::prune(url, retention, &CancellationToken::new(), |_, _| {}).await? {
            Some(report) => print_report("deleted", &report),
            None => anyhow::bail!("another relayd is pruning right now (it holds the retention lock)"),
        }
        Ok(())
    })
}

fn print_report(verb: &str, report: &Report) {
    if report.deleted.is_empty() {
        println!("every retention rule is disabled (duration 0)");
    }
    for (kind, rows) in &report.deleted {
        println!("{verb} {rows} {}", kind.name().replace('_', " "));
    }
}
