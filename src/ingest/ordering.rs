//! An event's ordering key for each ordered destination: a JSON pointer into the
//! payload, a request header, or the source. Decided once at ingest and stored on the
//! delivery ([`crate::db::ordering`] keeps the order); an event without the key is
//! delivered unordered.

use actix_web::http::header::{HeaderMap, HeaderName};

use super::payload::Payload;
use crate::config::OrderingConfig;

/// Where a destination finds an event's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRule {
    /// A JSON pointer into the payload (`/data/object/customer`).
    Pointer(String),
    Header(HeaderName),
    Source,
}

impl KeyRule {
    /// The rule of a validated `ordering` table (`None` if it is somehow not valid).
    pub fn of(config: &OrderingConfig) -> Option<Self> {
        match (&config.key, &config.key_header) {
            (Some(key), None) if key == "source" => Some(Self::Source),
            (Some(pointer), None) => Some(Self::Pointer(pointer.clone())),
            (None, Some(header)) => HeaderName::from_bytes(header.as_bytes()).ok().map(Self::Header),
            _ => None,
        }
    }

    /// The event's key, as stored; `None` when the event has none (the field or header
    /// is missing, empty, or not a string, number or boolean).
    pub fn key(&self, source: &str, headers: &HeaderMap, payload: &Payload<'_>) -> Option<String> {
        let value = match self {
            Self::Source => source.to_string(),
            Self::Header(name) => headers.get(name)?.to_str().ok()?.to_string(),
            Self::Pointer(pointer) => match payload.json()?.pointer(pointer)? {
                serde_json::Value::String(text) => text.clone(),
                serde_json::Value::Number(number) => number.to_string(),
                serde_json::Value::Bool(flag) => flag.to_string(),
                _ => return None,
            },
        };
        (!value.is_empty()).then(|| crate::db::ordering::stored_key(&value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(key: Option<&str>, header: Option<&str>) -> KeyRule {
        KeyRule::of(&OrderingConfig {
            key: key.map(String::from),
            key_header: header.map(String::from),
            on_dead: Default::default(),
        })
        .expect("valid rule")
    }

    #[test]
    fn a_pointer_finds_strings_and_numbers_and_nothing_else() {
        let body = br#"{"data":{"object":{"customer":"cus_1","n":42,"o":{},"e":"","z":null}}}"#;
        let payload = Payload::new(body);
        let headers = HeaderMap::new();
        let key = |pointer: &str| rule(Some(pointer), None).key("stripe", &headers, &payload);
        assert_eq!(key("/data/object/customer").as_deref(), Some("cus_1"));
        assert_eq!(key("/data/object/n").as_deref(), Some("42"));
        assert_eq!(key("/data/object/o"), None);
        assert_eq!(key("/data/object/e"), None);
        assert_eq!(key("/data/object/z"), None);
        assert_eq!(key("/data/missing"), None);
        let not_json = Payload::new(b"a=1&b=2");
        assert_eq!(rule(Some("/a"), None).key("s", &headers, &not_json), None);
    }

    #[test]
    fn a_header_or_the_source_is_the_key() {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-shopify-shop-domain"),
            "shop.example".parse().unwrap(),
        );
        let payload = Payload::new(b"{}");
        let by_header = rule(None, Some("X-Shopify-Shop-Domain"));
        assert_eq!(
            by_header.key("shopify", &headers, &payload).as_deref(),
            Some("shop.example")
        );
        assert_eq!(by_header.key("shopify", &HeaderMap::new(), &payload), None);
        assert_eq!(
            rule(Some("source"), None)
                .key("github", &headers, &payload)
                .as_deref(),
            Some("github")
        );
    }

    #[test]
    fn long_or_unprintable_keys_are_stored_as_their_digest() {
        let long = "k".repeat(crate::db::ordering::MAX_KEY_BYTES + 1);
        let stored = crate::db::ordering::stored_key(&long);
        assert!(
            stored.starts_with("sha256:") && stored.len() == 7 + 64,
            "{stored}"
        );
        assert_eq!(
            stored,
            crate::db::ordering::stored_key(&long),
            "the same key each time"
        );
        assert!(crate::db::ordering::stored_key("a\u{0}b").starts_with("sha256:"));
        assert_eq!(crate::db::ordering::stored_key("cus_1"), "cus_1");
    }
}
