//! The ordered-delivery scenario (issue #18): the same load to an unordered
//! destination, then to one with `ordering = { key = "/data/object/customer" }` over
//! many keys, then over one key alone, whose deliveries follow each other one round
//! trip apart (the row's notes give the delivery rate it reached).

use std::time::SystemTime;

use crate::report::Row;
use crate::scenarios::end_to_end_with;
use crate::setup::{Destination, SIGNING_SECRET};
use crate::sink::Sink;
use crate::Args;

const ORDERING: &str = "ordering = { key = \"/data/object/customer\" }\n";

pub async fn ordered(args: &Args) -> anyhow::Result<Vec<Row>> {
    let rate = args.ordered_rate;
    let keys = args.ordered_keys;
    let mut rows = Vec::new();
    let runs = [
        (format!("unordered {rate}/s"), rate, keys, false),
        (format!("ordered, {keys} keys {rate}/s"), rate, keys, true),
        (
            format!("ordered, 1 key {}/s", args.single_key_rate),
            args.single_key_rate,
            1,
            true,
        ),
    ];
    for (name, rate, keys, ordered) in runs {
        let sink = Sink::start(SIGNING_SECRET)?;
        let destination = Destination {
            extra: if ordered { ORDERING.into() } else { String::new() },
            ..Destination::sink(&sink.url)
        };
        let args = Args { keys, ..args.clone() };
        let mut row = end_to_end_with(&args, &name, rate, &[destination], &sink).await?;
        row.notes = Some(format!("delivered {:.0}/s", delivery_rate(&sink)));
        rows.push(row);
        sink.stop().await;
    }
    Ok(rows)
}

/// Distinct events delivered per second between the first arrival and the last.
fn delivery_rate(sink: &Sink) -> f64 {
    let Ok(received) = sink.received.lock() else {
        return 0.0;
    };
    let firsts: Vec<SystemTime> = received
        .arrivals
        .values()
        .filter_map(|a| a.iter().min().copied())
        .collect();
    let (Some(first), Some(last)) = (firsts.iter().min(), firsts.iter().max()) else {
        return 0.0;
    };
    let span = last.duration_since(*first).unwrap_or_default().as_secs_f64();
    if span > 0.0 {
        firsts.len() as f64 / span
    } else {
        0.0
    }
}
