//! The worker role: RabbitMQ → destination HTTP services.
//!
//! One consumer per destination queue, each with its own adaptive limit of requests in
//! flight ([`concurrency`], between the destination's `min_in_flight` and
//! `max_in_flight`; the consumer's prefetch follows it, three times over so that
//! records overlap the requests, so RabbitMQ holds what the worker cannot send and a
//! slow destination holds only its own slots), and `worker.concurrency` requests
//! across them, shared fairly ([`permits`]). Each destination has a gate ([`gate`]:
//! its circuit, an operator's pause, a `Retry-After` pause, shared through PostgreSQL
//! by [`shared`]) and may have a rate limit shared with the other live workers
//! ([`pace`]); while the
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

mod concurrency;
mod gate;
mod pace;
mod permits;
mod schedule;
mod send;
mod shared;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::{headers, Consumer, IncomingMessage, Topology};
use crate::config::Config;
use crate::context::AppContext;
use crate::db::attempts::NewAttempt;
use crate::db::batch::{self, BatchError, Batcher};
use crate::db::deliveries::{self, Claims, Outcome, Records};
use crate::db::destinations::{self, State};
use concurrency::{AdaptiveLimit, Signal};
use gate::{Admit, Gate, Intake, Transition, Verdict};

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
        destinations.spawn(consume(worker.clone(), consumer, lane, shutdown.clone()));
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

/// The prefetch for a limit of deliveries in flight: a message also waits for its
/// record and ack after its request, so about three times the limit keeps the requests
/// going; rounded up to a power of two, so that it changes (and the consumer is
/// restarted) only when the limit has moved by about half.
fn prefetch(limit: usize) -> u16 {
    u16::try_from(limit.saturating_mul(3).next_power_of_two()).unwrap_or(u16::MAX)
}

/// One destination's consume loop: its name, its liveness part, its in-flight limit
/// and its gate.
struct Lane {
    /// Its place among the worker's destinations (for [`permits::FairPermits`]).
    index: usize,
    destination: String,
    part: String,
    /// Its deliveries' span name (`deliver <destination>`), made once.
    span_name: String,
    limit: Mutex<AdaptiveLimit>,
    gate: Gate,
    /// This worker's share of the destination's `rate_limit`, if it has one.
    pacer: Option<pace::Pacer>,
    /// Ordered, and a dead delivery holds its key (`ordering.on_dead = "block"`).
    blocks_on_dead: bool,
    /// Woken when a request ends (a slot may be free, or the limit changed) and when
    /// the gate changes.
    room: tokio::sync::Notify,
    /// Tells the consume loop that the gate changed (it keeps one permit).
    intake_changed: tokio::sync::Notify,
}

impl Lane {
    fn limit(&self) -> std::sync::MutexGuard<'_, AdaptiveLimit> {
        self.limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the limit lets one more delivery at the destination, before its
    /// claim (a claim waiting here would run down its lease); `None` when the gate
    /// holds the destination (the message goes back to the queue).
    async fn enter(&self) -> Option<Slot<'_>> {
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let probe = match self.gate.admit(Instant::now()) {
                Admit::Hold => return None,
                Admit::Probe => true,
                Admit::Pass => false,
            };
            {
                let mut limit = self.limit();
                // The probe goes whatever the limit: it is the only request.
                if probe || limit.has_room() {
                    limit.start();
                    return Some(Slot { lane: self, probe });
                }
            }
            notified.await;
        }
    }

    /// The gate changed: waiters re-check, the consume loop re-reads its intake.
    fn changed(&self) {
        self.room.notify_waiters();
        self.intake_changed.notify_one();
    }
}

/// One delivery's place within its destination's limit, given back when dropped.
struct Slot<'a> {
    lane: &'a Lane,
    /// It is the open circuit's probe.
    probe: bool,
}

impl Slot<'_> {
    /// The request ended after `round_trip`, saying `signal` (and the gate has heard
    /// the answer).
    fn done(mut self, round_trip: Duration, signal: Signal) {
        self.lane.limit().finish(Instant::now(), round_trip, signal);
        self.probe = false;
        // `drop` wakes the waiters.
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.probe {
            // A probe that sent nothing (its message was a duplicate, or could not be
            // claimed): the next message is the probe.
            self.lane.gate.probe_unsent();
            self.lane.changed();
        }
        self.lane.limit().leave();
        self.lane.room.notify_waiters();
    }
}

/// How often a consume loop looks at its gate without being told: a `Retry-After`
/// pause ends, or an open circuit's probe comes due, within this.
const GATE_TICK: Duration = Duration::from_millis(250);

/// How often, at most, each consume loop beats while it turns.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

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

/// Feeds one destination's messages to delivery tasks, as many at once as its adaptive
/// limit allows, until shutdown, then drains. The loop beats its part on
/// [`crate::liveness`] every few seconds while it turns, so a loop wedged for
/// `ops.liveness_stall` (waiting for a permit that never comes back, say) fails
/// `/healthz`; an idle one keeps beating.
async fn consume(worker: Arc<Worker>, mut consumer: Consumer, lane: Arc<Lane>, shutdown: CancellationToken) {
    let part = lane.part.clone();
    let mut shown = lane.limit().limit();
    let mut shown_in_flight = None;
    let mut intake = Some(prefetch(shown));
    let mut in_flight = JoinSet::new();
    // How often a held gate is looked at: a `Retry-After` pause ending, a probe due.
    let mut gate_tick = tokio::time::interval(GATE_TICK);
    gate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Several beats within the stall time, so that a turning loop never looks stalled.
    let mut heartbeat = tokio::time::interval(
        (worker.ctx.config.ops.liveness_stall / 4).clamp(std::time::Duration::from_millis(10), HEARTBEAT),
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = heartbeat.tick() => worker.ctx.liveness.beat(&part),
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            () = lane.intake_changed.notified() => {}
            _ = gate_tick.tick() => {
                if lane.gate.probe_due(chrono::Utc::now()) {
                    worker.take_probe(&lane).await;
                }
            }
            // At most the prefetch: the broker hands over no more unacknowledged.
            message = consumer.recv() => {
                let Some(message) = message else { break };
                let worker = worker.clone();
                let lane = lane.clone();
                in_flight.spawn(async move { worker.handle(message, &lane).await });
            }
        }
        // The broker holds back what the limit (or the gate) does not let through.
        let (limit, now_in_flight) = {
            let limit = lane.limit();
            (limit.limit(), limit.in_flight())
        };
        if limit != shown {
            shown = limit;
            worker.ctx.metrics.in_flight_limit(&lane.destination, limit);
        }
        if shown_in_flight != Some(now_in_flight) {
            shown_in_flight = Some(now_in_flight);
            worker.ctx.metrics.in_flight(&lane.destination, now_in_flight);
        }
        let wanted = match lane.gate.intake(Instant::now()) {
            Intake::Consume => Some(prefetch(limit)),
            Intake::Probe => Some(1),
            Intake::Hold => None,
        };
        if wanted != intake {
            intake = wanted;
            consumer.set_intake(intake);
        }
    }
    let grace = worker.ctx.config.shutdown.grace_period;
    let drain = async { while in_flight.join_next().await.is_some() {} };
    // Both at once: the consumer thread applies the acks of the deliveries finishing.
    let (drained, ()) = tokio::join!(tokio::time::timeout(grace, drain), consumer.stop(grace));
    if drained.is_err() {
        tracing::warn!("grace period over: unfinished deliveries stay unacked and will be redelivered");
    }
    // A loop started again (a reload) beats anew; one whose destination is gone is over.
    worker.ctx.liveness.forget(&part);
}

/// The parts of a message a delivery needs.
struct Envelope {
    delivery_id: uuid::Uuid,
    event_uuid: String,
    source: String,
    event_type: String,
    content_type: String,
    /// The publish's trace context, passed on as it is when this process does not trace.
    traceparent: Option<String>,
}

fn envelope(message: &IncomingMessage) -> Result<Envelope, String> {
    let delivery_id = message
        .message_id
        .as_deref()
        .ok_or("no message_id")?
        .parse::<uuid::Uuid>()
        .map_err(|_| "message_id is not a delivery id")?;
    let header = |name: &str| {
        message
            .headers
            .get(name)
            .cloned()
            .ok_or_else(|| format!("missing header {name}"))
    };
    Ok(Envelope {
        delivery_id,
        event_uuid: header(headers::EVENT_UUID)?,
        source: header(headers::SOURCE)?,
        event_type: header(headers::EVENT_TYPE)?,
        content_type: message
            .content_type
            .clone()
            .unwrap_or_else(|| "application/json".into()),
        traceparent: message.headers.get(headers::TRACEPARENT).cloned(),
    })
}

impl Worker {
    async fn handle(&self, message: IncomingMessage, lane: &Lane) {
        let envelope = match envelope(&message) {
            Ok(envelope) => envelope,
            Err(reason) => {
                tracing::error!(%reason, "unparseable message rejected to the dead-letter queue");
                message.acker.reject();
                return;
            }
        };
        // The event's trace goes on here, under the relay's publish.
        let span = tracing::info_span!(
            "delivery",
            otel.name = lane.span_name.as_str(),
            otel.kind = "consumer",
            delivery.id = %envelope.delivery_id,
            event.id = %envelope.event_uuid,
            destination = tracing::field::Empty,
            attempt = tracing::field::Empty,
        );
        crate::telemetry::context::continue_from(&span, &message.headers);
        self.deliver(envelope, message, lane).instrument(span).await;
    }

    async fn deliver(&self, envelope: Envelope, message: IncomingMessage, lane: &Lane) {
        let IncomingMessage { body, acker, .. } = message;
        let span = tracing::Span::current();
        // A delivery waiting for the rate limit is not an attempt: it is not claimed yet.
        if let Some(at) = lane.pacer.as_ref().and_then(|p| p.reserve(Instant::now())) {
            self.ctx.metrics.rate_limited(&lane.destination);
            tokio::time::sleep_until(at.into()).await;
        }
        let Some(slot) = lane.enter().await else {
            tracing::debug!(
                state = lane.gate.state().as_str(),
                "destination held; message back to its queue"
            );
            acker.requeue();
            return;
        };
        let claimed = self.claims.submit(envelope.delivery_id).await;
        let claimed = match claimed {
            Ok(Some(claimed)) => claimed,
            Ok(None) => {
                tracing::debug!("delivery not claimable (done, dead or held elsewhere): duplicate dropped");
                acker.ack();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim; message requeued");
                acker.requeue();
                return;
            }
        };
        span.record("destination", claimed.destination.as_str());
        span.record("attempt", claimed.attempts);
        let Some(target) = self.target(&claimed.destination) else {
            // The destination was removed from the configuration: nothing can deliver it.
            let outcome = Outcome::Dead {
                status_code: None,
                error: format!("destination {:?} is not configured", claimed.destination),
            };
            self.settle(envelope.delivery_id, &claimed, None, outcome, acker, lane)
                .await;
            return;
        };

        // One of `worker.concurrency` only now: a delivery waiting for a slow
        // destination's limit holds none of the shared permits.
        let permit = self.permits.acquire(lane.index).await;
        let attempt = tracing::info_span!(
            "attempt",
            otel.name = "POST",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            http.response.status_code = tracing::field::Empty,
            server.address = target.url.host_str().unwrap_or_default(),
            error = tracing::field::Empty,
        );
        // The destination's own trace joins the event's under this attempt.
        let traceparent = crate::telemetry::context::passed_on(&attempt, envelope.traceparent.as_deref());
        let response = send::send(
            &self.client,
            &target,
            send::Request {
                webhook_id: &envelope.event_uuid,
                delivery_id: &envelope.delivery_id.to_string(),
                source: &envelope.source,
                event_type: &envelope.event_type,
                attempt: claimed.attempts,
                content_type: &envelope.content_type,
                traceparent: traceparent.as_deref(),
                body,
            },
        )
        .instrument(attempt.clone())
        .await;
        drop(permit);
        if let Some(code) = response.status_code {
            attempt.record("http.response.status_code", code);
        }
        if !response.is_success() {
            attempt.record("otel.status_code", "error");
        }
        if let Some(error) = &response.error {
            attempt.record("error", error.as_str());
        }
        drop(attempt);
        // The gate learns of the answer before the slot is given back: a delivery
        // waiting for the slot must see a circuit this answer opened.
        let verdict = Verdict::of(
            response.status_code,
            response.retry_after,
            response.error.as_deref(),
        );
        self.report(lane, &verdict, slot.probe).await;
        slot.done(response.duration, Signal::of(response.status_code));
        self.ctx
            .metrics
            .delivery_attempt(&claimed.destination, response.is_success(), response.duration);
        let status_code = response.status_code.map(i32::from);
        let failure = || schedule::Failure {
            status_code,
            error: response
                .error
                .clone()
                .unwrap_or_else(|| format!("HTTP {}", status_code.unwrap_or(0))),
        };
        let retry = &self.settings.retry;
        let outcome = match verdict {
            Verdict::Healthy => Outcome::Delivered {
                status_code: status_code.unwrap_or(200),
            },
            Verdict::Throttled(after) => {
                schedule::after_throttle(retry, claimed.created_at, after, failure())
            }
            // Disabled now: the delivery waits for an operator, its try given back.
            Verdict::Gone => schedule::after_throttle(
                retry,
                claimed.created_at,
                retry.delay(0).unwrap_or_default(),
                failure(),
            ),
            Verdict::Answered | Verdict::Failed(_) => {
                schedule::after_failure(retry, claimed.attempts, failure())
            }
        };
        self.settle(
            envelope.delivery_id,
            &claimed,
            Some(&response),
            outcome,
            acker,
            lane,
        )
        .await;
    }

    /// Makes the shared transition an attempt's `verdict` calls for (opening the
    /// circuit, closing or reopening it after a probe, disabling it after a 410), and
    /// applies the row it returns. A transition that cannot be written is only logged:
    /// the next failure (or probe) tries again.
    async fn report(&self, lane: &Lane, verdict: &Verdict, probe: bool) {
        let Some(transition) = lane.gate.report(verdict, probe, Instant::now()) else {
            if matches!(verdict, Verdict::Throttled(_)) {
                self.ctx.metrics.throttled(&lane.destination);
                lane.changed();
            }
            return;
        };
        let destination = lane.destination.as_str();
        let breaker = *lane.gate.breaker();
        let timeout = self.ctx.config.database.query_timeout;
        let written = crate::db::with_connection(&self.ctx.pool, timeout, async |conn| match &transition {
            Transition::Open { reason } => {
                destinations::open(conn, destination, reason, breaker.probe_interval).await
            }
            Transition::Close => destinations::close(conn, destination).await,
            Transition::Reopen { reason } => {
                destinations::reopen(conn, destination, reason, breaker.max_probe_interval).await
            }
            Transition::Disable => destinations::hold(conn, destination, State::Disabled, "410 Gone").await,
        })
        .await;
        match written {
            Ok(Some(row)) => {
                match &transition {
                    Transition::Open { reason } => tracing::warn!(
                        %reason,
                        probe_interval = ?breaker.probe_interval,
                        "circuit opened: deliveries held in the queue, one probe per interval"
                    ),
                    Transition::Close => tracing::info!("probe delivered: circuit closed, delivering"),
                    Transition::Reopen { reason } => {
                        tracing::warn!(%reason, "probe failed: circuit stays open")
                    }
                    Transition::Disable => tracing::error!(
                        "destination answered 410 Gone: disabled until an operator resumes it"
                    ),
                }
                lane.gate.apply(Some(&row));
                self.ctx
                    .metrics
                    .destination_state(destination, row.state().as_str());
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, ?transition, "cannot record the destination's state"),
        }
        if probe {
            self.ctx.metrics.probe(destination);
        }
        lane.changed();
    }

    /// Where `destination`'s deliveries go now.
    fn target(&self, destination: &str) -> Option<Arc<send::Target>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(destination)
            .cloned()
    }

    /// Tries to take the open circuit's probe (one replica gets it per interval).
    async fn take_probe(&self, lane: &Lane) {
        let hold = self
            .target(&lane.destination)
            .map_or(Duration::ZERO, |t| t.timeout)
            + self.settings.lease_margin;
        let timeout = self.ctx.config.database.query_timeout;
        let taken = crate::db::with_connection(&self.ctx.pool, timeout, async |conn| {
            destinations::take_probe(conn, &lane.destination, hold).await
        })
        .await;
        match taken {
            Ok(Some(row)) => {
                tracing::info!(destination = %lane.destination, "circuit half-open: the next delivery is the probe");
                lane.gate.probe_taken(&row);
                self.ctx
                    .metrics
                    .destination_state(&lane.destination, row.state().as_str());
                lane.changed();
            }
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "cannot take the probe; trying again later"),
        }
    }

    /// Records the attempt and the outcome in one transaction, then acks (or rejects a
    /// dead delivery to the dead-letter exchange). Unrecorded means requeued.
    async fn settle(
        &self,
        delivery_id: uuid::Uuid,
        claimed: &deliveries::Claimed,
        response: Option<&send::Response>,
        outcome: Outcome,
        acker: crate::broker::Acker,
        lane: &Lane,
    ) {
        let attempt = claimed.attempts;
        let row = response.map(|response| NewAttempt {
            delivery_id,
            attempt,
            started_at: response.started_at,
            duration_ms: i32::try_from(response.duration.as_millis()).unwrap_or(i32::MAX),
            status_code: response.status_code.map(i32::from),
            error: response.error.clone(),
            response_snippet: response.snippet.clone(),
        });
        let releases_key = claimed.ordered
            && match outcome {
                Outcome::Delivered { .. } => true,
                Outcome::Dead { .. } => !lane.blocks_on_dead,
                Outcome::Retrying { .. } | Outcome::Throttled { .. } => false,
            };
        let record = deliveries::Record {
            delivery_id,
            attempt,
            outcome,
            row,
            releases_key,
        };
        let mut recorded = self.records.submit(record.clone()).await;
        if let Err(BatchError::Rejected(reason)) = &recorded {
            // Something in the response could not be stored: record the attempt
            // without it rather than send the delivery again and again.
            tracing::error!(%reason, "the database refused the attempt's details; recording it without them");
            recorded = self.records.submit(record.without_details()).await;
        }
        let outcome = record.outcome;
        match (recorded, &outcome) {
            (Err(e), _) => {
                tracing::error!(error = %e, "cannot record the outcome; message requeued");
                acker.requeue();
            }
            (Ok(false), _) => {
                tracing::warn!(
                    "the lease expired and another worker took this delivery over; outcome not recorded"
                );
                acker.ack();
            }
            (Ok(true), Outcome::Delivered { status_code }) => {
                tracing::info!(status = status_code, "delivered");
                acker.ack();
            }
            (Ok(true), Outcome::Retrying { retry_in, error, .. }) => {
                tracing::warn!(%error, retry_in = ?retry_in, "attempt failed; will retry");
                acker.ack();
            }
            (Ok(true), Outcome::Throttled { retry_in, error, .. }) => {
                tracing::info!(%error, retry_in = ?retry_in, "throttled; will send again without spending a try");
                acker.ack();
            }
            (Ok(true), Outcome::Dead { error, .. }) => {
                tracing::error!(%error, "attempts exhausted; delivery is dead");
                self.ctx.metrics.delivery_dead(&claimed.destination);
                acker.reject();
            }
        }
    }
}
