//! Replay: deliveries put back to `pending` with a fresh attempt budget, in bulk, as a
//! replay job. This module owns the one request an operator makes for it — the admin
//! API's `POST /admin/api/replays` body, its older `POST /admin/api/replay` form and
//! `relayd replay`'s arguments are all a [`Request`], whose event terms are the event
//! search's ([`crate::search`]) — and the job runner ([`jobs`]).
//! The queries are in `db` like every other (`db::replay_jobs` for the jobs' rows,
//! `db::deliveries::replay` for the deliveries they reset). One delivery replayed by id
//! is not a job: `db::deliveries::replay_one`.

pub mod jobs;

use serde::Deserialize;

use crate::db::deliveries::DeliveryStatus;
use crate::db::deliveries::ReplayFilter;
use crate::db::events::EventConditions;
use crate::search::{Search, Terms};

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
    /// Only events of this type; `invoice.*` for every type that starts `invoice.`.
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only events received at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events received before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events whose JSON body contains this JSON document
    /// (`{"data":{"object":{"customer":"cus_123"}}}`), as the event search's `match`.
    #[arg(long = "match", value_name = "JSON")]
    #[serde(rename = "match")]
    pub matches: Option<String>,
    /// Only events for which this payload-filter expression is true
    /// (`body.data.object.amount >= 1000`), as the event search's `where`.
    #[arg(long = "where", value_name = "EXPRESSION")]
    #[serde(rename = "where")]
    pub filter: Option<String>,
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
    #[error(transparent)]
    Search(#[from] crate::search::Invalid),
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
        let mut conditions = EventConditions::of_type(non_empty(self.source), non_empty(self.event_type));
        conditions.since = self.since;
        conditions.until = self.until;
        let search = Search::new(
            conditions,
            Terms {
                matches: self.matches,
                filter: self.filter,
            },
        )?;
        let filter = ReplayFilter {
            status,
            destination: non_empty(self.destination),
            conditions: search.conditions,
            matches: search.terms.matches,
            filter: search.terms.filter,
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
    fn a_request_takes_the_event_search() {
        let request: Request = serde_json::from_str(
            r#"{"event_type": "invoice.*", "match": "{\"livemode\": true}", "where": "body.amount >= 1000"}"#,
        )
        .unwrap();
        let checked = request.check().unwrap();
        assert_eq!(
            checked.filter.conditions.event_type_prefix.as_deref(),
            Some("invoice.")
        );
        assert_eq!(
            checked.filter.conditions.contains,
            vec![serde_json::json!({"livemode": true})]
        );
        assert_eq!(checked.filter.filter.as_deref(), Some("body.amount >= 1000"));
        let stored = serde_json::to_value(&checked.filter).unwrap();
        assert_eq!(stored["where"], "body.amount >= 1000");
        assert_eq!(
            serde_json::from_value::<ReplayFilter>(stored).unwrap(),
            checked.filter,
            "a job's stored filter reads back"
        );
        let bad = Request {
            matches: Some("{".into()),
            ..Request::default()
        };
        assert!(
            matches!(
                bad.check(),
                Err(Invalid::Search(crate::search::Invalid::Match { line: 1, .. }))
            ),
            "a bad match is refused with its position"
        );
        let with_all = Request {
            all: true,
            filter: Some("body.a == 1".into()),
            ..Request::default()
        };
        assert_eq!(with_all.check(), Err(Invalid::AllWithFilters));
    }

    #[test]
    fn a_job_stored_before_searches_reads_back() {
        let stored = serde_json::json!({
            "status": "dead", "destination": null, "source": "stripe",
            "event_type": "invoice.paid", "since": null, "until": null
        });
        let filter: ReplayFilter = serde_json::from_value(stored).unwrap();
        assert_eq!(filter.conditions.source.as_deref(), Some("stripe"));
        assert_eq!(filter.conditions.event_type.as_deref(), Some("invoice.paid"));
        assert!(filter.filter.is_none());
    }

    #[test]
    fn a_misspelt_key_is_refused_not_ignored() {
        let misspelt = serde_json::from_str::<Request>(r#"{"destinaton": "billing"}"#);
        assert!(misspelt.is_err());
    }
}
