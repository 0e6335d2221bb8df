//! Bulk replay as a job (`/admin/api/replays`) in the real binary: a dry run counts and
//! changes nothing, a job runs in pages at its `max_rate`, shows its progress, goes on
//! after its process is SIGKILLed and started again, and can be cancelled.

use std::time::{Duration, Instant};

use crate::support::child::Process;
use crate::support::sink::{Behaviour, Sink};
use crate::support::{self, TestBroker, TestDb};

const ADMIN_TOKEN: &str = "replay-jobs-admin-token-0123";

async fn admin(
    client: &reqwest::Client,
    relayd: &Process,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = client
        .request(method, relayd.ops_url(&format!("/admin/api{path}")))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

async fn job(client: &reqwest::Client, relayd: &Process, id: &str) -> serde_json::Value {
    let (status, job) = admin(
        client,
        relayd,
        reqwest::Method::GET,
        &format!("/replays/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{job}");
    job
}

#[tokio::test]
async fn a_replay_job_runs_in_pages_at_its_rate_survives_a_sigkill_and_can_be_cancelled() {
    const DEAD: i64 = 3_000;
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let base = crate::support::child::config_with_admin_token(&db, &broker, &sink, ADMIN_TOKEN);
    let file = support::temp_file(&base);
    // Ops on a fixed address, so the API stays where it was across the restart.
    let ops = crate::support::child::free_address();
    let mut relayd = Process::start_with(&file, "all", &[("RELAYD__OPS__LISTEN", ops.as_str())]);
    relayd.wait_ready().await;
    db.seed_deliveries(DEAD as usize, "sink", "dead", "0 seconds", None)
        .await;
    let client = reqwest::Client::new();
    let dead = "SELECT count(*) FROM deliveries WHERE status = 'dead'";

    // Refused: no filter, a rate out of range, a status that is never replayed.
    for (body, expected) in [
        (serde_json::json!({}), "an empty filter"),
        (serde_json::json!({"status": "dead", "max_rate": 0}), "max_rate"),
        (serde_json::json!({"status": "pending"}), "cannot be replayed"),
        (
            serde_json::json!({"status": "dead", "destnation": "sink"}),
            "unknown field `destnation`",
        ),
    ] {
        let (status, answer) = admin(&client, &relayd, reqwest::Method::POST, "/replays", Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"], "bad_request");
        assert!(answer["message"].as_str().unwrap().contains(expected), "{answer}");
    }

    // A dry run counts and changes nothing.
    let (status, answer) = admin(
        &client,
        &relayd,
        reqwest::Method::POST,
        "/replays",
        Some(serde_json::json!({"status": "dead", "destination": "sink", "dry_run": true})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["matching"], DEAD);
    assert_eq!(db.count(dead).await, DEAD);
    let (_, jobs) = admin(&client, &relayd, reqwest::Method::GET, "/replays", None).await;
    assert_eq!(jobs["items"], serde_json::json!([]));

    // A job at 500/s: pages of 500 a second apart, its progress shown as it goes.
    let (status, created) = admin(
        &client,
        &relayd,
        reqwest::Method::POST,
        "/replays",
        Some(serde_json::json!({"status": "dead", "destination": "sink", "max_rate": 500})),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["status"], "running");
    assert_eq!(created["matching"], DEAD);
    let id = created["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let now = job(&client, &relayd, &id).await;
        let replayed = now["replayed"].as_i64().unwrap();
        seen.push((started.elapsed(), replayed, now["progress"].as_f64().unwrap()));
        if replayed >= 1_000 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (elapsed, replayed, progress) = *seen.last().unwrap();
    // 1,000 at 500/s takes at least one pause between pages.
    assert!(
        elapsed >= Duration::from_millis(900),
        "faster than max_rate: {seen:?}"
    );
    assert!(progress > 0.0 && progress < 1.0, "{seen:?}");
    assert!(replayed < DEAD, "{seen:?}");

    // SIGKILL mid-job; the next process goes on from the job's cursor.
    relayd.kill9();
    let before_restart = job_from_db(&db, &id).await;
    assert!(before_restart < DEAD, "done before the kill: {before_restart}");
    relayd.restart();
    relayd.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let now = job(&client, &relayd, &id).await;
        if now["status"] == "done" {
            break now;
        }
        assert!(Instant::now() < deadline, "{now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(finished["replayed"], DEAD, "{finished}");
    assert_eq!(finished["progress"], 1.0);
    assert!(finished["finished_at"].is_string());
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        DEAD,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(db.count(dead).await, 0);

    // Cancelled: it stops after the page in hand, and what it replayed stays replayed.
    let (status, slow) = admin(
        &client,
        &relayd,
        reqwest::Method::POST,
        "/replays",
        Some(serde_json::json!({"status": "delivered", "max_rate": 100})),
    )
    .await;
    assert_eq!(status, 202, "{slow}");
    let slow_id = slow["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, cancelled) = admin(
        &client,
        &relayd,
        reqwest::Method::POST,
        &format!("/replays/{slow_id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let at_cancel = cancelled["replayed"].as_i64().unwrap();
    assert!((100..DEAD).contains(&at_cancel), "{cancelled}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(job(&client, &relayd, &slow_id).await["replayed"], at_cancel);

    // A job that has ended cannot be cancelled; an unknown one is not found.
    let (status, answer) = admin(
        &client,
        &relayd,
        reqwest::Method::POST,
        &format!("/replays/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    let (status, _) = admin(
        &client,
        &relayd,
        reqwest::Method::GET,
        &format!("/replays/{}", uuid::Uuid::now_v7()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, jobs) = admin(&client, &relayd, reqwest::Method::GET, "/replays", None).await;
    let listed: Vec<&str> = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [slow_id.as_str(), id.as_str()], "newest first");
    assert!(relayd.terminate().success());
}

/// The job's `replayed` as stored (the process that worked it is gone).
async fn job_from_db(db: &TestDb, id: &str) -> i64 {
    db.count(&format!("SELECT replayed FROM replay_jobs WHERE id = '{id}'"))
        .await
}

#[tokio::test]
async fn relayd_replay_with_max_rate_works_its_job_at_that_pace_and_prints_progress() {
    let db = TestDb::migrated().await;
    db.seed_deliveries(300, "billing", "dead", "-1 second", None)
        .await;
    let config = support::temp_file(&format!("[database]\nurl = \"{}\"\n", db.url));
    let started = Instant::now();
    let output = std::process::Command::new(support::relayd_binary())
        .args(["replay", "--status", "dead", "--max-rate", "100", "--config"])
        .arg(&config.0)
        .output()
        .unwrap();
    let took = started.elapsed();
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{progress}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "replayed 300 deliveries"
    );
    // Pages of 100, a second apart: three pages take two pauses at least.
    assert!(took >= Duration::from_secs(2), "{took:?}: faster than --max-rate");
    for line in [
        "replayed 100 of 300 (33 %)",
        "replayed 200 of 300 (67 %)",
        "replayed 300 of 300 (100 %)",
    ] {
        assert!(progress.contains(line), "{line:?} not in {progress}");
    }
    db.assert_count(
        "SELECT count(*) FROM deliveries WHERE status = 'pending'",
        300,
        "",
    )
    .await;
}
