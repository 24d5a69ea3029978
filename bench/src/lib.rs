//! Benchmark support: a deterministic synthetic population, the baselines the engine is
//! measured against (std `HashMap`, a flat open-addressing array). Used by the criterion benches and by `gen-population` for the scale runs.
//!
//! Nothing here is used by the engine itself; it must never be needed to run `mykeyd`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use mykey_engine::id::{MyKeyId, ProviderId, ServiceId};

use mykey_engine::store::hash::HashKey;

/// Providers in the synthetic population: about the ~13,000 shopping streets plus libraries
/// and facilities of the seed document.
pub const PROVIDERS: u64 = 16_000;

/// A scattering of `i` (splitmix64), so that consecutive rows get unrelated IDs.
pub fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The MyKey ID of row `i` (present in the population), or of miss `i` (absent: its first
/// character is never used by rows).
pub fn id_bytes(i: u64, miss: bool) -> [u8; 14] {
    const A: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut b = [b'0'; 14];
    let (mut x, mut y) = (mix(i), mix(i ^ 0xABCD_EF01));
    for (k, c) in b.iter_mut().enumerate().skip(1) {
        let v = if k < 8 { &mut x } else { &mut y };
        *c = A[(*v % 36) as usize];
        *v /= 36;
    }
    // Rows start with A–Y; misses with Z.
    b[0] = if miss {
        b'Z'
    } else {
        A[10 + (i % 25) as usize]
    };
    b
}

/// The MyKey ID of row `i`.
pub fn id(i: u64, miss: bool) -> MyKeyId {
    // id_bytes only emits A–Z0–9, 14 of them.
    MyKeyId::parse(&id_bytes(i, miss)).unwrap_or_else(|e| panic!("generator bug: {e}"))
}

/// Number of links of row `i`: 2 or 3, 2.5 on average.
pub fn link_count(i: u64) -> u64 {
    2 + (i & 1)
}

/// Provider of link `k` of row `i`: skewed towards low numbers (a few big streets, a long
/// tail), distinct within a row.
pub fn provider_of(i: u64, k: u64) -> u64 {
    let r = mix(i.wrapping_mul(3).wrapping_add(k));
    // Squaring a uniform value skews it towards 0.
    let u = (r >> 11) as f64 / (1u64 << 53) as f64;
    let base = ((u * u) * (PROVIDERS / 3) as f64) as u64;
    base * 3 + k
}

/// The provider ID numbered `p`.
pub fn provider_name(p: u64) -> String {
    format!("P-{:02}-{p:06}", p % 47 + 1)
}

/// Parsed provider ID numbered `p`.
pub fn provider(p: u64) -> ProviderId {
    ProviderId::parse(provider_name(p).as_bytes()).unwrap_or_else(|e| panic!("generator bug: {e}"))
}

/// Service ID of link `k` of row `i`: a 10-digit card number.
pub fn service_text(i: u64, k: u64) -> String {
    format!("{:010}", mix(i ^ (k << 56)) % 10_000_000_000)
}

/// Parsed service ID of link `k` of row `i`.
pub fn service(i: u64, k: u64) -> ServiceId {
    ServiceId::parse(service_text(i, k).as_bytes()).unwrap_or_else(|e| panic!("generator bug: {e}"))
}

/// The provider list of the synthetic population.
pub fn providers_file() -> String {
    (0..PROVIDERS).map(|p| provider_name(p) + "\n").collect()
}

/// Streams the population file of `rows` rows (header first), generated on the fly.
pub struct PopulationReader {
    next: u64,
    rows: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl PopulationReader {
    /// A reader of `rows` rows.
    pub fn new(rows: u64) -> Self {
        Self {
            next: 0,
            rows,
            buf: b"mykey_id,state,cert,links\n".to_vec(),
            pos: 0,
        }
    }

    fn fill(&mut self) {
        use std::fmt::Write;
        self.buf.clear();
        self.pos = 0;
        let mut s = String::with_capacity(64 * 1024);
        while self.next < self.rows && s.len() < 60 * 1024 {
            let i = self.next;
            self.next += 1;
            let idb = id_bytes(i, false);
            let id = std::str::from_utf8(&idb).unwrap_or("");
            // Two CA generations; serials of 8 bytes, as real JPKI serials run.
            let ca = if i.is_multiple_of(3) { "A1" } else { "B2" };
            let _ = write!(
                s,
                "{id},active,{}:{:016X},",
                ca.repeat(20),
                mix(i) | 1 << 60
            );
            for k in 0..link_count(i) {
                if k > 0 {
                    s.push(';');
                }
                let _ = write!(
                    s,
                    "{}={}",
                    provider_name(provider_of(i, k)),
                    service_text(i, k)
                );
            }
            s.push('\n');
        }
        self.buf = s.into_bytes();
    }
}

impl Read for PopulationReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.next >= self.rows {
                return Ok(0);
            }
            self.fill();
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Baseline: a flat open-addressing array of 16-byte slots (14-byte key + 2-byte value),
/// linear probing at load ≤ 0.5, hashed with the engine's keyed hash. The fastest plain
/// in-memory table of the same keys: one cache miss per probe. Its memory is asked for huge
/// pages, as the engine's mapped snapshots are (`store::fs::HUGE_PAGE_LEN`), so that the two
/// pay the same TLB cost for a random probe.
pub struct FlatTable {
    slots: memmap2::MmapMut,
    mask: usize,
    key: HashKey,
}

/// Bytes of a [`FlatTable`] slot.
const FLAT_SLOT: usize = 16;

impl FlatTable {
    /// A table of `rows` rows, each valued by its first link's provider (low 16 bits).
    pub fn build(rows: u64) -> Self {
        let cap = (rows as usize * 2).next_power_of_two();
        let slots = memmap2::MmapMut::map_anon(cap * FLAT_SLOT)
            .unwrap_or_else(|e| panic!("map {} bytes for the flat array: {e}", cap * FLAT_SLOT));
        // Before the first touch, so that the faults allocate huge pages. Only a hint.
        #[cfg(target_os = "linux")]
        let _ = slots.advise(memmap2::Advice::HugePage);
        let mut t = Self {
            slots,
            mask: cap - 1,
            key: HashKey([7, 11]),
        };
        for i in 0..rows {
            let k = id_bytes(i, false);
            let mut s = t.key.hash(&k) as usize & t.mask;
            while t.slot(s)[0] != 0 {
                s = (s + 1) & t.mask;
            }
            let slot = &mut t.slots[s * FLAT_SLOT..(s + 1) * FLAT_SLOT];
            slot[..14].copy_from_slice(&k);
            slot[14..].copy_from_slice(&(provider_of(i, 0) as u16).to_le_bytes());
        }
        t
    }

    #[inline]
    fn slot(&self, s: usize) -> &[u8] {
        &self.slots[s * FLAT_SLOT..(s + 1) * FLAT_SLOT]
    }

    /// Hash of a key, for [`FlatTable::get_hashed`].
    #[inline]
    pub fn hash(&self, k: &[u8; 14]) -> u64 {
        self.key.hash(k)
    }

    /// Hints the CPU to fetch the home slot of `h`.
    #[inline]
    pub fn prefetch(&self, h: u64) {
        // A load whose value is unused: the CPU issues it and moves on, as a prefetch would.
        std::hint::black_box(self.slot(h as usize & self.mask)[0]);
    }

    /// The value of `k`.
    #[inline]
    pub fn get_hashed(&self, h: u64, k: &[u8; 14]) -> Option<u16> {
        let mut s = h as usize & self.mask;
        loop {
            let slot = self.slot(s);
            if slot[0] == 0 {
                return None;
            }
            if slot[..14] == k[..] {
                return Some(u16::from_le_bytes([slot[14], slot[15]]));
            }
            s = (s + 1) & self.mask;
        }
    }

    /// As [`FlatTable::get_hashed`], with a snapshot probe's memory pattern around it: the
    /// `span` bytes (a multiple of 64) around the slot and the `span` after them are requested
    /// first, as a probe requests its home bucket and the next, and the answer waits for the
    /// CRC-32C of the `checked` bytes (a multiple of 64 dividing `span`) around the slot
    /// (`store::snapshot::crc_short`, as a probe checks its bucket). So `checked == span`
    /// is what a hit costs at best in a snapshot of `span`-byte buckets, each under one CRC,
    /// and a smaller `checked` what it would cost if only the lines it reads were checked.
    /// The table stores no CRC; the value is tied to the computed one so that it cannot be
    /// skipped.
    #[inline]
    pub fn get_span_checked(
        &self,
        h: u64,
        k: &[u8; 14],
        span: usize,
        checked: usize,
    ) -> Option<u16> {
        let mut s = h as usize & self.mask;
        let at = (s * FLAT_SLOT / span * span).min(self.slots.len() - 2 * span);
        for l in (at..at + 2 * span).step_by(LINE) {
            std::hint::black_box(self.slots[l]);
        }
        loop {
            let slot = self.slot(s);
            if slot[0] == 0 {
                return None;
            }
            if slot[..14] == k[..] {
                let at = s * FLAT_SLOT / checked * checked;
                let crc = mykey_engine::store::snapshot::crc_short(&self.slots[at..at + checked]);
                let v = u16::from_le_bytes([slot[14], slot[15]]);
                return Some(v ^ u16::from(crc == CRC_NEVER));
            }
            s = (s + 1) & self.mask;
        }
    }
}

/// A cache line.
const LINE: usize = 64;

/// A CRC [`FlatTable::get_span_checked`] compares against: any constant will do.
const CRC_NEVER: u32 = 0x5EED_C0DE;

/// Baseline: std `HashMap` (SipHash) of the same keys.
pub fn std_map(rows: u64) -> HashMap<[u8; 14], u16> {
    (0..rows)
        .map(|i| (id_bytes(i, false), provider_of(i, 0) as u16))
        .collect()
}

/// A store directory under the system temp dir for benchmarks, removed on drop.
pub struct BenchDir(PathBuf);

impl BenchDir {
    /// A fresh directory named after `tag`.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("mykey-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        Self(p)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_rows_parse_and_misses_are_absent() {
        let mut text = String::new();
        PopulationReader::new(2000)
            .read_to_string(&mut text)
            .expect("read");
        let mut ids = std::collections::HashSet::new();
        for line in text.lines().skip(1) {
            let row = mykey_engine::population::parse_row(line).expect("row parses");
            assert!(ids.insert(row.id), "duplicate id");
        }
        assert_eq!(ids.len(), 2000);
        assert!((0..2000).all(|i| !ids.contains(&id(i, true))));
        let flat = FlatTable::build(2000);
        let k = id_bytes(5, false);
        assert_eq!(
            flat.get_hashed(flat.hash(&k), &k),
            Some(provider_of(5, 0) as u16)
        );
        let m = id_bytes(5, true);
        assert_eq!(flat.get_hashed(flat.hash(&m), &m), None);
    }
}
