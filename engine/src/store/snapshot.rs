//! Snapshot shard files: the immutable, memory-mapped open-addressing tables of `snapshots/README.md`.
//!
//! Owns the `.snap` format: [`ShardBuilder`] writes one, [`ShardFile`] maps one and answers
//! probes, [`ShardFile::verify`] checks all of it. Each bucket may carry an inline record area
//! (its *stride*), which a probe requests together with the bucket line so that the record
//! usually arrives in the same memory round trip. A probe checks the CRC of every bucket it
//! reads and of the record it returns, so a flipped bit is an error, never an answer. This module
//! never decides what keys or values mean, and never trusts an offset or a length read from a
//! file before checking it against the file's size.

use std::path::{Path, PathBuf};

use super::StoreError;
use super::fs::{Fs, Mapped};
use super::hash::{HashKey, shard_of};

/// Magic of a snapshot shard file.
pub const MAGIC: [u8; 8] = *b"MYKEYSNP";
/// The format version this build writes; it reads every version up to it.
pub const VERSION: u16 = 1;
/// Header size.
pub const HEADER_LEN: usize = 64;
/// Bucket size: one cache line (its slots); the bucket's stride adds its inline record area.
pub const BUCKET_LEN: usize = 64;
/// Most cache lines of a stride a probe prefetches at once. A stride is sized for seven
/// average records; 16 lines cover records of up to ~130 bytes, far above an ID record.
const PREFETCH_LINES_MAX: usize = 16;
/// Room in a bucket's inline area, in average records × 2. A bucket holds 5.6 records on
/// average at 80 % load and 7 when full; room for 6.5 keeps most records inline while wasting
/// little on emptier buckets.
const INLINE_RECORDS_X2: usize = 13;
/// Largest stride (512 KiB, a multiple of 64): more than a bucket line plus seven records of
/// the largest size.
pub const STRIDE_MAX: u64 = 1 << 19;
/// Slots per bucket: 7 × 8 bytes, then 4 reserved bytes and the bucket's CRC.
pub const SLOTS_PER_BUCKET: usize = 7;
/// Longest probe chain in buckets. A writer grows the table rather than exceed it; a reader
/// stops there, so a corrupt file cannot make a probe loop. At 80 % load with 7-slot buckets a
/// shard of a few million keys has its longest chain near 20 buckets; 64 keeps writers from
/// growing (and wasting strides) for the rare long cluster, while bounding the worst probe.
pub const PROBE_BUCKETS_MAX: usize = 64;
/// Most buckets in one shard file: home buckets come from 32 bits of the hash.
pub const BUCKETS_MAX: u64 = 1 << 32;
/// Writers keep at most this share of slots occupied (numerator / denominator).
const LOAD_NUM: usize = 4;
const LOAD_DEN: usize = 5;
/// Record header: CRC u32, key length u8, value length u16.
pub const RECORD_HEADER_LEN: usize = 7;
/// Largest key: the key length is one byte.
pub const KEY_LEN_MAX: usize = 255;
/// Largest value: the value length is two bytes.
pub const VALUE_LEN_MAX: usize = 65_535;
/// Offsets in a slot have 40 bits, so a shard's heap is at most 1 TiB.
const OFFSET_MASK: u64 = (1 << 40) - 1;

// The layout of `snapshots/README.md`, checked when this compiles: a bucket is one cache line
// of 7 slots and its CRC, a slot's offset bits and 24-bit tag fill a u64, a stride stays a
// multiple of the line, and a reader's probe window covers the longest chain a writer builds.
const _: () = assert!(HEADER_LEN == 64 && BUCKET_LEN == 64);
const _: () = assert!(SLOTS_PER_BUCKET * 8 + 4 + 4 == BUCKET_LEN);
const _: () = assert!(OFFSET_MASK.count_ones() + 24 == 64);
const _: () = assert!(STRIDE_MAX.is_multiple_of(BUCKET_LEN as u64));
const _: () = assert!(LOAD_NUM < LOAD_DEN && PROBE_BUCKETS_MAX > 1);

/// The home bucket of a hash among `buckets`: a multiply-shift range reduction of the low 32
/// bits, so any bucket count works and tables are sized to their load, not to a power of two.
#[inline]
fn home_bucket(h: u64, buckets: u64) -> u64 {
    (u64::from(h as u32) * buckets) >> 32
}

/// The tag of a hash, as stored in bits 40..64 of a slot; never zero.
#[inline]
fn tag_of(h: u64) -> u64 {
    ((h >> 32) & 0x7F_FFFF) | 0x80_0000
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// What the manifest expects of a shard file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardId {
    /// Table id.
    pub table: u8,
    /// Shard index.
    pub shard: u16,
    /// Shard count of the table.
    pub shard_count: u16,
    /// Seq the file includes.
    pub seq: u64,
}

/// Decoded header of a shard file.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// Who the file is.
    pub id: ShardId,
    /// Number of records.
    pub entries: u64,
    /// Number of buckets.
    pub buckets: u64,
    /// Bytes from one bucket to the next: its slot line plus its inline record area.
    pub stride: u64,
    /// Overflow heap length in bytes.
    pub heap_len: u64,
    /// CRC of buckets and heap.
    pub body_crc: u32,
    /// CRC of the header itself.
    pub header_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10] = self.id.table;
        h[12..14].copy_from_slice(&self.id.shard.to_le_bytes());
        h[14..16].copy_from_slice(&self.id.shard_count.to_le_bytes());
        h[16..24].copy_from_slice(&self.id.seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.entries.to_le_bytes());
        h[32..40].copy_from_slice(&self.buckets.to_le_bytes());
        h[40..48].copy_from_slice(&self.heap_len.to_le_bytes());
        h[48..52].copy_from_slice(&self.body_crc.to_le_bytes());
        h[52..56].copy_from_slice(&(self.stride as u32).to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(path: &Path, b: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |offset: u64, what: &'static str| StoreError::Corrupt {
            path: path.to_owned(),
            offset,
            what,
        };
        if b.len() < HEADER_LEN {
            return Err(corrupt(0, "file shorter than a snapshot header"));
        }
        if b[0..8] != MAGIC {
            return Err(corrupt(0, "bad magic: not a snapshot shard file"));
        }
        let version = le_u16(b, 8);
        if version == 0 {
            return Err(corrupt(8, "format version 0"));
        }
        if version > VERSION {
            return Err(StoreError::Version {
                path: path.to_owned(),
                found: version,
                supported: VERSION,
            });
        }
        let header_crc = le_u32(b, 60);
        if crc32c::crc32c(&b[..60]) != header_crc {
            return Err(corrupt(60, "snapshot header checksum mismatch"));
        }
        let h = Header {
            id: ShardId {
                table: b[10],
                shard: le_u16(b, 12),
                shard_count: le_u16(b, 14),
                seq: le_u64(b, 16),
            },
            entries: le_u64(b, 24),
            buckets: le_u64(b, 32),
            heap_len: le_u64(b, 40),
            body_crc: le_u32(b, 48),
            stride: u64::from(le_u32(b, 52)),
            header_crc,
        };
        if h.stride < BUCKET_LEN as u64
            || !h.stride.is_multiple_of(BUCKET_LEN as u64)
            || h.stride > STRIDE_MAX
        {
            return Err(corrupt(
                52,
                "bucket stride is not a multiple of 64 in range",
            ));
        }
        if le_u32(b, 56) != 0 {
            return Err(corrupt(56, "reserved header bytes not zero"));
        }
        if h.buckets == 0 || h.buckets > BUCKETS_MAX {
            return Err(corrupt(32, "bucket count out of range"));
        }
        let expect = h
            .buckets
            .checked_mul(h.stride)
            .and_then(|x| x.checked_add(HEADER_LEN as u64))
            .and_then(|x| x.checked_add(h.heap_len));
        if expect != Some(b.len() as u64) {
            return Err(corrupt(
                b.len() as u64,
                "file length does not match its header (truncated or extended)",
            ));
        }
        if h.entries > h.buckets * SLOTS_PER_BUCKET as u64 {
            return Err(corrupt(24, "more entries than slots"));
        }
        Ok(h)
    }
}

/// A mapped snapshot shard. Immutable; shared by readers through an `Arc`.
pub struct ShardFile {
    path: PathBuf,
    name: String,
    bytes: Mapped,
    header: Header,
    buckets: u64,
    stride: usize,
}

/// A record read from the heap.
struct Record<'a> {
    key: &'a [u8],
    value: &'a [u8],
    len: usize,
}

impl ShardFile {
    /// Maps `name` and checks its header against what the manifest expects.
    pub fn open(
        fs: &dyn Fs,
        name: &str,
        expect: ShardId,
        expect_len: u64,
        expect_header_crc: u32,
    ) -> Result<Self, StoreError> {
        let path = fs.root().join(name);
        let bytes = fs.map(name).map_err(super::io_err(fs, "map", name))?;
        if bytes.len() as u64 != expect_len {
            return Err(StoreError::Corrupt {
                path,
                offset: bytes.len() as u64,
                what: "file length differs from the manifest",
            });
        }
        let header = Header::decode(&path, &bytes)?;
        if header.header_crc != expect_header_crc || header.id != expect {
            return Err(StoreError::Corrupt {
                path,
                offset: 0,
                what: "header differs from the manifest (file from another store or seq)",
            });
        }
        Ok(Self {
            name: name.to_owned(),
            buckets: header.buckets,
            stride: header.stride as usize,
            path,
            bytes,
            header,
        })
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file size in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn corrupt(&self, offset: usize, what: &'static str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            offset: offset as u64,
            what,
        }
    }

    /// The bucket `b`, after checking its CRC.
    #[inline]
    fn bucket(&self, b: u64) -> Result<&[u8], StoreError> {
        let at = HEADER_LEN + b as usize * self.stride;
        let bucket = &self.bytes[at..at + BUCKET_LEN];
        if crc_short(&bucket[..60]) != le_u32(bucket, 60) {
            return Err(self.corrupt(at, "bucket checksum mismatch"));
        }
        Ok(bucket)
    }

    /// The record at body offset `off`, after checking its bounds and CRC.
    #[inline]
    fn record(&self, off: u64) -> Result<Record<'_>, StoreError> {
        let heap = &self.bytes[HEADER_LEN..];
        let at = off as usize;
        let file_at = HEADER_LEN.saturating_add(at);
        let head = heap
            .get(at..at + RECORD_HEADER_LEN)
            .ok_or_else(|| self.corrupt(file_at, "record offset past the end of the heap"))?;
        let klen = usize::from(head[4]);
        let vlen = usize::from(le_u16(head, 5));
        let len = RECORD_HEADER_LEN + klen + vlen;
        let rec = heap
            .get(at..at + len)
            .ok_or_else(|| self.corrupt(file_at, "record runs past the end of the heap"))?;
        if klen == 0 {
            return Err(self.corrupt(file_at, "record with an empty key"));
        }
        if crc_short(&rec[4..]) != le_u32(rec, 0) {
            return Err(self.corrupt(file_at, "record checksum mismatch"));
        }
        Ok(Record {
            key: &rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + klen],
            value: &rec[RECORD_HEADER_LEN + klen..],
            len,
        })
    }

    /// Walks `h`'s probe chain, calling `visit` with the body offset of every slot whose tag
    /// matches, until `visit` answers `Some` or an empty slot ends the chain. Checks the CRC of
    /// every bucket it reads, and never walks more than [`PROBE_BUCKETS_MAX`] buckets. With
    /// `whole_stride`, the home stride's lines are all requested first, so the record usually
    /// arrives with the bucket instead of after it.
    #[inline]
    fn probe<R>(
        &self,
        h: u64,
        whole_stride: bool,
        mut visit: impl FnMut(u64) -> Result<Option<R>, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        let tag = tag_of(h);
        let mut b = home_bucket(h, self.buckets);
        // The probe stays inside the bucket array the header declares (opening checked that
        // the file holds it), so every bucket read below is in bounds.
        debug_assert!(b < self.buckets, "home bucket {b} past {}", self.buckets);
        if whole_stride {
            self.prefetch_stride(b);
        }
        for _ in 0..PROBE_BUCKETS_MAX.min(self.header.buckets as usize) {
            let bucket = self.bucket(b)?;
            for i in 0..SLOTS_PER_BUCKET {
                let slot = le_u64(bucket, i * 8);
                if slot == 0 {
                    return Ok(None);
                }
                if slot >> 40 == tag
                    && let Some(r) = visit(slot & OFFSET_MASK)?
                {
                    return Ok(Some(r));
                }
            }
            b += 1;
            if b == self.buckets {
                b = 0;
            }
            debug_assert!(b < self.buckets);
        }
        Ok(None)
    }

    /// The value stored under `key` (whose hash is `h`), or `None`.
    #[inline]
    pub fn get(&self, h: u64, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        self.probe(h, true, |off| {
            let rec = self.record(off)?;
            Ok((rec.key == key).then_some(rec.value))
        })
    }

    /// The body offset of the first record on `h`'s probe chain whose slot tag matches, or
    /// `None` when the chain ends without one (the key is absent). The first half of
    /// [`ShardFile::get`], so a batch can prefetch every record before reading any.
    #[inline]
    pub fn candidate(&self, h: u64) -> Result<Option<u64>, StoreError> {
        self.probe(h, false, |off| Ok(Some(off)))
    }

    /// Hints the CPU to fetch the first two cache lines of the record at body offset `off`.
    #[inline]
    pub fn prefetch_record(&self, off: u64) {
        let at = HEADER_LEN.saturating_add(off as usize);
        if let Some(b) = self.bytes.get(at) {
            prefetch_read(b);
        }
        if let Some(b) = self.bytes.get(at + 64) {
            prefetch_read(b);
        }
    }

    /// The value of `key` given its [`ShardFile::candidate`] offset; falls back to a full probe
    /// when the candidate's key differs (two keys sharing a 23-bit tag on one chain).
    #[inline]
    pub fn get_at(&self, off: u64, h: u64, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        let rec = self.record(off)?;
        if rec.key == key {
            return Ok(Some(rec.value));
        }
        self.get(h, key)
    }

    /// Hints the CPU to fetch the home bucket line of `h`. Batches use this, then prefetch
    /// the exact record once the bucket has named it ([`ShardFile::prefetch_record`]):
    /// sixteen whole strides at once would overrun the core's outstanding-miss slots.
    #[inline]
    pub fn prefetch(&self, h: u64) {
        let at = HEADER_LEN + home_bucket(h, self.buckets) as usize * self.stride;
        prefetch_read(&self.bytes[at]);
    }

    #[inline]
    fn prefetch_stride(&self, b: u64) {
        let at = HEADER_LEN + b as usize * self.stride;
        let lines = (self.stride / BUCKET_LEN).min(PREFETCH_LINES_MAX);
        for l in 0..lines {
            prefetch_read(&self.bytes[at + l * BUCKET_LEN]);
        }
    }

    /// Calls `f` with every record, in slot order. Stops at the first corrupt record.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        let mut seen = 0u64;
        for b in 0..self.header.buckets {
            let bucket = self.bucket(b)?;
            for i in 0..SLOTS_PER_BUCKET {
                let slot = le_u64(bucket, i * 8);
                if slot != 0 {
                    let rec = self.record(slot & OFFSET_MASK)?;
                    f(rec.key, rec.value);
                    seen += 1;
                }
            }
        }
        if seen != self.header.entries {
            return Err(self.corrupt(24, "record count differs from the header"));
        }
        Ok(())
    }

    /// Checks everything: body CRC, every bucket, every record, and the invariants of the
    /// format (each record referenced by exactly one slot on its probe chain, keys unique and
    /// in this shard). Returns the number of records.
    pub fn verify(&self, key: &HashKey) -> Result<u64, StoreError> {
        let body = &self.bytes[HEADER_LEN..];
        if crc32c::crc32c(body) != self.header.body_crc {
            return Err(self.corrupt(HEADER_LEN, "body checksum mismatch"));
        }
        // Every slot points at a valid record, and no two records overlap (which also means
        // no two slots share one): the extents, sorted, must be disjoint.
        let mut extents: Vec<(u64, u64)> = Vec::with_capacity(self.header.entries as usize);
        let mut occupied = 0u64;
        for b in 0..self.header.buckets {
            let bucket = self.bucket(b)?;
            if le_u32(bucket, 56) != 0 {
                return Err(self.corrupt(
                    HEADER_LEN + b as usize * self.stride + 56,
                    "reserved bytes not zero",
                ));
            }
            for i in 0..SLOTS_PER_BUCKET {
                let slot = le_u64(bucket, i * 8);
                if slot == 0 {
                    continue;
                }
                let at = HEADER_LEN + b as usize * self.stride + i * 8;
                occupied += 1;
                let start = slot & OFFSET_MASK;
                let rec = self.record(start)?;
                let in_buckets = start < self.header.buckets * self.header.stride;
                if in_buckets && (start % self.header.stride) < BUCKET_LEN as u64 {
                    return Err(self.corrupt(at, "slot points into a bucket line"));
                }
                extents.push((start, start + rec.len as u64));
                let h = key.hash(rec.key);
                if slot >> 40 != tag_of(h) {
                    return Err(self.corrupt(at, "slot tag does not match its key"));
                }
                if shard_of(h, usize::from(self.header.id.shard_count))
                    != usize::from(self.header.id.shard)
                {
                    return Err(self.corrupt(at, "key belongs to another shard"));
                }
                // The probe for this key must reach this record: this also proves uniqueness,
                // since a probe stops at the first record with an equal key.
                match self.get(h, rec.key)? {
                    Some(v) if std::ptr::eq(v.as_ptr(), rec.value.as_ptr()) => {}
                    _ => return Err(self.corrupt(at, "record unreachable or key duplicated")),
                }
            }
        }
        if occupied != self.header.entries {
            return Err(self.corrupt(24, "occupied slots differ from the entry count"));
        }
        extents.sort_unstable();
        if let Some(w) = extents.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(self.corrupt(
                HEADER_LEN + w[1].0 as usize,
                "two records overlap (or two slots share one)",
            ));
        }
        Ok(occupied)
    }
}

/// CRC-32C of a short buffer (a bucket, a record): the read path checks two per lookup.
/// Equal to `crc32c::crc32c`, which is tuned for long buffers (three interleaved streams and a
/// combining step); for under ~200 bytes one stream of `crc32` instructions is several times
/// cheaper. Falls back to the crate where SSE4.2 is missing.
#[inline]
pub fn crc_short(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, checked just above; `crc_sse42` needs nothing else.
        #[allow(unsafe_code)]
        return unsafe { crc_sse42(data) };
    }
    crc32c::crc32c(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn crc_sse42(data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut c = u64::from(!0u32);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        c = _mm_crc32_u64(c, u64::from_le_bytes(b));
    }
    let mut c = c as u32;
    for &b in words.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

#[inline(always)]
fn prefetch_read(p: &u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; a prefetch is a hint that
    // never faults and changes nothing the program can observe, and `p` is a valid reference.
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (p as *const u8).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Collects records of one shard and writes them as a `.snap` file.
///
/// Records are encoded into one arena as they are pushed, so a bulk build of tens of millions
/// of records costs their encoded size plus 16 bytes each, not an allocation per record.
#[derive(Default)]
pub struct ShardBuilder {
    arena: Vec<u8>,
    /// (hash, arena offset) of every record, in push order.
    entries: Vec<(u64, u64)>,
}

/// A key pushed twice into one builder: the push indexes of both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate {
    /// Index of the first push.
    pub first: usize,
    /// Index of the second push.
    pub second: usize,
}

/// What a written file looks like to the manifest.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// File length.
    pub len: u64,
    /// Header CRC.
    pub header_crc: u32,
    /// Records written.
    pub entries: u64,
}

impl ShardBuilder {
    /// Number of records pushed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a record. Key and value must be within [`KEY_LEN_MAX`] and [`VALUE_LEN_MAX`].
    pub fn push(&mut self, h: u64, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if key.is_empty() || key.len() > KEY_LEN_MAX {
            return Err(StoreError::Limit {
                what: "key length",
                len: key.len(),
                max: KEY_LEN_MAX,
            });
        }
        if value.len() > VALUE_LEN_MAX {
            return Err(StoreError::Limit {
                what: "value length",
                len: value.len(),
                max: VALUE_LEN_MAX,
            });
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(&[0; 4]);
        self.arena.push(key.len() as u8);
        self.arena
            .extend_from_slice(&(value.len() as u16).to_le_bytes());
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        let crc = crc32c::crc32c(&self.arena[start + 4..]);
        self.arena[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        self.entries.push((h, start as u64));
        Ok(())
    }

    fn record_at(&self, off: u64) -> &[u8] {
        let at = off as usize;
        let klen = usize::from(self.arena[at + 4]);
        let vlen = usize::from(le_u16(&self.arena, at + 5));
        &self.arena[at..at + RECORD_HEADER_LEN + klen + vlen]
    }

    fn key_at(&self, off: u64) -> &[u8] {
        let rec = self.record_at(off);
        &rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + usize::from(rec[4])]
    }

    /// Places every record into slots: `Err(Some(dup))` on a duplicate key, `Err(None)` when
    /// some probe chain would exceed [`PROBE_BUCKETS_MAX`] (the caller grows the table).
    fn place(&self, buckets: usize) -> Result<Vec<u32>, Option<Duplicate>> {
        // Slot contents as entry index + 1 (0 = empty).
        let mut slots = vec![0u32; buckets * SLOTS_PER_BUCKET];
        let n = buckets as u64;
        for (idx, &(h, off)) in self.entries.iter().enumerate() {
            let mut b = home_bucket(h, n);
            let mut placed = false;
            'probe: for _ in 0..PROBE_BUCKETS_MAX.min(buckets) {
                for i in 0..SLOTS_PER_BUCKET {
                    let s = b as usize * SLOTS_PER_BUCKET + i;
                    match slots[s] {
                        0 => {
                            slots[s] = idx as u32 + 1;
                            placed = true;
                            break 'probe;
                        }
                        other => {
                            let (oh, ooff) = self.entries[other as usize - 1];
                            if oh == h && self.key_at(ooff) == self.key_at(off) {
                                return Err(Some(Duplicate {
                                    first: other as usize - 1,
                                    second: idx,
                                }));
                            }
                        }
                    }
                }
                b = (b + 1) % n;
            }
            if !placed {
                return Err(None);
            }
        }
        Ok(slots)
    }

    /// Writes the file `name` (via `name.tmp`, fsync, rename). The caller syncs the directory.
    ///
    /// With `inline`, each bucket gets an inline record area (fast probes, ~16 % more bytes);
    /// without, the stride is the bare bucket line and every record is in the heap (compact,
    /// for tables read only on the write path).
    pub fn write(
        &self,
        fs: &dyn Fs,
        name: &str,
        id: ShardId,
        inline: bool,
    ) -> Result<Result<Written, Duplicate>, StoreError> {
        let n = self.entries.len();
        if n > u32::MAX as usize - 1 {
            return Err(StoreError::Limit {
                what: "records in one shard",
                len: n,
                max: u32::MAX as usize - 1,
            });
        }
        let min_slots = (n * LOAD_DEN).div_ceil(LOAD_NUM);
        let mut buckets = min_slots.div_ceil(SLOTS_PER_BUCKET).max(1);
        let slots = loop {
            match self.place(buckets) {
                Ok(s) => break s,
                Err(Some(dup)) => return Ok(Err(dup)),
                // A chain too long: grow by an eighth and place again.
                Err(None) => buckets += buckets / 8 + 1,
            }
        };
        // Each bucket is followed by an inline area with room for seven records of this
        // shard's average size (whole cache lines), so a probe finds most records in the
        // stride it has already requested; records that do not fit go to the overflow heap
        // after the last bucket.
        let total: usize = self
            .entries
            .iter()
            .map(|&(_, off)| self.record_at(off).len())
            .sum();
        let avg = total.div_ceil(n.max(1));
        let room = if inline {
            avg * INLINE_RECORDS_X2 / 2
        } else {
            0
        };
        let stride = (BUCKET_LEN + room.next_multiple_of(BUCKET_LEN)).min(STRIDE_MAX as usize);
        let area = buckets * stride;
        let mut body = vec![0u8; area];
        let mut overflow: Vec<u8> = Vec::new();
        for b in 0..buckets {
            let base = b * stride;
            let mut cursor = base + BUCKET_LEN;
            for i in 0..SLOTS_PER_BUCKET {
                let s = slots[b * SLOTS_PER_BUCKET + i];
                if s == 0 {
                    continue;
                }
                let (h, arena_off) = self.entries[s as usize - 1];
                let rec = self.record_at(arena_off);
                let off = if cursor + rec.len() <= base + stride {
                    body[cursor..cursor + rec.len()].copy_from_slice(rec);
                    cursor += rec.len();
                    cursor - rec.len()
                } else {
                    overflow.extend_from_slice(rec);
                    area + overflow.len() - rec.len()
                };
                let word = tag_of(h) << 40 | off as u64;
                body[base + i * 8..base + i * 8 + 8].copy_from_slice(&word.to_le_bytes());
            }
            let crc = crc32c::crc32c(&body[base..base + 60]);
            body[base + 60..base + 64].copy_from_slice(&crc.to_le_bytes());
        }
        if (area + overflow.len()) as u64 > OFFSET_MASK {
            return Err(StoreError::Limit {
                what: "bytes in one shard",
                len: area + overflow.len(),
                max: OFFSET_MASK as usize,
            });
        }
        let body_crc = crc32c::crc32c_append(crc32c::crc32c(&body), &overflow);
        let header = Header {
            id,
            entries: n as u64,
            buckets: buckets as u64,
            stride: stride as u64,
            heap_len: overflow.len() as u64,
            body_crc,
            header_crc: 0,
        };
        let head = header.encode();
        let tmp = format!("{name}.tmp");
        let io = |op| super::io_err(fs, op, &tmp);
        let mut f = fs.create(&tmp).map_err(io("create"))?;
        f.write_all(&head).map_err(io("write"))?;
        for chunk in body.chunks(1 << 20).chain(overflow.chunks(1 << 20)) {
            f.write_all(chunk).map_err(io("write"))?;
        }
        f.sync().map_err(io("fsync"))?;
        drop(f);
        fs.rename(&tmp, name).map_err(io("rename"))?;
        Ok(Ok(Written {
            len: (HEADER_LEN + area + overflow.len()) as u64,
            header_crc: le_u32(&head, 60),
            entries: n as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::SimFs;

    fn id() -> ShardId {
        ShardId {
            table: 1,
            shard: 0,
            shard_count: 1,
            seq: 7,
        }
    }

    fn build(n: u32) -> (SimFs, HashKey, Written) {
        let fs = SimFs::new(1);
        let key = HashKey([9, 9]);
        let mut b = ShardBuilder::default();
        for i in 0..n {
            let k = format!("key{i}");
            b.push(key.hash(k.as_bytes()), k.as_bytes(), &i.to_le_bytes())
                .expect("push");
        }
        let w = b
            .write(&fs, "t.snap", id(), true)
            .expect("io")
            .expect("no dup");
        (fs, key, w)
    }

    #[test]
    fn short_crc_equals_the_crate() {
        let mut x = 0x9E37_79B9_u64;
        let data: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for len in 0..data.len() {
            assert_eq!(
                crc_short(&data[..len]),
                crc32c::crc32c(&data[..len]),
                "len {len}"
            );
        }
    }

    #[test]
    fn round_trip_and_verify() {
        let (fs, key, w) = build(5000);
        let f = ShardFile::open(&fs, "t.snap", id(), w.len, w.header_crc).expect("open");
        for i in 0..5000u32 {
            let k = format!("key{i}");
            let v = f.get(key.hash(k.as_bytes()), k.as_bytes()).expect("ok");
            assert_eq!(v, Some(&i.to_le_bytes()[..]));
        }
        assert_eq!(f.get(key.hash(b"nope"), b"nope").expect("ok"), None);
        assert_eq!(f.verify(&key).expect("verify"), 5000);
        let mut n = 0;
        f.for_each(|_, _| n += 1).expect("walk");
        assert_eq!(n, 5000);
    }

    #[test]
    fn records_too_big_for_their_stride_go_to_the_overflow_heap() {
        let fs = SimFs::new(1);
        let key = HashKey([3, 4]);
        let mut b = ShardBuilder::default();
        let value = |i: u32| vec![i as u8; if i.is_multiple_of(10) { 3000 } else { 4 }];
        for i in 0..500u32 {
            let k = format!("key{i}");
            b.push(key.hash(k.as_bytes()), k.as_bytes(), &value(i))
                .expect("push");
        }
        let w = b
            .write(&fs, "t.snap", id(), true)
            .expect("io")
            .expect("no dup");
        let f = ShardFile::open(&fs, "t.snap", id(), w.len, w.header_crc).expect("open");
        assert!(f.header().heap_len > 0, "some records overflowed");
        assert_eq!(f.verify(&key).expect("verify"), 500);
        for i in 0..500u32 {
            let k = format!("key{i}");
            let v = f.get(key.hash(k.as_bytes()), k.as_bytes()).expect("ok");
            assert_eq!(v, Some(&value(i)[..]));
        }
    }

    #[test]
    fn empty_table() {
        let (fs, key, w) = build(0);
        let f = ShardFile::open(&fs, "t.snap", id(), w.len, w.header_crc).expect("open");
        assert_eq!(f.get(key.hash(b"x"), b"x").expect("ok"), None);
        assert_eq!(f.verify(&key).expect("verify"), 0);
    }

    #[test]
    fn duplicate_key_is_reported() {
        let fs = SimFs::new(1);
        let key = HashKey([1, 1]);
        let mut b = ShardBuilder::default();
        for k in [&b"a"[..], b"b", b"a"] {
            b.push(key.hash(k), k, b"v").expect("push");
        }
        let r = b.write(&fs, "t.snap", id(), true).expect("io");
        assert_eq!(
            r.err(),
            Some(Duplicate {
                first: 0,
                second: 2
            })
        );
    }

    #[test]
    fn every_flipped_bit_is_detected_by_verify_and_never_served() {
        let (fs, key, w) = build(40);
        let len = fs.len("t.snap").expect("exists");
        for offset in 0..len {
            let bit = (offset % 8) as u8;
            fs.flip_bit("t.snap", offset, bit).expect("flip");
            match ShardFile::open(&fs, "t.snap", id(), w.len, w.header_crc) {
                Err(StoreError::Corrupt { .. } | StoreError::Version { .. }) => {}
                Err(e) => panic!("unexpected error {e}"),
                Ok(f) => {
                    assert!(f.verify(&key).is_err(), "flip at {offset} not detected");
                    // Lookups either answer correctly or fail; never a wrong answer.
                    for i in 0..40u32 {
                        let k = format!("key{i}");
                        if let Ok(v) = f.get(key.hash(k.as_bytes()), k.as_bytes()) {
                            assert_eq!(v, Some(&i.to_le_bytes()[..]), "flip at {offset}");
                        }
                    }
                }
            }
            fs.flip_bit("t.snap", offset, bit).expect("unflip");
        }
    }
}
