//! The worker role: RabbitMQ → destination HTTP services.
//!
//! One consumer per destination queue, each with its own adaptive limit of requests in
//! flight (`concurrency`, between the destination's `min_in_flight` and
//! `max_in_flight`; the consumer's prefetch follows it, three times over so that
//! records overlap the requests, so RabbitMQ holds what the worker cannot send and a
//! slow destination holds only its own slots), and `worker.concurrency` requests
//! across them, shared fairly (`permits`). Each destination has a gate (`gate`:
//! its circuit, an operator's pause, a `Retry-After` pause, shared through PostgreSQL
//! by `shared`) and may have a rate limit shared with the other live workers
//! (`pace`); while the
//! gate is shut its consumer takes nothing and its messages wait in the queue. For each
//! message: wait for the rate limit, then for a slot, claim the delivery with
//! a conditional UPDATE (a message whose row is not claimable is a duplicate: ack and
//! drop), POST it signed, then record the attempt and the outcome in one transaction,
//! and only then ack (or reject a dead one to the dead-letter exchange); an ordered
//! delivery's end hands its key on in that transaction ([`crate::db::ordering`]). A message
//! whose outcome could not be recorded is requeued, never acked. On shutdown the
//! consumers stop taking messages, in-flight deliveries get the grace period to finish
//! and be recorded, and whatever is left unacked is redelivered by the broker. A reload
//! ([`crate::reload`]) that adds, removes or reshapes destinations stops the consume
//! loops the same way and starts them again with the new configuration, in place.
//!
//! Here: starting and restarting the run, and what its destinations share; `lane`
//! (a destination's limit, gate and slots), `consume` (its loop) and `deliver`
//! (one message, from claim to ack) below.

mod concurrency;
mod consume;
mod deliver;
mod gate;
mod lane;
mod pace;
mod permits;
mod schedule;
pub mod send;
mod shared;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{Consumer, Topology};
use crate::config::Config;
use crate::context::AppContext;
use crate::db::batch::{self, Batcher};
use crate::db::deliveries::{Claims, Records};
use crate::db::destinations::State;
use concurrency::AdaptiveLimit;
use gate::Gate;
use lane::{prefetch, Lane};

/// Runs the worker until `shutdown` is cancelled; when a reload adds, removes or
/// reshapes destinations ([`crate::reload::reshapes_workers`]), its consume loops are
/// stopped as on shutdown and started again with the new configuration.
pub async fn run(ctx: Arc<AppContext>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut live = ctx.live.subscribe();
    let mut config = live.borrow_and_update().clone();
    loop {
        let generation = shutdown.child_token();
        let mut running = tokio::spawn(run_with(ctx.clone(), config.clone(), generation.clone()));
        let next = loop {
            tokio::select! {
                ended = &mut running => return ended.context("the worker task failed")?,
                changed = live.changed() => {
                    if changed.is_err() {
                        return running.await.context("the worker task failed")?;
                    }
                    let next = live.borrow_and_update().clone();
                    if crate::reload::reshapes_workers(&config, &next) {
                        break next;
                    }
                }
            }
        };
        tracing::info!("destinations changed: restarting the consume loops");
        generation.cancel();
        running.await.context("the worker task failed")??;
        for gone in config
            .destinations
            .iter()
            .filter(|d| !next.destinations.iter().any(|n| n.name == d.name))
        {
            ctx.metrics.destination_removed(&gone.name);
        }
        config = next;
    }
}

/// The worker for one configuration, until `shutdown`.
async fn run_with(
    ctx: Arc<AppContext>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = &*config;
    // The configured destinations and the operator hooks, delivered alike.
    let delivered = config.delivered_destinations();
    let live = ctx.live.subscribe();
    let targets = targets(config)?;
    // The lease of a claim: the longest destination timeout plus `worker.lease_margin`
    // (a row's destination is only known once claimed; the longest is always enough).
    // A crashed worker's delivery is retried once its lease has expired.
    let lease = targets.values().map(|t| t.timeout).max().unwrap_or_default() + config.worker.lease_margin;
    // Claims and records that are waiting at the same moment share a statement; a
    // failed one is retried with backoff (6 tries, 100 ms doubling to 2 s) before its
    // callers requeue their messages. They stop after every consume loop has drained.
    let batches_stop = CancellationToken::new();
    let options = batch::Options {
        max_batch: MAX_BATCH,
        tasks: 1,
        eager: 1,
        form_wait: Duration::ZERO,
        retry: batch::Retry::delays(
            crate::retry::backoff(Duration::from_millis(100), Duration::from_secs(2)).take(6),
        ),
    };
    let timeout = config.database.query_timeout;
    let pool = ctx.relaxed_pool.clone();
    let (claims, mut batchers) = Batcher::start(
        Claims {
            pool: pool.clone(),
            timeout,
            lease,
        },
        options.clone(),
        batches_stop.clone(),
    );
    let (records, record_tasks) = Batcher::start(
        Records {
            pool,
            timeout,
            wake: ctx.wake.clone(),
        },
        batch::Options {
            // An ordered outcome's transaction may wait for an ingest commit that holds
            // its key: a second statement in flight keeps the others' outcomes moving.
            tasks: if delivered.iter().any(|d| d.ordering.is_some()) {
                2
            } else {
                1
            },
            ..options
        },
        batches_stop.clone(),
    );
    batchers.extend(record_tasks);
    let worker = Arc::new(Worker {
        claims,
        records,
        ctx: ctx.clone(),
        settings: config.worker.clone(),
        client: send::client().context("building the HTTP client")?,
        permits: permits::FairPermits::new(config.worker.concurrency, delivered.len()),
        targets: RwLock::new(targets),
    });
    let reloads = tokio::spawn(follow_reloads(worker.clone(), live));
    let topology = Topology::new(&config.broker, delivered.iter().map(|d| d.name.clone()));
    let mut destinations = JoinSet::new();
    let mut lanes = Vec::new();
    for (index, destination) in delivered.iter().enumerate() {
        let max = destination.max_in_flight.min(config.worker.concurrency);
        let limit = AdaptiveLimit::new(destination.min_in_flight.min(max), max, INITIAL_IN_FLIGHT);
        let consumer = Consumer::start(
            &config.broker,
            topology.clone(),
            &destination.name,
            prefetch(limit.limit()),
            ctx.broker_health.clone(),
        )
        .with_context(|| format!("starting the consumer of {}", destination.name))?;
        ctx.metrics.in_flight_limit(&destination.name, limit.limit());
        ctx.metrics
            .destination_state(&destination.name, State::Closed.as_str());
        ctx.metrics.destination_started(&destination.name);
        let lane = Arc::new(Lane {
            index,
            destination: destination.name.clone(),
            part: format!("worker:{}", destination.name),
            span_name: format!("deliver {}", destination.name),
            limit: Mutex::new(limit),
            gate: Gate::new(destination.breaker.over(&config.worker.breaker)),
            pacer: destination
                .rate_limit
                .map(|rate| pace::Pacer::new(rate.per_second())),
            blocks_on_dead: destination
                .ordering
                .as_ref()
                .is_some_and(|o| o.on_dead == crate::config::OnDead::Block),
            room: tokio::sync::Notify::new(),
            intake_changed: tokio::sync::Notify::new(),
        });
        lanes.push(lane.clone());
        destinations.spawn(consume::consume(worker.clone(), consumer, lane, shutdown.clone()));
    }
    if delivered.is_empty() {
        tracing::warn!("no destination is configured: the worker has nothing to consume");
    }
    let paced: Vec<Arc<Lane>> = lanes.iter().filter(|l| l.pacer.is_some()).cloned().collect();
    let watcher = tokio::spawn(shared::watch_states(ctx.clone(), lanes, shutdown.clone()));
    let beats = tokio::spawn(shared::share_rate_limits(ctx.clone(), paced, shutdown.clone()));
    while destinations.join_next().await.is_some() {}
    reloads.abort();
    let _ = tokio::join!(watcher, beats);
    batches_stop.cancel();
    for task in batchers {
        let _ = task.await;
    }
    Ok(())
}

/// Where and how each destination's deliveries are sent, as `config` says.
fn targets(config: &Config) -> anyhow::Result<HashMap<String, Arc<send::Target>>> {
    config
        .delivered_destinations()
        .iter()
        .map(|d| {
            let target = send::Target {
                url: reqwest::Url::parse(d.url.expose())
                    .with_context(|| format!("destination {} url", d.name))?,
                signing_key: crate::signing::decode_whsec(d.signing_secret.expose())
                    .with_context(|| format!("destination {} signing_secret", d.name))?,
                timeout: d.timeout,
            };
            Ok((d.name.clone(), Arc::new(target)))
        })
        .collect()
}

/// Puts the destination URLs and signing secrets of each configuration a reload
/// publishes in force for the requests that start after it (one in flight ends as it
/// began); aborted when the role stops.
async fn follow_reloads(worker: Arc<Worker>, mut live: tokio::sync::watch::Receiver<Arc<Config>>) {
    // What changed since this worker's configuration was read, too.
    live.mark_changed();
    while live.changed().await.is_ok() {
        let config = live.borrow_and_update().clone();
        match targets(&config) {
            // A destination that is gone keeps its target until its loop has stopped
            // (a restart in place follows): its deliveries in flight are not orphaned.
            Ok(targets) => worker
                .targets
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend(targets),
            // The configuration was validated: this is relayd's own bug, and the
            // targets in force stay.
            Err(e) => tracing::error!(error = %format!("{e:#}"), "reloaded destinations not applied"),
        }
    }
}

/// Claims or records combined into one statement at most.
const MAX_BATCH: usize = 128;

/// Where each destination's adaptive limit starts (within its bounds): low, so that
/// the first round trips measure the destination unloaded.
const INITIAL_IN_FLIGHT: usize = 4;

/// What every destination's deliveries share in one run of the worker.
struct Worker {
    ctx: Arc<AppContext>,
    /// `[worker]` as this run's configuration says (a reload that changes it restarts
    /// the run).
    settings: crate::config::WorkerConfig,
    client: reqwest::Client,
    /// `worker.concurrency` across every destination.
    permits: permits::FairPermits,
    /// Each destination's URL and signing key; replaced whole by a reload.
    targets: RwLock<HashMap<String, Arc<send::Target>>>,
    /// Concurrent claims, combined into shared statements.
    claims: Batcher<Claims>,
    /// Concurrent outcome records, combined into shared statements.
    records: Batcher<Records>,
}
