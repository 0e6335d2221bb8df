//! A downstream service for trying relayd: receives its webhooks, verifies the Standard
//! Webhooks signature, prints one line per event, and answers 204 (401 when the
//! signature does not verify).
//!
//!     [EXAMPLE_SIGNING_SECRET=whsec_…] cargo run --example receiver [-- 127.0.0.1:8080]
//!
//! It verifies with `ring` and `base64` directly, the way any downstream service would,
//! without relayd's own code: HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}",
//! keyed with the base64-decoded part after `whsec_`, compared in constant time.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;

/// Signatures older or newer than this are refused (replay protection).
const TOLERANCE_SECONDS: i64 = 300;

struct Key(ring::hmac::Key);

fn header<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

fn verify(key: &Key, request: &HttpRequest, body: &[u8]) -> Result<(), &'static str> {
    let id = header(request, "webhook-id").ok_or("missing webhook-id")?;
    let timestamp = header(request, "webhook-timestamp").ok_or("missing webhook-timestamp")?;
    let signatures = header(request, "webhook-signature").ok_or("missing webhook-signature")?;
    let sent: i64 = timestamp.parse().map_err(|_| "bad webhook-timestamp")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "clock before 1970")?
        .as_secs() as i64;
    if (now - sent).abs() > TOLERANCE_SECONDS {
        return Err("timestamp outside tolerance");
    }
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    let engine = base64::engine::general_purpose::STANDARD;
    let matched = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| engine.decode(s).ok())
        .any(|mac| ring::hmac::verify(&key.0, &message, &mac).is_ok());
    if matched {
        Ok(())
    } else {
        Err("no signature matches")
    }
}

async fn receive(key: web::Data<Key>, request: HttpRequest, body: web::Bytes) -> HttpResponse {
    match verify(&key, &request, &body) {
        Ok(()) => {
            println!(
                "received {} {} (webhook-id {}, attempt {}, {} bytes)",
                header(&request, "x-relayd-source").unwrap_or("?"),
                header(&request, "x-relayd-event-type").unwrap_or("?"),
                header(&request, "webhook-id").unwrap_or("?"),
                header(&request, "x-relayd-attempt").unwrap_or("?"),
                body.len()
            );
            HttpResponse::NoContent().finish()
        }
        Err(reason) => {
            eprintln!("refused: {reason}");
            HttpResponse::Unauthorized().json(serde_json::json!({ "error": reason }))
        }
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    // The shipped config/relayd.toml signs its `example` destination with this
    // development secret; set EXAMPLE_SIGNING_SECRET for any other.
    let secret = std::env::var("EXAMPLE_SIGNING_SECRET")
        .unwrap_or_else(|_| "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string());
    let encoded = secret
        .strip_prefix("whsec_")
        .expect("the secret starts with whsec_");
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("the secret is whsec_ followed by base64");
    let key = web::Data::new(Key(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes)));
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    println!("receiver listening on http://{listen}/hooks");
    HttpServer::new(move || {
        App::new()
            .app_data(key.clone())
            .route("/hooks", web::post().to(receive))
    })
    .workers(1)
    .bind(listen)?
    .run()
    .await
}
