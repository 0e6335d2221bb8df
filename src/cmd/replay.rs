//! `relayd replay`: a bulk replay as a replay job ([`crate::db::replay_jobs`]), created
//! and worked here, straight against the database, printing its progress on stderr
//! and the count on stdout. Interrupted, the job stays `running` and the relays go on
//! with it from its cursor.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::{Cli, ReplayArgs};
use crate::db::deliveries;
use crate::db::replay_jobs::{self, Page};
use crate::ops::ReplayRequest;
use diesel_async::AsyncPgConnection;

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
        if args.dry_run {
            let matching = deliveries::count_replayable(&mut conn, &filter)
                .await
                .context("counting")?;
            println!("{matching} deliveries match; nothing was replayed (dry run)");
            return Ok(());
        }
        let job = replay_jobs::create(&mut conn, &filter, args.max_rate)
            .await
            .context("creating the replay job")?;
        let pace = args
            .max_rate
            .map_or("as fast as pages go".into(), |r| format!("at most {r}/s"));
        eprintln!(
            "replay job {}: {} matching deliveries, {pace}",
            job.id, job.matching
        );
        let job = work(&mut conn, job.id, args.max_rate).await?;
        if job.status != replay_jobs::DONE {
            eprintln!("replay job {} was {} by an operator", job.id, job.status);
        }
        println!("replayed {} deliveries", job.replayed);
        Ok(())
    })
}

/// Works the job until it has ended, printing its progress after each page.
async fn work(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
    max_rate: Option<i32>,
) -> anyhow::Result<replay_jobs::ReplayJob> {
    let (page, pause) = crate::replays::pacing(max_rate);
    loop {
        let started = Instant::now();
        let worked = replay_jobs::work_page(conn, id, page, pause)
            .await
            .context("replaying a page")?;
        let job = replay_jobs::get(conn, id)
            .await?
            .context("the replay job is gone")?;
        match worked {
            Page::Finished => return Ok(job),
            _ if job.status != replay_jobs::RUNNING => return Ok(job),
            Page::Worked(replayed) => {
                if replayed > 0 {
                    // Running relays publish the rows now rather than on their poll interval.
                    if let Err(e) = crate::wake::notify(conn).await {
                        tracing::debug!(error = %e, "outbox NOTIFY failed; relays will poll");
                    }
                }
                eprintln!(
                    "replayed {} of {} ({:.0} %)",
                    job.replayed,
                    job.matching,
                    job.progress() * 100.0
                );
                tokio::time::sleep(pause.saturating_sub(started.elapsed())).await;
            }
            // Not due yet, or a relay is working this page.
            Page::Idle => tokio::time::sleep(pause.max(Duration::from_millis(50))).await,
        }
    }
}
