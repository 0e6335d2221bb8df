//! Per-key ordered delivery (`ordering = { key = "/data/object/customer" }`) under
//! faults: ingest, two relays and two workers as separate processes, 20 keys each posting
//! an event every 100 ms (the next only once the last was accepted, so each key's order
//! is defined), 10 % of tries answered 500; then a fault. Every accepted event arrives,
//! no request arrives while another of its key is in flight, and no key's event
//! arrives after a later one of that key.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::services::{self, blocking, Services};
use crate::support::child::{config_file, free_address, Process};
use crate::support::sink::{Answer, Behaviour, Sink};
use crate::support::{self, TestBroker, TestDb};

/// The processes of [`ordered_under_fault`], in this order.
const LAYOUT: [&str; 5] = ["ingest", "relay", "relay", "worker", "worker"];

/// Runs the keyed load through [`LAYOUT`], applies `fault` 3 s in, keeps the load going
/// 3 s after it, then checks every key's order at the sink.
async fn ordered_under_fault(name: &str, fault: impl AsyncFnOnce(&mut Vec<Process>)) {
    let db = TestDb::create().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::planned(|received, try_number| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (received.event_id(), try_number).hash(&mut hasher);
        if hasher.finish() % 10 == 0 {
            Answer::Whole {
                status: 500,
                body: b"flaky".to_vec(),
            }
        } else {
            Answer::ok()
        }
    }))
    .await;
    let config = {
        let file = config_file(&db, &broker, &sink);
        let text = std::fs::read_to_string(&file.0).unwrap();
        support::temp_file(&format!(
            "{text}ordering = {{ key = \"/data/object/customer\" }}\n"
        ))
    };
    let ingest = free_address();
    let mut processes: Vec<Process> = LAYOUT
        .iter()
        .map(|roles| {
            let ops = free_address();
            let env = [
                ("RELAYD__INGEST__LISTEN", ingest.as_str()),
                ("RELAYD__OPS__LISTEN", &ops),
            ];
            Process::start_with(&config, roles, &env)
        })
        .collect();
    for process in &processes {
        process.wait_ready().await;
    }

    let stop = CancellationToken::new();
    let keys = keyed_load(&format!("http://{ingest}/webhooks/stripe"), 20, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    fault(&mut processes).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let expected: HashMap<String, Vec<String>> = keys.join_all().await.into_iter().collect();
    let events: usize = expected.values().map(Vec::len).sum();
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status <> 'delivered'",
        0,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(db.count("SELECT count(*) FROM deliveries").await, events as i64);
    sink.assert_in_order(&expected);
    let failed = sink.answered().iter().filter(|a| a.status == 500).count();
    println!(
        "ordered, {name}: {events} events over {} keys, {} requests ({failed} answered 500), in order",
        expected.len(),
        sink.received().len()
    );
    for process in processes {
        let roles = process.roles.clone();
        assert_eq!(process.terminate().code(), Some(0), "--role {roles} exits 0");
    }
    sink.stop().await;
}

/// `keys` tasks, each posting its key's events one after another every 100 ms, each
/// retried until accepted (ingest may answer 503 or be gone for a while). Each returns
/// its key and the event ids accepted, in order.
fn keyed_load(
    url: &str,
    keys: usize,
    stop: CancellationToken,
) -> tokio::task::JoinSet<(String, Vec<String>)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..keys {
        let (client, url, stop) = (client.clone(), url.to_string(), stop.clone());
        tasks.spawn(async move {
            let key = format!("cus_fault_{k}");
            let mut accepted = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.is_cancelled() {
                tick.tick().await;
                let id = format!("evt_fault_{k}_{}", accepted.len());
                let body = support::keyed_event(&id, Some(&key));
                loop {
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header(
                            "stripe-signature",
                            support::stripe_signature(support::STRIPE_SECRET, support::now(), &body),
                        )
                        .body(body.clone())
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status() == 200) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                accepted.push(id);
            }
            (key, accepted)
        });
    }
    tasks
}

/// SIGKILL, half a second without the process, then the same roles again.
async fn sigkill(process: &mut Process) {
    process.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    process.restart();
    process.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ordered_keys_keep_their_order_through_sigkill_of_a_worker_and_of_a_relay() {
    let _services = Services::exclusive().await;
    ordered_under_fault("a worker then a relay SIGKILLed", async |processes| {
        sigkill(&mut processes[3]).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        sigkill(&mut processes[1]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ordered_keys_keep_their_order_through_a_postgres_restart_and_a_rabbitmq_kill() {
    let _services = Services::exclusive().await;
    ordered_under_fault(
        "PostgreSQL restarted (-m fast), then RabbitMQ killed and started",
        async |_| {
            blocking(services::postgres_restart).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            blocking(services::rabbitmq_kill).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            blocking(services::rabbitmq_start).await;
        },
    )
    .await;
}
