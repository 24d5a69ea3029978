//! The in-memory delta of one table: every key changed since the snapshot, with its latest
//! value (`None`: deleted), in [`DELTA_SHARDS`] hash tables each behind its own read-write
//! lock, keyed by the store's own key hash (the one the snapshot shards use), so that a read
//! hashes a key once for the delta and the shard file alike.
//!
//! A publish of many puts at once (a revocation push of a million certificates) groups them
//! by delta shard first ([`Batch`]) and fills one shard at a time, so each insert lands in a table that
//! fits in a core's cache rather than missing memory once per key; it takes a shard's write
//! lock for at most [`DELTA_LOCK_HOLD_MAX`] puts at a time, so readers of that shard wait
//! microseconds, not the whole publish. Later puts of a key replace earlier ones, in the order
//! given. The delta never reads files and never decides what is visible: the store publishes
//! into it only what is durable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

/// Hash tables a delta is split into: enough that one holds about 16K keys of a
/// million-key publish (under a megabyte, so it stays in a core's L2 while it is filled) and
/// that concurrent readers rarely meet on one lock.
pub(super) const DELTA_SHARDS: usize = 64;
/// Puts a publish makes under one hold of a shard's write lock.
pub(super) const DELTA_LOCK_HOLD_MAX: usize = 1024;
/// Puts of one publish from which room is made for them in every shard at once.
pub(super) const DELTA_BULK_MIN: usize = 4096;
/// Puts of one publish from which the delta's shards are filled on several threads
/// (`crate::par`, one per core).
pub(super) const DELTA_PARALLEL_MIN: usize = 65_536;

/// One changed key: its hash (the store's), the key, and its value (`None`: deleted).
pub(super) struct Entry {
    pub(super) hash: u64,
    pub(super) key: Box<[u8]>,
    pub(super) value: Option<Box<[u8]>>,
}

/// Entries for one [`Delta::insert_all`], grouped by delta shard as they are pushed, each
/// group in push order (all the order that matters: every put of a key is in one group).
pub(super) struct Batch {
    by_shard: Vec<Vec<Entry>>,
    len: usize,
}

impl Batch {
    /// An empty batch with room for `n` entries spread over the shards (none below
    /// [`DELTA_BULK_MIN`], where growing costs little).
    pub(super) fn with_capacity(n: usize) -> Self {
        let per = if n < DELTA_BULK_MIN {
            0
        } else {
            n / DELTA_SHARDS * 9 / 8
        };
        Self {
            by_shard: (0..DELTA_SHARDS).map(|_| Vec::with_capacity(per)).collect(),
            len: 0,
        }
    }

    pub(super) fn push(&mut self, e: Entry) {
        self.by_shard[shard_index(e.hash)].push(e);
        self.len += 1;
    }
}

/// Changes since the snapshot of one table.
pub(super) struct Delta {
    shards: Box<[RwLock<HashTable<Entry>>]>,
    /// Number of keys, kept beside the tables so that an empty delta costs one load to skip.
    keys: AtomicUsize,
}

impl Default for Delta {
    fn default() -> Self {
        Self {
            shards: (0..DELTA_SHARDS)
                .map(|_| RwLock::new(HashTable::new()))
                .collect(),
            keys: AtomicUsize::new(0),
        }
    }
}

/// The delta shard of a hash: bits 51..57, below the 7 top bits a hash table keeps as each
/// entry's tag and above the low bits that place it in its table.
#[inline]
fn shard_index(h: u64) -> usize {
    (h >> 51) as usize & (DELTA_SHARDS - 1)
}

/// Locks ignore poisoning: no critical section here leaves a table half-changed when it
/// panics (an insert either happened or did not), and a poisoned delta would stop reads.
fn read(l: &RwLock<HashTable<Entry>>) -> RwLockReadGuard<'_, HashTable<Entry>> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(l: &RwLock<HashTable<Entry>>) -> RwLockWriteGuard<'_, HashTable<Entry>> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Puts `group`, in order, into the shard behind `lock`, grown once when the group is big,
/// holding the write lock for at most [`DELTA_LOCK_HOLD_MAX`] puts at a time; returns how
/// many keys were new.
fn fill(lock: &RwLock<HashTable<Entry>>, group: Vec<Entry>) -> usize {
    if group.len() >= DELTA_LOCK_HOLD_MAX {
        write(lock).reserve(group.len(), |o| o.hash);
    }
    let mut added = 0;
    let mut group = group.into_iter().peekable();
    while group.peek().is_some() {
        let mut t = write(lock);
        for e in group.by_ref().take(DELTA_LOCK_HOLD_MAX) {
            added += usize::from(put(&mut t, e));
        }
    }
    added
}

/// Puts `e` in `t`, replacing an entry of the same key; whether the key is new.
fn put(t: &mut HashTable<Entry>, e: Entry) -> bool {
    match t.entry(e.hash, |o| o.hash == e.hash && o.key == e.key, |o| o.hash) {
        hashbrown::hash_table::Entry::Occupied(mut o) => {
            o.get_mut().value = e.value;
            false
        }
        hashbrown::hash_table::Entry::Vacant(v) => {
            v.insert(e);
            true
        }
    }
}

impl Delta {
    /// Whether the delta holds no key.
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.keys.load(Ordering::Acquire) == 0
    }

    /// Keys in the delta (deleted ones included).
    pub(super) fn len(&self) -> usize {
        self.keys.load(Ordering::Acquire)
    }

    /// Calls `f` with the delta's value of `key` (hashed `h`), `None` when the delta deleted
    /// it; gives `f` back uncalled when the delta does not hold the key. `f` runs under the
    /// shard's read lock, so it must not write to the store.
    #[inline]
    pub(super) fn get<R, F: FnOnce(Option<&[u8]>) -> R>(
        &self,
        h: u64,
        key: &[u8],
        f: F,
    ) -> Result<R, F> {
        if self.is_empty() {
            return Err(f);
        }
        let t = read(&self.shards[shard_index(h)]);
        match t.find(h, |e| e.hash == h && *e.key == *key) {
            Some(e) => Ok(f(e.value.as_deref())),
            None => Err(f),
        }
    }

    /// Whether the delta holds `key` (hashed `h`), deleted or not.
    #[inline]
    pub(super) fn contains(&self, h: u64, key: &[u8]) -> bool {
        self.get(h, key, |_| ()).is_ok()
    }

    /// Puts one key.
    pub(super) fn insert(&self, e: Entry) {
        if put(&mut write(&self.shards[shard_index(e.hash)]), e) {
            self.keys.fetch_add(1, Ordering::Release);
        }
    }

    /// Puts every entry of `batch`, in order (a later put of a key replaces an earlier one),
    /// one shard at a time: a shard that gets many is grown once, and its write lock is held
    /// for at most [`DELTA_LOCK_HOLD_MAX`] puts at a time. From [`DELTA_PARALLEL_MIN`] entries
    /// the shards are shared out among the cores (each shard to one thread).
    pub(super) fn insert_all(&self, batch: Batch) {
        let threads = crate::par::threads_for(batch.len, DELTA_PARALLEL_MIN);
        let shards: Vec<_> = self.shards.iter().zip(batch.by_shard).collect();
        let added: usize = crate::par::map(shards, threads, |(lock, group)| fill(lock, group))
            .into_iter()
            .sum();
        self.keys.fetch_add(added, Ordering::Release);
    }

    /// Calls `f(hash, key, value)` for every key, one shard at a time under its read lock (so
    /// `f` must not write to the store). Concurrent inserts may or may not be seen.
    pub(super) fn for_each(&self, mut f: impl FnMut(u64, &[u8], Option<&[u8]>)) {
        for lock in &self.shards {
            for e in read(lock).iter() {
                f(e.hash, &e.key, e.value.as_deref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(h: u64, key: &[u8], value: Option<&[u8]>) -> Entry {
        Entry {
            hash: h,
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    fn value(d: &Delta, h: u64, key: &[u8]) -> Option<Option<Vec<u8>>> {
        d.get(h, key, |v| v.map(<[u8]>::to_vec)).ok()
    }

    /// Bulk and single inserts alike keep the last put of a key, count each key once, tell a
    /// deleted key from an absent one, and tell keys of one hash apart; a bulk publish's
    /// entries land in every shard.
    #[test]
    fn the_last_put_of_a_key_wins_in_bulk_and_one_by_one() {
        for n in [10, DELTA_BULK_MIN * 3, DELTA_PARALLEL_MIN] {
            let d = Delta::default();
            assert!(d.is_empty());
            // Hashes spread over every shard; key i and its "twin" share a hash.
            let h = |i: usize| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut es = Vec::new();
            for i in 0..n {
                es.push(entry(h(i), &i.to_le_bytes(), Some(b"first")));
                es.push(entry(
                    h(i),
                    &[&i.to_le_bytes()[..], b"twin"].concat(),
                    Some(b"t"),
                ));
            }
            for i in (0..n).step_by(3) {
                es.push(entry(h(i), &i.to_le_bytes(), Some(b"second")));
            }
            for i in (0..n).step_by(5) {
                es.push(entry(h(i), &i.to_le_bytes(), None));
            }
            let mut batch = Batch::with_capacity(es.len());
            for e in es {
                batch.push(e);
            }
            d.insert_all(batch);
            assert_eq!(d.len(), 2 * n, "keys counted once each (n = {n})");
            for i in 0..n {
                let want: Option<&[u8]> = if i % 5 == 0 {
                    None
                } else if i % 3 == 0 {
                    Some(b"second")
                } else {
                    Some(b"first")
                };
                assert_eq!(
                    value(&d, h(i), &i.to_le_bytes()),
                    Some(want.map(<[u8]>::to_vec)),
                    "key {i} (n = {n})"
                );
                let twin = [&i.to_le_bytes()[..], b"twin"].concat();
                assert_eq!(value(&d, h(i), &twin), Some(Some(b"t".to_vec())));
            }
            assert_eq!(value(&d, h(n + 1), &(n + 1).to_le_bytes()), None);
            d.insert(entry(h(1), &1usize.to_le_bytes(), Some(b"third")));
            assert_eq!(
                value(&d, h(1), &1usize.to_le_bytes()),
                Some(Some(b"third".to_vec()))
            );
            assert_eq!(d.len(), 2 * n);
            let mut walked = Vec::new();
            d.for_each(|hash, key, v| walked.push((hash, key.to_vec(), v.is_none())));
            assert_eq!(walked.len(), 2 * n);
            assert_eq!(walked.iter().filter(|w| w.2).count(), n.div_ceil(5));
            assert!(walked.iter().all(|(hash, key, _)| d.contains(*hash, key)));
            if n > DELTA_BULK_MIN {
                assert!(
                    d.shards.iter().all(|s| !read(s).is_empty()),
                    "every shard filled"
                );
            }
        }
    }
}
