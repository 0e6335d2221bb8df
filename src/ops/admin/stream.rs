//! `GET /admin/api/events/stream`: events as they are stored, as Server-Sent Events —
//! the live tail behind `relayd tail`, `relayd forward` and the dashboard's live view.
//!
//! Each event is sent once, in the order of [`db::events::stream_next`] (which never
//! lets an event committed late fall behind the stream's position), with its id as the
//! SSE `id`. A client that reconnects with `Last-Event-ID` (or `last_event_id=`) gets
//! every event after that one from PostgreSQL, so a dropped connection loses nothing and
//! repeats nothing. The stream reads PostgreSQL, woken by ingest in this process and
//! polling every [`POLL`] for events stored by others, so it works whatever roles this
//! process runs. Filters: `source`, `event_type` (`invoice.*` for a prefix),
//! `destination`, `match` and `where` ([`crate::search`]).
//!
//! Each client has a buffer of [`BUFFER`] events, filled by a task of its own: a client
//! that does not read while it is full is dropped, its last frame an `event: close`
//! with the reason (`slow_client`), and nothing else waits on it — ingest never does.
//! At most [`MAX_STREAMS`] run at once (503 beyond). The task stops when the client goes
//! away or the process shuts down (`close` with `shutdown`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::events::payload_text;
use super::{connection, non_empty, parse_id};
use crate::context::AppContext;
use crate::db::events::{self, EventConditions, StreamPosition};
use crate::db::{self, deliveries};
use crate::http_error::ApiError;
use crate::search::{Search, Terms};

/// Events buffered per client at most.
pub const BUFFER: usize = 256;

/// Streams open at once at most.
pub const MAX_STREAMS: usize = 32;

/// How often the stream looks for events stored by other processes.
pub const POLL: Duration = Duration::from_millis(500);

/// A comment sent after this long without an event, so that proxies keep the
/// connection and a client that went away is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Positions read per statement.
const PAGE: i64 = 200;

/// What the streams of this process share: the process's shutdown and the slots.
#[derive(Clone)]
pub struct Streams {
    shutdown: CancellationToken,
    slots: Arc<Semaphore>,
}

impl Streams {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            slots: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    source: Option<String>,
    event_type: Option<String>,
    destination: Option<String>,
    #[serde(rename = "match")]
    matches: Option<String>,
    #[serde(rename = "where")]
    filter: Option<String>,
    /// As the `Last-Event-ID` header, for clients that cannot set one.
    last_event_id: Option<String>,
}

/// One frame for the client.
enum Frame {
    Event(String),
    KeepAlive,
}

pub(super) async fn stream(
    ctx: web::Data<AppContext>,
    streams: web::Data<Streams>,
    request: HttpRequest,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let search = Search::new(
        EventConditions::of_type(non_empty(query.source), non_empty(query.event_type)),
        Terms {
            matches: query.matches,
            filter: query.filter,
        },
    )?;
    let destination = non_empty(query.destination);
    let resume = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(query.last_event_id)
        .filter(|id| !id.trim().is_empty())
        .map(|id| parse_id(id.trim(), "Last-Event-ID"))
        .transpose()?;
    let slot = streams
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyStreams(MAX_STREAMS))?;
    let mut conn = connection(&ctx).await?;
    let start = match resume {
        Some(id) => events::stream_position_of(&mut conn, id).await?.ok_or_else(|| {
            ApiError::Conflict(format!(
                "Last-Event-ID {id} is not stored (pruned by retention, or stored before the stream existed): \
                 reconnect without it to start from now"
            ))
        })?,
        None => events::stream_start(&mut conn).await?,
    };
    drop(conn);
    let (frames, received) = mpsc::channel(BUFFER);
    let overflowed = Arc::new(AtomicBool::new(false));
    let ended = CancellationToken::new();
    tracing::info!(resumed = resume.is_some(), "event stream opened");
    actix_web::rt::spawn(feed(
        ctx.into_inner(),
        search,
        destination,
        start,
        frames,
        overflowed.clone(),
        streams.shutdown.child_token(),
        ended.clone(),
        slot,
    ));
    let slow = format!("the client read too slowly: {BUFFER} events waited; reconnect with Last-Event-ID");
    let body = futures_util::stream::unfold(Some((received, overflowed, ended)), move |state| {
        let slow = slow.clone();
        async move {
            let (mut received, overflowed, ended) = state?;
            let close = |reason: &str, message: &str| {
                let data = json!({ "reason": reason, "message": message });
                Some((
                    Ok(web::Bytes::from(format!("event: close\ndata: {data}\n\n"))),
                    None,
                ))
            };
            // Checked first: what is still buffered for a client that fell behind is
            // dropped, and its next read is the reason.
            if overflowed.load(Ordering::Acquire) {
                return close("slow_client", &slow);
            }
            let bytes = match received.recv().await {
                Some(Frame::Event(text)) => web::Bytes::from(text),
                Some(Frame::KeepAlive) => web::Bytes::from_static(b": keep-alive\n\n"),
                None if overflowed.load(Ordering::Acquire) => return close("slow_client", &slow),
                None if ended.is_cancelled() => {
                    return close("shutdown", "relayd is stopping; reconnect with Last-Event-ID")
                }
                None => return None,
            };
            Some((
                Ok::<_, actix_web::Error>(bytes),
                Some((received, overflowed, ended)),
            ))
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Proxies (nginx) would otherwise hold events back to fill their buffers.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

/// Reads the events after `position` that `search` (and `destination`) select into
/// `frames` until the client goes away, falls [`BUFFER`] events behind (`overflowed`),
/// or `shutdown` (then `ended`).
#[allow(clippy::too_many_arguments)]
async fn feed(
    ctx: Arc<AppContext>,
    search: Search,
    destination: Option<String>,
    mut position: StreamPosition,
    frames: mpsc::Sender<Frame>,
    overflowed: Arc<AtomicBool>,
    shutdown: CancellationToken,
    ended: CancellationToken,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let timeout = ctx.config.database.query_timeout;
    let mut stored = ctx.wake.watch_stored();
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        let read = db::with_connection(&ctx.pool, timeout, async |conn| {
            let positions = events::stream_next(conn, position, PAGE).await?;
            let ids: Vec<Uuid> = positions.iter().map(|(_, id)| *id).collect();
            if ids.is_empty() {
                return Ok((positions, Vec::new(), Vec::new()));
            }
            let found = events::stream_events(conn, &ids, &search.conditions, destination.as_deref()).await?;
            let found_ids: Vec<Uuid> = found.iter().map(|f| f.event.id).collect();
            let owed = deliveries::for_events(conn, &found_ids).await?;
            Ok((positions, found, owed))
        })
        .await;
        let full_page = match read {
            Ok((positions, found, owed)) => {
                let full = positions.len() == PAGE as usize;
                let mut found: std::collections::HashMap<Uuid, events::Streamed> =
                    found.into_iter().map(|f| (f.event.id, f)).collect();
                for next in positions {
                    let Some(streamed) = found.remove(&next.1) else {
                        position = next;
                        continue;
                    };
                    let event = &streamed.event;
                    if !search.accepts(streamed.body.as_ref(), &event.source, &event.event_type) {
                        position = next;
                        continue;
                    }
                    let destinations: Vec<&str> = owed
                        .iter()
                        .filter(|d| d.event_id == event.id)
                        .map(|d| d.destination.as_str())
                        .collect();
                    let frame = Frame::Event(frame(streamed.event.clone(), &destinations));
                    match frames.try_send(frame) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(
                                buffered = BUFFER,
                                "event stream dropped: the client reads too slowly"
                            );
                            overflowed.store(true, Ordering::Release);
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                    position = next;
                    quiet_since = tokio::time::Instant::now();
                }
                full
            }
            Err(error) => {
                tracing::debug!(%error, "event stream: cannot read events; trying again");
                false
            }
        };
        if full_page {
            continue;
        }
        if quiet_since.elapsed() >= KEEP_ALIVE {
            if frames.try_send(Frame::KeepAlive).is_err() && frames.is_closed() {
                return;
            }
            quiet_since = tokio::time::Instant::now();
        }
        tokio::select! {
            () = frames.closed() => return,
            () = shutdown.cancelled() => {
                ended.cancel();
                return;
            }
            _ = stored.changed() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// An event's SSE frame: `id`, `event: event` and the event as JSON on one line.
fn frame(event: events::Event, destinations: &[&str]) -> String {
    let (payload, encoding) = payload_text(event.payload);
    let data = json!({
        "id": event.id,
        "source": event.source,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "received_at": event.received_at,
        "content_type": event.content_type,
        "headers": event.headers,
        "payload": payload,
        "payload_encoding": encoding,
        "destinations": destinations,
    });
    format!("id: {}\nevent: event\ndata: {data}\n\n", event.id)
}
