//! The W3C trace context across relayd's hops: in from a provider's `traceparent`
//! (ingest), into the outbox with the event (`events.traceparent`), onto each broker
//! message (the relay's publish span, [`crate::broker::headers::TRACEPARENT`]), and out
//! on each attempt's request to a destination (the worker), so that one event is one
//! trace and the receiver's own trace joins it.
//!
//! Only `traceparent` travels; `tracestate` is not carried. What comes from outside is
//! parsed by the SDK's propagator: a malformed value starts a trace of relayd's own, and
//! what relayd stores and sends is always its own span's context, never the sender's
//! text. With traces off spans have no context: nothing is stored or sent.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and AMQP header) name of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Makes `span` (not yet entered) a child of the trace context `carrier` holds, when it
/// holds a valid one; otherwise `span` keeps its own parent (or starts a trace).
pub fn continue_from(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = TraceContextPropagator::new().extract(carrier);
    if parent.span().span_context().is_valid() {
        // Fails only when traces are off (no layer) or the span is filtered out.
        let _ = span.set_parent(parent);
    }
}

/// [`continue_from`] a stored `traceparent`.
pub fn continue_from_traceparent(span: &tracing::Span, traceparent: &str) {
    continue_from(span, &Stored(traceparent));
}

/// `span`'s own context as a `traceparent` value; `None` when traces are off.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The context to send on from `span`: its own, or — when this process does not trace
/// (a role-split deployment tracing only some roles) — the one it `received`, unchanged.
pub fn passed_on(span: &tracing::Span, received: Option<&str>) -> Option<String> {
    traceparent(span).or_else(|| received.map(String::from))
}

/// The trace id a `traceparent` names (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| id.len() == 32)
}

/// The request headers of an incoming webhook.
pub struct RequestHeaders<'a>(pub &'a actix_web::http::header::HeaderMap);

impl Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A `traceparent` read back from the outbox.
struct Stored<'a>(&'a str);

impl Extractor for Stored<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}
