//! OpenTelemetry traces: relayd's own spans, exported over OTLP/HTTP (protobuf, or JSON
//! with `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) by the SDK's batch exporter on a thread
//! of its own.
//!
//! Off unless `telemetry.otlp_endpoint` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names a collector; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` keep it off. The SDK reads the other standard variables
//! itself: `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*` (queue, batch, delay),
//! `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` and `_TIMEOUT`, `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (the service is `relayd` unless they name it). A collector
//! that is slow or away costs spans, never deliveries: spans wait in a bounded queue
//! that drops what does not fit, and no role ever waits for an export. The exporter
//! stops with [`Traces::shutdown`], which flushes what is queued.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::Targets;

use crate::config::TelemetryConfig;

/// The path OTLP/HTTP collectors take traces on, under their base URL.
const TRACES_PATH: &str = "/v1/traces";

/// The running exporter.
pub struct Traces {
    provider: SdkTracerProvider,
    /// Where spans go, without credentials, for the startup line.
    collector: String,
}

impl Traces {
    /// The collector's scheme, host and port (`configured by OTEL_*` when the
    /// environment named it).
    pub fn collector(&self) -> &str {
        &self.collector
    }

    /// Exports what is queued (within the exporter's timeout) and stops its thread.
    /// Blocks: call it outside the async runtime.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces: the last spans could not be exported");
        }
    }
}

/// Starts the exporter when a collector is named, with the tracer relayd's span layer
/// feeds; `Ok(None)` when traces are off.
pub fn start(config: &TelemetryConfig) -> anyhow::Result<Option<(Traces, SdkTracer)>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let from_env =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    if disabled || (config.otlp_endpoint.is_none() && !from_env) {
        return Ok(None);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol(
            env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL")),
        )?);
    let collector = match &config.otlp_endpoint {
        Some(base) => {
            let endpoint = traces_endpoint(base);
            let collector = shown(&endpoint);
            exporter = exporter.with_endpoint(endpoint);
            collector
        }
        None => "configured by OTEL_EXPORTER_OTLP_*".to_string(),
    };
    let exporter = exporter
        .build()
        .context("telemetry: starting the OTLP exporter")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    let tracer = provider.tracer("relayd");
    Ok(Some((Traces { provider, collector }, tracer)))
}

/// The spans that become OpenTelemetry spans: relayd's own (the ingest request, each
/// publish, each delivery and attempt), with the events logged inside them, whatever
/// `log.level` says.
pub fn spans_filter() -> Targets {
    Targets::new().with_target("relayd", tracing::Level::INFO)
}

/// The encoding `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` asks for: OTLP/HTTP's own
/// default, protobuf, unless it says JSON; relayd has no gRPC exporter.
fn protocol(asked: Option<String>) -> anyhow::Result<Protocol> {
    match asked.as_deref().map(str::trim) {
        None | Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some("http/json") => Ok(Protocol::HttpJson),
        Some(other) => anyhow::bail!(
            "telemetry: OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported: relayd exports over OTLP/HTTP, \"http/protobuf\" (the default) or \"http/json\""
        ),
    }
}

/// `base` as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it, with the traces path appended
/// (unless it is already there).
fn traces_endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(TRACES_PATH) {
        base.to_string()
    } else {
        format!("{base}{TRACES_PATH}")
    }
}

/// An endpoint without user, password, path or query (they may hold credentials).
fn shown(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(url) => format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or("-"),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "-".to_string(),
    }
}

/// The SDK's resource (environment included), named `relayd` unless the environment
/// names the service, with relayd's version.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let builder = if named {
        Resource::builder()
    } else {
        Resource::builder().with_service_name("relayd")
    };
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(traces_endpoint("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_endpoint("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_endpoint("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(traces_endpoint("https://c/otlp"), "https://c/otlp/v1/traces");
    }

    #[test]
    fn protobuf_unless_json_is_asked_for_and_grpc_is_refused() {
        assert_eq!(protocol(None).unwrap(), Protocol::HttpBinary);
        assert_eq!(
            protocol(Some("http/protobuf".into())).unwrap(),
            Protocol::HttpBinary
        );
        assert_eq!(protocol(Some("http/json".into())).unwrap(), Protocol::HttpJson);
        let refused = protocol(Some("grpc".into())).unwrap_err().to_string();
        assert!(refused.contains("\"grpc\" is not supported"), "{refused}");
    }

    #[test]
    fn the_collector_is_shown_without_credentials_or_path() {
        assert_eq!(
            shown("https://user:pass@collector.example:4318/v1/traces?token=t"),
            "https://collector.example:4318"
        );
        assert_eq!(shown("http://c/v1/traces"), "http://c");
    }
}
