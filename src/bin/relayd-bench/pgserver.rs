//! A PostgreSQL server of the bench's own, for the scenario that reads
//! `pg_stat_statements` (which only loads at server start, so the machine's own server,
//! shared with everything else here, is left alone): a data directory under the temp
//! dir on the same disk, Debian's binaries, the server's default settings plus the
//! extension. Stopped and removed when dropped.

use std::path::PathBuf;
use std::process::Command;

/// Debian's versioned PostgreSQL binaries (not on PATH).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    data: PathBuf,
}

/// `program` from [`PG_BIN`]; as the `postgres` user when the bench runs as root
/// (initdb and the server refuse root).
fn pg(program: &str) -> Command {
    let path = format!("{PG_BIN}/{program}");
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", &path]);
        command
    } else {
        Command::new(path)
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

impl PgServer {
    /// initdb, then start with `pg_stat_statements` loaded and `max_connections`
    /// large enough for split roles and the raw INSERT clients.
    pub fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("relayd-bench-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        }
        let server = Self {
            port: crate::setup::free_port()?,
            data: dir.join("data"),
            dir,
        };
        run(pg("initdb")
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(&server.data))?;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 \
             -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.max=1000 \
             -c pg_stat_statements.track_planning=on",
            server.port,
            server.dir.display()
        );
        run(pg("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&server.data)
            .arg("-l")
            .arg(server.dir.join("server.log"))
            .args(["-o", &options, "start"]))?;
        Ok(server)
    }

    /// The server URL (no database), as `--postgres` takes it.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// The postmaster's pid (the first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = pg("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
