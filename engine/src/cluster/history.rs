//! Reading the system of record back: the chain recomputed over `change_log` with the first
//! mismatch named (`mykeyd cluster verify`), and one ID's history, each entry with its seq and
//! chain hash (`mykeyd history`). Read-only.

use tokio_postgres::Client;

use super::{ClusterError, ROWS_PER_QUERY, check_row};
use crate::id::MyKeyId;
use crate::store::Change;

fn pg(source: tokio_postgres::Error) -> ClusterError {
    ClusterError::Postgres {
        op: "read change_log",
        source,
    }
}

/// What a verification checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The first seq checked.
    pub from: u64,
    /// The last seq checked.
    pub to: u64,
    /// The chain hash at `to`.
    pub hash: [u8; 32],
}

/// Recomputes the chain over `from..=to` (`to`: the head when `None`), starting from the
/// stored hash at `from - 1` (the recorded genesis digest when `from` is 1). Every seq must be present,
/// every payload must decode, and every stored hash must equal the recomputed one; the first
/// that does not is the error.
pub async fn verify(c: &Client, from: u64, to: Option<u64>) -> Result<Verified, ClusterError> {
    let from = from.max(1);
    let to = match to {
        Some(t) => t,
        None => super::writer::head(c).await?.seq,
    };
    let mut hash = if from == 1 {
        super::genesis::recorded(c).await?
    } else {
        let r = c
            .query_opt(
                "SELECT hash FROM change_log WHERE seq = $1",
                &[&((from - 1) as i64)],
            )
            .await
            .map_err(pg)?
            .ok_or(ClusterError::BadRow {
                seq: from - 1,
                what: "missing (the start of the range must follow a stored row)",
            })?;
        stored_hash(from - 1, r.get(0))?
    };
    let mut next = from;
    while next <= to {
        let rows = c
            .query(
                "SELECT seq, payload, hash FROM change_log WHERE seq >= $1 AND seq <= $2
                 ORDER BY seq LIMIT $3",
                &[&(next as i64), &(to as i64), &ROWS_PER_QUERY],
            )
            .await
            .map_err(pg)?;
        if rows.is_empty() {
            return Err(ClusterError::BadRow {
                seq: next,
                what: "missing",
            });
        }
        for r in rows {
            hash = check_row(&r, next, &hash)?.2;
            next += 1;
        }
    }
    Ok(Verified { from, to, hash })
}

fn stored_hash(seq: u64, v: &[u8]) -> Result<[u8; 32], ClusterError> {
    v.try_into().map_err(|_| ClusterError::BadRow {
        seq,
        what: "a chain hash that is not 32 bytes",
    })
}

/// One change in an ID's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its seq.
    pub seq: u64,
    /// The change itself (time, actor, kind, the record writes).
    pub change: Change,
    /// Its chain hash.
    pub hash: [u8; 32],
}

/// Every change that concerns `id`, in seq order, from the per-ID index the writer keeps.
pub async fn history(c: &Client, id: &MyKeyId) -> Result<Vec<Entry>, ClusterError> {
    let rows = c
        .query(
            "SELECT l.seq, l.payload, l.hash FROM id_changes i JOIN change_log l USING (seq)
             WHERE i.mykey_id = $1 ORDER BY l.seq",
            &[&id.as_str()],
        )
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|r| {
            let seq = r.get::<_, i64>(0) as u64;
            let change = Change::decode(seq, r.get(1)).ok_or(ClusterError::BadRow {
                seq,
                what: "its payload is not a change",
            })?;
            Ok(Entry {
                seq,
                change,
                hash: stored_hash(seq, r.get(2))?,
            })
        })
        .collect()
}
