//! The ops surface: exact metrics, the admin API (auth, filters, paging, replay) and
//! `relayd replay`.

use std::collections::HashSet;
use std::time::Duration;

use relayd::config::{Config, DestinationConfig, Secret};
use relayd::context::Role;
use serde_json::Value;

use crate::support::sink::{Behaviour, Sink};
use crate::support::{self, post_stripe, stripe_event, Relayd, TestBroker, TestDb};

const ALL: &[Role] = &[Role::Ingest, Role::Relay, Role::Worker];
pub const TOKEN: &str = "admin-token-for-tests-0123456789";

pub fn to_sink(name: &str, sink: &Sink) -> DestinationConfig {
    DestinationConfig {
        url: relayd::config::Secret::new(sink.url.clone()),
        timeout: Duration::from_secs(2),
        ..support::destination(name, &[], &[])
    }
}

pub fn config(db: &TestDb, broker: &TestBroker, destinations: Vec<DestinationConfig>) -> Config {
    let mut config = support::config(&db.url);
    broker.configure(&mut config);
    config.destinations = destinations;
    config.ops.admin_token = Some(Secret::new(TOKEN));
    config.relay.poll_interval = Duration::from_millis(100);
    config.worker.lease_margin = Duration::from_secs(1);
    config.worker.retry.schedule = vec![Duration::from_millis(100).into()];
    config
}

pub struct Admin {
    client: reqwest::Client,
    base: String,
}

impl Admin {
    pub fn new(relayd: &Relayd) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: relayd.ops_url("/admin/api"),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or_default(),
        )
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or_default(),
        )
    }
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_what_happened() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["ok", "broken"]);
    let ok = Sink::start(Behaviour::Succeed).await;
    let broken = Sink::start(Behaviour::AlwaysFail { status: 500 }).await;
    let mut config = config(&db, &broker, vec![to_sink("ok", &ok), to_sink("broken", &broken)]);
    config.ingest.max_body_bytes = 4096;
    let relayd = Relayd::start(config, ALL).await;
    relayd.wait_ready().await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/stripe");

    // 2 accepted, 1 duplicate, 1 bad signature, 1 bad payload, 1 too large, 1 unknown source.
    for id in ["evt_m1", "evt_m2", "evt_m1"] {
        post_stripe(&client, &url, &stripe_event(id, "invoice.paid")).await;
    }
    let body = stripe_event("evt_m3", "invoice.paid");
    client
        .post(&url)
        .header("stripe-signature", "t=1,v1=00")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    post_stripe(&client, &url, b"{}").await;
    post_stripe(&client, &url, &vec![b' '; 5000]).await;
    post_stripe(&client, &relayd.url("/webhooks/nope"), &body).await;

    // Each event: "ok" delivers at once; "broken" fails twice (attempt + 1 retry), then dead.
    ok.wait_for(2, Duration::from_secs(15)).await;
    broken.wait_for(4, Duration::from_secs(15)).await;
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        2,
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let text = client
        .get(relayd.ops_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let requests = "relayd_ingest_requests_total";
    assert_eq!(
        metric(
            &text,
            &format!(r#"{requests}{{source="stripe",outcome="accepted"}}"#)
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"{requests}{{source="stripe",outcome="duplicate"}}"#)
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"{requests}{{source="stripe",outcome="invalid_signature"}}"#)
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"{requests}{{source="stripe",outcome="invalid_payload"}}"#)
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"{requests}{{source="stripe",outcome="too_large"}}"#)
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"{requests}{{source="-",outcome="unknown_source"}}"#)
        ),
        1.0
    );
    assert_eq!(metric(&text, "relayd_ingest_duration_seconds_count"), 7.0);
    // 4 first publications, then the 2 retries of "broken".
    assert_eq!(metric(&text, "relayd_relay_published_total"), 6.0);
    let attempts = "relayd_delivery_attempts_total";
    assert_eq!(
        metric(
            &text,
            &format!(r#"{attempts}{{destination="ok",outcome="delivered"}}"#)
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"{attempts}{{destination="broken",outcome="failed"}}"#)
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            r#"relayd_delivery_duration_seconds_count{destination="broken"}"#
        ),
        4.0
    );
    assert_eq!(
        metric(&text, r#"relayd_deliveries_dead_total{destination="broken"}"#),
        2.0
    );
    // Exists from the worker's start, at zero, so that `increase()` sees a first one.
    assert_eq!(
        metric(&text, r#"relayd_deliveries_dead_total{destination="ok"}"#),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            r#"relayd_broker_connected{component="publisher",node="127.0.0.1:5672"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"relayd_broker_connected{component="consumer:ok",node="127.0.0.1:5672"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"relayd_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    assert!(text.contains("relayd_outbox_due "), "{text}");
    assert!(text.contains("relayd_relay_batch_size_count"), "{text}");
    assert!(!text.contains("evt_m"), "no event id in any label");
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_needs_a_configured_token_and_the_right_bearer() {
    let db = TestDb::migrated().await;
    let client = reqwest::Client::new();

    // No token configured: the whole /admin tree does not exist.
    let relayd = Relayd::ingest(support::config(&db.url)).await;
    for path in ["/admin/", "/admin/api/stats", "/admin/api/events"] {
        let response = client
            .get(relayd.ops_url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    relayd.stop().await.unwrap();

    let mut config = support::config(&db.url);
    config.ops.admin_token = Some(Secret::new(TOKEN));
    let relayd = Relayd::ingest(config).await;
    let stats = relayd.ops_url("/admin/api/stats");
    assert_eq!(client.get(&stats).send().await.unwrap().status(), 401, "no token");
    let wrong = client
        .get(&stats)
        .bearer_auth("admin-token-for-tests-012345678X")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "wrong token");
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let basic = client
        .get(&stats)
        .basic_auth("admin", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401, "only bearer");
    assert_eq!(
        client
            .get(&stats)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The token is checked before anything else is read: without it a malformed body,
    // query or path is a 401, never a 400 that tells the caller about the API.
    let unauthorized = [
        client
            .post(relayd.ops_url("/admin/api/replay"))
            .header("content-type", "application/json")
            .body("{not json"),
        client.get(relayd.ops_url("/admin/api/deliveries?limit=many")),
        client.get(relayd.ops_url("/admin/api/events/not-a-uuid")),
        client.post(relayd.ops_url("/admin/api/deliveries/not-a-uuid/replay")),
    ];
    for request in unauthorized {
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (status.as_u16(), body["error"].as_str()),
            (401, Some("unauthorized")),
            "{body}"
        );
    }
    let page = client.get(relayd.ops_url("/admin/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "the page itself holds no data");
    // No inline script may run on it (its script is /admin/dashboard.js; the browser
    // test drives the page under this policy).
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(policy.contains("script-src 'self';"), "{policy}");
    assert!(page.text().await.unwrap().contains("<title>relayd</title>"));
    // Never on the ingest listener, token or not.
    for path in ["/admin/", "/admin/api/stats", "/metrics"] {
        let response = client
            .get(relayd.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} on the ingest listener");
    }
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_lists_filter_page_and_show_events_and_deliveries() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["billing", "audit"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let mut billing = to_sink("billing", &sink);
    billing.event_types = vec!["invoice.*".into()];
    let relayd = Relayd::start(config(&db, &broker, vec![billing, to_sink("audit", &sink)]), ALL).await;
    let client = reqwest::Client::new();
    for i in 0..7 {
        let event_type = if i % 2 == 0 {
            "invoice.paid"
        } else {
            "customer.created"
        };
        post_stripe(
            &client,
            &relayd.url("/webhooks/stripe"),
            &stripe_event(&format!("evt_list_{i}"), event_type),
        )
        .await;
    }
    sink.wait_for(11, Duration::from_secs(15)).await;
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        11,
        Duration::from_secs(10),
    )
    .await;
    let admin = Admin::new(&relayd);

    // Paging: newest first, 3 per page, cursor to the next.
    let (status, page1) = admin.get("/events?limit=3").await;
    assert_eq!(status, 200, "{page1}");
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&page1), ["evt_list_6", "evt_list_5", "evt_list_4"]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = admin.get(&format!("/events?limit=3&before={cursor}")).await;
    assert_eq!(ids(&page2), ["evt_list_3", "evt_list_2", "evt_list_1"]);
    let (_, page3) = admin
        .get(&format!(
            "/events?limit=3&before={}",
            page2["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(ids(&page3), ["evt_list_0"]);
    assert!(page3["next_cursor"].is_null());
    let first = &page1["items"][0];
    assert_eq!(first["source"], "stripe");
    assert_eq!(first["deliveries"].as_array().unwrap().len(), 2, "{first}");

    // Filters.
    let (_, invoices) = admin.get("/events?event_type=invoice.paid").await;
    assert_eq!(
        ids(&invoices),
        ["evt_list_6", "evt_list_4", "evt_list_2", "evt_list_0"]
    );
    let (_, by_q) = admin.get("/events?q=evt_list_5").await;
    assert_eq!(ids(&by_q), ["evt_list_5"]);
    let (_, wildcard) = admin.get("/events?q=evt%25").await;
    assert!(ids(&wildcard).is_empty(), "`%` in q is literal");
    let (_, by_source) = admin.get("/events?source=github").await;
    assert!(ids(&by_source).is_empty());
    let (_, delivered) = admin.get("/events?status=delivered&limit=100").await;
    assert_eq!(ids(&delivered).len(), 7);
    let (_, dead) = admin.get("/events?status=dead").await;
    assert!(ids(&dead).is_empty());

    // Bad input.
    for path in [
        "/events?before=not-a-uuid",
        "/events?status=lost",
        "/events?limit=0",
        "/events?limit=abc",
        "/events?colour=red",
        "/deliveries?destination=billing&sort=asc",
        "/events/not-a-uuid",
    ] {
        let (status, body) = admin.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: JSON error body");
    }
    let (status, _) = admin.get("/events/01a22724-5395-764a-9c9f-7073156db4b5").await;
    assert_eq!(status, 404);

    // Detail: payload as text, headers, deliveries with their attempts.
    let id = first["id"].as_str().unwrap();
    let (status, event) = admin.get(&format!("/events/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(event["payload_encoding"], "utf-8");
    let payload: Value = serde_json::from_str(event["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["id"], "evt_list_6");
    let deliveries = event["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    for delivery in deliveries {
        assert_eq!(delivery["status"], "delivered");
        let history = delivery["attempt_history"].as_array().unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0]["status_code"], 200);
    }

    // Delivery list with filters and its own paging.
    let (status, list) = admin
        .get("/deliveries?destination=billing&status=delivered&limit=2")
        .await;
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items
        .iter()
        .all(|d| d["destination"] == "billing" && d["event_type"] == "invoice.paid"));
    assert!(items[0]["provider_event_id"].is_string());
    let (_, rest) = admin
        .get(&format!(
            "/deliveries?destination=billing&limit=10&before={}",
            list["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);

    let (_, stats) = admin.get("/stats").await;
    assert_eq!(stats["deliveries"]["delivered"], 11);
    assert_eq!(stats["deliveries"]["dead"], 0);
    assert_eq!(stats["destinations"]["billing"]["delivered"], 4);
    assert!(stats["oldest_event_received_at"].is_string());
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_payloads_are_shown_as_base64() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.ops.admin_token = Some(Secret::new(TOKEN));
    let relayd = Relayd::ingest(config).await;
    let ids = db.seed_deliveries(1, "billing", "dead", "-1 second", None).await;
    db.update_event_of(ids[0], "payload = '\\xff00fe'::bytea").await;
    let admin = Admin::new(&relayd);
    let (_, page) = admin.get("/events").await;
    let id = page["items"][0]["id"].as_str().unwrap().to_string();
    let (_, event) = admin.get(&format!("/events/{id}")).await;
    assert_eq!(event["payload_encoding"], "base64");
    assert_eq!(event["payload"], "/wD+");
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_a_dead_delivery_redelivers_it_with_the_same_webhook_id() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["flaky"]);
    // Fails the first 2 tries of each webhook: with 1 retry the delivery dies, and the
    // replayed attempt succeeds.
    let sink = Sink::start(Behaviour::FailFirst { n: 2, status: 503 }).await;
    let relayd = Relayd::start(config(&db, &broker, vec![to_sink("flaky", &sink)]), ALL).await;
    let client = reqwest::Client::new();
    post_stripe(
        &client,
        &relayd.url("/webhooks/stripe"),
        &stripe_event("evt_replay", "invoice.paid"),
    )
    .await;
    sink.wait_for(2, Duration::from_secs(15)).await;
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        1,
        Duration::from_secs(10),
    )
    .await;
    let admin = Admin::new(&relayd);
    let (_, dead) = admin.get("/deliveries?status=dead").await;
    let delivery_id = dead["items"][0]["id"].as_str().unwrap().to_string();

    let (status, replayed) = admin
        .post(&format!("/deliveries/{delivery_id}/replay"), None)
        .await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["status"], "pending");
    assert_eq!(replayed["attempts"], 0, "a fresh attempt budget");
    let received = sink.wait_for(3, Duration::from_secs(15)).await;
    let webhook_ids: HashSet<String> = received.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(webhook_ids.len(), 1, "the replay carries the same webhook-id");
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM delivery_attempts WHERE delivery_id = '{delivery_id}'"
        ))
        .await,
        3,
        "the history is kept"
    );

    let (status, _) = admin
        .post("/deliveries/01a22724-5395-764a-9c9f-7073156db4b5/replay", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin.post("/deliveries/nope/replay", None).await;
    assert_eq!(status, 400);
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_replay_counts_refuses_an_empty_filter_and_in_flight_rows() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.ops.admin_token = Some(Secret::new(TOKEN));
    let relayd = Relayd::ingest(config).await;
    db.seed_deliveries(3, "billing", "dead", "-1 second", None).await;
    db.seed_deliveries(2, "audit", "dead", "-1 second", None).await;
    let in_flight = db.seed_deliveries(2, "billing", "queued", "1 hour", None).await;
    let admin = Admin::new(&relayd);

    let (status, body) = admin.post("/replay", Some(serde_json::json!({}))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, _) = admin
        .post("/replay", Some(serde_json::json!({"status": "queued"})))
        .await;
    assert_eq!(status, 400, "in-flight states cannot be replayed");
    let (status, _) = admin
        .post("/replay", Some(serde_json::json!({"destinaton": "billing"})))
        .await;
    assert_eq!(status, 400, "unknown filter");
    let (status, _) = admin
        .post(
            "/replay",
            Some(serde_json::json!({"all": true, "status": "dead"})),
        )
        .await;
    assert_eq!(status, 400);

    let (status, body) = admin
        .post(
            "/replay",
            Some(serde_json::json!({"status": "dead", "destination": "billing"})),
        )
        .await;
    assert_eq!((status, body["replayed"].as_i64()), (200, Some(3)));
    db.assert_count("SELECT count(*) FROM deliveries WHERE status = 'pending'", 3, "")
        .await;
    let (status, body) = admin
        .post(&format!("/deliveries/{}/replay", in_flight[0]), None)
        .await;
    assert_eq!(status, 409, "{body}");

    let since = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, body) = admin
        .post(
            "/replay",
            Some(serde_json::json!({"source": "stripe", "since": since})),
        )
        .await;
    assert_eq!(body["replayed"], 0, "no event received after `since`");
    let (_, body) = admin
        .post("/replay", Some(serde_json::json!({"all": true})))
        .await;
    assert_eq!(body["replayed"], 2, "the remaining dead ones");
    db.assert_count("SELECT count(*) FROM deliveries WHERE status = 'queued'", 2, "")
        .await;
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn relayd_replay_on_the_command_line_does_the_same() {
    let db = TestDb::migrated().await;
    db.seed_deliveries(4, "billing", "dead", "-1 second", None).await;
    db.seed_deliveries(1, "audit", "dead", "-1 second", None).await;
    let config = support::temp_file(&format!("[database]\nurl = \"{}\"\n", db.url));
    let run = |args: &[&str]| {
        std::process::Command::new(support::relayd_binary())
            .arg("replay")
            .args(args)
            .arg("--config")
            .arg(&config.0)
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--all"));
    let refused = run(&["--status", "dead", "--max-rate", "0"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--max-rate"));
    let dry = run(&["--status", "dead", "--destination", "billing", "--dry-run"]);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout).trim(),
        "4 deliveries match; nothing was replayed (dry run)"
    );
    db.assert_count("SELECT count(*) FROM deliveries WHERE status = 'dead'", 5, "")
        .await;
    let output = run(&["--status", "dead", "--destination", "billing"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "replayed 4 deliveries"
    );
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(progress.contains("4 matching deliveries"), "{progress}");
    assert!(progress.contains("replayed 4 of 4 (100 %)"), "{progress}");
    db.assert_count(
        "SELECT count(*) FROM replay_jobs WHERE status = 'done' AND replayed = 4",
        1,
        "",
    )
    .await;
    db.assert_count("SELECT count(*) FROM deliveries WHERE status = 'pending'", 4, "")
        .await;
    db.assert_count("SELECT count(*) FROM deliveries WHERE status = 'dead'", 1, "")
        .await;
}

/// Regression: `/readyz` answered 200 for a relay or worker process whose broker threads
/// had not registered yet (the check only looked at registered connections), so a
/// readiness-gated client could publish before the worker's queues existed.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_waits_for_the_broker_threads_of_relay_and_worker_roles() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["billing"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    for roles in [&[Role::Relay][..], &[Role::Worker][..]] {
        let config = config(&db, &broker, vec![to_sink("billing", &sink)]);
        let ctx = relayd::context::AppContext::new(config, roles.iter().copied().collect()).unwrap();
        // Only the ops listener runs: the role's broker threads never start.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let ops = tokio::spawn(relayd::ops::run(ctx, listener, shutdown.clone()));
        let response = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
        assert_eq!(response.status(), 503, "{roles:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["checks"]["database"], "ok");
        assert_eq!(body["checks"]["broker"], "not connected yet", "{roles:?}");
        shutdown.cancel();
        ops.await.unwrap().unwrap();
    }
}
