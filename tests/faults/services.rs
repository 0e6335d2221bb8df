//! The machine's own RabbitMQ and PostgreSQL, stopped, killed and started by the fault
//! tests. One test at a time holds [`Services`]; dropping it (also when the test
//! panics) brings both services back before the next test starts.

use std::process::Command;
use std::time::{Duration, Instant};

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Exclusive use of the machine's services for one test.
pub struct Services {
    _lock: tokio::sync::MutexGuard<'static, ()>,
}

impl Services {
    /// Waits for the other fault tests, then checks that both services are up.
    pub async fn exclusive() -> Self {
        let lock = LOCK.lock().await;
        restore();
        Self { _lock: lock }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        restore();
    }
}

/// Runs a command and returns whether it succeeded (its output only on failure).
fn run(program: &str, args: &[&str]) -> bool {
    match Command::new(program).args(args).output() {
        Ok(output) if output.status.success() => true,
        Ok(output) => {
            eprintln!(
                "{program} {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            false
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            false
        }
    }
}

/// Whether a command succeeds, printing nothing (for polling).
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_ok(program: &str, args: &[&str]) {
    assert!(run(program, args), "{program} {} failed", args.join(" "));
}

/// Both services running and accepting connections, whatever a test did to them.
pub fn restore() {
    if !succeeds("rabbitmqctl", &["-q", "status"]) {
        run_ok("rabbitmq-server", &["-detached"]);
    }
    await_node();
    // Starting an app that runs already is a no-op; one that was stopped starts.
    run_ok("rabbitmqctl", &["-q", "start_app"]);
    wait_for_rabbitmq(Duration::from_secs(60));
    if !pg_ready() {
        run_ok(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &pg_version(), "main", "start"],
        );
    }
    wait_for_postgres(Duration::from_secs(60));
}

pub fn rabbitmq_stop_app() {
    run_ok("rabbitmqctl", &["-q", "stop_app"]);
}

pub fn rabbitmq_start_app() {
    run_ok("rabbitmqctl", &["-q", "start_app"]);
    wait_for_rabbitmq(Duration::from_secs(60));
}

/// SIGKILL of the broker's Erlang VM: no connection is closed cleanly.
pub fn rabbitmq_kill() {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "eval", "os:getpid()."])
        .output()
        .expect("rabbitmqctl eval");
    let pid = String::from_utf8_lossy(&output.stdout)
        .trim()
        .trim_matches('"')
        .to_string();
    assert!(pid.parse::<u32>().is_ok(), "RabbitMQ's pid: {pid:?}");
    run_ok("kill", &["-KILL", &pid]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect("127.0.0.1:5672").is_ok() {
        assert!(Instant::now() < deadline, "RabbitMQ still listens after SIGKILL");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a broker that was killed and waits until it accepts connections.
pub fn rabbitmq_start() {
    run_ok("rabbitmq-server", &["-detached"]);
    await_node();
    wait_for_rabbitmq(Duration::from_secs(60));
}

/// The broker closes every client connection (as an operator or a node drain does).
pub fn rabbitmq_close_all_connections() {
    run_ok(
        "rabbitmqctl",
        &["-q", "close_all_connections", "relayd fault test"],
    );
}

/// Applies (or with `None` clears) a policy on the queues matching `pattern`.
pub fn rabbitmq_policy(name: &str, pattern: &str, definition: Option<&str>) {
    match definition {
        Some(definition) => run_ok(
            "rabbitmqctl",
            &[
                "-q",
                "set_policy",
                "--apply-to",
                "queues",
                name,
                pattern,
                definition,
            ],
        ),
        None => run_ok("rabbitmqctl", &["-q", "clear_policy", name]),
    }
}

/// Waits until the broker's node answers the CLI and has booted (right after
/// `rabbitmq-server -detached` it is not reachable yet, and `await_startup` fails at once).
fn await_node() {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !succeeds("rabbitmqctl", &["-q", "await_startup", "--timeout", "120"]) {
        assert!(Instant::now() < deadline, "RabbitMQ's node did not start");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An AMQP handshake succeeds (the TCP port opens before the app is ready).
fn wait_for_rabbitmq(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if amiquip::Connection::insecure_open(crate::support::BROKER_URL)
            .map(|c| c.close())
            .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "RabbitMQ did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster")
}

fn pg_ready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_for_postgres(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !pg_ready() {
        assert!(Instant::now() < deadline, "PostgreSQL did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `pg_ctlcluster restart -m fast`: every backend ends, the server is gone for a moment.
pub fn postgres_restart() {
    run_ok(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &pg_version(),
            "main",
            "restart",
            "-m",
            "fast",
        ],
    );
    wait_for_postgres(Duration::from_secs(60));
}

/// Runs a service command off the runtime's threads (they keep relayd and the load going).
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("blocking work")
}
