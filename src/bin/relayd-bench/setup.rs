//! What a scenario runs in: a fresh database, free ports, the relayd configuration it
//! writes (tuned by hand, or the shipped defaults with `--defaults`), the load it sends,
//! and its broker topology removed afterwards.

use std::path::PathBuf;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::{process, Args};

pub const STRIPE_SECRET: &str = "whsec_bench_stripe_secret";
pub const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const DATABASE: &str = "relayd_bench";

/// A fresh, migrated `relayd_bench` database; returns its URL.
pub async fn fresh_database(args: &Args) -> anyhow::Result<String> {
    let mut admin = AsyncPgConnection::establish(&format!("{}/postgres", args.postgres)).await?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    diesel::sql_query(format!("CREATE DATABASE {DATABASE}"))
        .execute(&mut admin)
        .await?;
    let url = format!("{}/{DATABASE}", args.postgres);
    relayd::db::migrate::run_pending(&url).await?;
    Ok(url)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A configuration for one scenario: its own database, broker prefix and ports.
pub struct Setup {
    pub config: PathBuf,
    pub ingest: String,
    pub ops: String,
    pub prefix: String,
    pub destinations: Vec<String>,
}

/// One destination of a scenario: every event goes to it.
pub struct Destination<'a> {
    pub name: &'a str,
    pub url: &'a str,
    /// More of its TOML keys, one per line.
    pub extra: String,
}

impl<'a> Destination<'a> {
    pub fn new(name: &'a str, url: &'a str) -> Self {
        Self {
            name,
            url,
            extra: String::new(),
        }
    }

    pub fn sink(url: &'a str) -> Self {
        Self::new("sink", url)
    }
}

pub fn write_config(args: &Args, database_url: &str, sink_url: Option<&str>) -> anyhow::Result<Setup> {
    let destinations: Vec<Destination<'_>> = sink_url.map(Destination::sink).into_iter().collect();
    write_config_with(args, database_url, &destinations)
}

pub fn write_config_with(
    args: &Args,
    database_url: &str,
    destinations: &[Destination<'_>],
) -> anyhow::Result<Setup> {
    let (ingest, ops) = (
        format!("127.0.0.1:{}", free_port()?),
        format!("127.0.0.1:{}", free_port()?),
    );
    let prefix = format!("bench-{}", uuid::Uuid::now_v7().simple());
    // Tuned by hand unless `--defaults`: what the shipped defaults give is a figure too.
    let (tuned_destination, tuned_pool, tuned_roles) = if args.defaults {
        let fixed = args.fixed_in_flight.map_or(String::new(), |n| {
            format!("min_in_flight = {n}\nmax_in_flight = {n}\n")
        });
        (fixed, String::new(), String::new())
    } else {
        (
            "max_in_flight = 64\n".to_string(),
            format!("pool_size = {}\n", args.pool_size),
            format!(
                "[worker]\nconcurrency = 128\n[relay]\nbatch_size = {}\n",
                args.relay_batch_size
            ),
        )
    };
    let destination: String = destinations
        .iter()
        .map(|d| {
            format!(
                "[[destinations]]\nname = \"{}\"\nurl = \"{}\"\nsigning_secret = \"{SIGNING_SECRET}\"\n{tuned_destination}timeout = \"10s\"\n{}",
                d.name, d.url, d.extra
            )
        })
        .collect();
    let searchable = if args.searchable {
        "searchable = true\n"
    } else {
        ""
    };
    let telemetry = args.otlp_endpoint.as_ref().map_or(String::new(), |url| {
        format!("[telemetry]\notlp_endpoint = \"{url}\"\n")
    });
    let text = format!(
        "[database]\nurl = \"{database_url}\"\n{tuned_pool}\
         [broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\n\
         [ingest]\nlisten = \"{ingest}\"\n[ops]\nlisten = \"{ops}\"\n\
         [log]\nlevel = \"warn\"\n\
         {telemetry}\
         {tuned_roles}\
         [[sources]]\nname = \"stripe\"\nkind = \"stripe\"\nsecrets = [\"{STRIPE_SECRET}\"]\n{searchable}{destination}",
        args.broker_url,
    );
    let config = std::env::temp_dir().join(format!("{prefix}.toml"));
    std::fs::write(&config, text)?;
    Ok(Setup {
        config,
        ingest,
        ops,
        prefix,
        destinations: destinations.iter().map(|d| d.name.to_string()).collect(),
    })
}

/// Removes a scenario's queues and exchanges.
pub fn delete_topology(args: &Args, setup: &Setup) {
    let url = args.broker_url.clone();
    let prefix = setup.prefix.clone();
    let mut queues: Vec<String> = setup
        .destinations
        .iter()
        .map(|d| format!("{prefix}.destination.{d}"))
        .collect();
    queues.push(format!("{prefix}.dead-letter"));
    let _ = std::thread::spawn(move || -> Result<(), amiquip::Error> {
        let mut connection = amiquip::Connection::insecure_open(&url)?;
        for queue in queues {
            let channel = connection.open_channel(None)?;
            let _ = channel.queue_delete(queue, amiquip::QueueDeleteOptions::default());
        }
        for exchange in [format!("{prefix}.deliveries"), format!("{prefix}.dead-letter")] {
            let channel = connection.open_channel(None)?;
            let _ = channel.exchange_delete(exchange, false);
        }
        connection.close()
    })
    .join();
}

/// The relayd binary measured.
pub fn relayd_binary(args: &Args) -> PathBuf {
    args.relayd.clone().unwrap_or_else(process::relayd_binary)
}

pub fn load(args: &Args, setup: &Setup, rate: f64, run: &str) -> crate::load::Load {
    crate::load::Load {
        url: format!("http://{}/webhooks/stripe", setup.ingest),
        rate,
        duration: args.duration,
        concurrency: args.concurrency,
        stripe_secret: STRIPE_SECRET.into(),
        run: run.into(),
        body_bytes: args.body_bytes,
        keys: args.keys,
    }
}
