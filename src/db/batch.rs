//! Batched statements: items that concurrent callers submit at the same moment are
//! stored by one statement, and each caller gets its own item's answer.
//!
//! A [`Batcher`] owns a few tasks that take the first waiting item, then whatever else
//! is already waiting (up to `max_batch`), run the [`Statement`] once for all of them
//! and answer each caller. A quiet process runs one statement per item, a busy one
//! amortizes round trips, planning and WAL flushes. With [`Options::eager`] above one,
//! a further statement starts while one runs only once that many items wait (or after
//! [`Options::form_wait`]): under moderate load the items that arrive during one
//! statement's commit form the next batch instead of being spread over idle tasks in
//! batches of one or two, each paying a statement's fixed cost; under heavy load the
//! tasks still run side by side.
//!
//! The isolation rule lives here, once: when the database *rejects* a statement
//! because of what is in it ([`BatchError::Rejected`]: a constraint, invalid data), the
//! batch is split in halves and each half run again, so only the item that caused it
//! ends up rejected and everyone else's is stored. A rejection of a single item is
//! believed only when it repeats once. When the database is *unavailable* (no
//! connection, no answer in time, a read-only server), the whole batch is retried with
//! the batcher's backoff and then answered with the failure — splitting would only
//! multiply the load on a struggling server. A statement must be all-or-nothing (one
//! SQL statement, or one transaction) and idempotent for the items it stored, because a
//! half of a rejected batch runs again.
//!
//! The tasks stop when `stop` is cancelled (after the batch in hand is answered);
//! callers still waiting, or arriving later, get [`BatchError::Stopped`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why an item got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The database could not take the statement now; nothing of the item was stored.
    /// The same item may well succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused this item itself (it was run on its own, twice): trying it
    /// again will not help.
    #[error("rejected by the database: {0}")]
    Rejected(String),
    /// The batcher has stopped.
    #[error("stopped")]
    Stopped,
}

impl BatchError {
    /// Classifies a statement's error. Only the errors that say something about the
    /// statement's content are rejections; a lost or refused connection, a
    /// serialization failure and a read-only server (a failover under way) are not.
    pub fn from_query(error: &DieselError) -> Self {
        let rejected = match error {
            DieselError::DatabaseError(kind, _) => !matches!(
                kind,
                DatabaseErrorKind::UnableToSendCommand
                    | DatabaseErrorKind::ClosedConnection
                    | DatabaseErrorKind::SerializationFailure
                    | DatabaseErrorKind::ReadOnlyTransaction
            ),
            // Binding or reading a value failed: the data did not fit its type.
            DieselError::SerializationError(_)
            | DieselError::DeserializationError(_)
            | DieselError::QueryBuilderError(_) => true,
            _ => false,
        };
        if rejected {
            Self::Rejected(error.to_string())
        } else {
            Self::Unavailable(error.to_string())
        }
    }
}

/// A statement's unit of work ([`super::with_connection`]) that failed: no connection
/// or no answer in time is [`BatchError::Unavailable`], the statement's own error as
/// [`BatchError::from_query`] classifies it. So `?` in a [`Statement::run`] answers right.
impl From<super::Error> for BatchError {
    fn from(error: super::Error) -> Self {
        match error {
            super::Error::Query(e) => Self::from_query(&e),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// One statement run for many items.
pub trait Statement: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Output: Send + 'static;

    /// What the statement does, for logs ("claiming", "recording").
    const WHAT: &'static str;

    /// Runs the statement for `items`, all or nothing, and returns exactly one output per
    /// item, in order.
    fn run(&self, items: &[Self::Item])
        -> impl Future<Output = Result<Vec<Self::Output>, BatchError>> + Send;
}

/// How a batcher works.
#[derive(Debug, Clone)]
pub struct Options {
    /// Items stored by one statement at most.
    pub max_batch: usize,
    /// Statements in flight at once: while one runs, the next batch forms.
    pub tasks: usize,
    /// While a statement runs, the next starts only when this many items wait (1: at
    /// once, with any).
    pub eager: usize,
    /// …or when its first item has waited this long.
    pub form_wait: Duration,
    /// When a statement the database was unavailable for is tried again.
    pub retry: Retry,
}

/// Retries of a statement the database was unavailable for.
#[derive(Debug, Clone, Default)]
pub struct Retry {
    /// Waits before each retry; empty to answer the failure at once.
    pub delays: Vec<Duration>,
    /// No retry starts later than this after the first try began.
    pub within: Option<Duration>,
}

impl Retry {
    pub fn delays(delays: impl IntoIterator<Item = Duration>) -> Self {
        Self {
            delays: delays.into_iter().collect(),
            within: None,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, BatchError>>;
/// What callers hand to the tasks: an item and where its answer goes.
type Submitted<S> = (<S as Statement>::Item, Reply<<S as Statement>::Output>);
/// The tasks' shared end of the queue.
type Queue<S> = Arc<Mutex<mpsc::Receiver<Submitted<S>>>>;

/// The callers' side.
pub struct Batcher<S: Statement> {
    sender: mpsc::Sender<Submitted<S>>,
    flow: Arc<Flow>,
}

/// What the tasks know of each other and of arrivals, for [`Options::eager`].
#[derive(Default)]
struct Flow {
    running: std::sync::atomic::AtomicUsize,
    finished: tokio::sync::Notify,
    arrived: tokio::sync::Notify,
}

impl<S: Statement> Clone for Batcher<S> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            flow: self.flow.clone(),
        }
    }
}

impl<S: Statement> Batcher<S> {
    /// Starts the batcher's tasks; they run until `stop` is cancelled.
    pub fn start(statement: S, options: Options, stop: CancellationToken) -> (Self, Vec<JoinHandle<()>>) {
        let max_batch = options.max_batch.max(1);
        let (sender, receiver) = mpsc::channel(max_batch * options.tasks.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let shared = Arc::new((statement, options));
        let flow = Arc::new(Flow::default());
        let tasks = (0..shared.1.tasks.max(1))
            .map(|_| tokio::spawn(run(shared.clone(), receiver.clone(), flow.clone(), stop.clone())))
            .collect();
        (Self { sender, flow }, tasks)
    }

    /// Submits `item` and waits for its own result.
    pub async fn submit(&self, item: S::Item) -> Result<S::Output, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((item, reply))
            .await
            .map_err(|_| BatchError::Stopped)?;
        self.flow.arrived.notify_one();
        answer.await.map_err(|_| BatchError::Stopped)?
    }
}

async fn run<S: Statement>(
    shared: Arc<(S, Options)>,
    receiver: Queue<S>,
    flow: Arc<Flow>,
    stop: CancellationToken,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let (statement, options) = &*shared;
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                first = receiver.recv() => first,
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            take_waiting(&mut receiver, &mut batch, options.max_batch);
            let deadline = tokio::time::Instant::now() + options.form_wait;
            while batch.len() < options.eager.min(options.max_batch) {
                // Registered before the checks, so a statement ending or an item
                // arriving between them and the wait is not missed.
                let finished = flow.finished.notified();
                let arrived = flow.arrived.notified();
                let (mut finished, mut arrived) = (std::pin::pin!(finished), std::pin::pin!(arrived));
                finished.as_mut().enable();
                arrived.as_mut().enable();
                if flow.running.load(SeqCst) == 0 {
                    break;
                }
                tokio::select! {
                    _ = finished => {}
                    _ = arrived => {}
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = stop.cancelled() => break,
                }
                take_waiting(&mut receiver, &mut batch, options.max_batch);
            }
            take_waiting(&mut receiver, &mut batch, options.max_batch);
            flow.running.fetch_add(1, SeqCst);
            batch
        };
        let (items, replies): (Vec<S::Item>, Vec<_>) = batch.into_iter().unzip();
        let started = std::time::Instant::now();
        let results = settle(statement, &items, &options.retry, &stop).await;
        flow.running.fetch_sub(1, SeqCst);
        flow.finished.notify_waiters();
        tracing::debug!(batch = items.len(), took = ?started.elapsed(), "{} a batch", S::WHAT);
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Moves what already waits into `batch`, up to `max` items.
fn take_waiting<T>(receiver: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) {
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

/// Every item's result: the statement for all of them, split on rejection.
async fn settle<S: Statement>(
    statement: &S,
    items: &[S::Item],
    retry: &Retry,
    stop: &CancellationToken,
) -> Vec<Result<S::Output, BatchError>> {
    let mut results: Vec<Option<Result<S::Output, BatchError>>> = (0..items.len()).map(|_| None).collect();
    // Ranges of `items` still to run, with whether a single item's rejection was seen once.
    let mut todo = vec![(0..items.len(), false)];
    while let Some((range, rejected_once)) = todo.pop() {
        let part = &items[range.clone()];
        match retrying(statement, part, retry, stop).await {
            Ok(outputs) if outputs.len() == part.len() => {
                for (slot, output) in results[range].iter_mut().zip(outputs) {
                    *slot = Some(Ok(output));
                }
            }
            Ok(outputs) => {
                let error = BatchError::Rejected(format!(
                    "{} answered {} results for {} items",
                    S::WHAT,
                    outputs.len(),
                    part.len()
                ));
                tracing::error!(%error, "a batched statement broke its contract");
                results[range].fill_with(|| Some(Err(error.clone())));
            }
            Err(BatchError::Rejected(reason)) if part.len() > 1 => {
                tracing::warn!(batch = part.len(), %reason, "{}: the database rejected a batch; splitting it", S::WHAT);
                let middle = range.start + part.len() / 2;
                todo.push((middle..range.end, false));
                todo.push((range.start..middle, false));
            }
            Err(BatchError::Rejected(reason)) if !rejected_once => {
                tracing::debug!(%reason, "{}: the database rejected one item; trying it once more", S::WHAT);
                todo.push((range, true));
            }
            Err(error) => {
                if let BatchError::Rejected(reason) = &error {
                    tracing::warn!(%reason, "{}: the database rejected an item", S::WHAT);
                }
                results[range].fill_with(|| Some(Err(error.clone())));
            }
        }
    }
    results
        .into_iter()
        .map(|result| result.unwrap_or(Err(BatchError::Stopped)))
        .collect()
}

/// Runs the statement, retrying while the database is unavailable (not past `stop`).
async fn retrying<S: Statement>(
    statement: &S,
    items: &[S::Item],
    retry: &Retry,
    stop: &CancellationToken,
) -> Result<Vec<S::Output>, BatchError> {
    let started = tokio::time::Instant::now();
    let mut delays = retry.delays.iter();
    loop {
        let result = statement.run(items).await;
        let next = delays.next().filter(|delay| {
            retry
                .within
                .is_none_or(|within| started.elapsed() + **delay <= within)
        });
        match (result, next) {
            (Err(BatchError::Unavailable(e)), Some(delay)) => {
                tracing::debug!(error = %e, retry_in = ?delay, "{} failed; retrying", S::WHAT);
                tokio::select! {
                    _ = tokio::time::sleep(*delay) => {}
                    _ = stop.cancelled() => return Err(BatchError::Unavailable(e)),
                }
            }
            (result, _) => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex as StdMutex;

    /// Doubles numbers. Rejects any statement holding a negative number; is unavailable
    /// for its first `outages` runs; records every batch it was run with.
    #[derive(Default)]
    struct Doubling {
        outages: AtomicUsize,
        runs: StdMutex<Vec<Vec<i64>>>,
        /// Rejections of a 0 that pass after the first: a transient error that only
        /// looks like a rejection.
        flaky_zero: AtomicUsize,
    }

    impl Statement for Doubling {
        type Item = i64;
        type Output = i64;
        const WHAT: &'static str = "doubling";

        async fn run(&self, items: &[i64]) -> Result<Vec<i64>, BatchError> {
            self.runs.lock().unwrap().push(items.to_vec());
            if self
                .outages
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(BatchError::Unavailable("connection refused".into()));
            }
            if items.iter().any(|&i| i < 0) {
                return Err(BatchError::Rejected("negative".into()));
            }
            if items.contains(&0)
                && self
                    .flaky_zero
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(BatchError::Rejected("deadlock detected".into()));
            }
            Ok(items.iter().map(|i| i * 2).collect())
        }
    }

    fn options(retry: Vec<Duration>) -> Options {
        Options {
            max_batch: 64,
            tasks: 1,
            eager: 1,
            form_wait: Duration::ZERO,
            retry: Retry::delays(retry),
        }
    }

    async fn settle_all(
        statement: &Doubling,
        items: &[i64],
        retry: &[Duration],
    ) -> Vec<Result<i64, BatchError>> {
        settle(
            statement,
            items,
            &Retry::delays(retry.to_vec()),
            &CancellationToken::new(),
        )
        .await
    }

    /// Batches and when each started.
    type Runs = Arc<StdMutex<Vec<(tokio::time::Instant, Vec<i64>)>>>;

    /// Takes 100 ms a statement; records each batch and when it started.
    struct Slow {
        runs: Runs,
    }

    impl Statement for Slow {
        type Item = i64;
        type Output = i64;
        const WHAT: &'static str = "slow";

        async fn run(&self, items: &[i64]) -> Result<Vec<i64>, BatchError> {
            self.runs
                .lock()
                .unwrap()
                .push((tokio::time::Instant::now(), items.to_vec()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(items.to_vec())
        }
    }

    /// One item, then `later` more submitted while its statement runs, through four
    /// tasks with `eager`: each batch with when it started after the first.
    async fn behind_one(eager: usize, later: i64) -> Vec<(Duration, Vec<i64>)> {
        let runs = Runs::default();
        let stop = CancellationToken::new();
        let (batcher, _tasks) = Batcher::start(
            Slow { runs: runs.clone() },
            Options {
                max_batch: 64,
                tasks: 4,
                eager,
                form_wait: Duration::from_secs(1),
                retry: Retry::default(),
            },
            stop.clone(),
        );
        let submit = |i: i64| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.submit(i).await })
        };
        let first = submit(0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rest: Vec<_> = (1..=later).map(submit).collect();
        assert_eq!(first.await.unwrap(), Ok(0));
        for (i, handle) in (1..).zip(rest) {
            assert_eq!(handle.await.unwrap(), Ok(i));
        }
        stop.cancel();
        let runs = runs.lock().unwrap();
        let start = runs[0].0;
        runs.iter()
            .map(|(at, items)| (*at - start, items.clone()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn items_arriving_during_a_statement_form_the_next_batch_when_few() {
        let runs = behind_one(32, 5).await;
        assert_eq!(
            runs,
            vec![
                (Duration::ZERO, vec![0]),
                (Duration::from_millis(100), vec![1, 2, 3, 4, 5])
            ]
        );
        // Without `eager` an idle task takes them at once, beside the running one.
        let runs = behind_one(1, 5).await;
        assert_eq!(runs[1], (Duration::from_millis(10), vec![1, 2, 3, 4, 5]));
    }

    #[tokio::test(start_paused = true)]
    async fn enough_waiting_items_start_a_statement_beside_the_running_one() {
        let runs = behind_one(4, 4).await;
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[1].1, vec![1, 2, 3, 4]);
        assert!(runs[1].0 < Duration::from_millis(100), "{runs:?}");
    }

    #[tokio::test]
    async fn one_rejected_item_fails_alone_and_everyone_else_is_stored() {
        let statement = Doubling::default();
        let items: Vec<i64> = (1..=40).chain([-7]).chain(41..=80).collect();
        let results = settle_all(&statement, &items, &[]).await;
        for (item, result) in items.iter().zip(&results) {
            if *item < 0 {
                assert_eq!(result, &Err(BatchError::Rejected("negative".into())));
            } else {
                assert_eq!(result, &Ok(item * 2), "item {item}");
            }
        }
        // Halving finds the bad item in about 2·log2(81) statements, not 81.
        let runs = statement.runs.lock().unwrap().len();
        assert!(runs <= 2 * 7 + 2, "{runs} statements");
        // Every good item was stored by exactly one successful statement.
        let stored: Vec<i64> = statement
            .runs
            .lock()
            .unwrap()
            .iter()
            .filter(|run| run.iter().all(|&i| i >= 0))
            .flatten()
            .copied()
            .collect();
        let mut sorted = stored.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(stored.len(), sorted.len(), "an item was stored twice");
        assert_eq!(sorted.len(), 80);
    }

    #[tokio::test]
    async fn several_rejected_items_each_get_their_own_rejection() {
        let statement = Doubling::default();
        let items = vec![-1, 2, 3, -4, 5, -6, 7, 8];
        let results = settle_all(&statement, &items, &[]).await;
        let rejected: Vec<i64> = items
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(rejected, vec![-1, -4, -6]);
    }

    #[tokio::test]
    async fn a_single_rejection_that_does_not_repeat_is_not_believed() {
        let statement = Doubling {
            flaky_zero: AtomicUsize::new(1),
            ..Doubling::default()
        };
        assert_eq!(settle_all(&statement, &[0], &[]).await, vec![Ok(0)]);
        assert_eq!(statement.runs.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_unavailable_database_is_retried_as_one_batch_never_split() {
        let statement = Doubling {
            outages: AtomicUsize::new(2),
            ..Doubling::default()
        };
        let retry = vec![Duration::from_millis(1); 3];
        let results = settle_all(&statement, &[1, 2, 3, 4], &retry).await;
        assert_eq!(results, vec![Ok(2), Ok(4), Ok(6), Ok(8)]);
        let runs = statement.runs.lock().unwrap().clone();
        assert_eq!(runs, vec![vec![1, 2, 3, 4]; 3]);
    }

    #[tokio::test]
    async fn retries_stop_when_the_next_would_start_past_the_time_allowed() {
        let statement = Doubling {
            outages: AtomicUsize::new(1000),
            ..Doubling::default()
        };
        let retry = Retry {
            delays: vec![Duration::from_millis(20); 1000],
            within: Some(Duration::from_millis(100)),
        };
        let started = std::time::Instant::now();
        let results = settle(&statement, &[1], &retry, &CancellationToken::new()).await;
        assert!(matches!(results[0], Err(BatchError::Unavailable(_))));
        let runs = statement.runs.lock().unwrap().len();
        assert!((4..=6).contains(&runs), "{runs} tries in 100 ms at 20 ms apart");
        assert!(started.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test]
    async fn an_outage_longer_than_the_retries_fails_every_item_with_it() {
        let statement = Doubling {
            outages: AtomicUsize::new(10),
            ..Doubling::default()
        };
        let retry = vec![Duration::from_millis(1); 2];
        let results = settle_all(&statement, &[1, 2], &retry).await;
        let unavailable = Err(BatchError::Unavailable("connection refused".into()));
        assert_eq!(results, vec![unavailable.clone(), unavailable]);
        assert_eq!(statement.runs.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn concurrent_callers_share_statements_and_get_their_own_answers() {
        let stop = CancellationToken::new();
        let (batcher, tasks) = Batcher::start(Doubling::default(), options(vec![]), stop.clone());
        let callers: Vec<_> = (-3..100)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.submit(i).await) })
            })
            .collect();
        for caller in callers {
            let (i, result) = caller.await.unwrap();
            if i < 0 {
                assert!(matches!(result, Err(BatchError::Rejected(_))), "{i}: {result:?}");
            } else {
                assert_eq!(result, Ok(i * 2));
            }
        }
        stop.cancel();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(batcher.submit(1).await, Err(BatchError::Stopped));
    }

    #[test]
    fn only_content_errors_are_rejections() {
        let db = |kind| DieselError::DatabaseError(kind, Box::new("message".to_string()));
        for kind in [
            DatabaseErrorKind::UnableToSendCommand,
            DatabaseErrorKind::ClosedConnection,
            DatabaseErrorKind::SerializationFailure,
            DatabaseErrorKind::ReadOnlyTransaction,
        ] {
            assert!(matches!(
                BatchError::from_query(&db(kind)),
                BatchError::Unavailable(_)
            ));
        }
        for kind in [
            DatabaseErrorKind::UniqueViolation,
            DatabaseErrorKind::CheckViolation,
            DatabaseErrorKind::NotNullViolation,
            DatabaseErrorKind::Unknown,
        ] {
            assert!(matches!(
                BatchError::from_query(&db(kind)),
                BatchError::Rejected(_)
            ));
        }
        assert!(matches!(
            BatchError::from_query(&DieselError::BrokenTransactionManager),
            BatchError::Unavailable(_)
        ));
    }
}
