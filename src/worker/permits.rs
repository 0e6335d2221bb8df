//! The worker's `worker.concurrency` requests in flight, shared fairly between its
//! destinations.
//!
//! Each destination is guaranteed an equal share (`concurrency / destinations`, at
//! least one) whenever it wants it; beyond its share it may borrow free permits, except
//! those that the other *active* destinations (holding or waiting for a permit, or
//! sending within the last [`ACTIVE`]) have not used of their shares. So a slow
//! destination with a deep backlog — whose adaptive limit grows while its round trips
//! stay steady, even at 2 s — takes every permit only while the others are idle, and a
//! fast one that wakes up waits for one request anywhere to end, then keeps its share.
//! A freed permit goes to the waiting destination, allowed to take it, that holds the
//! fewest. With one destination this is a plain counter.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a destination that sent a request keeps its share reserved.
const ACTIVE: Duration = Duration::from_secs(10);

pub struct FairPermits {
    share: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    free: usize,
    lanes: Vec<Lane>,
}

#[derive(Default)]
struct Lane {
    held: usize,
    /// Requests waiting, first come first served within the destination.
    waiting: VecDeque<oneshot::Sender<()>>,
    last_request: Option<Instant>,
}

impl Lane {
    fn is_active(&self, now: Instant) -> bool {
        self.held > 0
            || !self.waiting.is_empty()
            || self
                .last_request
                .is_some_and(|at| now.duration_since(at) < ACTIVE)
    }
}

impl Inner {
    /// Whether destination `lane` may take a free permit now (`share`: each one's).
    fn may_take(&self, lane: usize, share: usize, now: Instant) -> bool {
        if self.free == 0 {
            return false;
        }
        if self.lanes[lane].held < share {
            return true;
        }
        let reserved: usize = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(other, l)| *other != lane && l.is_active(now))
            .map(|(_, l)| share.saturating_sub(l.held))
            .sum();
        self.free > reserved
    }

    fn take(&mut self, lane: usize) {
        self.free -= 1;
        self.lanes[lane].held += 1;
    }
}

/// One request's permit, given back when dropped.
pub struct Permit<'a> {
    permits: &'a FairPermits,
    lane: usize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.permits.release(self.lane);
    }
}

/// A request waiting for its permit. Dropped after a permit was handed to it but
/// before it took it (its delivery was cancelled), it gives the permit back.
struct Waiting<'a> {
    permits: &'a FairPermits,
    lane: usize,
    handed: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut handed) = self.handed.take() {
            if handed.try_recv().is_ok() {
                self.permits.release(self.lane);
            }
        }
    }
}

impl FairPermits {
    /// `permits` shared between `destinations` (numbered from 0).
    pub fn new(permits: usize, destinations: usize) -> Self {
        Self {
            share: (permits / destinations.max(1)).max(1),
            inner: Mutex::new(Inner {
                free: permits,
                lanes: (0..destinations.max(1)).map(|_| Lane::default()).collect(),
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a permit for a request to destination `lane`.
    pub async fn acquire(&self, lane: usize) -> Permit<'_> {
        let handed = {
            let mut inner = self.inner();
            let now = Instant::now();
            inner.lanes[lane].last_request = Some(now);
            if inner.lanes[lane].waiting.is_empty() && inner.may_take(lane, self.share, now) {
                inner.take(lane);
                return Permit { permits: self, lane };
            }
            let (hand, handed) = oneshot::channel();
            inner.lanes[lane].waiting.push_back(hand);
            handed
        };
        let mut waiting = Waiting {
            permits: self,
            lane,
            handed: Some(handed),
        };
        if let Some(handed) = waiting.handed.as_mut() {
            // The sender is dropped unsent only with the permits themselves.
            let _ = handed.await;
        }
        waiting.handed = None;
        Permit { permits: self, lane }
    }

    /// A permit of `lane` is free: to the waiting destinations allowed to take one,
    /// fewest held first, or back to the pool.
    fn release(&self, lane: usize) {
        let mut inner = self.inner();
        inner.lanes[lane].held = inner.lanes[lane].held.saturating_sub(1);
        inner.free += 1;
        let now = Instant::now();
        loop {
            let next = (0..inner.lanes.len())
                .filter(|l| !inner.lanes[*l].waiting.is_empty() && inner.may_take(*l, self.share, now))
                .min_by_key(|l| (inner.lanes[*l].held, *l));
            let Some(next) = next else { return };
            let Some(hand) = inner.lanes[next].waiting.pop_front() else {
                continue;
            };
            inner.take(next);
            if hand.send(()).is_err() {
                // That request is gone: the permit goes on to the next.
                inner.lanes[next].held -= 1;
                inner.free += 1;
            }
        }
    }

    #[cfg(test)]
    fn held(&self, lane: usize) -> usize {
        self.inner().lanes[lane].held
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.inner().free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Takes `n` permits for `lane` on tasks that hold them until aborted.
    async fn hold(permits: &Arc<FairPermits>, lane: usize, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire(lane).await;
                std::future::pending::<()>().await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        tasks
    }

    #[tokio::test]
    async fn an_idle_neighbour_lends_everything_and_an_active_one_keeps_its_share() {
        let permits = Arc::new(FairPermits::new(8, 2));
        // Destination 1 is idle: destination 0 takes all eight.
        let slow = hold(&permits, 0, 10).await;
        assert_eq!((permits.held(0), permits.free()), (8, 0));
        // Destination 1 wakes up: the next permit freed is its, though two of 0's
        // requests waited longer.
        let fast = hold(&permits, 1, 1).await;
        assert_eq!(permits.held(1), 0);
        slow[0].abort();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((permits.held(0), permits.held(1)), (7, 1));
        // Now active, 1 keeps its share of four reserved: permits 0 frees stay free for
        // it instead of going to 0's waiters.
        for task in &slow[1..4] {
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((permits.held(0), permits.held(1), permits.free()), (4, 1, 3));
        // And 1 gets them at once.
        let more_fast = hold(&permits, 1, 3).await;
        assert_eq!((permits.held(1), permits.free()), (4, 0));
        for task in slow.iter().chain(&fast).chain(&more_fast) {
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(permits.free(), 8, "every permit back");
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaks_no_permit() {
        let permits = FairPermits::new(1, 3);
        let held = permits.acquire(0).await;
        {
            let waiter = permits.acquire(1);
            let _ = tokio::time::timeout(Duration::from_millis(10), waiter).await;
        }
        drop(held);
        assert_eq!(permits.free(), 1);
        let _again = permits.acquire(2).await;
    }
}
