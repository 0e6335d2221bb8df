//! The real `relayd` binary as child processes: nothing accepted is lost when any
//! process is SIGKILLed mid-stream, and SIGTERM stops cleanly.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::sink::{Behaviour, Sink};
use crate::support::{self, stripe_event, stripe_signature, TempFile, TestBroker, TestDb, STRIPE_SECRET};

/// Configuration for child processes: fast retries, short leases, JSON logs.
fn config_file(db: &TestDb, broker: &TestBroker, sink: &Sink) -> TempFile {
    support::temp_file(&format!(
        r#"
[database]
url = "{db}"
[broker]
url = "{broker_url}"
prefix = "{prefix}"
[ingest]
listen = "127.0.0.1:0"
[ops]
listen = "127.0.0.1:0"
[relay]
poll_interval = "200ms"
[worker]
lease_margin = "1s"
[worker.retry]
schedule = ["200ms", "500ms", "1s", "2s", "2s", "2s"]
[log]
format = "json"
level = "warn,relayd::cmd=info"
[shutdown]
grace_period = "5s"
[[sources]]
name = "stripe"
kind = "stripe"
secrets = ["{secret}"]
[[destinations]]
name = "sink"
url = "{sink}"
signing_secret = "{signing}"
timeout = "2s"
"#,
        db = db.url,
        broker_url = support::BROKER_URL,
        prefix = broker.prefix,
        secret = STRIPE_SECRET,
        sink = sink.url,
        signing = support::DESTINATION_SECRET,
    ))
}

/// One relayd child process.
struct Process {
    child: Child,
    roles: String,
    /// The ingest address, when the process runs ingest.
    ingest: Option<String>,
}

impl Process {
    fn start(config: &TempFile, roles: &str) -> Self {
        let mut child = Command::new(support::relayd_binary())
            .args(["--role", roles, "--config"])
            .arg(&config.0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start relayd");
        let stderr = child.stderr.take().unwrap();
        // From here on, Drop kills the child if starting fails.
        let mut process = Self {
            child,
            roles: roles.into(),
            ingest: None,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("relayd --role {roles} did not start"));
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if json["message"] == "relayd started" {
                process.ingest = json["ingest"].as_str().filter(|a| *a != "-").map(String::from);
                // Keep draining stderr so the child never blocks on a full pipe.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return process;
            }
        }
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "relayd --role {} ignored SIGTERM",
                self.roles
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

async fn wait_progress(progress: &Mutex<usize>, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while *progress.lock().unwrap() < at_least {
        assert!(Instant::now() < deadline, "sending stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
async fn nothing_accepted_is_lost_when_an_all_roles_process_is_sigkilled_mid_stream() {
    let db = TestDb::create().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let config = config_file(&db, &broker, &sink);
    let mut process = Process::start(&config, "all");
    let ingest = Arc::new(RwLock::new(process.ingest.clone().unwrap()));
    let progress = Arc::new(Mutex::new(0));
    let sending = tokio::spawn(send_events(ingest.clone(), 300, progress.clone()));

    wait_progress(&progress, 100).await;
    process.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let process = Process::start(&config, "all");
    *ingest.write().unwrap() = process.ingest.clone().unwrap();

    let accepted = sending.await.unwrap();
    assert_eq!(accepted.len(), 300);
    sink.wait_for_events(&accepted, Duration::from_secs(60)).await;
    assert_delivered_once_or_as_duplicates(&sink, &accepted);
    assert_eq!(process.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_accepted_is_lost_when_each_role_split_process_is_sigkilled_in_turn() {
    let db = TestDb::create().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let config = config_file(&db, &broker, &sink);
    let mut ingest_process = Process::start(&config, "ingest");
    let mut relay_process = Process::start(&config, "relay");
    let mut worker_process = Process::start(&config, "worker");
    let ingest = Arc::new(RwLock::new(ingest_process.ingest.clone().unwrap()));
    let progress = Arc::new(Mutex::new(0));
    let sending = tokio::spawn(send_events(ingest.clone(), 300, progress.clone()));

    wait_progress(&progress, 60).await;
    worker_process.kill9();
    worker_process = Process::start(&config, "worker");
    wait_progress(&progress, 140).await;
    relay_process.kill9();
    relay_process = Process::start(&config, "relay");
    wait_progress(&progress, 220).await;
    ingest_process.kill9();
    ingest_process = Process::start(&config, "ingest");
    *ingest.write().unwrap() = ingest_process.ingest.clone().unwrap();

    let accepted = sending.await.unwrap();
    assert_eq!(accepted.len(), 300);
    sink.wait_for_events(&accepted, Duration::from_secs(60)).await;
    assert_delivered_once_or_as_duplicates(&sink, &accepted);
    for process in [ingest_process, relay_process, worker_process] {
        assert_eq!(process.terminate().code(), Some(0));
    }
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
