//! A source's dedup rule: an event's key is the SHA-256 of the values at the rule's JSON
//! pointers, and an event whose key one stored within the window holds is a duplicate
//! whatever its id. PostgreSQL settles it, in the statement that stores the event
//! ([`crate::db::events`], table `dedup_keys`), so concurrent arrivals with one key
//! store exactly one event.

use std::time::Duration;

use super::payload::Payload;
use crate::config::DedupConfig;
use crate::db::events::Dedup;

#[derive(Debug, Clone)]
pub struct DedupRule {
    pointers: Vec<String>,
    window: Duration,
}

impl DedupRule {
    pub fn of(config: &DedupConfig) -> Self {
        Self {
            pointers: config.key.clone(),
            window: config.window,
        }
    }

    /// This event's key and window; `None` when the body is not JSON or lacks one of the
    /// pointers (the event is then not deduplicated by the rule).
    pub fn key(&self, payload: &Payload<'_>) -> Option<Dedup> {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for pointer in &self.pointers {
            let value = if pointer.is_empty() {
                payload.json()?
            } else {
                payload.pointer(pointer)?
            };
            // Length-prefixed, so that no two lists of values hash alike.
            let text = serde_json::to_vec(value).ok()?;
            digest.update(&(text.len() as u64).to_be_bytes());
            digest.update(&text);
        }
        Some(Dedup {
            key: digest.finish().as_ref().to_vec(),
            window: self.window,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pointers: &[&str]) -> DedupRule {
        DedupRule::of(&DedupConfig {
            key: pointers.iter().map(|p| p.to_string()).collect(),
            window: Duration::from_secs(600),
        })
    }

    #[test]
    fn keys_follow_the_values_at_the_pointers_only() {
        let rule = rule(&["/type", "/data/object/id", "/data/object/updated_at"]);
        let key = |body: &str| rule.key(&Payload::new(body.as_bytes())).map(|d| d.key);
        let first = key(
            r#"{"id":"evt_1","type":"customer.updated","data":{"object":{"id":"cus_1","updated_at":7}}}"#,
        );
        let resent = key(
            r#"{"id":"evt_2","type":"customer.updated","data":{"object":{"id":"cus_1","updated_at":7,"x":1}}}"#,
        );
        let changed = key(
            r#"{"id":"evt_3","type":"customer.updated","data":{"object":{"id":"cus_1","updated_at":8}}}"#,
        );
        assert!(first.is_some());
        assert_eq!(first, resent, "a new id, the same change");
        assert_ne!(first, changed);
        assert_eq!(
            key(r#"{"type":"customer.updated","data":{"object":{"id":"cus_1"}}}"#),
            None,
            "a pointer missing"
        );
        assert_eq!(key("not json"), None);
        // "ab" + "c" and "a" + "bc" are different keys.
        let two = DedupRule::of(&DedupConfig {
            key: vec!["/a".into(), "/b".into()],
            window: Duration::from_secs(1),
        });
        assert_ne!(
            two.key(&Payload::new(br#"{"a":"ab","b":"c"}"#)).map(|d| d.key),
            two.key(&Payload::new(br#"{"a":"a","b":"bc"}"#)).map(|d| d.key)
        );
    }
}
