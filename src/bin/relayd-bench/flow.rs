//! The flow-control scenarios (issue #17), each with relayd's shipped defaults except
//! what the scenario is about: a fast destination beside a slow one, a destination down
//! for a while under load, and a rate-limited destination offered twice its limit.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crate::report::Row;
use crate::scenarios::end_to_end_with;
use crate::setup::{
    delete_topology, fresh_database, relayd_binary, write_config_with, Destination, SIGNING_SECRET,
};
use crate::sink::{Mode, Sink};
use crate::{load, process, Args};

fn shipped(args: &Args) -> Args {
    Args {
        defaults: true,
        fixed_in_flight: None,
        ..args.clone()
    }
}

/// A fast destination's end-to-end latency at `--flow-rate`, first beside another fast
/// destination, then beside one that answers every request in 2 s and holds every
/// in-flight slot it may (`min_in_flight = 64`, as its adaptive limit reaches after a
/// few minutes of steady 2 s answers).
pub async fn slow_neighbour(args: &Args) -> anyhow::Result<Vec<Row>> {
    let args = shipped(args);
    let rate = args.flow_rate;
    let mut rows = Vec::new();
    {
        let fast = Sink::start(SIGNING_SECRET)?;
        let other = Sink::start(SIGNING_SECRET)?;
        let destinations = [
            Destination::new("fast", &fast.url),
            Destination::new("other", &other.url),
        ];
        let name = format!("fast beside a fast one {rate}/s");
        rows.push(end_to_end_with(&args, &name, rate, &destinations, &fast).await?);
        fast.stop().await;
        other.stop().await;
    }
    let fast = Sink::start(SIGNING_SECRET)?;
    let slow = Sink::start_with(
        SIGNING_SECRET,
        Mode {
            delay: Duration::from_secs(2),
            ..Mode::default()
        },
    )?;
    let destinations = [
        Destination::new("fast", &fast.url),
        Destination {
            extra: "min_in_flight = 64\nmax_in_flight = 64\n".into(),
            ..Destination::new("slow", &slow.url)
        },
    ];
    let name = format!("fast beside a 2 s one {rate}/s");
    let mut row = end_to_end_with(&args, &name, rate, &destinations, &fast).await?;
    let slow_delivered = slow.count_distinct();
    row.notes = Some(format!("the 2 s destination got {slow_delivered}"));
    rows.push(row);
    fast.stop().await;
    slow.stop().await;
    Ok(rows)
}

/// A destination that answers 503 for `--outage` while `--flow-rate`/5 events a second
/// keep coming (5 s before, the outage, 20 s after): the tries it answered while down,
/// the seconds from its recovery to the first delivery, and the time from its recovery
/// until every accepted event had arrived.
pub async fn outage(args: &Args) -> anyhow::Result<Row> {
    let args = shipped(args);
    let rate = (args.flow_rate / 5.0).max(1.0);
    let before = Duration::from_secs(5);
    let after = Duration::from_secs(20);
    let url = fresh_database(&args).await?;
    let sink = Sink::start(SIGNING_SECRET)?;
    let setup = write_config_with(&args, &url, &[Destination::sink(&sink.url)])?;
    let relayd = process::Relayd::start(&relayd_binary(&args), &setup.config, "all", &setup.ops).await?;
    let run = format!("outage{}", uuid::Uuid::now_v7().simple());
    let mut load = crate::setup::load(&args, &setup, rate, &run);
    load.duration = before + args.outage + after;
    let mode = sink.mode.clone();
    let outage = args.outage;
    let switch = tokio::spawn(async move {
        tokio::time::sleep(before).await;
        mode.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(outage).await;
        mode.down.store(false, Ordering::SeqCst);
        SystemTime::now()
    });
    let samples = load::run(&load).await;
    let up_at = switch.await?;
    let accepted: HashSet<String> = samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| format!("evt_bench_{run}_{}", s.index))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    while sink.count_distinct() < accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let usage = relayd.stop();
    let row = {
        let received = sink
            .received
            .lock()
            .map_err(|_| anyhow::anyhow!("sink poisoned"))?;
        let arrivals: Vec<SystemTime> = received.arrivals.values().flatten().copied().collect();
        let since_up = |t: &SystemTime| t.duration_since(up_at).ok();
        let first = arrivals.iter().filter_map(since_up).min();
        let last = arrivals.iter().filter_map(since_up).max();
        let tries = received.refused.len();
        let lost = accepted
            .iter()
            .filter(|id| !received.arrivals.contains_key(*id))
            .count() as u64;
        Row {
            scenario: format!("outage {}s at {rate}/s", outage.as_secs()),
            offered_per_s: Some(rate),
            achieved_per_s: accepted.len() as f64 / load.duration.as_secs_f64(),
            requests: samples.len() as u64,
            errors: samples.len() as u64 - accepted.len() as u64,
            lost: Some(lost),
            duplicates: Some(received.arrivals.values().map(|a| a.len() as u64 - 1).sum()),
            drain_seconds: last.map(|d| d.as_secs_f64()),
            usage: Some(usage),
            notes: Some(format!(
                "{tries} tries answered 503 while down; first delivery {} s after it was back; drain s = from then to the last",
                first.map_or("–".into(), |d| format!("{:.1}", d.as_secs_f64()))
            )),
            ..Row::default()
        }
    };
    sink.stop().await;
    delete_topology(&args, &setup);
    let _ = std::fs::remove_file(&setup.config);
    Ok(row)
}

/// A destination with `rate_limit = "--rate-limit/s"` offered twice that for
/// `--duration`: its delivery rate over the run, after the first second.
pub async fn rate_limited(args: &Args) -> anyhow::Result<Row> {
    let args = shipped(args);
    let limit = args.rate_limit;
    let url = fresh_database(&args).await?;
    let sink = Sink::start(SIGNING_SECRET)?;
    let extra = if args.without_flow_keys {
        String::new()
    } else {
        format!("rate_limit = \"{limit}/s\"\n")
    };
    let destination = Destination {
        extra,
        ..Destination::sink(&sink.url)
    };
    let setup = write_config_with(&args, &url, &[destination])?;
    let relayd = process::Relayd::start(&relayd_binary(&args), &setup.config, "all", &setup.ops).await?;
    let run = format!("limited{}", uuid::Uuid::now_v7().simple());
    let load = crate::setup::load(&args, &setup, limit * 2.0, &run);
    let started = SystemTime::now();
    let samples = load::run(&load).await;
    let ended = SystemTime::now();
    let usage = relayd.stop();
    let from = started + Duration::from_secs(1);
    let delivered = sink
        .received
        .lock()
        .map(|r| {
            r.arrivals
                .values()
                .flatten()
                .filter(|t| **t >= from && **t < ended)
                .count()
        })
        .unwrap_or(0);
    let window = ended.duration_since(from).unwrap_or_default().as_secs_f64();
    let measured = delivered as f64 / window;
    sink.stop().await;
    delete_topology(&args, &setup);
    let _ = std::fs::remove_file(&setup.config);
    let accepted = samples.iter().filter(|s| s.status == 200).count() as u64;
    Ok(Row {
        scenario: format!("rate limit {limit}/s offered {}/s", limit * 2.0),
        offered_per_s: Some(limit * 2.0),
        achieved_per_s: measured,
        requests: samples.len() as u64,
        errors: samples.len() as u64 - accepted,
        usage: Some(usage),
        notes: Some(if args.without_flow_keys {
            format!("no rate_limit written: delivered {measured:.1}/s")
        } else {
            format!(
                "delivered {measured:.1}/s over {window:.0} s = {:.1} % of the limit",
                measured * 100.0 / limit
            )
        }),
        ..Row::default()
    })
}
