//! Where a source's event id and type come from: a header, a JSON pointer into the
//! body, or (ids only, when configured) the SHA-256 of the body.

use actix_web::http::header::HeaderMap;

use super::{header_str, Error};
use crate::config::SourceConfig;

/// The event type used when a source carries none.
pub const UNKNOWN_TYPE: &str = "unknown";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    Header(String),
    Pointer(String),
    BodyHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeSource {
    Header(String),
    Pointer(String),
    Unknown,
}

impl IdSource {
    /// The configured id source of an `hmac`/`none` source, if one is set.
    pub fn from_config(source: &SourceConfig) -> Option<Self> {
        if let Some(header) = &source.id_header {
            Some(Self::Header(header.to_ascii_lowercase()))
        } else if let Some(pointer) = &source.id_pointer {
            Some(Self::Pointer(pointer.clone()))
        } else if source.id_from_body_hash {
            Some(Self::BodyHash)
        } else {
            None
        }
    }

    pub fn header(&self) -> Option<&str> {
        match self {
            Self::Header(name) => Some(name),
            _ => None,
        }
    }

    /// The event id of this request.
    pub fn extract(&self, headers: &HeaderMap, body: &Body<'_>) -> Result<String, Error> {
        let id = match self {
            Self::Header(name) => header_str(headers, name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
                .ok_or_else(|| Error::InvalidPayload(format!("missing event id header {name}")))?,
            Self::Pointer(pointer) => body.pointer_text(pointer).ok_or_else(|| {
                Error::InvalidPayload(format!("the JSON body has no event id at {pointer}"))
            })?,
            Self::BodyHash => hex::encode(ring::digest::digest(&ring::digest::SHA256, body.bytes)),
        };
        Ok(id)
    }
}

impl TypeSource {
    pub fn from_config(source: &SourceConfig) -> Self {
        if let Some(header) = &source.type_header {
            Self::Header(header.to_ascii_lowercase())
        } else if let Some(pointer) = &source.type_pointer {
            Self::Pointer(pointer.clone())
        } else {
            Self::Unknown
        }
    }

    pub fn header(&self) -> Option<&str> {
        match self {
            Self::Header(name) => Some(name),
            _ => None,
        }
    }

    /// The event type of this request; `unknown` when absent.
    pub fn extract(&self, headers: &HeaderMap, body: &Body<'_>) -> String {
        let found = match self {
            Self::Header(name) => header_str(headers, name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from),
            Self::Pointer(pointer) => body.pointer_text(pointer),
            Self::Unknown => None,
        };
        found.unwrap_or_else(|| UNKNOWN_TYPE.to_string())
    }
}

/// The request body as the verifiers read it.
pub use crate::ingest::payload::Payload as Body;

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    #[test]
    fn ids_come_from_headers_pointers_or_the_body_hash() {
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-id"), HeaderValue::from_static("abc"));
        let body = Body::new(br#"{"data":{"id":42},"kind":"order.paid"}"#);
        assert_eq!(
            IdSource::Header("x-id".into()).extract(&headers, &body).unwrap(),
            "abc"
        );
        assert_eq!(
            IdSource::Pointer("/data/id".into())
                .extract(&headers, &body)
                .unwrap(),
            "42"
        );
        assert_eq!(
            IdSource::BodyHash.extract(&headers, &Body::new(b"abc")).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(IdSource::Pointer("/nope".into())
            .extract(&headers, &body)
            .is_err());
        assert!(IdSource::Header("x-missing".into())
            .extract(&headers, &body)
            .is_err());
    }

    #[test]
    fn types_fall_back_to_unknown() {
        let headers = HeaderMap::new();
        let body = Body::new(br#"{"kind":"order.paid"}"#);
        assert_eq!(
            TypeSource::Pointer("/kind".into()).extract(&headers, &body),
            "order.paid"
        );
        assert_eq!(
            TypeSource::Pointer("/type".into()).extract(&headers, &body),
            "unknown"
        );
        assert_eq!(
            TypeSource::Unknown.extract(&headers, &Body::new(b"not json")),
            "unknown"
        );
    }
}
