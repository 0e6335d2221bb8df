//! The limits on what ingest stores, checked once every verifier has spoken and before
//! anything is stored: each field must fit its column and index and, later, the AMQP
//! field it is published in. A request that breaks one is the sender's error (retrying
//! it can never succeed), so it gets a 400 naming the field, and nothing is stored.

use actix_web::http::header::{self, HeaderMap};

use super::verify::VerifiedEvent;

/// The longest event id, event type and `Content-Type`, in bytes. The content type is
/// published as an AMQP short string (at most 255 bytes); the id is a btree key (an
/// entry must fit in ~2.7 KB) and the type a routing input, kept to the same bound.
pub const MAX_FIELD_BYTES: usize = 255;

/// The longest value of a request header that is stored with the event.
pub const MAX_HEADER_BYTES: usize = 1024;

/// The content type stored when a provider sends none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// What ingest stores of a request besides its body, once checked.
pub struct Checked {
    pub content_type: String,
    pub headers: serde_json::Value,
}

/// Checks the verified id and type, the `Content-Type`, and the values of the headers
/// in `kept` (lower-case names) that are present.
pub fn check(verified: &VerifiedEvent, headers: &HeaderMap, kept: &[String]) -> Result<Checked, String> {
    text("event id", &verified.event_id, MAX_FIELD_BYTES)?;
    text("event type", &verified.event_type, MAX_FIELD_BYTES)?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => DEFAULT_CONTENT_TYPE,
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| "Content-Type must be printable ASCII".to_string())?;
            text("Content-Type", value, MAX_FIELD_BYTES)?;
            value
        }
    };
    let mut stored = serde_json::Map::new();
    for name in kept {
        let Some(value) = headers.get(name.as_str()) else {
            continue;
        };
        let value = value
            .to_str()
            .map_err(|_| format!("header {name} must be printable ASCII"))?;
        text(&format!("header {name}"), value, MAX_HEADER_BYTES)?;
        stored.insert(name.clone(), serde_json::Value::from(value));
    }
    Ok(Checked {
        content_type: content_type.to_string(),
        headers: serde_json::Value::Object(stored),
    })
}

/// `value` is 1 to `max` bytes long and has no control characters (NUL among them: a
/// text column cannot hold it).
fn text(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > max {
        return Err(format!(
            "{what} is {} bytes; at most {max} are accepted",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} contains a control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn event(id: &str, event_type: &str) -> VerifiedEvent {
        VerifiedEvent {
            event_id: id.into(),
            event_type: event_type.into(),
        }
    }

    #[test]
    fn ids_and_types_are_bounded_and_free_of_control_characters() {
        let none = HeaderMap::new();
        assert!(check(&event(&"a".repeat(255), &"b".repeat(255)), &none, &[]).is_ok());
        for (id, event_type) in [
            ("", "t"),
            ("i", ""),
            (&*"a".repeat(256), "t"),
            ("i", &*"b".repeat(256)),
            ("a\u{0}b", "t"),
            ("i", "x\u{7}"),
            ("i\u{85}", "t"),
        ] {
            assert!(
                check(&event(id, event_type), &none, &[]).is_err(),
                "{id:?} {event_type:?}"
            );
        }
    }

    #[test]
    fn content_type_defaults_and_is_bounded_and_kept_headers_are_checked() {
        let mut headers = HeaderMap::new();
        let checked = check(&event("i", "t"), &headers, &[]).unwrap();
        assert_eq!(checked.content_type, DEFAULT_CONTENT_TYPE);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(
            HeaderName::from_static("user-agent"),
            HeaderValue::from_static("ua/1"),
        );
        let checked = check(
            &event("i", "t"),
            &headers,
            &["user-agent".into(), "x-absent".into()],
        )
        .unwrap();
        assert_eq!(checked.content_type, "text/plain");
        assert_eq!(checked.headers, serde_json::json!({ "user-agent": "ua/1" }));

        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&"c".repeat(256)).unwrap(),
        );
        assert!(check(&event("i", "t"), &headers, &[]).is_err());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_bytes(b"text/\xe9").unwrap(),
        );
        assert!(check(&event("i", "t"), &headers, &[]).is_err());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(
            HeaderName::from_static("user-agent"),
            HeaderValue::from_str(&"u".repeat(1025)).unwrap(),
        );
        assert!(check(&event("i", "t"), &headers, &["user-agent".into()]).is_err());
    }
}
