//! What every fault test shares: a relayd under steady signed load, a probe of its
//! health endpoints, and the check at the receiving sink that every accepted event
//! arrived (duplicates only with the same `webhook-id`), with the time from the end of
//! the fault to the first delivery after it. Each test appends its row to the fault
//! report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relayd::config::Config;
use relayd::context::Role;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::sink::Behaviour;
use crate::support::sink::{Received, Sink};
use crate::support::{self, stripe_event, stripe_signature, Relayd, TestBroker, TestDb, STRIPE_SECRET};

/// Events per second that every fault test offers while the fault happens.
pub const RATE: u32 = 100;

/// A configuration delivering every event to `sink`: fast retries and short leases so
/// that a test sees recovery in seconds, heartbeats of 2 s so that a silent broker is
/// noticed within the test's fault window, and database work abandoned after 2 s (the
/// test config's pool wait is 2 s too) so that ingest's 503s come within 5 s.
pub fn config(db: &TestDb, broker: &TestBroker, sink: &Sink) -> Config {
    let mut config = support::config(&db.url);
    broker.configure(&mut config);
    config.database.query_timeout = Duration::from_secs(2);
    config.broker.heartbeat = Duration::from_secs(2);
    config.relay.poll_interval = Duration::from_millis(200);
    config.worker.lease_margin = Duration::from_secs(1);
    config.worker.retry.schedule = ["200ms", "500ms", "1s", "2s", "2s", "2s", "2s", "2s"]
        .iter()
        .map(|d| humantime::parse_duration(d).unwrap().into())
        .collect();
    let mut destination = support::destination("sink", &[], &[]);
    destination.url = relayd::config::Secret::new(sink.url.clone());
    destination.max_in_flight = 16;
    destination.timeout = Duration::from_secs(2);
    config.destinations = vec![destination];
    config
}

/// What a fault run saw, for a test's own checks afterwards.
pub struct Run {
    pub answers: Vec<Answer>,
    pub fault_start: Instant,
    pub fault_end: Instant,
    /// What the ops endpoints said, every 200 ms from before the fault to the end.
    pub readings: Vec<Reading>,
    /// The run's database (relayd has stopped; it is dropped with the run).
    pub db: TestDb,
}

/// Runs `fault` (which returns once the fault has ended) against a running `--role all`
/// relayd under [`RATE`] events/s, then checks every accepted event at the sink and the
/// health endpoints ([`assert_probes`]), and reports the row. `config_for` adjusts the
/// configuration (e.g. to go through a proxy); `dependency` is what `/readyz` must name
/// while the fault lasts.
pub async fn under_load(
    name: &str,
    config_for: impl FnOnce(&TestDb, &mut Config),
    dependency: Option<&str>,
    fault: impl AsyncFnOnce(&TestDb),
) -> Run {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let mut config = self::config(&db, &broker, &sink);
    config_for(&db, &mut config);
    let liveness_stall = config.ops.liveness_stall;
    let relayd = Relayd::start(config, &[Role::Ingest, Role::Relay, Role::Worker]).await;
    relayd.wait_ready().await;
    let probe = Probe::start(|path| relayd.ops_url(path));
    let load = Load::start(relayd.url("/webhooks/stripe"), name);
    load.wait_accepted(2 * RATE as usize, Duration::from_secs(20))
        .await;

    let fault_start = Instant::now();
    fault(&db).await;
    let fault_end = Instant::now();
    // The load goes on after the fault, as providers' traffic does.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answers = load.stop().await;
    let outcome = settle(&sink, &answers, fault_end, Duration::from_secs(60)).await;
    let readings = probe.stop().await;
    report(name, &outcome, &statuses(&answers));
    assert_probes(&readings, fault_start, fault_end, dependency, liveness_stall);
    relayd.stop().await.unwrap();
    sink.stop().await;
    Run {
        answers,
        fault_start,
        fault_end,
        readings,
        db,
    }
}

/// One request of the load and how it was answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub event_id: String,
    /// `None`: no answer (connection error or the client's timeout).
    pub status: Option<u16>,
    pub at: Instant,
    pub took: Duration,
}

/// Signed Stripe events posted at a steady rate (open loop: a slow answer does not slow
/// the sender), each with a new event id.
pub struct Load {
    stop: CancellationToken,
    task: JoinHandle<()>,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Load {
    pub fn start(url: String, name: &str) -> Self {
        let stop = CancellationToken::new();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let (stopped, recorded) = (stop.clone(), answers.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut requests = tokio::task::JoinSet::new();
            for n in 0.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.cancelled() => break,
                }
                while requests.try_join_next().is_some() {}
                let (client, url, recorded) = (client.clone(), url.clone(), recorded.clone());
                let event_id = format!("evt_{name}_{n}");
                requests.spawn(async move {
                    let body = stripe_event(&event_id, "invoice.paid");
                    let started = Instant::now();
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header(
                            "stripe-signature",
                            stripe_signature(STRIPE_SECRET, support::now(), &body),
                        )
                        .body(body)
                        .send()
                        .await;
                    let answer = Answer {
                        event_id,
                        status: sent.ok().map(|r| r.status().as_u16()),
                        at: Instant::now(),
                        took: started.elapsed(),
                    };
                    recorded.lock().unwrap().push(answer);
                });
            }
            while requests.join_next().await.is_some() {}
        });
        Self { stop, task, answers }
    }

    /// Every answer so far.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    /// Waits until at least `n` events were accepted since the load started.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while accepted(&self.answers()).len() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} events accepted in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops sending, waits for the answers in flight, and returns them all.
    pub async fn stop(self) -> Vec<Answer> {
        self.stop.cancel();
        self.task.await.unwrap();
        let answers = self.answers.lock().unwrap().clone();
        answers
    }
}

/// The event ids answered 200 (the provider is told they are safe).
pub fn accepted(answers: &[Answer]) -> HashSet<String> {
    answers
        .iter()
        .filter(|a| a.status == Some(200))
        .map(|a| a.event_id.clone())
        .collect()
}

/// How many answers had each status (`none` for no answer).
pub fn statuses(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        let key = answer.status.map_or("none".to_string(), |s| s.to_string());
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// One reading of the ops endpoints.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    pub healthz: Option<u16>,
    pub healthz_body: String,
    pub readyz: Option<u16>,
    pub readyz_body: String,
    /// The `/metrics` text (empty when it did not answer).
    pub metrics: String,
}

impl Reading {
    /// The value of the sample `series` (a metric name with its labels, as exposed,
    /// e.g. `relayd_outbox_due` or `relayd_deliveries_dead_total{destination="sink"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.split(' ').next()?.parse().ok()
        })
    }
}

/// Reads `/healthz`, `/readyz` and `/metrics` every 200 ms.
pub struct Probe {
    stop: CancellationToken,
    task: JoinHandle<Vec<Reading>>,
}

impl Probe {
    pub fn start(ops_url: impl Fn(&str) -> String) -> Self {
        let (healthz, readyz, metrics) = (ops_url("/healthz"), ops_url("/readyz"), ops_url("/metrics"));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap();
            let mut readings = Vec::new();
            while !stopped.is_cancelled() {
                let at = Instant::now();
                let (health, health_body) = match client.get(&healthz).send().await {
                    Ok(r) => (Some(r.status().as_u16()), r.text().await.unwrap_or_default()),
                    Err(_) => (None, String::new()),
                };
                let (ready, body) = match client.get(&readyz).send().await {
                    Ok(r) => (Some(r.status().as_u16()), r.text().await.unwrap_or_default()),
                    Err(_) => (None, String::new()),
                };
                let metrics = match client.get(&metrics).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                readings.push(Reading {
                    at,
                    healthz: health,
                    healthz_body: health_body,
                    readyz: ready,
                    readyz_body: body,
                    metrics,
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stopped.cancelled() => {}
                }
            }
            readings
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> Vec<Reading> {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// Asserts that `/readyz` said 503 naming `dependency` (when given: a fault shorter than
/// a probe's period may go unseen) at some point between `from` and `to`; that
/// `/healthz` stayed 200 throughout when the fault was shorter than `liveness_stall` (a
/// short outage must not get the process restarted) and said 503 naming `dependency`
/// when it was longer; and that both were 200 again at the end.
pub fn assert_probes(
    readings: &[Reading],
    from: Instant,
    to: Instant,
    dependency: Option<&str>,
    liveness_stall: Duration,
) {
    let during: Vec<&Reading> = readings.iter().filter(|r| r.at >= from && r.at <= to).collect();
    if let Some(dependency) = dependency {
        assert!(
            during
                .iter()
                .any(|r| r.readyz == Some(503) && r.readyz_body.contains(dependency)),
            "/readyz never said 503 naming {dependency} during the fault: {:?}",
            during
                .iter()
                .map(|r| (r.readyz, &r.readyz_body))
                .collect::<Vec<_>>()
        );
    }
    let unhealthy: Vec<&&Reading> = during.iter().filter(|r| r.healthz != Some(200)).collect();
    if to - from > liveness_stall + Duration::from_secs(1) {
        let dependency = dependency.expect("a long fault names its dependency");
        assert!(
            unhealthy
                .iter()
                .any(|r| r.healthz == Some(503) && r.healthz_body.contains(dependency)),
            "/healthz never failed naming {dependency} in a fault longer than ops.liveness_stall"
        );
    } else {
        assert!(
            unhealthy.is_empty(),
            "/healthz failed during a short fault: {unhealthy:?}"
        );
    }
    let last = readings.last().expect("probe readings");
    assert_eq!(
        last.readyz,
        Some(200),
        "not ready after recovery: {}",
        last.readyz_body
    );
    assert_eq!(
        last.healthz,
        Some(200),
        "not live after recovery: {}",
        last.healthz_body
    );
}

/// What the sink saw of the accepted events.
#[derive(Debug)]
pub struct Outcome {
    pub accepted: usize,
    pub lost: usize,
    pub duplicates: usize,
    /// From the end of the fault to the first delivery after it.
    pub recovery: Option<Duration>,
}

/// Waits (up to `timeout`) until the sink has every accepted event, then asserts that
/// none was lost and that duplicates share one `webhook-id`.
pub async fn settle(sink: &Sink, answers: &[Answer], fault_end: Instant, timeout: Duration) -> Outcome {
    let accepted = accepted(answers);
    let deadline = Instant::now() + timeout;
    let missing = loop {
        let got: HashSet<String> = sink.received().iter().map(Received::event_id).collect();
        let missing: Vec<&String> = accepted.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let received = sink.received();
    let mut webhook_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for request in &received {
        webhook_ids
            .entry(request.event_id())
            .or_default()
            .insert(request.webhook_id());
    }
    let distinct = webhook_ids.len();
    for (event, ids) in &webhook_ids {
        assert_eq!(
            ids.len(),
            1,
            "{event}: duplicates must share one webhook-id: {ids:?}"
        );
    }
    let recovery = received
        .iter()
        .filter(|r| r.at >= fault_end)
        .map(|r| r.at - fault_end)
        .min();
    Outcome {
        accepted: accepted.len(),
        lost: missing,
        duplicates: received.len() - distinct,
        recovery,
    }
}

/// Prints the outcome as a row of the fault report (and appends it to
/// `target/tmp/fault-report.md`), then asserts what every fault must keep: nothing
/// lost, and delivery back within 10 s of the fault's end.
pub fn report(fault: &str, outcome: &Outcome, statuses: &BTreeMap<String, usize>) {
    let recovery = outcome
        .recovery
        .map_or("never".to_string(), |d| format!("{:.1}", d.as_secs_f64()));
    let answers: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
    let row = format!(
        "| {fault} | {} | {} | {} | {recovery} | {} |",
        outcome.accepted,
        outcome.lost,
        outcome.duplicates,
        answers.join(" ")
    );
    eprintln!("fault report: {row}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-report.md");
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{row}");
    }
    assert!(outcome.accepted > 0, "{fault}: no event was accepted");
    assert_eq!(outcome.lost, 0, "{fault}: accepted events were lost");
    let recovery = outcome.recovery.expect("no delivery after the fault ended");
    assert!(
        recovery <= Duration::from_secs(10),
        "{fault}: first delivery {recovery:?} after the fault ended"
    );
}
