//! Standard Webhooks senders (Svix and others): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` (a space-separated list of `v1,<base64>`), HMAC-SHA256 over
//! `"{id}.{timestamp}.{body}"` keyed with the base64-decoded part after `whsec_`.
//! The event id is `webhook-id`; the type is the body's JSON `type` when present.

use std::time::{Duration, SystemTime};

use actix_web::http::header::HeaderMap;
use base64::Engine;

use super::extract::{Body, TypeSource};
use super::sample::{unix_seconds, Draft};
use super::{
    check_signed, header_str, Error, SampleEvent, SignedRequest, VerifiedEvent, Verifier, MAX_SIGNATURES,
};
use crate::signing;

pub struct StandardWebhooksVerifier {
    keys: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl StandardWebhooksVerifier {
    pub fn new(keys: Vec<Vec<u8>>, tolerance: Duration) -> Self {
        Self { keys, tolerance }
    }
}

impl Verifier for StandardWebhooksVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<VerifiedEvent, Error> {
        let missing = |name: &str| Error::InvalidSignature(format!("missing {name} header"));
        let id = header_str(headers, "webhook-id").ok_or_else(|| missing("webhook-id"))?;
        let timestamp =
            header_str(headers, "webhook-timestamp").ok_or_else(|| missing("webhook-timestamp"))?;
        let signatures =
            header_str(headers, "webhook-signature").ok_or_else(|| missing("webhook-signature"))?;
        let t: i64 = timestamp
            .parse()
            .map_err(|_| Error::InvalidSignature("webhook-timestamp is not a number".into()))?;
        let macs: Vec<Vec<u8>> = signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .take(MAX_SIGNATURES)
            .filter_map(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .collect();
        if macs.is_empty() {
            return Err(Error::InvalidSignature(
                "webhook-signature has no v1 signature".into(),
            ));
        }
        check_signed(
            &self.keys,
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
            &macs,
            t,
            now,
            self.tolerance,
        )?;
        Ok(VerifiedEvent {
            event_id: id.to_string(),
            event_type: TypeSource::Pointer("/type".into()).extract(headers, &Body::new(body)),
        })
    }

    fn kept_headers(&self) -> Vec<String> {
        ["webhook-id", "webhook-timestamp", "user-agent"]
            .map(String::from)
            .to_vec()
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        let mut draft = Draft::new(event);
        let body = draft.body();
        let t = unix_seconds(event.at);
        let key = self.keys.first().map_or(&[][..], Vec::as_slice);
        draft.header("webhook-id", event.id.as_str());
        draft.header("webhook-timestamp", t.to_string());
        draft.header(
            "webhook-signature",
            signing::standard_webhooks_signature(key, &event.id, t, &body),
        );
        Ok(draft.finish(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    // The test vector of the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const T: u64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(signature: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in [
            ("webhook-id", ID),
            ("webhook-timestamp", &T.to_string()),
            ("webhook-signature", signature),
        ] {
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn verifier(secrets: &[&str]) -> StandardWebhooksVerifier {
        let keys = secrets.iter().filter_map(|s| signing::decode_whsec(s)).collect();
        StandardWebhooksVerifier::new(keys, Duration::from_secs(300))
    }

    fn at(t: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t)
    }

    #[test]
    fn specification_vector_verifies() {
        let event = verifier(&[SECRET])
            .verify(&headers(SIGNATURE), BODY, at(T))
            .unwrap();
        assert_eq!(event.event_id, ID);
        assert_eq!(event.event_type, "unknown", "the vector's body has no `type`");
    }

    #[test]
    fn any_signature_of_the_list_may_match_and_other_versions_are_ignored() {
        let list = format!("v1a,AAAA v1,bm90IHRoaXM= {SIGNATURE}");
        assert!(verifier(&[SECRET]).verify(&headers(&list), BODY, at(T)).is_ok());
        assert!(verifier(&[SECRET])
            .verify(
                &headers("v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
                BODY,
                at(T)
            )
            .is_err());
    }

    #[test]
    fn rotated_secret_and_tolerance() {
        let v = verifier(&["whsec_AQIDBAUGBwgJCgsMDQ4PEA==", SECRET]);
        assert!(v.verify(&headers(SIGNATURE), BODY, at(T + 300)).is_ok());
        assert!(v.verify(&headers(SIGNATURE), BODY, at(T - 300)).is_ok());
        assert!(v.verify(&headers(SIGNATURE), BODY, at(T + 301)).is_err());
        assert!(v.verify(&headers(SIGNATURE), BODY, at(T - 301)).is_err());
        assert!(verifier(&["whsec_AQIDBAUGBwgJCgsMDQ4PEA=="])
            .verify(&headers(SIGNATURE), BODY, at(T))
            .is_err());
    }

    #[test]
    fn missing_headers_are_invalid_signatures() {
        let v = verifier(&[SECRET]);
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut map = headers(SIGNATURE);
            map.remove(name);
            assert!(
                matches!(v.verify(&map, BODY, at(T)), Err(Error::InvalidSignature(_))),
                "{name}"
            );
        }
    }
}
