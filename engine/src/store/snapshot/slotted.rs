//! Reading snapshot format version 1, the slotted layout (`snapshots/README.md`, "format
//! version 1"): 64-byte slot lines, each followed by an inline record area, then an overflow
//! heap. This build reads such files and never writes them.
//!
//! Owns the version 1 probe, walk and verify of a [`ShardFile`]. Checks the CRC of every bucket
//! a probe reads and of the record it returns, never trusts an offset before checking it
//! against the file, and never decides what keys or values mean.

use super::{
    HEADER_LEN, PROBE_BUCKETS_MAX, Probe, ShardFile, crc_short, home_bucket, le_u16, le_u32,
    le_u64, prefetch_read,
};
use crate::store::StoreError;
use crate::store::hash::HashKey;

/// Slot line size: one cache line of slots; a stride adds its inline record area.
pub const BUCKET_LEN: usize = 64;
/// Slots per bucket: 7 × 8 bytes, then 4 reserved bytes and the bucket's CRC.
pub const SLOTS_PER_BUCKET: usize = 7;
/// Record header: CRC u32, key length u8, value length u16.
pub const RECORD_HEADER_LEN: usize = 7;
/// Largest stride (512 KiB, a multiple of 64).
pub const STRIDE_MAX: u64 = 1 << 19;
/// Most cache lines of a stride a probe prefetches at once.
const PREFETCH_LINES_MAX: usize = 16;
/// Offsets in a slot have 40 bits.
const OFFSET_MASK: u64 = (1 << 40) - 1;

const _: () = assert!(SLOTS_PER_BUCKET * 8 + 4 + 4 == BUCKET_LEN);
const _: () = assert!(OFFSET_MASK.count_ones() + 24 == 64);
const _: () = assert!(STRIDE_MAX.is_multiple_of(BUCKET_LEN as u64));

/// The tag of a hash, as stored in bits 40..64 of a slot; never zero.
#[inline]
fn tag_of(h: u64) -> u64 {
    ((h >> 32) & 0x7F_FFFF) | 0x80_0000
}

/// A record read from the heap.
struct Record<'a> {
    key: &'a [u8],
    value: &'a [u8],
    len: usize,
}

impl ShardFile {
    /// The bucket `b`, after checking its CRC.
    #[inline]
    fn slot_line(&self, b: u64) -> Result<&[u8], StoreError> {
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
    /// matches, until `visit` answers `Some` or an empty slot ends the chain. Never walks more
    /// than [`PROBE_BUCKETS_MAX`] buckets. With `whole_stride`, the home stride's lines are
    /// all requested first, so the record usually arrives with the bucket.
    #[inline]
    fn probe<R>(
        &self,
        h: u64,
        whole_stride: bool,
        mut visit: impl FnMut(u64) -> Result<Option<R>, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        let tag = tag_of(h);
        let mut b = home_bucket(h, self.home);
        debug_assert!(b < self.buckets, "home bucket {b} past {}", self.buckets);
        if whole_stride {
            let at = HEADER_LEN + b as usize * self.stride;
            let lines = (self.stride / BUCKET_LEN).min(PREFETCH_LINES_MAX);
            for l in 0..lines {
                prefetch_read(&self.bytes[at + l * BUCKET_LEN]);
            }
        }
        for _ in 0..PROBE_BUCKETS_MAX.min(self.buckets as usize) {
            let bucket = self.slot_line(b)?;
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
        }
        Ok(None)
    }

    pub(super) fn slotted_get(&self, h: u64, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        self.probe(h, true, |off| {
            let rec = self.record(off)?;
            Ok((rec.key == key).then_some(rec.value))
        })
    }

    /// The first record on `h`'s chain whose tag matches, prefetched; [`Probe::At`] it.
    pub(super) fn slotted_begin(&self, h: u64) -> Result<Probe<'_>, StoreError> {
        Ok(match self.probe(h, false, |off| Ok(Some(off)))? {
            None => Probe::Absent,
            Some(off) => {
                let at = HEADER_LEN.saturating_add(off as usize);
                for line in [at, at + 64] {
                    if let Some(b) = self.bytes.get(line) {
                        prefetch_read(b);
                    }
                }
                Probe::At(off)
            }
        })
    }

    /// The value of `key` given its candidate offset; a full probe when the candidate's key
    /// differs (two keys sharing a 23-bit tag on one chain).
    pub(super) fn slotted_finish(
        &self,
        off: u64,
        h: u64,
        key: &[u8],
    ) -> Result<Option<&[u8]>, StoreError> {
        let rec = self.record(off)?;
        if rec.key == key {
            return Ok(Some(rec.value));
        }
        self.slotted_get(h, key)
    }

    pub(super) fn slotted_for_each(
        &self,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<u64, StoreError> {
        let mut seen = 0u64;
        for b in 0..self.buckets {
            let bucket = self.slot_line(b)?;
            for i in 0..SLOTS_PER_BUCKET {
                let slot = le_u64(bucket, i * 8);
                if slot != 0 {
                    let rec = self.record(slot & OFFSET_MASK)?;
                    f(rec.key, rec.value);
                    seen += 1;
                }
            }
        }
        Ok(seen)
    }

    /// Every version 1 invariant (`snapshots/README.md`): each record referenced by exactly
    /// one slot on its probe chain, keys unique and in this shard, no two records overlapping.
    pub(super) fn slotted_verify(&self, key: &HashKey) -> Result<u64, StoreError> {
        let mut extents: Vec<(u64, u64)> = Vec::with_capacity(self.header.entries as usize);
        let mut occupied = 0u64;
        let stride = self.stride as u64;
        for b in 0..self.buckets {
            let bucket = self.slot_line(b)?;
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
                let in_buckets = start < self.buckets * stride;
                if in_buckets && (start % stride) < BUCKET_LEN as u64 {
                    return Err(self.corrupt(at, "slot points into a bucket line"));
                }
                extents.push((start, start + rec.len as u64));
                let h = key.hash(rec.key);
                if slot >> 40 != tag_of(h) {
                    return Err(self.corrupt(at, "slot tag does not match its key"));
                }
                self.check_shard(h, at)?;
                // The probe for this key must reach this record: this also proves uniqueness,
                // since a probe stops at the first record with an equal key.
                match self.slotted_get(h, rec.key)? {
                    Some(v) if std::ptr::eq(v.as_ptr(), rec.value.as_ptr()) => {}
                    _ => return Err(self.corrupt(at, "record unreachable or key duplicated")),
                }
            }
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
