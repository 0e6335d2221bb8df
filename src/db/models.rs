//! Rows as Rust types, and the delivery states.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::deliveries;

/// A delivery row as stored.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = deliveries, check_for_backend(diesel::pg::Pg))]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub destination: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_status_code: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The states of a delivery (DESIGN.md §4). Stored as text with a CHECK constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 7] = [
        Self::Pending,
        Self::Queued,
        Self::Delivering,
        Self::Retrying,
        Self::Delivered,
        Self::Dead,
        Self::Quarantined,
    ];

    /// States an operator may replay from: finished ones, `quarantined`, and `retrying`
    /// (to retry now). `pending`, `queued` and `delivering` are in flight already.
    pub const REPLAYABLE: [&'static str; 4] = ["dead", "delivered", "retrying", "quarantined"];

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
        }
    }
}
