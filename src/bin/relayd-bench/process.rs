//! A relayd child process with the roles a scenario needs, and its resource use read from
//! /proc: peak RSS (VmHWM) and CPU seconds (utime + stime), as for any other process.

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
        Self::start_with(binary, config, roles, ops, &[]).await
    }

    /// [`Relayd::start`] with environment variables of its own (`RELAYD__…` overrides).
    pub async fn start_with(
        binary: &Path,
        config: &Path,
        roles: &str,
        ops: &str,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let child = Command::new(binary)
            .args(["--role", roles, "--config"])
            .arg(config)
            .envs(envs.iter().copied())
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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
        Usage {
            peak_rss_mb: peak_kb / 1024.0,
            cpu_seconds: cpu_of(pid).own,
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

/// CPU seconds of a process from /proc: its own (utime + stime) and that of its children
/// it has waited for (cutime + cstime); zero when it is gone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub own: f64,
    pub reaped_children: f64,
}

pub fn cpu_of(pid: u32) -> Cpu {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, f)| f.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime, stime, cutime, cstime are fields 14–17 of stat; 0-based after the name: 11–14.
    let clock_ticks = 100.0;
    Cpu {
        own: (ticks(11) + ticks(12)) / clock_ticks,
        reaped_children: (ticks(13) + ticks(14)) / clock_ticks,
    }
}

/// The pids of the processes whose executable's file name is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// The relayd binary next to this one (both come from the same `cargo build`).
pub fn relayd_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("relayd")))
        .unwrap_or_else(|| PathBuf::from("relayd"))
}
