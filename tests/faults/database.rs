//! PostgreSQL faults: a fast restart, every relayd backend terminated, the database
//! blackholed by a proxy (connections open, no byte passing), and the connections open
//! at one moment abandoned (silent for good) while new ones work.

use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;

use relayd::context::Role;

use crate::harness::{self, report, settle, statuses, under_load, Answer, Load, Run, RATE};
use crate::proxy::Proxy;
use crate::services::{self, blocking, Services};
use crate::support::sink::{Behaviour, Sink};
use crate::support::{self, Relayd, TestBroker, TestDb};

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

/// Every event accepted from `from` on reached the sink within 3 s: the relay, polling
/// only every 30 s, was woken by the ingest process's `NOTIFY`.
fn assert_woken_by_notify(answers: &[Answer], sink: &Sink, from: Instant) {
    let received = sink.received();
    let late: Vec<(String, Duration)> = answers
        .iter()
        .filter(|a| a.status == Some(200) && a.at >= from)
        .filter_map(|a| {
            let delivered = received
                .iter()
                .filter(|r| r.event_id() == a.event_id)
                .map(|r| r.at)
                .min()?;
            let waited = delivered.saturating_duration_since(a.at);
            (waited > Duration::from_secs(3)).then(|| (a.event_id.clone(), waited))
        })
        .collect();
    assert!(
        late.is_empty(),
        "{} events waited for the poll interval, e.g. {:?}",
        late.len(),
        &late[..late.len().min(3)]
    );
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

/// A relay in its own process hears of new rows through `LISTEN`. When its connections
/// go silent for good (the server vanished behind an address that still answers TCP, so
/// keepalives pass), its pool connections are abandoned by the query timeout, the
/// `LISTEN` connection by its ping, and a transaction left open on the server by
/// PostgreSQL's idle limit: events accepted afterwards are published on the next
/// `NOTIFY` again, not on the relay's (here 30 s) poll interval.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_whose_connections_go_silent_replaces_them_and_hears_notify_again() {
    let _services = Services::exclusive().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let config = harness::config(&db, &broker, &sink);
    let mut relay_config = config.clone();
    through(&proxy)(&db, &mut relay_config);
    // A turn cut off after its publish leaves its rows locked, and the workers' claims
    // of those messages waiting, until PostgreSQL ends the idle transaction: after
    // `broker.confirm_timeout` + 2 × `database.query_timeout` (here 2 + 2 × 2 s).
    relay_config.broker.confirm_timeout = Duration::from_secs(2);
    split_relay_fault(
        "relay's PostgreSQL connections abandoned (silent, TCP up)",
        &sink,
        config,
        relay_config,
        async || proxy.abandon_open(),
    )
    .await;
    sink.stop().await;
}

/// Runs `fault` against an ingest + worker process and a relay of its own (configured
/// to poll every 30 s) under load, then checks every accepted event at the sink and
/// that, from 8 s after the fault (a 5 s `LISTEN` ping answered within the 2 s query
/// timeout, and a reconnect), each was delivered within moments of its acceptance:
/// woken by the ingest process's `NOTIFY`, not by the poll.
async fn split_relay_fault(
    name: &str,
    sink: &Sink,
    config: relayd::config::Config,
    mut relay_config: relayd::config::Config,
    fault: impl AsyncFnOnce(),
) {
    relay_config.relay.poll_interval = Duration::from_secs(30);
    let front = Relayd::start(config, &[Role::Ingest, Role::Worker]).await;
    let relay = Relayd::start(relay_config, &[Role::Relay]).await;
    front.wait_ready().await;
    relay.wait_ready().await;
    let load = Load::start(front.url("/webhooks/stripe"), name);
    load.wait_accepted(2 * RATE as usize, Duration::from_secs(20))
        .await;

    fault().await;
    let fault_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let answers = load.stop().await;
    let outcome = settle(sink, &answers, fault_end, Duration::from_secs(60)).await;
    report(name, &outcome, &statuses(&answers));
    assert_woken_by_notify(&answers, sink, fault_end + Duration::from_secs(8));
    relay.stop().await.unwrap();
    front.stop().await.unwrap();
}

/// A primary with a synchronous standby ([`crate::support::nodes::PgPair`]) and the multi-host
/// URL of a database on it, migrated through that URL as `relayd migrate` would.
async fn failover_pair() -> (std::sync::Arc<crate::support::nodes::PgPair>, String) {
    let pair = std::sync::Arc::new(blocking(crate::support::nodes::PgPair::start).await);
    pair.primary.psql("CREATE DATABASE relayd");
    let url = pair.url("relayd");
    relayd::db::migrate::run_pending(&url)
        .await
        .expect("migrate through the multi-host URL");
    (pair, url)
}

/// A switchover that fences the old primary instead of stopping it: it turns read-only
/// (`default_transaction_read_only = on`, reloaded, so open sessions turn read-only
/// too) and the standby is promoted.
async fn fence_and_promote(pair: &std::sync::Arc<crate::support::nodes::PgPair>) {
    let pair = pair.clone();
    blocking(move || {
        pair.primary
            .psql("ALTER SYSTEM SET default_transaction_read_only = on");
        pair.primary.psql("SELECT pg_reload_conf()");
        pair.standby.promote();
    })
    .await;
}

/// A PostgreSQL primary with a synchronous streaming standby, both the test's own, and
/// relayd given both hosts (`target_session_attrs=read-write`; migrations run through
/// the same URL). Under load the primary is stopped (`pg_ctl stop -m immediate`) and,
/// 2 s later (a failover tool's detection time), the standby promoted: relayd finds the
/// new primary by itself, every event answered 200 is delivered, and `/readyz` named
/// the database meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_primary_lost_and_standby_promoted_under_load_nothing_accepted_is_lost() {
    let _services = Services::exclusive().await;
    let (pair, url) = failover_pair().await;
    let mut first_write_after = Duration::ZERO;
    let run = under_load(
        "PostgreSQL primary stopped (immediate), standby promoted 2 s later",
        |_, config| config.database.url = relayd::config::Secret::new(url.clone()),
        Some("database"),
        async |_| {
            let primary = pair.clone();
            blocking(move || primary.primary.stop_immediate()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let standby = pair.clone();
            blocking(move || standby.standby.promote()).await;
            // The new primary takes writes: the fault is over from here.
            let started = Instant::now();
            let standby = pair.clone();
            blocking(move || {
                standby.standby.psql("CREATE TABLE failover_probe ()");
            })
            .await;
            first_write_after = started.elapsed();
        },
    )
    .await;
    eprintln!("failover: the promoted standby took a write {first_write_after:?} after promotion");
    // What ingest stored before the loss is on the new primary (the standby was
    // synchronous): checked above at the sink, event by event.
    assert_answered_200_or_503(&run.answers);
}

/// A provider was told "stored" or "retry later", nothing else.
fn assert_answered_200_or_503(answers: &[Answer]) {
    let statuses = statuses(answers);
    assert!(
        statuses.keys().all(|s| s == "200" || s == "503"),
        "answers were 200 or 503 only: {statuses:?}"
    );
}

/// A switchover that fences the old primary ([`fence_and_promote`]): relayd drops the
/// pooled connections whose writes fail as read-only, connects to the new primary, and
/// every event answered 200 is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_primary_fenced_read_only_and_standby_promoted_relayd_moves_to_the_new_primary() {
    let _services = Services::exclusive().await;
    let (pair, url) = failover_pair().await;
    let run = under_load(
        "PostgreSQL primary fenced read-only, standby promoted",
        |_, config| config.database.url = relayd::config::Secret::new(url.clone()),
        None,
        async |_| fence_and_promote(&pair).await,
    )
    .await;
    assert_answered_200_or_503(&run.answers);
}

/// The relay's `LISTEN` connection on a primary that is fenced (read-only, still up)
/// moves to the new primary, where the ingest process's `NOTIFY`s now go: a split relay
/// that polls only every 30 s is woken again within a ping interval of the switchover.
#[tokio::test(flavor = "multi_thread")]
async fn a_split_relay_listening_on_a_fenced_primary_listens_on_the_new_one() {
    let _services = Services::exclusive().await;
    let (pair, url) = failover_pair().await;
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let mut config = harness::config(&db, &broker, &sink);
    config.database.url = relayd::config::Secret::new(url);
    // The 5 s ping finds the server read-only; the listener reconnects to the writable one.
    split_relay_fault(
        "primary fenced under a split relay (relay.poll_interval = 30s)",
        &sink,
        config.clone(),
        config,
        async || fence_and_promote(&pair).await,
    )
    .await;
}
