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
    /// The Erlang node name, `relayd-…@localhost`.
    pub node: String,
    dist_port: u16,
}

impl RabbitNode {
    /// Starts a node whose `rabbitmq.conf` is what `prepare` writes for its temp dir
    /// (files a test puts there, e.g. certificates, are written by `prepare` first), and
    /// waits until it is up.
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
            dir,
            node,
            dist_port: free_port(),
        };
        server.launch();
        server
    }

    /// A node listening for AMQP on `port`, for a cluster.
    pub fn plain(port: u16) -> Self {
        Self::start(|_| format!("listeners.tcp.default = {port}\n"))
    }

    /// Starts the node's server (again, after [`Self::kill9`]: same name, same data, so
    /// it rejoins its cluster) and waits until it is up.
    pub fn launch(&self) {
        let dir = &self.dir;
        run(Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", free_port().to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid")));
        self.await_startup();
    }

    /// Waits until the node's broker is running. The node registers a moment after
    /// `-detached` returns; until then the CLI cannot reach it at all.
    pub fn await_startup(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let waited = Command::new("rabbitmqctl")
                .args(["-n", &self.node, "--timeout", "30", "await_startup"])
                .output()
                .expect("run rabbitmqctl");
            if waited.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start: {}\n{}",
                self.node,
                String::from_utf8_lossy(&waited.stderr),
                std::fs::read_to_string(self.dir.join("log").join(format!("{}.log", self.node)))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `rabbitmqctl -n NODE ARGS…`, which must succeed.
    pub fn ctl(&self, args: &[&str]) {
        run(Command::new("rabbitmqctl").args(["-n", &self.node]).args(args));
    }

    /// SIGKILLs the node's Erlang VM (no goodbye to its cluster or its clients).
    pub fn kill9(&self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("the node's pid file");
        run(Command::new("kill").args(["-9", pid.trim()]));
        // Until the VM is gone, a relaunch would find the name taken.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Command::new("kill")
            .args(["-0", pid.trim()])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "node {} outlived SIGKILL", self.node);
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// Three RabbitMQ nodes of the test's own joined in one cluster (the machine's own
/// node is not in it), each with an AMQP port of its own; all stopped and removed when
/// dropped.
pub struct RabbitCluster {
    pub nodes: Vec<RabbitNode>,
    pub ports: Vec<u16>,
}

impl RabbitCluster {
    pub fn start() -> Self {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes: Vec<RabbitNode> = Vec::new();
        for &port in &ports {
            let node = RabbitNode::plain(port);
            if let Some(first) = nodes.first() {
                node.ctl(&["stop_app"]);
                node.ctl(&["join_cluster", &first.node]);
                node.ctl(&["start_app"]);
                node.await_startup();
            }
            nodes.push(node);
        }
        Self { nodes, ports }
    }

    /// `amqp://` URLs of the nodes, in order.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .collect()
    }

    /// The node listening on `host:port` (as `/readyz` names it).
    pub fn node_at(&self, address: &str) -> &RabbitNode {
        let port: u16 = address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("host:port");
        let i = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("a node of this cluster");
        &self.nodes[i]
    }
}

/// Debian's versioned PostgreSQL binaries (not on PATH).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// `program` from [`PG_BIN`], run as the `postgres` user (initdb and the server refuse
/// root).
pub fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")]);
    command
}

/// A PostgreSQL server of the test's own: a data directory under `dir`, its own port,
/// its socket in `dir`.
pub struct PgServer {
    pub data: PathBuf,
    pub port: u16,
    dir: PathBuf,
    options: String,
}

impl PgServer {
    fn new(dir: &std::path::Path, name: &str, options: &str) -> Self {
        let port = free_port();
        Self {
            data: dir.join(name),
            port,
            dir: dir.to_path_buf(),
            options: options.to_string(),
        }
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 {}",
            self.port,
            self.dir.display(),
            self.options
        );
        let log = self.dir.join(format!("{}.log", self.port));
        run(as_postgres("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(log)
            .args(["-o", &options, "start"]));
    }

    /// `pg_ctl stop -m immediate`: the server's processes quit at once, as in a crash of
    /// the server (not of the machine: what reached the OS is kept).
    pub fn stop_immediate(&self) {
        let _ = as_postgres("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }

    /// `pg_ctl promote`, waiting until the standby is writable.
    pub fn promote(&self) {
        run(as_postgres("pg_ctl")
            .args(["-w", "-D"])
            .arg(&self.data)
            .arg("promote"));
    }

    /// `psql -c SQL` against this server, returning its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let output = as_postgres("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-X", "-q", "-A", "-t", "-d", "postgres", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

/// A PostgreSQL primary and a streaming standby of the test's own (the machine's own
/// server is not involved), the standby synchronous: a commit the primary acknowledged
/// is on the standby too. Both are stopped and removed when dropped.
pub struct PgPair {
    pub primary: PgServer,
    pub standby: PgServer,
    dir: PathBuf,
}

impl PgPair {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("relayd-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        // fsync off: the test stops servers, it never crashes the machine.
        let options = "-c fsync=off -c wal_level=replica -c max_wal_senders=4 -c hot_standby=on";
        let pair = Self {
            primary: PgServer::new(&dir, "primary", options),
            standby: PgServer::new(&dir, "standby", options),
            dir,
        };
        run(as_postgres("initdb")
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(&pair.primary.data));
        pair.primary.start();
        run(as_postgres("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pair.primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-X", "stream", "-R", "-D"])
            .arg(&pair.standby.data));
        pair.standby.start();
        let deadline = Instant::now() + Duration::from_secs(30);
        while pair
            .primary
            .psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            != "1"
        {
            assert!(Instant::now() < deadline, "the standby never streamed");
            std::thread::sleep(Duration::from_millis(200));
        }
        // From now on every commit waits until the standby has flushed it.
        pair.primary
            .psql("ALTER SYSTEM SET synchronous_standby_names = '*'");
        pair.primary.psql("SELECT pg_reload_conf()");
        pair
    }

    /// The multi-host URL of database `name` that PostgreSQL clients use, writable
    /// server only.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{name}?target_session_attrs=read-write",
            self.primary.port, self.standby.port
        )
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        self.standby.stop_immediate();
        self.primary.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
