//! HMAC-SHA256 over the raw body, with the MAC in one header: GitHub
//! (`X-Hub-Signature-256: sha256=<hex>`), Shopify (`X-Shopify-Hmac-Sha256: <base64>`)
//! and the configurable `hmac` kind are the same scheme with different settings.

use std::time::SystemTime;

use actix_web::http::header::HeaderMap;
use base64::Engine;

use super::extract::{Body, IdSource, TypeSource};
use super::sample::Draft;
use super::{header_str, Error, SampleEvent, SignedRequest, VerifiedEvent, Verifier};
use crate::config::SignatureEncoding;
use crate::signing;

/// How a provider signs its bodies and names its events.
#[derive(Debug, Clone)]
pub struct BodyHmacScheme {
    /// Lower-case header name carrying the MAC.
    pub signature_header: String,
    pub encoding: SignatureEncoding,
    /// Text before the MAC in the header (`sha256=` for GitHub).
    pub prefix: String,
    pub id: IdSource,
    pub event_type: TypeSource,
}

impl BodyHmacScheme {
    pub fn github() -> Self {
        Self {
            signature_header: "x-hub-signature-256".into(),
            encoding: SignatureEncoding::Hex,
            prefix: "sha256=".into(),
            id: IdSource::Header("x-github-delivery".into()),
            event_type: TypeSource::Header("x-github-event".into()),
        }
    }

    pub fn shopify() -> Self {
        Self {
            signature_header: "x-shopify-hmac-sha256".into(),
            encoding: SignatureEncoding::Base64,
            prefix: String::new(),
            id: IdSource::Header("x-shopify-webhook-id".into()),
            event_type: TypeSource::Header("x-shopify-topic".into()),
        }
    }
}

pub struct BodyHmacVerifier {
    scheme: BodyHmacScheme,
    secrets: Vec<Vec<u8>>,
}

impl BodyHmacVerifier {
    pub fn new(scheme: BodyHmacScheme, secrets: Vec<Vec<u8>>) -> Self {
        Self { scheme, secrets }
    }

    fn decode(&self, value: &str) -> Option<Vec<u8>> {
        let encoded = value.trim().strip_prefix(self.scheme.prefix.as_str())?;
        match self.scheme.encoding {
            SignatureEncoding::Hex => hex::decode(encoded).ok(),
            SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(encoded).ok(),
        }
    }
}

impl Verifier for BodyHmacVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], _now: SystemTime) -> Result<VerifiedEvent, Error> {
        let name = &self.scheme.signature_header;
        let value = header_str(headers, name)
            .ok_or_else(|| Error::InvalidSignature(format!("missing {name} header")))?;
        let mac = self
            .decode(value)
            .ok_or_else(|| Error::InvalidSignature(format!("malformed {name} header")))?;
        if !self
            .secrets
            .iter()
            .any(|secret| signing::verify(secret, &[body], &mac))
        {
            return Err(Error::InvalidSignature(
                "signature matches no configured secret".into(),
            ));
        }
        let body = Body::new(body);
        Ok(VerifiedEvent {
            event_id: self.scheme.id.extract(headers, &body)?,
            event_type: self.scheme.event_type.extract(headers, &body),
        })
    }

    fn kept_headers(&self) -> Vec<String> {
        let mut kept: Vec<String> = [self.scheme.id.header(), self.scheme.event_type.header()]
            .into_iter()
            .flatten()
            .map(String::from)
            .collect();
        if self.scheme.signature_header == "x-shopify-hmac-sha256" {
            kept.extend(
                [
                    "x-shopify-shop-domain",
                    "x-shopify-api-version",
                    "x-shopify-event-id",
                ]
                .map(String::from),
            );
        }
        if self.scheme.signature_header == "x-hub-signature-256" {
            kept.push("x-github-hook-id".into());
        }
        kept.push("user-agent".into());
        kept
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        let mut draft = Draft::new(event);
        draft.place_id(&self.scheme.id, &event.id);
        draft.place_type(&self.scheme.event_type, &event.event_type);
        Ok(self.finish(draft))
    }
}

impl BodyHmacVerifier {
    /// `draft` signed with the first secret in this scheme's header: a sample request
    /// (also for a provider with a body shape of its own).
    pub(super) fn finish(&self, mut draft: Draft) -> SignedRequest {
        let body = draft.body();
        let secret = self.secrets.first().map_or(&[][..], Vec::as_slice);
        let mac = signing::sign(secret, &[&body]);
        let encoded = match self.scheme.encoding {
            SignatureEncoding::Hex => hex::encode(mac.as_ref()),
            SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(mac.as_ref()),
        };
        draft.header(
            &self.scheme.signature_header,
            format!("{}{encoded}", self.scheme.prefix),
        );
        draft.finish(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    /// GitHub's documented example ("Validating webhook deliveries").
    #[test]
    fn github_documented_vector() {
        let verifier = BodyHmacVerifier::new(
            BodyHmacScheme::github(),
            vec![b"It's a Secret to Everybody".to_vec()],
        );
        let request = headers(&[
            (
                "x-hub-signature-256",
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            ),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("x-github-event", "push"),
        ]);
        let event = verifier.verify(&request, b"Hello, World!", now()).unwrap();
        assert_eq!(event.event_id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert_eq!(event.event_type, "push");
        assert!(verifier.verify(&request, b"Hello, World?", now()).is_err());
    }

    /// Our own vector, computed with
    /// `printf '%s' "$BODY" | openssl dgst -sha256 -hmac shpss_test_secret -binary | base64`.
    #[test]
    fn shopify_vector_and_missing_id() {
        let body = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
        let verifier = BodyHmacVerifier::new(
            BodyHmacScheme::shopify(),
            vec![b"rotated-out".to_vec(), b"shpss_test_secret".to_vec()],
        );
        let signed = [
            (
                "x-shopify-hmac-sha256",
                "LnwdZPLBbdjkBwPD/lDL1/rYEGby/GHPtL1aAH6Dxjc=",
            ),
            ("x-shopify-webhook-id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
            ("x-shopify-topic", "orders/create"),
        ];
        let event = verifier.verify(&headers(&signed), body, now()).unwrap();
        assert_eq!(event.event_id, "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043");
        assert_eq!(event.event_type, "orders/create");
        assert!(matches!(
            verifier.verify(&headers(&signed[..1]), body, now()),
            Err(Error::InvalidPayload(_))
        ));
        assert!(matches!(
            verifier.verify(&headers(&[("x-shopify-hmac-sha256", "!!")]), body, now()),
            Err(Error::InvalidSignature(_))
        ));
    }

    /// Our own vector: `openssl dgst -sha256 -hmac custom-secret -hex`.
    #[test]
    fn configurable_hmac_with_prefix_and_json_pointers() {
        let body = br#"{"event":{"id":"ord_1","type":"order.created"}}"#;
        let verifier = BodyHmacVerifier::new(
            BodyHmacScheme {
                signature_header: "x-signature".into(),
                encoding: SignatureEncoding::Hex,
                prefix: "sha256=".into(),
                id: IdSource::Pointer("/event/id".into()),
                event_type: TypeSource::Pointer("/event/type".into()),
            },
            vec![b"custom-secret".to_vec()],
        );
        let mac = "8f3b28be93ebaa5aacb23939be58f192c012f5880e7f6aec432d4213b32cb954";
        let event = verifier
            .verify(
                &headers(&[("x-signature", &format!("sha256={mac}"))]),
                body,
                now(),
            )
            .unwrap();
        assert_eq!(event.event_id, "ord_1");
        assert_eq!(event.event_type, "order.created");
        // Without its prefix the header is malformed.
        assert!(verifier
            .verify(&headers(&[("x-signature", mac)]), body, now())
            .is_err());
    }
}
