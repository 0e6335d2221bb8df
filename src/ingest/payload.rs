//! A request body, parsed as JSON at most once and only if something asks: the
//! verifiers (ids, types), the ordering keys and the payload filters all read it
//! through this.

use std::cell::OnceCell;

pub struct Payload<'a> {
    pub bytes: &'a [u8],
    json: OnceCell<Option<serde_json::Value>>,
}

impl<'a> Payload<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            json: OnceCell::new(),
        }
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(self.bytes).ok())
            .as_ref()
    }

    /// The value at the JSON pointer `pointer`, if the body is JSON and has one there.
    pub fn pointer(&self, pointer: &str) -> Option<&serde_json::Value> {
        self.json()?.pointer(pointer)
    }

    /// The string (or number) at `pointer`, if the body is JSON and has one there.
    pub fn pointer_text(&self, pointer: &str) -> Option<String> {
        match self.pointer(pointer)? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}
