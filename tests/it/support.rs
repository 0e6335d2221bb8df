//! Test fixtures: a fresh PostgreSQL database per test, an in-process relayd on
//! `127.0.0.1:0`, and Stripe-style signing done with `ring` directly (independently of
//! relayd's own verifier).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use relayd::app::{AppContext, Daemon};
use relayd::cli::Role;
use relayd::config::{Config, DestinationConfig, Secret, SourceConfig, SourceKind};
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

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) =
                    AsyncPgConnection::establish(&format!("{}/postgres", server_url())).await
                {
                    let _ = diesel::sql_query(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    ))
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
    config.database.connect_timeout = Duration::from_secs(2);
    config.ingest.listen = "127.0.0.1:0".parse().unwrap();
    config.ops.listen = "127.0.0.1:0".parse().unwrap();
    config.shutdown.grace_period = Duration::from_secs(5);
    config.sources = vec![SourceConfig {
        name: "stripe".into(),
        kind: SourceKind::Stripe,
        secrets: vec![Secret::new(STRIPE_SECRET), Secret::new(STRIPE_OLD_SECRET)],
        tolerance: Duration::from_secs(300),
    }];
    config
}

pub fn destination(name: &str, sources: &[&str], event_types: &[&str]) -> DestinationConfig {
    DestinationConfig {
        name: name.into(),
        url: "http://127.0.0.1:9/hooks".into(),
        signing_secret: Secret::new(DESTINATION_SECRET),
        sources: sources.iter().map(|s| s.to_string()).collect(),
        event_types: event_types.iter().map(|s| s.to_string()).collect(),
        max_in_flight: 4,
        timeout: Duration::from_secs(5),
    }
}

/// A relayd running inside the test process.
pub struct Relayd {
    pub ingest: SocketAddr,
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
        let daemon = Daemon::start(ctx, shutdown.clone())
            .await
            .expect("start relayd");
        let ingest = daemon.ingest_addr.expect("ingest runs");
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
        format!("http://{}{path}", self.ingest)
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops)
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

fn validate(config: &Config) {
    if let Err(e) = config.validate() {
        panic!("test configuration is invalid: {e}");
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
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

/// Posts a correctly signed Stripe event.
pub async fn post_stripe(client: &reqwest::Client, url: &str, body: &[u8]) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            stripe_signature(STRIPE_SECRET, now(), body),
        )
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
    let path =
        std::env::temp_dir().join(format!("relayd-it-{}.toml", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, contents).expect("write temp file");
    TempFile(path)
}

pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
