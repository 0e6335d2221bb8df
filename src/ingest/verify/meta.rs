//! Meta (WhatsApp Business, Instagram, Messenger, Pages): `X-Hub-Signature-256:
//! sha256=<hex>`, HMAC-SHA256 over the raw body keyed with the app secret. Meta's
//! notifications carry no id: a request is identified by the SHA-256 of its body (a
//! retry resends the same body). The type is the body's `object` and, when the first
//! change names one, its `field`: `whatsapp_business_account.messages`.
//!
//! The handshake: when the callback URL is saved, Meta sends
//! `GET ?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`, answered `200` with the
//! challenge only when the token is the source's `verify_token` (compared in constant
//! time); any other is a `403` without it. Nothing is stored.

use std::time::SystemTime;

use actix_web::http::header::HeaderMap;
use serde_json::json;

use super::body_hmac::{BodyHmacScheme, BodyHmacVerifier};
use super::extract::{Body, IdSource, TypeSource};
use super::sample::Draft;
use super::{Error, Handshake, SampleEvent, SignedRequest, VerifiedEvent, Verifier};
use crate::config::SignatureEncoding;
use crate::signing::TokenMatcher;

pub const SIGNATURE: &str = "x-hub-signature-256";

/// The longest challenge echoed: Meta's are short numbers.
const MAX_CHALLENGE: usize = 256;

pub struct MetaVerifier {
    /// The signature check and the body-hash id: GitHub's body HMAC with Meta's settings.
    body: BodyHmacVerifier,
    /// `None` when no randomness was had for the matcher: every handshake is refused.
    verify_token: Option<TokenMatcher>,
}

impl MetaVerifier {
    pub fn new(secrets: Vec<Vec<u8>>, verify_token: &str) -> Self {
        let scheme = BodyHmacScheme {
            signature_header: SIGNATURE.into(),
            encoding: SignatureEncoding::Hex,
            prefix: "sha256=".into(),
            id: IdSource::BodyHash,
            event_type: TypeSource::Pointer("/object".into()),
        };
        Self {
            body: BodyHmacVerifier::new(scheme, secrets),
            verify_token: TokenMatcher::new(verify_token.as_bytes()).ok(),
        }
    }
}

impl Verifier for MetaVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<VerifiedEvent, Error> {
        let verified = self.body.verify(headers, body, now)?;
        let parsed = Body::new(body);
        let object = parsed.pointer_text("/object").ok_or_else(|| {
            Error::InvalidPayload(
                "body is not a Meta notification: a JSON object with a string `object`".into(),
            )
        })?;
        let event_type = match parsed.pointer_text("/entry/0/changes/0/field") {
            Some(field) => format!("{object}.{field}"),
            None => object,
        };
        Ok(VerifiedEvent {
            event_type,
            ..verified
        })
    }

    fn query_handshake(&self, query: &str) -> Option<Result<Handshake, Error>> {
        let mut mode = None;
        let mut token = None;
        let mut challenge = None;
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "hub.mode" => mode = Some(value.into_owned()),
                "hub.verify_token" => token = Some(value.into_owned()),
                "hub.challenge" => challenge = Some(value.into_owned()),
                _ => {}
            }
        }
        let refused = |why: &str| Some(Err(Error::InvalidSignature(why.into())));
        if mode.as_deref() != Some("subscribe") {
            return refused("not a subscription handshake (hub.mode=subscribe)");
        }
        let matched = match (&self.verify_token, token) {
            (Some(matcher), Some(token)) => matcher.matches(token.as_bytes()),
            _ => false,
        };
        if !matched {
            return refused("hub.verify_token is not this source's verify_token");
        }
        let Some(challenge) = challenge
            .filter(|c| !c.is_empty() && c.len() <= MAX_CHALLENGE && c.bytes().all(|b| b.is_ascii_graphic()))
        else {
            return Some(Err(Error::InvalidPayload(format!(
                "hub.challenge must be 1 to {MAX_CHALLENGE} visible ASCII characters"
            ))));
        };
        Some(Ok(Handshake {
            content_type: "text/plain; charset=utf-8",
            body: challenge.into_bytes(),
        }))
    }

    fn kept_headers(&self) -> Vec<String> {
        vec!["user-agent".into()]
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        // `--type whatsapp_business_account.messages` is object and field; the id travels
        // in the message (Meta's bodies are keyed by their hash).
        let (object, field) = event
            .event_type
            .split_once('.')
            .unwrap_or((&event.event_type, "messages"));
        let draft = Draft::with_body(json!({
            "object": object,
            "entry": [{
                "id": "relayd-test",
                "changes": [{ "field": field, "value": { "messages": [{ "id": event.id, "text": { "body": "sent by relayd send-test-event" } }] } }],
            }],
        }));
        Ok(self.body.finish(draft))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn verifier() -> MetaVerifier {
        MetaVerifier::new(vec![b"app-secret".to_vec()], "my-verify-token")
    }

    #[test]
    fn notifications_are_keyed_by_body_and_typed_by_object_and_field() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{}}]}]}"#;
        // Computed here as Meta documents it, apart from relayd's signer.
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"app-secret"),
            body,
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(SIGNATURE),
            HeaderValue::from_str(&format!("sha256={}", hex::encode(tag.as_ref()))).unwrap(),
        );
        let event = verifier().verify(&headers, body, SystemTime::now()).unwrap();
        assert_eq!(event.event_type, "whatsapp_business_account.messages");
        assert_eq!(
            event.event_id,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, body))
        );
        let mut changed = body.to_vec();
        changed[12] ^= 1;
        assert!(verifier().verify(&headers, &changed, SystemTime::now()).is_err());
    }

    /// Meta publishes no test vector for `X-Hub-Signature-256`; the header is GitHub's
    /// scheme exactly (`sha256=` + hex HMAC-SHA256 of the raw body under the secret), so
    /// GitHub's documented example ("Validating webhook deliveries": this secret, the
    /// body `Hello, World!`) must verify as Meta's too.
    #[test]
    fn the_documented_x_hub_signature_256_example_verifies() {
        let verifier = MetaVerifier::new(vec![b"It's a Secret to Everybody".to_vec()], "t");
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(SIGNATURE),
            HeaderValue::from_static(
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            ),
        );
        // The signature holds; the body is then refused only for not being a notification.
        let verified = verifier.verify(&headers, b"Hello, World!", SystemTime::now());
        assert!(
            !matches!(verified, Err(Error::InvalidSignature(_))),
            "{verified:?}"
        );
        assert!(matches!(
            verifier.verify(&headers, b"Hello, World?", SystemTime::now()),
            Err(Error::InvalidSignature(_))
        ));
    }

    #[test]
    fn the_subscription_handshake_echoes_the_challenge_only_for_the_verify_token() {
        let answer = verifier()
            .query_handshake("hub.mode=subscribe&hub.verify_token=my-verify-token&hub.challenge=1158201444")
            .unwrap()
            .unwrap();
        assert_eq!(answer.body, b"1158201444");
        for query in [
            "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
            "hub.mode=subscribe&hub.challenge=1",
            "hub.mode=unsubscribe&hub.verify_token=my-verify-token&hub.challenge=1",
            "",
        ] {
            assert!(
                matches!(
                    verifier().query_handshake(query),
                    Some(Err(Error::InvalidSignature(_)))
                ),
                "{query}"
            );
        }
        let script = "hub.mode=subscribe&hub.verify_token=my-verify-token&hub.challenge=%3Cscript%3E%20x";
        assert!(matches!(
            verifier().query_handshake(script),
            Some(Err(Error::InvalidPayload(_)))
        ));
    }
}
