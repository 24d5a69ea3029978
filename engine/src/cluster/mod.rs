//! The cluster's system of record in PostgreSQL (`engine/CLUSTER.md`): the schema and its
//! migrations (`schema`), the writer's batched, fenced commit of changes with their chain hash
//! (`writer`) and that writer behind a store's group commit (`record`), a follower checking and
//! applying the rows (`tail`), a serving node's loop of following, election and leading
//! (`node`), the chain's verification and per-ID history (`history`), and tagged snapshots, the
//! bootstrap from one and the pruning below them (`snapshot`), and the genesis store every
//! node starts from (`genesis`).
//!
//! Owns every SQL statement and the chain hash. Never decides a domain rule (the registry does,
//! before a change reaches here) and never acknowledges a write itself: it reports whether
//! PostgreSQL committed, refused, fenced, or left the outcome unknown, and the caller answers.

pub mod chain;
pub mod genesis;
pub mod history;
pub mod node;
pub mod record;
pub mod schema;
pub mod snapshot;
pub mod tail;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::AsyncMessage;

use crate::store::Change;

/// A connection to PostgreSQL (the driver's client).
pub type PgClient = tokio_postgres::Client;

/// The chain hash before the first change.
pub const GENESIS: [u8; 32] = [0; 32];
/// How long a connection attempt may take before PostgreSQL counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock a writer holds for as long as its session lives ("mykey" in ASCII).
pub const WRITER_LOCK: i64 = 0x6D_796B_6579;
/// The transaction-level advisory lock a migration holds, so that nodes migrating at once run
/// each migration once.
pub const MIGRATE_LOCK: i64 = WRITER_LOCK + 1;
/// Rows read from `change_log` per query by verification and history.
pub const ROWS_PER_QUERY: i64 = 1000;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// PostgreSQL could not be reached, or the connection failed.
    #[error("postgres {op}: {source}")]
    Postgres {
        /// What was being done: `connect`, `migrate`, `commit`, …
        op: &'static str,
        /// What the driver said.
        source: tokio_postgres::Error,
    },
    /// TLS 1.3 could not be set up with the provider.
    #[error("postgres TLS: {0}")]
    Tls(rustls::Error),
    /// Connecting took longer than [`CONNECT_TIMEOUT`].
    #[error("postgres connect: no answer within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    /// The database holds a schema newer than this build knows.
    #[error(
        "the cluster schema is version {found}; this build knows up to {supported}: upgrade mykeyd first"
    )]
    Version {
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The database holds no cluster schema (run `mykeyd cluster init`).
    #[error("the database holds no mykey cluster schema: run `mykeyd cluster init --pg URL`")]
    NoSchema,
    /// The `head` update matched no row: another writer took over (a newer epoch) or moved the
    /// head. Nothing was committed.
    #[error(
        "fenced: head is no longer at seq {expected_seq} in epoch {epoch}; another writer took over"
    )]
    Fenced {
        /// The seq this writer expected the head at.
        expected_seq: u64,
        /// This writer's epoch.
        epoch: u64,
    },
    /// The commit was sent and its result not received (or its synchronous replication wait
    /// was cancelled): the batch may or may not be durable.
    #[error("the commit of seqs {first}..={last} may or may not have been applied: {reason}")]
    OutcomeUnknown {
        /// The batch's first seq.
        first: u64,
        /// Its last seq.
        last: u64,
        /// What happened.
        reason: String,
    },
    /// Another session holds the writer lock.
    #[error("another node holds the writer lock")]
    NotWriter,
    /// A batch whose seqs do not continue the head.
    #[error("change seq {got} does not follow seq {after}")]
    OutOfOrder {
        /// The head's seq.
        after: u64,
        /// The change's seq.
        got: u64,
    },
    /// A row checked and then refused by the local store or registry.
    #[error("applying change_log seq {seq}: {source}")]
    Apply {
        /// The row's seq.
        seq: u64,
        /// What the registry said.
        source: Box<crate::registry::RegistryError>,
    },
    /// The node's own files (its `CHAIN` file, its local log) failed.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// A change that cannot be encoded (over a log limit).
    #[error("change {seq}: {source}")]
    Encode {
        /// The change.
        seq: u64,
        /// Why.
        source: crate::store::StoreError,
    },
    /// Pruning was asked for and no snapshot is recorded: a new node would have nothing to
    /// start from.
    #[error(
        "no snapshot is recorded (mykeyd cluster snapshot): pruning change_log would leave a new node nothing to start from"
    )]
    NoSnapshot,
    /// A genesis that cannot be recorded, or a store that is not the cluster's.
    #[error("genesis: {0}")]
    NotGenesis(String),
    /// Writing an extract failed.
    #[error("write the extract: {0}")]
    Extract(std::io::Error),
    /// A restored store would not open.
    #[error("open the restored store: {0}")]
    Open(Box<crate::registry::RegistryError>),
    /// Taking or restoring a snapshot failed.
    #[error(transparent)]
    Backup(#[from] crate::store::backup::BackupError),
    /// A `change_log` row that breaks the log: a gap, a payload that does not decode, or a
    /// chain hash that does not match the recomputed one.
    #[error("change_log seq {seq}: {what}")]
    BadRow {
        /// The row's seq (or the one expected, for a gap).
        seq: u64,
        /// What is wrong.
        what: &'static str,
    },
}

/// `SHA-256(payload)`: what the chain commits to of a change. An extract gives it in place of
/// the payload of a change that concerns another ID (`history::extract`).
pub fn payload_digest(payload: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, payload);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `SHA-256(prev ‖ digest)`: the chain hash after the change whose chain hash is `prev`, of a
/// change whose payload digest is `digest`.
pub fn chain_step(prev: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev);
    ctx.update(digest);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `SHA-256(prev ‖ SHA-256(payload))`: the chain hash of a change whose payload is `payload`,
/// after the change whose chain hash is `prev`.
pub fn chain_hash(prev: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    chain_step(prev, &payload_digest(payload))
}

/// Checks one `change_log` row (columns `seq, payload, hash`) read in seq order: it is seq
/// `expected`, its payload is a change, and its stored hash is [`chain_hash`] of `prev` and it.
/// Returns the change, its payload and its hash. Verification, tailing and resuming all read
/// rows through this.
pub(crate) fn check_row<'r>(
    row: &'r tokio_postgres::Row,
    expected: u64,
    prev: &[u8; 32],
) -> Result<(Change, &'r [u8], [u8; 32]), ClusterError> {
    let seq = row.get::<_, i64>(0) as u64;
    if seq != expected {
        return Err(ClusterError::BadRow {
            seq: expected,
            what: "missing: change_log has a gap here",
        });
    }
    let payload: &[u8] = row.get(1);
    let change = Change::decode(seq, payload).ok_or(ClusterError::BadRow {
        seq,
        what: "its payload is not a change",
    })?;
    let hash = chain_hash(prev, payload);
    if row.get::<_, &[u8]>(2) != hash {
        return Err(ClusterError::BadRow {
            seq,
            what: "its chain hash is not SHA-256 of the hash before it and its payload's digest: another history than the one checked up to here",
        });
    }
    Ok((change, payload, hash))
}

/// The stored chain hash of the `change_log` row at `seq` (`None`: no such row); `op` names
/// the caller's operation in a connection error.
pub(crate) async fn hash_at(
    c: &PgClient,
    seq: u64,
    op: &'static str,
) -> Result<Option<Vec<u8>>, ClusterError> {
    let r = c
        .query_opt(
            "SELECT hash FROM change_log WHERE seq = $1",
            &[&(seq as i64)],
        )
        .await
        .map_err(|source| ClusterError::Postgres { op, source })?;
    Ok(r.map(|r| r.get(0)))
}

/// A change's payload as `change_log` stores it.
pub fn payload(c: &Change) -> Result<Vec<u8>, ClusterError> {
    c.payload()
        .map_err(|source| ClusterError::Encode { seq: c.seq, source })
}

/// Connects to PostgreSQL at `url` (a libpq connection string or URL) without TLS, for a
/// database on loopback or a Unix socket; the connection task runs on the current runtime.
pub async fn connect_plain(url: &str) -> Result<tokio_postgres::Client, ClusterError> {
    Ok(connect_plain_watched(url).await?.0)
}

/// As [`connect_plain`], with the connection's [`SyncCancels`].
pub async fn connect_plain_watched(
    url: &str,
) -> Result<(tokio_postgres::Client, SyncCancels), ClusterError> {
    let pg = |source| ClusterError::Postgres {
        op: "connect",
        source,
    };
    let (client, conn) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| ClusterError::ConnectTimeout)?
    .map_err(pg)?;
    Ok((client, drive(conn)))
}

/// Connects to PostgreSQL at `url` over TLS 1.3 (rustls, the aws-lc-rs provider), checking the
/// server's certificate against `roots`.
pub async fn connect_tls(
    url: &str,
    roots: rustls::RootCertStore,
) -> Result<tokio_postgres::Client, ClusterError> {
    Ok(connect_tls_watched(url, roots).await?.0)
}

/// As [`connect_tls`], with the connection's [`SyncCancels`].
pub async fn connect_tls_watched(
    url: &str,
    roots: rustls::RootCertStore,
) -> Result<(tokio_postgres::Client, SyncCancels), ClusterError> {
    let pg = |source| ClusterError::Postgres {
        op: "connect",
        source,
    };
    let cfg = rustls::ClientConfig::builder_with_provider(crate::server::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ClusterError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(cfg);
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, tls))
        .await
        .map_err(|_| ClusterError::ConnectTimeout)?
        .map_err(pg)?;
    Ok((client, drive(conn)))
}

/// How PostgreSQL begins the warning it sends when a commit's wait for its synchronous
/// standbys is cancelled (`pg_cancel_backend`, a statement timeout, a terminated session): the
/// transaction committed on the primary and may be on no standby.
pub const SYNC_CANCEL_WARNING: &str = "canceling wait for synchronous replication";

/// How many times a connection's commit wait for synchronous standbys was cancelled (see
/// [`SYNC_CANCEL_WARNING`]): PostgreSQL reports that commit as a success with a warning, and a
/// writer must not acknowledge it (`engine/CLUSTER.md`, "PostgreSQL failover").
#[derive(Clone, Debug, Default)]
pub struct SyncCancels(Arc<AtomicU64>);

impl SyncCancels {
    /// The count so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Runs a connection's I/O on the current runtime until it ends, logging how it ended and
/// every notice; counts the cancelled synchronous-replication waits. A notice is read before
/// the reply that follows it on the wire, so a commit's warning is counted by the time its
/// `COMMIT` returns.
fn drive<S, T>(mut conn: tokio_postgres::Connection<S, T>) -> SyncCancels
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cancels = SyncCancels::default();
    let counted = cancels.clone();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(n)))
                    if n.message().starts_with(SYNC_CANCEL_WARNING) =>
                {
                    counted.0.fetch_add(1, Ordering::AcqRel);
                    tracing::error!(op = "postgres commit", notice = %n.message(), detail = n.detail().unwrap_or(""), "a commit's wait for the synchronous standbys was cancelled: committed on the primary, maybe on no standby");
                }
                Some(Ok(AsyncMessage::Notice(n))) => {
                    tracing::info!(op = "postgres", severity = n.severity(), notice = %n.message(), "postgres notice");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(op = "postgres connection", error = %e, "the postgres connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    cancels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_hash_is_sha256_of_the_previous_hash_and_the_payloads_digest() {
        let h = chain_hash(&GENESIS, b"abc");
        assert_ne!(h, chain_hash(&GENESIS, b"abd"));
        assert_ne!(h, chain_hash(&h, b"abc"), "the previous hash is part of it");
        assert_eq!(h, chain_step(&GENESIS, &payload_digest(b"abc")));
        // Computed independently: SHA-256(32 zero bytes ‖ SHA-256("abc")).
        let inner = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"abc");
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&[0u8; 32]);
        ctx.update(inner.as_ref());
        assert_eq!(&h[..], ctx.finish().as_ref());
    }
}
