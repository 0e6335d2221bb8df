//! The real `relayd` binary as a child process, for tests that kill, stop or signal it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sink::Sink;
use super::{self as support, TempFile, TestBroker, TestDb, STRIPE_SECRET};

/// Configuration for child processes: fast retries, short leases (a claim's lease is
/// the 2 s timeout plus 1 s), JSON logs, listeners on ports of the system's choosing
/// unless the environment sets them.
pub fn config_file(db: &TestDb, broker: &TestBroker, sink: &Sink) -> TempFile {
    support::temp_file(&format!(
        r#"
[database]
url = "{db}"
[broker]
url = "{broker_url}"
prefix = "{prefix}"
heartbeat = "2s"
[ingest]
listen = "127.0.0.1:0"
[ops]
listen = "127.0.0.1:0"
[relay]
poll_interval = "200ms"
[worker]
lease_margin = "1s"
[worker.retry]
schedule = ["200ms", "500ms", "1s", "2s", "2s", "2s"]
[worker.breaker]
probe_interval = "200ms"
max_probe_interval = "1s"
[log]
format = "json"
level = "warn,relayd::cmd=info"
[shutdown]
grace_period = "5s"
[[sources]]
name = "stripe"
kind = "stripe"
secrets = ["{secret}"]
[[destinations]]
name = "sink"
url = "{sink}"
signing_secret = "{signing}"
timeout = "2s"
"#,
        db = db.url,
        broker_url = support::BROKER_URL,
        prefix = broker.prefix,
        secret = STRIPE_SECRET,
        sink = sink.url,
        signing = support::DESTINATION_SECRET,
    ))
}

/// [`config_file`]'s text with `ops.admin_token` set, for tests that call the admin API
/// of a child (and may rewrite the file to reload it).
pub fn config_with_admin_token(db: &TestDb, broker: &TestBroker, sink: &Sink, token: &str) -> String {
    let text = std::fs::read_to_string(&config_file(db, broker, sink).0).unwrap();
    let ops = "[ops]\nlisten = \"127.0.0.1:0\"";
    assert!(text.contains(ops));
    text.replace(ops, &format!("{ops}\nadmin_token = \"{token}\""))
}

/// A loopback address with a port that was free a moment ago, for a listener that must
/// keep its address across restarts.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// One relayd child process. Dropping it kills the process.
pub struct Process {
    child: Child,
    config: PathBuf,
    pub roles: String,
    env: Vec<(String, String)>,
    /// The ingest address, when the process runs ingest.
    pub ingest: Option<String>,
    pub ops: String,
    /// Every JSON log line it wrote after it started.
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Process {
    pub fn start(config: &TempFile, roles: &str) -> Self {
        Self::start_with(config, roles, &[])
    }

    /// Starts `relayd --role ROLES` with extra environment (e.g. `RELAYD__OPS__LISTEN`)
    /// and returns once it logged that it started.
    pub fn start_with(config: &TempFile, roles: &str, env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn(config.0.clone(), roles.to_string(), env)
    }

    fn spawn(config: PathBuf, roles: String, env: Vec<(String, String)>) -> Self {
        let mut child = Command::new(support::relayd_binary())
            .args(["--role", &roles, "--config"])
            .arg(&config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start relayd");
        let stderr = child.stderr.take().unwrap();
        // From here on, Drop kills the child if starting fails.
        let mut process = Self {
            child,
            config,
            roles,
            env,
            ingest: None,
            ops: String::new(),
            logs: Arc::default(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("relayd --role {} did not start", process.roles));
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if json["message"] == "relayd started" {
                process.ingest = json["ingest"].as_str().filter(|a| *a != "-").map(String::from);
                process.ops = json["ops"].as_str().unwrap_or_default().to_string();
                // Keep draining stderr so the child never blocks on a full pipe.
                let logs = process.logs.clone();
                std::thread::spawn(move || {
                    while let Ok(line) = rx.recv() {
                        if let Ok(json) = serde_json::from_str(&line) {
                            logs.lock().unwrap().push(json);
                        }
                    }
                });
                return process;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory now, in bytes (from `/proc`).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// The log lines with this message so far (JSON, fields at the top level).
    pub fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        self.logged_where(|line| line["message"] == message)
    }

    /// The log lines so far that `matches` picks.
    pub fn logged_where(&self, matches: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        let logs = self.logs.lock().unwrap();
        logs.iter().filter(|line| matches(line)).cloned().collect()
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops)
    }

    /// Waits until the process's `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        support::wait_ready(&self.ops_url("/readyz")).await;
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Starts the same roles with the same configuration and environment in place of
    /// this (killed) process.
    pub fn restart(&mut self) {
        *self = Self::spawn(self.config.clone(), self.roles.clone(), self.env.clone());
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// SIGTERM, then waits (up to 20 s) for the process to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "relayd --role {} ignored SIGTERM",
                self.roles
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
