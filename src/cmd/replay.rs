//! `relayd replay`: the bulk replay of the admin API, straight against the database.

use anyhow::Context;

use crate::cli::{Cli, ReplayArgs};
use crate::db::deliveries;
use crate::ops::ReplayRequest;

pub fn run(cli: &Cli, args: &ReplayArgs) -> anyhow::Result<()> {
    let config = super::load_config_and_init_logging(cli)?;
    let filter = ReplayRequest {
        status: args.status.clone(),
        destination: args.destination.clone(),
        source: args.source.clone(),
        event_type: args.event_type.clone(),
        since: args.since,
        until: args.until,
        all: args.all,
    }
    .into_filter()
    .map_err(anyhow::Error::msg)?;
    super::runtime()?.block_on(async {
        let mut conn = crate::db::connect(config.database.url.expose())
            .await
            .context("connecting to the database")?;
        let replayed = deliveries::replay(&mut conn, &filter)
            .await
            .context("replaying")?;
        if replayed > 0 {
            // Running relays publish the rows now rather than on their poll interval.
            if let Err(e) = crate::wake::notify(&mut conn).await {
                tracing::debug!(error = %e, "outbox NOTIFY failed; relays will poll");
            }
        }
        println!("replayed {replayed} deliveries");
        Ok(())
    })
}
