//! Every source kind over HTTP: accepted, duplicate, bad signature, missing headers,
//! rotated secret, and (for timestamped kinds) stale and future timestamps. Requests are
//! signed with the provider's own SDK where it publishes one ([`crate::support::sdk`]:
//! Slack, Paddle), else here with `ring` directly, following the provider's
//! documentation — and checked with the SDK's verifier where it has no signer (Square,
//! Linear).

use base64::Engine;
use relayd::config::{Secret, SignatureEncoding, SourceConfig, SourceKind};
use serde_json::Value;

use crate::support::{self, sdk, Relayd, TestDb};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn mac(key: &[u8], message: &[u8]) -> Vec<u8> {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message)
        .as_ref()
        .to_vec()
}

/// Request headers as (name, value) pairs.
type Headers = Vec<(String, String)>;

/// One provider under test.
struct Provider {
    source: SourceConfig,
    /// Signs `body` for event `id` at time `t` with `secret`: the request's headers.
    sign: fn(secret: &str, id: &str, t: i64, body: &[u8]) -> Headers,
    /// A body for event `id`.
    body: fn(id: &str) -> Vec<u8>,
    /// The event id relayd should store for event `id` and `body`.
    stored_id: fn(id: &str, body: &[u8]) -> String,
    event_type: &'static str,
    timestamped: bool,
    /// Header kept with the event (besides user-agent), if any.
    kept_header: Option<&'static str>,
}

fn source(name: &str, kind: SourceKind, secrets: &[&str]) -> SourceConfig {
    SourceConfig::new(name, kind, secrets.iter().map(|s| Secret::new(*s)).collect())
}

fn json_body(id: &str) -> Vec<u8> {
    serde_json::json!({"id": id, "type": "order.created", "data": {"n": 1}})
        .to_string()
        .into_bytes()
}

/// The notification URL the tests' Square subscription is configured with.
const SQUARE_URL: &str = "https://hooks.example.com/webhooks/square";

fn square_signature(key: &str, body: &[u8]) -> String {
    B64.encode(mac(key.as_bytes(), &[SQUARE_URL.as_bytes(), body].concat()))
}

/// Zoom's headers, signed as its documentation says (Zoom publishes no SDK that verifies).
fn zoom_headers(secret: &str, t: i64, body: &[u8]) -> Headers {
    let v0 = hex::encode(mac(
        secret.as_bytes(),
        &[format!("v0:{t}:").as_bytes(), body].concat(),
    ));
    vec![
        ("x-zm-request-timestamp".into(), t.to_string()),
        ("x-zm-signature".into(), format!("v0={v0}")),
    ]
}

/// The webhook URL the tests' Twilio number is configured with (relayd behind a proxy).
const TWILIO_URL: &str = "https://hooks.example.com/webhooks/twilio";

/// `X-Twilio-Signature` of a form body posted to `url`, as Twilio documents it (the SDK
/// test checks this against `twilio`'s `RequestValidator`): HMAC-SHA1 under the auth
/// token over the URL and each parameter's name and value, sorted.
fn twilio_signature(token: &str, url: &str, form: &[u8]) -> String {
    let mut params: Vec<(String, String)> = url::form_urlencoded::parse(form)
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    params.sort();
    let signed: String = params.into_iter().fold(url.to_string(), |s, (n, v)| s + &n + &v);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, token.as_bytes());
    B64.encode(ring::hmac::sign(&key, signed.as_bytes()).as_ref())
}

fn providers() -> Vec<Provider> {
    let mut square = source("square", SourceKind::Square, &["sq-key-1", "sq-key-2"]);
    square.public_url = Some(SQUARE_URL.into());
    let mut twilio = source(
        "twilio",
        SourceKind::Twilio,
        &["twilio-token-1", "twilio-token-2"],
    );
    twilio.public_url = Some(TWILIO_URL.into());

    let mut hmac_hex = source("custom-hex", SourceKind::Hmac, &["hex-secret-1", "hex-secret-2"]);
    hmac_hex.signature_header = Some("X-Signature".into());
    hmac_hex.encoding = Some(SignatureEncoding::Hex);
    hmac_hex.prefix = Some("sha256=".into());
    hmac_hex.id_header = Some("X-Event-Id".into());
    hmac_hex.type_pointer = Some("/type".into());

    let mut hmac_hash = source("custom-hash", SourceKind::Hmac, &["b64-secret-1", "b64-secret-2"]);
    hmac_hash.signature_header = Some("X-Mac".into());
    hmac_hash.encoding = Some(SignatureEncoding::Base64);
    hmac_hash.id_from_body_hash = true;

    vec![
        Provider {
            source: source(
                "stripe",
                SourceKind::Stripe,
                &["whsec_stripe_1", "whsec_stripe_2"],
            ),
            sign: |secret, _id, t, body| {
                let signed = [format!("{t}.").as_bytes(), body].concat();
                let v1 = hex::encode(mac(secret.as_bytes(), &signed));
                vec![("stripe-signature".into(), format!("t={t},v1={v1}"))]
            },
            body: |id| {
                serde_json::json!({"id": id, "object": "event", "type": "invoice.paid"})
                    .to_string()
                    .into_bytes()
            },
            stored_id: |id, _| id.into(),
            event_type: "invoice.paid",
            timestamped: true,
            kept_header: None,
        },
        Provider {
            source: source("github", SourceKind::Github, &["gh-secret-1", "gh-secret-2"]),
            sign: |secret, id, _t, body| {
                vec![
                    (
                        "x-hub-signature-256".into(),
                        format!("sha256={}", hex::encode(mac(secret.as_bytes(), body))),
                    ),
                    ("x-github-delivery".into(), id.into()),
                    ("x-github-event".into(), "push".into()),
                ]
            },
            body: |_| br#"{"ref":"refs/heads/main"}"#.to_vec(),
            stored_id: |id, _| id.into(),
            event_type: "push",
            timestamped: false,
            kept_header: Some("x-github-delivery"),
        },
        Provider {
            source: source("shopify", SourceKind::Shopify, &["shpss_1", "shpss_2"]),
            sign: |secret, id, _t, body| {
                vec![
                    (
                        "x-shopify-hmac-sha256".into(),
                        B64.encode(mac(secret.as_bytes(), body)),
                    ),
                    ("x-shopify-webhook-id".into(), id.into()),
                    ("x-shopify-topic".into(), "orders/create".into()),
                ]
            },
            body: |_| br#"{"id":820982911946154508}"#.to_vec(),
            stored_id: |id, _| id.into(),
            event_type: "orders/create",
            timestamped: false,
            kept_header: Some("x-shopify-topic"),
        },
        Provider {
            source: source(
                "svix",
                SourceKind::StandardWebhooks,
                &[
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                    "whsec_AQIDBAUGBwgJCgsMDQ4PEA==",
                ],
            ),
            sign: |secret, id, t, body| {
                let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
                let signed = [format!("{id}.{t}.").as_bytes(), body].concat();
                vec![
                    ("webhook-id".into(), id.into()),
                    ("webhook-timestamp".into(), t.to_string()),
                    (
                        "webhook-signature".into(),
                        format!("v1,{}", B64.encode(mac(&key, &signed))),
                    ),
                ]
            },
            body: json_body,
            stored_id: |id, _| id.into(),
            event_type: "order.created",
            timestamped: true,
            kept_header: Some("webhook-id"),
        },
        Provider {
            source: hmac_hex,
            sign: |secret, id, _t, body| {
                vec![
                    (
                        "x-signature".into(),
                        format!("sha256={}", hex::encode(mac(secret.as_bytes(), body))),
                    ),
                    ("x-event-id".into(), id.into()),
                ]
            },
            body: json_body,
            stored_id: |id, _| id.into(),
            event_type: "order.created",
            timestamped: false,
            kept_header: Some("x-event-id"),
        },
        Provider {
            source: source(
                "slack",
                SourceKind::Slack,
                &["slack-signing-1", "slack-signing-2"],
            ),
            sign: |secret, _id, t, body| {
                vec![
                    ("x-slack-request-timestamp".into(), t.to_string()),
                    ("x-slack-signature".into(), sdk::slack_signature(secret, t, body)),
                ]
            },
            body: |id| {
                serde_json::json!({
                    "type": "event_callback", "event_id": id, "team_id": "T0TEST",
                    "event": {"type": "app_mention", "text": "hi"},
                })
                .to_string()
                .into_bytes()
            },
            stored_id: |id, _| id.into(),
            event_type: "app_mention",
            timestamped: true,
            kept_header: None,
        },
        Provider {
            source: source("paddle", SourceKind::Paddle, &["pdl_ntfset_1", "pdl_ntfset_2"]),
            sign: |secret, _id, t, body| {
                vec![("paddle-signature".into(), sdk::paddle_signature(secret, t, body))]
            },
            body: |id| {
                serde_json::json!({
                    "event_id": id, "event_type": "transaction.completed",
                    "occurred_at": "2026-12-07T10:00:00Z", "data": {"id": "txn_1"},
                })
                .to_string()
                .into_bytes()
            },
            stored_id: |id, _| id.into(),
            event_type: "transaction.completed",
            timestamped: true,
            kept_header: None,
        },
        Provider {
            source: square,
            sign: |secret, _id, _t, body| {
                vec![(
                    "x-square-hmacsha256-signature".into(),
                    square_signature(secret, body),
                )]
            },
            body: |id| {
                serde_json::json!({"merchant_id": "MLTEST", "type": "payment.updated", "event_id": id, "data": {}})
                    .to_string()
                    .into_bytes()
            },
            stored_id: |id, _| id.into(),
            event_type: "payment.updated",
            timestamped: false,
            kept_header: None,
        },
        Provider {
            source: source("zoom", SourceKind::Zoom, &["zoom-token-1", "zoom-token-2"]),
            sign: |secret, _id, t, body| zoom_headers(secret, t, body),
            body: |id| {
                serde_json::json!({"event": "meeting.started", "event_ts": 1, "payload": {"object": {"id": id}}})
                    .to_string()
                    .into_bytes()
            },
            stored_id: |_, body| hex::encode(ring::digest::digest(&ring::digest::SHA256, body)),
            event_type: "meeting.started",
            timestamped: true,
            kept_header: None,
        },
        Provider {
            source: twilio,
            sign: |secret, id, _t, body| {
                vec![
                    ("content-type".into(), "application/x-www-form-urlencoded".into()),
                    ("i-twilio-idempotency-token".into(), id.into()),
                    (
                        "x-twilio-signature".into(),
                        twilio_signature(secret, TWILIO_URL, body),
                    ),
                ]
            },
            body: |id| {
                format!("AccountSid=AC1&MessageSid=SM{id}&MessageStatus=delivered&To=%2B15558675310")
                    .into_bytes()
            },
            stored_id: |id, _| id.into(),
            event_type: "message.delivered",
            timestamped: false,
            kept_header: Some("i-twilio-idempotency-token"),
        },
        Provider {
            source: hmac_hash,
            sign: |secret, _id, _t, body| vec![("x-mac".into(), B64.encode(mac(secret.as_bytes(), body)))],
            body: json_body,
            stored_id: |_, body| hex::encode(ring::digest::digest(&ring::digest::SHA256, body)),
            event_type: "unknown",
            timestamped: false,
            kept_header: None,
        },
    ]
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, Value) {
    let mut request = client.post(url).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_accepts_deduplicates_rotates_and_refuses_bad_signatures() {
    let db = TestDb::migrated().await;
    let providers = providers();
    let mut config = support::config(&db.url);
    config.sources = providers.iter().map(|p| p.source.clone()).collect();
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let now = support::now();

    for provider in &providers {
        let name = &provider.source.name;
        let url = relayd.url(&format!("/webhooks/{name}"));
        let secret = provider.source.secrets[0].expose();
        let rotated = provider.source.secrets[1].expose();
        let id = format!("{name}-evt-1");
        let body = (provider.body)(&id);

        let (status, answer) = post(&client, &url, &(provider.sign)(secret, &id, now, &body), &body).await;
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("accepted")),
            "{name}: {answer}"
        );
        let stored_id = (provider.stored_id)(&id, &body);
        assert_eq!(answer["event_id"], stored_id.as_str(), "{name}");
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM events WHERE source = '{name}' AND event_id = '{stored_id}' \
                 AND event_type = '{}' AND payload = decode('{}', 'hex') AND NOT headers ?| array['stripe-signature', \
                 'x-hub-signature-256', 'x-shopify-hmac-sha256', 'webhook-signature', 'x-signature', 'x-mac', \
                 'x-slack-signature', 'paddle-signature', 'x-square-hmacsha256-signature', \
                 'x-zm-signature', 'x-twilio-signature']",
                provider.event_type,
                hex::encode(&body)
            ))
            .await,
            1,
            "{name}: stored with its id, type and raw body, without signature headers"
        );
        if let Some(kept) = provider.kept_header {
            assert_eq!(
                db.count(&format!(
                    "SELECT count(*) FROM events WHERE source = '{name}' AND headers ? '{kept}'"
                ))
                .await,
                1,
                "{name}: keeps {kept}"
            );
        }

        // The same event again, signed anew (a provider retry): duplicate, one row.
        let (status, answer) = post(
            &client,
            &url,
            &(provider.sign)(secret, &id, now + 1, &body),
            &body,
        )
        .await;
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("duplicate")),
            "{name}: {answer}"
        );

        // Rotation: the second secret is as good as the first.
        let id2 = format!("{name}-evt-2");
        let body2 = (provider.body)(&id2);
        let (status, answer) = post(
            &client,
            &url,
            &(provider.sign)(rotated, &id2, now, &body2),
            &body2,
        )
        .await;
        assert_eq!(status, 200, "{name} rotated secret: {answer}");

        // Refusals, none of which stores anything.
        let id3 = format!("{name}-evt-3");
        let body3 = (provider.body)(&id3);
        let wrong = (provider.sign)(
            if provider.source.kind == SourceKind::StandardWebhooks {
                "whsec_c29tZW9uZSBlbHNl"
            } else {
                "someone-else"
            },
            &id3,
            now,
            &body3,
        );
        let mut cases = vec![("wrong secret", wrong), ("no headers", Vec::new())];
        let signed = (provider.sign)(secret, &id3, now, &body3);
        for (header, _) in &signed {
            let without: Vec<_> = signed.iter().filter(|(h, _)| h != header).cloned().collect();
            // Without a type header the type is `unknown`, without Twilio's token the id
            // is the body's hash: accepted, not refused.
            let expected_refusal = !matches!(
                header.as_str(),
                "x-github-event" | "x-shopify-topic" | "i-twilio-idempotency-token" | "content-type"
            );
            if expected_refusal {
                cases.push(("a missing header", without));
            }
        }
        if provider.timestamped {
            // Well outside the 5-minute tolerance, whatever time this test has taken so
            // far (the exact boundary is covered by the verifiers' unit tests).
            let now = support::now();
            cases.push(("stale", (provider.sign)(secret, &id3, now - 330, &body3)));
            cases.push(("future", (provider.sign)(secret, &id3, now + 330, &body3)));
        }
        for (case, headers) in cases {
            let (status, answer) = post(&client, &url, &headers, &body3).await;
            assert_eq!(status, 400, "{name}, {case}: {answer}");
            assert!(
                matches!(
                    answer["error"].as_str(),
                    Some("invalid_signature" | "invalid_payload")
                ),
                "{name}, {case}: {answer}"
            );
        }
        let stored_id3 = (provider.stored_id)(&id3, &body3);
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM events WHERE source = '{name}' AND event_id = '{stored_id3}'"
            ))
            .await,
            0,
            "{name}: nothing stored for refusals"
        );
    }
    assert_eq!(
        db.count("SELECT count(*) FROM events").await,
        2 * providers.len() as i64
    );
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_type_header_stores_unknown_and_a_missing_id_header_is_invalid_payload() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.sources = vec![source("github", SourceKind::Github, &["gh"])];
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/github");
    let body = b"{}";
    let signature = format!("sha256={}", hex::encode(mac(b"gh", body)));

    let headers = vec![
        ("x-hub-signature-256".to_string(), signature.clone()),
        ("x-github-delivery".to_string(), "d-1".to_string()),
    ];
    let (status, _) = post(&client, &url, &headers, body).await;
    assert_eq!(status, 200);
    db.assert_count(
        "SELECT count(*) FROM events WHERE event_id = 'd-1' AND event_type = 'unknown'",
        1,
        "",
    )
    .await;
    let (status, answer) = post(
        &client,
        &url,
        &[("x-hub-signature-256".to_string(), signature)],
        body,
    )
    .await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_payload")));
    relayd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kind_none_accepts_unsigned_events_by_their_json_id() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    let mut none = source("local", SourceKind::None, &[]);
    none.type_pointer = Some("/type".into());
    config.sources = vec![none];
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/local");
    let (status, answer) = post(&client, &url, &[], &json_body("loc-1")).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("accepted")));
    let (_, answer) = post(&client, &url, &[], &json_body("loc-1")).await;
    assert_eq!(answer["status"], "duplicate");
    let (status, answer) = post(&client, &url, &[], b"{}").await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_payload")));
    relayd.stop().await.unwrap();
}

/// GitHub's delivery id is an unsigned header: a replayed signed request with a new id
/// and a `Content-Type` longer than an AMQP short string, or an id too long for the
/// index, is refused with a 400 before anything is stored (it used to be stored and
/// then stall every publish).
#[tokio::test(flavor = "multi_thread")]
async fn unsigned_id_and_content_type_headers_are_bounded_for_header_sourced_kinds() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    config.sources = vec![source("github", SourceKind::Github, &["gh"])];
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/github");
    let body = b"{}";
    let signature = format!("sha256={}", hex::encode(mac(b"gh", body)));
    let request = |id: String, content_type: String| {
        vec![
            ("x-hub-signature-256".to_string(), signature.clone()),
            ("x-github-delivery".to_string(), id),
            ("content-type".to_string(), content_type),
        ]
    };
    for headers in [
        request(
            "d-long-ct".into(),
            format!("application/json; x={}", "y".repeat(300)),
        ),
        request("d".repeat(300), "application/json".into()),
    ] {
        let (status, answer) = post(&client, &url, &headers, body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_payload")),
            "{answer}"
        );
    }
    db.assert_count("SELECT count(*) FROM events", 0, "").await;
    relayd.stop().await.unwrap();
}

/// Slack, checked against `slack_sdk`: what its `SignatureVerifier` signs is accepted and
/// a one-byte change of it refused; its signed `url_verification` is answered with the
/// challenge and stores nothing, while an unsigned or wrongly signed one gets a 400 and
/// no challenge; and what `relayd send-test-event` signs for Slack, the SDK accepts.
#[tokio::test(flavor = "multi_thread")]
async fn slack_requests_are_checked_with_slack_s_own_sdk_and_its_handshake_is_answered() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    config.sources = vec![source("slack", SourceKind::Slack, &[secret])];
    let relayd = Relayd::ingest(config.clone()).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/slack");
    let now = support::now();
    let signed = |body: &[u8]| {
        vec![
            ("x-slack-request-timestamp".to_string(), now.to_string()),
            (
                "x-slack-signature".to_string(),
                sdk::slack_signature(secret, now, body),
            ),
        ]
    };

    let event =
        br#"{"type":"event_callback","event_id":"Ev0SDK1","event":{"type":"message","text":"hello"}}"#;
    let (status, answer) = post(&client, &url, &signed(event), event).await;
    assert_eq!(
        (status, answer["event_id"].as_str()),
        (200, Some("Ev0SDK1")),
        "{answer}"
    );
    let mut changed = event.to_vec();
    changed[60] ^= 1;
    let (status, answer) = post(&client, &url, &signed(event), &changed).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_signature")),
        "one byte changed: {answer}"
    );

    let challenge = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let (status, answer) = post(&client, &url, &signed(challenge), challenge).await;
    assert_eq!(
        (status, answer["challenge"].as_str()),
        (200, Some("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")),
        "{answer}"
    );
    for (case, headers) in [
        ("unsigned", Vec::new()),
        ("signed for another body", signed(event)),
    ] {
        let (status, answer) = post(&client, &url, &headers, challenge).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert!(answer.get("challenge").is_none(), "{case}: {answer}");
    }
    db.assert_count("SELECT count(*) FROM events", 1, "handshakes store nothing")
        .await;

    let verifier = relayd::ingest::verify::for_source(&config.sources[0]);
    let sample = verifier
        .sign(&relayd::ingest::verify::SampleEvent::new(
            "Ev0SAMPLE",
            "app_mention",
        ))
        .unwrap();
    let header = |name: &str| {
        sample
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert!(
        sdk::slack_accepts(
            secret,
            &header("x-slack-request-timestamp"),
            &header("x-slack-signature"),
            &sample.body
        ),
        "slack_sdk refuses what send-test-event signs"
    );
    relayd.stop().await.unwrap();
}

/// Paddle Billing, checked against `paddle-python-sdk`: what its `PaddleSignature`
/// signs is accepted and a one-byte change refused, and what `relayd send-test-event`
/// signs for Paddle, the SDK's `Verifier` accepts (and refuses under another secret).
#[tokio::test(flavor = "multi_thread")]
async fn paddle_requests_are_checked_with_paddle_s_own_sdk() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    let secret = "pdl_ntfset_01gkpjp8bkm3tm53kdgkx6sms7_6h3qd3uFSi9YCD3OLYAShQI90XTI5vEI";
    config.sources = vec![source("paddle", SourceKind::Paddle, &[secret])];
    let relayd = Relayd::ingest(config.clone()).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/paddle");
    let event = br#"{"event_id":"evt_01hv8x2sdk","event_type":"subscription.created","data":{"id":"sub_1"}}"#;
    let signed = vec![(
        "paddle-signature".to_string(),
        sdk::paddle_signature(secret, support::now(), event),
    )];
    let (status, answer) = post(&client, &url, &signed, event).await;
    assert_eq!(
        (status, answer["event_id"].as_str()),
        (200, Some("evt_01hv8x2sdk")),
        "{answer}"
    );
    let mut changed = event.to_vec();
    changed[40] ^= 1;
    let (status, answer) = post(&client, &url, &signed, &changed).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_signature")),
        "{answer}"
    );

    let verifier = relayd::ingest::verify::for_source(&config.sources[0]);
    let sample = verifier
        .sign(&relayd::ingest::verify::SampleEvent::new(
            "evt_sample",
            "transaction.completed",
        ))
        .unwrap();
    let signature = &sample
        .headers
        .iter()
        .find(|(n, _)| n == "paddle-signature")
        .unwrap()
        .1;
    assert!(
        sdk::paddle_accepts(secret, signature, &sample.body),
        "the SDK refuses send-test-event's request"
    );
    assert!(!sdk::paddle_accepts("pdl_ntfset_other", signature, &sample.body));
    relayd.stop().await.unwrap();
}

/// Square, checked against `squareup`'s `verify_signature` (its SDK verifies; it has no
/// signer): what the SDK accepts relayd accepts, a one-byte change or another
/// notification URL neither does, and what `relayd send-test-event` signs the SDK accepts.
#[tokio::test(flavor = "multi_thread")]
async fn square_requests_are_checked_with_square_s_own_sdk() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    let key = "sq-signature-key";
    let mut square = source("square", SourceKind::Square, &[key]);
    square.public_url = Some(SQUARE_URL.into());
    config.sources = vec![square];
    let relayd = Relayd::ingest(config.clone()).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/square");
    let event = br#"{"merchant_id":"ML1","type":"refund.created","event_id":"6a8f5f28-sdk","data":{}}"#;
    let signature = square_signature(key, event);
    assert!(
        sdk::square_accepts(key, SQUARE_URL, &signature, event),
        "the SDK agrees with the signing here"
    );
    let headers = vec![("x-square-hmacsha256-signature".to_string(), signature.clone())];
    let (status, answer) = post(&client, &url, &headers, event).await;
    assert_eq!(
        (status, answer["event_id"].as_str()),
        (200, Some("6a8f5f28-sdk")),
        "{answer}"
    );
    let mut changed = event.to_vec();
    changed[30] ^= 1;
    assert!(!sdk::square_accepts(key, SQUARE_URL, &signature, &changed));
    let (status, answer) = post(&client, &url, &headers, &changed).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_signature")),
        "{answer}"
    );
    assert!(!sdk::square_accepts(
        key,
        "https://elsewhere.example/hook",
        &signature,
        event
    ));

    let verifier = relayd::ingest::verify::for_source(&config.sources[0]);
    let sample = verifier
        .sign(&relayd::ingest::verify::SampleEvent::new(
            "evt_sample",
            "payment.created",
        ))
        .unwrap();
    let signed = &sample
        .headers
        .iter()
        .find(|(n, _)| n == "x-square-hmacsha256-signature")
        .unwrap()
        .1;
    assert!(
        sdk::square_accepts(key, SQUARE_URL, signed, &sample.body),
        "the SDK refuses send-test-event's request"
    );
    relayd.stop().await.unwrap();
}

/// Zoom's `endpoint.url_validation` over HTTP: signed, it is answered with the
/// `plainToken` and its `encryptedToken` (the HMAC-SHA256 of the token under the secret
/// token, as Zoom's documentation computes it) and stores nothing; unsigned or signed
/// with another secret, it is a 400 without the answer.
#[tokio::test(flavor = "multi_thread")]
async fn zoom_url_validation_is_answered_only_when_signed_and_stores_nothing() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    let secret = "zoom-secret-token";
    config.sources = vec![source("zoom", SourceKind::Zoom, &[secret])];
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/zoom");
    let body = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let now = support::now();
    let (status, answer) = post(&client, &url, &zoom_headers(secret, now, body), body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["plainToken"], "qgg8vlvZRS6UYooatFL8Aw");
    assert_eq!(
        answer["encryptedToken"],
        hex::encode(mac(secret.as_bytes(), b"qgg8vlvZRS6UYooatFL8Aw")).as_str()
    );
    for (case, headers) in [
        ("unsigned", Vec::new()),
        ("another secret", zoom_headers("not-the-token", now, body)),
    ] {
        let (status, answer) = post(&client, &url, &headers, body).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert!(answer.get("encryptedToken").is_none(), "{case}: {answer}");
    }
    db.assert_count("SELECT count(*) FROM events", 0, "handshakes store nothing")
        .await;
    relayd.stop().await.unwrap();
}

/// Linear, checked against `@linear/sdk`'s `LinearWebhookClient.verify` (it verifies;
/// it has no signer): a request the SDK accepts, relayd accepts; a one-byte change or a
/// stale `webhookTimestamp` neither does; and what `relayd send-test-event` signs for
/// Linear, the SDK accepts.
#[tokio::test(flavor = "multi_thread")]
async fn linear_requests_are_checked_with_linear_s_own_sdk() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    let secret = "lin_wh_signing_secret";
    let mut linear = source("linear", SourceKind::Linear, &[secret]);
    linear.tolerance = std::time::Duration::from_secs(60);
    config.sources = vec![linear];
    let relayd = Relayd::ingest(config.clone()).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/linear");
    let body_at = |millis: i64| {
        format!(r#"{{"action":"create","type":"Comment","data":{{"id":"c1","body":"hi"}},"webhookTimestamp":{millis}}}"#)
            .into_bytes()
    };
    let now_ms = support::now() * 1000;
    let event = body_at(now_ms);
    let signature = hex::encode(mac(secret.as_bytes(), &event));
    assert!(
        sdk::linear_accepts(secret, &signature, &event),
        "the SDK agrees with the signing here"
    );
    let headers = vec![
        ("linear-signature".to_string(), signature.clone()),
        ("linear-delivery".to_string(), "5f1c3b9e-sdk".to_string()),
    ];
    let (status, answer) = post(&client, &url, &headers, &event).await;
    assert_eq!(
        (status, answer["event_id"].as_str()),
        (200, Some("5f1c3b9e-sdk")),
        "{answer}"
    );
    let mut changed = event.clone();
    changed[12] ^= 1;
    assert!(!sdk::linear_accepts(secret, &signature, &changed));
    let (status, answer) = post(&client, &url, &headers, &changed).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_signature")),
        "{answer}"
    );
    let stale = body_at(now_ms - 120_000);
    let stale_signature = hex::encode(mac(secret.as_bytes(), &stale));
    assert!(
        !sdk::linear_accepts(secret, &stale_signature, &stale),
        "the SDK's window"
    );
    let stale_headers = vec![("linear-signature".to_string(), stale_signature)];
    let (status, answer) = post(&client, &url, &stale_headers, &stale).await;
    assert_eq!(status, 400, "outside the one-minute tolerance: {answer}");

    let verifier = relayd::ingest::verify::for_source(&config.sources[0]);
    let sample = verifier
        .sign(&relayd::ingest::verify::SampleEvent::new(
            "sample-delivery",
            "Issue.update",
        ))
        .unwrap();
    let signed = &sample
        .headers
        .iter()
        .find(|(n, _)| n == "linear-signature")
        .unwrap()
        .1;
    assert!(
        sdk::linear_accepts(secret, signed, &sample.body),
        "the SDK refuses send-test-event's request"
    );
    relayd.stop().await.unwrap();
}

/// Meta over HTTP: the `GET ?hub.mode=subscribe` handshake is answered with the
/// challenge only for the configured verify token (else 403, without it), a `GET` on a
/// kind without such a handshake stays a 405, a signed notification is accepted (keyed
/// by its body, typed by object and field), and no handshake stores anything.
#[tokio::test(flavor = "multi_thread")]
async fn meta_subscription_handshake_and_signed_notifications() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    let mut meta = source("whatsapp", SourceKind::Meta, &["meta-app-secret"]);
    meta.verify_token = Some(Secret::new("the-verify-token"));
    config.sources.push(meta);
    let relayd = Relayd::ingest(config).await;
    let client = reqwest::Client::new();
    let get = |query: &str| {
        let request = client.get(relayd.url(&format!("/webhooks/whatsapp?{query}")));
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) =
        get("hub.mode=subscribe&hub.verify_token=the-verify-token&hub.challenge=1158201444").await;
    assert_eq!((status, body.as_str()), (200, "1158201444"));
    let (status, body) = get("hub.mode=subscribe&hub.verify_token=guess&hub.challenge=1158201444").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        !body.contains("1158201444") && body.contains("forbidden"),
        "{body}"
    );
    let other = client
        .get(relayd.url("/webhooks/stripe?hub.mode=subscribe"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 405, "stripe has no handshake by query");

    let notification = br#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{"messages":[{"id":"wamid.1"}]}}]}]}"#;
    let signature = format!("sha256={}", hex::encode(mac(b"meta-app-secret", notification)));
    let url = relayd.url("/webhooks/whatsapp");
    let (status, answer) = post(
        &client,
        &url,
        &[("x-hub-signature-256".into(), signature.clone())],
        notification,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = post(
        &client,
        &url,
        &[("x-hub-signature-256".into(), signature)],
        notification,
    )
    .await;
    assert_eq!(
        answer["status"], "duplicate",
        "a retry resends the same body: {status} {answer}"
    );
    db.assert_count(
        "SELECT count(*) FROM events WHERE event_type = 'whatsapp_business_account.messages'",
        1,
        "one notification, and no handshake, stored",
    )
    .await;
    db.assert_count("SELECT count(*) FROM events", 1, "").await;
    relayd.stop().await.unwrap();
}

/// Twilio over HTTP, checked with `twilio`'s `RequestValidator`: a form body (repeated
/// and encoded parameters, the request's own query in the signed URL) signed by the SDK
/// is accepted under the configured public URL and refused one byte changed; a JSON
/// body under a SharedKey's HMAC-SHA256 is covered by the `bodySHA256` the SDK computes;
/// and what `send-test-event` signs, the SDK validates.
#[tokio::test(flavor = "multi_thread")]
async fn twilio_requests_are_checked_with_twilio_s_own_sdk() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    let token = "twilio-auth-token";
    let mut twilio = source("twilio", SourceKind::Twilio, &[token]);
    twilio.public_url = Some(TWILIO_URL.into());
    config.sources = vec![twilio];
    let relayd = Relayd::ingest(config.clone()).await;
    let client = reqwest::Client::new();

    let form = b"SmsStatus=received&Body=Hello+w%C3%B6rld%21+50%25&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm%2F1&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm%2F0&From=%2B15017122661&AccountSid=AC1";
    let query = "tenant=acme&region=us1";
    let public = format!("{TWILIO_URL}?{query}");
    let signature = sdk::twilio_signature(token, &public, form, "HMAC_SHA1");
    let headers = vec![
        (
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("i-twilio-idempotency-token".to_string(), "idem-sdk-1".to_string()),
        ("x-twilio-signature".to_string(), signature.clone()),
    ];
    let url = relayd.url(&format!("/webhooks/twilio?{query}"));
    let (status, answer) = post(&client, &url, &headers, form).await;
    assert_eq!(
        (status, answer["event_id"].as_str()),
        (200, Some("idem-sdk-1")),
        "{answer}"
    );
    db.assert_count(
        "SELECT count(*) FROM events WHERE event_type = 'message.received'",
        1,
        "typed by SmsStatus",
    )
    .await;
    let mut changed = form.to_vec();
    changed[30] ^= 1;
    assert!(!sdk::twilio_accepts_form(token, &public, &changed, &signature));
    let (status, answer) = post(&client, &url, &headers, &changed).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_signature")),
        "{answer}"
    );
    let (status, _) = post(
        &client,
        &relayd.url("/webhooks/twilio?tenant=other"),
        &headers,
        form,
    )
    .await;
    assert_eq!(status, 400, "the query is signed");

    let json = br#"{"specversion":"1.0","type":"com.twilio.messaging.message.delivered","id":"EZ1","data":{"messageSid":"SM1"}}"#;
    let hash = sdk::twilio_body_hash(json);
    let public = format!("{TWILIO_URL}?bodySHA256={hash}");
    let signature = sdk::twilio_url_signature(token, &public, "HMAC_SHA256");
    assert!(sdk::twilio_accepts_json(
        token,
        &public,
        json,
        &signature,
        "HMAC_SHA256"
    ));
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("i-twilio-idempotency-token".to_string(), "idem-sdk-2".to_string()),
        (
            "x-twilio-webhooks-signature-settings".to_string(),
            "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256".to_string(),
        ),
        ("x-twilio-signature".to_string(), signature.clone()),
    ];
    let url = relayd.url(&format!("/webhooks/twilio?bodySHA256={hash}"));
    let (status, answer) = post(&client, &url, &headers, json).await;
    assert_eq!(
        (status, answer["event_id"].as_str()),
        (200, Some("idem-sdk-2")),
        "{answer}"
    );
    let mut changed = json.to_vec();
    changed[20] ^= 1;
    assert!(!sdk::twilio_accepts_json(
        token,
        &public,
        &changed,
        &signature,
        "HMAC_SHA256"
    ));
    let (status, answer) = post(&client, &url, &headers, &changed).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_signature")),
        "{answer}"
    );
    db.assert_count(
        "SELECT count(*) FROM events WHERE event_type = 'com.twilio.messaging.message.delivered'",
        1,
        "a JSON body typed by its type",
    )
    .await;

    let verifier = relayd::ingest::verify::for_source(&config.sources[0]);
    let sample = verifier
        .sign(&relayd::ingest::verify::SampleEvent::new(
            "idem-sample",
            "message.sent",
        ))
        .unwrap();
    let signed = &sample
        .headers
        .iter()
        .find(|(n, _)| n == "x-twilio-signature")
        .unwrap()
        .1;
    assert!(
        sdk::twilio_accepts_form(token, TWILIO_URL, &sample.body, signed),
        "the SDK refuses send-test-event's request"
    );
    db.assert_count("SELECT count(*) FROM events", 2, "").await;
    relayd.stop().await.unwrap();
}

/// Discord interactions over HTTP, signed by PyNaCl with a key pair it made: a `PING` is
/// answered `{"type":1}` and stored nowhere; a forged `PING` (Discord's own endpoint
/// check sends them) and a one-byte change are refused `401`; a command is stored once
/// by its interaction id and answered with a deferred response, its retry a duplicate
/// with the same answer; and what `send-test-event` signs, PyNaCl verifies.
#[tokio::test(flavor = "multi_thread")]
async fn discord_interactions_are_checked_with_pynacl_and_a_ping_is_answered_with_pong() {
    let db = TestDb::migrated().await;
    let mut config = support::config(&db.url);
    let (seed, public) = sdk::nacl_key_pair();
    let (_, other_public) = sdk::nacl_key_pair();
    config.sources = vec![source("discord", SourceKind::Discord, &[&other_public, &public])];
    let relayd = Relayd::ingest(config.clone()).await;
    let client = reqwest::Client::new();
    let url = relayd.url("/webhooks/discord");
    let signed = |body: &[u8]| {
        let t = support::now().to_string();
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-signature-timestamp".to_string(), t.clone()),
            (
                "x-signature-ed25519".to_string(),
                sdk::nacl_signature(&seed, &t, body),
            ),
        ]
    };
    let answer_of = |headers: &[(String, String)], body: &[u8]| {
        let mut request = client.post(&url).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let outcome = response
                .headers()
                .get("x-relayd-status")
                .map(|v| v.to_str().unwrap().to_string());
            (
                status,
                outcome,
                response.json::<Value>().await.unwrap_or_default(),
            )
        }
    };

    let ping = br#"{"id":"1100000000000000001","application_id":"1000","type":1,"version":1}"#;
    let (status, _, answer) = answer_of(&signed(ping), ping).await;
    assert_eq!((status, answer), (200, serde_json::json!({"type": 1})));
    let mut forged = signed(ping);
    forged[2].1 = "0".repeat(128);
    let (status, _, answer) = answer_of(&forged, ping).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_signature")),
        "{answer}"
    );

    let command = br#"{"id":"1100000000000000002","application_id":"1000","type":2,"token":"tok","version":1,"data":{"id":"9","name":"deploy","type":1}}"#;
    let headers = signed(command);
    assert!(sdk::nacl_accepts(&public, &headers[1].1, command, &headers[2].1));
    let (status, outcome, answer) = answer_of(&headers, command).await;
    assert_eq!(
        (status, outcome.as_deref(), answer),
        (200, Some("accepted"), serde_json::json!({"type": 5}))
    );
    let (status, outcome, answer) = answer_of(&headers, command).await;
    assert_eq!(
        (status, outcome.as_deref(), answer),
        (200, Some("duplicate"), serde_json::json!({"type": 5}))
    );
    let mut changed = command.to_vec();
    changed[10] ^= 1;
    let (status, _, _) = answer_of(&headers, &changed).await;
    assert_eq!(status, 401, "one byte changed");
    db.assert_count(
        "SELECT count(*) FROM events WHERE source = 'discord' AND event_id = '1100000000000000002' \
         AND event_type = 'application_command'",
        1,
        "the command, by its interaction id",
    )
    .await;
    db.assert_count("SELECT count(*) FROM events", 1, "no PING stored")
        .await;

    let verifier = relayd::ingest::verify::for_source(&config.sources[0]);
    let sample = verifier
        .sign(&relayd::ingest::verify::SampleEvent {
            private_key: Some(hex::decode(&seed).unwrap()),
            ..relayd::ingest::verify::SampleEvent::new("1100000000000000003", "message_component")
        })
        .unwrap();
    let header = |name: &str| &sample.headers.iter().find(|(n, _)| n == name).unwrap().1;
    assert!(
        sdk::nacl_accepts(
            &public,
            header("x-signature-timestamp"),
            &sample.body,
            header("x-signature-ed25519")
        ),
        "PyNaCl refuses send-test-event's request"
    );
    relayd.stop().await.unwrap();
}
