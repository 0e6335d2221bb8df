//! One signed HTTP POST to a destination.
//!
//! The body is the raw event payload, unchanged. Headers follow Standard Webhooks
//! (`webhook-id` = relayd's event id, stable across retries and replays;
//! `webhook-timestamp`; `webhook-signature` with the destination's `whsec_` key) plus
//! `x-relayd-*` context (the provider's event id among it) and the attempt's
//! `traceparent`. Redirects are not followed; the request (body included) is bounded by
//! the destination's timeout. Errors never carry the destination URL, which
//! may hold credentials.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use crate::signing;

/// How much of a response body is kept for operators.
pub const SNIPPET_BYTES: usize = 1024;

/// A destination as the sender needs it.
#[derive(Debug)]
pub struct Target {
    pub url: reqwest::Url,
    pub signing_key: Vec<u8>,
    pub timeout: Duration,
}

/// What to send.
pub struct Request<'a> {
    pub webhook_id: &'a str,
    /// The provider's event id, sent as `x-relayd-event-id` (when it is a valid header
    /// value).
    pub event_id: &'a str,
    /// Sent as `x-relayd-delivery` unless empty (`relayd forward` has no delivery).
    pub delivery_id: &'a str,
    pub source: &'a str,
    pub event_type: &'a str,
    pub attempt: i32,
    pub content_type: &'a str,
    /// The attempt's W3C trace context, sent as `traceparent`.
    pub traceparent: Option<&'a str>,
    /// More headers, by lower-case name (`relayd forward`'s `x-relayd-original-*`); one
    /// that is not a valid header is left out.
    pub extra_headers: &'a [(String, String)],
    pub body: Vec<u8>,
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub duration: Duration,
    pub status_code: Option<u16>,
    /// Set when no HTTP answer arrived: `timeout: …`, `connect: …`, `request: …`.
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    pub snippet: Option<String>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        self.status_code.is_some_and(|code| (200..300).contains(&code))
    }
}

/// The shared client: connection pooling, no redirects, relayd's user agent.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("relayd/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .build()
}

/// Sends one attempt and reads at most [`SNIPPET_BYTES`] of the answer.
pub async fn send(client: &reqwest::Client, target: &Target, request: Request<'_>) -> Response {
    let started_at = chrono::Utc::now();
    let started = Instant::now();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let signature = signing::standard_webhooks_signature(
        &target.signing_key,
        request.webhook_id,
        timestamp,
        &request.body,
    );

    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    put("webhook-id", request.webhook_id);
    put("webhook-timestamp", &timestamp.to_string());
    put("webhook-signature", &signature);
    if !request.event_id.is_empty() {
        put("x-relayd-event-id", request.event_id);
    }
    put("x-relayd-source", request.source);
    put("x-relayd-event-type", request.event_type);
    if !request.delivery_id.is_empty() {
        put("x-relayd-delivery", request.delivery_id);
    }
    put("x-relayd-attempt", &request.attempt.to_string());
    if let Some(traceparent) = request.traceparent {
        put("traceparent", traceparent);
    }
    for (name, value) in request.extra_headers {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(request.content_type).unwrap_or(HeaderValue::from_static("application/json")),
    );

    let result = client
        .post(target.url.clone())
        .headers(headers)
        .timeout(target.timeout)
        .body(request.body)
        .send()
        .await;
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            return Response {
                started_at,
                duration: started.elapsed(),
                status_code: None,
                error: Some(describe(&e)),
                retry_after: None,
                snippet: None,
            }
        }
    };
    let status = response.status();
    let retry_after = if status.as_u16() == 429 || status.as_u16() == 503 {
        response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| super::schedule::parse_retry_after(v, SystemTime::now()))
    } else {
        None
    };
    let mut snippet = Vec::new();
    while snippet.len() < SNIPPET_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = SNIPPET_BYTES - snippet.len();
                snippet.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            // The status is what counts; a body cut short only shortens the snippet.
            Ok(None) | Err(_) => break,
        }
    }
    Response {
        started_at,
        duration: started.elapsed(),
        status_code: Some(status.as_u16()),
        error: None,
        retry_after,
        snippet: (!snippet.is_empty()).then(|| crate::db::attempts::storable(&snippet, SNIPPET_BYTES)),
    }
}

/// What went wrong with a request that got no answer (`timeout: …`, `connect: …`,
/// `request: …`), without the URL.
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "request"
    };
    // Only the error's causes: its own message names the URL, which may carry
    // credentials and must reach neither logs nor the database.
    let detail = format!("{}", RedactedError(error));
    format!(
        "{kind}: {}",
        crate::db::attempts::storable(detail.as_bytes(), 500)
    )
}

/// Displays a reqwest error and its sources without the URL.
struct RedactedError<'a>(&'a reqwest::Error);

impl std::fmt::Display for RedactedError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::error::Error as _;
        let mut source = self.0.source();
        let mut first = true;
        while let Some(cause) = source {
            if !first {
                f.write_str(": ")?;
            }
            write!(f, "{cause}")?;
            first = false;
            source = cause.source();
        }
        if first {
            f.write_str(if self.0.is_timeout() {
                "timed out"
            } else {
                "failed"
            })?;
        }
        Ok(())
    }
}
