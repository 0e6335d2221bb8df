//! The scenarios measured against the real binary: the raw INSERT ceiling, ingest
//! alone, end to end (plain, traced, and with any destinations), and a backlog drained.
//! Each returns its row; the flow and ordering scenarios are in their own modules.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::report::{percentile_ms, Row};
use crate::setup::{
    delete_topology, fresh_database, load, relayd_binary, write_config, write_config_with, Destination,
    SIGNING_SECRET,
};
use crate::{collector, load, process, sink, Args};

/// Runs the raw INSERT baseline, records its row and ceiling, and returns the ceiling.
pub async fn measure_raw(args: &Args, rows: &mut Vec<Row>, ceiling: &mut Option<f64>) -> anyhow::Result<f64> {
    let row = raw_inserts(args).await?;
    let achieved = row.achieved_per_s;
    *ceiling = Some(achieved);
    rows.push(row);
    Ok(achieved)
}

pub async fn ingest(args: &Args, name: &str, rate: f64) -> anyhow::Result<Row> {
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

pub async fn end_to_end(args: &Args, name: &str, rate: f64) -> anyhow::Result<Row> {
    let sink = sink::Sink::start(SIGNING_SECRET)?;
    let row = end_to_end_with(args, name, rate, &[Destination::sink(&sink.url)], &sink).await?;
    sink.stop().await;
    Ok(row)
}

/// `e2e` with every span exported to an embedded collector; the notes say how many
/// spans (four per event: ingest, publish, delivery, attempt) and bytes it got.
pub async fn traced(args: &Args) -> anyhow::Result<Row> {
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
pub async fn end_to_end_with(
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
    drain(sink, &samples, &run).await;
    let usage = relayd.stop();
    let mut row = Row::from_requests(name, rate, &samples, elapsed, usage);
    delivery_figures(&mut row, &samples, &run, sink)?;
    delete_topology(args, &setup);
    let _ = std::fs::remove_file(&setup.config);
    Ok(row)
}

/// The provider ids of the events of `run` that ingest accepted.
fn accepted_ids(samples: &[load::Sample], run: &str) -> HashSet<String> {
    samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| format!("evt_bench_{run}_{}", s.index))
        .collect()
}

/// Waits until everything of `run` that was accepted has arrived at `sink`, 30 s at most.
pub async fn drain(sink: &sink::Sink, samples: &[load::Sample], run: &str) {
    let accepted = accepted_ids(samples, run);
    let arrived = || {
        sink.received.lock().map_or(0, |r| {
            accepted.iter().filter(|id| r.arrivals.contains_key(*id)).count()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived() < accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fills `row`'s end-to-end percentiles (from each event's scheduled time to its first
/// arrival), losses, duplicates and bad signatures, as `sink` saw `run`'s events.
pub fn delivery_figures(
    row: &mut Row,
    samples: &[load::Sample],
    run: &str,
    sink: &sink::Sink,
) -> anyhow::Result<()> {
    let accepted = accepted_ids(samples, run);
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
    let of_run = format!("evt_bench_{run}_");
    row.duplicates = Some(
        received
            .arrivals
            .iter()
            .filter(|(id, _)| id.starts_with(&of_run))
            .map(|(_, a)| a.len() as u64 - 1)
            .sum(),
    );
    row.bad_signatures = Some(received.bad_signatures);
    Ok(())
}

pub async fn backlog(args: &Args) -> anyhow::Result<Row> {
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

pub async fn raw_inserts(args: &Args) -> anyhow::Result<Row> {
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
