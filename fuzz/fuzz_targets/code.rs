//! Fuzzes the TOTP check (`auth::verify_code`) with a fixed secret and arbitrary clock and
//! last-used step: never a panic; an accepted step is within one of `now / 30` and newer
//! than the last one used; the right code for `now` is accepted unless already used.
//!
//! Input: 8 bytes `now` (i64), 1 flag + 8 bytes `last_step`, 1 mode byte, then the typed
//! text. The mode either types the text as given or types the real code of a step near
//! `now` (with the text's spaces), so the accepting paths are reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::auth::{code_at, verify_code, CodeError, TotpSecret, TOTP_PERIOD};

fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let now = i64::from_le_bytes(take::<8>(&mut data));
    let [flag] = take::<1>(&mut data);
    let last_raw = u64::from_le_bytes(take::<8>(&mut data));
    // Small last steps are as interesting as huge ones: fold some near `now`.
    let last = match flag % 4 {
        0 => None,
        1 => Some(last_raw),
        2 => Some(
            (now.max(0) as u64 / TOTP_PERIOD)
                .wrapping_add(last_raw % 5)
                .wrapping_sub(2),
        ),
        _ => Some(last_raw % 4),
    };
    let [mode] = take::<1>(&mut data);
    let text = String::from_utf8_lossy(data);

    let secret = TotpSecret::from_bytes(*b"12345678901234567890");
    // Steps -4..=3 around now, in seconds.
    let delta = (i64::from(mode >> 5) - 4) * TOTP_PERIOD as i64;
    let typed = if mode & 1 == 0 {
        text.into_owned()
    } else {
        let code = code_at(&secret, now.saturating_add(delta));
        // Spaces from the text, between the digits.
        let spaces = " ".repeat(text.len() % 3);
        format!("{}{spaces}{}", &code[..3], &code[3..])
    };

    let result = verify_code(&secret, &typed, now, last);
    if let Ok(step) = result {
        assert!(now >= 0, "accepted before 1970");
        let current = now as u64 / TOTP_PERIOD;
        assert!(
            step + 1 >= current && step <= current + 1,
            "step {step} too far from {current}"
        );
        if let Some(l) = last {
            assert!(step > l, "step {step} not after last {l}");
        }
    }
    // Completeness: the current code is accepted when its step is newer than the last.
    if mode & 1 == 1 && delta == 0 && now >= 0 {
        let current = now as u64 / TOTP_PERIOD;
        if last.is_none_or(|l| l < current) {
            assert!(
                matches!(result, Ok(s) if s >= current),
                "current code refused: {result:?}"
            );
        } else {
            // Used already (or the clock went back): refused, never accepted.
            assert!(
                result == Err(CodeError::AlreadyUsed)
                    || result.is_ok_and(|s| last.is_some_and(|l| s > l)),
                "{result:?}"
            );
        }
    }
});
