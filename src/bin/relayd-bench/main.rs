//! relayd-bench: reproducible figures for relayd on the machine at hand.
//!
//! Starts the real `relayd` binary (built alongside this one) against the local
//! PostgreSQL and RabbitMQ, drives it with open-loop signed Stripe events, receives its
//! deliveries in an embedded sink that verifies every signature, and measures the
//! machine's own ceiling (single-row `INSERT … ON CONFLICT` with the same concurrency)
//! in the same run, so results read as ratios too. Prints a markdown table and writes
//! `results.md`, `results.json` and `latency.svg` to `--out`.
//!
//!     cargo build --release --bins && target/release/relayd-bench --out docs/bench

mod amqpcount;
mod anatomy;
mod collector;
mod filter;
mod flow;
mod load;
mod ordered;
mod pgserver;
mod process;
mod report;
mod scenarios;
mod search;
mod setup;
mod sink;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use scenarios::{backlog, end_to_end, ingest, measure_raw, traced};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Ingest role only: accepted rate and latency.
    Ingest,
    /// Ingest offered 10 % more than the raw INSERT ceiling of this run (measures that
    /// ceiling first if `raw` has not run): can ingest keep up with the database's own
    /// single-row rate?
    Ceiling,
    /// Every role: throughput and end-to-end latency, losses, duplicates.
    E2e,
    /// `e2e` with OpenTelemetry traces exported to a collector embedded in the bench
    /// (which counts the spans it gets): what tracing every event costs.
    Traced,
    /// N deliveries stored with relay and worker stopped, then the time to drain them.
    Backlog,
    /// End to end at increasing rates until p99 breaks the bound.
    Sweep,
    /// The database's own ceiling: single-row INSERT … ON CONFLICT.
    Raw,
    /// End to end at 2,000 events/s with relayd's shipped defaults, one fast destination.
    Defaults,
    /// A fast destination's end-to-end latency beside another fast one, then beside one
    /// that answers in 2 s.
    SlowNeighbour,
    /// A destination down (503) for `--outage` under load, then back: tries spent
    /// while it was down, seconds from its recovery to the first delivery, drain time.
    Outage,
    /// A destination with `rate_limit = "--rate-limit/s"` offered twice that: the
    /// delivery rate measured against the limit.
    RateLimited,
    /// Per-key ordered delivery: unordered, then ordered over `--ordered-keys` keys, at
    /// `--ordered-rate`; then one key alone, bounded by one round trip per event.
    Ordered,
    /// A destination's payload filter: CPU per event (evaluation and the JSON parse).
    Filter,
    /// What search costs ingest: ingest offered twice the raw INSERT ceiling (measured
    /// first if `raw` has not run), with a plain source and then a `searchable` one
    /// (bodies copied to jsonb and indexed) — each row's accepted rate is its ceiling.
    IngestSearchable,
    /// Where the time goes: end to end at `--e2e-rate` with the shipped defaults, each
    /// role its own process, on a PostgreSQL server of the bench's own with
    /// `pg_stat_statements`; CPU per process group, statements, row writes, WAL and AMQP
    /// frames per 10,000 delivered events (writes anatomy-table.md).
    Anatomy,
    /// The admin API's event search over `--search-events` stored events: `match`,
    /// `where` and an unindexed `where`, beside the same query in SQL.
    Search,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "relayd-bench", about = "Benchmarks relayd on this machine.")]
struct Args {
    /// Scenarios to run (comma list); default: the standard set.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "raw,ingest,ceiling,ingest-searchable,e2e,traced,backlog,sweep,defaults,slow-neighbour,outage,rate-limited,ordered,filter,search,anatomy"
    )]
    scenarios: Vec<Scenario>,
    /// Server URL of PostgreSQL; a `relayd_bench` database is (re)created on it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    broker_url: String,
    /// Offered rate of the ingest scenario (requests per second).
    #[arg(long, default_value_t = 8000.0)]
    ingest_rate: f64,
    /// Offered rate of the e2e scenario (events per second).
    #[arg(long, default_value_t = 2000.0)]
    e2e_rate: f64,
    /// Length of each load phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Open requests at most (the load generator's connections).
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Clients of the raw INSERT baseline (each holds a PostgreSQL connection, so keep it
    /// under max_connections).
    #[arg(long, default_value_t = 64)]
    raw_clients: usize,
    /// Deliveries in the backlog scenario.
    #[arg(long, default_value_t = 100_000)]
    backlog: u64,
    /// Rates of the sweep (events per second).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "250,500,1000,1500,2000,3000,4000"
    )]
    sweep_rates: Vec<f64>,
    /// The sweep stops after the first rate whose end-to-end p99 exceeds this.
    #[arg(long, default_value_t = 250.0)]
    p99_bound_ms: f64,
    /// Body size of each event.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// relayd's `database.pool_size`.
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// relayd's `relay.batch_size`.
    #[arg(long, default_value_t = 500)]
    relay_batch_size: usize,
    /// Run relayd with its shipped defaults: no `pool_size`, `batch_size`,
    /// `worker.concurrency` or `max_in_flight` of the bench's own.
    #[arg(long)]
    defaults: bool,
    /// With `--defaults` (and in the `defaults` scenario): hold this many requests in
    /// flight to each destination (`min_in_flight = max_in_flight = N`) instead of the
    /// adaptive limit — to tell the limiter's share of a latency from the pipeline's.
    #[arg(long)]
    fixed_in_flight: Option<usize>,
    /// Offered rate of the slow-neighbour and outage scenarios (events per second).
    #[arg(long, default_value_t = 500.0)]
    flow_rate: f64,
    /// How long the outage scenario's destination is down.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// The rate-limited scenario's `rate_limit`, per second.
    #[arg(long, default_value_t = 200.0)]
    rate_limit: f64,
    /// Offered rate of the ordered scenario's unordered and many-keys runs.
    #[arg(long, default_value_t = 1000.0)]
    ordered_rate: f64,
    /// Distinct keys of the ordered scenario's many-keys run.
    #[arg(long, default_value_t = 1000)]
    ordered_keys: u64,
    /// Offered rate of the ordered scenario's single-key run.
    #[arg(long, default_value_t = 200.0)]
    single_key_rate: f64,
    /// Events stored for the search scenario.
    #[arg(long, default_value_t = 1_000_000)]
    search_events: u64,
    /// Distinct customers among them (each has `search_events / search_customers`).
    #[arg(long, default_value_t = 20_000)]
    search_customers: u64,
    /// The Stripe source is `searchable` (set by the ingest-searchable scenario).
    #[arg(skip)]
    searchable: bool,
    /// Events carry `data.object.customer = "cus_{index % keys}"` (0: no customer).
    #[arg(skip)]
    keys: u64,
    /// relayd's `telemetry.otlp_endpoint` (the `traced` scenario's collector).
    #[arg(skip)]
    otlp_endpoint: Option<String>,
    /// The relayd binary to measure (default: the one built next to this one), e.g. an
    /// older build for before/after figures. Flow-control keys it does not know are
    /// left out with `--without-flow-keys`.
    #[arg(long)]
    relayd: Option<PathBuf>,
    /// Write no `rate_limit` (for a relayd from before it existed).
    #[arg(long)]
    without_flow_keys: bool,
    /// Where results.md, results.json and latency.svg go.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
}

/// The raw INSERT ceiling of this run: measured by `raw`, or now if it has not run.
async fn run_ceiling(
    args: &Args,
    rows: &mut Vec<report::Row>,
    raw_ceiling: &mut Option<f64>,
) -> anyhow::Result<f64> {
    match *raw_ceiling {
        Some(ceiling) => Ok(ceiling),
        None => measure_raw(args, rows, raw_ceiling).await,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    let mut sweep_points = Vec::new();
    let mut raw_ceiling = None;
    for scenario in &args.scenarios {
        eprintln!("relayd-bench: {scenario:?} …");
        match scenario {
            Scenario::Raw => {
                measure_raw(&args, &mut rows, &mut raw_ceiling).await?;
            }
            Scenario::Ingest => rows.push(ingest(&args, "ingest", args.ingest_rate).await?),
            Scenario::IngestSearchable => {
                let ceiling = run_ceiling(&args, &mut rows, &mut raw_ceiling).await?;
                let rate = (ceiling * 2.0).round();
                rows.push(ingest(&args, "ingest at 2× raw", rate).await?);
                let searchable = Args {
                    searchable: true,
                    ..args.clone()
                };
                rows.push(ingest(&searchable, "ingest at 2× raw, searchable source", rate).await?);
            }
            Scenario::Ceiling => {
                let ceiling = run_ceiling(&args, &mut rows, &mut raw_ceiling).await?;
                let rate = (ceiling * 1.1).round();
                rows.push(ingest(&args, "ingest at 1.1× raw", rate).await?);
            }
            Scenario::E2e => rows.push(end_to_end(&args, "e2e", args.e2e_rate).await?),
            Scenario::Traced => rows.push(traced(&args).await?),
            Scenario::Backlog => rows.push(backlog(&args).await?),
            Scenario::Defaults => {
                let shipped = Args {
                    defaults: true,
                    ..args.clone()
                };
                let name = match args.fixed_in_flight {
                    Some(n) => format!("defaults, {n} in flight, 2000/s"),
                    None => "defaults 2000/s".to_string(),
                };
                rows.push(end_to_end(&shipped, &name, 2000.0).await?);
            }
            Scenario::SlowNeighbour => rows.extend(flow::slow_neighbour(&args).await?),
            Scenario::Outage => rows.push(flow::outage(&args).await?),
            Scenario::RateLimited => rows.push(flow::rate_limited(&args).await?),
            Scenario::Ordered => rows.extend(ordered::ordered(&args).await?),
            Scenario::Filter => rows.push(filter::filter()?),
            Scenario::Search => rows.extend(search::search(&args).await?),
            Scenario::Anatomy => rows.extend(anatomy::anatomy(&args).await?),
            Scenario::Sweep => {
                for &rate in &args.sweep_rates {
                    let row = end_to_end(&args, &format!("sweep {rate}/s"), rate).await?;
                    let broke = row.e2e_p99_ms.unwrap_or(f64::MAX) > args.p99_bound_ms;
                    sweep_points.push(row.clone());
                    rows.push(row);
                    if broke {
                        break;
                    }
                }
            }
        }
    }
    if let Some(ceiling) = raw_ceiling {
        for row in &mut rows {
            row.vs_raw_insert = (ceiling > 0.0).then(|| row.achieved_per_s / ceiling);
        }
    }
    let saturation = report::saturation(&sweep_points, args.p99_bound_ms);
    let table = report::markdown(&rows, saturation, args.p99_bound_ms);
    println!("{table}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("results.md"), &table)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&report::json(&rows, saturation, &args.out))?,
    )?;
    if !sweep_points.is_empty() {
        report::chart(&sweep_points, args.p99_bound_ms, &args.out.join("latency.svg"))?;
    }
    eprintln!("relayd-bench: wrote {}", args.out.display());
    Ok(())
}
