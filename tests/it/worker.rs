//! The whole path in one process (ingest → outbox → relay → RabbitMQ → worker → sink):
//! signatures, routing, retries, dead letters, isolation and duplicate suppression.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use relayd::config::{Config, DestinationConfig};
use relayd::context::Role;

use crate::support::sink::{Behaviour, Sink};
use crate::support::{self, post_stripe, stripe_event, Relayd, TestBroker, TestDb, DESTINATION_SECRET};

const ALL: &[Role] = &[Role::Ingest, Role::Relay, Role::Worker];

fn to_sink(name: &str, sink: &Sink) -> DestinationConfig {
    DestinationConfig {
        url: relayd::config::Secret::new(sink.url.clone()),
        timeout: Duration::from_secs(2),
        ..support::destination(name, &[], &[])
    }
}

/// A fast schedule so retries happen within a test.
fn config(db: &TestDb, broker: &TestBroker, destinations: Vec<DestinationConfig>) -> Config {
    let mut config = support::config(&db.url);
    broker.configure(&mut config);
    config.destinations = destinations;
    config.relay.poll_interval = Duration::from_millis(100);
    config.worker.lease_margin = Duration::from_secs(1);
    config.worker.retry.schedule = vec![Duration::from_millis(200).into(); 3];
    config
}

async fn post(relayd: &Relayd, id: &str, event_type: &str) -> serde_json::Value {
    let body = stripe_event(id, event_type);
    let response = post_stripe(&reqwest::Client::new(), &relayd.url("/webhooks/stripe"), &body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_webhook_is_delivered_byte_identical_and_verifies_with_an_independent_library() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["billing"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let relayd = Relayd::start(config(&db, &broker, vec![to_sink("billing", &sink)]), ALL).await;

    let body = stripe_event("evt_e2e_1", "invoice.paid");
    let response = post_stripe(&reqwest::Client::new(), &relayd.url("/webhooks/stripe"), &body).await;
    let answer: serde_json::Value = response.json().await.unwrap();
    let received = sink.wait_for(1, Duration::from_secs(15)).await;
    let request = &received[0];
    assert_eq!(request.body, body, "byte-identical body");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.webhook_id(),
        answer["id"].as_str().unwrap(),
        "webhook-id is the event's id"
    );
    assert_eq!(request.header("x-relayd-source"), Some("stripe"));
    assert_eq!(request.header("x-relayd-event-type"), Some("invoice.paid"));
    assert_eq!(request.header("x-relayd-attempt"), Some("1"));
    assert!(request.header("user-agent").unwrap().starts_with("relayd/"));

    // Verified by the Standard Webhooks reference library, not by relayd's code.
    let mut headers = http::HeaderMap::new();
    for (name, value) in &request.headers {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let webhook = standardwebhooks::Webhook::new(DESTINATION_SECRET).unwrap();
    webhook
        .verify(&request.body, &headers)
        .expect("signature verifies");
    let other = standardwebhooks::Webhook::new("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
    assert!(
        other.verify(&request.body, &headers).is_err(),
        "and only with the right key"
    );

    let delivery_id = request
        .header("x-relayd-delivery")
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();
    db.wait_count(
        &format!("SELECT count(*) FROM deliveries WHERE id = '{delivery_id}' AND status = 'delivered' AND delivered_at IS NOT NULL AND attempts = 1"),
        1,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM delivery_attempts WHERE delivery_id = '{delivery_id}' AND attempt = 1 \
             AND status_code = 200 AND error IS NULL AND response_snippet = 'ok'"
        ))
        .await,
        1
    );
    relayd.stop().await.unwrap();
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_subscribed_destination_gets_one_copy_and_others_none() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["invoices", "everything", "payments"]);
    let (invoices, everything, payments) = (
        Sink::start(Behaviour::Succeed).await,
        Sink::start(Behaviour::Succeed).await,
        Sink::start(Behaviour::Succeed).await,
    );
    let destinations = vec![
        DestinationConfig {
            event_types: vec!["invoice.*".into()],
            ..to_sink("invoices", &invoices)
        },
        to_sink("everything", &everything),
        DestinationConfig {
            event_types: vec!["payment_intent.*".into()],
            ..to_sink("payments", &payments)
        },
    ];
    let relayd = Relayd::start(config(&db, &broker, destinations), ALL).await;
    post(&relayd, "evt_fan_1", "invoice.paid").await;
    post(&relayd, "evt_fan_2", "customer.created").await;

    everything.wait_for(2, Duration::from_secs(15)).await;
    invoices.wait_for(1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = |sink: &Sink| sink.received().iter().map(|r| r.event_id()).collect::<Vec<_>>();
    assert_eq!(ids(&invoices), ["evt_fan_1"]);
    let mut all = ids(&everything);
    all.sort();
    assert_eq!(all, ["evt_fan_1", "evt_fan_2"]);
    assert!(payments.received().is_empty());
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_destination_gets_the_same_webhook_id_until_it_succeeds() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["flaky"]);
    let sink = Sink::start(Behaviour::FailFirst { n: 2, status: 500 }).await;
    let relayd = Relayd::start(config(&db, &broker, vec![to_sink("flaky", &sink)]), ALL).await;
    post(&relayd, "evt_flaky", "invoice.paid").await;

    let received = sink.wait_for(3, Duration::from_secs(20)).await;
    let ids: HashSet<String> = received.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(ids.len(), 1, "one webhook-id across retries");
    let attempts: Vec<&str> = received
        .iter()
        .map(|r| r.header("x-relayd-attempt").unwrap())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered' AND attempts = 3",
        1,
        Duration::from_secs(5),
    )
    .await;
    db.assert_count(
        "SELECT count(*) FROM delivery_attempts WHERE status_code = 500",
        2,
        "every failed attempt is recorded",
    )
    .await;
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn always_failing_delivery_ends_dead_and_dead_lettered() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["broken"]);
    let sink = Sink::start(Behaviour::AlwaysFail { status: 502 }).await;
    let relayd = Relayd::start(config(&db, &broker, vec![to_sink("broken", &sink)]), ALL).await;
    post(&relayd, "evt_dead", "invoice.paid").await;

    // 1 attempt + 3 retries.
    sink.wait_for(4, Duration::from_secs(20)).await;
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'dead' AND attempts = 4 AND last_status_code = 502",
        1,
        Duration::from_secs(5),
    )
    .await;
    let dead_letters = broker
        .drain(&broker.dead_letter_queue(), 1, Duration::from_secs(5))
        .await;
    assert_eq!(dead_letters.len(), 1, "the message is on the dead-letter queue");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sink.received().len(), 4, "no attempt after dead");
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_destination_does_not_delay_another() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["slow", "fast"]);
    let slow = Sink::start(Behaviour::Slow {
        delay: Duration::from_secs(30),
    })
    .await;
    let fast = Sink::start(Behaviour::Slow {
        delay: Duration::from_millis(20),
    })
    .await;
    let mut slow_destination = to_sink("slow", &slow);
    slow_destination.timeout = Duration::from_secs(10);
    slow_destination.max_in_flight = 2;
    let relayd = Relayd::start(
        config(&db, &broker, vec![slow_destination, to_sink("fast", &fast)]),
        ALL,
    )
    .await;
    relayd.wait_ready().await;

    let started = Instant::now();
    for i in 0..10 {
        post(&relayd, &format!("evt_iso_{i}"), "invoice.paid").await;
    }
    fast.wait_for(10, Duration::from_secs(8)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(8),
        "fast destination served in {elapsed:?}"
    );
    assert!(
        slow.received().len() <= 2,
        "the slow destination holds at most its max_in_flight: {}",
        slow.received().len()
    );
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_message_published_twice_is_delivered_once() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["billing"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let relayd = Relayd::start(
        config(&db, &broker, vec![to_sink("billing", &sink)]),
        &[Role::Worker],
    )
    .await;
    relayd.wait_ready().await;

    // A queued row the relay leaves alone (re-check in an hour), and its message twice.
    let ids = db.seed_deliveries(1, "billing", "queued", "1 hour", None).await;
    let mut headers = amiquip::FieldTable::new();
    let text = |s: &str| amiquip::AmqpValue::LongString(s.to_string());
    headers.insert(
        "x-relayd-event".into(),
        text("01a22724-5395-764a-9c9f-7073156db4b5"),
    );
    headers.insert("x-relayd-source".into(), text("stripe"));
    headers.insert("x-relayd-event-type".into(), text("invoice.paid"));
    let properties = amiquip::AmqpProperties::default()
        .with_message_id(ids[0].to_string())
        .with_content_type("application/json".into())
        .with_headers(headers);
    broker.publish_raw("billing", br#"{"seed":1}"#, properties.clone());
    broker.publish_raw("billing", br#"{"seed":1}"#, properties);

    sink.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sink.received().len(),
        1,
        "the second copy's claim fails and it is dropped"
    );
    assert_eq!(db.statuses(&ids).await, ["delivered"]);
    assert_eq!(
        broker.ready(&broker.queue("billing")),
        0,
        "both copies were acked"
    );
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unparseable_message_is_dead_lettered() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["billing"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let relayd = Relayd::start(
        config(&db, &broker, vec![to_sink("billing", &sink)]),
        &[Role::Worker],
    )
    .await;
    relayd.wait_ready().await;
    broker.publish_raw("billing", b"garbage", amiquip::AmqpProperties::default());
    let dead = broker
        .drain(&broker.dead_letter_queue(), 1, Duration::from_secs(10))
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, b"garbage");
    assert!(sink.received().is_empty());
    relayd.stop().await.unwrap();
}

/// Regression: a message can reach a worker before the relay's transaction that marks
/// its row `queued` commits. The claim must wait for that commit, not miss the row and
/// drop the message (which would strand the delivery until its re-check horizon).
#[tokio::test(flavor = "multi_thread")]
async fn claim_waits_for_the_relays_commit_instead_of_dropping_the_message() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    use relayd::db::deliveries;

    let db = TestDb::migrated().await;
    let ids = db
        .seed_deliveries(1, "billing", "pending", "-1 second", None)
        .await;
    let mut relay = AsyncPgConnection::establish(&db.url).await.unwrap();
    diesel::sql_query("BEGIN").execute(&mut relay).await.unwrap();
    assert_eq!(deliveries::claim_due(&mut relay, 10).await.unwrap().len(), 1);

    // The worker's claim starts while the relay still holds the row.
    let url = db.url.clone();
    let id = ids[0];
    let claim = tokio::spawn(async move {
        let mut worker = AsyncPgConnection::establish(&url).await.unwrap();
        deliveries::claim(&mut worker, &[id], Duration::from_secs(30))
            .await
            .unwrap()
            .pop()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!claim.is_finished(), "the claim waits for the relay's row lock");

    deliveries::mark_queued(&mut relay, &ids, Duration::from_secs(600))
        .await
        .unwrap();
    diesel::sql_query("COMMIT").execute(&mut relay).await.unwrap();
    let claimed = claim.await.unwrap().expect("claimed once the relay committed");
    assert_eq!(claimed.attempts, 1);
    assert_eq!(db.statuses(&ids).await, ["delivering"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retrying_row_is_not_claimable_before_its_time() {
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    use relayd::db::deliveries;

    let db = TestDb::migrated().await;
    let later = db.seed_deliveries(1, "billing", "retrying", "1 hour", None).await;
    let due = db
        .seed_deliveries(1, "billing", "retrying", "-1 second", None)
        .await;
    let done = db
        .seed_deliveries(1, "billing", "delivered", "-1 second", None)
        .await;
    let leased = db
        .seed_deliveries(1, "billing", "delivering", "1 hour", Some("1 hour"))
        .await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let lease = Duration::from_secs(30);
    assert!(deliveries::claim(&mut conn, &later, lease)
        .await
        .unwrap()
        .is_empty());
    assert!(deliveries::claim(&mut conn, &done, lease)
        .await
        .unwrap()
        .is_empty());
    assert!(deliveries::claim(&mut conn, &leased, lease)
        .await
        .unwrap()
        .is_empty());
    // One statement for several: only the claimable one comes back.
    let all = [later[0], done[0], leased[0], due[0]];
    let claimed = deliveries::claim(&mut conn, &all, lease).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [due[0]]);
}

/// A destination's answer is stored as the attempt's snippet: one with a NUL byte and
/// invalid UTF-8 in its body (a text column holds neither) is stored with both replaced,
/// and recording it fails neither its own outcome nor those recorded beside it — no
/// delivery of either destination is sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_response_body_with_nul_and_invalid_utf8_is_recorded_and_no_neighbour_is_resent() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["odd", "plain"]);
    let odd = Sink::start(Behaviour::Answer {
        status: 200,
        body: b"ok\0then \xff\xfe".to_vec(),
    })
    .await;
    let plain = Sink::start(Behaviour::Succeed).await;
    let destinations = vec![to_sink("odd", &odd), to_sink("plain", &plain)];
    let relayd = Relayd::start(config(&db, &broker, destinations), ALL).await;
    let ids: Vec<String> = (0..30).map(|n| format!("evt_odd_{n}")).collect();
    for id in &ids {
        post(&relayd, id, "invoice.paid").await;
    }
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        60,
        Duration::from_secs(20),
    )
    .await;
    // Long enough for a failed record to come back as a redelivery.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for sink in [&odd, &plain] {
        assert_eq!(sink.received().len(), 30, "each event once at each destination");
    }
    assert_eq!(
        db.count(
            "SELECT count(*) FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
             WHERE d.destination = 'odd' AND a.response_snippet = 'ok\u{FFFD}then \u{FFFD}\u{FFFD}'"
        )
        .await,
        30
    );
    relayd.stop().await.unwrap();
}

/// The value of `series` (a metric with its labels) in `/metrics` now.
pub async fn metric_now(relayd: &Relayd, series: &str) -> Option<f64> {
    let text = reqwest::get(relayd.ops_url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Adaptive concurrency: a destination that serves 8 requests at a time in 100 ms (more
/// wait their turn, so round trips grow) gets about 8 at once, not its `max_in_flight`
/// of 64; one beside it that answers every request in 20 ms however many come (no
/// limit of its own), with a backlog, gets its limit raised past 24 from the start at 4.
#[tokio::test(flavor = "multi_thread")]
async fn the_in_flight_limit_settles_near_a_destination_s_capacity_and_grows_for_a_fast_one() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["narrow", "fast"]);
    let narrow = Sink::start(Behaviour::capacity(8, Duration::from_millis(100))).await;
    let fast = Sink::start(Behaviour::Slow {
        delay: Duration::from_millis(20),
    })
    .await;
    let mut destinations = vec![to_sink("narrow", &narrow), to_sink("fast", &fast)];
    for destination in &mut destinations {
        destination.max_in_flight = 64;
        destination.timeout = Duration::from_secs(10);
    }
    let mut config = config(&db, &broker, destinations);
    config.worker.concurrency = 128;
    db.seed_deliveries(1200, "narrow", "pending", "-1 second", None)
        .await;
    db.seed_deliveries(3000, "fast", "pending", "-1 second", None)
        .await;
    let relayd = Relayd::start(config, &[Role::Relay, Role::Worker]).await;
    let series = |name: &str| format!("relayd_destination_in_flight_limit{{destination=\"{name}\"}}");
    // 6 s to settle, then 4 s watched.
    let mut fast_peak: f64 = 0.0;
    let mut narrow_limits = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fast_peak = fast_peak.max(metric_now(&relayd, &series("fast")).await.unwrap_or(0.0));
        if started.elapsed() > Duration::from_secs(6) {
            if narrow_limits.is_empty() {
                narrow.take_peak_active();
            }
            narrow_limits.push(metric_now(&relayd, &series("narrow")).await.unwrap_or(0.0));
        }
    }
    let narrow_peak = narrow.take_peak_active();
    eprintln!(
        "adaptive concurrency: narrow (8 slots) limit {narrow_limits:?}, at most {narrow_peak} requests at once \
         in the last 4 s, {} served; fast peak limit {fast_peak}, {} served",
        narrow.received().len(),
        fast.received().len()
    );
    // Near its 8 slots (a window's mean round trip passes 1.5 × the baseline at about
    // twice them), far from the 64 allowed.
    assert!(
        narrow_limits.iter().all(|&l| (1.0..=24.0).contains(&l)),
        "the narrow destination's limit stays near its 8 slots: {narrow_limits:?}"
    );
    assert!(
        narrow_peak <= 24,
        "{narrow_peak} requests at once at the narrow destination"
    );
    assert!(
        narrow.received().len() >= 400,
        "it was kept busy: {} served in 10 s (80/s at capacity)",
        narrow.received().len()
    );
    assert!(
        fast_peak >= 24.0,
        "the fast destination's limit grew: {fast_peak}"
    );
    relayd.stop().await.unwrap();
}
