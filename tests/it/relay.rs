//! The relay role against real PostgreSQL and RabbitMQ: what reaches the queues, when,
//! how often, and what happens when the broker or the relay fails.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relayd::broker::{OutgoingMessage, Publisher, Topology};
use relayd::config::Config;
use relayd::context::Role;
use relayd::db::deliveries;
use tokio_util::sync::CancellationToken;

use crate::support::{self, post_stripe, stripe_event, Relayd, TestBroker, TestDb};

fn config(db: &TestDb, broker: &TestBroker, destinations: &[&str]) -> Config {
    let mut config = support::config(&db.url);
    broker.configure(&mut config);
    config.destinations = destinations
        .iter()
        .map(|d| support::destination(d, &[], &[]))
        .collect();
    config
}

/// A fresh database and a broker prefix with one destination queue, `billing`: where
/// most relay tests start.
async fn billing() -> (TestDb, TestBroker) {
    (TestDb::migrated().await, TestBroker::new(&["billing"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_delivery_reaches_its_quorum_queue_intact_and_is_marked_queued() {
    let (db, broker) = billing().await;
    let relayd = Relayd::start(config(&db, &broker, &["billing"]), &[Role::Ingest, Role::Relay]).await;
    relayd.wait_ready().await;

    let body = stripe_event("evt_relay_1", "invoice.paid");
    let response = post_stripe(&reqwest::Client::new(), &relayd.url("/webhooks/stripe"), &body).await;
    let answer: serde_json::Value = response.json().await.unwrap();
    let event_uuid = answer["id"].as_str().unwrap().to_string();

    let messages = broker
        .drain(&broker.queue("billing"), 1, Duration::from_secs(10))
        .await;
    assert_eq!(messages.len(), 1, "published exactly once");
    let message = &messages[0];
    assert_eq!(message.body, body, "byte-identical body");
    assert_eq!(
        message.properties.content_type().as_deref(),
        Some("application/json")
    );
    assert_eq!(*message.properties.delivery_mode(), Some(2), "persistent");
    let text = |name: &str| match message.header(name) {
        Some(amiquip::AmqpValue::LongString(s)) => s,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(text("x-relayd-event"), event_uuid);
    assert_eq!(text("x-relayd-event-id"), "evt_relay_1");
    assert_eq!(text("x-relayd-source"), "stripe");
    assert_eq!(text("x-relayd-event-type"), "invoice.paid");
    assert_eq!(text("x-relayd-destination"), "billing");
    assert!(matches!(
        message.header("x-relayd-attempt"),
        Some(amiquip::AmqpValue::LongInt(1))
    ));

    let delivery_id: uuid::Uuid = message
        .message_id()
        .parse()
        .expect("message_id is the delivery id");
    assert_eq!(db.statuses(&[delivery_id]).await, ["queued"]);

    // The queue is quorum and dead-letters to the prefix's exchange: re-declaring it with
    // those arguments succeeds, and with any other type fails.
    let queue = broker.queue("billing");
    let dlx = format!("{}.dead-letter", broker.prefix);
    let declare = |queue_type: &str| {
        let queue = queue.clone();
        let dlx = dlx.clone();
        let queue_type = queue_type.to_string();
        TestBroker::with_channel(move |channel| {
            let mut args = amiquip::FieldTable::new();
            args.insert("x-queue-type".into(), amiquip::AmqpValue::LongString(queue_type));
            args.insert(
                "x-dead-letter-exchange".into(),
                amiquip::AmqpValue::LongString(dlx),
            );
            let options = amiquip::QueueDeclareOptions {
                durable: true,
                arguments: args,
                ..Default::default()
            };
            channel.queue_declare(queue, options).is_ok()
        })
    };
    let (same, other) = (declare("quorum"), declare("classic"));
    assert!(same && !other, "quorum queue with its dead-letter exchange");
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_ingest_wakes_the_relay_without_waiting_for_the_poll_interval() {
    let (db, broker) = billing().await;
    let mut config = config(&db, &broker, &["billing"]);
    config.relay.poll_interval = Duration::from_secs(30);
    let relayd = Relayd::start(config, &[Role::Ingest, Role::Relay]).await;
    relayd.wait_ready().await;
    // Let the relay's first (empty) turn finish so it is waiting for a wake-up.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    for i in 0..5 {
        let body = stripe_event(&format!("evt_fast_{i}"), "invoice.paid");
        assert_eq!(
            post_stripe(&client, &relayd.url("/webhooks/stripe"), &body)
                .await
                .status(),
            200
        );
        let accepted = Instant::now();
        let got = broker
            .drain(&broker.queue("billing"), 1, Duration::from_secs(5))
            .await;
        assert_eq!(got.len(), 1);
        latencies.push(accepted.elapsed());
    }
    eprintln!("accepted → on the queue (includes the test's polling): {latencies:?}");
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(3)),
        "published on the wake-up, far before the 30 s poll interval: {latencies:?}"
    );
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_from_another_process_wakes_a_relay_only_instance() {
    let (db, broker) = billing().await;
    let mut relay_config = config(&db, &broker, &["billing"]);
    relay_config.relay.poll_interval = Duration::from_secs(30);
    let relay = Relayd::start(relay_config, &[Role::Relay]).await;
    relay.wait_ready().await;
    let ingest = Relayd::ingest(config(&db, &broker, &["billing"])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = stripe_event("evt_notify", "invoice.paid");
    assert_eq!(
        post_stripe(&reqwest::Client::new(), &ingest.url("/webhooks/stripe"), &body)
            .await
            .status(),
        200
    );
    let accepted = Instant::now();
    let got = broker
        .drain(&broker.queue("billing"), 1, Duration::from_secs(5))
        .await;
    assert_eq!(got.len(), 1);
    assert!(
        accepted.elapsed() < Duration::from_secs(3),
        "woken by NOTIFY: {:?}",
        accepted.elapsed()
    );
    ingest.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_keeps_rows_pending_and_readyz_and_metrics_say_not_ready() {
    let (db, broker) = billing().await;
    let mut down = config(&db, &broker, &["billing"]);
    // Nothing listens on port 1: the publisher can never connect.
    down.broker.url = relayd::config::Secret::new("amqp://guest:guest@127.0.0.1:1/%2f");
    down.relay.poll_interval = Duration::from_millis(100);
    let relayd = Relayd::start(down, &[Role::Ingest, Role::Relay]).await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let body = stripe_event(&format!("evt_down_{i}"), "invoice.paid");
        assert_eq!(
            post_stripe(&client, &relayd.url("/webhooks/stripe"), &body)
                .await
                .status(),
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.assert_count("SELECT count(*) FROM deliveries WHERE status = 'pending'", 20, "")
        .await;
    let readyz = client.get(relayd.ops_url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503);
    let reason: serde_json::Value = readyz.json().await.unwrap();
    assert!(
        reason["checks"]["broker"].as_str().unwrap().contains("publisher"),
        "{reason}"
    );
    // Alerts see what the probe sees.
    let metrics = client.get(relayd.ops_url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "relayd_ready 0"), "{metrics}");
    // Recovery inside the running process is proven by the fault suite (tests/faults).
    relayd.stop().await.unwrap();
}

/// `broker.urls` with nodes that refuse connections: whichever node a process starts
/// at, its publisher and consumer end up on the one that answers, and `/readyz` and
/// `relayd_broker_connected` name that node.
#[tokio::test(flavor = "multi_thread")]
async fn broker_urls_connect_to_the_node_that_answers_and_readyz_names_it() {
    let (db, broker) = billing().await;
    let sink = crate::support::sink::Sink::start(crate::support::sink::Behaviour::Succeed).await;
    let mut config = config(&db, &broker, &["billing"]);
    config.destinations[0].url = relayd::config::Secret::new(sink.url.clone());
    // Two of three refuse: most processes start at one of those and must move on.
    config.broker.urls = [
        "amqp://guest:guest@127.0.0.1:1/%2f",
        support::BROKER_URL,
        "amqp://guest:guest@127.0.0.1:2/%2f",
    ]
    .into_iter()
    .map(relayd::config::Secret::new)
    .collect();
    let relayd = Relayd::start(config, &[Role::Ingest, Role::Relay, Role::Worker]).await;
    relayd.wait_ready().await;
    let body = stripe_event("evt_two_nodes", "invoice.paid");
    let client = reqwest::Client::new();
    assert_eq!(
        post_stripe(&client, &relayd.url("/webhooks/stripe"), &body)
            .await
            .status(),
        200
    );
    sink.wait_for(1, Duration::from_secs(10)).await;
    let live = support::BROKER_URL
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    let readyz: serde_json::Value = client
        .get(relayd.ops_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(readyz["broker_nodes"]["publisher"], live, "{readyz}");
    assert_eq!(readyz["broker_nodes"]["consumer:billing"], live, "{readyz}");
    let metrics = client
        .get(relayd.ops_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("relayd_broker_connected{{component=\"publisher\",node=\"{live}\"}} 1");
    assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_relays_on_one_database_publish_each_due_row_once() {
    let (db, broker) = billing().await;
    let ids = db
        .seed_deliveries(2000, "billing", "pending", "-1 second", None)
        .await;
    let mut relay_config = config(&db, &broker, &["billing"]);
    relay_config.relay.batch_size = 50;
    let (a, b) = tokio::join!(
        Relayd::start(relay_config.clone(), &[Role::Relay]),
        Relayd::start(relay_config, &[Role::Relay]),
    );
    let messages = broker
        .drain(&broker.queue("billing"), ids.len(), Duration::from_secs(60))
        .await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for message in &messages {
        *per_id.entry(message.message_id()).or_default() += 1;
    }
    assert_eq!(per_id.len(), ids.len(), "every row published");
    assert!(per_id.values().all(|n| *n == 1), "no row published twice");
    db.assert_count("SELECT count(*) FROM deliveries WHERE status <> 'queued'", 0, "")
        .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A relay that dies after the broker confirmed a batch but before its transaction
/// committed: the rows are still claimable, and the next relay publishes them again.
/// The queue then holds each message twice; the worker's conditional claim is what
/// makes the second copy harmless.
#[tokio::test(flavor = "multi_thread")]
async fn rows_of_a_relay_killed_between_publish_and_commit_are_published_again() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let (db, broker) = billing().await;
    let ids = db
        .seed_deliveries(10, "billing", "pending", "-1 second", None)
        .await;
    let config = config(&db, &broker, &["billing"]);

    let topology = Topology::new(&config.broker, ["billing".to_string()]);
    let health = relayd::broker::Health::new();
    let publisher = Publisher::start(&config.broker, topology, health.clone()).unwrap();
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    // Open a transaction, claim and publish, then "die": the connection goes away
    // without a commit.
    diesel::sql_query("BEGIN").execute(&mut conn).await.unwrap();
    let due = deliveries::claim_due(&mut conn, 100).await.unwrap();
    assert_eq!(due.len(), 10);
    let mut published = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while published.is_empty() && Instant::now() < deadline {
        let messages: Vec<OutgoingMessage> = due
            .iter()
            .map(|d| OutgoingMessage {
                delivery_id: d.id,
                destination: d.destination.clone(),
                event_uuid: d.event_uuid,
                event_id: d.event_id.clone(),
                source: d.source.clone(),
                event_type: d.event_type.clone(),
                attempt: 1,
                content_type: d.content_type.clone(),
                body: d.payload.clone(),
                traceparent: None,
            })
            .collect();
        let results = publisher
            .publish_batch(messages, relayd::broker::Pace::Batch)
            .await;
        if results.iter().all(Result::is_ok) {
            published = results;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await; // still connecting
        }
    }
    assert_eq!(published.len(), 10, "the broker confirmed the batch");
    drop(conn);
    drop(publisher);
    assert_eq!(db.statuses(&ids).await, vec!["pending"; 10], "nothing was marked");

    let relayd = Relayd::start(config, &[Role::Relay]).await;
    let messages = broker
        .drain(&broker.queue("billing"), 20, Duration::from_secs(15))
        .await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for message in &messages {
        *per_id.entry(message.message_id()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 10);
    assert!(
        per_id.values().all(|n| *n == 2),
        "each row twice: once per relay: {per_id:?}"
    );
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'queued'",
        10,
        Duration::from_secs(5),
    )
    .await;
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retrying_rows_wait_for_their_time_and_expired_leases_are_republished() {
    let (db, broker) = billing().await;
    let retry_later = db.seed_deliveries(3, "billing", "retrying", "1 hour", None).await;
    let retry_now = db
        .seed_deliveries(3, "billing", "retrying", "-1 second", None)
        .await;
    let leased = db
        .seed_deliveries(3, "billing", "delivering", "1 hour", Some("1 hour"))
        .await;
    let lease_expired = db
        .seed_deliveries(3, "billing", "delivering", "-1 second", Some("-1 second"))
        .await;
    let done = db
        .seed_deliveries(3, "billing", "delivered", "-1 hour", None)
        .await;
    let dead = db.seed_deliveries(3, "billing", "dead", "-1 hour", None).await;

    let relayd = Relayd::start(config(&db, &broker, &["billing"]), &[Role::Relay]).await;
    let messages = broker
        .drain(&broker.queue("billing"), 6, Duration::from_secs(10))
        .await;
    let published: HashSet<uuid::Uuid> = messages.iter().map(|m| m.message_id().parse().unwrap()).collect();
    let expected: HashSet<uuid::Uuid> = retry_now.iter().chain(&lease_expired).copied().collect();
    assert_eq!(published, expected);
    assert_eq!(db.statuses(&retry_later).await, vec!["retrying"; 3]);
    assert_eq!(db.statuses(&leased).await, vec!["delivering"; 3]);
    assert_eq!(db.statuses(&done).await, vec!["delivered"; 3]);
    assert_eq!(db.statuses(&dead).await, vec!["dead"; 3]);
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_queued_rows_are_republished_only_when_their_queue_is_empty() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["billing", "ledger"]);
    let mut config = config(&db, &broker, &["billing", "ledger"]);
    config.relay.poll_interval = Duration::from_millis(100);
    // Declare the topology, then put a backlog in front of billing only.
    let relayd = Relayd::start(config.clone(), &[Role::Relay]).await;
    relayd.wait_ready().await;
    relayd.stop().await.unwrap();
    broker.publish_raw("billing", b"backlog", amiquip::AmqpProperties::default());

    let waiting = db
        .seed_deliveries(2, "billing", "queued", "-1 second", None)
        .await;
    let lost = db.seed_deliveries(2, "ledger", "queued", "-1 second", None).await;
    let relayd = Relayd::start(config, &[Role::Relay]).await;

    let republished = broker
        .drain(&broker.queue("ledger"), 2, Duration::from_secs(10))
        .await;
    let ids: HashSet<uuid::Uuid> = republished
        .iter()
        .map(|m| m.message_id().parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        lost.iter().copied().collect(),
        "lost rows are published again"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        broker.ready(&broker.queue("billing")),
        1,
        "nothing added behind the backlog"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM deliveries WHERE status = 'queued' AND next_attempt_at > now() + interval '5 minutes' \
             AND id IN ('{}', '{}')",
            waiting[0], waiting[1]
        ))
        .await,
        2,
        "waiting rows are re-checked later instead"
    );
    relayd.stop().await.unwrap();
}

/// Counts the NOTIFYs on the outbox channel of `db` (listening once this returns) until
/// `stop` is cancelled.
async fn count_outbox_notifications(db: &TestDb, stop: CancellationToken) -> Arc<AtomicUsize> {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    use futures_util::StreamExt;
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let mut conn = diesel_async::AsyncPgConnection::establish(&db.url).await.unwrap();
    diesel::sql_query(format!("LISTEN {}", relayd::wake::OUTBOX_CHANNEL))
        .execute(&mut conn)
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut notifications = std::pin::pin!(conn.notifications_stream());
        loop {
            tokio::select! {
                item = notifications.next() => match item {
                    Some(Ok(_)) => { counted.fetch_add(1, Ordering::SeqCst); }
                    _ => return,
                },
                _ = stop.cancelled() => return,
            }
        }
    });
    count
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_notifies_other_processes_only_when_it_runs_no_relay_itself() {
    let (db, broker) = billing().await;
    let stop = CancellationToken::new();
    let notifications = count_outbox_notifications(&db, stop.clone()).await;
    let client = reqwest::Client::new();

    // Ingest with its own relay: woken in process, no NOTIFY.
    let relayd = Relayd::start(config(&db, &broker, &["billing"]), &[Role::Ingest, Role::Relay]).await;
    relayd.wait_ready().await;
    let body = stripe_event("evt_in_process", "invoice.paid");
    assert_eq!(
        post_stripe(&client, &relayd.url("/webhooks/stripe"), &body)
            .await
            .status(),
        200
    );
    let got = broker
        .drain(&broker.queue("billing"), 1, Duration::from_secs(5))
        .await;
    assert_eq!(got.len(), 1, "published by the in-process relay");
    relayd.stop().await.unwrap();
    // A NOTIFY would have been sent right after the commit, long before the publish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        notifications.load(Ordering::SeqCst),
        0,
        "no NOTIFY from a process with a relay"
    );

    // Ingest alone: relays elsewhere hear a NOTIFY.
    let ingest = Relayd::ingest(config(&db, &broker, &["billing"])).await;
    let body = stripe_event("evt_elsewhere", "invoice.paid");
    assert_eq!(
        post_stripe(&client, &ingest.url("/webhooks/stripe"), &body)
            .await
            .status(),
        200
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while notifications.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        notifications.load(Ordering::SeqCst) >= 1,
        "an ingest-only process notifies"
    );
    ingest.stop().await.unwrap();
    stop.cancel();
}

/// A relay whose connection goes silent in the middle of its turn (half-open, or the
/// process frozen) must not keep the rows it claimed locked from the other relays: the
/// server ends a session idle inside a transaction for longer than the relay ever waits
/// between statements (`broker.confirm_timeout` plus two query timeouts).
#[tokio::test(flavor = "multi_thread")]
async fn rows_claimed_by_a_transaction_left_idle_are_claimable_again_after_the_idle_limit() {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let (db, broker) = billing().await;
    let mut config = config(&db, &broker, &["billing"]);
    config.broker.confirm_timeout = Duration::from_secs(1);
    config.database.query_timeout = Duration::from_millis(500);
    let ctx = relayd::context::AppContext::new(config, [Role::Relay].into()).unwrap();
    let seeded = db
        .seed_deliveries(3, "billing", "pending", "-1 second", None)
        .await;

    // A relay's turn: claims the rows, then never says another word.
    let mut silent = ctx.relaxed_pool.get().await.unwrap();
    silent.batch_execute("BEGIN").await.unwrap();
    let claimed = deliveries::claim_due(&mut silent, 10).await.unwrap();
    assert_eq!(claimed.len(), 3);

    let mut other = db.connect().await;
    let claim = async |conn: &mut diesel_async::AsyncPgConnection| {
        conn.transaction::<_, diesel::result::Error, _>(async |conn| deliveries::claim_due(conn, 10).await)
            .await
            .unwrap()
            .len()
    };
    assert_eq!(claim(&mut other).await, 0, "locked while the turn is alive");
    // The limit is 1 s + 2 × 0.5 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        claim(&mut other).await,
        seeded.len(),
        "the server ended the idle transaction and released its rows"
    );
    drop(silent);
}

/// Rows stored before ingest checked its fields (or written by hand) may hold what no
/// AMQP message can carry: a `Content-Type` over 255 bytes (a short string), an event
/// type larger than a frame. Publishing one used to break the broker session, and the
/// relay retried the same row first in line forever: nothing else was published. Such
/// a row is set aside as `quarantined`, with the reason, and the rest flows.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_no_amqp_message_can_carry_is_quarantined_and_the_rest_is_published() {
    let (db, broker) = billing().await;
    let good = db
        .seed_deliveries(20, "billing", "pending", "-10 seconds", None)
        .await;
    let bad = db
        .seed_deliveries(2, "billing", "pending", "-20 seconds", None)
        .await;
    db.update_event_of(bad[0], "content_type = repeat('c', 300)")
        .await;
    db.update_event_of(bad[1], "event_type = repeat('t', 200000)")
        .await;
    let mut config = config(&db, &broker, &["billing"]);
    let token = "admin-token-for-tests-0123456789";
    config.ops.admin_token = Some(relayd::config::Secret::new(token));
    let relayd = Relayd::start(config, &[Role::Relay]).await;

    let got = broker
        .drain(&broker.queue("billing"), good.len(), Duration::from_secs(15))
        .await;
    assert_eq!(got.len(), good.len(), "every good row published");
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'quarantined' AND last_error IS NOT NULL",
        2,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(db.statuses(&good).await, vec!["queued".to_string(); good.len()]);

    // Visible to an operator, with the reason, and replayable.
    let client = reqwest::Client::new();
    let listed: serde_json::Value = client
        .get(relayd.ops_url("/admin/api/deliveries?status=quarantined"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    assert!(
        items
            .iter()
            .all(|d| d["last_error"].as_str().is_some_and(|e| e.contains("bytes"))),
        "{listed}"
    );
    let replay = client
        .post(relayd.ops_url(&format!("/admin/api/deliveries/{}/replay", bad[0])))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    // Replayed as it is, it is set aside again; everything else still flows.
    db.wait_count(
        &format!(
            "SELECT count(*) FROM deliveries WHERE id = '{}' AND status = 'quarantined' AND attempts = 0",
            bad[0]
        ),
        1,
        Duration::from_secs(5),
    )
    .await;
    relayd.stop().await.unwrap();
}

/// A row that passes the relay's own check and still breaks the broker session each
/// time it is published — here an event type of 6,000 bytes (stored before ingest
/// checked its fields) sent to a node whose `frame_max` is 4,096, so its properties do
/// not fit one frame and the broker closes the connection — is found by publishing it
/// alone after a broken batch, and set aside as `quarantined` with the broker's words
/// once its lone publish has broken a fresh session three times. Everything behind it is
/// delivered. (Before: the relay published the same batch first in line forever and
/// nothing was delivered.)
#[tokio::test(flavor = "multi_thread")]
async fn a_row_that_breaks_the_broker_session_when_published_is_quarantined_and_the_rest_flows() {
    let port = crate::support::nodes::free_port();
    let _node = crate::support::nodes::RabbitNode::start(|_| {
        format!("listeners.tcp.default = {port}\nframe_max = 4096\n")
    });
    let db = TestDb::migrated().await;
    let sink = crate::support::sink::Sink::start(crate::support::sink::Behaviour::Succeed).await;
    // Due before it and after it, in one batch.
    let mut good = db
        .seed_deliveries(10, "billing", "pending", "-30 seconds", None)
        .await;
    let bad = db
        .seed_deliveries(1, "billing", "pending", "-20 seconds", None)
        .await;
    good.extend(
        db.seed_deliveries(10, "billing", "pending", "-10 seconds", None)
            .await,
    );
    db.update_event_of(bad[0], "event_type = repeat('t', 6000)").await;
    let mut config = support::config(&db.url);
    config.broker.url = relayd::config::Secret::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    config.broker.prefix = "poison".into();
    config.relay.poll_interval = Duration::from_millis(200);
    let mut destination = support::destination("billing", &[], &[]);
    destination.url = relayd::config::Secret::new(sink.url.clone());
    config.destinations = vec![destination];
    let relayd = Relayd::start(config, &[Role::Relay, Role::Worker]).await;

    sink.wait_for(good.len(), Duration::from_secs(30)).await;
    db.wait_count(
        &format!(
            "SELECT count(*) FROM deliveries WHERE id = '{}' AND status = 'quarantined'",
            bad[0]
        ),
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        db.statuses(&good).await,
        vec!["delivered".to_string(); good.len()]
    );
    let reason = db
        .count(&format!(
            "SELECT count(*) FROM deliveries WHERE id = '{}' AND last_error LIKE '%broker session%FRAME_ERROR%'",
            bad[0]
        ))
        .await;
    assert_eq!(reason, 1, "the reason is recorded");
    relayd.stop().await.unwrap();
}
