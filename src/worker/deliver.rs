//! One message's delivery: its envelope read, the rate limit and a slot waited for,
//! the claim, the signed POST, the gate told of the answer, then the attempt and the
//! outcome recorded and only then the ack (or the reject of a dead one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::concurrency::Signal;
use super::gate::{Transition, Verdict};
use super::lane::Lane;
use super::{schedule, send, Worker};
use crate::broker::{Envelope, IncomingMessage};
use crate::db::attempts::NewAttempt;
use crate::db::batch::BatchError;
use crate::db::deliveries::{self, Outcome};
use crate::db::destinations::{self, State};

impl Worker {
    pub(super) async fn handle(&self, message: IncomingMessage, lane: &Lane) {
        let envelope = match Envelope::of(&message) {
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
                event_id: &envelope.event_id,
                delivery_id: &envelope.delivery_id.to_string(),
                source: &envelope.source,
                event_type: &envelope.event_type,
                attempt: claimed.attempts,
                content_type: &envelope.content_type,
                traceparent: traceparent.as_deref(),
                extra_headers: &[],
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
    pub(super) async fn take_probe(&self, lane: &Lane) {
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
