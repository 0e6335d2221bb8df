//! The command line: one clap definition for the daemon and its subcommands.
//!
//! Global options (`--config`, `--log-format`, `--role`) may stand before or after a
//! subcommand. This module only describes arguments; `main` dispatches them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::LogFormat;
use crate::context::Role;

#[derive(Debug, Parser)]
#[command(
    name = "relayd",
    version,
    about = "Webhook relay: verify, store exactly once, relay through RabbitMQ, deliver signed."
)]
pub struct Cli {
    /// Configuration file (TOML). Default: config/relayd.toml when it exists.
    #[arg(long, global = true, env = "RELAYD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log line format; overrides `log.format` from the configuration.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Roles this process runs, as a comma list.
    #[arg(
        long,
        global = true,
        env = "RELAYD_ROLE",
        value_enum,
        value_delimiter = ',',
        default_value = "all",
        value_name = "ROLES"
    )]
    pub role: Vec<RoleArg>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations (creating the database if needed) and exit.
    Migrate,
    /// Load and validate the configuration, print it with secrets redacted, and exit.
    CheckConfig,
    /// Reset matching dead/delivered/retrying/quarantined/skipped deliveries to pending
    /// with a fresh attempt budget, as a replay job worked here in pages (like POST
    /// /admin/api/replays), printing its progress; for operators with database access.
    /// Stopped, the job stays running and the relays finish it. An ordered delivery
    /// not its key's turn waits at the end of its key.
    Replay(crate::replay::Request),
    /// Skip one delivery (like POST /admin/api/deliveries/{id}/skip): it is never sent
    /// again, and an ordered delivery's key moves on to its next delivery.
    Skip {
        /// The delivery's id.
        id: uuid::Uuid,
    },
    /// Show the destinations' flow state and backlog, or pause and resume one (like
    /// the admin API's /destinations); every worker obeys within about a second.
    Destinations {
        #[command(subcommand)]
        action: DestinationsAction,
    },
    /// Sign a sample event as SOURCE's provider would (its first configured secret),
    /// post it to the running ingest, and print the answer: accepted or duplicate, and
    /// the event id.
    SendTestEvent(SendTestEventArgs),
    /// Ask the relayd running on this machine (its `ops.listen`) whether it is alive, or
    /// with `--ready` ready: exit 0 when it answers 200, 1 otherwise. The image's
    /// health check; a container has no curl.
    Health {
        /// Ask `/readyz` (dependencies reachable) instead of `/healthz` (alive).
        #[arg(long)]
        ready: bool,
    },
    /// Print a relayd's events as they arrive (its admin API's live stream), one line
    /// each or `--json`; a dropped connection resumes where it was. Until Ctrl-C.
    Tail(TailArgs),
    /// Post a relayd's events, as they arrive, to a service on this machine (e.g.
    /// staging's real events to your laptop), signed with Standard Webhooks, printing
    /// each answer; resumes by itself after a break, and retries a target that is down.
    Forward(ForwardArgs),
    /// Run one full retention pass now (as the relay does every `retention.interval`).
    Prune {
        /// Print what would be deleted now, and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// What `relayd destinations` does.
#[derive(Debug, Subcommand)]
pub enum DestinationsAction {
    /// One line per configured destination: state, backlog, oldest undelivered age.
    List,
    /// Hold a destination's deliveries (they stay queued) until it is resumed.
    Pause { name: String },
    /// Deliver again: from paused, disabled (after 410 Gone) or an open circuit.
    Resume { name: String },
}

/// What `relayd send-test-event` sends, and where.
#[derive(Debug, clap::Args)]
pub struct SendTestEventArgs {
    /// The configured source (`[[sources]] name`) to send as.
    pub source: String,
    /// The event type.
    #[arg(long = "type", value_name = "TYPE", default_value = crate::ingest::verify::DEFAULT_TYPE)]
    pub event_type: String,
    /// The provider's event id (default: a new `evt_test_…`); send one twice to see a
    /// duplicate.
    #[arg(long)]
    pub id: Option<String>,
    /// Where to post (default: `ingest.listen` of the configuration, on loopback when it
    /// is a wildcard address, `/webhooks/SOURCE`).
    #[arg(long)]
    pub url: Option<String>,
    /// For a `discord` source, whose secrets are public keys: a file holding the hex
    /// Ed25519 seed (private key) of a key pair whose public key the source lists.
    #[arg(long, value_name = "PATH")]
    pub private_key_file: Option<std::path::PathBuf>,
}

/// Which relayd to follow and which of its events.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FollowArgs {
    /// The admin base URL of the relayd to follow, e.g. `https://relayd.staging/admin`
    /// (default: this machine's, from the configuration's `ops.listen`).
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// The admin token (default: the configuration's `ops.admin_token`).
    #[arg(long, env = "RELAYD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Only events from this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Only events of this type; `invoice.*` for every type that starts `invoice.`.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Only events with a delivery to this destination.
    #[arg(long)]
    pub destination: Option<String>,
    /// Only events whose JSON body contains this JSON document (as the event search's
    /// `match`).
    #[arg(long = "match", value_name = "JSON")]
    pub matches: Option<String>,
    /// Only events for which this payload-filter expression is true (as the event
    /// search's `where`).
    #[arg(long = "where", value_name = "EXPRESSION")]
    pub filter: Option<String>,
    /// Start after this event (relayd's id of it, as printed), as a reconnect does;
    /// default: the events stored from now on.
    #[arg(long, value_name = "ID")]
    pub after: Option<uuid::Uuid>,
}

/// What `relayd tail` prints.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub follow: FollowArgs,
    /// Print each event whole, as the stream sends it (one JSON document per line).
    #[arg(long)]
    pub json: bool,
}

/// Where `relayd forward` posts, and how it signs.
#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub follow: FollowArgs,
    /// Where to post each event, e.g. `http://localhost:4000/hooks`.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// The Standard Webhooks secret to sign with (`whsec_…`); default: a new one, printed
    /// at start.
    #[arg(long, env = "RELAYD_FORWARD_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// How long one post may take before it counts as unanswered (and is tried again).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// A `--role` value: a role, or `all` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Every role this build provides.
    All,
    /// Receive provider webhooks, verify them, store them in the outbox.
    Ingest,
    /// Publish due outbox rows to RabbitMQ.
    Relay,
    /// Consume RabbitMQ and deliver to destination services.
    Worker,
}

/// The roles to start: `all` expands to every role.
pub fn select_roles(requested: &[RoleArg]) -> Result<BTreeSet<Role>, String> {
    let roles: BTreeSet<Role> = requested
        .iter()
        .flat_map(|&role| match role {
            RoleArg::All => Role::ALL,
            RoleArg::Ingest => &[Role::Ingest][..],
            RoleArg::Relay => &[Role::Relay][..],
            RoleArg::Worker => &[Role::Worker][..],
        })
        .copied()
        .collect();
    if roles.is_empty() {
        return Err("no role to run".into());
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_work_before_and_after_the_subcommand() {
        let before = Cli::try_parse_from(["relayd", "--config", "a.toml", "migrate"]).unwrap();
        let after = Cli::try_parse_from(["relayd", "migrate", "--config", "a.toml"]).unwrap();
        assert_eq!(before.config, after.config);
        assert!(matches!(after.command, Some(Command::Migrate)));
    }

    #[test]
    fn roles_parse_as_a_comma_list() {
        let cli = Cli::try_parse_from(["relayd", "--role", "ingest,relay"]).unwrap();
        assert_eq!(cli.role, vec![RoleArg::Ingest, RoleArg::Relay]);
        assert!(Cli::try_parse_from(["relayd", "--role", "ingest,bogus"]).is_err());
    }

    #[test]
    fn all_expands_to_every_role_and_duplicates_collapse() {
        let every: BTreeSet<Role> = Role::ALL.iter().copied().collect();
        assert_eq!(select_roles(&[RoleArg::All]).unwrap(), every);
        assert_eq!(select_roles(&[RoleArg::Relay, RoleArg::All]).unwrap(), every);
        assert_eq!(
            select_roles(&[RoleArg::Worker, RoleArg::Worker]).unwrap(),
            BTreeSet::from([Role::Worker])
        );
    }
}
