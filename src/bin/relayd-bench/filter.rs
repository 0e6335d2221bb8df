//! The `filter` scenario: what a destination's payload filter costs ingest per event,
//! on this machine's CPU — a three-clause CEL filter on a 1 KiB Stripe-shaped invoice
//! (nested objects, 14 line items), timed apart from the JSON parse it shares with
//! the ordering keys. No database or broker: the figures are CPU per event.

use std::time::{Duration, Instant};

use relayd::filter::{Filter, Outcome};

use crate::report::{percentile_ms, Row};

/// The filter measured: the issue's "only `invoice.paid` over 1,000 for live mode".
pub const FILTER: &str =
    r#"event_type == "invoice.paid" && body.data.object.amount_paid > 1000 && body.livemode"#;

/// Events per timed batch, and batches.
const BATCH: u32 = 1_000;
const BATCHES: usize = 200;

/// A Stripe-shaped `invoice.paid` of about 1 KiB.
fn invoice() -> Vec<u8> {
    let lines: Vec<serde_json::Value> = (0..14)
        .map(|i| serde_json::json!({ "id": format!("il_{i:018}"), "amount": i * 100, "currency": "usd" }))
        .collect();
    serde_json::json!({
        "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "invoice.paid",
        "livemode": true, "created": 1_686_089_970,
        "data": { "object": { "id": "in_1NG8Du2eZvKYlo2C", "amount_paid": 2000, "customer": "cus_123", "lines": lines } },
    })
    .to_string()
    .into_bytes()
}

/// Microseconds per event of each batch of `f`, sorted.
fn timed(mut f: impl FnMut()) -> Vec<Duration> {
    let mut per_event: Vec<Duration> = (0..BATCHES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            started.elapsed() / BATCH
        })
        .collect();
    per_event.sort();
    per_event
}

pub fn filter() -> anyhow::Result<Row> {
    let body = invoice();
    let filter = Filter::compile(FILTER).map_err(|e| anyhow::anyhow!("{e}"))?;
    let parsed: serde_json::Value = serde_json::from_slice(&body)?;
    anyhow::ensure!(
        filter.evaluate(Some(&parsed), "stripe", "invoice.paid") == Outcome::Match,
        "the benchmark's event must pass its filter"
    );
    let parse = timed(|| {
        std::hint::black_box(serde_json::from_slice::<serde_json::Value>(&body).ok());
    });
    let evaluate = timed(|| {
        std::hint::black_box(filter.evaluate(Some(&parsed), "stripe", "invoice.paid"));
    });
    let both = timed(|| {
        let parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
        std::hint::black_box(filter.evaluate(parsed.as_ref(), "stripe", "invoice.paid"));
    });
    let us = |sorted: &[Duration], q: f64| percentile_ms(sorted, q).unwrap_or(0.0) * 1000.0;
    let events = u64::from(BATCH) * BATCHES as u64 * 3;
    Ok(Row {
        scenario: "filter (CPU per event)".into(),
        achieved_per_s: 1e6 / us(&both, 0.5).max(f64::MIN_POSITIVE),
        requests: events,
        notes: Some(format!(
            "3-clause CEL filter on a {} B event, median (p99) of {BATCHES} batches of {BATCH}: \
             evaluate {:.2} µs ({:.2}), JSON parse {:.2} µs ({:.2}), both {:.2} µs ({:.2}); \
             the parse is shared with ordering keys and every other filter of the event",
            body.len(),
            us(&evaluate, 0.5),
            us(&evaluate, 0.99),
            us(&parse, 0.5),
            us(&parse, 0.99),
            us(&both, 0.5),
            us(&both, 0.99),
        )),
        ..Row::default()
    })
}
