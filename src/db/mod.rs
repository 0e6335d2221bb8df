//! PostgreSQL access shared by every role: the connection pool, migrations, the
//! generated schema and the query functions.
//!
//! Query functions take `&mut AsyncPgConnection` so that the caller owns the
//! transaction. Nothing here knows about HTTP or the broker.

pub mod attempts;
pub mod deliveries;
pub mod events;
pub mod migrate;
pub mod models;
pub mod prepared;
pub mod schema;

use std::time::Duration;

use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::FutureExt;

use crate::config::DatabaseConfig;

/// The pool every role of a process shares.
pub type DbPool = Pool<AsyncPgConnection>;
/// A connection checked out of [`DbPool`].
pub type PooledConnection = Object<AsyncPgConnection>;

/// The channel ingest `NOTIFY`s after committing new outbox rows; the relay `LISTEN`s.
pub const OUTBOX_CHANNEL: &str = "relayd_outbox";

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
pub fn build_pool(
    config: &DatabaseConfig,
    application_name: &str,
    durability: Durability,
) -> anyhow::Result<DbPool> {
    let runtime = tokio::runtime::Handle::current();
    let mut session = format!("SET application_name = '{application_name}'");
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
            let mut conn = AsyncPgConnection::establish(&url).await?;
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
        config.url.expose(),
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

/// True when the database answers a trivial query within `timeout`.
pub async fn ping(pool: &DbPool, timeout: Duration) -> Result<(), String> {
    let check = async {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
