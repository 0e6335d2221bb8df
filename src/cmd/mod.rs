//! One module per subcommand, each with its own `run`. `main` picks one.

pub mod check_config;
pub mod destinations;
pub mod follow;
pub mod forward;
pub mod health;
pub mod migrate;
pub mod prune;
pub mod replay;
pub mod send_test_event;
pub mod serve;
pub mod skip;
pub mod tail;

use anyhow::Context;

use crate::cli::Cli;
use crate::config::Config;

/// Loads the configuration named on the command line (or the default file).
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Config::load(cli.config.as_deref()).context("invalid configuration")
}

/// Loads the configuration and installs logging with `--log-format` taking precedence.
fn load_config_and_init_logging(cli: &Cli) -> anyhow::Result<Config> {
    let config = load_config(cli)?;
    crate::telemetry::init(cli.log_format.unwrap_or(config.log.format), &config.log.level);
    Ok(config)
}

/// `http://HOST:PORT` to reach a listener of this machine's relayd on: a wildcard
/// address is read as loopback.
fn local_base(listen: std::net::SocketAddr) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, listen.port()))
}

/// The multi-threaded runtime every async subcommand runs on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
