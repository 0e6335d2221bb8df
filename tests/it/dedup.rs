//! A source's dedup rule over HTTP: a resend of one change under a new id answers
//! `200 duplicate` with the first event's id and stores nothing, concurrent arrivals
//! with one key store exactly one event (PostgreSQL decides), a changed value or a
//! lacking field is a new event, an expired window lets the key be claimed again, and
//! retention drops expired keys.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use relayd::config::{DedupConfig, RetentionConfig};
use relayd::retention::{self, Kind};
use tokio_util::sync::CancellationToken;

use crate::support::{self, post_stripe, Relayd, TestDb};

fn change(id: &str, customer: &str, updated_at: Option<i64>) -> Vec<u8> {
    let mut object = serde_json::json!({ "id": customer, "email": format!("{id}@example.com") });
    if let Some(updated_at) = updated_at {
        object["updated_at"] = updated_at.into();
    }
    serde_json::json!({ "id": id, "object": "event", "type": "customer.updated", "data": { "object": object } })
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resent_change_under_a_new_id_is_a_duplicate_within_the_window_even_concurrently() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.sources[0].dedup = Some(DedupConfig {
        key: vec![
            "/type".into(),
            "/data/object/id".into(),
            "/data/object/updated_at".into(),
        ],
        window: Duration::from_secs(600),
    });
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/stripe");
    let post = |body: Vec<u8>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = post_stripe(&client, &url, &body).await;
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()
        }
    };

    let first = post(change("evt_1", "cus_1", Some(7))).await;
    assert_eq!(first["status"], "accepted", "{first}");
    let resent = post(change("evt_2", "cus_1", Some(7))).await;
    assert_eq!(
        (resent["status"].as_str(), &resent["id"]),
        (Some("duplicate"), &first["id"]),
        "a new id, the same change: {resent}"
    );
    assert_eq!(
        post(change("evt_3", "cus_1", Some(8))).await["status"],
        "accepted"
    );
    assert_eq!(
        post(change("evt_4", "cus_2", Some(7))).await["status"],
        "accepted"
    );
    // Without one of the key's fields the rule does not apply: kept by its id alone.
    assert_eq!(post(change("evt_5", "cus_1", None)).await["status"], "accepted");
    assert_eq!(post(change("evt_6", "cus_1", None)).await["status"], "accepted");
    assert_eq!(
        post(change("evt_6", "cus_1", None)).await["status"],
        "duplicate",
        "the id still counts"
    );
    db.assert_count(
        "SELECT count(*) FROM events",
        5,
        "evt_2 and the second evt_6 stored nothing",
    )
    .await;

    // Twenty arrivals of one change at once, each under its own id: one is stored.
    let answers = futures_util::future::join_all(
        (0..20).map(|i| post(change(&format!("evt_race_{i}"), "cus_race", Some(1)))),
    )
    .await;
    let accepted = answers.iter().filter(|a| a["status"] == "accepted").count();
    assert_eq!(accepted, 1, "{answers:?}");
    let winner = &answers.iter().find(|a| a["status"] == "accepted").unwrap()["id"];
    assert!(
        answers.iter().all(|a| &a["id"] == winner),
        "every duplicate names the one stored"
    );
    db.assert_count(
        "SELECT count(*) FROM events WHERE event_id LIKE 'evt_race_%'",
        1,
        "PostgreSQL let one claim the key",
    )
    .await;

    // Once the window is over, the same change is new again.
    let mut conn = db.connect().await;
    diesel::sql_query("UPDATE dedup_keys SET expires_at = now() - interval '2 minutes' WHERE event_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(first["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    let later = post(change("evt_7", "cus_1", Some(7))).await;
    assert_eq!(later["status"], "accepted", "{later}");
    assert_eq!(
        post(change("evt_8", "cus_1", Some(7))).await["status"],
        "duplicate",
        "and claimed anew"
    );

    // Retention drops keys expired over a minute ago, and no other.
    diesel::sql_query("UPDATE dedup_keys SET expires_at = now() - interval '2 minutes' WHERE event_id <> $1")
        .bind::<diesel::sql_types::Uuid, _>(later["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    let keys = db.count("SELECT count(*) FROM dedup_keys").await;
    let report = retention::prune(
        &db.url,
        &RetentionConfig::default(),
        &CancellationToken::new(),
        |_, _| {},
    )
    .await
    .unwrap()
    .expect("the only pruner leads");
    assert!(
        report.deleted.contains(&(Kind::DedupKeys, (keys - 1) as u64)),
        "{report:?}"
    );
    db.assert_count("SELECT count(*) FROM dedup_keys", 1, "the live key stays")
        .await;
    relayd.stop().await.unwrap();
}
