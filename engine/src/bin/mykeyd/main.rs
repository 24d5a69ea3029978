//! `mykeyd`: the MyKey engine's command line.
//!
//! A thin binary: it parses flags, reads the clock once for `now`, calls the library and maps
//! errors to exit codes (0 success, 1 failure or a check that found a problem, 2 bad usage).
//! It serves (`serve`, with `init` for a development setup), builds, inspects, verifies,
//! queries, backs up and restores stores, checks trust-anchor directories, applies revocation
//! pushes by hand, and keeps the operator's client CA (`pki`). The process concerns of `serve`
//! live in `mykeyd/serve.rs` (and `notify.rs`, systemd's protocol); the CA directory in
//! `mykeyd/pki.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mykey_engine::registry::StoreConfig;

mod anchors;
mod backup;
mod cluster;
mod common;
mod compact;
mod demo;
mod export;
mod log;
mod notify;
mod pki;
mod pki_cmd;
mod query;
mod revoke;
mod serve;
mod snapshot;

#[derive(Parser)]
#[command(
    name = "mykeyd",
    version,
    about = "MyKey engine: serve, build, inspect, back up and query MyKey stores; keep the operator CA"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a store from the embedded sample data (once) and answer lookups from it.
    Demo {
        /// Where the demo store lives.
        #[arg(long, default_value = "mykey-demo")]
        dir: PathBuf,
        /// Lookups to answer, as pairs: MYKEY_ID PROVIDER_ID [MYKEY_ID PROVIDER_ID ...].
        /// Without any, the demo answers a tour of the sample data.
        queries: Vec<String>,
    },
    /// Bulk load and check snapshot files.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Answer one lookup: which service ID PROVIDER has for MYKEY_ID.
    Lookup {
        #[command(flatten)]
        store: StoreArg,
        /// The MyKey ID.
        id: String,
        /// The service provider ID.
        provider: String,
    },
    /// Show everything a store holds for one MyKey ID: state, certificate, links, who and when.
    Show {
        #[command(flatten)]
        store: StoreArg,
        /// The MyKey ID.
        id: String,
    },
    /// Write a provider's (MyKey ID, service ID) pairs as CSV to stdout.
    Export {
        #[command(flatten)]
        store: StoreArg,
        /// The service provider ID.
        provider: String,
    },
    /// List the changes in the write-ahead log: seq, time, actor, operation, keys touched.
    Log {
        #[command(flatten)]
        store: StoreArg,
        /// Only changes touching this MyKey ID.
        #[arg(long)]
        id: Option<String>,
    },
    /// Fold the log into new snapshot files.
    Compact {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Copy a store, while it is open and serving, into DIR (new or empty): a consistent
    /// snapshot plus log that opens as a store, verified before this returns.
    Backup {
        #[command(flatten)]
        store: StoreArg,
        /// The backup directory (new or empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into DIR (new or empty): copy and verify, then open (replaying the log).
    Restore {
        /// The backup directory (written by `mykeyd backup`).
        #[arg(long)]
        from: PathBuf,
        /// The store directory to create (new or empty).
        #[arg(long = "store", short = 's')]
        dir: PathBuf,
    },
    /// The operator's client CA: issue terminal and server certificates, revoke them, publish
    /// the CRL the server reloads on SIGHUP (ops/RUNBOOK.md).
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Load a trust-anchor directory and list its JPKI authentication CA generations; exit 1
    /// naming the file that is refused.
    Anchors {
        /// The directory of CA certificates (.pem, .crt, .cer, .der).
        dir: PathBuf,
    },
    /// Apply a partner's revocation push by hand: a DER CRL or a serial list (engine/JPKI.md).
    Revoke(RevokeArgs),
    /// Create a development setup: operator PKI, terminal certificates per role, a development
    /// JPKI generation with simulated cards, the sample store, and mykeyd.toml.
    Init {
        /// Where to create it.
        #[arg(long, default_value = "mykey-dev")]
        dir: PathBuf,
        /// QUIC address written into the config.
        #[arg(long, default_value = "127.0.0.1:4433")]
        listen: std::net::SocketAddr,
        /// Admin HTTP address written into the config.
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: std::net::SocketAddr,
    },
    /// The cluster's system of record in PostgreSQL (engine/CLUSTER.md).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Who changed what and when for one MyKey ID, from the cluster's PostgreSQL, each change
    /// with its seq and chain hash.
    History {
        /// The MyKey ID.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        pg: PgArgs,
        /// Also write the ID's extract to FILE: its changes in full and every other change from
        /// its first to --to by digest only, checkable against a published head with `mykeyd
        /// cluster check-extract` (engine/CLUSTER.md, "Provable history").
        #[arg(long)]
        extract: Option<PathBuf>,
        /// The last seq of the extract (default: the head); publish the head at it.
        #[arg(long, requires = "extract")]
        to: Option<u64>,
    },
    /// Serve mykey/1 over QUIC until SIGTERM (SIGHUP reloads certificates and the client CRL).
    Serve {
        /// The configuration file (see `mykeyd init` for an example with every option).
        #[arg(long, required_unless_present = "dev")]
        config: Option<PathBuf>,
        /// Serve the development setup in DIR (created by `mykeyd init` first if missing).
        #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "mykey-dev")]
        dev: Option<PathBuf>,
        /// Load and check everything (config, certificates, anchors, store), then exit.
        #[arg(long)]
        check_config: bool,
    },
}

#[derive(Args)]
struct PgArgs {
    /// The PostgreSQL connection string or URL (libpq syntax).
    #[arg(long = "pg")]
    url: String,
    /// CA certificates (PEM) to check the server's certificate against; connects over TLS 1.3
    /// when given, without TLS otherwise (loopback and Unix sockets only).
    #[arg(long = "pg-ca")]
    ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Create the cluster schema, or migrate it to this build's version; refused on a newer one.
    /// With --genesis, also record a bulk-built store (seq 0) as the cluster's genesis: its
    /// rows into the relational mirror, its digest as the chain hash at seq 0, its CHAIN file
    /// written; copy that store to every node afterwards.
    Init {
        #[command(flatten)]
        pg: PgArgs,
        /// The genesis store (a `mykeyd snapshot build` or `mykeyd init` store, at seq 0).
        #[arg(long)]
        genesis: Option<PathBuf>,
    },
    /// Recompute the chain hash over change_log; exit 1 naming the first row that breaks it.
    Verify {
        #[command(flatten)]
        pg: PgArgs,
        /// The first seq to check (the hash before it is taken as stored).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// The last seq to check (default: the head).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Take a tagged backup of a node's store (open and serving, or not) into OUT, check its
    /// tag (the store's CHAIN file) against change_log and record it in `snapshots`.
    Snapshot {
        #[command(flatten)]
        pg: PgArgs,
        #[command(flatten)]
        store: StoreArg,
        /// The snapshot directory (new or empty).
        #[arg(long)]
        out: PathBuf,
        /// The node whose store it is (its `[cluster] node`).
        #[arg(long)]
        node: String,
    },
    /// Check an extract (`mykeyd history --extract`) without PostgreSQL: the chain recomputed
    /// over it, and its end compared with the published head; list the ID's changes.
    CheckExtract {
        /// The extract file.
        file: PathBuf,
        /// The published head it must end at: SEQ:HASH (64 hex digits).
        #[arg(long)]
        head: Option<String>,
    },
    /// List the recorded snapshots, newest first.
    Snapshots {
        #[command(flatten)]
        pg: PgArgs,
    },
    /// Make a new or wiped node's store from a tagged snapshot: its tag checked against
    /// change_log first, then copied, verified, opened, and its chain head written; `mykeyd
    /// serve` then tails from there.
    Bootstrap {
        #[command(flatten)]
        pg: PgArgs,
        /// The snapshot directory (written by `mykeyd cluster snapshot`).
        #[arg(long)]
        from: PathBuf,
        /// The node's store directory to create (new or empty).
        #[arg(long = "store", short = 's')]
        dir: PathBuf,
    },
    /// Delete the change_log rows below the oldest recorded snapshot, in batches.
    Prune {
        #[command(flatten)]
        pg: PgArgs,
        /// First forget every recorded snapshot but the KEEP newest (their files are not
        /// touched).
        #[arg(long)]
        keep: Option<usize>,
    },
}

#[derive(Args)]
struct RevokeArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The trust-anchor directory the CRL or serial list is checked against.
    #[arg(long)]
    anchors: PathBuf,
    /// The push id: the same id with the same file changes nothing the second time.
    #[arg(long)]
    push_id: String,
    /// A DER X.509 CRL.
    #[arg(long, conflicts_with = "serials", required_unless_present = "serials")]
    crl: Option<PathBuf>,
    /// A serial list.
    #[arg(long)]
    serials: Option<PathBuf>,
    /// Who is pushing, for the audit trail.
    #[arg(long, default_value = "operator-by-hand")]
    actor: String,
}

#[derive(Args)]
struct CaDirArg {
    /// The CA directory (client-ca.pem, client-ca.key, client-ca.crl, ledger.tsv).
    #[arg(long = "dir")]
    dir: PathBuf,
}

/// Where and for how long a certificate is issued.
#[derive(Args)]
struct IssueOut {
    /// Path prefix of the files written: OUT.pem and OUT.key.
    #[arg(long)]
    out: PathBuf,
    /// Days it is valid (never beyond the CA).
    #[arg(long, default_value_t = 397)]
    days: u64,
    /// Overwrite OUT.pem and OUT.key if they exist (rotating in place).
    #[arg(long)]
    replace: bool,
}

impl IssueOut {
    fn out(&self) -> pki::Out<'_> {
        pki::Out {
            prefix: &self.out,
            replace: self.replace,
        }
    }
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create a new client CA and an empty CRL in DIR.
    Init {
        #[command(flatten)]
        ca: CaDirArg,
        /// The CA's organisation (O).
        #[arg(long)]
        org: String,
        /// The CA's name (CN).
        #[arg(long)]
        name: String,
        /// Years the CA is valid.
        #[arg(long, default_value_t = 10)]
        years: u64,
        /// Days the first CRL is valid.
        #[arg(long, default_value_t = 7)]
        crl_days: u64,
    },
    /// Issue a terminal certificate: OUT.pem and OUT.key (mode 0600).
    Issue {
        #[command(flatten)]
        ca: CaDirArg,
        /// counter, municipal, portal, partner, operator, or node (a cluster node forwarding writes).
        #[arg(long)]
        role: String,
        /// A provider the counter acts for (repeat; counters only, at least one).
        #[arg(long = "provider")]
        providers: Vec<String>,
        /// The certificate's name (CN), e.g. the terminal's asset tag.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        out: IssueOut,
    },
    /// Issue (or rotate) the server's certificate: OUT.pem and OUT.key; then SIGHUP the server.
    Server {
        #[command(flatten)]
        ca: CaDirArg,
        /// A DNS name or IP address clients connect to (repeat).
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[command(flatten)]
        out: IssueOut,
    },
    /// Revoke certificates and publish the new CRL; then SIGHUP the server.
    Revoke {
        #[command(flatten)]
        ca: CaDirArg,
        /// The serial to revoke (see `list`).
        #[arg(long, required_unless_present = "name", conflicts_with = "name")]
        serial: Option<u64>,
        /// Revoke every valid certificate with this name.
        #[arg(long)]
        name: Option<String>,
        /// Days the CRL is valid.
        #[arg(long, default_value_t = 7)]
        crl_days: u64,
    },
    /// Publish the CRL again with a fresh nextUpdate (run it well before the last one lapses).
    Crl {
        #[command(flatten)]
        ca: CaDirArg,
        /// Days the CRL is valid.
        #[arg(long, default_value_t = 7)]
        days: u64,
    },
    /// List the certificates issued: serial, status, role, expiry, name, providers.
    List {
        #[command(flatten)]
        ca: CaDirArg,
    },
}

#[derive(Args)]
struct StoreArg {
    /// The store directory.
    #[arg(long = "store", short = 's')]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Turn a population file into snapshot files directly, without the log.
    Build(BuildArgs),
    /// Print what a store holds: counts per shard, seq, format version, log segments.
    Inspect {
        /// The store directory.
        dir: PathBuf,
    },
    /// Check every checksum and invariant; exit 1 naming the first problem.
    Verify {
        /// The store directory.
        dir: PathBuf,
    },
    /// Print the store's applied seq and state digest (SHA-256 over every record, sorted):
    /// two replicas hold the same state exactly when their digests are equal.
    Digest {
        /// The store directory (opened, so not while a server holds it).
        dir: PathBuf,
    },
}

#[derive(Args)]
struct BuildArgs {
    /// The population file (format: snapshots/POPULATION.md), or - for standard input.
    #[arg(long)]
    population: PathBuf,
    /// The provider list: one service provider ID per line.
    #[arg(long)]
    providers: PathBuf,
    /// The new store's directory (must not hold a store).
    #[arg(long)]
    out: PathBuf,
    /// Shards of the ids and certs tables.
    #[arg(long, default_value_t = StoreConfig::default().ids_shards)]
    shards: u16,
    /// Registration time recorded for every row, Unix seconds (default: now).
    #[arg(long)]
    at: Option<u64>,
    /// Actor recorded for every row.
    #[arg(long, default_value = "operator-bulk-load")]
    actor: String,
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Demo { dir, queries } => demo::demo(&dir, &queries),
        Cmd::Snapshot(SnapshotCmd::Build(a)) => snapshot::build(&a),
        Cmd::Snapshot(SnapshotCmd::Inspect { dir }) => snapshot::inspect(&dir, false),
        Cmd::Snapshot(SnapshotCmd::Verify { dir }) => snapshot::inspect(&dir, true),
        Cmd::Snapshot(SnapshotCmd::Digest { dir }) => snapshot::digest(&dir),
        Cmd::Lookup {
            store,
            id,
            provider,
        } => query::lookup(&store.dir, &id, &provider),
        Cmd::Show { store, id } => query::show(&store.dir, &id),
        Cmd::Export { store, provider } => export::export(&store.dir, &provider),
        Cmd::Log { store, id } => log::log(&store.dir, id.as_deref()),
        Cmd::Compact { store } => compact::compact(&store.dir),
        Cmd::Backup { store, out } => backup::backup(&store.dir, &out),
        Cmd::Restore { from, dir } => backup::restore(&from, &dir),
        Cmd::Pki(cmd) => pki_cmd::run(cmd),
        Cmd::Anchors { dir } => anchors::list(&dir),
        Cmd::Revoke(a) => revoke::revoke(&a),
        Cmd::Init { dir, listen, admin } => serve::init(&dir, listen, admin),
        Cmd::Serve {
            config,
            dev,
            check_config,
        } => serve::command(config, dev, check_config),
        Cmd::Cluster(ClusterCmd::Init { pg, genesis }) => {
            cluster::init(&pg.url, pg.ca.as_deref(), genesis.as_deref())
        }
        Cmd::Cluster(ClusterCmd::Verify { pg, from, to }) => {
            cluster::verify(&pg.url, pg.ca.as_deref(), from, to)
        }
        Cmd::Cluster(ClusterCmd::Snapshot {
            pg,
            store,
            out,
            node,
        }) => cluster::snapshot(&pg.url, pg.ca.as_deref(), &store.dir, &out, &node),
        Cmd::Cluster(ClusterCmd::Snapshots { pg }) => cluster::snapshots(&pg.url, pg.ca.as_deref()),
        Cmd::Cluster(ClusterCmd::Bootstrap { pg, from, dir }) => {
            cluster::bootstrap(&pg.url, pg.ca.as_deref(), &from, &dir)
        }
        Cmd::Cluster(ClusterCmd::Prune { pg, keep }) => {
            cluster::prune(&pg.url, pg.ca.as_deref(), keep)
        }
        Cmd::History {
            id,
            pg,
            extract,
            to,
        } => cluster::history(&pg.url, pg.ca.as_deref(), &id, extract.as_deref(), to),
        Cmd::Cluster(ClusterCmd::CheckExtract { file, head }) => {
            cluster::check_extract(&file, head.as_deref())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mykeyd: {e}");
            ExitCode::FAILURE
        }
    }
}
