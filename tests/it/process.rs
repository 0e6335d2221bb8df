//! The real `relayd` binary as child processes: SIGTERM stops cleanly, and role-split
//! replicas deliver each event once. (SIGKILL and SIGSTOP of each role under load are
//! fault tests: `tests/faults/process.rs`.)

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::child::{config_file, Process};
use crate::sink::{Behaviour, Sink};
use crate::support::{self, stripe_event, stripe_signature, TestBroker, TestDb, STRIPE_SECRET};

/// Sends `count` signed events like a provider does: each one is retried until it is
/// answered 200 (the ingest process may be down for a while). Returns the accepted
/// event ids; `progress` counts them as they come.
async fn send_events(
    ingest: Arc<RwLock<String>>,
    count: usize,
    progress: Arc<Mutex<usize>>,
) -> HashSet<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(Mutex::new(0usize));
    for _ in 0..8 {
        let (client, ingest, next, progress) =
            (client.clone(), ingest.clone(), next.clone(), progress.clone());
        tasks.spawn(async move {
            let mut accepted = Vec::new();
            loop {
                let i = {
                    let mut next = next.lock().unwrap();
                    *next += 1;
                    *next - 1
                };
                if i >= count {
                    return accepted;
                }
                let id = format!("evt_kill_{i}");
                let body = stripe_event(&id, "invoice.paid");
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let url = format!("http://{}/webhooks/stripe", ingest.read().unwrap());
                    let sent = client
                        .post(url)
                        .header(
                            "stripe-signature",
                            stripe_signature(STRIPE_SECRET, support::now(), &body),
                        )
                        .body(body.clone())
                        .send()
                        .await;
                    if matches!(&sent, Ok(r) if r.status() == 200) {
                        accepted.push(id);
                        *progress.lock().unwrap() += 1;
                        break;
                    }
                    assert!(Instant::now() < deadline, "{id} never accepted");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    let mut all = HashSet::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all
}

/// Every accepted event reached the sink; any duplicate carries the same webhook-id.
fn assert_delivered_once_or_as_duplicates(sink: &Sink, accepted: &HashSet<String>) {
    let mut webhook_ids: HashMap<String, HashSet<String>> = HashMap::new();
    let mut copies: HashMap<String, usize> = HashMap::new();
    for request in sink.received() {
        webhook_ids
            .entry(request.event_id())
            .or_default()
            .insert(request.webhook_id());
        *copies.entry(request.event_id()).or_default() += 1;
    }
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|id| !webhook_ids.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "accepted but never delivered: {missing:?}");
    for (event, ids) in &webhook_ids {
        assert_eq!(
            ids.len(),
            1,
            "{event}: duplicates must share one webhook-id: {ids:?}"
        );
    }
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    eprintln!(
        "{} events delivered, {duplicates} duplicate requests (same webhook-id)",
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_deliveries_exits_zero_and_leaves_nothing_delivering() {
    let db = TestDb::create().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Slow {
        delay: Duration::from_millis(300),
    })
    .await;
    let config = config_file(&db, &broker, &sink);
    let process = Process::start(&config, "all");
    let ingest = Arc::new(RwLock::new(process.ingest.clone().unwrap()));
    let accepted = send_events(ingest, 60, Arc::new(Mutex::new(0))).await;
    sink.wait_for(5, Duration::from_secs(20)).await;

    assert_eq!(process.terminate().code(), Some(0), "graceful stop exits 0");
    assert_eq!(
        db.count("SELECT count(*) FROM deliveries WHERE status = 'delivering'")
            .await,
        0,
        "in-flight deliveries finished and were recorded"
    );
    assert!(sink.received().len() < 60, "stopped mid-stream");

    let process = Process::start(&config, "all");
    sink.wait_for_events(&accepted, Duration::from_secs(60)).await;
    assert_delivered_once_or_as_duplicates(&sink, &accepted);
    assert_eq!(process.terminate().code(), Some(0));
}

/// The Kubernetes layout on one machine: one ingest, two relays and two workers on one
/// database and broker prefix. In normal operation every event reaches the sink once.
#[tokio::test(flavor = "multi_thread")]
async fn role_split_replicas_deliver_each_event_exactly_once_in_normal_operation() {
    let db = TestDb::create().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let config = config_file(&db, &broker, &sink);
    let ingest_process = Process::start(&config, "ingest");
    let replicas: Vec<Process> = ["relay", "relay", "worker", "worker"]
        .into_iter()
        .map(|role| Process::start(&config, role))
        .collect();
    let ingest = Arc::new(RwLock::new(ingest_process.ingest.clone().unwrap()));
    let accepted = send_events(ingest, 200, Arc::new(Mutex::new(0))).await;
    sink.wait_for_events(&accepted, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut copies: HashMap<String, usize> = HashMap::new();
    for request in sink.received() {
        *copies.entry(request.event_id()).or_default() += 1;
    }
    assert_eq!(copies.len(), 200);
    let duplicated: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "duplicates in normal operation: {duplicated:?}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM deliveries WHERE status = 'delivered' AND attempts = 1")
            .await,
        200
    );
    for process in replicas.into_iter().chain([ingest_process]) {
        assert_eq!(process.terminate().code(), Some(0));
    }
}
