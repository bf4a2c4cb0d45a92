//! Small cryptographic primitives everyone uses: OS randomness, SHA-256, the secret box
//! that encrypts TOTP secrets at rest, and the careful creation and reading of key files.

mod key_file;
mod secret_box;

pub use key_file::{create_data_dir, read_key_file, write_new_key_file};
pub(crate) use key_file::{replace_file, sync_dir};
pub use secret_box::{KeySource, SecretBox, SECRET_KEY_ENV, SECRET_KEY_FILE};

use std::path::PathBuf;

use aws_lc_rs::digest;

/// Errors of the primitives and of key loading. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("Could not use {path}: {source}. Check that the path exists and that Portcullis may read and write it.")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The key file {path} can be read or written by other users. Run `chmod 600 {path}` and start again.", path = .0.display())]
    LoosePermissions(PathBuf),
    #[error("The key in {source_name} is not usable: {reason}.")]
    BadKey { source_name: String, reason: String },
    #[error("The data could not be decrypted: it was sealed with another secret key or for another account, or it is damaged. Check that the server uses the same secret key as when the data was written.")]
    Open,
    #[error("The secret key does not match the one this store was written with. Start the server with the original key (file or PORTCULLIS_SECRET_KEY).")]
    WrongKey,
    #[error("The cryptographic library refused an operation: {0}.")]
    Library(String),
}

/// `N` random bytes from the operating system's generator (via AWS-LC `RAND_bytes`).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if aws_lc_rs::rand::fill(&mut out).is_err() {
        // AWS-LC's RAND_bytes aborts by itself when it cannot get entropy and otherwise
        // always succeeds; should that ever change, stopping beats handing out weak ids.
        tracing::error!("the operating system's random number generator failed; stopping");
        std::process::abort();
    }
    out
}

/// SHA-256 of `data` (FIPS 180-4). Used to store tokens and session ids only as hashes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares two byte strings in constant time (for equal lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_fips_180_2_vector() {
        // FIPS 180-2 Appendix B.1: SHA-256("abc").
        let expected = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        assert_eq!(sha256(b"abc"), expected);
    }

    #[test]
    fn random_bytes_differ_between_calls() {
        let a: [u8; 32] = random_bytes();
        let b: [u8; 32] = random_bytes();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
