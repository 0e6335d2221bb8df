//! The destination relayd delivers to during a benchmark: verifies every delivery's
//! Standard Webhooks signature and records when each event arrived. Its [`Mode`] can
//! make it slow (answer after a delay) or down (503 to everything, recorded).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use relayd::listener::LocalServer;

#[derive(Default)]
pub struct Received {
    /// Provider event id → arrival times (more than one = duplicates).
    pub arrivals: HashMap<String, Vec<SystemTime>>,
    pub bad_signatures: u64,
    /// When each request answered 503 because the sink was down arrived.
    pub refused: Vec<SystemTime>,
}

/// How the sink answers.
#[derive(Default)]
pub struct Mode {
    /// Each answer comes this late.
    pub delay: Duration,
    /// While set, every request gets 503 (no `Retry-After`) and counts as refused.
    pub down: AtomicBool,
}

pub struct Sink {
    pub url: String,
    pub received: Arc<Mutex<Received>>,
    pub mode: Arc<Mode>,
    server: LocalServer,
}

struct State {
    key: ring::hmac::Key,
    received: Arc<Mutex<Received>>,
    mode: Arc<Mode>,
}

impl Sink {
    pub fn start(signing_secret: &str) -> anyhow::Result<Self> {
        Self::start_with(signing_secret, Mode::default())
    }

    pub fn start_with(signing_secret: &str, mode: Mode) -> anyhow::Result<Self> {
        let mode = Arc::new(mode);
        let key_bytes =
            relayd::signing::decode_whsec(signing_secret).ok_or_else(|| anyhow::anyhow!("bad whsec"))?;
        let received = Arc::new(Mutex::new(Received::default()));
        let state = web::Data::new(State {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes),
            received: received.clone(),
            mode: mode.clone(),
        });
        // One worker answers many slow requests at once: each waits on a timer.
        let server = LocalServer::start(1, move |cfg| {
            cfg.app_data(state.clone())
                .route("/hooks", web::post().to(receive));
        })?;
        Ok(Self {
            url: server.url("/hooks"),
            received,
            mode,
            server,
        })
    }

    pub fn count_distinct(&self) -> usize {
        self.received.lock().map(|r| r.arrivals.len()).unwrap_or(0)
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> &'a str {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn receive(state: web::Data<State>, request: HttpRequest, body: web::Bytes) -> HttpResponse {
    let at = SystemTime::now();
    if state.mode.down.load(Ordering::SeqCst) {
        if let Ok(mut received) = state.received.lock() {
            received.refused.push(at);
        }
        return HttpResponse::ServiceUnavailable().finish();
    }
    if !state.mode.delay.is_zero() {
        tokio::time::sleep(state.mode.delay).await;
    }
    let message = [
        header(&request, "webhook-id").as_bytes(),
        b".",
        header(&request, "webhook-timestamp").as_bytes(),
        b".",
        &body,
    ]
    .concat();
    let valid = header(&request, "webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .any(|mac| ring::hmac::verify(&state.key, &message, &mac).is_ok());
    let Ok(mut received) = state.received.lock() else {
        return HttpResponse::InternalServerError().finish();
    };
    if !valid {
        received.bad_signatures += 1;
        return HttpResponse::Unauthorized().finish();
    }
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_str().map(String::from))
        .unwrap_or_default();
    received.arrivals.entry(id).or_default().push(at);
    HttpResponse::NoContent().finish()
}
