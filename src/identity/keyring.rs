//! The ES256 signing keys on disk: created on first start, rotated on demand, the previous
//! public keys kept in the JWKS for a day so assertions signed before a rotation still verify.
//!
//! A rotation (`portcullis keys rotate`) first only *publishes* the new key: it joins the
//! JWKS at once but signs only [`PROMOTE_AFTER_SECS`] later, when every verifier that
//! caches the JWKS (for up to 5 minutes, as we tell it to) has it. Whoever loads the keys
//! after that moment — the running server within half a minute, or the next start —
//! makes it the current key.
//!
//! Layout under `data_dir/signing-keys/` (directory 0700, files 0600):
//! - `<kid>.p8` — the current private key (and the next one during a rotation), PKCS#8
//!   v1 DER (RFC 5208);
//! - `index.json` — which kid is current, which is next, and the public keys of retired
//!   ones;
//! - `.lock` — held while the index is read and rewritten, so the command and a running
//!   server never overwrite each other's changes.
//!
//! Retired keys keep only their public half in the index: nothing needs their private key
//! once they no longer sign, so it is deleted at rotation.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{AssertionClaims, IdentityError};
use crate::clock::UnixSeconds;
use crate::crypto::{
    create_data_dir, read_key_file, replace_file, sha256, sync_dir, write_new_key_file, CryptoError,
};

/// Directory under the data directory that holds the signing keys.
pub const SIGNING_KEYS_DIR: &str = "signing-keys";
const INDEX_FILE: &str = "index.json";
/// How long a retired public key stays in the JWKS. Assertions live about a minute; a
/// day leaves room for caches and clock skew.
pub const RETIRED_KEY_RETENTION_SECS: i64 = 24 * 60 * 60;
/// Length of a kid: base64url of 8 bytes, no padding.
const KID_LEN: usize = 11;
/// How long a new key is published before it signs: the JWKS's `max-age` (300 s), the
/// server's re-reading of the keys (30 s), and room to spare.
pub const PROMOTE_AFTER_SECS: i64 = 10 * 60;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexV1 {
    version: u32,
    current: String,
    /// Published, not yet signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<NextKeyV1>,
    #[serde(default)]
    retired: Vec<RetiredKeyV1>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextKeyV1 {
    kid: String,
    published_at: UnixSeconds,
}

/// A key published by [`KeyRing::begin_rotation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextKey {
    pub kid: String,
    /// When it starts to sign.
    pub signs_from: UnixSeconds,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredKeyV1 {
    kid: String,
    /// base64url of the P-256 affine coordinates (RFC 7518 §6.2.1.2/3).
    x: String,
    y: String,
    retired_at: UnixSeconds,
}

/// One key in the JWKS (RFC 7517 §4, RFC 7518 §6.2).
#[derive(Serialize)]
struct JwkOut<'a> {
    kty: &'static str,
    crv: &'static str,
    x: &'a str,
    y: &'a str,
    #[serde(rename = "use")]
    use_: &'static str,
    alg: &'static str,
    kid: &'a str,
}

#[derive(Serialize)]
struct JwksOut<'a> {
    keys: Vec<JwkOut<'a>>,
}

#[derive(Serialize)]
struct JwsHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

/// The signing keys in memory: the current private key, parsed once, and the JWKS,
/// serialized once.
pub struct KeyRing {
    kid: String,
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
    /// base64url of the fixed JWS header, ready to prepend.
    header_b64: String,
    /// Kids in the JWKS, current first.
    published: Vec<String>,
    /// The kid published ahead of signing, during a rotation.
    next: Option<String>,
    jwks: Bytes,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("kid", &self.kid)
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(SIGNING_KEYS_DIR)
}

fn key_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("{kid}.p8"))
}

/// kid = base64url(SHA-256(uncompressed public point)[..8]): stable, short, and names
/// the public key itself.
fn kid_of(public_point: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(&sha256(public_point)[..8])
}

fn is_valid_kid(kid: &str) -> bool {
    kid.len() == KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Splits an uncompressed SEC1 P-256 point `04 || X || Y` into base64url x and y.
fn coordinates(public_point: &[u8]) -> Result<(String, String), IdentityError> {
    match public_point {
        [0x04, rest @ ..] if rest.len() == 64 => Ok((
            URL_SAFE_NO_PAD.encode(&rest[..32]),
            URL_SAFE_NO_PAD.encode(&rest[32..]),
        )),
        _ => Err(IdentityError::Sign(
            "the public key is not an uncompressed P-256 point".into(),
        )),
    }
}

fn read_index(path: &Path) -> Result<Option<IndexV1>, IdentityError> {
    let bad = |reason: String| IdentityError::BadIndex {
        path: path.display().to_string(),
        reason,
    };
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CryptoError::Io {
                path: path.to_path_buf(),
                source: e,
            }
            .into())
        }
    };
    let index: IndexV1 = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if index.version != 1 {
        return Err(bad(format!(
            "it has format version {}, this build knows version 1",
            index.version
        )));
    }
    if !is_valid_kid(&index.current)
        || index.retired.iter().any(|r| !is_valid_kid(&r.kid))
        || index.next.as_ref().is_some_and(|n| !is_valid_kid(&n.kid))
    {
        return Err(bad("it names a key id that is not valid".into()));
    }
    Ok(Some(index))
}

fn write_index(path: &Path, index: &IndexV1) -> Result<(), IdentityError> {
    let mut text =
        serde_json::to_vec_pretty(index).map_err(|e| IdentityError::Sign(e.to_string()))?;
    text.push(b'\n');
    replace_file(path, &text)?;
    Ok(())
}

/// How long to wait for another process holding the keys' lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Holds `signing-keys/.lock` until dropped. `None` on a read-only `signing-keys/`
/// without a lock file: nothing can be written there anyway.
fn lock_keys(dir: &Path) -> Result<Option<fs::File>, IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(".lock");
    let io = |source| CryptoError::Io {
        path: path.clone(),
        source,
    };
    let opened = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        // flock works on a descriptor opened for reading too.
        .or_else(|_| fs::File::open(&path));
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e).into()),
    };
    let started = std::time::Instant::now();
    loop {
        // std's `File::try_lock` needs Rust 1.89; this crate builds with 1.88.
        // SAFETY: `flock` only reads the descriptor, which `file` owns and keeps open.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(file));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(io(e).into());
        }
        if started.elapsed() >= LOCK_WAIT {
            return Err(IdentityError::BadIndex {
                path: path.display().to_string(),
                reason: "another process has held its lock for more than 10 seconds; \
                         check for a stuck `portcullis keys rotate`"
                    .into(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Creates `data_dir/signing-keys/` if needed and takes its lock; returns the directory
/// and the lock guard.
fn open_locked(data_dir: &Path) -> Result<(PathBuf, Option<fs::File>), IdentityError> {
    create_data_dir(data_dir)?;
    let dir = keys_dir(data_dir);
    create_data_dir(&dir)?;
    let lock = lock_keys(&dir)?;
    Ok((dir, lock))
}

/// Deletes private key files the index names neither as current nor as next — a retired
/// key whose deletion a crash interrupted, or a new one whose index write failed — and
/// the temporary files of interrupted writes. Call with the lock held. Best effort: a
/// file that cannot be deleted is logged and left.
fn remove_unnamed_key_files(dir: &Path, index: &IndexV1) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let named =
        |kid: &str| kid == index.current || index.next.as_ref().is_some_and(|n| n.kid == kid);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = match name.strip_suffix(".p8") {
            Some(kid) => is_valid_kid(kid) && !named(kid),
            None => name.contains(".tmp-"),
        };
        if stale {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(file = %name, error = %e, "could not delete a stale signing key file");
            } else {
                tracing::info!(file = %name, "deleted a signing key file the index no longer names");
            }
        }
    }
}

/// Generates a P-256 key and stores it as `<kid>.p8`; returns its kid.
fn create_key(dir: &Path) -> Result<String, IdentityError> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| IdentityError::Sign("generating a P-256 key failed".into()))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|e| IdentityError::Sign(e.to_string()))?;
    let kid = kid_of(pair.public_key().as_ref());
    let path = key_path(dir, &kid);
    if !write_new_key_file(&path, pkcs8.as_ref())? {
        return Err(IdentityError::BadKeyFile {
            path: path.display().to_string(),
            reason: "a key file with this id already exists".into(),
        });
    }
    Ok(kid)
}

impl KeyRing {
    /// Loads the signing keys from `data_dir/signing-keys/`, creating the first key if there
    /// is none. A next key whose time has come becomes the current one; retired keys older
    /// than [`RETIRED_KEY_RETENTION_SECS`] are dropped.
    pub fn load_or_create(data_dir: &Path, now: UnixSeconds) -> Result<Self, IdentityError> {
        Self::load_promoting(data_dir, now, &|_| true)
    }

    /// Like [`Self::load_or_create`], but a due next key becomes current only when
    /// `may_promote(kid)` agrees (a running server asks whether it has published it long
    /// enough itself).
    pub fn load_promoting(
        data_dir: &Path,
        now: UnixSeconds,
        may_promote: &dyn Fn(&str) -> bool,
    ) -> Result<Self, IdentityError> {
        let (dir, _lock) = open_locked(data_dir)?;
        let index = Self::settle(&dir, now, may_promote)?;
        Self::from_index(&dir, &index)
    }

    /// The index as it should be at `now`, written back if that changed it. Call with the
    /// lock held.
    fn settle(
        dir: &Path,
        now: UnixSeconds,
        may_promote: &dyn Fn(&str) -> bool,
    ) -> Result<IndexV1, IdentityError> {
        let index_path = dir.join(INDEX_FILE);
        let mut index = match read_index(&index_path)? {
            Some(index) => index,
            None => {
                let kid = create_key(dir)?;
                let index = IndexV1 {
                    version: 1,
                    current: kid,
                    next: None,
                    retired: Vec::new(),
                };
                write_index(&index_path, &index)?;
                tracing::info!(kid = %index.current, "created a new assertion signing key");
                return Ok(index);
            }
        };

        // A next key that cannot be read never signed: drop it rather than refuse to start.
        if let Some(next) = &index.next {
            if let Err(e) = Self::public_coordinates(dir, &next.kid) {
                tracing::warn!(kid = %next.kid, error = %e, "dropping the unusable next signing key; run `portcullis keys rotate` again");
                index.next = None;
                write_index(&index_path, &index)?;
            }
        }
        let due = index.next.as_ref().is_some_and(|n| {
            now >= n.published_at.saturating_add(PROMOTE_AFTER_SECS) && may_promote(&n.kid)
        });
        if let Some(next) = index.next.take_if(|_| due) {
            Self::replace_current(dir, &mut index, next.kid, now)?;
        }

        remove_unnamed_key_files(dir, &index);
        let before = index.retired.len();
        index
            .retired
            .retain(|r| now.saturating_sub(r.retired_at) < RETIRED_KEY_RETENTION_SECS);
        if index.retired.len() != before {
            // Dropping stale public keys is housekeeping: if the index cannot be rewritten
            // now, they are left out of the JWKS anyway and dropped on a later load.
            if let Err(e) = write_index(&index_path, &index) {
                tracing::warn!(error = %e, "could not rewrite the signing key index");
            }
        }
        Ok(index)
    }

    /// Publishes a new key that starts signing [`PROMOTE_AFTER_SECS`] from `now`. Refused
    /// while an earlier one is still waiting, so a key is never retired unpublished.
    pub fn begin_rotation(data_dir: &Path, now: UnixSeconds) -> Result<NextKey, IdentityError> {
        let (dir, _lock) = open_locked(data_dir)?;
        let mut index = Self::settle(&dir, now, &|_| true)?;
        if let Some(next) = &index.next {
            return Err(IdentityError::RotationPending {
                kid: next.kid.clone(),
                signs_from: next.published_at.saturating_add(PROMOTE_AFTER_SECS),
            });
        }
        let kid = create_key(&dir)?;
        index.next = Some(NextKeyV1 {
            kid: kid.clone(),
            published_at: now,
        });
        write_index(&dir.join(INDEX_FILE), &index)?;
        tracing::info!(current = %index.current, next = %kid, "published a new assertion signing key");
        Ok(NextKey {
            kid,
            signs_from: now.saturating_add(PROMOTE_AFTER_SECS),
        })
    }

    /// `new_kid` (its key file written already) becomes the current key; the previous one
    /// stays published, public half only, for [`RETIRED_KEY_RETENTION_SECS`]. Call with
    /// the lock held.
    fn replace_current(
        dir: &Path,
        index: &mut IndexV1,
        new_kid: String,
        now: UnixSeconds,
    ) -> Result<(), IdentityError> {
        let (x, y) = Self::public_coordinates(dir, &index.current)?;
        let old_kid = std::mem::replace(&mut index.current, new_kid);
        index.retired.insert(
            0,
            RetiredKeyV1 {
                kid: old_kid.clone(),
                x,
                y,
                retired_at: now,
            },
        );
        // The index is the source of truth: once it names the new key, the old private
        // key is no longer needed. A crash before this line leaves an unused key file.
        write_index(&dir.join(INDEX_FILE), index)?;
        let old_path = key_path(dir, &old_kid);
        if let Err(e) = fs::remove_file(&old_path) {
            tracing::warn!(path = %old_path.display(), error = %e, "could not delete the retired signing key");
        }
        sync_dir(dir)?;
        tracing::info!(old = %old_kid, new = %index.current, "the new assertion signing key now signs");
        Ok(())
    }

    /// Makes a new current key at once, without publishing it first. For tests that need
    /// assertions from two keys; operators use [`Self::begin_rotation`].
    #[cfg(test)]
    pub(crate) fn rotate(data_dir: &Path, now: UnixSeconds) -> Result<Self, IdentityError> {
        let (dir, _lock) = open_locked(data_dir)?;
        let mut index = Self::settle(&dir, now, &|_| true)?;
        let new_kid = create_key(&dir)?;
        Self::replace_current(&dir, &mut index, new_kid, now)?;
        Self::from_index(&dir, &index)
    }

    /// The private key in `<kid>.p8`, checked to be the key that kid names.
    fn read_key_pair(dir: &Path, kid: &str) -> Result<EcdsaKeyPair, IdentityError> {
        let path = key_path(dir, kid);
        let bad = |reason: &str| IdentityError::BadKeyFile {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        let der = read_key_file(&path)?;
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| bad("it is not a P-256 PKCS#8 private key"))?;
        if kid_of(key_pair.public_key().as_ref()) != kid {
            return Err(bad("the key in the file does not match its name"));
        }
        Ok(key_pair)
    }

    /// The public half of the key in `<kid>.p8`, as JWK coordinates.
    fn public_coordinates(dir: &Path, kid: &str) -> Result<(String, String), IdentityError> {
        coordinates(Self::read_key_pair(dir, kid)?.public_key().as_ref())
    }

    fn from_index(dir: &Path, index: &IndexV1) -> Result<Self, IdentityError> {
        let key_pair = Self::read_key_pair(dir, &index.current)?;
        let kid = index.current.clone();
        let (x, y) = coordinates(key_pair.public_key().as_ref())?;
        let next = match &index.next {
            Some(next) => Some((next.kid.as_str(), Self::public_coordinates(dir, &next.kid)?)),
            None => None,
        };

        let mut keys = vec![JwkOut {
            kty: "EC",
            crv: "P-256",
            x: &x,
            y: &y,
            use_: "sig",
            alg: "ES256",
            kid: &kid,
        }];
        keys.extend(next.iter().map(|(kid, (x, y))| JwkOut {
            kty: "EC",
            crv: "P-256",
            x,
            y,
            use_: "sig",
            alg: "ES256",
            kid,
        }));
        keys.extend(
            index
                .retired
                .iter()
                .filter(|r| r.kid != kid)
                .map(|r| JwkOut {
                    kty: "EC",
                    crv: "P-256",
                    x: &r.x,
                    y: &r.y,
                    use_: "sig",
                    alg: "ES256",
                    kid: &r.kid,
                }),
        );
        let published = keys.iter().map(|k| k.kid.to_string()).collect();
        let jwks = serde_json::to_vec(&JwksOut { keys })
            .map_err(|e| IdentityError::Sign(e.to_string()))?;

        let header = serde_json::to_vec(&JwsHeader {
            alg: "ES256",
            typ: "JWT",
            kid: &kid,
        })
        .map_err(|e| IdentityError::Sign(e.to_string()))?;

        Ok(Self {
            header_b64: URL_SAFE_NO_PAD.encode(header),
            kid,
            key_pair,
            rng: SystemRandom::new(),
            published,
            next: index.next.as_ref().map(|n| n.kid.clone()),
            jwks: Bytes::from(jwks),
        })
    }

    /// The kid of the current signing key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The kid published ahead of signing, during a rotation.
    pub fn next_kid(&self) -> Option<&str> {
        self.next.as_deref()
    }

    /// Kids published in the JWKS, current first.
    pub fn published_kids(&self) -> &[String] {
        &self.published
    }

    /// The JWKS document (RFC 7517 §5), serialized once at load.
    pub fn jwks_json(&self) -> String {
        String::from_utf8_lossy(&self.jwks).into_owned()
    }

    /// The JWKS document as shared bytes: cloning is a reference-count increment, so the
    /// response body on every origin costs no copy.
    pub fn jwks_bytes(&self) -> Bytes {
        self.jwks.clone()
    }

    /// Signs `claims` as a compact JWS with ES256 (RFC 7515 §7.1, RFC 7518 §3.4).
    ///
    /// Built here rather than through `jsonwebtoken::encode`, which re-parses the PKCS#8
    /// key on every call (measured: about a third of the cost); the signature is the
    /// fixed-width `R || S` that RFC 7518 §3.4 requires, and the tests verify the result
    /// with `jsonwebtoken`.
    pub fn sign_assertion(&self, claims: &AssertionClaims) -> Result<String, IdentityError> {
        let payload = serde_json::to_vec(claims).map_err(|e| IdentityError::Sign(e.to_string()))?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 96);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self
            .key_pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| IdentityError::Sign("ECDSA signing failed".into()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::identity::verify_with_jwks;
    use std::os::unix::fs::PermissionsExt;

    const NOW: UnixSeconds = 1_700_000_000;
    const ISS: &str = "https://login.example.com";

    fn claims(aud: &str, iat: UnixSeconds) -> AssertionClaims {
        AssertionClaims {
            iss: ISS.into(),
            aud: aud.into(),
            sub: "0123456789abcdef0123456789abcdef".into(),
            preferred_username: "alice".into(),
            email: "alice@example.com".into(),
            name: "Alice Example".into(),
            iat,
            exp: iat + 60,
            auth_time: iat - 100,
            amr: vec!["pwd".into(), "otp".into()],
            sid: "s-1".into(),
        }
    }

    #[test]
    fn signed_assertion_verifies_against_the_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let c = claims("portal", NOW);
        let token = ring.sign_assertion(&c).unwrap();
        let got = verify_with_jwks(&token, &ring.jwks_json(), ISS, "portal", NOW + 1).unwrap();
        assert_eq!(got, c);

        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(ring.kid()));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
    }

    #[test]
    fn assertion_for_another_app_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let token = ring.sign_assertion(&claims("portal", NOW)).unwrap();
        assert!(matches!(
            verify_with_jwks(&token, &ring.jwks_json(), ISS, "analytics", NOW),
            Err(IdentityError::WrongAudience)
        ));
        assert!(matches!(
            verify_with_jwks(
                &token,
                &ring.jwks_json(),
                "https://evil.example",
                "portal",
                NOW
            ),
            Err(IdentityError::WrongIssuer)
        ));
    }

    #[test]
    fn expired_assertion_is_refused_at_exp_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let token = ring.sign_assertion(&claims("portal", NOW)).unwrap();
        let jwks = ring.jwks_json();
        assert!(verify_with_jwks(&token, &jwks, ISS, "portal", NOW + 59).is_ok());
        assert!(matches!(
            verify_with_jwks(&token, &jwks, ISS, "portal", NOW + 60),
            Err(IdentityError::Expired)
        ));
    }

    #[test]
    fn assertion_issued_in_the_future_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let token = ring.sign_assertion(&claims("portal", NOW + 600)).unwrap();
        assert!(verify_with_jwks(&token, &ring.jwks_json(), ISS, "portal", NOW).is_err());
    }

    #[test]
    fn tampered_assertion_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let token = ring.sign_assertion(&claims("portal", NOW)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims("portal", NOW);
        forged.preferred_username = "admin".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let forged_token = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(matches!(
            verify_with_jwks(&forged_token, &ring.jwks_json(), ISS, "portal", NOW),
            Err(IdentityError::BadSignature)
        ));
        for bad in ["", "a.b", "a.b.c", "....", &token[..token.len() - 3]] {
            assert!(verify_with_jwks(bad, &ring.jwks_json(), ISS, "portal", NOW).is_err());
        }
    }

    #[test]
    fn assertion_with_another_algorithm_is_refused() {
        // alg=none and HS256 tokens must never be accepted (RFC 8725 §2.1).
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("portal", NOW)).unwrap());
        for header in [
            format!(r#"{{"alg":"none","kid":"{}"}}"#, ring.kid()),
            format!(r#"{{"alg":"HS256","kid":"{}"}}"#, ring.kid()),
        ] {
            let token = format!("{}.{}.", URL_SAFE_NO_PAD.encode(header), payload);
            assert!(verify_with_jwks(&token, &ring.jwks_json(), ISS, "portal", NOW).is_err());
        }
    }

    #[test]
    fn token_from_another_key_ring_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ring_a = KeyRing::load_or_create(a.path(), NOW).unwrap();
        let ring_b = KeyRing::load_or_create(b.path(), NOW).unwrap();
        let token = ring_a.sign_assertion(&claims("portal", NOW)).unwrap();
        assert!(matches!(
            verify_with_jwks(&token, &ring_b.jwks_json(), ISS, "portal", NOW),
            Err(IdentityError::UnknownKey)
        ));
    }

    #[test]
    fn jwks_has_the_rfc_7517_fields() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let v: serde_json::Value = serde_json::from_str(&ring.jwks_json()).unwrap();
        let keys = v["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let k = &keys[0];
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["alg"], "ES256");
        assert_eq!(k["kid"], ring.kid());
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(k["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(k["y"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert!(
            k.get("d").is_none(),
            "the private key must never be published"
        );
        assert_eq!(ring.jwks_bytes(), ring.jwks_json().as_bytes());
        // It also parses as a jsonwebtoken JwkSet, as app libraries would read it.
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&ring.jwks_json()).unwrap();
        assert!(set.find(ring.kid()).is_some());
    }

    #[test]
    fn key_is_created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let path = dir
            .path()
            .join(SIGNING_KEYS_DIR)
            .join(format!("{}.p8", first.kid()));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let keys_dir_mode = fs::metadata(dir.path().join(SIGNING_KEYS_DIR))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(keys_dir_mode & 0o777, 0o700);
        let second = KeyRing::load_or_create(dir.path(), NOW + 10).unwrap();
        assert_eq!(first.kid(), second.kid());
        assert_eq!(first.jwks_json(), second.jwks_json());
        assert_eq!(first.kid().len(), KID_LEN);
    }

    #[test]
    fn signing_key_with_mode_0644_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let path = dir
            .path()
            .join(SIGNING_KEYS_DIR)
            .join(format!("{}.p8", ring.kid()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyRing::load_or_create(dir.path(), NOW).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::Key(CryptoError::LoosePermissions(_))
        ));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn a_rotation_publishes_the_new_key_first_and_signs_with_it_later() {
        let dir = tempfile::tempdir().unwrap();
        let old = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let next = KeyRing::begin_rotation(dir.path(), NOW).unwrap();
        assert_eq!(next.signs_from, NOW + PROMOTE_AFTER_SECS);

        // Published at once, not yet signing.
        let waiting = KeyRing::load_or_create(dir.path(), NOW + PROMOTE_AFTER_SECS - 1).unwrap();
        assert_eq!(waiting.kid(), old.kid());
        assert_eq!(waiting.published_kids(), [old.kid(), next.kid.as_str()]);
        let old_token = waiting.sign_assertion(&claims("portal", NOW)).unwrap();

        // A second rotation waits for the first.
        let err = KeyRing::begin_rotation(dir.path(), NOW + 1).unwrap_err();
        assert!(
            matches!(err, IdentityError::RotationPending { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&next.kid), "{err}");

        // From its time on it signs; the old key is retired, public half only.
        let promoted = KeyRing::load_or_create(dir.path(), NOW + PROMOTE_AFTER_SECS).unwrap();
        assert_eq!(promoted.kid(), next.kid);
        assert_eq!(promoted.published_kids(), [next.kid.as_str(), old.kid()]);
        let keys_dir = dir.path().join(SIGNING_KEYS_DIR);
        assert!(!keys_dir.join(format!("{}.p8", old.kid())).exists());
        let new_token = promoted
            .sign_assertion(&claims("portal", NOW + PROMOTE_AFTER_SECS))
            .unwrap();
        let jwks = promoted.jwks_json();
        let at = NOW + PROMOTE_AFTER_SECS + 1;
        assert!(verify_with_jwks(&old_token, &jwks, ISS, "portal", NOW + 1).is_ok());
        assert!(verify_with_jwks(&new_token, &jwks, ISS, "portal", at).is_ok());
        // And the next rotation may begin.
        assert!(KeyRing::begin_rotation(dir.path(), at).is_ok());
    }

    /// The lock on the index: of rotations started at once, one wins and the others are
    /// told to wait; no key file is left that the index does not name.
    #[test]
    fn rotations_started_at_once_publish_one_key() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let results: Vec<_> = (0..8)
            .map(|_| {
                let path = dir.path().to_path_buf();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    KeyRing::begin_rotation(&path, NOW)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, IdentityError::RotationPending { .. })));
        let key_files = std::fs::read_dir(dir.path().join(SIGNING_KEYS_DIR))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "p8")
            })
            .count();
        assert_eq!(key_files, 2);
    }

    #[test]
    fn stale_key_files_go_and_an_unreadable_next_key_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let keys_dir = dir.path().join(SIGNING_KEYS_DIR);
        // A retired key a crash left behind, a temporary file, and a file not ours.
        std::fs::write(keys_dir.join("AAAAAAAAAAA.p8"), b"old").unwrap();
        std::fs::write(keys_dir.join("index.tmp-0011"), b"{").unwrap();
        std::fs::write(keys_dir.join("notes.p8"), b"mine").unwrap();
        KeyRing::load_or_create(dir.path(), NOW + 1).unwrap();
        assert!(!keys_dir.join("AAAAAAAAAAA.p8").exists());
        assert!(!keys_dir.join("index.tmp-0011").exists());
        assert!(keys_dir.join("notes.p8").exists());
        assert!(keys_dir.join(format!("{}.p8", ring.kid())).exists());

        let next = KeyRing::begin_rotation(dir.path(), NOW + 2).unwrap();
        let next_path = keys_dir.join(format!("{}.p8", next.kid));
        std::fs::write(&next_path, b"garbage").unwrap();
        let loaded = KeyRing::load_or_create(dir.path(), NOW + 3).unwrap();
        assert_eq!(loaded.kid(), ring.kid());
        assert_eq!(loaded.published_kids(), [ring.kid()]);
        assert!(!next_path.exists());
        // And a new rotation may begin.
        assert!(KeyRing::begin_rotation(dir.path(), NOW + 4).is_ok());
    }

    #[test]
    fn after_rotation_old_and_new_assertions_both_verify() {
        let dir = tempfile::tempdir().unwrap();
        let old = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let old_token = old.sign_assertion(&claims("portal", NOW)).unwrap();

        let new = KeyRing::rotate(dir.path(), NOW + 5).unwrap();
        assert_ne!(old.kid(), new.kid());
        assert_eq!(new.published_kids(), [new.kid(), old.kid()]);
        let new_token = new.sign_assertion(&claims("portal", NOW + 5)).unwrap();
        let jwks = new.jwks_json();
        assert!(verify_with_jwks(&old_token, &jwks, ISS, "portal", NOW + 6).is_ok());
        assert!(verify_with_jwks(&new_token, &jwks, ISS, "portal", NOW + 6).is_ok());

        // The retired private key is gone from disk; only its public half is kept.
        let keys_dir = dir.path().join(SIGNING_KEYS_DIR);
        assert!(!keys_dir.join(format!("{}.p8", old.kid())).exists());
        // A restart signs with the new key and still publishes the old one.
        let reloaded = KeyRing::load_or_create(dir.path(), NOW + 10).unwrap();
        assert_eq!(reloaded.kid(), new.kid());
        assert_eq!(reloaded.published_kids(), new.published_kids());
    }

    #[test]
    fn retired_keys_older_than_a_day_are_dropped_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let old = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let old_token = old.sign_assertion(&claims("portal", NOW)).unwrap();
        let rotated = KeyRing::rotate(dir.path(), NOW).unwrap();

        let later = NOW + RETIRED_KEY_RETENTION_SECS - 1;
        assert_eq!(
            KeyRing::load_or_create(dir.path(), later)
                .unwrap()
                .published_kids()
                .len(),
            2
        );
        let much_later = NOW + RETIRED_KEY_RETENTION_SECS;
        let ring = KeyRing::load_or_create(dir.path(), much_later).unwrap();
        assert_eq!(ring.published_kids(), [rotated.kid()]);
        assert!(matches!(
            verify_with_jwks(&old_token, &ring.jwks_json(), ISS, "portal", NOW),
            Err(IdentityError::UnknownKey)
        ));
        // The drop was written back: loading at an earlier time does not resurrect it.
        let again = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        assert_eq!(again.published_kids().len(), 1);
    }

    #[test]
    fn two_rotations_publish_three_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let b = KeyRing::rotate(dir.path(), NOW + 1).unwrap();
        let c = KeyRing::rotate(dir.path(), NOW + 2).unwrap();
        assert_eq!(c.published_kids(), [c.kid(), b.kid(), a.kid()]);
        let p8_files = fs::read_dir(dir.path().join(SIGNING_KEYS_DIR))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".p8")
            })
            .count();
        assert_eq!(p8_files, 1);
    }

    #[test]
    fn index_naming_a_path_outside_the_key_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let index = dir.path().join(SIGNING_KEYS_DIR).join(INDEX_FILE);
        fs::write(
            &index,
            r#"{"version":1,"current":"../../etc/pw","retired":[]}"#,
        )
        .unwrap();
        assert!(matches!(
            KeyRing::load_or_create(dir.path(), NOW),
            Err(IdentityError::BadIndex { .. })
        ));
    }

    #[test]
    fn key_file_not_matching_its_kid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let keys = dir.path().join(SIGNING_KEYS_DIR);
        let other = create_key(&keys).unwrap();
        fs::remove_file(keys.join(format!("{}.p8", ring.kid()))).unwrap();
        fs::rename(
            keys.join(format!("{other}.p8")),
            keys.join(format!("{}.p8", ring.kid())),
        )
        .unwrap();
        assert!(matches!(
            KeyRing::load_or_create(dir.path(), NOW),
            Err(IdentityError::BadKeyFile { .. })
        ));
    }
}
