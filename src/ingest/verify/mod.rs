//! Signature verification, one verifier per source kind behind one small trait.
//!
//! A verifier sees the raw body bytes and the request headers, checks the provider's
//! signature in constant time (see `crate::signing`) against every configured secret
//! (rotation), and extracts the provider's event id (the idempotency key) and type. It
//! never panics on any input and never logs secrets or payloads.

mod body_hmac;
mod discord;
mod extract;
mod linear;
mod meta;
mod paddle;
mod sample;
mod slack;
mod square;
mod standard;
mod stripe;
mod twilio;
mod unverified;
mod v0;
mod zoom;

use std::time::{Duration, SystemTime};

use actix_web::http::header::HeaderMap;

use crate::config::{SignatureEncoding, SourceConfig, SourceKind};

pub use body_hmac::{BodyHmacScheme, BodyHmacVerifier};
pub use discord::DiscordVerifier;
pub use extract::{IdSource, TypeSource};
pub use linear::LinearVerifier;
pub use meta::MetaVerifier;
pub use paddle::PaddleVerifier;
pub use sample::{SampleEvent, SignedRequest, DEFAULT_TYPE};
pub use slack::SlackVerifier;
pub use square::SquareVerifier;
pub use standard::StandardWebhooksVerifier;
pub use stripe::StripeVerifier;
pub use twilio::TwilioVerifier;
pub use unverified::UnverifiedSource;
pub use zoom::ZoomVerifier;

/// What a verified request yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEvent {
    /// The provider's id: the idempotency key within the source.
    pub event_id: String,
    pub event_type: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Missing or malformed signature header, no secret matched, or a timestamp
    /// outside the tolerance.
    #[error("{0}")]
    InvalidSignature(String),
    /// The signature is valid but the request lacks what the source needs (id, type).
    #[error("{0}")]
    InvalidPayload(String),
}

/// The answer to a provider's handshake: a request that proves the endpoint is the
/// app's (a challenge to echo) rather than an event. Answered `200` with this body, and
/// nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Handshake {
    pub fn json(value: serde_json::Value) -> Self {
        Self {
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }
}

/// Checks one provider's signature scheme.
pub trait Verifier: Send + Sync {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<VerifiedEvent, Error>;

    /// [`Verifier::verify`] given also the request's query string (after `?`, as
    /// received), which only a kind whose signature covers the URL reads (Twilio). What
    /// ingest calls.
    fn verify_with_query(
        &self,
        headers: &HeaderMap,
        _query: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<VerifiedEvent, Error> {
        self.verify(headers, body, now)
    }

    /// Whether this request is the provider's handshake rather than an event, and if so
    /// its answer — only once the request has proved itself as the provider requires
    /// (a handshake that fails its check is refused like any request). Asked before
    /// [`Verifier::verify`]; most providers have none.
    fn handshake(
        &self,
        _headers: &HeaderMap,
        _body: &[u8],
        _now: SystemTime,
    ) -> Result<Option<Handshake>, Error> {
        Ok(None)
    }

    /// A handshake that arrives as a `GET` with a query (Meta's subscription check):
    /// `None` when the kind has none (the `GET` is a 405); else its answer, or why it is
    /// refused (a 403).
    fn query_handshake(&self, _query: &str) -> Option<Result<Handshake, Error>> {
        None
    }

    /// The body of the `200` answering an accepted (or duplicate) event, when its
    /// provider expects one of its own (Discord: a deferred interaction response); else
    /// relayd's `{"status", "id", "event_id"}`.
    fn answer(&self, _body: &[u8]) -> Option<Handshake> {
        None
    }

    /// Whether a request whose signature fails is refused `401` rather than relayd's
    /// `400`, as its provider requires (Discord).
    fn refuses_forgeries_with_401(&self) -> bool {
        false
    }

    /// Request headers worth keeping with the event for operators (lower-case names):
    /// the provider's id and type headers and `user-agent`. Signature headers are never
    /// kept: they are useless after verification.
    fn kept_headers(&self) -> Vec<String>;

    /// `event` as this source's provider would send it, signed with the first configured
    /// secret (or the event's private key, for Discord): the inverse of
    /// [`Verifier::verify`], for `relayd send-test-event`. Fails only for a kind that
    /// needs a private key it was not given.
    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error>;
}

/// The verifier for a configured (and validated) source.
pub fn for_source(source: &SourceConfig) -> Box<dyn Verifier> {
    let secrets: Vec<Vec<u8>> = source
        .secrets
        .iter()
        .map(|s| s.expose().as_bytes().to_vec())
        .collect();
    let custom_id = || IdSource::from_config(source).unwrap_or(IdSource::Pointer("/id".into()));
    let custom_type = || TypeSource::from_config(source);
    match source.kind {
        SourceKind::Stripe => Box::new(StripeVerifier::new(secrets, source.tolerance)),
        SourceKind::Github => Box::new(BodyHmacVerifier::new(BodyHmacScheme::github(), secrets)),
        SourceKind::Shopify => Box::new(BodyHmacVerifier::new(BodyHmacScheme::shopify(), secrets)),
        SourceKind::StandardWebhooks => {
            // Validated as `whsec_<base64>` with the configuration.
            let keys = source
                .secrets
                .iter()
                .filter_map(|s| crate::signing::decode_whsec(s.expose()))
                .collect();
            Box::new(StandardWebhooksVerifier::new(keys, source.tolerance))
        }
        SourceKind::Hmac => Box::new(BodyHmacVerifier::new(
            BodyHmacScheme {
                signature_header: source
                    .signature_header
                    .clone()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                encoding: source.encoding.unwrap_or(SignatureEncoding::Hex),
                prefix: source.prefix.clone().unwrap_or_default(),
                id: custom_id(),
                event_type: custom_type(),
            },
            secrets,
        )),
        SourceKind::Slack => Box::new(SlackVerifier::new(secrets, source.tolerance)),
        SourceKind::Paddle => Box::new(PaddleVerifier::new(secrets, source.tolerance)),
        SourceKind::Zoom => Box::new(ZoomVerifier::new(secrets, source.tolerance)),
        SourceKind::Linear => Box::new(LinearVerifier::new(secrets, source.tolerance)),
        // Validated as present for `meta`.
        SourceKind::Meta => Box::new(MetaVerifier::new(
            secrets,
            source.verify_token.as_ref().map_or("", |t| t.expose()),
        )),
        // Validated as present for `square`.
        SourceKind::Square => Box::new(SquareVerifier::new(
            secrets,
            source.public_url.clone().unwrap_or_default(),
        )),
        SourceKind::Discord => Box::new(DiscordVerifier::new(
            &source.secrets.iter().map(|s| s.expose()).collect::<Vec<_>>(),
            source.tolerance,
        )),
        // Validated as present for `twilio`.
        SourceKind::Twilio => Box::new(TwilioVerifier::new(
            secrets,
            source.public_url.as_deref().unwrap_or_default(),
        )),
        SourceKind::None => Box::new(UnverifiedSource::new(custom_id(), custom_type())),
    }
}

/// How a timestamped scheme ends: one of `macs` is the HMAC-SHA256 of `signed` under one
/// of `secrets` (each compared in constant time), and then `timestamp` is within
/// `tolerance` of `now` — in that order, so that an unsigned request learns nothing of
/// the clock.
fn check_signed<M: AsRef<[u8]>>(
    secrets: &[Vec<u8>],
    signed: &[&[u8]],
    macs: &[M],
    timestamp: i64,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), Error> {
    if !secrets
        .iter()
        .any(|secret| crate::signing::verify_any(secret, signed, macs))
    {
        return Err(Error::InvalidSignature(
            "signature matches no configured secret".into(),
        ));
    }
    if !within_tolerance(timestamp, now, tolerance) {
        return Err(Error::InvalidSignature(format!(
            "timestamp is outside the tolerance of {}",
            humantime::format_duration(tolerance)
        )));
    }
    Ok(())
}

/// A signature header of `key=value` items carrying a timestamp and one MAC (hex) per
/// active secret: Stripe's `t=…,v1=…,v1=…`, Paddle's `ts=…;h1=…`.
pub(super) struct TimestampedHeader {
    /// As the provider spells it, for messages.
    pub name: &'static str,
    pub separator: char,
    pub timestamp_key: &'static str,
    pub mac_key: &'static str,
}

/// A header carries one MAC per active secret; more than this is abuse.
const MAX_SIGNATURES: usize = 8;

impl TimestampedHeader {
    /// The timestamp and the decoded MACs (values that are not hex are skipped; other
    /// keys, such as Stripe's `v0`, ignored).
    fn parse(&self, value: &str) -> Result<(i64, Vec<Vec<u8>>), Error> {
        let name = self.name;
        let mut timestamp = None;
        let mut macs = Vec::new();
        for item in value.split(self.separator) {
            let Some((key, value)) = item.trim().split_once('=') else {
                continue;
            };
            if key == self.timestamp_key {
                let t = value
                    .parse::<i64>()
                    .map_err(|_| Error::InvalidSignature(format!("{name} timestamp is not a number")))?;
                timestamp = Some(t);
            } else if key == self.mac_key && macs.len() < MAX_SIGNATURES {
                if let Ok(mac) = hex::decode(value) {
                    macs.push(mac);
                }
            }
        }
        let timestamp =
            timestamp.ok_or_else(|| Error::InvalidSignature(format!("{name} has no timestamp")))?;
        if macs.is_empty() {
            return Err(Error::InvalidSignature(format!(
                "{name} has no {} signature",
                self.mac_key
            )));
        }
        Ok((timestamp, macs))
    }
}

/// True when `timestamp` (Unix seconds) is within `tolerance` of `now`, either side.
fn within_tolerance(timestamp: i64, now: SystemTime, tolerance: Duration) -> bool {
    let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => return false,
    };
    now.abs_diff(timestamp) <= tolerance.as_secs()
}

/// Whether `body` holds `needle` anywhere: a cheap test that spares every ordinary event
/// a JSON parse just to learn that it is not a handshake.
fn mentions(body: &[u8], needle: &[u8]) -> bool {
    body.windows(needle.len()).any(|window| window == needle)
}

/// A header as UTF-8 text, if present and valid.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use actix_web::http::header::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    fn source(kind: SourceKind, secrets: &[&str]) -> SourceConfig {
        SourceConfig::new("s", kind, secrets.iter().map(|s| Secret::new(*s)).collect())
    }

    fn every_kind() -> Vec<Box<dyn Verifier>> {
        let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let mut hmac = source(SourceKind::Hmac, &["k"]);
        hmac.signature_header = Some("x-sig".into());
        hmac.prefix = Some("sha256=".into());
        hmac.id_pointer = Some("/id".into());
        hmac.type_header = Some("x-type".into());
        let mut hashed = source(SourceKind::Hmac, &["k"]);
        hashed.signature_header = Some("x-sig".into());
        hashed.encoding = Some(SignatureEncoding::Base64);
        hashed.id_from_body_hash = true;
        vec![
            for_source(&source(SourceKind::Stripe, &[whsec])),
            for_source(&source(SourceKind::Github, &["k"])),
            for_source(&source(SourceKind::Shopify, &["k"])),
            for_source(&source(SourceKind::StandardWebhooks, &[whsec])),
            for_source(&hmac),
            for_source(&hashed),
            for_source(&source(SourceKind::None, &[])),
            for_source(&source(SourceKind::Slack, &["k"])),
            for_source(&source(SourceKind::Paddle, &["k"])),
            for_source(&square(&["k"])),
            for_source(&source(SourceKind::Zoom, &["k"])),
            for_source(&source(SourceKind::Linear, &["k"])),
            for_source(&meta(&["k"])),
            for_source(&twilio(&["k"])),
            for_source(&discord()),
        ]
    }

    /// RFC 8032 §7.1 TEST 1's key pair: its seed signs Discord's samples here.
    const DISCORD_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    fn discord() -> SourceConfig {
        source(
            SourceKind::Discord,
            &["d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"],
        )
    }

    fn twilio(secrets: &[&str]) -> SourceConfig {
        let mut twilio = source(SourceKind::Twilio, secrets);
        twilio.public_url = Some("https://relayd.example/webhooks/twilio".into());
        twilio
    }

    fn meta(secrets: &[&str]) -> SourceConfig {
        let mut meta = source(SourceKind::Meta, secrets);
        meta.verify_token = Some(Secret::new("t"));
        meta
    }

    fn square(secrets: &[&str]) -> SourceConfig {
        let mut square = source(SourceKind::Square, secrets);
        square.public_url = Some("https://relayd.example/webhooks/square".into());
        square
    }

    const HEADERS: &[&str] = &[
        "stripe-signature",
        "x-hub-signature-256",
        "x-github-delivery",
        "x-github-event",
        "x-shopify-hmac-sha256",
        "x-shopify-webhook-id",
        "x-shopify-topic",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-sig",
        "x-type",
        "x-slack-signature",
        "x-slack-request-timestamp",
        "paddle-signature",
        "x-square-hmacsha256-signature",
        "x-zm-signature",
        "x-zm-request-timestamp",
        "linear-signature",
        "linear-delivery",
        "x-twilio-signature",
        "x-twilio-webhooks-signature-settings",
        "i-twilio-idempotency-token",
        "x-signature-ed25519",
        "x-signature-timestamp",
    ];

    proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic_any_verifier(
            values in proptest::collection::vec("\\PC{0,120}", HEADERS.len()),
            present in proptest::collection::vec(any::<bool>(), HEADERS.len()),
            body in proptest::collection::vec(any::<u8>(), 0..128),
            now in any::<u64>(),
        ) {
            let mut headers = HeaderMap::new();
            for ((name, value), present) in HEADERS.iter().zip(&values).zip(&present) {
                if let (true, Ok(value)) = (*present, HeaderValue::from_str(value)) {
                    headers.insert(HeaderName::from_static(name), value);
                }
            }
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now % (1 << 40));
            for verifier in every_kind() {
                let _ = verifier.handshake(&headers, &body, now);
                let _ = verifier.verify(&headers, &body, now);
                let _ = verifier.verify_with_query(&headers, "bodySHA256=00&a=%ff", &body, now);
                let _ = verifier.answer(&body);
            }
        }
    }

    /// What `relayd send-test-event` sends is what ingest accepts, for every kind: the
    /// id and type arrive where the source reads them, and the signature holds only for
    /// the configured secret.
    #[test]
    fn every_kind_verifies_the_sample_it_signs_and_only_with_its_secret() {
        let event = SampleEvent {
            private_key: Some(hex::decode(DISCORD_SEED).unwrap()),
            ..SampleEvent::new("evt_sample_1", "invoice.paid")
        };
        let mut nested = source(SourceKind::Hmac, &["k"]);
        nested.signature_header = Some("x-sig".into());
        nested.id_pointer = Some("/data/object/ref".into());
        nested.type_pointer = Some("/meta/kind".into());
        let mut verifiers = every_kind();
        verifiers.push(for_source(&nested));
        // Discord's types are its interactions' kinds.
        let interaction = SampleEvent {
            event_type: "application_command".into(),
            ..event.clone()
        };
        for (i, verifier) in verifiers.iter().enumerate() {
            let event = if i == 14 { &interaction } else { &event };
            let request = verifier.sign(event).unwrap();
            let verified = verifier
                .verify(&request.header_map(), &request.body, event.at)
                .unwrap_or_else(|e| panic!("kind #{i}: {e}"));
            let hashed = i == 5 || i == 10 || i == 12; // hmac by body hash; zoom and meta: no ids
            let untyped = i == 5 || i == 6;
            if hashed {
                assert_eq!(
                    verified.event_id,
                    hex::encode(ring::digest::digest(&ring::digest::SHA256, &request.body))
                );
            } else {
                assert_eq!(verified.event_id, event.id, "kind #{i}");
            }
            let expected_type = if untyped { "unknown" } else { &event.event_type };
            assert_eq!(verified.event_type, expected_type, "kind #{i}");
        }

        let other = "whsec_AQIDBAUGBwgJCgsMDQ4PEA==";
        let strangers = [
            for_source(&source(SourceKind::Stripe, &[other])),
            for_source(&source(SourceKind::Github, &["other"])),
            for_source(&source(SourceKind::Shopify, &["other"])),
            for_source(&source(SourceKind::StandardWebhooks, &[other])),
        ];
        // The kinds after the first seven, in order, under another secret.
        for (i, kind) in [SourceKind::Slack, SourceKind::Paddle].into_iter().enumerate() {
            let request = verifiers[7 + i].sign(&event).unwrap();
            assert!(
                matches!(
                    for_source(&source(kind, &["other"])).verify(
                        &request.header_map(),
                        &request.body,
                        event.at
                    ),
                    Err(Error::InvalidSignature(_))
                ),
                "{kind:?} verified under another secret"
            );
        }
        for (i, stranger) in strangers.iter().enumerate() {
            let request = verifiers[i].sign(&event).unwrap();
            assert!(
                matches!(
                    stranger.verify(&request.header_map(), &request.body, event.at),
                    Err(Error::InvalidSignature(_))
                ),
                "kind #{i} verified under another secret"
            );
        }
    }
}
