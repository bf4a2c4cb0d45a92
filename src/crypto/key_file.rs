//! Creating and reading key files so that only the server's own user can ever read them:
//! the data directory is 0700, key files are 0600, and a key file others can touch is refused.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use super::{random_bytes, CryptoError};

/// Key files larger than this are certainly not ours; refuse rather than read them whole.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

fn io_err(path: &Path, source: std::io::Error) -> CryptoError {
    CryptoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist yet.
pub fn create_data_dir(dir: &Path) -> Result<(), CryptoError> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(io_err(dir, e)),
    }
    let meta = fs::metadata(dir).map_err(|e| io_err(dir, e))?;
    if !meta.is_dir() {
        return Err(io_err(
            dir,
            std::io::Error::new(ErrorKind::AlreadyExists, "it exists and is not a directory"),
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            "the data directory can be written by other users; run `chmod 700` on it"
        );
    }
    Ok(())
}

/// Reads a key file, refusing it when its mode lets group or others read or write it.
///
/// The mode is checked on the opened file (not on the path before opening), so the file
/// read is the file checked.
pub fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut file = File::open(path).map_err(|e| io_err(path, e))?;
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(io_err(
            path,
            std::io::Error::new(ErrorKind::InvalidInput, "it is not a regular file"),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(CryptoError::LoosePermissions(path.to_path_buf()));
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(CryptoError::BadKey {
            source_name: path.display().to_string(),
            reason: "the file is far too large to be a key".into(),
        });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.read_to_end(&mut buf).map_err(|e| io_err(path, e))?;
    Ok(buf)
}

/// Writes `contents` to a new file at `path` with mode 0600, durably and atomically.
///
/// Returns `Ok(false)` without touching anything when `path` already exists (another
/// process won the race to create it; read that one). The content goes to a temporary
/// file created with `O_EXCL` and mode 0600, is fsynced, then hard-linked to `path`
/// (which fails if `path` exists), so `path` never appears empty or half-written, even
/// after a crash. The directory is fsynced so the new name survives a power loss.
pub fn write_new_key_file(path: &Path, contents: &[u8]) -> Result<bool, CryptoError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".to_string());
    let suffix: [u8; 8] = random_bytes();
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        // The umask cannot widen 0600, but a restrictive umask could narrow it; set it
        // explicitly so the owner can always read the key back.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err(&tmp, e))?;
        file.write_all(contents).map_err(|e| io_err(&tmp, e))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            // Some file systems (certain FUSE and network mounts) have no hard links:
            // fall back to creating the file in place, still O_EXCL and 0600.
            Err(_) => write_in_place(path, contents),
        }
    })();
    let _ = fs::remove_file(&tmp);
    let created = result?;
    if created {
        sync_dir(dir)?;
    }
    Ok(created)
}

fn write_in_place(path: &Path, contents: &[u8]) -> Result<bool, CryptoError> {
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io_err(path, e)),
    };
    file.write_all(contents).map_err(|e| io_err(path, e))?;
    file.sync_all().map_err(|e| io_err(path, e))?;
    Ok(true)
}

/// Replaces `path` atomically with `contents` (temp file, fsync, rename, fsync dir).
/// Used for small index files, not for keys.
pub(crate) fn replace_file(path: &Path, contents: &[u8]) -> Result<(), CryptoError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let suffix: [u8; 8] = random_bytes();
    let tmp = path.with_extension(format!(
        "tmp-{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        file.write_all(contents).map_err(|e| io_err(&tmp, e))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// fsyncs a directory so that names created or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CryptoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn new_key_file_is_created_with_mode_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(write_new_key_file(&path, b"secret").unwrap());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_key_file(&path).unwrap().as_slice(), b"secret");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn existing_key_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(write_new_key_file(&path, b"first").unwrap());
        assert!(!write_new_key_file(&path, b"second").unwrap());
        assert_eq!(read_key_file(&path).unwrap().as_slice(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn key_file_readable_by_others_is_refused_with_chmod_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new_key_file(&path, b"secret").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o602, 0o620, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = read_key_file(&path).unwrap_err();
            assert!(matches!(err, CryptoError::LoosePermissions(_)), "{mode:o}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
            assert!(err.to_string().contains(&path.display().to_string()));
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_key_file(&path).is_ok());
    }

    #[test]
    fn data_dir_is_created_with_mode_0700() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b/data");
        create_data_dir(&data).unwrap();
        let mode = fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A second call on an existing directory is fine.
        create_data_dir(&data).unwrap();
    }

    #[test]
    fn data_dir_that_is_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::write(&data, b"x").unwrap();
        assert!(create_data_dir(&data).is_err());
    }

    #[test]
    fn replace_file_swaps_content_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        replace_file(&path, b"one").unwrap();
        replace_file(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
