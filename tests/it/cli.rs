//! The real binary: check-config, role selection, and the daemon's graceful stop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, TestBroker, TestDb};

/// Runs the binary on `config`, with the variable VALID's `env:` secret reads set.
fn relayd(args: &[&str], config: &str) -> std::process::Output {
    let file = support::temp_file(config);
    Command::new(support::relayd_binary())
        .args(args)
        .arg("--config")
        .arg(&file.0)
        .env_remove("RELAYD_ROLE")
        .env("RELAYD_IT_SECRET_FROM_ENV", "whsec_from_env")
        .output()
        .expect("run relayd")
}

const VALID: &str = r#"
[database]
url = "postgres://relayd:db-password-123@127.0.0.1:5432/relayd"
[broker]
url = "amqp://guest:broker-password-456@127.0.0.1:5672/%2f"
[ops]
admin_token = "admin-token-0123456789abcdef"
[[sources]]
name = "stripe"
kind = "stripe"
secrets = ["whsec_source_secret_789", "env:RELAYD_IT_SECRET_FROM_ENV"]
[[destinations]]
name = "billing"
url = "http://127.0.0.1:8080/hooks"
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
sources = ["stripe"]
event_types = ["invoice.*"]
"#;

#[test]
fn check_config_prints_the_config_with_every_secret_redacted() {
    // Destination URLs carry credentials too: in their userinfo, in their query, or
    // (kept out of the file) in a variable.
    let config = format!(
        r#"{VALID}
[[destinations]]
name = "partner"
url = "https://hook-user:hook-pass-321@hooks.example.com/in?token=tok-654&x=1"
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
[[destinations]]
name = "from-env"
url = "env:RELAYD_IT_DESTINATION_URL"
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#
    );
    let file = support::temp_file(&config);
    let output = Command::new(support::relayd_binary())
        .args(["check-config", "--config"])
        .arg(&file.0)
        .env("RELAYD_IT_SECRET_FROM_ENV", "whsec_secret_from_the_environment")
        .env(
            "RELAYD_IT_DESTINATION_URL",
            "https://env-user:env-pass-852@env.example.com/x?key=k-963",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for secret in [
        "db-password-123",
        "broker-password-456",
        "admin-token-0123456789abcdef",
        "whsec_source_secret_789",
        "whsec_secret_from_the_environment",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "hook-pass-321",
        "tok-654",
        "env-pass-852",
        "k-963",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked:\n{stdout}"
        );
    }
    assert!(stdout.contains("[redacted]"), "{stdout}");
    assert!(
        stdout.contains("127.0.0.1:5432/relayd"),
        "non-secret parts stay visible:\n{stdout}"
    );
    assert!(stdout.contains("invoice.*"), "{stdout}");
    assert!(
        stdout.contains("hooks.example.com/in") && stdout.contains("env.example.com/x"),
        "destination hosts and paths stay visible:\n{stdout}"
    );
}

#[test]
fn bad_configuration_exits_non_zero_naming_the_key() {
    let cases = [
        (
            "unparseable URL",
            VALID.replace(
                "postgres://relayd:db-password-123@127.0.0.1:5432/relayd",
                "not a url",
            ),
            "database.url",
        ),
        (
            "unknown key",
            VALID.replace("[ops]", "[ops]\nadmin_tokn = \"x\""),
            "admin_tokn",
        ),
        (
            "unknown source kind",
            VALID.replace("kind = \"stripe\"", "kind = \"paypal\""),
            "paypal",
        ),
        (
            "duplicate source name",
            format!("{VALID}\n[[sources]]\nname = \"stripe\"\nkind = \"stripe\"\nsecrets = [\"whsec_x\"]\n"),
            "sources[1].name",
        ),
        (
            "destination with an unknown source",
            VALID.replace("sources = [\"stripe\"]", "sources = [\"shopify\"]"),
            "destinations[0].sources[0]",
        ),
        (
            "missing env secret",
            VALID.replace("RELAYD_IT_SECRET_FROM_ENV", "RELAYD_IT_UNSET_VARIABLE"),
            "sources[0].secrets[1]",
        ),
        (
            "bad signing secret",
            VALID.replace("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "plain"),
            "destinations[0].signing_secret",
        ),
        (
            "bad duration",
            VALID.replace("kind = \"stripe\"", "kind = \"stripe\"\ntolerance = \"soon\""),
            "tolerance",
        ),
    ];
    for (case, config, key) in cases {
        let output = relayd(&["check-config"], &config);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{case}: accepted");
        assert!(
            stderr.contains(key),
            "{case}: error does not name {key}: {stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{case}: one clear line: {stderr}"
        );
    }
}

#[test]
fn environment_overrides_the_file() {
    let file = support::temp_file(VALID);
    let output = Command::new(support::relayd_binary())
        .args(["check-config", "--config"])
        .arg(&file.0)
        .env("RELAYD_IT_SECRET_FROM_ENV", "whsec_x")
        .env("RELAYD__DATABASE__POOL_SIZE", "3")
        .env("RELAYD__LOG__FORMAT", "json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("pool_size = 3"), "{stdout}");
    assert!(stdout.contains("format = \"json\""), "{stdout}");
}

#[test]
fn an_unknown_role_is_refused_naming_the_valid_ones() {
    let output = relayd(&["--role", "ingest,relayer"], "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("relayer") && stderr.contains("ingest, relay, worker"),
        "{stderr}"
    );
}

/// The real daemon with `--role all` and `log.format = "json"` from the file: every role
/// runs, every line is JSON, the database is migrated at startup. (What SIGTERM does is
/// `process::sigterm_during_deliveries_exits_zero_and_leaves_nothing_delivering`'s.)
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_runs_every_role_logs_json_from_the_file_and_migrates_at_startup() {
    let db = TestDb::create().await;
    let broker = TestBroker::new(&[]);
    let config = format!(
        r#"
[database]
url = "{}"
[broker]
prefix = "{}"
[ingest]
listen = "127.0.0.1:0"
[ops]
listen = "127.0.0.1:0"
[log]
format = "json"
[[sources]]
name = "stripe"
kind = "stripe"
secrets = ["whsec_x"]
"#,
        db.url, broker.prefix
    );
    let file = support::temp_file(&config);
    let mut child = Command::new(support::relayd_binary())
        .args(["--role", "all", "--config"])
        .arg(&file.0)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("relayd started")) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("relayd did not start: {lines:#?}"));
        lines.push(line);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""roles":"ingest,relay,worker""#)),
        "--role all runs every role: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "--log-format json from the config gives JSON lines: {lines:#?}"
    );
    db.assert_count("SELECT count(*) FROM events", 0, "migrated at startup")
        .await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn check_config_validates_each_kinds_fields_and_warns_about_kind_none() {
    let source = |fields: &str| format!("[[sources]]\nname = \"s\"\n{fields}\n");
    let cases = [
        ("kind = \"hmac\"\nsecrets = [\"k\"]\nid_header = \"x-id\"", "sources[0].signature_header"),
        ("kind = \"hmac\"\nsecrets = [\"k\"]\nsignature_header = \"x-sig\"", "sources[0].id_header"),
        (
            "kind = \"hmac\"\nsecrets = [\"k\"]\nsignature_header = \"x-sig\"\nid_pointer = \"id\"",
            "sources[0].id_pointer",
        ),
        ("kind = \"stripe\"\nsecrets = [\"k\"]\nprefix = \"sha256=\"", "sources[0].prefix"),
        ("kind = \"github\"\nsecrets = [\"k\"]\nid_header = \"x-id\"", "sources[0].id_header"),
        ("kind = \"github\"\nsecrets = []", "sources[0].secrets"),
        ("kind = \"standard-webhooks\"\nsecrets = [\"not-whsec\"]", "sources[0].secrets[0]"),
        ("kind = \"none\"\nsecrets = [\"k\"]", "sources[0].secrets"),
        ("kind = \"hmac\"\nsecrets = [\"k\"]\nsignature_header = \"x-sig\"\nencoding = \"hexx\"\nid_from_body_hash = true", "encoding"),
    ];
    for (fields, key) in cases {
        let output = relayd(&["check-config"], &source(fields));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{fields}: accepted");
        assert!(
            stderr.contains(key),
            "{fields}: error does not name {key}: {stderr}"
        );
    }

    let output = relayd(&["check-config"], &source("kind = \"none\""));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: sources[0].kind") && stderr.contains("local testing only"),
        "{stderr}"
    );

    let valid_hmac =
        "kind = \"hmac\"\nsecrets = [\"k\"]\nsignature_header = \"X-Sig\"\nencoding = \"base64\"\n\
                      id_pointer = \"/data/id\"\ntype_header = \"X-Type\"";
    let output = relayd(&["check-config"], &source(valid_hmac));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The shipped `config/relayd.toml` runs as it is — no variable exported (only the
/// database, broker prefix and listeners pointed at this test's own): relayd starts,
/// logs one warning per development secret in use, accepts the quick start's
/// `relayd send-test-event stripe` (signed with the development secret), and stops with 0 on SIGTERM. `check-config` on it passes
/// with the same warnings.
#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_config_runs_as_it_is_and_warns_of_its_development_secrets() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/relayd.toml");
    let db = TestDb::unique();
    let broker = TestBroker::new(&["example"]);
    let mut child = Command::new(support::relayd_binary())
        .args(["--role", "all", "--config"])
        .arg(&shipped)
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .env_remove("EXAMPLE_SIGNING_SECRET")
        .env_remove("RELAYD_ROLE")
        .env("RELAYD__DATABASE__URL", &db.url)
        .env("RELAYD__BROKER__PREFIX", &broker.prefix)
        .env("RELAYD__INGEST__LISTEN", "127.0.0.1:0")
        .env("RELAYD__OPS__LISTEN", "127.0.0.1:0")
        .env("RELAYD__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start relayd");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut warnings = Vec::new();
    let started = loop {
        let line = lines.next().expect("relayd exited before it started").unwrap();
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if json["warning"]
            .as_str()
            .is_some_and(|w| w.contains("development secret"))
        {
            warnings.push(json["warning"].as_str().unwrap().to_string());
        }
        if json["message"] == "relayd started" {
            break json;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("sources[0].secrets[0]"), "{warnings:?}");
    assert!(
        warnings[1].starts_with("destinations[0].signing_secret"),
        "{warnings:?}"
    );

    // The quick start's way: the shipped config's ingest, its development secret.
    let ingest = started["ingest"].as_str().unwrap().to_string();
    let sent = Command::new(support::relayd_binary())
        .args(["send-test-event", "stripe", "--type", "invoice.paid", "--config"])
        .arg(&shipped)
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .env("RELAYD__INGEST__LISTEN", &ingest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        stdout.starts_with("accepted: event evt_test_") && stdout.contains("routes it to example"),
        "{stdout}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "relayd did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));

    let checked = Command::new(support::relayd_binary())
        .args(["check-config", "--config"])
        .arg(&shipped)
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .env_remove("EXAMPLE_SIGNING_SECRET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "{stderr}");
    assert_eq!(stderr.matches("development secret").count(), 2, "{stderr}");
}

/// `relayd send-test-event` against a running relayd, for a source of every kind: each
/// event is accepted and reaches the destination; the same id again is a duplicate; a
/// sender whose secret differs from the running one's is refused (exit 1, ingest's
/// `400 invalid_signature` named); an unknown source names the configured ones; an
/// ingest that is not there is named with the address tried.
#[tokio::test(flavor = "multi_thread")]
async fn send_test_event_signs_for_every_kind_and_each_event_is_delivered() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let sink = crate::support::sink::Sink::start(crate::support::sink::Behaviour::Succeed).await;
    let base = std::fs::read_to_string(&crate::support::child::config_file(&db, &broker, &sink).0).unwrap();
    let sources = r#"
[[sources]]
name = "gh"
kind = "github"
secrets = ["github-secret"]
[[sources]]
name = "shop"
kind = "shopify"
secrets = ["shopify-secret"]
[[sources]]
name = "svix"
kind = "standard-webhooks"
secrets = ["whsec_AQIDBAUGBwgJCgsMDQ4PEA=="]
[[sources]]
name = "custom"
kind = "hmac"
secrets = ["custom-secret"]
signature_header = "X-Custom-Signature"
prefix = "sha256="
id_header = "X-Custom-Id"
type_pointer = "/meta/kind"
[[sources]]
name = "hashed"
kind = "hmac"
secrets = ["hashed-secret"]
signature_header = "X-Hashed-Signature"
encoding = "base64"
id_from_body_hash = true
[[sources]]
name = "open"
kind = "none"
[[sources]]
name = "slack"
kind = "slack"
secrets = ["slack-signing-secret"]
[[sources]]
name = "paddle"
kind = "paddle"
secrets = ["pdl_ntfset_cli"]
[[sources]]
name = "square"
kind = "square"
secrets = ["square-signature-key"]
public_url = "https://hooks.example.com/square"
[[sources]]
name = "zoom"
kind = "zoom"
secrets = ["zoom-secret-token"]
[[sources]]
name = "linear"
kind = "linear"
secrets = ["lin_wh_cli"]
[[sources]]
name = "meta"
kind = "meta"
secrets = ["meta-app-secret"]
verify_token = "meta-verify-token"
[[sources]]
name = "twilio"
kind = "twilio"
secrets = ["twilio-auth-token"]
public_url = "https://hooks.example.com/twilio"
[[sources]]
name = "discord"
kind = "discord"
secrets = ["DISCORD_PUBLIC_KEY"]
"#;
    // Discord's source holds a public key; send-test-event signs with its seed.
    let seed = [7u8; 32];
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    let public = hex::encode(ring::signature::KeyPair::public_key(&pair).as_ref());
    let private_key_file = support::temp_file(&hex::encode(seed));
    let sources = sources.replace("DISCORD_PUBLIC_KEY", &public);
    // The sources go before the first [[destinations]] table.
    let (head, destinations) = base.split_at(base.find("[[destinations]]").unwrap());
    let config = support::temp_file(&format!("{head}{sources}{destinations}"));
    let private_key_path = private_key_file.0.to_str().unwrap();
    let listen = crate::support::child::free_address();
    let env = [("RELAYD__INGEST__LISTEN", listen.as_str())];
    let _relayd = crate::support::child::Process::start_with(&config, "all", &env);

    let send = |config: &support::TempFile, args: &[&str]| {
        let output = Command::new(support::relayd_binary())
            .arg("send-test-event")
            .args(args)
            .arg("--config")
            .arg(&config.0)
            .envs(env)
            .env_remove("RELAYD_ROLE")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let names = [
        "stripe", "gh", "shop", "svix", "custom", "hashed", "open", "slack", "paddle", "square", "zoom",
        "linear", "meta", "twilio",
    ];
    let mut sent = std::collections::HashSet::new();
    for name in names {
        let id = format!("evt_kind_{name}");
        let (code, stdout, stderr) = send(&config, &[name, "--id", &id, "--type", "invoice.paid"]);
        assert_eq!(code, Some(0), "{name}: {stdout}{stderr}");
        assert!(
            stdout.starts_with("accepted: event ") && stdout.contains("routes it to sink"),
            "{name}: {stdout}"
        );
        // Their ids are body hashes.
        if !["hashed", "zoom", "meta"].contains(&name) {
            assert!(stdout.contains(&id), "{name}: {stdout}");
        }
        // Every sample carries the id in its body, whatever the source reads (Twilio's,
        // a form, in the header the sink reads then).
        sent.insert(id);
    }
    let (code, stdout, stderr) = send(
        &config,
        &[
            "discord",
            "--id",
            "evt_kind_discord",
            "--type",
            "application_command",
        ],
    );
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stderr.contains("--private-key-file"), "{stderr}");
    let (code, stdout, stderr) = send(
        &config,
        &[
            "discord",
            "--id",
            "evt_kind_discord",
            "--type",
            "application_command",
            "--private-key-file",
            private_key_path,
        ],
    );
    assert_eq!(code, Some(0), "discord: {stdout}{stderr}");
    assert!(
        stdout.starts_with("accepted: event evt_kind_discord (application_command)"),
        "discord's answer is its deferred response; the outcome comes in headers: {stdout}"
    );
    sent.insert("evt_kind_discord".to_string());
    sink.wait_for_events(&sent, Duration::from_secs(30)).await;

    let (code, stdout, _) = send(&config, &["stripe", "--id", "evt_kind_stripe"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.starts_with("duplicate: event evt_kind_stripe "),
        "{stdout}"
    );

    let other_secret = std::fs::read_to_string(&config.0)
        .unwrap()
        .replace("\"github-secret\"", "\"not-the-running-secret\"");
    let (code, stdout, stderr) = send(&support::temp_file(&other_secret), &["gh"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stderr.contains("ingest answered 400") && stderr.contains("invalid_signature"),
        "{stderr}"
    );

    let (code, _, stderr) = send(&config, &["nope"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no source \"nope\"") && stderr.contains("stripe, gh, shop, svix"),
        "{stderr}"
    );

    let closed = crate::support::child::free_address();
    let (code, _, stderr) = send(
        &config,
        &["stripe", "--url", &format!("http://{closed}/webhooks/stripe")],
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&closed) && stderr.contains("is relayd running"),
        "{stderr}"
    );
}

/// The image's health check: `relayd health` asks the ops listener the configuration
/// names; 0 while it answers 200, 1 (with the reason) when nothing answers.
#[tokio::test]
async fn health_asks_the_local_ops_listener_and_fails_when_nothing_answers() {
    let db = TestDb::unique();
    let broker = TestBroker::new(&["sink"]);
    let sink = crate::support::sink::Sink::start(crate::support::sink::Behaviour::Succeed).await;
    let config = crate::support::child::config_file(&db, &broker, &sink);
    // A wildcard address, as in the image: the check goes to loopback.
    let port = crate::support::child::free_address()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let ops = format!("0.0.0.0:{port}");
    let health = |args: &[&str]| {
        Command::new(support::relayd_binary())
            .arg("health")
            .args(args)
            .arg("--config")
            .arg(&config.0)
            .env("RELAYD__OPS__LISTEN", &ops)
            .output()
            .expect("run relayd health")
    };
    let down = health(&[]);
    assert_eq!(down.status.code(), Some(1));
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(said.contains("is relayd running?"), "{said}");

    let relayd = crate::support::child::Process::start_with(&config, "all", &[("RELAYD__OPS__LISTEN", &ops)]);
    relayd.wait_ready().await;
    let alive = health(&[]);
    assert!(alive.status.success(), "{alive:?}");
    assert!(String::from_utf8_lossy(&alive.stdout).contains("ok"), "{alive:?}");
    let ready = health(&["--ready"]);
    assert!(ready.status.success(), "{ready:?}");
    assert!(
        String::from_utf8_lossy(&ready.stdout).contains("database"),
        "{ready:?}"
    );
    assert!(relayd.terminate().success());
}
