//! `relayd forward`: a relayd's events, as they arrive ([`super::follow`]), posted to a
//! service on this machine — the way to receive staging's real events on a laptop. Each
//! post is signed with Standard Webhooks (a secret made up and printed at start, or
//! `--secret`), carries `webhook-id` (relayd's event id, as deliveries do), the
//! `x-relayd-*` context and the provider's own headers as `x-relayd-original-*`, and
//! its answer is printed. Posts go one at a time, in order: a target that does not
//! answer (down, refusing, timing out) is tried again with backoff, and the stream waits
//! — or, when relayd drops it meanwhile, resumes after the last event the target
//! answered. Any HTTP answer, 5xx included, counts as answered (it is printed, and the
//! next event follows). Runs until Ctrl-C.

use std::time::Duration;

use anyhow::Context;
use base64::Engine;

use crate::cli::{Cli, ForwardArgs};
use crate::signing;
use crate::worker::send;

use super::follow::{follow, http_url, until_interrupted, Source, StreamedEvent};

/// The prefix of the provider's headers as forwarded.
pub const ORIGINAL_PREFIX: &str = "x-relayd-original-";

pub fn run(cli: &Cli, args: &ForwardArgs) -> anyhow::Result<()> {
    let source = Source::resolve(cli, &args.follow)?;
    let url = http_url("--to", &args.to)?;
    let signing_key = match &args.secret {
        Some(secret) => signing::decode_whsec(secret)
            .context("--secret is not a Standard Webhooks secret (whsec_ and base64)")?,
        None => {
            let key = new_key()?;
            eprintln!(
                "signing with {} (Standard Webhooks): verify with it in your service, or pass --secret",
                format_args!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key))
            );
            key
        }
    };
    let target = send::Target {
        url,
        signing_key,
        timeout: args.timeout,
    };
    let client = send::client().context("building the HTTP client")?;
    eprintln!("forwarding to {}", args.to);
    until_interrupted(follow(&source, args.follow.after, async |event, _| {
        post(&client, &target, &args.to, event).await
    }))
}

/// Posts `event` until the target answers.
async fn post(
    client: &reqwest::Client,
    target: &send::Target,
    to: &str,
    event: &StreamedEvent,
) -> anyhow::Result<()> {
    let body = event.body()?;
    let webhook_id = event.id.to_string();
    let originals: Vec<(String, String)> = event
        .headers
        .iter()
        .filter_map(|(name, value)| Some((format!("{ORIGINAL_PREFIX}{name}"), value.as_str()?.to_string())))
        .collect();
    let mut delays = crate::retry::backoff_with_floor(Duration::from_millis(500), Duration::from_secs(30));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let response = send::send(
            client,
            target,
            send::Request {
                webhook_id: &webhook_id,
                event_id: &event.event_id,
                delivery_id: "",
                source: &event.source,
                event_type: &event.event_type,
                attempt,
                content_type: &event.content_type,
                traceparent: None,
                extra_headers: &originals,
                body: body.clone(),
            },
        )
        .await;
        let took = response.duration.as_millis();
        match (response.status_code, response.error) {
            (Some(code), _) => {
                let reason = reqwest::StatusCode::from_u16(code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                println!("{}  → {code} {reason}  {took} ms", event.summary());
                return Ok(());
            }
            (None, error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                eprintln!(
                    "{to}: {}; posting {} again in {:.1} s",
                    error.unwrap_or_default(),
                    event.event_id,
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A new random signing key, 24 bytes.
fn new_key() -> anyhow::Result<Vec<u8>> {
    use ring::rand::SecureRandom;
    let mut key = vec![0; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    Ok(key)
}
