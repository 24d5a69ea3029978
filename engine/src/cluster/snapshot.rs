//! Tagged snapshots (`engine/CLUSTER.md`, "Bootstrap and replacement"): a node's online backup
//! carrying its chain head (the `CHAIN` file) as its tag, checked against `change_log` and
//! recorded in `snapshots`; the bootstrap of a new or wiped node from one; and the pruning of
//! `change_log` below the oldest recorded snapshot, in batches.
//!
//! Owns the `snapshots` table and the deletion of `change_log` rows. Never prunes a row a
//! recorded snapshot needs (its tag's row and every one after it), never records or installs a
//! snapshot whose tag `change_log` does not confirm, and never writes to the store it copies.

use std::sync::Arc;
use std::time::SystemTime;

use super::tail::Tail;
use super::{ClusterError, PgClient, chain};
use crate::registry::{Registry, RegistryConfig, SCHEMA};
use crate::store::backup::{self, BackupReport};
use crate::store::fs::Fs;

/// `change_log` rows deleted per transaction by [`prune`]: a transaction short enough not to
/// hold back vacuum or the standbys' replay for long, large enough that a national log of
/// 100M rows is pruned in 10,000 of them.
pub const PRUNE_BATCH: i64 = 10_000;

/// A snapshot's tag: the seq its `CHAIN` file holds and the chain hash there. The snapshot
/// holds every change up to `seq` (often a few more, which the bootstrap checks row by row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    /// The seq.
    pub seq: u64,
    /// The chain hash at `seq`.
    pub hash: [u8; 32],
}

impl Tag {
    /// The tag of the store (or snapshot) in `fs`: its `CHAIN` file. A store without one never
    /// followed a cluster and was not recorded as its genesis: it is no cluster snapshot.
    pub fn of(fs: &dyn Fs) -> Result<Self, ClusterError> {
        let (seq, hash) = chain::read(fs)?.ok_or_else(|| {
            ClusterError::NotGenesis(format!(
                "{}: no CHAIN file, so not a cluster node's store: snapshot a node's store (each writes its CHAIN when it first follows) or the genesis store after `mykeyd cluster init --genesis`",
                fs.root().display()
            ))
        })?;
        Ok(Self { seq, hash })
    }
}

/// A snapshot recorded in `snapshots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The node that took it.
    pub node: String,
    /// Its tag.
    pub tag: Tag,
    /// When it was recorded, in seconds since the Unix epoch.
    pub taken_at: i64,
    /// Where it was written (a path or URL, for operators).
    pub location: String,
}

/// What [`prune`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pruned {
    /// Every row below this seq is gone (the oldest recorded snapshot's seq).
    pub below: u64,
    /// Rows deleted by this run.
    pub rows: u64,
    /// Recorded snapshots forgotten by this run (older than the newest ones kept).
    pub forgotten: u64,
}

fn pg(op: &'static str) -> impl Fn(tokio_postgres::Error) -> ClusterError {
    move |source| ClusterError::Postgres { op, source }
}

/// Checks a tag against `change_log`: the row at its seq carries its hash, and no row after it
/// was pruned (a tag at seq 0: it is the recorded genesis and the log still starts at seq 1).
pub async fn check(c: &PgClient, tag: &Tag) -> Result<(), ClusterError> {
    if tag.seq == 0 {
        super::genesis::check(c, &tag.hash).await?;
        let first: Option<i64> = c
            .query_one("SELECT min(seq) FROM change_log", &[])
            .await
            .map_err(pg("check a snapshot"))?
            .get(0);
        return match first {
            Some(f) if f > 1 => Err(ClusterError::BadRow {
                seq: 1,
                what: "pruned: change_log no longer starts at seq 1, so a store at seq 0 cannot follow it; bootstrap from a newer snapshot (mykeyd cluster snapshots)",
            }),
            _ => Ok(()),
        };
    }
    let row = super::hash_at(c, tag.seq, "check a snapshot").await?;
    match row {
        Some(h) if h == tag.hash => Ok(()),
        Some(_) => Err(ClusterError::BadRow {
            seq: tag.seq,
            what: "carries another chain hash than the snapshot's tag: the snapshot is not of this cluster's history",
        }),
        None => Err(ClusterError::BadRow {
            seq: tag.seq,
            what: "not in change_log (pruned, or never committed): bootstrap from a newer snapshot (mykeyd cluster snapshots)",
        }),
    }
}

/// Takes an online backup of the store in `src` (open and serving, or not) into `dest` (new or
/// empty), with its tag: `src`'s `CHAIN` file is read before any store file, so the tag's seq
/// is at most the copy's last change, and written into `dest` once the copy is verified.
pub fn take(
    src: &dyn Fs,
    dest: &dyn Fs,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<(BackupReport, Tag), ClusterError> {
    let tag = Tag::of(src)?;
    let report = backup::backup(src, dest, &SCHEMA, progress)?;
    if tag.seq > report.last_seq {
        // The CHAIN file is written only after its seq is durable, and read first.
        return Err(ClusterError::BadRow {
            seq: tag.seq,
            what: "the source's CHAIN file is ahead of the changes copied",
        });
    }
    chain::write(dest, &Tail::at(tag.seq, tag.hash))?;
    Ok((report, tag))
}

/// Records a snapshot taken by `node` (or records it again: the same node and seq).
pub async fn record(
    c: &PgClient,
    node: &str,
    tag: &Tag,
    location: &str,
) -> Result<(), ClusterError> {
    check(c, tag).await?;
    c.execute(
        "INSERT INTO snapshots (node, seq, hash, taken_at, location) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (node, seq) DO UPDATE
         SET hash = EXCLUDED.hash, taken_at = EXCLUDED.taken_at, location = EXCLUDED.location",
        &[
            &node,
            &(tag.seq as i64),
            &&tag.hash[..],
            &SystemTime::now(),
            &location,
        ],
    )
    .await
    .map_err(pg("record a snapshot"))?;
    Ok(())
}

/// Every recorded snapshot, newest first.
pub async fn list(c: &PgClient) -> Result<Vec<Recorded>, ClusterError> {
    let rows = c
        .query(
            "SELECT node, seq, hash, extract(epoch FROM taken_at)::bigint, location
             FROM snapshots ORDER BY seq DESC, node",
            &[],
        )
        .await
        .map_err(pg("list snapshots"))?;
    rows.iter()
        .map(|r| {
            let seq = r.get::<_, i64>(1) as u64;
            Ok(Recorded {
                node: r.get(0),
                tag: Tag {
                    seq,
                    hash: r
                        .get::<_, &[u8]>(2)
                        .try_into()
                        .map_err(|_| ClusterError::BadRow {
                            seq,
                            what: "a recorded snapshot's hash is not 32 bytes",
                        })?,
                },
                taken_at: r.get(3),
                location: r.get(4),
            })
        })
        .collect()
}

/// Forgets every recorded snapshot but the `keep` newest (by seq; `keep` at least 1), then
/// deletes the `change_log` rows below the oldest one left, [`PRUNE_BATCH`] per transaction,
/// telling `progress` the rows deleted so far. The oldest snapshot left is checked against
/// `change_log` first: nothing is deleted for a tag the log does not confirm. The per-ID index
/// of the deleted rows goes with them (`id_changes`' foreign key cascades), so `history` then
/// starts at the oldest snapshot.
pub async fn prune(
    c: &PgClient,
    keep: Option<usize>,
    progress: &mut dyn FnMut(u64),
) -> Result<Pruned, ClusterError> {
    let mut forgotten = 0;
    if let Some(k) = keep {
        let k = k.max(1) as i64;
        forgotten = c
            .execute(
                "DELETE FROM snapshots WHERE (node, seq) NOT IN
                 (SELECT node, seq FROM snapshots ORDER BY seq DESC, node LIMIT $1)",
                &[&k],
            )
            .await
            .map_err(pg("forget snapshots"))?;
    }
    let oldest = list(c).await?.pop().ok_or(ClusterError::NoSnapshot)?;
    check(c, &oldest.tag).await?;
    let below = oldest.tag.seq as i64;
    let mut rows = 0;
    loop {
        let n = c
            .execute(
                "DELETE FROM change_log WHERE seq IN
                 (SELECT seq FROM change_log WHERE seq < $1 ORDER BY seq LIMIT $2)",
                &[&below, &PRUNE_BATCH],
            )
            .await
            .map_err(pg("prune change_log"))?;
        if n == 0 {
            break;
        }
        rows += n;
        progress(rows);
    }
    Ok(Pruned {
        below: oldest.tag.seq,
        rows,
        forgotten,
    })
}

/// Bootstraps the store directory `dest` (new or empty) from the snapshot in `from`: checks
/// the snapshot's tag against `change_log` before copying anything, restores it (copy, verify,
/// open), writes its `CHAIN` file, and carries the tag over the changes the snapshot holds
/// after it, each checked against `change_log` ([`chain::resume`]). Returns what was copied and
/// the chain head the node will tail from.
pub async fn bootstrap(
    c: &PgClient,
    from: Arc<dyn Fs>,
    dest: Arc<dyn Fs>,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<(BackupReport, Tail), ClusterError> {
    let tag = Tag::of(&*from)?;
    check(c, &tag).await?;
    let mut report = backup::backup(&*from, &*dest, &SCHEMA, progress)?;
    chain::write(&*dest, &Tail::at(tag.seq, tag.hash))?;
    // Opened as `serve` will (the torn tail cut, the log replayed).
    let reg = Registry::open(dest.clone(), RegistryConfig::default())
        .map_err(|e| ClusterError::Open(Box::new(e)))?;
    report.last_seq = reg.store().durable_seq();
    let tail = chain::resume(c, &*dest, &reg).await?;
    Ok((report, tail))
}
