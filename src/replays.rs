//! Replay jobs in the background ([`crate::db::replay_jobs`]): each running job is
//! worked a page at a time, round robin, each page its own transaction that holds the
//! job's row (so replicas, and `relayd replay` working the same job, never overlap),
//! paced to the job's `max_rate` through the row's `next_page_at`, whichever process
//! works the page. A job's progress lives in its row, so it goes on
//! after a restart from where it was. The task lives in the relay role and stops with
//! its shutdown token, between pages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::context::AppContext;
use crate::db::replay_jobs::{self, Page};

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
