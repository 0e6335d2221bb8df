//! `relayd replay`: a bulk replay as a replay job ([`crate::replay`]), created and worked
//! here ([`crate::replay::jobs::work_to_end`]), straight against the database, printing
//! its progress on stderr and the count on stdout. Interrupted, the job stays `running`
//! and the relays go on with it from its cursor.

use anyhow::Context;

use crate::cli::Cli;
use crate::db::deliveries;
use crate::db::replay_jobs::{self, JobStatus};
use crate::replay::{jobs, Request};

pub fn run(cli: &Cli, request: &Request) -> anyhow::Result<()> {
    let config = super::load_config_and_init_logging(cli)?;
    let checked = request.clone().check()?;
    super::runtime()?.block_on(async {
        let mut conn = crate::db::connect(config.database.url.expose())
            .await
            .context("connecting to the database")?;
        if checked.dry_run {
            let counted = deliveries::count_replayable(&mut conn, &checked.filter)
                .await
                .context("counting")?;
            let at_least = if counted.complete { "" } else { "at least " };
            println!(
                "{at_least}{} deliveries match; nothing was replayed (dry run)",
                counted.matching
            );
            if !counted.complete {
                eprintln!(
                    "the where was evaluated on the first {} candidates only; the replay reads them all",
                    deliveries::COUNT_BUDGET
                );
            }
            return Ok(());
        }
        let job = replay_jobs::create(&mut conn, &checked.filter, checked.max_rate)
            .await
            .context("creating the replay job")?;
        let pace = checked
            .max_rate
            .map_or("as fast as pages go".into(), |r| format!("at most {r}/s"));
        eprintln!(
            "replay job {}: {} matching deliveries, {pace}",
            job.id, job.matching
        );
        let job = jobs::work_to_end(&mut conn, job.id, checked.max_rate, None, |job| {
            eprintln!(
                "replayed {} of {} ({:.0} %)",
                job.replayed,
                job.matching,
                job.progress() * 100.0
            );
        })
        .await
        .context("replaying a page")?;
        if job.status != JobStatus::Done {
            eprintln!("replay job {} was {} by an operator", job.id, job.status);
        }
        println!("replayed {} deliveries", job.replayed);
        Ok(())
    })
}
