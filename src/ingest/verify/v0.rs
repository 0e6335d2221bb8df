//! The `v0` scheme Slack and Zoom share: a timestamp header, and a signature header
//! `v0=<hex>` holding HMAC-SHA256 over `"v0:{timestamp}:{body}"`, the timestamp within
//! the source's tolerance. Each provider names its two headers.

use std::time::{Duration, SystemTime};

use actix_web::http::header::HeaderMap;

use super::sample::Draft;
use super::{check_signed, header_str, Error, SignedRequest};
use crate::signing;

/// One provider's header names for the `v0` scheme.
pub(super) struct V0 {
    pub signature: &'static str,
    pub timestamp: &'static str,
}

impl V0 {
    /// Checks the request's signature with any of `secrets`, then its timestamp.
    pub fn check(
        &self,
        secrets: &[Vec<u8>],
        tolerance: Duration,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), Error> {
        let missing = |name: &str| Error::InvalidSignature(format!("missing {name} header"));
        let timestamp = header_str(headers, self.timestamp).ok_or_else(|| missing(self.timestamp))?;
        let signature = header_str(headers, self.signature).ok_or_else(|| missing(self.signature))?;
        let t: i64 = timestamp
            .parse()
            .map_err(|_| Error::InvalidSignature(format!("{} is not a number", self.timestamp)))?;
        let mac = signature
            .strip_prefix("v0=")
            // A SHA-256 MAC is 64 hex digits; anything longer is not worth decoding.
            .filter(|hex| hex.len() == 64)
            .and_then(|hex| hex::decode(hex).ok())
            .ok_or_else(|| {
                Error::InvalidSignature(format!("{} is not v0=<64 hex digits>", self.signature))
            })?;
        check_signed(
            secrets,
            &[b"v0:", timestamp.as_bytes(), b":", body],
            &[mac],
            t,
            now,
            tolerance,
        )
    }

    /// `draft` signed at `timestamp` with the first of `secrets`: the sample request a
    /// verifier's `sign` returns.
    pub fn sign(&self, mut draft: Draft, secrets: &[Vec<u8>], timestamp: i64) -> SignedRequest {
        let body = draft.body();
        let secret = secrets.first().map_or(&[][..], Vec::as_slice);
        let t = timestamp.to_string();
        let tag = signing::sign(secret, &[b"v0:", t.as_bytes(), b":", &body]);
        draft.header(self.timestamp, t);
        draft.header(self.signature, format!("v0={}", hex::encode(tag.as_ref())));
        draft.finish(body)
    }
}
