//! PostgreSQL `LISTEN` on the outbox channel, forwarded to the relay's wake-up signal.
//!
//! Ingest in another process `NOTIFY`s on commit; this task turns each notification
//! into a wake-up. It holds its own connection (a pooled one would be recycled), and
//! reconnects with backoff when the connection drops, waking the relay once after each
//! reconnect since notifications sent meanwhile are lost. It stops with `shutdown`.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::OUTBOX_CHANNEL;

pub async fn forward_notifications(database_url: String, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut delays = delays();
    while !shutdown.is_cancelled() {
        match listen(&database_url).await {
            Ok(mut conn) => {
                delays = self::delays();
                tracing::debug!(channel = OUTBOX_CHANNEL, "listening for outbox notifications");
                wake.notify_one();
                let notifications = conn.notifications_stream();
                let mut notifications = std::pin::pin!(notifications);
                loop {
                    tokio::select! {
                        item = notifications.next() => match item {
                            Some(Ok(_)) => wake.notify_one(),
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "outbox LISTEN connection failed; reconnecting");
                                break;
                            }
                            None => {
                                tracing::warn!("outbox LISTEN connection closed; reconnecting");
                                break;
                            }
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for outbox notifications; polling meanwhile")
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn listen(database_url: &str) -> diesel::QueryResult<AsyncPgConnection> {
    let mut conn = AsyncPgConnection::establish(&crate::db::with_keepalive(database_url))
        .await
        .map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))?;
    diesel::sql_query(format!("LISTEN {OUTBOX_CHANNEL}"))
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

fn delays() -> impl Iterator<Item = Duration> {
    crate::retry::backoff(Duration::from_millis(500), Duration::from_secs(10))
}
