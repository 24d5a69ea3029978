//! The keyed hash that places every record: which shard, which bucket, which tag.
//!
//! Owns one function and its key. The placement of records on disk depends on it, so its
//! output for a given key and input must never change between releases: it is written out here
//! (a folded 64×64→128-bit multiply per 8-byte word, the construction of wyhash and foldhash)
//! rather than borrowed from a crate whose output may change. It is keyed per store so that
//! nobody choosing provisional IDs can aim them at one shard or one probe chain; it is not a
//! MAC and must never be used as one.

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;

/// The per-store hash key, kept in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKey(pub [u64; 2]);

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

impl HashKey {
    /// A fresh key from the operating system's randomness (via std's randomly seeded hasher).
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let s = std::collections::hash_map::RandomState::new();
        let mut a = s.build_hasher();
        a.write_u64(0x006d_796b_6579);
        let mut b = s.build_hasher();
        b.write_u64(0x0073_746f_7265);
        Self([a.finish(), b.finish()])
    }

    /// Hashes `bytes`.
    #[inline]
    pub fn hash(&self, bytes: &[u8]) -> u64 {
        let [k0, k1] = self.0;
        let mut h = k0 ^ (bytes.len() as u64).wrapping_mul(P0);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = fold(h ^ u64::from_le_bytes(w), k1 ^ P1);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = fold(h ^ u64::from_le_bytes(w), k1 ^ P2);
        }
        fold(h ^ k1, P0 ^ k0)
    }
}

/// The shard of a hash among `count` shards (a multiply-shift range reduction of the top half).
#[inline]
pub fn shard_of(h: u64, count: usize) -> usize {
    (((h >> 32) * count as u64) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_output() {
        // Pinned values: if this test fails, every store on disk would be misread.
        let k = HashKey([1, 2]);
        assert_eq!(k.hash(b""), 0xe162_582d_6a38_2c8b);
        assert_eq!(k.hash(b"1C2410DF79DGEL"), 0x8908_e03f_6a88_81bb);
    }

    #[test]
    fn keyed_and_spread() {
        let a = HashKey([1, 2]);
        let b = HashKey([3, 2]);
        assert_ne!(a.hash(b"1C2410DF79DGEL"), b.hash(b"1C2410DF79DGEL"));
        let mut counts = [0usize; 16];
        for i in 0..16_000u32 {
            counts[shard_of(a.hash(format!("{i:014}").as_bytes()), 16)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
