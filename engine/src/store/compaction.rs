//! Compaction: freeze the delta, rotate the log, write new shard files from the old ones and
//! the frozen delta, install a new manifest and swap the view while readers and writers go on;
//! the background [`Compactor`] with its retry backoff. A failed compaction removes every file
//! it wrote and leaves the delta in place. Never drops a change that is not in a snapshot.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Shortest wait before a failed compaction is retried; doubled per failure.
pub const COMPACTION_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest wait between compaction retries.
pub const COMPACTION_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(300);

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

impl Store {
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
    pub(super) fn fold(&self, seq: u64, progress: &mut dyn FnMut(&str)) -> Result<u64, StoreError> {
        let view = self.view.load_full();
        let mut builders = Vec::with_capacity(view.tables.len());
        for t in &view.tables {
            let frozen = t
                .frozen
                .as_ref()
                .ok_or(StoreError::Config("freeze left no delta"))?;
            let n = t.shards.len();
            let mut bs: Vec<ShardBuilder> = (0..n).map(|_| ShardBuilder::default()).collect();
            for (i, shard) in t.shards.iter().enumerate() {
                let mut err = Ok(());
                shard.for_each(|k, v| {
                    let h = self.hash(k);
                    if err.is_ok() && !frozen.contains(h, k) {
                        err = bs[i].push(h, k, v);
                    }
                })?;
                err?;
            }
            let mut err = Ok(());
            frozen.for_each(|h, k, v| {
                if let Some(v) = v
                    && err.is_ok()
                {
                    err = bs[shard_of(h, n)].push(h, k, v);
                }
            });
            err?;
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
        if let Err(e) = install_snapshot(
            &*self.fs,
            self.schema,
            self.hash_key,
            seq,
            &builders,
            true,
            progress,
        ) {
            match read_manifest(&*self.fs, self.schema) {
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
        let m = read_manifest(&*self.fs, self.schema)?;
        let shards = open_shards(&*self.fs, self.schema, &m)?;
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
    pub(super) fn remove_unlisted(&self, seq: u64) {
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
    pub(super) fn unfreeze(&self) {
        let _w = lock(&self.writer);
        let cur = self.view.load();
        let tables = cur
            .tables
            .iter()
            .map(|t| {
                if let Some(fz) = &t.frozen {
                    fz.for_each(|hash, key, value| {
                        if !t.active.contains(hash, key) {
                            t.active.insert(Entry {
                                hash,
                                key: key.into(),
                                value: value.map(Into::into),
                            });
                        }
                    });
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
    pub(super) fn freeze(&self) -> Result<Option<u64>, StoreError> {
        let mut log = lock(&self.log);
        let mut w = lock(&self.writer);
        self.check_failed()?;
        let buf = std::mem::take(&mut w.buf);
        self.write_log(&mut log, &buf)?;
        let upto = w.next_seq - 1;
        self.publish(&mut w, upto);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ActorId, Timestamp};
    use fs::{SimFs, TracedFs};

    /// A one-table store: the store knows no table of its own.
    static ONE: Schema = Schema {
        tables: &[TableSpec {
            name: "t",
            hot: true,
        }],
    };
    const T: TableId = TableId::new(1);

    fn put(store: &Store, k: &[u8], v: &[u8]) {
        let mut tx = store.write().expect("write");
        tx.put(T, k, Some(v.to_vec()));
        let actor = ActorId::parse(b"t").expect("actor");
        tx.commit(Timestamp::from_raw(1), actor, 0).expect("commit");
    }

    fn value(store: &Store, k: &[u8]) -> Option<Vec<u8>> {
        store.get(T, k, |v| v.map(<[u8]>::to_vec)).expect("get")
    }

    #[test]
    fn a_failed_compaction_loses_nothing_and_the_next_one_folds_it_all() {
        let sim = SimFs::new(5);
        let traced = TracedFs::new(Arc::new(sim.clone()));
        let faults = traced.faults.clone();
        let layout = Layout {
            schema: &ONE,
            shards: vec![2],
        };
        let store = Store::create(Arc::new(traced), layout).expect("create");
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
        let store = Store::open(Arc::new(sim) as Arc<dyn Fs>, &ONE).expect("reopen");
        for (k, v) in [(&b"a"[..], &b"1"[..]), (b"b", b"2"), (b"c", b"2")] {
            assert_eq!(value(&store, k).as_deref(), Some(v), "{k:?} after reopen");
        }
    }
}
