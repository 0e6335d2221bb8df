//! RabbitMQ behind a small async face.
//!
//! amiquip is a blocking client: every amiquip connection and channel lives on an OS
//! thread this module owns, and no amiquip type leaves it. The rest of relayd sees a
//! [`Publisher`] (confirmed batch publishing), a [`Consumer`] per queue, the message
//! types at both ends ([`OutgoingMessage`] as the relay publishes it, [`Envelope`] as
//! the worker reads it back) and the topology names. Threads
//! reconnect on their own with exponential backoff and jitter, redeclare the topology,
//! and report their state in [`Health`]. A connection is only ever closed on its own
//! thread (closing joins amiquip's I/O thread, which must not block a tokio worker).

mod consumer;
mod message;
mod publisher;
mod session;
mod topology;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use consumer::{Acker, Consumer, IncomingMessage};
pub use message::{headers, Envelope, Malformed, OutgoingMessage};
pub use publisher::{Pace, Publisher};
pub use topology::Topology;

/// Why a message or a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("the broker connection was lost: {0}")]
    ConnectionLost(String),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("no queue is bound for destination {0:?}")]
    Unroutable(String),
    #[error("broker error: {0}")]
    Broker(String),
    /// No AMQP message can carry it; it was not sent (sending it would break the
    /// session for every message behind it).
    #[error("cannot be published: {0}")]
    Unpublishable(String),
}

/// Connection state of this process's broker threads, for `/readyz` and metrics.
#[derive(Debug, Default)]
pub struct Health {
    components: std::sync::Mutex<BTreeMap<String, Component>>,
    /// Whether any component has ever registered (roles without a broker never do).
    used: AtomicBool,
}

#[derive(Debug, Default)]
struct Component {
    /// Since when it has been disconnected (`None`: connected).
    down_since: Option<Instant>,
    /// The node (`host:port`) of its current or last connection.
    node: Option<String>,
}

/// One broker thread's state, as `/readyz` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentState {
    pub component: String,
    pub connected: bool,
    /// The node of its current connection, or of its last one while disconnected.
    pub node: Option<String>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records that `component` (e.g. `publisher`) is not connected.
    pub fn disconnected(&self, component: &str) {
        self.update(component, |state| {
            // Only the first report of an outage starts its clock.
            state.down_since.get_or_insert_with(Instant::now);
        });
    }

    /// Records that `component` is connected to `node`.
    pub fn connected(&self, component: &str, node: &str) {
        self.update(component, |state| {
            state.down_since = None;
            state.node = Some(node.to_string());
        });
    }

    fn update(&self, component: &str, change: impl FnOnce(&mut Component)) {
        self.used.store(true, Ordering::Relaxed);
        if let Ok(mut components) = self.components.lock() {
            let state = components
                .entry(component.to_string())
                .or_insert_with(|| Component {
                    down_since: Some(Instant::now()),
                    node: None,
                });
            change(state);
        }
    }

    /// Every component that has been disconnected for longer than `stall`, with how long.
    pub fn down_for(&self, stall: Duration) -> Vec<(String, Duration)> {
        self.components
            .lock()
            .map(|c| {
                c.iter()
                    .filter_map(|(name, state)| Some((name.clone(), state.down_since.as_ref()?.elapsed())))
                    .filter(|(_, down)| *down > stall)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every component with whether it is connected, and to which node.
    pub fn components(&self) -> Vec<ComponentState> {
        self.components
            .lock()
            .map(|c| {
                c.iter()
                    .map(|(name, state)| ComponentState {
                        component: name.clone(),
                        connected: state.down_since.is_none(),
                        node: state.node.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `None` when no broker component runs in this process; otherwise whether every
    /// component is connected, with the names of those that are not.
    pub fn status(&self) -> Option<Result<(), Vec<String>>> {
        if !self.used.load(Ordering::Relaxed) {
            return None;
        }
        let components = self.components.lock().ok()?;
        let down: Vec<String> = components
            .iter()
            .filter(|(_, state)| state.down_since.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        Some(if down.is_empty() { Ok(()) } else { Err(down) })
    }
}
