//! Verified app sessions kept in memory, so a proxied request costs no store read and no
//! signature. Revocation still takes effect at once: every entry remembers the store's
//! revocation generation it was verified under, and any sign-out, reset, disable, grant
//! change or deletion moves that generation on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use crate::clock::UnixSeconds;
use crate::store::{UserId, UserStatus};

const SHARDS: usize = 16;
/// Bounds memory (an entry with its cached assertion is about 1.5 KiB, so ≈ 24 MiB in
/// all): beyond this, the longest-verified entry is dropped and its session simply goes
/// back to the store on its next request.
pub const MAX_ENTRIES: usize = 16 * 1024;

/// A signed-in person on one app, as verified against the store. Only what the proxied
/// path needs is kept, and nothing twice: with many sessions in use, the size of an
/// entry decides how many fit in memory.
pub struct SignedIn {
    pub user_id: UserId,
    pub user_status: UserStatus,
    pub sessions_valid_after: UnixSeconds,
    /// Whether the user may use `app_id`; a grant change moves the generation on.
    pub granted: bool,
    pub app_id: String,
    /// The auth-origin session this app session hangs off.
    pub parent_hash: [u8; 32],
    pub sid: String,
    pub auth_time: UnixSeconds,
    pub amr: Vec<String>,
    pub created_at: UnixSeconds,
    /// The earlier of the app session's and the parent's absolute end.
    pub expires_at: UnixSeconds,
    pub last_seen: AtomicI64,
    pub generation: u64,
    /// The user's name, e-mail and display name as header values, built once per
    /// sign-in rather than per request. They are the UTF-8 bytes of the stored strings.
    pub header_values: [HeaderValue; 3],
    /// The last signed assertion and when it was issued, reused for part of its life.
    pub assertion: Mutex<Option<(HeaderValue, UnixSeconds)>>,
}

pub struct SessionCache {
    shards: Vec<Mutex<Shard>>,
}

/// Entries and the order they were verified in: the longest-verified entry goes first
/// when the shard is full, in constant time. (Scanning the shard for the entry nearest
/// its end cost a tenth of the CPU time with 100,000 sessions in rotation.)
#[derive(Default)]
struct Shard {
    entries: HashMap<[u8; 32], Arc<SignedIn>>,
    /// May still name entries removed since; those are skipped.
    order: VecDeque<[u8; 32]>,
}

const SHARD_CAPACITY: usize = MAX_ENTRIES / SHARDS;

impl Default for SessionCache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

impl SessionCache {
    fn shard(&self, key: &[u8; 32]) -> &Mutex<Shard> {
        // Keys are SHA-256 outputs: any byte is uniformly spread.
        &self.shards[key[0] as usize % SHARDS]
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<SignedIn>> {
        let shard = self.shard(key).lock().ok()?;
        shard.entries.get(key).cloned()
    }

    pub fn insert(&self, key: [u8; 32], entry: Arc<SignedIn>) {
        let Ok(mut shard) = self.shard(&key).lock() else {
            return;
        };
        let shard = &mut *shard;
        if shard.entries.insert(key, entry).is_some() {
            return;
        }
        shard.order.push_back(key);
        while shard.entries.len() > SHARD_CAPACITY {
            let Some(oldest) = shard.order.pop_front() else {
                break;
            };
            shard.entries.remove(&oldest);
        }
        // Keys of removed entries linger in `order`; keep it from growing past twice
        // the capacity.
        if shard.order.len() > 2 * SHARD_CAPACITY {
            let entries = &shard.entries;
            shard.order.retain(|k| entries.contains_key(k));
        }
    }

    pub fn remove(&self, key: &[u8; 32]) {
        if let Ok(mut shard) = self.shard(key).lock() {
            shard.entries.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.entries.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SignedIn {
    /// Name, e-mail and display name, read back from the header values.
    pub fn person(&self) -> Option<[&str; 3]> {
        let [a, b, c] = &self.header_values;
        fn text(v: &HeaderValue) -> Option<&str> {
            std::str::from_utf8(v.as_bytes()).ok()
        }
        Some([text(a)?, text(b)?, text(c)?])
    }

    pub fn last_seen(&self) -> UnixSeconds {
        self.last_seen.load(Ordering::Relaxed)
    }

    pub fn saw(&self, now: UnixSeconds) {
        self.last_seen.store(now, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn entry(expires_at: UnixSeconds) -> Arc<SignedIn> {
        let v = HeaderValue::from_static("x");
        Arc::new(SignedIn {
            user_id: UserId::random(),
            user_status: UserStatus::Active,
            sessions_valid_after: 0,
            granted: true,
            app_id: "portal".into(),
            parent_hash: [0; 32],
            sid: String::new(),
            auth_time: 0,
            amr: vec![],
            created_at: 0,
            expires_at,
            last_seen: AtomicI64::new(0),
            generation: 0,
            header_values: [v.clone(), v.clone(), v],
            assertion: Mutex::new(None),
        })
    }

    fn key(i: u32) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &i.to_le_bytes());
        d.as_ref().try_into().unwrap()
    }

    #[test]
    fn stays_bounded_and_keeps_what_was_just_verified() {
        let cache = SessionCache::default();
        let total = MAX_ENTRIES as u32 * 3;
        for i in 0..total {
            cache.insert(key(i), entry(1_000 + i64::from(i)));
            // The entry just verified is always there for the request that follows.
            assert!(cache.get(&key(i)).is_some(), "entry {i}");
        }
        assert!(cache.len() <= MAX_ENTRIES, "{}", cache.len());
        // The longest-verified go first: the first third is gone, the latest are all kept.
        assert!((0..MAX_ENTRIES as u32).all(|i| cache.get(&key(i)).is_none()));
        assert!((total - MAX_ENTRIES as u32 / 2..total).all(|i| cache.get(&key(i)).is_some()));
    }

    #[test]
    fn removed_entries_leave_room_and_nothing_else_is_evicted() {
        // Keys that all land in one shard.
        let k = |i: u32| {
            let mut k = [0u8; 32];
            k[1..5].copy_from_slice(&i.to_le_bytes());
            k
        };
        let cache = SessionCache::default();
        let full = SHARD_CAPACITY as u32;
        for i in 0..full {
            cache.insert(k(i), entry(0));
        }
        for i in 0..100 {
            cache.remove(&k(i));
        }
        for i in full..full + 100 {
            cache.insert(k(i), entry(0));
        }
        assert_eq!(cache.len(), SHARD_CAPACITY);
        assert!((100..full + 100).all(|i| cache.get(&k(i)).is_some()));
        // Churn through removals many times over: the order list stays bounded.
        for i in 0..10 * full {
            cache.remove(&k(i));
            cache.insert(k(full + 100 + i), entry(0));
        }
        let order = cache.shards[0].lock().unwrap().order.len();
        assert!(order <= 2 * SHARD_CAPACITY, "{order}");
    }
}
