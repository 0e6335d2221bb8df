//! Where the time goes (`anatomy`): end to end at `--e2e-rate` with the shipped
//! defaults, each role in its own relayd process, against a PostgreSQL server of the
//! bench's own (so `pg_stat_statements` can be loaded) and RabbitMQ through a
//! frame-counting proxy. Per 10,000 delivered events it reports the CPU seconds of each
//! relayd role, of PostgreSQL's backends grouped by `application_name` (relayd names
//! them by role) and of its background processes, and of RabbitMQ (beam.smp); the
//! database's transactions, statements, row writes and WAL; the AMQP frames. Writes
//! `anatomy-table.md` to `--out` and returns the run's end-to-end row. The load generator,
//! the sink and the proxy run in the bench's process and are not counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::amqpcount::AmqpCounter;
use crate::pgserver::PgServer;
use crate::process::{cpu_of, pids_named, Relayd};
use crate::report::Row;
use crate::scenarios::{delivery_figures, drain, raw_inserts};
use crate::setup::{
    delete_topology, free_port, fresh_database, load, relayd_binary, write_config, SIGNING_SECRET,
};
use crate::{load, sink, Args};

/// The roles, one process each, in the order they start.
const ROLES: [&str; 3] = ["relay", "worker", "ingest"];

pub async fn anatomy(args: &Args) -> anyhow::Result<Vec<Row>> {
    let server = PgServer::start()?;
    let args = Args {
        postgres: server.url(),
        defaults: true,
        fixed_in_flight: None,
        ..args.clone()
    };
    let mut raw = raw_inserts(&args).await?;
    raw.scenario.push_str(" (the bench's own PostgreSQL)");
    let database_url = fresh_database(&args).await?;
    let sink = sink::Sink::start(SIGNING_SECRET)?;
    let proxy = AmqpCounter::start(&args.broker_url).await?;
    let through_proxy = Args {
        broker_url: proxy.url.clone(),
        ..args.clone()
    };
    let setup = write_config(&through_proxy, &database_url, Some(&sink.url))?;
    let binary = relayd_binary(&args);
    let mut processes = Vec::new();
    for role in ROLES {
        let ops = if role == "ingest" {
            setup.ops.clone()
        } else {
            format!("127.0.0.1:{}", free_port()?)
        };
        let relayd = Relayd::start_with(
            &binary,
            &setup.config,
            role,
            &ops,
            &[("RELAYD__OPS__LISTEN", ops.as_str())],
        )
        .await?;
        processes.push((role, relayd));
    }
    // Warm up (pools filled, statements prepared, channels open), then measure.
    let warmup = format!("warm{}", uuid::Uuid::now_v7().simple());
    let mut warm_load = load(&args, &setup, args.e2e_rate, &warmup);
    warm_load.duration = Duration::from_secs(2);
    let warm = load::run(&warm_load).await;
    drain(&sink, &warm, &warmup).await;
    // An idle backend flushes its table and WAL counters up to 10 s later
    // (PostgreSQL 15's PGSTAT_IDLE_INTERVAL): let the warm-up's land before the reset.
    tokio::time::sleep(Duration::from_secs(11)).await;

    let stats_url = format!("{database_url}?application_name=relayd-bench");
    let mut stats = AsyncPgConnection::establish(&stats_url).await?;
    let before = Snapshot::take(&mut stats, &server, &processes).await?;
    reset_statistics(&mut stats).await?;
    proxy.reset();

    let run = format!("anatomy{}", uuid::Uuid::now_v7().simple());
    let started = Instant::now();
    let samples = load::run(&load(&args, &setup, args.e2e_rate, &run)).await;
    let elapsed = started.elapsed();
    drain(&sink, &samples, &run).await;
    let after = Snapshot::take(&mut stats, &server, &processes).await?;
    let counts = std::mem::take(
        &mut *proxy
            .counts
            .lock()
            .map_err(|_| anyhow::anyhow!("proxy poisoned"))?,
    );

    let mut usage = crate::process::Usage::default();
    for (_, relayd) in processes {
        let used = relayd.stop();
        usage.cpu_seconds += used.cpu_seconds;
        usage.peak_rss_mb += used.peak_rss_mb;
    }
    // The backends flushed their statistics as they exited.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let database = DatabaseStats::read(&mut stats).await?;
    drop(stats);

    let name = format!("anatomy {}/s, split roles", args.e2e_rate);
    let mut row = Row::from_requests(&name, args.e2e_rate, &samples, elapsed, usage);
    delivery_figures(&mut row, &samples, &run, &sink)?;
    let delivered = row.requests - row.errors - row.lost.unwrap_or(0);
    let report = Report {
        rate: args.e2e_rate,
        seconds: elapsed.as_secs_f64(),
        delivered,
        raw_per_s: raw.achieved_per_s,
        cpu: cpu_table(&before, &after),
        database,
        frames: counts.frames,
        amqp_bytes: counts.bytes_out + counts.bytes_in,
        e2e: (row.e2e_p50_ms, row.e2e_p99_ms),
    };
    let text = report.markdown();
    println!("{text}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("anatomy-table.md"), &text)?;
    row.notes = Some(format!(
        "host CPU {:.3} ms per event (relayd {:.3}); tables in anatomy-table.md",
        report.host_cpu_ms_per_event(),
        report.relayd_cpu_ms_per_event()
    ));
    sink.stop().await;
    delete_topology(&args, &setup);
    let _ = std::fs::remove_file(&setup.config);
    drop(server);
    Ok(vec![raw, row])
}

/// CPU seconds of every process that matters, by group, at one instant.
struct Snapshot {
    /// relayd role → its process's CPU seconds.
    relayd: BTreeMap<String, f64>,
    /// PostgreSQL pid → (group, CPU seconds).
    postgres: BTreeMap<u32, (String, f64)>,
    /// The postmaster's own CPU and what its exited children used.
    postmaster: crate::process::Cpu,
    rabbitmq: f64,
}

#[derive(QueryableByName)]
struct Backend {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

impl Snapshot {
    async fn take(
        conn: &mut AsyncPgConnection,
        server: &PgServer,
        processes: &[(&str, Relayd)],
    ) -> anyhow::Result<Self> {
        let backends: Vec<Backend> = diesel::sql_query(
            "SELECT pid, coalesce(nullif(application_name, ''), backend_type) AS name \
             FROM pg_stat_activity WHERE pid IS NOT NULL",
        )
        .load(conn)
        .await?;
        Ok(Self {
            relayd: processes
                .iter()
                .map(|(role, relayd)| (role.to_string(), cpu_of(relayd.pid()).own))
                .collect(),
            postgres: backends
                .into_iter()
                .map(|b| {
                    let pid = b.pid as u32;
                    (pid, (b.name, cpu_of(pid).own))
                })
                .collect(),
            postmaster: server.postmaster_pid().map(cpu_of).unwrap_or_default(),
            rabbitmq: pids_named("beam.smp").into_iter().map(|p| cpu_of(p).own).sum(),
        })
    }
}

/// CPU seconds used between two snapshots, by line of the report.
fn cpu_table(before: &Snapshot, after: &Snapshot) -> Vec<(String, f64)> {
    let mut lines = Vec::new();
    for (role, cpu) in &after.relayd {
        let start = before.relayd.get(role).copied().unwrap_or(0.0);
        lines.push((format!("relayd --role {role}"), cpu - start));
    }
    let mut groups: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (name, cpu)) in &after.postgres {
        let start = before.postgres.get(pid).map_or(0.0, |(_, c)| *c);
        *groups.entry(name.clone()).or_default() += cpu - start;
    }
    let gone: f64 = before
        .postgres
        .iter()
        .filter(|(pid, _)| !after.postgres.contains_key(pid))
        .map(|(_, (_, cpu))| cpu)
        .sum();
    let exited = after.postmaster.reaped_children - before.postmaster.reaped_children - gone;
    let postmaster = after.postmaster.own - before.postmaster.own;
    // relayd names its pools' sessions by role; its LISTEN session has no name; the
    // rest are PostgreSQL's own processes (WAL writer, checkpointer, autovacuum, …).
    let mut background = 0.0;
    for (name, cpu) in groups {
        match name.as_str() {
            "relayd-bench" => {} // the bench's own statistics queries
            "client backend" => lines.push(("PostgreSQL sessions without a name (LISTEN)".into(), cpu)),
            relayd if relayd.starts_with("relayd-") => {
                lines.push((format!("PostgreSQL backends of {relayd}"), cpu))
            }
            _ => background += cpu,
        }
    }
    lines.push(("PostgreSQL background processes".into(), background));
    lines.push((
        "PostgreSQL postmaster and exited backends".into(),
        postmaster + exited.max(0.0),
    ));
    lines.push(("RabbitMQ (beam.smp)".into(), after.rabbitmq - before.rabbitmq));
    lines
}

async fn reset_statistics(conn: &mut AsyncPgConnection) -> anyhow::Result<()> {
    for statement in [
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        "SELECT pg_stat_statements_reset()",
        "SELECT pg_stat_reset()",
        "SELECT pg_stat_reset_shared('wal')",
    ] {
        diesel::sql_query(statement).execute(conn).await?;
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Statement {
    #[diesel(sql_type = diesel::sql_types::Text)]
    query: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    calls: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rows: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    plans: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    plan_ms: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    ms: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    wal_bytes: f64,
}

#[derive(QueryableByName)]
struct TableWrites {
    #[diesel(sql_type = diesel::sql_types::Text)]
    relname: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    inserted: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    updated: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    hot_updated: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    deleted: i64,
}

#[derive(QueryableByName, Default)]
struct Wal {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    records: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    full_page_images: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    bytes: f64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    writes: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    syncs: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    commits: i64,
}

/// What the database did during the measured run.
struct DatabaseStats {
    statements: Vec<Statement>,
    tables: Vec<TableWrites>,
    wal: Wal,
}

impl DatabaseStats {
    async fn read(conn: &mut AsyncPgConnection) -> anyhow::Result<Self> {
        let statements = diesel::sql_query(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g') AS query, calls, rows, plans, \
                    total_plan_time AS plan_ms, total_exec_time AS ms, wal_bytes::float8 AS wal_bytes \
             FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND query NOT LIKE '%pg_stat%' \
             ORDER BY calls DESC, total_exec_time DESC",
        )
        .load(conn)
        .await?;
        let tables = diesel::sql_query(
            "SELECT relname::text, n_tup_ins AS inserted, n_tup_upd AS updated, \
                    n_tup_hot_upd AS hot_updated, n_tup_del AS deleted \
             FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY relname",
        )
        .load(conn)
        .await?;
        let wal = diesel::sql_query(
            "SELECT wal_records AS records, wal_fpi AS full_page_images, wal_bytes::float8 AS bytes, \
                    wal_write AS writes, wal_sync AS syncs, \
                    (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits \
             FROM pg_stat_wal",
        )
        .get_result(conn)
        .await?;
        Ok(Self {
            statements,
            tables,
            wal,
        })
    }
}

struct Report {
    rate: f64,
    seconds: f64,
    delivered: u64,
    raw_per_s: f64,
    cpu: Vec<(String, f64)>,
    database: DatabaseStats,
    frames: BTreeMap<String, u64>,
    amqp_bytes: u64,
    e2e: (Option<f64>, Option<f64>),
}

/// Figures are given per this many delivered events.
const PER: f64 = 10_000.0;

impl Report {
    fn per(&self, value: f64) -> f64 {
        value * PER / self.delivered.max(1) as f64
    }

    fn host_cpu_ms_per_event(&self) -> f64 {
        let total: f64 = self.cpu.iter().map(|(_, s)| s).sum();
        total * 1000.0 / self.delivered.max(1) as f64
    }

    fn relayd_cpu_ms_per_event(&self) -> f64 {
        let relayd: f64 = self
            .cpu
            .iter()
            .filter(|(l, _)| l.starts_with("relayd "))
            .map(|(_, s)| s)
            .sum();
        relayd * 1000.0 / self.delivered.max(1) as f64
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0} ms"));
        let _ = writeln!(
            out,
            "## Where the time goes: per 10,000 delivered events\n\n\
             {delivered} events delivered, offered {rate}/s for {seconds:.0} s; shipped defaults, \
             each role its own relayd process; e2e p50 {p50}, p99 {p99}. Raw single-row INSERT ×64 \
             on the same PostgreSQL server in the same run: {raw:.0}/s.\n",
            delivered = self.delivered,
            rate = self.rate,
            seconds = self.seconds,
            p50 = ms(self.e2e.0),
            p99 = ms(self.e2e.1),
            raw = self.raw_per_s,
        );
        let total: f64 = self.cpu.iter().map(|(_, s)| s).sum();
        let _ = writeln!(out, "| process | CPU s | share |\n|---|---:|---:|");
        for (label, seconds) in &self.cpu {
            let _ = writeln!(
                out,
                "| {label} | {:.2} | {:.0} % |",
                self.per(*seconds),
                seconds * 100.0 / total.max(f64::MIN_POSITIVE)
            );
        }
        let _ = writeln!(
            out,
            "| **host (relayd + PostgreSQL + RabbitMQ)** | **{:.2}** | {:.3} ms per event; relayd {:.3} ms |\n",
            self.per(total),
            self.host_cpu_ms_per_event(),
            self.relayd_cpu_ms_per_event()
        );

        let wal = &self.database.wal;
        let statements: i64 = self.database.statements.iter().map(|s| s.calls).sum();
        let writes: i64 = self
            .database
            .tables
            .iter()
            .map(|t| t.inserted + t.updated + t.deleted)
            .sum();
        let _ = writeln!(out, "| PostgreSQL | per 10,000 | per event |\n|---|---:|---:|");
        for (label, value) in [
            ("transactions committed", wal.commits as f64),
            ("statements", statements as f64),
            ("row writes (insert + update + delete)", writes as f64),
            ("WAL records", wal.records as f64),
            ("WAL bytes", wal.bytes),
            ("WAL full-page images", wal.full_page_images as f64),
            ("WAL writes", wal.writes as f64),
            ("WAL fsyncs", wal.syncs as f64),
        ] {
            let _ = writeln!(
                out,
                "| {label} | {:.0} | {:.2} |",
                self.per(value),
                value / self.delivered.max(1) as f64
            );
        }
        let _ = writeln!(
            out,
            "\n| table | inserts | updates (HOT) | deletes |\n|---|---:|---:|---:|"
        );
        for t in &self.database.tables {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} ({:.0}) | {:.0} |",
                t.relname,
                self.per(t.inserted as f64),
                self.per(t.updated as f64),
                self.per(t.hot_updated as f64),
                self.per(t.deleted as f64)
            );
        }
        let _ = writeln!(
            out,
            "\n| statement (pg_stat_statements) | calls | rows | plans | plan ms | exec ms | WAL KB |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for s in self.database.statements.iter().take(20) {
            let query: String = s.query.chars().take(90).collect::<String>().replace('|', "\\|");
            let _ = writeln!(
                out,
                "| `{query}` | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                self.per(s.calls as f64),
                self.per(s.rows as f64),
                self.per(s.plans as f64),
                self.per(s.plan_ms),
                self.per(s.ms),
                self.per(s.wal_bytes) / 1024.0
            );
        }
        let total_frames: u64 = self.frames.values().sum();
        let _ = writeln!(
            out,
            "\n| AMQP frames (→ to the broker, ← from it) | per 10,000 | per event |\n|---|---:|---:|"
        );
        for (kind, n) in &self.frames {
            let _ = writeln!(
                out,
                "| {kind} | {:.0} | {:.2} |",
                self.per(*n as f64),
                *n as f64 / self.delivered.max(1) as f64
            );
        }
        let _ = writeln!(
            out,
            "| **all frames** ({:.0} KB) | **{:.0}** | {:.2} |",
            self.per(self.amqp_bytes as f64) / 1024.0,
            self.per(total_frames as f64),
            total_frames as f64 / self.delivered.max(1) as f64
        );
        out
    }
}
