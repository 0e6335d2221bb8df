//! Test fixtures shared by both test binaries (`it` and `faults`, each of which
//! includes this module): a fresh PostgreSQL database per test, an in-process relayd on
//! `127.0.0.1:0`, and Stripe-style signing done with `ring` directly (independently of
//! relayd's own verifier); the real binary as a child process ([`child`]), extra
//! RabbitMQ and PostgreSQL nodes under a temp dir ([`nodes`]), the providers' own SDKs
//! ([`sdk`]), the receiving sink every delivery is checked at ([`sink`]), and the
//! programs the suite runs, installed on first need ([`tools`]).

pub mod child;
pub mod nodes;
pub mod sdk;
pub mod sink;
pub mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use relayd::config::{Config, DestinationConfig, Secret, SourceConfig, SourceKind};
use relayd::context::AppContext;
use relayd::context::Role;
use relayd::daemon::Daemon;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The server every test talks to; override with `RELAYD_TEST_PG`.
pub fn server_url() -> String {
    std::env::var("RELAYD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub const STRIPE_SECRET: &str = "whsec_it_primary_secret";
pub const STRIPE_OLD_SECRET: &str = "whsec_it_rotated_out_secret";
pub const DESTINATION_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A database of its own, dropped (with its connections) when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn create() -> Self {
        let db = Self::unique();
        let mut admin = admin_connection().await;
        diesel::sql_query(format!("CREATE DATABASE \"{}\"", db.name))
            .execute(&mut admin)
            .await
            .expect("create test database");
        db
    }

    /// A database name and URL that do not exist yet (for "creates it" tests).
    pub fn unique() -> Self {
        let name = format!("relayd_it_{}", uuid::Uuid::now_v7().simple());
        let url = format!("{}/{name}", server_url());
        Self { name, url }
    }

    /// Creates the database and applies every migration.
    pub async fn migrated() -> Self {
        let db = Self::create().await;
        relayd::db::migrate::run_pending(&db.url)
            .await
            .expect("migrate test database");
        db
    }

    pub async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect to test database")
    }

    /// Runs a query returning one bigint (`SELECT count(*) …`).
    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.connect().await;
        let row: Count = diesel::sql_query(format!("SELECT ({sql})::bigint AS n"))
            .get_result(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.n
    }
}

impl TestDb {
    /// Inserts `count` events with one delivery each to `destination`, in `status`,
    /// due at `now() + next_attempt_in` (an SQL interval such as `'-1 second'`), with
    /// an optional lease. Returns the delivery ids.
    pub async fn seed_deliveries(
        &self,
        count: usize,
        destination: &str,
        status: &str,
        next_attempt_in: &str,
        lease_in: Option<&str>,
    ) -> Vec<uuid::Uuid> {
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            id: uuid::Uuid,
        }
        let lease = lease_in.map_or("NULL".to_string(), |l| format!("now() + interval '{l}'"));
        let sql = format!(
            "WITH e AS ( \
               INSERT INTO events (id, source, event_id, event_type, payload, content_type) \
               SELECT gen_random_uuid(), 'stripe', 'evt_seed_' || gen_random_uuid(), 'invoice.paid', \
                      convert_to('{{\"seed\":' || g || '}}', 'UTF8'), 'application/json' \
               FROM generate_series(1, {count}) g RETURNING id) \
             INSERT INTO deliveries (id, event_id, destination, status, next_attempt_at, lease_until) \
             SELECT gen_random_uuid(), id, '{destination}', '{status}', now() + interval '{next_attempt_in}', {lease} \
             FROM e RETURNING id"
        );
        let mut conn = self.connect().await;
        let ids: Vec<Id> = diesel::sql_query(sql)
            .load(&mut conn)
            .await
            .expect("seed deliveries");
        ids.into_iter().map(|i| i.id).collect()
    }

    /// Changes the event of delivery `delivery` with `assignment` (`event_type = …`),
    /// as a row stored before today's checks or written by hand could hold it.
    pub async fn update_event_of(&self, delivery: uuid::Uuid, assignment: &str) {
        let mut conn = self.connect().await;
        diesel::sql_query(format!(
            "UPDATE events SET {assignment} WHERE id = (SELECT event_id FROM deliveries WHERE id = '{delivery}')"
        ))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{assignment}: {e}"));
    }

    /// The status of every delivery with these ids, in no particular order.
    pub async fn statuses(&self, ids: &[uuid::Uuid]) -> Vec<String> {
        use diesel::{ExpressionMethods, QueryDsl};
        use relayd::db::schema::deliveries;
        let mut conn = self.connect().await;
        deliveries::table
            .filter(deliveries::id.eq_any(ids))
            .select(deliveries::status)
            .load(&mut conn)
            .await
            .expect("load statuses")
    }

    /// Waits until `sql` (a count) reaches `expected`, or panics after `timeout`.
    /// Asserts that `sql` (a `SELECT count(*) …`) counts `expected` now; `why` says what
    /// it proves.
    pub async fn assert_count(&self, sql: &str, expected: i64, why: &str) {
        let n = self.count(sql).await;
        let what = if why.is_empty() {
            sql.to_string()
        } else {
            format!("{why}: {sql}")
        };
        assert_eq!(n, expected, "{what}");
    }

    pub async fn wait_count(&self, sql: &str, expected: i64, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let n = self.count(sql).await;
            if n == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{sql}: {n}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) =
                    AsyncPgConnection::establish(&format!("{}/postgres", server_url())).await
                {
                    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn admin_connection() -> AsyncPgConnection {
    AsyncPgConnection::establish(&format!("{}/postgres", server_url()))
        .await
        .expect("connect to the postgres maintenance database")
}

/// A configuration for tests: listeners on ephemeral ports, one Stripe source with a
/// rotated secret, and no destination.
pub fn config(database_url: &str) -> Config {
    let mut config = Config::default();
    config.database.url = Secret::new(database_url);
    // Never the shared default namespace: tests pass their own TestBroker's prefix.
    config.broker.prefix = "it-unset".into();
    config.database.connect_timeout = Duration::from_secs(2);
    config.ingest.listen = "127.0.0.1:0".parse().unwrap();
    config.ops.listen = "127.0.0.1:0".parse().unwrap();
    config.shutdown.grace_period = Duration::from_secs(5);
    // Circuits that open after the shipped 5 failures, but probe within a test's time.
    config.worker.breaker.probe_interval = Duration::from_millis(200);
    config.worker.breaker.max_probe_interval = Duration::from_secs(1);
    config.sources = vec![SourceConfig::new(
        "stripe",
        SourceKind::Stripe,
        vec![Secret::new(STRIPE_SECRET), Secret::new(STRIPE_OLD_SECRET)],
    )];
    config
}

pub fn destination(name: &str, sources: &[&str], event_types: &[&str]) -> DestinationConfig {
    DestinationConfig {
        name: name.into(),
        url: relayd::config::Secret::new("http://127.0.0.1:9/hooks"),
        signing_secret: Secret::new(DESTINATION_SECRET),
        sources: sources.iter().map(|s| s.to_string()).collect(),
        event_types: event_types.iter().map(|s| s.to_string()).collect(),
        filter: None,
        max_in_flight: 4,
        min_in_flight: 1,
        timeout: Duration::from_secs(5),
        breaker: Default::default(),
        rate_limit: None,
        ordering: None,
    }
}

/// A relayd running inside the test process.
pub struct Relayd {
    pub ingest: Option<SocketAddr>,
    pub ops: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Relayd {
    /// Starts the given roles (plus the ops listener) without migrating.
    pub async fn start(config: Config, roles: &[Role]) -> Self {
        // Quiet by default; RELAYD_TEST_LOG=debug shows relayd's logs.
        let level = std::env::var("RELAYD_TEST_LOG").unwrap_or_else(|_| "off".into());
        relayd::telemetry::init(relayd::config::LogFormat::Text, &level);
        validate(&config);
        let ctx = AppContext::new(config, roles.iter().copied().collect()).expect("context");
        let shutdown = CancellationToken::new();
        let daemon = Daemon::start(ctx, shutdown.clone()).await.expect("start relayd");
        let ingest = daemon.ingest_addr;
        let ops = daemon.ops_addr;
        let task = tokio::spawn(daemon.wait());
        Self {
            ingest,
            ops,
            shutdown,
            task,
        }
    }

    /// Starts the ingest role on a migrated database.
    pub async fn ingest(config: Config) -> Self {
        Self::start(config, &[Role::Ingest]).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ingest.expect("the ingest role runs"))
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops)
    }

    /// Waits until `/readyz` answers 200 (database and broker connected).
    pub async fn wait_ready(&self) {
        wait_ready(&self.ops_url("/readyz")).await;
    }

    /// Stops every role and returns how the daemon ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("relayd stops within 10s")
            .expect("daemon task")
    }
}

/// Waits (up to 20 s) until `readyz` (a `/readyz` URL) answers 200.
pub async fn wait_ready(readyz: &str) {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = client.get(readyz).send().await {
            if response.status() == 200 {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{readyz} not ready within 20s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn validate(config: &Config) {
    if let Err(e) = config.validate() {
        panic!("test configuration is invalid: {e}");
    }
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `Stripe-Signature` for `body` at `t`, computed with ring as Stripe documents it.
pub fn stripe_signature(secret: &str, t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &message);
    format!("t={t},v1={}", hex::encode(tag.as_ref()))
}

pub fn stripe_event(id: &str, event_type: &str) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "object": "event",
        "type": event_type,
        "data": { "object": { "id": "in_123", "amount_due": 4200 } },
    })
    .to_string()
    .into_bytes()
}

/// A Stripe event of `customer` (none: no key).
pub fn keyed_event(id: &str, customer: Option<&str>) -> Vec<u8> {
    let mut object = serde_json::json!({ "id": format!("in_{id}") });
    if let Some(customer) = customer {
        object["customer"] = customer.into();
    }
    serde_json::json!({ "id": id, "object": "event", "type": "invoice.updated", "data": { "object": object } })
        .to_string()
        .into_bytes()
}

/// Posts a correctly signed Stripe event.
pub async fn post_stripe(client: &reqwest::Client, url: &str, body: &[u8]) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .header("stripe-signature", stripe_signature(STRIPE_SECRET, now(), body))
        .body(body.to_vec())
        .send()
        .await
        .expect("request")
}

/// The `relayd` binary built for these tests.
pub fn relayd_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_relayd"))
}

/// Writes `contents` to a unique file under the temp directory.
pub fn temp_file(contents: &str) -> TempFile {
    let path = std::env::temp_dir().join(format!("relayd-it-{}.toml", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, contents).expect("write temp file");
    TempFile(path)
}

pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A broker namespace of its own (exchanges and queues under a unique prefix), deleted
/// when dropped.
pub struct TestBroker {
    pub prefix: String,
    destinations: Vec<String>,
}

pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

impl TestBroker {
    pub fn new(destinations: &[&str]) -> Self {
        Self {
            prefix: format!("it-{}", uuid::Uuid::now_v7().simple()),
            destinations: destinations.iter().map(|d| d.to_string()).collect(),
        }
    }

    /// Sets the broker section of `config` to this namespace.
    pub fn configure(&self, config: &mut Config) {
        config.broker.url = Secret::new(BROKER_URL);
        config.broker.prefix = self.prefix.clone();
    }

    pub fn queue(&self, destination: &str) -> String {
        format!("{}.destination.{destination}", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// Runs `f` with a fresh channel on a thread of its own (amiquip blocks).
    pub fn with_channel<T: Send + 'static>(f: impl FnOnce(&amiquip::Channel) -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            let mut connection = amiquip::Connection::insecure_open(BROKER_URL).expect("connect to RabbitMQ");
            let channel = connection.open_channel(None).expect("open a channel");
            let result = f(&channel);
            let _ = channel.close();
            let _ = connection.close();
            result
        })
        .join()
        .expect("broker helper thread")
    }

    /// Takes every message from `queue` (acknowledging them), waiting until at least
    /// `at_least` arrived or `timeout` passed, then a short quiet period for extras.
    pub async fn drain(&self, queue: &str, at_least: usize, timeout: Duration) -> Vec<Message> {
        let deadline = std::time::Instant::now() + timeout;
        let mut messages = Vec::new();
        loop {
            let queue = queue.to_string();
            let batch = Self::with_channel(move |channel| {
                let mut got = Vec::new();
                while let Ok(Some(get)) = channel.basic_get(queue.clone(), true) {
                    got.push(Message::from(get.delivery));
                }
                got
            });
            let empty = batch.is_empty();
            messages.extend(batch);
            if messages.len() >= at_least && empty {
                return messages;
            }
            if std::time::Instant::now() > deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(if messages.len() >= at_least {
                300
            } else {
                20
            }))
            .await;
        }
    }

    /// Ready messages in `queue` (passive declare).
    pub fn ready(&self, queue: &str) -> u32 {
        let queue = queue.to_string();
        Self::with_channel(move |channel| {
            channel
                .queue_declare_passive(queue)
                .expect("queue exists")
                .declared_message_count()
                .unwrap_or(0)
        })
    }

    /// Publishes one message straight to a destination queue (through the default
    /// exchange), bypassing relayd, and waits for the broker's confirm: without it, a
    /// connection closed right after publishing may lose the message.
    pub fn publish_raw(&self, destination: &str, body: &[u8], properties: amiquip::AmqpProperties) {
        let queue = self.queue(destination);
        let body = body.to_vec();
        Self::with_channel(move |channel| {
            let confirms = channel.listen_for_publisher_confirms().expect("confirm listener");
            let returns = channel.listen_for_returns().expect("return listener");
            channel.enable_publisher_confirms().expect("confirm mode");
            let mut publish = amiquip::Publish::with_properties(&body, queue.clone(), properties);
            publish.mandatory = true;
            channel.basic_publish("", publish).expect("publish");
            match confirms.recv_timeout(Duration::from_secs(10)) {
                Ok(amiquip::Confirm::Ack(_)) => {}
                other => panic!("the broker did not confirm the raw publish: {other:?}"),
            }
            // A return arrives before its ack: an unroutable message must fail the test.
            assert!(
                returns.try_recv().is_err(),
                "no queue {queue}: the raw message was returned"
            );
        });
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let queues: Vec<String> = self
            .destinations
            .iter()
            .map(|d| self.queue(d))
            .chain([self.dead_letter_queue()])
            .collect();
        // A failed delete closes its channel: one channel per delete.
        for queue in queues {
            let _ = std::panic::catch_unwind(|| {
                Self::with_channel(move |channel| {
                    let _ = channel.queue_delete(queue, amiquip::QueueDeleteOptions::default());
                })
            });
        }
        for exchange in [format!("{prefix}.deliveries"), format!("{prefix}.dead-letter")] {
            let _ = std::panic::catch_unwind(|| {
                Self::with_channel(move |channel| {
                    let _ = channel.exchange_delete(exchange, false);
                })
            });
        }
    }
}

/// A message taken from a queue.
#[derive(Debug, Clone)]
pub struct Message {
    pub body: Vec<u8>,
    pub properties: amiquip::AmqpProperties,
}

impl From<amiquip::Delivery> for Message {
    fn from(delivery: amiquip::Delivery) -> Self {
        Self {
            body: delivery.body,
            properties: delivery.properties,
        }
    }
}

impl Message {
    pub fn message_id(&self) -> String {
        self.properties.message_id().clone().unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<amiquip::AmqpValue> {
        self.properties.headers().as_ref()?.get(name).cloned()
    }
}
