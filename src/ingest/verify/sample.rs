//! Requests as a source's provider would send them, for `relayd send-test-event`.
//!
//! Every verifier can sign a sample event with its source's first secret — the inverse
//! of its `verify`, written beside it — so the command cannot drift from what ingest
//! accepts. This module owns the shared part: the sample body (shaped like a Stripe
//! event) and placing the id and type where a configured source reads them.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::extract::{IdSource, TypeSource};

/// The event type `relayd send-test-event` sends unless told otherwise.
pub const DEFAULT_TYPE: &str = "relayd.test";

/// What to send.
#[derive(Debug, Clone)]
pub struct SampleEvent {
    /// The provider's event id (ignored by a source whose ids are body hashes).
    pub id: String,
    pub event_type: String,
    /// When it is signed (the timestamp of timestamped schemes).
    pub at: SystemTime,
    /// The sender's own signing key, for kinds whose sources hold only a public key
    /// (Discord: an Ed25519 seed); the others sign with the source's first secret.
    pub private_key: Option<Vec<u8>>,
}

impl SampleEvent {
    /// Event `id` of type `event_type`, signed now, with no private key.
    pub fn new(id: impl Into<String>, event_type: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            event_type: event_type.into(),
            at: SystemTime::now(),
            private_key: None,
        }
    }
}

/// A signed request: headers (lower-case names) and the exact body bytes signed.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[cfg(test)]
impl SignedRequest {
    /// The headers as a request would carry them.
    pub fn header_map(&self) -> actix_web::http::header::HeaderMap {
        use actix_web::http::header::{HeaderName, HeaderValue};
        let mut map = actix_web::http::header::HeaderMap::new();
        for (name, value) in &self.headers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        map
    }
}

/// A request being built by a verifier's `sign`.
pub(super) struct Draft {
    headers: Vec<(String, String)>,
    body: Value,
}

impl Draft {
    /// The sample body: `id`, `type`, `created` and a small `data.object`, as Stripe and
    /// most JSON providers shape an event.
    pub fn new(event: &SampleEvent) -> Self {
        let body = json!({
            "id": event.id,
            "object": "event",
            "type": event.event_type,
            "created": unix_seconds(event.at),
            "livemode": false,
            "data": { "object": { "id": "relayd_test_object", "note": "sent by relayd send-test-event" } },
        });
        Self {
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        }
    }

    /// A provider's own body shape instead of the sample's.
    pub fn with_body(body: Value) -> Self {
        Self {
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        }
    }

    /// For a provider whose body is not JSON (it is then given to [`Draft::finish`]).
    pub fn content_type(&mut self, value: &str) {
        self.headers.retain(|(name, _)| name != "content-type");
        self.header("content-type", value);
    }

    pub fn header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push((name.to_string(), value.into()));
    }

    /// Puts the id where `source` reads it (a body-hash id needs nothing).
    pub fn place_id(&mut self, source: &IdSource, id: &str) {
        match source {
            IdSource::Header(name) => self.header(name, id),
            IdSource::Pointer(pointer) => set_pointer(&mut self.body, pointer, id.into()),
            IdSource::BodyHash => {}
        }
    }

    /// Puts the type where `source` reads it (nowhere for a source without types).
    pub fn place_type(&mut self, source: &TypeSource, event_type: &str) {
        match source {
            TypeSource::Header(name) => self.header(name, event_type),
            TypeSource::Pointer(pointer) => set_pointer(&mut self.body, pointer, event_type.into()),
            TypeSource::Unknown => {}
        }
    }

    /// The body bytes, final: sign these and then [`Draft::finish`] with them.
    pub fn body(&self) -> Vec<u8> {
        self.body.to_string().into_bytes()
    }

    pub fn finish(self, body: Vec<u8>) -> SignedRequest {
        SignedRequest {
            headers: self.headers,
            body,
        }
    }
}

pub(super) fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Sets `value` at the JSON pointer `pointer` (RFC 6901), making objects on the way
/// and replacing whatever is not an object there.
fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, path)) = tokens.split_last() else {
        *root = value;
        return;
    };
    let mut node = root;
    for token in path {
        if !node.is_object() {
            *node = json!({});
        }
        node = node
            .as_object_mut()
            .expect("made an object above")
            .entry(token.clone())
            .or_insert_with(|| json!({}));
    }
    if !node.is_object() {
        *node = json!({});
    }
    node.as_object_mut()
        .expect("made an object above")
        .insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_pointer_makes_the_path_and_unescapes_tokens() {
        let mut body = json!({ "data": { "object": "not an object" } });
        set_pointer(&mut body, "/data/object/id", "x".into());
        set_pointer(&mut body, "/meta/a~1b/c~0d", "y".into());
        assert_eq!(body.pointer("/data/object/id"), Some(&json!("x")));
        assert_eq!(body["meta"]["a/b"]["c~d"], json!("y"));
    }
}
