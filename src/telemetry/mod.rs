//! What relayd tells about itself: log lines (human-readable or JSON on stderr, filtered
//! by `log.level`) and, for the daemon, OpenTelemetry traces ([`traces`]) with the W3C
//! trace context carried across its hops ([`context`]). The log filter does not reach
//! the traces: `log.level = "warn"` still exports every relayd span.

pub mod context;
pub mod traces;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::{FormatFields, FormattedFields};
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
    // Lean spans: no source location, thread, target or busy/idle times, and nothing done
    // on each poll of an instrumented future (relayd reads a span's context from the
    // span, never from OpenTelemetry's current context).
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
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
            .fmt_fields(TextFields)
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

/// Text log lines' fields without the `otel.*` ones (a span's kind, name and status,
/// which only the traces need); otherwise as tracing-subscriber writes them.
struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let mut visitor = WithoutOtel(DefaultVisitor::new(writer, true), false);
        fields.record(&mut visitor);
        visitor.0.finish()
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        // Only a space before fields that are shown (recording `otel.status_code` alone
        // adds nothing).
        let mut probe = WithoutOtel(Shown, false);
        fields.record(&mut probe);
        if !probe.1 {
            return Ok(());
        }
        if !current.fields.is_empty() {
            current.fields.push(' ');
        }
        self.format_fields(current.as_writer(), fields)
    }
}

/// Passes on every field but the `otel.*` ones; `.1` says whether any was passed on.
struct WithoutOtel<V>(V, bool);

impl<V: Visit> WithoutOtel<V> {
    fn shown(&mut self, field: &Field) -> bool {
        let shown = !field.name().starts_with("otel.");
        self.1 |= shown;
        shown
    }
}

impl<V: Visit> Visit for WithoutOtel<V> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.shown(field) {
            self.0.record_str(field, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.shown(field) {
            self.0.record_error(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.shown(field) {
            self.0.record_debug(field, value);
        }
    }
}

/// A visitor that only lets [`WithoutOtel`] count.
struct Shown;

impl Visit for Shown {
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_lines_leave_out_the_otel_fields_and_keep_the_rest() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(TextFields)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "webhook",
                otel.name = "POST /webhooks/{source}",
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                source = "stripe",
                status = tracing::field::Empty,
            );
            span.record("otel.status_code", "error");
            span.in_scope(|| tracing::info!(otel.extra = 1, deliveries = 2, "accepted"));
            span.record("status", 503);
            span.in_scope(|| tracing::info!("answered"));
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("webhook{source=\"stripe\"}:"), "{text}");
        assert!(lines[0].ends_with("accepted deliveries=2"), "{text}");
        assert!(
            lines[1].contains("webhook{source=\"stripe\" status=503}:"),
            "{text}"
        );
        assert!(!text.contains("otel"), "{text}");
    }
}
