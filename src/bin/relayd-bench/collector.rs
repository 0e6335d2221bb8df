//! An OpenTelemetry collector's OTLP/HTTP traces endpoint for the `traced` scenario:
//! answers every export at once and counts the spans and bytes it was sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use relayd::listener::LocalServer;

#[derive(Default)]
pub struct Counts {
    pub spans: AtomicU64,
    pub bytes: AtomicU64,
    pub exports: AtomicU64,
}

impl Counts {
    /// Spans, bytes and export requests so far.
    pub fn read(&self) -> (u64, u64, u64) {
        (
            self.spans.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.exports.load(Ordering::Relaxed),
        )
    }
}

pub struct Collector {
    /// The base URL relayd's `telemetry.otlp_endpoint` takes.
    pub url: String,
    pub counts: Arc<Counts>,
    server: LocalServer,
}

async fn export(counts: web::Data<Counts>, body: web::Bytes) -> HttpResponse {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    // relayd's default encoding, protobuf (cheap to decode: the bench shares the two
    // cores with relayd).
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return HttpResponse::BadRequest().finish();
    };
    let spans: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    counts.spans.fetch_add(spans as u64, Ordering::Relaxed);
    counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    counts.exports.fetch_add(1, Ordering::Relaxed);
    HttpResponse::Ok().content_type("application/x-protobuf").finish()
}

impl Collector {
    pub fn start() -> anyhow::Result<Self> {
        let counts = Arc::new(Counts::default());
        let data = web::Data::from(counts.clone());
        let server = LocalServer::start(1, move |cfg| {
            cfg.app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 << 20))
                .route("/v1/traces", web::post().to(export));
        })?;
        Ok(Self {
            url: server.url(""),
            counts,
            server,
        })
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}
