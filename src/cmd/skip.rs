//! `relayd skip ID`: the admin API's skip, straight against the database.

use anyhow::Context;

use crate::cli::Cli;
use crate::db::deliveries;

pub fn run(cli: &Cli, id: uuid::Uuid) -> anyhow::Result<()> {
    let config = super::load_config_and_init_logging(cli)?;
    super::runtime()?.block_on(async {
        let mut conn = crate::db::connect(config.database.url.expose())
            .await
            .context("connecting to the database")?;
        let Some(skipped) = deliveries::skip(&mut conn, id).await.context("skipping")? else {
            let status = deliveries::get(&mut conn, id)
                .await
                .context("reading the delivery")?
                .map(|d| d.status);
            anyhow::bail!(match status {
                None => format!("no delivery {id}"),
                Some(status) => format!(
                    "delivery {id} is {status}; only {} deliveries are skipped",
                    crate::db::deliveries::DeliveryStatus::SKIPPABLE.join(", ")
                ),
            });
        };
        if skipped.promoted > 0 {
            // The key's next delivery is pending: running relays publish it now.
            if let Err(e) = crate::wake::notify(&mut conn).await {
                tracing::debug!(error = %e, "outbox NOTIFY failed; relays will poll");
            }
        }
        println!(
            "skipped delivery {id} ({}){}",
            skipped.delivery.destination,
            if skipped.promoted > 0 {
                "; its key moved on"
            } else {
                ""
            }
        );
        Ok(())
    })
}
