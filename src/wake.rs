//! The outbox wake-up: how relays learn at once that rows are due, in this process and
//! in others.
//!
//! Whoever commits due rows (ingest, an operator's replay) calls [`OutboxWake::wake`]
//! after the commit. The relay of this process, if it runs one, is woken directly.
//! Otherwise [`notify_relays`] sends one PostgreSQL `NOTIFY` per burst of wake-ups, and
//! relays elsewhere hear it through [`listen`], which holds its own connection, pings
//! it, and replaces it by itself when it fails or stops answering. A lost wake-up
//! (database down, a connection being replaced) only delays a relay until its poll
//! interval. Both tasks stop with their shutdown token. Ingest also counts its commits
//! of new events ([`OutboxWake::events_stored`]), which wakes the admin API's event
//! streams in this process.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{self, DbPool};

/// The channel `NOTIFY`ed after due outbox rows were committed; relays `LISTEN` on it.
pub const OUTBOX_CHANNEL: &str = "relayd_outbox";

/// How often the `LISTEN` connection is pinged while it is quiet. A connection that
/// went half-open behind a peer that still acknowledges TCP (so keepalives pass) would
/// otherwise deliver nothing, and say nothing, for as long as the process lives.
const LISTEN_PING: Duration = Duration::from_secs(5);

/// Wake-ups for the relays. `Notify` keeps one permit, so a wake-up that arrives while
/// the relay (or the `NOTIFY` task) is busy is kept, and a burst collapses into one.
pub struct OutboxWake {
    /// The relay of this process waits here.
    local: Notify,
    /// Wakes [`notify_relays`]; `None` when this process runs a relay. That relay
    /// publishes the rows, and a `NOTIFY` would only cost PostgreSQL a global commit
    /// lock and every relay an empty extra turn (relays elsewhere still find the rows
    /// on their poll interval).
    remote: Option<Notify>,
    /// Counts commits of new events in this process, for the admin API's event streams
    /// here (each watches it; streams in other processes poll).
    stored: tokio::sync::watch::Sender<u64>,
}

impl OutboxWake {
    /// `local_relay`: this process runs a relay.
    pub fn new(local_relay: bool) -> Self {
        Self {
            local: Notify::new(),
            remote: (!local_relay).then(Notify::new),
            stored: tokio::sync::watch::Sender::new(0),
        }
    }

    /// New events were committed (whether or not any delivery is due).
    pub fn events_stored(&self) {
        self.stored.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes at each [`Self::events_stored`] after this call.
    pub fn watch_stored(&self) -> tokio::sync::watch::Receiver<u64> {
        self.stored.subscribe()
    }

    /// Due rows were committed: wake the relay here, or relays elsewhere.
    pub fn wake(&self) {
        self.local.notify_one();
        if let Some(remote) = &self.remote {
            remote.notify_one();
        }
    }

    /// Whether wake-ups go to relays in other processes (this one runs none), so that
    /// [`notify_relays`] must run.
    pub fn notifies_others(&self) -> bool {
        self.remote.is_some()
    }

    /// Returns at the next wake-up (at once if one came since the last call).
    pub async fn notified(&self) {
        self.local.notified().await;
    }
}

/// Sends `NOTIFY` on [`OUTBOX_CHANNEL`] after wake-ups, for relays in other processes;
/// returns at once when this process runs a relay itself.
///
/// Not inside the committing transaction: PostgreSQL serializes the commits of every
/// transaction that notified on one global lock, which would cost ingest its group
/// commit. Wake-ups that arrive while a `NOTIFY` is being sent collapse into the next.
pub async fn notify_relays(
    wake: Arc<OutboxWake>,
    pool: DbPool,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let Some(remote) = &wake.remote else { return };
    loop {
        tokio::select! {
            _ = remote.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        let sent = db::with_connection(&pool, timeout, async |conn| notify(conn).await).await;
        if let Err(error) = sent {
            tracing::debug!(%error, "outbox NOTIFY failed; relays will poll");
        }
    }
}

/// Sends one `NOTIFY` on [`OUTBOX_CHANNEL`] (delivered when `conn`'s transaction, if
/// any, commits).
pub async fn notify(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    diesel::sql_query(format!("NOTIFY {OUTBOX_CHANNEL}"))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Turns `NOTIFY`s from other processes into wake-ups of this process's relay, on a
/// connection of its own (a pooled one would be recycled). When the connection fails,
/// closes, leaves a ping unanswered for `timeout` or finds the server read-only (a
/// fenced primary: the writers notify elsewhere), it is replaced at once and then
/// with backoff, and the relay is woken after each reconnect since notifications sent
/// meanwhile are lost. Connecting gives up after `connect_timeout`.
pub async fn listen(
    wake: Arc<OutboxWake>,
    database_url: String,
    connect_timeout: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let woken = move || wake.local.notify_one();
    listen_on(
        OUTBOX_CHANNEL,
        woken,
        database_url,
        connect_timeout,
        timeout,
        shutdown,
    )
    .await;
}

/// Calls `wake` for each `NOTIFY` on `channel` from any process, and after each
/// (re)connect since notifications sent meanwhile are lost; see [`listen`], which is
/// this for the outbox.
pub async fn listen_on(
    channel: &'static str,
    wake: impl Fn(),
    database_url: String,
    connect_timeout: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let url = db::with_keepalive(&database_url);
    let mut delays = delays();
    while !shutdown.is_cancelled() {
        let connected = tokio::time::timeout(connect_timeout, connect(&url, channel))
            .await
            .unwrap_or(Err(ListenError::ConnectTimedOut(connect_timeout)));
        match connected {
            Ok(mut conn) => {
                tracing::debug!(channel, "listening for notifications");
                wake();
                match forward(&mut conn, &wake, timeout, &shutdown).await {
                    None => return,
                    Some(reason) => {
                        tracing::warn!(channel, %reason, "LISTEN connection lost; reconnecting");
                        // The first try after a loss is immediate.
                        delays = self::delays();
                        continue;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(channel, %error, "cannot LISTEN; polling meanwhile");
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Why a `LISTEN` connection could not be opened, or was given up.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(transparent)]
    Connect(#[from] diesel::ConnectionError),
    #[error("no connection within {0:?}")]
    ConnectTimedOut(Duration),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error("the connection closed")]
    Closed,
    #[error("the server became read-only; the writable one is elsewhere")]
    ReadOnly,
    #[error("no answer to a ping within {0:?}")]
    PingTimedOut(Duration),
}

/// Forwards notifications until the connection fails (returns why) or `shutdown`
/// (returns `None`), pinging it every [`LISTEN_PING`].
async fn forward(
    conn: &mut AsyncPgConnection,
    wake: &impl Fn(),
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Option<ListenError> {
    loop {
        {
            // Notifications arrive on the connection's own queue: none is lost while
            // this stream is dropped for a ping.
            let notifications = conn.notifications_stream();
            let mut notifications = std::pin::pin!(notifications);
            let quiet = tokio::time::sleep(LISTEN_PING);
            let mut quiet = std::pin::pin!(quiet);
            loop {
                tokio::select! {
                    item = notifications.next() => match item {
                        Some(Ok(_)) => wake(),
                        Some(Err(e)) => return Some(e.into()),
                        None => return Some(ListenError::Closed),
                    },
                    _ = &mut quiet => break,
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
        // The ping also asks whether the server is still writable: on a primary fenced
        // read-only in a switchover, this connection would go on hearing nothing, since
        // the writers' `NOTIFY`s now go to the new primary.
        let ping = diesel::sql_query("SELECT 1 WHERE current_setting('transaction_read_only') = 'off'");
        match tokio::time::timeout(timeout, ping.execute(conn)).await {
            Ok(Ok(1)) => {}
            Ok(Ok(_)) => return Some(ListenError::ReadOnly),
            Ok(Err(e)) => return Some(e.into()),
            Err(_) => return Some(ListenError::PingTimedOut(timeout)),
        }
    }
}

async fn connect(url: &str, channel: &str) -> Result<AsyncPgConnection, ListenError> {
    let mut conn = db::connect(url).await?;
    diesel::sql_query(format!("LISTEN {channel}"))
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

fn delays() -> impl Iterator<Item = Duration> {
    std::iter::once(Duration::ZERO).chain(crate::retry::backoff(
        Duration::from_millis(500),
        Duration::from_secs(5),
    ))
}
