//! Reloading the configuration of the real binary (SIGHUP and `POST /admin/api/reload`):
//! a source's secret rotated, a source added, a destination's URL, signing secret and
//! routing changed, destinations added and removed, all for new work while events keep
//! arriving; an invalid file and a change only a restart can make are refused, and the
//! running configuration stays.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::child::{config_file, Process};
use crate::support::sink::{Behaviour, Received, Sink};
use crate::support::{
    self, stripe_event, stripe_signature, TestBroker, TestDb, DESTINATION_SECRET, STRIPE_SECRET,
};

const ADMIN_TOKEN: &str = "reload-admin-token-0123456789";
const NEW_STRIPE_SECRET: &str = "whsec_rotated_secret_for_reload";
const NEW_DESTINATION_SECRET: &str = "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

/// One version of the test's configuration file.
struct Version<'a> {
    stripe_secrets: &'a [&'a str],
    url: &'a str,
    signing_secret: &'a str,
    event_types: &'a [&'a str],
    /// Appended as it is (more tables).
    extra: &'a str,
}

fn write(base: &str, file: &support::TempFile, sink_url: &str, version: &Version) {
    let quoted = |items: &[&str]| {
        items
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = base
        .replace(
            &format!("secrets = [\"{STRIPE_SECRET}\"]"),
            &format!("secrets = [{}]", quoted(version.stripe_secrets)),
        )
        .replace(
            &format!("url = \"{sink_url}\""),
            &format!("url = {:?}", version.url),
        )
        .replace(
            &format!("signing_secret = \"{DESTINATION_SECRET}\""),
            &format!("signing_secret = {:?}", version.signing_secret),
        );
    let text = format!(
        "{text}event_types = [{}]\n{}",
        quoted(version.event_types),
        version.extra
    );
    std::fs::write(&file.0, text).unwrap();
}

/// The ingest listener of the relayd under test, and a client to post to it.
#[derive(Clone)]
struct Ingest {
    client: reqwest::Client,
    addr: String,
}

impl Ingest {
    fn of(relayd: &Process) -> Self {
        Self {
            client: reqwest::Client::new(),
            addr: relayd.ingest.clone().unwrap(),
        }
    }

    /// Posts an event to `source` (a Stripe source, or the GitHub one `gh`) signed with
    /// `secret`; returns the status.
    async fn post(&self, source: &str, secret: &str, id: &str, event_type: &str) -> u16 {
        post(&self.client, &self.addr, source, secret, id, event_type).await
    }
}

async fn post(
    client: &reqwest::Client,
    ingest: &str,
    source: &str,
    secret: &str,
    id: &str,
    event_type: &str,
) -> u16 {
    let body = stripe_event(id, event_type);
    let request = client
        .post(format!("http://{ingest}/webhooks/{source}"))
        .body(body.clone());
    let request = if source == "gh" {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = hex::encode(ring::hmac::sign(&key, &body).as_ref());
        request
            .header("x-hub-signature-256", format!("sha256={tag}"))
            .header("x-github-delivery", id)
            .header("x-github-event", event_type)
    } else {
        request.header(
            "stripe-signature",
            stripe_signature(secret, support::now(), &body),
        )
    };
    request.send().await.unwrap().status().as_u16()
}

/// Posts `count` events signed with the first secret, 10 ms apart, each of which must
/// be accepted; returns their ids.
fn send_while(ingest: &Ingest, prefix: &'static str, count: usize) -> tokio::task::JoinHandle<Vec<String>> {
    let ingest = ingest.clone();
    tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..count {
            let id = format!("{prefix}_{i}");
            assert_eq!(
                ingest.post("stripe", STRIPE_SECRET, &id, "invoice.paid").await,
                200,
                "{id}"
            );
            ids.push(id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ids
    })
}

async fn reload(client: &reqwest::Client, relayd: &Process) -> (u16, serde_json::Value) {
    let answer = client
        .post(relayd.ops_url("/admin/api/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

fn signed_with(request: &Received, secret: &str) -> bool {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &request.headers {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &headers)
        .is_ok()
}

/// Waits until the sink has a request for each of `ids`.
async fn wait_for_ids(sink: &Sink, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received: std::collections::HashSet<String> =
            sink.received().iter().map(Received::event_id).collect();
        let missing: Vec<&String> = ids.iter().filter(|id| !received.contains(*id)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "never delivered: {missing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reload_changes_sources_secrets_routing_and_destinations_for_new_work_and_loses_nothing() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let first = Sink::start(Behaviour::Succeed).await;
    let second = Sink::start(Behaviour::Succeed).await;
    let base = crate::support::child::config_with_admin_token(&db, &broker, &first, ADMIN_TOKEN)
        .replace("relayd::cmd=info", "relayd::cmd=info,relayd::reload=info");
    assert!(base.contains(ADMIN_TOKEN));
    let file = support::temp_file(&base);
    let before = Version {
        stripe_secrets: &[STRIPE_SECRET],
        url: &first.url,
        signing_secret: DESTINATION_SECRET,
        event_types: &["invoice.*"],
        extra: "",
    };
    write(&base, &file, &first.url, &before);
    let relayd = Process::start(&file, "all");
    relayd.wait_ready().await;
    let ingest = Ingest::of(&relayd);
    let client = ingest.client.clone();

    assert_eq!(
        ingest
            .post("stripe", STRIPE_SECRET, "evt_before", "invoice.paid")
            .await,
        200
    );
    assert_eq!(
        ingest
            .post("stripe", NEW_STRIPE_SECRET, "evt_new_too_early", "invoice.paid")
            .await,
        400
    );
    assert_eq!(ingest.post("gh", "gh-secret", "gh_too_early", "push").await, 404);
    wait_for_ids(&first, &["evt_before".into()]).await;

    // Events keep arriving, signed with the secret both configurations accept, while
    // the new one (rotation overlap, a new source, a new URL, secret and route) is put
    // in force through the admin API.
    let sender = send_while(&ingest, "evt_during", 150);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gh_source = "[[sources]]\nname = \"gh\"\nkind = \"github\"\nsecrets = [\"gh-secret\"]\n";
    let overlap = Version {
        stripe_secrets: &[NEW_STRIPE_SECRET, STRIPE_SECRET],
        url: &second.url,
        signing_secret: NEW_DESTINATION_SECRET,
        event_types: &["invoice.*", "charge.*", "push"],
        extra: gh_source,
    };
    write(&base, &file, &first.url, &overlap);
    let (status, answer) = reload(&client, &relayd).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "reloaded");
    assert_eq!(
        answer["changed"],
        serde_json::json!([
            "destinations.sink.url",
            "destinations.sink.signing_secret",
            "destinations.sink.event_types",
            "sources.stripe",
            "sources.gh (added)",
        ])
    );
    let during = sender.await.unwrap();
    // Every event accepted while reloading was delivered, to one URL or the other.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered: std::collections::HashSet<String> = first
            .received()
            .iter()
            .chain(&second.received())
            .map(Received::event_id)
            .collect();
        let lost = during.iter().filter(|id| !delivered.contains(*id)).count();
        if lost == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lost while reloading: {lost} of {}",
            during.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // New work follows the new configuration.
    for (source, secret, id, event_type) in [
        (
            "stripe",
            NEW_STRIPE_SECRET,
            "evt_after_new_secret",
            "invoice.paid",
        ),
        ("stripe", STRIPE_SECRET, "evt_after_old_secret", "invoice.paid"),
        (
            "stripe",
            NEW_STRIPE_SECRET,
            "evt_newly_routed",
            "charge.succeeded",
        ),
        ("gh", "gh-secret", "gh_after", "push"),
    ] {
        assert_eq!(ingest.post(source, secret, id, event_type).await, 200, "{id}");
    }
    let after = [
        "evt_after_new_secret",
        "evt_after_old_secret",
        "evt_newly_routed",
        "gh_after",
    ]
    .map(String::from);
    wait_for_ids(&second, &after).await;
    for request in second.received() {
        assert!(
            signed_with(&request, NEW_DESTINATION_SECRET),
            "signed with the new secret"
        );
        assert!(
            !signed_with(&request, DESTINATION_SECRET),
            "and not with the old one"
        );
    }
    assert!(
        !first.received().iter().any(|r| after.contains(&r.event_id())),
        "nothing new goes to the old URL"
    );

    // The rotation ends (by SIGHUP): the old secret is refused from now on.
    let rotated = Version {
        stripe_secrets: &[NEW_STRIPE_SECRET],
        ..overlap
    };
    write(&base, &file, &first.url, &rotated);
    relayd.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ingest
        .post("stripe", STRIPE_SECRET, "evt_old_secret_refused", "invoice.paid")
        .await
        != 400
    {
        assert!(
            Instant::now() < deadline,
            "the old secret is still accepted after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The line is written after the new sources are in force: it may trail the 400.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logged = relayd.logged("configuration reloaded");
        if logged
            .iter()
            .any(|l| l["by"] == "SIGHUP" && l["changed"] == "sources.stripe")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{logged:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An invalid file is refused with check-config's error; the old one keeps running.
    let invalid = Version {
        url: "not a url",
        ..rotated
    };
    write(&base, &file, &first.url, &invalid);
    let check = Command::new(support::relayd_binary())
        .args(["check-config", "--config"])
        .arg(&file.0)
        .env_remove("RELAYD_ROLE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    let check_line = stderr.trim().strip_prefix("relayd: error: ").unwrap();
    let (status, answer) = reload(&client, &relayd).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_configuration");
    assert_eq!(answer["message"], check_line);
    relayd.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relayd
        .logged("configuration reload refused; the running configuration stays")
        .iter()
        .any(|l| l["by"] == "SIGHUP")
    {
        assert!(
            Instant::now() < deadline,
            "the refused SIGHUP reload was not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // So is a change only a restart can make, naming it.
    let restart_only = base.replace("poll_interval = \"200ms\"", "poll_interval = \"300ms\"");
    assert_ne!(restart_only, base);
    write(&restart_only, &file, &first.url, &rotated);
    let (status, answer) = reload(&client, &relayd).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "needs_restart");
    assert_eq!(answer["keys"], serde_json::json!(["relay"]));

    // Through both refusals the reloaded configuration kept working.
    assert_eq!(
        ingest
            .post("stripe", NEW_STRIPE_SECRET, "evt_still_running", "invoice.paid")
            .await,
        200
    );
    assert_eq!(
        ingest
            .post("stripe", STRIPE_SECRET, "evt_still_refused", "invoice.paid")
            .await,
        400
    );
    wait_for_ids(&second, &["evt_still_running".into()]).await;
    assert!(relayd.terminate().success());
}

async fn admin_get(client: &reqwest::Client, relayd: &Process, path: &str) -> serde_json::Value {
    let answer = client
        .get(relayd.ops_url(&format!("/admin/api{path}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}

/// The status of `destination`'s delivery of the event whose provider id is `event_id`.
async fn delivery_status(db: &TestDb, destination: &str, event_id: &str) -> Vec<String> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use relayd::db::schema::{deliveries, events};
    let mut conn = db.connect().await;
    deliveries::table
        .inner_join(events::table)
        .filter(events::event_id.eq(event_id))
        .filter(deliveries::destination.eq(destination))
        .select(deliveries::status)
        .load(&mut conn)
        .await
        .unwrap()
}

async fn wait_status(db: &TestDb, destination: &str, event_id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = delivery_status(db, destination, event_id).await;
        if now == [status] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{destination} delivery of {event_id}: {now:?}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn destinations_added_and_removed_by_a_reload_start_and_stop_and_keep_what_is_undelivered() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink", "crm"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let failing = Sink::start(Behaviour::AlwaysFail { status: 503 }).await;
    let working = Sink::start(Behaviour::Succeed).await;
    let base = crate::support::child::config_with_admin_token(&db, &broker, &sink, ADMIN_TOKEN);
    let file = support::temp_file(&base);
    let only_sink = Version {
        stripe_secrets: &[STRIPE_SECRET],
        url: &sink.url,
        signing_secret: DESTINATION_SECRET,
        event_types: &[],
        extra: "",
    };
    write(&base, &file, &sink.url, &only_sink);
    let relayd = Process::start(&file, "all");
    relayd.wait_ready().await;
    let ingest = Ingest::of(&relayd);
    let client = ingest.client.clone();
    let crm = |url: &str| {
        format!("[[destinations]]\nname = \"crm\"\nurl = \"{url}\"\nsigning_secret = \"{DESTINATION_SECRET}\"\nevent_types = [\"charge.*\"]\n")
    };

    // Added while events keep flowing to the other destination: the worker's loops
    // start again in place, and none of those events is lost.
    let flowing = send_while(&ingest, "evt_while_adding", 100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let with_crm = crm(&failing.url);
    write(
        &base,
        &file,
        &sink.url,
        &Version {
            extra: &with_crm,
            ..only_sink
        },
    );
    let (status, answer) = reload(&client, &relayd).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], serde_json::json!(["destinations.crm (added)"]));
    wait_for_ids(&sink, &flowing.await.unwrap()).await;
    let listed = admin_get(&client, &relayd, "/destinations").await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "crm"),
        "{listed}"
    );

    // Routed to it from now on, sent to it (its queue was declared on reload), and dead
    // after its retries, since it answers 503.
    assert_eq!(
        ingest
            .post("stripe", STRIPE_SECRET, "evt_for_crm", "charge.refunded")
            .await,
        200
    );
    wait_for_ids(&failing, &["evt_for_crm".into()]).await;
    wait_status(&db, "crm", "evt_for_crm", "dead").await;

    // Removed while events flow: nothing new is routed to it, and its undelivered
    // delivery stays visible and replayable.
    let flowing = send_while(&ingest, "evt_while_removing", 100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(&base, &file, &sink.url, &only_sink);
    let (status, answer) = reload(&client, &relayd).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["changed"],
        serde_json::json!(["destinations.crm (removed)"])
    );
    wait_for_ids(&sink, &flowing.await.unwrap()).await;
    assert_eq!(
        ingest
            .post("stripe", STRIPE_SECRET, "evt_after_crm", "charge.refunded")
            .await,
        200
    );
    wait_for_ids(&sink, &["evt_after_crm".into()]).await;
    assert!(
        delivery_status(&db, "crm", "evt_after_crm").await.is_empty(),
        "routed to a removed destination"
    );
    let listed = admin_get(&client, &relayd, "/destinations").await;
    assert!(
        !listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "crm"),
        "{listed}"
    );
    let dead = admin_get(&client, &relayd, "/deliveries?destination=crm&status=dead").await;
    assert_eq!(dead["items"].as_array().unwrap().len(), 1, "{dead}");
    let replayed = client
        .post(relayd.ops_url("/admin/api/replay"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "destination": "crm" }))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 200);
    assert_eq!(replayed.json::<serde_json::Value>().await.unwrap()["replayed"], 1);
    // Published to its queue, where it waits: no loop consumes a removed destination.
    wait_status(&db, "crm", "evt_for_crm", "queued").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(delivery_status(&db, "crm", "evt_for_crm").await, ["queued"]);

    // Configured again, at a URL that answers: what waited is delivered.
    let crm_back = crm(&working.url);
    write(
        &base,
        &file,
        &sink.url,
        &Version {
            extra: &crm_back,
            ..only_sink
        },
    );
    relayd.signal("HUP");
    wait_for_ids(&working, &["evt_for_crm".into()]).await;
    wait_status(&db, "crm", "evt_for_crm", "delivered").await;

    // `[worker]` too: the loops start again under the new concurrency.
    let fewer = base.replace("lease_margin = \"1s\"", "lease_margin = \"1s\"\nconcurrency = 2");
    assert_ne!(fewer, base);
    write(
        &fewer,
        &file,
        &sink.url,
        &Version {
            extra: &crm_back,
            ..only_sink
        },
    );
    let (status, answer) = reload(&client, &relayd).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], serde_json::json!(["worker.concurrency"]));
    assert_eq!(
        ingest
            .post("stripe", STRIPE_SECRET, "evt_fewer", "invoice.paid")
            .await,
        200
    );
    wait_for_ids(&sink, &["evt_fewer".into()]).await;
    let listed = admin_get(&client, &relayd, "/destinations").await;
    for destination in listed["items"].as_array().unwrap() {
        assert!(destination["in_flight_limit"].as_i64().unwrap() <= 2, "{listed}");
    }

    let health = client.get(relayd.ops_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(relayd.terminate().success());
}

#[tokio::test]
async fn a_relay_declares_the_queue_of_a_destination_added_by_reload() {
    // Without a worker beside it to declare the new queue: the relay's publishes of
    // the new destination's rows are confirmed only once it has declared it.
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink", "crm"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let base = std::fs::read_to_string(&config_file(&db, &broker, &sink).0).unwrap();
    let file = support::temp_file(&base);
    let only_sink = Version {
        stripe_secrets: &[STRIPE_SECRET],
        url: &sink.url,
        signing_secret: DESTINATION_SECRET,
        event_types: &[],
        extra: "",
    };
    write(&base, &file, &sink.url, &only_sink);
    let relayd = Process::start(&file, "ingest,relay");
    relayd.wait_ready().await;
    let ingest = Ingest::of(&relayd);
    let crm = format!(
        "[[destinations]]\nname = \"crm\"\nurl = \"{}\"\nsigning_secret = \"{DESTINATION_SECRET}\"\n",
        sink.url
    );
    write(
        &base,
        &file,
        &sink.url,
        &Version {
            extra: &crm,
            ..only_sink
        },
    );
    relayd.signal("HUP");
    // SIGHUP's reload is done when new events are routed to crm.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut routed = None;
    for i in 0.. {
        let id = format!("evt_probe_route_{i}");
        assert_eq!(
            ingest.post("stripe", STRIPE_SECRET, &id, "invoice.paid").await,
            200
        );
        if !delivery_status(&db, "crm", &id).await.is_empty() {
            routed = Some(id);
            break;
        }
        assert!(Instant::now() < deadline, "the reload never routed to crm");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_status(&db, "crm", &routed.unwrap(), "queued").await;
    assert!(relayd.terminate().success());
}
