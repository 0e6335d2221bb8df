//! What the roles of one process share: the [`AppContext`] and the [`Role`]s it runs.
//!
//! It sits below the roles (each role gets an `Arc<AppContext>`; none imports another
//! role or the daemon that starts them) and owns no task: it is dropped when the last
//! role lets go of it.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;

use crate::broker;
use crate::config::Config;
use crate::db::{self, DbPool};
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::wake::OutboxWake;

/// A part of relayd that one process may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Receive provider webhooks, verify them, store them in the outbox.
    Ingest,
    /// Publish due outbox rows to RabbitMQ.
    Relay,
    /// Consume RabbitMQ and deliver to destination services.
    Worker,
}

impl Role {
    /// Every role, in start order.
    pub const ALL: &'static [Role] = &[Role::Ingest, Role::Relay, Role::Worker];

    /// The name of the role as written on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Relay => "relay",
            Role::Worker => "worker",
        }
    }
}

/// What every role of one process shares.
pub struct AppContext {
    pub config: Config,
    /// Synchronous commits: ingest, admin, retention.
    pub pool: DbPool,
    /// Relaxed commits (see [`db::Durability::Relaxed`]): the relay's and the worker's
    /// state changes. Connects only when used.
    pub relaxed_pool: DbPool,
    /// The roles this process runs; readiness depends on them.
    pub roles: BTreeSet<Role>,
    /// Tells relays (here and in other processes) that outbox rows are due.
    pub wake: Arc<OutboxWake>,
    /// Connection state of this process's broker threads.
    pub broker_health: Arc<broker::Health>,
    /// Progress of the roles' loops, for `/healthz`.
    pub liveness: Liveness,
    pub metrics: Metrics,
    /// The configuration as reloads change it. `config` is the one the process started
    /// with: right for every section a reload cannot change, but its `sources` and
    /// `destinations` may be out of date — read those from here.
    pub live: crate::reload::Live,
}

impl AppContext {
    /// Builds the context. The pool connects lazily: this succeeds with the database down.
    pub fn new(config: Config, roles: BTreeSet<Role>) -> anyhow::Result<Arc<Self>> {
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        let application_name = format!("relayd-{}", names.join("-"));
        // The longest a transaction of relayd's waits between statements: the relay's,
        // while its batch is published (see `relay`), with a query timeout to spare.
        let idle = config.broker.confirm_timeout + config.database.query_timeout * 2;
        let pool = db::build_pool(
            &config.database,
            &application_name,
            db::Durability::Synchronous,
            idle,
        )
        .context("building the database pool")?;
        let relaxed_pool = db::build_pool(&config.database, &application_name, db::Durability::Relaxed, idle)
            .context("building the database pool")?;
        Ok(Arc::new(Self {
            pool,
            relaxed_pool,
            wake: Arc::new(OutboxWake::new(roles.contains(&Role::Relay))),
            roles,
            broker_health: broker::Health::new(),
            liveness: Liveness::default(),
            metrics: Metrics::new(),
            live: crate::reload::Live::new(&config),
            config,
        }))
    }
}
