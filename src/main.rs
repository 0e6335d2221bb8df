//! The `relayd` binary: parses the command line and dispatches. Nothing else lives here.

use std::process::ExitCode;

use clap::Parser;
use relayd::cli::{Cli, Command};
use relayd::cmd;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckConfig) => cmd::check_config::run(&cli),
        Some(Command::Migrate) => cmd::migrate::run(&cli),
        Some(Command::Replay(ref args)) => cmd::replay::run(&cli, args),
        Some(Command::Skip { id }) => cmd::skip::run(&cli, id),
        Some(Command::SendTestEvent(ref args)) => cmd::send_test_event::run(&cli, args),
        Some(Command::Prune { dry_run }) => cmd::prune::run(&cli, dry_run),
        Some(Command::Tail(ref args)) => cmd::tail::run(&cli, args),
        Some(Command::Forward(ref args)) => cmd::forward::run(&cli, args),
        Some(Command::Health { ready }) => cmd::health::run(&cli, ready),
        Some(Command::Destinations { ref action }) => cmd::destinations::run(&cli, action),
        None => cmd::serve::run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: "loading config: key: why".
            eprintln!("relayd: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
