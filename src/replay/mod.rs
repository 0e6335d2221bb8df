//! Replay: deliveries put back to `pending` with a fresh attempt budget, in bulk, as a
//! replay job. This module owns the one request an operator makes for it — the admin
//! API's `POST /admin/api/replays` body, its older `POST /admin/api/replay` form and
//! `relayd replay`'s arguments are all a [`Request`] — and the job runner ([`jobs`]).
//! The queries are in `db` like every other (`db::replay_jobs` for the jobs' rows,
//! `db::deliveries::replay` for the deliveries they reset). One delivery replayed by id
//! is not a job: `db::deliveries::replay_one`.

pub mod jobs;

use serde::Deserialize;

use crate::db::deliveries::DeliveryStatus;
use crate::db::deliveries::ReplayFilter;

/// The highest `max_rate` a replay job takes, deliveries a second.
pub const MAX_RATE: i32 = 100_000;

/// Which deliveries to replay, how fast, and whether only to count them: the admin
/// API's JSON body and `relayd replay`'s arguments alike. At least one filter, or
/// `all` alone. Unknown keys are refused: a misspelt filter must not widen a replay.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Only deliveries in this state: dead, delivered, retrying, quarantined or skipped.
    #[arg(long)]
    pub status: Option<String>,
    /// Only deliveries to this destination.
    #[arg(long)]
    pub destination: Option<String>,
    /// Only events from this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Only events of this type.
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only events received at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events received before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Replay every replayable delivery (required when no filter is given).
    #[arg(long)]
    #[serde(default)]
    pub all: bool,
    /// Count the matching deliveries and change nothing.
    #[arg(long)]
    #[serde(default)]
    pub dry_run: bool,
    /// Deliveries replayed per second at most (the job's pace, shared with the relays);
    /// unset: as fast as pages go.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=MAX_RATE as i64))]
    pub max_rate: Option<i32>,
}

/// A [`Request`] that passed its checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub filter: ReplayFilter,
    pub max_rate: Option<i32>,
    pub dry_run: bool,
}

/// Why a [`Request`] is refused (answered 400, or printed by `relayd replay`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("status {0:?} cannot be replayed (one of: {list})", list = DeliveryStatus::REPLAYABLE.join(", "))]
    Status(String),
    #[error("an empty filter would replay everything: ask for it explicitly (\"all\": true, or --all)")]
    EmptyFilter,
    #[error("\"all\" cannot be combined with other filters")]
    AllWithFilters,
    #[error("max_rate must be between 1 and {MAX_RATE} deliveries a second")]
    Rate,
}

impl Request {
    /// The database filter and the rate; refuses an empty filter unless `all` says so.
    pub fn check(self) -> Result<Checked, Invalid> {
        if self.max_rate.is_some_and(|rate| !(1..=MAX_RATE).contains(&rate)) {
            return Err(Invalid::Rate);
        }
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(s) if DeliveryStatus::REPLAYABLE.contains(&s) => Some(s.to_string()),
            Some(s) => return Err(Invalid::Status(s.to_string())),
        };
        let non_empty = |text: Option<String>| text.filter(|t| !t.is_empty());
        let filter = ReplayFilter {
            status,
            destination: non_empty(self.destination),
            source: non_empty(self.source),
            event_type: non_empty(self.event_type),
            since: self.since,
            until: self.until,
        };
        match (filter.is_empty(), self.all) {
            (true, false) => Err(Invalid::EmptyFilter),
            (false, true) => Err(Invalid::AllWithFilters),
            _ => Ok(Checked {
                filter,
                max_rate: self.max_rate,
                dry_run: self.dry_run,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_needs_a_filter_or_all_alone_and_a_sane_rate() {
        assert_eq!(Request::default().check(), Err(Invalid::EmptyFilter));
        let all = Request {
            all: true,
            ..Request::default()
        };
        assert_eq!(all.check().map(|c| c.filter.is_empty()), Ok(true));
        let both = Request {
            all: true,
            source: Some("stripe".into()),
            ..Request::default()
        };
        assert_eq!(both.check(), Err(Invalid::AllWithFilters));
        let queued = Request {
            status: Some("queued".into()),
            ..Request::default()
        };
        assert_eq!(queued.check(), Err(Invalid::Status("queued".into())));
        let fast = Request {
            all: true,
            max_rate: Some(MAX_RATE + 1),
            ..Request::default()
        };
        assert_eq!(fast.check(), Err(Invalid::Rate));
    }

    #[test]
    fn a_misspelt_key_is_refused_not_ignored() {
        let misspelt = serde_json::from_str::<Request>(r#"{"destinaton": "billing"}"#);
        assert!(misspelt.is_err());
    }
}
