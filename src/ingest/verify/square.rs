//! Square: `x-square-hmacsha256-signature: <base64>`, HMAC-SHA256 keyed with the
//! subscription's signature key over the notification URL (as configured at Square:
//! the source's `public_url`) followed by the raw body. Square signs no timestamp, so
//! there is no replay window: the event id (`event_id`, kept by Square's retries) is
//! what makes a replayed request a `duplicate`. The type is the body's `type`
//! (`payment.updated`).

use std::time::SystemTime;

use actix_web::http::header::HeaderMap;
use base64::Engine;
use serde_json::json;

use super::extract::Body;
use super::sample::Draft;
use super::{header_str, Error, SampleEvent, SignedRequest, VerifiedEvent, Verifier};
use crate::signing;

pub const SIGNATURE: &str = "x-square-hmacsha256-signature";

pub struct SquareVerifier {
    secrets: Vec<Vec<u8>>,
    url: String,
}

impl SquareVerifier {
    /// `url`: the notification URL the signature covers.
    pub fn new(secrets: Vec<Vec<u8>>, url: String) -> Self {
        Self { secrets, url }
    }
}

impl Verifier for SquareVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], _now: SystemTime) -> Result<VerifiedEvent, Error> {
        let value = header_str(headers, SIGNATURE)
            .ok_or_else(|| Error::InvalidSignature(format!("missing {SIGNATURE} header")))?;
        let mac = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .filter(|mac| mac.len() == 32)
            .ok_or_else(|| Error::InvalidSignature(format!("{SIGNATURE} is not a base64 SHA-256 MAC")))?;
        let signed = [self.url.as_bytes(), body];
        if !self.secrets.iter().any(|key| signing::verify(key, &signed, &mac)) {
            return Err(Error::InvalidSignature(
                "signature matches no configured secret (is public_url the notification URL set at Square?)"
                    .into(),
            ));
        }
        let body = Body::new(body);
        let field = |pointer: &str| {
            body.pointer_text(pointer).ok_or_else(|| {
                Error::InvalidPayload(
                    "body is not a Square event: a JSON object with string `event_id` and `type`".into(),
                )
            })
        };
        Ok(VerifiedEvent {
            event_id: field("/event_id")?,
            event_type: field("/type")?,
        })
    }

    fn kept_headers(&self) -> Vec<String> {
        ["square-version", "user-agent"].map(String::from).to_vec()
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        let created_at = chrono::DateTime::<chrono::Utc>::from(event.at).to_rfc3339();
        let mut draft = Draft::with_body(json!({
            "merchant_id": "MLRELAYDTEST",
            "type": event.event_type,
            "event_id": event.id,
            "created_at": created_at,
            "data": { "type": "payment", "id": "relayd_test_payment", "object": { "note": "sent by relayd send-test-event" } },
        }));
        let body = draft.body();
        let key = self.secrets.first().map_or(&[][..], Vec::as_slice);
        let mac = signing::sign(key, &[self.url.as_bytes(), &body]);
        draft.header(
            SIGNATURE,
            base64::engine::general_purpose::STANDARD.encode(mac.as_ref()),
        );
        Ok(draft.finish(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    const KEY: &str = "asdf1234";
    const URL: &str = "https://example.com/webhook";
    const BODY: &[u8] = br#"{"merchant_id":"MLEFBHHSJGVHD","type":"payment.updated","event_id":"ac3ac95b-f97d-458c-a6e6-18981597e05f","data":{}}"#;
    // Computed independently of relayd, following Square's documented scheme:
    //   printf '%s' "$URL$BODY" | openssl dgst -sha256 -hmac "$KEY" -binary | base64
    const SIGNATURE_B64: &str = "pLWEO6COmFT1rVfa03eTgdjkmxbbH/8Y9yVkaX5cBrs=";

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static(SIGNATURE),
            HeaderValue::from_str(value).unwrap(),
        );
        map
    }

    fn verifier(url: &str) -> SquareVerifier {
        SquareVerifier::new(vec![b"other".to_vec(), KEY.as_bytes().to_vec()], url.into())
    }

    #[test]
    fn an_independently_computed_signature_verifies_only_for_its_url_and_body() {
        let now = SystemTime::now();
        let event = verifier(URL).verify(&headers(SIGNATURE_B64), BODY, now).unwrap();
        assert_eq!(
            (event.event_id.as_str(), event.event_type.as_str()),
            ("ac3ac95b-f97d-458c-a6e6-18981597e05f", "payment.updated")
        );
        assert!(verifier("https://example.com/other")
            .verify(&headers(SIGNATURE_B64), BODY, now)
            .is_err());
        let mut changed = BODY.to_vec();
        changed[3] ^= 1;
        assert!(verifier(URL)
            .verify(&headers(SIGNATURE_B64), &changed, now)
            .is_err());
        for bad in ["", "not base64!", "AAAA"] {
            assert!(matches!(
                verifier(URL).verify(&headers(bad), BODY, now),
                Err(Error::InvalidSignature(_))
            ));
        }
    }
}
