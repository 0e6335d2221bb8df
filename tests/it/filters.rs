//! Payload filters on destinations, through the real binary: a destination with a
//! three-clause CEL filter gets only the events it passes (no outbox row for the rest),
//! the event keeps which filter refused it and why (the admin API shows it), a filter
//! that cannot be evaluated counts in `relayd_filter_errors_total`, and a reload changes
//! the filter for new events — or is refused, naming the destination and the position.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::child::{config_with_admin_token, Process};
use crate::support::sink::{Behaviour, Sink};
use crate::support::{self, post_stripe, TestBroker, TestDb};

const ADMIN_TOKEN: &str = "filters-admin-token-0123456789";

fn invoice(id: &str, event_type: &str, amount: Option<i64>, livemode: bool) -> Vec<u8> {
    let mut object = serde_json::json!({ "id": format!("in_{id}"), "customer": "cus_123" });
    if let Some(amount) = amount {
        object["amount_paid"] = amount.into();
    }
    serde_json::json!({ "id": id, "object": "event", "type": event_type, "livemode": livemode, "data": { "object": object } })
        .to_string()
        .into_bytes()
}

fn with_live(base: &str, live_url: &str, filter: &str) -> String {
    format!(
        "{base}\n[[destinations]]\nname = \"live\"\nurl = \"{live_url}\"\nsigning_secret = \"{}\"\n\
         event_types = [\"invoice.*\"]\nfilter = '''{filter}'''\n",
        support::DESTINATION_SECRET
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filtered_destination_gets_only_what_its_filter_passes_and_the_event_says_why() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink", "live"]);
    let all = Sink::start(Behaviour::Succeed).await;
    let live = Sink::start(Behaviour::Succeed).await;
    let base = config_with_admin_token(&db, &broker, &all, ADMIN_TOKEN);
    let filter = r#"event_type == "invoice.paid" && body.data.object.amount_paid > 1000 && body.livemode"#;
    let file = support::temp_file(&with_live(&base, &live.url, filter));
    let relayd = Process::start(&file, "all");
    relayd.wait_ready().await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/webhooks/stripe", relayd.ingest.as_ref().unwrap());
    let post = |body: Vec<u8>| {
        let (client, url) = (client.clone(), url.clone());
        async move { post_stripe(&client, &url, &body).await.status().as_u16() }
    };

    let events = [
        (
            "evt_big_live",
            invoice("evt_big_live", "invoice.paid", Some(5000), true),
        ),
        ("evt_small", invoice("evt_small", "invoice.paid", Some(10), true)),
        (
            "evt_test_mode",
            invoice("evt_test_mode", "invoice.paid", Some(5000), false),
        ),
        (
            "evt_no_amount",
            invoice("evt_no_amount", "invoice.paid", None, true),
        ),
        (
            "evt_created",
            invoice("evt_created", "invoice.created", Some(5000), true),
        ),
    ];
    for (id, body) in &events {
        assert_eq!(post(body.clone()).await, 200, "{id}");
    }
    let every: HashSet<String> = events.iter().map(|(id, _)| id.to_string()).collect();
    all.wait_for_events(&every, Duration::from_secs(30)).await;
    live.wait_for_events(
        &HashSet::from(["evt_big_live".to_string()]),
        Duration::from_secs(30),
    )
    .await;
    db.assert_count(
        "SELECT count(*) FROM deliveries WHERE destination = 'live'",
        1,
        "a filtered-out destination gets no outbox row",
    )
    .await;
    db.assert_count(
        "SELECT count(*) FROM events WHERE filtered = '{\"live\": \"no match\"}' \
         AND event_id IN ('evt_small', 'evt_test_mode', 'evt_created')",
        3,
        "the filter said no (invoice.created: the event_type clause)",
    )
    .await;
    db.assert_count(
        "SELECT count(*) FROM events WHERE event_id = 'evt_no_amount' \
         AND filtered->>'live' LIKE 'error: %amount_paid%'",
        1,
        "a missing field is no match, with the evaluation's error",
    )
    .await;
    db.assert_count(
        "SELECT count(*) FROM events WHERE filtered IS NULL AND event_id = 'evt_big_live'",
        1,
        "nothing written when no filter refused",
    )
    .await;

    let admin = |path: String| {
        let client = client.clone();
        let url = relayd.ops_url(&path);
        async move {
            let response = client.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let page = admin("/admin/api/events?q=evt_small".into()).await;
    let item = &page["items"][0];
    assert_eq!(
        item["filtered"],
        serde_json::json!({"live": "no match"}),
        "{page}"
    );
    assert_eq!(item["deliveries"][0]["destination"], "sink", "{page}");
    let detail = admin(format!("/admin/api/events/{}", item["id"].as_str().unwrap())).await;
    assert_eq!(
        detail["filtered"],
        serde_json::json!({"live": "no match"}),
        "{detail}"
    );
    let metrics = client
        .get(relayd.ops_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "relayd_filter_errors_total{destination=\"live\"} 1",
        "relayd_filtered_total{destination=\"live\"} 4",
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }

    // A reload puts a new filter in force for new events; a broken one is refused with
    // its place, and the running one stays.
    let reload = |text: String| {
        std::fs::write(&file.0, text).unwrap();
        let client = client.clone();
        let url = relayd.ops_url("/admin/api/reload");
        async move {
            let response = client.post(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, answer) = reload(with_live(&base, &live.url, "body.data.object.amount_paid < 100")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        post(invoice("evt_small_2", "invoice.paid", Some(10), true)).await,
        200
    );
    live.wait_for_events(
        &HashSet::from(["evt_small_2".to_string()]),
        Duration::from_secs(30),
    )
    .await;
    let (status, answer) = reload(with_live(&base, &live.url, "body.data.object.amount_paid <")).await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("destinations[1].filter: line 1, column 31"),
        "{answer}"
    );
    assert_eq!(
        post(invoice("evt_small_3", "invoice.paid", Some(10), true)).await,
        200
    );
    live.wait_for_events(
        &HashSet::from(["evt_small_3".to_string()]),
        Duration::from_secs(30),
    )
    .await;
}
