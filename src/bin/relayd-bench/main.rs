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

mod collector;
mod flow;
mod load;
mod ordered;
mod process;
mod report;
mod sink;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use report::{percentile_ms, Row};

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
}

#[derive(Debug, Clone, Parser)]
#[command(name = "relayd-bench", about = "Benchmarks relayd on this machine.")]
struct Args {
    /// Scenarios to run (comma list); default: the standard set.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "raw,ingest,ceiling,e2e,traced,backlog,sweep,defaults,slow-neighbour,outage,rate-limited,ordered"
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

const STRIPE_SECRET: &str = "whsec_bench_stripe_secret";
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DATABASE: &str = "relayd_bench";

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
            Scenario::Ceiling => {
                let ceiling = match raw_ceiling {
                    Some(ceiling) => ceiling,
                    None => measure_raw(&args, &mut rows, &mut raw_ceiling).await?,
                };
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

/// Runs the raw INSERT baseline, records its row and ceiling, and returns the ceiling.
async fn measure_raw(args: &Args, rows: &mut Vec<Row>, ceiling: &mut Option<f64>) -> anyhow::Result<f64> {
    let row = raw_inserts(args).await?;
    let achieved = row.achieved_per_s;
    *ceiling = Some(achieved);
    rows.push(row);
    Ok(achieved)
}

/// A fresh, migrated `relayd_bench` database; returns its URL.
async fn fresh_database(args: &Args) -> anyhow::Result<String> {
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A configuration for one scenario: its own database, broker prefix and ports.
struct Setup {
    config: PathBuf,
    ingest: String,
    ops: String,
    prefix: String,
    destinations: Vec<String>,
}

/// One destination of a scenario: every event goes to it.
struct Destination<'a> {
    name: &'a str,
    url: &'a str,
    /// More of its TOML keys, one per line.
    extra: String,
}

impl<'a> Destination<'a> {
    fn new(name: &'a str, url: &'a str) -> Self {
        Self {
            name,
            url,
            extra: String::new(),
        }
    }

    fn sink(url: &'a str) -> Self {
        Self::new("sink", url)
    }
}

fn write_config(args: &Args, database_url: &str, sink_url: Option<&str>) -> anyhow::Result<Setup> {
    let destinations: Vec<Destination<'_>> = sink_url.map(Destination::sink).into_iter().collect();
    write_config_with(args, database_url, &destinations)
}

fn write_config_with(
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
         [[sources]]\nname = \"stripe\"\nkind = \"stripe\"\nsecrets = [\"{STRIPE_SECRET}\"]\n{destination}",
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
fn delete_topology(args: &Args, setup: &Setup) {
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
fn relayd_binary(args: &Args) -> PathBuf {
    args.relayd.clone().unwrap_or_else(process::relayd_binary)
}

fn load(args: &Args, setup: &Setup, rate: f64, run: &str) -> load::Load {
    load::Load {
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

async fn ingest(args: &Args, name: &str, rate: f64) -> anyhow::Result<Row> {
    let url = fresh_database(args).await?;
    let setup = write_config(args, &url, None)?;
    let relayd = process::Relayd::start(&relayd_binary(args), &setup.config, "ingest", &setup.ops).await?;
    let started = Instant::now();
    let run: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    let samples = load::run(&load(args, &setup, rate, &run)).await;
    let elapsed = started.elapsed();
    let usage = relayd.stop();
    let _ = std::fs::remove_file(&setup.config);
    Ok(Row::from_requests(name, rate, &samples, elapsed, usage))
}

async fn end_to_end(args: &Args, name: &str, rate: f64) -> anyhow::Result<Row> {
    let sink = sink::Sink::start(SIGNING_SECRET)?;
    let row = end_to_end_with(args, name, rate, &[Destination::sink(&sink.url)], &sink).await?;
    sink.stop().await;
    Ok(row)
}

/// `e2e` with every span exported to an embedded collector; the notes say how many
/// spans (four per event: ingest, publish, delivery, attempt) and bytes it got.
async fn traced(args: &Args) -> anyhow::Result<Row> {
    let collector = collector::Collector::start()?;
    let mut traced = args.clone();
    traced.otlp_endpoint = Some(collector.url.clone());
    let mut row = end_to_end(&traced, "traced", args.e2e_rate).await?;
    // relayd flushed its last spans when it stopped.
    let (spans, bytes, exports) = collector.counts.read();
    row.notes = Some(format!(
        "{spans} spans exported ({:.1} per request) in {exports} OTLP/protobuf posts, {:.1} MB",
        spans as f64 / row.requests.max(1) as f64,
        bytes as f64 / 1e6
    ));
    collector.stop().await;
    Ok(row)
}

/// End to end with `destinations`, measured at `sink` (one of them).
async fn end_to_end_with(
    args: &Args,
    name: &str,
    rate: f64,
    destinations: &[Destination<'_>],
    sink: &sink::Sink,
) -> anyhow::Result<Row> {
    let url = fresh_database(args).await?;
    let setup = write_config_with(args, &url, destinations)?;
    let relayd = process::Relayd::start(&relayd_binary(args), &setup.config, "all", &setup.ops).await?;
    let run = format!("e2e{}{}", rate as u64, uuid::Uuid::now_v7().simple());
    let started = Instant::now();
    let samples = load::run(&load(args, &setup, rate, &run)).await;
    let elapsed = started.elapsed();
    let accepted: HashSet<String> = samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| format!("evt_bench_{run}_{}", s.index))
        .collect();
    // Drain: everything accepted should arrive; give it up to 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.count_distinct() < accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let usage = relayd.stop();
    let mut row = Row::from_requests(name, rate, &samples, elapsed, usage);
    {
        let received = sink
            .received
            .lock()
            .map_err(|_| anyhow::anyhow!("sink poisoned"))?;
        let mut e2e = Vec::new();
        for sample in samples.iter().filter(|s| s.status == 200) {
            let id = format!("evt_bench_{run}_{}", sample.index);
            if let Some(first) = received.arrivals.get(&id).and_then(|a| a.iter().min()) {
                e2e.push(first.duration_since(sample.scheduled).unwrap_or_default());
            }
        }
        e2e.sort();
        row.e2e_p50_ms = percentile_ms(&e2e, 0.50);
        row.e2e_p99_ms = percentile_ms(&e2e, 0.99);
        row.lost = Some(
            accepted
                .iter()
                .filter(|id| !received.arrivals.contains_key(*id))
                .count() as u64,
        );
        row.duplicates = Some(received.arrivals.values().map(|a| a.len() as u64 - 1).sum());
        row.bad_signatures = Some(received.bad_signatures);
    }
    delete_topology(args, &setup);
    let _ = std::fs::remove_file(&setup.config);
    Ok(row)
}

async fn backlog(args: &Args) -> anyhow::Result<Row> {
    let url = fresh_database(args).await?;
    let sink = sink::Sink::start(SIGNING_SECRET)?;
    let setup = write_config(args, &url, Some(&sink.url))?;
    let mut conn = AsyncPgConnection::establish(&url).await?;
    // The backlog: N stored events, each with a pending delivery, as ingest leaves them.
    let body = String::from_utf8(load::event_body("backlog", 0, args.body_bytes))?;
    diesel::sql_query(format!(
        "WITH e AS (INSERT INTO events (id, source, event_id, event_type, payload, content_type) \
           SELECT gen_random_uuid(), 'stripe', 'evt_bench_backlog_' || g, 'invoice.paid', \
                  convert_to(replace($1, 'evt_bench_backlog_0', 'evt_bench_backlog_' || g), 'UTF8'), 'application/json' \
           FROM generate_series(1, {}) g RETURNING id) \
         INSERT INTO deliveries (id, event_id, destination) SELECT gen_random_uuid(), id, 'sink' FROM e",
        args.backlog
    ))
    .bind::<diesel::sql_types::Text, _>(&body)
    .execute(&mut conn)
    .await?;
    let started = Instant::now();
    let relayd =
        process::Relayd::start(&relayd_binary(args), &setup.config, "relay,worker", &setup.ops).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while (sink.count_distinct() as u64) < args.backlog && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = started.elapsed();
    let usage = relayd.stop();
    let delivered = sink.count_distinct() as u64;
    let duplicates = sink
        .received
        .lock()
        .map(|r| r.arrivals.values().map(|a| a.len() as u64 - 1).sum())
        .unwrap_or(0);
    sink.stop().await;
    delete_topology(args, &setup);
    let _ = std::fs::remove_file(&setup.config);
    Ok(Row {
        scenario: format!("backlog {}", args.backlog),
        offered_per_s: None,
        achieved_per_s: delivered as f64 / drained.as_secs_f64(),
        requests: args.backlog,
        errors: 0,
        drain_seconds: Some(drained.as_secs_f64()),
        lost: Some(args.backlog - delivered.min(args.backlog)),
        duplicates: Some(duplicates),
        usage: Some(usage),
        ..Row::default()
    })
}

async fn raw_inserts(args: &Args) -> anyhow::Result<Row> {
    let url = fresh_database(args).await?;
    let mut conn = AsyncPgConnection::establish(&url).await?;
    diesel::sql_query(
        "CREATE TABLE bench_raw (source text NOT NULL, event_id text NOT NULL, payload bytea NOT NULL, \
         UNIQUE (source, event_id))",
    )
    .execute(&mut conn)
    .await?;
    let body = load::event_body("raw", 0, args.body_bytes);
    let stop_at = Instant::now() + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.raw_clients {
        let url = url.clone();
        let body = body.clone();
        tasks.spawn(async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < stop_at {
                let started = Instant::now();
                diesel::sql_query(
                    "INSERT INTO bench_raw (source, event_id, payload) VALUES ('stripe', $1, $2) ON CONFLICT DO NOTHING",
                )
                .bind::<diesel::sql_types::Text, _>(format!("evt_{worker}_{n}"))
                .bind::<diesel::sql_types::Bytea, _>(&body)
                .execute(&mut conn)
                .await?;
                latencies.push(started.elapsed());
                n += 1;
            }
            anyhow::Ok(latencies)
        });
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Row {
        scenario: format!("raw INSERT ×{}", args.raw_clients),
        achieved_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        requests: latencies.len() as u64,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        max_ms: percentile_ms(&latencies, 1.0),
        ..Row::default()
    })
}
