//! The `MANIFEST`: which snapshot files are live and which `seq` they include.
//!
//! Owns the manifest format of `snapshots/README.md` and its atomic install (temp file, fsync,
//! rename, directory fsync). It never opens the files it names; the store does.

use std::path::PathBuf;

use super::StoreError;
use super::fs::Fs;
use super::hash::HashKey;

/// File name of the manifest.
pub const NAME: &str = "MANIFEST";
/// Magic of the manifest.
pub const MAGIC: [u8; 8] = *b"MYKEYMAN";
/// Format version this build writes. Version 2 added the flags word (bytes 40..44); version 1
/// manifests still open, with no flag set.
pub const VERSION: u16 = 2;
/// Flag: the log is required. Some segment holds change `seq + 1` onward (or the log is empty
/// since `seq`); a store whose log segments went missing refuses to open instead of silently
/// starting a new log. Unset in a freshly built store, which has no log yet.
pub const FLAG_LOG_REQUIRED: u32 = 1;
/// Most shards a table may have. 4096 shards of a 100M-ID table hold ~25K IDs each; more
/// would only multiply open files.
pub const SHARDS_MAX: u16 = 4096;
const FIXED_LEN: usize = 48;
const _: () = assert!(FIXED_LEN == 8 + 2 + 2 + 4 + 8 + 16 + 4 + 4);

/// One shard file as the manifest pins it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardEntry {
    /// File length in bytes.
    pub len: u64,
    /// CRC of the file's header.
    pub header_crc: u32,
}

/// The decoded manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Every snapshot includes changes `1..=seq`.
    pub seq: u64,
    /// The store's hash key.
    pub hash_key: HashKey,
    /// Per table (index = table id − 1), its shards.
    pub tables: Vec<Vec<ShardEntry>>,
    /// Whether the log is required ([`FLAG_LOG_REQUIRED`]).
    pub log_required: bool,
    /// The format version read (an install always writes [`VERSION`]).
    pub version: u16,
}

impl Manifest {
    /// Encodes the manifest as its `version` (what was decoded re-encodes to the same bytes;
    /// [`Manifest::install`] writes [`VERSION`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tables.len() as u16).to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.hash_key.0[0].to_le_bytes());
        b.extend_from_slice(&self.hash_key.0[1].to_le_bytes());
        let flags = if self.log_required {
            FLAG_LOG_REQUIRED
        } else {
            0
        };
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        for (i, shards) in self.tables.iter().enumerate() {
            b.push(i as u8 + 1);
            b.push(0);
            b.extend_from_slice(&(shards.len() as u16).to_le_bytes());
            for s in shards {
                b.extend_from_slice(&s.len.to_le_bytes());
                b.extend_from_slice(&s.header_crc.to_le_bytes());
                b.extend_from_slice(&[0; 4]);
            }
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a manifest; `tables` is how many tables this build knows.
    pub fn decode(path: PathBuf, b: &[u8], tables: usize) -> Result<Self, StoreError> {
        let corrupt = |offset: usize, what: &'static str| StoreError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            what,
        };
        if b.len() < FIXED_LEN + 4 {
            return Err(corrupt(b.len(), "manifest shorter than its fixed part"));
        }
        if b[0..8] != MAGIC {
            return Err(corrupt(0, "bad magic: not a manifest"));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version == 0 || version > VERSION {
            return Err(StoreError::Version {
                path,
                found: version,
                supported: VERSION,
            });
        }
        let body = &b[..b.len() - 4];
        let crc = u32::from_le_bytes([
            b[b.len() - 4],
            b[b.len() - 3],
            b[b.len() - 2],
            b[b.len() - 1],
        ]);
        if crc32c::crc32c(body) != crc {
            return Err(corrupt(b.len() - 4, "manifest checksum mismatch"));
        }
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        if b[12..16].iter().chain(&b[44..48]).any(|&x| x != 0) {
            return Err(corrupt(12, "reserved manifest bytes not zero"));
        }
        // Version 1 had no flags: bytes 40..44 were reserved, zero.
        let flags = u32::from_le_bytes([b[40], b[41], b[42], b[43]]);
        if flags & !FLAG_LOG_REQUIRED != 0 || (version == 1 && flags != 0) {
            return Err(corrupt(40, "unknown manifest flags"));
        }
        let count = usize::from(u16::from_le_bytes([b[10], b[11]]));
        // A manifest from before a table was added lists fewer tables; the missing ones are
        // empty (the store adds their files on its next writable open). More tables than this
        // build knows means a newer format.
        if count == 0 || count > tables {
            return Err(corrupt(10, "table count not known to this build"));
        }
        let mut at = FIXED_LEN;
        let mut out = Vec::with_capacity(count);
        for t in 0..count {
            let head = body
                .get(at..at + 4)
                .ok_or_else(|| corrupt(at, "manifest ends inside a table entry"))?;
            if usize::from(head[0]) != t + 1 {
                return Err(corrupt(at, "table ids out of order"));
            }
            if head[1] != 0 {
                return Err(corrupt(at + 1, "reserved manifest byte not zero"));
            }
            let shards = u16::from_le_bytes([head[2], head[3]]);
            if shards == 0 || shards > SHARDS_MAX {
                return Err(corrupt(at + 2, "shard count out of range"));
            }
            at += 4;
            let mut v = Vec::with_capacity(usize::from(shards));
            for _ in 0..shards {
                let e = body
                    .get(at..at + 16)
                    .ok_or_else(|| corrupt(at, "manifest ends inside a shard entry"))?;
                if e[12..16].iter().any(|&x| x != 0) {
                    return Err(corrupt(at + 12, "reserved manifest bytes not zero"));
                }
                let mut w = [0u8; 8];
                w.copy_from_slice(&e[..8]);
                v.push(ShardEntry {
                    len: u64::from_le_bytes(w),
                    header_crc: u32::from_le_bytes([e[8], e[9], e[10], e[11]]),
                });
                at += 16;
            }
            out.push(v);
        }
        if at != body.len() {
            return Err(corrupt(at, "trailing bytes after the last table entry"));
        }
        out.resize_with(tables, Vec::new);
        Ok(Manifest {
            seq: u64_at(16),
            hash_key: HashKey([u64_at(24), u64_at(32)]),
            tables: out,
            log_required: flags & FLAG_LOG_REQUIRED != 0,
            version,
        })
    }

    /// Installs this manifest atomically: temp file, fsync, rename, directory fsync.
    pub fn install(&self, fs: &dyn Fs) -> Result<(), StoreError> {
        let bytes = Manifest {
            version: VERSION,
            ..self.clone()
        }
        .encode();
        super::replace_file(fs, NAME, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_or_flip_is_refused() {
        let m = Manifest {
            seq: 42,
            hash_key: HashKey([5, 6]),
            tables: vec![
                vec![ShardEntry {
                    len: 100,
                    header_crc: 7,
                }],
                vec![
                    ShardEntry {
                        len: 1,
                        header_crc: 2,
                    };
                    3
                ],
            ],
            log_required: true,
            version: VERSION,
        };
        let b = m.encode();
        assert_eq!(Manifest::decode("M".into(), &b, 2).expect("decode"), m);
        // A version 1 manifest (no flags) decodes as one and re-encodes to the same bytes.
        let v1 = Manifest {
            version: 1,
            log_required: false,
            ..m.clone()
        };
        let b1 = v1.encode();
        assert_eq!(u16::from_le_bytes([b1[8], b1[9]]), 1);
        assert_eq!(Manifest::decode("M".into(), &b1, 2).expect("decode v1"), v1);
        // Flags in a version 1 manifest, or unknown flags, are refused.
        let mut bad = b1.clone();
        bad[40] = 1;
        let n = bad.len() - 4;
        let crc = crc32c::crc32c(&bad[..n]);
        bad[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(Manifest::decode("M".into(), &bad, 2).is_err());
        let mut bad = b.clone();
        bad[40] |= 2;
        let crc = crc32c::crc32c(&bad[..n]);
        bad[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(Manifest::decode("M".into(), &bad, 2).is_err());
        for cut in 0..b.len() {
            assert!(Manifest::decode("M".into(), &b[..cut], 2).is_err());
        }
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(Manifest::decode("M".into(), &c, 2).is_err(), "bit {i}");
        }
    }
}
