//! Servers of a test's own beside the machine's: a RabbitMQ node with its own
//! configuration, ports and directories under a temp dir, stopped and removed when
//! dropped; and the small process helpers they need.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `command` and panics with its stderr unless it succeeds.
pub fn run(command: &mut Command) {
    let output = command.output().expect("run a command");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A RabbitMQ node of the test's own (no plugins: the machine's node may hold the
/// management port).
pub struct RabbitNode {
    pub dir: PathBuf,
    pub node: String,
}

impl RabbitNode {
    /// Starts a node whose `rabbitmq.conf` is what `conf` writes for a temp dir (files
    /// a test puts there, e.g. certificates, are written by `prepare` first), and waits
    /// until it is up.
    pub fn start(prepare: impl FnOnce(&std::path::Path) -> String) -> Self {
        let dir = std::env::temp_dir().join(format!("relayd-rabbit-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let conf = prepare(&dir);
        std::fs::write(dir.join("rabbitmq.conf"), conf).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        run(Command::new("chown").arg("-R").arg("rabbitmq:rabbitmq").arg(&dir));
        let node = format!(
            "relayd-{}@localhost",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        // Dropped on a failed start too: the node is stopped and its directory removed.
        let server = Self {
            dir: dir.clone(),
            node: node.clone(),
        };
        run(Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", free_port().to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid")));
        // The node registers a moment after `-detached` returns; until then the CLI
        // cannot reach it at all.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let waited = Command::new("rabbitmqctl")
                .args(["-n", &node, "--timeout", "30", "await_startup"])
                .output()
                .expect("run rabbitmqctl");
            if waited.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} did not start: {}\n{}",
                String::from_utf8_lossy(&waited.stderr),
                std::fs::read_to_string(dir.join("log").join(format!("{node}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        server
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
