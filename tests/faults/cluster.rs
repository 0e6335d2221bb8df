//! A RabbitMQ cluster of the test's own — three nodes joined with `join_cluster`,
//! quorum queues replicated on all three, the machine's own node not in it — losing the
//! node that relayd's publisher and consumers are connected to, under load: stopped
//! with `stop_app` in one test, its VM SIGKILLed in the other. relayd is given all three
//! URLs (`broker.urls`). Delivery must go on over the other nodes within 10 s, the node
//! rejoins, and every accepted event reaches the sink (duplicates only with the same
//! `webhook-id`).

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relayd::config::Secret;

use crate::harness::under_load;
use crate::services::{blocking, Services};
use crate::support::nodes::RabbitCluster;
use crate::support::TestDb;

/// How long the lost node stays away while the load goes on.
const NODE_DOWN: Duration = Duration::from_secs(15);

/// The cluster node that holds most of the cluster's client connections (relayd's: a
/// process starts all its connections at one node), asked of the broker itself.
fn node_with_the_connections(cluster: &RabbitCluster) -> usize {
    let output = Command::new("rabbitmqctl")
        .args(["-n", &cluster.nodes[0].node, "-q", "list_connections", "port"])
        .output()
        .expect("run rabbitmqctl");
    let text = String::from_utf8_lossy(&output.stdout);
    let counts: Vec<usize> = cluster
        .ports
        .iter()
        .map(|port| text.lines().filter(|l| l.trim() == port.to_string()).count())
        .collect();
    assert!(counts.iter().sum::<usize>() > 0, "no client connections: {text}");
    (0..counts.len()).max_by_key(|&i| counts[i]).unwrap()
}

/// Seconds since the epoch, as PostgreSQL's `to_timestamp` takes them.
fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until an event received after `since` (epoch seconds) has been delivered, and
/// returns how long that took from `start`.
async fn first_new_delivery(db: &TestDb, since: f64, start: Instant) -> Duration {
    let sql = format!(
        "SELECT count(*) FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.status = 'delivered' AND e.received_at > to_timestamp({since})"
    );
    loop {
        if db.count(&sql).await > 0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no event received after the node was lost has been delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn lose_a_node(name: &str, kill: bool) {
    let _services = Services::exclusive().await;
    let cluster = std::sync::Arc::new(blocking(RabbitCluster::start).await);
    let urls = cluster.urls();
    let mut lost_node = String::new();
    let mut delivering_again = Duration::ZERO;
    let run = under_load(
        name,
        |_, config| config.broker.urls = urls.iter().map(Secret::new).collect(),
        None,
        async |db| {
            let down = {
                let cluster = cluster.clone();
                blocking(move || node_with_the_connections(&cluster)).await
            };
            lost_node = format!("127.0.0.1:{}", cluster.ports[down]);
            let since = epoch_now();
            let start = Instant::now();
            {
                let cluster = cluster.clone();
                blocking(move || {
                    if kill {
                        cluster.nodes[down].kill9();
                    } else {
                        cluster.nodes[down].ctl(&["stop_app"]);
                    }
                })
                .await;
            }
            delivering_again = first_new_delivery(db, since, start).await;
            tokio::time::sleep(NODE_DOWN.saturating_sub(start.elapsed())).await;
            // The node comes back and rejoins its cluster.
            let cluster = cluster.clone();
            blocking(move || {
                let node = &cluster.nodes[down];
                if kill {
                    node.launch();
                } else {
                    node.ctl(&["start_app"]);
                    node.await_startup();
                }
            })
            .await;
        },
    )
    .await;
    eprintln!(
        "{name}: node {lost_node} lost; an event received after that was delivered {:.1} s later",
        delivering_again.as_secs_f64()
    );
    assert!(
        delivering_again < Duration::from_secs(10),
        "delivery resumed only after {delivering_again:?}"
    );
    // The readiness probe named the node each connection was on: on the lost one
    // before, on another one after.
    let publisher_node = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body).ok()?["broker_nodes"]["publisher"]
            .as_str()
            .map(String::from)
    };
    let first = run.readings.first().and_then(|r| publisher_node(&r.readyz_body));
    let last = run.readings.last().and_then(|r| publisher_node(&r.readyz_body));
    assert_eq!(first.as_deref(), Some(lost_node.as_str()), "before the loss");
    assert!(
        last.as_ref().is_some_and(|node| *node != lost_node),
        "after the loss the publisher is on another node: {last:?}"
    );
    // Every node is a running member again.
    let status = Command::new("rabbitmqctl")
        .args([
            "-n",
            &cluster.nodes[0].node,
            "cluster_status",
            "--formatter",
            "json",
        ])
        .output()
        .expect("run rabbitmqctl");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    assert_eq!(
        status["running_nodes"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_node_stopped_under_load_delivery_goes_on_over_the_others() {
    lose_a_node("RabbitMQ cluster: the connected node stopped (stop_app)", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_node_sigkilled_under_load_delivery_goes_on_over_the_others() {
    lose_a_node("RabbitMQ cluster: the connected node SIGKILLed", true).await;
}
