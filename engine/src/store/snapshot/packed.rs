//! Snapshot format version 2, packed buckets (`snapshots/README.md`, "format version 2"):
//! fixed-size buckets of one or a few cache lines holding whole records, found by comparing the
//! keys in the home bucket, so a hit costs one memory round trip and no slot bytes.
//!
//! Owns the version 2 probe, walk and verify of a [`ShardFile`], and the placement of a
//! shard's records into buckets ([`layout`]). Checks the CRC of every bucket a probe reads and
//! of every heap value it returns; never trusts a length read from a file before checking it
//! against the bucket or the heap; never decides what keys or values mean.

use super::{
    Duplicate, PROBE_BUCKETS_MAX, Probe, ShardFile, crc_short, home_bucket, le_u32, prefetch_read,
};
use crate::store::StoreError;
use crate::store::hash::{HashKey, shard_of};

/// Bucket head: CRC u32, record count u8, flags u8.
pub const BUCKET_HEAD_LEN: usize = 6;
/// Flag bit 0 of a bucket: a key whose home is this bucket or an earlier one is stored later.
pub const CONTINUES: u8 = 1;
/// Smallest and largest bucket: one cache line, and 64 of them.
pub const BUCKET_LEN_MIN: usize = 64;
/// Largest bucket size.
pub const BUCKET_LEN_MAX: usize = 4096;
/// A record's head: key length u8, value length u8.
pub const RECORD_HEAD_LEN: usize = 2;
/// The value length byte that means "in the heap": a 7-byte reference follows the key.
pub const IN_HEAP: u8 = 255;
/// A heap reference: offset u40, length u16.
pub const HEAP_REF_LEN: usize = 7;
/// Bytes after a heap value: its CRC-32C.
pub const HEAP_CRC_LEN: usize = 4;
/// Largest heap: offsets have 40 bits.
pub const HEAP_LEN_MAX: u64 = 1 << 40;
/// Most records in one bucket: the count is one byte.
const RECORDS_PER_BUCKET_MAX: usize = 255;
/// Records fill at most this share of the home buckets' room (numerator / denominator): high
/// enough that little is left empty, low enough that few keys land past their home bucket.
const LOAD_NUM: usize = 22;
const LOAD_DEN: usize = 25;
/// How many waiting records a bucket's fill looks at for one that fits the room it has left.
const FIT_SCAN_MAX: usize = 16;
/// Lines of the home bucket a probe requests at once.
const PREFETCH_LINES_MAX: usize = 4;

const _: () = assert!(BUCKET_LEN_MAX.is_multiple_of(BUCKET_LEN_MIN));
const _: () = assert!(BUCKET_HEAD_LEN + RECORD_HEAD_LEN + 255 + HEAP_REF_LEN <= 320);
const _: () = assert!(LOAD_NUM < LOAD_DEN);

/// The bucket size for records of `mean` bytes whose largest key is `key_max`: room for two
/// average records and for a heap reference of any key, in whole cache lines.
pub fn bucket_len_for(mean: usize, key_max: usize) -> usize {
    let stub = BUCKET_HEAD_LEN + RECORD_HEAD_LEN + key_max + HEAP_REF_LEN;
    (BUCKET_HEAD_LEN + 2 * mean)
        .max(stub)
        .next_multiple_of(BUCKET_LEN_MIN)
        .clamp(BUCKET_LEN_MIN, BUCKET_LEN_MAX)
}

/// The size a record takes in a bucket of `bucket_len` bytes, and whether its value goes to
/// the heap.
pub fn placed_len(key: usize, value: usize, bucket_len: usize) -> (usize, bool) {
    let inline = RECORD_HEAD_LEN + key + value;
    if value < usize::from(IN_HEAP) && inline <= bucket_len - BUCKET_HEAD_LEN {
        (inline, false)
    } else {
        (RECORD_HEAD_LEN + key + HEAP_REF_LEN, true)
    }
}

/// The home bucket count for records of `total` placed bytes in buckets of `bucket_len`.
pub fn home_buckets_for(total: usize, bucket_len: usize) -> u64 {
    let room = (bucket_len - BUCKET_HEAD_LEN) * LOAD_NUM / LOAD_DEN;
    (total.div_ceil(room) as u64).max(1)
}

/// One record to place: its hash, key and value.
pub struct Item<'a> {
    /// The key's hash.
    pub h: u64,
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

/// A laid-out shard body: the buckets and the heap.
pub struct Laid {
    /// `T` buckets of `bucket_len` bytes, CRCs written.
    pub buckets: Vec<u8>,
    /// Bucket count `T`.
    pub count: u64,
    /// The heap: values with their CRCs.
    pub heap: Vec<u8>,
}

/// Places `items` into `home` home buckets of `bucket_len` bytes (`snapshots/README.md`, "How a
/// writer places records"). `Err(Some(dup))` on a duplicate key (indexes into `items`),
/// `Err(None)` when some record would land [`PROBE_BUCKETS_MAX`] or more buckets after its home
/// (the caller grows `home`).
pub fn layout(items: &[Item<'_>], home: u64, bucket_len: usize) -> Result<Laid, Option<Duplicate>> {
    let room = bucket_len - BUCKET_HEAD_LEN;
    // (home bucket, hash, index), sorted: records in home order, equal hashes adjacent.
    let mut order: Vec<(u32, u64, u32)> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (home_bucket(it.h, home) as u32, it.h, i as u32))
        .collect();
    order.sort_unstable();
    for run in order.chunk_by(|a, b| a.1 == b.1) {
        for (x, a) in run.iter().enumerate() {
            for b in &run[x + 1..] {
                if items[a.2 as usize].key == items[b.2 as usize].key {
                    let (first, second) = (a.2.min(b.2) as usize, a.2.max(b.2) as usize);
                    return Err(Some(Duplicate { first, second }));
                }
            }
        }
    }
    let mut buckets: Vec<u8> = Vec::with_capacity(home as usize * bucket_len);
    let mut heap: Vec<u8> = Vec::new();
    // Waiting records: (home bucket, index), oldest home first.
    let mut waiting: std::collections::VecDeque<(u32, u32)> = std::collections::VecDeque::new();
    let mut next = 0usize;
    let mut b = 0u64;
    while b < home || !waiting.is_empty() {
        while next < order.len() && u64::from(order[next].0) == b {
            waiting.push_back((order[next].0, order[next].2));
            next += 1;
        }
        let base = buckets.len();
        buckets.resize(base + bucket_len, 0);
        let mut at = base + BUCKET_HEAD_LEN;
        let mut free = room;
        let mut count = 0usize;
        let mut w = 0;
        let mut looked = 0;
        while w < waiting.len() && looked < FIT_SCAN_MAX && count < RECORDS_PER_BUCKET_MAX {
            let it = &items[waiting[w].1 as usize];
            let (len, in_heap) = placed_len(it.key.len(), it.value.len(), bucket_len);
            if len > free {
                w += 1;
                looked += 1;
                continue;
            }
            let out = &mut buckets[at..at + len];
            out[0] = it.key.len() as u8;
            out[2..2 + it.key.len()].copy_from_slice(it.key);
            if in_heap {
                out[1] = IN_HEAP;
                let r = &mut out[2 + it.key.len()..];
                r[..5].copy_from_slice(&(heap.len() as u64).to_le_bytes()[..5]);
                r[5..7].copy_from_slice(&(it.value.len() as u16).to_le_bytes());
                heap.extend_from_slice(it.value);
                heap.extend_from_slice(&crc32c::crc32c(it.value).to_le_bytes());
            } else {
                out[1] = it.value.len() as u8;
                out[2 + it.key.len()..].copy_from_slice(it.value);
            }
            at += len;
            free -= len;
            count += 1;
            waiting.remove(w);
        }
        buckets[base + 4] = count as u8;
        if let Some(&(oldest, _)) = waiting.front() {
            // The oldest waiting record would land in bucket b + 1 at the earliest.
            if b + 1 - u64::from(oldest) >= PROBE_BUCKETS_MAX as u64 {
                return Err(None);
            }
            buckets[base + 5] = CONTINUES;
        }
        let crc = crc32c::crc32c(&buckets[base + 4..base + bucket_len]);
        buckets[base..base + 4].copy_from_slice(&crc.to_le_bytes());
        b += 1;
    }
    Ok(Laid {
        buckets,
        count: b,
        heap,
    })
}

/// One record as read from a bucket.
struct Rec<'a> {
    key: &'a [u8],
    /// The value, or (heap offset, length) when it is in the heap.
    value: Result<&'a [u8], (u64, usize)>,
}

impl ShardFile {
    /// The bucket `b`, after checking its CRC.
    #[inline]
    fn packed_bucket(&self, b: u64) -> Result<&[u8], StoreError> {
        let at = self.body + b as usize * self.stride;
        let bucket = &self.bytes[at..at + self.stride];
        if crc_short(&bucket[4..]) != le_u32(bucket, 0) {
            return Err(self.corrupt(at, "bucket checksum mismatch"));
        }
        Ok(bucket)
    }

    /// The record at byte `i` of bucket `b` (already checked), and where the next one starts.
    #[inline]
    fn packed_record<'a>(
        &self,
        bucket: &'a [u8],
        b: u64,
        i: usize,
    ) -> Result<(Rec<'a>, usize), StoreError> {
        let bad = |what| self.corrupt(self.body + b as usize * self.stride + i, what);
        let head = bucket
            .get(i..i + RECORD_HEAD_LEN)
            .ok_or_else(|| bad("record runs past the end of its bucket"))?;
        let (klen, vbyte) = (usize::from(head[0]), head[1]);
        let vlen = if vbyte == IN_HEAP {
            HEAP_REF_LEN
        } else {
            usize::from(vbyte)
        };
        let end = i + RECORD_HEAD_LEN + klen + vlen;
        if klen == 0 {
            return Err(bad("record with an empty key"));
        }
        let rec = bucket
            .get(i + RECORD_HEAD_LEN..end)
            .ok_or_else(|| bad("record runs past the end of its bucket"))?;
        let (key, v) = rec.split_at(klen);
        let value = if vbyte == IN_HEAP {
            let mut off = [0u8; 8];
            off[..5].copy_from_slice(&v[..5]);
            Err((
                u64::from_le_bytes(off),
                usize::from(u16::from_le_bytes([v[5], v[6]])),
            ))
        } else {
            Ok(v)
        };
        Ok((Rec { key, value }, end))
    }

    /// The heap value at (`off`, `len`), after checking its bounds and CRC.
    fn heap_value(&self, off: u64, len: usize) -> Result<&[u8], StoreError> {
        let start = self.heap_at as u64 + off;
        let bad = |what| self.corrupt(start as usize, what);
        let end = start
            .checked_add((len + HEAP_CRC_LEN) as u64)
            .filter(|&e| e <= self.bytes.len() as u64)
            .ok_or_else(|| bad("heap value runs past the end of the file"))?;
        let v = &self.bytes[start as usize..end as usize - HEAP_CRC_LEN];
        if crc32c::crc32c(v) != le_u32(&self.bytes, end as usize - HEAP_CRC_LEN) {
            return Err(bad("heap value checksum mismatch"));
        }
        Ok(v)
    }

    fn value_of<'a>(&'a self, r: &Rec<'a>) -> Result<&'a [u8], StoreError> {
        match r.value {
            Ok(v) => Ok(v),
            Err((off, len)) => self.heap_value(off, len),
        }
    }

    /// Hints the CPU to fetch the lines of `h`'s home bucket.
    #[inline]
    pub(super) fn packed_prefetch(&self, h: u64) {
        let at = self.body + home_bucket(h, self.home) as usize * self.stride;
        for l in 0..(self.stride / BUCKET_LEN_MIN).min(PREFETCH_LINES_MAX) {
            prefetch_read(&self.bytes[at + l * BUCKET_LEN_MIN]);
        }
    }

    /// The value stored under `key` (hash `h`): the records of the home bucket, then of the
    /// next ones while a bucket continues, at most [`PROBE_BUCKETS_MAX`].
    #[inline]
    pub(super) fn packed_get(&self, h: u64, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        let mut b = home_bucket(h, self.home);
        for _ in 0..PROBE_BUCKETS_MAX {
            if b >= self.buckets {
                return Err(self.corrupt(self.body, "a probe ran past the last bucket"));
            }
            let bucket = self.packed_bucket(b)?;
            let mut i = BUCKET_HEAD_LEN;
            for _ in 0..bucket[4] {
                let (r, end) = self.packed_record(bucket, b, i)?;
                if r.key == key {
                    return self.value_of(&r).map(Some);
                }
                i = end;
            }
            if bucket[5] & CONTINUES == 0 {
                return Ok(None);
            }
            b += 1;
        }
        Ok(None)
    }

    /// The batch's second step: the whole probe (its bucket was prefetched in the first).
    #[inline]
    pub(super) fn packed_begin(&self, h: u64, key: &[u8]) -> Result<Probe<'_>, StoreError> {
        Ok(match self.packed_get(h, key)? {
            Some(v) => Probe::Found(v),
            None => Probe::Absent,
        })
    }

    pub(super) fn packed_for_each(
        &self,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<u64, StoreError> {
        let mut seen = 0u64;
        for b in 0..self.buckets {
            let bucket = self.packed_bucket(b)?;
            let mut i = BUCKET_HEAD_LEN;
            for _ in 0..bucket[4] {
                let (r, end) = self.packed_record(bucket, b, i)?;
                f(r.key, self.value_of(&r)?);
                seen += 1;
                i = end;
            }
        }
        Ok(seen)
    }

    /// Every version 2 invariant (`snapshots/README.md`).
    pub(super) fn packed_verify(&self, key: &HashKey) -> Result<u64, StoreError> {
        if self.bytes[super::HEADER_LEN..self.body]
            .iter()
            .any(|&x| x != 0)
        {
            return Err(self.corrupt(super::HEADER_LEN, "header padding not zero"));
        }
        let mut seen = 0u64;
        let mut heap_next = 0u64;
        for b in 0..self.buckets {
            let bucket = self.packed_bucket(b)?;
            let at = self.body + b as usize * self.stride;
            if bucket[5] & !CONTINUES != 0 {
                return Err(self.corrupt(at + 5, "unknown bucket flags"));
            }
            if b + 1 == self.buckets && bucket[5] & CONTINUES != 0 {
                return Err(self.corrupt(at + 5, "the last bucket continues"));
            }
            let mut i = BUCKET_HEAD_LEN;
            for _ in 0..bucket[4] {
                let (r, end) = self.packed_record(bucket, b, i)?;
                let v = self.value_of(&r)?;
                if let Err((off, len)) = r.value {
                    // Heap values lie in record order, back to back.
                    if off != heap_next {
                        return Err(self.corrupt(at + i, "heap reference out of order"));
                    }
                    heap_next = off + (len + HEAP_CRC_LEN) as u64;
                }
                let h = key.hash(r.key);
                if shard_of(h, usize::from(self.header.id.shard_count))
                    != usize::from(self.header.id.shard)
                {
                    return Err(self.corrupt(at + i, "key belongs to another shard"));
                }
                let home = home_bucket(h, self.home);
                if home > b || b - home >= PROBE_BUCKETS_MAX as u64 {
                    return Err(self.corrupt(at + i, "record outside its probe window"));
                }
                // The probe must reach this very record: it proves the continues flags on the
                // way and that no earlier record has the same key.
                match self.packed_get(h, r.key)? {
                    Some(found) if std::ptr::eq(found.as_ptr(), v.as_ptr()) => {}
                    _ => return Err(self.corrupt(at + i, "record unreachable or key duplicated")),
                }
                seen += 1;
                i = end;
            }
            if bucket[i..].iter().any(|&x| x != 0) {
                return Err(self.corrupt(at + i, "bytes after the last record not zero"));
            }
        }
        if heap_next != self.header.heap_len {
            return Err(self.corrupt(self.heap_at, "heap not covered exactly by its references"));
        }
        Ok(seen)
    }
}
