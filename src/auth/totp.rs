//! TOTP (RFC 6238 over RFC 4226 HOTP): secrets, the otpauth URI and its QR code, and the
//! code check with its ±1 step window and replay refusal.

use std::fmt;

use aws_lc_rs::hmac;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{fill_random, RandomError};
use crate::clock::UnixSeconds;

/// Seconds per time step (RFC 6238 §5.2 recommends 30).
pub const TOTP_PERIOD: u64 = 30;
/// Digits per code; what every authenticator app shows.
pub const TOTP_DIGITS: u32 = 6;
/// Length of a secret: 160 bits, the HMAC-SHA1 output size (RFC 4226 §4 R6).
const SECRET_LEN: usize = 20;

/// A user's shared TOTP secret. Never printed, wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TotpSecret([u8; SECRET_LEN]);

impl TotpSecret {
    /// 20 fresh random bytes from the OS.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; SECRET_LEN];
        fill_random(&mut bytes)?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// For bytes coming back from storage: None unless exactly 20 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; SECRET_LEN]>::try_from(bytes).ok().map(Self)
    }

    /// Reads the text form back (any case; spaces and `=` padding ignored). None unless it
    /// is valid base32 of exactly 20 bytes. Tests read the secret off the enrolment page
    /// with this, as a person would type it into an app.
    pub fn from_base32(text: &str) -> Option<Self> {
        if text.len() > 128 {
            return None;
        }
        let mut bits: u64 = 0;
        let mut nbits = 0u32;
        let mut out = Vec::with_capacity(SECRET_LEN);
        for c in text.chars().filter(|c| *c != ' ' && *c != '=') {
            let v = match c.to_ascii_uppercase() {
                u @ 'A'..='Z' => u as u64 - 'A' as u64,
                d @ '2'..='7' => d as u64 - '2' as u64 + 26,
                _ => return None,
            };
            bits = (bits << 5) | v;
            nbits += 5;
            if nbits >= 8 {
                nbits -= 8;
                out.push((bits >> nbits) as u8);
                bits &= (1 << nbits) - 1;
            }
        }
        // 32 characters carry exactly 160 bits; a leftover character or stray low bits
        // mean the text was not one 20-byte secret.
        let canonical = nbits < 5 && bits == 0;
        let secret = Self::from_slice(&out).filter(|_| canonical);
        out.zeroize();
        bits.zeroize();
        secret
    }

    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// RFC 4648 §6 base32, upper case, no padding (20 bytes encode to exactly 32
    /// characters, so there would be none anyway).
    pub fn base32(&self) -> String {
        const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut out = String::with_capacity(32);
        for chunk in self.0.chunks(5) {
            let mut buf = [0u8; 5];
            buf[..chunk.len()].copy_from_slice(chunk);
            let n = u64::from_be_bytes([0, 0, 0, buf[0], buf[1], buf[2], buf[3], buf[4]]);
            let chars = (chunk.len() * 8).div_ceil(5);
            for i in 0..chars {
                let idx = ((n >> (35 - 5 * i)) & 0x1f) as usize;
                out.push(char::from(ALPHABET[idx]));
            }
        }
        out
    }

    /// The base32 text in groups of four ("ABCD EFGH …") for typing by hand.
    pub fn base32_grouped(&self) -> String {
        let plain = self.base32();
        let mut out = String::with_capacity(plain.len() + plain.len() / 4);
        for (i, c) in plain.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Everything but RFC 3986 unreserved characters and '@' is percent-encoded, so ':' '&'
/// '=' '?' '#' '/' '+' and spaces (as %20, which authenticator apps decode; '+' they may
/// read as a space) in an issuer or user name cannot break the label or the query. '@' is
/// legal in both (RFC 3986 §3.3, §3.4) and stays readable, as in the Key URI format's own
/// example `ACME%20Co:john.doe@email.com`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');

/// The Key URI Format understood by Google Authenticator and every other app:
/// `otpauth://totp/ISSUER:USERNAME?secret=…&issuer=ISSUER&algorithm=SHA1&digits=6&period=30`.
/// The issuer appears both as the label prefix and as a parameter, as the format advises.
pub fn otpauth_uri(issuer: &str, username: &str, secret: &TotpSecret) -> String {
    let issuer = utf8_percent_encode(issuer, COMPONENT).to_string();
    let username = utf8_percent_encode(username, COMPONENT);
    format!(
        "otpauth://totp/{issuer}:{username}?secret={}&issuer={issuer}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_PERIOD}",
        secret.base32()
    )
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    #[error("The sign-in details are too long to fit in a QR code. Use a shorter issuer or user name, or enter the key by hand.")]
    TooLong,
}

/// The URI as an inline SVG QR code: error correction M (15 %, tolerates glare and a
/// shaky camera), the standard 4-module quiet zone, at least 240 px square, black on
/// white. No XML declaration, since it goes straight into an HTML page.
pub fn qr_svg(uri: &str) -> Result<String, QrError> {
    let code = QrCode::with_error_correction_level(uri.as_bytes(), EcLevel::M)
        .map_err(|_| QrError::TooLong)?;
    let image = code
        .render::<svg::Color<'_>>()
        .quiet_zone(true)
        .min_dimensions(240, 240)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    let body = match image.find("<svg") {
        Some(start) => &image[start..],
        None => image.as_str(),
    };
    Ok(body.replacen(
        "<svg ",
        r#"<svg role="img" aria-label="QR code to scan with your authenticator app" "#,
        1,
    ))
}

/// Why a code was not accepted. The messages are shown next to the code field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("Enter the six digits shown in your authenticator app.")]
    Malformed,
    #[error("That code is not right. Check the time on your phone and try the current code.")]
    Wrong,
    #[error("That code was already used. Wait for the next code in your app.")]
    AlreadyUsed,
}

/// Checks a typed code. Spaces are ignored ("123 456"); anything but exactly six ASCII
/// digits is `Malformed`. The code may belong to the step before, at or after `now`
/// (RFC 6238 §5.2: one step either way for clock drift and typing time). A matching step
/// at or before `last_step` is `AlreadyUsed` (RFC 6238 §5.2: a code is accepted once).
/// On success returns the matched step, which the caller must store as the new
/// `last_step` atomically with accepting it.
pub fn verify_code(
    secret: &TotpSecret,
    code: &str,
    now: UnixSeconds,
    last_step: Option<u64>,
) -> Result<u64, CodeError> {
    let typed = parse_code(code).ok_or(CodeError::Malformed)?;
    // Before 1970 no code exists; not a real case, but never wrap around.
    let current = u64::try_from(now).map_err(|_| CodeError::Wrong)? / TOTP_PERIOD;
    let mut matched: Option<u64> = None;
    // All three candidates are computed and compared whatever happens, in constant time,
    // so timing tells nothing about which step (if any) matched.
    for step in [
        current.checked_sub(1),
        Some(current),
        current.checked_add(1),
    ]
    .into_iter()
    .flatten()
    {
        let expected = format_code(hotp(&secret.0, step, TOTP_DIGITS), TOTP_DIGITS);
        let hit: bool = expected.as_bytes().ct_eq(&typed).into();
        if hit {
            // On the one-in-a-million chance two steps share a code, take the newest.
            matched = Some(matched.map_or(step, |m| m.max(step)));
        }
    }
    match (matched, last_step) {
        (None, _) => Err(CodeError::Wrong),
        (Some(step), Some(last)) if step <= last => Err(CodeError::AlreadyUsed),
        (Some(step), _) => Ok(step),
    }
}

/// The six-digit code for the time step containing `t` (times before 1970 count as 0).
/// Used by tests everywhere to act as the person's authenticator app.
pub fn code_at(secret: &TotpSecret, t: UnixSeconds) -> String {
    let step = u64::try_from(t).unwrap_or(0) / TOTP_PERIOD;
    format_code(hotp(&secret.0, step, TOTP_DIGITS), TOTP_DIGITS)
}

/// Exactly six ASCII digits once spaces are removed; bounded before any allocation so a
/// hostile 10 MB field costs nothing.
fn parse_code(code: &str) -> Option<[u8; 6]> {
    if code.len() > 32 {
        return None;
    }
    let mut out = [0u8; 6];
    let mut n = 0;
    for b in code.bytes().filter(|b| *b != b' ') {
        if !b.is_ascii_digit() || n == out.len() {
            return None;
        }
        out[n] = b;
        n += 1;
    }
    (n == out.len()).then_some(out)
}

/// HOTP (RFC 4226 §5.3): HMAC-SHA1 of the big-endian counter, dynamic truncation,
/// reduced modulo 10^digits. SHA-1 is what RFC 6238 and every app use; its collision
/// weakness does not affect HMAC (RFC 4226 Appendix B.2).
fn hotp(key: &[u8], counter: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let word = match mac.get(offset..offset + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        // Unreachable: a SHA-1 MAC is 20 bytes and offset ≤ 15.
        _ => 0,
    };
    (word & 0x7fff_ffff) % 10u32.pow(digits)
}

fn format_code(value: u32, digits: u32) -> String {
    format!("{value:0width$}", width = digits as usize)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(*b"12345678901234567890")
    }

    fn code8_at(secret: &TotpSecret, t: u64) -> String {
        format_code(hotp(secret.as_bytes(), t / TOTP_PERIOD, 8), 8)
    }

    #[test]
    fn rfc6238_appendix_b_sha1_vectors() {
        let s = rfc_secret();
        for (t, expected) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(code8_at(&s, t), expected, "T={t}");
        }
    }

    #[test]
    fn rfc4226_appendix_d_hotp_vectors() {
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (counter, want) in expected.iter().enumerate() {
            let got = format_code(hotp(b"12345678901234567890", counter as u64, 6), 6);
            assert_eq!(&got, want, "counter {counter}");
        }
    }

    #[test]
    fn six_digit_code_at_matches_the_rfc_vectors_suffix() {
        // The 6-digit code is the 8-digit one modulo 10^6.
        let s = rfc_secret();
        assert_eq!(code_at(&s, 59), "287082");
        assert_eq!(code_at(&s, 1111111109), "081804");
        assert_eq!(code_at(&s, 20000000000), "353130");
    }

    #[test]
    fn code_at_agrees_with_totp_rs() {
        let s = TotpSecret::generate().unwrap();
        let reference = totp_rs::Builder::new()
            .with_secret(s.as_bytes().to_vec())
            .build()
            .unwrap();
        for t in [
            0u64,
            29,
            30,
            59,
            1_700_000_000,
            1_700_000_029,
            4_000_000_000,
        ] {
            assert_eq!(
                code_at(&s, t as i64),
                reference.generate(t).to_string(),
                "t={t}"
            );
        }
    }

    #[test]
    fn current_code_is_accepted_and_returns_its_step() {
        let s = rfc_secret();
        let now = 1_700_000_015;
        let step = verify_code(&s, &code_at(&s, now), now, None).unwrap();
        assert_eq!(step, 1_700_000_015 / 30);
    }

    #[test]
    fn codes_one_step_away_are_accepted_two_steps_away_refused() {
        let s = rfc_secret();
        let now: i64 = 1_700_000_010;
        assert_eq!(
            verify_code(&s, &code_at(&s, now - 30), now, None),
            Ok((now as u64 - 30) / 30)
        );
        assert_eq!(
            verify_code(&s, &code_at(&s, now + 30), now, None),
            Ok((now as u64 + 30) / 30)
        );
        assert_eq!(
            verify_code(&s, &code_at(&s, now - 60), now, None),
            Err(CodeError::Wrong)
        );
        assert_eq!(
            verify_code(&s, &code_at(&s, now + 60), now, None),
            Err(CodeError::Wrong)
        );
    }

    #[test]
    fn skew_edges_at_step_boundaries() {
        let s = rfc_secret();
        // now at the very first and very last second of its step.
        for now in [1_800_000_000i64, 1_800_000_029] {
            assert_eq!(now / 30, 60_000_000);
            let cur = 60_000_000u64;
            let at_step = |k: u64| code_at(&s, (k * 30) as i64);
            assert_eq!(verify_code(&s, &at_step(cur - 1), now, None), Ok(cur - 1));
            assert_eq!(verify_code(&s, &at_step(cur + 1), now, None), Ok(cur + 1));
            assert_eq!(
                verify_code(&s, &at_step(cur - 2), now, None),
                Err(CodeError::Wrong)
            );
            assert_eq!(
                verify_code(&s, &at_step(cur + 2), now, None),
                Err(CodeError::Wrong)
            );
        }
        // A phone exactly 30 s behind or ahead is accepted; 60 s is not.
        let now = 1_800_000_013;
        for (offset, ok) in [(-30, true), (30, true), (-60, false), (60, false)] {
            let r = verify_code(&s, &code_at(&s, now + offset), now, None);
            assert_eq!(r.is_ok(), ok, "offset {offset}");
        }
    }

    #[test]
    fn replay_of_the_same_step_is_refused() {
        let s = rfc_secret();
        let now = 1_700_000_000;
        let code = code_at(&s, now);
        let step = verify_code(&s, &code, now, None).unwrap();
        assert_eq!(
            verify_code(&s, &code, now, Some(step)),
            Err(CodeError::AlreadyUsed)
        );
        // Still refused a few seconds later within the window.
        assert_eq!(
            verify_code(&s, &code, now + 25, Some(step)),
            Err(CodeError::AlreadyUsed)
        );
    }

    #[test]
    fn code_used_at_finish_is_refused_at_next_step_but_the_next_code_works() {
        let s = rfc_secret();
        let t0 = 1_700_000_000;
        let finish = verify_code(&s, &code_at(&s, t0), t0, None).unwrap();
        let t1 = t0 + 5;
        assert_eq!(
            verify_code(&s, &code_at(&s, t1), t1, Some(finish)),
            Err(CodeError::AlreadyUsed)
        );
        let t2 = t0 + 30;
        assert_eq!(
            verify_code(&s, &code_at(&s, t2), t2, Some(finish)),
            Ok(finish + 1)
        );
    }

    #[test]
    fn earlier_step_is_refused_after_a_later_one_was_used() {
        let s = rfc_secret();
        let now = 1_700_000_000;
        let later = verify_code(&s, &code_at(&s, now + 30), now, None).unwrap();
        assert_eq!(
            verify_code(&s, &code_at(&s, now), now, Some(later)),
            Err(CodeError::AlreadyUsed)
        );
        assert_eq!(
            verify_code(&s, &code_at(&s, now - 30), now, Some(later)),
            Err(CodeError::AlreadyUsed)
        );
    }

    #[test]
    fn wrong_code_is_wrong_not_already_used() {
        let s = rfc_secret();
        let now = 1_700_000_000;
        let right = code_at(&s, now);
        let wrong = if right == "000000" {
            "000001"
        } else {
            "000000"
        };
        assert_eq!(verify_code(&s, wrong, now, None), Err(CodeError::Wrong));
        assert_eq!(
            verify_code(&s, wrong, now, Some(u64::MAX)),
            Err(CodeError::Wrong)
        );
        // A code for another secret.
        let other = TotpSecret::from_bytes([7u8; 20]);
        let theirs = code_at(&other, now);
        if theirs != right {
            assert_eq!(verify_code(&s, &theirs, now, None), Err(CodeError::Wrong));
        }
    }

    #[test]
    fn spaces_inside_the_code_are_ignored() {
        let s = rfc_secret();
        let now = 1_700_000_000;
        let code = code_at(&s, now);
        let spaced = format!(" {} {} ", &code[..3], &code[3..]);
        assert!(verify_code(&s, &spaced, now, None).is_ok());
    }

    #[test]
    fn malformed_codes_never_panic() {
        let s = rfc_secret();
        let now = 1_700_000_000;
        let huge = "1".repeat(10 * 1024);
        let cases = [
            "",
            " ",
            "12345",
            "1234567",
            "12a456",
            "١٢٣٤٥٦",
            "１２３４５６",
            "123\u{0}456",
            "123\t456",
            "123-456",
            "+12345",
            "-12345",
            "12345\n",
            "1234567890123456789012345",
            huge.as_str(),
            "¹²³⁴⁵⁶",
        ];
        for c in cases {
            assert_eq!(
                verify_code(&s, c, now, None),
                Err(CodeError::Malformed),
                "{c:?}"
            );
        }
    }

    #[test]
    fn time_before_the_epoch_is_refused_not_wrapped() {
        let s = rfc_secret();
        assert_eq!(verify_code(&s, "123456", -1, None), Err(CodeError::Wrong));
        assert_eq!(
            verify_code(&s, "123456", i64::MIN, None),
            Err(CodeError::Wrong)
        );
        // Step 0 has no step before it.
        assert_eq!(verify_code(&s, &code_at(&s, 0), 5, None), Ok(0));
    }

    #[test]
    fn error_messages_are_the_guides_sentences() {
        assert_eq!(
            CodeError::Wrong.to_string(),
            "That code is not right. Check the time on your phone and try the current code."
        );
        assert_eq!(
            CodeError::AlreadyUsed.to_string(),
            "That code was already used. Wait for the next code in your app."
        );
        assert_eq!(
            CodeError::Malformed.to_string(),
            "Enter the six digits shown in your authenticator app."
        );
    }

    #[test]
    fn base32_follows_rfc4648() {
        // "12345678901234567890" in base32 (RFC 4648, checked with `base32` coreutils).
        let s = rfc_secret();
        assert_eq!(s.base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(
            s.base32_grouped(),
            "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ"
        );
        let zeros = TotpSecret::from_bytes([0u8; 20]);
        assert_eq!(zeros.base32(), "A".repeat(32));
        let ones = TotpSecret::from_bytes([0xff; 20]);
        assert_eq!(ones.base32(), "7".repeat(32));
    }

    #[test]
    fn base32_round_trips_and_rejects_junk() {
        for _ in 0..50 {
            let s = TotpSecret::generate().unwrap();
            let back = TotpSecret::from_base32(&s.base32()).unwrap();
            assert_eq!(back.as_bytes(), s.as_bytes());
            let grouped = TotpSecret::from_base32(&s.base32_grouped().to_lowercase()).unwrap();
            assert_eq!(grouped.as_bytes(), s.as_bytes());
        }
        for junk in [
            "",
            "GEZD",
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ1",
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQA",
            "É",
        ] {
            assert!(TotpSecret::from_base32(junk).is_none(), "{junk:?}");
        }
        assert!(TotpSecret::from_base32(&"A".repeat(10_000)).is_none());
    }

    #[test]
    fn generated_secrets_are_20_random_bytes() {
        let a = TotpSecret::generate().unwrap();
        let b = TotpSecret::generate().unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(a.base32().len(), 32);
        assert!(TotpSecret::from_slice(&[0u8; 19]).is_none());
        assert!(TotpSecret::from_slice(&[0u8; 21]).is_none());
        assert!(TotpSecret::from_slice(&[0u8; 20]).is_some());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = rfc_secret();
        assert_eq!(format!("{s:?}"), "[redacted]");
    }

    #[test]
    fn otpauth_uri_has_the_documented_shape() {
        let s = rfc_secret();
        assert_eq!(
            otpauth_uri("Partner Portal", "alice", &s),
            "otpauth://totp/Partner%20Portal:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Partner%20Portal&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn otpauth_uri_encodes_hostile_names() {
        let s = rfc_secret();
        let uri = otpauth_uri("A&B C/D?#=", "bob+x@example.com", &s);
        assert_eq!(
            uri,
            "otpauth://totp/A%26B%20C%2FD%3F%23%3D:bob%2Bx@example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=A%26B%20C%2FD%3F%23%3D&algorithm=SHA1&digits=6&period=30"
        );
        // totp-rs (an otpauth parser) reads it back as meant.
        let parsed = totp_rs::Totp::from_url_unchecked(&uri).unwrap();
        assert_eq!(parsed.issuer(), Some("A&B C/D?#="));
        assert_eq!(parsed.account_name(), "bob+x@example.com");
        assert_eq!(parsed.generate(59).to_string(), code_at(&s, 59));
        assert_eq!((parsed.digits(), parsed.step()), (6, 30));
        // A colon cannot break the label either (though the Key URI format forbids it
        // in names, so configuration should refuse it).
        let colon = otpauth_uri("a:b", "c:d", &s);
        assert!(colon.starts_with("otpauth://totp/a%3Ab:c%3Ad?"));
        let unicode = otpauth_uri("Müller GmbH", "josé", &s);
        assert!(unicode.starts_with("otpauth://totp/M%C3%BCller%20GmbH:jos%C3%A9?"));
    }

    #[test]
    fn qr_svg_is_inline_svg_without_xml_declaration() {
        let uri = otpauth_uri("Partner Portal", "alice", &rfc_secret());
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.starts_with("<svg "), "{}", &svg[..60]);
        assert!(!svg.contains("<?xml"));
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains(r#"role="img""#));
        // Sized for a phone camera: at least 240 px, and not huge.
        let width: u32 = svg
            .split("width=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|w| w.parse().ok())
            .unwrap();
        assert!((240..=400).contains(&width), "width {width}");
        // Error correction M at the size an otpauth URI has.
        let code = QrCode::with_error_correction_level(uri.as_bytes(), EcLevel::M).unwrap();
        assert_eq!(code.error_correction_level(), EcLevel::M);
    }

    #[test]
    fn qr_svg_refuses_what_cannot_fit() {
        assert_eq!(qr_svg(&"x".repeat(5000)), Err(QrError::TooLong));
    }
}
