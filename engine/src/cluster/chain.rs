//! A node's chain head beside its store (`engine/CLUSTER.md`, "Followers and tailing"): the
//! `CHAIN` file, written after each applied batch, and the resume of a follower after a
//! restart from its store and that file. Never trusts the file further than PostgreSQL's rows
//! and the local log confirm it.
//!
//! `CHAIN`, 52 bytes, little-endian:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `MKCHAIN1` |
//! | 8 | 8 | seq: the last change applied when it was written |
//! | 16 | 32 | the chain hash at that seq |
//! | 48 | 4 | CRC32C of bytes 0..48 |

use super::tail::Tail;
use super::{ClusterError, PgClient, check_row, genesis};
use crate::registry::Registry;
use crate::store::fs::Fs;
use crate::store::{Change, StoreError};

/// The file's name in the store directory.
pub const NAME: &str = "CHAIN";
/// Its length.
pub const LEN: usize = 52;
const MAGIC: &[u8; 8] = b"MKCHAIN1";

/// The file's bytes for a head at `seq` with `hash`.
pub fn encode(seq: u64, hash: &[u8; 32]) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..48].copy_from_slice(hash);
    let crc = crc32c::crc32c(&b[..48]);
    b[48..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The head a file's bytes hold; `None` if they are not a `CHAIN` file.
pub fn decode(b: &[u8]) -> Option<(u64, [u8; 32])> {
    if b.len() != LEN || &b[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[48..].try_into().ok()?);
    if crc != crc32c::crc32c(&b[..48]) {
        return None;
    }
    Some((
        u64::from_le_bytes(b[8..16].try_into().ok()?),
        b[16..48].try_into().ok()?,
    ))
}

/// The head in `fs`'s `CHAIN` file; `None` when there is none (a node that never tailed).
pub fn read(fs: &dyn Fs) -> Result<Option<(u64, [u8; 32])>, ClusterError> {
    if !fs.exists(NAME) {
        return Ok(None);
    }
    let bytes = crate::store::read_unmapped(fs, NAME)?;
    decode(&bytes).map(Some).ok_or_else(|| {
        StoreError::Corrupt {
            path: fs.root().join(NAME),
            offset: 0,
            what: "not a CHAIN file (magic, length or checksum)",
        }
        .into()
    })
}

/// Replaces `fs`'s `CHAIN` file with the tail's head.
pub fn write(fs: &dyn Fs, tail: &Tail) -> Result<(), ClusterError> {
    crate::store::replace_file(fs, NAME, &encode(tail.applied(), &tail.hash()))
        .map_err(ClusterError::from)
}

/// A follower resuming after a restart (or a bootstrap): its store's durable seq, and the chain
/// hash there,
/// from the `CHAIN` file carried forward over the rows it applied after the file was last
/// written (a crash between a batch's fsync and the file's). Each of those rows must carry the
/// hash recomputed from the file's, and its payload must equal the change in the local log
/// where the log still holds it.
///
/// A store with no `CHAIN` file at seq 0 is a copy of the genesis store or an empty one: its
/// content digest is its chain hash at seq 0 ([`genesis::digest`]), written as its `CHAIN`
/// file; at seq 0, from the file or so computed, the hash must be the recorded genesis.
pub async fn resume(c: &PgClient, fs: &dyn Fs, reg: &Registry) -> Result<Tail, ClusterError> {
    let durable = reg.store().durable_seq();
    let (seq, mut hash) = match read(fs)? {
        Some(h) => h,
        None if durable == 0 => {
            let t = Tail::at(0, genesis::digest(reg)?);
            write(fs, &t)?;
            (0, t.hash())
        }
        // A store copied without its file: its rows are checked below against its own log.
        None => (0, genesis::recorded(c).await?),
    };
    if seq == 0 {
        genesis::check(c, &hash).await?;
    }
    if seq > durable {
        return Err(ClusterError::BadRow {
            seq,
            what: "the CHAIN file is ahead of the store it sits beside",
        });
    }
    if seq == durable {
        return Ok(Tail::at(seq, hash));
    }
    let mut local = std::collections::HashMap::new();
    crate::store::read_log(fs, |ch: &Change| {
        if ch.seq > seq {
            local.insert(ch.seq, ch.payload());
        }
    })?;
    let rows = c
        .query(
            "SELECT seq, payload, hash FROM change_log WHERE seq > $1 AND seq <= $2 ORDER BY seq",
            &[&(seq as i64), &(durable as i64)],
        )
        .await
        .map_err(|source| ClusterError::Postgres {
            op: "resume from change_log",
            source,
        })?;
    let mut next = seq + 1;
    for r in rows {
        let (_, payload, h) = check_row(&r, next, &hash)?;
        if let Some(Ok(mine)) = local.get(&next)
            && mine.as_slice() != payload
        {
            return Err(ClusterError::BadRow {
                seq: next,
                what: "it differs from the change this node's log holds",
            });
        }
        hash = h;
        next += 1;
    }
    if next != durable + 1 {
        return Err(ClusterError::BadRow {
            seq: next,
            what: "missing: the store holds it and change_log does not",
        });
    }
    let t = Tail::at(durable, hash);
    write(fs, &t)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_file_round_trips_and_every_flip_or_cut_is_refused() {
        let b = encode(42, &[7; 32]);
        assert_eq!(decode(&b), Some((42, [7; 32])));
        for i in 0..LEN {
            let mut f = b;
            f[i] ^= 0x10;
            assert_eq!(decode(&f), None, "flip at {i}");
        }
        assert_eq!(decode(&b[..LEN - 1]), None);
    }
}
