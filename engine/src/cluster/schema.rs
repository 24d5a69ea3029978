//! The cluster's tables in PostgreSQL and their migrations (`engine/CLUSTER.md`, "Tables").
//! Each migration runs in one transaction and records its number in `mykey_meta`; a database
//! of a newer schema than this build knows is refused, never written.

use super::ClusterError;

/// The migrations, in order: migration `i` (from 0) brings the schema to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE mykey_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint  NOT NULL CHECK (seq >= 0),
    epoch     bigint  NOT NULL CHECK (epoch >= 0),
    hash      bytea   NOT NULL CHECK (length(hash) = 32),
    writer    text    NOT NULL
);
INSERT INTO head (seq, epoch, hash, writer) VALUES (0, 0, '\x0000000000000000000000000000000000000000000000000000000000000000', '');
CREATE TABLE change_log (
    seq     bigint      PRIMARY KEY CHECK (seq >= 1),
    epoch   bigint      NOT NULL,
    at      timestamptz NOT NULL,
    actor   text        NOT NULL,
    kind    smallint    NOT NULL,
    payload bytea       NOT NULL,
    hash    bytea       NOT NULL CHECK (length(hash) = 32)
);
CREATE TABLE providers (
    provider text   PRIMARY KEY,
    seq      bigint NOT NULL
);
CREATE TABLE ids (
    mykey_id char(14) PRIMARY KEY,
    state    smallint NOT NULL CHECK (state BETWEEN 1 AND 4),
    seq      bigint   NOT NULL
);
CREATE TABLE cert_bindings (
    cert     bytea    PRIMARY KEY,
    mykey_id char(14) NOT NULL UNIQUE REFERENCES ids,
    seq      bigint   NOT NULL
);
CREATE TABLE links (
    mykey_id char(14) NOT NULL REFERENCES ids,
    provider text     NOT NULL REFERENCES providers,
    service  text     NOT NULL,
    seq      bigint   NOT NULL,
    PRIMARY KEY (mykey_id, provider)
);
CREATE TABLE id_changes (
    mykey_id char(14) NOT NULL,
    seq      bigint   NOT NULL REFERENCES change_log ON DELETE CASCADE,
    PRIMARY KEY (mykey_id, seq)
);
CREATE TABLE snapshots (
    seq      bigint      NOT NULL,
    hash     bytea       NOT NULL CHECK (length(hash) = 32),
    node     text        NOT NULL,
    taken_at timestamptz NOT NULL,
    PRIMARY KEY (node, seq)
);
",
    r"
-- Where the writer takes forwarded writes: its QUIC address, set once it serves writes
-- (empty while none does).
ALTER TABLE head ADD COLUMN writer_addr text NOT NULL DEFAULT '';
",
    r"
-- Where a recorded snapshot was written (a path or URL, for the operator bootstrapping a node),
-- and the index the pruning's cascade into id_changes needs (its primary key leads with the ID:
-- without this, each pruned row would scan id_changes).
ALTER TABLE snapshots ADD COLUMN location text NOT NULL DEFAULT '';
CREATE INDEX id_changes_seq ON id_changes (seq);
",
];

/// The schema version this build writes and reads.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// The schema version of the database: 0 when it holds none.
pub async fn version(c: &tokio_postgres::Client) -> Result<i64, ClusterError> {
    let pg = |source| ClusterError::Postgres {
        op: "read the schema version",
        source,
    };
    let exists: bool = c
        .query_one("SELECT to_regclass('mykey_meta') IS NOT NULL", &[])
        .await
        .map_err(pg)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = c
        .query_opt(
            "SELECT value FROM mykey_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .map_err(pg)?;
    let v: Option<String> = row.map(|r| r.get(0));
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Creates or migrates the schema to [`VERSION`]; returns the version found before. Refuses a
/// newer schema. Safe to run again, and from several nodes at once (each migration takes a
/// transaction-level advisory lock, and re-reads the version under it).
pub async fn migrate(c: &mut tokio_postgres::Client) -> Result<i64, ClusterError> {
    let before = version(c).await?;
    if before > VERSION {
        return Err(ClusterError::Version {
            found: before,
            supported: VERSION,
        });
    }
    let pg = |source| ClusterError::Postgres {
        op: "migrate",
        source,
    };
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let to = i as i64 + 1;
        let tx = c.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&super::MIGRATE_LOCK])
            .await
            .map_err(pg)?;
        let now = version(tx.client()).await?;
        if now >= to {
            tx.rollback().await.map_err(pg)?;
            continue;
        }
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO mykey_meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&to.to_string()],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        tracing::info!(version = to, "cluster schema migrated");
    }
    Ok(before)
}

/// Checks that the database holds exactly this build's schema.
pub async fn check(c: &tokio_postgres::Client) -> Result<(), ClusterError> {
    match version(c).await? {
        0 => Err(ClusterError::NoSchema),
        v if v == VERSION => Ok(()),
        v if v > VERSION => Err(ClusterError::Version {
            found: v,
            supported: VERSION,
        }),
        // An older schema: `cluster init` migrates it.
        _ => Err(ClusterError::NoSchema),
    }
}
