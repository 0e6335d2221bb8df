//! Linear: `Linear-Signature: <hex>`, HMAC-SHA256 over the raw body keyed with the
//! webhook's signing secret; the replay window is the signed body's `webhookTimestamp`
//! (Unix milliseconds), which must be within the tolerance (Linear's SDK allows one
//! minute: set `tolerance = "1m"` to match it). The event id is the `Linear-Delivery`
//! header (else the SHA-256 of the body); the type is the body's `type` and `action`,
//! `Issue.create`.

use std::time::{Duration, SystemTime};

use actix_web::http::header::HeaderMap;
use serde_json::json;

use super::extract::{Body, IdSource};
use super::sample::{unix_seconds, Draft};
use super::{check_signed, header_str, Error, SampleEvent, SignedRequest, VerifiedEvent, Verifier};
use crate::signing;

pub const SIGNATURE: &str = "linear-signature";
pub const DELIVERY: &str = "linear-delivery";

pub struct LinearVerifier {
    secrets: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl LinearVerifier {
    pub fn new(secrets: Vec<Vec<u8>>, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }
}

impl Verifier for LinearVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<VerifiedEvent, Error> {
        let signature = header_str(headers, SIGNATURE)
            .ok_or_else(|| Error::InvalidSignature("missing Linear-Signature header".into()))?;
        let mac = Some(signature.trim())
            .filter(|hex| hex.len() == 64)
            .and_then(|hex| hex::decode(hex).ok())
            .ok_or_else(|| Error::InvalidSignature("Linear-Signature is not 64 hex digits".into()))?;
        let parsed = Body::new(body);
        // Checked after the MAC like every timestamp, but it must be read first: it is
        // inside the body that is signed.
        let millis = parsed
            .pointer_text("/webhookTimestamp")
            .and_then(|t| t.parse::<i64>().ok());
        let seconds = millis.map_or(i64::MIN, |ms| ms.div_euclid(1000));
        check_signed(&self.secrets, &[body], &[mac], seconds, now, self.tolerance)?;
        if millis.is_none() {
            return Err(Error::InvalidSignature(
                "the body has no numeric webhookTimestamp".into(),
            ));
        }
        let event_id = match header_str(headers, DELIVERY)
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            Some(delivery) => delivery.to_string(),
            None => IdSource::BodyHash.extract(headers, &parsed)?,
        };
        let event_type = match (parsed.pointer_text("/type"), parsed.pointer_text("/action")) {
            (Some(kind), Some(action)) => format!("{kind}.{action}"),
            (Some(kind), None) => kind,
            _ => super::extract::UNKNOWN_TYPE.to_string(),
        };
        Ok(VerifiedEvent { event_id, event_type })
    }

    fn kept_headers(&self) -> Vec<String> {
        [DELIVERY, "linear-event", "user-agent"]
            .map(String::from)
            .to_vec()
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        // `--type Issue.create` is sent as type `Issue`, action `create`.
        let (kind, action) = event
            .event_type
            .split_once('.')
            .unwrap_or((&event.event_type, "create"));
        let millis = unix_seconds(event.at) * 1000;
        let mut draft = Draft::with_body(json!({
            "action": action,
            "type": kind,
            "createdAt": chrono::DateTime::<chrono::Utc>::from(event.at).to_rfc3339(),
            "data": { "id": event.id, "title": "sent by relayd send-test-event" },
            "webhookTimestamp": millis,
            "webhookId": "relayd-test",
        }));
        let body = draft.body();
        let secret = self.secrets.first().map_or(&[][..], Vec::as_slice);
        draft.header(DELIVERY, event.id.as_str());
        draft.header("linear-event", kind);
        draft.header(SIGNATURE, hex::encode(signing::sign(secret, &[&body]).as_ref()));
        Ok(draft.finish(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    const SECRET: &str = "lin_wh_test_secret";
    const T: i64 = 1_700_000_000;

    fn body(millis: i64) -> Vec<u8> {
        format!(r#"{{"action":"update","type":"Issue","data":{{"id":"i1"}},"webhookTimestamp":{millis}}}"#)
            .into_bytes()
    }

    fn headers(secret: &str, body: &[u8], delivery: Option<&str>) -> HeaderMap {
        // Computed here as Linear documents it, apart from relayd's signer.
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            body,
        );
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static(SIGNATURE),
            HeaderValue::from_str(&hex::encode(tag.as_ref())).unwrap(),
        );
        if let Some(delivery) = delivery {
            map.insert(
                HeaderName::from_static(DELIVERY),
                HeaderValue::from_str(delivery).unwrap(),
            );
        }
        map
    }

    fn verifier() -> LinearVerifier {
        LinearVerifier::new(vec![SECRET.as_bytes().to_vec()], Duration::from_secs(60))
    }

    fn at(t: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)
    }

    #[test]
    fn the_signed_body_timestamp_is_the_window_and_the_delivery_the_id() {
        let b = body(T * 1000 + 500);
        let event = verifier()
            .verify(&headers(SECRET, &b, Some("d-1")), &b, at(T))
            .unwrap();
        assert_eq!(
            (event.event_id.as_str(), event.event_type.as_str()),
            ("d-1", "Issue.update")
        );
        assert!(verifier()
            .verify(&headers(SECRET, &b, Some("d-1")), &b, at(T + 61))
            .is_err());
        assert!(verifier()
            .verify(&headers("other", &b, Some("d-1")), &b, at(T))
            .is_err());
        let without = verifier().verify(&headers(SECRET, &b, None), &b, at(T)).unwrap();
        assert_eq!(
            without.event_id,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &b))
        );
        let untimed = br#"{"action":"update","type":"Issue"}"#;
        assert!(matches!(
            verifier().verify(&headers(SECRET, untimed, None), untimed, at(T)),
            Err(Error::InvalidSignature(_))
        ));
    }
}
