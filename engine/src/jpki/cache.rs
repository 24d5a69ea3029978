//! The verified-leaf cache: certificates that chained to a JPKI CA, keyed by the SHA-256 of
//! their DER, so that a card's repeat visit skips the chain check.
//!
//! Bounded: each shard keeps two generations of at most `cap` entries; when the current one is
//! full the older is dropped and the current becomes the older (a hit in the older generation
//! moves the entry forward), so recently used certificates stay and memory never grows past
//! twice the configured size. Owns no trust decision: a hit is re-checked for validity by the
//! caller, and revocation is checked by the registry on every use, so nothing stale is
//! accepted. Lookups allocate nothing once the maps have grown to size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::VerifiedLeaf;

/// Shards of the cache; a power of two, indexed by the fingerprint's first byte.
const SHARDS: usize = 16;

type Map = HashMap<[u8; 32], Arc<VerifiedLeaf>, ahash::RandomState>;

#[derive(Default)]
struct Shard {
    current: Map,
    older: Map,
}

/// A bounded cache of verified end-entity certificates.
pub struct LeafCache {
    shards: Box<[Mutex<Shard>]>,
    cap: usize,
}

impl LeafCache {
    /// A cache of about `entries` certificates (at most twice that many are kept).
    pub fn new(entries: usize) -> Self {
        let cap = entries.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        current: Map::with_capacity_and_hasher(cap, Default::default()),
                        older: Map::with_capacity_and_hasher(cap, Default::default()),
                    })
                })
                .collect(),
            cap,
        }
    }

    fn shard(&self, key: &[u8; 32]) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[usize::from(key[0]) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached certificate with this fingerprint.
    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<VerifiedLeaf>> {
        let mut s = self.shard(key);
        if let Some(v) = s.current.get(key) {
            return Some(Arc::clone(v));
        }
        let v = s.older.remove(key)?;
        let out = Arc::clone(&v);
        self.put(&mut s, *key, v);
        Some(out)
    }

    /// Caches a verified certificate.
    pub fn insert(&self, key: [u8; 32], leaf: Arc<VerifiedLeaf>) {
        let mut s = self.shard(&key);
        self.put(&mut s, key, leaf);
    }

    /// Forgets a certificate.
    pub fn remove(&self, key: &[u8; 32]) {
        let mut s = self.shard(key);
        s.current.remove(key);
        s.older.remove(key);
    }

    fn put(&self, s: &mut Shard, key: [u8; 32], leaf: Arc<VerifiedLeaf>) {
        if s.current.len() >= self.cap && !s.current.contains_key(&key) {
            // Rotate: the older generation goes, keeping its allocation for reuse.
            s.older.clear();
            std::mem::swap(&mut s.current, &mut s.older);
        }
        s.current.insert(key, leaf);
    }

    /// Forgets every certificate.
    pub fn clear(&self) {
        for m in self.shards.iter() {
            let mut s = m.lock().unwrap_or_else(PoisonError::into_inner);
            s.current.clear();
            s.older.clear();
        }
    }

    /// Certificates cached now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|m| {
                let s = m.lock().unwrap_or_else(PoisonError::into_inner);
                s.current.len() + s.older.len()
            })
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
