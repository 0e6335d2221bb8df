//! TLS to PostgreSQL without libpq, and to RabbitMQ: servers of the test's own (a
//! PostgreSQL from initdb, a RabbitMQ node; own ports and directories under a temp dir)
//! serving certificates signed by a CA the test makes with `openssl`, and the machine's
//! own PostgreSQL (Debian's self-signed snakeoil certificate) for `sslmode=require`.

use std::path::{Path, PathBuf};
use std::process::Command;

use diesel_async::RunQueryDsl;

use crate::support::nodes::{as_postgres, free_port, run, RabbitNode};
use crate::support::{self, post_stripe, stripe_event, Relayd};

/// A CA and, signed by it, a certificate for `localhost` only (no IP address), made with
/// `openssl` in `dir`. Returns the CA's PEM path.
fn make_certificates(dir: &Path, name: &str) -> PathBuf {
    let path = |file: &str| dir.join(format!("{name}-{file}"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN=relayd test CA {name}"))
        .arg("-keyout")
        .arg(path("ca.key"))
        .arg("-out")
        .arg(path("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(path("server.key"))
        .arg("-out")
        .arg(path("server.csr")));
    std::fs::write(path("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(path("server.csr"))
        .arg("-CA")
        .arg(path("ca.pem"))
        .arg("-CAkey")
        .arg(path("ca.key"))
        .arg("-extfile")
        .arg(path("ext.cnf"))
        .arg("-out")
        .arg(path("server.pem")));
    path("ca.pem")
}

/// A PostgreSQL server of the test's own, with TLS; stopped and removed when dropped.
struct TlsPostgres {
    dir: PathBuf,
    port: u16,
    ca: PathBuf,
    other_ca: PathBuf,
}

impl TlsPostgres {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("relayd-tls-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = make_certificates(&dir, "a");
        let other_ca = make_certificates(&dir, "b");
        run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir));
        run(Command::new("chmod").arg("600").arg(dir.join("a-server.key")));
        let port = free_port();
        let server = Self {
            dir: dir.clone(),
            port,
            ca,
            other_ca,
        };
        run(as_postgres("initdb")
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(dir.join("data")));
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on \
             -c ssl_cert_file={dir}/a-server.pem -c ssl_key_file={dir}/a-server.key",
            dir = dir.display()
        );
        run(as_postgres("pg_ctl")
            .args(["-w", "-D"])
            .arg(dir.join("data"))
            .args(["-l"])
            .arg(dir.join("log"))
            .args(["-o", &options, "start"]));
        server
    }

    fn url(&self, host: &str, database: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/{database}?{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the connection to `url` is encrypted, as the server sees it.
async fn encrypted(url: &str) -> Result<bool, String> {
    #[derive(diesel::QueryableByName)]
    struct Ssl {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ssl: bool,
    }
    let mut conn = relayd::db::connect(url).await.map_err(|e| e.to_string())?;
    let row: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.ssl)
}

#[tokio::test(flavor = "multi_thread")]
async fn relayd_speaks_tls_to_postgresql_and_verifies_the_server_as_asked() {
    let server = TlsPostgres::start();
    let ca = server.ca.display().to_string();
    let other = server.other_ca.display().to_string();

    // verify-full: the chain and the name; the certificate names localhost only.
    let full = server.url(
        "localhost",
        "relayd",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert!(
        relayd::db::migrate::ensure_database(&full).await.unwrap(),
        "created over TLS"
    );
    assert!(
        !relayd::db::migrate::run_pending(&full).await.unwrap().is_empty(),
        "migrated over TLS"
    );
    assert_eq!(encrypted(&full).await, Ok(true));
    let wrong_name = server.url(
        "127.0.0.1",
        "relayd",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert!(
        encrypted(&wrong_name).await.is_err(),
        "a name the certificate lacks is refused"
    );
    let wrong_ca = server.url(
        "localhost",
        "relayd",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    );
    assert!(
        encrypted(&wrong_ca).await.is_err(),
        "a chain to another CA is refused"
    );
    // verify-ca: the chain only.
    let by_ca = server.url(
        "127.0.0.1",
        "relayd",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    );
    assert_eq!(encrypted(&by_ca).await, Ok(true));
    // require: encrypted, unverified; disable (relayd's default): plain.
    assert_eq!(
        encrypted(&server.url("127.0.0.1", "relayd", "sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(encrypted(&server.url("127.0.0.1", "relayd", "")).await, Ok(false));

    // The whole ingest path (its pool) over verify-full.
    let mut config = support::config(&full);
    config.destinations = vec![support::destination("billing", &[], &[])];
    let relayd = Relayd::ingest(config).await;
    let body = stripe_event("evt_over_tls", "invoice.paid");
    let response = post_stripe(&reqwest::Client::new(), &relayd.url("/webhooks/stripe"), &body).await;
    assert_eq!(response.status(), 200);
    relayd.stop().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = relayd::db::connect(&full).await.unwrap();
    let stored: Count = diesel::sql_query("SELECT count(*) AS n FROM events WHERE event_id = 'evt_over_tls'")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored.n, 1);
}

/// The machine's own PostgreSQL has TLS on with a self-signed certificate:
/// `sslmode=require` encrypts without checking it (as libpq does).
#[tokio::test(flavor = "multi_thread")]
async fn sslmode_require_encrypts_to_a_server_with_a_self_signed_certificate() {
    let url = format!("{}/postgres?sslmode=require", support::server_url());
    assert_eq!(encrypted(&url).await, Ok(true));
}

/// A RabbitMQ node of the test's own (its own node name, ports and directories under a
/// temp dir) with only a TLS listener, serving a certificate from a CA the test makes;
/// stopped and removed when dropped.
struct TlsRabbit {
    port: u16,
    ca: PathBuf,
    other_ca: PathBuf,
    _node: RabbitNode,
}

impl TlsRabbit {
    fn start() -> Self {
        let port = free_port();
        let mut cas = None;
        let node = RabbitNode::start(|dir| {
            cas = Some((make_certificates(dir, "a"), make_certificates(dir, "b")));
            let d = dir.display();
            format!(
                "listeners.tcp = none\nlisteners.ssl.default = {port}\n\
                 ssl_options.cacertfile = {d}/a-ca.pem\nssl_options.certfile = {d}/a-server.pem\n\
                 ssl_options.keyfile = {d}/a-server.key\nssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n"
            )
        });
        let (ca, other_ca) = cas.unwrap();
        Self {
            port,
            ca,
            other_ca,
            _node: node,
        }
    }

    fn url(&self, ca: &Path) -> String {
        format!(
            "amqps://guest:guest@localhost:{}/%2f?cacertfile={}",
            self.port,
            ca.display()
        )
    }
}

/// `amqps://` with `cacertfile`: the relay publishes and the worker consumes over TLS
/// to a broker whose certificate chains to that CA; with another CA nothing connects,
/// and `/readyz` says so.
#[tokio::test(flavor = "multi_thread")]
async fn relayd_publishes_and_consumes_over_amqps_and_verifies_the_broker() {
    use relayd::config::Secret;
    use relayd::context::Role;
    let rabbit = TlsRabbit::start();
    let db = crate::support::TestDb::migrated().await;
    let sink = crate::support::sink::Sink::start(crate::support::sink::Behaviour::Succeed).await;
    let mut config = support::config(&db.url);
    config.broker.url = Secret::new(rabbit.url(&rabbit.ca));
    config.broker.prefix = "tls".into();
    let mut destination = support::destination("sink", &[], &[]);
    destination.url = Secret::new(sink.url.clone());
    config.destinations = vec![destination];
    let all = [Role::Ingest, Role::Relay, Role::Worker];
    let relayd = Relayd::start(config.clone(), &all).await;
    relayd.wait_ready().await;
    let body = stripe_event("evt_over_amqps", "invoice.paid");
    let response = post_stripe(&reqwest::Client::new(), &relayd.url("/webhooks/stripe"), &body).await;
    assert_eq!(response.status(), 200);
    let received = sink.wait_for(1, std::time::Duration::from_secs(20)).await;
    assert_eq!(received[0].body, body);
    relayd.stop().await.unwrap();

    config.broker.url = Secret::new(rabbit.url(&rabbit.other_ca));
    let relayd = Relayd::start(config, &[Role::Relay]).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let readyz = reqwest::get(relayd.ops_url("/readyz")).await.unwrap();
    assert_eq!(readyz.status(), 503);
    let reason = readyz.text().await.unwrap();
    assert!(reason.contains("publisher"), "{reason}");
    relayd.stop().await.unwrap();
}
