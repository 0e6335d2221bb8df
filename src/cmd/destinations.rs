//! `relayd destinations`: the admin API's destination states, straight against the
//! database.

use anyhow::Context;

use crate::cli::{Cli, DestinationsAction};
use crate::db::destinations;

pub fn run(cli: &Cli, action: &DestinationsAction) -> anyhow::Result<()> {
    let config = super::load_config_and_init_logging(cli)?;
    let names: Vec<String> = config.destinations.iter().map(|d| d.name.clone()).collect();
    if let DestinationsAction::Pause { name } | DestinationsAction::Resume { name } = action {
        if !names.contains(name) {
            anyhow::bail!("no destination {name:?} is configured");
        }
    }
    super::runtime()?.block_on(async {
        let mut conn = crate::db::connect(config.database.url.expose())
            .await
            .context("connecting to the database")?;
        match action {
            DestinationsAction::List => {}
            DestinationsAction::Pause { name } => {
                let changed = destinations::pause(&mut conn, name).await.context("pausing")?;
                println!(
                    "{name}: {}",
                    if changed.is_some() {
                        "paused"
                    } else {
                        "already paused"
                    }
                );
                return Ok(());
            }
            DestinationsAction::Resume { name } => {
                let changed = destinations::resume(&mut conn, name).await.context("resuming")?;
                println!(
                    "{name}: {}",
                    if changed.is_some() {
                        "resumed"
                    } else {
                        "already delivering"
                    }
                );
                return Ok(());
            }
        }
        let overviews = destinations::overview(&mut conn, &names)
            .await
            .context("reading the destinations")?;
        println!(
            "{:<24} {:<10} {:>11} {:>8} {:>8} {:>12}",
            "DESTINATION", "STATE", "UNDELIVERED", "QUEUED", "DUE", "OLDEST"
        );
        for o in overviews {
            let oldest = o
                .oldest_undelivered_age_seconds
                .map_or_else(|| "-".to_string(), |s| format!("{s:.0}s"));
            println!(
                "{:<24} {:<10} {:>11} {:>8} {:>8} {:>12}",
                o.name,
                o.state.as_str(),
                o.undelivered,
                o.queued,
                o.due,
                oldest
            );
            if let Some(reason) = o.reason {
                println!("  {reason}");
            }
        }
        Ok(())
    })
}
