//! Per-key ordered delivery against the real services, with a receiver that records
//! each key's arrival order and reports any request that arrived while another of its
//! key was in flight: order and one-at-a-time per key under random 5xx and timeouts
//! (unrelated keys still in parallel), with two worker replicas; an event without the
//! key delivered unordered and counted; `on_dead` both ways; skip through the admin API
//! and `relayd skip`; a replayed blocked head going first.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relayd::config::{Config, DestinationConfig, OnDead, OrderingConfig};
use relayd::context::Role;
use serde_json::Value;

use crate::ops::{self, Admin};
use crate::support::sink::{Answer, Behaviour, Received, Sink};
use crate::support::{self, keyed_event, post_stripe, Relayd, TestBroker, TestDb};

const ALL: &[Role] = &[Role::Ingest, Role::Relay, Role::Worker];

fn ordered(name: &str, sink: &Sink, on_dead: OnDead) -> DestinationConfig {
    DestinationConfig {
        ordering: Some(OrderingConfig {
            key: Some("/data/object/customer".into()),
            key_header: None,
            on_dead,
        }),
        max_in_flight: 32,
        ..ops::to_sink(name, sink)
    }
}

fn config(db: &TestDb, broker: &TestBroker, destination: DestinationConfig, retries: &[u64]) -> Config {
    let mut config = ops::config(db, broker, vec![destination]);
    config.worker.retry.schedule = retries
        .iter()
        .map(|ms| Duration::from_millis(*ms).into())
        .collect();
    config
}

/// Posts `per_key` events for each of `keys` keys: one key's events one after another
/// (each accepted before the next is sent, so that their order is defined), the keys
/// at once. Returns each key's event ids in order.
pub async fn post_keyed(
    url: &str,
    prefix: &str,
    keys: usize,
    per_key: usize,
) -> HashMap<String, Vec<String>> {
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..keys {
        let (client, url, prefix) = (client.clone(), url.to_string(), prefix.to_string());
        tasks.spawn(async move {
            let key = format!("cus_{prefix}_{k}");
            let mut ids = Vec::new();
            for i in 0..per_key {
                let id = format!("evt_{prefix}_{k}_{i}");
                let response = post_stripe(&client, &url, &keyed_event(&id, Some(&key))).await;
                assert_eq!(response.status(), 200, "{id}");
                ids.push(id);
            }
            (key, ids)
        });
    }
    tasks.join_all().await.into_iter().collect()
}

/// A cheap, repeatable coin per request and try.
fn roll(received: &Received, try_number: usize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (received.event_id(), try_number).hash(&mut hasher);
    hasher.finish() % 100
}

/// 500 for 20 % of tries, a hang past the 300 ms timeout for 10 %, else 200 after a
/// moment: every event needs a few tries now and then.
fn unreliable() -> Behaviour {
    Behaviour::planned(|received, try_number| match roll(received, try_number) {
        0..20 => Answer::Whole {
            status: 500,
            body: b"flaky".to_vec(),
        },
        20..30 => Answer::After {
            delay: Duration::from_millis(450),
            answer: Box::new(Answer::ok()),
        },
        _ => Answer::After {
            delay: Duration::from_millis(3),
            answer: Box::new(Answer::ok()),
        },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_arrives_in_order_and_one_at_a_time_under_5xx_and_timeouts_across_two_workers() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["ordered"]);
    let sink = Sink::start(unreliable()).await;
    let destination = DestinationConfig {
        timeout: Duration::from_millis(300),
        ..ordered("ordered", &sink, OnDead::Skip)
    };
    // Retries after 200 ms and more (past a hang's end), enough that none dies.
    let config = config(
        &db,
        &broker,
        destination,
        &[200, 200, 300, 300, 500, 500, 500, 500, 500, 500],
    );
    let relayd = Relayd::start(config.clone(), &[Role::Ingest, Role::Relay, Role::Worker]).await;
    let second_worker = Relayd::start(config, &[Role::Worker]).await;
    relayd.wait_ready().await;
    second_worker.wait_ready().await;

    let expected = post_keyed(&relayd.url("/webhooks/stripe"), "o", 12, 8).await;
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        12 * 8,
        Duration::from_secs(90),
    )
    .await;
    sink.assert_in_order(&expected);
    let failed = sink.answered().iter().filter(|a| a.status >= 500).count();
    assert!(
        failed > 5,
        "the receiver failed only {failed} requests: the test tested little"
    );
    assert!(
        sink.take_peak_active() > 1,
        "unrelated keys must be delivered in parallel"
    );
    db.assert_count(
        "SELECT count(*) FROM ordering_keys WHERE head IS NOT NULL",
        0,
        "every key is idle once its deliveries ended",
    )
    .await;
    second_worker.stop().await.unwrap();
    relayd.stop().await.unwrap();
}

/// One relayd with every role and one ordered destination, "ordered", to a sink that
/// answers as `behaviour` says, retrying once after 100 ms.
struct Running {
    db: TestDb,
    broker: TestBroker,
    sink: Sink,
    relayd: Relayd,
    admin: Admin,
    client: reqwest::Client,
    url: String,
}

impl Running {
    async fn start(behaviour: Behaviour, on_dead: OnDead) -> Self {
        let db = TestDb::migrated().await;
        let broker = TestBroker::new(&["ordered"]);
        let sink = Sink::start(behaviour).await;
        let relayd = Relayd::start(
            config(&db, &broker, ordered("ordered", &sink, on_dead), &[100]),
            ALL,
        )
        .await;
        relayd.wait_ready().await;
        let admin = Admin::new(&relayd);
        let url = relayd.url("/webhooks/stripe");
        Self {
            db,
            broker,
            sink,
            relayd,
            admin,
            client: reqwest::Client::new(),
            url,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_without_the_key_is_delivered_unordered_and_counted() {
    let Running {
        db,
        broker: _broker,
        sink,
        relayd,
        admin: _admin,
        client,
        url,
    } = Running::start(Behaviour::Succeed, OnDead::Skip).await;
    post_stripe(&client, &url, &keyed_event("evt_nokey", None)).await;
    post_stripe(&client, &url, &keyed_event("evt_key", Some("cus_1"))).await;
    sink.wait_for(2, Duration::from_secs(15)).await;
    db.assert_count(
        "SELECT count(*) FROM deliveries WHERE ordering_key IS NULL AND ordering_seq IS NULL",
        1,
        "",
    )
    .await;
    db.assert_count(
        "SELECT count(*) FROM deliveries WHERE ordering_key = 'cus_1' AND ordering_seq = 1",
        1,
        "",
    )
    .await;
    assert_eq!(
        crate::worker::metric_now(&relayd, r#"relayd_ordering_unkeyed_total{destination="ordered"}"#).await,
        Some(1.0)
    );
    relayd.stop().await.unwrap();
}

/// A sink that fails every try of the events in `failing` (by event id), unless
/// `healed` is set, and answers 200 otherwise.
fn failing(failing: &'static [&'static str], healed: Arc<AtomicUsize>) -> Behaviour {
    Behaviour::planned(move |received, _| {
        if failing.contains(&received.event_id().as_str()) && healed.load(Ordering::SeqCst) == 0 {
            Answer::Whole {
                status: 500,
                body: b"no".to_vec(),
            }
        } else {
            Answer::ok()
        }
    })
}

async fn delivery_of(admin: &Admin, event_id: &str) -> Value {
    let (status, page) = admin.get("/deliveries?limit=100").await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["provider_event_id"] == event_id)
        .cloned()
        .unwrap_or_else(|| panic!("no delivery of {event_id} in {page}"))
}

async fn wait_status(admin: &Admin, event_id: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let delivery = delivery_of(admin, event_id).await;
        if delivery["status"] == status {
            return delivery;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{event_id} is {}, not {status}",
            delivery["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_delivery_lets_its_key_move_on_by_default() {
    let Running {
        db: _db,
        broker: _broker,
        sink,
        relayd,
        admin,
        client,
        url,
    } = Running::start(failing(&["evt_d1"], Arc::default()), OnDead::Skip).await;
    for id in ["evt_d1", "evt_d2", "evt_d3"] {
        post_stripe(&client, &url, &keyed_event(id, Some("cus_dead"))).await;
    }
    wait_status(&admin, "evt_d3", "delivered").await;
    assert_eq!(delivery_of(&admin, "evt_d1").await["status"], "dead");
    let order: Vec<String> = sink.received().iter().map(Received::event_id).collect();
    assert_eq!(order, ["evt_d1", "evt_d1", "evt_d2", "evt_d3"]);
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn on_dead_block_holds_the_key_until_an_operator_skips_or_replays_the_dead_one() {
    let healed = Arc::new(AtomicUsize::new(0));
    let Running {
        db: _db,
        broker,
        sink,
        relayd,
        admin,
        client,
        url,
    } = Running::start(failing(&["evt_b1"], healed.clone()), OnDead::Block).await;
    for id in ["evt_b1", "evt_b2"] {
        post_stripe(&client, &url, &keyed_event(id, Some("cus_a"))).await;
    }
    for id in ["evt_c1", "evt_c2"] {
        post_stripe(&client, &url, &keyed_event(id, Some("cus_b"))).await;
    }
    let dead = wait_status(&admin, "evt_b1", "dead").await;
    // Another key is not held; this one is, and says so.
    wait_status(&admin, "evt_c2", "delivered").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(delivery_of(&admin, "evt_b2").await["status"], "waiting");
    assert!(!sink.received().iter().any(|r| r.event_id() == "evt_b2"));

    // A message for the waiting delivery (a republish, a redelivery) is refused by the
    // claim: the key's order lives in PostgreSQL, not in the queue.
    let waiting = delivery_of(&admin, "evt_b2").await;
    let mut headers = amiquip::FieldTable::new();
    let text = |s: &str| amiquip::AmqpValue::LongString(s.to_string());
    headers.insert(
        "x-relayd-event".into(),
        text(waiting["event_id"].as_str().unwrap()),
    );
    headers.insert("x-relayd-source".into(), text("stripe"));
    headers.insert("x-relayd-event-type".into(), text("invoice.updated"));
    let properties = amiquip::AmqpProperties::default()
        .with_message_id(waiting["id"].as_str().unwrap().to_string())
        .with_content_type("application/json".into())
        .with_headers(headers);
    broker.publish_raw("ordered", &keyed_event("evt_b2", Some("cus_a")), properties);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !sink.received().iter().any(|r| r.event_id() == "evt_b2"),
        "a stale message overtook the dead head"
    );
    assert_eq!(delivery_of(&admin, "evt_b2").await["status"], "waiting");

    // Replaying the dead head sends it first, in its place, then the key goes on.
    healed.store(1, Ordering::SeqCst);
    let (status, body) = admin
        .post(
            &format!("/deliveries/{}/replay", dead["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    wait_status(&admin, "evt_b2", "delivered").await;
    let order: Vec<String> = sink
        .received()
        .iter()
        .filter(|r| r.ordering_key().as_deref() == Some("cus_a"))
        .map(Received::event_id)
        .collect();
    assert_eq!(order, ["evt_b1", "evt_b1", "evt_b1", "evt_b2"]);

    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn skipping_a_blocking_dead_delivery_through_the_api_or_the_cli_moves_its_key_on() {
    let Running {
        db,
        broker,
        sink,
        relayd,
        admin,
        client,
        url,
    } = Running::start(
        failing(&["evt_s1", "evt_s3", "evt_s5"], Arc::default()),
        OnDead::Block,
    )
    .await;
    for id in ["evt_s1", "evt_s2"] {
        post_stripe(&client, &url, &keyed_event(id, Some("cus_s"))).await;
    }
    let dead = wait_status(&admin, "evt_s1", "dead").await;
    assert_eq!(delivery_of(&admin, "evt_s2").await["status"], "waiting");
    let (status, body) = admin
        .post(
            &format!("/deliveries/{}/skip", dead["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "skipped");
    let delivered = wait_status(&admin, "evt_s2", "delivered").await;

    // An ended delivery cannot be skipped; an unknown one is 404.
    let (status, body) = admin
        .post(
            &format!("/deliveries/{}/skip", delivered["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap_or_default().contains("delivered"),
        "{body}"
    );
    let (status, _) = admin
        .post(&format!("/deliveries/{}/skip", uuid::Uuid::now_v7()), None)
        .await;
    assert_eq!(status, 404);

    for id in ["evt_s3", "evt_s4"] {
        post_stripe(&client, &url, &keyed_event(id, Some("cus_s"))).await;
    }
    let dead = wait_status(&admin, "evt_s3", "dead").await;
    assert_eq!(delivery_of(&admin, "evt_s4").await["status"], "waiting");
    let file = crate::support::child::config_file(&db, &broker, &sink);
    let output = Command::new(support::relayd_binary())
        .arg("--config")
        .arg(&file.0)
        .args(["skip", dead["id"].as_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("its key moved on"), "{stdout}");
    wait_status(&admin, "evt_s4", "delivered").await;
    let order: Vec<String> = sink.received().iter().map(Received::event_id).collect();
    assert_eq!(
        order,
        ["evt_s1", "evt_s1", "evt_s2", "evt_s3", "evt_s3", "evt_s4"]
    );
    // The key's deliveries, newest first, with their place in its order.
    let (status, page) = admin.get("/deliveries?key=cus_s").await;
    assert_eq!(status, 200, "{page}");
    let items: Vec<(String, i64)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap().to_string(),
                d["ordering_seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            ("delivered".to_string(), 4),
            ("skipped".to_string(), 3),
            ("delivered".to_string(), 2),
            ("skipped".to_string(), 1)
        ]
    );

    // A replayed delivery that is no longer its key's turn goes to the end of the key:
    // behind the dead evt_s5 that blocks it, then delivered once that one is skipped.
    post_stripe(&client, &url, &keyed_event("evt_s5", Some("cus_s"))).await;
    let dead = wait_status(&admin, "evt_s5", "dead").await;
    let again = delivery_of(&admin, "evt_s2").await;
    let (status, body) = admin
        .post(
            &format!("/deliveries/{}/replay", again["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "waiting");
    assert_eq!(body["ordering_seq"], 6);
    let (status, _) = admin
        .post(
            &format!("/deliveries/{}/skip", dead["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200);
    sink.wait_for(9, Duration::from_secs(15)).await;
    let order: Vec<String> = sink.received().iter().skip(6).map(Received::event_id).collect();
    assert_eq!(order, ["evt_s5", "evt_s5", "evt_s2"]);
    relayd.stop().await.unwrap();
}
