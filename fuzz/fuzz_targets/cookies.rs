//! Fuzzes reading and stripping the `Cookie` header (`web::cookies`) and parsing the
//! session token carried in it (`auth::SecretToken::parse`).
//!
//! Input: bytes split on `\n` (never valid inside a header value), each piece one
//! `Cookie` header value; pieces `HeaderValue` refuses are skipped, as hyper would never
//! hand them over.
#![no_main]

use http::header::{HeaderMap, HeaderValue, COOKIE};
use libfuzzer_sys::fuzz_target;
use portcullis::auth::SecretToken;
use portcullis::web::cookies;

const SESSION: &str = "portcullis-session";

/// `name=value` pairs as strip_own must see them: split on `;`, space/tab trimmed
/// (the only whitespace a header value can hold), empty ones dropped.
fn pairs(headers: &HeaderMap) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for v in headers.get_all(COOKIE) {
        for p in v.as_bytes().split(|b| *b == b';') {
            let t = p.trim_ascii();
            if !t.is_empty() {
                out.push(t.to_vec());
            }
        }
    }
    out
}

fn name_of(pair: &[u8]) -> &[u8] {
    pair.split(|b| *b == b'=')
        .next()
        .unwrap_or(pair)
        .trim_ascii()
}

fn is_ours(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with(b"portcullis") || lower.starts_with(b"__host-portcullis")
}

/// The independent oracle for `SecretToken::parse`: 43 base64url characters whose last
/// one carries no stray bits (43 × 6 = 258 bits for 256, so its low 2 bits must be 0).
fn canonical_token(s: &str) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    b.len() == 43
        && b.iter().all(|c| ALPHABET.contains(c))
        && ALPHABET
            .iter()
            .position(|c| Some(c) == b.last())
            .is_some_and(|i| i % 4 == 0)
}

fn check_token(s: &str) {
    let parsed = SecretToken::parse(s);
    assert_eq!(
        parsed.is_some(),
        canonical_token(s),
        "SecretToken::parse({s:?})"
    );
    if let Some(t) = parsed {
        assert_eq!(t.encode(), s, "token does not round-trip");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for piece in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(piece) {
            headers.append(COOKIE, v);
        }
        if let Ok(s) = std::str::from_utf8(piece) {
            check_token(s);
        }
    }

    let session = cookies::get(&headers, SESSION).map(str::to_owned);
    if let Some(v) = &session {
        check_token(v);
        // What `get` returned really is the value of a cookie of that name.
        assert!(cookies::cookie_pairs(&headers).any(|(k, val)| k == SESSION && val == v));
    }

    let before = pairs(&headers);
    let expected_kept: Vec<&Vec<u8>> = before.iter().filter(|p| !is_ours(name_of(p))).collect();
    cookies::strip_own(&mut headers);
    let after = pairs(&headers);

    for p in &after {
        assert!(!is_ours(name_of(p)), "our cookie survived: {p:?}");
    }
    // Everyone else's cookies are kept, in order, byte for byte.
    let after_refs: Vec<&Vec<u8>> = after.iter().collect();
    assert_eq!(after_refs, expected_kept, "other cookies changed");
    assert_eq!(cookies::get(&headers, SESSION), None);
    // Stripping is idempotent.
    let once: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    cookies::strip_own(&mut headers);
    let twice: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    assert_eq!(once, twice);
});
