//! `[[sources]]`: the inbound endpoints, their signature kinds and where each reads
//! the event id and type, with the per-kind checks.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, is_valid_name, Error, Secret, NAME_RULE};

/// One inbound endpoint: `POST /webhooks/{name}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    /// Several secrets allow rotation: any one may match.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// For timestamped schemes, `|now - t|` must be within this.
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
    /// `hmac` only: the header carrying the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    /// `hmac` only: how the MAC is written in the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SignatureEncoding>,
    /// `hmac` only: text before the MAC in the header, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `hmac`/`none`: the event id comes from this request header…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_header: Option<String>,
    /// …or from this JSON pointer into the body (`/id`, `/data/id`)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_pointer: Option<String>,
    /// …or, only when set, is the SHA-256 of the body (identical bodies are duplicates).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub id_from_body_hash: bool,
    /// `hmac`/`none`: the event type comes from this header…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_header: Option<String>,
    /// …or from this JSON pointer; without either it is `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_pointer: Option<String>,
    /// `square` and `twilio` only (required): the notification URL as configured at the
    /// provider, which its signature covers — relayd behind a proxy or load balancer
    /// sees another. Twilio's without a query: the request's own is appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// `meta` only (required): the verify token set in the app's webhook settings, which
    /// its `GET ?hub.mode=subscribe` handshake must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_token: Option<Secret>,
    /// Events whose values at these pointers match one stored within the window are
    /// duplicates, whatever their ids (a sender that resends one change under new ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupConfig>,
    /// Keep a `jsonb` copy of each JSON body, indexed, so that the event search's
    /// `match` and `where` (and the stream's) find this source's events by what they
    /// hold. Off by default: it costs ingest 12–20 % of its ceiling (README,
    /// "Performance"); without it the source's events are found by their fields.
    #[serde(default)]
    pub searchable: bool,
}

/// `dedup = { key = ["/type", "/data/object/id"], window = "10m" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// JSON pointers into the body (`""`: the whole body); an event lacking one of them
    /// is not deduplicated by this rule.
    pub key: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// The most pointers a dedup key has.
pub const MAX_DEDUP_POINTERS: usize = 8;

/// The longest dedup window.
pub const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

impl SourceConfig {
    /// A source with the default tolerance and no `hmac` settings.
    pub fn new(name: impl Into<String>, kind: SourceKind, secrets: Vec<Secret>) -> Self {
        Self {
            name: name.into(),
            kind,
            secrets,
            tolerance: default_tolerance(),
            signature_header: None,
            encoding: None,
            prefix: None,
            id_header: None,
            id_pointer: None,
            id_from_body_hash: false,
            type_header: None,
            type_pointer: None,
            public_url: None,
            verify_token: None,
            dedup: None,
            searchable: false,
        }
    }
}

/// Which signature scheme a source speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `Stripe-Signature: t=…,v1=…`.
    Stripe,
    /// `X-Hub-Signature-256: sha256=<hex>`.
    Github,
    /// `X-Shopify-Hmac-Sha256: <base64>`.
    Shopify,
    /// `webhook-id` / `webhook-timestamp` / `webhook-signature: v1,<base64>`.
    StandardWebhooks,
    /// A configurable HMAC-SHA256 over the body.
    Hmac,
    /// `X-Slack-Signature: v0=<hex>` over `v0:{timestamp}:{body}`; answers the
    /// `url_verification` handshake.
    Slack,
    /// Paddle Billing: `Paddle-Signature: ts=…;h1=…` over `{ts}:{body}`.
    Paddle,
    /// Square: `x-square-hmacsha256-signature: <base64>` over `public_url` + body.
    Square,
    /// Zoom: `x-zm-signature: v0=<hex>` over `v0:{timestamp}:{body}`; answers the
    /// `endpoint.url_validation` handshake.
    Zoom,
    /// Linear: `Linear-Signature: <hex>` over the body, its `webhookTimestamp` the window.
    Linear,
    /// Twilio: `X-Twilio-Signature: <base64>` over `public_url` + query + sorted form
    /// parameters (or the URL's `bodySHA256` for a JSON body).
    Twilio,
    /// Discord interactions: `X-Signature-Ed25519` over `X-Signature-Timestamp` + body,
    /// verified with the application's public key (the secrets, hex); answers `PING`.
    Discord,
    /// Meta (WhatsApp, Instagram, Messenger): `X-Hub-Signature-256: sha256=<hex>` over the
    /// body; answers the `GET ?hub.mode=subscribe` handshake with `verify_token`.
    Meta,
    /// No verification at all: for local testing only.
    None,
}

/// How an `hmac` source's MAC is encoded in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

type Key<'a> = &'a dyn Fn(&str) -> String;

/// The per-kind rules of one `[[sources]]` entry.
fn validate_source(source: &SourceConfig, key: Key<'_>) -> Result<(), Error> {
    check_secrets(source, key)?;
    check_fields_apply(source, key)?;
    check_id_and_type(source, key)?;
    check_dedup(source, key)
}

/// A dedup rule has 1 to [`MAX_DEDUP_POINTERS`] pointers and a window of 1 s to
/// [`MAX_DEDUP_WINDOW`].
fn check_dedup(source: &SourceConfig, key: Key<'_>) -> Result<(), Error> {
    let Some(dedup) = &source.dedup else {
        return Ok(());
    };
    if dedup.key.is_empty() || dedup.key.len() > MAX_DEDUP_POINTERS {
        return Err(invalid(
            key("dedup.key"),
            format!("1 to {MAX_DEDUP_POINTERS} JSON pointers, e.g. [\"/type\", \"/data/object/id\"]"),
        ));
    }
    for (j, pointer) in dedup.key.iter().enumerate() {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(invalid(
                format!("{}[{j}]", key("dedup.key")),
                "a JSON pointer starts with '/' (\"\" is the whole body)",
            ));
        }
    }
    if dedup.window < Duration::from_secs(1) || dedup.window > MAX_DEDUP_WINDOW {
        return Err(invalid(key("dedup.window"), "from 1s to 30d"));
    }
    Ok(())
}

/// Secrets for every kind but `none`, none for it; Standard Webhooks ones are `whsec_`.
fn check_secrets(source: &SourceConfig, key: Key<'_>) -> Result<(), Error> {
    if source.kind == SourceKind::None {
        if !source.secrets.is_empty() {
            return Err(invalid(
                key("secrets"),
                "kind \"none\" verifies nothing: remove the secrets",
            ));
        }
    } else {
        if source.secrets.is_empty() {
            return Err(invalid(
                key("secrets"),
                "at least one secret is required (kind = \"none\" disables verification, for local testing only)",
            ));
        }
        if source.secrets.iter().any(|s| s.expose().is_empty()) {
            return Err(invalid(key("secrets"), "a secret must not be empty"));
        }
    }
    if source.kind == SourceKind::Discord {
        for (j, public_key) in source.secrets.iter().enumerate() {
            if crate::signing::decode_ed25519_public_key(public_key.expose()).is_none() {
                return Err(invalid(
                    format!("{}[{j}]", key("secrets")),
                    "a Discord application's public key: 64 hex digits",
                ));
            }
        }
    }
    if source.kind == SourceKind::StandardWebhooks {
        for (j, secret) in source.secrets.iter().enumerate() {
            if crate::signing::decode_whsec(secret.expose()).is_none() {
                return Err(invalid(
                    format!("{}[{j}]", key("secrets")),
                    "a Standard Webhooks secret is `whsec_` followed by base64",
                ));
            }
        }
    }
    Ok(())
}

/// The `hmac` settings only on `hmac`, the id and type settings only on `hmac`/`none`.
fn check_fields_apply(source: &SourceConfig, key: Key<'_>) -> Result<(), Error> {
    let hmac_only = [
        ("signature_header", source.signature_header.is_some()),
        ("encoding", source.encoding.is_some()),
        ("prefix", source.prefix.is_some()),
    ];
    let custom_ids = [
        ("id_header", source.id_header.is_some()),
        ("id_pointer", source.id_pointer.is_some()),
        ("id_from_body_hash", source.id_from_body_hash),
        ("type_header", source.type_header.is_some()),
        ("type_pointer", source.type_pointer.is_some()),
    ];
    let takes_custom_ids = matches!(source.kind, SourceKind::Hmac | SourceKind::None);
    let url_signed = matches!(source.kind, SourceKind::Square | SourceKind::Twilio);
    match (&source.public_url, url_signed) {
        (None, true) => {
            return Err(invalid(
                key("public_url"),
                "required for kinds \"square\" and \"twilio\": the webhook URL their signature covers",
            ))
        }
        (Some(_), false) => {
            return Err(invalid(
                key("public_url"),
                "only applies to kinds \"square\" and \"twilio\"",
            ))
        }
        (Some(url), true) => {
            let Ok(parsed) = url::Url::parse(url) else {
                return Err(invalid(key("public_url"), "an http:// or https:// URL"));
            };
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid(key("public_url"), "an http:// or https:// URL"));
            }
            if source.kind == SourceKind::Twilio && url.contains(['?', '#']) {
                return Err(invalid(
                    key("public_url"),
                    "the URL without a query: relayd appends the query of each request Twilio makes",
                ));
            }
        }
        (None, false) => {}
    }
    match (&source.verify_token, source.kind == SourceKind::Meta) {
        (None, true) => {
            return Err(invalid(
                key("verify_token"),
                "required for kind = \"meta\": the token its subscription handshake presents",
            ))
        }
        (Some(_), false) => return Err(invalid(key("verify_token"), "only applies to kind = \"meta\"")),
        (Some(token), true) if token.expose().is_empty() => {
            return Err(invalid(key("verify_token"), "must not be empty"))
        }
        _ => {}
    }
    for (field, set) in hmac_only {
        if set && source.kind != SourceKind::Hmac {
            return Err(invalid(key(field), "only applies to kind = \"hmac\""));
        }
    }
    for (field, set) in custom_ids {
        if set && !takes_custom_ids {
            return Err(invalid(key(field), "only applies to kinds \"hmac\" and \"none\""));
        }
    }
    Ok(())
}

/// Well-formed pointers and header names; `hmac` has its signature header and exactly
/// one id source; no field is set twice over.
fn check_id_and_type(source: &SourceConfig, key: Key<'_>) -> Result<(), Error> {
    for (field, pointer) in [
        ("id_pointer", &source.id_pointer),
        ("type_pointer", &source.type_pointer),
    ] {
        if pointer.as_deref().is_some_and(|p| !p.starts_with('/')) {
            return Err(invalid(
                key(field),
                "a JSON pointer starts with '/', e.g. \"/id\"",
            ));
        }
    }
    for (field, header) in [
        ("signature_header", &source.signature_header),
        ("id_header", &source.id_header),
        ("type_header", &source.type_header),
    ] {
        if header
            .as_deref()
            .is_some_and(|h| actix_web::http::header::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(invalid(key(field), "not a valid HTTP header name"));
        }
    }
    if source.kind == SourceKind::Hmac {
        if source.signature_header.is_none() {
            return Err(invalid(key("signature_header"), "required for kind = \"hmac\""));
        }
        let id_sources = [
            source.id_header.is_some(),
            source.id_pointer.is_some(),
            source.id_from_body_hash,
        ];
        if id_sources.iter().filter(|set| **set).count() != 1 {
            return Err(invalid(
                key("id_header"),
                "kind = \"hmac\" needs exactly one of id_header, id_pointer or id_from_body_hash = true",
            ));
        }
    }
    if source.id_header.is_some() && source.id_pointer.is_some() {
        return Err(invalid(
            key("id_pointer"),
            "set id_header or id_pointer, not both",
        ));
    }
    if source.type_header.is_some() && source.type_pointer.is_some() {
        return Err(invalid(
            key("type_pointer"),
            "set type_header or type_pointer, not both",
        ));
    }
    Ok(())
}

/// Every source's rules, and names unique; returns the names, which destinations refer to.
pub(super) fn validate_sources(sources: &[SourceConfig]) -> Result<HashSet<&str>, Error> {
    let mut names = HashSet::new();
    for (i, source) in sources.iter().enumerate() {
        let key = |field: &str| format!("sources[{i}].{field}");
        if !is_valid_name(&source.name) {
            return Err(invalid(key("name"), NAME_RULE));
        }
        if !names.insert(source.name.as_str()) {
            return Err(invalid(
                key("name"),
                format!("duplicate source name {:?}", source.name),
            ));
        }
        if source.name == super::NOTICE_SOURCE {
            return Err(invalid(
                key("name"),
                format!("{:?} is reserved for relayd's operator notices", source.name),
            ));
        }
        validate_source(source, &key)?;
    }
    Ok(names)
}
