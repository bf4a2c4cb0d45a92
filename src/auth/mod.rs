//! Pure identity logic: passwords, TOTP, secret tokens and CSRF, `rd` checks, lockout.
//!
//! Nothing here speaks HTTP or touches the store: every function takes its inputs (and
//! `now`) and returns a decision, so the rules are unit-tested exhaustively. Pages and the
//! gate call in; nothing in here calls out.

pub mod lockout;
pub mod password;
pub mod redirect;
pub mod tokens;
pub mod totp;

pub use lockout::{
    clear, is_locked, record_failure, LockState, LockoutPolicy, RateLimiter, RetryAfterSecs,
};
pub use password::{
    check_new_password, Password, PasswordError, PasswordHasher, PasswordParams, PolicyError,
    Verification, MAX_PASSWORD_BYTES,
};
pub use redirect::{validate_rd, Origin, OriginError, RedirectTarget, MAX_RD_BYTES};
pub use tokens::{csrf_token, csrf_valid, CsrfKey, SecretToken};
pub use totp::{
    code_at, otpauth_uri, qr_svg, verify_code, CodeError, QrError, TotpSecret, TOTP_DIGITS,
    TOTP_PERIOD,
};

/// The operating system's random number generator failed. It practically never does; when
/// it does, nothing that needs a secret can safely go on, so callers fail the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("The system could not produce random numbers. Try again; if it keeps failing, check the server's entropy source.")]
pub struct RandomError;

/// Fills `buf` from the OS random number generator (aws-lc-rs `SystemRandom`).
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| RandomError)
}
