//! Verified app sessions kept in memory, so a proxied request costs no store read and no
//! signature. Revocation still takes effect at once: every entry remembers the store's
//! revocation generation it was verified under, and any sign-out, reset, disable, grant
//! change or deletion moves that generation on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use crate::clock::UnixSeconds;
use crate::store::User;

const SHARDS: usize = 16;
/// Bounds memory (an entry is well under 1 KiB): beyond this, the least useful entry is
/// dropped and its session simply goes back to the store on its next request.
pub const MAX_ENTRIES: usize = 16 * 1024;

/// A signed-in person on one app, as verified against the store.
pub struct SignedIn {
    pub user: User,
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
    /// Header values built once per sign-in rather than per request.
    pub header_values: [HeaderValue; 3],
    /// The last signed assertion and when it was issued, reused for part of its life.
    pub assertion: Mutex<Option<(HeaderValue, UnixSeconds)>>,
}

pub struct SessionCache {
    shards: Vec<Mutex<HashMap<[u8; 32], Arc<SignedIn>>>>,
}

impl Default for SessionCache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl SessionCache {
    fn shard(&self, key: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], Arc<SignedIn>>> {
        // Keys are SHA-256 outputs: any byte is uniformly spread.
        &self.shards[key[0] as usize % SHARDS]
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<SignedIn>> {
        let shard = self.shard(key).lock().ok()?;
        shard.get(key).cloned()
    }

    pub fn insert(&self, key: [u8; 32], entry: Arc<SignedIn>) {
        let Ok(mut shard) = self.shard(&key).lock() else {
            return;
        };
        if shard.len() >= MAX_ENTRIES / SHARDS && !shard.contains_key(&key) {
            // Drop the entry closest to its end: it is the one least likely to be used.
            let victim = shard
                .iter()
                .min_by_key(|(_, e)| e.expires_at)
                .map(|(k, _)| *k);
            if let Some(v) = victim {
                shard.remove(&v);
            }
        }
        shard.insert(key, entry);
    }

    pub fn remove(&self, key: &[u8; 32]) {
        if let Ok(mut shard) = self.shard(key).lock() {
            shard.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SignedIn {
    pub fn last_seen(&self) -> UnixSeconds {
        self.last_seen.load(Ordering::Relaxed)
    }

    pub fn saw(&self, now: UnixSeconds) {
        self.last_seen.store(now, Ordering::Relaxed);
    }
}
