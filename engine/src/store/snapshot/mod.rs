//! Snapshot shard files: the immutable, memory-mapped hash tables of `snapshots/README.md`.
//!
//! Owns the `.snap` format: [`ShardBuilder`] writes one (format version 2, packed buckets:
//! `packed`), [`ShardFile`] maps one of either version and answers probes, [`ShardFile::verify`]
//! checks all of it. Version 1 files (slotted buckets: `slotted`) are still read, never
//! written. A probe checks the CRC of every bucket it reads and of every record or value it
//! returns outside one, so a flipped bit is an error, never an answer. This module never decides
//! what keys or values mean, and never trusts an offset or a length read from a file before
//! checking it against the file's size.

use std::path::{Path, PathBuf};

use super::StoreError;
use super::fs::{Fs, Mapped};
use super::hash::{HashKey, shard_of};

mod packed;
mod slotted;

pub use packed::KeyForm;

/// Magic of a snapshot shard file.
pub const MAGIC: [u8; 8] = *b"MYKEYSNP";
/// The format version this build writes; it reads every version up to it.
pub const VERSION: u16 = 2;
/// Header size.
pub const HEADER_LEN: usize = 64;
/// Longest probe chain in buckets. A writer grows the table rather than exceed it; a reader
/// stops there, so a corrupt file cannot make a probe loop.
pub const PROBE_BUCKETS_MAX: usize = 64;
/// Most buckets in one version 1 shard file: home buckets come from 32 bits of the hash.
pub const BUCKETS_MAX: u64 = 1 << 32;
/// Largest key: the key length is one byte.
pub const KEY_LEN_MAX: usize = 255;
/// Largest value: the value length is two bytes.
pub const VALUE_LEN_MAX: usize = 65_535;
/// Most records in one shard: a builder indexes them with `u32`.
const RECORDS_MAX: usize = u32::MAX as usize - 1;

const _: () = assert!(HEADER_LEN == 64 && PROBE_BUCKETS_MAX > 1);
const _: () = assert!(packed::BUCKET_LEN_MIN == HEADER_LEN);

/// The home bucket of a hash among `buckets`: a multiply-shift range reduction of the low 32
/// bits, so any bucket count works and tables are sized to their load, not to a power of two.
#[inline]
fn home_bucket(h: u64, buckets: u64) -> u64 {
    (u64::from(h as u32) * buckets) >> 32
}

#[inline]
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
#[inline]
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
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
    /// The file's format version.
    pub version: u16,
    /// How keys are stored (version 2; always [`KeyForm::Bytes`] in version 1).
    pub key_form: KeyForm,
    /// Number of records.
    pub entries: u64,
    /// Number of home buckets (the hash's range).
    pub home: u64,
    /// Number of buckets: version 1, equal to `home`; version 2, the home buckets and the
    /// spill buckets after them.
    pub buckets: u64,
    /// Version 1: bytes from one bucket to the next (slot line and inline area); version 2:
    /// the bucket size.
    pub stride: u64,
    /// Overflow heap length in bytes.
    pub heap_len: u64,
    /// CRC of everything after the header.
    pub body_crc: u32,
    /// CRC of the header itself.
    pub header_crc: u32,
}

impl Header {
    /// Offset of bucket 0: right after the header in version 1, at the bucket size in version 2.
    fn body_at(&self) -> u64 {
        if self.version == 1 {
            HEADER_LEN as u64
        } else {
            self.stride
        }
    }

    /// Encodes a version 2 header.
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10] = self.id.table;
        h[11] = self.key_form.byte();
        h[12..14].copy_from_slice(&self.id.shard.to_le_bytes());
        h[14..16].copy_from_slice(&self.id.shard_count.to_le_bytes());
        h[16..24].copy_from_slice(&self.id.seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.entries.to_le_bytes());
        h[32..36].copy_from_slice(&(self.home as u32).to_le_bytes());
        h[36..40].copy_from_slice(&(self.buckets as u32).to_le_bytes());
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
        if le_u32(b, 56) != 0 {
            return Err(corrupt(56, "reserved header bytes not zero"));
        }
        // Byte 11 is reserved in version 1 and the key form in version 2.
        let key_form = match (version, KeyForm::of_byte(b[11])) {
            (1, Some(KeyForm::Bytes)) => KeyForm::Bytes,
            (2, Some(f)) => f,
            _ => return Err(corrupt(11, "unknown key form")),
        };
        let (home, buckets) = if version == 1 {
            (le_u64(b, 32), le_u64(b, 32))
        } else {
            (u64::from(le_u32(b, 32)), u64::from(le_u32(b, 36)))
        };
        let h = Header {
            id: ShardId {
                table: b[10],
                shard: le_u16(b, 12),
                shard_count: le_u16(b, 14),
                seq: le_u64(b, 16),
            },
            version,
            key_form,
            entries: le_u64(b, 24),
            home,
            buckets,
            heap_len: le_u64(b, 40),
            body_crc: le_u32(b, 48),
            stride: u64::from(le_u32(b, 52)),
            header_crc,
        };
        let stride_ok = if version == 1 {
            h.stride >= slotted::BUCKET_LEN as u64 && h.stride <= slotted::STRIDE_MAX
        } else {
            h.stride >= packed::BUCKET_LEN_MIN as u64 && h.stride <= packed::BUCKET_LEN_MAX as u64
        };
        if !stride_ok || !h.stride.is_multiple_of(HEADER_LEN as u64) {
            return Err(corrupt(52, "bucket size is not a multiple of 64 in range"));
        }
        if h.home == 0 || h.home > BUCKETS_MAX {
            return Err(corrupt(32, "bucket count out of range"));
        }
        if h.buckets < h.home || h.buckets - h.home >= PROBE_BUCKETS_MAX as u64 {
            return Err(corrupt(36, "spill bucket count out of range"));
        }
        if version == 2 && h.heap_len > packed::HEAP_LEN_MAX {
            return Err(corrupt(40, "heap longer than its references can reach"));
        }
        let expect = h
            .buckets
            .checked_mul(h.stride)
            .and_then(|x| x.checked_add(h.body_at()))
            .and_then(|x| x.checked_add(h.heap_len));
        if expect != Some(b.len() as u64) {
            return Err(corrupt(
                b.len() as u64,
                "file length does not match its header (truncated or extended)",
            ));
        }
        // Each record needs a slot (version 1) or at least 3 bytes of a bucket (version 2).
        let most = if version == 1 {
            h.buckets * slotted::SLOTS_PER_BUCKET as u64
        } else {
            h.buckets * (h.stride - packed::BUCKET_HEAD_LEN as u64) / 3
        };
        if h.entries > most {
            return Err(corrupt(24, "more entries than the buckets can hold"));
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
    version: u16,
    key_form: KeyForm,
    home: u64,
    buckets: u64,
    stride: usize,
    /// File offset of bucket 0.
    body: usize,
    /// File offset of the heap (version 2).
    heap_at: usize,
}

/// What the second step of a batched lookup found ([`ShardFile::begin`]).
#[derive(Clone, Copy, Debug)]
pub enum Probe<'a> {
    /// The key is not in this shard.
    Absent,
    /// The key's value.
    Found(&'a [u8]),
    /// A version 1 candidate record at this body offset, prefetched, its key not yet compared.
    At(u64),
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
        let body = header.body_at() as usize;
        Ok(Self {
            name: name.to_owned(),
            version: header.version,
            key_form: header.key_form,
            home: header.home,
            buckets: header.buckets,
            stride: header.stride as usize,
            body,
            heap_at: body + header.buckets as usize * header.stride as usize,
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

    /// `verify`'s check that a key of hash `h`, read at `offset`, belongs to this shard.
    fn check_shard(&self, h: u64, offset: usize) -> Result<(), StoreError> {
        let id = &self.header.id;
        if shard_of(h, usize::from(id.shard_count)) != usize::from(id.shard) {
            return Err(self.corrupt(offset, "key belongs to another shard"));
        }
        Ok(())
    }

    fn corrupt(&self, offset: usize, what: &'static str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            offset: offset as u64,
            what,
        }
    }

    /// The value stored under `key` (whose hash is `h`), or `None`.
    #[inline]
    pub fn get(&self, h: u64, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        if self.version == 1 {
            self.slotted_get(h, key)
        } else {
            self.packed_get(h, key)
        }
    }

    /// A batch's first step: hints the CPU to fetch `h`'s home bucket (version 2: and the
    /// bucket after it).
    #[inline]
    pub fn prefetch(&self, h: u64) {
        if self.version == 1 {
            let at = HEADER_LEN + home_bucket(h, self.home) as usize * self.stride;
            prefetch_read(&self.bytes[at]);
        } else {
            self.packed_prefetch(h);
        }
    }

    /// A batch's second step, once every bucket of the batch was prefetched: version 2 answers
    /// here; version 1 reads the slot line and prefetches the candidate record it names (a
    /// whole stride for each of sixteen keys would overrun the core's outstanding misses).
    #[inline]
    pub fn begin(&self, h: u64, key: &[u8]) -> Result<Probe<'_>, StoreError> {
        if self.version == 1 {
            self.slotted_begin(h)
        } else {
            self.packed_begin(h, key)
        }
    }

    /// A batch's last step: the value `begin` found or led to.
    #[inline]
    pub fn finish<'a>(
        &'a self,
        p: Probe<'a>,
        h: u64,
        key: &[u8],
    ) -> Result<Option<&'a [u8]>, StoreError> {
        match p {
            Probe::Absent => Ok(None),
            Probe::Found(v) => Ok(Some(v)),
            Probe::At(off) => self.slotted_finish(off, h, key),
        }
    }

    /// Calls `f` with every record, in bucket order. Stops at the first corrupt record.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        let seen = if self.version == 1 {
            self.slotted_for_each(&mut f)?
        } else {
            self.packed_for_each(&mut f)?
        };
        if seen != self.header.entries {
            return Err(self.corrupt(24, "record count differs from the header"));
        }
        Ok(())
    }

    /// Checks everything: body CRC, every bucket, every record, and the invariants of the
    /// format (each record reached by its key's probe, keys unique and in this shard). Returns
    /// the number of records.
    pub fn verify(&self, key: &HashKey) -> Result<u64, StoreError> {
        let body = &self.bytes[HEADER_LEN..];
        if crc32c::crc32c(body) != self.header.body_crc {
            return Err(self.corrupt(HEADER_LEN, "body checksum mismatch"));
        }
        let seen = if self.version == 1 {
            self.slotted_verify(key)?
        } else {
            self.packed_verify(key)?
        };
        if seen != self.header.entries {
            return Err(self.corrupt(24, "record count differs from the header"));
        }
        Ok(seen)
    }
}

/// CRC-32C of a short buffer (a bucket, a record): the read path checks one or two per lookup.
/// Equal to `crc32c::crc32c`, which is tuned for long buffers (three interleaved streams and a
/// combining step that costs more than a bucket's whole CRC). Here a buffer of
/// [`CRC_STREAMS_MIN`] bytes or more (a bucket of two lines or more) is split in three streams
/// of `crc32` instructions that run side by side, joined by two carry-less multiplies by
/// constants computed at build time (`CRC_SHIFT`); a shorter one is one stream. A 256-byte
/// bucket's CRC so waits for ~16 dependent `crc32` instead of 35. Falls back to the crate where
/// SSE4.2 or PCLMULQDQ is missing.
#[inline]
pub fn crc_short(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        if data.len() >= CRC_STREAMS_MIN
            && data.len() / 24 < CRC_SHIFT.len()
            && std::arch::is_x86_feature_detected!("pclmulqdq")
        {
            // SAFETY: the CPU has SSE4.2 and PCLMULQDQ, checked just above; `crc_streams`
            // needs nothing else.
            #[allow(unsafe_code)]
            return unsafe { crc_streams(data) };
        }
        // SAFETY: the CPU has SSE4.2, checked just above; `crc_sse42` needs nothing else.
        #[allow(unsafe_code)]
        return unsafe { crc_sse42(data) };
    }
    crc32c::crc32c(data)
}

/// Bytes from which [`crc_short`] runs three streams: each stream gets at least four words.
pub const CRC_STREAMS_MIN: usize = 96;

/// The CRC-32C polynomial, bit-reflected.
const CRC_POLY: u32 = 0x82F6_3B78;

/// `a · b mod P` for bit-reflected polynomials (the top bit is x⁰), as zlib's `multmodp`.
const fn crc_mul(a: u32, mut b: u32) -> u32 {
    if a == 0 {
        return 0;
    }
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC_POLY
        } else {
            b >> 1
        };
    }
}

/// `xⁿ mod P`, bit-reflected.
const fn crc_xpow(mut n: u64) -> u32 {
    let mut r = 1u32 << 31;
    let mut sq = 1u32 << 30;
    while n > 0 {
        if n & 1 != 0 {
            r = crc_mul(sq, r);
        }
        sq = crc_mul(sq, sq);
        n >>= 1;
    }
    r
}

/// Stream lengths (in 8-byte words) [`crc_short`] splits: up to a bucket of
/// [`packed::BUCKET_LEN_MAX`] bytes.
const CRC_SHIFT_WORDS: usize = packed::BUCKET_LEN_MAX / 24 + 1;

/// For streams of `w` words, the constants that move a stream's CRC past the one or two
/// streams after it: `x^(64·w·k − 33) mod P` for k = 2 and 1. A carry-less multiply of a
/// CRC by `x^(n − 33)`, then a `crc32` of the product from 0, multiplies it by xⁿ (the 33 is
/// the 32 the instruction adds and the one bit a reflected product is shifted by).
const CRC_SHIFT: [(u32, u32); CRC_SHIFT_WORDS] = {
    let mut t = [(0u32, 0u32); CRC_SHIFT_WORDS];
    let mut w = 1;
    while w < CRC_SHIFT_WORDS {
        let bits = 64 * w as u64;
        t[w] = (crc_xpow(2 * bits - 33), crc_xpow(bits - 33));
        w += 1;
    }
    t
};

#[inline(always)]
fn le_word(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[8 * i..8 * i + 8]);
    u64::from_le_bytes(w)
}

/// [`crc_short`]'s three streams: the first `24·w` bytes as three runs of `w` words whose
/// CRCs are computed side by side and joined, then the rest in one stream.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2,pclmulqdq")]
fn crc_streams(data: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_clmulepi64_si128, _mm_crc32_u8, _mm_crc32_u64, _mm_cvtsi64_si128, _mm_cvtsi128_si64,
    };
    let w = data.len() / 24;
    let (a, rest) = data.split_at(8 * w);
    let (b, rest) = rest.split_at(8 * w);
    let (c, tail) = rest.split_at(8 * w);
    let (mut ca, mut cb, mut cc) = (u64::from(!0u32), 0u64, 0u64);
    for ((x, y), z) in a
        .chunks_exact(8)
        .zip(b.chunks_exact(8))
        .zip(c.chunks_exact(8))
    {
        ca = _mm_crc32_u64(ca, le_word(x, 0));
        cb = _mm_crc32_u64(cb, le_word(y, 0));
        cc = _mm_crc32_u64(cc, le_word(z, 0));
    }
    let shift = |crc: u64, k: u32| {
        let p = _mm_clmulepi64_si128::<0>(
            _mm_cvtsi64_si128(crc as i64),
            _mm_cvtsi64_si128(i64::from(k)),
        );
        _mm_crc32_u64(0, _mm_cvtsi128_si64(p) as u64)
    };
    let (k2, k1) = CRC_SHIFT[w];
    let mut crc = shift(ca, k2) ^ shift(cb, k1) ^ cc;
    let mut words = tail.chunks_exact(8);
    for t in &mut words {
        crc = _mm_crc32_u64(crc, le_word(t, 0));
    }
    let mut crc = crc as u32;
    for &x in words.remainder() {
        crc = _mm_crc32_u8(crc, x);
    }
    !crc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn crc_sse42(data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut c = u64::from(!0u32);
    // Four words a step: a bucket of two lines is four steps, with a quarter of the loop
    // overhead of one word a step.
    let mut blocks = data.chunks_exact(32);
    for blk in &mut blocks {
        c = _mm_crc32_u64(c, le_word(blk, 0));
        c = _mm_crc32_u64(c, le_word(blk, 1));
        c = _mm_crc32_u64(c, le_word(blk, 2));
        c = _mm_crc32_u64(c, le_word(blk, 3));
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        c = _mm_crc32_u64(c, le_word(w, 0));
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

/// Collects records of one shard and writes them as a `.snap` file (format version 2).
///
/// Records are copied into one arena as they are pushed, so a bulk build of tens of millions
/// of records costs their size plus 24 bytes each, not an allocation per record.
#[derive(Default)]
pub struct ShardBuilder {
    arena: Vec<u8>,
    /// (hash, arena offset, key length, value length) of every record, in push order.
    entries: Vec<(u64, u64, u8, u16)>,
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
        if self.entries.len() >= RECORDS_MAX {
            return Err(StoreError::Limit {
                what: "records in one shard",
                len: self.entries.len() + 1,
                max: RECORDS_MAX,
            });
        }
        let start = self.arena.len() as u64;
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        self.entries
            .push((h, start, key.len() as u8, value.len() as u16));
        Ok(())
    }

    /// Writes the file `name` (via `name.tmp`, fsync, rename). The caller syncs the directory.
    /// A `hot` table (read by lookups) is filled less, so that fewer probes read a second
    /// bucket.
    pub fn write(
        &self,
        fs: &dyn Fs,
        name: &str,
        id: ShardId,
        hot: bool,
    ) -> Result<Result<Written, Duplicate>, StoreError> {
        let items: Vec<packed::Item<'_>> = self
            .entries
            .iter()
            .map(|&(h, off, k, v)| {
                let at = off as usize;
                let (k, v) = (usize::from(k), usize::from(v));
                packed::Item {
                    h,
                    key: &self.arena[at..at + k],
                    value: &self.arena[at + k..at + k + v],
                }
            })
            .collect();
        let n = items.len();
        let key_max = items.iter().map(|it| it.key.len()).max().unwrap_or(1);
        let placed = |form, it: &packed::Item<'_>, len| {
            packed::placed_len(form, it.key.len(), it.value.len(), len).0
        };
        let mean_in = |form| {
            items
                .iter()
                .map(|it| placed(form, it, packed::BUCKET_LEN_MAX))
                .sum::<usize>()
                .div_ceil(n.max(1))
        };
        // MyKey IDs packed when every key is one and their buckets stay small enough.
        let ids = KeyForm::for_keys(items.iter().map(|it| it.key)) == KeyForm::MyKeyId;
        let packed_ids = ids.then(|| mean_in(KeyForm::MyKeyId)).and_then(|mean| {
            packed::bucket_len_for(KeyForm::MyKeyId, mean, key_max)
                .map(|len| (KeyForm::MyKeyId, mean, len))
        });
        let (form, mean, bucket_len) = packed_ids.unwrap_or_else(|| {
            let mean = mean_in(KeyForm::Bytes);
            let len = packed::bucket_len_for(KeyForm::Bytes, mean, key_max)
                .unwrap_or(packed::BUCKET_LEN_MAX);
            (KeyForm::Bytes, mean, len)
        });
        let total: usize = items.iter().map(|it| placed(form, it, bucket_len)).sum();
        let load = if hot {
            packed::LOAD_PCT_HOT
        } else {
            packed::LOAD_PCT
        };
        let mut home = packed::home_buckets_for(form, total, mean, bucket_len, load);
        let laid = loop {
            if home >= BUCKETS_MAX - PROBE_BUCKETS_MAX as u64 {
                return Err(StoreError::Limit {
                    what: "buckets in one shard",
                    len: home as usize,
                    max: (BUCKETS_MAX - PROBE_BUCKETS_MAX as u64) as usize,
                });
            }
            match packed::layout(&items, form, home, bucket_len) {
                Ok(l) => break l,
                Err(Some(dup)) => return Ok(Err(dup)),
                // A chain too long: grow by an eighth and place again.
                Err(None) => home += home / 8 + 1,
            }
        };
        if laid.heap.len() as u64 > packed::HEAP_LEN_MAX {
            return Err(StoreError::Limit {
                what: "heap bytes in one shard",
                len: laid.heap.len(),
                max: packed::HEAP_LEN_MAX as usize,
            });
        }
        let padding = vec![0u8; bucket_len - HEADER_LEN];
        let body_crc = [&padding[..], &laid.buckets, &laid.heap]
            .iter()
            .fold(0, |c, part| crc32c::crc32c_append(c, part));
        let header = Header {
            id,
            version: VERSION,
            key_form: form,
            entries: n as u64,
            home,
            buckets: laid.count,
            stride: bucket_len as u64,
            heap_len: laid.heap.len() as u64,
            body_crc,
            header_crc: 0,
        };
        let head = header.encode();
        let tmp = format!("{name}.tmp");
        let io = |op| super::io_err(fs, op, &tmp);
        let mut f = fs.create(&tmp).map_err(io("create"))?;
        super::fs::write_in_huge_pages(&mut *f, &[&head, &padding, &laid.buckets, &laid.heap])
            .map_err(io("write"))?;
        f.sync().map_err(io("fsync"))?;
        drop(f);
        fs.rename(&tmp, name).map_err(io("rename"))?;
        Ok(Ok(Written {
            len: (bucket_len + laid.buckets.len() + laid.heap.len()) as u64,
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

    /// The records `pairs` written as `t.snap` on `fs` (hashed with `key`) and opened.
    fn written<'p>(
        fs: &SimFs,
        key: &HashKey,
        pairs: impl IntoIterator<Item = (&'p [u8], &'p [u8])>,
    ) -> ShardFile {
        let mut b = ShardBuilder::default();
        for (k, v) in pairs {
            b.push(key.hash(k), k, v).expect("push");
        }
        let w = b
            .write(fs, "t.snap", id(), true)
            .expect("io")
            .expect("no dup");
        ShardFile::open(fs, "t.snap", id(), w.len, w.header_crc).expect("open")
    }

    #[test]
    fn short_crc_equals_the_crate() {
        let mut x = 0x9E37_79B9_u64;
        // Every length up to past the longest bucket, one stream and three, at two alignments.
        let data: Vec<u8> = (0..4300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for start in [0, 3] {
            for len in 0..data.len() - start {
                let d = &data[start..start + len];
                assert_eq!(crc_short(d), crc32c::crc32c(d), "len {len} at {start}");
            }
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
        let value = |i: u32| vec![i as u8; if i.is_multiple_of(10) { 3000 } else { 4 }];
        let pairs: Vec<_> = (0..500u32)
            .map(|i| (format!("key{i}").into_bytes(), value(i)))
            .collect();
        let f = written(&fs, &key, pairs.iter().map(|(k, v)| (&k[..], &v[..])));
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

    /// Flips every bit of `name` in turn: opening refuses it, or verify finds it and no lookup
    /// of `want` answers wrongly.
    fn every_flip_is_caught(
        fs: &SimFs,
        name: &str,
        id: ShardId,
        key: &HashKey,
        want: &[(Vec<u8>, Vec<u8>)],
    ) {
        let len = fs.len(name).expect("exists");
        let crc = le_u32(&fs.map(name).expect("map"), 60);
        for offset in 0..len {
            let bit = (offset % 8) as u8;
            fs.flip_bit(name, offset, bit).expect("flip");
            match ShardFile::open(fs, name, id, len as u64, crc) {
                Err(StoreError::Corrupt { .. } | StoreError::Version { .. }) => {}
                Err(e) => panic!("unexpected error {e}"),
                Ok(f) => {
                    assert!(f.verify(key).is_err(), "flip at {offset} not detected");
                    for (k, v) in want {
                        if let Ok(got) = f.get(key.hash(k), k) {
                            assert_eq!(got, Some(&v[..]), "flip at {offset}");
                        }
                    }
                }
            }
            fs.flip_bit(name, offset, bit).expect("unflip");
        }
    }

    #[test]
    fn every_flipped_bit_is_detected_by_verify_and_never_served() {
        let (fs, key, _) = build(40);
        let want: Vec<_> = (0..40u32)
            .map(|i| (format!("key{i}").into_bytes(), i.to_le_bytes().to_vec()))
            .collect();
        every_flip_is_caught(&fs, "t.snap", id(), &key, &want);
    }

    /// A shard whose keys are all MyKey IDs stores them packed (10 bytes, no length byte),
    /// answers by the ID, walks with the IDs as they were given, and catches every flip.
    #[test]
    fn a_shard_of_mykey_ids_stores_them_packed_and_gives_them_back() {
        let fs = SimFs::new(1);
        let key = HashKey([7, 8]);
        let ids: Vec<Vec<u8>> = (0..60u64)
            .map(|i| format!("{:07}ABCZ{:03}", i * 7919, i).into_bytes())
            .collect();
        let values: Vec<Vec<u8>> = (0..ids.len())
            .map(|i| format!("value {i}").into_bytes())
            .collect();
        let f = written(
            &fs,
            &key,
            ids.iter().zip(&values).map(|(k, v)| (&k[..], &v[..])),
        );
        assert_eq!(f.header().key_form, KeyForm::MyKeyId);
        assert_eq!(f.verify(&key).expect("verify"), 60);
        let mut walked = Vec::new();
        f.for_each(|k, v| walked.push((k.to_vec(), v.to_vec())))
            .expect("walk");
        walked.sort();
        let mut want: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), format!("value {i}").into_bytes()))
            .collect();
        want.sort();
        assert_eq!(walked, want);
        for (k, v) in &want {
            assert_eq!(f.get(key.hash(k), k).expect("get"), Some(&v[..]));
        }
        for miss in [&b"ZZZZZZZZZZZZZZ"[..], b"not an id", b""] {
            assert_eq!(f.get(key.hash(miss), miss).expect("miss"), None);
        }
        every_flip_is_caught(&fs, "t.snap", id(), &key, &want);
    }

    /// Sets byte `at` of `name` on `fs` to `to`, bit by bit.
    fn set_byte(fs: &SimFs, name: &str, at: usize, from: u8, to: u8) {
        for bit in 0..8 {
            if (from ^ to) >> bit & 1 != 0 {
                fs.flip_bit(name, at, bit).expect("flip");
            }
        }
    }

    /// Sets the little-endian u32 at `at` of `name` on `fs` to `to`.
    fn set_u32(fs: &SimFs, name: &str, at: usize, from: u32, to: u32) {
        for (i, (f, t)) in from
            .to_le_bytes()
            .into_iter()
            .zip(to.to_le_bytes())
            .enumerate()
        {
            set_byte(fs, name, at + i, f, t);
        }
    }

    /// A key form 1 bucket whose CRC is right but whose value ends are not (a writer's bug,
    /// not a flip): a lookup of the record whose value they bound reports the corruption,
    /// every other lookup answers or reports it, and none reads outside the bucket or panics.
    #[test]
    fn a_bad_value_end_under_a_good_bucket_crc_is_reported_not_served() {
        let fs = SimFs::new(1);
        let key = HashKey([5, 6]);
        let ids: Vec<Vec<u8>> = (0..40u64)
            .map(|i| format!("{:07}QRST{:03}", i * 104_729, i).into_bytes())
            .collect();
        let f = written(&fs, &key, ids.iter().map(|k| (&k[..], &b"some value"[..])));
        let (len, crc) = (fs.len("t.snap").expect("exists"), f.header().header_crc);
        let (body, stride, buckets) = (f.body, f.stride, f.buckets);
        drop(f);
        let mut checked = 0;
        for b in 0..buckets as usize {
            let at = body + b * stride;
            let bytes = fs.map("t.snap").expect("map");
            let n = usize::from(bytes[at + 4]);
            let ends = at + packed::ID_BUCKET_HEAD_LEN + packed::ID_PACKED_LEN * n;
            for j in 0..n {
                let bytes = fs.map("t.snap").expect("map");
                let start = if j == 0 {
                    ends + n - at
                } else {
                    usize::from(bytes[ends + j - 1])
                };
                let was = bytes[ends + j];
                let k = at + packed::ID_BUCKET_HEAD_LEN + packed::ID_PACKED_LEN * j;
                let stored = packed::unpack_id(&bytes[k..k + packed::ID_PACKED_LEN]).expect("id");
                // Before the value's start, and past the bucket's end.
                let bad = [start.checked_sub(1), (stride < 255).then_some(255)];
                for to in bad.into_iter().flatten() {
                    let old_crc = le_u32(&fs.map("t.snap").expect("map"), at);
                    set_byte(&fs, "t.snap", ends + j, was, to as u8);
                    let bucket = fs.map("t.snap").expect("map")[at + 4..at + stride].to_vec();
                    let new_crc = crc32c::crc32c(&bucket);
                    set_u32(&fs, "t.snap", at, old_crc, new_crc);
                    let f = ShardFile::open(&fs, "t.snap", id(), len as u64, crc).expect("open");
                    assert!(
                        matches!(
                            f.get(key.hash(&stored), &stored),
                            Err(StoreError::Corrupt { .. })
                        ),
                        "bucket {b} record {j}: value end {to} (its value starts at {start}) was served"
                    );
                    for k in &ids {
                        if let Ok(v) = f.get(key.hash(k), k) {
                            assert!(v.is_none_or(|v| v.len() <= stride), "{v:?}");
                        }
                    }
                    drop(f);
                    set_u32(&fs, "t.snap", at, new_crc, old_crc);
                    set_byte(&fs, "t.snap", ends + j, to as u8, was);
                    checked += 1;
                }
            }
        }
        assert!(
            checked >= 40,
            "every record's end was made bad at least once ({checked})"
        );
        let f = ShardFile::open(&fs, "t.snap", id(), len as u64, crc).expect("open");
        assert_eq!(f.verify(&key).expect("restored"), 40);
    }

    /// Values of every size around the limits of a key form 1 bucket (the last value end is
    /// a byte, 255 at most; 255 bytes and more go to the heap) are placed, found and verified.
    #[test]
    fn values_at_the_edges_of_a_packed_id_bucket_are_placed_and_found() {
        let fs = SimFs::new(1);
        let key = HashKey([11, 12]);
        // Values of 220..=244 bytes: in a bucket of 256 bytes, those that would end past offset
        // 255 must go to the heap, like every value of 255 bytes and more.
        let want: Vec<(Vec<u8>, Vec<u8>)> = (220..245usize)
            .chain([255, 300])
            .map(|n| {
                let k = format!("{n:014}").into_bytes();
                (k, vec![n as u8; n])
            })
            .collect();
        let f = written(&fs, &key, want.iter().map(|(k, v)| (&k[..], &v[..])));
        assert_eq!(f.header().key_form, KeyForm::MyKeyId);
        assert!(
            f.header().heap_len > 0,
            "values too long for a bucket are in the heap"
        );
        assert_eq!(f.verify(&key).expect("verify"), want.len() as u64);
        for (k, v) in &want {
            assert_eq!(f.get(key.hash(k), k).expect("get"), Some(&v[..]));
        }
    }

    /// A version 1 shard of the golden store (`snapshots/golden/v1/`), written by an earlier
    /// release: it still opens, answers, walks and verifies, and every flipped bit is caught.
    #[test]
    fn a_version_1_shard_still_reads_and_catches_every_flip() {
        let golden =
            include_bytes!("../../../../snapshots/golden/v1/ids-0000-0000000000000000.snap");
        let fs = SimFs::new(1);
        let mut f = fs.create("g.snap").expect("create");
        f.write_all(golden).expect("write");
        drop(f);
        let key = HashKey([0x1234, 0x5678]);
        let gid = ShardId {
            table: 1,
            shard: 0,
            shard_count: 4,
            seq: 0,
        };
        let file = ShardFile::open(&fs, "g.snap", gid, golden.len() as u64, le_u32(golden, 60))
            .expect("v1 opens");
        assert_eq!(file.header().version, 1);
        let mut all = Vec::new();
        file.for_each(|k, v| all.push((k.to_vec(), v.to_vec())))
            .expect("walk");
        assert!(all.len() >= 3, "the golden shard holds records");
        assert_eq!(file.verify(&key).expect("verify"), all.len() as u64);
        for (k, v) in &all {
            let h = key.hash(k);
            assert_eq!(file.get(h, k).expect("get"), Some(&v[..]));
            let p = file.begin(h, k).expect("begin");
            assert_eq!(file.finish(p, h, k).expect("finish"), Some(&v[..]));
        }
        assert_eq!(
            file.get(key.hash(b"ZZZZZZZZZZZZZZ"), b"ZZZZZZZZZZZZZZ")
                .expect("miss"),
            None
        );
        every_flip_is_caught(&fs, "g.snap", gid, &key, &all);
    }

    /// Records crowded into one home bucket spill into the buckets after it, which continue;
    /// all are found, keys absent are not, and the file verifies.
    #[test]
    fn a_crowded_home_bucket_spills_forward_and_every_key_is_found() {
        let key = HashKey([5, 6]);
        let keys: Vec<Vec<u8>> = (0..130u32)
            .map(|i| format!("crowd{i:03}").into_bytes())
            .collect();
        let all: Vec<packed::Item<'_>> = keys
            .iter()
            .map(|k| packed::Item {
                h: key.hash(k),
                key: k,
                value: b"0123456789abcdef012",
            })
            .collect();
        let (items, keys) = (&all[..40], &keys[..40]);
        // One home bucket of 64 bytes holds two of these 29-byte records: 40 spill over 20.
        let laid = packed::layout(items, KeyForm::Bytes, 1, 64)
            .map_err(|_| ())
            .expect("fits in 64");
        assert_eq!(laid.count, 20);
        assert!(
            matches!(packed::layout(&all, KeyForm::Bytes, 1, 64), Err(None)),
            "130 records cannot lie within 64 buckets of one home"
        );
        // Through the builder, which sizes the table itself.
        let fs = SimFs::new(1);
        let f = written(&fs, &key, items.iter().map(|it| (it.key, it.value)));
        assert_eq!(f.verify(&key).expect("verify"), 40);
        for k in keys {
            assert_eq!(
                f.get(key.hash(k), k).expect("get"),
                Some(&b"0123456789abcdef012"[..])
            );
        }
        assert_eq!(
            f.get(key.hash(b"crowd999"), b"crowd999").expect("miss"),
            None
        );
    }
}
