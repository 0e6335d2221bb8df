//! Hostile input against a running relayd (real PostgreSQL and RabbitMQ): generated
//! requests — control characters and NULs in every field, over-long ids and types, odd
//! `Content-Type` bytes, invalid UTF-8 and garbage bodies, truncated bodies, bad
//! signatures, unknown sources, oversized bodies — sent at the same instants as valid
//! signed events. Invariants: nothing is answered 5xx; each request gets exactly the
//! answer its input deserves; every accepted event is delivered exactly once, byte for
//! byte, within 10 s; the pipeline is still flowing at the end.
//!
//! CI runs a fixed budget of cases (`RELAYD_HOSTILE_CASES`, default 16, each up to 12
//! concurrent requests); `RELAYD_HOSTILE_CASES=500 cargo test --test it hostile` runs more.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use relayd::context::Role;

use crate::sink::{Behaviour, Sink};
use crate::support::{self, stripe_event, stripe_signature, Relayd, TestBroker, TestDb, STRIPE_SECRET};

#[derive(Debug, Clone)]
enum Request {
    /// A correctly signed Stripe event with these fields.
    Signed {
        id: String,
        event_type: String,
        content_type: Vec<u8>,
    },
    /// Arbitrary bytes, correctly signed.
    SignedGarbage { body: Vec<u8> },
    /// A valid event whose body is cut after `keep` bytes (signed whole).
    Truncated { id: String, keep: usize },
    /// A signature that matches no secret.
    BadSignature { id: String },
    /// A source segment that names no source.
    UnknownSource { segment: String },
    /// A body over `ingest.max_body_bytes`.
    TooLarge,
}

/// Text with the characters that break storage and protocols well represented.
fn text(max: usize) -> impl Strategy<Value = String> {
    let character = prop_oneof![
        6 => proptest::char::range('a', 'z'),
        2 => any::<char>(),
        1 => Just('\0'),
        1 => Just('\u{7}'),
        1 => Just('\u{85}'),
        1 => Just('é'),
    ];
    prop_oneof![
        3 => proptest::collection::vec(character, 0..40),
        1 => proptest::collection::vec(proptest::char::range('a', 'z'), 250..260),
        1 => proptest::collection::vec(proptest::char::range('a', 'z'), max..max + 1),
    ]
    .prop_map(|chars| chars.into_iter().collect())
}

fn request() -> impl Strategy<Value = Request> {
    let content_type = prop_oneof![
        4 => Just(b"application/json".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => proptest::collection::vec(Just(b'a'), 250..300),
    ];
    prop_oneof![
        6 => (text(3000), text(200_000), content_type)
            .prop_map(|(id, event_type, content_type)| Request::Signed { id, event_type, content_type }),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(|body| Request::SignedGarbage { body }),
        1 => (text(40), 1usize..60).prop_map(|(id, keep)| Request::Truncated { id, keep }),
        1 => text(40).prop_map(|id| Request::BadSignature { id }),
        1 => text(300).prop_map(|segment| Request::UnknownSource { segment }),
        1 => Just(Request::TooLarge),
    ]
}

/// An id or type relayd must accept: 1 to 255 bytes, no control characters.
fn storable(value: &str) -> bool {
    !value.is_empty() && value.len() <= 255 && !value.chars().any(char::is_control)
}

/// What relayd must answer, and for an accepted event its id and body.
struct Sent {
    request: Request,
    status: Option<u16>,
    allowed: Vec<u16>,
    /// `(event id, body)` when the answer must be 200 and the event delivered.
    accepted: Option<(String, Vec<u8>)>,
    first_acceptance: bool,
}

async fn send(client: &reqwest::Client, base: &str, request: Request) -> Sent {
    let signed = |body: &[u8]| stripe_signature(STRIPE_SECRET, support::now(), body);
    let url = format!("{base}/webhooks/stripe");
    let (builder, allowed, accepted) = match &request {
        Request::Signed {
            id,
            event_type,
            content_type,
        } => {
            let body = stripe_event(id, event_type);
            let header = reqwest::header::HeaderValue::from_bytes(content_type).ok();
            let content_type_ok = header.as_ref().is_none_or(|h| h.to_str().is_ok_and(storable));
            let mut builder = client.post(&url).header("stripe-signature", signed(&body));
            if let Some(header) = header {
                builder = builder.header("content-type", header);
            }
            let ok = storable(id) && storable(event_type) && content_type_ok;
            let accepted = ok.then(|| (id.clone(), body.clone()));
            (
                builder.body(body),
                if ok { vec![200] } else { vec![400] },
                accepted,
            )
        }
        Request::SignedGarbage { body } => (
            client
                .post(&url)
                .header("stripe-signature", signed(body))
                .body(body.clone()),
            vec![400],
            None,
        ),
        Request::Truncated { id, keep } => {
            let body = stripe_event(id, "invoice.paid");
            let cut = body[..(*keep).min(body.len() - 1)].to_vec();
            (
                client
                    .post(&url)
                    .header("stripe-signature", signed(&body))
                    .body(cut),
                vec![400],
                None,
            )
        }
        Request::BadSignature { id } => {
            let body = stripe_event(id, "invoice.paid");
            let signature = stripe_signature("whsec_not_the_secret", support::now(), &body);
            (
                client.post(&url).header("stripe-signature", signature).body(body),
                vec![400],
                None,
            )
        }
        Request::UnknownSource { segment } => {
            let segment = percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC);
            let body = stripe_event("evt_unknown_source", "invoice.paid");
            (
                client
                    .post(format!("{base}/webhooks/x{segment}"))
                    .header("stripe-signature", signed(&body))
                    .body(body),
                vec![404],
                None,
            )
        }
        Request::TooLarge => (
            client.post(&url).body(vec![b'{'; 2 * 1024 * 1024]),
            vec![413],
            None,
        ),
    };
    let answer = builder.send().await;
    let (status, first_acceptance) = match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (Some(status), body["status"] == "accepted")
        }
        // An oversized body may be cut off by the server closing: that is an answer too.
        Err(_) if matches!(request, Request::TooLarge) => (Some(413), false),
        Err(_) => (None, false),
    };
    Sent {
        request,
        status,
        allowed,
        accepted,
        first_acceptance,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_beside_valid_ones_get_their_own_answers_and_valid_events_are_delivered_once() {
    let cases: usize = std::env::var("RELAYD_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["sink"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let mut config = support::config(&db.url);
    broker.configure(&mut config);
    config.relay.poll_interval = Duration::from_millis(200);
    let mut destination = support::destination("sink", &[], &[]);
    destination.url = relayd::config::Secret::new(sink.url.clone());
    config.destinations = vec![destination];
    let relayd = Relayd::start(config, &[Role::Ingest, Role::Relay, Role::Worker]).await;
    relayd.wait_ready().await;
    let base = relayd.url("");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let mut runner = TestRunner::deterministic();
    let strategy = proptest::collection::vec(request(), 1..12);
    let mut expected: HashMap<String, Vec<u8>> = HashMap::new();
    for case in 0..cases {
        let requests = strategy.new_tree(&mut runner).unwrap().current();
        // A valid event in every case, in the same instant as the rest.
        let mut batch = vec![Request::Signed {
            id: format!("evt_hostile_valid_{case}"),
            event_type: "invoice.paid".into(),
            content_type: b"application/json".to_vec(),
        }];
        batch.extend(requests);
        let sent = futures_util::future::join_all(batch.into_iter().map(|r| send(&client, &base, r))).await;
        for s in sent {
            let status = s.status.expect("every request is answered");
            assert!(status < 500, "case {case}: {status} for {:?}", s.request);
            assert!(
                s.allowed.contains(&status),
                "case {case}: {status}, expected {:?}, for {:?}",
                s.allowed,
                s.request
            );
            if let (Some((id, body)), true) = (s.accepted, s.first_acceptance) {
                expected.insert(id, body);
            }
        }
    }

    // Still flowing, and every accepted event delivered once, byte for byte.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let received = sink.received();
        let got: HashMap<String, usize> = received.iter().fold(HashMap::new(), |mut m, r| {
            *m.entry(r.event_id()).or_default() += 1;
            m
        });
        let missing: Vec<&String> = expected.keys().filter(|id| !got.contains_key(*id)).collect();
        if missing.is_empty() {
            for request in &received {
                let id = request.event_id();
                assert_eq!(
                    Some(&request.body),
                    expected.get(&id),
                    "delivered as sent: {id:?}"
                );
                assert_eq!(got[&id], 1, "{id:?} delivered once");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted events not delivered within 10 s, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "hostile input: {cases} cases, {} events accepted and delivered once",
        expected.len()
    );
    relayd.stop().await.unwrap();
}
