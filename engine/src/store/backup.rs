//! Online backups: a consistent copy of a store directory taken while the store is open and
//! serving, and the restore that copies one back (`snapshots/README.md`, "Backups").
//!
//! Owns the copy protocol: `MANIFEST`, the files it names, every log segment, `MANIFEST` again,
//! starting over if a compaction replaced it meanwhile. Never takes the source's `LOCK` and
//! never writes to the source; never installs a destination `MANIFEST` before every file it
//! names is durable, so an interrupted copy is never taken for a store.

use std::io::Read;
use std::sync::Arc;

use super::fs::{Fs, WriteFile};
use super::{
    Schema, StoreError, inspect, io_err, list_segments, manifest, read_unmapped, shard_file_name,
};

/// Copies started before giving up on a source whose compactions keep replacing the manifest
/// mid-copy. A compaction folds a million keys (CompactionPolicy's default), so two in the time
/// of one copy are already rare; five in a row mean something else is wrong.
pub const BACKUP_ATTEMPTS_MAX: u32 = 5;

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The destination directory is not empty.
    #[error("{path} is not empty; give a new or empty directory")]
    DestinationNotEmpty {
        /// The destination directory.
        path: std::path::PathBuf,
    },
    /// Every attempt raced a compaction.
    #[error("the source's manifest changed during each of {attempts} copies; try again later")]
    Busy {
        /// Attempts made.
        attempts: u32,
    },
    /// Reading the source, writing the destination, or checking the copy failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a backup copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupReport {
    /// The `seq` of the snapshot files copied.
    pub snapshot_seq: u64,
    /// The last change in the copied log (the copy holds changes `1..=last_seq`).
    pub last_seq: u64,
    /// Files copied (snapshot files, log segments, the manifest).
    pub files: usize,
    /// Bytes copied.
    pub bytes: u64,
    /// Copies started (1 unless a compaction raced the first).
    pub attempts: u32,
}

/// Copies the store in `src` into `dest` (an empty directory), while `src` may be open
/// and serving; then verifies the copy. `progress` is told each file copied and its size.
pub fn backup(
    src: &dyn Fs,
    dest: &dyn Fs,
    schema: &Schema,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<BackupReport, BackupError> {
    // Empty, not merely store-less: a backup directory holds one store and nothing else.
    if !dest.list().map_err(io_err(dest, "list", ""))?.is_empty() {
        return Err(BackupError::DestinationNotEmpty {
            path: dest.root().to_owned(),
        });
    }
    // A raced attempt gives up before writing anything: each try starts from the beginning.
    for attempt in 1..=BACKUP_ATTEMPTS_MAX {
        if let Some(mut report) = copy_once(src, dest, schema, progress)? {
            report.attempts = attempt;
            let ins = inspect(dest, schema, true, &mut |_| {})?;
            report.last_seq = ins
                .segments
                .iter()
                .filter(|s| s.changes > 0)
                .map(|s| s.first_seq + s.changes - 1)
                .max()
                .unwrap_or(0)
                .max(report.snapshot_seq);
            return Ok(report);
        }
    }
    Err(BackupError::Busy {
        attempts: BACKUP_ATTEMPTS_MAX,
    })
}

/// Restores the backup in `from` into `dest` (an empty directory): the same copy and verify,
/// then a full open of the result (its torn tail cut, its log replayed), so the store that
/// `mykeyd serve` opens next is one that has opened already. The report's `last_seq` is the
/// restored store's durable seq after that open.
pub fn restore(
    from: Arc<dyn Fs>,
    dest: Arc<dyn Fs>,
    schema: &'static Schema,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<BackupReport, BackupError> {
    let mut report = backup(&*from, &*dest, schema, progress)?;
    report.last_seq = super::Store::open(dest, schema)?.durable_seq();
    Ok(report)
}

/// Bytes moved per read while copying a file: a huge page, so that the copy's writes end on
/// huge-page multiples (a read of a regular file fills the chunk until the file's end) and a
/// restored snapshot is mapped in huge pages as a written one is
/// ([`super::fs::write_in_huge_pages`]).
const COPY_CHUNK: usize = super::fs::HUGE_PAGE_LEN;

/// One copy. `None` if the source's manifest changed, or a file vanished, while the files were
/// being opened. Every file is opened before any byte is copied and the manifest is read again
/// right after: an open handle keeps its file readable when a compaction removes it, so the
/// window a compaction can spoil is the opening (microseconds), not the copy (minutes for a
/// national store).
fn copy_once(
    src: &dyn Fs,
    dest: &dyn Fs,
    schema: &Schema,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<Option<BackupReport>, StoreError> {
    if !src.exists(manifest::NAME) {
        return Err(StoreError::NotAStore {
            path: src.root().to_owned(),
        });
    }
    let manifest_bytes = read_unmapped(src, manifest::NAME)?;
    let m = manifest::Manifest::decode(
        src.root().join(manifest::NAME),
        &manifest_bytes,
        schema.len(),
    )?;
    let mut names: Vec<String> = schema
        .ids()
        .flat_map(|t| (0..m.tables[t.index()].len()).map(move |s| (t, s)))
        .map(|(t, s)| shard_file_name(schema.name(t), s as u16, m.seq))
        .collect();
    // A segment made after this listing holds only changes after every listed one: leaving it
    // out keeps the copy a prefix.
    names.extend(list_segments(src)?.into_iter().map(|(n, _)| n));
    let mut open = Vec::with_capacity(names.len());
    for name in names {
        match src.open_read(&name) {
            Ok(f) => open.push((name, f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(src, "open", &name)(e)),
        }
    }
    // Unchanged: no compaction installed a newer manifest, so none removed a file this one
    // needs before it was opened (removals come only after a newer manifest).
    if read_unmapped(src, manifest::NAME)? != manifest_bytes {
        return Ok(None);
    }
    let mut report = BackupReport {
        snapshot_seq: m.seq,
        ..BackupReport::default()
    };
    let mut buf = vec![0u8; COPY_CHUNK];
    for (name, mut f) in open {
        let n = install(dest, &name, &mut |out| {
            let mut n = 0u64;
            loop {
                let k = f.read(&mut buf).map_err(io_err(src, "read", &name))?;
                if k == 0 {
                    return Ok(n);
                }
                out.write_all(&buf[..k])
                    .map_err(io_err(dest, "write", &name))?;
                n += k as u64;
            }
        })?;
        progress(&name, n);
        report.files += 1;
        report.bytes += n;
    }
    // The last segment listed may have been sealed by a rotation after the listing, its
    // successor left out above: the copy ends there, so its seal goes (a sealed last segment
    // means a lost successor to `Store::open`).
    if let Some((last, _)) = list_segments(dest)?.pop() {
        let bytes = read_unmapped(dest, &last)?;
        let scan = super::wal::scan(&dest.root().join(&last), &bytes, true)?;
        if scan.sealed.is_some() {
            dest.truncate(&last, scan.valid_len)
                .map_err(io_err(dest, "truncate", &last))?;
        }
    }
    install(dest, manifest::NAME, &mut |out| {
        out.write_all(&manifest_bytes)
            .map_err(io_err(dest, "write", manifest::NAME))?;
        Ok(manifest_bytes.len() as u64)
    })?;
    progress(manifest::NAME, manifest_bytes.len() as u64);
    report.files += 1;
    report.bytes += manifest_bytes.len() as u64;
    Ok(Some(report))
}

/// Writes `name` the way every file of a store is installed: `name.tmp` (filled by `fill`),
/// fsync, rename, fsync the directory. Returns what `fill` wrote.
fn install(
    fs: &dyn Fs,
    name: &str,
    fill: &mut dyn FnMut(&mut dyn WriteFile) -> Result<u64, StoreError>,
) -> Result<u64, StoreError> {
    let tmp = format!("{name}.tmp");
    let mut f = fs.create(&tmp).map_err(io_err(fs, "create", &tmp))?;
    let n = fill(&mut *f)?;
    f.sync().map_err(io_err(fs, "fsync", &tmp))?;
    drop(f);
    fs.rename(&tmp, name).map_err(io_err(fs, "rename", &tmp))?;
    fs.sync_dir().map_err(io_err(fs, "fsync-dir", name))?;
    Ok(n)
}
