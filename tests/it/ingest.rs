//! The ingest role over HTTP: every row of DESIGN.md §3's table, with the database
//! checked after each answer.

use std::time::Duration;

use serde_json::Value;

use crate::support::{self, post_stripe, stripe_event, stripe_signature, Relayd, TestDb, STRIPE_SECRET};

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.expect("JSON body");
    (status, body)
}

/// An ingest-only relayd on a fresh database, routing every event to one destination,
/// `billing`.
async fn ingest_with_billing() -> (TestDb, Relayd) {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.destinations = vec![support::destination("billing", &[], &[])];
    let relayd = Relayd::ingest(config).await;
    (db, relayd)
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_event_is_stored_byte_for_byte_with_one_pending_row_per_destination() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.destinations = vec![
        support::destination("billing", &[], &["invoice.*"]),
        support::destination("audit", &["stripe"], &[]),
    ];
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let body = stripe_event("evt_accept_1", "invoice.paid");

    let (status, answer) = json(post_stripe(&client, &relayd.url("/webhooks/stripe"), &body).await).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["event_id"], "evt_accept_1");
    let id = answer["id"].as_str().expect("id");

    let stored_equal = db
        .count(&format!(
            "SELECT count(*) FROM events WHERE id = '{id}' AND source = 'stripe' AND event_id = 'evt_accept_1' \
             AND event_type = 'invoice.paid' AND content_type = 'application/json' \
             AND payload = decode('{}', 'hex')",
            hex::encode(&body)
        ))
        .await;
    assert_eq!(stored_equal, 1, "the raw body is stored unchanged");
    db.assert_count(
        "SELECT count(*) FROM events WHERE headers ? 'stripe-signature'",
        0,
        "signature headers are not kept",
    )
    .await;
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM deliveries WHERE event_id = '{id}' AND status = 'pending' AND attempts = 0 \
             AND destination IN ('billing', 'audit')"
        ))
        .await,
        2
    );
    relayd.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_event_is_answered_duplicate_and_stored_once() {
    let (db, relayd) = ingest_with_billing().await;
    let client = reqwest::Client::new();
    let body = stripe_event("evt_dup_1", "invoice.paid");

    let (_, first) = json(post_stripe(&client, &relayd.url("/webhooks/stripe"), &body).await).await;
    // The same provider event, re-signed later and sent to the alias path.
    let (status, second) = json(post_stripe(&client, &relayd.url("/stripe/webhook"), &body).await).await;
    assert_eq!(status, 200);
    assert_eq!(second["status"], "duplicate");
    assert_eq!(second["id"], first["id"], "a duplicate names the stored event");
    db.assert_count("SELECT count(*) FROM events", 1, "").await;
    db.assert_count("SELECT count(*) FROM deliveries", 1, "").await;
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_event_is_stored_once_under_concurrency() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.destinations = vec![
        support::destination("billing", &[], &[]),
        support::destination("audit", &[], &[]),
    ];
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let body = stripe_event("evt_race_1", "invoice.paid");
    let url = relayd.url("/webhooks/stripe");

    let requests = (0..64).map(|_| {
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        tokio::spawn(async move { json(post_stripe(&client, &url, &body).await).await })
    });
    let mut accepted = 0;
    let mut ids = std::collections::HashSet::new();
    for request in requests {
        let (status, answer) = request.await.unwrap();
        assert_eq!(status, 200, "every concurrent duplicate gets 200: {answer}");
        if answer["status"] == "accepted" {
            accepted += 1;
        } else {
            assert_eq!(answer["status"], "duplicate");
        }
        ids.insert(answer["id"].as_str().unwrap().to_string());
    }
    assert_eq!(accepted, 1, "exactly one request stores the event");
    assert_eq!(ids.len(), 1, "every answer names the same stored event");
    db.assert_count("SELECT count(*) FROM events", 1, "").await;
    db.assert_count("SELECT count(*) FROM deliveries", 2, "one set of deliveries")
        .await;
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signatures_are_refused_and_nothing_is_stored() {
    let (db, relayd) = ingest_with_billing().await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/stripe");
    let body = stripe_event("evt_bad_sig", "invoice.paid");
    let now = support::now();

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        (
            "wrong secret",
            Some(stripe_signature("whsec_someone_else", now, &body)),
        ),
        ("garbage header", Some("t=abc,v1=not-hex".into())),
        ("no v1", Some(format!("t={now}"))),
        (
            "stale timestamp",
            Some(stripe_signature(STRIPE_SECRET, now - 330, &body)),
        ),
        (
            "future timestamp",
            Some(stripe_signature(STRIPE_SECRET, now + 330, &body)),
        ),
    ];
    for (case, header) in cases {
        let mut request = client.post(&url).body(body.clone());
        if let Some(header) = header {
            request = request.header("stripe-signature", header);
        }
        let (status, answer) = json(request.send().await.unwrap()).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert_eq!(answer["error"], "invalid_signature", "{case}");
    }
    // A body altered after signing.
    let header = stripe_signature(STRIPE_SECRET, now, &body);
    let tampered = stripe_event("evt_bad_sig", "invoice.voided");
    let response = client
        .post(&url)
        .header("stripe-signature", header)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    db.assert_count("SELECT count(*) FROM events", 0, "").await;
    db.assert_count("SELECT count(*) FROM deliveries", 0, "").await;
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn event_signed_with_a_rotated_secret_is_accepted() {
    let db = TestDb::migrated().await;
    let relayd = Relayd::ingest(support::config(&db.url)).await;
    let body = stripe_event("evt_rotated", "invoice.paid");
    let response = reqwest::Client::new()
        .post(relayd.url("/webhooks/stripe"))
        .header(
            "stripe-signature",
            stripe_signature(support::STRIPE_OLD_SECRET, support::now(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, answer) = json(response).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("accepted")));
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_body_that_is_not_a_stripe_event_is_an_invalid_payload() {
    let db = TestDb::migrated().await;
    let relayd = Relayd::ingest(support::config(&db.url)).await;
    let client = reqwest::Client::new();
    for body in [
        &b"{\"type\":\"invoice.paid\"}"[..],
        b"{\"id\":\"evt_1\"}",
        b"[1,2,3]",
        b"\xff\xfe",
    ] {
        let (status, answer) = json(post_stripe(&client, &relayd.url("/webhooks/stripe"), body).await).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"], "invalid_payload");
    }
    db.assert_count("SELECT count(*) FROM events", 0, "").await;
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_source_is_404_and_unknown_paths_are_json_404s() {
    let db = TestDb::migrated().await;
    let relayd = Relayd::ingest(support::config(&db.url)).await;
    let client = reqwest::Client::new();
    let body = stripe_event("evt_unknown", "invoice.paid");

    let (status, answer) = json(post_stripe(&client, &relayd.url("/webhooks/shopify"), &body).await).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("unknown_source")));
    // A sender's path segment is not echoed whole (into the answer or the log line).
    let long = "x".repeat(4000);
    let (status, answer) =
        json(post_stripe(&client, &relayd.url(&format!("/webhooks/{long}")), &body).await).await;
    assert_eq!(status, 404);
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.len() < 120 && message.contains(&"x".repeat(64)),
        "{message}"
    );
    let (status, answer) = json(client.get(relayd.url("/nope")).send().await.unwrap()).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));
    let (status, answer) = json(client.get(relayd.url("/webhooks/stripe")).send().await.unwrap()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    db.assert_count("SELECT count(*) FROM events", 0, "").await;
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_limit_is_413_and_not_stored() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.ingest.max_body_bytes = 1024;
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let big =
        serde_json::json!({"id": "evt_big", "type": "invoice.paid", "pad": "x".repeat(2048)}).to_string();
    let (status, answer) =
        json(post_stripe(&client, &relayd.url("/webhooks/stripe"), big.as_bytes()).await).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("payload_too_large"))
    );

    // Exactly at the limit is fine.
    let empty_pad = serde_json::json!({"id": "evt_fits", "type": "invoice.paid", "pad": ""}).to_string();
    let fitting = serde_json::json!({"id": "evt_fits", "type": "invoice.paid", "pad": "y".repeat(1024 - empty_pad.len())})
        .to_string();
    assert_eq!(fitting.len(), 1024);
    let (status, _) =
        json(post_stripe(&client, &relayd.url("/webhooks/stripe"), fitting.as_bytes()).await).await;
    assert_eq!(status, 200);
    db.assert_count("SELECT count(*) FROM events WHERE event_id = 'evt_big'", 0, "")
        .await;
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn database_unavailable_is_503_with_retry_after() {
    // Nothing listens on port 1: every connection attempt fails at once.
    let relayd = Relayd::ingest(support::config("postgres://postgres@127.0.0.1:1/relayd")).await;
    let client = reqwest::Client::new();
    let response = post_stripe(
        &client,
        &relayd.url("/webhooks/stripe"),
        &stripe_event("evt_down", "x.y"),
    )
    .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "unavailable");
    assert!(
        !answer.to_string().contains("127.0.0.1:1"),
        "no internal detail in the body: {answer}"
    );

    let readyz = client.get(relayd.ops_url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503);
    let healthz = client.get(relayd.ops_url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200, "alive even when not ready");
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn events_route_to_matching_destinations_only() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.sources.push(relayd::config::SourceConfig {
        name: "stripe-connect".into(),
        ..config.sources[0].clone()
    });
    config.destinations = vec![
        support::destination("invoices", &[], &["invoice.*"]),
        support::destination("payments", &["stripe"], &["payment_intent.succeeded"]),
        support::destination("connect-audit", &["stripe-connect"], &[]),
    ];
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let cases = [
        ("stripe", "evt_r1", "invoice.paid", vec!["invoices"]),
        ("stripe", "evt_r2", "payment_intent.succeeded", vec!["payments"]),
        ("stripe", "evt_r3", "payment_intent.failed", vec![]),
        (
            "stripe-connect",
            "evt_r4",
            "invoice.created",
            vec!["connect-audit", "invoices"],
        ),
        (
            "stripe-connect",
            "evt_r5",
            "payment_intent.succeeded",
            vec!["connect-audit"],
        ),
    ];
    for (source, id, event_type, expected) in cases {
        let url = relayd.url(&format!("/webhooks/{source}"));
        let (status, _) = json(post_stripe(&client, &url, &stripe_event(id, event_type)).await).await;
        assert_eq!(status, 200);
        let mut conn = db.connect().await;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use relayd::db::schema::{deliveries, events};
        let mut got: Vec<String> = deliveries::table
            .inner_join(events::table)
            .filter(events::event_id.eq(id))
            .select(deliveries::destination)
            .load(&mut conn)
            .await
            .unwrap();
        got.sort();
        assert_eq!(got, expected, "{source} {event_type}");
    }
    db.assert_count("SELECT count(*) FROM events", 5, "unrouted events are stored too")
        .await;
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_listener_serves_healthz_but_never_admin_and_ops_reports_ready() {
    let db = TestDb::migrated().await;
    let relayd = Relayd::ingest(support::config(&db.url)).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client.get(relayd.url("/healthz")).send().await.unwrap().status(),
        200
    );
    for path in ["/admin", "/admin/", "/admin/api/stats", "/readyz"] {
        assert_eq!(
            client.get(relayd.url(path)).send().await.unwrap().status(),
            404,
            "{path}"
        );
    }
    let (status, answer) = json(client.get(relayd.ops_url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("ready")));
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_request_finishes_during_graceful_stop() {
    let db = TestDb::migrated().await;
    let relayd = Relayd::ingest(support::config(&db.url)).await;
    let url = relayd.url("/webhooks/stripe");
    let body = stripe_event("evt_graceful", "invoice.paid");
    let header = stripe_signature(STRIPE_SECRET, support::now(), &body);
    // Send the headers now and the body only after shutdown has begun.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let request = tokio::spawn(
        reqwest::Client::new()
            .post(url)
            .header("stripe-signature", header)
            .header("content-length", body.len())
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(relayd.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(Ok(body)).await.unwrap();
    drop(tx);
    let response = request.await.unwrap().expect("in-flight request is answered");
    assert_eq!(response.status(), 200);
    stopping.await.unwrap().expect("clean stop");
    db.assert_count(
        "SELECT count(*) FROM events WHERE event_id = 'evt_graceful'",
        1,
        "",
    )
    .await;
}

/// Group commit: concurrent requests share statements, but each is answered for its
/// own event — new ones accepted with their own id and outbox rows, repeats as
/// duplicates naming the stored event.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_distinct_and_repeated_events_are_each_answered_for_themselves() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.destinations = vec![support::destination("billing", &[], &["invoice.*"])];
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/stripe");
    // 150 distinct events, every third posted twice, all at once.
    let requests: Vec<_> = (0..150)
        .flat_map(|i| std::iter::repeat_n(i, if i % 3 == 0 { 2 } else { 1 }))
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            let event_type = if i % 2 == 0 {
                "invoice.paid"
            } else {
                "customer.created"
            };
            let body = stripe_event(&format!("evt_group_{i}"), event_type);
            tokio::spawn(async move { (i, json(post_stripe(&client, &url, &body).await).await) })
        })
        .collect();
    let mut ids: std::collections::HashMap<u32, std::collections::HashSet<String>> = Default::default();
    let mut accepted = 0;
    for request in requests {
        let (i, (status, answer)) = request.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["event_id"], format!("evt_group_{i}"));
        if answer["status"] == "accepted" {
            accepted += 1;
        }
        ids.entry(i)
            .or_default()
            .insert(answer["id"].as_str().unwrap().to_string());
    }
    assert_eq!(accepted, 150, "each distinct event accepted exactly once");
    assert!(
        ids.values().all(|set| set.len() == 1),
        "a repeat names the stored event"
    );
    for (i, set) in &ids {
        let id = set.iter().next().unwrap();
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM events WHERE id = '{id}' AND event_id = 'evt_group_{i}'"
            ))
            .await,
            1
        );
    }
    db.assert_count("SELECT count(*) FROM events", 150, "").await;
    db.assert_count(
        "SELECT count(*) FROM deliveries",
        75,
        "only invoice.* events are routed",
    )
    .await;
    relayd.stop().await.unwrap();
}

/// Posts `body` signed as a Stripe event with the given `Content-Type` value (raw bytes,
/// so that non-ASCII values can be sent).
async fn post_stripe_with_content_type(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    content_type: &[u8],
) -> (u16, Value) {
    let response = client
        .post(url)
        .header(
            "content-type",
            reqwest::header::HeaderValue::from_bytes(content_type).unwrap(),
        )
        .header(
            "stripe-signature",
            stripe_signature(STRIPE_SECRET, support::now(), body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    json(response).await
}

/// What ingest stores must fit its columns and indexes and, later, the AMQP fields it is
/// published in (short strings of at most 255 bytes, frames of bounded size). A field
/// that does not is refused with a 400 naming it, before anything is stored: a signed
/// request with a bad field is the sender's error, and retrying it can never succeed.
#[tokio::test(flavor = "multi_thread")]
async fn fields_that_cannot_be_stored_or_published_are_refused_with_400_and_nothing_is_stored() {
    let (db, relayd) = ingest_with_billing().await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/stripe");
    // Incompressible, so PostgreSQL cannot squeeze it under the btree limit.
    let mut random = [0u8; 1500];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).unwrap();
    let random_id = hex::encode(random);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "id of 256 bytes",
            stripe_event(&"a".repeat(256), "invoice.paid"),
            b"application/json".to_vec(),
        ),
        (
            "incompressible id of 3,000 bytes",
            stripe_event(&random_id, "invoice.paid"),
            b"application/json".to_vec(),
        ),
        (
            "id with BEL",
            stripe_event("evt_\u{7}bell", "invoice.paid"),
            b"application/json".to_vec(),
        ),
        (
            "id with NUL",
            stripe_event("evt_\u{0}nul", "invoice.paid"),
            b"application/json".to_vec(),
        ),
        (
            "type of 200 KB",
            stripe_event("evt_big_type", &"t".repeat(200_000)),
            b"application/json".to_vec(),
        ),
        (
            "type with NUL",
            stripe_event("evt_nul_type", "invoice.\u{0}paid"),
            b"application/json".to_vec(),
        ),
        (
            "Content-Type of 300 bytes",
            stripe_event("evt_long_ct", "invoice.paid"),
            format!("application/json; x={}", "y".repeat(280)).into_bytes(),
        ),
        (
            "non-ASCII Content-Type",
            stripe_event("evt_utf8_ct", "invoice.paid"),
            b"application/json; charset=\xe9".to_vec(),
        ),
    ];
    for (case, body, content_type) in &cases {
        let (status, answer) = post_stripe_with_content_type(&client, &url, body, content_type).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert_eq!(answer["error"], "invalid_payload", "{case}: {answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}: {answer}"
        );
    }
    db.assert_count("SELECT count(*) FROM events", 0, "nothing stored")
        .await;

    // The limits themselves are accepted.
    let longest = stripe_event(&"b".repeat(255), &"c".repeat(255));
    let content_type = format!(
        "application/json; x={}",
        "y".repeat(255 - "application/json; x=".len())
    );
    let (status, answer) =
        post_stripe_with_content_type(&client, &url, &longest, content_type.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    relayd.stop().await.unwrap();
}

/// Bad requests arriving in the same instant as valid ones, so that they would share a
/// group commit: every valid one is accepted, whatever its neighbours were.
#[tokio::test(flavor = "multi_thread")]
async fn valid_events_beside_bad_ones_in_the_same_instant_are_all_accepted() {
    let (db, relayd) = ingest_with_billing().await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/stripe");
    for round in 0..3 {
        let mut requests = tokio::task::JoinSet::new();
        for n in 0..44 {
            let (client, url) = (client.clone(), url.clone());
            requests.spawn(async move {
                let bad = n % 11 == 0;
                let id = if bad {
                    format!("evt_nul_{round}_{n}\u{0}")
                } else {
                    format!("evt_ok_{round}_{n}")
                };
                let body = stripe_event(&id, "invoice.paid");
                (bad, post_stripe(&client, &url, &body).await.status().as_u16())
            });
        }
        while let Some(done) = requests.join_next().await {
            let (bad, status) = done.unwrap();
            assert_eq!(status, if bad { 400 } else { 200 }, "round {round}, bad = {bad}");
        }
    }
    db.assert_count("SELECT count(*) FROM events", 120, "").await;
    relayd.stop().await.unwrap();
}

/// A connection that never finishes its request head is closed after
/// `ingest.header_timeout` (answered 408 or just closed), and costs nothing after.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_never_finished_is_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.ingest.header_timeout = Duration::from_secs(1);
    let relayd = Relayd::ingest(config).await;
    let address = relayd.url("").trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: relayd\r\nContent-Type: appl")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let waited = started.elapsed();
    assert!(read.is_ok(), "the connection was still open after 10 s");
    // Between the configured 1 s and actix's own default of 5 s: the setting is applied.
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    relayd.stop().await.unwrap();
}

/// `ingest.max_connections` bounds the connections ingest serves at once: with that many
/// held open (request heads never finished), a new request waits unaccepted instead of
/// costing memory, and is served as soon as the held ones go away. (With the limit at
/// its default the same request is answered at once: the assertion fails.)
#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_max_connections_wait_until_others_close() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    // Split across the HTTP workers (one per core), so a multiple of their count.
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    config.ingest.max_connections = 2 * workers;
    config.ingest.header_timeout = Duration::from_secs(60);
    let relayd = Relayd::ingest(config).await;
    let address = relayd.url("").trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..2 * workers {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: relayd\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let url = relayd.url("/webhooks/stripe");
    let body = stripe_event("evt_over_the_limit", "invoice.paid");
    let over = client
        .post(&url)
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            stripe_signature(STRIPE_SECRET, support::now(), &body),
        )
        .body(body.clone())
        .send()
        .await;
    assert!(
        over.as_ref().is_err_and(|e| e.is_timeout()),
        "a connection over the limit was served: {over:?}"
    );
    drop(held);
    let started = std::time::Instant::now();
    let served = post_stripe(&reqwest::Client::new(), &url, &body).await;
    assert_eq!(served.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    db.assert_count("SELECT count(*) FROM events", 1, "").await;
    relayd.stop().await.unwrap();
}
