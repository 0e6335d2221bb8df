//! HMAC signing and constant-time verification (ring), shared by the inbound verifiers
//! and the outbound Standard Webhooks signer: SHA-256, and SHA-1 for the one provider
//! that still signs with it (Twilio's auth-token signatures).
//!
//! Every comparison of a received MAC goes through [`verify`], which is `ring::hmac::verify`
//! and therefore constant-time. Nothing here logs: keys and MACs never leave these
//! functions except as the return value.

use base64::Engine;
use ring::hmac;

/// Prefix of Standard Webhooks secrets: `whsec_` followed by base64 of the key bytes.
const WHSEC_PREFIX: &str = "whsec_";

/// HMAC-SHA256 over the concatenation of `parts`, without building the message.
pub fn sign(key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    sign_with(hmac::HMAC_SHA256, key, parts)
}

/// [`sign`] with another HMAC algorithm.
pub fn sign_with(algorithm: hmac::Algorithm, key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    let key = hmac::Key::new(algorithm, key);
    let mut context = hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    context.sign()
}

/// True when `mac` is the HMAC-SHA256 of the concatenated `parts` under `key`.
/// Constant-time in the comparison.
pub fn verify(key: &[u8], parts: &[&[u8]], mac: &[u8]) -> bool {
    verify_any(key, parts, &[mac])
}

/// True when any of `macs` is the HMAC-SHA256 of the concatenated `parts` under `key`.
/// The message (a body of up to a megabyte) is authenticated once, however many
/// candidates a header carries; each candidate is compared in constant time (through
/// [`TokenMatcher`]), and all of them are compared.
pub fn verify_any<M: AsRef<[u8]>>(key: &[u8], parts: &[&[u8]], macs: &[M]) -> bool {
    verify_any_with(hmac::HMAC_SHA256, key, parts, macs)
}

/// [`verify_any`] with another HMAC algorithm.
pub fn verify_any_with<M: AsRef<[u8]>>(
    algorithm: hmac::Algorithm,
    key: &[u8],
    parts: &[&[u8]],
    macs: &[M],
) -> bool {
    if macs.is_empty() {
        return false;
    }
    let expected = sign_with(algorithm, key, parts);
    let Ok(matcher) = TokenMatcher::new(expected.as_ref()) else {
        return false;
    };
    macs.iter()
        .fold(false, |found, mac| matcher.matches(mac.as_ref()) | found)
}

/// The key bytes of a `whsec_<base64>` secret, or `None` when it is not one.
pub fn decode_whsec(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(WHSEC_PREFIX)?;
    let key = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    (!key.is_empty()).then_some(key)
}

/// The bytes of an Ed25519 public key written as 64 hex digits (Discord's application
/// public key), or `None` when it is not one.
pub fn decode_ed25519_public_key(hex_key: &str) -> Option<Vec<u8>> {
    hex::decode(hex_key.trim()).ok().filter(|k| k.len() == 32)
}

/// The Standard Webhooks `webhook-signature` value (`v1,<base64>`) for one message.
pub fn standard_webhooks_signature(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let tag = sign(key, &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body]);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// Compares presented tokens with one expected secret in constant time.
///
/// Both sides are reduced to HMACs under a random per-process key and compared with
/// `ring::hmac::verify`, so neither the content nor the length of the secret leaks
/// through timing (ring's plain constant-time comparison is deprecated).
pub struct TokenMatcher {
    key: hmac::Key,
    expected: hmac::Tag,
}

impl TokenMatcher {
    pub fn new(expected: &[u8]) -> Result<Self, ring::error::Unspecified> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())?;
        let expected = hmac::sign(&key, expected);
        Ok(Self { key, expected })
    }

    pub fn matches(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, self.expected.as_ref()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_of_several_candidates_verifies_and_only_the_right_one() {
        let tag = sign(b"key", &[b"a.", b"body"]);
        let right = tag.as_ref().to_vec();
        let wrong = vec![0u8; 32];
        assert!(verify_any(b"key", &[b"a.body"], &[&wrong, &right]));
        assert!(!verify_any(
            b"key",
            &[b"a.body"],
            &[&wrong, &wrong[..31].to_vec()]
        ));
        assert!(!verify_any(b"other", &[b"a.body"], &[&right]));
        assert!(!verify_any::<&[u8]>(b"key", &[b"a.body"], &[]));
        assert!(verify(b"key", &[b"a", b".body"], &right));
    }

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_spec_vector() {
        let key = decode_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = standard_webhooks_signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn verify_accepts_only_the_right_mac() {
        let tag = sign(b"key", &[b"a", b"b"]);
        assert!(verify(b"key", &[b"ab"], tag.as_ref()));
        assert!(!verify(b"other", &[b"ab"], tag.as_ref()));
        assert!(!verify(b"key", &[b"abc"], tag.as_ref()));
        assert!(!verify(b"key", &[b"ab"], &tag.as_ref()[..31]));
    }

    #[test]
    fn token_matcher_accepts_only_the_exact_token() {
        let matcher = TokenMatcher::new(b"admin-token-0123456789").unwrap();
        assert!(matcher.matches(b"admin-token-0123456789"));
        assert!(!matcher.matches(b"admin-token-012345678"));
        assert!(!matcher.matches(b"admin-token-01234567890"));
        assert!(!matcher.matches(b""));
    }

    #[test]
    fn whsec_decoding_rejects_malformed_secrets() {
        assert!(decode_whsec("whsec_").is_none());
        assert!(decode_whsec("whsec_!!!").is_none());
        assert!(decode_whsec("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert_eq!(decode_whsec("whsec_AQID").unwrap(), vec![1, 2, 3]);
    }
}
