//! PostgreSQL faults: a fast restart, every relayd backend terminated, and the database
//! blackholed by a proxy (connections open, no byte passing).

use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use relayd::cli::Role;

use crate::harness::{self, assert_probes, report, settle, statuses, Answer, Load, Probe};
use crate::proxy::Proxy;
use crate::services::{self, blocking, Services};
use crate::sink::{Behaviour, Sink};
use crate::support::{self, Relayd, TestBroker, TestDb};

const ALL: &[Role] = &[Role::Ingest, Role::Relay, Role::Worker];

/// Like the broker faults' `under_load`, with the database URL relayd uses passed to
/// `config_for` and the answers returned for checks of their own.
async fn under_load<F, Fut>(
    name: &str,
    proxy: Option<&Proxy>,
    dependency: Option<&str>,
    fault: F,
) -> (Vec<Answer>, Instant, Instant)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: std::future::Future<Output = TestDb>,
{
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let mut config = harness::config(&db, &broker, &sink);
    if let Some(proxy) = proxy {
        config.database.url =
            relayd::config::Secret::new(format!("postgres://postgres@{}/{}", proxy.addr, db.name));
    }
    let liveness_stall = config.ops.liveness_stall;
    let relayd = Relayd::start(config, ALL).await;
    relayd.wait_ready().await;
    let probe = Probe::start(|path| relayd.ops_url(path));
    let load = Load::start(relayd.url("/webhooks/stripe"), name);
    load.wait_accepted(2 * harness::RATE as usize, Duration::from_secs(20))
        .await;

    let fault_start = Instant::now();
    let db = fault(db).await;
    let fault_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answers = load.stop().await;
    let outcome = settle(&sink, &answers, fault_end, Duration::from_secs(60)).await;
    let readings = probe.stop().await;
    report(name, &outcome, &statuses(&answers));
    assert_probes(&readings, fault_start, fault_end, dependency, liveness_stall);
    // Every accepted event is stored once, and every delivery of it ended delivered.
    let accepted = harness::accepted(&answers).len() as i64;
    assert_eq!(
        db.count("SELECT count(*) FROM deliveries WHERE status = 'delivered'")
            .await,
        db.count("SELECT count(*) FROM events").await,
    );
    assert!(db.count("SELECT count(*) FROM events").await >= accepted);
    relayd.stop().await.unwrap();
    sink.stop().await;
    (answers, fault_start, fault_end)
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
    under_load("postgres restart -m fast", None, None, |db| async {
        blocking(services::postgres_restart).await;
        db
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_relayd_backend_terminated_under_load_pools_and_listen_reconnect() {
    let _services = Services::exclusive().await;
    under_load(
        "pg_terminate_backend of every relayd backend",
        None,
        None,
        |db| async {
            let mut admin = support::admin_connection().await;
            diesel::sql_query(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
                db.name
            ))
            .execute(&mut admin)
            .await
            .expect("terminate relayd's backends");
            db
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn database_blackholed_for_15s_ingest_answers_503_quickly_and_delivery_resumes() {
    let _services = Services::exclusive().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let (answers, from, to) = under_load(
        "proxy blackholes PostgreSQL for 15 s",
        Some(&proxy),
        Some("database"),
        |db| async {
            proxy.blackhole();
            tokio::time::sleep(Duration::from_secs(15)).await;
            proxy.heal();
            db
        },
    )
    .await;
    assert_answered_quickly(&answers, from, to, Duration::from_secs(5));
}
