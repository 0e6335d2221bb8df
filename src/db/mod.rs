//! PostgreSQL access shared by every role: the connection pool, migrations, the
//! generated schema and the query functions.
//!
//! Query functions take `&mut AsyncPgConnection` so that the caller owns the
//! transaction. Nothing here knows about HTTP or the broker.

pub mod attempts;
pub mod batch;
mod connect;
pub mod deliveries;
pub mod destinations;
pub mod events;
pub mod migrate;
pub mod notices;
pub mod ordering;
pub mod prepared;
pub mod replay_jobs;
pub mod schema;
pub mod workers;

use std::time::Duration;

use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::FutureExt;

use crate::config::DatabaseConfig;
pub use connect::{check_url, connect};

/// A state column's enum, stored as its text (`as_str`/`parse`): read and written by
/// diesel as `Text`, shown by serde and `Display` as that text. An unknown text in the
/// database is a deserialization error naming it.
macro_rules! stored_as_text {
    ($ty:ty) => {
        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $ty {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    self.as_str(),
                    out,
                )
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $ty {
            fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = <String as diesel::deserialize::FromSql<
                    diesel::sql_types::Text,
                    diesel::pg::Pg,
                >>::from_sql(bytes)?;
                Self::parse(&text).ok_or_else(|| format!("unknown {} {text:?}", stringify!($ty)).into())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use stored_as_text;

/// The pool every role of a process shares.
pub type DbPool = Pool<AsyncPgConnection>;
/// A connection checked out of [`DbPool`].
pub type PooledConnection = Object<AsyncPgConnection>;
/// Why [`DbPool`] gave no connection.
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

/// How a pool's transactions commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit waits for its WAL flush: ingest, admin, retention.
    Synchronous,
    /// Commits do not wait for the WAL flush (`synchronous_commit = off`): the relay's
    /// and the worker's state changes. If PostgreSQL crashes, the last few hundred
    /// milliseconds of them may be forgotten, and every such loss leads back to a state
    /// from which the delivery is sent again (same `webhook-id`) — never to a lost event.
    /// It saves a flush per claim and per recorded outcome.
    Relaxed,
}

/// Builds a pool. Connections are opened lazily, so this succeeds while the database
/// is down; the first query reports it. Every connection is established on the runtime
/// that calls this (the daemon's main runtime) so that a connection's I/O task never
/// lives on a short-lived runtime such as an HTTP worker thread's.
///
/// `idle_in_transaction` is how long the server lets a session of this pool sit idle
/// inside a transaction before it ends the session: a relayd whose connection went
/// silent mid-transaction (half-open, or the process frozen) must not keep the rows it
/// locked from every other relay until TCP gives up, hours later.
pub fn build_pool(
    config: &DatabaseConfig,
    application_name: &str,
    durability: Durability,
    idle_in_transaction: Duration,
) -> anyhow::Result<DbPool> {
    let runtime = tokio::runtime::Handle::current();
    let mut session = format!(
        "SET application_name = '{application_name}'; SET idle_in_transaction_session_timeout = {}",
        idle_in_transaction.as_millis().max(1)
    );
    if durability == Durability::Relaxed {
        // The relay's and worker's statements find rows through indexes whose best use
        // depends on how full the outbox is: they are planned per execution even when
        // cached (see `prepared`). The synchronous pool's only cached statement, the
        // ingest insert, has one plan whatever the table sizes, so PostgreSQL may keep
        // a generic plan of it and skip planning.
        session.push_str("; SET synchronous_commit TO OFF; SET plan_cache_mode = force_custom_plan");
    }
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    // No `SELECT 1` round trip on every checkout: a broken connection fails its first
    // query instead (ingest answers 503, the relay and worker retry) and is discarded.
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |url| {
        let url = url.to_string();
        let session = session.clone();
        let establish = runtime.spawn(async move {
            let mut conn = connect(&url).await?;
            conn.batch_execute(&session)
                .await
                .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
            Ok(conn)
        });
        async move {
            establish
                .await
                .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        with_keepalive(config.url.expose()),
        manager_config,
    );
    let pool = Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?;
    Ok(pool)
}

/// Whether the database answers a trivial query within `timeout`.
pub async fn ping(pool: &DbPool, timeout: Duration) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let conn = tokio::time::timeout(timeout, pool.get())
        .await
        .map_err(|_| TimedOut(timeout))??;
    let left = timeout.saturating_sub(started.elapsed());
    bounded(conn, left, async |conn| {
        diesel::sql_query("SELECT 1").execute(conn).await
    })
    .await??;
    Ok(())
}

/// A unit of database work that got no answer in time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the database did not answer within {0:?}")]
pub struct TimedOut(pub Duration);

/// Runs `work` on `conn`, giving up after `timeout`. Without this, a server that stops
/// answering (hung, or behind a connection that went half-open, where no error ever
/// arrives) holds the caller until TCP gives up, many minutes later. An abandoned
/// connection is closed, never returned to the pool: a late reply, or an open
/// transaction, may still be on it; so is one whose work ended in an error that
/// condemns it ([`Discards`]: a write refused as read-only).
pub async fn bounded<T: Discards>(
    conn: PooledConnection,
    timeout: Duration,
    work: impl AsyncFnOnce(&mut AsyncPgConnection) -> T,
) -> Result<T, TimedOut> {
    watched(conn, timeout, async |conn, _| work(conn).await).await
}

/// True for the error of a write on a server that is (now) read-only: a primary fenced
/// or demoted in a switchover. Its connection must not be reused — every later write
/// on it fails the same way — while a new one finds the writable server
/// (`target_session_attrs=read-write` in a multi-host `database.url`).
pub fn is_read_only(error: &diesel::result::Error) -> bool {
    matches!(
        error,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::ReadOnlyTransaction, _)
    )
}

/// Whether a connection whose work ended with `outcome` must be closed rather than
/// returned to the pool.
pub trait Discards {
    fn discards_connection(&self) -> bool;
}

impl<T> Discards for diesel::QueryResult<T> {
    fn discards_connection(&self) -> bool {
        self.as_ref().err().is_some_and(is_read_only)
    }
}

impl<T> Discards for anyhow::Result<T> {
    fn discards_connection(&self) -> bool {
        self.as_ref().err().is_some_and(|e| {
            e.chain().any(|cause| {
                cause
                    .downcast_ref::<diesel::result::Error>()
                    .is_some_and(is_read_only)
            })
        })
    }
}

/// Why a piece of database work under [`with_connection`] did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection from the pool in time (the database is down or every connection
    /// is busy).
    #[error("getting a database connection: {0}")]
    Pool(#[from] PoolError),
    /// The work got no answer in time; its connection was closed.
    #[error(transparent)]
    TimedOut(#[from] TimedOut),
    /// The work's own error.
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

/// Checks a connection out of `pool` and runs `work` on it under [`bounded`]: the
/// usual shape of one short piece of database work, for every role.
pub async fn with_connection<T>(
    pool: &DbPool,
    timeout: Duration,
    work: impl AsyncFnOnce(&mut AsyncPgConnection) -> diesel::QueryResult<T>,
) -> Result<T, Error> {
    let conn = pool.get().await?;
    Ok(bounded(conn, timeout, work).await??)
}

/// The deadline of the phase that work under [`watched`] is in.
pub struct Watchdog {
    /// The phase's deadline and its length.
    phase: std::sync::Mutex<(tokio::time::Instant, Duration)>,
}

impl Watchdog {
    fn new(timeout: Duration) -> Self {
        Self {
            phase: std::sync::Mutex::new((tokio::time::Instant::now() + timeout, timeout)),
        }
    }

    /// A new phase starts now and must end within `timeout`.
    pub fn arm(&self, timeout: Duration) {
        if let Ok(mut phase) = self.phase.lock() {
            *phase = (tokio::time::Instant::now() + timeout, timeout);
        }
    }

    fn phase(&self) -> (tokio::time::Instant, Duration) {
        self.phase.lock().map(|p| *p).unwrap_or_else(|p| *p.into_inner())
    }
}

/// [`bounded`] for work in phases of different lengths (a transaction that waits for
/// the broker between two statements): the first phase gets `first`, and `work` arms
/// the [`Watchdog`] at the start of each later one. The work is abandoned, and its
/// connection closed, as soon as a phase overruns, not when the longest total would.
pub async fn watched<T: Discards>(
    mut conn: PooledConnection,
    first: Duration,
    work: impl AsyncFnOnce(&mut AsyncPgConnection, &Watchdog) -> T,
) -> Result<T, TimedOut> {
    let watchdog = Watchdog::new(first);
    let outcome = {
        let work = work(&mut conn, &watchdog);
        let mut work = std::pin::pin!(work);
        loop {
            let (deadline, timeout) = watchdog.phase();
            tokio::select! {
                value = &mut work => break Ok(value),
                _ = tokio::time::sleep_until(deadline) => {
                    // The work may have armed a later deadline meanwhile.
                    if watchdog.phase().0 <= tokio::time::Instant::now() {
                        break Err(TimedOut(timeout));
                    }
                }
            }
        }
    };
    if outcome.as_ref().is_ok_and(|value| !value.discards_connection()) {
        return outcome;
    }
    drop(Object::take(conn));
    outcome
}

/// `url` with TCP keepalive settings added unless the URL sets them: a connection whose
/// peer vanished (a failed host, a dropped route) is noticed in about 25 s instead of
/// the operating system's two hours. (A server that still acknowledges TCP but answers
/// nothing is caught by [`bounded`] and [`watched`] instead.)
pub fn with_keepalive(url: &str) -> String {
    let mut url = url.to_string();
    for (key, value) in [
        ("keepalives_idle", "10"),
        ("keepalives_interval", "5"),
        ("keepalives_retries", "3"),
    ] {
        let query = url.split_once('?').map_or("", |(_, q)| q);
        if query.split('&').any(|pair| pair.split('=').next() == Some(key)) {
            continue;
        }
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("{key}={value}"));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_settings_are_added_unless_the_url_has_them() {
        assert_eq!(
            with_keepalive("postgres://u@h/db"),
            "postgres://u@h/db?keepalives_idle=10&keepalives_interval=5&keepalives_retries=3"
        );
        assert_eq!(
            with_keepalive("postgres://u@h/db?sslmode=require&keepalives_idle=60"),
            "postgres://u@h/db?sslmode=require&keepalives_idle=60&keepalives_interval=5&keepalives_retries=3"
        );
    }
}
