//! Claims and outcome records of concurrent deliveries, combined into shared statements.
//!
//! Each delivery task still claims, sends and records on its own; the claims (and the
//! records) that are waiting at the same moment travel to a batcher task that runs them
//! as one statement and answers each caller. Nothing waits on purpose: a batch is what
//! queued up while the previous statement ran, so a quiet worker still does one claim
//! per message. A failed statement is retried with backoff; if it keeps failing, every
//! caller in the batch gets the error (and requeues its message, never acks it).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::{mpsc, oneshot};

use crate::db::deliveries::{self, Claimed, Record};
use crate::db::DbPool;

/// Claims or records combined into one statement at most.
const MAX_BATCH: usize = 128;

type Reply<T> = oneshot::Sender<Result<T, String>>;

/// The delivery tasks' side.
#[derive(Clone)]
pub struct Batcher {
    claims: mpsc::Sender<(uuid::Uuid, Reply<Option<Claimed>>)>,
    records: mpsc::Sender<(Record, Reply<bool>)>,
}

impl Batcher {
    /// Starts the batcher tasks; they stop when every `Batcher` clone is dropped.
    /// Each statement is abandoned (and retried) after `query_timeout`.
    pub fn start(pool: DbPool, query_timeout: Duration, lease: Duration) -> Self {
        let (claims, claim_rx) = mpsc::channel(MAX_BATCH * 4);
        let (records, record_rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run_claims(pool.clone(), query_timeout, claim_rx, lease));
        tokio::spawn(run_records(pool, query_timeout, record_rx));
        Self { claims, records }
    }

    /// Claims one delivery (see [`deliveries::claim`]); `None` when not claimable.
    pub async fn claim(&self, id: uuid::Uuid) -> Result<Option<Claimed>, String> {
        let (reply, answer) = oneshot::channel();
        self.claims
            .send((id, reply))
            .await
            .map_err(|_| "worker stopping".to_string())?;
        answer.await.map_err(|_| "claim batcher stopped".to_string())?
    }

    /// Records one outcome (see [`deliveries::record_outcomes`]); false when another
    /// worker holds the delivery now.
    pub async fn record(&self, record: Record) -> Result<bool, String> {
        let (reply, answer) = oneshot::channel();
        self.records
            .send((record, reply))
            .await
            .map_err(|_| "worker stopping".to_string())?;
        answer.await.map_err(|_| "record batcher stopped".to_string())?
    }
}

/// Takes the first waiting item, then whatever else is already waiting.
async fn next_batch<T>(rx: &mut mpsc::Receiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Delays for retrying a failed statement: 100 ms doubling to 2 s, 6 tries.
fn retry_delays() -> impl Iterator<Item = Duration> {
    crate::retry::backoff(Duration::from_millis(100), Duration::from_secs(2)).take(6)
}

/// Runs `op` with a pooled connection and `input`, retrying failures with backoff.
async fn retrying<I: ?Sized, T>(
    pool: &DbPool,
    timeout: Duration,
    what: &str,
    input: &I,
    op: impl for<'c> Fn(&'c mut AsyncPgConnection, &'c I) -> BoxFuture<'c, diesel::QueryResult<T>>,
) -> Result<T, String> {
    let mut delays = retry_delays();
    loop {
        let attempt = crate::db::with_connection(pool, timeout, async |conn| op(conn, input).await).await;
        match (attempt, delays.next()) {
            (Ok(value), _) => return Ok(value),
            (Err(e), Some(delay)) => {
                tracing::debug!(error = %e, retry_in = ?delay, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
            }
            (Err(e), None) => return Err(e),
        }
    }
}

async fn run_claims(
    pool: DbPool,
    timeout: Duration,
    mut rx: mpsc::Receiver<(uuid::Uuid, Reply<Option<Claimed>>)>,
    lease: Duration,
) {
    while let Some(batch) = next_batch(&mut rx).await {
        let ids: Vec<uuid::Uuid> = batch.iter().map(|(id, _)| *id).collect();
        let started = std::time::Instant::now();
        let result = retrying(&pool, timeout, "claim", ids.as_slice(), |conn, ids| {
            deliveries::claim(conn, ids, lease).boxed()
        })
        .await;
        tracing::debug!(batch = ids.len(), took = ?started.elapsed(), "claimed a batch");
        match result {
            Ok(claimed) => {
                let mut by_id: HashMap<uuid::Uuid, Claimed> =
                    claimed.into_iter().map(|c| (c.id, c)).collect();
                for (id, reply) in batch {
                    let _ = reply.send(Ok(by_id.remove(&id)));
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn run_records(pool: DbPool, timeout: Duration, mut rx: mpsc::Receiver<(Record, Reply<bool>)>) {
    while let Some(batch) = next_batch(&mut rx).await {
        let (records, replies): (Vec<Record>, Vec<Reply<bool>>) = batch.into_iter().unzip();
        let started = std::time::Instant::now();
        let result: Result<HashSet<uuid::Uuid>, String> = retrying(
            &pool,
            timeout,
            "recording",
            records.as_slice(),
            |conn, records| deliveries::record_outcomes(conn, records).boxed(),
        )
        .await;
        tracing::debug!(batch = records.len(), took = ?started.elapsed(), "recorded a batch");
        for (record, reply) in records.iter().zip(replies) {
            let _ = reply.send(match &result {
                Ok(changed) => Ok(changed.contains(&record.delivery_id)),
                Err(e) => Err(e.clone()),
            });
        }
    }
}
