//! Results: one row per scenario, as a markdown table, JSON, and an SVG chart of
//! latency percentiles against offered load (from the sweep).

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;
use serde::Serialize;

use crate::load::Sample;
use crate::process::Usage;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub scenario: String,
    pub offered_per_s: Option<f64>,
    /// Accepted requests (or delivered events, or inserted rows) per second.
    pub achieved_per_s: f64,
    pub requests: u64,
    /// Requests not answered 200.
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    pub lost: Option<u64>,
    pub duplicates: Option<u64>,
    pub bad_signatures: Option<u64>,
    pub drain_seconds: Option<f64>,
    pub vs_raw_insert: Option<f64>,
    pub usage: Option<Usage>,
    /// What a scenario measures beyond the columns.
    pub notes: Option<String>,
}

/// The `q` quantile of sorted latencies, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i].as_secs_f64() * 1000.0)
}

impl Row {
    pub fn from_requests(
        name: &str,
        offered: f64,
        samples: &[Sample],
        elapsed: Duration,
        usage: Usage,
    ) -> Self {
        let mut latencies: Vec<Duration> = samples
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.latency)
            .collect();
        latencies.sort();
        let accepted = latencies.len() as u64;
        Self {
            scenario: name.into(),
            offered_per_s: Some(offered),
            achieved_per_s: accepted as f64 / elapsed.as_secs_f64(),
            requests: samples.len() as u64,
            errors: samples.len() as u64 - accepted,
            p50_ms: percentile_ms(&latencies, 0.50),
            p90_ms: percentile_ms(&latencies, 0.90),
            p99_ms: percentile_ms(&latencies, 0.99),
            max_ms: percentile_ms(&latencies, 1.0),
            usage: Some(usage),
            ..Self::default()
        }
    }
}

/// The highest sweep rate whose end-to-end p99 stayed within the bound.
pub fn saturation(points: &[Row], bound_ms: f64) -> Option<f64> {
    points
        .iter()
        .filter(|r| r.e2e_p99_ms.is_some_and(|p| p <= bound_ms) && r.lost == Some(0))
        .filter_map(|r| r.offered_per_s)
        .fold(None, |best, rate| Some(best.map_or(rate, |b: f64| b.max(rate))))
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

fn count(value: Option<u64>) -> String {
    value.map_or("–".into(), |v| v.to_string())
}

pub fn markdown(rows: &[Row], saturation: Option<f64>, bound_ms: f64) -> String {
    let mut out = String::from(
        "| scenario | offered/s | achieved/s | × raw INSERT | requests | errors | p50 ms | p90 ms | p99 ms | max ms | e2e p50 ms | e2e p99 ms | lost | dup | drain s | peak RSS MB | CPU s | notes |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            cell(r.offered_per_s, 0),
            r.achieved_per_s,
            cell(r.vs_raw_insert, 2),
            r.requests,
            r.errors,
            cell(r.p50_ms, 1),
            cell(r.p90_ms, 1),
            cell(r.p99_ms, 1),
            cell(r.max_ms, 1),
            cell(r.e2e_p50_ms, 1),
            cell(r.e2e_p99_ms, 1),
            count(r.lost),
            count(r.duplicates),
            cell(r.drain_seconds, 1),
            cell(r.usage.map(|u| u.peak_rss_mb), 0),
            cell(r.usage.map(|u| u.cpu_seconds), 1),
            r.notes.as_deref().unwrap_or(""),
        ));
    }
    if let Some(rate) = saturation {
        out.push_str(&format!(
            "\nSaturation (sweep): {rate:.0} events/s is the highest rate with end-to-end p99 ≤ {bound_ms:.0} ms and no loss.\n"
        ));
    }
    out
}

pub fn json(rows: &[Row], saturation: Option<f64>, out: &Path) -> serde_json::Value {
    serde_json::json!({
        "machine": machine(),
        "rows": rows,
        "saturation_events_per_s": saturation,
        "chart": out.join("latency.svg"),
    })
}

/// What the figures came from.
fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    });
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "relayd_version": env!("CARGO_PKG_VERSION"),
    })
}

/// Reads one figure of a row.
type Metric = fn(&Row) -> Option<f64>;

/// Latency percentiles (ingest and end to end) against offered load.
pub fn chart(points: &[Row], bound_ms: f64, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_rate = points.iter().filter_map(|r| r.offered_per_s).fold(0.0, f64::max) * 1.05;
    let max_latency = points
        .iter()
        .filter_map(|r| r.e2e_p99_ms)
        .fold(bound_ms, f64::max)
        .min(bound_ms * 4.0)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("relayd end-to-end latency vs offered load", ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_rate, 0.0..max_latency)?;
    chart
        .configure_mesh()
        .x_desc("offered load (events/s)")
        .y_desc("latency (ms)")
        .draw()?;
    let series: [(&str, RGBColor, Metric); 4] = [
        ("e2e p50", RGBColor(47, 158, 68), |r| r.e2e_p50_ms),
        ("e2e p99", RGBColor(224, 49, 49), |r| r.e2e_p99_ms),
        ("ingest p50", RGBColor(59, 91, 219), |r| r.p50_ms),
        ("ingest p99", RGBColor(121, 80, 242), |r| r.p99_ms),
    ];
    for (label, color, value) in series {
        let data: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|r| Some((r.offered_per_s?, value(r)?.min(max_latency))))
            .collect();
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(data.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart.draw_series(LineSeries::new(
        vec![(0.0, bound_ms), (max_rate, bound_ms)],
        BLACK.mix(0.4).stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}
