//! Creating and opening a store: the manifest read, shard files mapped, the log replayed after
//! the manifest's seq, a torn tail cut and logged, a missing or shortened segment refused;
//! and installing snapshot files built elsewhere (bulk load). Never serves a state the files
//! do not hold.

#[allow(clippy::wildcard_imports)]
use super::*;

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

impl Store {
    /// Creates an empty store in `fs`: empty shards at seq 0, a manifest, a first log segment.
    pub fn create(fs: Arc<dyn Fs>, layout: Layout) -> Result<Store, StoreError> {
        Self::create_with_key(fs, layout, HashKey::random())
    }

    /// As [`Store::create`], with a given hash key (golden files and tests need a fixed one).
    pub fn create_with_key(
        fs: Arc<dyn Fs>,
        layout: Layout,
        hash_key: HashKey,
    ) -> Result<Store, StoreError> {
        layout.check()?;
        let counts = &layout.shards;
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
        install_snapshot(
            &*fs,
            layout.schema,
            hash_key,
            0,
            &builders,
            false,
            &mut |_| {},
        )?;
        // Handed to `open` still held: released and taken again, a process forking in
        // between (any thread spawning a child) would hold the first descriptor's lock in the
        // child until its exec, and the second take would fail.
        Self::open_locked(fs, layout.schema, dir_lock).map(|(s, _)| s)
    }

    /// Opens the store in `fs`: maps the manifest's shards, cuts a torn log tail, replays the
    /// log after the manifest's seq. `schema` names the tables the store was created with.
    pub fn open(fs: Arc<dyn Fs>, schema: &'static Schema) -> Result<Store, StoreError> {
        Self::open_with_report(fs, schema).map(|(s, _)| s)
    }

    /// As [`Store::open`], also saying what recovery did.
    pub fn open_with_report(
        fs: Arc<dyn Fs>,
        schema: &'static Schema,
    ) -> Result<(Store, Recovery), StoreError> {
        let dir_lock = fs.lock().map_err(io_err(&*fs, "lock", fs::LOCK_NAME))?;
        Self::open_locked(fs, schema, dir_lock)
    }

    /// As [`Store::open_with_report`], with the directory's lock already held.
    fn open_locked(
        fs: Arc<dyn Fs>,
        schema: &'static Schema,
        dir_lock: fs::DirLock,
    ) -> Result<(Store, Recovery), StoreError> {
        let m = add_missing_tables(&*fs, schema, read_manifest(&*fs, schema)?)?;
        let shards = open_shards(&*fs, schema, &m)?;
        // Remove leftovers of interrupted installs: temp files, and shard files the manifest
        // does not name (written by a compaction that crashed before its manifest landed).
        let live: std::collections::HashSet<String> = schema
            .ids()
            .flat_map(|t| {
                (0..m.tables[t.index()].len())
                    .map(move |s| shard_file_name(schema.name(t), s as u16, m.seq))
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
            let mut scan = wal::scan(&path, &bytes, is_last)?;
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
            let seg_last = scan
                .changes
                .last()
                .map_or(first.saturating_sub(1), |c| c.seq);
            let has_changes = !scan.changes.is_empty();
            let mut replay = Vec::with_capacity(scan.changes.len());
            for c in std::mem::take(&mut scan.changes) {
                last_seq = last_seq.max(c.seq);
                if c.seq > m.seq {
                    replay.push(c);
                    report.replayed += 1;
                }
            }
            apply(&tables, &m.hash_key, replay);
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
                    has_changes,
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
            schema,
            hash_key: m.hash_key,
            view: ArcSwap::from_pointee(View {
                tables,
                snap_seq: m.seq,
            }),
            writer: Mutex::new(Writer::new(next_seq, schema.len())),
            log_first_seq: AtomicU64::new(log.first_seq),
            log: Mutex::new(log),
            durable: AtomicU64::new(last_seq),
            durable_moved: tokio::sync::Notify::new(),
            flushing: Mutex::new(false),
            flushed: std::sync::Condvar::new(),
            failure: Mutex::new(None),
            compacting: Mutex::new(()),
            epoch: std::time::Instant::now(),
            log_io_since: AtomicU64::new(0),
            compactor: Mutex::new(CompactorState::NotStarted),
            corrupt: Mutex::new(None),
            corrupt_logged_at: AtomicU64::new(0),
            record: std::sync::OnceLock::new(),
            follower: std::sync::atomic::AtomicBool::new(false),
            fs,
        };
        metrics::gauge!(WRITABLE).set(1.0);
        // Exported from the start, so that the alert on it has a series to watch.
        metrics::counter!(CORRUPT_READS_TOTAL).increment(0);
        Ok((store, report))
    }
}

pub(super) fn list_segments(fs: &dyn Fs) -> Result<Vec<(String, u64)>, StoreError> {
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
pub fn read_manifest(fs: &dyn Fs, schema: &Schema) -> Result<Manifest, StoreError> {
    if !fs.exists(manifest::NAME) {
        return Err(StoreError::NotAStore {
            path: fs.root().to_owned(),
        });
    }
    let bytes = fs
        .map(manifest::NAME)
        .map_err(io_err(fs, "map", manifest::NAME))?;
    Manifest::decode(fs.root().join(manifest::NAME), &bytes, schema.len())
}

/// Upgrades a store written before some tables existed: each table its manifest does not list
/// gets one empty shard file at the manifest's seq, and a new manifest names them. Runs only
/// under the store lock; read-only tools see such a table as empty.
pub(super) fn add_missing_tables(
    fs: &dyn Fs,
    schema: &Schema,
    mut m: Manifest,
) -> Result<Manifest, StoreError> {
    let mut changed = false;
    for t in schema.ids() {
        if !m.tables[t.index()].is_empty() {
            continue;
        }
        let name = shard_file_name(schema.name(t), 0, m.seq);
        let id = ShardId {
            table: t.id(),
            shard: 0,
            shard_count: 1,
            seq: m.seq,
        };
        let w = ShardBuilder::default()
            .write(fs, &name, id, schema.spec(t).hot)?
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
pub fn open_shards(
    fs: &dyn Fs,
    schema: &Schema,
    m: &Manifest,
) -> Result<Vec<Vec<Arc<ShardFile>>>, StoreError> {
    schema
        .ids()
        .map(|t| {
            let entries = &m.tables[t.index()];
            entries
                .iter()
                .enumerate()
                .map(|(s, e)| {
                    let id = ShardId {
                        table: t.id(),
                        shard: s as u16,
                        shard_count: entries.len() as u16,
                        seq: m.seq,
                    };
                    ShardFile::open(
                        fs,
                        &shard_file_name(schema.name(t), s as u16, m.seq),
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
    schema: &Schema,
    hash_key: HashKey,
    seq: u64,
    builders: &[Vec<ShardBuilder>],
    log_required: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<(), StoreError> {
    let mut tables = Vec::with_capacity(builders.len());
    for (table, shards) in schema.ids().zip(builders) {
        let mut entries = Vec::with_capacity(shards.len());
        for (s, b) in shards.iter().enumerate() {
            let name = shard_file_name(schema.name(table), s as u16, seq);
            let id = ShardId {
                table: table.id(),
                shard: s as u16,
                shard_count: shards.len() as u16,
                seq,
            };
            let w = b
                .write(fs, &name, id, schema.spec(table).hot)?
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
