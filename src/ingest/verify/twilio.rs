//! Twilio: `X-Twilio-Signature: <base64>`, an HMAC keyed with the account's auth token
//! (SHA-1) or a SharedKey secret (the algorithm `X-Twilio-Webhooks-Signature-Settings`
//! names, SHA-1 or SHA-256) over the URL Twilio requested — the source's `public_url`
//! with the request's own query appended — followed, for a form body, by every POST
//! parameter as `name` + `value`, names sorted and each name's distinct values sorted.
//! A JSON body is covered instead by the URL's `bodySHA256` query parameter, the hex
//! SHA-256 of the body, which must match. The URL is tried with and without its port,
//! as Twilio's own `RequestValidator` does.
//!
//! Twilio signs no timestamp: the event id is the `I-Twilio-Idempotency-Token` header,
//! kept by Twilio's retries, so a replayed request is a `duplicate` (else the SHA-256 of
//! the body). The type is read from the parameters: `message.{MessageStatus|SmsStatus}`,
//! `call.{CallStatus}`, or `EventType`; a JSON body's `type`; else `twilio.webhook`.

use std::time::SystemTime;

use actix_web::http::header::HeaderMap;
use base64::Engine;
use ring::hmac;
use url::form_urlencoded;

use super::extract::{Body, IdSource};
use super::sample::Draft;
use super::{header_str, Error, SampleEvent, SignedRequest, VerifiedEvent, Verifier};
use crate::signing;

pub const SIGNATURE: &str = "x-twilio-signature";
pub const SETTINGS: &str = "x-twilio-webhooks-signature-settings";
pub const IDEMPOTENCY_TOKEN: &str = "i-twilio-idempotency-token";

/// The type of a request whose parameters name none.
const DEFAULT_TYPE: &str = "twilio.webhook";

/// A form body's parameters that are signed at most; more is abuse (Twilio's carry ~40).
const MAX_PARAMS: usize = 1024;

pub struct TwilioVerifier {
    secrets: Vec<Vec<u8>>,
    /// The public URL without and with its port (Twilio's signatures have used both).
    urls: [String; 2],
}

impl TwilioVerifier {
    /// `url`: the webhook URL as configured at Twilio, without a query (validated).
    pub fn new(secrets: Vec<Vec<u8>>, url: &str) -> Self {
        Self {
            secrets,
            urls: port_variants(url),
        }
    }

    /// The algorithm the request was signed with.
    fn algorithm(headers: &HeaderMap) -> Result<hmac::Algorithm, Error> {
        let named = header_str(headers, SETTINGS)
            .into_iter()
            .flat_map(|v| v.split(','))
            .filter_map(|part| part.split_once('='))
            .find(|(name, value)| name.trim() == "algorithm" && !value.trim().is_empty())
            .map(|(_, value)| value.trim().to_ascii_uppercase());
        match named.as_deref() {
            None | Some("HMAC_SHA1") => Ok(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
            Some("HMAC_SHA256") => Ok(hmac::HMAC_SHA256),
            Some(_) => Err(Error::InvalidSignature(format!(
                "{SETTINGS} names an algorithm other than HMAC_SHA1 or HMAC_SHA256"
            ))),
        }
    }
}

/// `url` with any port removed, and with its port (the scheme's default when it has
/// none): `remove_port` and `add_port` of Twilio's `RequestValidator`.
fn port_variants(url: &str) -> [String; 2] {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    // `user@host:port` or `[v6]:port`: the port follows the last ':' after any ']'.
    let host_end = authority.rfind(']').unwrap_or(0);
    let (host, port) = match authority[host_end..].rfind(':') {
        Some(i) => {
            let (host, port) = authority.split_at(host_end + i);
            (host, Some(&port[1..]))
        }
        None => (authority, None),
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else {
        "80"
    };
    [
        format!("{scheme}://{host}{path}"),
        format!("{scheme}://{host}:{}{path}", port.unwrap_or(default_port)),
    ]
}

/// A form body's parameters, in order (at most [`MAX_PARAMS`]).
fn form_params(body: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let params: Vec<(String, String)> = form_urlencoded::parse(body)
        .take(MAX_PARAMS + 1)
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    if params.len() > MAX_PARAMS {
        return Err(Error::InvalidPayload(format!(
            "a Twilio form body has at most {MAX_PARAMS} parameters"
        )));
    }
    Ok(params)
}

/// What follows the URL in the signed string of a form body: each name with each of its
/// distinct values, names and values sorted.
fn signed_params(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    sorted
        .into_iter()
        .map(|(name, value)| format!("{name}{value}"))
        .collect()
}

/// The type a request's parameters (or JSON body) name.
fn event_type(params: &[(String, String)], json: &Body<'_>) -> String {
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    if let Some(status) = param("MessageStatus").or_else(|| param("SmsStatus")) {
        format!("message.{status}")
    } else if let Some(status) = param("CallStatus") {
        format!("call.{status}")
    } else if let Some(kind) = param("EventType") {
        kind.to_string()
    } else {
        json.pointer_text("/type")
            .or_else(|| json.pointer_text("/0/type"))
            .unwrap_or_else(|| DEFAULT_TYPE.to_string())
    }
}

impl Verifier for TwilioVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<VerifiedEvent, Error> {
        self.verify_with_query(headers, "", body, now)
    }

    fn verify_with_query(
        &self,
        headers: &HeaderMap,
        query: &str,
        body: &[u8],
        _now: SystemTime,
    ) -> Result<VerifiedEvent, Error> {
        let algorithm = Self::algorithm(headers)?;
        let value = header_str(headers, SIGNATURE)
            .ok_or_else(|| Error::InvalidSignature("missing X-Twilio-Signature header".into()))?;
        let mac = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .filter(|mac| mac.len() == 20 || mac.len() == 32)
            .ok_or_else(|| Error::InvalidSignature("X-Twilio-Signature is not a base64 HMAC".into()))?;
        let body_hash = form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "bodySHA256")
            .map(|(_, hash)| hash.into_owned());
        // A JSON body is signed through its hash in the URL; a form body parameter by
        // parameter.
        let form = match &body_hash {
            Some(_) => Vec::new(),
            None => form_params(body)?,
        };
        let params = signed_params(&form);
        let suffix = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let signed = self.urls.iter().any(|url| {
            let parts: [&[u8]; 3] = [url.as_bytes(), suffix.as_bytes(), params.as_bytes()];
            self.secrets
                .iter()
                .any(|key| signing::verify_any_with(algorithm, key, &parts, &[&mac]))
        });
        if !signed {
            return Err(Error::InvalidSignature(
                "signature matches no configured secret (is public_url the webhook URL set at Twilio?)"
                    .into(),
            ));
        }
        if let Some(hash) = &body_hash {
            let actual = hex::encode(ring::digest::digest(&ring::digest::SHA256, body));
            if !hash.eq_ignore_ascii_case(&actual) {
                return Err(Error::InvalidSignature(
                    "bodySHA256 in the signed URL is not the SHA-256 of the body".into(),
                ));
            }
        }
        let json = Body::new(body);
        let event_id = match header_str(headers, IDEMPOTENCY_TOKEN)
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            Some(token) => token.to_string(),
            None => IdSource::BodyHash.extract(headers, &json)?,
        };
        Ok(VerifiedEvent {
            event_id,
            event_type: event_type(&form, &json),
        })
    }

    fn kept_headers(&self) -> Vec<String> {
        [IDEMPOTENCY_TOKEN, "x-home-region", "user-agent"]
            .map(String::from)
            .to_vec()
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        // `--type message.delivered` is sent as `MessageStatus=delivered`.
        let typed = match event.event_type.split_once('.') {
            Some(("message", status)) => ("MessageStatus", status),
            Some(("call", status)) => ("CallStatus", status),
            _ => ("EventType", event.event_type.as_str()),
        };
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("AccountSid", "ACrelaydtest")
            .append_pair("MessageSid", "SMrelaydtest")
            .append_pair(typed.0, typed.1)
            .append_pair("Body", "sent by relayd send-test-event")
            .finish()
            .into_bytes();
        let params = signed_params(&form_params(&body).unwrap_or_default());
        let key = self.secrets.first().map_or(&[][..], Vec::as_slice);
        let mac = signing::sign_with(
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            key,
            &[self.urls[0].as_bytes(), params.as_bytes()],
        );
        let mut draft = Draft::with_body(serde_json::Value::Null);
        draft.content_type("application/x-www-form-urlencoded");
        draft.header(IDEMPOTENCY_TOKEN, event.id.clone());
        draft.header(
            SIGNATURE,
            base64::engine::general_purpose::STANDARD.encode(mac.as_ref()),
        );
        Ok(draft.finish(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    // Twilio's documented example ("Validating signatures from Twilio"): auth token
    // 12345, this URL and these parameters sign to 0/KCTR6DLpKmkAf8muzZqo1nDgQ=.
    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php";
    const QUERY: &str = "foo=1&bar=2";
    const BODY: &[u8] =
        b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
    const DOCUMENTED: &str = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn verifier(url: &str) -> TwilioVerifier {
        TwilioVerifier::new(vec![b"other".to_vec(), TOKEN.as_bytes().to_vec()], url)
    }

    #[test]
    fn twilios_documented_example_verifies_only_for_its_url_query_and_body() {
        let now = SystemTime::now();
        let signed = headers(&[(SIGNATURE, DOCUMENTED)]);
        let event = verifier(URL)
            .verify_with_query(&signed, QUERY, BODY, now)
            .unwrap();
        assert_eq!(event.event_type, DEFAULT_TYPE);
        assert_eq!(
            event.event_id,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, BODY))
        );
        // Twilio may have signed the URL with its port: both forms are tried.
        assert!(verifier("https://mycompany.com:443/myapp.php")
            .verify_with_query(&signed, QUERY, BODY, now)
            .is_ok());
        assert!(verifier("https://mycompany.com/other.php")
            .verify_with_query(&signed, QUERY, BODY, now)
            .is_err());
        assert!(verifier(URL)
            .verify_with_query(&signed, "foo=1&bar=3", BODY, now)
            .is_err());
        let mut changed = BODY.to_vec();
        *changed.last_mut().unwrap() = b'3';
        assert!(verifier(URL)
            .verify_with_query(&signed, QUERY, &changed, now)
            .is_err());
        for bad in ["", "not base64!", "AAAA"] {
            assert!(matches!(
                verifier(URL).verify_with_query(&headers(&[(SIGNATURE, bad)]), QUERY, BODY, now),
                Err(Error::InvalidSignature(_))
            ));
        }
        let unknown = headers(&[(SIGNATURE, DOCUMENTED), (SETTINGS, "key=k1,algorithm=HMAC_MD5")]);
        assert!(matches!(
            verifier(URL).verify_with_query(&unknown, QUERY, BODY, now),
            Err(Error::InvalidSignature(m)) if m.contains("algorithm")
        ));
    }

    #[test]
    fn a_json_body_is_covered_by_its_hash_in_the_signed_url() {
        let body = br#"{"type":"com.twilio.messaging.message.delivered","id":"x"}"#;
        let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, body));
        let query = format!("bodySHA256={hash}");
        let mac = signing::sign_with(
            hmac::HMAC_SHA256,
            TOKEN.as_bytes(),
            &[format!("{URL}?{query}").as_bytes()],
        );
        let mac = base64::engine::general_purpose::STANDARD.encode(mac.as_ref());
        let signed = headers(&[
            (SIGNATURE, &mac),
            (SETTINGS, "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"),
            (IDEMPOTENCY_TOKEN, "idem-1"),
        ]);
        let now = SystemTime::now();
        let event = verifier(URL)
            .verify_with_query(&signed, &query, body, now)
            .unwrap();
        assert_eq!(event.event_id, "idem-1");
        assert_eq!(event.event_type, "com.twilio.messaging.message.delivered");
        let mut changed = body.to_vec();
        changed[3] ^= 1;
        assert!(matches!(
            verifier(URL).verify_with_query(&signed, &query, &changed, now),
            Err(Error::InvalidSignature(m)) if m.contains("bodySHA256")
        ));
    }

    #[test]
    fn the_type_comes_from_the_status_parameters() {
        let json = Body::new(b"");
        let params = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            event_type(&params(&[("SmsStatus", "received")]), &json),
            "message.received"
        );
        assert_eq!(
            event_type(
                &params(&[("CallStatus", "completed"), ("MessageStatus", "sent")]),
                &json
            ),
            "message.sent"
        );
        assert_eq!(
            event_type(&params(&[("CallStatus", "ringing")]), &json),
            "call.ringing"
        );
        assert_eq!(
            event_type(&params(&[("EventType", "onMessageAdded")]), &json),
            "onMessageAdded"
        );
    }

    #[test]
    fn the_url_is_tried_without_and_with_its_port() {
        assert_eq!(
            port_variants("https://a.example/x?"),
            [
                "https://a.example/x?".to_string(),
                "https://a.example:443/x?".to_string()
            ]
        );
        assert_eq!(
            port_variants("http://a.example:8080/x"),
            [
                "http://a.example/x".to_string(),
                "http://a.example:8080/x".to_string()
            ]
        );
        assert_eq!(
            port_variants("https://[::1]/"),
            ["https://[::1]/".to_string(), "https://[::1]:443/".to_string()]
        );
    }
}
