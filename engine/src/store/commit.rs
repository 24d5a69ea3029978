//! The write path: a [`WriteTx`] collecting puts under the writer lock, group commit (a waiter
//! that finds no flush in progress leads one and writes and fsyncs every change submitted so
//! far), publishing durable changes to readers in seq order, log rotation and sealing, and
//! what a failed log write or fsync does: the store turns read-only, and a write it caught is
//! `OutcomeUnknown`. Never reads a snapshot file.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Per table, the latest put of each key among the changes submitted but not yet published:
/// `(hash of the key, seq, index of the put in its change)`. The key and value stay in the
/// change itself (`Writer::changes`), so queueing a change copies no bytes.
pub(super) type PendingMap = hashbrown::HashTable<(u64, u64, u32)>;
/// Entries a pending map keeps room for across group commits; a bigger one (after a bulk
/// write) is freed when it empties.
const PENDING_KEPT_MAX: usize = 4096;
/// Per table, the latest put of each key of a write: `(hash of the key, index in its puts)`.
pub(super) type OwnMap = hashbrown::HashTable<(u64, usize)>;

pub(super) struct Writer {
    pub(super) next_seq: u64,
    /// Encoded records not yet written to the log.
    pub(super) buf: Vec<u8>,
    /// Changes submitted and not yet published, in seq order. A flush leader writes the bytes
    /// of them all (`buf`) and publishes them, taking them from here only then, so that
    /// `pending` can point into them until they are visible.
    pub(super) changes: VecDeque<Change>,
    /// Per table: where the latest not-yet-published put of each key is, for writers' reads.
    pub(super) pending: Vec<PendingMap>,
    /// Hashes keys for `pending` and every write's own map (random per process).
    pub(super) hasher: ahash::RandomState,
}

impl Writer {
    /// A writer whose next change is `next_seq`, with nothing pending.
    pub(super) fn new(next_seq: u64, tables: usize) -> Self {
        Self {
            next_seq,
            buf: Vec::new(),
            changes: VecDeque::new(),
            pending: (0..tables).map(|_| PendingMap::new()).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// The put a pending entry points at.
    fn put_at(&self, (_, seq, i): (u64, u64, u32)) -> &Put {
        let front = self.changes.front().map_or(seq, |c| c.seq);
        &self.changes[(seq - front) as usize].puts[i as usize]
    }

    /// The latest not-yet-published put of `key` (hashed `h` by `hasher`) in table slot `t`.
    fn pending_put(&self, t: usize, h: u64, key: &[u8]) -> Option<&Put> {
        self.pending[t]
            .find(h, |&e| e.0 == h && self.put_at(e).key == key)
            .map(|&e| self.put_at(e))
    }

    /// Takes the bytes of every submitted change for a flush; returns the last seq they cover
    /// and, when `copy`, the changes themselves (for the system of record).
    fn hand_over(&mut self, copy: bool) -> (Vec<u8>, Option<u64>, Vec<Change>) {
        let upto = self.changes.back().map(|c| c.seq);
        let copied = if copy {
            self.changes.iter().cloned().collect()
        } else {
            Vec::new()
        };
        (std::mem::take(&mut self.buf), upto, copied)
    }
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
        Ok(self.tx(lock(&self.writer), None))
    }

    /// Starts an exclusive write: a bulk write of several changes ([`WriteTx::submit_part`])
    /// that holds the log and the writer lock until [`WriteTx::commit`] has made every part
    /// durable and visible, so that no other writer reads the store while its parts are
    /// queued. Its [`WriteTx::put_unread`] puts therefore need no entry in the writers'
    /// pending map. Other writers wait for it; readers do not.
    pub fn write_exclusive(&self) -> Result<WriteTx<'_>, StoreError> {
        // The order every flush takes them in: the log, then the writer.
        let log = lock(&self.log);
        let w = lock(&self.writer);
        self.check_failed()?;
        Ok(self.tx(
            w,
            Some(Exclusive {
                log,
                parts_queued: false,
            }),
        ))
    }

    fn tx<'a>(
        &'a self,
        w: MutexGuard<'a, Writer>,
        exclusive: Option<Exclusive<'a>>,
    ) -> WriteTx<'a> {
        WriteTx {
            store: self,
            w,
            puts: Vec::new(),
            unread: Vec::new(),
            own: (0..self.schema.len()).map(|_| OwnMap::default()).collect(),
            approx_len: 0,
            exclusive,
        }
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
        // The log lock keeps every other flush out, so what is queued now is exactly what no
        // flush has written yet. Writers queue more while this one writes.
        let (buf, upto, changes) = lock(&self.writer).hand_over(self.record.get().is_some());
        let Some(upto) = upto else {
            return Ok(());
        };
        self.record_and_log(&mut log, &buf, &changes)?;
        let mut w = lock(&self.writer);
        self.publish(&mut w, upto);
        Ok(())
    }

    /// As [`Store::flush`], for a writer holding both locks (an exclusive write).
    fn flush_held(&self, log: &mut Log, w: &mut Writer) -> Result<(), StoreError> {
        let (buf, upto, changes) = w.hand_over(self.record.get().is_some());
        let Some(upto) = upto else {
            return Ok(());
        };
        self.record_and_log(log, &buf, &changes)?;
        self.publish(w, upto);
        Ok(())
    }

    /// Commits `changes` to the system of record, if there is one, then writes and fsyncs
    /// their log bytes `buf`.
    fn record_and_log(
        &self,
        log: &mut Log,
        buf: &[u8],
        changes: &[Change],
    ) -> Result<(), StoreError> {
        if let Some(record) = self.record.get()
            && let Err(e) = record.commit(changes)
        {
            let (first, last) = (changes[0].seq, changes[changes.len() - 1].seq);
            return Err(self.fail(&StoreError::Record {
                first,
                last,
                reason: e.to_string(),
            }));
        }
        self.write_log(log, buf)
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

    /// Makes the changes up to `upto`, durable now, visible: applies their puts to the active
    /// delta (moving their bytes) and drops them from the writers' pending maps (unless a later
    /// pending change rewrote the key). When no change is queued after them, which is the usual
    /// case, the pending maps are emptied whole rather than key by key.
    pub(super) fn publish(&self, w: &mut Writer, upto: u64) {
        if w.changes.front().is_none_or(|c| c.seq > upto) {
            return;
        }
        // Published in log order, each seq one past the last durable one.
        debug_assert_eq!(
            w.changes.front().map(|c| c.seq),
            Some(self.durable_seq() + 1),
            "changes published out of seq order"
        );
        let view = self.view.load();
        let all_pending = w.next_seq == upto + 1;
        if all_pending {
            for pending in &mut w.pending {
                if pending.capacity() > PENDING_KEPT_MAX {
                    // Give back what a bulk write grew, rather than clearing it every time.
                    *pending = PendingMap::new();
                } else {
                    pending.clear();
                }
            }
        }
        let mut published = Vec::new();
        while w.changes.front().is_some_and(|c| c.seq <= upto) {
            let Some(c) = w.changes.pop_front() else {
                break;
            };
            if !all_pending {
                for (i, p) in c.puts.iter().enumerate() {
                    let h = w.hasher.hash_one(p.key.as_slice());
                    let me = (h, c.seq, i as u32);
                    if let Ok(e) = w.pending[usize::from(p.table) - 1].find_entry(h, |&e| e == me) {
                        e.remove();
                    }
                }
            }
            published.push(c);
        }
        apply(&view.tables, &self.hash_key, published);
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
    /// Per put: whether it was put with [`WriteTx::put_unread`] in an exclusive write, so has
    /// no entry in `own` and gets none in the pending map.
    unread: Vec<bool>,
    /// Per table: key → index of this write's latest put of it (looked up without allocating).
    own: Vec<OwnMap>,
    /// Bytes this change will take in the log, roughly (keys, values and framing).
    approx_len: usize,
    /// Set in an exclusive write ([`Store::write_exclusive`]).
    exclusive: Option<Exclusive<'a>>,
}

/// What an exclusive write holds beside the writer lock.
struct Exclusive<'a> {
    log: MutexGuard<'a, Log>,
    /// Whether parts were queued that no flush has made durable yet.
    parts_queued: bool,
}

impl Drop for WriteTx<'_> {
    /// An exclusive write dropped with parts queued (an error part-way) makes them durable
    /// and visible before it lets another writer in, since its unread puts are not in the
    /// pending map for that writer to see; the part in progress is dropped. A failure here
    /// turns the store read-only (logged once by `fail`), so no writer reads past it.
    fn drop(&mut self) {
        if let Some(ex) = &mut self.exclusive
            && ex.parts_queued
        {
            ex.parts_queued = false;
            // A store that failed already writes no more log: its parts' outcome is unknown.
            if self.store.check_failed().is_ok()
                && let Err(e) = self.store.flush_held(&mut ex.log, &mut self.w)
            {
                tracing::error!(error = %e, "an exclusive write dropped part-way could not make its queued parts durable");
            }
        }
    }
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
        let h = self.w.hasher.hash_one(key);
        if let Some(p) = self.own_put(table, h, key) {
            return Ok(p.value.clone());
        }
        if let Some(p) = self.w.pending_put(table.index(), h, key) {
            return Ok(p.value.clone());
        }
        self.store.get(table, key, |v| v.map(<[u8]>::to_vec))
    }

    /// Whether this write, or a change queued before it and not yet visible, puts `key` in
    /// `table`: when not, the visible store (read in a batch, say) has the last word on it for
    /// as long as this write holds the writer lock.
    pub fn overrides(&self, table: impl Into<TableId>, key: &[u8]) -> bool {
        let table = table.into();
        if self.own[table.index()].is_empty() && self.w.pending[table.index()].is_empty() {
            // Nothing to hash the key for (a bulk write's unread puts are in neither).
            return false;
        }
        let h = self.w.hasher.hash_one(key);
        self.own_put(table, h, key).is_some() || self.w.pending_put(table.index(), h, key).is_some()
    }

    /// This write's latest put of `key` (hashed `h` by the writer's hasher) in `table`.
    fn own_put(&self, table: TableId, h: u64, key: &[u8]) -> Option<&Put> {
        self.own[table.index()]
            .find(h, |&(oh, i)| oh == h && self.puts[i].key == key)
            .map(|&(_, i)| &self.puts[i])
    }

    /// Records a put that this write will not read back: in an exclusive write it is not
    /// indexed for this write's reads (`get` and `overrides` may not see it) nor for later
    /// writers' (none can read before it is durable and visible); otherwise a plain
    /// [`WriteTx::put`]. For bulk writes whose keys the caller knows to be distinct.
    pub fn put_unread(&mut self, table: impl Into<TableId>, key: &[u8], value: Option<Vec<u8>>) {
        if self.exclusive.is_none() {
            return self.put(table, key, value);
        }
        self.approx_len += 6 + key.len() + value.as_ref().map_or(0, Vec::len);
        self.puts.push(Put {
            table: table.into().id(),
            key: key.to_vec(),
            value,
        });
        self.unread.push(true);
    }

    /// Records a put (`None` deletes).
    pub fn put(&mut self, table: impl Into<TableId>, key: &[u8], value: Option<Vec<u8>>) {
        let table = table.into();
        self.approx_len += 6 + key.len() + value.as_ref().map_or(0, Vec::len);
        let h = self.w.hasher.hash_one(key);
        let (i, puts) = (self.puts.len(), &self.puts);
        match self.own[table.index()].entry(
            h,
            |&(oh, j)| oh == h && puts[j].key == key,
            |&(oh, _)| oh,
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().1 = i,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((h, i));
            }
        }
        self.puts.push(Put {
            table: table.id(),
            key: key.to_vec(),
            value,
        });
        self.unread.push(false);
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
        self.unread.clear();
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
        self.queue_part(c.at, c.actor, c.kind, on_submitted)
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
        if self.store.is_follower() {
            return Err(StoreError::NotWriter);
        }
        self.queue_part(at, actor, kind, on_submitted)
    }

    /// In an exclusive write: queues the puts so far as one change (`on_submitted` as in
    /// [`WriteTx::submit_with`]) and goes on with the next, still holding both locks. The
    /// parts become durable and visible together, at [`WriteTx::commit`]; dropped before it,
    /// the write makes the parts queued so far durable and drops the one in progress.
    pub fn submit_part(
        &mut self,
        at: Timestamp,
        actor: ActorId,
        kind: u8,
        on_submitted: impl FnOnce(),
    ) -> Result<u64, StoreError> {
        if self.exclusive.is_none() {
            return Err(StoreError::Config("submit_part needs an exclusive write"));
        }
        if self.store.is_follower() {
            return Err(StoreError::NotWriter);
        }
        self.queue_part(at, actor, kind, on_submitted)
    }

    /// Queues the puts so far as the next change and starts an empty one. In an exclusive
    /// write the change is then among the parts its commit (or drop) makes durable.
    fn queue_part(
        &mut self,
        at: Timestamp,
        actor: ActorId,
        kind: u8,
        on_submitted: impl FnOnce(),
    ) -> Result<u64, StoreError> {
        let seq = self.w.next_seq;
        // The next part of an exclusive write is likely as big as this one: room for it now
        // spares the vectors' growth, part after part.
        let room = if self.exclusive.is_some() {
            self.puts.len()
        } else {
            0
        };
        let change = Change {
            seq,
            at,
            actor,
            kind,
            puts: std::mem::replace(&mut self.puts, Vec::with_capacity(room)),
        };
        let unread = std::mem::replace(&mut self.unread, Vec::with_capacity(room));
        self.approx_len = 0;
        for own in &mut self.own {
            own.clear();
        }
        // Refused whole (the buffer is as it was), the part's puts are dropped.
        change.encode(&mut self.w.buf)?;
        self.w.next_seq += 1;
        if let Some(ex) = &mut self.exclusive {
            ex.parts_queued = true;
        }
        let w = &mut *self.w;
        for (i, p) in change.puts.iter().enumerate() {
            if unread[i] {
                continue;
            }
            let h = w.hasher.hash_one(p.key.as_slice());
            let me = (h, seq, i as u32);
            let (changes, pending) = (&w.changes, &mut w.pending[usize::from(p.table) - 1]);
            let at = |e: (u64, u64, u32)| {
                let front = changes.front().map_or(seq, |c| c.seq);
                // An entry of this change (a key it puts twice) is not in `changes` yet.
                if e.1 == seq {
                    &change.puts[e.2 as usize]
                } else {
                    &changes[(e.1 - front) as usize].puts[e.2 as usize]
                }
            };
            match pending.entry(h, |&e| e.0 == h && at(e).key == p.key, |&e| e.0) {
                hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = me,
                hashbrown::hash_table::Entry::Vacant(e) => {
                    e.insert(me);
                }
            }
        }
        self.w.changes.push_back(change);
        on_submitted();
        Ok(seq)
    }

    /// Submits and waits until durable. In an exclusive write, queues the last part and
    /// makes every part durable and visible before it releases the locks.
    pub fn commit(mut self, at: Timestamp, actor: ActorId, kind: u8) -> Result<u64, StoreError> {
        let store = self.store;
        if self.exclusive.is_none() {
            let seq = self.submit(at, actor, kind)?;
            store.wait_durable(seq)?;
            return Ok(seq);
        }
        let seq = self.submit_part(at, actor, kind, || {})?;
        self.flush_parts()?;
        Ok(seq)
    }

    /// In an exclusive write: makes every part queued so far durable and visible (the last of
    /// them is then `Store::durable_seq`), dropping puts not submitted as a part. Nothing
    /// otherwise.
    pub fn commit_parts(mut self) -> Result<(), StoreError> {
        self.puts.clear();
        self.unread.clear();
        self.flush_parts()
    }

    fn flush_parts(&mut self) -> Result<(), StoreError> {
        let Some(ex) = &mut self.exclusive else {
            return Ok(());
        };
        if !std::mem::take(&mut ex.parts_queued) {
            return Ok(());
        }
        self.store.check_failed().map_err(unknown_outcome)?;
        self.store
            .flush_held(&mut ex.log, &mut self.w)
            .map_err(unknown_outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ActorId, Timestamp};
    use fs::SimFs;
    use std::sync::mpsc;

    static ONE: Schema = Schema {
        tables: &[TableSpec {
            name: "t",
            hot: true,
        }],
    };
    const T: TableId = TableId::new(1);

    /// A system of record that holds each commit until the test lets it go.
    struct Gate {
        entered: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl SystemOfRecord for Gate {
        fn commit(&self, _: &[Change]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            lock(&self.entered).send(()).ok();
            lock(&self.release).recv().ok();
            Ok(())
        }
    }

    fn get(tx: &WriteTx<'_>, k: &[u8]) -> Option<Vec<u8>> {
        tx.get(T, k).expect("get")
    }

    fn value(store: &Store, k: &[u8]) -> Option<Vec<u8>> {
        store.get(T, k, |v| v.map(<[u8]>::to_vec)).expect("get")
    }

    fn one_table_store(fs: &Arc<SimFs>) -> Store {
        let layout = Layout {
            schema: &ONE,
            shards: vec![1],
        };
        Store::create(fs.clone() as Arc<dyn Fs>, layout).expect("create")
    }

    /// An exclusive write's parts are queued, not visible and not durable until its commit,
    /// and no other writer gets in before that, so none can miss its unread puts (which have
    /// no pending-map entry): the writer that waited then reads them. A power cut after the
    /// commit keeps every part.
    #[test]
    fn an_exclusive_write_keeps_other_writers_out_until_all_its_parts_are_durable() {
        let fs = Arc::new(SimFs::new(5));
        let store = one_table_store(&fs);
        let (at, actor) = (Timestamp::from_raw(1), ActorId::parse(b"t").expect("actor"));
        let (entered_tx, entered) = mpsc::channel();
        std::thread::scope(|scope| {
            let mut ex = store.write_exclusive().expect("exclusive");
            ex.put_unread(T, b"a", Some(b"1".to_vec()));
            assert_eq!(get(&ex, b"a"), None, "an unread put is not indexed");
            let first = ex.submit_part(at, actor, 0, || {}).expect("part 1");
            ex.put_unread(T, b"b", Some(b"2".to_vec()));
            ex.put(T, b"c", Some(b"3".to_vec()));
            assert_eq!(get(&ex, b"c").as_deref(), Some(&b"3"[..]));
            let other = scope.spawn(|| {
                let tx = store.write().expect("write");
                entered_tx.send(()).expect("send");
                (get(&tx, b"a"), get(&tx, b"b"), get(&tx, b"c"))
            });
            // The other writer is kept out for as long as the exclusive write holds on.
            assert!(
                entered
                    .recv_timeout(std::time::Duration::from_millis(200))
                    .is_err(),
                "another writer got in while parts were queued"
            );
            assert_eq!(store.durable_seq(), first - 1, "nothing durable yet");
            assert_eq!(
                value(&store, b"a"),
                None,
                "readers see only durable changes"
            );
            let last = ex.commit(at, actor, 0).expect("commit");
            assert_eq!((last, store.durable_seq()), (first + 1, first + 1));
            let seen = other.join().expect("thread");
            assert_eq!(
                seen,
                (
                    Some(b"1".to_vec()),
                    Some(b"2".to_vec()),
                    Some(b"3".to_vec())
                )
            );
        });
        drop(store);
        fs.crash();
        let store = Store::open(fs.clone() as Arc<dyn Fs>, &ONE).expect("reopen");
        assert_eq!(value(&store, b"b").as_deref(), Some(&b"2"[..]));
        assert_eq!(store.durable_seq(), 2);
    }

    /// A publish of many changes, big enough to fill the delta's shards on several threads,
    /// keeps the last put of every key, whichever change its earlier puts were in, and counts
    /// each key once.
    #[test]
    fn a_big_publish_of_many_changes_keeps_the_last_put_of_each_key() {
        let fs = Arc::new(SimFs::new(7));
        let store = one_table_store(&fs);
        let (at, actor) = (Timestamp::from_raw(1), ActorId::parse(b"t").expect("actor"));
        const KEYS: u32 = 20_000;
        const PARTS: u32 = 8;
        let mut ex = store.write_exclusive().expect("exclusive");
        for part in 0..PARTS {
            // Every part puts every key (80% of them; part 7 all), so each is rewritten
            // across the runs.
            for k in (0..KEYS).filter(|k| part == PARTS - 1 || k % 5 != part % 5) {
                ex.put_unread(T, &k.to_le_bytes(), Some(vec![part as u8]));
            }
            if part + 1 < PARTS {
                ex.submit_part(at, actor, 0, || {}).expect("part");
            }
        }
        // A deletion in the last part wins too.
        ex.put_unread(T, &7u32.to_le_bytes(), None);
        ex.commit(at, actor, 0).expect("commit");
        for k in (0..KEYS).step_by(97) {
            let want = (k != 7).then(|| vec![PARTS as u8 - 1]);
            assert_eq!(value(&store, &k.to_le_bytes()), want, "key {k}");
        }
        assert_eq!(store.delta_keys(), KEYS as usize);
    }

    /// An exclusive write dropped part-way (an error in a later part) makes the parts it
    /// queued durable and visible before the next writer gets in, and drops the part in
    /// progress; outside an exclusive write `put_unread` is a plain put and `submit_part` is
    /// refused.
    #[test]
    fn an_exclusive_write_dropped_part_way_keeps_its_queued_parts_and_drops_the_rest() {
        let fs = Arc::new(SimFs::new(6));
        let store = one_table_store(&fs);
        let (at, actor) = (Timestamp::from_raw(1), ActorId::parse(b"t").expect("actor"));
        let mut ex = store.write_exclusive().expect("exclusive");
        ex.put_unread(T, b"a", Some(b"1".to_vec()));
        ex.submit_part(at, actor, 0, || {}).expect("part 1");
        ex.put_unread(T, b"b", Some(b"2".to_vec()));
        drop(ex);
        assert_eq!(store.durable_seq(), 1);
        assert_eq!(value(&store, b"a").as_deref(), Some(&b"1"[..]));
        assert_eq!(value(&store, b"b"), None, "the part in progress is dropped");

        let mut tx = store.write().expect("write");
        tx.put_unread(T, b"d", Some(b"4".to_vec()));
        assert_eq!(get(&tx, b"d").as_deref(), Some(&b"4"[..]), "a plain put");
        assert!(matches!(
            tx.submit_part(at, actor, 0, || {}),
            Err(StoreError::Config(_))
        ));
        tx.commit(at, actor, 0).expect("commit");
        assert_eq!(value(&store, b"d").as_deref(), Some(&b"4"[..]));
    }

    /// Writers read changes that are queued and not yet durable, latest put first (a key put
    /// twice in one change, a key rewritten by a later change), also while a flush of earlier
    /// changes is in flight and after it has published them: the pending entries of the later
    /// change then point into a queue whose front has moved.
    #[test]
    fn writers_read_queued_changes_before_during_and_after_a_flush_of_earlier_ones() {
        let layout = Layout {
            schema: &ONE,
            shards: vec![1],
        };
        let store = Arc::new(
            Store::create(Arc::new(SimFs::new(3)) as Arc<dyn Fs>, layout).expect("create"),
        );
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        store
            .set_system_of_record(Arc::new(Gate {
                entered: Mutex::new(entered_tx),
                release: Mutex::new(release_rx),
            }))
            .expect("record");
        let (at, actor) = (Timestamp::from_raw(1), ActorId::parse(b"t").expect("actor"));

        let mut tx = store.write().expect("write");
        tx.put(T, b"k", Some(b"1a".to_vec()));
        tx.put(T, b"k", Some(b"1b".to_vec()));
        tx.put(T, b"a", Some(b"1".to_vec()));
        assert_eq!(
            get(&tx, b"k").as_deref(),
            Some(&b"1b"[..]),
            "own latest put"
        );
        let s1 = tx.submit(at, actor, 0).expect("submit 1");
        let tx = store.write().expect("write");
        assert_eq!(
            get(&tx, b"k").as_deref(),
            Some(&b"1b"[..]),
            "queued change 1"
        );
        drop(tx);

        // A flush of change 1 starts and stops inside the system of record.
        let flusher = {
            let store = store.clone();
            std::thread::spawn(move || store.wait_durable(s1))
        };
        entered.recv().expect("flush entered");
        let mut tx = store.write().expect("write");
        tx.put(T, b"k", Some(b"2".to_vec()));
        tx.put(T, b"b", None);
        let s2 = tx.submit(at, actor, 0).expect("submit 2");
        let tx = store.write().expect("write");
        assert_eq!(
            get(&tx, b"k").as_deref(),
            Some(&b"2"[..]),
            "change 2 during the flush"
        );
        assert_eq!(
            get(&tx, b"a").as_deref(),
            Some(&b"1"[..]),
            "change 1 during the flush"
        );
        drop(tx);
        release.send(()).expect("release 1");
        flusher.join().expect("thread").expect("durable 1");
        assert_eq!(store.durable_seq(), s1);

        // Change 1 is published, change 2 still queued at the front of the queue.
        let tx = store.write().expect("write");
        assert_eq!(
            get(&tx, b"k").as_deref(),
            Some(&b"2"[..]),
            "change 2 after 1 published"
        );
        assert_eq!(
            get(&tx, b"a").as_deref(),
            Some(&b"1"[..]),
            "change 1 from the delta"
        );
        assert_eq!(get(&tx, b"b"), None);
        drop(tx);
        assert_eq!(
            store
                .get(T, b"k", |v| v.map(<[u8]>::to_vec))
                .expect("get")
                .as_deref(),
            Some(&b"1b"[..]),
            "readers see only durable changes"
        );
        release.send(()).expect("release 2");
        store.wait_durable(s2).expect("durable 2");
        assert_eq!(
            store
                .get(T, b"k", |v| v.map(<[u8]>::to_vec))
                .expect("get")
                .as_deref(),
            Some(&b"2"[..])
        );
        assert!(lock(&store.writer).pending.iter().all(|p| p.is_empty()));
    }
}
