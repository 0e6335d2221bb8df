//! Signature verification, one verifier per source kind behind one small trait.
//!
//! A verifier sees the raw body bytes and the request headers, checks the provider's
//! signature in constant time (see `crate::signing`) and extracts the provider's event
//! id and type. It never panics on any input and never logs secrets or payloads.

mod stripe;

use std::time::{Duration, SystemTime};

use actix_web::http::header::HeaderMap;

use crate::config::{SourceConfig, SourceKind};

pub use stripe::StripeVerifier;

/// What a verified request yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEvent {
    /// The provider's id: the idempotency key within the source.
    pub event_id: String,
    pub event_type: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Missing or malformed signature header, no secret matched, or a timestamp
    /// outside the tolerance.
    #[error("{0}")]
    InvalidSignature(String),
    /// The signature is valid but the body lacks what the source needs (id, type).
    #[error("{0}")]
    InvalidPayload(String),
}

/// Checks one provider's signature scheme.
pub trait Verifier: Send + Sync {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<VerifiedEvent, Error>;

    /// Request headers worth keeping with the event for operators (lower-case names).
    /// Signature headers are never kept: they are useless after verification.
    fn kept_headers(&self) -> &'static [&'static str];
}

/// The verifier for a configured source.
pub fn for_source(source: &SourceConfig) -> Box<dyn Verifier> {
    let secrets = source
        .secrets
        .iter()
        .map(|s| s.expose().as_bytes().to_vec())
        .collect();
    match source.kind {
        SourceKind::Stripe => Box::new(StripeVerifier::new(secrets, source.tolerance)),
    }
}

/// True when `timestamp` (Unix seconds) is within `tolerance` of `now`, either side.
fn within_tolerance(timestamp: i64, now: SystemTime, tolerance: Duration) -> bool {
    let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => return false,
    };
    now.abs_diff(timestamp) <= tolerance.as_secs()
}

/// A header as UTF-8 text, if present and valid.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
