//! Snapshot format version 2, packed buckets (`snapshots/README.md`, "format version 2"):
//! fixed-size buckets of one or a few cache lines holding whole records, found by comparing the
//! keys in the home bucket, so a hit costs one memory round trip and no slot bytes.
//!
//! Owns the version 2 probe, walk and verify of a [`ShardFile`], and the placement of a
//! shard's records into buckets ([`layout`]), in both bucket layouts: key form 0 (records one
//! after the other, each with its lengths) and key form 1 (MyKey IDs: a key array the probe
//! compares at a fixed stride, then the values). Checks the CRC of every bucket a probe reads
//! and of every heap value it returns; never trusts a length or an offset read from a file
//! before checking it against the bucket or the heap; never decides what keys or values mean.

use super::{
    Duplicate, PROBE_BUCKETS_MAX, Probe, ShardFile, crc_short, home_bucket, le_u16, le_u32, le_u64,
    prefetch_read,
};
use crate::store::StoreError;
use crate::store::hash::HashKey;

/// Bucket head of key form 0: CRC u32, record count u8, flags u8.
pub const BUCKET_HEAD_LEN: usize = 6;
/// Bucket head of key form 1: form 0's, then the heap mask u32 (bit `j`: value `j` is in the
/// heap).
pub const ID_BUCKET_HEAD_LEN: usize = 10;
/// Flag bit 0 of a bucket: a key whose home is this bucket or an earlier one is stored later.
pub const CONTINUES: u8 = 1;
/// Flag bits 1–7 of a bucket, its **spill filter**: bit `1 + spill_bit(h)` is set for every key
/// whose home is this bucket and that is stored in a later one. A probe whose key is not in its
/// home bucket goes on only if its bit is set, so most misses read one bucket.
pub const SPILL_FILTER: u8 = 0xFE;
/// Bits of the spill filter.
const SPILL_BITS: u64 = 7;

/// The spill filter bit of hash `h`: from bits 32–39, which neither the home bucket (bits
/// 0–31) nor, for any shard count below 2²⁴, the shard (the top bits) decide.
#[inline]
pub fn spill_bit(h: u64) -> u8 {
    2 << ((h >> 32 & 0xFF) % SPILL_BITS)
}
/// Smallest bucket: one cache line.
pub const BUCKET_LEN_MIN: usize = 64;
/// Largest bucket size.
pub const BUCKET_LEN_MAX: usize = 4096;
/// Largest bucket a writer picks for packing alone (four lines, requested together by a probe),
/// unless a heap reference needs more; also the largest of key form 1, whose value ends are
/// one byte.
const BUCKET_LEN_PICK_MAX: usize = 256;
/// The value length byte of key form 0 that means "in the heap".
pub const IN_HEAP: u8 = 255;
/// A heap reference: offset u40, length u16.
pub const HEAP_REF_LEN: usize = 7;
/// Bytes after a heap value: its CRC-32C.
pub const HEAP_CRC_LEN: usize = 4;
/// Largest heap: offsets have 40 bits.
pub const HEAP_LEN_MAX: u64 = 1 << 40;
/// Most records in one bucket of key form 0 (the count is one byte) and of key form 1 (the
/// heap mask has 32 bits).
const RECORDS_PER_BUCKET_MAX: usize = 255;
const ID_RECORDS_PER_BUCKET_MAX: usize = 32;
/// Records fill at most this share of the home buckets' usable room, in percent: high enough
/// that little is left empty, low enough that few keys land past their home. A table every
/// lookup reads is filled less, so that most probes read one bucket (1.35 buckets a hit at 80 %
/// against 2.07 at 90 %, `ops/CAPACITY.md`).
pub const LOAD_PCT: usize = 90;
/// The load of a table lookups read (`TableSpec::hot`).
pub const LOAD_PCT_HOT: usize = 80;
/// How many waiting records a bucket's fill looks at for one that fits the room it has left.
const FIT_SCAN_MAX: usize = 16;
/// Lines of a bucket a probe requests at once.
const PREFETCH_LINES_MAX: usize = BUCKET_LEN_PICK_MAX / BUCKET_LEN_MIN;
/// Key form 1: a MyKey ID, 14 characters of `0-9A-Z`, stored as a 10-byte base-36 number.
pub const ID_KEY_LEN: usize = 14;
/// Bytes of a key of form 1.
pub const ID_PACKED_LEN: usize = 10;
/// 36 to the 7th: each half of a MyKey ID, as a number, is below it.
const HALF: u64 = 36u64.pow(7);

const _: () = assert!(BUCKET_LEN_MAX.is_multiple_of(BUCKET_LEN_MIN));
const _: () = assert!(BUCKET_HEAD_LEN + 2 + 255 + HEAP_REF_LEN <= 320);
const _: () = assert!(LOAD_PCT_HOT <= LOAD_PCT && LOAD_PCT < 100);
const _: () = assert!(BUCKET_LEN_PICK_MAX <= 256, "form 1 value ends are one byte");
// 36^14 < 2^80: a packed MyKey ID fits its 10 bytes.
const _: () = assert!((HALF as u128) * (HALF as u128) < 1u128 << 80);

/// How a shard stores its keys (header byte 11), which also sets its bucket layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyForm {
    /// Form 0: records one after the other: key length, value length, key, value.
    Bytes,
    /// Form 1: every key is a MyKey ID, stored as 10 bytes in the bucket's key array.
    MyKeyId,
}

impl KeyForm {
    /// The form of header byte `b`, `None` for an unknown one.
    pub fn of_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Bytes),
            1 => Some(Self::MyKeyId),
            _ => None,
        }
    }

    /// Header byte 11.
    pub fn byte(self) -> u8 {
        match self {
            Self::Bytes => 0,
            Self::MyKeyId => 1,
        }
    }

    /// The bucket head's length.
    #[inline]
    pub fn bucket_head(self) -> usize {
        match self {
            Self::Bytes => BUCKET_HEAD_LEN,
            Self::MyKeyId => ID_BUCKET_HEAD_LEN,
        }
    }

    /// Bytes of a bucket of `len` bytes that records can fill: all after the head, and in key
    /// form 1 no further than offset 255, the largest value end a byte holds.
    #[inline]
    pub fn room(self, len: usize) -> usize {
        match self {
            Self::Bytes => len - BUCKET_HEAD_LEN,
            Self::MyKeyId => len.min(usize::from(u8::MAX)) - ID_BUCKET_HEAD_LEN,
        }
    }

    /// Bytes a record takes besides its value: its lengths (or its value end) and its key.
    #[inline]
    fn record_head(self, key_len: usize) -> usize {
        match self {
            Self::Bytes => 2 + key_len,
            Self::MyKeyId => ID_PACKED_LEN + 1,
        }
    }

    fn records_max(self) -> usize {
        match self {
            Self::Bytes => RECORDS_PER_BUCKET_MAX,
            Self::MyKeyId => ID_RECORDS_PER_BUCKET_MAX,
        }
    }

    /// The form that fits every key of `keys`: MyKey IDs when there are keys and all are,
    /// else bytes.
    pub fn for_keys<'k>(keys: impl Iterator<Item = &'k [u8]>) -> Self {
        let mut any = false;
        for k in keys {
            if pack_id(k).is_none() {
                return Self::Bytes;
            }
            any = true;
        }
        if any { Self::MyKeyId } else { Self::Bytes }
    }
}

/// The base-36 digit of each byte, or [`NOT_DIGIT`].
static DIGIT_OF: [u8; 256] = digit_of();
const NOT_DIGIT: u8 = 0x80;

const fn digit_of() -> [u8; 256] {
    let mut t = [NOT_DIGIT; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_digit() {
            t[c] = b - b'0';
        } else if b.is_ascii_uppercase() {
            t[c] = b - b'A' + 10;
        }
        c += 1;
    }
    t
}

/// A MyKey ID as its 10-byte base-36 number, little-endian; `None` if `key` is not 14
/// characters of `0-9A-Z`. Two halves of seven digits keep the arithmetic in 64 bits; one
/// table read a character, checked once at the end (the lookup path packs every key it probes).
#[inline]
pub fn pack_id(key: &[u8]) -> Option<[u8; ID_PACKED_LEN]> {
    let key: &[u8; ID_KEY_LEN] = key.try_into().ok()?;
    let (mut hi, mut lo, mut bad) = (0u64, 0u64, 0u8);
    for i in 0..7 {
        let (a, b) = (
            DIGIT_OF[usize::from(key[i])],
            DIGIT_OF[usize::from(key[i + 7])],
        );
        bad |= a | b;
        hi = hi * 36 + u64::from(a);
        lo = lo * 36 + u64::from(b);
    }
    if bad & NOT_DIGIT != 0 {
        return None;
    }
    let v = u128::from(hi) * u128::from(HALF) + u128::from(lo);
    let mut out = [0u8; ID_PACKED_LEN];
    out.copy_from_slice(&v.to_le_bytes()[..ID_PACKED_LEN]);
    Some(out)
}

/// The MyKey ID of a packed key; `None` when the number is 36^14 or more (not a packing).
pub fn unpack_id(p: &[u8]) -> Option<[u8; ID_KEY_LEN]> {
    let mut w = [0u8; 16];
    w[..ID_PACKED_LEN].copy_from_slice(p.get(..ID_PACKED_LEN)?);
    let v = u128::from_le_bytes(w);
    let (hi, lo) = (v / u128::from(HALF), (v % u128::from(HALF)) as u64);
    if hi >= u128::from(HALF) {
        return None;
    }
    let mut out = [0u8; ID_KEY_LEN];
    for (i, mut x) in [(0, hi as u64), (7, lo)] {
        for c in out[i..i + 7].iter_mut().rev() {
            let d = (x % 36) as u8;
            *c = if d < 10 { b'0' + d } else { b'A' + d - 10 };
            x /= 36;
        }
    }
    Some(out)
}

/// The size a record takes in a bucket of `bucket_len` bytes, and whether its value goes to
/// the heap (a value of 255 bytes or more, or a record larger than a bucket's room).
pub fn placed_len(form: KeyForm, key: usize, value: usize, bucket_len: usize) -> (usize, bool) {
    let inline = form.record_head(key) + value;
    if value < usize::from(IN_HEAP) && inline <= form.room(bucket_len) {
        (inline, false)
    } else {
        (form.record_head(key) + HEAP_REF_LEN, true)
    }
}

/// Share of a bucket of `len` bytes that records of `mean` bytes can fill, in thousandths.
fn packing(form: KeyForm, len: usize, mean: usize) -> usize {
    let fit = form.room(len) / mean.max(1);
    fit * mean * 1000 / len
}

/// The bucket size for records of `mean` bytes whose largest key takes `key_max` bytes: the one
/// of up to [`BUCKET_LEN_PICK_MAX`] bytes whose whole records leave least room unused (the
/// smaller on a tie), never smaller than a heap reference of any key or a record of the mean
/// size. `None` for key form 1 when that is over [`BUCKET_LEN_PICK_MAX`].
pub fn bucket_len_for(form: KeyForm, mean: usize, key_max: usize) -> Option<usize> {
    let head = form.bucket_head();
    let least = (head + form.record_head(key_max) + HEAP_REF_LEN)
        .max(head + mean)
        .next_multiple_of(BUCKET_LEN_MIN)
        .clamp(BUCKET_LEN_MIN, BUCKET_LEN_MAX);
    if form == KeyForm::MyKeyId && least > BUCKET_LEN_PICK_MAX {
        return None;
    }
    let mut best = least;
    let mut len = least;
    while len <= BUCKET_LEN_PICK_MAX {
        if packing(form, len, mean) > packing(form, best, mean) {
            best = len;
        }
        len += BUCKET_LEN_MIN;
    }
    Some(best)
}

/// The home bucket count for records of `total` placed bytes, `mean` bytes on average, in
/// buckets of `bucket_len`: sized by the whole records a bucket holds, at `load_pct`.
pub fn home_buckets_for(
    form: KeyForm,
    total: usize,
    mean: usize,
    bucket_len: usize,
    load_pct: usize,
) -> u64 {
    let usable = packing(form, bucket_len, mean) * bucket_len / 1000;
    let room = (usable.max(mean) * load_pct / 100).max(1);
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

/// Appends `value` to the heap and returns its 7-byte reference.
fn to_heap(heap: &mut Vec<u8>, value: &[u8]) -> [u8; HEAP_REF_LEN] {
    let mut r = [0u8; HEAP_REF_LEN];
    r[..5].copy_from_slice(&(heap.len() as u64).to_le_bytes()[..5]);
    r[5..7].copy_from_slice(&(value.len() as u16).to_le_bytes());
    heap.extend_from_slice(value);
    heap.extend_from_slice(&crc32c::crc32c(value).to_le_bytes());
    r
}

/// Writes the records `chosen` (indexes into `items`) into the zeroed bucket `out`, in the
/// layout of `form`, and their heap values into `heap`.
fn write_bucket(
    out: &mut [u8],
    form: KeyForm,
    items: &[Item<'_>],
    chosen: &[u32],
    heap: &mut Vec<u8>,
) {
    let len = out.len();
    out[4] = chosen.len() as u8;
    match form {
        KeyForm::Bytes => {
            let mut at = BUCKET_HEAD_LEN;
            for &c in chosen {
                let it = &items[c as usize];
                let (size, in_heap) = placed_len(form, it.key.len(), it.value.len(), len);
                let rec = &mut out[at..at + size];
                rec[0] = it.key.len() as u8;
                rec[2..2 + it.key.len()].copy_from_slice(it.key);
                let (lens, v) = rec.split_at_mut(2 + it.key.len());
                if in_heap {
                    lens[1] = IN_HEAP;
                    v.copy_from_slice(&to_heap(heap, it.value));
                } else {
                    lens[1] = it.value.len() as u8;
                    v.copy_from_slice(it.value);
                }
                at += size;
            }
        }
        KeyForm::MyKeyId => {
            let n = chosen.len();
            let ends = ID_BUCKET_HEAD_LEN + ID_PACKED_LEN * n;
            let mut at = ends + n;
            let mut mask = 0u32;
            for (j, &c) in chosen.iter().enumerate() {
                let it = &items[c as usize];
                let k = ID_BUCKET_HEAD_LEN + ID_PACKED_LEN * j;
                // `for_keys` chose this form because every key packs.
                out[k..k + ID_PACKED_LEN].copy_from_slice(&pack_id(it.key).unwrap_or_default());
                let (_, in_heap) = placed_len(form, it.key.len(), it.value.len(), len);
                if in_heap {
                    mask |= 1 << j;
                    out[at..at + HEAP_REF_LEN].copy_from_slice(&to_heap(heap, it.value));
                    at += HEAP_REF_LEN;
                } else {
                    out[at..at + it.value.len()].copy_from_slice(it.value);
                    at += it.value.len();
                }
                // `layout` keeps every end of key form 1 below 256, so it fits a byte.
                out[ends + j] = at as u8;
            }
            out[6..10].copy_from_slice(&mask.to_le_bytes());
        }
    }
}

/// Places `items` into `home` home buckets of `bucket_len` bytes, keys in `form`
/// (`snapshots/README.md`, "How a writer places records"). `Err(Some(dup))` on a duplicate key
/// (indexes into `items`), `Err(None)` when some record would land [`PROBE_BUCKETS_MAX`] or
/// more buckets after its home (the caller grows `home`).
pub fn layout(
    items: &[Item<'_>],
    form: KeyForm,
    home: u64,
    bucket_len: usize,
) -> Result<Laid, Option<Duplicate>> {
    let room = form.room(bucket_len);
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
    let mut chosen: Vec<u32> = Vec::new();
    let mut next = 0usize;
    let mut b = 0u64;
    while b < home || !waiting.is_empty() {
        while next < order.len() && u64::from(order[next].0) == b {
            waiting.push_back((order[next].0, order[next].2));
            next += 1;
        }
        chosen.clear();
        let mut free = room;
        let mut w = 0;
        let mut looked = 0;
        while w < waiting.len() && looked < FIT_SCAN_MAX && chosen.len() < form.records_max() {
            let it = &items[waiting[w].1 as usize];
            let (len, _) = placed_len(form, it.key.len(), it.value.len(), bucket_len);
            if len > free {
                w += 1;
                looked += 1;
                continue;
            }
            free -= len;
            chosen.push(waiting[w].1);
            waiting.remove(w);
        }
        let base = buckets.len();
        buckets.resize(base + bucket_len, 0);
        write_bucket(
            &mut buckets[base..base + bucket_len],
            form,
            items,
            &chosen,
            &mut heap,
        );
        if let Some(&(oldest, _)) = waiting.front() {
            // The oldest waiting record would land in bucket b + 1 at the earliest.
            if b + 1 - u64::from(oldest) >= PROBE_BUCKETS_MAX as u64 {
                return Err(None);
            }
            let spilled = waiting
                .iter()
                .rev()
                .take_while(|&&(home, _)| u64::from(home) == b)
                .fold(0, |f, &(_, i)| f | spill_bit(items[i as usize].h));
            buckets[base + 5] = CONTINUES | spilled;
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

/// A value as stored in a bucket: its bytes, or a heap reference (offset, length).
type Stored<'a> = Result<&'a [u8], (u64, usize)>;

/// The heap reference in `r` (7 bytes).
fn heap_ref(r: &[u8]) -> (u64, usize) {
    let mut off = [0u8; 8];
    off[..5].copy_from_slice(&r[..5]);
    (u64::from_le_bytes(off), usize::from(le_u16(r, 5)))
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

    #[cold]
    fn bucket_bad(&self, b: u64, i: usize, what: &'static str) -> StoreError {
        self.corrupt(self.body + b as usize * self.stride + i, what)
    }

    /// Calls `f(offset, stored key, stored value)` for each record of the checked bucket `b`,
    /// in order, until it answers `Some`. Checks every length and offset against the bucket.
    #[inline(always)]
    fn records<'a, R>(
        &self,
        bucket: &'a [u8],
        b: u64,
        mut f: impl FnMut(usize, &'a [u8], Stored<'a>) -> Result<Option<R>, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        let len = bucket.len();
        let n = usize::from(bucket[4]);
        match self.key_form {
            KeyForm::Bytes => {
                let mut i = BUCKET_HEAD_LEN;
                for _ in 0..n {
                    if i + 2 > len {
                        return Err(self.bucket_bad(b, i, "record runs past its bucket"));
                    }
                    let (klen, vbyte) = (usize::from(bucket[i]), bucket[i + 1]);
                    let key_at = i + 2;
                    let val_at = key_at + klen;
                    let vlen = if vbyte == IN_HEAP {
                        HEAP_REF_LEN
                    } else {
                        usize::from(vbyte)
                    };
                    let end = val_at + vlen;
                    if end > len {
                        return Err(self.bucket_bad(b, i, "record runs past its bucket"));
                    }
                    let v = &bucket[val_at..end];
                    let stored = if vbyte == IN_HEAP {
                        Err(heap_ref(v))
                    } else {
                        Ok(v)
                    };
                    if let Some(r) = f(i, &bucket[key_at..val_at], stored)? {
                        return Ok(Some(r));
                    }
                    i = end;
                }
            }
            KeyForm::MyKeyId => {
                let ends = self.id_ends(bucket, b)?;
                let mut start = ends + n;
                for j in 0..n {
                    let (stored, end) = self.id_value(bucket, b, ends, j, start)?;
                    let k = ID_BUCKET_HEAD_LEN + ID_PACKED_LEN * j;
                    if let Some(r) = f(k, &bucket[k..k + ID_PACKED_LEN], stored)? {
                        return Ok(Some(r));
                    }
                    start = end;
                }
            }
        }
        Ok(None)
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

    #[inline]
    fn value_of<'a>(&'a self, v: Stored<'a>) -> Result<&'a [u8], StoreError> {
        match v {
            Ok(v) => Ok(v),
            Err((off, len)) => self.heap_value(off, len),
        }
    }

    /// The key as the store's callers know it (unpacked), passed to `f`.
    fn with_key<R>(
        &self,
        stored: &[u8],
        at: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, StoreError> {
        match self.key_form {
            KeyForm::Bytes => Ok(f(stored)),
            KeyForm::MyKeyId => {
                let k = unpack_id(stored)
                    .ok_or_else(|| self.corrupt(at, "packed MyKey ID out of range"))?;
                Ok(f(&k))
            }
        }
    }

    /// Hints the CPU to fetch the lines of `h`'s home bucket and of the bucket after it, where
    /// about three hits in ten of a store built at [`LOAD_PCT_HOT`] end: fetched only once the
    /// home bucket is read, that bucket was a second memory round trip (a hit there took ~1.5×
    /// as long as one in its home bucket, `ops/CAPACITY.md`).
    #[inline]
    pub(super) fn packed_prefetch(&self, h: u64) {
        let home = home_bucket(h, self.home);
        let count = if home + 1 < self.buckets { 2 } else { 1 };
        let at = self.body + home as usize * self.stride;
        let lines = (self.stride / BUCKET_LEN_MIN).min(PREFETCH_LINES_MAX);
        for b in 0..count {
            for l in 0..lines {
                prefetch_read(&self.bytes[at + b * self.stride + l * BUCKET_LEN_MIN]);
            }
        }
    }

    /// The value stored under `key` (hash `h`): the records of the home bucket, then of the
    /// next ones while a bucket continues, at most [`PROBE_BUCKETS_MAX`].
    #[inline]
    pub(super) fn packed_get(&self, h: u64, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        self.packed_prefetch(h);
        self.packed_lookup(h, key)
    }

    /// [`ShardFile::packed_get`] without its prefetch (a batch has issued it already).
    #[inline]
    fn packed_lookup(&self, h: u64, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        match self.key_form {
            KeyForm::Bytes => self.packed_probe(h, |bucket, b| {
                self.records(bucket, b, |_, k, v| Ok((k == key).then_some(v)))
            }),
            KeyForm::MyKeyId => match pack_id(key) {
                Some(p) => {
                    let (w, t) = (le_u64(&p, 0), le_u16(&p, 8));
                    self.packed_probe(h, |bucket, b| self.find_id(bucket, b, w, t))
                }
                // Every key of this shard is a MyKey ID.
                None => Ok(None),
            },
        }
    }

    /// The value of the packed MyKey ID (`w`, `t`: its first 8 bytes and last 2) in the
    /// checked bucket `b` of key form 1, if it holds it. The keys are compared first, at
    /// their fixed stride, one word and a half each; then only the found record's value ends
    /// are read and checked against the bucket (`verify` checks every record's).
    #[inline(always)]
    fn find_id<'a>(
        &self,
        bucket: &'a [u8],
        b: u64,
        w: u64,
        t: u16,
    ) -> Result<Option<Stored<'a>>, StoreError> {
        let n = usize::from(bucket[4]);
        let ends = self.id_ends(bucket, b)?;
        let keys = &bucket[ID_BUCKET_HEAD_LEN..ends];
        let Some(j) = keys
            .chunks_exact(ID_PACKED_LEN)
            .position(|k| le_u64(k, 0) == w && le_u16(k, 8) == t)
        else {
            return Ok(None);
        };
        let start = match j {
            0 => ends + n,
            _ => usize::from(bucket[ends + j - 1]),
        };
        self.id_value(bucket, b, ends, j, start)
            .map(|(stored, _)| Some(stored))
    }

    /// Key form 1: where the value ends of checked bucket `b` start, once its record count is
    /// checked against the bucket (the keys, then one end byte a record, must fit).
    #[inline(always)]
    fn id_ends(&self, bucket: &[u8], b: u64) -> Result<usize, StoreError> {
        let n = usize::from(bucket[4]);
        let ends = ID_BUCKET_HEAD_LEN + ID_PACKED_LEN * n;
        if n > ID_RECORDS_PER_BUCKET_MAX || ends + n > bucket.len() {
            return Err(self.bucket_bad(b, 4, "record count past its bucket"));
        }
        Ok(ends)
    }

    /// Key form 1: value `j` of checked bucket `b` (its ends at `ends`), which starts at
    /// `start`, and where it ends; its end is checked against `start`, the bucket and its heap
    /// bit.
    #[inline(always)]
    fn id_value<'a>(
        &self,
        bucket: &'a [u8],
        b: u64,
        ends: usize,
        j: usize,
        start: usize,
    ) -> Result<(Stored<'a>, usize), StoreError> {
        let end = usize::from(bucket[ends + j]);
        let heap = le_u32(bucket, 6) >> j & 1 != 0;
        if end < start || end > bucket.len() || heap && end - start != HEAP_REF_LEN {
            return Err(self.bucket_bad(b, ends + j, "value end out of order"));
        }
        let v = &bucket[start..end];
        Ok((if heap { Err(heap_ref(v)) } else { Ok(v) }, end))
    }

    /// The probe of [`ShardFile::packed_get`], with `find` giving the stored value of the key
    /// looked up in a checked bucket, if it holds it.
    #[inline(always)]
    fn packed_probe<'a>(
        &'a self,
        h: u64,
        find: impl Fn(&'a [u8], u64) -> Result<Option<Stored<'a>>, StoreError>,
    ) -> Result<Option<&'a [u8]>, StoreError> {
        let home = home_bucket(h, self.home);
        for b in home..home + PROBE_BUCKETS_MAX as u64 {
            if b >= self.buckets {
                return Err(self.corrupt(self.body, "a probe ran past the last bucket"));
            }
            let bucket = self.packed_bucket(b)?;
            if let Some(v) = find(bucket, b)? {
                return self.value_of(v).map(Some);
            }
            // Past the home bucket only while some key goes on, and past the home bucket
            // itself only if a key of this home that looks like ours spilled.
            if bucket[5] & CONTINUES == 0 || b == home && bucket[5] & spill_bit(h) == 0 {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The batch's second step: the whole probe (its bucket was prefetched in the first).
    #[inline]
    pub(super) fn packed_begin(&self, h: u64, key: &[u8]) -> Result<Probe<'_>, StoreError> {
        Ok(match self.packed_lookup(h, key)? {
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
            let at = self.body + b as usize * self.stride;
            self.records(bucket, b, |i, k, v| {
                let v = self.value_of(v)?;
                self.with_key(k, at + i, |k| f(k, v))?;
                seen += 1;
                Ok(None::<()>)
            })?;
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
        // The spill filter each bucket must have, from where its keys were found.
        let mut filters = vec![0u8; self.buckets as usize];
        for b in 0..self.buckets {
            let bucket = self.packed_bucket(b)?;
            let at = self.body + b as usize * self.stride;
            if bucket[5] & SPILL_FILTER != 0 && bucket[5] & CONTINUES == 0 {
                return Err(
                    self.corrupt(at + 5, "a spill filter on a bucket that does not continue")
                );
            }
            if b + 1 == self.buckets && bucket[5] & CONTINUES != 0 {
                return Err(self.corrupt(at + 5, "the last bucket continues"));
            }
            let n = usize::from(bucket[4]);
            // Where the last record ends: the bytes after it must be zero.
            let mut used = BUCKET_HEAD_LEN;
            if self.key_form == KeyForm::MyKeyId {
                let mask = le_u32(bucket, 6);
                if n < 32 && mask >> n != 0 {
                    return Err(self.corrupt(at + 6, "heap mask names no record"));
                }
                let ends = ID_BUCKET_HEAD_LEN + ID_PACKED_LEN * n;
                used = match n {
                    0 => ID_BUCKET_HEAD_LEN,
                    _ => bucket
                        .get(ends + n - 1)
                        .map_or(bucket.len(), |&e| usize::from(e)),
                };
            }
            self.records(bucket, b, |i, k, stored| {
                let v = self.value_of(stored)?;
                match stored {
                    // Heap values lie in record order, back to back.
                    Err((off, _)) if off != heap_next => {
                        return Err(self.corrupt(at + i, "heap reference out of order"));
                    }
                    Err((off, len)) => heap_next = off + (len + HEAP_CRC_LEN) as u64,
                    Ok(v) if v.len() >= usize::from(IN_HEAP) => {
                        return Err(self.corrupt(at + i, "inline value of 255 bytes or more"));
                    }
                    Ok(_) => {}
                }
                if self.key_form == KeyForm::Bytes {
                    let stored_len = stored.map_or(HEAP_REF_LEN, <[u8]>::len);
                    used = i + 2 + k.len() + stored_len;
                }
                let reached = self.with_key(k, at + i, |k| -> Result<bool, StoreError> {
                    let h = key.hash(k);
                    self.check_shard(h, at + i)?;
                    let home = home_bucket(h, self.home);
                    if home > b || b - home >= PROBE_BUCKETS_MAX as u64 {
                        return Err(self.corrupt(at + i, "record outside its probe window"));
                    }
                    if home < b {
                        filters[home as usize] |= spill_bit(h);
                    }
                    // The probe must reach this very record: it proves the continues flags on
                    // the way and that no earlier record has the same key.
                    Ok(matches!(self.packed_get(h, k)?,
                        Some(found) if std::ptr::eq(found.as_ptr(), v.as_ptr())))
                })??;
                if !reached {
                    return Err(self.corrupt(at + i, "record unreachable or key duplicated"));
                }
                seen += 1;
                Ok(None::<()>)
            })?;
            if bucket[used.min(bucket.len())..].iter().any(|&x| x != 0) {
                return Err(self.corrupt(at + used, "bytes after the last record not zero"));
            }
        }
        for (b, want) in filters.iter().enumerate() {
            let flags = self.bytes[self.body + b * self.stride + 5];
            if flags & SPILL_FILTER != *want {
                return Err(self.corrupt(
                    self.body + b * self.stride + 5,
                    "spill filter differs from the keys spilled",
                ));
            }
        }
        if heap_next != self.header.heap_len {
            return Err(self.corrupt(self.heap_at, "heap not covered exactly by its references"));
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mykey_ids_pack_into_ten_bytes_and_back() {
        for id in [
            &b"00000000000000"[..],
            b"ZZZZZZZZZZZZZZ",
            b"1C2410DF79DGEL",
            b"0000000ZZZZZZZ",
        ] {
            let p = pack_id(id).expect("an ID");
            assert_eq!(&unpack_id(&p).expect("in range")[..], id);
        }
        assert_eq!(pack_id(b"1c2410DF79DGEL"), None, "lower case is not an ID");
        assert_eq!(pack_id(b"1C2410DF79DGE"), None, "13 characters");
        assert_eq!(pack_id(b"1C2410DF79DGE-"), None);
        assert_eq!(unpack_id(&[0xFF; 10]), None, "2^80 - 1 is past 36^14");
        let order: Vec<_> = [&b"00000000000001"[..], b"00000000000010"]
            .iter()
            .map(|k| pack_id(k))
            .collect();
        assert_ne!(order[0], order[1]);
    }
}
