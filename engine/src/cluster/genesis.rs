//! The cluster's genesis (`engine/CLUSTER.md`, "The genesis"): the bulk-built store at seq 0
//! every node starts from (`mykeyd snapshot build`, `mykeyd init`), whose data is in no
//! `change_log` row. `mykeyd cluster init --genesis STORE` records it: its content digest
//! becomes the chain hash at seq 0 (so every later hash commits to it) and its rows are loaded
//! into the relational mirror, whose constraints then hold for links to its providers and for
//! its certificates. A node at seq 0 proves it holds that store by the same digest.
//!
//! Owns the digest, `mykey_meta.genesis` and the genesis load. Never records a genesis into a
//! cluster that has changes already or another genesis, and never loads a store past seq 0.

use std::sync::Arc;

use super::tail::Tail;
use super::writer::{MirrorLoader, head};
use super::{ClusterError, GENESIS, MIGRATE_LOCK, PgClient, chain};
use crate::id::{ActorId, Timestamp};
use crate::registry::{Registry, Table};
use crate::store::fs::Fs;
use crate::store::{Change, Put};

/// Records per part of the genesis load (one mirror statement set per part, all in one
/// transaction).
pub const GENESIS_CHUNK: usize = 10_000;
/// Parts read ahead of the load while it writes to PostgreSQL.
const READ_AHEAD: usize = 4;

/// What recording the genesis did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The store's content digest: the chain hash at seq 0.
    pub digest: [u8; 32],
    /// Providers, IDs, links and certificate bindings loaded into the mirror.
    pub providers: u64,
    /// IDs loaded.
    pub ids: u64,
    /// Links loaded.
    pub links: u64,
    /// Certificate bindings loaded.
    pub certs: u64,
    /// The same genesis was recorded already: nothing was written.
    pub already: bool,
}

/// The content digest of `reg`'s store: SHA-256 over every record of every table, in table
/// order and the store's own order (`table u8 ‖ key length u32 LE ‖ key ‖ value length u32 LE
/// ‖ value`); [`GENESIS`] for a store with no record. Equal for a store and its copies; the
/// order is the files' at seq 0 only (a store with changes iterates its delta in no fixed
/// order: compare replicas with [`state_digest`]).
pub fn digest(reg: &Registry) -> Result<[u8; 32], ClusterError> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut any = false;
    for t in Table::ALL {
        reg.store().for_each(t, |k, v| {
            any = true;
            frame(&mut ctx, t, k, v);
        })?;
    }
    if !any {
        return Ok(GENESIS);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// One record into a digest: `table u8 ‖ key length u32 LE ‖ key ‖ value length u32 LE ‖ value`.
fn frame(ctx: &mut aws_lc_rs::digest::Context, t: Table, k: &[u8], v: &[u8]) {
    ctx.update(&[t as u8]);
    ctx.update(&(k.len() as u32).to_le_bytes());
    ctx.update(k);
    ctx.update(&(v.len() as u32).to_le_bytes());
    ctx.update(v);
}

/// The state digest of `reg`'s store: SHA-256 over every record sorted by table and key (the
/// same framing as [`digest`]), whatever the store's layout: two replicas hold the same state
/// exactly when their state digests are equal (`mykeyd snapshot digest`). Holds one table's
/// records in memory at a time.
pub fn state_digest(reg: &Registry) -> Result<[u8; 32], ClusterError> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for t in Table::ALL {
        let mut records = Vec::new();
        reg.store()
            .for_each(t, |k, v| records.push((k.to_vec(), v.to_vec())))?;
        records.sort_unstable();
        for (k, v) in &records {
            frame(&mut ctx, t, k, v);
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

fn pg(op: &'static str) -> impl Fn(tokio_postgres::Error) -> ClusterError {
    move |source| ClusterError::Postgres { op, source }
}

/// The recorded genesis digest ([`GENESIS`] when none was: the cluster started empty).
pub async fn recorded(c: &PgClient) -> Result<[u8; 32], ClusterError> {
    let row = c
        .query_opt("SELECT value FROM mykey_meta WHERE key = 'genesis'", &[])
        .await
        .map_err(pg("read the genesis"))?;
    match row {
        None => Ok(GENESIS),
        Some(r) => crate::id::parse_hex32(r.get(0)).ok_or(ClusterError::BadRow {
            seq: 0,
            what: "mykey_meta.genesis is not 64 hex digits",
        }),
    }
}

/// Checks that a node whose chain stands at seq 0 with `hash` holds the cluster's genesis.
pub async fn check(c: &PgClient, hash: &[u8; 32]) -> Result<(), ClusterError> {
    if recorded(c).await? == *hash {
        Ok(())
    } else {
        Err(ClusterError::BadRow {
            seq: 0,
            what: "this store at seq 0 is not the cluster's genesis store (its content digest differs from the one recorded by `mykeyd cluster init --genesis`): start the node from a copy of that store or a recorded snapshot",
        })
    }
}

/// A part of the genesis read from the store: its mirror rows and counts.
struct Part {
    ops: Vec<crate::registry::MirrorOp>,
    links: u64,
}

/// Records the store of `reg` (in `fs`, at seq 0) as the cluster's genesis: in one transaction,
/// its providers, IDs with their links and certificate bindings into the mirror, its digest
/// into `mykey_meta` and as the head's hash at seq 0; then its `CHAIN` file at seq 0. Refused
/// for a store past seq 0, a cluster with changes, or a cluster with another genesis; the same
/// genesis again changes nothing. `progress` is told the records loaded so far.
pub async fn record(
    c: &mut PgClient,
    reg: Arc<Registry>,
    fs: &dyn Fs,
    progress: &mut dyn FnMut(u64),
) -> Result<Recorded, ClusterError> {
    let seq = reg.store().durable_seq();
    if seq != 0 {
        return Err(ClusterError::NotGenesis(format!(
            "the store is at seq {seq}; a genesis store is a bulk build at seq 0 (mykeyd snapshot build, mykeyd init)"
        )));
    }
    let digest = digest(&reg)?;
    let mut done = Recorded {
        digest,
        ..Recorded::default()
    };
    let loader = MirrorLoader::prepare(c).await?;
    let tx = c.transaction().await.map_err(pg("begin"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(pg("lock the schema"))?;
    let have = recorded(tx.client()).await?;
    if have == digest {
        done.already = true;
        chain::write(fs, &Tail::at(0, digest))?;
        return Ok(done);
    }
    if have != GENESIS {
        return Err(ClusterError::NotGenesis(
            "the cluster has another genesis recorded already".into(),
        ));
    }
    let h = head(tx.client()).await?;
    let rows: i64 = tx
        .query_one("SELECT count(*) FROM change_log", &[])
        .await
        .map_err(pg("count change_log"))?
        .get(0);
    let mirrored: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM providers) + (SELECT count(*) FROM ids)
                  + (SELECT count(*) FROM cert_bindings)",
            &[],
        )
        .await
        .map_err(pg("count the mirror"))?
        .get(0);
    if h.seq != 0 || rows != 0 || mirrored != 0 {
        return Err(ClusterError::NotGenesis(format!(
            "the cluster has changes already (head at seq {}, {rows} change_log rows, {mirrored} mirror rows): a genesis is recorded before the first write",
            h.seq
        )));
    }
    // The store is read on a thread of its own, a few parts ahead of the writes.
    let (send, mut parts) = tokio::sync::mpsc::channel::<Result<Part, ClusterError>>(READ_AHEAD);
    let reader = {
        let reg = reg.clone();
        std::thread::Builder::new()
            .name("mykey-genesis".into())
            .spawn(move || read_parts(&reg, &send))
            .map_err(|e| ClusterError::NotGenesis(format!("start the reader thread: {e}")))?
    };
    let mut loaded = 0u64;
    while let Some(part) = parts.recv().await {
        let part = part?;
        for op in &part.ops {
            match op {
                crate::registry::MirrorOp::Provider(_) => done.providers += 1,
                crate::registry::MirrorOp::Id { .. } => done.ids += 1,
                crate::registry::MirrorOp::Bind { .. } => done.certs += 1,
                _ => {}
            }
        }
        done.links += part.links;
        loader.write(&tx, &part.ops).await?;
        loaded += part.ops.len() as u64;
        progress(loaded);
    }
    let _ = reader.join();
    tx.execute(
        "INSERT INTO mykey_meta (key, value) VALUES ('genesis', $1)",
        &[&format!("{:x}", crate::id::Hex(&digest))],
    )
    .await
    .map_err(pg("record the genesis"))?;
    let moved = tx
        .execute("UPDATE head SET hash = $1 WHERE seq = 0", &[&&digest[..]])
        .await
        .map_err(pg("record the genesis"))?;
    if moved != 1 {
        return Err(ClusterError::NotGenesis(
            "the head moved while the genesis was loaded".into(),
        ));
    }
    tx.commit().await.map_err(pg("commit the genesis"))?;
    chain::write(fs, &Tail::at(0, digest))?;
    Ok(done)
}

/// Sends the store's providers, then IDs, then certificate bindings, as mirror rows in parts of
/// [`GENESIS_CHUNK`] records (that order keeps every foreign key satisfied).
fn read_parts(reg: &Registry, send: &tokio::sync::mpsc::Sender<Result<Part, ClusterError>>) {
    let mirror = reg.mirror_handle();
    let (Ok(actor), Ok(at)) = (ActorId::parse(b"genesis"), Timestamp::from_unix_secs(0)) else {
        return;
    };
    let mut failed = false;
    let mut flush = |puts: &mut Vec<Put>| {
        if puts.is_empty() || failed {
            return;
        }
        let change = Change {
            seq: 0,
            at,
            actor,
            kind: 0,
            puts: std::mem::take(puts),
        };
        let part = mirror
            .ops(&change)
            .map(|ops| Part {
                links: ops
                    .iter()
                    .map(|op| match op {
                        crate::registry::MirrorOp::Id { links, .. } => links.len() as u64,
                        _ => 0,
                    })
                    .sum(),
                ops,
            })
            .map_err(|e| ClusterError::Apply {
                seq: 0,
                source: Box::new(e),
            });
        failed = part.is_err() || send.blocking_send(part).is_err();
    };
    for t in [Table::Providers, Table::Ids, Table::Certs] {
        let mut puts = Vec::with_capacity(GENESIS_CHUNK);
        let walked = reg.store().for_each(t, |k, v| {
            puts.push(Put {
                table: t as u8,
                key: k.to_vec(),
                value: Some(v.to_vec()),
            });
            if puts.len() == GENESIS_CHUNK {
                flush(&mut puts);
            }
        });
        if let Err(e) = walked {
            let _ = send.blocking_send(Err(e.into()));
            return;
        }
        flush(&mut puts);
    }
}
