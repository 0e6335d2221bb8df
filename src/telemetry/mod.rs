//! What relayd tells about itself: log lines (human-readable or JSON on stderr, filtered
//! by `log.level`) and, for the daemon, OpenTelemetry traces ([`traces`]) with the W3C
//! trace context carried across its hops ([`context`]). The log filter does not reach
//! the traces: `log.level = "warn"` still exports every relayd span.

pub mod context;
pub mod traces;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber with logs only (the one-shot subcommands). `level`
/// was validated with the configuration. Calling it twice (tests starting several
/// daemons) keeps the first subscriber.
pub fn init(format: LogFormat, level: &str) {
    let _ = tracing_subscriber::registry()
        .with(logs(format, level))
        .try_init();
}

/// [`init`] plus the trace exporter `telemetry` asks for (the daemon). The returned
/// [`traces::Traces`] must be shut down after the roles stopped, outside the async
/// runtime, to flush the spans still queued.
pub fn init_with_traces(
    format: LogFormat,
    level: &str,
    telemetry: &TelemetryConfig,
) -> anyhow::Result<Option<traces::Traces>> {
    let Some((traces, tracer)) = traces::start(telemetry)? else {
        init(format, level);
        return Ok(None);
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_filter(traces::spans_filter());
    let _ = tracing_subscriber::registry()
        .with(logs(format, level))
        .with(spans)
        .try_init();
    tracing::info!(collector = %traces.collector(), "exporting traces");
    Ok(Some(traces))
}

/// The log-line layer with its own filter (so that it does not filter the spans).
fn logs(format: LogFormat, level: &str) -> Box<dyn Layer<Registry> + Send + Sync> {
    let filter: Targets = level
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    }
}
