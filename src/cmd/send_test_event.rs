//! `relayd send-test-event SOURCE`: a sample event signed as the source's provider would
//! sign it (its first configured secret, any kind), posted to a running ingest, and its
//! answer printed. Signing lives with each verifier (`ingest::verify`); this only sends.

use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::cli::{Cli, SendTestEventArgs};
use crate::config::Config;
use crate::ingest::routing::Router;
use crate::ingest::verify::{self, SampleEvent};

/// How long to wait for ingest's answer.
const TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(cli: &Cli, args: &SendTestEventArgs) -> anyhow::Result<()> {
    let config = super::load_config(cli)?;
    let Some(source) = config.sources.iter().find(|s| s.name == args.source) else {
        let names: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "no source {:?} is configured (configured: {})",
            args.source,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    let private_key = match &args.private_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the private key file {}", path.display()))?;
            Some(
                hex::decode(text.trim())
                    .ok()
                    .filter(|seed| seed.len() == 32)
                    .with_context(|| {
                        format!(
                            "{} does not hold a hex Ed25519 seed (64 hex digits)",
                            path.display()
                        )
                    })?,
            )
        }
        None => None,
    };
    let event = SampleEvent {
        id: args
            .id
            .clone()
            .unwrap_or_else(|| format!("evt_test_{}", uuid::Uuid::now_v7().simple())),
        event_type: args.event_type.clone(),
        at: SystemTime::now(),
        private_key,
    };
    let request = verify::for_source(source)
        .sign(&event)
        .map_err(|e| anyhow::anyhow!("cannot sign as source {}: {e}", source.name))?;
    let url = match &args.url {
        Some(url) => url.clone(),
        None => format!("{}/webhooks/{}", ingest_base(&config), source.name),
    };

    let answer = super::runtime()?.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let mut post = client.post(&url).body(request.body);
        for (name, value) in &request.headers {
            post = post.header(name, value);
        }
        let response = post
            .send()
            .await
            .with_context(|| format!("posting to {url} (is relayd running with the ingest role there?)"))?;
        let status = response.status();
        // A provider's own answer (Discord's) replaces relayd's JSON: the outcome is in
        // the headers then.
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let outcome = header(crate::ingest::STATUS_HEADER);
        let stored = header(crate::ingest::STORED_AS_HEADER);
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        let mut body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if body.get("status").is_none() {
            if let (Some(outcome), serde_json::Value::Object(fields)) = (outcome, &mut body) {
                fields.insert("status".into(), outcome.into());
                fields.insert("id".into(), stored.into());
            }
        }
        anyhow::Ok((status, body))
    })?;

    let (status, body) = answer;
    if !status.is_success() {
        anyhow::bail!(
            "ingest answered {status}: {} ({})",
            body["message"].as_str().unwrap_or("no message"),
            body["error"].as_str().unwrap_or("no error code"),
        );
    }
    let event_id = body["event_id"].as_str().unwrap_or(&event.id);
    let stored_as = body["id"].as_str().unwrap_or("-");
    let router = Router::new(&config.destinations);
    let routes: Vec<&str> = router
        .destinations_for(&source.name, &event.event_type)
        .map(|route| route.destination)
        .collect();
    let routed = if routes.is_empty() {
        "no destination of this configuration subscribes to it".to_string()
    } else {
        format!("this configuration routes it to {}", routes.join(", "))
    };
    match body["status"].as_str() {
        Some("accepted") => println!(
            "accepted: event {event_id} ({}) from source {}, stored as {stored_as}; {routed}",
            event.event_type, source.name
        ),
        Some("duplicate") => println!(
            "duplicate: event {event_id} from source {} was already stored as {stored_as}; \
             nothing new is delivered",
            source.name
        ),
        _ => anyhow::bail!("ingest answered {status} with an unexpected body: {body}"),
    }
    Ok(())
}

/// `http://HOST:PORT` of the configured ingest listener.
fn ingest_base(config: &Config) -> String {
    super::local_base(config.ingest.listen)
}
