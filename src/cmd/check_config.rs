//! `relayd check-config`: validate the configuration, print it with secrets redacted.

use crate::cli::Cli;

pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = super::load_config(cli)?;
    print!("{}", config.to_redacted_toml());
    for warning in config.warnings() {
        eprintln!("relayd: warning: {warning}");
    }
    eprintln!("relayd: configuration is valid");
    Ok(())
}
