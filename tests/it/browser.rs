//! The dashboard in a real headless Chromium (events, detail, replay; the destinations
//! page's pause and resume; an ordered key waiting, and skip; replay jobs' progress and
//! cancel; what a payload filter refused), driven through chromedriver's WebDriver
//! HTTP API (a few JSON calls; no extra client crate). Needs Debian's `chromium` and
//! `chromium-driver` (installed on first need, [`crate::support::tools`]); `RELAYD_SKIP_BROWSER=1` opts out
//! explicitly on a machine without them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relayd::config::DestinationConfig;
use relayd::context::Role;
use serde_json::{json, Value};

use crate::ops::{config, to_sink, TOKEN};
use crate::support::sink::{Behaviour, Sink};
use crate::support::{post_stripe, stripe_event, Relayd, TestBroker, TestDb};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: Child,
    base: String,
    client: reqwest::Client,
    profile: std::path::PathBuf,
}

impl Browser {
    async fn start() -> Self {
        crate::support::tools::provision();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) must be installed");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let server = format!("http://127.0.0.1:{port}");
        loop {
            if let Ok(r) = client.get(format!("{server}/status")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("relayd-chromium-{}", uuid::Uuid::now_v7().simple()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1440,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let session: Value = client
            .post(format!("{server}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_string();
        Self {
            driver,
            base: format!("{server}/session/{id}"),
            client,
            profile,
        }
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        match answer["value"]["error"].as_str() {
            Some(error) => Err(format!(
                "WebDriver {path}: {error}: {}",
                answer["value"]["message"]
            )),
            None => Ok(answer["value"].clone()),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Opens the dashboard of `relayd` and gives it the admin token.
    /// A browser on `relayd`'s dashboard, logged in with the admin token.
    async fn logged_in(relayd: &Relayd) -> Self {
        let browser = Self::start().await;
        browser.goto(&relayd.ops_url("/admin/")).await;
        browser.type_into("#token", TOKEN).await;
        browser.click("#login-form button").await;
        browser
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {found}"))
            .to_string()
    }

    /// Clicks the element matching `css`, finding it again if the page re-rendered it
    /// between the lookup and the click (the dashboard redraws its lists).
    async fn click(&self, css: &str) {
        for _ in 0..10 {
            let element = self.find(css).await;
            match self
                .try_call(
                    reqwest::Method::POST,
                    &format!("/element/{element}/click"),
                    Some(json!({})),
                )
                .await
            {
                Ok(_) => return,
                Err(e) if e.contains("stale element reference") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{css} kept going stale");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls `script` (which returns a boolean) until it is true.
    async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.script(script).await != Value::Bool(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    async fn quit(mut self) {
        let _ = self.client.delete(&self.base).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_lists_events_shows_details_and_replays_a_dead_delivery() {
    if std::env::var("RELAYD_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("RELAYD_SKIP_BROWSER=1: the dashboard browser test is skipped");
        return;
    }
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["billing", "crm"]);
    let billing_sink = Sink::start(Behaviour::Succeed).await;
    // The CRM fails the first two tries of every webhook: with one retry configured its
    // delivery dies, and the replayed attempt succeeds.
    let crm_sink = Sink::start(Behaviour::FailFirst { n: 2, status: 502 }).await;
    let destinations = vec![
        DestinationConfig {
            event_types: vec!["invoice.*".into()],
            ..to_sink("billing", &billing_sink)
        },
        DestinationConfig {
            event_types: vec!["customer.*".into()],
            ..to_sink("crm", &crm_sink)
        },
    ];
    let relayd = Relayd::start(
        config(&db, &broker, destinations),
        &[Role::Ingest, Role::Relay, Role::Worker],
    )
    .await;
    let client = reqwest::Client::new();
    for (id, event_type) in [
        ("evt_ui_paid", "invoice.paid"),
        ("evt_ui_customer", "customer.created"),
    ] {
        post_stripe(
            &client,
            &relayd.url("/webhooks/stripe"),
            &stripe_event(id, event_type),
        )
        .await;
    }
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        1,
        Duration::from_secs(15),
    )
    .await;
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        1,
        Duration::from_secs(15),
    )
    .await;

    let browser = Browser::logged_in(&relayd).await;
    browser
        .wait_until(
            "both events listed with their delivery states",
            "const t = document.querySelector('#events')?.innerText || ''; \
             return t.includes('evt_ui_paid') && t.includes('evt_ui_customer') \
                 && t.includes('billing: delivered') && t.includes('crm: dead');",
        )
        .await;
    browser
        .wait_until(
            "the stats cards",
            "return document.querySelector('[data-status=dead] .value')?.innerText === '1';",
        )
        .await;
    browser
        .screenshot(&std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"))
        .await;

    // Open the dead event: its payload (pretty-printed JSON) and its failed attempts.
    browser.click("tr.event:nth-child(1)").await;
    browser
        .wait_until(
            "the detail view",
            "const d = document.querySelector('#detail'); return d.style.display === 'block' \
             && d.innerText.includes('customer.created') && d.innerText.includes('\"id\": \"evt_ui_customer\"') \
             && d.innerText.includes('502');",
        )
        .await;
    browser
        .screenshot(&std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-detail.png"))
        .await;
    browser.click("#detail button.replay").await;

    // The replay goes back through relay and worker, and the page shows it delivered.
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        2,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        crm_sink.received().len(),
        3,
        "2 failed tries, then the replayed one"
    );
    browser.click("#close").await;
    browser
        .wait_until(
            "the replayed delivery shown delivered",
            "document.querySelector('#first').click(); \
             return (document.querySelector('#events')?.innerText || '').includes('crm: delivered');",
        )
        .await;

    // The destinations page: pause billing, see its next event held and counted, resume.
    browser.click("#tab-destinations").await;
    browser
        .wait_until(
            "billing shown delivering",
            "const r = document.querySelector('tr.destination[data-name=billing]');              return !!r && r.innerText.includes('closed') && r.innerText.includes('Pause');",
        )
        .await;
    browser
        .click("tr.destination[data-name=billing] button.pause")
        .await;
    browser
        .wait_until(
            "billing shown paused",
            "const r = document.querySelector('tr.destination[data-name=billing]');              return !!r && r.innerText.includes('paused') && r.innerText.includes('Resume');",
        )
        .await;
    // Every worker obeys within 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    post_stripe(
        &client,
        &relayd.url("/webhooks/stripe"),
        &stripe_event("evt_ui_held", "invoice.paid"),
    )
    .await;
    browser
        .wait_until(
            "the held event counted as undelivered",
            "const r = document.querySelector('tr.destination[data-name=billing] td.undelivered');              return r?.innerText === '1';",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        billing_sink.received().len(),
        1,
        "nothing sent to a paused destination"
    );
    browser
        .screenshot(&std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-destinations.png"))
        .await;
    browser
        .click("tr.destination[data-name=billing] button.resume")
        .await;
    billing_sink.wait_for(2, Duration::from_secs(10)).await;
    browser
        .wait_until(
            "billing shown delivering again",
            "const r = document.querySelector('tr.destination[data-name=billing]');              return !!r && r.innerText.includes('closed');",
        )
        .await;
    browser.quit().await;
    relayd.stop().await.unwrap();
}

/// An ordered destination that blocks on dead: the list shows the key's next event
/// "waiting for key", the detail shows the dead delivery's key and place, and its Skip
/// button lets the key move on (the waiting event is delivered).
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_shows_a_waiting_key_and_skips_the_delivery_that_blocks_it() {
    if std::env::var("RELAYD_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("RELAYD_SKIP_BROWSER=1: the dashboard browser test is skipped");
        return;
    }
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["ledger"]);
    let sink = Sink::start(Behaviour::planned(|received, _| {
        if received.event_id() == "evt_ui_k1" {
            crate::support::sink::Answer::Whole {
                status: 500,
                body: b"no".to_vec(),
            }
        } else {
            crate::support::sink::Answer::ok()
        }
    }))
    .await;
    let destination = DestinationConfig {
        ordering: Some(relayd::config::OrderingConfig {
            key: Some("/data/object/customer".into()),
            key_header: None,
            on_dead: relayd::config::OnDead::Block,
        }),
        ..to_sink("ledger", &sink)
    };
    let relayd = Relayd::start(
        config(&db, &broker, vec![destination]),
        &[Role::Ingest, Role::Relay, Role::Worker],
    )
    .await;
    let client = reqwest::Client::new();
    for id in ["evt_ui_k1", "evt_ui_k2"] {
        post_stripe(
            &client,
            &relayd.url("/webhooks/stripe"),
            &crate::support::keyed_event(id, Some("cus_ui")),
        )
        .await;
    }
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        1,
        Duration::from_secs(15),
    )
    .await;

    let browser = Browser::logged_in(&relayd).await;
    browser
        .wait_until(
            "the blocked key's next event shown waiting",
            "const t = document.querySelector('#events')?.innerText || ''; \
             return t.includes('ledger: waiting for key') && t.includes('ledger: dead') \
                 && document.querySelector('[data-status=waiting] .value')?.innerText === '1';",
        )
        .await;
    // The list is newest first: the dead event is the second row.
    browser.click("tr.event:nth-child(2)").await;
    browser
        .wait_until(
            "the dead delivery's key, place and Skip button",
            "const d = document.querySelector('#detail'); return d.style.display === 'block' \
             && d.innerText.includes('key cus_ui #1') && !!d.querySelector('button.skip');",
        )
        .await;
    browser
        .screenshot(&std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-ordering.png"))
        .await;
    browser.click("#detail button.skip").await;
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        1,
        Duration::from_secs(15),
    )
    .await;
    browser
        .wait_until(
            "the skipped delivery shown skipped",
            "return (document.querySelector('#detail')?.innerText || '').includes('skipped');",
        )
        .await;
    let order: Vec<String> = sink.received().iter().map(|r| r.event_id()).collect();
    assert_eq!(order, ["evt_ui_k1", "evt_ui_k1", "evt_ui_k2"]);
    browser.quit().await;
    relayd.stop().await.unwrap();
}

/// A payload filter on the dashboard: the event a filter kept from a destination lists
/// that destination as filtered, and its panel says why.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_shows_which_destinations_a_filter_kept_an_event_from() {
    if std::env::var("RELAYD_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("RELAYD_SKIP_BROWSER=1: the dashboard browser test is skipped");
        return;
    }
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["billing", "big"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let destinations = vec![
        to_sink("billing", &sink),
        DestinationConfig {
            filter: Some("body.data.object.amount_due > 100000".into()),
            ..to_sink("big", &sink)
        },
    ];
    let relayd = Relayd::start(config(&db, &broker, destinations), &[Role::Ingest]).await;
    post_stripe(
        &reqwest::Client::new(),
        &relayd.url("/webhooks/stripe"),
        &stripe_event("evt_ui_small", "invoice.paid"),
    )
    .await;
    let browser = Browser::logged_in(&relayd).await;
    browser
        .wait_until(
            "the event listed with its delivery and the destination its filter refused",
            "const t = document.querySelector('#events')?.innerText || ''; \
             return t.includes('evt_ui_small') && t.includes('billing: pending') && t.includes('big: filtered');",
        )
        .await;
    browser.click("tr.event:nth-child(1)").await;
    browser
        .wait_until(
            "the panel's Filtered out table",
            "const d = document.querySelector('#filtered'); return !!d && d.innerText.includes('big') \
             && d.innerText.includes('no match');",
        )
        .await;
    browser.quit().await;
    relayd.stop().await.unwrap();
}

/// Replay jobs on the dashboard: "Replay all dead of this destination" counts first
/// (a dry run), then starts a job whose progress bar fills to done; a paced job shows
/// its bar part way, and its Cancel button stops it.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_starts_a_replay_job_shows_its_progress_and_cancels_one() {
    if std::env::var("RELAYD_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("RELAYD_SKIP_BROWSER=1: the dashboard browser test is skipped");
        return;
    }
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["billing", "crm"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let relayd = Relayd::start(
        config(
            &db,
            &broker,
            vec![to_sink("billing", &sink), to_sink("crm", &sink)],
        ),
        &[Role::Ingest, Role::Relay, Role::Worker],
    )
    .await;
    db.seed_deliveries(600, "billing", "dead", "0 seconds", None)
        .await;
    db.seed_deliveries(4_000, "crm", "dead", "0 seconds", None).await;

    let browser = Browser::logged_in(&relayd).await;
    browser
        .wait_until(
            "billing offered for the replay of its dead",
            "const s = document.querySelector('#dead-destination'); \
             if (![...(s?.options || [])].some(o => o.value === 'billing')) return false; \
             s.value = 'billing'; return true;",
        )
        .await;
    // The page asks before replaying, with the dry run's count.
    browser
        .script("window.asked = []; window.confirm = text => { window.asked.push(text); return true; }; return true;")
        .await;
    browser.click("#replay-dead").await;
    browser
        .wait_until(
            "the job shown done at 100 %",
            "const r = document.querySelector('tr.replay-job'); \
             return !!r && document.querySelector('#replays-page').style.display === 'block' \
                 && r.innerText.includes('done') && r.innerText.includes('600 of 600') \
                 && r.querySelector('progress').value === 100;",
        )
        .await;
    assert_eq!(
        browser.script("return window.asked;").await,
        json!(["Replay 600 dead deliveries of billing?"])
    );
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE destination = 'billing' AND status = 'delivered'",
        600,
        Duration::from_secs(30),
    )
    .await;

    // A paced job: its bar part way, then cancelled from the page.
    let admin = reqwest::Client::new();
    let answer = admin
        .post(relayd.ops_url("/admin/api/replays"))
        .bearer_auth(TOKEN)
        .json(&json!({"status": "dead", "destination": "crm", "max_rate": 250}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    browser
        .wait_until(
            "the paced job shown running part way",
            "const r = document.querySelector('tr.replay-job'); \
             const v = r?.querySelector('progress')?.value ?? 0; \
             return !!r && r.innerText.includes('running') && v >= 12 && v < 100;",
        )
        .await;
    browser
        .screenshot(&std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-replays.png"))
        .await;
    browser.click("tr.replay-job button.cancel").await;
    browser
        .wait_until(
            "the paced job shown cancelled",
            "const r = document.querySelector('tr.replay-job'); \
             return !!r && r.innerText.includes('cancelled') && !r.querySelector('button.cancel');",
        )
        .await;
    let replayed = db
        .count("SELECT replayed FROM replay_jobs WHERE status = 'cancelled'")
        .await;
    assert!((500..4_000).contains(&replayed), "{replayed}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        db.count("SELECT replayed FROM replay_jobs WHERE status = 'cancelled'")
            .await,
        replayed,
        "a cancelled job replays no more"
    );
    browser.quit().await;
    relayd.stop().await.unwrap();
}

/// Search by payload on the dashboard: a `match` and a `where` typed into the events
/// page find what they should; "Replay these" counts first and replays the deliveries
/// of what the search found (and nothing else); the Live tab shows an event as it
/// arrives.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_searches_by_payload_replays_what_it_found_and_follows_live() {
    if std::env::var("RELAYD_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("RELAYD_SKIP_BROWSER=1: the dashboard browser test is skipped");
        return;
    }
    let db = TestDb::migrated().await;
    let broker = TestBroker::new(&["billing"]);
    let sink = Sink::start(Behaviour::Succeed).await;
    let mut searchable = config(&db, &broker, vec![to_sink("billing", &sink)]);
    for source in &mut searchable.sources {
        source.searchable = true;
    }
    let relayd = Relayd::start(searchable, &[Role::Ingest, Role::Relay, Role::Worker]).await;
    let client = reqwest::Client::new();
    for (id, customer, amount) in [
        ("evt_ui_s1", "cus_123", 5000),
        ("evt_ui_s2", "cus_999", 5000),
        ("evt_ui_s3", "cus_123", 10),
    ] {
        let body = crate::search::invoice(id, "invoice.paid", customer, amount);
        post_stripe(&client, &relayd.url("/webhooks/stripe"), &body).await;
    }
    sink.wait_for(3, Duration::from_secs(20)).await;
    db.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        3,
        Duration::from_secs(15),
    )
    .await;

    let browser = Browser::logged_in(&relayd).await;
    browser
        .type_into("#f-match", r#"{"data":{"object":{"customer":"cus_123"}}}"#)
        .await;
    browser.click("#apply").await;
    browser
        .wait_until(
            "the match's two events, and not the other customer's",
            "const t = document.querySelector('#events').innerText; \
             return t.includes('evt_ui_s1') && t.includes('evt_ui_s3') && !t.includes('evt_ui_s2');",
        )
        .await;
    browser
        .type_into("#f-where", "body.data.object.amount_paid >= 1000")
        .await;
    browser.click("#apply").await;
    browser
        .wait_until(
            "the where leaving one",
            "const t = document.querySelector('#events').innerText; \
             return t.includes('evt_ui_s1') && !t.includes('evt_ui_s3');",
        )
        .await;
    browser
        .script("window.asked = []; window.confirm = text => { window.asked.push(text); return true; }; return true;")
        .await;
    browser.click("#replay-search").await;
    browser
        .wait_until(
            "the search's replay job done",
            "const r = document.querySelector('tr.replay-job'); \
             return !!r && r.innerText.includes('done') && r.innerText.includes('1 of 1') \
                 && r.innerText.includes('where=body.data.object.amount_paid >= 1000');",
        )
        .await;
    assert_eq!(
        browser.script("return window.asked;").await,
        json!(["Replay 1 deliveries of the events this search finds?"])
    );
    sink.wait_for(4, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again: Vec<String> = sink.received()[3..].iter().map(|r| r.event_id()).collect();
    assert_eq!(
        again,
        vec!["evt_ui_s1".to_string()],
        "only what the search found comes again"
    );

    // The live view: following, then an event arriving shows.
    browser.click("#tab-live").await;
    browser.type_into("#l-type", "invoice.*").await;
    browser.click("#live-toggle").await;
    browser
        .wait_until(
            "the live view following",
            "return document.querySelector('#live-state').innerText === 'following';",
        )
        .await;
    // The charge first: once the invoice after it shows, the stream has passed it.
    post_stripe(
        &client,
        &relayd.url("/webhooks/stripe"),
        &stripe_event("evt_ui_live_charge", "charge.succeeded"),
    )
    .await;
    post_stripe(
        &client,
        &relayd.url("/webhooks/stripe"),
        &crate::search::invoice("evt_ui_live", "invoice.paid", "cus_1", 1),
    )
    .await;
    browser
        .wait_until(
            "the arriving invoice in the live view, and not the charge its type filter leaves out",
            "const t = document.querySelector('#live').innerText; \
             return t.includes('evt_ui_live') && t.includes('billing') && !t.includes('evt_ui_live_charge');",
        )
        .await;
    browser
        .screenshot(&std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-live.png"))
        .await;
    browser.click("#live-toggle").await;
    browser.quit().await;
    relayd.stop().await.unwrap();
}
