//! Write-ahead log segments and the `Change` records they carry (`snapshots/README.md`).
//!
//! Owns the `.log` format: encoding a [`Change`] into a framed record, and scanning a segment
//! back with the recovery rules (a torn tail is cut, corruption before it is refused with the
//! file and offset). It never applies changes and never decides what a put means: the store
//! applies puts, the registry gives them meaning. Decoding never panics on any bytes.

use std::path::{Path, PathBuf};

use super::StoreError;
use crate::id::{ActorId, Timestamp};

/// Magic of a log segment.
pub const MAGIC: [u8; 8] = *b"MYKEYWAL";
/// Format version this build writes. Version 2 segments may end with a seal
/// ([`seal`]); version 1 segments never do, and still open.
pub const VERSION: u16 = 2;
/// Length field that marks a seal instead of a record: above any record's `CHANGE_LEN_MAX`.
pub const SEAL_MARKER: u32 = u32::MAX;
/// Seal size: marker u32, CRC u32, last seq u64, segment length before the seal u64.
pub const SEAL_LEN: usize = 24;
/// Segment header size.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Record frame: payload length u32, CRC u32, seq u64.
pub const RECORD_HEADER_LEN: usize = 16;
/// Largest payload of one change. A change touches a handful of records (a registration, a
/// link, a revocation chunk of `REVOCATIONS_PER_CHANGE_MAX` certificates); 1 MiB bounds the
/// memory a corrupt length field can make recovery ask for.
pub const CHANGE_LEN_MAX: usize = 1 << 20;

// The layout of `snapshots/README.md`: a seal's marker is a length no record may have.
const _: () = assert!(SEGMENT_HEADER_LEN == 32 && RECORD_HEADER_LEN == 16 && SEAL_LEN == 24);
const _: () = assert!(CHANGE_LEN_MAX < SEAL_MARKER as usize);

/// The file name of the segment whose first change is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:016x}.log")
}

/// The `first_seq` of a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The header of a new segment.
pub fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The seal that closes a segment once the next one is durable: it says which seq the
/// segment ends at and how long it is, so a missing successor or a shortened sealed segment is
/// detected on open instead of silently losing changes.
pub fn seal(last_seq: u64, len: u64) -> [u8; SEAL_LEN] {
    let mut b = [0u8; SEAL_LEN];
    b[0..4].copy_from_slice(&SEAL_MARKER.to_le_bytes());
    b[8..16].copy_from_slice(&last_seq.to_le_bytes());
    b[16..24].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// One write to one table: `value: None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    /// Table id.
    pub table: u8,
    /// Key bytes.
    pub key: Vec<u8>,
    /// New value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

/// One ordered state change: what the log carries and what recovery (or, later, a cluster log
/// follower) applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Position in the log: consecutive, starting at 1.
    pub seq: u64,
    /// When it was made (the caller's `now`).
    pub at: Timestamp,
    /// Who made it.
    pub actor: ActorId,
    /// Which domain operation, for the audit trail; the store does not interpret it.
    pub kind: u8,
    /// The record writes, applied in order.
    pub puts: Vec<Put>,
}

impl Change {
    /// Appends the framed record (header and payload) to `out`. On error `out` is left as it
    /// was: a partial record in the log buffer would corrupt every record after it.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let start = out.len();
        let r = self.encode_at(start, out);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn encode_at(&self, start: usize, out: &mut Vec<u8>) -> Result<(), StoreError> {
        out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        out.extend_from_slice(&self.at.raw().to_le_bytes());
        out.push(self.actor.as_bytes().len() as u8);
        out.extend_from_slice(self.actor.as_bytes());
        out.push(self.kind);
        let count = u16::try_from(self.puts.len()).map_err(|_| StoreError::Limit {
            what: "puts in one change",
            len: self.puts.len(),
            max: usize::from(u16::MAX),
        })?;
        out.extend_from_slice(&count.to_le_bytes());
        for p in &self.puts {
            out.push(p.table);
            let klen = u8::try_from(p.key.len()).map_err(|_| StoreError::Limit {
                what: "key length",
                len: p.key.len(),
                max: 255,
            })?;
            out.push(klen);
            out.extend_from_slice(&p.key);
            match &p.value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    let vlen = u16::try_from(v.len()).map_err(|_| StoreError::Limit {
                        what: "value length",
                        len: v.len(),
                        max: usize::from(u16::MAX),
                    })?;
                    out.extend_from_slice(&vlen.to_le_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        let payload_len = out.len() - start - RECORD_HEADER_LEN;
        if payload_len > CHANGE_LEN_MAX {
            return Err(StoreError::Limit {
                what: "change payload bytes",
                len: payload_len,
                max: CHANGE_LEN_MAX,
            });
        }
        out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        out[start + 8..start + 16].copy_from_slice(&self.seq.to_le_bytes());
        let crc = crc32c::crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// The change's payload: its log record without the record header (length, CRC, seq), as
    /// the cluster's `change_log` stores it and [`Change::decode`] reads it back.
    pub fn payload(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        out.drain(..RECORD_HEADER_LEN);
        Ok(out)
    }

    /// Decodes a payload (already checked by its CRC). `None` if it is malformed.
    pub fn decode(seq: u64, p: &[u8]) -> Option<Self> {
        let mut r = Reader { b: p, at: 0 };
        let at = Timestamp::from_raw(u32::from_le_bytes(r.take(4)?.try_into().ok()?));
        let alen = usize::from(r.u8()?);
        let actor = ActorId::parse(r.take(alen)?).ok()?;
        let kind = r.u8()?;
        let count = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let mut puts = Vec::with_capacity(usize::from(count).min(p.len() / 3));
        for _ in 0..count {
            let table = r.u8()?;
            let klen = usize::from(r.u8()?);
            let key = r.take(klen)?.to_vec();
            let value = match r.u8()? {
                0 => None,
                1 => {
                    let vlen = usize::from(u16::from_le_bytes(r.take(2)?.try_into().ok()?));
                    Some(r.take(vlen)?.to_vec())
                }
                _ => return None,
            };
            puts.push(Put { table, key, value });
        }
        if r.at != p.len() {
            return None;
        }
        Some(Change {
            seq,
            at,
            actor,
            kind,
            puts,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
}

/// What scanning a segment found.
pub struct Scan {
    /// The segment's first seq, from its header.
    pub first_seq: u64,
    /// Every valid change, in order.
    pub changes: Vec<Change>,
    /// Length of the valid prefix; anything after it is a torn tail to cut.
    pub valid_len: u64,
    /// Whether a torn tail was found after `valid_len`.
    pub torn: bool,
    /// The segment's format version.
    pub version: u16,
    /// The last seq its seal names, when the segment is sealed (the seal follows
    /// `valid_len`).
    pub sealed: Option<u64>,
}

/// Scans one segment's bytes. `last` says whether it is the newest segment, the only one
/// allowed a torn tail.
pub fn scan(path: &Path, bytes: &[u8], last: bool) -> Result<Scan, StoreError> {
    let corrupt = |offset: usize, what: &'static str| StoreError::Corrupt {
        path: PathBuf::from(path),
        offset: offset as u64,
        what,
    };
    if bytes.len() < SEGMENT_HEADER_LEN || bytes[..SEGMENT_HEADER_LEN].iter().all(|&b| b == 0) {
        // A segment created by a rotation whose header never reached the disk.
        if last {
            return Ok(Scan {
                first_seq: 0,
                changes: Vec::new(),
                valid_len: 0,
                torn: true,
                version: VERSION,
                sealed: None,
            });
        }
        return Err(corrupt(0, "log segment shorter than its header"));
    }
    if bytes[0..8] != MAGIC {
        return Err(corrupt(0, "bad magic: not a log segment"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version == 0 || version > VERSION {
        return Err(StoreError::Version {
            path: PathBuf::from(path),
            found: version,
            supported: VERSION,
        });
    }
    if crc32c::crc32c(&bytes[..28])
        != u32::from_le_bytes([bytes[28], bytes[29], bytes[30], bytes[31]])
    {
        return Err(corrupt(28, "log segment header checksum mismatch"));
    }
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[16..24]);
    let first_seq = u64::from_le_bytes(w);
    let mut changes: Vec<Change> = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    let mut torn = false;
    let mut sealed = None;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if version >= 2 && rest.len() <= SEAL_LEN && rest.iter().take(4).all(|&b| b == 0xFF) {
            let last_seq = changes.last().map_or(first_seq.wrapping_sub(1), |c| c.seq);
            if rest.len() == SEAL_LEN
                && crc32c::crc32c(&rest[8..])
                    == u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]])
            {
                let mut w = [0u8; 8];
                w.copy_from_slice(&rest[8..16]);
                let named = u64::from_le_bytes(w);
                w.copy_from_slice(&rest[16..24]);
                if named != last_seq || u64::from_le_bytes(w) != at as u64 {
                    return Err(corrupt(at, "the seal does not match the records before it"));
                }
                sealed = Some(named);
            } else {
                // A seal cut short by a crash: it is written only after the next segment is
                // durable and every record here was fsync'd, so the records stand and the
                // segment counts as unsealed (its partial seal is cut like a torn tail).
                torn = true;
            }
            break;
        }
        let bad = |what: &'static str, ends_at_eof: bool| {
            let zero_tail = rest.iter().all(|&b| b == 0);
            if last && (ends_at_eof || zero_tail) {
                Ok(())
            } else {
                Err(corrupt(at, what))
            }
        };
        if rest.len() < RECORD_HEADER_LEN {
            bad("partial record header", true)?;
            torn = true;
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == SEAL_MARKER as usize && version >= 2 {
            return Err(corrupt(at, "bytes after the seal"));
        }
        if len > CHANGE_LEN_MAX {
            bad("record length over the limit", false)?;
            torn = true;
            break;
        }
        let Some(rec) = rest.get(..RECORD_HEADER_LEN + len) else {
            bad("record runs past the end of the file", true)?;
            torn = true;
            break;
        };
        let crc = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        if crc32c::crc32c(&rec[8..]) != crc {
            bad("record checksum mismatch", rec.len() == rest.len())?;
            torn = true;
            break;
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&rec[8..16]);
        let seq = u64::from_le_bytes(s);
        let expected = changes.last().map_or(first_seq, |c| c.seq + 1);
        if seq != expected {
            return Err(corrupt(at, "seq is not the previous seq + 1"));
        }
        let change = Change::decode(seq, &rec[RECORD_HEADER_LEN..])
            .ok_or_else(|| corrupt(at, "malformed change payload"))?;
        changes.push(change);
        at += rec.len();
    }
    Ok(Scan {
        first_seq,
        changes,
        valid_len: at as u64,
        torn,
        version,
        sealed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64) -> Change {
        Change {
            seq,
            at: Timestamp::from_raw(1_700_000_000),
            actor: ActorId::parse(b"counter-1").expect("valid"),
            kind: 3,
            puts: vec![
                Put {
                    table: 1,
                    key: b"K".to_vec(),
                    value: Some(vec![1, 2, 3]),
                },
                Put {
                    table: 2,
                    key: b"Q".to_vec(),
                    value: None,
                },
            ],
        }
    }

    fn segment(n: u64) -> Vec<u8> {
        let mut b = segment_header(1).to_vec();
        for s in 1..=n {
            change(s).encode(&mut b).expect("encode");
        }
        b
    }

    #[test]
    fn round_trip() {
        let b = segment(3);
        let s = scan(Path::new("x"), &b, false).expect("scan");
        assert_eq!(s.changes, vec![change(1), change(2), change(3)]);
        assert!(!s.torn);
        assert_eq!(s.valid_len, b.len() as u64);
    }

    #[test]
    fn torn_tail_in_last_segment_is_cut_at_every_length() {
        let full = segment(3);
        let two = segment(2).len();
        for cut in two + 1..full.len() {
            let s = scan(Path::new("x"), &full[..cut], true).expect("torn tail accepted");
            assert_eq!(s.changes.len(), 2, "cut at {cut}");
            assert!(s.torn);
            assert_eq!(s.valid_len, two as u64);
            // The same bytes in an older segment are corruption.
            assert!(matches!(
                scan(Path::new("x"), &full[..cut], false),
                Err(StoreError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn flipped_bit_before_the_tail_names_the_offset() {
        let mut b = segment(3);
        let first_rec = SEGMENT_HEADER_LEN;
        b[first_rec + 20] ^= 0x10;
        match scan(Path::new("wal"), &b, true) {
            Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, first_rec as u64),
            other => panic!(
                "expected corruption, got {:?}",
                other.map(|s| s.changes.len())
            ),
        }
    }

    #[test]
    fn a_refused_change_leaves_the_buffer_as_it_was() {
        let mut b = segment(1);
        let before = b.clone();
        let mut too_many = change(2);
        too_many.puts = vec![too_many.puts[0].clone(); usize::from(u16::MAX) + 1];
        assert!(matches!(
            too_many.encode(&mut b),
            Err(StoreError::Limit { .. })
        ));
        let mut long_key = change(2);
        long_key.puts[1].key = vec![0; 256];
        assert!(matches!(
            long_key.encode(&mut b),
            Err(StoreError::Limit { .. })
        ));
        assert_eq!(b, before);
        change(2).encode(&mut b).expect("encode");
        assert_eq!(
            scan(Path::new("x"), &b, false).expect("scan").changes.len(),
            2
        );
    }

    #[test]
    fn a_seal_names_the_last_seq_and_a_cut_seal_leaves_the_records() {
        let mut b = segment(3);
        let len = b.len() as u64;
        b.extend_from_slice(&seal(3, len));
        let s = scan(Path::new("x"), &b, false).expect("sealed");
        assert_eq!((s.sealed, s.changes.len(), s.torn), (Some(3), 3, false));
        assert_eq!(s.valid_len, len);
        // A seal that lies about the last seq, or sits after a cut record, is corruption.
        let mut lying = segment(3);
        lying.extend_from_slice(&seal(2, len));
        assert!(matches!(
            scan(Path::new("x"), &lying, false),
            Err(StoreError::Corrupt { .. })
        ));
        // A seal cut short by a crash (in any segment) leaves an unsealed segment.
        for cut in 1..SEAL_LEN {
            let s = scan(Path::new("x"), &b[..len as usize + cut], false).expect("partial seal");
            assert_eq!(
                (s.sealed, s.changes.len(), s.torn),
                (None, 3, true),
                "cut {cut}"
            );
        }
        // Bytes after a seal are corruption.
        let mut after = b.clone();
        change(4).encode(&mut after).expect("encode");
        assert!(scan(Path::new("x"), &after, true).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x1234_5678_u64;
        for len in 0..300 {
            let mut b = segment_header(1).to_vec();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            let _ = scan(Path::new("x"), &b, true);
            let _ = scan(Path::new("x"), &b, false);
            let _ = Change::decode(1, &b);
        }
    }
}
