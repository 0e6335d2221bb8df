//! Zoom: `x-zm-signature: v0=<hex>` over `"v0:{x-zm-request-timestamp}:{body}"`, keyed
//! with the app's secret token (the `v0` scheme, as Slack's), the timestamp within the
//! tolerance. Zoom's events carry no id: a request is identified by the SHA-256 of its
//! body (a retry resends the same body, so it is a `duplicate`). The type is `event`
//! (`meeting.started`).
//!
//! The handshake: when the endpoint is saved (and every 72 hours after), Zoom sends a
//! signed `endpoint.url_validation` with a `payload.plainToken`, answered with that
//! token and `encryptedToken`, the hex HMAC-SHA256 of it under the secret token; never
//! stored. An unsigned or wrongly signed one is refused without the answer.

use std::time::{Duration, SystemTime};

use actix_web::http::header::HeaderMap;
use serde_json::json;

use super::extract::{Body, IdSource};
use super::sample::{unix_seconds, Draft};
use super::v0::V0;
use super::{Error, Handshake, SampleEvent, SignedRequest, VerifiedEvent, Verifier};
use crate::signing;

pub const SIGNATURE: &str = "x-zm-signature";
pub const TIMESTAMP: &str = "x-zm-request-timestamp";

const SCHEME: V0 = V0 {
    signature: SIGNATURE,
    timestamp: TIMESTAMP,
};

/// The longest `plainToken` answered: Zoom's are 22 characters.
const MAX_TOKEN: usize = 256;

pub struct ZoomVerifier {
    secrets: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl ZoomVerifier {
    pub fn new(secrets: Vec<Vec<u8>>, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }

    /// The secret whose signature the request carries: the one its handshake answer
    /// must be made with.
    fn signing_secret(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<&[u8], Error> {
        let mut last = None;
        for secret in &self.secrets {
            match SCHEME.check(std::slice::from_ref(secret), self.tolerance, headers, body, now) {
                Ok(()) => return Ok(secret),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidSignature("no secret is configured".into())))
    }
}

impl Verifier for ZoomVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<VerifiedEvent, Error> {
        SCHEME.check(&self.secrets, self.tolerance, headers, body, now)?;
        let parsed = Body::new(body);
        let event_type = parsed.pointer_text("/event").ok_or_else(|| {
            Error::InvalidPayload("body is not a Zoom event: a JSON object with a string `event`".into())
        })?;
        Ok(VerifiedEvent {
            event_id: IdSource::BodyHash.extract(headers, &parsed)?,
            event_type,
        })
    }

    fn handshake(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Option<Handshake>, Error> {
        if !super::mentions(body, b"endpoint.url_validation") {
            return Ok(None);
        }
        let parsed = Body::new(body);
        if parsed.pointer_text("/event").as_deref() != Some("endpoint.url_validation") {
            return Ok(None);
        }
        let secret = self.signing_secret(headers, body, now)?;
        let plain = parsed
            .pointer_text("/payload/plainToken")
            .filter(|t| t.len() <= MAX_TOKEN)
            .ok_or_else(|| {
                Error::InvalidPayload(format!(
                    "endpoint.url_validation without a plainToken of at most {MAX_TOKEN} characters"
                ))
            })?;
        let encrypted = hex::encode(signing::sign(secret, &[plain.as_bytes()]).as_ref());
        Ok(Some(Handshake::json(
            json!({ "plainToken": plain, "encryptedToken": encrypted }),
        )))
    }

    fn kept_headers(&self) -> Vec<String> {
        vec!["user-agent".into()]
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        let t = unix_seconds(event.at);
        // The id travels in the body (Zoom's own bodies have none; relayd keys them by
        // their hash), so that each sample is a new event.
        let draft = Draft::with_body(json!({
            "event": event.event_type,
            "event_ts": t * 1000,
            "payload": { "account_id": "relayd-test", "object": { "id": event.id, "topic": "sent by relayd send-test-event" } },
        }));
        Ok(SCHEME.sign(draft, &self.secrets, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    const SECRET: &str = "zoom-secret-token";
    const T: i64 = 1_700_000_000;

    fn verifier(secrets: &[&str]) -> ZoomVerifier {
        ZoomVerifier::new(
            secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            Duration::from_secs(300),
        )
    }

    fn at(t: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)
    }

    fn headers(pairs: &[(&str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn signed(secret: &str, body: &[u8]) -> HeaderMap {
        // Computed here as Zoom documents it, apart from relayd's signer.
        let message = [format!("v0:{T}:").as_bytes(), body].concat();
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            &message,
        );
        headers(&[
            (TIMESTAMP, T.to_string()),
            (SIGNATURE, format!("v0={}", hex::encode(tag.as_ref()))),
        ])
    }

    #[test]
    fn events_are_keyed_by_their_body_and_typed_by_event() {
        let body = br#"{"event":"meeting.started","event_ts":1700000000000,"payload":{"object":{"id":"1"}}}"#;
        let event = verifier(&["old", SECRET])
            .verify(&signed(SECRET, body), body, at(T))
            .unwrap();
        assert_eq!(event.event_type, "meeting.started");
        assert_eq!(
            event.event_id,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, body))
        );
        assert!(verifier(&[SECRET])
            .verify(&signed("other", body), body, at(T))
            .is_err());
        assert!(verifier(&[SECRET])
            .verify(&signed(SECRET, body), body, at(T + 301))
            .is_err());
    }

    #[test]
    fn url_validation_is_answered_with_the_token_hashed_by_the_secret_that_signed_it() {
        let body = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
        let answer = verifier(&["old", SECRET])
            .handshake(&signed(SECRET, body), body, at(T))
            .unwrap()
            .expect("a handshake");
        let answer: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        let expected = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes()),
            b"qgg8vlvZRS6UYooatFL8Aw",
        );
        assert_eq!(answer["plainToken"], "qgg8vlvZRS6UYooatFL8Aw");
        assert_eq!(answer["encryptedToken"], hex::encode(expected.as_ref()));
        assert!(matches!(
            verifier(&[SECRET]).handshake(&HeaderMap::new(), body, at(T)),
            Err(Error::InvalidSignature(_))
        ));
        assert!(matches!(
            verifier(&[SECRET]).handshake(&signed("other", body), body, at(T)),
            Err(Error::InvalidSignature(_))
        ));
    }
}
