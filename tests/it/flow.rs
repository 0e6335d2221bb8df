//! Flow control against the real services: a `Retry-After` pause that spends no try, a
//! destination that throttles forever still ending dead, the circuit breaker (opening
//! on consecutive failures, holding the queue, one probe per interval across two worker
//! replicas, closing on a good probe), `410 Gone` disabling until an operator resumes,
//! and an operator's pause and resume through the admin API (obeyed within 2 s, kept
//! across a restart) and the CLI; a rate limit shared by two worker replicas.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use relayd::config::{BreakerOverride, Config, DestinationConfig};
use relayd::context::Role;

use crate::ops::{self, Admin};
use crate::support::sink::{Answer, Behaviour, Sink};
use crate::support::{self, post_stripe, stripe_event, Relayd, TestBroker, TestDb};

const ALL: &[Role] = &[Role::Ingest, Role::Relay, Role::Worker];

fn config(db: &TestDb, broker: &TestBroker, destinations: Vec<DestinationConfig>, retries: &[u64]) -> Config {
    let mut config = ops::config(db, broker, destinations);
    config.worker.retry.schedule = retries
        .iter()
        .map(|ms| Duration::from_millis(*ms).into())
        .collect();
    config
}

/// A sink whose first `n` requests get `first`, and every later one 200.
fn first_n(n: usize, first: Answer) -> Behaviour {
    let seen = AtomicUsize::new(0);
    Behaviour::planned(move |_, _| {
        if seen.fetch_add(1, Ordering::SeqCst) < n {
            first.clone()
        } else {
            Answer::ok()
        }
    })
}

async fn post_events(relayd: &Relayd, prefix: &str, n: usize) {
    let client = reqwest::Client::new();
    for i in 0..n {
        let body = stripe_event(&format!("{prefix}_{i}"), "invoice.paid");
        let response = post_stripe(&client, &relayd.url("/webhooks/stripe"), &body).await;
        assert_eq!(response.status(), 200);
    }
}

async fn state_of(db: &TestDb, destination: &str) -> String {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        state: String,
    }
    let rows: Vec<Row> = diesel::sql_query("SELECT state FROM destination_states WHERE destination = $1")
        .bind::<diesel::sql_types::Text, _>(destination)
        .load(&mut db.connect().await)
        .await
        .unwrap();
    rows.into_iter()
        .next()
        .map_or_else(|| "closed".into(), |r| r.state)
}

async fn wait_state(db: &TestDb, destination: &str, states: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let state = state_of(db, destination).await;
        if states.contains(&state.as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{destination} is {state}, not one of {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first answer is 429 with `Retry-After: 2`. Nothing is sent to the destination
/// for those 2 s — neither the throttled event nor one posted meanwhile — and the
/// re-send gives the try back: with a schedule of one retry, two spent tries would be
/// dead, yet the event is delivered with one attempt counted.
#[tokio::test(flavor = "multi_thread")]
async fn retry_after_pauses_the_destination_and_the_resend_spends_no_try() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["busy"]);
    let sink = Sink::start(first_n(
        1,
        Answer::RetryAfter {
            status: 429,
            seconds: 2,
        },
    ))
    .await;
    let relayd = Relayd::start(
        config(&db, &broker, vec![ops::to_sink("busy", &sink)], &[200]),
        ALL,
    )
    .await;
    post_events(&relayd, "evt_busy", 1).await;
    sink.wait_for(1, Duration::from_secs(15)).await;
    post_events(&relayd, "evt_meanwhile", 1).await;
    let received = sink.wait_for(3, Duration::from_secs(15)).await;
    for later in &received[1..] {
        let gap = later.at - received[0].at;
        assert!(
            gap >= Duration::from_millis(1800),
            "sent {gap:?} after a Retry-After of 2 s"
        );
    }
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered' AND attempts = 1",
        2,
        Duration::from_secs(5),
    )
    .await;
    db.assert_count(
        "SELECT count(*) FROM delivery_attempts WHERE throttled AND status_code = 429",
        1,
        "the throttled attempt is recorded as such",
    )
    .await;
    assert_eq!(
        crate::worker::metric_now(
            &relayd,
            "relayd_destination_throttled_total{destination=\"busy\"}"
        )
        .await,
        Some(1.0)
    );
    relayd.stop().await.unwrap();
}

/// A destination that answers 503 with `Retry-After: 1` forever: the throttled tries
/// cost nothing, but once the delivery has waited the schedule's whole time (here
/// 600 ms) it is dead, not throttled for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_throttles_forever_still_ends_dead_after_the_schedule_s_time() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["throttling"]);
    let sink = Sink::start(Behaviour::planned(|_, _| Answer::RetryAfter {
        status: 503,
        seconds: 1,
    }))
    .await;
    let relayd = Relayd::start(
        config(&db, &broker, vec![ops::to_sink("throttling", &sink)], &[300, 300]),
        ALL,
    )
    .await;
    post_events(&relayd, "evt_forever", 1).await;
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'dead' AND attempts = 1 \
           AND last_error LIKE '%throttled past%'",
        1,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        sink.received().len(),
        2,
        "throttled once, then dead on the next answer"
    );
    relayd.stop().await.unwrap();
}

fn breaker(failures: u32, probe_ms: u64) -> BreakerOverride {
    BreakerOverride {
        failures: Some(failures),
        window: Some(Duration::from_secs(60)),
        probe_interval: Some(Duration::from_millis(probe_ms)),
        max_probe_interval: Some(Duration::from_millis(probe_ms)),
    }
}

/// Five failures in a row open the circuit: nothing more is sent until the probe, a
/// second later; its 200 closes the circuit and the rest flows at once. Every event is
/// delivered once and no try is charged while the circuit was open (15 requests: the
/// 5 failures and 10 deliveries).
#[tokio::test(flavor = "multi_thread")]
async fn consecutive_failures_open_the_circuit_and_a_good_probe_closes_it() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["flaky"]);
    let sink = Sink::start(first_n(
        5,
        Answer::Whole {
            status: 500,
            body: b"down".to_vec(),
        },
    ))
    .await;
    let destination = DestinationConfig {
        breaker: breaker(5, 1000),
        // One at a time, so that the five failures are the first five requests.
        max_in_flight: 1,
        ..ops::to_sink("flaky", &sink)
    };
    let relayd = Relayd::start(config(&db, &broker, vec![destination], &[300; 10]), ALL).await;
    post_events(&relayd, "evt_flaky", 10).await;
    let received = sink.wait_for(15, Duration::from_secs(20)).await;
    let held = received[5].at - received[4].at;
    assert!(
        held >= Duration::from_millis(900),
        "the probe went {held:?} after the circuit opened"
    );
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        10,
        Duration::from_secs(5),
    )
    .await;
    db.assert_count("SELECT coalesce(sum(attempts), 0) FROM deliveries", 15, "")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.received().len(), 15, "each event delivered once");
    assert_eq!(state_of(&db, "flaky").await, "closed");
    assert_eq!(
        crate::worker::metric_now(&relayd, "relayd_destination_probes_total{destination=\"flaky\"}").await,
        Some(1.0)
    );
    relayd.stop().await.unwrap();
}

/// Two worker replicas and a destination that keeps failing: once the circuit is open
/// they send one probe per interval between them (the state is shared in PostgreSQL),
/// not one each.
#[tokio::test(flavor = "multi_thread")]
async fn two_worker_replicas_send_one_probe_per_interval_between_them() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["down"]);
    let sink = Sink::start(Behaviour::AlwaysFail { status: 500 }).await;
    let destination = DestinationConfig {
        breaker: breaker(3, 1000),
        ..ops::to_sink("down", &sink)
    };
    let config = config(&db, &broker, vec![destination], &[200; 50]);
    let first = Relayd::start(config.clone(), ALL).await;
    let second = Relayd::start(config, &[Role::Worker]).await;
    post_events(&first, "evt_down", 20).await;
    wait_state(&db, "down", &["open", "half_open"], Duration::from_secs(15)).await;
    // Requests in flight when it opened have ended.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sink.received().len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let probes = sink.received().len() - before;
    assert!(
        (3..=7).contains(&probes),
        "{probes} probes in 6 s at a 1 s interval between two replicas"
    );
    db.assert_count(
        "SELECT count(*) FROM deliveries WHERE status IN ('delivered', 'dead')",
        0,
        "every event is still waiting",
    )
    .await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

/// `410 Gone` disables the destination: nothing more is sent, its events accumulate
/// (the admin API shows them), and after an operator resumes it everything is
/// delivered — the event that got the 410 with its try given back.
#[tokio::test(flavor = "multi_thread")]
async fn a_410_disables_the_destination_until_an_operator_resumes_it() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["gone"]);
    let sink = Sink::start(first_n(
        1,
        Answer::Whole {
            status: 410,
            body: b"gone".to_vec(),
        },
    ))
    .await;
    let relayd = Relayd::start(
        config(&db, &broker, vec![ops::to_sink("gone", &sink)], &[200; 3]),
        ALL,
    )
    .await;
    let admin = Admin::new(&relayd);
    post_events(&relayd, "evt_gone", 1).await;
    wait_state(&db, "gone", &["disabled"], Duration::from_secs(15)).await;
    post_events(&relayd, "evt_after", 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink.received().len(),
        1,
        "nothing is sent to a disabled destination"
    );
    let (status, listed) = admin.get("/destinations").await;
    assert_eq!(status, 200);
    let gone = &listed["items"][0];
    assert_eq!(gone["name"], "gone");
    assert_eq!(gone["state"], "disabled");
    assert_eq!(gone["reason"], "410 Gone");
    assert_eq!(gone["undelivered"], 5, "{gone}");
    assert!(
        gone["oldest_undelivered_age_seconds"].as_f64().unwrap() >= 2.0,
        "{gone}"
    );

    let (status, resumed) = admin.post("/destinations/gone/resume", None).await;
    assert_eq!((status, resumed["state"].as_str()), (200, Some("closed")));
    sink.wait_for(6, Duration::from_secs(10)).await;
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered' AND attempts = 1",
        5,
        Duration::from_secs(5),
    )
    .await;
    relayd.stop().await.unwrap();
}

/// An operator pauses a destination: 2 s later every worker holds its deliveries, also
/// after a restart (the state is in PostgreSQL); resume delivers the backlog at once.
/// Unknown destinations are 404 and the token is required.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_pause_holds_deliveries_across_a_restart_until_resumed() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["crm"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let config = config(&db, &broker, vec![ops::to_sink("crm", &sink)], &[200]);
    let relayd = Relayd::start(config.clone(), ALL).await;
    let admin = Admin::new(&relayd);
    post_events(&relayd, "evt_before", 1).await;
    sink.wait_for(1, Duration::from_secs(15)).await;

    let (status, paused) = admin.post("/destinations/crm/pause", None).await;
    assert_eq!(
        (status, paused["state"].as_str()),
        (200, Some("paused")),
        "{paused}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    post_events(&relayd, "evt_paused", 5).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.received().len(), 1, "nothing delivered while paused");

    relayd.stop().await.unwrap();
    let relayd = Relayd::start(config, ALL).await;
    let admin = Admin::new(&relayd);
    post_events(&relayd, "evt_restarted", 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.received().len(), 1, "still paused after a restart");
    let (_, listed) = admin.get("/destinations").await;
    assert_eq!(listed["items"][0]["state"], "paused");
    assert_eq!(listed["items"][0]["undelivered"], 7);

    let resumed_at = Instant::now();
    let (status, _) = admin.post("/destinations/crm/resume", None).await;
    assert_eq!(status, 200);
    sink.wait_for(8, Duration::from_secs(10)).await;
    assert!(
        resumed_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        resumed_at.elapsed()
    );

    let (status, body) = admin.post("/destinations/nope/pause", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let unauthorized = reqwest::Client::new()
        .post(relayd.ops_url("/admin/api/destinations/crm/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    relayd.stop().await.unwrap();
}

/// `relayd destinations pause|list|resume` against the database, as an operator
/// without the admin API would.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_pauses_lists_and_resumes_a_destination() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let file = crate::support::child::config_file(&db, &broker, &sink);
    let run = |args: &[&str]| {
        let output = Command::new(support::relayd_binary())
            .arg("--config")
            .arg(&file.0)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        (
            output.status.success(),
            stdout,
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(&["destinations", "pause", "sink"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "sink: paused");
    assert_eq!(state_of(&db, "sink").await, "paused");
    let (ok, stdout, _) = run(&["destinations", "list"]);
    assert!(ok);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("sink "))
        .unwrap_or_default();
    assert!(line.contains("paused"), "{stdout}");
    let (ok, stdout, _) = run(&["destinations", "resume", "sink"]);
    assert!(ok);
    assert_eq!(stdout.trim(), "sink: resumed");
    assert_eq!(state_of(&db, "sink").await, "closed");
    let (ok, _, stderr) = run(&["destinations", "pause", "nope"]);
    assert!(!ok);
    assert!(
        stderr.contains("no destination \"nope\" is configured"),
        "{stderr}"
    );
}

/// `rate_limit = "30/s"` with two worker replicas and a backlog: over 10 s the
/// destination gets 30/s ±10 % between them (each takes half, known from the other's
/// heartbeats), and waiting for the limit spends no try.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_holds_across_two_worker_replicas() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["limited"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let destination = DestinationConfig {
        rate_limit: Some("30/s".parse().unwrap()),
        ..ops::to_sink("limited", &sink)
    };
    let config = config(&db, &broker, vec![destination], &[200]);
    let first = Relayd::start(config.clone(), ALL).await;
    let second = Relayd::start(config, &[Role::Worker]).await;
    post_events(&first, "evt_limited", 800).await;
    // Both replicas have beaten (every 2 s) and share the limit.
    sink.wait_for(30, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let end = Instant::now();
    let sent = sink
        .received()
        .iter()
        .filter(|r| r.at >= start && r.at < end)
        .count();
    eprintln!("rate limit 30/s, two workers: {sent} deliveries in 10 s");
    assert!((270..=330).contains(&sent), "{sent} deliveries in 10 s at 30/s");
    assert!(sink.received().len() < 800, "the backlog lasted the whole window");
    db.assert_count(
        "SELECT count(*) FROM deliveries WHERE attempts > 1",
        0,
        "a wait for the limit is not an attempt",
    )
    .await;
    let waits = crate::worker::metric_now(
        &first,
        "relayd_destination_rate_limit_waits_total{destination=\"limited\"}",
    )
    .await;
    assert!(waits.is_some_and(|w| w > 0.0), "{waits:?}");
    let (_, listed) = Admin::new(&first).get("/destinations").await;
    assert_eq!(listed["items"][0]["rate_limit"], "30/s");
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

/// Fairness: on a worker with 8 permits, a destination that answers in 2 s with a deep
/// backlog holds all 8 while its neighbour is idle (its `min_in_flight` is 8). Once the
/// fast neighbour has sent one event, its share (4) is kept for it: 200 events offered
/// at 50/s then arrive in well under a second each, where a first-come pool would give
/// the fast destination a permit only as the slow one's requests end, every 2 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_destination_with_a_backlog_does_not_take_a_fast_one_s_permits() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["slow", "fast"]);
    let slow_sink = Sink::start(Behaviour::Slow {
        delay: Duration::from_secs(2),
    })
    .await;
    let fast_sink = Sink::start(Behaviour::Succeed).await;
    let slow = DestinationConfig {
        event_types: vec!["slow.*".into()],
        min_in_flight: 8,
        max_in_flight: 8,
        timeout: Duration::from_secs(5),
        ..ops::to_sink("slow", &slow_sink)
    };
    let fast = DestinationConfig {
        event_types: vec!["fast.*".into()],
        ..ops::to_sink("fast", &fast_sink)
    };
    let mut config = config(&db, &broker, vec![slow, fast], &[200]);
    config.worker.concurrency = 8;
    let relayd = Relayd::start(config, ALL).await;
    let client = reqwest::Client::new();
    let post = |id: String, event_type: &'static str| {
        let client = client.clone();
        let url = relayd.url("/webhooks/stripe");
        async move {
            let response = post_stripe(&client, &url, &stripe_event(&id, event_type)).await;
            assert_eq!(response.status(), 200);
        }
    };
    for i in 0..200 {
        post(format!("evt_slow_{i}"), "slow.thing").await;
    }
    slow_sink.wait_for(8, Duration::from_secs(15)).await;
    post("evt_fast_warm".into(), "fast.thing").await;
    fast_sink.wait_for(1, Duration::from_secs(15)).await;

    let mut posted = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0..200 {
        tick.tick().await;
        let id = format!("evt_fast_{i}");
        posted.insert(id.clone(), Instant::now());
        post(id, "fast.thing").await;
    }
    let received = fast_sink.wait_for(201, Duration::from_secs(60)).await;
    let mut latencies: Vec<Duration> = received
        .iter()
        .filter_map(|r| posted.get(&r.event_id()).map(|at| r.at - *at))
        .collect();
    assert_eq!(latencies.len(), 200);
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "fast at 50/s beside a 2 s destination with a backlog, 8 permits: p50 {:?}, p99 {p99:?}",
        latencies[latencies.len() / 2]
    );
    assert!(p99 < Duration::from_millis(800), "p99 {p99:?}");
    relayd.stop().await.unwrap();
}

/// A pause survives the loss of every relayd database connection (pools, and the
/// `LISTEN` on destination states): nothing is delivered while paused, and a resume
/// after that reaches the worker within 2 s, in the same process.
#[tokio::test(flavor = "multi_thread")]
async fn a_pause_holds_and_a_resume_arrives_after_every_database_connection_was_killed() {
    use diesel_async::RunQueryDsl;
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["crm"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let relayd = Relayd::start(
        config(&db, &broker, vec![ops::to_sink("crm", &sink)], &[200]),
        ALL,
    )
    .await;
    let admin = Admin::new(&relayd);
    let (status, _) = admin.post("/destinations/crm/pause", None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    ))
    .execute(&mut support::admin_connection().await)
    .await
    .unwrap();
    // Ingest may answer 503 for the moment its connections are replaced.
    let client = reqwest::Client::new();
    for i in 0..3 {
        let body = stripe_event(&format!("evt_killed_{i}"), "invoice.paid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while post_stripe(&client, &relayd.url("/webhooks/stripe"), &body)
            .await
            .status()
            != 200
        {
            assert!(Instant::now() < deadline, "ingest did not recover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.received().len(), 0, "still paused");
    let resumed_at = Instant::now();
    let (status, _) = admin.post("/destinations/crm/resume", None).await;
    assert_eq!(status, 200);
    sink.wait_for(3, Duration::from_secs(10)).await;
    assert!(
        resumed_at.elapsed() < Duration::from_secs(3),
        "delivered {:?} after the resume",
        resumed_at.elapsed()
    );
    relayd.stop().await.unwrap();
}
