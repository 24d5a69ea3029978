//! `mykeyd`: the MyKey engine's command line.
//!
//! A thin binary: it parses flags, reads the clock once for `now`, calls the library and maps
//! errors to exit codes (0 success, 1 failure or a check that found a problem, 2 bad usage).
//! It serves (`serve`, with `init` for a development setup), builds, inspects, verifies,
//! queries, backs up and restores stores, checks trust-anchor directories, applies revocation
//! pushes by hand, and keeps the operator's client CA (`pki`). The process concerns of `serve`
//! live in `mykeyd/serve.rs` (and `notify.rs`, systemd's protocol); the CA directory in
//! `mykeyd/pki.rs`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use mykey_engine::id::{ActorId, MyKeyId, ProviderId, PushId, Timestamp};
use mykey_engine::jpki::{Anchors, Jpki, JpkiConfig};
use mykey_engine::population::{self, BuildOptions, Progress};
use mykey_engine::registry::{Lookup, OpKind, Registry, RegistryConfig};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_engine::store::{self, StoreConfig, Table};

#[path = "mykeyd/notify.rs"]
mod notify;
#[path = "mykeyd/pki.rs"]
mod pki;
#[path = "mykeyd/serve.rs"]
mod serve;

/// The embedded sample data the demo store is built from.
const SAMPLE_PROVIDERS: &str = include_str!("../../snapshots/sample/providers.txt");
const SAMPLE_POPULATION: &str = include_str!("../../snapshots/sample/population.csv");

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
        /// counter, municipal, portal, partner or operator.
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

fn now() -> Result<Timestamp, String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    Timestamp::from_unix_secs(secs).map_err(|e| e.to_string())
}

fn open_fs(dir: &Path) -> Result<Arc<dyn Fs>, String> {
    if !dir.is_dir() {
        return Err(format!("{}: no such store directory", dir.display()));
    }
    Ok(Arc::new(
        RealFs::new(dir).map_err(|e| format!("{}: {e}", dir.display()))?,
    ))
}

fn open_registry(dir: &Path) -> Result<Registry, String> {
    let (reg, rec) = Registry::open_with_report(open_fs(dir)?, RegistryConfig::default())
        .map_err(|e| e.to_string())?;
    if rec.replayed > 0 || rec.torn_bytes > 0 {
        eprintln!(
            "recovered {}: snapshots at seq {}, {} logged changes replayed, {} torn bytes cut",
            dir.display(),
            rec.snapshot_seq,
            rec.replayed,
            rec.torn_bytes
        );
    }
    Ok(reg)
}

fn answer(l: &Lookup) -> String {
    match l {
        Lookup::Linked(s) => format!("linked: service ID {s}"),
        Lookup::NotLinked => "not linked for this provider".into(),
        Lookup::UnknownId => "unknown MyKey ID".into(),
        Lookup::Provisional => {
            "provisional (not usable until a municipal counter confirms it)".into()
        }
        Lookup::Suspended => "suspended (certificate revoked)".into(),
        Lookup::Deleted => "deleted".into(),
    }
}

fn lookup_line(reg: &Registry, at: Timestamp, id: &str, provider: &str) -> Result<String, String> {
    let id = MyKeyId::parse(id.as_bytes()).map_err(|e| format!("{id:?}: {e}"))?;
    let p = ProviderId::parse(provider.as_bytes()).map_err(|e| format!("{provider:?}: {e}"))?;
    let l = reg.lookup(at, &id, &p).map_err(|e| e.to_string())?;
    Ok(format!("{id} @ {p}: {}", answer(&l)))
}

fn demo(dir: &Path, queries: &[String]) -> Result<(), String> {
    let at = now()?;
    if !queries.len().is_multiple_of(2) {
        return Err("queries come in pairs: MYKEY_ID PROVIDER_ID".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir).map_err(|e| e.to_string())?);
    if !fs.exists(store::manifest::NAME) {
        let opts = BuildOptions {
            at,
            actor: ActorId::parse(b"demo-bulk-load").map_err(|e| e.to_string())?,
            store: StoreConfig {
                ids_shards: 4,
                certs_shards: 4,
                revoked_shards: 1,
            },
            hash_key: None,
        };
        let s = population::build(
            &*fs,
            SAMPLE_PROVIDERS.as_bytes(),
            SAMPLE_POPULATION.as_bytes(),
            &opts,
            &mut |_| {},
        )
        .map_err(|e| e.to_string())?;
        println!(
            "built the sample store in {}: {} IDs, {} links, {} providers",
            dir.display(),
            s.ids,
            s.links,
            s.providers
        );
    }
    let reg = Registry::open(fs, RegistryConfig::default()).map_err(|e| e.to_string())?;
    println!(
        "opened {} at seq {} ({} IDs)",
        dir.display(),
        reg.store().durable_seq(),
        table_entries(&reg, Table::Ids)
    );
    if queries.is_empty() {
        let tour: Vec<(String, String)> = SAMPLE_POPULATION
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("mykey_id"))
            .enumerate()
            // The first rows, and every row that is not active (provisional, suspended).
            .filter(|(i, l)| *i < 4 || !l.contains(",active,"))
            .filter_map(|(_, l)| {
                let mut c = l.split(',');
                let id = c.next()?.to_owned();
                let provider = c
                    .nth(2)
                    .and_then(|links| links.split(';').next())
                    .and_then(|pair| pair.split('=').next())
                    .filter(|p| !p.is_empty())
                    .unwrap_or("A-α1-0001")
                    .to_owned();
                Some((id, provider))
            })
            .chain([
                ("1C2410DF79DGEL".to_owned(), "13101-LIB-0001".to_owned()),
                ("ZZZZZZZZZZZZZZ".to_owned(), "A-α1-0001".to_owned()),
            ])
            .collect();
        for (id, p) in tour {
            println!("{}", lookup_line(&reg, at, &id, &p)?);
        }
        println!(
            "ask your own: mykeyd demo MYKEY_ID PROVIDER_ID (providers: {})",
            reg.providers()
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for q in queries.chunks(2) {
        println!("{}", lookup_line(&reg, at, &q[0], &q[1])?);
    }
    Ok(())
}

/// A CSV field: quoted (RFC 4180) when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

fn table_entries(reg: &Registry, t: Table) -> u64 {
    reg.store()
        .stats()
        .iter()
        .find(|s| s.table == t)
        .map_or(0, |s| {
            s.shard_entries.iter().sum::<u64>() + s.delta_keys as u64
        })
}

fn open_input(path: &Path) -> Result<Box<dyn BufRead>, String> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            std::io::stdin(),
        )));
    }
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
}

fn build(a: &BuildArgs) -> Result<(), String> {
    let at = match a.at {
        Some(s) => Timestamp::from_unix_secs(s).map_err(|e| e.to_string())?,
        None => now()?,
    };
    let opts = BuildOptions {
        at,
        actor: ActorId::parse(a.actor.as_bytes()).map_err(|e| format!("--actor: {e}"))?,
        store: StoreConfig {
            ids_shards: a.shards,
            certs_shards: a.shards,
            ..StoreConfig::default()
        },
        hash_key: None,
    };
    opts.store.shard_counts().map_err(|e| e.to_string())?;
    let providers = open_input(&a.providers)?;
    let population = open_input(&a.population)?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let fs = RealFs::new(&a.out).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut report = |p: Progress| match p {
        Progress::Rows(n) => eprintln!(
            "  {n} rows parsed ({:.0} rows/s)",
            n as f64 / start.elapsed().as_secs_f64()
        ),
        Progress::Writing => eprintln!(
            "  all rows parsed after {:.1} s; writing shard files",
            start.elapsed().as_secs_f64()
        ),
        Progress::Wrote(name) => {
            eprintln!("  wrote {name} ({:.1} s)", start.elapsed().as_secs_f64())
        }
    };
    let s = population::build(&fs, providers, population, &opts, &mut report)
        .map_err(|e| e.to_string())?;
    println!(
        "built {}: {} IDs, {} links, {} providers in {:.1} s",
        a.out.display(),
        s.ids,
        s.links,
        s.providers,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn inspect(dir: &Path, verify: bool) -> Result<(), String> {
    let fs = open_fs(dir)?;
    let start = Instant::now();
    let ins = store::inspect(&*fs, verify, &mut |name| {
        if verify {
            eprintln!("  verified {name}");
        }
    })
    .map_err(|e| e.to_string())?;
    let m = &ins.manifest;
    println!("store {}", dir.display());
    println!(
        "  MANIFEST format version {}, snapshot seq {}, log {}",
        m.version,
        m.seq,
        if m.log_required {
            "required from the next seq on"
        } else {
            "not started yet"
        }
    );
    for (t, counts) in &ins.shard_entries {
        let total: u64 = counts.iter().sum();
        println!(
            "  {:<9} {:>12} records in {} shard(s): {}",
            t.name(),
            total,
            counts.len(),
            counts
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("  snapshot files: {} bytes", ins.snapshot_bytes);
    for s in &ins.segments {
        println!(
            "  log {} (format version {}): first seq {}, {} changes, {} bytes{}{}",
            s.name,
            s.version,
            s.first_seq,
            s.changes,
            s.bytes,
            if s.sealed { ", sealed" } else { "" },
            if s.torn {
                ", torn tail (cut on next open)"
            } else {
                ""
            }
        );
    }
    if verify {
        println!(
            "verify: OK, every checksum and invariant holds ({:.1} s)",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Demo { dir, queries } => demo(&dir, &queries),
        Cmd::Snapshot(SnapshotCmd::Build(a)) => build(&a),
        Cmd::Snapshot(SnapshotCmd::Inspect { dir }) => inspect(&dir, false),
        Cmd::Snapshot(SnapshotCmd::Verify { dir }) => inspect(&dir, true),
        Cmd::Lookup {
            store,
            id,
            provider,
        } => {
            let reg = open_registry(&store.dir)?;
            println!("{}", lookup_line(&reg, now()?, &id, &provider)?);
            Ok(())
        }
        Cmd::Show { store, id } => {
            let reg = open_registry(&store.dir)?;
            let id = MyKeyId::parse(id.as_bytes()).map_err(|e| format!("{id:?}: {e}"))?;
            let Some(v) = reg.describe(&id).map_err(|e| e.to_string())? else {
                return Err(format!("{id}: unknown MyKey ID"));
            };
            println!(
                "{id}: {} since {} by {}",
                v.state.name(),
                v.state_at,
                v.state_by
            );
            match v.cert {
                Some(c) => println!("  certificate {c}"),
                None => println!("  no certificate bound"),
            }
            for (p, s, at, by) in v.links {
                println!("  {p} = {s} (linked {at} by {by})");
            }
            Ok(())
        }
        Cmd::Export { store, provider } => {
            let reg = open_registry(&store.dir)?;
            let p =
                ProviderId::parse(provider.as_bytes()).map_err(|e| format!("{provider:?}: {e}"))?;
            let out = std::io::stdout();
            let mut out = std::io::BufWriter::new(out.lock());
            let mut err = Ok(());
            writeln!(out, "mykey_id,state,service_id,linked_at,linked_by")
                .map_err(|e| e.to_string())?;
            let n = reg
                .export(&p, |r| {
                    if err.is_ok() {
                        err = writeln!(
                            out,
                            "{},{},{},{},{}",
                            r.id,
                            r.state.name(),
                            csv_field(&r.service.to_string()),
                            r.linked_at,
                            csv_field(r.linked_by.as_str())
                        );
                    }
                })
                .map_err(|e| e.to_string())?;
            err.and_then(|()| out.flush()).map_err(|e| e.to_string())?;
            eprintln!("{n} rows");
            Ok(())
        }
        Cmd::Log { store, id } => {
            let fs = open_fs(&store.dir)?;
            let id = id
                .map(|s| MyKeyId::parse(s.as_bytes()).map_err(|e| format!("{s:?}: {e}")))
                .transpose()?;
            store::read_log(&*fs, |c| {
                if let Some(id) = &id
                    && !c.puts.iter().any(|p| {
                        (p.table == Table::Ids as u8 && p.key == id.as_bytes())
                            || p.value.as_deref() == Some(id.as_bytes())
                    })
                {
                    return;
                }
                let kind = OpKind::from_u8(c.kind).map_or("unknown", OpKind::name);
                let tables: Vec<&str> = c
                    .puts
                    .iter()
                    .filter_map(|p| Table::from_id(p.table).map(Table::name))
                    .collect();
                println!(
                    "seq {} at {} by {}: {kind} ({} writes: {})",
                    c.seq,
                    c.at,
                    c.actor,
                    c.puts.len(),
                    tables.join(" ")
                );
            })
            .map_err(|e| e.to_string())
        }
        Cmd::Anchors { dir } => {
            let anchors = load_anchors(&dir)?;
            for a in anchors.all() {
                let hex = |b: &[u8]| mykey_engine::id::Hex(b).to_string();
                println!(
                    "{}: key id {}, valid {} to {}, SHA-256 {}",
                    a.name(),
                    hex(a.key_id()),
                    a.not_before(),
                    a.not_after(),
                    hex(a.fingerprint())
                );
            }
            println!("{} user-authentication CA generations", anchors.all().len());
            Ok(())
        }
        Cmd::Revoke(a) => revoke(&a),
        Cmd::Init { dir, listen, admin } => serve::init(&dir, listen, admin),
        Cmd::Serve {
            config,
            dev,
            check_config,
        } => {
            let path = match (config, dev) {
                (Some(c), _) => c,
                (None, Some(dir)) => {
                    let c = dir.join("mykeyd.toml");
                    if !c.exists() {
                        serve::init(
                            &dir,
                            "127.0.0.1:4433".parse().map_err(|e| format!("{e}"))?,
                            "127.0.0.1:9464".parse().map_err(|e| format!("{e}"))?,
                        )?;
                    }
                    c
                }
                (None, None) => return Err("give --config FILE or --dev".into()),
            };
            if check_config {
                let cfg = serve::check_all(&path)?;
                for line in &cfg.ignored_env {
                    eprintln!("warning: {line}");
                }
                println!(
                    "{}: configuration, TLS key and certificates, anchors, store (opened read-only, lock free) and ports are usable",
                    path.display()
                );
                return Ok(());
            }
            match serve::serve(&path)? {
                serve::Stopped::Clean => Ok(()),
                serve::Stopped::FsyncStuck => std::process::exit(serve::EXIT_FSYNC_STUCK),
            }
        }
        Cmd::Pki(cmd) => pki_cmd(cmd),
        Cmd::Backup { store, out } => {
            let (src, dest) = (existing_fs(&store.dir)?, new_fs(&out)?);
            let start = Instant::now();
            let r = store::backup::backup(&*src, &*dest, &mut copied(start))
                .map_err(|e| e.to_string())?;
            println!(
                "backed up {} to {}: snapshot seq {}, changes 1..={}, {} files, {} bytes, verified, in {:.2} s",
                store.dir.display(),
                out.display(),
                r.snapshot_seq,
                r.last_seq,
                r.files,
                r.bytes,
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Restore { from, dir } => {
            let (src, dest) = (existing_fs(&from)?, new_fs(&dir)?);
            let start = Instant::now();
            let r =
                store::backup::restore(src, dest, &mut copied(start)).map_err(|e| e.to_string())?;
            println!(
                "restored {} into {}: snapshot seq {}, changes 1..={}, opened and verified in {:.2} s",
                from.display(),
                dir.display(),
                r.snapshot_seq,
                r.last_seq,
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Compact { store } => {
            let reg = open_registry(&store.dir)?;
            let start = Instant::now();
            let seq = reg
                .store()
                .compact_with_progress(&mut |name| {
                    eprintln!("  wrote {name} ({:.1} s)", start.elapsed().as_secs_f64())
                })
                .map_err(|e| e.to_string())?;
            println!(
                "compacted {} at seq {seq} in {:.2} s",
                store.dir.display(),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn pki_cmd(cmd: PkiCmd) -> Result<(), String> {
    use pki::CaDir;
    let at = now()?;
    let show = |e: &pki::Entry| {
        let date =
            |t: u64| Timestamp::from_unix_secs(t).map_or_else(|_| t.to_string(), |t| t.to_string());
        let status = e
            .revoked_at
            .map_or_else(|| "valid".to_owned(), |t| format!("revoked at {}", date(t)));
        format!(
            "serial {} {} {} {status}, expires {} ({})",
            e.serial,
            e.role,
            e.name,
            date(e.not_after),
            if e.providers.is_empty() {
                "no providers".to_owned()
            } else {
                e.providers.join(",")
            }
        )
    };
    match cmd {
        PkiCmd::Init {
            ca,
            org,
            name,
            years,
            crl_days,
        } => {
            let v = mykey_engine::server::pki::Validity {
                not_before: Timestamp::from_unix_secs(at.unix_secs().saturating_sub(60))
                    .map_err(|e| e.to_string())?,
                not_after: at.plus_secs(years * 365 * 86_400),
            };
            CaDir::init(&ca.dir, &org, &name, v, at, crl_days)?;
            println!(
                "created the client CA {}/{} (key {} mode 0600) and CRL 1",
                ca.dir.display(),
                pki::CA_CERT,
                pki::CA_KEY
            );
        }
        PkiCmd::Issue {
            ca,
            role,
            providers,
            name,
            out,
        } => {
            let role = mykey_engine::server::Role::parse(&role).ok_or_else(|| {
                format!("--role {role:?}: counter, municipal, portal, partner or operator")
            })?;
            let e = CaDir::open(&ca.dir)?.issue_terminal(
                &name,
                role,
                &providers,
                out.out(),
                at,
                out.days,
            )?;
            let p = out.out.display();
            println!("issued {} -> {p}.pem, {p}.key", show(&e));
        }
        PkiCmd::Server { ca, hosts, out } => {
            let e = CaDir::open(&ca.dir)?.issue_server(&hosts, out.out(), at, out.days)?;
            let p = out.out.display();
            println!(
                "issued {} -> {p}.pem, {p}.key; send SIGHUP to load it",
                show(&e)
            );
        }
        PkiCmd::Revoke {
            ca,
            serial,
            name,
            crl_days,
        } => {
            let mut d = CaDir::open(&ca.dir)?;
            let serials: Vec<u64> = match (serial, &name) {
                (Some(s), _) => vec![s],
                (None, Some(n)) => d
                    .ledger()
                    .iter()
                    .filter(|e| &e.name == n && e.revoked_at.is_none())
                    .map(|e| e.serial)
                    .collect(),
                (None, None) => Vec::new(),
            };
            if serials.is_empty() {
                return Err(format!(
                    "no valid certificate named {:?}",
                    name.unwrap_or_default()
                ));
            }
            let number = d.revoke(&serials, at, crl_days)?;
            println!(
                "revoked serial {}; published CRL {number} in {}; send SIGHUP to load it",
                serials
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                ca.dir.join(pki::CA_CRL).display()
            );
        }
        PkiCmd::Crl { ca, days } => {
            let n = CaDir::open(&ca.dir)?.publish_crl(at, days)?;
            println!(
                "published CRL {n} (valid {days} days) in {}; send SIGHUP to load it",
                ca.dir.join(pki::CA_CRL).display()
            );
        }
        PkiCmd::List { ca } => {
            for e in CaDir::open(&ca.dir)?.ledger() {
                println!("{}", show(e));
            }
        }
    }
    Ok(())
}

/// A store directory that must exist already (`RealFs::new` would create it).
fn existing_fs(dir: &Path) -> Result<Arc<dyn Fs>, String> {
    if !dir.is_dir() {
        return Err(format!("{}: no such directory", dir.display()));
    }
    Ok(Arc::new(
        RealFs::new(dir).map_err(|e| format!("{}: {e}", dir.display()))?,
    ))
}

/// A directory to copy a store into, created if missing.
fn new_fs(dir: &Path) -> Result<Arc<dyn Fs>, String> {
    Ok(Arc::new(
        RealFs::new(dir).map_err(|e| format!("{}: {e}", dir.display()))?,
    ))
}

/// Progress of a copy: each file as it lands.
fn copied(start: Instant) -> impl FnMut(&str, u64) {
    move |name, bytes| {
        eprintln!(
            "  copied {name} ({bytes} bytes, {:.1} s)",
            start.elapsed().as_secs_f64()
        )
    }
}

fn load_anchors(dir: &Path) -> Result<Anchors, String> {
    Anchors::load_dir(dir).map_err(|e| e.to_string())
}

fn revoke(a: &RevokeArgs) -> Result<(), String> {
    let at = now()?;
    let jpki = Jpki::new(load_anchors(&a.anchors)?, JpkiConfig::default());
    let push = PushId::parse(a.push_id.as_bytes()).map_err(|e| format!("--push-id: {e}"))?;
    let actor = ActorId::parse(a.actor.as_bytes()).map_err(|e| format!("--actor: {e}"))?;
    let (path, is_crl) = match (&a.crl, &a.serials) {
        (Some(p), None) => (p, true),
        (None, Some(p)) => (p, false),
        _ => return Err("give exactly one of --crl and --serials".into()),
    };
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reg = open_registry(&a.store.dir)?;
    let start = Instant::now();
    let s = if is_crl {
        reg.push_crl(at, actor, &jpki, push, &bytes)
    } else {
        reg.push_serials(at, actor, &jpki, push, &bytes)
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "{}push {push}: {} entries, {} newly revoked, {} already known, {} MyKey IDs suspended ({:.2} s, durable)",
        if s.replayed { "already applied: " } else { "" },
        s.entries,
        s.revoke.newly_revoked,
        s.revoke.already_known,
        s.revoke.suspended,
        start.elapsed().as_secs_f64()
    );
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("ABC123"), "ABC123");
        assert_eq!(csv_field("A,B"), "\"A,B\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
