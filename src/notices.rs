//! Operator notices: the watcher that tells `[[operator_hooks]]` when a destination's
//! circuit opens or closes, when one is disabled, when a delivery goes dead, and when
//! the outbox stalls (its oldest due delivery older than `operator.stall_after`) and
//! recovers.
//!
//! Every `operator.interval` one process (a transaction-scoped advisory lock) compares
//! what the database says now with what it last saw (`operator_watch`), and stores a
//! notice for each change in the outbox ([`crate::db::notices`]) in the same
//! transaction that records having seen it: a notice is stored once, and from there
//! goes the durable way (relay, queue, worker, retries, dead letters, replay), signed
//! with the hook's secret. Changes of a hook's own destination send no notices. A
//! circuit that opens and closes within one interval is not noticed. The task lives in
//! the relay role and stops with its shutdown token, between passes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::context::AppContext;
use crate::db::destinations::{self, State};
use crate::db::notices;

/// Dead deliveries noticed per pass at most (the rest in the next ones).
const DEAD_PER_PASS: i64 = 500;

/// Watches until `shutdown`, with the configuration in force at each pass.
pub async fn run_periodically(ctx: Arc<AppContext>, shutdown: CancellationToken) {
    loop {
        let config = ctx.live.current();
        if !config.operator_hooks.is_empty() {
            let timeout = ctx.config.database.query_timeout;
            match crate::db::with_connection(&ctx.pool, timeout * 2, async |conn| {
                watch_once(conn, &config).await
            })
            .await
            {
                Ok(stored) if stored > 0 => ctx.wake.wake(),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot look for operator notices; trying again"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.operator.interval) => {}
        }
    }
}

/// One pass: stores a notice for every change since the last, and returns how many.
/// Does nothing while another process holds the watcher's lock.
pub async fn watch_once(conn: &mut AsyncPgConnection, config: &Config) -> diesel::QueryResult<usize> {
    conn.transaction(async |conn| {
        if !notices::try_lead(conn).await? {
            return Ok(0);
        }
        let now = notices::now(conn).await?;
        let notify = Notify { config, now };
        Ok(notify.destinations(conn).await? + notify.dead(conn).await? + notify.outbox(conn).await?)
    })
    .await
}

/// What a destination state reads as to an operator.
fn circuit(state: State) -> &'static str {
    match state {
        State::Closed => "closed",
        State::Open | State::HalfOpen => "open",
        State::Paused => "paused",
        State::Disabled => "disabled",
    }
}

/// The notice for a destination that was `before` and is `now` (as [`circuit`] reads
/// them), if that change is one.
fn circuit_notice(before: &str, now: &str) -> Option<&'static str> {
    match (before, now) {
        ("closed", "open") => Some("destination.circuit_opened"),
        ("open", "closed") => Some("destination.circuit_closed"),
        (b, "disabled") if b != "disabled" => Some("destination.disabled"),
        _ => None,
    }
}

struct Notify<'a> {
    config: &'a Config,
    now: DateTime<Utc>,
}

impl Notify<'_> {
    /// The hooks subscribed to `notice_type`.
    fn hooks_for(&self, notice_type: &str) -> Vec<String> {
        self.config
            .operator_hooks
            .iter()
            .filter(|h| {
                h.events.is_empty()
                    || h.events
                        .iter()
                        .any(|p| glob::Pattern::new(p).is_ok_and(|p| p.matches(notice_type)))
            })
            .map(|h| h.name.clone())
            .collect()
    }

    /// Stores one notice; `true` when it was new.
    async fn store(
        &self,
        conn: &mut AsyncPgConnection,
        id: String,
        notice_type: &str,
        data: serde_json::Value,
    ) -> diesel::QueryResult<bool> {
        let payload = json!({ "type": notice_type, "timestamp": self.now, "data": data });
        let stored = notices::store(conn, &id, notice_type, &payload, &self.hooks_for(notice_type)).await?;
        if stored {
            tracing::info!(notice = notice_type, id, "operator notice stored");
        }
        Ok(stored)
    }

    async fn destinations(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
        let rows = destinations::load(conn).await?;
        let seen = notices::seen_under(conn, "destination:").await?;
        let mut stored = 0;
        for destination in &self.config.destinations {
            let row = rows.iter().find(|r| r.destination == destination.name);
            let now = row.map_or("closed", |r| circuit(r.state()));
            let key = format!("destination:{}", destination.name);
            let before = seen.get(&key).map_or("closed", String::as_str);
            if before == now {
                continue;
            }
            if let Some(notice_type) = circuit_notice(before, now) {
                let changed_at = row.map_or(self.now, |r| r.changed_at);
                let data = json!({
                    "destination": destination.name,
                    "state": row.map_or("closed", |r| r.state().as_str()),
                    "reason": row.and_then(|r| r.reason.clone()),
                    "changed_at": changed_at,
                });
                let id = format!(
                    "{notice_type}:{}:{}",
                    destination.name,
                    changed_at.timestamp_micros()
                );
                stored += usize::from(self.store(conn, id, notice_type, data).await?);
            }
            notices::see(conn, &key, now, self.now).await?;
        }
        Ok(stored)
    }

    async fn dead(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
        const KEY: &str = "delivery.dead";
        // First pass: from now on (deliveries dead before there were hooks are not news).
        let Some((id, at)) = notices::seen(conn, KEY).await? else {
            notices::see(conn, KEY, &uuid::Uuid::nil().to_string(), self.now).await?;
            return Ok(0);
        };
        let cursor = (at, id.parse().unwrap_or_default());
        let hooks: Vec<String> = self
            .config
            .operator_hooks
            .iter()
            .map(|h| h.name.clone())
            .collect();
        let dead = notices::dead_after(conn, cursor, &hooks, DEAD_PER_PASS).await?;
        let mut stored = 0;
        for delivery in &dead {
            let data = json!({
                "delivery_id": delivery.id,
                "destination": delivery.destination,
                "attempts": delivery.attempts,
                "last_status_code": delivery.last_status_code,
                "last_error": delivery.last_error,
                "dead_at": delivery.updated_at,
                "event": {
                    "id": delivery.event_uuid,
                    "source": delivery.source,
                    "event_id": delivery.event_id,
                    "type": delivery.event_type,
                },
            });
            let id = format!(
                "delivery.dead:{}:{}",
                delivery.id,
                delivery.updated_at.timestamp_micros()
            );
            stored += usize::from(self.store(conn, id, "delivery.dead", data).await?);
        }
        if let Some(last) = dead.last() {
            notices::see(conn, KEY, &last.id.to_string(), last.updated_at).await?;
        }
        Ok(stored)
    }

    async fn outbox(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
        const KEY: &str = "outbox";
        let due = crate::db::deliveries::due_summary(conn).await?;
        let oldest = due.oldest_due_age_seconds.unwrap_or(0.0);
        let now = if oldest > self.config.operator.stall_after.as_secs_f64() {
            "stalled"
        } else {
            "ok"
        };
        let before = notices::seen(conn, KEY).await?.map(|(state, _)| state);
        if before.as_deref().unwrap_or("ok") == now {
            return Ok(0);
        }
        let notice_type = if now == "stalled" {
            "outbox.stalled"
        } else {
            "outbox.recovered"
        };
        let data = json!({
            "due": due.due,
            "oldest_due_age_seconds": oldest,
            "stall_after_seconds": self.config.operator.stall_after.as_secs_f64(),
        });
        let id = format!("{notice_type}:{}", self.now.timestamp_micros());
        let stored = self.store(conn, id, notice_type, data).await?;
        notices::see(conn, KEY, now, self.now).await?;
        Ok(usize::from(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_closing_and_disabling_are_notices_and_the_rest_is_not() {
        assert_eq!(
            circuit_notice("closed", "open"),
            Some("destination.circuit_opened")
        );
        assert_eq!(
            circuit_notice("open", "closed"),
            Some("destination.circuit_closed")
        );
        assert_eq!(circuit_notice("closed", "disabled"), Some("destination.disabled"));
        assert_eq!(circuit_notice("open", "disabled"), Some("destination.disabled"));
        assert_eq!(circuit_notice("closed", "paused"), None);
        assert_eq!(circuit_notice("paused", "closed"), None);
        assert_eq!(circuit_notice("disabled", "closed"), None);
        assert_eq!(
            circuit(State::HalfOpen),
            "open",
            "a probe out is still an open circuit"
        );
    }
}
