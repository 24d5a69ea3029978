//! The writer's side of the system of record: taking over (the session advisory lock, then an
//! epoch bump), and committing a batch of changes as one transaction: the fenced `head` update
//! first, then the `change_log` rows with their chain hashes, the relational mirror and the
//! per-ID index (`engine/CLUSTER.md`, "The write path").
//!
//! Never acknowledges anything itself: [`Writer::commit`] returns the new head only once
//! PostgreSQL has committed, and says `Fenced` or `OutcomeUnknown` otherwise.

use std::time::{Duration, SystemTime};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::{ClusterError, SyncCancels, WRITER_LOCK, chain_hash, payload, schema};
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

/// Takes the writer lock for `client`'s session (held until the session ends; taken again in
/// the same session, it stacks); `NotWriter` if another session holds it.
pub async fn try_lock(client: &Client) -> Result<(), ClusterError> {
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

/// The writer's statements, prepared once per connection, so that a batch's statements go
/// out together in one round trip, in order.
struct Stmts {
    head: Statement,
    log: Statement,
    providers: Statement,
    unbind: Statement,
    unlink: Statement,
    forget: Statement,
    ids: Statement,
    links: Statement,
    bind: Statement,
    index: Statement,
}

impl Stmts {
    async fn prepare(c: &Client) -> Result<Self, ClusterError> {
        let prep = async |sql: &str| c.prepare(sql).await.map_err(pg("prepare"));
        Ok(Self {
            head: prep("UPDATE head SET seq = $1, hash = $2 WHERE seq = $3 AND epoch = $4").await?,
            log: prep(
                "INSERT INTO change_log (seq, epoch, at, actor, kind, payload, hash)
                 SELECT s, $2, a, w, k, p, h
                 FROM unnest($1::bigint[], $3::timestamptz[], $4::text[], $5::smallint[],
                             $6::bytea[], $7::bytea[]) AS t(s, a, w, k, p, h)",
            )
            .await?,
            providers: prep(
                "INSERT INTO providers (provider, seq)
                 SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
            )
            .await?,
            unbind: prep("DELETE FROM cert_bindings WHERE cert = ANY($1::bytea[])").await?,
            // `bpchar[]`, the column's own type: against `text[]` PostgreSQL compares the column
            // cast to text, which no index serves, and each batch scanned every link.
            unlink: prep("DELETE FROM links WHERE mykey_id = ANY($1::bpchar[])").await?,
            forget: prep("DELETE FROM ids WHERE mykey_id = ANY($1::bpchar[])").await?,
            ids: prep(
                "INSERT INTO ids (mykey_id, state, seq)
                 SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[])
                 ON CONFLICT (mykey_id) DO UPDATE SET state = EXCLUDED.state, seq = EXCLUDED.seq",
            )
            .await?,
            links: prep(
                "INSERT INTO links (mykey_id, provider, service, seq)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])",
            )
            .await?,
            bind: prep(
                "INSERT INTO cert_bindings (cert, mykey_id, seq)
                 SELECT * FROM unnest($1::bytea[], $2::text[], $3::bigint[])",
            )
            .await?,
            index: prep(
                "INSERT INTO id_changes (mykey_id, seq)
                 SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
            )
            .await?,
        })
    }
}

/// The writer: the node holding the writer lock, on its own dedicated connection.
pub struct Writer {
    client: Client,
    stmts: Stmts,
    node: String,
    head: Head,
    /// The connection's cancelled synchronous-replication waits, when it is watched.
    sync_cancels: Option<SyncCancels>,
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
                "UPDATE head SET epoch = epoch + 1, writer = $1, writer_addr = '' RETURNING seq, epoch, hash",
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
            stmts: Stmts::prepare(&client).await?,
            client,
            node: node.to_owned(),
            head,
            sync_cancels: None,
        })
    }

    /// Watches the writer's connection (made by `connect_*_watched`) for cancelled waits for
    /// the synchronous standbys: a commit that met one is answered `OutcomeUnknown`, not
    /// acknowledged, though PostgreSQL said it committed. A [`Writer::reconnect`] ends the
    /// watch, until this is called again with the new connection's.
    pub fn watch(&mut self, sync_cancels: SyncCancels) {
        self.sync_cancels = Some(sync_cancels);
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
        self.stmts = Stmts::prepare(&client).await?;
        self.client = client;
        self.sync_cancels = None;
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
        let net = Net::of(batch.iter().map(|(c, ops)| (c.seq, ops.as_slice())))?;
        let mut seqs = Vec::with_capacity(batch.len());
        let mut ats = Vec::with_capacity(batch.len());
        let mut actors = Vec::with_capacity(batch.len());
        let mut kinds = Vec::with_capacity(batch.len());
        for (c, _) in batch {
            seqs.push(c.seq as i64);
            ats.push(SystemTime::UNIX_EPOCH + Duration::from_secs(c.at.unix_secs()));
            actors.push(c.actor.as_str());
            kinds.push(i16::from(c.kind));
        }
        let payloads: Vec<&[u8]> = rows.iter().map(|(p, _)| &p[..]).collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|(_, h)| &h[..]).collect();
        let (last_i, seq_i, epoch_i, hash_s) =
            (last as i64, self.head.seq as i64, epoch as i64, &hash[..]);
        let head_params: [&(dyn ToSql + Sync); 4] = [&last_i, &hash_s, &seq_i, &epoch_i];
        let log_params: [&(dyn ToSql + Sync); 7] =
            [&seqs, &epoch_i, &ats, &actors, &kinds, &payloads, &hashes];
        let st = &self.stmts;
        let cancels_before = self.sync_cancels.as_ref().map(SyncCancels::count);
        let tx = self.client.transaction().await.map_err(pg("begin"))?;
        // The statements are sent together (pipelined on the connection) and run in order.
        // First the head: its row lock is held to the commit, so a second writer's transaction
        // waits there and then matches no row; a stale epoch matches none at once. One
        // statement per table follows for the whole batch, whatever its size.
        let (moved, logged, mirrored) = tokio::join!(
            biased;
            tx.execute(&st.head, &head_params),
            tx.execute(&st.log, &log_params),
            net.write(&tx, st, false),
        );
        // A fenced head explains whatever failed after it (the other writer's rows hold these
        // seqs): report the fence.
        if moved.as_ref().is_ok_and(|&n| n != 1) {
            let _ = tx.rollback().await;
            tracing::warn!(node = %self.node, epoch, seq = self.head.seq, "fenced: another writer took over");
            return Err(ClusterError::Fenced {
                expected_seq: self.head.seq,
                epoch,
            });
        }
        moved.map_err(pg("move the head"))?;
        logged.map_err(pg("write change_log"))?;
        mirrored?;
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
        if let (Some(before), Some(now)) = (cancels_before, self.sync_cancels.as_ref())
            && now.count() != before
        {
            // Committed on the primary, perhaps on no standby: a failover may lose it. Not
            // acknowledged; the store stops writing and the node steps down.
            return Err(ClusterError::OutcomeUnknown {
                first,
                last,
                reason: "PostgreSQL committed on the primary, but the wait for its synchronous standbys was cancelled".into(),
            });
        }
        self.head = Head {
            seq: last,
            epoch,
            hash,
        };
        Ok(self.head)
    }
}

/// The mirror's statements on one connection, for loading the rows of the cluster's genesis
/// store (`cluster::genesis`): the same statements and constraints as a batch's, at seq 0, with
/// no per-ID index (a genesis row is no `change_log` row).
pub(super) struct MirrorLoader(Stmts);

impl MirrorLoader {
    pub(super) async fn prepare(c: &Client) -> Result<Self, ClusterError> {
        Ok(Self(Stmts::prepare(c).await?))
    }

    /// Writes `ops` (every record of a part of the genesis store) in `tx`, into mirror tables
    /// that hold none of their keys.
    pub(super) async fn write(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        ops: &[MirrorOp],
    ) -> Result<(), ClusterError> {
        Net::of([(0, ops)])?.write(tx, &self.0, true).await
    }
}

/// An ID's mirror row as a batch leaves it: state code, seq, links (provider, service ID).
type IdRow = (i16, i64, Vec<(String, String)>);

/// What a batch does to the mirror, net: each key's last state in the batch, so that the
/// whole batch is a handful of statements. A certificate bound twice without being unbound in
/// between is an engine bug, refused here; every other impossible state (a certificate still
/// bound elsewhere, an ID holding two certificates, a link to an unknown provider) is refused
/// by the tables' constraints.
#[derive(Default)]
struct Net {
    providers: Vec<(String, i64)>,
    /// ID → its last record (state, seq, links), or `None` when the batch removed it.
    ids: std::collections::BTreeMap<String, Option<IdRow>>,
    /// Certificate → its last binding (ID, seq), or `None` when the batch unbound it.
    certs: std::collections::BTreeMap<Vec<u8>, Option<(String, i64)>>,
    /// Certificates the batch unbound at some point: their old rows go first.
    unbound: std::collections::BTreeSet<Vec<u8>>,
    id_changes: std::collections::BTreeSet<(String, i64)>,
}

impl Net {
    fn of<'a>(
        batch: impl IntoIterator<Item = (u64, &'a [MirrorOp])>,
    ) -> Result<Self, ClusterError> {
        let mut n = Net::default();
        for (change_seq, ops) in batch {
            let seq = change_seq as i64;
            for op in ops {
                match op {
                    MirrorOp::Provider(p) => n.providers.push((p.as_str().to_owned(), seq)),
                    MirrorOp::Id { id, state, links } => {
                        let links = links
                            .iter()
                            .map(|(p, s)| (p.as_str().to_owned(), s.to_string()))
                            .collect();
                        n.ids.insert(
                            id.as_str().to_owned(),
                            Some((MirrorOp::state_code(*state), seq, links)),
                        );
                        n.id_changes.insert((id.as_str().to_owned(), seq));
                    }
                    MirrorOp::Forget { id } => {
                        n.ids.insert(id.as_str().to_owned(), None);
                        n.id_changes.insert((id.as_str().to_owned(), seq));
                    }
                    MirrorOp::Bind { cert, id } => {
                        if let Some(Some(_)) = n.certs.get(cert) {
                            return Err(ClusterError::BadRow {
                                seq: change_seq,
                                what: "it binds a certificate the batch bound already",
                            });
                        }
                        n.certs
                            .insert(cert.clone(), Some((id.as_str().to_owned(), seq)));
                        n.id_changes.insert((id.as_str().to_owned(), seq));
                    }
                    MirrorOp::Unbind { cert } => {
                        n.certs.insert(cert.clone(), None);
                        n.unbound.insert(cert.clone());
                    }
                }
            }
        }
        Ok(n)
    }

    /// Writes the net effect: providers, old bindings removed, IDs and their links replaced,
    /// bindings made, the per-ID index; each foreign key and unique constraint holds at each step.
    /// `inserts_only`: the tables hold none of the batch's keys, so only the inserts run.
    async fn write(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        st: &Stmts,
        inserts_only: bool,
    ) -> Result<(), ClusterError> {
        let (pnames, pseqs): (Vec<&str>, Vec<i64>) =
            self.providers.iter().map(|(p, s)| (p.as_str(), *s)).unzip();
        let unbound: Vec<&[u8]> = self.unbound.iter().map(Vec::as_slice).collect();
        let touched: Vec<&str> = self.ids.keys().map(String::as_str).collect();
        let forgotten: Vec<&str> = self
            .ids
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(id, _)| id.as_str())
            .collect();
        let (mut ids, mut states, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut lids, mut lprov, mut lsvc, mut lseq) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, r) in &self.ids {
            let Some((state, seq, links)) = r else {
                continue;
            };
            ids.push(id.as_str());
            states.push(*state);
            seqs.push(*seq);
            for (p, s) in links {
                lids.push(id.as_str());
                lprov.push(p.as_str());
                lsvc.push(s.as_str());
                lseq.push(*seq);
            }
        }
        let (mut certs, mut cids, mut cseqs) = (Vec::new(), Vec::new(), Vec::new());
        for (cert, b) in &self.certs {
            if let Some((id, seq)) = b {
                certs.push(cert.as_slice());
                cids.push(id.as_str());
                cseqs.push(*seq);
            }
        }
        let (iids, iseqs): (Vec<&str>, Vec<i64>) = self
            .id_changes
            .iter()
            .map(|(i, s)| (i.as_str(), *s))
            .unzip();
        let p_a: [&(dyn ToSql + Sync); 2] = [&pnames, &pseqs];
        let p_b: [&(dyn ToSql + Sync); 1] = [&unbound];
        let p_c: [&(dyn ToSql + Sync); 1] = [&touched];
        let p_d: [&(dyn ToSql + Sync); 1] = [&forgotten];
        let p_e: [&(dyn ToSql + Sync); 3] = [&ids, &states, &seqs];
        let p_f: [&(dyn ToSql + Sync); 4] = [&lids, &lprov, &lsvc, &lseq];
        let p_g: [&(dyn ToSql + Sync); 3] = [&certs, &cids, &cseqs];
        let p_h: [&(dyn ToSql + Sync); 2] = [&iids, &iseqs];
        let m = pg("write the mirror");
        if inserts_only {
            // Into tables that hold none of these keys (the genesis load): no deletes, whose
            // plans, made while the tables were empty, would scan what the load adds.
            let results = tokio::join!(
                biased;
                tx.execute(&st.providers, &p_a),
                tx.execute(&st.ids, &p_e),
                tx.execute(&st.links, &p_f),
                tx.execute(&st.bind, &p_g),
            );
            results.0.map_err(&m)?;
            results.1.map_err(&m)?;
            results.2.map_err(&m)?;
            results.3.map_err(&m)?;
            return Ok(());
        }
        // Sent together, run in this order: each foreign key and unique constraint holds at
        // each step; the first statement to fail is the error.
        let results = tokio::join!(
            biased;
            tx.execute(&st.providers, &p_a),
            tx.execute(&st.unbind, &p_b),
            tx.execute(&st.unlink, &p_c),
            tx.execute(&st.forget, &p_d),
            tx.execute(&st.ids, &p_e),
            tx.execute(&st.links, &p_f),
            tx.execute(&st.bind, &p_g),
            tx.execute(&st.index, &p_h),
        );
        results.0.map_err(&m)?;
        results.1.map_err(&m)?;
        results.2.map_err(&m)?;
        results.3.map_err(&m)?;
        results.4.map_err(&m)?;
        results.5.map_err(&m)?;
        results.6.map_err(&m)?;
        results.7.map_err(&m)?;
        Ok(())
    }
}
