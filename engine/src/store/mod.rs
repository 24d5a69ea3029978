//! The durable store: sharded memory-mapped snapshots, an in-memory delta and a write-ahead log.
//!
//! Owns the tables of `snapshots/README.md` as key → value bytes, and the storage contract of
//! DESIGN §5. Every change is a [`Change`] `{ seq, op }` with consecutive seqs; a write returns
//! only after its log record is fsync'd, and concurrent writers share one fsync (group commit:
//! a waiter that finds no flush in progress becomes the leader and writes every change
//! submitted so far; the others sleep until it signals, and those it made durable return at
//! once). Changes become visible to readers only once durable, so a reader never sees a write
//! that a crash could take back. Readers never block on writers: they load an immutable
//! [`View`] (snapshot shards plus the delta maps) through `arc-swap` and probe the delta, then
//! one shard.
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
pub mod fs;
pub mod hash;
pub mod manifest;
pub mod snapshot;
pub mod wal;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::id::{ActorId, Timestamp};
use fs::{Fs, WriteFile};
use hash::{HashKey, shard_of};
use manifest::{Manifest, ShardEntry};
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
    /// A bad setting.
    #[error("invalid store configuration: {0}")]
    Config(&'static str),
    /// Two records with one key were given to a snapshot build (push indexes in the shard).
    #[error("duplicate key in table {table:?} shard {shard} (records {first} and {second})")]
    Duplicate {
        /// The table.
        table: Table,
        /// The shard.
        shard: u16,
        /// Push index of the first record.
        first: usize,
        /// Push index of the second.
        second: usize,
    },
}

/// The tables of a store (ids are the on-disk table ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Table {
    /// MyKey ID → ID record.
    Ids = 1,
    /// Certificate reference → MyKey ID bound to it.
    Certs = 2,
    /// Certificate reference → revocation record.
    Revoked = 3,
    /// Provider ID → dictionary entry.
    Providers = 4,
    /// Actor id → dictionary entry.
    Actors = 5,
    /// CA key identifier → dictionary entry.
    Cas = 6,
    /// Partner revocation pushes by push id, and the last CRL number applied per CA.
    /// Added after format version 1; an older manifest without it is upgraded on open.
    Pushes = 7,
}

impl Table {
    /// Every table, in id order.
    pub const ALL: [Table; 7] = [
        Table::Ids,
        Table::Certs,
        Table::Revoked,
        Table::Providers,
        Table::Actors,
        Table::Cas,
        Table::Pushes,
    ];

    /// The table's file-name prefix.
    pub fn name(self) -> &'static str {
        match self {
            Table::Ids => "ids",
            Table::Certs => "certs",
            Table::Revoked => "revoked",
            Table::Providers => "providers",
            Table::Actors => "actors",
            Table::Cas => "cas",
            Table::Pushes => "pushes",
        }
    }

    /// Whether the table's snapshot files keep records inline with their buckets: only `ids`,
    /// the table every counter lookup reads; the others are read on the write path and stay
    /// compact.
    pub fn inline_records(self) -> bool {
        self == Table::Ids
    }

    /// Zero-based index.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// The table with this on-disk id.
    pub fn from_id(id: u8) -> Option<Table> {
        Table::ALL.get(usize::from(id).wrapping_sub(1)).copied()
    }
}

/// Name of the shard file of `table`, `shard`, as of `seq`.
pub fn shard_file_name(table: Table, shard: u16, seq: u64) -> String {
    format!("{}-{shard:04}-{seq:016x}.snap", table.name())
}

/// Shard counts of a new store.
#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    /// Shards of the `ids` table.
    pub ids_shards: u16,
    /// Shards of the `certs` table.
    pub certs_shards: u16,
    /// Shards of the `revoked` table.
    pub revoked_shards: u16,
}

impl Default for StoreConfig {
    fn default() -> Self {
        // 16 shards keep a 100M-ID shard file near 400 MB, small enough to rewrite in seconds.
        Self {
            ids_shards: 16,
            certs_shards: 16,
            revoked_shards: 4,
        }
    }
}

impl StoreConfig {
    /// Shard count per table, in table order.
    pub fn shard_counts(&self) -> Result<[u16; Table::ALL.len()], StoreError> {
        let c = [
            self.ids_shards,
            self.certs_shards,
            self.revoked_shards,
            1,
            1,
            1,
            1,
        ];
        if c.iter().any(|&n| n == 0 || n > manifest::SHARDS_MAX) {
            return Err(StoreError::Config("shard counts must be 1..=4096"));
        }
        Ok(c)
    }
}

type DeltaMap = DashMap<Box<[u8]>, Option<Box<[u8]>>, ahash::RandomState>;

/// Changes since the snapshot, per table: `None` marks a deleted key.
#[derive(Default)]
struct Delta {
    map: DeltaMap,
    /// Number of keys, kept beside the map so that an empty delta costs one load to skip.
    keys: AtomicUsize,
}

impl Delta {
    fn insert(&self, key: &[u8], value: Option<&[u8]>) {
        if self.map.insert(key.into(), value.map(Into::into)).is_none() {
            self.keys.fetch_add(1, Ordering::Release);
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.load(Ordering::Acquire) == 0
    }
}

/// One table as readers see it.
#[derive(Clone)]
struct TableView {
    shards: Vec<Arc<ShardFile>>,
    active: Arc<Delta>,
    frozen: Option<Arc<Delta>>,
}

/// What readers see: immutable, swapped whole.
struct View {
    tables: Vec<TableView>,
    snap_seq: u64,
}

/// Keys whose misses a batched read overlaps: about the outstanding L1 misses a core sustains
/// (10–16 line-fill buffers on current x86 cores).
pub const BATCH_WINDOW: usize = 16;

/// Key → (seq, value) of changes submitted but not yet durable.
type PendingMap = HashMap<Box<[u8]>, (u64, Option<Box<[u8]>>), ahash::RandomState>;
/// Per table: key → index of a write's latest put of it.
type OwnMap = HashMap<Box<[u8]>, usize, ahash::RandomState>;

struct Writer {
    next_seq: u64,
    /// Encoded records not yet written to the log.
    buf: Vec<u8>,
    /// Changes not yet durable, in seq order.
    changes: Vec<Change>,
    /// Per table: key → (seq, value) of changes not yet durable, for writers' reads.
    pending: Vec<PendingMap>,
}

struct Log {
    file: Box<dyn WriteFile>,
    first_seq: u64,
    /// Format version of the segment: only version 2 segments are sealed when rotated.
    version: u16,
    /// Bytes in the segment (its header included).
    len: u64,
}

/// How long one log write and fsync may run before readiness reports it stuck. A healthy
/// fsync takes milliseconds; 5 s is far past any disk's hiccup and well inside the 45 s a
/// systemd unit gives a stop.
pub const FSYNC_STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
/// Shortest wait before a failed compaction is retried; doubled per failure.
pub const COMPACTION_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest wait between compaction retries.
pub const COMPACTION_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(300);
/// Corrupt reads are logged at most once per this many seconds (each is counted): a client
/// repeating a lookup of a damaged record must not flood the journal.
const CORRUPT_LOG_EVERY_SECS: u64 = 10;

/// What the compactor of a store is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompactorState {
    /// No compactor was started (tools, tests).
    NotStarted,
    /// Running; its last compaction, if any, succeeded.
    Running,
    /// Its last compaction failed; it retries after a backoff.
    Failing {
        /// The failure.
        reason: String,
        /// Failures in a row.
        attempts: u32,
        /// Seconds until the next attempt.
        retry_in_secs: u64,
    },
    /// It stopped (shutdown).
    Stopped,
}

/// What a store can do right now: the source of readiness and of the store gauges.
#[derive(Clone, Debug)]
pub struct Health {
    /// Why writes are refused, when they are.
    pub read_only: Option<String>,
    /// The log write and fsync in progress, if any: how long it has run and on which file.
    pub log_io: Option<(std::time::Duration, String)>,
    /// The compactor.
    pub compactor: CompactorState,
    /// The first corrupt record read since the store opened.
    pub corrupt: Option<String>,
    /// Keys in the active delta.
    pub delta_keys: usize,
}

impl Health {
    /// The reasons the store cannot do its whole job, one line each; empty when it can.
    pub fn problems(&self) -> Vec<String> {
        self.problems_with(FSYNC_STUCK_AFTER)
    }

    /// As [`Health::problems`], calling a log fsync stuck once it has run `stuck_after`.
    pub fn problems_with(&self, stuck_after: std::time::Duration) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(r) = &self.read_only {
            v.push(format!("store read-only: {r}"));
        }
        if let Some((age, file)) = &self.log_io
            && *age >= stuck_after
        {
            v.push(format!("fsync stuck for {} s on {file}", age.as_secs()));
        }
        if let CompactorState::Failing {
            reason,
            attempts,
            retry_in_secs,
        } = &self.compactor
        {
            v.push(format!(
                "compactor stopped: {reason} ({attempts} failures in a row; retrying in {retry_in_secs} s)"
            ));
        }
        if let Some(c) = &self.corrupt {
            v.push(format!("store corrupt: {c}"));
        }
        v
    }

    /// Sets the store gauges (`mykey_store_writable`, `mykey_compactor_running`,
    /// `mykey_wal_fsync_age_seconds`, `mykey_store_delta_keys`) from this reading.
    pub fn publish(&self) {
        metrics::gauge!(WRITABLE).set(if self.read_only.is_none() { 1.0 } else { 0.0 });
        let running = matches!(self.compactor, CompactorState::Running);
        metrics::gauge!(COMPACTOR_RUNNING).set(if running { 1.0 } else { 0.0 });
        let age = self.log_io.as_ref().map_or(0.0, |(a, _)| a.as_secs_f64());
        metrics::gauge!(WAL_FSYNC_AGE_SECONDS).set(age);
        metrics::gauge!(DELTA_KEYS).set(self.delta_keys as f64);
    }
}

/// A store: open it, read from it, write to it through [`WriteTx`], compact it.
pub struct Store {
    /// Held for the store's life: one writer per directory.
    _dir_lock: fs::DirLock,
    fs: Arc<dyn Fs>,
    hash_key: HashKey,
    view: ArcSwap<View>,
    writer: Mutex<Writer>,
    log: Mutex<Log>,
    durable: AtomicU64,
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
}

/// Metric: how long each group-commit log write and fsync took (one observation per fsync,
/// however many writers it served). The store measures it itself because only it knows where
/// the fsync is; with no recorder installed (tools, tests) the calls cost next to nothing.
pub const WAL_FSYNC_SECONDS: &str = "mykey_wal_fsync_duration_seconds";
/// Metric: 1 while the store accepts writes, 0 once a log write or fsync failed (writes are
/// refused until it is reopened; lookups go on).
pub const WRITABLE: &str = "mykey_store_writable";
/// Metric: age of the log write and fsync in progress, 0 when none: a stuck fsync shows here
/// long before it returns (the fsync histogram only hears of it when it does).
pub const WAL_FSYNC_AGE_SECONDS: &str = "mykey_wal_fsync_age_seconds";
/// Metric: 1 while the compactor runs and its last compaction succeeded; 0 while it retries
/// after a failure, and when it has stopped.
pub const COMPACTOR_RUNNING: &str = "mykey_compactor_running";
/// Metric: bytes cut from the log's tail by the last open (a torn tail).
pub const RECOVERY_CUT_BYTES: &str = "mykey_store_recovery_cut_bytes";
/// Metric: reads that found a corrupt snapshot record or bucket (each was refused).
pub const CORRUPT_READS_TOTAL: &str = "mykey_store_corrupt_reads_total";
/// Metric: keys in the active delta (what the next compaction folds; replayed on restart).
pub const DELTA_KEYS: &str = "mykey_store_delta_keys";
/// Metric: compactions by outcome (`ok`, `error`).
pub const COMPACTIONS_TOTAL: &str = "mykey_store_compactions_total";
/// Metric: how long each compaction took.
pub const COMPACTION_SECONDS: &str = "mykey_store_compaction_duration_seconds";

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent
/// before any call that could panic, and a poisoned store would otherwise stop serving reads.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// When background compaction folds the delta into new snapshots.
#[derive(Clone, Copy, Debug)]
pub struct CompactionPolicy {
    /// Fold once the active delta holds this many keys.
    pub delta_keys_max: usize,
    /// How often the background thread looks.
    pub poll: std::time::Duration,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            // A million changed keys is ~100 MB of delta in memory and ~1 s of log replay on
            // restart; folding them rewrites the store, so fold rarely but before either hurts.
            delta_keys_max: 1_000_000,
            poll: std::time::Duration::from_secs(1),
        }
    }
}

/// Runs compaction in a background thread whenever `policy` says so, until `stop` is set.
/// A failed compaction cleans up after itself (see [`Store::compact`]) and is logged, counted
/// and retried after a backoff that doubles from [`COMPACTION_BACKOFF_MIN`] to
/// [`COMPACTION_BACKOFF_MAX`]; meanwhile [`Store::health`] reports the compactor failing.
/// The thread returns the number of compactions that succeeded.
pub fn spawn_compactor<S>(
    owner: Arc<S>,
    policy: CompactionPolicy,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64>
where
    S: AsRef<Store> + Send + Sync + 'static,
{
    std::thread::spawn(move || {
        let mut compactor = Compactor::new(policy);
        // Exported from the start, so an alert on errors has a series to watch.
        for outcome in ["ok", "error"] {
            metrics::counter!(COMPACTIONS_TOTAL, "outcome" => outcome).increment(0);
        }
        let store = owner.as_ref().as_ref();
        store.set_compactor(CompactorState::Running);
        while !stop.load(Ordering::Acquire) {
            let wait = compactor.step(store);
            // Sleep in short steps so that a stop is seen within a tenth of a second.
            let until = std::time::Instant::now() + wait;
            while !stop.load(Ordering::Acquire) && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(100).min(wait));
            }
        }
        store.set_compactor(CompactorState::Stopped);
        compactor.compactions
    })
}

/// The compactor's loop body, apart from the thread so that tests can drive it step by step.
pub struct Compactor {
    policy: CompactionPolicy,
    failures: u32,
    /// Compactions that succeeded.
    pub compactions: u64,
}

impl Compactor {
    /// A compactor that has not run yet.
    pub fn new(policy: CompactionPolicy) -> Self {
        Self {
            policy,
            failures: 0,
            compactions: 0,
        }
    }

    /// Compacts if the policy says so; returns how long to wait before the next step.
    pub fn step(&mut self, store: &Store) -> std::time::Duration {
        let started = std::time::Instant::now();
        match store.compact_if_needed(&self.policy) {
            Ok(Some(seq)) => {
                self.compactions += 1;
                metrics::histogram!(COMPACTION_SECONDS).record(started.elapsed());
                metrics::counter!(COMPACTIONS_TOTAL, "outcome" => "ok").increment(1);
                if self.failures > 0 {
                    tracing::info!(
                        seq,
                        after_failures = self.failures,
                        "compaction succeeded again"
                    );
                }
                self.failures = 0;
                store.set_compactor(CompactorState::Running);
                std::time::Duration::ZERO
            }
            Ok(None) => self.policy.poll,
            Err(e) => {
                metrics::counter!(COMPACTIONS_TOTAL, "outcome" => "error").increment(1);
                self.failures += 1;
                let backoff = COMPACTION_BACKOFF_MIN
                    .saturating_mul(1 << (self.failures - 1).min(16))
                    .min(COMPACTION_BACKOFF_MAX);
                tracing::error!(
                    op = "compact",
                    store = %store.fs.root().display(),
                    error = %e,
                    attempts = self.failures,
                    retry_in_secs = backoff.as_secs(),
                    "compaction failed; its files are removed and writes go on"
                );
                store.set_compactor(CompactorState::Failing {
                    reason: e.to_string(),
                    attempts: self.failures,
                    retry_in_secs: backoff.as_secs(),
                });
                backoff
            }
        }
    }
}

impl AsRef<Store> for Store {
    fn as_ref(&self) -> &Store {
        self
    }
}

/// What recovery did, for logs and `inspect`.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Seq of the snapshots.
    pub snapshot_seq: u64,
    /// Changes replayed from the log.
    pub replayed: u64,
    /// Bytes of torn tail cut from the last log segment.
    pub torn_bytes: u64,
}

/// Counts of one table.
#[derive(Clone, Debug)]
pub struct TableStats {
    /// The table.
    pub table: Table,
    /// Records per shard file.
    pub shard_entries: Vec<u64>,
    /// Bytes of all shard files.
    pub file_bytes: u64,
    /// Keys in the in-memory delta (active and frozen).
    pub delta_keys: usize,
}

impl Store {
    /// Creates an empty store in `fs`: empty shards at seq 0, a manifest, a first log segment.
    pub fn create(fs: Arc<dyn Fs>, config: StoreConfig) -> Result<Store, StoreError> {
        Self::create_with_key(fs, config, HashKey::random())
    }

    /// As [`Store::create`], with a given hash key (golden files and tests need a fixed one).
    pub fn create_with_key(
        fs: Arc<dyn Fs>,
        config: StoreConfig,
        hash_key: HashKey,
    ) -> Result<Store, StoreError> {
        let counts = config.shard_counts()?;
        let dir_lock = fs.lock().map_err(io_err(&*fs, "lock", fs::LOCK_NAME))?;
        if fs.exists(manifest::NAME) {
            return Err(StoreError::Exists {
                path: fs.root().to_owned(),
            });
        }
        let builders: Vec<Vec<ShardBuilder>> = counts
            .iter()
            .map(|&n| (0..n).map(|_| ShardBuilder::default()).collect())
            .collect();
        install_snapshot(&*fs, hash_key, 0, &builders, false, &mut |_| {})?;
        // `open` takes the lock again on its own descriptor; hand over.
        drop(dir_lock);
        Self::open(fs)
    }

    /// Opens the store in `fs`: maps the manifest's shards, cuts a torn log tail, replays the
    /// log after the manifest's seq.
    pub fn open(fs: Arc<dyn Fs>) -> Result<Store, StoreError> {
        Self::open_with_report(fs).map(|(s, _)| s)
    }

    /// As [`Store::open`], also saying what recovery did.
    pub fn open_with_report(fs: Arc<dyn Fs>) -> Result<(Store, Recovery), StoreError> {
        let dir_lock = fs.lock().map_err(io_err(&*fs, "lock", fs::LOCK_NAME))?;
        let m = add_missing_tables(&*fs, read_manifest(&*fs)?)?;
        let shards = open_shards(&*fs, &m)?;
        // Remove leftovers of interrupted installs: temp files, and shard files the manifest
        // does not name (written by a compaction that crashed before its manifest landed).
        let live: std::collections::HashSet<String> = Table::ALL
            .iter()
            .flat_map(|&t| {
                (0..m.tables[t.index()].len()).map(move |s| shard_file_name(t, s as u16, m.seq))
            })
            .collect();
        for name in fs.list().map_err(io_err(&*fs, "list", ""))? {
            if name.ends_with(".tmp") || (name.ends_with(".snap") && !live.contains(&name)) {
                fs.remove(&name).map_err(io_err(&*fs, "remove", &name))?;
            }
        }
        let tables: Vec<TableView> = shards
            .into_iter()
            .map(|s| TableView {
                shards: s,
                active: Arc::new(Delta::default()),
                frozen: None,
            })
            .collect();

        let mut report = Recovery {
            snapshot_seq: m.seq,
            ..Recovery::default()
        };
        let segments = list_segments(&*fs)?;
        let missing = |seq: u64, what: String| StoreError::MissingLog {
            path: fs.root().join(wal::segment_name(seq)),
            what,
        };
        if m.log_required && segments.first().is_none_or(|(_, f)| *f > m.seq + 1) {
            return Err(missing(
                m.seq + 1,
                format!(
                    "missing: the MANIFEST (snapshot seq {}) says the log continues from change {} and no log segment holds it; restore the segment or the store from a backup",
                    m.seq,
                    m.seq + 1
                ),
            ));
        }
        let mut last_seq = m.seq;
        // Last seq of the segment before, from its records (its first_seq − 1 when empty).
        let mut prev_last: Option<u64> = None;
        let mut keep_last: Option<(String, u64, bool, u16, u64)> = None;
        for (i, (name, first)) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            let path = fs.root().join(name);
            let bytes = fs.map(name).map_err(io_err(&*fs, "map", name))?;
            let file_len = bytes.len() as u64;
            let scan = wal::scan(&path, &bytes, is_last)?;
            drop(bytes);
            if scan.first_seq != 0 && scan.first_seq != *first {
                return Err(StoreError::Corrupt {
                    path,
                    offset: 16,
                    what: "segment header seq differs from its name",
                });
            }
            // Segments are contiguous by name: a gap that reaches past the snapshot means a
            // segment was deleted or the one before was cut short.
            let expected = prev_last.map_or(m.seq + 1, |p| p + 1);
            if *first > expected && *first > m.seq + 1 {
                let cause = match i.checked_sub(1) {
                    Some(j) => format!(
                        "changes {expected}..={} are missing: the segment that held them was deleted, or {} was cut short",
                        first - 1,
                        segments[j].0
                    ),
                    None => format!(
                        "changes {expected}..={} are missing: the segment that held them was deleted",
                        first - 1
                    ),
                };
                return Err(missing(expected, cause));
            }
            if let Some(c) = scan.changes.first()
                && prev_last.is_some_and(|p| c.seq != p + 1)
            {
                return Err(StoreError::Corrupt {
                    path,
                    offset: wal::SEGMENT_HEADER_LEN as u64,
                    what: "log segment starts after a gap in seq",
                });
            }
            for c in &scan.changes {
                if c.seq > m.seq {
                    apply(&tables, c);
                    report.replayed += 1;
                }
                last_seq = last_seq.max(c.seq);
            }
            let seg_last = scan
                .changes
                .last()
                .map_or(first.saturating_sub(1), |c| c.seq);
            prev_last = Some(seg_last);
            if let Some(sealed) = scan.sealed
                && is_last
            {
                return Err(missing(
                    sealed + 1,
                    format!(
                        "missing: {name} is sealed at change {sealed}, so a segment holding change {} was written after it and is gone; restore it or the store from a backup",
                        sealed + 1
                    ),
                ));
            }
            if scan.torn {
                let cut = file_len - scan.valid_len;
                tracing::warn!(
                    op = "recover",
                    file = %path.display(),
                    offset = scan.valid_len,
                    bytes = cut,
                    last_seq = seg_last,
                    "cut a torn tail from the log: those bytes held no acknowledged write"
                );
                report.torn_bytes += cut;
                if scan.valid_len == 0 {
                    fs.remove(name).map_err(io_err(&*fs, "remove", name))?;
                    fs.sync_dir().map_err(io_err(&*fs, "fsync-dir", name))?;
                    continue;
                }
                fs.truncate(name, scan.valid_len)
                    .map_err(io_err(&*fs, "truncate", name))?;
            }
            if is_last {
                keep_last = Some((
                    name.clone(),
                    *first,
                    !scan.changes.is_empty(),
                    scan.version,
                    scan.valid_len,
                ));
            }
        }
        metrics::gauge!(RECOVERY_CUT_BYTES).set(report.torn_bytes as f64);
        // Segments wholly covered by the snapshots are no longer needed.
        for w in segments.windows(2) {
            if w[1].1 <= m.seq + 1 && fs.exists(&w[0].0) {
                fs.remove(&w[0].0)
                    .map_err(io_err(&*fs, "remove", &w[0].0))?;
            }
        }
        let next_seq = last_seq + 1;
        let log = match keep_last {
            Some((name, first, has_changes, version, len)) if has_changes || first == next_seq => {
                Log {
                    file: fs.append(&name).map_err(io_err(&*fs, "open", &name))?,
                    first_seq: first,
                    version,
                    len,
                }
            }
            Some((name, ..)) => {
                return Err(StoreError::Corrupt {
                    path: fs.root().join(name),
                    offset: 16,
                    what: "empty log segment does not start at the next seq",
                });
            }
            None => new_segment(&*fs, next_seq)?,
        };
        if !m.log_required {
            // A freshly built (or version 1) store: from now on its log must be found.
            Manifest {
                log_required: true,
                ..m.clone()
            }
            .install(&*fs)?;
        }
        let store = Store {
            _dir_lock: dir_lock,
            hash_key: m.hash_key,
            view: ArcSwap::from_pointee(View {
                tables,
                snap_seq: m.seq,
            }),
            writer: Mutex::new(Writer {
                next_seq,
                buf: Vec::new(),
                changes: Vec::new(),
                pending: (0..Table::ALL.len())
                    .map(|_| PendingMap::default())
                    .collect(),
            }),
            log_first_seq: AtomicU64::new(log.first_seq),
            log: Mutex::new(log),
            durable: AtomicU64::new(last_seq),
            flushing: Mutex::new(false),
            flushed: std::sync::Condvar::new(),
            failure: Mutex::new(None),
            compacting: Mutex::new(()),
            epoch: std::time::Instant::now(),
            log_io_since: AtomicU64::new(0),
            compactor: Mutex::new(CompactorState::NotStarted),
            corrupt: Mutex::new(None),
            corrupt_logged_at: AtomicU64::new(0),
            fs,
        };
        metrics::gauge!(WRITABLE).set(1.0);
        // Exported from the start, so that the alert on it has a series to watch.
        metrics::counter!(CORRUPT_READS_TOTAL).increment(0);
        Ok((store, report))
    }

    /// Hashes a key for [`Store::get_hashed`].
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hash_key.hash(key)
    }

    /// The highest durable seq.
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
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
        table: Table,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StoreError> {
        self.get_hashed(table, self.hash(key), key, f)
    }

    /// As [`Store::get`], with the key's hash already computed.
    #[inline]
    pub fn get_hashed<R>(
        &self,
        table: Table,
        h: u64,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StoreError> {
        let view = self.view.load();
        let t = &view.tables[table.index()];
        if !t.active.is_empty()
            && let Some(v) = t.active.map.get(key)
        {
            return Ok(f(v.as_deref()));
        }
        if let Some(fz) = &t.frozen
            && let Some(v) = fz.map.get(key)
        {
            return Ok(f(v.as_deref()));
        }
        let shard = &t.shards[shard_of(h, t.shards.len())];
        match shard.get(h, key) {
            Ok(v) => Ok(f(v)),
            Err(e) => {
                self.read_failed(&e);
                Err(e)
            }
        }
    }

    /// Looks up a batch of keys of one table, overlapping their memory misses: it prefetches
    /// every key's home bucket, then reads the buckets and prefetches the records they point
    /// at, then reads the records. `f(i, value)` is called for every key, in order.
    pub fn get_batch(
        &self,
        table: Table,
        keys: &[&[u8]],
        mut f: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let view = self.view.load();
        let t = &view.tables[table.index()];
        let in_delta = |k: &[u8]| {
            (!t.active.is_empty() && t.active.map.contains_key(k))
                || t.frozen.as_ref().is_some_and(|fz| fz.map.contains_key(k))
        };
        for chunk_start in (0..keys.len()).step_by(BATCH_WINDOW) {
            let chunk = &keys[chunk_start..keys.len().min(chunk_start + BATCH_WINDOW)];
            let mut hashes = [0u64; BATCH_WINDOW];
            let mut cand = [None::<u64>; BATCH_WINDOW];
            let mut delta = [false; BATCH_WINDOW];
            for (i, k) in chunk.iter().enumerate() {
                delta[i] = in_delta(k);
                if !delta[i] {
                    hashes[i] = self.hash(k);
                    t.shards[shard_of(hashes[i], t.shards.len())].prefetch(hashes[i]);
                }
            }
            for (i, h) in hashes.iter().enumerate().take(chunk.len()) {
                if !delta[i] {
                    let shard = &t.shards[shard_of(*h, t.shards.len())];
                    cand[i] = shard.candidate(*h).inspect_err(|e| self.read_failed(e))?;
                    if let Some(off) = cand[i] {
                        shard.prefetch_record(off);
                    }
                }
            }
            for (i, k) in chunk.iter().enumerate() {
                if delta[i] {
                    // Rare: a key changed since the snapshot; the plain path reads the delta.
                    self.get(table, k, |v| f(chunk_start + i, v))?;
                    continue;
                }
                let v = match cand[i] {
                    None => None,
                    Some(off) => t.shards[shard_of(hashes[i], t.shards.len())]
                        .get_at(off, hashes[i], k)
                        .inspect_err(|e| self.read_failed(e))?,
                };
                f(chunk_start + i, v);
            }
        }
        Ok(())
    }

    /// Calls `f` with every live (key, value) of `table`: snapshot records not overridden by the
    /// delta, then the delta's values. Concurrent writes may or may not be seen.
    pub fn for_each(
        &self,
        table: Table,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        let view = self.view.load_full();
        let t = &view.tables[table.index()];
        let overridden = |k: &[u8]| {
            t.active.map.contains_key(k)
                || t.frozen.as_ref().is_some_and(|fz| fz.map.contains_key(k))
        };
        for shard in &t.shards {
            shard
                .for_each(|k, v| {
                    if !overridden(k) {
                        f(k, v)
                    }
                })
                .inspect_err(|e| self.read_failed(e))?;
        }
        if let Some(fz) = &t.frozen {
            for e in fz.map.iter() {
                if let Some(v) = e.value()
                    && !t.active.map.contains_key(e.key())
                {
                    f(e.key(), v);
                }
            }
        }
        for e in t.active.map.iter() {
            if let Some(v) = e.value() {
                f(e.key(), v);
            }
        }
        Ok(())
    }

    /// Counts per table: records per shard file, file bytes, delta keys.
    pub fn stats(&self) -> Vec<TableStats> {
        let view = self.view.load();
        Table::ALL
            .iter()
            .map(|&table| {
                let t = &view.tables[table.index()];
                TableStats {
                    table,
                    shard_entries: t.shards.iter().map(|s| s.header().entries).collect(),
                    file_bytes: t.shards.iter().map(|s| s.file_len()).sum(),
                    delta_keys: t.active.map.len() + t.frozen.as_ref().map_or(0, |f| f.map.len()),
                }
            })
            .collect()
    }

    /// Starts a write. Writers are serialised from here until [`WriteTx::submit`]; the fsync
    /// that follows is shared.
    pub fn write(&self) -> Result<WriteTx<'_>, StoreError> {
        self.check_failed()?;
        Ok(WriteTx {
            store: self,
            w: lock(&self.writer),
            puts: Vec::new(),
            own: std::array::from_fn(|_| OwnMap::default()),
            approx_len: 0,
        })
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match &*lock(&self.failure) {
            Some(reason) => Err(StoreError::Failed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Puts the store in read-only mode after a log failure, logging it (once, at ERROR) with
    /// the operation, the file and the OS error.
    fn fail(&self, e: &StoreError) -> StoreError {
        let mut f = lock(&self.failure);
        let first = f.is_none();
        let reason = f.get_or_insert_with(|| failure_reason(e)).clone();
        drop(f);
        if first {
            metrics::gauge!(WRITABLE).set(0.0);
            tracing::error!(
                error = %e,
                "store read-only: {reason}; lookups go on, writes are refused until mykeyd is restarted"
            );
        }
        StoreError::Failed { reason }
    }

    /// What the store can do right now (see [`Health::problems`]).
    pub fn health(&self) -> Health {
        let since = self.log_io_since.load(Ordering::Acquire);
        let log_io = (since != 0).then(|| {
            let began = std::time::Duration::from_nanos(since - 1);
            (
                self.epoch.elapsed().saturating_sub(began),
                wal::segment_name(self.log_first_seq.load(Ordering::Acquire)),
            )
        });
        Health {
            read_only: lock(&self.failure).clone(),
            log_io,
            compactor: lock(&self.compactor).clone(),
            corrupt: lock(&self.corrupt).clone(),
            delta_keys: self.delta_keys(),
        }
    }

    /// Records what the compactor is doing, for [`Store::health`].
    pub fn set_compactor(&self, state: CompactorState) {
        *lock(&self.compactor) = state;
    }

    /// A read found a corrupt record: remembered for readiness, counted, and logged at ERROR
    /// (at most once per `CORRUPT_LOG_EVERY_SECS`, naming the file and offset).
    #[cold]
    #[inline(never)]
    fn read_failed(&self, e: &StoreError) {
        metrics::counter!(CORRUPT_READS_TOTAL).increment(1);
        lock(&self.corrupt).get_or_insert_with(|| e.to_string());
        let now = self.epoch.elapsed().as_secs() + 1;
        let last = self.corrupt_logged_at.load(Ordering::Relaxed);
        if (last == 0 || now >= last + CORRUPT_LOG_EVERY_SECS)
            && self
                .corrupt_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(op = "read", error = %e, "refused a corrupt snapshot read; run `mykeyd snapshot verify` and restore the shard from a backup");
        }
    }

    /// Returns once the change `seq` is durable (fsync'd) and visible. A waiter that finds no
    /// flush in progress leads one: it writes and fsyncs every change submitted so far. The
    /// others sleep until the leader signals, then return if it covered them or lead the next.
    pub fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        let mut flushing = lock(&self.flushing);
        loop {
            if self.durable_seq() >= seq {
                return Ok(());
            }
            // The change is queued: if the log failed, it may be in the file or not.
            self.check_failed().map_err(unknown_outcome)?;
            if *flushing {
                // A leader is writing; it wakes everyone when done. Waiting here rather than
                // on the log lock matters: a writer whose change the leader took must not queue
                // behind the *next* leader's fsync just to learn that it is durable.
                flushing = self
                    .flushed
                    .wait(flushing)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            *flushing = true;
            drop(flushing);
            let r = self.flush();
            flushing = lock(&self.flushing);
            *flushing = false;
            self.flushed.notify_all();
            r.map_err(unknown_outcome)?;
        }
    }

    /// Writes and fsyncs every change submitted so far, then publishes them.
    fn flush(&self) -> Result<(), StoreError> {
        let mut log = lock(&self.log);
        let (buf, changes) = {
            let mut w = lock(&self.writer);
            (std::mem::take(&mut w.buf), std::mem::take(&mut w.changes))
        };
        if changes.is_empty() {
            return Ok(());
        }
        self.write_log(&mut log, &buf)?;
        let mut w = lock(&self.writer);
        self.publish(&mut w, changes);
        Ok(())
    }

    fn write_log(&self, log: &mut Log, buf: &[u8]) -> Result<(), StoreError> {
        let name = wal::segment_name(log.first_seq);
        let started = std::time::Instant::now();
        let r = self.log_io(|| {
            log.file
                .write_all(buf)
                .map_err(io_err(&*self.fs, "append", &name))?;
            log.file.sync().map_err(io_err(&*self.fs, "fsync", &name))
        });
        metrics::histogram!(WAL_FSYNC_SECONDS).record(started.elapsed());
        log.len += buf.len() as u64;
        r.map_err(|e| self.fail(&e))
    }

    /// Seals a segment the log has rotated away from (its successor is durable): recovery then
    /// knows that a segment must follow it. A seal that cannot be written leaves a valid,
    /// unsealed segment, so it is logged and not fatal.
    fn seal(&self, mut old: Log, last_seq: u64) {
        if old.version < 2 {
            return;
        }
        let name = wal::segment_name(old.first_seq);
        let r = self.log_io(|| {
            old.file
                .write_all(&wal::seal(last_seq, old.len))
                .map_err(io_err(&*self.fs, "append", &name))?;
            old.file.sync().map_err(io_err(&*self.fs, "fsync", &name))
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not seal the previous log segment; it stays valid, unsealed");
        }
    }

    /// Runs one write or fsync of the log, marking it in progress for [`Store::health`], so
    /// that a stuck one is seen while it hangs.
    fn log_io<R>(&self, f: impl FnOnce() -> R) -> R {
        let began = self.epoch.elapsed().as_nanos() as u64 + 1;
        self.log_io_since.store(began, Ordering::Release);
        let r = f();
        self.log_io_since.store(0, Ordering::Release);
        r
    }

    /// Makes durable changes visible: applies their puts to the active delta and drops them
    /// from the writers' pending map (unless a later pending change rewrote the key).
    fn publish(&self, w: &mut Writer, changes: Vec<Change>) {
        let Some(upto) = changes.last().map(|c| c.seq) else {
            return;
        };
        // Published in log order, each seq one past the last durable one.
        debug_assert!(
            changes
                .iter()
                .zip(self.durable_seq() + 1..)
                .all(|(c, want)| c.seq == want),
            "changes published out of seq order"
        );
        let view = self.view.load();
        for c in &changes {
            apply(&view.tables, c);
            for p in &c.puts {
                let pending = &mut w.pending[usize::from(p.table) - 1];
                if pending
                    .get(p.key.as_slice())
                    .is_some_and(|(s, _)| *s == c.seq)
                {
                    pending.remove(p.key.as_slice());
                }
            }
        }
        self.durable.store(upto, Ordering::Release);
    }

    /// Keys in the active delta (written since the last compaction began).
    pub fn delta_keys(&self) -> usize {
        self.view
            .load()
            .tables
            .iter()
            .map(|t| t.active.keys.load(Ordering::Acquire))
            .sum()
    }

    /// Compacts when the policy says the delta has grown enough. Returns the new snapshot seq
    /// if it compacted.
    pub fn compact_if_needed(&self, policy: &CompactionPolicy) -> Result<Option<u64>, StoreError> {
        // An empty delta is never worth a compaction, whatever the policy says.
        if self.delta_keys() < policy.delta_keys_max.max(1) {
            return Ok(None);
        }
        self.compact().map(Some)
    }

    /// Folds the delta into new snapshot files. Readers and writers continue meanwhile; one
    /// compaction runs at a time. Returns the seq the new snapshots include.
    pub fn compact(&self) -> Result<u64, StoreError> {
        self.compact_with_progress(&mut |_| {})
    }

    /// As [`Store::compact`], calling `progress` with the name of each file written.
    pub fn compact_with_progress(&self, progress: &mut dyn FnMut(&str)) -> Result<u64, StoreError> {
        let _one = lock(&self.compacting);
        let Some(seq) = self.freeze()? else {
            // Nothing since the last snapshot: rewriting it under the same names would
            // replace the live files, so there is nothing to do.
            return Ok(self.snapshot_seq());
        };
        let folded = self.fold(seq, progress);
        if folded.is_err() {
            // Until a later compaction succeeds, the frozen changes live in the active delta
            // again; the log still holds them, so a restart recovers them too.
            self.unfreeze();
        }
        folded
    }

    /// Writes the snapshot that folds the frozen delta (changes up to `seq`) into the current
    /// one, installs it, and swaps it in.
    fn fold(&self, seq: u64, progress: &mut dyn FnMut(&str)) -> Result<u64, StoreError> {
        let view = self.view.load_full();
        let mut builders = Vec::with_capacity(Table::ALL.len());
        for &table in &Table::ALL {
            let t = &view.tables[table.index()];
            let frozen = t
                .frozen
                .as_ref()
                .ok_or(StoreError::Config("freeze left no delta"))?;
            let n = t.shards.len();
            let mut bs: Vec<ShardBuilder> = (0..n).map(|_| ShardBuilder::default()).collect();
            for (i, shard) in t.shards.iter().enumerate() {
                let mut err = Ok(());
                shard.for_each(|k, v| {
                    if err.is_ok() && !frozen.map.contains_key(k) {
                        err = bs[i].push(self.hash(k), k, v);
                    }
                })?;
                err?;
            }
            for e in frozen.map.iter() {
                if let Some(v) = e.value() {
                    let h = self.hash(e.key());
                    bs[shard_of(h, n)].push(h, e.key(), v)?;
                }
            }
            builders.push(bs);
        }
        let old: Vec<String> = view
            .tables
            .iter()
            .flat_map(|t| t.shards.iter().map(|s| s.name().to_owned()))
            .collect();
        // Whether the new MANIFEST's rename is known durable: only then may the files and log
        // segments it supersedes go.
        let mut settled = true;
        if let Err(e) = install_snapshot(&*self.fs, self.hash_key, seq, &builders, true, progress) {
            match read_manifest(&*self.fs) {
                Ok(m) if m.seq == seq => {
                    // The MANIFEST was renamed into place but the directory fsync failed: the
                    // new snapshot is live, the old one must stay until a restart settles it.
                    tracing::warn!(error = %e, seq, "compaction installed its MANIFEST but could not sync the directory; the old snapshot files and log stay until the next open");
                    settled = false;
                }
                _ => {
                    self.remove_unlisted(seq);
                    return Err(e);
                }
            }
        }
        let m = read_manifest(&*self.fs)?;
        let shards = open_shards(&*self.fs, &m)?;
        {
            let _w = lock(&self.writer);
            let cur = self.view.load();
            let tables = cur
                .tables
                .iter()
                .zip(shards)
                .map(|(t, s)| TableView {
                    shards: s,
                    active: t.active.clone(),
                    frozen: None,
                })
                .collect();
            self.view.store(Arc::new(View {
                tables,
                snap_seq: seq,
            }));
        }
        if !settled {
            return Ok(seq);
        }
        // The old files are no longer named by the manifest; readers still holding the old
        // view keep their mappings (unlinking a mapped file is safe on POSIX). A file that
        // cannot be removed is logged and left for the next open, which removes what the
        // MANIFEST does not name: the compaction itself has succeeded.
        let segments = list_segments(&*self.fs).unwrap_or_else(|e| {
            tracing::error!(error = %e, "compaction could not list the log segments it folded; the next open removes them");
            Vec::new()
        });
        let folded = segments
            .into_iter()
            .filter(|(_, first)| *first <= seq)
            .map(|(n, _)| n);
        for name in old.into_iter().chain(folded) {
            if let Err(e) = self
                .fs
                .remove(&name)
                .map_err(io_err(&*self.fs, "remove", &name))
            {
                tracing::error!(error = %e, "compaction could not remove a file it superseded; the next open removes it");
            }
        }
        if let Err(e) = self
            .fs
            .sync_dir()
            .map_err(io_err(&*self.fs, "fsync-dir", ""))
        {
            tracing::error!(error = %e, "compaction could not sync the directory after removing superseded files");
        }
        Ok(seq)
    }

    /// After a failed compaction to `seq`: removes every file it wrote (its shard files,
    /// named with `seq`, and every `.tmp`), none of which the MANIFEST names, so that a
    /// compaction that failed for lack of space gives the space back. Each removal that fails
    /// is logged; the next open removes what is left.
    fn remove_unlisted(&self, seq: u64) {
        let suffix = format!("-{seq:016x}.snap");
        let names = match self.fs.list() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(op = "list", dir = %self.fs.root().display(), error = %e, "cannot list the store to remove a failed compaction's files");
                return;
            }
        };
        let mut removed = 0;
        for name in names {
            if !(name.ends_with(&suffix) || name.ends_with(".tmp")) {
                continue;
            }
            match self.fs.remove(&name) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::error!(op = "remove", file = %self.fs.root().join(&name).display(), error = %e, "cannot remove a failed compaction's file")
                }
            }
        }
        if let Err(e) = self.fs.sync_dir() {
            tracing::error!(op = "fsync-dir", dir = %self.fs.root().display(), error = %e, "cannot sync the store directory after removing a failed compaction's files");
        }
        tracing::info!(seq, removed, "removed the files of the failed compaction");
    }

    /// Undoes a freeze after a failed fold: every frozen entry that no later write has
    /// replaced moves back into the active delta, so that the next freeze does not drop it.
    fn unfreeze(&self) {
        let _w = lock(&self.writer);
        let cur = self.view.load();
        let tables = cur
            .tables
            .iter()
            .map(|t| {
                if let Some(fz) = &t.frozen {
                    for e in fz.map.iter() {
                        if !t.active.map.contains_key(e.key()) {
                            t.active.insert(e.key(), e.value().as_deref());
                        }
                    }
                }
                TableView {
                    shards: t.shards.clone(),
                    active: t.active.clone(),
                    frozen: None,
                }
            })
            .collect();
        self.view.store(Arc::new(View {
            tables,
            snap_seq: cur.snap_seq,
        }));
    }

    /// Makes everything submitted durable, starts a new log segment and moves the active delta
    /// to `frozen`. Returns the last seq of the frozen delta, or `None` when no change happened
    /// since the snapshot.
    fn freeze(&self) -> Result<Option<u64>, StoreError> {
        let mut log = lock(&self.log);
        let mut w = lock(&self.writer);
        self.check_failed()?;
        let buf = std::mem::take(&mut w.buf);
        let changes = std::mem::take(&mut w.changes);
        self.write_log(&mut log, &buf)?;
        self.publish(&mut w, changes);
        let seq = w.next_seq - 1;
        if seq == self.view.load().snap_seq {
            return Ok(None);
        }
        // A retry after a failed compaction finds the log already rotated to `seq + 1`.
        if log.first_seq != seq + 1 {
            match self.log_io(|| new_segment(&*self.fs, seq + 1)) {
                Ok(new) => {
                    let old = std::mem::replace(&mut *log, new);
                    self.log_first_seq.store(seq + 1, Ordering::Release);
                    self.seal(old, seq);
                }
                Err(e) => {
                    // The old segment is intact and still the log, so writes can go on once
                    // the new segment's remains are gone; if they cannot be removed, a restart
                    // would misread them, so writes stop.
                    let name = wal::segment_name(seq + 1);
                    if self.fs.exists(&name) {
                        let cleared = self
                            .fs
                            .remove(&name)
                            .and_then(|()| self.fs.sync_dir())
                            .map_err(io_err(&*self.fs, "remove", &name));
                        if let Err(e2) = cleared {
                            tracing::error!(error = %e2, "cannot remove a log segment whose creation failed");
                            return Err(self.fail(&e));
                        }
                    }
                    return Err(e);
                }
            }
        }
        let cur = self.view.load();
        let tables = cur
            .tables
            .iter()
            .map(|t| TableView {
                shards: t.shards.clone(),
                active: Arc::new(Delta::default()),
                frozen: Some(t.active.clone()),
            })
            .collect();
        self.view.store(Arc::new(View {
            tables,
            snap_seq: cur.snap_seq,
        }));
        Ok(Some(seq))
    }
}

/// The one-line reason a failure gives readiness: `fsync failed on wal-….log: <OS error>`.
fn failure_reason(e: &StoreError) -> String {
    match e {
        StoreError::Io { op, path, source } => {
            let file = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            format!("{op} failed on {file}: {source}")
        }
        e => e.to_string(),
    }
}

/// A failure met while waiting for a queued change: its outcome is unknown.
fn unknown_outcome(e: StoreError) -> StoreError {
    match e {
        StoreError::Failed { reason } => StoreError::OutcomeUnknown { reason },
        e => e,
    }
}

/// Applies a change's puts to the active deltas.
fn apply(tables: &[TableView], c: &Change) {
    for p in &c.puts {
        if let Some(t) = Table::from_id(p.table) {
            tables[t.index()].active.insert(&p.key, p.value.as_deref());
        }
    }
}

fn new_segment(fs: &dyn Fs, first_seq: u64) -> Result<Log, StoreError> {
    let name = wal::segment_name(first_seq);
    let mut file = fs.create(&name).map_err(io_err(fs, "create", &name))?;
    file.write_all(&wal::segment_header(first_seq))
        .map_err(io_err(fs, "write", &name))?;
    file.sync().map_err(io_err(fs, "fsync", &name))?;
    fs.sync_dir().map_err(io_err(fs, "fsync-dir", &name))?;
    Ok(Log {
        file,
        first_seq,
        version: wal::VERSION,
        len: wal::SEGMENT_HEADER_LEN as u64,
    })
}

fn list_segments(fs: &dyn Fs) -> Result<Vec<(String, u64)>, StoreError> {
    let mut v: Vec<(String, u64)> = fs
        .list()
        .map_err(io_err(fs, "list", ""))?
        .into_iter()
        .filter_map(|n| wal::parse_segment_name(&n).map(|s| (n, s)))
        .collect();
    v.sort_by_key(|(_, s)| *s);
    Ok(v)
}

/// Reads and decodes the manifest.
pub fn read_manifest(fs: &dyn Fs) -> Result<Manifest, StoreError> {
    if !fs.exists(manifest::NAME) {
        return Err(StoreError::NotAStore {
            path: fs.root().to_owned(),
        });
    }
    let bytes = fs
        .map(manifest::NAME)
        .map_err(io_err(fs, "map", manifest::NAME))?;
    Manifest::decode(fs.root().join(manifest::NAME), &bytes, Table::ALL.len())
}

/// Upgrades a store written before some tables existed: each table its manifest does not list
/// gets one empty shard file at the manifest's seq, and a new manifest names them. Runs only
/// under the store lock; read-only tools see such a table as empty.
fn add_missing_tables(fs: &dyn Fs, mut m: Manifest) -> Result<Manifest, StoreError> {
    let mut changed = false;
    for &t in &Table::ALL {
        if !m.tables[t.index()].is_empty() {
            continue;
        }
        let name = shard_file_name(t, 0, m.seq);
        let id = ShardId {
            table: t as u8,
            shard: 0,
            shard_count: 1,
            seq: m.seq,
        };
        let w = ShardBuilder::default()
            .write(fs, &name, id, t.inline_records())?
            .map_err(|d| StoreError::Duplicate {
                table: t,
                shard: 0,
                first: d.first,
                second: d.second,
            })?;
        m.tables[t.index()].push(ShardEntry {
            len: w.len,
            header_crc: w.header_crc,
        });
        changed = true;
    }
    if changed {
        m.install(fs)?;
    }
    Ok(m)
}

/// Maps every shard file the manifest names, checking each header against it.
pub fn open_shards(fs: &dyn Fs, m: &Manifest) -> Result<Vec<Vec<Arc<ShardFile>>>, StoreError> {
    Table::ALL
        .iter()
        .map(|&t| {
            let entries = &m.tables[t.index()];
            entries
                .iter()
                .enumerate()
                .map(|(s, e)| {
                    let id = ShardId {
                        table: t as u8,
                        shard: s as u16,
                        shard_count: entries.len() as u16,
                        seq: m.seq,
                    };
                    ShardFile::open(
                        fs,
                        &shard_file_name(t, s as u16, m.seq),
                        id,
                        e.len,
                        e.header_crc,
                    )
                    .map(Arc::new)
                })
                .collect()
        })
        .collect()
}

/// Writes every shard of every table at `seq`, then the manifest naming them; `progress` hears
/// each file name as it is installed.
pub fn install_snapshot(
    fs: &dyn Fs,
    hash_key: HashKey,
    seq: u64,
    builders: &[Vec<ShardBuilder>],
    log_required: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<(), StoreError> {
    let mut tables = Vec::with_capacity(builders.len());
    for (&table, shards) in Table::ALL.iter().zip(builders) {
        let mut entries = Vec::with_capacity(shards.len());
        for (s, b) in shards.iter().enumerate() {
            let name = shard_file_name(table, s as u16, seq);
            let id = ShardId {
                table: table as u8,
                shard: s as u16,
                shard_count: shards.len() as u16,
                seq,
            };
            let w = b
                .write(fs, &name, id, table.inline_records())?
                .map_err(|d| StoreError::Duplicate {
                    table,
                    shard: s as u16,
                    first: d.first,
                    second: d.second,
                })?;
            entries.push(ShardEntry {
                len: w.len,
                header_crc: w.header_crc,
            });
            progress(&name);
        }
        tables.push(entries);
    }
    fs.sync_dir().map_err(io_err(fs, "fsync-dir", ""))?;
    Manifest {
        seq,
        hash_key,
        tables,
        log_required,
        version: manifest::VERSION,
    }
    .install(fs)
}

/// A write in progress: holds the writer lock, collects puts, reads its own and pending writes.
pub struct WriteTx<'a> {
    store: &'a Store,
    w: MutexGuard<'a, Writer>,
    puts: Vec<Put>,
    /// Per table: key → index of this write's latest put of it (looked up without allocating).
    own: [OwnMap; Table::ALL.len()],
    /// Bytes this change will take in the log, roughly (keys, values and framing).
    approx_len: usize,
}

impl WriteTx<'_> {
    /// The value of `key` as this write would see it: its own puts, then changes submitted but
    /// not yet durable, then the visible store.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(&i) = self.own[table.index()].get(key) {
            return Ok(self.puts[i].value.clone());
        }
        if let Some((_, v)) = self.w.pending[table.index()].get(key) {
            return Ok(v.as_deref().map(<[u8]>::to_vec));
        }
        self.store.get(table, key, |v| v.map(<[u8]>::to_vec))
    }

    /// Records a put (`None` deletes).
    pub fn put(&mut self, table: Table, key: &[u8], value: Option<Vec<u8>>) {
        self.approx_len += 6 + key.len() + value.as_ref().map_or(0, Vec::len);
        self.own[table.index()].insert(key.into(), self.puts.len());
        self.puts.push(Put {
            table: table as u8,
            key: key.to_vec(),
            value,
        });
    }

    /// Whether any put was recorded.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty()
    }

    /// Roughly how many bytes this change will take in the log, to split big batches below
    /// [`wal::CHANGE_LEN_MAX`].
    pub fn approx_len(&self) -> usize {
        self.approx_len
    }

    /// Assigns the next seq, appends the change to the log buffer and releases the writer
    /// lock. The change is durable once [`Store::wait_durable`] returns for the seq.
    pub fn submit(self, at: Timestamp, actor: ActorId, kind: u8) -> Result<u64, StoreError> {
        self.submit_with(at, actor, kind, || {})
    }

    /// As [`WriteTx::submit`], calling `on_submitted` after the change is queued and before
    /// the writer lock is released, so that in-memory state derived from it (the registry's
    /// dictionaries) is updated in seq order with the log.
    pub fn submit_with(
        mut self,
        at: Timestamp,
        actor: ActorId,
        kind: u8,
        on_submitted: impl FnOnce(),
    ) -> Result<u64, StoreError> {
        let seq = self.w.next_seq;
        let change = Change {
            seq,
            at,
            actor,
            kind,
            puts: std::mem::take(&mut self.puts),
        };
        change.encode(&mut self.w.buf)?;
        self.w.next_seq += 1;
        for p in &change.puts {
            self.w.pending[usize::from(p.table) - 1].insert(
                p.key.clone().into_boxed_slice(),
                (seq, p.value.as_deref().map(Into::into)),
            );
        }
        self.w.changes.push(change);
        on_submitted();
        Ok(seq)
    }

    /// Submits and waits until durable.
    pub fn commit(self, at: Timestamp, actor: ActorId, kind: u8) -> Result<u64, StoreError> {
        let store = self.store;
        let seq = self.submit(at, actor, kind)?;
        store.wait_durable(seq)?;
        Ok(seq)
    }
}

/// What a store directory holds, read without changing anything.
#[derive(Debug)]
pub struct Inspection {
    /// The manifest.
    pub manifest: Manifest,
    /// Per table: records per shard.
    pub shard_entries: Vec<(Table, Vec<u64>)>,
    /// Bytes of all snapshot files.
    pub snapshot_bytes: u64,
    /// Log segments, oldest first.
    pub segments: Vec<SegmentInfo>,
}

/// One log segment as `inspect` saw it.
#[derive(Debug)]
pub struct SegmentInfo {
    /// File name.
    pub name: String,
    /// Seq of its first change.
    pub first_seq: u64,
    /// Valid changes in it.
    pub changes: u64,
    /// File size.
    pub bytes: u64,
    /// Whether it ends in a torn tail (cut on the next open).
    pub torn: bool,
    /// Its format version.
    pub version: u16,
    /// Whether it is sealed (a later segment continues the log).
    pub sealed: bool,
}

/// Reads a store's manifest, shard headers and log without modifying anything. With
/// `verify`, also checks every byte of every shard file (body CRC, buckets, records,
/// invariants) and every log record.
pub fn inspect(
    fs: &dyn Fs,
    verify: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Inspection, StoreError> {
    let manifest = read_manifest(fs)?;
    let shards = open_shards(fs, &manifest)?;
    let mut shard_entries = Vec::new();
    let mut snapshot_bytes = 0;
    for (&t, files) in Table::ALL.iter().zip(&shards) {
        let mut v = Vec::new();
        for f in files {
            if verify {
                f.verify(&manifest.hash_key)?;
                progress(f.name());
            }
            v.push(f.header().entries);
            snapshot_bytes += f.file_len();
        }
        shard_entries.push((t, v));
    }
    let mut segments = Vec::new();
    let list = list_segments(fs)?;
    for (i, (name, first)) in list.iter().enumerate() {
        let bytes = read_unmapped(fs, name)?;
        let scan = wal::scan(&fs.root().join(name), &bytes, i + 1 == list.len())?;
        segments.push(SegmentInfo {
            name: name.clone(),
            first_seq: *first,
            changes: scan.changes.len() as u64,
            bytes: bytes.len() as u64,
            torn: scan.torn,
            version: scan.version,
            sealed: scan.sealed.is_some(),
        });
        progress(name);
    }
    Ok(Inspection {
        manifest,
        shard_entries,
        snapshot_bytes,
        segments,
    })
}

/// Reads a whole file with `read()`, never a mapping: the read-only tools read log segments
/// this way, because a server recovering meanwhile may truncate a segment's torn tail, and a
/// mapping of the cut bytes would fault (SIGBUS) instead of failing.
pub(crate) fn read_unmapped(fs: &dyn Fs, name: &str) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    fs.open_read(name)
        .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut bytes))
        .map_err(io_err(fs, "read", name))?;
    Ok(bytes)
}

/// Calls `f` with every change in the log, oldest first, without modifying anything: the
/// audit trail of who changed what, and when, since the last compaction.
pub fn read_log(fs: &dyn Fs, mut f: impl FnMut(&Change)) -> Result<(), StoreError> {
    let list = list_segments(fs)?;
    for (i, (name, _)) in list.iter().enumerate() {
        let bytes = read_unmapped(fs, name)?;
        let scan = wal::scan(&fs.root().join(name), &bytes, i + 1 == list.len())?;
        scan.changes.iter().for_each(&mut f);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ActorId, Timestamp};
    use fs::{SimFs, TracedFs};

    fn put(store: &Store, k: &[u8], v: &[u8]) {
        let mut tx = store.write().expect("write");
        tx.put(Table::Ids, k, Some(v.to_vec()));
        let actor = ActorId::parse(b"t").expect("actor");
        tx.commit(Timestamp::from_raw(1), actor, 0).expect("commit");
    }

    fn value(store: &Store, k: &[u8]) -> Option<Vec<u8>> {
        store
            .get(Table::Ids, k, |v| v.map(<[u8]>::to_vec))
            .expect("get")
    }

    #[test]
    fn a_failed_compaction_loses_nothing_and_the_next_one_folds_it_all() {
        let sim = SimFs::new(5);
        let traced = TracedFs::new(Arc::new(sim.clone()));
        let faults = traced.faults.clone();
        let store = Store::create(Arc::new(traced), StoreConfig::default()).expect("create");
        put(&store, b"a", b"1");
        put(&store, b"b", b"1");
        faults.arm(fs::FaultOp::Create, ".snap.tmp", 28);
        assert!(store.compact().is_err());
        faults.clear();
        put(&store, b"b", b"2");
        put(&store, b"c", b"2");
        // Everything written before the failed compaction is still visible, and a second
        // failed attempt (whose freeze would replace the first frozen delta) loses nothing.
        faults.arm(fs::FaultOp::Create, ".snap.tmp", 28);
        assert!(store.compact().is_err());
        faults.clear();
        for (k, v) in [(&b"a"[..], &b"1"[..]), (b"b", b"2"), (b"c", b"2")] {
            assert_eq!(
                value(&store, k).as_deref(),
                Some(v),
                "{k:?} after failed compactions"
            );
        }
        let seq = store.compact().expect("compact");
        assert_eq!(seq, 4);
        drop(store);
        let store = Store::open(Arc::new(sim) as Arc<dyn Fs>).expect("reopen");
        for (k, v) in [(&b"a"[..], &b"1"[..]), (b"b", b"2"), (b"c", b"2")] {
            assert_eq!(value(&store, k).as_deref(), Some(v), "{k:?} after reopen");
        }
    }
}
