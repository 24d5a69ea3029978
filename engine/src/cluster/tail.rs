//! A node following the system of record (`engine/CLUSTER.md`, "Followers and tailing"): it
//! reads the `change_log` rows after its applied seq, from the primary or a hot standby, checks
//! that each continues its seq and its own chain hash, and applies it through the registry's
//! replicated-change path. On a gap, a payload that is not a change, or a hash that differs, it
//! stops and says which seq; it never applies a row it could not check.

use std::time::Duration;

use super::{ClusterError, GENESIS, PgClient, check_row};
use crate::registry::Registry;

/// How often a follower polls for new rows.
pub const TAIL_POLL: Duration = Duration::from_millis(10);
/// Rows read per poll.
pub const TAIL_BATCH: i64 = 1000;

/// Where a follower stands: its applied seq and its chain hash there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    applied: u64,
    hash: [u8; 32],
}

impl Tail {
    /// A follower of a node that has applied nothing yet.
    pub fn new() -> Self {
        Self::at(0, GENESIS)
    }

    /// A follower whose store holds every change up to `applied`, whose chain hash is `hash`.
    pub fn at(applied: u64, hash: [u8; 32]) -> Self {
        Self { applied, hash }
    }

    /// The applied seq.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The chain hash at the applied seq.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Reads and applies the rows after the applied seq, up to [`TAIL_BATCH`] of them; returns
    /// how many were applied. Nothing past the first row that fails a check is applied. Blocks
    /// on the local log's fsync (one per step): a node runs its tail on a thread of its own.
    pub async fn step(&mut self, c: &PgClient, reg: &Registry) -> Result<usize, ClusterError> {
        let rows = c
            .query(
                "SELECT seq, payload, hash FROM change_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&(self.applied as i64), &TAIL_BATCH],
            )
            .await
            .map_err(|source| ClusterError::Postgres {
                op: "tail change_log",
                source,
            })?;
        // Rows that do not start right after the applied seq: pruned past this node, or a gap.
        if let Some(first) = rows.first()
            && first.get::<_, i64>(0) as u64 > self.applied + 1
        {
            return Err(self.gap(c).await);
        }
        // Every row is checked before any is applied; the ones before a failing row are
        // applied together (one local fsync), and then the failure is told.
        let mut checked = Vec::with_capacity(rows.len());
        let mut failed = None;
        let (mut seq, mut hash) = (self.applied, self.hash);
        for r in &rows {
            match check_row(r, seq + 1, &hash) {
                Ok((change, _, h)) => {
                    seq = change.seq;
                    hash = h;
                    checked.push(change);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let n = checked.len();
        if n > 0 {
            reg.apply_replicated_batch(&checked)
                .map_err(|e| ClusterError::Apply {
                    seq: checked[0].seq,
                    source: Box::new(e),
                })?;
            self.applied = seq;
            self.hash = hash;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(n)
    }

    /// The error for rows that do not start right after the applied seq: pruned past this
    /// node (the log's first row is later), or a gap.
    async fn gap(&self, c: &PgClient) -> ClusterError {
        let next = self.applied + 1;
        let first: Option<i64> = match c.query_one("SELECT min(seq) FROM change_log", &[]).await {
            Ok(r) => r.get(0),
            Err(source) => {
                return ClusterError::Postgres {
                    op: "tail change_log",
                    source,
                };
            }
        };
        ClusterError::BadRow {
            seq: next,
            what: if first.is_some_and(|f| f as u64 > next) {
                "pruned: change_log now starts after this node's applied seq; bootstrap this node from a recorded snapshot (mykeyd cluster bootstrap)"
            } else {
                "missing: change_log has a gap here"
            },
        }
    }

    /// Checks that the row at the applied seq still carries this node's hash: a history
    /// rewritten under the node (a row changed by hand, the wrong backup restored) is found even
    /// when no new row comes.
    pub async fn recheck(&self, c: &PgClient) -> Result<(), ClusterError> {
        if self.applied == 0 {
            return Ok(());
        }
        let r = super::hash_at(c, self.applied, "recheck change_log").await?;
        match r {
            Some(h) if h == self.hash => Ok(()),
            Some(_) => Err(ClusterError::BadRow {
                seq: self.applied,
                what: "its chain hash changed after this node applied it",
            }),
            None => Err(ClusterError::BadRow {
                seq: self.applied,
                what: "gone from change_log after this node applied it",
            }),
        }
    }
}

impl Default for Tail {
    fn default() -> Self {
        Self::new()
    }
}
