//! Finding the row that breaks the broker session, when the publisher's own check
//! ([`crate::broker::OutgoingMessage::unpublishable`]) did not see it coming.
//!
//! Batches are published whole ([`Pace::Batch`]). When a batch's session is lost, the
//! relay turns careful: it claims small batches and publishes them one by one
//! ([`Pace::OneByOne`]) until as many rows went through as the broken batch held, so a
//! breaking row is met alone and known exactly (rows before it are confirmed, rows
//! after it were not sent). A row that is the first to lose the session in
//! [`BREAKS`] careful turns in a row is the cause: it is set aside (`quarantined`) with
//! the broker's words. A broker outage loses the session on whatever row is in flight,
//! hardly ever the same one three times running; "not connected", nacks, returns and
//! confirm timeouts count for nothing here.

use uuid::Uuid;

use crate::broker::{Error, Pace};

/// How many careful turns in a row one row must lose the session to be set aside.
pub const BREAKS: u32 = 3;

/// The most rows a careful turn claims: each is published and confirmed alone.
pub const CAREFUL_BATCH: usize = 32;

/// One relay's memory of broken sessions.
#[derive(Debug, Default)]
pub struct Isolation {
    /// Rows still to publish one by one; zero when publishing whole batches.
    careful_rows: usize,
    /// The row that lost the session in the last careful turns, and how many times.
    suspect: Option<(Uuid, u32)>,
}

impl Isolation {
    pub fn pace(&self) -> Pace {
        if self.careful_rows > 0 {
            Pace::OneByOne
        } else {
            Pace::Batch
        }
    }

    /// How many rows the next turn claims, given the configured batch size.
    pub fn batch_size(&self, configured: usize) -> usize {
        match self.pace() {
            Pace::Batch => configured,
            Pace::OneByOne => configured.min(CAREFUL_BATCH),
        }
    }

    /// Learns from one turn's results (in the order published, at [`Self::pace`]).
    /// Returns the row to set aside, with its reason, when one is found.
    pub fn observe(&mut self, ids: &[Uuid], results: &[Result<(), Error>]) -> Option<(Uuid, String)> {
        let lost = ids.iter().zip(results).find_map(|(id, result)| match result {
            Err(Error::ConnectionLost(reason)) => Some((*id, reason.as_str())),
            _ => None,
        });
        match (self.pace(), lost) {
            (Pace::Batch, Some(_)) => {
                self.careful_rows = ids.len();
                None
            }
            (Pace::Batch, None) => None,
            (Pace::OneByOne, Some((id, reason))) => {
                let breaks = match self.suspect {
                    Some((suspect, breaks)) if suspect == id => breaks + 1,
                    _ => 1,
                };
                if breaks < BREAKS {
                    self.suspect = Some((id, breaks));
                    return None;
                }
                self.suspect = None;
                Some((
                    id,
                    format!("publishing it alone lost the broker session {breaks} times in a row: {reason}"),
                ))
            }
            (Pace::OneByOne, None) => {
                let through = results.iter().filter(|r| r.is_ok()).count();
                if through > 0 {
                    self.suspect = None;
                }
                self.careful_rows = self.careful_rows.saturating_sub(through);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    fn lost() -> Result<(), Error> {
        Err(Error::ConnectionLost(
            "server closed connection (code=501)".into(),
        ))
    }

    /// Results of a one-by-one turn that lost the session at row `at`.
    fn broken_at(n: usize, at: usize) -> Vec<Result<(), Error>> {
        (0..n)
            .map(|i| match i.cmp(&at) {
                std::cmp::Ordering::Less => Ok(()),
                std::cmp::Ordering::Equal => lost(),
                std::cmp::Ordering::Greater => Err(Error::NotConnected),
            })
            .collect()
    }

    #[test]
    fn a_broken_batch_makes_the_relay_careful_until_as_many_rows_went_through() {
        let mut isolation = Isolation::default();
        assert_eq!(isolation.pace(), Pace::Batch);
        assert_eq!(isolation.batch_size(500), 500);
        let batch = ids(100);
        assert_eq!(isolation.observe(&batch, &vec![lost(); 100]), None);
        assert_eq!(isolation.pace(), Pace::OneByOne);
        assert_eq!(isolation.batch_size(500), CAREFUL_BATCH);
        for _ in 0..3 {
            let turn = ids(32);
            assert_eq!(isolation.observe(&turn, &vec![Ok(()); 32]), None);
            assert_eq!(isolation.pace(), Pace::OneByOne);
        }
        let turn = ids(32);
        isolation.observe(&turn, &vec![Ok(()); 32]);
        assert_eq!(isolation.pace(), Pace::Batch, "100 rows went through one by one");
    }

    #[test]
    fn the_row_that_loses_the_session_alone_three_turns_running_is_set_aside() {
        let mut isolation = Isolation::default();
        isolation.observe(&ids(50), &vec![lost(); 50]);
        // Rows before the bad one go through; it loses the session each time.
        let first = ids(32);
        let bad = first[5];
        assert_eq!(isolation.observe(&first, &broken_at(32, 5)), None);
        let mut again = ids(32);
        again[0] = bad;
        assert_eq!(isolation.observe(&again, &broken_at(32, 0)), None);
        let (set_aside, reason) = isolation
            .observe(&again, &broken_at(32, 0))
            .expect("the third time");
        assert_eq!(set_aside, bad);
        assert!(
            reason.contains("3 times") && reason.contains("code=501"),
            "{reason}"
        );
        assert_eq!(isolation.pace(), Pace::OneByOne, "still careful behind it");
    }

    #[test]
    fn sessions_lost_on_different_rows_or_while_not_connected_set_nothing_aside() {
        let mut isolation = Isolation::default();
        isolation.observe(&ids(50), &vec![lost(); 50]);
        // An outage: the session is lost on whichever row is in flight.
        for _ in 0..10 {
            assert_eq!(isolation.observe(&ids(32), &broken_at(32, 0)), None);
        }
        // Not connected in between does not count either way.
        let mut turn = ids(32);
        assert_eq!(isolation.observe(&turn, &broken_at(32, 0)), None);
        assert_eq!(
            isolation.observe(&turn, &vec![Err(Error::NotConnected); 32]),
            None
        );
        assert_eq!(isolation.observe(&turn, &broken_at(32, 0)), None);
        // A row that once went through is no longer suspected.
        let suspect = turn[0];
        turn[0] = Uuid::now_v7();
        turn[1] = suspect;
        assert_eq!(isolation.observe(&turn, &broken_at(32, 2)), None);
        turn[0] = suspect;
        assert_eq!(isolation.observe(&turn, &broken_at(32, 0)), None);
        assert_eq!(isolation.observe(&turn, &broken_at(32, 0)), None);
        assert!(isolation.observe(&turn, &broken_at(32, 0)).is_some());
    }
}
