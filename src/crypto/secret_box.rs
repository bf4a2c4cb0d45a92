//! The secret box: AES-256-GCM encryption of secrets at rest (TOTP secrets), with the key
//! given by the operator or created in the data directory on first start.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::key_file::{create_data_dir, read_key_file, write_new_key_file};
use super::{random_bytes, CryptoError};

/// Environment variable an operator may set to the base64 of a 32-byte key.
pub const SECRET_KEY_ENV: &str = "PORTCULLIS_SECRET_KEY";
/// Name of the key file created in the data directory when the operator gives no key.
pub const SECRET_KEY_FILE: &str = "secret.key";

/// First byte of every sealed value: the format, so it can change by explicit migration.
const FORMAT_V1: u8 = 1;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// Plaintext of the canary that detects a wrong key at start.
const CANARY_PLAINTEXT: &[u8] = b"portcullis secret-key canary v1";
const CANARY_AAD: &[u8] = b"portcullis:canary";

/// Where the operator's key comes from.
pub enum KeySource {
    /// A file holding the key as base64 text (or as 32 raw bytes); must be mode 0600.
    File(PathBuf),
    /// The base64 text of the key, e.g. from `PORTCULLIS_SECRET_KEY`.
    Base64(Zeroizing<String>),
}

impl KeySource {
    /// The key from `PORTCULLIS_SECRET_KEY`, if that variable is set and not empty.
    pub fn from_env() -> Option<KeySource> {
        match std::env::var(SECRET_KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => Some(KeySource::Base64(Zeroizing::new(v))),
            _ => None,
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
            KeySource::Base64(_) => f.write_str("Base64([redacted])"),
        }
    }
}

/// AES-256-GCM with a random 96-bit nonce per seal (NIST SP 800-38D §8.2.2).
///
/// Sealed format: `0x01 || nonce (12) || ciphertext || tag (16)`. The associated data is a
/// caller-given context (e.g. the user id), so a sealed value moved to another account
/// fails to open.
pub struct SecretBox {
    key: RandomizedNonceKey,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox([redacted])")
    }
}

impl SecretBox {
    /// A box over the given 32-byte key.
    pub fn from_key(key: &[u8; KEY_LEN]) -> Result<Self, CryptoError> {
        let key = RandomizedNonceKey::new(&AES_256_GCM, key)
            .map_err(|_| CryptoError::Library("AES-256-GCM key setup failed".into()))?;
        Ok(Self { key })
    }

    /// Loads the operator's key, or else `data_dir/secret.key`, creating it (mode 0600) on
    /// first start. Creates `data_dir` (mode 0700) if it is missing.
    ///
    /// Callers pick the operator key, e.g. `config_file.map(KeySource::File).or_else(KeySource::from_env)`.
    pub fn load_or_create(
        data_dir: &Path,
        operator_key: Option<KeySource>,
    ) -> Result<Self, CryptoError> {
        create_data_dir(data_dir)?;
        let key = match operator_key {
            Some(KeySource::Base64(text)) => decode_key(text.as_bytes(), SECRET_KEY_ENV)?,
            Some(KeySource::File(path)) => {
                let raw = read_key_file(&path)?;
                decode_key(&raw, &path.display().to_string())?
            }
            None => {
                let path = data_dir.join(SECRET_KEY_FILE);
                if !path.exists() {
                    let fresh = Zeroizing::new(random_bytes::<KEY_LEN>());
                    let mut text = Zeroizing::new(STANDARD.encode(fresh.as_slice()));
                    text.push('\n');
                    if write_new_key_file(&path, text.as_bytes())? {
                        tracing::info!(path = %path.display(), "created a new secret key");
                    }
                }
                let raw = read_key_file(&path)?;
                decode_key(&raw, &path.display().to_string())?
            }
        };
        Self::from_key(&key)
    }

    /// Encrypts `plaintext`, bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut in_out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        in_out.extend_from_slice(plaintext);
        match self
            .key
            .seal_in_place_append_tag(Aad::from(aad), &mut in_out)
        {
            Ok(nonce) => {
                let mut out = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
                out.push(FORMAT_V1);
                out.extend_from_slice(nonce.as_ref());
                out.extend_from_slice(&in_out);
                out
            }
            Err(_) => {
                // Sealing fails only when AWS-LC cannot get a random nonce, and its RNG
                // aborts the process itself first; never return an unsealed secret.
                tracing::error!("AES-GCM sealing failed; stopping");
                std::process::abort();
            }
        }
    }

    /// Decrypts a value made by [`SecretBox::seal`] with the same key and `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (&format, rest) = sealed.split_first().ok_or(CryptoError::Open)?;
        if format != FORMAT_V1 || rest.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
            .map_err(|_| CryptoError::Open)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// A sealed known value to keep in the store, so that [`SecretBox::check_canary`] can
    /// tell at start whether the key is the one the store was written with.
    pub fn make_canary(&self) -> Vec<u8> {
        self.seal(CANARY_PLAINTEXT, CANARY_AAD)
    }

    /// `Err(CryptoError::WrongKey)` when `sealed` (from [`SecretBox::make_canary`]) was made
    /// with another key.
    pub fn check_canary(&self, sealed: &[u8]) -> Result<(), CryptoError> {
        match self.open(sealed, CANARY_AAD) {
            Ok(p) if p.as_slice() == CANARY_PLAINTEXT => Ok(()),
            _ => Err(CryptoError::WrongKey),
        }
    }
}

/// Accepts base64 (standard or URL-safe, padding optional, surrounding whitespace ignored)
/// of exactly 32 bytes, or a file of exactly 32 raw bytes.
fn decode_key(raw: &[u8], source_name: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let bad = |reason: &str| CryptoError::BadKey {
        source_name: source_name.to_string(),
        reason: reason.to_string(),
    };
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    let text = raw.trim_ascii();
    let decoded: Zeroizing<Vec<u8>> = match decode_base64_any(text) {
        Some(d) => d,
        None if raw.len() == KEY_LEN => Zeroizing::new(raw.to_vec()),
        None => {
            return Err(bad(
                "it must be the base64 of 32 random bytes (for example the output of `openssl rand -base64 32`)",
            ))
        }
    };
    if decoded.len() != KEY_LEN {
        return Err(bad(&format!(
            "it decodes to {} bytes, but exactly 32 are needed (for example `openssl rand -base64 32`)",
            decoded.len()
        )));
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}

fn decode_base64_any(text: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .map(Zeroizing::new)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn boxed(byte: u8) -> SecretBox {
        SecretBox::from_key(&[byte; 32]).unwrap()
    }

    #[test]
    fn sealed_secret_opens_with_same_key_and_aad() {
        let b = boxed(7);
        let sealed = b.seal(b"totp secret 20 bytes", b"user-1");
        assert_eq!(
            b.open(&sealed, b"user-1").unwrap().as_slice(),
            b"totp secret 20 bytes"
        );
        assert_eq!(sealed.len(), 1 + 12 + 20 + 16);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let b = boxed(7);
        let sealed = b.seal(b"", b"");
        assert!(b.open(&sealed, b"").unwrap().is_empty());
    }

    #[test]
    fn sealing_twice_uses_fresh_nonces() {
        let b = boxed(7);
        assert_ne!(b.seal(b"same", b"a"), b.seal(b"same", b"a"));
    }

    #[test]
    fn sealed_secret_moved_to_another_user_fails_to_open() {
        let b = boxed(7);
        let sealed = b.seal(b"secret", b"user-1");
        assert!(matches!(b.open(&sealed, b"user-2"), Err(CryptoError::Open)));
    }

    #[test]
    fn wrong_key_fails_to_open() {
        let sealed = boxed(7).seal(b"secret", b"u");
        assert!(matches!(
            boxed(8).open(&sealed, b"u"),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn tampered_or_truncated_sealed_values_fail_to_open() {
        let b = boxed(7);
        let sealed = b.seal(b"secret", b"u");
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert!(b.open(&t, b"u").is_err(), "flipped byte {i}");
        }
        for len in 0..sealed.len() {
            assert!(b.open(&sealed[..len], b"u").is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn canary_detects_wrong_key() {
        let canary = boxed(1).make_canary();
        assert!(boxed(1).check_canary(&canary).is_ok());
        assert!(matches!(
            boxed(2).check_canary(&canary),
            Err(CryptoError::WrongKey)
        ));
    }

    #[test]
    fn key_is_created_on_first_start_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = SecretBox::load_or_create(&data, None).unwrap();
        let path = data.join(SECRET_KEY_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let sealed = first.seal(b"x", b"a");
        let second = SecretBox::load_or_create(&data, None).unwrap();
        assert_eq!(second.open(&sealed, b"a").unwrap().as_slice(), b"x");
    }

    #[test]
    fn key_file_with_mode_0644_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        SecretBox::load_or_create(dir.path(), None).unwrap();
        let path = dir.path().join(SECRET_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretBox::load_or_create(dir.path(), None).unwrap_err();
        assert!(matches!(err, CryptoError::LoosePermissions(_)));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn operator_key_from_base64_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let text = STANDARD.encode([9u8; 32]);
        let b =
            SecretBox::load_or_create(dir.path(), Some(KeySource::Base64(text.into()))).unwrap();
        let sealed = b.seal(b"x", b"a");
        assert!(boxed(9).open(&sealed, b"a").is_ok());
        // No key file is created when the operator gives one.
        assert!(!dir.path().join(SECRET_KEY_FILE).exists());
    }

    #[test]
    fn operator_key_file_in_base64_or_raw_is_used_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("op.key");
        fs::write(&path, format!("  {}\n", STANDARD.encode([5u8; 32]))).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let b = SecretBox::load_or_create(dir.path(), Some(KeySource::File(path.clone()))).unwrap();
        assert!(boxed(5).open(&b.seal(b"x", b""), b"").is_ok());

        fs::write(&path, [6u8; 32]).unwrap();
        let b = SecretBox::load_or_create(dir.path(), Some(KeySource::File(path.clone()))).unwrap();
        assert!(boxed(6).open(&b.seal(b"x", b""), b"").is_ok());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            SecretBox::load_or_create(dir.path(), Some(KeySource::File(path))),
            Err(CryptoError::LoosePermissions(_))
        ));
    }

    #[test]
    fn operator_key_of_wrong_length_or_not_base64_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            STANDARD.encode([1u8; 16]),
            STANDARD.encode([1u8; 33]),
            "not base64 at all!".to_string(),
            String::new(),
        ] {
            let err = SecretBox::load_or_create(dir.path(), Some(KeySource::Base64(text.into())))
                .unwrap_err();
            assert!(matches!(err, CryptoError::BadKey { .. }), "{err}");
            assert!(err.to_string().contains(SECRET_KEY_ENV));
        }
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let text = STANDARD.encode([3u8; 32]);
        let src = KeySource::Base64(text.clone().into());
        assert!(!format!("{src:?}").contains(&text));
        assert_eq!(format!("{:?}", boxed(3)), "SecretBox([redacted])");
    }
}
