//! `mykeyd init` and `mykeyd serve`: the development setup a newcomer starts with, and the
//! server process (config, logs, admin endpoint, QUIC endpoint, SIGHUP reload, SIGTERM drain).
//!
//! Owns process concerns only: reading files, signals, exit codes. The serving itself is the
//! library's `server`; what is served is the registry and the JPKI layer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mykey_engine::client::ClientTls;
use mykey_engine::cluster;
use mykey_engine::id::{ActorId, Timestamp};
use mykey_engine::jpki::dev::{DevCa, DevKey, pem};
use mykey_engine::jpki::{Anchors, Jpki, JpkiConfig};
use mykey_engine::population::{self, BuildOptions};
use mykey_engine::registry::Registry;
use mykey_engine::registry::StoreConfig;
use mykey_engine::server::admin::{self, Finding, Readiness};
use mykey_engine::server::config::{self, Config, LogFormat};
use mykey_engine::server::dev::{DEV_CA_NAME, DEV_CA_ORG};
use mykey_engine::server::forward::Forwarder;
use mykey_engine::server::pki::Validity;
use mykey_engine::server::{Limits, Role, Server, ServerTls, Service, system_clock};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_engine::store::{self, CompactionPolicy};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::common::{SAMPLE_POPULATION, SAMPLE_PROVIDERS};
use super::notify::{notify, watchdog_period};
use super::pki::{CaDir, Out};

/// How long SIGTERM waits for requests in flight.
const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Years the development certificates are valid.
const DEV_YEARS: u64 = 2;

/// The terminals `mykeyd init` issues: file name, role, providers.
const DEV_TERMINALS: [(&str, Role, &[&str]); 6] = [
    ("counter", Role::Counter, &["A-α1-0001", "13101-LIB-0001"]),
    ("municipal", Role::Municipal, &[]),
    ("portal", Role::Portal, &[]),
    ("partner", Role::Partner, &[]),
    ("operator", Role::Operator, &[]),
    // A cluster node's own certificate, to forward writes to the writer.
    ("node", Role::Node, &[]),
];

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Creates a complete development setup in `dir`: operator PKI (server certificate, client CA,
/// one terminal certificate per role), a development JPKI generation and three simulated
/// cards, the sample store, and `mykeyd.toml`. Refuses to overwrite an existing setup.
pub fn init(dir: &Path, listen: SocketAddr, admin_listen: SocketAddr) -> Result<(), String> {
    let cfg_path = dir.join("mykeyd.toml");
    if cfg_path.exists() {
        return Err(format!(
            "{} exists already; remove {} to start afresh",
            cfg_path.display(),
            dir.display()
        ));
    }
    let now = system_clock();
    let from = Timestamp::from_unix_secs(now.unix_secs().saturating_sub(86_400))
        .map_err(|e| e.to_string())?;
    let until = now.plus_secs(DEV_YEARS * 365 * 86_400);
    eprintln!("generating the development PKI in {} ...", dir.display());
    // The same CA directory an operator keeps with `mykeyd pki`, so `mykeyd pki issue
    // --dir DIR/pki` and `revoke` work on a development setup too.
    let p = dir.join("pki");
    let days = DEV_YEARS * 365;
    let mut ca = CaDir::init(
        &p,
        DEV_CA_ORG,
        DEV_CA_NAME,
        Validity {
            not_before: from,
            not_after: until,
        },
        now,
        days,
    )?;
    ca.issue_server(
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
        Out {
            prefix: &p.join("server"),
            replace: false,
        },
        now,
        days,
    )?;
    for (name, role, providers) in DEV_TERMINALS {
        let providers: Vec<String> = providers.iter().map(|s| (*s).to_owned()).collect();
        ca.issue_terminal(
            &format!("dev-{name}"),
            role,
            &providers,
            Out {
                prefix: &p.join(format!("terminals/{name}")),
                replace: false,
            },
            now,
            days,
        )?;
    }
    // A development JPKI generation and three cards it issued.
    let ca = DevCa::auth(0x0d0e_0001, from, until).map_err(|e| e.to_string())?;
    write(&dir.join("jpki-anchors/dev-auth-ca.pem"), ca.pem())?;
    // Its key stays outside the anchor directory: load generators issue more simulated cards.
    write(
        &dir.join("jpki-ca.key"),
        pem("PRIVATE KEY", &ca.key().pkcs8().map_err(|e| e.to_string())?),
    )?;
    for n in 1..=3u64 {
        let key = DevKey::generate(2048).map_err(|e| e.to_string())?;
        let cn = format!("DEVCARD{n:07}13101001A");
        let cert = ca
            .issue(&key, &cn, &(0x0d00 + n).to_be_bytes(), from, until)
            .map_err(|e| e.to_string())?;
        write(&dir.join(format!("cards/card-{n}.der")), cert)?;
        write(
            &dir.join(format!("cards/card-{n}.key")),
            key.pkcs8().map_err(|e| e.to_string())?,
        )?;
    }
    // The sample store.
    let store_dir = dir.join("store");
    std::fs::create_dir_all(&store_dir).map_err(|e| format!("{}: {e}", store_dir.display()))?;
    let fs = RealFs::new(&store_dir).map_err(|e| e.to_string())?;
    let opts = BuildOptions {
        at: now,
        actor: ActorId::parse(b"dev-init").map_err(|e| e.to_string())?,
        store: StoreConfig {
            ids_shards: 4,
            certs_shards: 4,
            revoked_shards: 1,
        },
        hash_key: None,
    };
    population::build(
        &fs,
        SAMPLE_PROVIDERS.as_bytes(),
        SAMPLE_POPULATION.as_bytes(),
        &opts,
        &mut |_| {},
    )
    .map_err(|e| e.to_string())?;
    write(&cfg_path, config::example(listen, admin_listen))?;
    eprintln!(
        "wrote {}: pki/ (server, client CA, terminals/<role>.pem), jpki-anchors/, cards/, store/",
        cfg_path.display()
    );
    Ok(())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let v: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if v.is_empty() {
        return Err(format!("{}: no CERTIFICATE", path.display()));
    }
    Ok(v)
}

/// Reads the TLS material the config names.
pub fn load_tls(cfg: &Config) -> Result<ServerTls, String> {
    let key = PrivateKeyDer::from_pem_file(&cfg.tls.key)
        .map_err(|e| format!("{}: {e}", cfg.tls.key.display()))?;
    let client_crls = match &cfg.tls.client_crl {
        None => Vec::new(),
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            if bytes.starts_with(b"-----BEGIN") {
                CertificateRevocationListDer::pem_slice_iter(&bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{}: {e}", p.display()))?
            } else {
                vec![CertificateRevocationListDer::from(bytes)]
            }
        }
    };
    Ok(ServerTls {
        chain: read_certs(&cfg.tls.cert)?,
        key,
        client_cas: read_certs(&cfg.tls.client_ca)?,
        client_crls,
    })
}

/// Everything `serve` and a reload need, loaded and checked: the config, the TLS material
/// (built into the server configuration, so a key that does not match its certificate is
/// refused) and the JPKI anchors.
pub fn check(cfg_path: &Path) -> Result<(Config, ServerTls, Anchors), String> {
    let cfg = Config::load(cfg_path).map_err(|e| e.to_string())?;
    let tls = load_tls(&cfg)?;
    mykey_engine::server::server_config(tls.clone())
        .map_err(|e| format!("{}: {e}", cfg.tls.cert.display()))?;
    let anchors = Anchors::load_dir(&cfg.jpki.anchors).map_err(|e| e.to_string())?;
    Ok((cfg, tls, anchors))
}

/// `serve --check-config`: everything [`check`] does, and everything else `serve` will use,
/// opened as `serve` would but changing nothing: the store read-only (MANIFEST, every snapshot
/// header, every log segment scanned, the lock free) and both listening ports bindable.
/// Returns the first problem.
pub fn check_all(cfg_path: &Path) -> Result<Config, String> {
    let (cfg, ..) = check(cfg_path)?;
    let dir = &cfg.store.dir;
    no_store(&cfg)?;
    let fs = RealFs::new(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    store::inspect(&fs, &mykey_engine::registry::SCHEMA, false, &mut |_| {})
        .map_err(|e| e.to_string())?;
    drop(fs.lock().map_err(|e| {
        format!(
            "{}: {e} (stop the other mykeyd, or the tool holding the store, first)",
            dir.join(store::fs::LOCK_NAME).display()
        )
    })?);
    std::net::UdpSocket::bind(cfg.server.listen)
        .map_err(|e| format!("server.listen {}: cannot bind: {e}", cfg.server.listen))?;
    std::net::TcpListener::bind(cfg.server.admin_listen).map_err(|e| {
        format!(
            "server.admin_listen {}: cannot bind: {e}",
            cfg.server.admin_listen
        )
    })?;
    Ok(cfg)
}

/// An error naming what to do when the configured store directory holds no store: a
/// cluster node bootstraps from a recorded snapshot, a single node is built or initialised.
fn no_store(cfg: &Config) -> Result<(), String> {
    let dir = &cfg.store.dir;
    if dir.join(store::manifest::NAME).exists() {
        return Ok(());
    }
    Err(match &cfg.cluster {
        Some(_) => format!(
            "{}: no store here (no MANIFEST); a new or wiped cluster node starts from a recorded snapshot: `mykeyd cluster snapshots --pg URL`, then `mykeyd cluster bootstrap --pg URL --from SNAPSHOT --store {}` (engine/CLUSTER.md, \"Bootstrap and replacement\")",
            dir.display(),
            dir.display()
        ),
        None => format!(
            "{}: no store here (no MANIFEST); build one with `mykeyd snapshot build` or `mykeyd init`",
            dir.display()
        ),
    })
}

fn init_logs(cfg: &Config) {
    let level = match cfg.log.level.as_str() {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}

/// Exit status of a `serve` that stopped with a log fsync still stuck: every acknowledged
/// write is durable, but the writes waiting on that fsync were answered `OUTCOME_UNKNOWN`.
pub const EXIT_FSYNC_STUCK: i32 = 3;
/// How long a stop waits for the compactor thread after the drain.
const COMPACTOR_JOIN_GRACE: Duration = Duration::from_secs(5);

/// How a `serve` ended.
pub enum Stopped {
    /// Drained and stopped cleanly.
    Clean,
    /// Stopped with a log fsync stuck (the process should exit with [`EXIT_FSYNC_STUCK`]).
    FsyncStuck,
    /// A cluster node that had stopped serving (exit with [`EXIT_CLUSTER_STOPPED`]).
    Cluster,
}

/// Runs the server until SIGTERM or SIGINT.
pub fn serve(cfg_path: &Path) -> Result<Stopped, String> {
    let (cfg, tls, anchors) = check(cfg_path)?;
    init_logs(&cfg);
    for line in &cfg.ignored_env {
        tracing::warn!("{line}");
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.server.worker_threads > 0 {
        rt.worker_threads(cfg.server.worker_threads);
    }
    let rt = rt.enable_all().build().map_err(|e| e.to_string())?;
    let stopped = rt.block_on(run(cfg_path.to_owned(), cfg, tls, anchors));
    // Writes stuck in an fsync hold blocking threads that will not return: do not wait for
    // them (dropping the runtime would).
    rt.shutdown_timeout(Duration::from_millis(500));
    stopped
}

/// Exit status of a cluster node that stopped serving (a gap, a chain mismatch, a local
/// failure: the reason is logged and was on `/readyz` until the stop).
pub const EXIT_CLUSTER_STOPPED: i32 = 4;
/// How long a writer stepping down waits for requests in flight before it reopens its store.
const STEP_DOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a stop waits for the cluster thread.
const CLUSTER_JOIN_GRACE: Duration = Duration::from_secs(5);

/// The process's signals, set up once for every life of the store.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

/// How one life of the store ended.
enum Life {
    /// The process stops.
    Stop(Stopped),
    /// The node stepped down as the cluster's writer: open the store again, as a follower,
    /// serving on the same address.
    Reopen(SocketAddr),
}

async fn run(
    cfg_path: PathBuf,
    cfg: Config,
    tls: ServerTls,
    anchors: Anchors,
) -> Result<Stopped, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let ready = Arc::new(Readiness::default());
    let (admin_addr, _admin) = admin::serve(cfg.server.admin_listen, ready.clone())
        .await
        .map_err(|e| format!("admin {}: {e}", cfg.server.admin_listen))?;
    let mut sig = Signals {
        hup: signal(SignalKind::hangup()).map_err(|e| e.to_string())?,
        term: signal(SignalKind::terminate()).map_err(|e| e.to_string())?,
        int: signal(SignalKind::interrupt()).map_err(|e| e.to_string())?,
    };
    if let Some(period) = watchdog_period() {
        tokio::spawn(async move {
            loop {
                notify("WATCHDOG=1");
                tokio::time::sleep(period).await;
            }
        });
    }
    let mut loaded = Some((cfg, tls, anchors));
    let mut listen = None;
    loop {
        // A reopen reads the configuration again, as a restart would.
        let (cfg, tls, anchors) = match loaded.take() {
            Some(l) => l,
            None => check(&cfg_path)?,
        };
        match life(
            &cfg_path, cfg, tls, anchors, listen, admin_addr, &ready, &mut sig,
        )
        .await?
        {
            Life::Stop(s) => return Ok(s),
            Life::Reopen(addr) => listen = Some(addr),
        }
    }
}

/// The cluster's part of a node, while it serves.
struct Clustered {
    state: Arc<cluster::node::State>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// The cluster membership of a node listening on `listen`.
fn membership(
    c: &config::ClusterSection,
    listen: SocketAddr,
) -> Result<cluster::node::Membership, String> {
    // Other nodes forward writes to the address given, else to the one listened on, if it is
    // one they can reach.
    let advertise = c
        .advertise
        .or_else(|| (!listen.ip().is_unspecified() && listen.port() != 0).then_some(listen));
    if advertise.is_none() {
        tracing::warn!(
            node = c.node,
            "[cluster] advertise is not set and [server] listen is not an address other nodes reach: while this node is the writer, writes sent to the other nodes are answered NO_WRITER"
        );
    }
    Ok(cluster::node::Membership {
        node: c.node.clone(),
        pg: c.pg.clone(),
        tail_pg: c.tail_pg.clone().unwrap_or_else(|| c.pg.clone()),
        roots: c.pg_ca.as_deref().map(super::cluster::roots).transpose()?,
        advertise,
    })
}

/// The forwarder of a follower's writes to the writer, if `[cluster]` names this node's
/// certificate.
fn forwarder(
    c: &config::ClusterSection,
    server_ca: &Path,
    state: &Arc<cluster::node::State>,
) -> Result<Option<Arc<Forwarder>>, String> {
    let (Some(cert), Some(key)) = (&c.node_cert, &c.node_key) else {
        tracing::warn!(
            node = c.node,
            "[cluster] node_cert is not set: as a follower this node answers writes NO_WRITER instead of forwarding them"
        );
        return Ok(None);
    };
    let tls = ClientTls::from_pem_files(cert, key, server_ca)?;
    let state = state.clone();
    let f = Forwarder::new(tls, &c.server_name, Arc::new(move || state.writer_addr()))
        .map_err(|e| format!("the forwarder's endpoint: {e}"))?;
    Ok(Some(Arc::new(f)))
}

/// One life of the store: opened, served until a signal stops the process or the node steps
/// down as the cluster's writer.
#[allow(clippy::too_many_arguments)]
async fn life(
    cfg_path: &Path,
    cfg: Config,
    tls: ServerTls,
    anchors: Anchors,
    listen: Option<SocketAddr>,
    admin_addr: SocketAddr,
    ready: &Readiness,
    sig: &mut Signals,
) -> Result<Life, String> {
    ready.set_phase(Some("starting"));
    no_store(&cfg)
        .inspect_err(|e| tracing::error!(op = "open", error = %e, "cannot open the store"))?;
    let fs: Arc<dyn Fs> = Arc::new(
        RealFs::new(&cfg.store.dir).map_err(|e| format!("{}: {e}", cfg.store.dir.display()))?,
    );
    let (registry, rec) = Registry::open_with_report(fs.clone(), cfg.registry.registry_config())
        .map_err(|e| {
            let e = format!("{}: {e}", cfg.store.dir.display());
            tracing::error!(op = "open", error = %e, "cannot open the store");
            e
        })?;
    tracing::info!(
        store = %cfg.store.dir.display(),
        snapshot_seq = rec.snapshot_seq,
        replayed = rec.replayed,
        torn_bytes = rec.torn_bytes,
        "store open"
    );
    let jpki = Jpki::new(
        anchors,
        JpkiConfig {
            leaf_cache_entries: cfg.jpki.leaf_cache_entries,
            challenges_max: mykey_engine::jpki::challenge::CHALLENGES_MAX,
            challenge_ttl_secs: cfg.jpki.challenge_ttl_secs,
        },
    );
    let service = Arc::new(Service {
        registry,
        jpki,
        clock: system_clock,
    });
    // A cluster node's store is a follower's before anything is served: it takes no local
    // write until the node is elected.
    let (cluster_done, mut cluster_ended) = tokio::sync::oneshot::channel();
    let clustered = match &cfg.cluster {
        None => None,
        Some(c) => {
            let state = Arc::new(cluster::node::State::default());
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let thread = cluster::node::spawn(
                membership(c, listen.unwrap_or(cfg.server.listen))?,
                service.clone(),
                fs.clone(),
                state.clone(),
                stop.clone(),
                cluster_done,
            )
            .map_err(|e| format!("cluster thread: {e}"))?;
            tracing::info!(node = c.node, "cluster member: following PostgreSQL");
            Some(Clustered {
                state,
                stop,
                thread,
            })
        }
    };
    let limits = Limits {
        connections_max: cfg.limits.connections_max,
        in_flight_max: cfg.limits.in_flight_max,
        writes_in_flight_max: cfg.limits.writes_in_flight_max,
        write_timeout: cfg.limits.write_timeout,
        rate_per_identity: cfg.limits.rate_per_identity,
        handshakes_per_second: cfg.limits.handshakes_per_second,
        ..Limits::default()
    };
    let expiry = admin::Expiry::of(&tls, &service.jpki.anchors());
    let server = Server::start_with(
        listen.unwrap_or(cfg.server.listen),
        tls,
        service.clone(),
        limits,
        cfg.server.endpoints,
    )
    .map_err(|e| e.to_string())?;
    if cfg.server.endpoints > 1 {
        tracing::info!(
            endpoints = cfg.server.endpoints,
            "QUIC endpoints share the listen port"
        );
    }
    if let (Some(c), Some(cl)) = (&cfg.cluster, &clustered)
        && let Some(f) = forwarder(c, &cfg.tls.client_ca, &cl.state)?
    {
        server.forward_writes(f);
    }
    let stop_compactor = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let compactor = store::spawn_compactor(
        service.clone(),
        CompactionPolicy {
            delta_keys_max: cfg.store.compact_delta_keys,
            ..CompactionPolicy::default()
        },
        stop_compactor.clone(),
    );
    let probed = service.clone();
    let cluster_state = clustered.as_ref().map(|c| c.state.clone());
    ready.set_probe(Box::new(move || {
        let health = probed.registry.store().health();
        health.publish();
        let mut f = Finding::not_ready(health.problems());
        if let Some(c) = &cluster_state {
            f.extend(c.findings());
        }
        f
    }));
    ready.set_phase(None);
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    expiry.publish();
    for outcome in ["ok", "refused"] {
        metrics::counter!(admin::RELOADS_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::gauge!(admin::LAST_RELOAD_SECONDS).set(system_clock().unix_secs() as f64);
    // Only now, with the store open and the certificates loaded, may systemd start the units
    // ordered after this one.
    notify(&format!("READY=1\nSTATUS=serving mykey/1 on {addr}"));
    tracing::info!(%addr, admin = %admin_addr, "mykeyd serving");
    eprintln!(
        "mykeyd serving mykey/1 on {addr} (admin http://{admin_addr}/metrics); stop with Ctrl-C"
    );
    // What ends this life: a signal, or the cluster loop (stepped down, or stopped).
    let mut server = Some(server);
    let mut stopped_for = None;
    let reopen = loop {
        tokio::select! {
            _ = sig.hup.recv() => {
                notify("RELOADING=1\nSTATUS=reloading");
                let outcome = match &server {
                    Some(server) => reload(cfg_path, &cfg, server, &service),
                    None => Err("the node stopped serving; nothing to reload".to_owned()),
                };
                match &outcome {
                    Ok(()) => {
                        metrics::gauge!(admin::LAST_RELOAD_SECONDS).set(system_clock().unix_secs() as f64);
                        tracing::info!("reloaded: server certificate, client CA and CRL, JPKI anchors, rate_per_identity");
                    }
                    Err(e) => tracing::error!(error = %e, "reload refused; keeping the running configuration"),
                }
                let (label, status) = match outcome {
                    Ok(()) => ("ok", "serving".to_owned()),
                    Err(e) => ("refused", format!("serving; the last reload was refused: {e}")),
                };
                metrics::counter!(admin::RELOADS_TOTAL, "outcome" => label).increment(1);
                notify(&format!("READY=1\nSTATUS={status}"));
            }
            _ = sig.term.recv() => break false,
            _ = sig.int.recv() => break false,
            ended = &mut cluster_ended, if clustered.is_some() && stopped_for.is_none() => {
                match ended {
                    Ok(cluster::node::Ended::SteppedDown(why)) => {
                        tracing::warn!(reason = why, "stepped down as the cluster writer; reopening the store as a follower");
                        break true;
                    }
                    Ok(cluster::node::Ended::Stopped(why)) => {
                        // Serves nothing a PostgreSQL it cannot follow may not hold; /readyz
                        // keeps the reason until the process is stopped.
                        tracing::error!(reason = why, "cluster: stopped following; closing the QUIC endpoint");
                        notify(&format!("STATUS=stopped: {why}"));
                        if let Some(s) = server.take() {
                            s.shutdown().await;
                        }
                        stopped_for = Some(why);
                    }
                    Ok(cluster::node::Ended::Stop) | Err(_) => {
                        let why = "the cluster thread ended".to_owned();
                        tracing::error!(reason = why, "closing the QUIC endpoint");
                        if let Some(s) = server.take() {
                            s.shutdown().await;
                        }
                        stopped_for = Some(why);
                    }
                }
            }
        }
    };
    let grace = if reopen { STEP_DOWN_GRACE } else { DRAIN_GRACE };
    tracing::info!("draining");
    if !reopen {
        notify("STOPPING=1\nSTATUS=draining");
    }
    ready.set_phase(Some(if reopen { "stepping down" } else { "draining" }));
    if let Some(s) = server.take() {
        s.drain(grace).await;
    }
    stop_compactor.store(true, std::sync::atomic::Ordering::Release);
    if let Some(c) = clustered {
        c.stop.store(true, std::sync::atomic::Ordering::Release);
        if !join_within(&c.thread, CLUSTER_JOIN_GRACE).await {
            tracing::error!("the cluster thread did not stop (it waits on the store's log)");
        }
    }
    // A compactor stuck behind a hung fsync never returns: wait a little, then go without it.
    if join_within(&compactor, COMPACTOR_JOIN_GRACE).await {
        match compactor.join() {
            Ok(n) => tracing::info!(compactions = n, "compactor stopped"),
            Err(_) => tracing::error!("the compactor panicked"),
        }
    } else {
        tracing::error!("the compactor did not stop (it waits on the store's log)");
    }
    let health = service.registry.store().health();
    if let Some((age, file)) = health.log_io {
        tracing::error!(
            file = %file,
            stuck_secs = age.as_secs(),
            exit_status = EXIT_FSYNC_STUCK,
            "stopped with a log fsync stuck: every acknowledged write is durable; the writes waiting on it were answered OUTCOME_UNKNOWN"
        );
        eprintln!(
            "mykeyd: stopped with a log fsync stuck for {} s on {file}; exit status {EXIT_FSYNC_STUCK}",
            age.as_secs()
        );
        return Ok(Life::Stop(Stopped::FsyncStuck));
    }
    if reopen {
        // The store is opened again only once nothing holds it (its directory lock refuses a
        // second open): the probe goes first, then the tasks of closed connections end.
        ready.set_probe(Box::new(Vec::new));
        let deadline = std::time::Instant::now() + STEP_DOWN_GRACE;
        while Arc::strong_count(&service) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if Arc::strong_count(&service) > 1 {
            let e = "stepping down: the store is still held after the drain; restart mykeyd";
            tracing::error!(op = "reopen", "{e}");
            return Err(e.into());
        }
        drop(service);
        return Ok(Life::Reopen(addr));
    }
    if let Some(why) = stopped_for {
        eprintln!(
            "mykeyd: the cluster node stopped serving: {why}; exit status {EXIT_CLUSTER_STOPPED}"
        );
        return Ok(Life::Stop(Stopped::Cluster));
    }
    tracing::info!("stopped");
    Ok(Life::Stop(Stopped::Clean))
}

/// Waits up to `grace` for `thread` to finish; whether it did.
async fn join_within<T>(thread: &std::thread::JoinHandle<T>, grace: Duration) -> bool {
    let deadline = std::time::Instant::now() + grace;
    while !thread.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    thread.is_finished()
}

/// One SIGHUP: loads and checks everything again and swaps in what can change while running.
/// On any error nothing is swapped: the running configuration stays whole.
fn reload(cfg_path: &Path, cfg: &Config, server: &Server, service: &Service) -> Result<(), String> {
    let (new, tls, anchors) = check(cfg_path)?;
    let expiry = admin::Expiry::of(&tls, &anchors);
    server.reload_tls(tls).map_err(|e| e.to_string())?;
    service.jpki.replace_anchors(anchors);
    expiry.publish();
    server.set_rate_per_identity(new.limits.rate_per_identity);
    let limits_but_rate = |l: &config::LimitsSection| config::LimitsSection {
        rate_per_identity: 0,
        ..l.clone()
    };
    if new.server != cfg.server
        || new.store != cfg.store
        || new.registry != cfg.registry
        || new.log != cfg.log
        || new.cluster != cfg.cluster
        || limits_but_rate(&new.limits) != limits_but_rate(&cfg.limits)
    {
        tracing::warn!(
            "addresses, store, registry, logging, cluster and limits other than rate_per_identity change at the next start"
        );
    }
    Ok(())
}

/// `mykeyd serve`: the configuration given, or the development setup (created first if
/// missing); with `check_config`, everything is loaded and checked, and nothing served.
pub fn command(
    config: Option<PathBuf>,
    dev: Option<PathBuf>,
    check_config: bool,
) -> Result<(), String> {
    let path = match (config, dev) {
        (Some(c), _) => c,
        (None, Some(dir)) => {
            let c = dir.join("mykeyd.toml");
            if !c.exists() {
                init(
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
        let cfg = check_all(&path)?;
        for line in &cfg.ignored_env {
            eprintln!("warning: {line}");
        }
        println!(
            "{}: configuration, TLS key and certificates, anchors, store (opened read-only, lock free) and ports are usable",
            path.display()
        );
        return Ok(());
    }
    match serve(&path)? {
        Stopped::Clean => Ok(()),
        Stopped::FsyncStuck => std::process::exit(EXIT_FSYNC_STUCK),
        Stopped::Cluster => std::process::exit(EXIT_CLUSTER_STOPPED),
    }
}
