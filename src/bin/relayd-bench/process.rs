//! A relayd child process with the roles a scenario needs, and its resource use read from
//! /proc: peak RSS (VmHWM) and CPU seconds (utime + stime).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Relayd {
    child: Child,
}

/// What a relayd process used over its life.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    pub peak_rss_mb: f64,
    pub cpu_seconds: f64,
}

impl Relayd {
    /// Starts `relayd --role ROLES --config CONFIG` and waits until `/readyz` says ready.
    pub async fn start(binary: &Path, config: &Path, roles: &str, ops: &str) -> anyhow::Result<Self> {
        let child = Command::new(binary)
            .args(["--role", roles, "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let relayd = Self { child };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("http://{ops}/readyz")).send().await {
                if r.status() == 200 {
                    return Ok(relayd);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "relayd --role {roles} not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn usage(&self) -> Usage {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let peak_kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may contain spaces) start after ") ".
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, f)| f.split(' ').collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat; here 0-based after the name: 11, 12.
        let clock_ticks = 100.0;
        Usage {
            peak_rss_mb: peak_kb / 1024.0,
            cpu_seconds: (ticks(11) + ticks(12)) / clock_ticks,
        }
    }

    /// SIGTERM, wait, and return the usage measured just before.
    pub fn stop(mut self) -> Usage {
        let usage = self.usage();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return usage;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        usage
    }
}

impl Drop for Relayd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The relayd binary next to this one (both come from the same `cargo build`).
pub fn relayd_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("relayd")))
        .unwrap_or_else(|| PathBuf::from("relayd"))
}
