//! RabbitMQ faults: the broker's app stopped and started, its process SIGKILLed and
//! started again, every connection closed from the broker side, and the AMQP
//! connections reset, refused and blackholed by a proxy.

use std::time::{Duration, Instant};

use relayd::context::Role;

use crate::harness::{self, report, settle, statuses, under_load, Load};
use crate::proxy::{Faults, Proxy};
use crate::services::{self, blocking, Services};
use crate::support::sink::{Behaviour, Sink};
use crate::support::{Relayd, TestBroker, TestDb};

/// The fault of stopping the broker's app for `down`, then starting it.
fn stop_app_for(down: Duration) -> impl AsyncFnOnce(&TestDb) {
    async move |_: &TestDb| {
        blocking(services::rabbitmq_stop_app).await;
        tokio::time::sleep(down).await;
        blocking(services::rabbitmq_start_app).await;
    }
}

/// Also checks the gauges an operator alerts on: while the broker is away the publisher
/// reads disconnected and the outbox shows the rows waiting, with their age.
#[tokio::test(flavor = "multi_thread")]
async fn broker_app_stopped_and_started_under_load_delivery_resumes_in_the_same_process() {
    let _services = Services::exclusive().await;
    let run = under_load(
        "rabbitmq stop_app 8 s / start_app",
        |_, _| {},
        Some("publisher"),
        stop_app_for(Duration::from_secs(8)),
    )
    .await;
    let during: Vec<&harness::Reading> = run
        .readings
        .iter()
        .filter(|r| r.at >= run.fault_start && r.at <= run.fault_end)
        .collect();
    // While down, the series keeps the node the publisher was last on.
    let publisher = r#"relayd_broker_connected{component="publisher",node="127.0.0.1:5672"}"#;
    assert!(
        during.iter().any(|r| r.metric(publisher) == Some(0.0)),
        "{publisher} never read 0 while the broker was down"
    );
    let (due, age) = during
        .iter()
        .filter_map(|r| {
            Some((
                r.metric("relayd_outbox_due")?,
                r.metric("relayd_outbox_oldest_due_age_seconds")?,
            ))
        })
        .fold((0.0, 0.0), |(d, a), (due, age)| {
            (f64::max(d, due), f64::max(a, age))
        });
    // 100 events/s for 8 s wait in the outbox; the gauges refresh every 5 s.
    assert!(
        due >= 100.0,
        "relayd_outbox_due read at most {due} during the outage"
    );
    assert!(
        age >= 1.0,
        "the oldest due row read at most {age} s old during the outage"
    );
    let last = run.readings.last().unwrap();
    assert_eq!(last.metric(publisher), Some(1.0), "publisher connected again");
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_longer_than_the_liveness_stall_fails_healthz_until_it_is_back() {
    let _services = Services::exclusive().await;
    let stall =
        |_: &TestDb, config: &mut relayd::config::Config| config.ops.liveness_stall = Duration::from_secs(3);
    under_load(
        "rabbitmq stop_app 8 s, liveness_stall 3 s",
        stall,
        Some("publisher"),
        stop_app_for(Duration::from_secs(8)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_sigkilled_and_started_again_under_load_delivery_resumes_in_the_same_process() {
    let _services = Services::exclusive().await;
    under_load(
        "rabbitmq SIGKILL / start",
        |_, _| {},
        Some("publisher"),
        async |_| {
            blocking(services::rabbitmq_kill).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            blocking(services::rabbitmq_start).await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_connection_closed_by_the_broker_under_load_is_reopened() {
    let _services = Services::exclusive().await;
    under_load(
        "rabbitmq close_all_connections",
        |_, _| {},
        None,
        async |_| {
            blocking(services::rabbitmq_close_all_connections).await;
        },
    )
    .await;
}

/// Points relayd's broker connections at `proxy`.
fn through(proxy: &Proxy) -> impl FnOnce(&TestDb, &mut relayd::config::Config) + '_ {
    move |_, config| {
        config.broker.url = relayd::config::Secret::new(format!("amqp://guest:guest@{}/%2f", proxy.addr));
    }
}

async fn amqp_proxy() -> Proxy {
    Proxy::start("127.0.0.1:5672".parse().unwrap()).await
}

/// How long the proxy faults last.
const PROXY_FAULT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn amqp_connections_reset_every_second_for_15s_recover_in_the_same_process() {
    let _services = Services::exclusive().await;
    let proxy = amqp_proxy().await;
    under_load(
        "proxy resets AMQP every 1 s for 15 s",
        through(&proxy),
        None,
        async |_| {
            let until = Instant::now() + PROXY_FAULT;
            while Instant::now() < until {
                proxy.reset_all();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn amqp_connections_reset_then_refused_for_15s_recover_in_the_same_process() {
    let _services = Services::exclusive().await;
    let proxy = amqp_proxy().await;
    under_load(
        "proxy resets AMQP, refuses for 15 s",
        through(&proxy),
        Some("publisher"),
        async |_| {
            proxy.set(Faults {
                refuse: true,
                ..Faults::default()
            });
            proxy.reset_all();
            tokio::time::sleep(PROXY_FAULT).await;
            proxy.heal();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn amqp_connections_blackholed_for_15s_are_detected_and_replaced() {
    let _services = Services::exclusive().await;
    let proxy = amqp_proxy().await;
    let mut opened_during = 0;
    under_load(
        "proxy blackholes AMQP for 15 s",
        through(&proxy),
        Some("publisher"),
        async |_| {
            let before = proxy.connections();
            proxy.blackhole();
            tokio::time::sleep(PROXY_FAULT).await;
            opened_during = proxy.connections() - before;
            proxy.heal();
        },
    )
    .await;
    // The silent connections were given up (heartbeats), not waited on: the publisher
    // and the consumer each tried new ones while the blackhole lasted.
    assert!(
        opened_during >= 2,
        "{opened_during} connections opened during the blackhole"
    );
}

/// The publisher's edge cases: every message the broker did not confirm stays `pending`
/// and is published once the cause is gone.
mod publisher {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn nacked_messages_stay_pending_and_are_published_when_the_queue_has_room() {
        let _services = Services::exclusive().await;
        let db = TestDb::migrated().await;
        let broker = TestBroker::new(&["sink"]);
        let sink = Sink::start(Behaviour::Succeed).await;
        let config = harness::config(&db, &broker, &sink);
        // A full queue that refuses more: the broker nacks what it cannot take.
        let policy = format!("{}-full", broker.prefix);
        let pattern = format!("^{}$", regex_escape(&broker.queue("sink")));
        services::rabbitmq_policy(
            &policy,
            &pattern,
            Some(r#"{"max-length":5,"overflow":"reject-publish"}"#),
        );
        let relay = Relayd::start(config.clone(), &[Role::Ingest, Role::Relay]).await;
        relay.wait_ready().await;
        let load = Load::start(relay.url("/webhooks/stripe"), "nack");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let answers = load.stop().await;
        let accepted = harness::accepted(&answers).len() as i64;
        // Only what the queue holds was marked queued; the nacked rest stays pending.
        // About five fit: a quorum queue enforces its length limit approximately (it
        // checks before appending, so publishes in flight at once may all get in; seen:
        // 5, 6 and 7), which is the broker's business, not relayd's.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let queued = db
            .count("SELECT count(*) FROM deliveries WHERE status = 'queued'")
            .await;
        assert_eq!(i64::from(broker.ready(&broker.queue("sink"))), queued);
        assert!(
            (5..=12).contains(&queued) && queued < accepted,
            "{queued} of {accepted} rows queued"
        );
        assert_eq!(
            db.count("SELECT count(*) FROM deliveries WHERE status = 'pending'")
                .await,
            accepted - queued
        );

        services::rabbitmq_policy(&policy, &pattern, None);
        let fault_end = Instant::now();
        let worker = Relayd::start(config, &[Role::Worker]).await;
        let outcome = settle(&sink, &answers, fault_end, Duration::from_secs(30)).await;
        report(
            "publisher nacked (queue full, reject-publish)",
            &outcome,
            &statuses(&answers),
        );
        worker.stop().await.unwrap();
        relay.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn returned_messages_of_a_deleted_queue_are_published_again_after_it_is_redeclared() {
        let _services = Services::exclusive().await;
        let queue = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let name = queue.clone();
        under_load(
            "destination queue deleted (returns)",
            move |_, config| {
                *name.lock().unwrap() = format!("{}.destination.sink", config.broker.prefix);
                // Messages that were in the deleted queue are lost by the broker: their
                // rows are `queued`, and re-published once the queue is seen empty.
                config.relay.requeue_after = Duration::from_secs(3);
            },
            None,
            async |_| {
                let queue = queue.lock().unwrap().clone();
                TestBroker::with_channel(move |channel| {
                    channel
                        .queue_delete(queue, amiquip::QueueDeleteOptions::default())
                        .expect("delete the destination queue");
                });
                // Publishes meet no queue until the publisher redeclares it.
                tokio::time::sleep(Duration::from_secs(2)).await;
            },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn confirms_held_back_past_the_confirm_timeout_leave_rows_pending_until_published() {
        let _services = Services::exclusive().await;
        let proxy = amqp_proxy().await;
        let db = TestDb::migrated().await;
        let broker = TestBroker::new(&["sink"]);
        let sink = Sink::start(Behaviour::Succeed).await;
        let config = harness::config(&db, &broker, &sink);
        // Only the publisher goes through the proxy; the worker consumes directly.
        let mut relay_config = config.clone();
        through(&proxy)(&db, &mut relay_config);
        relay_config.broker.confirm_timeout = Duration::from_secs(1);
        relay_config.broker.heartbeat = Duration::from_secs(30);
        let relay = Relayd::start(relay_config, &[Role::Ingest, Role::Relay]).await;
        let worker = Relayd::start(config, &[Role::Worker]).await;
        relay.wait_ready().await;
        worker.wait_ready().await;
        let load = Load::start(relay.url("/webhooks/stripe"), "confirm-timeout");
        load.wait_accepted(200, Duration::from_secs(20)).await;

        // The broker's answers (confirms among them) are held for 4 s.
        proxy.set(Faults {
            hold_to_client: true,
            ..Faults::default()
        });
        tokio::time::sleep(Duration::from_secs(4)).await;
        let due = db
            .count("SELECT count(*) FROM deliveries WHERE status = 'pending'")
            .await;
        proxy.heal();
        let fault_end = Instant::now();
        // About 400 events arrived while no confirm could: none of them may be queued.
        assert!(
            due >= 200,
            "{due} rows pending: rows published without a confirm must stay pending"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let answers = load.stop().await;
        let outcome = settle(&sink, &answers, fault_end, Duration::from_secs(60)).await;
        report(
            "publisher confirms held back 4 s (confirm_timeout 1 s)",
            &outcome,
            &statuses(&answers),
        );
        worker.stop().await.unwrap();
        relay.stop().await.unwrap();
    }

    fn regex_escape(name: &str) -> String {
        name.chars()
            .flat_map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    vec![c]
                } else {
                    vec!['\\', c]
                }
            })
            .collect()
    }
}
