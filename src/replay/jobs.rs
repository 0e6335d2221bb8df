//! Working replay jobs ([`crate::db::replay_jobs`]): a page at a time, each page its own
//! transaction that holds the job's row (so replicas, `relayd replay` and the admin
//! API's `/replay` working the same job never overlap), paced to the job's `max_rate`
//! through the row's `next_page_at`, whichever process works the page. A job's
//! progress lives in its row, so it goes on after a restart from where it was.
//! [`run_periodically`] works every running job in the background (a task of the relay
//! role, stopped with its shutdown token between pages); [`work_to_end`] works one job
//! in the caller until it has ended.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use diesel_async::AsyncPgConnection;

use crate::context::AppContext;
use crate::db::replay_jobs::{self, JobStatus, Page, ReplayJob};
use crate::wake::OutboxWake;

/// Deliveries reset per page at most.
pub const PAGE: i64 = 500;

/// How often running jobs are looked for when none has work due.
const POLL: Duration = Duration::from_secs(1);

/// The page size and the time a page takes at least, for `max_rate` deliveries a
/// second (`None`: pages follow each other at once).
pub fn pacing(max_rate: Option<i32>) -> (i64, Duration) {
    match max_rate {
        Some(rate) if rate > 0 => {
            let page = PAGE.min(i64::from(rate));
            (page, Duration::from_secs_f64(page as f64 / f64::from(rate)))
        }
        _ => (PAGE, Duration::ZERO),
    }
}

/// Works every running job until `shutdown`.
pub async fn run_periodically(ctx: Arc<AppContext>, shutdown: CancellationToken) {
    let timeout = ctx.config.database.query_timeout;
    // When each job's next page is due (its pace).
    let mut due: HashMap<uuid::Uuid, Instant> = HashMap::new();
    while !shutdown.is_cancelled() {
        let jobs = crate::db::with_connection(&ctx.pool, timeout, replay_jobs::running)
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(%error, "cannot look for replay jobs; trying again");
                Vec::new()
            });
        due.retain(|id, _| jobs.iter().any(|(job, _)| job == id));
        for (id, max_rate) in jobs {
            if due.get(&id).is_some_and(|at| *at > Instant::now()) {
                continue;
            }
            let (page, pause) = pacing(max_rate);
            let started = Instant::now();
            let worked = crate::db::with_connection(&ctx.pool, timeout * 2, async |conn| {
                replay_jobs::work_page(conn, id, page, pause).await
            })
            .await;
            match worked {
                Ok(Page::Worked(replayed)) => {
                    if replayed > 0 {
                        ctx.wake.wake();
                    }
                    due.insert(id, started + pause);
                }
                Ok(Page::Finished) => tracing::info!(job = %id, "replay job done"),
                Ok(Page::Idle) => {}
                Err(error) => tracing::warn!(job = %id, %error, "replay job page failed; trying again"),
            }
        }
        let next = due
            .values()
            .min()
            .map_or(POLL, |at| at.saturating_duration_since(Instant::now()));
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(next.min(POLL)) => {}
        }
    }
}

/// Works job `id` on `conn` until it has ended (done, or cancelled by an operator), at
/// its `max_rate`, calling `progress` after each page that replayed some deliveries;
/// returns the job as it ended. The relays are woken after each such page: through
/// `wake` when the caller has one, else by a `NOTIFY` on `conn`. A page another process
/// is working, or one not due yet, is waited for.
pub async fn work_to_end(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
    max_rate: Option<i32>,
    wake: Option<&OutboxWake>,
    mut progress: impl FnMut(&ReplayJob),
) -> diesel::QueryResult<ReplayJob> {
    let (page, pause) = pacing(max_rate);
    loop {
        let started = Instant::now();
        let worked = replay_jobs::work_page(conn, id, page, pause).await?;
        let job = replay_jobs::get(conn, id)
            .await?
            .ok_or(diesel::result::Error::NotFound)?;
        match worked {
            Page::Finished => return Ok(job),
            _ if job.status != JobStatus::Running => return Ok(job),
            Page::Worked(replayed) => {
                if replayed > 0 {
                    match wake {
                        Some(wake) => wake.wake(),
                        // Running relays publish the rows now rather than on their poll
                        // interval.
                        None => {
                            if let Err(e) = crate::wake::notify(conn).await {
                                tracing::debug!(error = %e, "outbox NOTIFY failed; relays will poll");
                            }
                        }
                    }
                    progress(&job);
                }
                tokio::time::sleep(pause.saturating_sub(started.elapsed())).await;
            }
            // Not due yet, or another process is working this page.
            Page::Idle => tokio::time::sleep(pause.max(Duration::from_millis(50))).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_paced_to_the_rate() {
        assert_eq!(pacing(None), (PAGE, Duration::ZERO));
        assert_eq!(pacing(Some(100)), (100, Duration::from_secs(1)));
        assert_eq!(pacing(Some(2000)), (500, Duration::from_millis(250)));
    }
}
