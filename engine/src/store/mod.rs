//! The durable store: sharded memory-mapped snapshots, an in-memory delta and a write-ahead log.
//!
//! Owns the tables of `snapshots/README.md` as key → value bytes, and the storage contract of
//! DESIGN §5. Every change is a [`Change`] `{ seq, op }` with consecutive seqs; a write returns
//! only after its log record is fsync'd, and concurrent writers share one fsync (group commit:
//! a waiter that finds no flush in progress becomes the leader and writes every change
//! submitted so far; the others sleep until it signals, and those it made durable return at
//! once). A bulk write of several changes ([`Store::write_exclusive`]) holds the log and the
//! writer lock from its first change to its last and makes them durable together, so no other
//! writer reads between them. Changes become visible to readers only once durable, so a reader
//! never sees a write that a crash could take back. Readers never block on writers: they load
//! an immutable `View` (snapshot shards plus the delta tables, `delta`) through `arc-swap` and
//! probe the delta, then one shard.
//!
//! Compaction freezes the delta, rotates the log, writes new shard files from the old ones and
//! the frozen delta, installs a new manifest, and swaps the view, all while readers and writers
//! go on. Recovery maps the manifest's shards and replays the log after the manifest's `seq`.
//!
//! Failures are told, not hidden: a failed log write or fsync makes the store read-only (reads
//! go on) and is logged at ERROR once, naming the operation, the file and the OS error; a write
//! it caught is `OutcomeUnknown`, never "not applied". [`Store::health`] says what the store can
//! do right now (read-only, a log fsync in progress and for how long, a failing compactor, a
//! corrupt read), which readiness and the store gauges report. A failed compaction removes
//! every file it wrote. Recovery logs what it cuts and refuses to open when a log segment is
//! missing or shortened (sealed segments and the MANIFEST's log-required flag say what must be
//! there).
//!
//! The store never knows what keys and values mean: no certificates, no domain rules, no network.
//! Bytes from files never cause a panic: every offset is checked and every failure is a
//! [`StoreError`] naming the file and the offset.

pub mod backup;
mod commit;
mod compaction;
mod delta;
pub mod fs;
pub mod hash;
mod health;
mod inspect;
pub mod manifest;
mod recovery;
mod schema;
pub mod snapshot;
pub mod wal;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::id::{ActorId, Timestamp};
use commit::{Log, Writer, new_segment};
pub use commit::{SystemOfRecord, WriteTx};
pub use compaction::{
    COMPACTION_BACKOFF_MAX, COMPACTION_BACKOFF_MIN, CompactionPolicy, Compactor, spawn_compactor,
};
use delta::{Batch, Delta, Entry};
use fs::{Fs, WriteFile};
use hash::{HashKey, shard_of};
pub use health::*;
pub(crate) use inspect::read_unmapped;
pub use inspect::{Inspection, SegmentInfo, inspect, read_log};
use manifest::{Manifest, ShardEntry};
use recovery::list_segments;
pub use recovery::{Recovery, install_snapshot, open_shards, read_manifest};
pub use schema::*;
use snapshot::{ShardBuilder, ShardFile, ShardId};
pub use wal::{Change, Put};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The operating system refused an operation on a file.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation: `append`, `fsync`, `create`, `rename`, `map`, `read`, `remove`, …
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file's bytes break its format.
    #[error("{path}: corrupt at offset {offset}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad structure.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A file of a format version this build cannot read.
    #[error("{path}: format version {found} is newer than this build reads ({supported})")]
    Version {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u16,
        /// Newest version this build reads.
        supported: u16,
    },
    /// The directory holds no manifest.
    #[error(
        "{path}: not a MyKey store (no MANIFEST); create one with `mykeyd snapshot build` or `Store::create`"
    )]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// The directory already holds a store.
    #[error("{path}: a store already exists here")]
    Exists {
        /// The directory.
        path: PathBuf,
    },
    /// An earlier log write or fsync failed; the store refuses writes until it is reopened,
    /// because after a failed fsync the kernel may have dropped the unsynced pages. Returned
    /// before a change is queued: the write refused this way was not applied.
    #[error(
        "the store is read-only after an I/O failure ({reason}); this write was not applied; restart mykeyd once the cause is fixed"
    )]
    Failed {
        /// The first failure.
        reason: String,
    },
    /// A change was queued for the log, and then the log write or fsync failed: it may or
    /// may not be durable (the kernel may have written some of it), so after a restart it may
    /// be there. Never reported as "not applied".
    #[error(
        "the write may or may not have been applied: the log failed after it was queued ({reason}); retry the same request to learn its outcome"
    )]
    OutcomeUnknown {
        /// The log failure.
        reason: String,
    },
    /// A log segment that the MANIFEST or a sealed segment says must exist is missing or
    /// shorter than it was: opening would silently lose the changes it held.
    #[error("{path}: {what}")]
    MissingLog {
        /// The segment expected.
        path: PathBuf,
        /// What is missing and how it was detected.
        what: String,
    },
    /// A size limit was crossed.
    #[error("{what} is {len}, over the limit of {max}")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// The size found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The system of record did not commit a batch (it refused it, was unreachable, or fenced
    /// this writer); nothing of it was logged here, and the store takes no more writes.
    #[error("the system of record did not commit changes {first}..={last}: {reason}")]
    Record {
        /// The batch's first seq.
        first: u64,
        /// Its last seq.
        last: u64,
        /// What it said.
        reason: String,
    },
    /// A local write to a cluster follower's store: only the cluster's writer takes writes.
    /// Nothing was applied.
    #[error("this node is a cluster follower: only the cluster's writer takes writes")]
    NotWriter,
    /// A replicated change whose seq is not the store's next.
    #[error("change seq {got} cannot follow seq {}: changes apply in seq order, without gaps", expected - 1)]
    OutOfOrder {
        /// The seq the store takes next.
        expected: u64,
        /// The change's seq.
        got: u64,
    },
    /// A bad setting.
    #[error("invalid store configuration: {0}")]
    Config(&'static str),
    /// Two records with one key were given to a snapshot build (push indexes in the shard).
    #[error("duplicate key in table {table:?} shard {shard} (records {first} and {second})")]
    Duplicate {
        /// The table.
        table: TableId,
        /// The shard.
        shard: u16,
        /// Push index of the first record.
        first: usize,
        /// Push index of the second.
        second: usize,
    },
}
/// One table as readers see it.
#[derive(Clone)]
struct TableView {
    shards: Vec<Arc<ShardFile>>,
    active: Arc<Delta>,
    frozen: Option<Arc<Delta>>,
}

impl TableView {
    /// The snapshot shard that holds hash `h`.
    #[inline]
    fn shard(&self, h: u64) -> &ShardFile {
        &self.shards[shard_of(h, self.shards.len())]
    }

    /// Whether a delta of this view holds `key` (hashed `h`), put or deleted: its snapshot
    /// record, if any, is overridden.
    #[inline]
    fn in_delta(&self, h: u64, key: &[u8]) -> bool {
        self.active.contains(h, key) || self.frozen.as_ref().is_some_and(|fz| fz.contains(h, key))
    }

    /// `key`'s value in this view (the deltas, then the snapshot), passed to `f`; a read
    /// failure is reported to `store`.
    #[inline]
    fn get_hashed<R>(
        &self,
        store: &Store,
        h: u64,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StoreError> {
        let f = match self.active.get(h, key, f) {
            Ok(r) => return Ok(r),
            Err(f) => f,
        };
        let f = match &self.frozen {
            Some(fz) => match fz.get(h, key, f) {
                Ok(r) => return Ok(r),
                Err(f) => f,
            },
            None => f,
        };
        match self.shard(h).get(h, key) {
            Ok(v) => Ok(f(v)),
            Err(e) => {
                store.read_failed(&e);
                Err(e)
            }
        }
    }
}

/// One table's view, held for a few reads ([`Store::reader`]). Held long, it keeps the
/// snapshot files of its view mapped after a compaction replaced them: hold it for one
/// request, never across an await.
pub struct TableReader<'a> {
    store: &'a Store,
    view: arc_swap::Guard<Arc<View>>,
    table: usize,
}

impl TableReader<'_> {
    #[inline]
    fn table(&self) -> &TableView {
        &self.view.tables[self.table]
    }

    /// As [`Store::get_hashed`], in this view.
    #[inline]
    pub fn get_hashed<R>(
        &self,
        h: u64,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StoreError> {
        self.table().get_hashed(self.store, h, key, f)
    }

    /// Hints the CPU to fetch the snapshot lines a later read of hash `h` will touch, so
    /// that their memory miss overlaps whatever the caller does first (a lookup resolves its
    /// provider's name meanwhile). Reads nothing and never fails; a key that turns out to be
    /// in the delta only wastes the hint.
    #[inline]
    pub fn prefetch(&self, h: u64) {
        self.table().shard(h).prefetch(h);
    }
}

/// What readers see: immutable, swapped whole.
struct View {
    tables: Vec<TableView>,
    snap_seq: u64,
}

/// Keys whose misses a batched read overlaps: about the outstanding L1 misses a core sustains
/// (10–16 line-fill buffers on current x86 cores).
pub const BATCH_WINDOW: usize = 16;

/// A store: open it, read from it, write to it through [`WriteTx`], compact it.
pub struct Store {
    /// Held for the store's life: one writer per directory.
    _dir_lock: fs::DirLock,
    fs: Arc<dyn Fs>,
    schema: &'static Schema,
    hash_key: HashKey,
    view: ArcSwap<View>,
    writer: Mutex<Writer>,
    log: Mutex<Log>,
    durable: AtomicU64,
    /// Woken each time the durable seq moves: a read waiting to be at a seq (`AT_SEQ`) waits on
    /// it rather than polling.
    durable_moved: tokio::sync::Notify,
    /// Whether a group-commit leader is writing the log; waiters sleep on `flushed`.
    flushing: Mutex<bool>,
    flushed: std::sync::Condvar,
    failure: Mutex<Option<String>>,
    compacting: Mutex<()>,
    /// Time base of `log_io_since`.
    epoch: std::time::Instant,
    /// When the log write or fsync in progress began (ns since `epoch`, plus 1); 0 when none.
    /// The log lock serialises them, so there is at most one.
    log_io_since: AtomicU64,
    /// First seq of the segment being written, to name it.
    log_first_seq: AtomicU64,
    compactor: Mutex<CompactorState>,
    corrupt: Mutex<Option<String>>,
    /// Seconds since `epoch` of the last corrupt-read log line, plus 1; 0: none yet.
    corrupt_logged_at: AtomicU64,
    /// Where every batch must be durable before this store logs it (a cluster's writer); unset
    /// on a single node.
    record: std::sync::OnceLock<Arc<dyn SystemOfRecord>>,
    /// A cluster follower's store: it takes replicated changes only (see [`Store::follow`]).
    follower: std::sync::atomic::AtomicBool,
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent
/// before any call that could panic, and a poisoned store would otherwise stop serving reads.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replaces the file `name` with `bytes` atomically: written to `<name>.tmp`, fsync'd, renamed
/// over it, and the directory fsync'd. A crash leaves the old file or the new one, never a
/// mix; a leftover `.tmp` is removed when the store next opens.
pub fn replace_file(fs: &dyn Fs, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = format!("{name}.tmp");
    let mut f = fs.create(&tmp).map_err(io_err(fs, "create", &tmp))?;
    f.write_all(bytes).map_err(io_err(fs, "write", &tmp))?;
    f.sync().map_err(io_err(fs, "fsync", &tmp))?;
    drop(f);
    fs.rename(&tmp, name).map_err(io_err(fs, "rename", &tmp))?;
    fs.sync_dir().map_err(io_err(fs, "fsync-dir", name))
}

/// Maps an OS error of operation `op` on file `name` to [`StoreError::Io`].
pub(crate) fn io_err(
    fs: &dyn Fs,
    op: &'static str,
    name: &str,
) -> impl Fn(std::io::Error) -> StoreError {
    let path = fs.root().join(name);
    move |source| StoreError::Io {
        op,
        path: path.clone(),
        source,
    }
}

impl AsRef<Store> for Store {
    fn as_ref(&self) -> &Store {
        self
    }
}

/// Counts of one table.
#[derive(Clone, Debug)]
pub struct TableStats {
    /// The table.
    pub table: TableId,
    /// Its name.
    pub name: &'static str,
    /// Records per shard file.
    pub shard_entries: Vec<u64>,
    /// Bytes of all shard files.
    pub file_bytes: u64,
    /// Keys in the in-memory delta (active and frozen).
    pub delta_keys: usize,
}

impl Store {
    /// Hashes a key for [`Store::get_hashed`].
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hash_key.hash(key)
    }

    /// The highest durable seq.
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Notified each time [`Store::durable_seq`] moves (enable a `notified()` before reading
    /// the seq, so that a move in between is not missed).
    pub fn durable_moved(&self) -> &tokio::sync::Notify {
        &self.durable_moved
    }

    /// The highest seq submitted (queued for the log, durable or not yet).
    pub fn submitted_seq(&self) -> u64 {
        lock(&self.writer).next_seq - 1
    }

    /// The seq the mapped snapshots include.
    pub fn snapshot_seq(&self) -> u64 {
        self.view.load().snap_seq
    }

    /// Calls `f` with the current value of `key` in `table` (`None` if absent). Allocation-free.
    #[inline]
    pub fn get<R>(
        &self,
        table: impl Into<TableId>,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StoreError> {
        self.get_hashed(table, self.hash(key), key, f)
    }

    /// As [`Store::get`], with the key's hash already computed.
    #[inline]
    pub fn get_hashed<R>(
        &self,
        table: impl Into<TableId>,
        h: u64,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StoreError> {
        self.reader(table).get_hashed(h, key, f)
    }

    /// The current view of `table`, held for several reads: a lookup that prefetches its
    /// bucket and then reads it loads the view once, not twice (each load of the swapped view
    /// costs locked instructions).
    #[inline]
    pub fn reader(&self, table: impl Into<TableId>) -> TableReader<'_> {
        TableReader {
            store: self,
            view: self.view.load(),
            table: table.into().index(),
        }
    }

    /// Looks up a batch of keys of one table, overlapping their memory misses: it prefetches
    /// every key's home bucket, then probes the buckets (a version 1 shard prefetches the
    /// records they point at, read in a third pass). `f(i, value)` is called for every key,
    /// in order.
    pub fn get_batch(
        &self,
        table: impl Into<TableId>,
        keys: &[&[u8]],
        mut f: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let table = table.into();
        let view = self.view.load();
        let t = &view.tables[table.index()];
        for chunk_start in (0..keys.len()).step_by(BATCH_WINDOW) {
            let chunk = &keys[chunk_start..keys.len().min(chunk_start + BATCH_WINDOW)];
            let mut hashes = [0u64; BATCH_WINDOW];
            let mut cand = [snapshot::Probe::Absent; BATCH_WINDOW];
            let mut delta = [false; BATCH_WINDOW];
            for (i, k) in chunk.iter().enumerate() {
                hashes[i] = self.hash(k);
                delta[i] = t.in_delta(hashes[i], k);
            }
            // Every bucket is requested before any is read, in a loop of its own after the
            // delta checks: issued between them (each takes a lock, a locked instruction),
            // the same batches of 16 took ~1.8× as long on the development machine.
            for (i, h) in hashes.iter().enumerate().take(chunk.len()) {
                if !delta[i] {
                    t.shard(*h).prefetch(*h);
                }
            }
            for (i, (h, k)) in hashes.iter().zip(chunk).enumerate() {
                if !delta[i] {
                    cand[i] = t
                        .shard(*h)
                        .begin(*h, k)
                        .inspect_err(|e| self.read_failed(e))?;
                }
            }
            for (i, k) in chunk.iter().enumerate() {
                if delta[i] {
                    // Rare: a key changed since the snapshot; the plain path reads the delta.
                    t.get_hashed(self, hashes[i], k, |v| f(chunk_start + i, v))?;
                    continue;
                }
                let v = t
                    .shard(hashes[i])
                    .finish(cand[i], hashes[i], k)
                    .inspect_err(|e| self.read_failed(e))?;
                f(chunk_start + i, v);
            }
        }
        Ok(())
    }

    /// Calls `f` with every live (key, value) of `table`: snapshot records not overridden by the
    /// delta, then the delta's values. Concurrent writes may or may not be seen. `f` must not
    /// write to the store: it runs under a delta shard's read lock while the delta is walked.
    pub fn for_each(
        &self,
        table: impl Into<TableId>,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        let view = self.view.load_full();
        let t = &view.tables[table.into().index()];
        for shard in &t.shards {
            shard
                .for_each(|k, v| {
                    if !t.in_delta(self.hash(k), k) {
                        f(k, v)
                    }
                })
                .inspect_err(|e| self.read_failed(e))?;
        }
        if let Some(fz) = &t.frozen {
            fz.for_each(|h, k, v| {
                if let Some(v) = v
                    && !t.active.contains(h, k)
                {
                    f(k, v);
                }
            });
        }
        t.active.for_each(|_, k, v| {
            if let Some(v) = v {
                f(k, v);
            }
        });
        Ok(())
    }

    /// Counts per table: records per shard file, file bytes, delta keys.
    pub fn stats(&self) -> Vec<TableStats> {
        let view = self.view.load();
        self.schema
            .ids()
            .map(|table| {
                let t = &view.tables[table.index()];
                TableStats {
                    table,
                    name: self.schema.name(table),
                    shard_entries: t.shards.iter().map(|s| s.header().entries).collect(),
                    file_bytes: t.shards.iter().map(|s| s.file_len()).sum(),
                    delta_keys: t.active.len() + t.frozen.as_ref().map_or(0, |f| f.len()),
                }
            })
            .collect()
    }

    /// Keys in the active delta (written since the last compaction began).
    pub fn delta_keys(&self) -> usize {
        self.view.load().tables.iter().map(|t| t.active.len()).sum()
    }
}

/// Applies the puts of `changes`, in order, to the active deltas, moving their bytes in (no
/// copy); `hash_key` is the store's. All of a table's puts go to its delta at once, grouped by
/// delta shard as they are read, so that a big publish is inserted in bulk.
fn apply(tables: &[TableView], hash_key: &HashKey, changes: Vec<Change>) {
    let mut counts = vec![0usize; tables.len()];
    for p in changes.iter().flat_map(|c| &c.puts) {
        if let Some(n) = counts.get_mut(usize::from(p.table).wrapping_sub(1)) {
            *n += 1;
        }
    }
    // Only the tables this publish puts to get a batch.
    let mut batches: Vec<Option<Batch>> = counts
        .into_iter()
        .map(|n| (n > 0).then(|| Batch::with_capacity(n)))
        .collect();
    for p in changes.into_iter().flat_map(|c| c.puts) {
        // A table id outside the schema cannot be in a log this store wrote.
        if let Some(Some(b)) = batches.get_mut(usize::from(p.table).wrapping_sub(1)) {
            b.push(Entry {
                hash: hash_key.hash(&p.key),
                key: p.key.into_boxed_slice(),
                value: p.value.map(Vec::into_boxed_slice),
            });
        }
    }
    for (t, b) in tables.iter().zip(batches) {
        if let Some(b) = b {
            t.active.insert_all(b);
        }
    }
}
