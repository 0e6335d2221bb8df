//! The live event stream (`GET /admin/api/events/stream`, Server-Sent Events) through
//! the real binary: each event once with its id as the SSE id; a connection cut while
//! events keep arriving resumes with `Last-Event-ID` with no gap and no duplicate; the
//! stream's filters (source, type pattern, destination, where); a client that never
//! reads is dropped with `slow_client` while ingest goes on answering; and a stream
//! served by a process without ingest (other roles) sees events stored elsewhere.

use std::collections::HashSet;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;

use crate::support::child::{config_with_admin_token, Process};
use crate::support::sink::{Behaviour, Sink};
use crate::support::{self, post_stripe, stripe_event, TestBroker, TestDb};

const ADMIN_TOKEN: &str = "stream-admin-token-0123456789";

/// An open stream: its SSE events.
type Events =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

async fn open(relayd: &Process, params: &[(&str, &str)], last_event_id: Option<&str>) -> Events {
    let url = url::Url::parse_with_params(&relayd.ops_url("/admin/api/events/stream"), params).unwrap();
    let mut request = reqwest::Client::new().get(url).bearer_auth(ADMIN_TOKEN);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|e| e.to_string())),
    )
}

/// The next `event` frame's data and SSE id (skipping comments), within `timeout`.
async fn next_event(events: &mut Events, timeout: Duration) -> Option<(serde_json::Value, String)> {
    loop {
        let event = tokio::time::timeout(timeout, events.next()).await.ok()??.ok()?;
        if event.event == "event" {
            return Some((serde_json::from_str(&event.data).unwrap(), event.id));
        }
        assert_ne!(event.event, "close", "closed: {}", event.data);
    }
}

/// Posts `count` Stripe events named `{prefix}{n}`, `gap` apart; returns their stored ids.
async fn post_many(url: String, prefix: &'static str, count: usize, gap: Duration) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut stored = Vec::new();
    for n in 0..count {
        let body = stripe_event(&format!("{prefix}{n}"), "invoice.paid");
        let response = post_stripe(&client, &url, &body).await;
        assert_eq!(response.status(), 200);
        stored.push(response.headers()["x-relayd-event"].to_str().unwrap().to_string());
        tokio::time::sleep(gap).await;
    }
    stored
}

/// What a test's relayd needs alive while it runs: its config file, sink, broker names
/// and database, dropped in that order after the relayd.
type Kept = (support::TempFile, Sink, TestBroker, TestDb);

/// A ready relayd with every role and [`ADMIN_TOKEN`], delivering to one sink.
async fn start_with_admin_token() -> (Kept, Process) {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let file = support::temp_file(&config_with_admin_token(&db, &broker, &sink, ADMIN_TOKEN));
    let relayd = Process::start(&file, "all");
    relayd.wait_ready().await;
    ((file, sink, broker, db), relayd)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_stream_resumes_with_last_event_id_with_no_gap_and_no_duplicate() {
    let (_kept, relayd) = start_with_admin_token().await;
    let url = format!("http://{}/webhooks/stripe", relayd.ingest.as_ref().unwrap());
    // Stored before the stream opens: not part of it.
    post_many(url.clone(), "evt_before_", 3, Duration::ZERO).await;

    let mut events = open(&relayd, &[], None).await;
    let posting = tokio::spawn(post_many(url.clone(), "evt_live_", 150, Duration::from_millis(5)));
    let mut received: Vec<String> = Vec::new();
    // Cut the connection twice while events keep arriving, and go on from the last id.
    for cut in [30, 80] {
        while received.len() < cut {
            let (event, id) = next_event(&mut events, Duration::from_secs(20))
                .await
                .expect("an event");
            assert_eq!(event["id"].as_str().unwrap(), id, "the SSE id is the event's id");
            assert!(
                event["event_id"].as_str().unwrap().starts_with("evt_live_"),
                "{event}"
            );
            assert_eq!(event["destinations"], serde_json::json!(["sink"]), "{event}");
            received.push(id);
        }
        drop(events);
        tokio::time::sleep(Duration::from_millis(200)).await;
        events = open(&relayd, &[], received.last().map(String::as_str)).await;
    }
    let stored = posting.await.unwrap();
    while received.len() < stored.len() {
        let Some((_, id)) = next_event(&mut events, Duration::from_secs(20)).await else {
            break;
        };
        received.push(id);
    }
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "no event twice");
    assert_eq!(
        unique,
        stored.iter().collect::<HashSet<_>>(),
        "every event stored while streaming, none lost at the cuts"
    );
    assert!(
        next_event(&mut events, Duration::from_millis(700))
            .await
            .is_none(),
        "nothing more"
    );

    // An id that is not stored cannot be resumed from: said, not guessed.
    let response = reqwest::Client::new()
        .get(relayd.ops_url("/admin/api/events/stream"))
        .bearer_auth(ADMIN_TOKEN)
        .header("last-event-id", uuid::Uuid::now_v7().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(
        answer["message"].as_str().unwrap().contains("not stored"),
        "{answer}"
    );
    // Bad filters are 400 before anything streams; no token is 401.
    for (params, status) in [
        (vec![("where", "body.a >")], 400),
        (vec![("last_event_id", "x")], 400),
    ] {
        let url = url::Url::parse_with_params(&relayd.ops_url("/admin/api/events/stream"), &params).unwrap();
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{params:?}");
    }
    let response = reqwest::get(relayd.ops_url("/admin/api/events/stream"))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_filters_by_type_destination_and_where_and_sees_events_stored_by_another_process() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink", "other"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let other = Sink::start(Behaviour::Succeed).await;
    let config = crate::search::searchable(config_with_admin_token(&db, &broker, &sink, ADMIN_TOKEN))
        + &format!(
            "[[destinations]]\nname = \"other\"\nurl = \"{}\"\nsigning_secret = \"{}\"\nevent_types = [\"charge.*\"]\n",
            other.url,
            support::DESTINATION_SECRET
        );
    let file = support::temp_file(&config);
    let ingest = Process::start(&file, "ingest,relay,worker");
    ingest.wait_ready().await;
    // Streams served by a process that stores nothing itself.
    let watcher = Process::start(&file, "relay");
    watcher.wait_ready().await;
    let mut charges = open(&watcher, &[("event_type", "charge.*")], None).await;
    let mut to_other = open(&watcher, &[("destination", "other")], None).await;
    let mut big = open(&watcher, &[("where", "body.data.object.amount_due > 5000")], None).await;

    let client = reqwest::Client::new();
    let url = format!("http://{}/webhooks/stripe", ingest.ingest.as_ref().unwrap());
    for (id, event_type, amount) in [
        ("evt_inv", "invoice.paid", 9000),
        ("evt_charge", "charge.succeeded", 100),
        ("evt_big", "payout.paid", 7000),
    ] {
        let body =
            serde_json::json!({"id": id, "type": event_type, "data": {"object": {"amount_due": amount}}});
        let response = post_stripe(&client, &url, body.to_string().as_bytes()).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(drain_ids(&mut charges).await, ["evt_charge"]);
    assert_eq!(drain_ids(&mut to_other).await, ["evt_charge"]);
    assert_eq!(drain_ids(&mut big).await, ["evt_inv", "evt_big"]);
}

/// The provider ids of the events a stream sends until it is quiet for 3 s.
async fn drain_ids(stream: &mut Events) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some((event, _)) = next_event(stream, Duration::from_secs(3)).await {
        ids.push(event["event_id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_is_dropped_with_a_reason_and_ingest_goes_on() {
    let (_kept, relayd) = start_with_admin_token().await;
    let url = format!("http://{}/webhooks/stripe", relayd.ingest.as_ref().unwrap());
    let mut stalled = open(&relayd, &[], None).await;
    // 16 KiB events: 1,200 of them are far more than the stream's buffer and the
    // sockets' together.
    let client = reqwest::Client::new();
    let padding = "x".repeat(16 << 10);
    let started = std::time::Instant::now();
    for n in 0..1200 {
        let body = serde_json::json!({"id": format!("evt_{n}"), "type": "invoice.paid", "pad": padding});
        let response = post_stripe(&client, &url, body.to_string().as_bytes()).await;
        assert_eq!(
            response.status(),
            200,
            "ingest answers while a stream client stalls"
        );
    }
    eprintln!(
        "1,200 events stored in {:?} with a stalled stream client",
        started.elapsed()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while relayd
        .logged("event stream dropped: the client reads too slowly")
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled client was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reading now: what the sockets held, then the reason, then the end.
    let mut close = None;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(10), stalled.next()).await {
        let event = event.unwrap();
        if event.event == "close" {
            close = Some(event.data);
        }
    }
    let close: serde_json::Value = serde_json::from_str(&close.expect("a close frame")).unwrap();
    assert_eq!(close["reason"], "slow_client", "{close}");
    // A new stream works.
    let mut fresh = open(&relayd, &[], None).await;
    post_many(url, "evt_after_", 1, Duration::ZERO).await;
    let (event, _) = next_event(&mut fresh, Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(event["event_id"], "evt_after_0");
}

/// A `relayd tail` or `relayd forward` child: its stdout and stderr lines as they come.
struct Follower {
    child: std::process::Child,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Follower {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(support::relayd_binary())
            .args(args)
            .env("RELAYD_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// The first line of `lines` that `matches`, waiting up to `timeout`.
    async fn wait_line(
        &self,
        lines: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = lines.lock().unwrap().iter().find(|l| matches(l)) {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no such line; stdout: {:?}\nstderr: {:?}",
                self.stdout.lock().unwrap(),
                self.stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn relayd_forward_posts_each_event_once_signed_across_a_down_target_and_a_relayd_restart() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let file = support::temp_file(&config_with_admin_token(&db, &broker, &sink, ADMIN_TOKEN));
    let ops = crate::support::child::free_address();
    let mut relayd = Process::start_with(&file, "all", &[("RELAYD__OPS__LISTEN", ops.as_str())]);
    relayd.wait_ready().await;
    let url = format!("http://{}/webhooks/stripe", relayd.ingest.as_ref().unwrap());
    let from = format!("http://{ops}/admin");
    let laptop_addr = crate::support::child::free_address();
    let mut laptop = Sink::start_at(&laptop_addr, Behaviour::Succeed).await;
    let to = laptop.url.clone();

    let forward = Follower::start(&["forward", "--from", &from, "--to", &to, "--type", "invoice.*"]);
    let tail = Follower::start(&["tail", "--from", &from, "--json", "--source", "stripe"]);
    let secret = forward
        .wait_line(
            &forward.stderr,
            |l| l.starts_with("signing with whsec_"),
            Duration::from_secs(10),
        )
        .await
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    for follower in [&forward, &tail] {
        follower
            .wait_line(
                &follower.stderr,
                |l| l.starts_with("following "),
                Duration::from_secs(10),
            )
            .await;
    }
    let client = reqwest::Client::builder()
        .user_agent("Stripe/1.0 (+https://stripe.com/docs/webhooks)")
        .build()
        .unwrap();
    let post = async |id: &str, event_type: &str| {
        let response = post_stripe(&client, &url, &stripe_event(id, event_type)).await;
        assert_eq!(response.status(), 200, "{id}");
        response.headers()["x-relayd-event"].to_str().unwrap().to_string()
    };

    // Forwarded, signed with the printed secret, with the provider's headers; the type
    // filter keeps the charge out.
    let mut stored = std::collections::HashMap::new();
    for n in 0..5 {
        let id = format!("evt_fw_a{n}");
        stored.insert(id.clone(), post(&id, "invoice.paid").await);
    }
    post("evt_fw_charge", "charge.succeeded").await;
    let first = laptop.wait_for(5, Duration::from_secs(20)).await;
    let webhook = standardwebhooks::Webhook::new(&secret).unwrap();
    for request in &first {
        let mut headers = http::HeaderMap::new();
        for (name, value) in &request.headers {
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        webhook
            .verify(&request.body, &headers)
            .expect("the standardwebhooks library verifies a forwarded event with the printed secret");
        assert_eq!(
            request.webhook_id(),
            stored[&request.event_id()],
            "webhook-id is relayd's event id"
        );
        assert_eq!(
            request.header("x-relayd-original-user-agent"),
            Some("Stripe/1.0 (+https://stripe.com/docs/webhooks)")
        );
        assert_eq!(request.header("x-relayd-event-type"), Some("invoice.paid"));
    }
    forward
        .wait_line(
            &forward.stdout,
            |l| l.contains("evt_fw_a4") && l.contains("→ 200 OK"),
            Duration::from_secs(5),
        )
        .await;
    // The tail printed every stripe event whole, the charge too.
    for id in ["evt_fw_a0", "evt_fw_a4", "evt_fw_charge"] {
        let line = tail
            .wait_line(
                &tail.stdout,
                |l| l.contains(&format!("\"event_id\":\"{id}\"")),
                Duration::from_secs(10),
            )
            .await;
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["source"], "stripe");
    }

    // The target goes down: events wait, tried again with backoff.
    let received_before = laptop.received();
    laptop.stop().await;
    for n in 0..3 {
        let id = format!("evt_fw_b{n}");
        stored.insert(id.clone(), post(&id, "invoice.paid").await);
    }
    forward
        .wait_line(
            &forward.stderr,
            |l| l.contains("posting evt_fw_b0 again"),
            Duration::from_secs(20),
        )
        .await;
    // relayd itself restarts meanwhile; events arrive once it is back.
    relayd.kill9();
    relayd.restart();
    relayd.wait_ready().await;
    let url = format!("http://{}/webhooks/stripe", relayd.ingest.as_ref().unwrap());
    for n in 0..3 {
        let id = format!("evt_fw_c{n}");
        let response = post_stripe(&client, &url, &stripe_event(&id, "invoice.paid")).await;
        assert_eq!(response.status(), 200, "{id}");
        stored.insert(
            id,
            response.headers()["x-relayd-event"].to_str().unwrap().to_string(),
        );
    }
    // The target comes back where it was: everything it missed arrives, once, in order.
    laptop = Sink::start_at(&laptop_addr, Behaviour::Succeed).await;
    let after = laptop.wait_for(6, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ids: Vec<String> = received_before
        .iter()
        .chain(laptop.received().iter())
        .map(|r| r.event_id())
        .collect();
    let expected: Vec<String> = ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "c0", "c1", "c2"]
        .iter()
        .map(|n| format!("evt_fw_{n}"))
        .collect();
    assert_eq!(
        ids, expected,
        "each event once, in order, across the outage and the restart"
    );
    assert_eq!(after.len(), 6);
    forward
        .wait_line(
            &forward.stderr,
            |l| l.starts_with("following ") && l.contains(" after "),
            Duration::from_secs(5),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_and_forward_refuse_bad_arguments_and_a_refused_token_without_retrying() {
    let (_kept, relayd) = start_with_admin_token().await;
    let from = relayd.ops_url("/admin");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(support::relayd_binary())
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    // A token relayd refuses: 401 is final, not a reason to reconnect.
    let (code, stderr) = run(&["tail", "--from", &from, "--token", "not-the-admin-token-at-all"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("refused the stream: 401"), "{stderr}");
    // A bad filter: the 400 names it.
    let (code, stderr) = run(&[
        "tail",
        "--from",
        &from,
        "--token",
        ADMIN_TOKEN,
        "--where",
        "body.a >",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("400") && stderr.contains("where: line 1"),
        "{stderr}"
    );
    for (args, expected) in [
        (
            vec![
                "forward",
                "--from",
                &from,
                "--token",
                ADMIN_TOKEN,
                "--to",
                "ftp://x/hooks",
            ],
            "--to \"ftp://x/hooks\" is not an http(s) URL",
        ),
        (
            vec![
                "forward",
                "--from",
                "not a url",
                "--token",
                ADMIN_TOKEN,
                "--to",
                "http://127.0.0.1:1/",
            ],
            "is not a URL",
        ),
        (
            vec![
                "forward",
                "--from",
                &from,
                "--token",
                ADMIN_TOKEN,
                "--to",
                "http://127.0.0.1:1/",
                "--secret",
                "nope",
            ],
            "--secret is not a Standard Webhooks secret",
        ),
    ] {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
