//! The write path: a [`WriteTx`] collecting puts under the writer lock, group commit (a waiter
//! that finds no flush in progress leads one and writes and fsyncs every change submitted so
//! far), publishing durable changes to readers in seq order, log rotation and sealing, and
//! what a failed log write or fsync does: the store turns read-only, and a write it caught is
//! `OutcomeUnknown`. Never reads a snapshot file.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Key → (seq, value) of changes submitted but not yet durable.
pub(super) type PendingMap = HashMap<Box<[u8]>, (u64, Option<Box<[u8]>>), ahash::RandomState>;
/// Entries a pending map keeps room for across group commits; a bigger one (after a bulk
/// write) is freed when it empties.
const PENDING_KEPT_MAX: usize = 4096;
/// Per table: key → index of a write's latest put of it.
pub(super) type OwnMap = HashMap<Box<[u8]>, usize, ahash::RandomState>;

pub(super) struct Writer {
    pub(super) next_seq: u64,
    /// Encoded records not yet written to the log.
    pub(super) buf: Vec<u8>,
    /// Changes not yet durable, in seq order.
    pub(super) changes: Vec<Change>,
    /// Per table: key → (seq, value) of changes not yet durable, for writers' reads.
    pub(super) pending: Vec<PendingMap>,
}

pub(super) struct Log {
    pub(super) file: Box<dyn WriteFile>,
    pub(super) first_seq: u64,
    /// Format version of the segment: only version 2 segments are sealed when rotated.
    pub(super) version: u16,
    /// Bytes in the segment (its header included).
    pub(super) len: u64,
}

impl Store {
    /// Starts a write. Writers are serialised from here until [`WriteTx::submit`]; the fsync
    /// that follows is shared.
    pub fn write(&self) -> Result<WriteTx<'_>, StoreError> {
        self.check_failed()?;
        Ok(WriteTx {
            store: self,
            w: lock(&self.writer),
            puts: Vec::new(),
            own: (0..self.schema.len()).map(|_| OwnMap::default()).collect(),
            approx_len: 0,
        })
    }

    pub(super) fn check_failed(&self) -> Result<(), StoreError> {
        match &*lock(&self.failure) {
            Some(reason) => Err(StoreError::Failed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Puts the store in read-only mode after a log failure, logging it (once, at ERROR) with
    /// the operation, the file and the OS error.
    pub(super) fn fail(&self, e: &StoreError) -> StoreError {
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

    /// Writes and fsyncs every change submitted so far, then publishes them. With a system of
    /// record, the batch is committed there first: nothing is logged or shown here that it
    /// does not hold.
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        let mut log = lock(&self.log);
        let (buf, changes) = {
            let mut w = lock(&self.writer);
            (std::mem::take(&mut w.buf), std::mem::take(&mut w.changes))
        };
        if changes.is_empty() {
            return Ok(());
        }
        if let Some(record) = self.record.get()
            && let Err(e) = record.commit(&changes)
        {
            let (first, last) = (changes[0].seq, changes[changes.len() - 1].seq);
            return Err(self.fail(&StoreError::Record {
                first,
                last,
                reason: e.to_string(),
            }));
        }
        self.write_log(&mut log, &buf)?;
        let mut w = lock(&self.writer);
        self.publish(&mut w, changes);
        Ok(())
    }

    pub(super) fn write_log(&self, log: &mut Log, buf: &[u8]) -> Result<(), StoreError> {
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
    pub(super) fn seal(&self, mut old: Log, last_seq: u64) {
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
    pub(super) fn log_io<R>(&self, f: impl FnOnce() -> R) -> R {
        let began = self.epoch.elapsed().as_nanos() as u64 + 1;
        self.log_io_since.store(began, Ordering::Release);
        let r = f();
        self.log_io_since.store(0, Ordering::Release);
        r
    }

    /// Makes durable changes visible: applies their puts to the active delta and drops them
    /// from the writers' pending map (unless a later pending change rewrote the key). When no
    /// change is queued after them, which is the usual case, the pending maps are emptied
    /// whole rather than key by key.
    pub(super) fn publish(&self, w: &mut Writer, changes: Vec<Change>) {
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
        let all_pending = w.next_seq == upto + 1;
        if all_pending {
            for pending in &mut w.pending {
                if pending.capacity() > PENDING_KEPT_MAX {
                    // Give back what a bulk write grew, rather than clearing it every time.
                    *pending = PendingMap::default();
                } else {
                    pending.clear();
                }
            }
        }
        for c in changes {
            if !all_pending {
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
            apply(&view.tables, c);
        }
        self.durable.store(upto, Ordering::Release);
        self.durable_moved.notify_waiters();
    }
}

/// The one-line reason a failure gives readiness: `fsync failed on wal-….log: <OS error>`.
pub(super) fn failure_reason(e: &StoreError) -> String {
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
pub(super) fn unknown_outcome(e: StoreError) -> StoreError {
    match e {
        StoreError::Failed { reason } => StoreError::OutcomeUnknown { reason },
        e => e,
    }
}

pub(super) fn new_segment(fs: &dyn Fs, first_seq: u64) -> Result<Log, StoreError> {
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

/// Where a batch of changes must be durable before a store logs it: the cluster's system of
/// record (engine/CLUSTER.md). Called by the group-commit leader with consecutive changes; an
/// error means none of them may be acknowledged, and the store turns read-only (the node steps
/// down). The store never calls it for changes that came from it (`submit_replicated`).
pub trait SystemOfRecord: Send + Sync {
    /// Makes `changes` durable, or says why not.
    fn commit(&self, changes: &[Change]) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

impl Store {
    /// Sends every later batch through `record` before the local log (a cluster's writer, once
    /// its store has caught up), and ends follower mode: from here on the store takes local
    /// writes and refuses replicated ones. Set once; a second call is refused.
    pub fn set_system_of_record(&self, record: Arc<dyn SystemOfRecord>) -> Result<(), StoreError> {
        self.record
            .set(record)
            .map_err(|_| StoreError::Config("the system of record is set already"))?;
        self.follower.store(false, Ordering::Release);
        Ok(())
    }

    /// Makes this a cluster follower's store: local writes are refused with
    /// [`StoreError::NotWriter`] (nothing applied) and only replicated changes are taken, until
    /// [`Store::set_system_of_record`] makes the node the writer.
    pub fn follow(&self) {
        self.follower.store(true, Ordering::Release);
    }

    /// Whether local writes are refused because this is a follower's store.
    pub fn is_follower(&self) -> bool {
        self.follower.load(Ordering::Acquire)
    }
}

/// A write in progress: holds the writer lock, collects puts, reads its own and pending writes.
pub struct WriteTx<'a> {
    store: &'a Store,
    w: MutexGuard<'a, Writer>,
    puts: Vec<Put>,
    /// Per table: key → index of this write's latest put of it (looked up without allocating).
    own: Vec<OwnMap>,
    /// Bytes this change will take in the log, roughly (keys, values and framing).
    approx_len: usize,
}

impl WriteTx<'_> {
    /// The value of `key` as this write would see it: its own puts, then changes submitted but
    /// not yet durable, then the visible store.
    pub fn get(
        &self,
        table: impl Into<TableId>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let table = table.into();
        if let Some(&i) = self.own[table.index()].get(key) {
            return Ok(self.puts[i].value.clone());
        }
        if let Some((_, v)) = self.w.pending[table.index()].get(key) {
            return Ok(v.as_deref().map(<[u8]>::to_vec));
        }
        self.store.get(table, key, |v| v.map(<[u8]>::to_vec))
    }

    /// Records a put (`None` deletes).
    pub fn put(&mut self, table: impl Into<TableId>, key: &[u8], value: Option<Vec<u8>>) {
        let table = table.into();
        self.approx_len += 6 + key.len() + value.as_ref().map_or(0, Vec::len);
        self.own[table.index()].insert(key.into(), self.puts.len());
        self.puts.push(Put {
            table: table.id(),
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

    /// Queues `c`, a change made elsewhere (the cluster's writer), under its own seq, which must
    /// be this store's next; `on_submitted` as in [`WriteTx::submit_with`]. The puts of this
    /// transaction are replaced by the change's. Wait with [`Store::wait_durable`].
    pub fn submit_replicated(
        mut self,
        c: &Change,
        on_submitted: impl FnOnce(),
    ) -> Result<u64, StoreError> {
        if self.store.record.get().is_some() {
            return Err(StoreError::Config(
                "a store that writes through a system of record takes no replicated change",
            ));
        }
        if c.seq != self.w.next_seq {
            return Err(StoreError::OutOfOrder {
                expected: self.w.next_seq,
                got: c.seq,
            });
        }
        self.puts.clear();
        for p in &c.puts {
            let t = self
                .store
                .schema
                .table(p.table)
                .ok_or(StoreError::Corrupt {
                    path: std::path::PathBuf::from(format!("change {}", c.seq)),
                    offset: 0,
                    what: "a put to a table outside the schema",
                })?;
            self.put(t, &p.key, p.value.clone());
        }
        self.queue(c.at, c.actor, c.kind, on_submitted)
    }

    /// As [`WriteTx::submit`], calling `on_submitted` after the change is queued and before
    /// the writer lock is released, so that in-memory state derived from it (the registry's
    /// dictionaries) is updated in seq order with the log.
    pub fn submit_with(
        self,
        at: Timestamp,
        actor: ActorId,
        kind: u8,
        on_submitted: impl FnOnce(),
    ) -> Result<u64, StoreError> {
        if self.store.is_follower() {
            return Err(StoreError::NotWriter);
        }
        self.queue(at, actor, kind, on_submitted)
    }

    fn queue(
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
