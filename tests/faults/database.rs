//! PostgreSQL faults: a fast restart, every relayd backend terminated, and the database
//! blackholed by a proxy (connections open, no byte passing).

use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;

use crate::harness::{self, under_load, Answer, Run};
use crate::proxy::Proxy;
use crate::services::{self, blocking, Services};
use crate::support::{self, TestDb};

/// Every accepted event is stored once, and every delivery of it ended delivered.
async fn assert_stored_and_delivered(run: &Run) {
    let accepted = harness::accepted(&run.answers).len() as i64;
    let events = run.db.count("SELECT count(*) FROM events").await;
    assert_eq!(
        run.db
            .count("SELECT count(*) FROM deliveries WHERE status = 'delivered'")
            .await,
        events,
    );
    assert!(events >= accepted);
}

/// Points relayd's database URL at `proxy`.
fn through(proxy: &Proxy) -> impl FnOnce(&TestDb, &mut relayd::config::Config) + '_ {
    move |db, config| {
        config.database.url =
            relayd::config::Secret::new(format!("postgres://postgres@{}/{}", proxy.addr, db.name));
    }
}

/// Answers during the fault were 200 or 503, each within `bound`: a provider gets told
/// to retry quickly rather than held until its own timeout.
fn assert_answered_quickly(answers: &[Answer], from: Instant, to: Instant, bound: Duration) {
    let during: Vec<&Answer> = answers.iter().filter(|a| a.at >= from && a.at <= to).collect();
    let bad: Vec<&&Answer> = during
        .iter()
        .filter(|a| !matches!(a.status, Some(200 | 503)) || a.took > bound)
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} answers during the fault were not a 200 or 503 within {bound:?}, e.g. {:?}",
        bad.len(),
        during.len(),
        bad.iter().take(3).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_fast_restart_under_load_every_accepted_event_is_delivered() {
    let _services = Services::exclusive().await;
    let run = under_load(
        "postgres restart -m fast",
        |_, _| {},
        None,
        async |_| {
            blocking(services::postgres_restart).await;
        },
    )
    .await;
    assert_stored_and_delivered(&run).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_relayd_backend_terminated_under_load_pools_and_listen_reconnect() {
    let _services = Services::exclusive().await;
    let run = under_load(
        "pg_terminate_backend of every relayd backend",
        |_, _| {},
        None,
        async |db| {
            let mut admin = support::admin_connection().await;
            diesel::sql_query(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND pid <> pg_backend_pid()",
                db.name
            ))
            .execute(&mut admin)
            .await
            .expect("terminate relayd's backends");
        },
    )
    .await;
    assert_stored_and_delivered(&run).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn database_blackholed_for_15s_ingest_answers_503_quickly_and_delivery_resumes() {
    let _services = Services::exclusive().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let run = under_load(
        "proxy blackholes PostgreSQL for 15 s",
        through(&proxy),
        Some("database"),
        async |_| {
            proxy.blackhole();
            tokio::time::sleep(Duration::from_secs(15)).await;
            proxy.heal();
        },
    )
    .await;
    assert_stored_and_delivered(&run).await;
    assert_answered_quickly(
        &run.answers,
        run.fault_start,
        run.fault_end,
        Duration::from_secs(5),
    );
}
