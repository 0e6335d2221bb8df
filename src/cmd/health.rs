//! `relayd health [--ready]`: one GET of the local ops listener's `/healthz` (or
//! `/readyz`), for container health checks (the image has no curl). Prints the answer's
//! body; the exit code says whether it was 200.

use std::time::Duration;

use anyhow::Context;

use crate::cli::Cli;

/// A health check that hangs is a failed one.
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(cli: &Cli, ready: bool) -> anyhow::Result<()> {
    let config = super::load_config(cli)?;
    let url = format!(
        "{}/{}",
        super::local_base(config.ops.listen),
        if ready { "readyz" } else { "healthz" }
    );
    let (status, body) = super::runtime()?.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("asking {url} (is relayd running?)"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow::Ok((status, body))
    })?;
    println!("{}", body.trim());
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}");
    }
    Ok(())
}
