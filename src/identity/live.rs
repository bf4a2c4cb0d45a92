//! The signing keys a running server uses, read again from disk every half minute so a
//! rotation begun with `portcullis keys rotate` reaches it without a restart: the new key
//! is published as soon as it is seen and signs from its promotion time on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{IdentityError, KeyRing};
use crate::clock::UnixSeconds;

/// How often a running server reads the keys again. Part of
/// [`super::PROMOTE_AFTER_SECS`]'s budget.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// How long this server must itself have published a new key before it signs with it:
/// the JWKS's `max-age` plus one re-read. Normally the ten minutes of the rotation cover
/// this; it matters when re-reading failed for a while and the key is first seen late.
const SERVED_BEFORE_SIGNING_SECS: UnixSeconds = 300 + 30;

pub struct LiveKeys {
    data_dir: PathBuf,
    ring: RwLock<Arc<KeyRing>>,
    /// The next key this process publishes, and since when.
    publishing: std::sync::Mutex<Option<(String, UnixSeconds)>>,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysChanged {
    /// The kid that signs now.
    pub signing: String,
    /// The kids in the JWKS, the signing one first.
    pub published: Vec<String>,
}

impl LiveKeys {
    /// At start a due key signs at once: any JWKS this server published before it
    /// stopped is older than its `max-age` by then.
    pub fn load(data_dir: &Path, now: UnixSeconds) -> Result<Self, IdentityError> {
        let ring = KeyRing::load_or_create(data_dir, now)?;
        let publishing = ring.next_kid().map(|kid| (kid.to_string(), now));
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            ring: RwLock::new(Arc::new(ring)),
            publishing: std::sync::Mutex::new(publishing),
        })
    }

    pub fn current(&self) -> Arc<KeyRing> {
        // A poisoned lock still holds a whole ring: it is only ever replaced, not edited.
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the keys from disk again (promoting a next key whose time has come); `Some`
    /// when what signs or what is published changed.
    pub fn reload(&self, now: UnixSeconds) -> Result<Option<KeysChanged>, IdentityError> {
        let mut publishing = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let served_long_enough = |kid: &str| {
            publishing.as_ref().is_some_and(|(published, since)| {
                published == kid && now >= since.saturating_add(SERVED_BEFORE_SIGNING_SECS)
            })
        };
        let fresh = KeyRing::load_promoting(&self.data_dir, now, &served_long_enough)?;
        match fresh.next_kid() {
            Some(kid) if publishing.as_ref().is_some_and(|(p, _)| p == kid) => {}
            Some(kid) => *publishing = Some((kid.to_string(), now)),
            None => *publishing = None,
        }
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        if fresh.kid() == ring.kid() && fresh.published_kids() == ring.published_kids() {
            return Ok(None);
        }
        let changed = KeysChanged {
            signing: fresh.kid().to_string(),
            published: fresh.published_kids().to_vec(),
        };
        *ring = Arc::new(fresh);
        Ok(Some(changed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::identity::PROMOTE_AFTER_SECS;

    const NOW: UnixSeconds = 1_700_000_000;

    #[test]
    fn a_reload_sees_a_published_key_and_later_its_promotion() {
        let dir = tempfile::tempdir().unwrap();
        let keys = LiveKeys::load(dir.path(), NOW).unwrap();
        let old = keys.current().kid().to_string();
        assert_eq!(keys.reload(NOW + 1).unwrap(), None);

        let next = KeyRing::begin_rotation(dir.path(), NOW + 2).unwrap();
        let seen = keys.reload(NOW + 3).unwrap().unwrap();
        assert_eq!(seen.signing, old);
        assert_eq!(seen.published, [old.clone(), next.kid.clone()]);
        assert_eq!(keys.current().published_kids(), seen.published);
        assert_eq!(keys.reload(NOW + 4).unwrap(), None);

        let promoted = keys.reload(NOW + 2 + PROMOTE_AFTER_SECS).unwrap().unwrap();
        assert_eq!(promoted.signing, next.kid);
        assert_eq!(promoted.published, [next.kid, old]);
        assert_eq!(keys.current().kid(), promoted.signing);
    }

    /// Re-reading failed through the rotation's ten minutes: the key is seen only when it
    /// is due, and is published for the JWKS's max-age before it signs.
    #[test]
    fn a_key_first_seen_when_due_is_published_before_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let keys = LiveKeys::load(dir.path(), NOW).unwrap();
        let old = keys.current().kid().to_string();
        let next = KeyRing::begin_rotation(dir.path(), NOW + 1).unwrap();

        let late = NOW + 1 + PROMOTE_AFTER_SECS + 60;
        let seen = keys.reload(late).unwrap().unwrap();
        assert_eq!(seen.signing, old);
        assert_eq!(seen.published, [old.clone(), next.kid.clone()]);
        assert_eq!(keys.reload(late + 329).unwrap(), None);
        let promoted = keys.reload(late + 330).unwrap().unwrap();
        assert_eq!(promoted.signing, next.kid);
    }
}
