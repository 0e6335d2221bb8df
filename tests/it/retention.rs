//! Retention: what each rule deletes and keeps, `0` disabling a rule, one pruner at a
//! time, batches on a large table while ingest keeps answering, and `relayd prune`.

use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use relayd::config::RetentionConfig;
use relayd::retention::{self, Kind};
use tokio_util::sync::CancellationToken;

use crate::support::{self, post_stripe, stripe_event, Relayd, TestDb};

/// Inserts an event received `age_days` ago with one delivery per status given, each with
/// one attempt started `attempt_age_days` ago. Returns the event id.
async fn event(db: &TestDb, age_days: i64, statuses: &[&str], attempt_age_days: i64) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    let mut conn = db.connect().await;
    diesel::sql_query(format!(
        "INSERT INTO events (id, source, event_id, event_type, payload, content_type, received_at) \
         VALUES ('{id}', 'stripe', 'evt_{id}', 'invoice.paid', '\\x7b7d', 'application/json', now() - interval '{age_days} days')"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    for (i, status) in statuses.iter().enumerate() {
        let delivery = uuid::Uuid::now_v7();
        diesel::sql_query(format!(
            "INSERT INTO deliveries (id, event_id, destination, status) VALUES ('{delivery}', '{id}', 'd{i}', '{status}')"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        diesel::sql_query(format!(
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, status_code) \
             VALUES ('{delivery}', 1, now() - interval '{attempt_age_days} days', 5, 500)"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    id
}

async fn exists(db: &TestDb, id: uuid::Uuid) -> bool {
    db.count(&format!("SELECT count(*) FROM events WHERE id = '{id}'"))
        .await
        == 1
}

fn never_cancelled() -> CancellationToken {
    CancellationToken::new()
}

/// Ordered deliveries: one waiting for its key's turn keeps its event, and so does a
/// dead one that blocks its key; skipped counts as ended, and a dead delivery whose key
/// has moved on is pruned like any.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_and_key_blocking_deliveries_are_kept_and_skipped_ones_are_pruned() {
    let db = TestDb::migrated().await;
    let waiting = event(&db, 400, &["dead", "waiting"], 1).await;
    let blocking = event(&db, 400, &["dead"], 1).await;
    let moved_on = event(&db, 400, &["dead"], 1).await;
    let skipped = event(&db, 400, &["delivered", "skipped"], 1).await;
    let mut conn = db.connect().await;
    for (event, key) in [(blocking, "k_blocked"), (moved_on, "k_idle")] {
        diesel::sql_query(format!(
            "UPDATE deliveries SET ordering_key = '{key}', ordering_seq = 1 WHERE event_id = '{event}'"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    diesel::sql_query(format!(
        "INSERT INTO ordering_keys (destination, key, last_seq, head) \
         VALUES ('d0', 'k_blocked', 1, (SELECT id FROM deliveries WHERE event_id = '{blocking}')), \
                ('d0', 'k_idle', 1, NULL)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    retention::prune(
        &db.url,
        &RetentionConfig::default(),
        &never_cancelled(),
        |_, _| {},
    )
    .await
    .unwrap()
    .expect("the only pruner leads");
    for (id, kept) in [
        (waiting, true),
        (blocking, true),
        (moved_on, false),
        (skipped, false),
    ] {
        assert_eq!(exists(&db, id).await, kept, "{id}");
    }
}

/// An ordering key idle since before `retention.delivered` is deleted, a live one is
/// kept; replaying a delivery of a deleted key numbers it afresh as the key's head.
#[tokio::test(flavor = "multi_thread")]
async fn idle_ordering_keys_are_pruned_and_a_replay_starts_their_numbering_again() {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: uuid::Uuid,
    }
    let db = TestDb::migrated().await;
    let delivered = event(&db, 1, &["delivered"], 1).await;
    let live = event(&db, 1, &["retrying"], 1).await;
    let mut conn = db.connect().await;
    diesel::sql_query(format!(
        "UPDATE deliveries SET ordering_seq = 7, \
                ordering_key = CASE WHEN event_id = '{delivered}' THEN 'k_old' ELSE 'k_live' END \
         WHERE event_id IN ('{delivered}', '{live}')"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query(format!(
        "INSERT INTO ordering_keys (destination, key, last_seq, head, changed_at) \
         VALUES ('d0', 'k_old', 7, NULL, now() - interval '400 days'), \
                ('d0', 'k_live', 7, (SELECT id FROM deliveries WHERE event_id = '{live}'), \
                 now() - interval '400 days')"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let report = retention::prune(
        &db.url,
        &RetentionConfig::default(),
        &never_cancelled(),
        |_, _| {},
    )
    .await
    .unwrap()
    .expect("the only pruner leads");
    assert!(report.deleted.contains(&(Kind::OrderingKeys, 1)), "{report:?}");
    db.assert_count(
        "SELECT count(*) FROM ordering_keys WHERE key = 'k_live'",
        1,
        "a live key stays, however old",
    )
    .await;

    let id: Id = diesel::sql_query(format!(
        "SELECT id FROM deliveries WHERE event_id = '{delivered}'"
    ))
    .get_result(&mut conn)
    .await
    .unwrap();
    let replayed = relayd::db::deliveries::replay_one(&mut conn, id.id)
        .await
        .unwrap()
        .expect("replayable");
    assert_eq!(replayed.status, relayd::db::deliveries::DeliveryStatus::Pending);
    assert_eq!(replayed.ordering_seq, Some(1), "numbered afresh");
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM ordering_keys WHERE key = 'k_old' AND last_seq = 1 AND head = '{}'",
            id.id
        ))
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_jobs_that_ended_long_ago_are_pruned_and_running_ones_never() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    diesel::sql_query(
        "INSERT INTO replay_jobs (id, filter, status, matching, created_at, finished_at) VALUES \
           (gen_random_uuid(), '{}', 'done', 1, now() - interval '400 days', now() - interval '400 days'), \
           (gen_random_uuid(), '{}', 'cancelled', 1, now() - interval '400 days', now() - interval '399 days'), \
           (gen_random_uuid(), '{}', 'running', 1, now() - interval '400 days', NULL), \
           (gen_random_uuid(), '{}', 'done', 1, now() - interval '2 days', now() - interval '1 day')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let report = retention::prune(
        &db.url,
        &RetentionConfig::default(),
        &never_cancelled(),
        |_, _| {},
    )
    .await
    .unwrap()
    .expect("the only pruner leads");
    assert!(report.deleted.contains(&(Kind::ReplayJobs, 2)), "{report:?}");
    db.assert_count(
        "SELECT count(*) FROM replay_jobs WHERE status = 'running'",
        1,
        "a running job stays, however old",
    )
    .await;
    db.assert_count("SELECT count(*) FROM replay_jobs", 2, "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_rule_deletes_what_is_older_than_its_horizon_and_never_what_is_in_flight() {
    let db = TestDb::migrated().await;
    let delivered_old = event(&db, 31, &["delivered", "delivered"], 31).await;
    let delivered_young = event(&db, 29, &["delivered"], 29).await;
    let unrouted_old = event(&db, 31, &[], 0).await;
    let dead_old = event(&db, 91, &["dead", "delivered"], 91).await;
    let dead_young = event(&db, 31, &["dead"], 31).await;
    let in_flight: Vec<uuid::Uuid> = futures_util::future::join_all(
        [
            &["pending"][..],
            &["queued"],
            &["delivering"],
            &["retrying"],
            &["delivered", "retrying"],
            &["dead", "pending"],
        ]
        .into_iter()
        .map(|statuses| event(&db, 400, statuses, 1)),
    )
    .await;

    let config = RetentionConfig {
        batch_size: 2,
        ..RetentionConfig::default()
    };
    let mut conn = db.connect().await;
    let planned = retention::dry_run(&mut conn, &config).await.unwrap();
    let report = retention::prune(&db.url, &config, &never_cancelled(), |_, _| {})
        .await
        .unwrap()
        .expect("the only pruner leads");
    assert_eq!(planned, report, "the dry run predicted the pass");
    assert_eq!(
        report.deleted,
        vec![
            (Kind::Attempts, 5),
            (Kind::DeliveredEvents, 2),
            (Kind::DeadEvents, 1),
            (Kind::OrderingKeys, 0),
            (Kind::ReplayJobs, 0),
            (Kind::DedupKeys, 0)
        ],
        "attempts older than 30 days: 2 + 2 of the old events, 1 of the kept dead one"
    );

    for (id, kept) in [
        (delivered_old, false),
        (delivered_young, true),
        (unrouted_old, false),
        (dead_old, false),
        (dead_young, true),
    ] {
        assert_eq!(exists(&db, id).await, kept, "{id}");
    }
    for id in in_flight {
        assert!(exists(&db, id).await, "in flight: never pruned, however old");
    }
    db.assert_count(
        "SELECT count(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id)",
        0,
        "",
    )
    .await;
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
             WHERE d.event_id IN ('{delivered_young}', '{dead_young}')"
        ))
        .await,
        1,
        "of the kept events' attempts, the 29-day-old one stays and the 31-day-old one went"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_duration_disables_its_rule() {
    let db = TestDb::migrated().await;
    let delivered_old = event(&db, 400, &["delivered"], 400).await;
    let dead_old = event(&db, 400, &["dead"], 400).await;
    let config = RetentionConfig {
        delivered: Duration::ZERO,
        attempts: Duration::ZERO,
        ..RetentionConfig::default()
    };
    let report = retention::prune(&db.url, &config, &never_cancelled(), |_, _| {})
        .await
        .unwrap()
        .unwrap();
    // Expired dedup keys always go (they decide nothing); no rule turns that off.
    assert_eq!(report.deleted, vec![(Kind::DeadEvents, 1), (Kind::DedupKeys, 0)]);
    assert!(exists(&db, delivered_old).await);
    assert!(!exists(&db, dead_old).await);
    // With the attempts rule off, the pruned event's attempt still goes with it.
    db.assert_count("SELECT count(*) FROM delivery_attempts", 1, "")
        .await;
    assert_eq!(
        db.count(
            "SELECT count(*) FROM delivery_attempts a \
             WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id)"
        )
        .await,
        0,
        "a pruned event's attempts go with it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_one_replica_prunes_at_a_time() {
    let db = TestDb::migrated().await;
    let old = event(&db, 400, &["delivered"], 1).await;
    // Another replica is the leader: it holds the lock on its own session.
    let mut leader = db.connect().await;
    diesel::sql_query(format!("SELECT pg_advisory_lock({})", retention::LEADER_LOCK_KEY))
        .execute(&mut leader)
        .await
        .unwrap();
    let config = RetentionConfig::default();
    let skipped = retention::prune(&db.url, &config, &never_cancelled(), |_, _| {})
        .await
        .unwrap();
    assert!(skipped.is_none(), "no pass while another replica prunes");
    assert!(exists(&db, old).await);
    drop(leader);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ran = retention::prune(&db.url, &config, &never_cancelled(), |_, _| {})
        .await
        .unwrap();
    assert!(ran.is_some());
    assert!(!exists(&db, old).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_table_is_pruned_in_batches_while_ingest_keeps_answering() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    diesel::sql_query(
        "WITH e AS (INSERT INTO events (id, source, event_id, event_type, payload, content_type, received_at) \
           SELECT gen_random_uuid(), 'stripe', 'evt_old_' || g, 'invoice.paid', convert_to(repeat('x', 500), 'UTF8'), \
                  'application/json', now() - interval '60 days' FROM generate_series(1, 30000) g RETURNING id) \
         INSERT INTO deliveries (id, event_id, destination, status) SELECT gen_random_uuid(), id, 'billing', 'delivered' FROM e",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let relayd = Relayd::ingest(support::config(&db.url)).await;

    let config = RetentionConfig {
        batch_size: 1000,
        ..RetentionConfig::default()
    };
    let url = db.url.clone();
    let batches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = batches.clone();
    let pruning = tokio::spawn(async move {
        let started = Instant::now();
        let report = retention::prune(&url, &config, &CancellationToken::new(), move |_, _| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .await;
        (report, started.elapsed())
    });
    // A request held behind the prune's locks must fail the test, not hang it.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut latencies = Vec::new();
    let mut i = 0;
    while !pruning.is_finished() {
        let started = Instant::now();
        let response = post_stripe(
            &client,
            &relayd.url("/webhooks/stripe"),
            &stripe_event(&format!("evt_new_{i}"), "x.y"),
        )
        .await;
        assert_eq!(response.status(), 200, "ingest answers during pruning");
        latencies.push(started.elapsed());
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (report, took) = pruning.await.unwrap();
    let report = report.unwrap().unwrap();
    assert_eq!(report.deleted[1], (Kind::DeliveredEvents, 30000));
    assert!(
        std::sync::atomic::AtomicUsize::load(&batches, std::sync::atomic::Ordering::Relaxed) >= 30,
        "deleted in batches of 1000"
    );
    db.assert_count(
        "SELECT count(*) FROM events WHERE event_id LIKE 'evt_old_%'",
        0,
        "",
    )
    .await;
    latencies.sort();
    eprintln!(
        "pruned 30000 events in {took:?}; {} ingest requests meanwhile: p50 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
    // Pruning deletes in small batches and never blocks an insert: no request waits on it
    // for seconds (single-row inserts on this machine's disk take up to ~0.5 s at worst).
    let slowest = *latencies.last().unwrap();
    assert!(
        slowest < Duration::from_secs(3),
        "an ingest request took {slowest:?} during pruning"
    );
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_prunes_periodically_and_counts_it() {
    let db = TestDb::migrated().await;
    let broker = crate::support::TestBroker::new(&[]);
    for _ in 0..3 {
        event(&db, 400, &["delivered"], 1).await;
    }
    let mut config = support::config(&db.url);
    broker.configure(&mut config);
    config.retention.interval = Duration::from_millis(200);
    let relayd = Relayd::start(config, &[relayd::context::Role::Relay]).await;
    db.wait_count("SELECT count(*) FROM events", 0, Duration::from_secs(10))
        .await;
    let text = reqwest::get(relayd.ops_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("relayd_retention_deleted_total{kind=\"delivered_events\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("relayd_retention_last_run_timestamp_seconds "),
        "{text}"
    );
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn relayd_prune_dry_run_prints_and_prune_deletes() {
    let db = TestDb::migrated().await;
    for _ in 0..2 {
        event(&db, 400, &["delivered"], 400).await;
    }
    let config = support::temp_file(&format!("[database]\nurl = \"{}\"\n", db.url));
    let run = |args: &[&str]| {
        std::process::Command::new(support::relayd_binary())
            .arg("prune")
            .args(args)
            .arg("--config")
            .arg(&config.0)
            .output()
            .unwrap()
    };
    let dry = run(&["--dry-run"]);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let printed = String::from_utf8_lossy(&dry.stdout);
    assert!(
        printed.contains("would delete 2 delivered events") && printed.contains("would delete 2 attempts"),
        "{printed}"
    );
    db.assert_count("SELECT count(*) FROM events", 2, "a dry run deletes nothing")
        .await;
    let real = run(&[]);
    assert!(real.status.success(), "{}", String::from_utf8_lossy(&real.stderr));
    assert!(String::from_utf8_lossy(&real.stdout).contains("deleted 2 delivered events"));
    db.assert_count("SELECT count(*) FROM events", 0, "").await;
}
