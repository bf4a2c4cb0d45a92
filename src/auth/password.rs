//! Password hashing (Argon2id, PHC strings, bcrypt import) and the policy for new passwords.
//!
//! Hashing is deliberately slow, so it runs on tokio's blocking pool behind a semaphore, at
//! a lower CPU priority than everything else: a flood of sign-ins queues up there and gets
//! the CPU time proxying leaves over, instead of starving the threads that proxy traffic.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use tokio::sync::Semaphore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::fill_random;

/// Longest password accepted when one is chosen, in bytes. Long passphrases are welcome;
/// megabyte "passwords" are only a way to make the server hash a lot.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Salt length in bytes (RFC 9106 §3.1 recommends 16).
const SALT_LEN: usize = 16;

/// Argon2 output length in bytes (the argon2 crate's default, as in RFC 9106 §4).
const OUTPUT_LEN: usize = 32;

/// Upper bounds for parameters found in a *stored* hash. Verification uses the stored
/// parameters, so an imported hash claiming `m=4294967295` would otherwise let one sign-in
/// allocate 4 TiB. Anything above these is treated as malformed.
/// `user import` checks the same bounds, so it never stores a hash nobody could sign in with.
const MAX_STORED_M_KIB: u32 = 1024 * 1024;
const MAX_STORED_T: u32 = 64;
const MAX_STORED_P: u32 = 64;
/// bcrypt cost 16 already takes seconds; higher ones are not real deployments.
pub const MAX_STORED_BCRYPT_COST: u32 = 16;

/// Whether sign-in would verify against a stored Argon2 hash with these parameters.
pub fn argon2_params_accepted(params: &Params) -> bool {
    params.m_cost() <= MAX_STORED_M_KIB
        && params.t_cost() <= MAX_STORED_T
        && params.p_cost() <= MAX_STORED_P
}

/// Argon2id cost parameters (`[password]` in config.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordParams {
    /// OWASP's Argon2id recommendation: m=19 MiB, t=2, p=1.
    fn default() -> Self {
        Self {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl PasswordParams {
    /// Checks the parameters the way Argon2 will, so a bad config fails at start-up.
    pub fn validate(&self) -> Result<(), PasswordError> {
        self.argon2_params().map(|_| ())
    }

    fn argon2_params(&self) -> Result<Params, PasswordError> {
        Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(OUTPUT_LEN),
        )
        .map_err(|e| PasswordError::InvalidParams(e.to_string()))
    }
}

/// A password as typed. Never printed, wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Password(String);

impl Password {
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Password {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    /// The password matches the stored hash.
    pub ok: bool,
    /// Only ever true together with `ok`: the stored hash is bcrypt, another Argon2 variant,
    /// or Argon2id with other parameters, so the caller should store `hash(password)` now.
    pub needs_rehash: bool,
}

impl Verification {
    const REFUSED: Self = Self {
        ok: false,
        needs_rehash: false,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("The password hashing settings are not valid ({0}). Fix argon2_memory_kib, argon2_iterations and argon2_parallelism under [password] in the configuration.")]
    InvalidParams(String),
    #[error("The password could not be hashed ({0}). Try again.")]
    Hash(String),
    #[error("The system could not produce random numbers. Try again; if it keeps failing, check the server's entropy source.")]
    Random,
    #[error("The password check was interrupted. Try again.")]
    Interrupted,
}

/// Hashes and verifies passwords on the blocking pool, at most
/// `available_parallelism()` at a time. Cheap to clone; clones share the limit.
#[derive(Clone)]
pub struct PasswordHasher {
    params: PasswordParams,
    argon2_params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a fixed string with the current parameters, verified against when the user
    /// does not exist, so "no such user" costs the same time as "wrong password".
    dummy: Arc<OnceLock<String>>,
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .field("available_permits", &self.permits.available_permits())
            .finish()
    }
}

impl PasswordHasher {
    /// A hasher that runs as many hashes at once as the machine has cores.
    pub fn new(params: PasswordParams) -> Result<Self, PasswordError> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self::with_max_concurrent(params, cores)
    }

    /// A hasher that runs at most `max_concurrent` (at least 1) hashes at once.
    pub fn with_max_concurrent(
        params: PasswordParams,
        max_concurrent: usize,
    ) -> Result<Self, PasswordError> {
        let argon2_params = params.argon2_params()?;
        Ok(Self {
            params,
            argon2_params,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            dummy: Arc::new(OnceLock::new()),
        })
    }

    pub fn params(&self) -> PasswordParams {
        self.params
    }

    /// Hashes `password` with Argon2id, the current parameters and a fresh 16-byte salt
    /// from the OS; returns the PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub async fn hash(&self, password: Password) -> Result<String, PasswordError> {
        let argon2_params = self.argon2_params.clone();
        self.run_blocking(move || hash_blocking(&argon2_params, &password))
            .await
    }

    /// Checks `password` against `stored` (None when the user does not exist). Never
    /// reveals through its result or its running time whether the user exists.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<&str>,
    ) -> Result<Verification, PasswordError> {
        let stored = stored.map(str::to_owned);
        let hasher = self.clone();
        self.run_blocking(move || hasher.verify_blocking(&password, stored.as_deref()))
            .await
    }

    async fn run_blocking<T, F>(&self, job: F) -> Result<T, PasswordError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PasswordError> + Send + 'static,
    {
        // The permit is held until the blocking job ends, not merely until it is spawned,
        // so the limit bounds the work actually running.
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| PasswordError::Interrupted)?;
        tokio::task::spawn_blocking(move || {
            yield_cpu_to_proxying();
            let result = job();
            drop(permit);
            result
        })
        .await
        .map_err(|_| PasswordError::Interrupted)?
    }

    #[cfg(test)]
    async fn on_hashing_thread<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        self.run_blocking(move || Ok(job())).await
    }

    fn verify_blocking(
        &self,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<Verification, PasswordError> {
        let pw = password.as_str().as_bytes();
        match stored {
            Some(s) if is_bcrypt(s) => {
                Ok(verify_bcrypt(pw, s).unwrap_or_else(|| self.malformed_stored_hash(pw)))
            }
            Some(s) if s.starts_with("$argon2") => Ok(self
                .verify_argon2(pw, s)
                .unwrap_or_else(|| self.malformed_stored_hash(pw))),
            Some(_) => Ok(self.malformed_stored_hash(pw)),
            None => {
                self.burn_dummy(pw)?;
                Ok(Verification::REFUSED)
            }
        }
    }

    /// Verifies against an Argon2 PHC string; None when the string is malformed.
    fn verify_argon2(&self, pw: &[u8], stored: &str) -> Option<Verification> {
        let parsed = PasswordHash::new(stored).ok()?;
        let algorithm = Algorithm::new(parsed.algorithm.as_str()).ok()?;
        let version = match parsed.version {
            Some(v) => Version::try_from(v).ok()?,
            None => Version::default(),
        };
        let params = Params::try_from(&parsed).ok()?;
        if !argon2_params_accepted(&params) {
            return None;
        }
        let out_len = parsed.hash.as_ref().map(|o| o.len());
        let salt_len = parsed.salt.as_ref().map(|s| s.len());
        match Argon2::default().verify_password(pw, &parsed) {
            Ok(()) => Some(Verification {
                ok: true,
                needs_rehash: algorithm != Algorithm::Argon2id
                    || version != Version::V0x13
                    || params.m_cost() != self.params.memory_kib
                    || params.t_cost() != self.params.iterations
                    || params.p_cost() != self.params.parallelism
                    || out_len != Some(OUTPUT_LEN)
                    || salt_len.unwrap_or(0) < SALT_LEN,
            }),
            Err(argon2::password_hash::Error::PasswordInvalid) => Some(Verification::REFUSED),
            Err(_) => None,
        }
    }

    /// A stored hash nobody can sign in with. Says so in the log (never the hash itself)
    /// and still spends the time of a real check.
    fn malformed_stored_hash(&self, pw: &[u8]) -> Verification {
        tracing::warn!(
            "a stored password hash is malformed or unsupported; that user cannot sign in until an administrator sets a new password"
        );
        // Keep the timing of a real check; an error here changes nothing for the caller.
        let _ = self.burn_dummy(pw);
        Verification::REFUSED
    }

    fn burn_dummy(&self, pw: &[u8]) -> Result<(), PasswordError> {
        let dummy = match self.dummy.get() {
            Some(d) => d,
            None => {
                let made = hash_blocking(&self.argon2_params, &Password::new("portcullis"))?;
                // A concurrent first call may have won the race; either hash is as good.
                let _ = self.dummy.set(made);
                self.dummy
                    .get()
                    .ok_or_else(|| PasswordError::Hash("dummy hash missing".into()))?
            }
        };
        let _ = Argon2::default().verify_password(pw, dummy.as_str());
        Ok(())
    }
}

/// Niceness of the threads that hash passwords. On Linux niceness is per thread; 10 gives
/// the proxy's threads (at 0) roughly ten times the CPU share when both want it. It is
/// lowered once per blocking-pool thread and never raised again (that needs privileges);
/// other blocking jobs that later run on such a thread (admin commands) are not urgent.
const HASHING_NICENESS: libc::c_int = 10;

fn yield_cpu_to_proxying() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            #[cfg(target_os = "linux")]
            // SAFETY: plain system calls on the calling thread; no memory is shared.
            unsafe {
                let tid = libc::gettid() as libc::id_t;
                let current = libc::getpriority(libc::PRIO_PROCESS, tid);
                if current < HASHING_NICENESS {
                    libc::setpriority(libc::PRIO_PROCESS, tid, HASHING_NICENESS);
                }
            }
        }
    });
}

fn hash_blocking(params: &Params, password: &Password) -> Result<String, PasswordError> {
    let mut salt = [0u8; SALT_LEN];
    fill_random(&mut salt).map_err(|_| PasswordError::Random)?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    argon2
        .hash_password_with_salt(password.as_str().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// `$2a$`, `$2b$` and `$2y$` are the bcrypt variants real systems export (`$2x$` marks
/// hashes made by a known-buggy implementation and is refused).
fn is_bcrypt(stored: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| stored.starts_with(prefix))
}

/// Verifies against a bcrypt hash; None when it is malformed or absurdly expensive.
fn verify_bcrypt(pw: &[u8], stored: &str) -> Option<Verification> {
    let cost: u32 = stored.get(4..6)?.parse().ok()?;
    if cost > MAX_STORED_BCRYPT_COST {
        return None;
    }
    // Like every bcrypt, this looks at the first 72 bytes only; the re-hash to Argon2id
    // that follows a successful sign-in ends that.
    let ok = bcrypt::verify(pw, stored).ok()?;
    Some(Verification {
        ok,
        needs_rehash: ok,
    })
}

/// Why a newly chosen password is refused. The messages are shown next to the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("Choose a password of at least {min} characters.")]
    TooShort { min: usize },
    #[error("That password is too long. Choose a shorter one.")]
    TooLong,
    #[error("Choose a password that is not your user name.")]
    SameAsUsername,
    #[error("That password is too common. Choose one that is harder to guess.")]
    TooCommon,
}

/// The rule for a new password: at least `min_length` characters (Unicode scalar values,
/// so "ä" counts once), at most [`MAX_PASSWORD_BYTES`] bytes, not the user name, and not
/// among the 10,000 most common passwords (compared ignoring case). In the spirit of
/// NIST SP 800-63B §3.1.1.2: length and a blocklist, no composition rules.
pub fn check_new_password(pw: &str, min_length: usize, username: &str) -> Result<(), PolicyError> {
    if pw.len() > MAX_PASSWORD_BYTES {
        return Err(PolicyError::TooLong);
    }
    if pw.chars().count() < min_length {
        return Err(PolicyError::TooShort { min: min_length });
    }
    let lower = pw.to_lowercase();
    if lower == username.to_lowercase() {
        return Err(PolicyError::SameAsUsername);
    }
    if common_passwords().contains(lower.as_str()) {
        return Err(PolicyError::TooCommon);
    }
    Ok(())
}

/// Mark Burnett's "10,000 Top Passwords" (xato.net, 2011), the list SecLists ships as
/// `10k-most-common.txt`. Taken from the npm package `common-password` 0.1.2, file
/// `lib/10k most common.txt` (ISC licence, Copyright (c) Michał Adamski: "Permission to
/// use, copy, modify, and/or distribute this software for any purpose with or without fee
/// is hereby granted, provided that the above copyright notice and this permission notice
/// appear in all copies."). Changed only from CRLF to LF line endings; every entry is
/// already lower case. SHA-256 of the file: 4adb3f0afb4a10cf19ebe48d8c69a46f934bbc8d77c694c210564f9583e7f4ba.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn small() -> PasswordParams {
        PasswordParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn hasher() -> PasswordHasher {
        PasswordHasher::new(small()).unwrap()
    }

    fn pw(s: &str) -> Password {
        Password::new(s)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_below_the_proxys_cpu_priority() {
        let h = hasher();
        // SAFETY: reads the calling thread's niceness.
        let niceness = || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as _) };
        let proxying = niceness();
        let hashing = h.on_hashing_thread(niceness).await.unwrap();
        assert!(
            hashing >= HASHING_NICENESS && hashing > proxying.min(HASHING_NICENESS - 1),
            "hashing at {hashing}, proxying at {proxying}"
        );
        // Hashing still works at that priority.
        let stored = h.hash(pw("correct horse battery")).await.unwrap();
        assert!(
            h.verify(pw("correct horse battery"), Some(&stored))
                .await
                .unwrap()
                .ok
        );
    }

    #[tokio::test]
    async fn hash_then_verify_accepts_the_same_password() {
        let h = hasher();
        let stored = h.hash(pw("correct horse battery")).await.unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{stored}"
        );
        let v = h
            .verify(pw("correct horse battery"), Some(&stored))
            .await
            .unwrap();
        assert_eq!(
            v,
            Verification {
                ok: true,
                needs_rehash: false
            }
        );
    }

    #[tokio::test]
    async fn two_hashes_of_one_password_differ_by_salt() {
        let h = hasher();
        let a = h.hash(pw("same password here")).await.unwrap();
        let b = h.hash(pw("same password here")).await.unwrap();
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn wrong_password_is_refused() {
        let h = hasher();
        let stored = h.hash(pw("correct horse battery")).await.unwrap();
        for wrong in ["correct horse batterY", "", "correct horse battery "] {
            let v = h.verify(pw(wrong), Some(&stored)).await.unwrap();
            assert_eq!(v, Verification::REFUSED, "{wrong:?}");
        }
    }

    #[tokio::test]
    async fn changed_params_ask_for_a_rehash() {
        let old = hasher();
        let stored = old.hash(pw("correct horse battery")).await.unwrap();
        for params in [
            PasswordParams {
                memory_kib: 128,
                ..small()
            },
            PasswordParams {
                iterations: 2,
                ..small()
            },
            PasswordParams {
                parallelism: 2,
                ..small()
            },
        ] {
            let new = PasswordHasher::new(params).unwrap();
            let v = new
                .verify(pw("correct horse battery"), Some(&stored))
                .await
                .unwrap();
            assert_eq!(
                v,
                Verification {
                    ok: true,
                    needs_rehash: true
                },
                "{params:?}"
            );
            // A wrong password never asks for a rehash.
            let v = new.verify(pw("nope"), Some(&stored)).await.unwrap();
            assert_eq!(v, Verification::REFUSED);
        }
    }

    #[tokio::test]
    async fn argon2i_hash_verifies_and_needs_rehash() {
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        );
        let stored = argon2i
            .hash_password_with_salt(b"imported password", b"0123456789abcdef")
            .unwrap()
            .to_string();
        let v = hasher()
            .verify(pw("imported password"), Some(&stored))
            .await
            .unwrap();
        assert_eq!(
            v,
            Verification {
                ok: true,
                needs_rehash: true
            }
        );
    }

    #[tokio::test]
    async fn bcrypt_hash_verifies_and_needs_rehash() {
        let stored = bcrypt::hash("imported password", 4).unwrap();
        assert!(stored.starts_with("$2b$04$"));
        let h = hasher();
        for variant in [
            stored.clone(),
            stored.replacen("$2b$", "$2a$", 1),
            stored.replacen("$2b$", "$2y$", 1),
        ] {
            let v = h
                .verify(pw("imported password"), Some(&variant))
                .await
                .unwrap();
            assert_eq!(
                v,
                Verification {
                    ok: true,
                    needs_rehash: true
                },
                "{variant}"
            );
            let v = h
                .verify(pw("imported Password"), Some(&variant))
                .await
                .unwrap();
            assert_eq!(v, Verification::REFUSED);
        }
    }

    #[tokio::test]
    async fn bcrypt_2x_and_absurd_costs_are_refused() {
        let stored = bcrypt::hash("imported password", 4).unwrap();
        let h = hasher();
        let x = stored.replacen("$2b$", "$2x$", 1);
        let v = h.verify(pw("imported password"), Some(&x)).await.unwrap();
        assert_eq!(v, Verification::REFUSED);
        // Cost 31 would take days; it must be refused without being computed.
        let expensive = stored.replacen("$2b$04$", "$2b$31$", 1);
        let v = h
            .verify(pw("imported password"), Some(&expensive))
            .await
            .unwrap();
        assert_eq!(v, Verification::REFUSED);
    }

    #[tokio::test]
    async fn unknown_user_is_refused_after_a_dummy_check() {
        let h = hasher();
        assert!(h.dummy.get().is_none());
        let v = h.verify(pw("anything at all"), None).await.unwrap();
        assert_eq!(v, Verification::REFUSED);
        // The dummy was made once, with the current parameters, and is reused by clones.
        let dummy = h.dummy.get().unwrap().clone();
        assert!(dummy.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        let v = h.clone().verify(pw("portcullis"), None).await.unwrap();
        assert_eq!(v, Verification::REFUSED);
        assert_eq!(h.dummy.get().unwrap(), &dummy);
    }

    #[tokio::test]
    async fn malformed_stored_hashes_are_refused_without_error() {
        let h = hasher();
        let good = h.hash(pw("correct horse battery")).await.unwrap();
        let truncated = &good[..good.len() - 5];
        let huge_memory = good.replacen("m=64", "m=4294967295", 1);
        let huge_time = good.replacen("t=1", "t=100000", 1);
        let cases = [
            "",
            "$",
            "plaintext password",
            "$argon2id$",
            "$argon2id$v=19$m=64,t=1,p=1$",
            "$argon2id$v=99$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaA",
            "$argon2xx$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "$2b$",
            "$2b$04$short",
            "$2b$xx$abcdefghijklmnopqrstuvabcdefghijklmnopqrstuvwxyzABC",
            "$pbkdf2-sha256$29000$abc$def",
            truncated,
            &huge_memory,
            &huge_time,
        ];
        for stored in cases {
            let v = h
                .verify(pw("correct horse battery"), Some(stored))
                .await
                .unwrap();
            assert_eq!(v, Verification::REFUSED, "{stored:?}");
        }
    }

    #[tokio::test]
    async fn concurrency_is_limited_by_the_semaphore() {
        let h = PasswordHasher::with_max_concurrent(small(), 1).unwrap();
        assert_eq!(h.permits.available_permits(), 1);
        let (a, b) = tokio::join!(h.hash(pw("first password")), h.hash(pw("second password")));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(h.permits.available_permits(), 1);
    }

    #[test]
    fn invalid_params_are_reported_at_construction() {
        let bad = PasswordParams {
            memory_kib: 4,
            iterations: 1,
            parallelism: 1,
        };
        assert!(matches!(
            PasswordHasher::new(bad),
            Err(PasswordError::InvalidParams(_))
        ));
        assert!(bad.validate().is_err());
        let zero_t = PasswordParams {
            iterations: 0,
            ..PasswordParams::default()
        };
        assert!(zero_t.validate().is_err());
        assert!(PasswordParams::default().validate().is_ok());
        assert_eq!(
            PasswordParams::default(),
            PasswordParams {
                memory_kib: 19456,
                iterations: 2,
                parallelism: 1
            }
        );
    }

    #[test]
    fn password_debug_is_redacted() {
        let p = pw("hunter2hunter2");
        assert_eq!(format!("{p:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(p)), "Some([redacted])");
    }

    #[test]
    fn policy_accepts_a_good_password() {
        assert_eq!(
            check_new_password("violet staple gravity", 12, "alice"),
            Ok(())
        );
    }

    #[test]
    fn policy_refuses_short_passwords_with_the_minimum_in_the_message() {
        let err = check_new_password("short", 12, "alice").unwrap_err();
        assert_eq!(err, PolicyError::TooShort { min: 12 });
        assert_eq!(
            err.to_string(),
            "Choose a password of at least 12 characters."
        );
        assert!(check_new_password("", 12, "alice").is_err());
        assert!(check_new_password("elevenchars", 12, "alice").is_err());
        assert!(check_new_password("twelve chars", 12, "alice").is_ok());
    }

    #[test]
    fn policy_counts_characters_not_bytes() {
        // 11 characters but 22 bytes: still too short.
        let eleven = "äääääääääää";
        assert_eq!(eleven.chars().count(), 11);
        assert!(eleven.len() >= 12);
        assert_eq!(
            check_new_password(eleven, 12, "alice"),
            Err(PolicyError::TooShort { min: 12 })
        );
        // 12 CJK characters (36 bytes) are enough.
        assert_eq!(
            check_new_password("密码密码密码密码密码密码", 12, "alice"),
            Ok(())
        );
        // Emoji count once each.
        assert_eq!(
            check_new_password("🔒🔑🔒🔑🔒🔑🔒🔑🔒🔑🔒🔑", 12, "bob"),
            Ok(())
        );
    }

    #[test]
    fn policy_refuses_over_1024_bytes() {
        let max = "a1b2".repeat(256);
        assert_eq!(max.len(), 1024);
        assert_eq!(check_new_password(&max, 12, "alice"), Ok(()));
        let over = format!("{max}x");
        assert_eq!(
            check_new_password(&over, 12, "alice"),
            Err(PolicyError::TooLong)
        );
        // 400 characters of 3 bytes each: over the byte limit.
        let wide = "密".repeat(400);
        assert_eq!(
            check_new_password(&wide, 12, "alice"),
            Err(PolicyError::TooLong)
        );
        // A hostile megabyte is refused without trouble.
        let huge = "x".repeat(1 << 20);
        assert_eq!(
            check_new_password(&huge, 12, "alice"),
            Err(PolicyError::TooLong)
        );
    }

    #[test]
    fn policy_refuses_the_user_name_in_any_case() {
        for candidate in [
            "alexanderthegreat",
            "AlexanderTheGreat",
            "ALEXANDERTHEGREAT",
        ] {
            assert_eq!(
                check_new_password(candidate, 12, "AlexanderTheGreat"),
                Err(PolicyError::SameAsUsername),
                "{candidate}"
            );
        }
        assert_eq!(
            check_new_password("alexanderthegreat1", 12, "alexanderthegreat"),
            Ok(())
        );
    }

    #[test]
    fn policy_refuses_common_passwords_ignoring_case() {
        // Both are in the shipped top-10k list and at least 12 characters long.
        for common in ["unbelievable", "UnBelievable", "SCANDINAVIAN"] {
            let err = check_new_password(common, 12, "alice").unwrap_err();
            assert_eq!(err, PolicyError::TooCommon, "{common}");
            assert_eq!(
                err.to_string(),
                "That password is too common. Choose one that is harder to guess."
            );
        }
        // Shorter common ones are caught too when the minimum allows them.
        assert_eq!(
            check_new_password("Password", 8, "alice"),
            Err(PolicyError::TooCommon)
        );
        assert_eq!(
            check_new_password("qwertyuiop", 8, "alice"),
            Err(PolicyError::TooCommon)
        );
    }

    #[test]
    fn common_list_is_the_full_top_10k() {
        let set = common_passwords();
        assert_eq!(set.len(), 10_000);
        assert!(set.contains("password"));
        assert!(set.contains("123456"));
        assert!(set.iter().all(|p| *p == p.to_lowercase()));
    }

    #[tokio::test]
    async fn a_hash_waits_while_every_permit_is_taken() {
        let h = PasswordHasher::with_max_concurrent(small(), 1).unwrap();
        // Someone else holds the only permit: the hash must queue, not run beside it.
        let held = Arc::clone(&h.permits).acquire_owned().await.unwrap();
        let queued = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            h.hash(pw("waits its turn")),
        )
        .await;
        assert!(queued.is_err(), "hashed without a permit");
        drop(held);
        assert!(h.hash(pw("waits its turn")).await.is_ok());
    }

    #[tokio::test]
    async fn no_more_jobs_than_the_limit_run_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let h = PasswordHasher::with_max_concurrent(small(), 2).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs = (0..6).map(|_| {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            h.run_blocking(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(50));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        });
        for r in futures_util::future::join_all(jobs).await {
            r.unwrap();
        }
        // The permit is held until each job ends, so the limit bounds the work running.
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn hashing_leaves_the_async_thread_free() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Production parameters: tens of milliseconds of work per hash. This runtime has
        // one thread; a hash run on it would keep the ticker from running at all, as a
        // flood of sign-ins would starve proxied traffic.
        let h = PasswordHasher::new(PasswordParams::default()).unwrap();
        let stored = h.hash(pw("a flood of sign-ins")).await.unwrap();
        let ticks = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ticks);
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let start = ticks.load(Ordering::Relaxed);
        h.hash(pw("a flood of sign-ins")).await.unwrap();
        let after_hash = ticks.load(Ordering::Relaxed);
        h.verify(pw("a flood of sign-ins"), Some(&stored))
            .await
            .unwrap();
        let after_verify = ticks.load(Ordering::Relaxed);
        h.verify(pw("a flood of sign-ins"), None).await.unwrap();
        let after_dummy = ticks.load(Ordering::Relaxed);
        ticker.abort();
        assert!(after_hash > start, "the runtime stalled while hashing");
        assert!(
            after_verify > after_hash,
            "the runtime stalled while verifying"
        );
        assert!(
            after_dummy > after_verify,
            "the runtime stalled on the dummy check"
        );
    }
}
