//! The programs the suite runs besides PostgreSQL and RabbitMQ — Chromium with
//! chromedriver, Prometheus with promtool, python3 with venv, node with npm — installed
//! on first need by `scripts/provision-test-tools` (the script `.ci/run` uses too), so
//! that `cargo test` passes on a machine that has only the two services. The script
//! installs only what is missing (through `apt-get`, as root or with `sudo`) and honours
//! `RELAYD_SKIP_BROWSER=1` / `RELAYD_SKIP_PROMETHEUS=1`.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// Runs the provisioning script once per test binary; later callers wait for it.
pub fn provision() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/provision-test-tools");
        let output = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} failed (it installs the test tools with apt-get; run it as root, or install them \
             yourself): {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    });
}
