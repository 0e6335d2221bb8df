//! The client of the live tail (`GET /admin/api/events/stream`) that `relayd tail` and
//! `relayd forward` share: it connects with the admin token and hands each event to the
//! caller, in order, one at a time. On any break — the network, relayd restarting, a
//! `close` frame, no keep-alive for [`SILENCE`] — it connects again after a backoff with
//! `Last-Event-ID` set to the last event the caller finished, so nothing is skipped and
//! nothing repeated. It stops on Ctrl-C (the caller's), or when relayd refuses the
//! request itself (bad token, bad filter, an id it no longer keeps): those are not
//! retried.

use std::time::Duration;

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;

use crate::cli::{Cli, FollowArgs};
use crate::worker::send::describe;

/// How long the stream may stay silent (relayd sends a keep-alive every 15 s) before
/// the connection is taken for dead.
pub const SILENCE: Duration = Duration::from_secs(45);

/// An event as the stream sends it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StreamedEvent {
    pub id: uuid::Uuid,
    pub source: String,
    pub event_id: String,
    pub event_type: String,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub content_type: String,
    /// The provider's headers relayd kept, by lower-case name.
    #[serde(default)]
    pub headers: serde_json::Map<String, serde_json::Value>,
    pub payload: String,
    /// `utf-8` (the payload as is) or `base64`.
    pub payload_encoding: String,
    #[serde(default)]
    pub destinations: Vec<String>,
}

impl StreamedEvent {
    /// `received_at  source  type  provider-id`: how `tail` and `forward` name it.
    pub fn summary(&self) -> String {
        format!(
            "{}  {}  {}  {}",
            self.received_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            self.source,
            self.event_type,
            self.event_id
        )
    }

    /// The raw body, byte for byte as the provider sent it.
    pub fn body(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine;
        match self.payload_encoding.as_str() {
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(&self.payload)
                .context("the event's base64 payload"),
            _ => Ok(self.payload.clone().into_bytes()),
        }
    }
}

/// Where the stream is, resolved from the arguments and the configuration.
pub struct Source {
    /// The admin base, as printed.
    pub from: String,
    stream: reqwest::Url,
    token: String,
}

impl Source {
    /// `args`' relayd, filling what they leave out from the configuration `cli` names.
    pub fn resolve(cli: &Cli, args: &FollowArgs) -> anyhow::Result<Self> {
        // Read once, and only for what the arguments leave out.
        let config = match (&args.from, &args.token) {
            (Some(_), Some(_)) => None,
            _ => Some(super::load_config(cli)?),
        };
        let from = match (&args.from, &config) {
            (Some(from), _) => from.trim_end_matches('/').to_string(),
            (None, Some(config)) => format!("{}/admin", super::local_base(config.ops.listen)),
            (None, None) => unreachable!("the configuration is read when --from is missing"),
        };
        let token = match (&args.token, &config) {
            (Some(token), _) => token.clone(),
            (None, config) => config
                .as_ref()
                .and_then(|c| c.ops.admin_token.as_ref())
                .map(|t| t.expose().to_string())
                .context("no admin token: give --token (or RELAYD_ADMIN_TOKEN), or set ops.admin_token")?,
        };
        let mut stream = http_url("--from", &from)?;
        stream
            .path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--from {from:?} cannot hold a path"))?
            .pop_if_empty()
            .extend(["api", "events", "stream"]);
        {
            let mut query = stream.query_pairs_mut();
            let terms = [
                ("source", &args.source),
                ("event_type", &args.event_type),
                ("destination", &args.destination),
                ("match", &args.matches),
                ("where", &args.filter),
            ];
            for (name, value) in terms {
                if let Some(value) = value {
                    query.append_pair(name, value);
                }
            }
        }
        Ok(Self { from, stream, token })
    }
}

/// Follows `source` from after `after` until `handle` fails, handing it each event and
/// the event's JSON as sent. An event counts as finished once `handle` returned: a
/// reconnect resumes after the last one.
pub async fn follow(
    source: &Source,
    after: Option<uuid::Uuid>,
    mut handle: impl AsyncFnMut(&StreamedEvent, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("relayd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let mut last = after;
    let mut delays = reconnect_delays();
    loop {
        let mut request = client
            .get(source.stream.clone())
            .bearer_auth(&source.token)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last {
            request = request.header("last-event-id", id.to_string());
        }
        // Why the connection ended, printed before the next.
        let why = match request.send().await {
            Err(error) => format!("cannot reach {}: {}", source.from, describe(&error)),
            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                eprintln!(
                    "following {}{}",
                    source.from,
                    last.map_or(String::new(), |id| format!(" after {id}"))
                );
                delays = reconnect_delays();
                read(response, &mut last, &mut handle).await?
            }
            Ok(response) => {
                let status = response.status();
                let message = message_of(response.text().await.unwrap_or_default());
                if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    format!("{} answered {status}: {message}", source.from)
                } else {
                    anyhow::bail!("{} refused the stream: {status}: {message}", source.from);
                }
            }
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        eprintln!("{why}; connecting again in {:.1} s", delay.as_secs_f64());
        tokio::time::sleep(delay).await;
    }
}

/// The pauses before each reconnect: 0.5 s doubling to 10 s, started again after a
/// connection that was accepted.
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    crate::retry::backoff_with_floor(Duration::from_millis(500), Duration::from_secs(10))
}

/// The `message` of relayd's JSON answer or `close` frame, or the text as it is.
fn message_of(text: String) -> String {
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or(text)
}

/// `text` as an http(s) URL, or an error naming the `flag` it came from.
pub fn http_url(flag: &str, text: &str) -> anyhow::Result<reqwest::Url> {
    let url = reqwest::Url::parse(text).with_context(|| format!("{flag} {text:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("{flag} {text:?} is not an http(s) URL");
    }
    Ok(url)
}

/// Reads one connection's events into `handle` until it breaks; says why it did.
async fn read(
    response: reqwest::Response,
    last: &mut Option<uuid::Uuid>,
    handle: &mut impl AsyncFnMut(&StreamedEvent, &str) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut frames = response.bytes_stream().eventsource();
    loop {
        let frame = match tokio::time::timeout(SILENCE, frames.next()).await {
            Err(_) => return Ok(format!("no word from relayd for {} s", SILENCE.as_secs())),
            Ok(None) => return Ok("the stream ended".into()),
            Ok(Some(Err(error))) => return Ok(format!("the stream broke: {error}")),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.event.as_str() {
            "event" => {
                let event: StreamedEvent = serde_json::from_str(&frame.data)
                    .with_context(|| format!("an event the stream sent is not one: {}", frame.data))?;
                handle(&event, &frame.data).await?;
                *last = Some(event.id);
            }
            "close" => {
                return Ok(format!("relayd closed the stream: {}", message_of(frame.data)));
            }
            _ => {}
        }
    }
}

/// Runs `work` on a new runtime until it ends or Ctrl-C (then `Ok`).
pub fn until_interrupted(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        tokio::select! {
            result = work => result,
            interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for Ctrl-C"),
        }
    })
}
