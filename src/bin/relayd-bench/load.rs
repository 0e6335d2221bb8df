//! Open-loop load: request `i` is due at `start + i / rate`, whatever happened to the
//! ones before it, and its latency is measured from that scheduled time — so a slow
//! server cannot slow the load down and hide its own queueing (no coordinated omission).
//! At most `concurrency` requests are open at once; a request waiting for a slot is
//! late, and its wait counts in its latency.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Index of the event (its id is `evt_bench_{run}_{index}`).
    pub index: u64,
    /// When it was due (Unix time, for end-to-end latency at the sink).
    pub scheduled: SystemTime,
    pub latency: Duration,
    /// HTTP status, or 0 when no answer came.
    pub status: u16,
}

pub struct Load {
    pub url: String,
    pub rate: f64,
    pub duration: Duration,
    pub concurrency: usize,
    pub stripe_secret: String,
    /// Distinguishes the event ids of one run from another's.
    pub run: String,
    /// Target body size in bytes.
    pub body_bytes: usize,
    /// Events carry `data.object.customer = "cus_{index % keys}"`; 0: none.
    pub keys: u64,
}

/// A Stripe-like event of about `size` bytes.
pub fn event_body(run: &str, index: u64, size: usize) -> Vec<u8> {
    keyed_event_body(run, index, size, 0)
}

/// [`event_body`] of customer `cus_{index % keys}` (none when `keys` is 0).
pub fn keyed_event_body(run: &str, index: u64, size: usize, keys: u64) -> Vec<u8> {
    let customer = if keys == 0 {
        String::new()
    } else {
        format!(r#""customer":"cus_{}","#, index % keys)
    };
    let head = format!(
        r#"{{"id":"evt_bench_{run}_{index}","object":"event","type":"invoice.paid","created":{},"data":{{"object":{{"id":"in_{index}",{customer}"amount_due":4200,"padding":""#,
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let tail = r#""}}}"#;
    let padding = size.saturating_sub(head.len() + tail.len());
    let mut body = head.into_bytes();
    body.extend(std::iter::repeat_n(b'x', padding));
    body.extend_from_slice(tail.as_bytes());
    body
}

/// `Stripe-Signature` for `body` now.
pub fn stripe_signature(secret: &str, body: &[u8]) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(ring::hmac::sign(&key, &message).as_ref())
    )
}

/// Runs the load and returns every request's sample.
pub async fn run(load: &Load) -> Vec<Sample> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(load.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let slots = Arc::new(Semaphore::new(load.concurrency));
    let total = (load.rate * load.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / load.rate);
    let start = Instant::now();
    let start_wall = SystemTime::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut samples = Vec::with_capacity(total as usize);
    for index in 0..total {
        let due = start + interval.mul_f64(index as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = slots.clone().acquire_owned().await.expect("semaphore");
        let client = client.clone();
        let url = load.url.clone();
        let body = keyed_event_body(&load.run, index, load.body_bytes, load.keys);
        let signature = stripe_signature(&load.stripe_secret, &body);
        let scheduled = start_wall + (due - start);
        tasks.spawn(async move {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .header("stripe-signature", signature)
                .body(body)
                .send()
                .await;
            let status = match response {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            drop(permit);
            Sample {
                index,
                scheduled,
                latency: due.elapsed(),
                status,
            }
        });
        // Collect finished requests as we go so the set stays small.
        while let Some(Ok(sample)) = tasks.try_join_next() {
            samples.push(sample);
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(sample) = done {
            samples.push(sample);
        }
    }
    samples
}
