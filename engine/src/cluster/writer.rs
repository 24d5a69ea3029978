//! The writer's side of the system of record: taking over (the session advisory lock, then an
//! epoch bump), and committing a batch of changes as one transaction: the fenced `head` update
//! first, then the `change_log` rows with their chain hashes, the relational mirror and the
//! per-ID index (`engine/CLUSTER.md`, "The write path").
//!
//! Never acknowledges anything itself: [`Writer::commit`] returns the new head only once
//! PostgreSQL has committed, and says `Fenced` or `OutcomeUnknown` otherwise.

use std::time::{Duration, SystemTime};

use tokio_postgres::Client;

use super::{ClusterError, WRITER_LOCK, chain_hash, payload, schema};
use crate::registry::MirrorOp;
use crate::store::Change;

/// Where the log stands: its last seq, the writer epoch, the chain hash at that seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The last committed seq (0: none yet).
    pub seq: u64,
    /// The epoch of the current writer.
    pub epoch: u64,
    /// The chain hash at `seq`.
    pub hash: [u8; 32],
}

fn pg(op: &'static str) -> impl Fn(tokio_postgres::Error) -> ClusterError {
    move |source| ClusterError::Postgres { op, source }
}

fn hash32(v: &[u8]) -> Result<[u8; 32], ClusterError> {
    v.try_into().map_err(|_| ClusterError::BadRow {
        seq: 0,
        what: "a chain hash that is not 32 bytes",
    })
}

/// Reads the head.
pub async fn head(c: &Client) -> Result<Head, ClusterError> {
    let r = c
        .query_one("SELECT seq, epoch, hash FROM head", &[])
        .await
        .map_err(pg("read the head"))?;
    Ok(Head {
        seq: r.get::<_, i64>(0) as u64,
        epoch: r.get::<_, i64>(1) as u64,
        hash: hash32(r.get::<_, &[u8]>(2))?,
    })
}

/// Takes the writer lock for `client`'s session; `NotWriter` if another session holds it.
async fn try_lock(client: &Client) -> Result<(), ClusterError> {
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK])
        .await
        .map_err(pg("take the writer lock"))?
        .get(0);
    if got {
        Ok(())
    } else {
        Err(ClusterError::NotWriter)
    }
}

/// The writer: the node holding the writer lock, on its own dedicated connection.
pub struct Writer {
    client: Client,
    node: String,
    head: Head,
}

impl Writer {
    /// Takes the writer lock on `client` (a connection used for nothing else) and bumps the
    /// epoch; `NotWriter` if another session holds the lock. The caller must catch its store
    /// up to [`Writer::head`] before it commits anything.
    pub async fn take_over(client: Client, node: &str) -> Result<Self, ClusterError> {
        schema::check(&client).await?;
        try_lock(&client).await?;
        let r = client
            .query_one(
                "UPDATE head SET epoch = epoch + 1, writer = $1 RETURNING seq, epoch, hash",
                &[&node],
            )
            .await
            .map_err(pg("bump the epoch"))?;
        let head = Head {
            seq: r.get::<_, i64>(0) as u64,
            epoch: r.get::<_, i64>(1) as u64,
            hash: hash32(r.get::<_, &[u8]>(2))?,
        };
        tracing::info!(
            node,
            epoch = head.epoch,
            seq = head.seq,
            "took over as the cluster writer"
        );
        Ok(Self {
            client,
            node: node.to_owned(),
            head,
        })
    }

    /// Where the log stood after this writer's last commit (or its takeover).
    pub fn head(&self) -> Head {
        self.head
    }

    /// The node name this writer took over as.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Continues on a new connection after the old one was lost, keeping this writer's epoch:
    /// what a writer that does not know it was replaced would do. `NotWriter` if another
    /// session holds the lock now; a commit after a takeover elsewhere is `Fenced`.
    pub async fn reconnect(&mut self, client: Client) -> Result<(), ClusterError> {
        try_lock(&client).await?;
        self.client = client;
        Ok(())
    }

    /// Commits `batch` (changes numbered from `head.seq + 1` on, each with its mirror) in one
    /// transaction. Returns the new head once PostgreSQL has committed.
    pub async fn commit(
        &mut self,
        batch: &[(Change, Vec<MirrorOp>)],
    ) -> Result<Head, ClusterError> {
        let Some((last, _)) = batch.last() else {
            return Ok(self.head);
        };
        let (first, last) = (self.head.seq + 1, last.seq);
        let mut hash = self.head.hash;
        let mut rows = Vec::with_capacity(batch.len());
        for (i, (c, _)) in batch.iter().enumerate() {
            let want = self.head.seq + 1 + i as u64;
            if c.seq != want {
                return Err(ClusterError::OutOfOrder {
                    after: want - 1,
                    got: c.seq,
                });
            }
            let p = payload(c)?;
            hash = chain_hash(&hash, &p);
            rows.push((p, hash));
        }
        let epoch = self.head.epoch;
        let tx = self.client.transaction().await.map_err(pg("begin"))?;
        // First: the head row's lock is held to the commit, so a second writer's transaction
        // waits here and then matches no row; and a stale epoch matches none at once.
        let moved = tx
            .execute(
                "UPDATE head SET seq = $1, hash = $2 WHERE seq = $3 AND epoch = $4",
                &[
                    &(last as i64),
                    &&hash[..],
                    &(self.head.seq as i64),
                    &(epoch as i64),
                ],
            )
            .await
            .map_err(pg("move the head"))?;
        if moved != 1 {
            let _ = tx.rollback().await;
            tracing::warn!(node = %self.node, epoch, seq = self.head.seq, "fenced: another writer took over");
            return Err(ClusterError::Fenced {
                expected_seq: self.head.seq,
                epoch,
            });
        }
        let insert = tx
            .prepare(
                "INSERT INTO change_log (seq, epoch, at, actor, kind, payload, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(pg("prepare"))?;
        for ((c, ops), (p, h)) in batch.iter().zip(&rows) {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(c.at.unix_secs());
            let seq = c.seq as i64;
            tx.execute(
                &insert,
                &[
                    &seq,
                    &(epoch as i64),
                    &at,
                    &c.actor.as_str(),
                    &i16::from(c.kind),
                    &&p[..],
                    &&h[..],
                ],
            )
            .await
            .map_err(pg("write change_log"))?;
            mirror(&tx, seq, ops).await?;
        }
        match tx.commit().await {
            Ok(()) => {}
            // The commit was sent: whether it took cannot be known from here.
            Err(e) if e.is_closed() || e.code().is_none() => {
                return Err(ClusterError::OutcomeUnknown {
                    first,
                    last,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(pg("commit")(e)),
        }
        self.head = Head {
            seq: last,
            epoch,
            hash,
        };
        Ok(self.head)
    }
}

/// Writes one change's mirror rows: providers first, bindings removed, IDs (with their links)
/// written, bindings made, so that every foreign key and unique constraint holds at each step.
async fn mirror(
    tx: &tokio_postgres::Transaction<'_>,
    seq: i64,
    ops: &[MirrorOp],
) -> Result<(), ClusterError> {
    let m = pg("write the mirror");
    for op in ops {
        if let MirrorOp::Provider(p) = op {
            tx.execute(
                "INSERT INTO providers (provider, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&p.as_str(), &seq],
            )
            .await
            .map_err(&m)?;
        }
    }
    for op in ops {
        if let MirrorOp::Unbind { cert } = op {
            tx.execute("DELETE FROM cert_bindings WHERE cert = $1", &[cert])
                .await
                .map_err(&m)?;
        }
    }
    for op in ops {
        match op {
            MirrorOp::Id { id, state, links } => {
                let id = id.as_str();
                tx.execute(
                    "INSERT INTO ids (mykey_id, state, seq) VALUES ($1, $2, $3)
                     ON CONFLICT (mykey_id) DO UPDATE SET state = EXCLUDED.state, seq = EXCLUDED.seq",
                    &[&id, &MirrorOp::state_code(*state), &seq],
                )
                .await
                .map_err(&m)?;
                tx.execute("DELETE FROM links WHERE mykey_id = $1", &[&id])
                    .await
                    .map_err(&m)?;
                for (p, s) in links {
                    tx.execute(
                        "INSERT INTO links (mykey_id, provider, service, seq) VALUES ($1, $2, $3, $4)",
                        &[&id, &p.as_str(), &s.to_string(), &seq],
                    )
                    .await
                    .map_err(&m)?;
                }
                index(tx, id, seq).await?;
            }
            MirrorOp::Forget { id } => {
                let id = id.as_str();
                tx.execute("DELETE FROM links WHERE mykey_id = $1", &[&id])
                    .await
                    .map_err(&m)?;
                tx.execute("DELETE FROM ids WHERE mykey_id = $1", &[&id])
                    .await
                    .map_err(&m)?;
                index(tx, id, seq).await?;
            }
            _ => {}
        }
    }
    for op in ops {
        if let MirrorOp::Bind { cert, id } = op {
            tx.execute(
                "INSERT INTO cert_bindings (cert, mykey_id, seq) VALUES ($1, $2, $3)",
                &[cert, &id.as_str(), &seq],
            )
            .await
            .map_err(&m)?;
            index(tx, id.as_str(), seq).await?;
        }
    }
    Ok(())
}

/// Records that change `seq` concerns `id`, for `history`.
async fn index(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    seq: i64,
) -> Result<(), ClusterError> {
    tx.execute(
        "INSERT INTO id_changes (mykey_id, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&id, &seq],
    )
    .await
    .map_err(pg("write the mirror"))?;
    Ok(())
}
