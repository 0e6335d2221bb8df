//! Prometheus metrics of one relayd process (one registry per `AppContext`, so tests can
//! run several instances side by side).
//!
//! Labels only ever carry configured names (sources, destinations) and fixed outcome
//! words — never event ids or other unbounded values. A request for an unconfigured
//! source is counted under `source="-"`.
//!
//! The labelled series that alerts count are made at zero when their role starts
//! (`*_started`), not at their first event: a counter series that appears at 1 has no
//! earlier sample, so `increase()` and `rate()` never see that first event — the
//! shipped dead-delivery alert would miss a destination's first one.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::broker::Health;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOutcome {
    pub source: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationOutcome {
    pub destination: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationState {
    destination: String,
    state: &'static str,
}

/// Every state a destination can be in (`db::destinations::State`), for the gauge.
const DESTINATION_STATES: [&str; 5] = ["closed", "open", "half_open", "paused", "disabled"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: String,
    /// `host:port` of the node it is (or was last) connected to; empty before any.
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric relayd exports.
pub struct Metrics {
    registry: Registry,
    pub ingest_requests: Family<SourceOutcome, Counter>,
    pub ingest_duration: Histogram,
    pub relay_published: Counter,
    pub relay_batch_size: Histogram,
    pub outbox_due: Gauge,
    pub outbox_oldest_due_age: Gauge<f64, AtomicU64>,
    pub delivery_attempts: Family<DestinationOutcome, Counter>,
    pub delivery_duration: HistogramFamily<DestinationLabel>,
    pub deliveries_dead: Family<DestinationLabel, Counter>,
    pub in_flight_limit: Family<DestinationLabel, Gauge>,
    in_flight: Family<DestinationLabel, Gauge>,
    destination_state: Family<DestinationState, Gauge>,
    throttled: Family<DestinationLabel, Counter>,
    probes: Family<DestinationLabel, Counter>,
    rate_limited: Family<DestinationLabel, Counter>,
    ordering_unkeyed: Family<DestinationLabel, Counter>,
    filtered: Family<DestinationLabel, Counter>,
    filter_errors: Family<DestinationLabel, Counter>,
    broker_connected: Family<ComponentLabel, Gauge>,
    retention_deleted: Family<KindLabel, Counter>,
    retention_last_run: Gauge<f64, AtomicU64>,
    ready: Gauge,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let ingest_requests = Family::<SourceOutcome, Counter>::default();
        registry.register(
            "relayd_ingest_requests",
            "Webhook requests by source and outcome",
            ingest_requests.clone(),
        );
        let ingest_duration = latency_histogram();
        registry.register(
            "relayd_ingest_duration_seconds",
            "Time to answer a webhook request",
            ingest_duration.clone(),
        );
        let relay_published = Counter::default();
        registry.register(
            "relayd_relay_published",
            "Deliveries published to the broker and confirmed",
            relay_published.clone(),
        );
        let relay_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "relayd_relay_batch_size",
            "Rows claimed per relay turn (non-empty turns)",
            relay_batch_size.clone(),
        );
        let outbox_due = Gauge::default();
        registry.register(
            "relayd_outbox_due",
            "Deliveries due for publication (refreshed by the relay every few seconds)",
            outbox_due.clone(),
        );
        let outbox_oldest_due_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "relayd_outbox_oldest_due_age_seconds",
            "How long the oldest due delivery has been due",
            outbox_oldest_due_age.clone(),
        );
        let delivery_attempts = Family::<DestinationOutcome, Counter>::default();
        registry.register(
            "relayd_delivery_attempts",
            "HTTP delivery attempts by destination and outcome (delivered, failed)",
            delivery_attempts.clone(),
        );
        let delivery_duration: HistogramFamily<DestinationLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "relayd_delivery_duration_seconds",
            "Duration of delivery attempts",
            delivery_duration.clone(),
        );
        let deliveries_dead = Family::<DestinationLabel, Counter>::default();
        registry.register(
            "relayd_deliveries_dead",
            "Deliveries that exhausted their retries",
            deliveries_dead.clone(),
        );
        let in_flight_limit = Family::<DestinationLabel, Gauge>::default();
        registry.register(
            "relayd_destination_in_flight_limit",
            "This worker's adaptive limit of concurrent requests to a destination",
            in_flight_limit.clone(),
        );
        let in_flight = Family::<DestinationLabel, Gauge>::default();
        registry.register(
            "relayd_destination_in_flight",
            "Deliveries to a destination this worker holds now (claiming, sending or recording)",
            in_flight.clone(),
        );
        let destination_state = Family::<DestinationState, Gauge>::default();
        registry.register(
            "relayd_destination_state",
            "1 for a destination's flow state as this worker knows it (closed, open, half_open, paused, disabled)",
            destination_state.clone(),
        );
        let throttled = Family::<DestinationLabel, Counter>::default();
        registry.register(
            "relayd_destination_throttled",
            "Attempts a destination answered 429 or 503 with Retry-After (no try spent)",
            throttled.clone(),
        );
        let probes = Family::<DestinationLabel, Counter>::default();
        registry.register(
            "relayd_destination_probes",
            "Deliveries sent as the probe of an open circuit",
            probes.clone(),
        );
        let rate_limited = Family::<DestinationLabel, Counter>::default();
        registry.register(
            "relayd_destination_rate_limit_waits",
            "Deliveries that waited for their destination's rate limit before being sent",
            rate_limited.clone(),
        );
        let ordering_unkeyed = Family::<DestinationLabel, Counter>::default();
        registry.register(
            "relayd_ordering_unkeyed",
            "Events for an ordered destination that had no ordering key, delivered unordered",
            ordering_unkeyed.clone(),
        );
        let filtered = Family::<DestinationLabel, Counter>::default();
        registry.register(
            "relayd_filtered",
            "Events a destination subscribes to that its payload filter kept from it (errors included)",
            filtered.clone(),
        );
        let filter_errors = Family::<DestinationLabel, Counter>::default();
        registry.register(
            "relayd_filter_errors",
            "Events whose payload filter could not be evaluated (a missing field, a wrong type, a body that is not JSON): no match",
            filter_errors.clone(),
        );
        let broker_connected = Family::<ComponentLabel, Gauge>::default();
        registry.register(
            "relayd_broker_connected",
            "1 when the broker connection of a component (publisher, consumer:<destination>) is up",
            broker_connected.clone(),
        );
        let retention_deleted = Family::<KindLabel, Counter>::default();
        registry.register(
            "relayd_retention_deleted",
            "Rows pruned by retention (delivered_events, dead_events, attempts)",
            retention_deleted.clone(),
        );
        let retention_last_run = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "relayd_retention_last_run_timestamp_seconds",
            "When this process last completed a retention pass (Unix time)",
            retention_last_run.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "relayd_ready",
            "1 while this process is ready (the checks of /readyz, made at each scrape), else 0",
            ready.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("relayd_build_info", "relayd's version", build_info);
        Self {
            registry,
            ingest_requests,
            ingest_duration,
            relay_published,
            relay_batch_size,
            outbox_due,
            outbox_oldest_due_age,
            delivery_attempts,
            delivery_duration,
            deliveries_dead,
            in_flight_limit,
            in_flight,
            destination_state,
            throttled,
            probes,
            rate_limited,
            ordering_unkeyed,
            filtered,
            filter_errors,
            broker_connected,
            retention_deleted,
            retention_last_run,
            ready,
        }
    }

    pub fn retention_deleted(&self, kind: &str, rows: u64) {
        self.retention_deleted
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc_by(rows);
    }

    pub fn retention_ran(&self, at: std::time::SystemTime) {
        let seconds = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.retention_last_run.set(seconds);
    }

    pub fn ingest_request(&self, source: &str, outcome: &str, duration: Duration) {
        self.ingest_requests
            .get_or_create(&SourceOutcome {
                source: source.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.ingest_duration.observe(duration.as_secs_f64());
    }

    /// The ingest series of `source` exist from its start, at zero (see the
    /// module header): its successes and every 5xx outcome the alerts count.
    pub fn source_started(&self, source: &str) {
        for outcome in ["accepted", "duplicate", "unavailable", "busy", "internal"] {
            drop(self.ingest_requests.get_or_create(&SourceOutcome {
                source: source.into(),
                outcome: outcome.into(),
            }));
        }
    }

    /// An ordered destination's unkeyed-event counter exists from ingest's start, at
    /// zero (see the module header).
    pub fn ordered_destination_started(&self, destination: &str) {
        let label = DestinationLabel {
            destination: destination.into(),
        };
        drop(self.ordering_unkeyed.get_or_create(&label));
    }

    /// A filtered destination's counters exist from ingest's start, at zero.
    pub fn filtered_destination_started(&self, destination: &str) {
        let label = DestinationLabel {
            destination: destination.into(),
        };
        drop(self.filtered.get_or_create(&label));
        drop(self.filter_errors.get_or_create(&label));
    }

    /// `destination`'s filter kept an event from it; `failed` when it could not be
    /// evaluated.
    pub fn filtered(&self, destination: &str, failed: bool) {
        let label = DestinationLabel {
            destination: destination.into(),
        };
        self.filtered.get_or_create(&label).inc();
        if failed {
            self.filter_errors.get_or_create(&label).inc();
        }
    }

    /// A worker's series of `destination` exist from its start, at zero (see the
    /// module header).
    pub fn destination_started(&self, destination: &str) {
        let label = DestinationLabel {
            destination: destination.into(),
        };
        for outcome in ["delivered", "failed"] {
            drop(self.delivery_attempts.get_or_create(&DestinationOutcome {
                destination: destination.into(),
                outcome: outcome.into(),
            }));
        }
        drop(self.delivery_duration.get_or_create(&label));
        drop(self.deliveries_dead.get_or_create(&label));
        drop(self.throttled.get_or_create(&label));
        drop(self.probes.get_or_create(&label));
        drop(self.rate_limited.get_or_create(&label));
    }

    /// A reload removed `destination` from this worker: its gauges go (a stale state
    /// would keep an alert firing); its counters stay, unchanging.
    pub fn destination_removed(&self, destination: &str) {
        let label = DestinationLabel {
            destination: destination.into(),
        };
        self.in_flight_limit.remove(&label);
        self.in_flight.remove(&label);
        for state in DESTINATION_STATES {
            self.destination_state.remove(&DestinationState {
                destination: destination.into(),
                state,
            });
        }
    }

    /// The retention counter of `kind` exists from the relay's start, at zero (see the
    /// module header).
    pub fn retention_started(&self, kind: &str) {
        drop(
            self.retention_deleted
                .get_or_create(&KindLabel { kind: kind.into() }),
        );
    }

    /// Whether this process is ready now (`/readyz`'s checks).
    pub fn ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// A destination is now in `state` (one of `DESTINATION_STATES`): 1 there, 0 in
    /// the others.
    pub fn destination_state(&self, destination: &str, state: &'static str) {
        for known in DESTINATION_STATES {
            self.destination_state
                .get_or_create(&DestinationState {
                    destination: destination.into(),
                    state: known,
                })
                .set(i64::from(known == state));
        }
    }

    pub fn ordering_unkeyed(&self, destination: &str) {
        self.ordering_unkeyed
            .get_or_create(&DestinationLabel {
                destination: destination.into(),
            })
            .inc();
    }

    pub fn throttled(&self, destination: &str) {
        self.throttled
            .get_or_create(&DestinationLabel {
                destination: destination.into(),
            })
            .inc();
    }

    pub fn rate_limited(&self, destination: &str) {
        self.rate_limited
            .get_or_create(&DestinationLabel {
                destination: destination.into(),
            })
            .inc();
    }

    pub fn probe(&self, destination: &str) {
        self.probes
            .get_or_create(&DestinationLabel {
                destination: destination.into(),
            })
            .inc();
    }

    pub fn in_flight(&self, destination: &str, in_flight: usize) {
        self.in_flight
            .get_or_create(&DestinationLabel {
                destination: destination.into(),
            })
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
    }

    /// This process's in-flight limit for `destination`, when it runs a worker.
    pub fn current_in_flight_limit(&self, destination: &str) -> Option<i64> {
        self.in_flight_limit
            .get(&DestinationLabel {
                destination: destination.into(),
            })
            .map(|gauge| gauge.get())
    }

    pub fn in_flight_limit(&self, destination: &str, limit: usize) {
        self.in_flight_limit
            .get_or_create(&DestinationLabel {
                destination: destination.into(),
            })
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    pub fn delivery_attempt(&self, destination: &str, delivered: bool, duration: Duration) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.delivery_attempts
            .get_or_create(&DestinationOutcome {
                destination: destination.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.delivery_duration
            .get_or_create(&DestinationLabel {
                destination: destination.into(),
            })
            .observe(duration.as_secs_f64());
    }

    pub fn delivery_dead(&self, destination: &str) {
        self.deliveries_dead
            .get_or_create(&DestinationLabel {
                destination: destination.into(),
            })
            .inc();
    }

    /// The text exposition (OpenMetrics), with broker state read from `health` now.
    pub fn encode(&self, health: &Health) -> String {
        // A component that moved to another node leaves no series behind for the old one.
        self.broker_connected.clear();
        for state in health.components() {
            self.broker_connected
                .get_or_create(&ComponentLabel {
                    component: state.component,
                    node: state.node.unwrap_or_default(),
                })
                .set(i64::from(state.connected));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
