//! The batched statements against the real database: one item PostgreSQL refuses fails
//! alone, and every other item of the same statement is stored and answered.
//!
//! Each test submits all of its items from one task on a current-thread runtime, so
//! they are all queued before the batcher's task runs and travel as one batch.

use std::time::Duration;

use futures_util::future::join_all;
use relayd::db::batch::{BatchError, Batcher, Options};
use relayd::db::deliveries::{Claims, Outcome, Record, Records};
use relayd::db::events::{BatchEvent, NewDelivery, StoreEvents, Stored};
use relayd::db::{build_pool, DbPool, Durability};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::{self, TestDb};

fn options() -> Options {
    Options {
        max_batch: 128,
        tasks: 1,
        eager: 1,
        form_wait: std::time::Duration::ZERO,
        retry: relayd::db::batch::Retry::default(),
    }
}

fn pool(db: &TestDb) -> DbPool {
    let config = support::config(&db.url);
    build_pool(
        &config.database,
        "it-batches",
        Durability::Synchronous,
        Duration::from_secs(20),
    )
    .unwrap()
}

fn event(event_id: &str) -> BatchEvent {
    let id = Uuid::now_v7();
    BatchEvent {
        id,
        source: "stripe".into(),
        event_id: event_id.into(),
        event_type: "invoice.paid".into(),
        payload: format!("{{\"id\":\"{event_id}\"}}").into_bytes(),
        content_type: "application/json".into(),
        headers: serde_json::json!({}),
        traceparent: None,
        filtered: None,
        dedup: None,
        searchable: true,
        deliveries: vec![NewDelivery {
            id: Uuid::now_v7(),
            destination: "billing".into(),
            ordering_key: None,
        }],
    }
}

/// The case from the issue: 40 valid events and 4 whose id holds a NUL (which a text
/// column cannot store) committed together. Before the batch was split on rejection,
/// the statement's failure was every request's 503.
#[tokio::test]
async fn group_commit_stores_every_valid_event_beside_ones_the_database_refuses() {
    let db = TestDb::migrated().await;
    let stop = CancellationToken::new();
    let statement = StoreEvents {
        pool: pool(&db),
        timeout: Duration::from_secs(10),
    };
    let (batcher, tasks) = Batcher::start(statement, options(), stop.clone());
    let events: Vec<BatchEvent> = (0..44)
        .map(|i| {
            if i % 11 == 5 {
                event(&format!("evt_nul_{i}\u{0}"))
            } else {
                event(&format!("evt_ok_{i}"))
            }
        })
        .collect();
    let results = join_all(events.iter().cloned().map(|e| batcher.submit(e))).await;
    for (event, result) in events.iter().zip(&results) {
        if event.event_id.contains('\u{0}') {
            assert!(matches!(result, Err(BatchError::Rejected(_))), "{result:?}");
        } else {
            assert_eq!(
                result,
                &Ok(Stored::Accepted {
                    id: event.id,
                    deliveries: 1
                })
            );
        }
    }
    db.assert_count("SELECT count(*) FROM events", 40, "").await;
    db.assert_count("SELECT count(*) FROM deliveries", 40, "").await;

    // The same events again: every valid one is a duplicate of itself, stored once.
    let again = join_all(events.iter().cloned().map(|e| batcher.submit(e))).await;
    for (event, result) in events.iter().zip(&again) {
        if !event.event_id.contains('\u{0}') {
            assert_eq!(result, &Ok(Stored::Duplicate { id: Some(event.id) }));
        }
    }
    db.assert_count("SELECT count(*) FROM events", 40, "").await;
    stop.cancel();
    join_all(tasks).await;
}

/// A response snippet the database refuses (a NUL, as a destination may send) fails
/// only its own record: the other deliveries recorded in the same statement are
/// settled, so their receivers never see them again. Without its details the refused
/// record is stored too (what the worker does next).
#[tokio::test]
async fn one_unstorable_outcome_does_not_unsettle_the_others_recorded_with_it() {
    let db = TestDb::migrated().await;
    let ids = db
        .seed_deliveries(12, "billing", "queued", "-1 second", None)
        .await;
    let stop = CancellationToken::new();
    let pool = pool(&db);
    let (claims, mut tasks) = Batcher::start(
        Claims {
            pool: pool.clone(),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(60),
        },
        options(),
        stop.clone(),
    );
    let (records, record_tasks) = Batcher::start(
        Records {
            pool,
            timeout: Duration::from_secs(10),
            wake: std::sync::Arc::new(relayd::wake::OutboxWake::new(true)),
        },
        options(),
        stop.clone(),
    );
    tasks.extend(record_tasks);
    let claimed = join_all(ids.iter().map(|id| claims.submit(*id))).await;
    let records_in: Vec<Record> = claimed
        .into_iter()
        .enumerate()
        .map(|(i, claimed)| {
            let claimed = claimed.unwrap().expect("claimable");
            let snippet = if i == 7 { "ok\u{0}" } else { "ok" };
            Record {
                delivery_id: claimed.id,
                attempt: claimed.attempts,
                outcome: Outcome::Delivered { status_code: 200 },
                row: Some(relayd::db::attempts::NewAttempt {
                    delivery_id: claimed.id,
                    attempt: claimed.attempts,
                    started_at: chrono::Utc::now(),
                    duration_ms: 3,
                    status_code: Some(200),
                    error: None,
                    response_snippet: Some(snippet.into()),
                }),
                releases_key: false,
            }
        })
        .collect();
    let recorded = join_all(records_in.iter().cloned().map(|r| records.submit(r))).await;
    for (i, result) in recorded.iter().enumerate() {
        if i == 7 {
            assert!(matches!(result, Err(BatchError::Rejected(_))), "{result:?}");
        } else {
            assert_eq!(result, &Ok(true), "record {i}");
        }
    }
    db.assert_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        11,
        "",
    )
    .await;
    assert_eq!(records.submit(records_in[7].without_details()).await, Ok(true));
    db.assert_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        12,
        "",
    )
    .await;
    db.assert_count("SELECT count(*) FROM delivery_attempts", 12, "")
        .await;
    stop.cancel();
    join_all(tasks).await;
}

/// A database that is down is not a rejection: the batch is answered `Unavailable`
/// (ingest's 503, the worker's requeue), never split into single-item statements.
#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_rejected() {
    let mut config = support::config("postgres://postgres@127.0.0.1:9/nothing");
    config.database.connect_timeout = Duration::from_millis(500);
    let pool = build_pool(
        &config.database,
        "it-batches",
        Durability::Synchronous,
        Duration::from_secs(20),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let (batcher, tasks) = Batcher::start(
        StoreEvents {
            pool,
            timeout: Duration::from_secs(2),
        },
        options(),
        stop.clone(),
    );
    let results = join_all((0..3).map(|i| batcher.submit(event(&format!("evt_{i}"))))).await;
    for result in results {
        assert!(matches!(result, Err(BatchError::Unavailable(_))), "{result:?}");
    }
    stop.cancel();
    join_all(tasks).await;
}
