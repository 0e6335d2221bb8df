//! The ingest role: the public webhook listener.
//!
//! `POST /webhooks/{source}` reads the raw body (bounded in size, time and total
//! memory: `body`),
//! verifies it with the source's verifier (the sources and routing in force: a reload
//! replaces them whole for the requests that start after it, [`crate::reload`]), routes
//! it (`routing`: sources, type globs and payload filters, [`crate::filter`]), finds its
//! ordering key for each ordered destination (`ordering`), and in one transaction stores the event
//! (`ON CONFLICT DO NOTHING` on `(source, event_id)`) together with one `pending`
//! outbox row per subscribed destination, then wakes the relays ([`crate::wake`]). It
//! answers only after the commit, so a 200 means the event is durable. Requests that
//! arrive together are stored together (group commit: [`crate::db::batch`] with
//! [`StoreEvents`]): one statement and one WAL flush for the lot, and one event the
//! database refuses fails alone. It never talks to the broker and never serves
//! `/admin`. It stops when `shutdown` is cancelled, letting in-flight
//! requests finish within the grace period.

mod body;
mod dedup;
mod fields;
mod ordering;
mod payload;
pub mod routing;
pub mod verify;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::Config;
use crate::context::AppContext;
use crate::db::batch::{self, BatchError, Batcher};
use crate::db::events::{BatchEvent, NewDelivery, StoreEvents, Stored};
use crate::http_error::ApiError;
use routing::Router;

/// Events stored by one statement at most.
const MAX_BATCH: usize = 128;

/// Group-commit statements in flight at once: several keep the database busy while the
/// next batch forms.
const COMMITTERS: usize = 4;

/// A second committer starts while one commits only once this many events wait (or
/// after [`FORM_WAIT`]). Below that, the requests that arrive during one commit form
/// the next batch: at 1,000 events/s four eager committers stored 1.9 events per
/// statement, and the statement's fixed cost made PostgreSQL's ingest backends the
/// largest CPU user of the whole pipeline (docs/bench/anatomy.md).
const EAGER: usize = MAX_BATCH / 4;

/// How long a formed batch waits for a running commit before it starts beside it.
const FORM_WAIT: Duration = Duration::from_millis(10);

/// The outcome of a stored request (`accepted`, `duplicate`) and relayd's id of the event,
/// also in the headers of every `200`: for a provider whose answer replaces relayd's
/// JSON (Discord).
pub const STATUS_HEADER: &str = "x-relayd-status";
pub const STORED_AS_HEADER: &str = "x-relayd-event";

/// A configured source, ready to verify requests.
struct Source {
    verifier: Box<dyn verify::Verifier>,
    /// Request headers stored with each event (lower-case names).
    kept_headers: Vec<String>,
    dedup: Option<dedup::DedupRule>,
    /// Its JSON bodies are stored as a searchable `jsonb` copy too.
    searchable: bool,
}

/// The configured sources and the routing of their events, as one configuration says.
struct Routes {
    sources: HashMap<String, Source>,
    router: Router,
}

impl Routes {
    fn new(config: &Config) -> Self {
        let sources = config
            .sources
            .iter()
            .map(|s| {
                let verifier = verify::for_source(s);
                let kept_headers = verifier.kept_headers();
                (
                    s.name.clone(),
                    Source {
                        verifier,
                        kept_headers,
                        dedup: s.dedup.as_ref().map(dedup::DedupRule::of),
                        searchable: s.searchable,
                    },
                )
            })
            .collect();
        Self {
            sources,
            router: Router::new(&config.destinations),
        }
    }
}

/// Everything a request handler needs; built once per role start.
struct IngestState {
    ctx: Arc<AppContext>,
    /// The routes of the configuration in force, and that configuration: replaced whole
    /// by the first request after a reload; a request keeps the one it started with.
    routes: RwLock<(Arc<Config>, Arc<Routes>)>,
    bodies: body::BodyReader,
    committer: Batcher<StoreEvents>,
}

impl IngestState {
    /// The sources and routing of the configuration in force now: a request that starts
    /// after a reload has answered sees the new one (it is compiled here, once, by the
    /// first request that finds it).
    fn in_force(&self) -> Arc<Routes> {
        let current = self.ctx.live.current();
        {
            let held = self.routes.read().unwrap_or_else(|e| e.into_inner());
            if Arc::ptr_eq(&held.0, &current) {
                return held.1.clone();
            }
        }
        let mut held = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&held.0, &current) {
            started(&self.ctx, &current);
            *held = (current.clone(), Arc::new(Routes::new(&current)));
        }
        held.1.clone()
    }
}

/// The labelled series of `config`'s sources and destinations exist from when it is in
/// force, at zero.
fn started(ctx: &AppContext, config: &Config) {
    for source in &config.sources {
        ctx.metrics.source_started(&source.name);
    }
    for destination in config.destinations.iter().filter(|d| d.ordering.is_some()) {
        ctx.metrics.ordered_destination_started(&destination.name);
    }
    for destination in config.destinations.iter().filter(|d| d.filter.is_some()) {
        ctx.metrics.filtered_destination_started(&destination.name);
    }
}

/// Runs the ingest listener on `listener` until `shutdown` is cancelled.
pub async fn run(
    ctx: Arc<AppContext>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = &ctx.config;
    let in_force = ctx.live.current();
    // The committers outlive the HTTP server's graceful stop, which waits for in-flight
    // requests (and so for their commits); they are stopped after it.
    let committers_stop = CancellationToken::new();
    let (committer, committers) = Batcher::start(
        StoreEvents {
            pool: ctx.pool.clone(),
            timeout: ctx.config.database.query_timeout,
        },
        batch::Options {
            max_batch: MAX_BATCH,
            tasks: COMMITTERS,
            eager: EAGER,
            form_wait: FORM_WAIT,
            // A primary that went away (restart, failover) is given until
            // `database.connect_timeout` to be back before the provider is answered 503
            // (it retries that itself; holding its request longer would only pile more
            // of them up while the database is away).
            retry: batch::Retry {
                delays: crate::retry::backoff(Duration::from_millis(50), Duration::from_secs(1))
                    .take(64)
                    .collect(),
                within: Some(ctx.config.database.connect_timeout),
            },
        },
        committers_stop.clone(),
    );
    started(&ctx, &in_force);
    let state = web::Data::new(IngestState {
        routes: RwLock::new((in_force.clone(), Arc::new(Routes::new(&in_force)))),
        bodies: body::BodyReader::new(&config.ingest),
        ctx: ctx.clone(),
        committer,
    });
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(mount))
        .workers(workers)
        .max_connections(config.ingest.max_connections.div_ceil(workers))
        .client_request_timeout(config.ingest.header_timeout)
        .listen(listener)
        .context("listening for webhooks")?
        .disable_signals()
        .shutdown_timeout(ctx.config.shutdown.grace_period.as_secs())
        .run();
    let served = crate::listener::serve_until_cancelled(server, shutdown).await;
    committers_stop.cancel();
    for committer in committers {
        let _ = committer.await;
    }
    served
}

/// The ingest listener's paths.
fn mount(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(crate::listener::alive))
        .service(
            web::resource("/webhooks/{source}")
                .route(web::post().to(receive))
                .route(web::get().to(answer_query_handshake))
                .default_service(web::to(crate::listener::method_not_allowed)),
        )
        // The path of the service relayd replaces, so Stripe's dashboard needs no change.
        .service(
            web::resource("/stripe/webhook")
                .route(web::post().to(receive_stripe_alias))
                .default_service(web::to(crate::listener::method_not_allowed)),
        )
        .default_service(web::to(crate::listener::not_found));
}

/// `GET /webhooks/{source}`: a provider's handshake by query (Meta's subscription
/// check), answered when the source's kind has one and the query proves it; a 405 for
/// kinds without, a 403 for a wrong token. Nothing is stored.
async fn answer_query_handshake(
    state: web::Data<IngestState>,
    source: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let routes = state.in_force();
    let name = source.into_inner();
    let source = routes
        .sources
        .get(&name)
        .ok_or_else(|| ApiError::UnknownSource(shown_source(&name)))?;
    let span = tracing::info_span!("handshake", source = %name);
    let _entered = span.enter();
    match source.verifier.query_handshake(request.query_string()) {
        None => Err(ApiError::MethodNotAllowed),
        Some(Err(verify::Error::InvalidPayload(m))) => Err(ApiError::InvalidPayload(m)),
        Some(Err(verify::Error::InvalidSignature(m))) => {
            state
                .ctx
                .metrics
                .ingest_request(&name, "forbidden", started.elapsed());
            Err(ApiError::Forbidden(m))
        }
        Some(Ok(answer)) => {
            tracing::info!("handshake answered");
            state
                .ctx
                .metrics
                .ingest_request(&name, "handshake", started.elapsed());
            Ok(HttpResponse::Ok()
                .content_type(answer.content_type)
                .insert_header((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .body(answer.body))
        }
    }
}

/// A source name from the path as logs and answers show it: a configured one as it is,
/// another cut short with control characters escaped (it is the sender's).
fn shown_source(name: &str) -> String {
    let escaped = format!("{:?}", name.chars().take(64).collect::<String>());
    escaped.trim_matches('"').to_string()
}

async fn receive_stripe_alias(
    state: web::Data<IngestState>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive_for(state, "stripe".into(), request, body).await
}

async fn receive(
    state: web::Data<IngestState>,
    source: web::Path<String>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    receive_for(state, source.into_inner(), request, body).await
}

async fn receive_for(
    state: web::Data<IngestState>,
    source_name: String,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let routes = state.in_force();
    let known = routes.sources.contains_key(&source_name);
    // The path segment is the sender's: an unknown one reaches logs and answers cut
    // short, with control characters escaped.
    let shown: String = if known {
        source_name.clone()
    } else {
        shown_source(&source_name)
    };
    // The trace of this event starts here, inside the provider's when it sent one.
    let span = tracing::info_span!(
        "webhook",
        otel.name = "POST /webhooks/{source}",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        source = %shown,
        event.id = tracing::field::Empty,
        event.r#type = tracing::field::Empty,
    );
    crate::telemetry::context::continue_from(
        &span,
        &crate::telemetry::context::RequestHeaders(request.headers()),
    );
    let traced = span.clone();
    let started = std::time::Instant::now();
    let state_for_metrics = state.clone();
    let source_label = if known {
        source_name.clone()
    } else {
        // Never an unbounded label: unknown sources share one.
        "-".to_string()
    };
    let result = async move {
        let source = routes
            .sources
            .get(&source_name)
            .ok_or_else(|| ApiError::UnknownSource(shown.clone()))?;
        let body = state.bodies.read(&request, body).await?;
        let refused = |e| match e {
            verify::Error::InvalidSignature(m) if source.verifier.refuses_forgeries_with_401() => {
                ApiError::SignatureUnauthorized(m)
            }
            verify::Error::InvalidSignature(m) => ApiError::InvalidSignature(m),
            verify::Error::InvalidPayload(m) => ApiError::InvalidPayload(m),
        };
        let now = SystemTime::now();
        // A provider's handshake (a challenge to echo when the URL is saved) is answered
        // here, once it has proved itself, and is not an event: nothing is stored.
        if let Some(answer) = source
            .verifier
            .handshake(request.headers(), &body, now)
            .map_err(refused)?
        {
            tracing::info!("handshake answered");
            return Ok((
                "handshake",
                HttpResponse::Ok()
                    .content_type(answer.content_type)
                    .body(answer.body),
            ));
        }
        let verified = source
            .verifier
            .verify_with_query(request.headers(), request.query_string(), &body, now)
            .map_err(refused)?;
        let span = tracing::Span::current();
        span.record("event.id", verified.event_id.as_str());
        span.record("event.type", verified.event_type.as_str());

        let checked = fields::check(&verified, request.headers(), &source.kept_headers)
            .map_err(ApiError::InvalidPayload)?;
        let payload = payload::Payload::new(&body);
        let (matched, refused) = routes.router.route(&source_name, &verified.event_type, &payload);
        let filtered = (!refused.is_empty()).then(|| {
            let mut reasons = serde_json::Map::new();
            for refusal in &refused {
                state
                    .ctx
                    .metrics
                    .filtered(refusal.destination, refusal.error.is_some());
                reasons.insert(refusal.destination.to_string(), refusal.reason().into());
            }
            serde_json::Value::Object(reasons)
        });
        let deliveries = matched
            .into_iter()
            .map(|route| NewDelivery {
                id: Uuid::now_v7(),
                destination: route.destination.to_string(),
                ordering_key: route.ordering.and_then(|rule| {
                    let key = rule.key(&source_name, request.headers(), &payload);
                    if key.is_none() {
                        state.ctx.metrics.ordering_unkeyed(route.destination);
                    }
                    key
                }),
            })
            .collect();
        let event = BatchEvent {
            id: Uuid::now_v7(),
            source: source_name.clone(),
            event_id: verified.event_id.clone(),
            event_type: verified.event_type.clone(),
            payload: body.to_vec(),
            content_type: checked.content_type,
            headers: checked.headers,
            traceparent: crate::telemetry::context::traceparent(&tracing::Span::current()),
            deliveries,
            filtered,
            dedup: source.dedup.as_ref().and_then(|rule| rule.key(&payload)),
            searchable: source.searchable && crate::db::events::searchable(payload.json(), &body),
        };
        let stored = state.committer.submit(event).await.map_err(|e| match e {
            // Every field was checked above, so this is relayd's own bug: not a 4xx the
            // provider would drop, and not a 503 it would retry in vain for days.
            BatchError::Rejected(_) => ApiError::Internal(anyhow::anyhow!(e)),
            BatchError::Unavailable(_) | BatchError::Stopped => ApiError::Unavailable(anyhow::anyhow!(e)),
        })?;
        let (status, id) = match stored {
            Stored::Accepted { id, deliveries } => {
                if deliveries > 0 {
                    state.ctx.wake.wake();
                }
                state.ctx.wake.events_stored();
                tracing::info!(event.uuid = %id, deliveries, "accepted");
                ("accepted", Some(id))
            }
            Stored::Duplicate { id } => {
                tracing::info!("duplicate");
                ("duplicate", id)
            }
        };
        let mut response = HttpResponse::Ok();
        response.insert_header((STATUS_HEADER, status));
        if let Some(id) = id {
            response.insert_header((STORED_AS_HEADER, id.to_string()));
        }
        // A provider that expects its own answer (Discord's deferred interaction
        // response) gets it; the outcome is in the headers then.
        let response = match source.verifier.answer(&body) {
            Some(answer) => response.content_type(answer.content_type).body(answer.body),
            None => response.json(json!({
                "status": status,
                "id": id,
                "event_id": verified.event_id,
            })),
        };
        Ok((status, response))
    }
    .instrument(span)
    .await;
    let status = match &result {
        Ok(_) => actix_web::http::StatusCode::OK,
        Err(e) => actix_web::ResponseError::status_code(e),
    };
    traced.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        traced.record("otel.status_code", "error");
    }
    drop(traced);
    let outcome = match &result {
        Ok((status, _)) => status,
        Err(ApiError::PayloadTooLarge { .. }) => "too_large",
        Err(e) => e.code(),
    };
    state_for_metrics
        .ctx
        .metrics
        .ingest_request(&source_label, outcome, started.elapsed());
    result.map(|(_, response)| response)
}
