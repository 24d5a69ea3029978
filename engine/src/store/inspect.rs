//! Reading a store directory without opening it for writes: what it holds, with every
//! checksum checked on request ([`inspect`]), and the changes of its log ([`read_log`]). For
//! tools; takes no lock and changes nothing.

#[allow(clippy::wildcard_imports)]
use super::*;

/// What a store directory holds, read without changing anything.
#[derive(Debug)]
pub struct Inspection {
    /// The manifest.
    pub manifest: Manifest,
    /// Per table: records per shard.
    pub shard_entries: Vec<(&'static str, Vec<u64>)>,
    /// Per table, in the same order: the distinct layouts of its shard files.
    pub shard_layouts: Vec<Vec<ShardLayout>>,
    /// Bytes of all snapshot files.
    pub snapshot_bytes: u64,
    /// Log segments, oldest first.
    pub segments: Vec<SegmentInfo>,
}

/// How a table's shard files are laid out (`snapshots/README.md`), as `inspect` read their
/// headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLayout {
    /// Snapshot format version.
    pub version: u16,
    /// How keys are stored (always bytes in version 1).
    pub key_form: snapshot::KeyForm,
    /// Bucket size (version 2) or stride (version 1), in bytes.
    pub bucket_len: u64,
}

impl std::fmt::Display for ShardLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.version, self.key_form) {
            (1, _) => write!(f, "format 1, {}-byte strides", self.bucket_len),
            (v, snapshot::KeyForm::MyKeyId) => {
                write!(
                    f,
                    "format {v}, packed MyKey IDs, {}-byte buckets",
                    self.bucket_len
                )
            }
            (v, snapshot::KeyForm::Bytes) => {
                write!(f, "format {v}, {}-byte buckets", self.bucket_len)
            }
        }
    }
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
    schema: &Schema,
    verify: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Inspection, StoreError> {
    let manifest = read_manifest(fs, schema)?;
    let shards = open_shards(fs, schema, &manifest)?;
    let mut shard_entries = Vec::new();
    let mut shard_layouts = Vec::new();
    let mut snapshot_bytes = 0;
    for (t, files) in schema.ids().zip(&shards) {
        let mut v = Vec::new();
        let mut layouts: Vec<ShardLayout> = Vec::new();
        for f in files {
            let h = f.header();
            let l = ShardLayout {
                version: h.version,
                key_form: h.key_form,
                bucket_len: h.stride,
            };
            if !layouts.contains(&l) {
                layouts.push(l);
            }
            if verify {
                f.verify(&manifest.hash_key)?;
                progress(f.name());
            }
            v.push(f.header().entries);
            snapshot_bytes += f.file_len();
        }
        shard_entries.push((schema.name(t), v));
        shard_layouts.push(layouts);
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
        shard_layouts,
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
