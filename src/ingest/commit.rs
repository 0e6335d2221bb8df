//! Group commit: webhook requests that arrive together are stored together.
//!
//! Handlers hand their verified event to a few committer tasks over a channel. A
//! committer takes whatever is waiting (up to `MAX_BATCH`) and stores it with one
//! statement — one round trip and one WAL flush for the whole batch — then answers each
//! request. Nothing waits on purpose: a batch is simply what queued up while the
//! previous commit was in flight, so an idle relayd commits requests one by one, and a
//! busy one amortizes. Every request is still answered only after its own rows are
//! committed; if a batch fails, each of its requests gets the failure (503) and nothing
//! of it was stored. The committers stop once the HTTP server has finished its
//! in-flight requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::AsyncPgConnection;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::events::{self, BatchEvent};
use crate::db::DbPool;

/// Requests stored by one statement at most.
const MAX_BATCH: usize = 128;

/// Committer tasks: several batches in flight keep the database busy while the next
/// batch forms.
const COMMITTERS: usize = 4;

/// How a request's event ended up.
#[derive(Debug)]
pub enum Stored {
    Accepted {
        id: Uuid,
        deliveries: usize,
    },
    /// `id` is the stored event's; `None` only if it was pruned in the meantime.
    Duplicate {
        id: Option<Uuid>,
    },
}

struct Pending {
    event: BatchEvent,
    reply: oneshot::Sender<Result<Stored, String>>,
}

/// The handlers' side.
#[derive(Clone)]
pub struct GroupCommitter {
    sender: mpsc::Sender<Pending>,
}

impl GroupCommitter {
    /// Starts the committer tasks; they run until `stop` is cancelled.
    /// Each batch's database work is abandoned after `query_timeout` (its requests get
    /// the failure, and 503).
    pub fn start(
        pool: DbPool,
        query_timeout: Duration,
        stop: CancellationToken,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let (sender, receiver) = mpsc::channel(MAX_BATCH * COMMITTERS * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let tasks = (0..COMMITTERS)
            .map(|_| {
                tokio::spawn(committer(
                    pool.clone(),
                    query_timeout,
                    receiver.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        (Self { sender }, tasks)
    }

    /// Stores `event` with its outbox rows, or recognises a duplicate. `Err` carries the
    /// storage failure (nothing of the request was stored).
    pub async fn store(&self, event: BatchEvent) -> Result<Stored, String> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Pending { event, reply })
            .await
            .map_err(|_| "ingest is shutting down".to_string())?;
        answer.await.map_err(|_| "the committer stopped".to_string())?
    }
}

async fn committer(
    pool: DbPool,
    query_timeout: Duration,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    stop: CancellationToken,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let first = tokio::select! {
                first = receiver.recv() => first,
                _ = stop.cancelled() => None,
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        let (events, replies): (Vec<BatchEvent>, Vec<_>) =
            batch.into_iter().map(|p| (p.event, p.reply)).unzip();
        match store_batch(&pool, query_timeout, &events).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One statement for the batch, then one lookup for its duplicates (if any).
async fn store_batch(pool: &DbPool, timeout: Duration, events: &[BatchEvent]) -> Result<Vec<Stored>, String> {
    crate::db::with_connection(pool, timeout, async |conn| store_batch_on(conn, events).await).await
}

async fn store_batch_on(conn: &mut AsyncPgConnection, events: &[BatchEvent]) -> Result<Vec<Stored>, String> {
    let inserted: HashMap<Uuid, usize> = events::insert_batch_with_outbox(conn, events)
        .await
        .map_err(|e| format!("storing the events: {e}"))?;
    let duplicates: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| !inserted.contains_key(&e.id))
        .map(|e| (e.source.as_str(), e.event_id.as_str()))
        .collect();
    let existing = if duplicates.is_empty() {
        HashMap::new()
    } else {
        events::find_ids(conn, &duplicates)
            .await
            .map_err(|e| format!("looking up duplicates: {e}"))?
    };
    Ok(events
        .iter()
        .map(|event| match inserted.get(&event.id) {
            Some(&deliveries) => Stored::Accepted {
                id: event.id,
                deliveries,
            },
            None => Stored::Duplicate {
                id: existing
                    .get(&(event.source.clone(), event.event_id.clone()))
                    .copied(),
            },
        })
        .collect())
}
