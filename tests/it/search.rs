//! Search by payload through the real binary and the admin API: `match` (containment,
//! the body's GIN index) and `where` (the payload-filter language) combined with source,
//! type and a time range; bodies that are not JSON (or hold `\u0000`, which `jsonb`
//! cannot) are stored, answered 200 and found by provider id only, as the answer says;
//! malformed terms are 400 with their position; a search that runs into the statement
//! timeout is 503 with how to narrow it, and gives its connection back.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::child::{config_with_admin_token, Process};
use crate::support::sink::{Behaviour, Sink};
use crate::support::{self, post_stripe, TestBroker, TestDb};

const ADMIN_TOKEN: &str = "search-admin-token-0123456789";

pub fn invoice(id: &str, event_type: &str, customer: &str, amount: i64) -> Vec<u8> {
    serde_json::json!({
        "id": id, "object": "event", "type": event_type,
        "data": { "object": { "customer": customer, "amount_paid": amount, "note": "plain" } },
    })
    .to_string()
    .into_bytes()
}

/// `config` (a child's configuration text) with its Stripe source `searchable`.
pub fn searchable(config: String) -> String {
    let stripe = "name = \"stripe\"\nkind = \"stripe\"\n";
    assert!(config.contains(stripe));
    config.replace(stripe, &format!("{stripe}searchable = true\n"))
}

/// The admin API at `relayd`, authorized.
pub struct Admin {
    pub client: reqwest::Client,
    pub base: String,
}

impl Admin {
    pub fn of(relayd: &Process) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: relayd.ops_url(""),
        }
    }

    /// `GET path?params` answered: its status and JSON.
    pub async fn get(&self, path: &str, params: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let url = url::Url::parse_with_params(&format!("{}{path}", self.base), params).unwrap();
        let response = self
            .client
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// The provider ids of the events a search finds (its first page), and the answer.
    pub async fn found(&self, params: &[(&str, &str)]) -> (BTreeSet<String>, serde_json::Value) {
        let (status, page) = self.get("/admin/api/events", params).await;
        assert_eq!(status, 200, "{params:?}: {page}");
        let ids = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["event_id"].as_str().unwrap().to_string())
            .collect();
        (ids, page)
    }
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_finds_events_by_payload_type_and_time_and_says_what_it_cannot_search() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let config = searchable(config_with_admin_token(&db, &broker, &sink, ADMIN_TOKEN))
        .replace("[database]\n", "[database]\nquery_timeout = \"2s\"\n")
        + "[[sources]]\nname = \"plain\"\nkind = \"none\"\nid_header = \"x-id\"\ntype_header = \"x-type\"\n";
    let file = support::temp_file(&config);
    let relayd = Process::start(&file, "all");
    relayd.wait_ready().await;
    let admin = Admin::of(&relayd);
    let url = format!("http://{}/webhooks/stripe", relayd.ingest.as_ref().unwrap());

    let events = [
        ("evt_a", invoice("evt_a", "invoice.paid", "cus_123", 5000)),
        ("evt_b", invoice("evt_b", "invoice.paid", "cus_999", 5000)),
        ("evt_c", invoice("evt_c", "invoice.created", "cus_123", 10)),
        // Valid JSON that jsonb refuses: stored and delivered, not searchable by body.
        (
            "evt_nul",
            br#"{"id":"evt_nul","object":"event","type":"invoice.paid","data":{"object":{"customer":"cus_123","note":"a\u0000b"}}}"#.to_vec(),
        ),
    ];
    for (id, body) in &events {
        let response = post_stripe(&admin.client, &url, body).await;
        assert_eq!(response.status(), 200, "{id}");
        // Apart in time, for the time range below.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let plain_url = format!("http://{}/webhooks/plain", relayd.ingest.as_ref().unwrap());
    let post_plain = async |id: &str, event_type: &str, content_type: &str, body: Vec<u8>| {
        let response = admin
            .client
            .post(&plain_url)
            .header("x-id", id)
            .header("x-type", event_type)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{id}");
    };
    post_plain("plain_1", "note", "text/plain", b"customer cus_123 paid".to_vec()).await;
    // JSON, but from a source without `searchable`: found by its fields only.
    post_plain(
        "plain_json",
        "invoice.paid",
        "application/json",
        invoice("plain_json", "invoice.paid", "cus_123", 5000),
    )
    .await;
    let ids: Vec<&str> = events
        .iter()
        .map(|(id, _)| *id)
        .chain(["plain_1", "plain_json"])
        .collect();
    sink.wait_for_events(
        &ids.iter().map(|id| id.to_string()).collect(),
        Duration::from_secs(30),
    )
    .await;

    // Containment: through the index; the event that jsonb cannot hold, and the text
    // body, are not among the finds, and the answer says why.
    let customer = r#"{"data":{"object":{"customer":"cus_123"}}}"#;
    let (found, page) = admin.found(&[("match", customer)]).await;
    assert_eq!(found, set(&["evt_a", "evt_c"]), "{page}");
    assert!(
        page["not_searched"].as_str().unwrap().contains("not JSON"),
        "{page}"
    );
    assert_eq!(page["complete"], true, "{page}");
    // With the event's own fields.
    let (found, page) = admin
        .found(&[
            ("match", customer),
            ("event_type", "invoice.paid"),
            ("source", "stripe"),
        ])
        .await;
    assert_eq!(found, set(&["evt_a"]), "{page}");
    // The filter language, with a comparison the index cannot answer.
    let (found, page) = admin
        .found(&[(
            "where",
            r#"body.data.object.amount_paid >= 1000 && event_type == "invoice.paid""#,
        )])
        .await;
    assert_eq!(found, set(&["evt_a", "evt_b"]), "{page}");
    let (found, _) = admin
        .found(&[("where", r#"body.data.object.customer.startsWith("cus_9")"#)])
        .await;
    assert_eq!(found, set(&["evt_b"]));
    // A time range: `since` is inclusive, `until` exclusive.
    let (_, b) = admin.found(&[("q", "evt_b")]).await;
    let b_at = b["items"][0]["received_at"].as_str().unwrap().to_string();
    let (found, _) = admin.found(&[("match", customer), ("since", &b_at)]).await;
    assert_eq!(found, set(&["evt_c"]));
    let (found, _) = admin.found(&[("match", customer), ("until", &b_at)]).await;
    assert_eq!(found, set(&["evt_a"]));
    let (found, _) = admin
        .found(&[
            ("where", r#"body.data.object.amount_paid == 5000"#),
            ("since", &b_at),
        ])
        .await;
    assert_eq!(found, set(&["evt_b"]));
    // Pages of a `where` search follow each other with the cursor.
    let (first, page) = admin
        .found(&[("where", "body.data.object.amount_paid > 0"), ("limit", "2")])
        .await;
    assert_eq!(first, set(&["evt_b", "evt_c"]), "newest first: {page}");
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (rest, page) = admin
        .found(&[
            ("where", "body.data.object.amount_paid > 0"),
            ("limit", "2"),
            ("before", &cursor),
        ])
        .await;
    assert_eq!(rest, set(&["evt_a"]), "{page}");
    assert!(page["next_cursor"].is_null(), "{page}");
    // Bodies that cannot be searched are found by provider id, and say so.
    for id in ["plain_1", "evt_nul", "plain_json"] {
        let (found, page) = admin.found(&[("q", id)]).await;
        assert_eq!(found, set(&[id]));
        assert_eq!(page["items"][0]["body_searchable"], false, "{page}");
    }
    let (found, _) = admin
        .found(&[("where", r#"body.note == "x" || source == "plain""#)])
        .await;
    assert_eq!(
        found,
        set(&["plain_1", "plain_json"]),
        "a where that does not read body still finds them"
    );

    // Bad input: 400 naming the place.
    for (params, expected) in [
        (
            vec![("match", r#"{"data": }"#)],
            "match is not JSON: line 1, column 10",
        ),
        (vec![("where", "body.amount >")], "where: line 1, column 14"),
        (vec![("where", "amount > 1")], "unknown variable `amount`"),
        (vec![("since", "yesterday")], "since"),
        (vec![("matches", "{}")], "matches"),
    ] {
        let (status, answer) = admin.get("/admin/api/events", &params).await;
        assert_eq!(status, 400, "{params:?}: {answer}");
        assert_eq!(answer["error"], "bad_request", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(expected),
            "{params:?}: {answer}"
        );
    }

    // A search that cannot finish in the statement timeout (here: the table is locked)
    // is 503 with a reason, in about that time, and relayd goes on answering.
    let mut locker = db.connect().await;
    use diesel_async::RunQueryDsl;
    diesel::sql_query("BEGIN").execute(&mut locker).await.unwrap();
    diesel::sql_query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, answer) = admin.get("/admin/api/events", &[("match", customer)]).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "search_too_broad", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("narrow it"),
        "{answer}"
    );
    assert!(
        took < Duration::from_secs(10),
        "bounded by the 2 s statement timeout: {took:?}"
    );
    diesel::sql_query("ROLLBACK").execute(&mut locker).await.unwrap();
    let (found, _) = admin.found(&[("match", customer)]).await;
    assert_eq!(
        found,
        set(&["evt_a", "evt_c"]),
        "answering again once the lock is gone"
    );
}

/// `POST` a JSON body to the admin API: its status and JSON.
async fn admin_post(admin: &Admin, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = admin
        .client
        .post(format!("{}{path}", admin.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_of_a_search_resends_what_matched_and_nothing_else() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let config = searchable(config_with_admin_token(&db, &broker, &sink, ADMIN_TOKEN));
    let file = support::temp_file(&config);
    let relayd = Process::start(&file, "all");
    relayd.wait_ready().await;
    let admin = Admin::of(&relayd);
    let url = format!("http://{}/webhooks/stripe", relayd.ingest.as_ref().unwrap());
    let events = [
        invoice("evt_r1", "invoice.paid", "cus_123", 5000),
        invoice("evt_r2", "invoice.paid", "cus_123", 7000),
        invoice("evt_r3", "invoice.paid", "cus_123", 10),
        invoice("evt_r4", "invoice.paid", "cus_999", 5000),
        invoice("evt_r5", "invoice.finalized", "cus_123", 5000),
        invoice("evt_r6", "charge.succeeded", "cus_123", 5000),
    ];
    for body in &events {
        assert_eq!(post_stripe(&admin.client, &url, body).await.status(), 200);
    }
    let all: std::collections::HashSet<String> = (1..=6).map(|i| format!("evt_r{i}")).collect();
    sink.wait_for_events(&all, Duration::from_secs(30)).await;
    db.assert_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        6,
        "every event delivered before the replay",
    )
    .await;
    let first_ids: std::collections::HashMap<String, String> = sink
        .received()
        .iter()
        .map(|r| (r.event_id(), r.webhook_id()))
        .collect();

    let search = serde_json::json!({
        "status": "delivered",
        "event_type": "invoice.*",
        "match": r#"{"data":{"object":{"customer":"cus_123"}}}"#,
        "where": "body.data.object.amount_paid >= 1000",
    });
    // Counted first; nothing changes.
    let mut dry = search.clone();
    dry["dry_run"] = true.into();
    let (status, counted) = admin_post(&admin, "/admin/api/replays", dry).await;
    assert_eq!(status, 200, "{counted}");
    assert_eq!(counted["matching"], 3, "r1, r2 and r5: {counted}");
    assert_eq!(counted["complete"], true, "{counted}");
    // Bad terms: 400 naming the position, and no job.
    let mut bad = search.clone();
    bad["where"] = "body.data.object.amount_paid >=".into();
    let (status, refused) = admin_post(&admin, "/admin/api/replays", bad).await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("where: line 1, column"),
        "{refused}"
    );
    db.assert_count(
        "SELECT count(*) FROM replay_jobs",
        0,
        "a refused replay makes no job",
    )
    .await;

    let (status, job) = admin_post(&admin, "/admin/api/replays", search).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["matching"], 3, "{job}");
    assert_eq!(
        job["filter"]["where"], "body.data.object.amount_paid >= 1000",
        "{job}"
    );
    let id = job["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, job) = admin.get(&format!("/admin/api/replays/{id}"), &[]).await;
        if job["status"] == "done" {
            assert_eq!(job["replayed"], 3, "{job}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sink.wait_for(9, Duration::from_secs(30)).await;
    // Settled: no more than the three come again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut times: std::collections::BTreeMap<String, usize> = Default::default();
    for received in sink.received() {
        *times.entry(received.event_id()).or_default() += 1;
        assert_eq!(
            first_ids[&received.event_id()],
            received.webhook_id(),
            "a replay keeps the webhook-id"
        );
    }
    let expected: std::collections::BTreeMap<String, usize> = (1..=6)
        .map(|i| (format!("evt_r{i}"), if [1, 2, 5].contains(&i) { 2 } else { 1 }))
        .collect();
    assert_eq!(times, expected);

    // `relayd replay` takes the same search.
    let cli_config = support::temp_file(&format!("[database]\nurl = \"{}\"\n", db.url));
    let output = std::process::Command::new(support::relayd_binary())
        .args([
            "replay",
            "--status",
            "delivered",
            "--event-type",
            "invoice.paid",
            "--match",
            r#"{"data":{"object":{"customer":"cus_123"}}}"#,
            "--where",
            "body.data.object.amount_paid < 1000",
            "--dry-run",
            "--config",
        ])
        .arg(&cli_config.0)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "1 deliveries match; nothing was replayed (dry run)",
        "only evt_r3"
    );
    let output = std::process::Command::new(support::relayd_binary())
        .args(["replay", "--match", "{\"data\": ", "--config"])
        .arg(&cli_config.0)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("match is not JSON: line 1"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
