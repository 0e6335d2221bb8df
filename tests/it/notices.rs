//! Operator notices (`[[operator_hooks]]`): the real binary tells a hook, signed as
//! Standard Webhooks and through the durable path, when a destination's circuit opens,
//! when a delivery goes dead and when the circuit closes again; the watcher stores the
//! outbox stalling and recovering, and each dead delivery, once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relayd::config::{OperatorHookConfig, Secret};

use crate::support::child::{config_file, Process};
use crate::support::sink::{Answer, Behaviour, Received, Sink};
use crate::support::{self, post_stripe, stripe_event, TestBroker, TestDb};

const HOOK_SECRET: &str = "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

fn notice_type(request: &Received) -> String {
    let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
    json["type"].as_str().unwrap_or_default().to_string()
}

async fn wait_for_notice(hook: &Sink, notice: &str) -> Received {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = hook.received().into_iter().find(|r| notice_type(r) == notice) {
            return found;
        }
        let seen: Vec<String> = hook.received().iter().map(notice_type).collect();
        assert!(
            Instant::now() < deadline,
            "no {notice} notice; the hook saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_hook_is_told_of_a_circuit_opening_a_dead_delivery_and_the_circuit_closing() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink", "pager"]);
    let healthy = Arc::new(AtomicBool::new(false));
    let billing = Sink::start(Behaviour::planned({
        let healthy = healthy.clone();
        move |_, _| {
            if healthy.load(Ordering::SeqCst) {
                Answer::ok()
            } else {
                Answer::Whole {
                    status: 503,
                    body: b"down".to_vec(),
                }
            }
        }
    }))
    .await;
    let pager = Sink::start(Behaviour::Succeed).await;
    let base = std::fs::read_to_string(&config_file(&db, &broker, &billing).0).unwrap();
    let config = support::temp_file(&format!(
        "{base}\n[operator]\ninterval = \"200ms\"\n\n[[operator_hooks]]\nname = \"pager\"\nurl = \"{}\"\nsigning_secret = \"{HOOK_SECRET}\"\n",
        pager.url
    ));
    let relayd = Process::start(&config, "all");
    relayd.wait_ready().await;
    let ingest = format!("http://{}/webhooks/stripe", relayd.ingest.clone().unwrap());
    let client = reqwest::Client::new();
    post_stripe(&client, &ingest, &stripe_event("evt_fails", "invoice.paid")).await;

    let opened = wait_for_notice(&pager, "destination.circuit_opened").await;
    let body: serde_json::Value = serde_json::from_slice(&opened.body).unwrap();
    assert_eq!(body["data"]["destination"], "sink", "{body}");
    assert_eq!(body["data"]["state"], "open", "{body}");
    let dead = wait_for_notice(&pager, "delivery.dead").await;
    let body: serde_json::Value = serde_json::from_slice(&dead.body).unwrap();
    assert_eq!(body["data"]["event"]["event_id"], "evt_fails", "{body}");
    assert_eq!(body["data"]["last_status_code"], 503, "{body}");
    assert_eq!(body["data"]["destination"], "sink");

    // The destination answers again: the next event is the probe, and closes it.
    healthy.store(true, Ordering::SeqCst);
    post_stripe(&client, &ingest, &stripe_event("evt_heals", "invoice.paid")).await;
    let closed = wait_for_notice(&pager, "destination.circuit_closed").await;
    let body: serde_json::Value = serde_json::from_slice(&closed.body).unwrap();
    assert_eq!(body["data"]["state"], "closed", "{body}");

    // Each is signed with the hook's secret, as Standard Webhooks, and told once.
    for request in pager.received() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in &request.headers {
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        standardwebhooks::Webhook::new(HOOK_SECRET)
            .unwrap()
            .verify(&request.body, &headers)
            .expect("signed with the hook's secret");
        assert_eq!(request.header("x-relayd-source"), Some("relayd"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut types: Vec<String> = pager.received().iter().map(notice_type).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "delivery.dead",
            "destination.circuit_closed",
            "destination.circuit_opened"
        ],
        "each change once; provider events never reach the hook"
    );
    assert!(relayd.terminate().success());
}

async fn exec(conn: &mut diesel_async::AsyncPgConnection, sql: &str) {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(sql)
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn the_watcher_stores_a_stall_its_recovery_and_each_dead_delivery_once() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.operator_hooks = vec![OperatorHookConfig {
        name: "pager".into(),
        url: Secret::new("http://127.0.0.1:9/notices"),
        signing_secret: Secret::new(HOOK_SECRET),
        events: vec!["outbox.*".into(), "delivery.*".into()],
        timeout: Duration::from_secs(5),
    }];
    config.validate().unwrap();
    let mut conn = db.connect().await;
    let pass = async |conn: &mut diesel_async::AsyncPgConnection| {
        relayd::notices::watch_once(conn, &config).await.unwrap()
    };
    let notices = |notice: &str| {
        format!("SELECT count(*) FROM events e JOIN deliveries d ON d.event_id = e.id WHERE e.source = 'relayd' AND e.event_type = '{notice}' AND d.destination = 'pager' AND d.status = 'pending'")
    };

    // The first pass only learns where things stand.
    assert_eq!(pass(&mut conn).await, 0);
    // Due for 20 minutes: stalled (stall_after 10 m), once.
    let stuck = db
        .seed_deliveries(3, "billing", "pending", "-20 minutes", None)
        .await;
    assert_eq!(pass(&mut conn).await, 1);
    assert_eq!(pass(&mut conn).await, 0);
    assert_eq!(db.count(&notices("outbox.stalled")).await, 1);
    exec(
        &mut conn,
        &format!(
            "UPDATE deliveries SET status = 'delivered' WHERE id IN ('{}')",
            stuck
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("','")
        ),
    )
    .await;
    assert_eq!(pass(&mut conn).await, 1);
    assert_eq!(db.count(&notices("outbox.recovered")).await, 1);

    // Dead deliveries (settled), each told once; the hook's own are not.
    exec(
        &mut conn,
        "UPDATE operator_watch SET seen_at = now() - interval '1 hour' WHERE key = 'delivery.dead'",
    )
    .await;
    db.seed_deliveries(4, "billing", "dead", "0 seconds", None).await;
    db.seed_deliveries(1, "pager", "dead", "0 seconds", None).await;
    exec(
        &mut conn,
        "UPDATE deliveries SET updated_at = now() - interval '30 seconds' WHERE status = 'dead'",
    )
    .await;
    assert_eq!(pass(&mut conn).await, 4);
    assert_eq!(pass(&mut conn).await, 0);
    assert_eq!(db.count(&notices("delivery.dead")).await, 4);
    // A delivery dead again (replayed, failed again) is news again.
    exec(&mut conn, "UPDATE deliveries SET updated_at = now() - interval '15 seconds' WHERE id = (SELECT id FROM deliveries WHERE destination = 'billing' AND status = 'dead' LIMIT 1)").await;
    assert_eq!(pass(&mut conn).await, 1);
    // The notices were filtered by the hook's `events`: no destination notices here.
    db.assert_count(
        "SELECT count(*) FROM events WHERE source = 'relayd' AND event_type LIKE 'destination.%'",
        0,
        "",
    )
    .await;
}
