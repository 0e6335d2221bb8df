//! The shipped monitoring: the alert rules (`deploy/prometheus/`) and the Grafana
//! dashboard (`deploy/grafana/relayd.json`) query only series relayd exports, and a
//! real Prometheus (Debian's `prometheus` package, installed on first need) scrapes a
//! real relayd with the shipped scrape config and rules: a relayd metric comes back
//! through its HTTP API, and a destination disabled by 410 Gone raises the shipped
//! alert. `RELAYD_SKIP_PROMETHEUS=1` opts out of the latter explicitly on a machine
//! without Prometheus. (`promtool test rules` in `.ci/run` holds each alert's firing
//! condition.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relayd::context::Role;
use serde_json::Value;

use crate::ops::{config, to_sink};
use crate::support::sink::{Behaviour, Sink};
use crate::support::{self, Relayd, TestBroker, TestDb};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

/// Every series name in a text exposition, from its `# TYPE` lines (so families with
/// no sample yet count): a counter `x` is `x_total`, a histogram `x_bucket`, `x_sum`,
/// `x_count`.
fn exported_series(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .flat_map(|line| {
            let mut words = line.split_whitespace();
            let (name, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            match kind {
                "counter" => vec![format!("{name}_total")],
                "histogram" => ["bucket", "sum", "count"]
                    .iter()
                    .map(|suffix| format!("{name}_{suffix}"))
                    .collect(),
                _ => vec![name.to_string()],
            }
        })
        .collect()
}

/// Every `relayd_…` name mentioned in `text`.
fn mentioned_series(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("relayd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

async fn metrics_of(relayd: &Relayd) -> String {
    reqwest::get(relayd.ops_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn shipped_alerts_and_dashboard_query_only_series_relayd_exports() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    // Ordered, so that its ordering series exist too.
    let destination = relayd::config::DestinationConfig {
        ordering: Some(relayd::config::OrderingConfig {
            key: Some("/data/object/customer".into()),
            key_header: None,
            on_dead: Default::default(),
        }),
        ..to_sink("sink", &sink)
    };
    let relayd = Relayd::start(config(&db, &broker, vec![destination]), Role::ALL).await;
    relayd.wait_ready().await;
    let exported = exported_series(&metrics_of(&relayd).await);
    assert!(exported.contains("relayd_ready"), "{exported:?}");

    let rules = std::fs::read_to_string(deploy("prometheus/relayd-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(deploy("grafana/relayd.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 15, "{} dashboard queries", exprs.len());
    for (file, text) in [("relayd-alerts.yml", rules), ("relayd.json", exprs.join("\n"))] {
        let unknown: Vec<String> = mentioned_series(&text).difference(&exported).cloned().collect();
        assert!(
            unknown.is_empty(),
            "{file} queries series relayd does not export: {unknown:?}"
        );
    }
    relayd.stop().await.unwrap();
}

/// A Prometheus server in a directory of its own, killed and removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    /// Starts Prometheus with the shipped scrape config (its target set to `ops`, every
    /// interval 1 s) and the shipped rules.
    async fn start(ops: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("relayd-it-prometheus-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
        assert!(shipped.contains("\"127.0.0.1:9090\"") && shipped.contains("15s"));
        let scrape = shipped
            .replace("\"127.0.0.1:9090\"", &format!("\"{ops}\""))
            .replace("15s", "1s");
        std::fs::write(dir.join("prometheus.yml"), scrape).unwrap();
        std::fs::copy(
            deploy("prometheus/relayd-alerts.yml"),
            dir.join("relayd-alerts.yml"),
        )
        .unwrap();
        crate::support::tools::provision();
        let listen = crate::support::child::free_address();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (Debian's package `prometheus`; RELAYD_SKIP_PROMETHEUS=1 opts out)");
        let prometheus = Self {
            child,
            dir,
            url: format!("http://{listen}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/-/ready", prometheus.url))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "prometheus not ready within 30s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    async fn api(&self, path: &str) -> Value {
        let answer: Value = reqwest::get(format!("{}/api/v1/{path}", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{path}: {answer}");
        answer["data"].clone()
    }

    /// Polls `path` until `found` picks something out of its data (panics after 30 s).
    async fn wait_for<T>(&self, path: &str, what: &str, found: impl Fn(&Value) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let data = self.api(path).await;
            if let Some(value) = found(&data) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within 30s; last {path}: {data}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_relayd_and_raises_the_shipped_alert() {
    if std::env::var("RELAYD_SKIP_PROMETHEUS").is_ok_and(|v| v == "1") {
        eprintln!("RELAYD_SKIP_PROMETHEUS=1: the Prometheus test is skipped");
        return;
    }
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["gone"]);
    let sink = Sink::start(Behaviour::AlwaysFail { status: 410 }).await;
    let relayd = Relayd::start(config(&db, &broker, vec![to_sink("gone", &sink)]), Role::ALL).await;
    relayd.wait_ready().await;
    let prometheus = Prometheus::start(&relayd.ops.to_string()).await;

    // A relayd series, through Prometheus' query API, with the scrape job's labels.
    let ready = prometheus
        .wait_for("query?query=relayd_ready", "relayd_ready scraped", |data| {
            data["result"].as_array().and_then(|r| r.first()).cloned()
        })
        .await;
    assert_eq!(ready["metric"]["job"], "relayd", "{ready}");
    assert_eq!(ready["value"][1], "1", "{ready}");

    // Every shipped rule loaded and evaluates without error against real series.
    let rules = prometheus
        .wait_for("rules", "the rules evaluated", |data| {
            let rules: Vec<Value> = data["groups"][0]["rules"].as_array()?.clone();
            rules
                .iter()
                .all(|r| {
                    r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
                })
                .then_some(rules)
        })
        .await;
    assert_eq!(rules.len(), 9, "{rules:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // 410 Gone disables the destination: the shipped alert goes pending (then firing).
    let body = support::stripe_event("evt_prometheus_gone", "invoice.paid");
    let answer = support::post_stripe(&reqwest::Client::new(), &relayd.url("/webhooks/stripe"), &body).await;
    assert_eq!(answer.status(), 200);
    let alert = prometheus
        .wait_for("alerts", "RelaydDestinationDisabled raised", |data| {
            data["alerts"]
                .as_array()?
                .iter()
                .find(|a| a["labels"]["alertname"] == "RelaydDestinationDisabled")
                .cloned()
        })
        .await;
    assert_eq!(alert["labels"]["destination"], "gone", "{alert}");
    assert!(
        alert["state"] == "pending" || alert["state"] == "firing",
        "{alert}"
    );
    drop(prometheus);
    relayd.stop().await.unwrap();
}
