//! The outbox rows: one delivery per (event, destination), and their states.
//!
//! The queries are grouped by who asks: `outbox` (the relay), `claims` (the
//! worker), `listing` (the admin API), `replay` (an operator's replay and skip).

mod claims;
mod listing;
mod outbox;
mod replay;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::deliveries;

pub use claims::{
    claim, record_outcomes, Claimed, Claims, Outcome, Record, Records, CLAIM_SQL, RECORD_OUTCOMES_SQL,
};
pub use listing::{counts, for_events, get, list, DeliveryFilter, DeliveryWithEvent};
pub use outbox::{
    claim_due, due_summary, mark_queued, postpone_queued, quarantine, DueDelivery, DueSummary,
    CLAIM_DUE_SETUP, CLAIM_DUE_SQL,
};
pub use replay::{
    count_replayable, replay_one, replay_page, skip, Counted, ReplayFilter, Skipped, COUNT_BUDGET,
};

/// A delivery row as stored.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = deliveries, check_for_backend(diesel::pg::Pg))]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub destination: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_status_code: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Its key, for a destination with ordered delivery.
    pub ordering_key: Option<String>,
    /// Its place in its key's order.
    pub ordering_seq: Option<i64>,
}

/// The states of a delivery (DESIGN.md §4). Stored as text with a CHECK constraint.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum DeliveryStatus {
    /// Stored, not yet published to the broker.
    Pending,
    /// Published and confirmed by the broker; waiting for a worker.
    Queued,
    /// Claimed by a worker whose lease has not expired.
    Delivering,
    /// Failed; the relay republishes it at `next_attempt_at`.
    Retrying,
    /// The destination answered 2xx.
    Delivered,
    /// Retries exhausted; replayable by an operator.
    Dead,
    /// Set aside by the relay: no broker message can carry it (`last_error` says why).
    /// Out of every queue and index of due work; visible and replayable.
    Quarantined,
    /// Ordered: an earlier delivery of its key has not ended yet (shown as "waiting for
    /// key"). Out of the due index until its turn comes.
    Waiting,
    /// An operator skipped it: never sent (again). Replayable.
    Skipped,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 9] = [
        Self::Pending,
        Self::Queued,
        Self::Delivering,
        Self::Retrying,
        Self::Delivered,
        Self::Dead,
        Self::Quarantined,
        Self::Waiting,
        Self::Skipped,
    ];

    /// States an operator may replay from: finished ones, `quarantined`, and `retrying`
    /// (to retry now). `pending`, `queued`, `delivering` and `waiting` will go anyway.
    pub const REPLAYABLE: [&'static str; 5] = ["dead", "delivered", "retrying", "quarantined", "skipped"];

    /// States an operator may skip from: every state before an end but `delivering`
    /// (a request is out), and `dead` (to let a blocked key move on).
    pub const SKIPPABLE: [&'static str; 6] =
        ["pending", "queued", "retrying", "waiting", "dead", "quarantined"];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Delivering => "delivering",
            Self::Retrying => "retrying",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Quarantined => "quarantined",
            Self::Waiting => "waiting",
            Self::Skipped => "skipped",
        }
    }
}

super::stored_as_text!(DeliveryStatus);
