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
    let config = config_with_admin_token(&db, &broker, &sink, ADMIN_TOKEN)
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
    let plain = admin
        .client
        .post(format!(
            "http://{}/webhooks/plain",
            relayd.ingest.as_ref().unwrap()
        ))
        .header("x-id", "plain_1")
        .header("x-type", "note")
        .header("content-type", "text/plain")
        .body("customer cus_123 paid")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    let ids: Vec<&str> = events.iter().map(|(id, _)| *id).chain(["plain_1"]).collect();
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
    for id in ["plain_1", "evt_nul"] {
        let (found, page) = admin.found(&[("q", id)]).await;
        assert_eq!(found, set(&[id]));
        assert_eq!(page["items"][0]["body_searchable"], false, "{page}");
    }
    let (found, _) = admin
        .found(&[("where", r#"body.note == "x" || source == "plain""#)])
        .await;
    assert_eq!(
        found,
        set(&["plain_1"]),
        "a where that does not read body still finds it"
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
