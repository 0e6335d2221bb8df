//! Discord interactions (an application's Interactions Endpoint URL):
//! `X-Signature-Ed25519: <hex>`, an Ed25519 signature over `X-Signature-Timestamp`
//! followed by the raw body, verified with the application's public key (the source's
//! secrets: 64 hex digits each, several for rotation), the timestamp (Unix seconds)
//! within the tolerance. The event id is the interaction's `id`; the type is its kind,
//! `application_command`, `message_component`, `application_command_autocomplete` or
//! `modal_submit`.
//!
//! Discord waits for an answer to each interaction (3 s): the handshake is a signed
//! `PING` (type 1), answered `{"type":1}` (PONG) and never stored — Discord sends it,
//! and requests with bad signatures, when the URL is saved; a stored interaction is
//! answered with a deferred response (`{"type":5}` for commands and modals, `{"type":6}`
//! for components, no choices for autocomplete), and the destination follows up through
//! Discord's API with the interaction's token.
//!
//! A forged request is refused `401` (Discord's requirement; other kinds answer `400`).
//!
//! A source holds only public keys, so relayd cannot sign as Discord: `send-test-event`
//! signs with a private key the operator gives it (`--private-key-file`).

use std::time::{Duration, SystemTime};

use actix_web::http::header::HeaderMap;
use ring::signature::{self, KeyPair};
use serde_json::json;

use super::extract::Body;
use super::sample::{unix_seconds, Draft};
use super::{
    header_str, within_tolerance, Error, Handshake, SampleEvent, SignedRequest, VerifiedEvent, Verifier,
};

pub const SIGNATURE: &str = "x-signature-ed25519";
pub const TIMESTAMP: &str = "x-signature-timestamp";

/// An interaction's `type`: its number and the event type relayd stores it as.
const KINDS: &[(i64, &str)] = &[
    (2, "application_command"),
    (3, "message_component"),
    (4, "application_command_autocomplete"),
    (5, "modal_submit"),
];

const PING: i64 = 1;

pub struct DiscordVerifier {
    /// The application's public keys (32 bytes each).
    public_keys: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl DiscordVerifier {
    /// `public_keys`: as configured, hex (validated as 32 bytes each at load).
    pub fn new(public_keys: &[&str], tolerance: Duration) -> Self {
        Self {
            public_keys: public_keys
                .iter()
                .filter_map(|k| crate::signing::decode_ed25519_public_key(k))
                .collect(),
            tolerance,
        }
    }

    /// The signature and clock check every request passes first, PINGs included.
    fn check(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), Error> {
        let signature = header_str(headers, SIGNATURE)
            .map(str::trim)
            .filter(|s| s.len() == 128)
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(|| Error::InvalidSignature("X-Signature-Ed25519 is not 128 hex digits".into()))?;
        let timestamp = header_str(headers, TIMESTAMP)
            .map(str::trim)
            .filter(|t| t.len() <= 20)
            .ok_or_else(|| Error::InvalidSignature("missing X-Signature-Timestamp header".into()))?;
        let message = [timestamp.as_bytes(), body].concat();
        // Every key is tried (there is no secret here to leak through timing: the keys,
        // signature and message are all public).
        if !self.public_keys.iter().any(|key| {
            signature::UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(&message, &signature)
                .is_ok()
        }) {
            return Err(Error::InvalidSignature(
                "signature matches no configured public key".into(),
            ));
        }
        let seconds = timestamp
            .parse::<i64>()
            .map_err(|_| Error::InvalidSignature("X-Signature-Timestamp is not Unix seconds".into()))?;
        if !within_tolerance(seconds, now, self.tolerance) {
            return Err(Error::InvalidSignature(format!(
                "timestamp is outside the tolerance of {}",
                humantime::format_duration(self.tolerance)
            )));
        }
        Ok(())
    }
}

/// An interaction's `type`, if the body is one.
fn kind(body: &Body<'_>) -> Option<i64> {
    body.pointer("/type").and_then(serde_json::Value::as_i64)
}

impl Verifier for DiscordVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<VerifiedEvent, Error> {
        self.check(headers, body, now)?;
        let body = Body::new(body);
        let kind = kind(&body).ok_or_else(|| {
            Error::InvalidPayload("body is not a Discord interaction: no numeric `type`".into())
        })?;
        let event_type = KINDS
            .iter()
            .find(|(n, _)| *n == kind)
            .map_or_else(|| format!("interaction.{kind}"), |(_, name)| name.to_string());
        let event_id = body
            .pointer_text("/id")
            .ok_or_else(|| Error::InvalidPayload("the interaction has no string `id`".into()))?;
        Ok(VerifiedEvent { event_id, event_type })
    }

    fn handshake(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Option<Handshake>, Error> {
        // Discord's own test of the endpoint sends PINGs with bad signatures too: they
        // are refused here like any request.
        if kind(&Body::new(body)) != Some(PING) {
            return Ok(None);
        }
        self.check(headers, body, now)?;
        Ok(Some(Handshake::json(json!({ "type": 1 }))))
    }

    fn answer(&self, body: &[u8]) -> Option<Handshake> {
        let answer = match kind(&Body::new(body))? {
            // DEFERRED_UPDATE_MESSAGE: the component's message is edited later.
            3 => json!({ "type": 6 }),
            // APPLICATION_COMMAND_AUTOCOMPLETE_RESULT: it cannot be deferred.
            4 => json!({ "type": 8, "data": { "choices": [] } }),
            // DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "thinking…", followed up later.
            _ => json!({ "type": 5 }),
        };
        Some(Handshake::json(answer))
    }

    fn refuses_forgeries_with_401(&self) -> bool {
        true
    }

    fn kept_headers(&self) -> Vec<String> {
        vec!["user-agent".into()]
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        let key = event
            .private_key
            .as_deref()
            .and_then(|seed| signature::Ed25519KeyPair::from_seed_unchecked(seed).ok())
            .ok_or_else(|| {
                Error::InvalidSignature(
                    "a discord source holds only Discord's public key: sign with --private-key-file \
                     (the hex seed of a key pair whose public key the source lists)"
                        .into(),
                )
            })?;
        if !self
            .public_keys
            .iter()
            .any(|k| k.as_slice() == key.public_key().as_ref())
        {
            return Err(Error::InvalidSignature(
                "the private key's public key is not one the source lists".into(),
            ));
        }
        let kind = KINDS
            .iter()
            .find(|(_, name)| *name == event.event_type)
            .map(|(n, _)| *n)
            .ok_or_else(|| {
                Error::InvalidPayload(format!(
                    "a Discord interaction's type is its kind: --type {}",
                    KINDS
                        .iter()
                        .map(|(_, name)| *name)
                        .collect::<Vec<_>>()
                        .join(" | ")
                ))
            })?;
        let mut draft = Draft::with_body(json!({
            "id": event.id,
            "application_id": "relayd-test-application",
            "type": kind,
            "token": "relayd-test-token",
            "version": 1,
            "data": { "name": "relayd-test", "type": 1 },
        }));
        let body = draft.body();
        let t = unix_seconds(event.at).to_string();
        let signed = key.sign(&[t.as_bytes(), &body].concat());
        draft.header(TIMESTAMP, t);
        draft.header(SIGNATURE, hex::encode(signed.as_ref()));
        Ok(draft.finish(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    // RFC 8032 §7.1, TEST 1: the seed and its public key.
    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn sample(kind: &str) -> SampleEvent {
        SampleEvent {
            private_key: Some(hex::decode(SEED).unwrap()),
            ..SampleEvent::new("1234567890", kind)
        }
    }

    fn verifier(keys: &[&str]) -> DiscordVerifier {
        DiscordVerifier::new(keys, Duration::from_secs(300))
    }

    #[test]
    fn an_interaction_signed_with_the_key_pair_verifies_only_under_its_public_key_and_time() {
        let event = sample("message_component");
        let request = verifier(&[PUBLIC]).sign(&event).unwrap();
        let other = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
        let verified = verifier(&[other, PUBLIC])
            .verify(&request.header_map(), &request.body, event.at)
            .unwrap();
        assert_eq!(
            (verified.event_id.as_str(), verified.event_type.as_str()),
            ("1234567890", "message_component")
        );
        assert!(verifier(&[other])
            .verify(&request.header_map(), &request.body, event.at)
            .is_err());
        let mut changed = request.body.clone();
        changed[2] ^= 1;
        assert!(verifier(&[PUBLIC])
            .verify(&request.header_map(), &changed, event.at)
            .is_err());
        let late = event.at + Duration::from_secs(301);
        assert!(matches!(
            verifier(&[PUBLIC]).verify(&request.header_map(), &request.body, late),
            Err(Error::InvalidSignature(m)) if m.contains("tolerance")
        ));
        assert_eq!(
            verifier(&[PUBLIC]).answer(&request.body),
            Some(Handshake::json(json!({ "type": 6 })))
        );
    }

    #[test]
    fn a_signed_ping_is_answered_with_pong_and_a_forged_one_refused() {
        let key = signature::Ed25519KeyPair::from_seed_unchecked(&hex::decode(SEED).unwrap()).unwrap();
        assert_eq!(hex::encode(key.public_key().as_ref()), PUBLIC, "RFC 8032's pair");
        let body = br#"{"type":1,"id":"1","application_id":"a"}"#;
        let now = SystemTime::now();
        let t = unix_seconds(now).to_string();
        let signed = key.sign(&[t.as_bytes(), body].concat());
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static(TIMESTAMP),
            HeaderValue::from_str(&t).unwrap(),
        );
        map.insert(
            HeaderName::from_static(SIGNATURE),
            HeaderValue::from_str(&hex::encode(signed.as_ref())).unwrap(),
        );
        assert_eq!(
            verifier(&[PUBLIC]).handshake(&map, body, now).unwrap(),
            Some(Handshake::json(json!({ "type": 1 })))
        );
        map.insert(
            HeaderName::from_static(SIGNATURE),
            HeaderValue::from_str(&"00".repeat(64)).unwrap(),
        );
        assert!(matches!(
            verifier(&[PUBLIC]).handshake(&map, body, now),
            Err(Error::InvalidSignature(_))
        ));
    }

    #[test]
    fn signing_needs_a_private_key_of_a_listed_public_key() {
        let mut event = sample("application_command");
        event.private_key = None;
        assert!(verifier(&[PUBLIC]).sign(&event).is_err());
        let other = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
        assert!(verifier(&[other]).sign(&sample("application_command")).is_err());
        assert!(matches!(
            verifier(&[PUBLIC]).sign(&sample("invoice.paid")),
            Err(Error::InvalidPayload(m)) if m.contains("application_command | message_component")
        ));
    }
}
