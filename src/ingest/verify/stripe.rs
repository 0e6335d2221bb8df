//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` (other schemes such as
//! `v0` are ignored), HMAC-SHA256 over `"{t}.{raw body}"` keyed with the whole
//! `whsec_…` string. The event id and type come from the verified JSON body.

use std::time::{Duration, SystemTime};

use actix_web::http::header::HeaderMap;
use serde::Deserialize;

use super::sample::{unix_seconds, Draft};
use super::{
    check_signed, header_str, Error, SampleEvent, SignedRequest, TimestampedHeader, VerifiedEvent, Verifier,
};
use crate::signing;

const SIGNATURE_HEADER: &str = "stripe-signature";

pub struct StripeVerifier {
    secrets: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl StripeVerifier {
    pub fn new(secrets: Vec<Vec<u8>>, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }
}

const HEADER: TimestampedHeader = TimestampedHeader {
    name: "Stripe-Signature",
    separator: ',',
    timestamp_key: "t",
    mac_key: "v1",
};

/// Only what relayd needs from a Stripe event; every other field is ignored.
#[derive(Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
}

impl Verifier for StripeVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<VerifiedEvent, Error> {
        let value = header_str(headers, SIGNATURE_HEADER)
            .ok_or_else(|| Error::InvalidSignature("missing Stripe-Signature header".into()))?;
        let (timestamp, macs) = HEADER.parse(value)?;
        let t = timestamp.to_string();
        check_signed(
            &self.secrets,
            &[t.as_bytes(), b".", body],
            &macs,
            timestamp,
            now,
            self.tolerance,
        )?;
        let event: StripeEvent = serde_json::from_slice(body).map_err(|_| {
            Error::InvalidPayload(
                "body is not a Stripe event: a JSON object with string `id` and `type`".into(),
            )
        })?;
        if event.id.is_empty() || event.event_type.is_empty() {
            return Err(Error::InvalidPayload(
                "Stripe event `id` and `type` must not be empty".into(),
            ));
        }
        Ok(VerifiedEvent {
            event_id: event.id,
            event_type: event.event_type,
        })
    }

    fn kept_headers(&self) -> Vec<String> {
        vec!["user-agent".into()]
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        let mut draft = Draft::new(event);
        let body = draft.body();
        let t = unix_seconds(event.at).to_string();
        let secret = self.secrets.first().map_or(&[][..], Vec::as_slice);
        let mac = signing::sign(secret, &[t.as_bytes(), b".", &body]);
        draft.header(
            SIGNATURE_HEADER,
            format!("t={t},v1={}", hex::encode(mac.as_ref())),
        );
        Ok(draft.finish(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    const SECRET: &str = "whsec_test_0123456789abcdef";
    const OLD_SECRET: &str = "whsec_old_rotated_secret";
    const BODY: &[u8] = br#"{"id":"evt_test_1","object":"event","type":"invoice.paid"}"#;
    const T: i64 = 1_700_000_000;
    // Computed independently of relayd, following Stripe's documented scheme:
    //   printf '%s' "1700000000.$BODY" | openssl dgst -sha256 -hmac "$SECRET" -hex
    const V1_SECRET: &str = "e00fdeec109654936bb72ae56083878b2db6ec7758cd3c47ec1baeae5177eb44";
    const V1_OLD_SECRET: &str = "52cfb9beb444601623951e940a9da1f999d51e852b709bce79d46f6337d11eed";

    fn at(t: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)
    }

    fn headers(signature: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static(SIGNATURE_HEADER),
            HeaderValue::from_str(signature).unwrap(),
        );
        map
    }

    fn verifier(secrets: &[&str]) -> StripeVerifier {
        StripeVerifier::new(
            secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            Duration::from_secs(300),
        )
    }

    #[test]
    fn documented_scheme_vector_verifies() {
        let event = verifier(&[SECRET])
            .verify(&headers(&format!("t={T},v1={V1_SECRET}")), BODY, at(T))
            .unwrap();
        assert_eq!(
            event,
            VerifiedEvent {
                event_id: "evt_test_1".into(),
                event_type: "invoice.paid".into()
            }
        );
    }

    #[test]
    fn any_of_several_v1_signatures_may_match_and_v0_is_ignored() {
        let header = format!("t={T},v0=deadbeef,v1={V1_OLD_SECRET},v1={V1_SECRET}");
        assert!(verifier(&[SECRET]).verify(&headers(&header), BODY, at(T)).is_ok());
        let only_v0 = format!("t={T},v0={V1_SECRET}");
        assert!(matches!(
            verifier(&[SECRET]).verify(&headers(&only_v0), BODY, at(T)),
            Err(Error::InvalidSignature(_))
        ));
    }

    #[test]
    fn a_rotated_secret_still_matches() {
        let header = format!("t={T},v1={V1_OLD_SECRET}");
        assert!(verifier(&[SECRET, OLD_SECRET])
            .verify(&headers(&header), BODY, at(T))
            .is_ok());
        assert!(verifier(&[SECRET])
            .verify(&headers(&header), BODY, at(T))
            .is_err());
    }

    #[test]
    fn tolerance_applies_on_both_sides() {
        let v = verifier(&[SECRET]);
        let header = headers(&format!("t={T},v1={V1_SECRET}"));
        assert!(v.verify(&header, BODY, at(T + 300)).is_ok());
        assert!(v.verify(&header, BODY, at(T - 300)).is_ok());
        assert!(v.verify(&header, BODY, at(T + 301)).is_err(), "stale");
        assert!(v.verify(&header, BODY, at(T - 301)).is_err(), "from the future");
    }

    #[test]
    fn tampered_body_or_timestamp_is_refused() {
        let v = verifier(&[SECRET]);
        let tampered = br#"{"id":"evt_test_1","object":"event","type":"invoice.void"}"#;
        assert!(v
            .verify(&headers(&format!("t={T},v1={V1_SECRET}")), tampered, at(T))
            .is_err());
        let shifted = T + 1;
        assert!(v
            .verify(&headers(&format!("t={shifted},v1={V1_SECRET}")), BODY, at(T))
            .is_err());
    }

    #[test]
    fn missing_and_malformed_headers_are_invalid_signatures() {
        let v = verifier(&[SECRET]);
        assert!(matches!(
            v.verify(&HeaderMap::new(), BODY, at(T)),
            Err(Error::InvalidSignature(_))
        ));
        for bad in [
            "",
            "t=",
            "v1=abc",
            "t=abc,v1=00",
            &format!("t={T}"),
            &format!("t={T},v1=zz"),
        ] {
            assert!(
                matches!(
                    v.verify(&headers(bad), BODY, at(T)),
                    Err(Error::InvalidSignature(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn signed_body_without_id_or_type_is_an_invalid_payload() {
        let v = verifier(&[SECRET]);
        for body in [
            &b"not json"[..],
            br#"{"type":"x"}"#,
            br#"{"id":"evt_1"}"#,
            br#"{"id":1,"type":"x"}"#,
        ] {
            let t = T.to_string();
            let mac = signing::sign(SECRET.as_bytes(), &[t.as_bytes(), b".", body]);
            let header = headers(&format!("t={T},v1={}", hex::encode(mac.as_ref())));
            assert!(
                matches!(v.verify(&header, body, at(T)), Err(Error::InvalidPayload(_))),
                "{body:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_header_values_never_panic(value in "\\PC{0,200}", body in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(header_value) = HeaderValue::from_str(&value) {
                let mut map = HeaderMap::new();
                map.insert(HeaderName::from_static(SIGNATURE_HEADER), header_value);
                let _ = verifier(&[SECRET]).verify(&map, &body, at(T));
            }
        }

        #[test]
        fn structured_garbage_never_panics(t in any::<i64>(), sigs in proptest::collection::vec("[0-9a-fA-Fz=,]{0,80}", 0..12)) {
            let value = format!("t={t},{}", sigs.iter().map(|s| format!("v1={s}")).collect::<Vec<_>>().join(","));
            let _ = verifier(&[SECRET]).verify(&headers(&value), BODY, at(T));
        }
    }
}
