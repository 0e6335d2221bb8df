//! Slack (Events API, slash commands, interactivity): `X-Slack-Signature: v0=<hex>`,
//! HMAC-SHA256 keyed with the app's signing secret over `"v0:{timestamp}:{body}"`, with
//! `X-Slack-Request-Timestamp` within the tolerance (Slack's own advice: five minutes).
//! The event id is the Events API's `event_id` (Slack's retries carry the same one); a
//! body without one (a slash command, an interaction: form-encoded) is identified by
//! the SHA-256 of the body. The type is the inner `event.type` (`app_mention`), else
//! the envelope's `type`.
//!
//! The handshake: when a Request URL is saved, Slack sends a signed `url_verification`
//! with a `challenge`, which is answered with the challenge once the signature holds —
//! an unsigned or wrongly signed one is refused like any request — and never stored.

use std::time::{Duration, SystemTime};

use actix_web::http::header::HeaderMap;
use serde_json::json;

use super::extract::{Body, IdSource};
use super::sample::{unix_seconds, Draft};
use super::v0::V0;
use super::{Error, Handshake, SampleEvent, SignedRequest, VerifiedEvent, Verifier};

pub const SIGNATURE: &str = "x-slack-signature";
pub const TIMESTAMP: &str = "x-slack-request-timestamp";

const SCHEME: V0 = V0 {
    signature: SIGNATURE,
    timestamp: TIMESTAMP,
};

/// The longest challenge answered: Slack's are about 50 characters.
const MAX_CHALLENGE: usize = 256;

pub struct SlackVerifier {
    secrets: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl SlackVerifier {
    pub fn new(secrets: Vec<Vec<u8>>, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }

    /// The signature check every request passes first, handshakes included.
    fn check(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), Error> {
        SCHEME.check(&self.secrets, self.tolerance, headers, body, now)
    }
}

impl Verifier for SlackVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<VerifiedEvent, Error> {
        self.check(headers, body, now)?;
        let parsed = Body::new(body);
        let event_id = match parsed.pointer_text("/event_id") {
            Some(id) => id,
            None => IdSource::BodyHash.extract(headers, &parsed)?,
        };
        let event_type = parsed
            .pointer_text("/event/type")
            .or_else(|| parsed.pointer_text("/type"))
            .unwrap_or_else(|| super::extract::UNKNOWN_TYPE.to_string());
        Ok(VerifiedEvent { event_id, event_type })
    }

    fn handshake(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Option<Handshake>, Error> {
        if !super::mentions(body, b"url_verification") {
            return Ok(None);
        }
        let parsed = Body::new(body);
        if parsed.pointer_text("/type").as_deref() != Some("url_verification") {
            return Ok(None);
        }
        self.check(headers, body, now)?;
        let challenge = parsed
            .pointer_text("/challenge")
            .filter(|c| c.len() <= MAX_CHALLENGE)
            .ok_or_else(|| {
                Error::InvalidPayload(format!(
                    "url_verification without a challenge of at most {MAX_CHALLENGE} characters"
                ))
            })?;
        Ok(Some(Handshake::json(json!({ "challenge": challenge }))))
    }

    fn kept_headers(&self) -> Vec<String> {
        ["x-slack-retry-num", "x-slack-retry-reason", "user-agent"]
            .map(String::from)
            .to_vec()
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        let t = unix_seconds(event.at);
        let draft = Draft::with_body(json!({
            "token": "relayd-test",
            "team_id": "T0RELAYD",
            "api_app_id": "A0RELAYD",
            "type": "event_callback",
            "event_id": event.id,
            "event_time": t,
            "event": { "type": event.event_type, "text": "sent by relayd send-test-event", "event_ts": t.to_string() },
        }));
        Ok(SCHEME.sign(draft, &self.secrets, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing;
    use actix_web::http::header::{HeaderName, HeaderValue};

    // Slack's documented example ("Verifying requests from Slack", api.slack.com
    // /authentication/verifying-requests-from-slack): this secret, timestamp and slash
    // command body give this signature.
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const T: u64 = 1531420618;
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE_V0: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn headers(t: u64, signature: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static(TIMESTAMP),
            HeaderValue::from_str(&t.to_string()).unwrap(),
        );
        map.insert(
            HeaderName::from_static(SIGNATURE),
            HeaderValue::from_str(signature).unwrap(),
        );
        map
    }

    fn verifier(secrets: &[&str]) -> SlackVerifier {
        SlackVerifier::new(
            secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            Duration::from_secs(300),
        )
    }

    fn at(t: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t)
    }

    #[test]
    fn slacks_documented_example_verifies_and_a_changed_byte_does_not() {
        let event = verifier(&["other", SECRET])
            .verify(&headers(T, SIGNATURE_V0), BODY, at(T))
            .unwrap();
        assert_eq!(
            event.event_id,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, BODY)),
            "a slash command has no event_id: its body hash is the id"
        );
        let mut changed = BODY.to_vec();
        changed[10] ^= 1;
        assert!(verifier(&[SECRET])
            .verify(&headers(T, SIGNATURE_V0), &changed, at(T))
            .is_err());
        assert!(verifier(&[SECRET])
            .verify(&headers(T + 1, SIGNATURE_V0), BODY, at(T))
            .is_err());
        assert!(verifier(&[SECRET])
            .verify(&headers(T, SIGNATURE_V0), BODY, at(T + 301))
            .is_err());
    }

    #[test]
    fn the_url_verification_challenge_is_answered_only_when_signed() {
        let v = verifier(&[SECRET]);
        let body = br#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        let tag = signing::sign(SECRET.as_bytes(), &[b"v0:", T.to_string().as_bytes(), b":", body]);
        let signed = headers(T, &format!("v0={}", hex::encode(tag.as_ref())));
        let answer = v.handshake(&signed, body, at(T)).unwrap().expect("a handshake");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&answer.body).unwrap()["challenge"],
            "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
        );
        let unsigned = v.handshake(&HeaderMap::new(), body, at(T));
        assert!(matches!(unsigned, Err(Error::InvalidSignature(_))));
        let wrong = v.handshake(&headers(T, SIGNATURE_V0), body, at(T));
        assert!(matches!(wrong, Err(Error::InvalidSignature(_))));
        assert!(
            v.handshake(&headers(T, SIGNATURE_V0), BODY, at(T))
                .unwrap()
                .is_none(),
            "not a handshake"
        );
    }

    #[test]
    fn an_event_callback_is_keyed_by_its_event_id_and_typed_by_its_inner_event() {
        let v = verifier(&[SECRET]);
        let sample = SampleEvent::new("Ev0RELAYD1", "app_mention");
        let request = v.sign(&sample).unwrap();
        let map = request.header_map();
        let event = v.verify(&map, &request.body, sample.at).unwrap();
        assert_eq!(
            (event.event_id.as_str(), event.event_type.as_str()),
            ("Ev0RELAYD1", "app_mention")
        );
    }
}
