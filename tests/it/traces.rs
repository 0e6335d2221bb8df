//! OpenTelemetry traces from the real binary (`--role all`) to a real OTLP/HTTP
//! receiver in this file: one event is one trace, ingest → publish → delivery →
//! attempt, inside the provider's trace when it sent a `traceparent`, and the receiving
//! sink gets the attempt's `traceparent`. A collector that is away costs no delivery;
//! with traces off nothing is stored or sent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use relayd::listener::LocalServer;
use serde_json::Value;

use crate::support::child::{config_file, Process};
use crate::support::sink::{Behaviour, Received, Sink};
use crate::support::{self, stripe_event, TestBroker, TestDb, STRIPE_SECRET};

/// A collector's OTLP/HTTP traces endpoint: keeps every span it is sent, with its
/// resource's attributes, from protobuf or JSON exports.
struct Collector {
    base: String,
    got: Arc<Got>,
    server: LocalServer,
}

#[derive(Default)]
struct Got {
    spans: Mutex<Vec<Span>>,
    /// The content type of each export.
    encodings: Mutex<HashSet<String>>,
}

#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    /// OTLP's `SpanKind` number: 2 server, 3 client, 4 producer, 5 consumer.
    kind: i64,
    /// Unix nanoseconds.
    start: u64,
    end: u64,
    attributes: HashMap<String, Value>,
    resource: HashMap<String, Value>,
}

/// OTLP/JSON `KeyValue`s as a map of their plain values.
fn attributes(list: &Value) -> HashMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let value = kv["value"].as_object()?.values().next()?.clone();
            Some((kv["key"].as_str()?.to_string(), value))
        })
        .collect()
}

fn kind(value: &Value) -> i64 {
    value.as_i64().unwrap_or(match value.as_str() {
        Some("SPAN_KIND_SERVER") => 2,
        Some("SPAN_KIND_CLIENT") => 3,
        Some("SPAN_KIND_PRODUCER") => 4,
        Some("SPAN_KIND_CONSUMER") => 5,
        _ => 0,
    })
}

/// An OTLP/protobuf export as the spans it holds.
fn decode_protobuf(body: &[u8]) -> Option<Vec<Span>> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
    use prost::Message;
    let plain = |list: &[KeyValue]| -> HashMap<String, Value> {
        list.iter()
            .filter_map(|kv| {
                let value = match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Value::from(s.as_str()),
                    any_value::Value::IntValue(i) => Value::from(*i),
                    any_value::Value::BoolValue(b) => Value::from(*b),
                    any_value::Value::DoubleValue(d) => Value::from(*d),
                    _ => return None,
                };
                Some((kv.key.clone(), value))
            })
            .collect()
    };
    let request = ExportTraceServiceRequest::decode(body).ok()?;
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = plain(&resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Span {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind: i64::from(span.kind),
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                    attributes: plain(&span.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }
    Some(spans)
}

async fn export(got: web::Data<Got>, request: actix_web::HttpRequest, body: web::Bytes) -> HttpResponse {
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    got.encodings.lock().unwrap().insert(content_type.clone());
    if content_type == "application/x-protobuf" {
        let Some(decoded) = decode_protobuf(&body) else {
            return HttpResponse::BadRequest().finish();
        };
        got.spans.lock().unwrap().extend(decoded);
        return HttpResponse::Ok().content_type("application/x-protobuf").finish();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut kept = got.spans.lock().unwrap();
    for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
        let resource = attributes(&resource_spans["resource"]["attributes"]);
        for scope in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
                // OTLP/JSON writes 64-bit integers as strings; accept numbers too.
                let nanos = |key: &str| {
                    span[key]
                        .as_u64()
                        .or_else(|| span[key].as_str()?.parse().ok())
                        .unwrap_or(0)
                };
                kept.push(Span {
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: text("name"),
                    kind: kind(&span["kind"]),
                    start: nanos("startTimeUnixNano"),
                    end: nanos("endTimeUnixNano"),
                    attributes: attributes(&span["attributes"]),
                    resource: resource.clone(),
                });
            }
        }
    }
    HttpResponse::Ok().json(serde_json::json!({}))
}

impl Collector {
    async fn start() -> Self {
        let got = Arc::new(Got::default());
        let data = web::Data::from(got.clone());
        let server = LocalServer::start(1, move |cfg| {
            cfg.app_data(data.clone())
                .route("/v1/traces", web::post().to(export));
        })
        .unwrap();
        Self {
            base: server.url(""),
            got,
            server,
        }
    }

    /// Waits until the trace holds its four spans (ingest, publish, delivery, attempt).
    async fn trace(&self, trace_id: &str) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans: Vec<Span> = self
                .got
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if spans.len() >= 4 {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} has {} spans: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `traceparent`'s trace id and parent span id.
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {value:?}");
    assert_eq!(parts[0], "00");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{value:?}");
    (parts[1].to_string(), parts[2].to_string())
}

/// Posts a signed Stripe event; returns the stored event's id.
async fn post(client: &reqwest::Client, ingest: &str, id: &str, traceparent: Option<&str>) -> String {
    let body = stripe_event(id, "invoice.paid");
    let mut request = client
        .post(format!("http://{ingest}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            support::stripe_signature(STRIPE_SECRET, support::now(), &body),
        )
        .body(body);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{id}");
    let answer: Value = response.json().await.unwrap();
    answer["id"].as_str().unwrap().to_string()
}

fn received<'a>(sink: &'a [Received], event_id: &str) -> &'a Received {
    sink.iter()
        .find(|r| r.event_id() == event_id)
        .unwrap_or_else(|| panic!("{event_id} was not delivered"))
}

/// The one span of `kind` in `spans`.
fn one(spans: &[Span], kind: i64) -> &Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(found.len(), 1, "spans of kind {kind}: {spans:#?}");
    found[0]
}

/// The event's trace as the collector got it: ingest (server) → publish (producer) →
/// delivery (consumer) → attempt (client), each the child of the one before, the
/// attempt the parent the sink was told of; returns the ingest span's parent.
async fn assert_one_trace(collector: &Collector, delivered: &Received) -> String {
    let (trace_id, parent) = parse_traceparent(delivered.header("traceparent").expect("a traceparent"));
    let spans = collector.trace(&trace_id).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let ingest = one(&spans, 2);
    let publish = one(&spans, 4);
    let delivery = one(&spans, 5);
    let attempt = one(&spans, 3);
    assert_eq!(ingest.name, "POST /webhooks/{source}");
    assert_eq!(ingest.attributes["source"], "stripe");
    assert_eq!(ingest.attributes["event.id"], delivered.event_id().as_str());
    assert_eq!(publish.name, "publish sink");
    assert_eq!(publish.parent_span_id, ingest.span_id);
    assert_eq!(publish.attributes["messaging.system"], "rabbitmq");
    assert_eq!(delivery.name, "deliver sink");
    assert_eq!(delivery.parent_span_id, publish.span_id);
    assert_eq!(attempt.parent_span_id, delivery.span_id);
    assert_eq!(attempt.span_id, parent, "the sink's parent is the attempt");
    let status = &attempt.attributes["http.response.status_code"];
    assert_eq!(
        status.as_i64().or_else(|| status.as_str()?.parse().ok()),
        Some(200)
    );
    for span in &spans {
        assert!(span.start > 0 && span.end >= span.start, "{span:?}");
        assert_eq!(span.resource["service.name"], "relayd");
        assert_eq!(span.resource["deployment.environment.name"], "it");
    }
    ingest.parent_span_id.clone()
}

const ADMIN_TOKEN: &str = "trace-admin-token";

fn traced_config(db: &TestDb, broker: &TestBroker, sink: &Sink, endpoint: &str) -> support::TempFile {
    let base = crate::support::child::config_with_admin_token(db, broker, sink, ADMIN_TOKEN);
    support::temp_file(&format!("{base}\n[telemetry]\notlp_endpoint = \"{endpoint}\"\n"))
}

#[tokio::test]
async fn one_event_is_one_trace_from_the_providers_request_to_the_receivers() {
    // OTLP/HTTP's default encoding, then the one OTEL_EXPORTER_OTLP_PROTOCOL picks.
    one_trace_per_event(None).await;
    one_trace_per_event(Some("http/json")).await;
}

async fn one_trace_per_event(protocol: Option<&str>) {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let collector = Collector::start().await;
    let config = traced_config(&db, &broker, &sink, &collector.base);
    // Standard OTEL_* variables reach the SDK: a short export delay, a resource attribute.
    let mut env = vec![
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=it"),
    ];
    env.extend(protocol.map(|p| ("OTEL_EXPORTER_OTLP_PROTOCOL", p)));
    let relayd = Process::start_with(&config, "all", &env);
    relayd.wait_ready().await;
    let ingest = relayd.ingest.clone().unwrap();
    let client = reqwest::Client::new();

    // The provider's trace: relayd's ingest span is the child of its span.
    let provider_trace = format!("{:032x}", uuid::Uuid::now_v7().as_u128());
    let provider_span = "00f067aa0ba902b7";
    let stored = post(
        &client,
        &ingest,
        "evt_traced",
        Some(&format!("00-{provider_trace}-{provider_span}-01")),
    )
    .await;
    post(&client, &ingest, "evt_untraced", None).await;
    // Malformed or invalid contexts are ignored: the event starts a trace of its own.
    post(&client, &ingest, "evt_garbled", Some("00-zzzz-not-a-trace-01")).await;
    post(
        &client,
        &ingest,
        "evt_zero",
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    )
    .await;

    let delivered = sink.wait_for(4, Duration::from_secs(30)).await;
    let traced = received(&delivered, "evt_traced");
    assert_eq!(
        parse_traceparent(traced.header("traceparent").unwrap()).0,
        provider_trace,
        "the receiver is in the provider's trace"
    );
    assert_eq!(assert_one_trace(&collector, traced).await, provider_span);
    // The README's picture of a trace is this one.
    let spans = collector.trace(&provider_trace).await;
    std::fs::write(
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("trace.svg"),
        waterfall(&spans, provider_span, traced.header("traceparent").unwrap()),
    )
    .unwrap();

    let mut traces = HashSet::from([provider_trace.clone()]);
    for id in ["evt_untraced", "evt_garbled", "evt_zero"] {
        let delivered = received(&delivered, id);
        assert_eq!(
            assert_one_trace(&collector, delivered).await,
            "",
            "{id} starts a trace"
        );
        let (trace_id, _) = parse_traceparent(delivered.header("traceparent").unwrap());
        assert_ne!(trace_id, "0".repeat(32));
        assert!(traces.insert(trace_id), "{id} has a trace of its own");
    }
    // An operator finds the trace from the event.
    let event: Value = client
        .get(relayd.ops_url(&format!("/admin/api/events/{stored}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event["trace_id"], provider_trace.as_str());
    let encoding = match protocol {
        Some("http/json") => "application/json",
        _ => "application/x-protobuf",
    };
    assert_eq!(
        *collector.got.encodings.lock().unwrap(),
        HashSet::from([encoding.to_string()])
    );
    // The context was stored with each event (the relay read it from the outbox).
    db.assert_count("SELECT count(*) FROM events WHERE traceparent IS NOT NULL", 4, "")
        .await;
    assert!(relayd.terminate().success());
    collector.server.stop().await;
}

#[tokio::test]
async fn a_collector_that_is_away_costs_no_delivery() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    // Nothing listens there: every export fails.
    let away = format!("http://{}", crate::support::child::free_address());
    let config = traced_config(&db, &broker, &sink, &away);
    let relayd = Process::start_with(&config, "all", &[("OTEL_BSP_SCHEDULE_DELAY", "50")]);
    relayd.wait_ready().await;
    let ingest = relayd.ingest.clone().unwrap();
    let client = reqwest::Client::new();
    for i in 0..50 {
        post(&client, &ingest, &format!("evt_away_{i}"), None).await;
    }
    let delivered = sink.wait_for(50, Duration::from_secs(30)).await;
    let events: HashSet<String> = delivered.iter().map(Received::event_id).collect();
    assert_eq!(events.len(), 50);
    // Traced all the same: the context travels whether or not spans can be exported.
    assert!(delivered.iter().all(|r| r.header("traceparent").is_some()));
    relayd.wait_ready().await;
    // The operator is told that spans cannot be exported.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let failed = relayd.logged_where(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("opentelemetry"))
        });
        if failed
            .iter()
            .any(|l| l["name"] == "BatchSpanProcessor.ExportError")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no export error logged: {failed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(relayd.terminate().success(), "SIGTERM with spans unexported");
}

#[tokio::test]
async fn with_traces_off_no_context_is_stored_or_sent() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let relayd = Process::start(&config_file(&db, &broker, &sink), "all");
    relayd.wait_ready().await;
    let ingest = relayd.ingest.clone().unwrap();
    let client = reqwest::Client::new();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    post(&client, &ingest, "evt_off", Some(traceparent)).await;
    let delivered = sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(delivered[0].header("traceparent"), None);
    db.assert_count("SELECT count(*) FROM events WHERE traceparent IS NOT NULL", 0, "")
        .await;
    assert!(relayd.terminate().success());
}

/// The trace as a waterfall (SVG): one row per span, in start order, each bar placed by
/// its start and end.
fn waterfall(spans: &[Span], provider_span: &str, sent: &str) -> String {
    let mut spans = spans.to_vec();
    spans.sort_by_key(|s| s.start);
    let t0 = spans.iter().map(|s| s.start).min().unwrap_or(0);
    let t1 = spans.iter().map(|s| s.end).max().unwrap_or(t0).max(t0 + 1);
    let (left, width, row) = (260.0, 560.0, 34.0);
    let x = |t: u64| left + width * (t - t0) as f64 / (t1 - t0) as f64;
    let ms = |ns: u64| ns as f64 / 1e6;
    let colour = |kind: i64| match kind {
        2 => "#4e79a7",
        4 => "#f28e2b",
        5 => "#59a14f",
        _ => "#b07aa1",
    };
    let role = |kind: i64| match kind {
        2 => "ingest · server",
        4 => "relay · producer",
        5 => "worker · consumer",
        _ => "worker · client",
    };
    let height = 70.0 + row * spans.len() as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"12\" y=\"24\" font-size=\"15\" font-weight=\"bold\">trace {} — one Stripe event through relayd --role all ({:.1} ms)</text>\n\
         <text x=\"12\" y=\"46\" fill=\"#555\">inside the provider's span {provider_span}; service.name = relayd</text>\n",
        spans[0].trace_id,
        ms(t1 - t0)
    );
    for (i, span) in spans.iter().enumerate() {
        let y = 62.0 + row * i as f64;
        let (start, end) = (x(span.start), x(span.end));
        svg.push_str(&format!(
            "<text x=\"12\" y=\"{ty}\">{name}</text>\n\
             <text x=\"12\" y=\"{sy}\" font-size=\"11\" fill=\"#777\">{role}</text>\n\
             <rect x=\"{start:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"22\" rx=\"3\" fill=\"{c}\"/>\n\
             <text x=\"{tx:.1}\" y=\"{ty}\" fill=\"#333\">{d:.2} ms</text>\n",
            ty = y + 12.0,
            sy = y + 25.0,
            name = span.name.replace('&', "&amp;").replace('<', "&lt;"),
            role = role(span.kind),
            w = (end - start).max(2.0),
            c = colour(span.kind),
            tx = end.max(start + 2.0) + 6.0,
            d = ms(span.end - span.start),
        ));
    }
    svg.push_str(&format!(
        "<text x=\"12\" y=\"{}\" fill=\"#555\">the receiver got traceparent: {sent}</text>\n</svg>\n",
        height - 14.0
    ));
    svg
}
