//! The worker role: RabbitMQ → destination HTTP services.
//!
//! One consumer per destination queue (prefetch = the destination's `max_in_flight`,
//! so a slow destination holds only its own slots) and one semaphore of
//! `worker.concurrency` permits across them. For each message: claim the delivery with
//! a conditional UPDATE (a message whose row is not claimable is a duplicate: ack and
//! drop), POST it signed, then record the attempt and the outcome in one transaction,
//! and only then ack (or reject a dead one to the dead-letter exchange). A message
//! whose outcome could not be recorded is requeued, never acked. On shutdown the
//! consumers stop taking messages, in-flight deliveries get the grace period to finish
//! and be recorded, and whatever is left unacked is redelivered by the broker.

mod schedule;
mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::{headers, Consumer, IncomingMessage, Topology};
use crate::context::AppContext;
use crate::db::attempts::NewAttempt;
use crate::db::batch::{self, BatchError, Batcher};
use crate::db::deliveries::{self, Claims, Outcome, Records};

/// Runs the worker until `shutdown` is cancelled.
pub async fn run(ctx: Arc<AppContext>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = &ctx.config;
    let targets = config
        .destinations
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
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
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
    let (records, record_tasks) = Batcher::start(Records { pool, timeout }, options, batches_stop.clone());
    batchers.extend(record_tasks);
    let worker = Arc::new(Worker {
        claims,
        records,
        ctx: ctx.clone(),
        client: send::client().context("building the HTTP client")?,
        permits: Arc::new(Semaphore::new(config.worker.concurrency)),
        targets,
    });
    let topology = Topology::new(&config.broker, config.destinations.iter().map(|d| d.name.clone()));
    let mut destinations = JoinSet::new();
    for destination in &config.destinations {
        let prefetch = destination.max_in_flight.min(config.worker.concurrency);
        let consumer = Consumer::start(
            &config.broker,
            topology.clone(),
            &destination.name,
            u16::try_from(prefetch).unwrap_or(u16::MAX),
            ctx.broker_health.clone(),
        )
        .with_context(|| format!("starting the consumer of {}", destination.name))?;
        let part = format!("worker:{}", destination.name);
        destinations.spawn(consume(worker.clone(), consumer, part, shutdown.clone()));
    }
    if config.destinations.is_empty() {
        tracing::warn!("no destination is configured: the worker has nothing to consume");
    }
    while destinations.join_next().await.is_some() {}
    batches_stop.cancel();
    for task in batchers {
        let _ = task.await;
    }
    Ok(())
}

/// Claims or records combined into one statement at most.
const MAX_BATCH: usize = 128;

/// How often, at most, each consume loop beats while it turns.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

struct Worker {
    ctx: Arc<AppContext>,
    client: reqwest::Client,
    /// `worker.concurrency` across every destination.
    permits: Arc<Semaphore>,
    targets: HashMap<String, Arc<send::Target>>,
    /// Concurrent claims, combined into shared statements.
    claims: Batcher<Claims>,
    /// Concurrent outcome records, combined into shared statements.
    records: Batcher<Records>,
}

/// Feeds one destination's messages to delivery tasks until shutdown, then drains. The
/// loop beats `part` on [`crate::liveness`] every few seconds while it turns, so a loop
/// wedged for `ops.liveness_stall` (waiting for a permit that never comes back, say)
/// fails `/healthz`; an idle one keeps beating.
async fn consume(worker: Arc<Worker>, mut consumer: Consumer, part: String, shutdown: CancellationToken) {
    let mut in_flight = JoinSet::new();
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
            message = consumer.recv() => {
                let Some(message) = message else { break };
                let permit = tokio::select! {
                    permit = worker.permits.clone().acquire_owned() => permit,
                    _ = shutdown.cancelled() => break,
                };
                let Ok(permit) = permit else { break };
                let worker = worker.clone();
                in_flight.spawn(async move {
                    worker.handle(message).await;
                    drop(permit);
                });
            }
        }
    }
    let grace = worker.ctx.config.shutdown.grace_period;
    let drain = async { while in_flight.join_next().await.is_some() {} };
    // Both at once: the consumer thread applies the acks of the deliveries finishing.
    let (drained, ()) = tokio::join!(tokio::time::timeout(grace, drain), consumer.stop(grace));
    if drained.is_err() {
        tracing::warn!("grace period over: unfinished deliveries stay unacked and will be redelivered");
    }
}

/// The parts of a message a delivery needs.
struct Envelope {
    delivery_id: uuid::Uuid,
    event_uuid: String,
    source: String,
    event_type: String,
    content_type: String,
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
    })
}

impl Worker {
    async fn handle(&self, message: IncomingMessage) {
        let envelope = match envelope(&message) {
            Ok(envelope) => envelope,
            Err(reason) => {
                tracing::error!(%reason, "unparseable message rejected to the dead-letter queue");
                message.acker.reject();
                return;
            }
        };
        let span = tracing::info_span!(
            "delivery",
            delivery.id = %envelope.delivery_id,
            event.id = %envelope.event_uuid,
            destination = tracing::field::Empty,
            attempt = tracing::field::Empty,
        );
        self.deliver(envelope, message).instrument(span).await;
    }

    async fn deliver(&self, envelope: Envelope, message: IncomingMessage) {
        let IncomingMessage { body, acker, .. } = message;
        let span = tracing::Span::current();
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
        let Some(target) = self.targets.get(&claimed.destination).cloned() else {
            // The destination was removed from the configuration: nothing can deliver it.
            let outcome = Outcome::Dead {
                status_code: None,
                error: format!("destination {:?} is not configured", claimed.destination),
            };
            self.settle(envelope.delivery_id, &claimed, None, outcome, acker)
                .await;
            return;
        };

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
                body,
            },
        )
        .await;
        self.ctx
            .metrics
            .delivery_attempt(&claimed.destination, response.is_success(), response.duration);
        let status_code = response.status_code.map(i32::from);
        let outcome = if response.is_success() {
            Outcome::Delivered {
                status_code: status_code.unwrap_or(200),
            }
        } else {
            let error = response
                .error
                .clone()
                .unwrap_or_else(|| format!("HTTP {}", status_code.unwrap_or(0)));
            schedule::after_failure(
                &self.ctx.config.worker.retry,
                claimed.attempts,
                schedule::Failure {
                    status_code,
                    error,
                    retry_after: response.retry_after,
                },
            )
        };
        self.settle(envelope.delivery_id, &claimed, Some(&response), outcome, acker)
            .await;
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
        let record = deliveries::Record {
            delivery_id,
            attempt,
            outcome,
            row,
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
            (Ok(true), Outcome::Dead { error, .. }) => {
                tracing::error!(%error, "attempts exhausted; delivery is dead");
                self.ctx.metrics.delivery_dead(&claimed.destination);
                acker.reject();
            }
        }
    }
}
