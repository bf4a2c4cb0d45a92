//! Bearer secrets (session ids, one-time codes, activation tokens) and CSRF tokens.
//!
//! A `SecretToken` travels to the browser in its encoded form and is stored only as its
//! SHA-256 hash, so a copy of the store signs nobody in. CSRF tokens are an HMAC of the
//! per-browser random value kept in the csrf cookie (the "signed double-submit cookie"
//! pattern), so nothing about them needs storing.

use std::fmt;

use aws_lc_rs::{digest, hmac};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{fill_random, RandomError};

const TOKEN_LEN: usize = 32;
/// base64url without padding of 32 bytes: ceil(256 / 6) characters.
const ENCODED_LEN: usize = 43;

/// 256 random bits. Debug prints `[redacted]`, and there is deliberately no `Display`, so
/// it cannot end up in a log line by accident; `encode()` is the one way out.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretToken([u8; TOKEN_LEN]);

impl SecretToken {
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; TOKEN_LEN];
        fill_random(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The form sent to the browser (cookie value, URL parameter): 43 characters of
    /// base64url (RFC 4648 §5), no padding.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Reads the encoded form back. Anything but exactly 43 base64url characters that
    /// decode canonically to 32 bytes is None, so each token has exactly one spelling.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != ENCODED_LEN
            || !text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let mut decoded = URL_SAFE_NO_PAD.decode(text).ok()?;
        let token = <[u8; TOKEN_LEN]>::try_from(decoded.as_slice())
            .ok()
            .map(Self);
        decoded.zeroize();
        token
    }

    /// SHA-256 of the raw bytes: the only form that is ever stored or looked up.
    pub fn hash(&self) -> [u8; 32] {
        let d = digest::digest(&digest::SHA256, &self.0);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// A 32-byte value carried in the token's encoding, such as a hash sent in a URL.
    pub fn from_bytes(bytes: [u8; TOKEN_LEN]) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8; TOKEN_LEN] {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The server's key for CSRF tokens. Debug prints `[redacted]`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct CsrfKey([u8; 32]);

impl CsrfKey {
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes)?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn tag(&self, binding: &[u8]) -> hmac::Tag {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.0), binding)
    }
}

impl fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The token for forms shown to the browser whose csrf cookie holds `binding`:
/// base64url(HMAC-SHA256(key, binding)), 43 characters.
pub fn csrf_token(key: &CsrfKey, binding: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(key.tag(binding))
}

/// Whether `submitted` is the token for `binding`, compared in constant time. An empty
/// binding (no csrf cookie) never validates.
pub fn csrf_valid(key: &CsrfKey, binding: &[u8], submitted: &str) -> bool {
    if binding.is_empty() {
        return false;
    }
    let expected = csrf_token(key, binding);
    expected.as_bytes().ct_eq(submitted.as_bytes()).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn encode_is_43_base64url_chars_and_parses_back() {
        for _ in 0..200 {
            let t = SecretToken::generate().unwrap();
            let e = t.encode();
            assert_eq!(e.len(), 43);
            assert!(e
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            let back = SecretToken::parse(&e).unwrap();
            assert_eq!(back.0, t.0);
            assert_eq!(back.hash(), t.hash());
        }
    }

    #[test]
    fn generated_tokens_differ() {
        let a = SecretToken::generate().unwrap();
        let b = SecretToken::generate().unwrap();
        assert_ne!(a.encode(), b.encode());
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn hash_is_sha256_of_the_raw_bytes() {
        let t = SecretToken([0u8; 32]);
        // SHA-256 of 32 zero bytes.
        let expected = "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925";
        let hex: String = t.hash().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        assert_eq!(t.encode(), "A".repeat(43));
    }

    #[test]
    fn parse_refuses_hostile_input_without_panicking() {
        let good = SecretToken::generate().unwrap().encode();
        let long = "A".repeat(100_000);
        let cases = vec![
            String::new(),
            "A".repeat(42),
            "A".repeat(44),
            format!("{good}="),
            format!("{}=", &good[..42]),
            good.replace(|_| true, "+").chars().take(43).collect(),
            format!("{}/", &good[..42]),
            format!("{} ", &good[..42]),
            format!("{}\0", &good[..42]),
            format!("{}é", &good[..41]),
            long,
            // 43 chars whose last one carries bits beyond 256: not canonical.
            format!("{}B", "A".repeat(42)),
            format!("{}_", "A".repeat(42)),
        ];
        for c in cases {
            assert!(SecretToken::parse(&c).is_none(), "{c:?}");
        }
        // The canonical neighbours are fine.
        assert!(SecretToken::parse(&format!("{}E", "A".repeat(42))).is_some());
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = SecretToken::generate().unwrap();
        assert_eq!(format!("{t:?}"), "[redacted]");
        let k = CsrfKey::generate().unwrap();
        assert_eq!(format!("{k:?}"), "[redacted]");
    }

    #[test]
    fn csrf_token_is_hmac_sha256_and_validates() {
        let key = CsrfKey::from_bytes([0x0b; 32]);
        let tok = csrf_token(&key, b"browser-1");
        assert_eq!(tok.len(), 43);
        assert!(csrf_valid(&key, b"browser-1", &tok));
        // Deterministic for a key and binding.
        assert_eq!(tok, csrf_token(&key, b"browser-1"));
        // It is exactly HMAC-SHA256(key, binding), base64url without padding.
        let direct = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &[0x0b; 32]),
            b"browser-1",
        );
        assert_eq!(tok, URL_SAFE_NO_PAD.encode(direct));
    }

    #[test]
    fn csrf_token_for_another_browser_or_key_is_refused() {
        let key = CsrfKey::generate().unwrap();
        let other_key = CsrfKey::generate().unwrap();
        let tok = csrf_token(&key, b"browser-1");
        assert!(!csrf_valid(&key, b"browser-2", &tok));
        assert!(!csrf_valid(&other_key, b"browser-1", &tok));
        assert!(!csrf_valid(&key, b"", &csrf_token(&key, b"")));
    }

    #[test]
    fn csrf_hostile_submissions_are_refused() {
        let key = CsrfKey::generate().unwrap();
        let tok = csrf_token(&key, b"b");
        let huge = "A".repeat(1 << 20);
        for bad in [
            "",
            &tok[..42],
            &format!("{tok}A"),
            &format!("{tok}="),
            &tok.to_uppercase(),
            &huge,
            "\0",
        ] {
            if bad == tok {
                continue;
            }
            assert!(!csrf_valid(&key, b"b", bad), "{bad:?}");
        }
    }
}
