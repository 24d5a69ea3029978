//! Writes through PostgreSQL against the local log, in one run on one machine: the same
//! registrations and links, by 1 and by 16 concurrent writers, into a single node (its local
//! log is the system of record) and into a node whose group commit goes through a throwaway
//! PostgreSQL (`engine/CLUSTER.md`); then how fast a new follower applies the rows.
//!
//! `cluster-bench bootstrap [IDS] [WRITES]`: a wiped node's bootstrap from a tagged snapshot of
//! a store of IDS IDs (default 1,000,000, bulk-built and recorded as the cluster's genesis, then WRITES
//! writes through PostgreSQL before and after the snapshot, default 2,000, and change_log
//! pruned below it), phase by phase, beside a plain copy of the same files and an open of the
//! same store in the same run.
//!
//! Usage: `cluster-bench [WRITES]` (default 4,000 writes per run). PostgreSQL runs with its
//! defaults (fsync on, synchronous_commit on, no standby) on the same 2 cores; the figures are
//! ratios within this run, not absolutes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mykey_engine::cluster::tail::Tail;
use mykey_engine::cluster::writer::Writer;
use mykey_engine::cluster::{connect_plain, schema};
use mykey_engine::registry::Registry;
use mykey_tests::pg::Postgres;
use mykey_tests::{TempDir, actor, at, cert, mykey, provider, registry_with, service};

/// Writes `writes` links (each after a registration: two changes) by `threads` writers, and
/// returns the wall time and every write's latency.
fn run(reg: &Arc<Registry>, base: u64, writes: u64, threads: u64) -> (Duration, Vec<Duration>) {
    let p = provider("A-α1-0001");
    let start = Instant::now();
    let lat = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let reg = reg.clone();
                s.spawn(move || {
                    let mut lat = Vec::new();
                    for i in (t..writes).step_by(threads as usize) {
                        let n = base + i;
                        let w = Instant::now();
                        reg.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
                            .expect("register");
                        reg.link(at(0), actor("shop"), mykey(n), p, service("S"), false)
                            .expect("link");
                        lat.push(w.elapsed() / 2);
                    }
                    lat
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("writer"))
            .collect::<Vec<_>>()
    });
    (start.elapsed(), lat)
}

fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q) as usize]
}

fn report(what: &str, writes: u64, (wall, mut lat): (Duration, Vec<Duration>)) -> f64 {
    let rate = (2 * writes) as f64 / wall.as_secs_f64();
    println!(
        "{what:<34} {rate:>9.0} changes/s   p50 {:>8.2?}   p99 {:>8.2?}",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    rate
}

/// A throwaway PostgreSQL with the cluster schema, a runtime, an admin connection and a
/// writer that took over (exits 2 where PostgreSQL cannot run).
fn with_postgres(
    tag: &str,
) -> (
    Postgres,
    tokio::runtime::Runtime,
    mykey_engine::cluster::PgClient,
    Writer,
) {
    let Some(pg) = Postgres::start(tag) else {
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = pg.url();
    let (admin, w) = rt.block_on(async {
        let mut admin = connect_plain(&url).await.expect("connect");
        schema::migrate(&mut admin).await.expect("schema");
        let w = Writer::take_over(connect_plain(&url).await.expect("connect"), "node-a")
            .await
            .expect("writer");
        (admin, w)
    });
    (pg, rt, admin, w)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("bootstrap") {
        let n = |i: usize, d: u64| {
            args.get(i)
                .map(|s| s.parse().expect("a number"))
                .unwrap_or(d)
        };
        return bootstrap(n(1, 1_000_000), n(2, 2_000));
    }
    let writes: u64 = args
        .first()
        .map(|s| s.parse().expect("WRITES is a number"))
        .unwrap_or(4_000);
    let (_pg, rt, admin, writer) = with_postgres("cluster-bench");
    let local_dir = TempDir::new("cluster-bench-local");
    let local = Arc::new(registry_with(&local_dir, &["A-α1-0001"]));
    let pg_dir = TempDir::new("cluster-bench-pg");
    let node = mykey_tests::pg::registry_through(&pg_dir, writer);
    node.register_provider(at(0), actor("operator"), provider("A-α1-0001"))
        .expect("provider");
    println!("{writes} writes (a registration and a link each) per run, on this machine's cores");
    for threads in [1, 16] {
        let base = threads * 1_000_000;
        let l = report(
            &format!("local log, {threads} writers"),
            writes,
            run(&local, base, writes, threads),
        );
        let p = report(
            &format!("through PostgreSQL, {threads} writers"),
            writes,
            run(&node, base, writes, threads),
        );
        println!("  PostgreSQL / local log throughput: {:.2}×", p / l);
    }
    // A new follower applying everything the PostgreSQL-backed node wrote.
    let fdir = TempDir::new("cluster-bench-follower");
    let f = registry_with(&fdir, &[]);
    let total = node.store().durable_seq();
    let start = Instant::now();
    let mut t = Tail::new();
    rt.block_on(async {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(async { while t.step(&admin, &f).await.expect("tail") > 0 {} })
        })
    });
    let wall = start.elapsed();
    println!(
        "a new follower applied {} changes in {:.2?}: {:.0} changes/s",
        t.applied(),
        wall,
        t.applied() as f64 / wall.as_secs_f64()
    );
    assert_eq!(t.applied(), total);
}

/// Bytes in the files of `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum()
}

/// The baseline: every file of `from` copied into `to` and fsync'd, nothing checked.
fn plain_copy(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        std::fs::copy(e.path(), &dest).expect("copy");
        std::fs::File::open(&dest)
            .and_then(|f| f.sync_all())
            .expect("fsync");
    }
}

fn bootstrap(ids: u64, writes: u64) {
    use mykey_engine::cluster::record::PgRecord;
    use mykey_engine::cluster::{chain, snapshot, writer};
    use mykey_engine::id::ActorId;
    use mykey_engine::population::{self, BuildOptions};
    use mykey_engine::registry::{RegistryConfig, StoreConfig};
    use mykey_engine::store::fs::{Fs, RealFs};

    let (_pg, rt, admin, w) = with_postgres("cluster-bench-boot");
    let fs_of = |d: &TempDir| -> Arc<dyn Fs> { Arc::new(RealFs::new(d.path()).expect("dir")) };
    // The writer's store: the genesis population, bulk-built, then writes through PostgreSQL.
    let a = TempDir::new("cluster-bench-boot-a");
    let t = Instant::now();
    population::build(
        &*fs_of(&a),
        mykey_bench::providers_file().as_bytes(),
        std::io::BufReader::new(mykey_bench::PopulationReader::new(ids)),
        &BuildOptions {
            at: at(0),
            actor: ActorId::parse(b"bench").expect("actor"),
            store: StoreConfig::default(),
            hash_key: None,
        },
        &mut |_| {},
    )
    .expect("build");
    println!(
        "genesis store of {ids} IDs bulk-built in {:.2?}",
        t.elapsed()
    );
    let t = Instant::now();
    let g = Arc::new(Registry::open(fs_of(&a), RegistryConfig::default()).expect("open"));
    let digest_t = Instant::now();
    mykey_engine::cluster::genesis::digest(&g).expect("digest");
    let digest_t = digest_t.elapsed();
    let mut admin = admin;
    let rec = rt
        .block_on(mykey_engine::cluster::genesis::record(
            &mut admin,
            g,
            &*fs_of(&a),
            &mut |_| {},
        ))
        .expect("genesis");
    println!(
        "genesis recorded in {:.2?} (its digest alone {digest_t:.2?}): {} IDs, {} links, {} bindings into the mirror",
        t.elapsed(),
        rec.ids,
        rec.links,
        rec.certs
    );
    let t = Instant::now();
    let node = Arc::new(Registry::open(fs_of(&a), RegistryConfig::default()).expect("open"));
    let open_a = t.elapsed();
    let record = PgRecord::spawn(w, node.mirror_handle()).expect("writer thread");
    node.store()
        .set_system_of_record(Arc::new(record))
        .expect("set once");
    node.register_provider(at(0), actor("operator"), provider("A-α1-0001"))
        .expect("provider");
    report(
        "writes before the snapshot",
        writes,
        run(&node, 50_000_000, writes, 16),
    );
    let h = rt.block_on(writer::head(&admin)).expect("head");
    assert_eq!(h.seq, node.store().durable_seq());
    chain::write(&*fs_of(&a), &Tail::at(h.seq, h.hash)).expect("chain");
    // The tagged snapshot, taken while the store is open; more writes; change_log pruned.
    let s = TempDir::new("cluster-bench-boot-snap");
    let t = Instant::now();
    let (_, tag) = snapshot::take(&*fs_of(&a), &*fs_of(&s), &mut |_, _| {}).expect("snapshot");
    let took = t.elapsed();
    rt.block_on(snapshot::record(&admin, "node-a", &tag, "bench"))
        .expect("record");
    report(
        "writes after the snapshot",
        writes,
        run(&node, 60_000_000, writes, 16),
    );
    let head_seq = node.store().durable_seq();
    let t = Instant::now();
    let pruned = rt
        .block_on(snapshot::prune(&admin, None, &mut |_| {}))
        .expect("prune");
    println!(
        "snapshot (tag seq {}) taken online in {took:.2?}; {} change_log rows pruned below it in {:.2?}",
        tag.seq,
        pruned.rows,
        t.elapsed()
    );
    let bytes = dir_bytes(s.path());
    // The baseline, in the same run: the same files copied and fsync'd, and an open.
    let c = TempDir::new("cluster-bench-boot-copy");
    let t = Instant::now();
    plain_copy(s.path(), c.path());
    let copy = t.elapsed();
    // The wiped node: bootstrap (tag checked, copy, verify, open, chain carried), open as it
    // serves, tail to the head.
    let b = TempDir::new("cluster-bench-boot-b");
    let wiped = Instant::now();
    let (_, mut tail) = rt
        .block_on(snapshot::bootstrap(
            &admin,
            fs_of(&s),
            fs_of(&b),
            &mut |_, _| {},
        ))
        .expect("bootstrap");
    let booted = wiped.elapsed();
    let t = Instant::now();
    let reg = Registry::open(fs_of(&b), RegistryConfig::default()).expect("open");
    let opened = t.elapsed();
    let t = Instant::now();
    let from = tail.applied();
    rt.block_on(async {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(async { while tail.step(&admin, &reg).await.expect("tail") > 0 {} })
        })
    });
    let caught = t.elapsed();
    assert_eq!(tail.applied(), head_seq);
    let total = wiped.elapsed();
    println!(
        "snapshot: {bytes} bytes ({:.1} bytes per ID)",
        bytes as f64 / ids as f64
    );
    println!(
        "baseline: plain copy + fsync {copy:.2?} ({:.0} MB/s); open of the writer's store {open_a:.2?}",
        bytes as f64 / copy.as_secs_f64() / 1e6
    );
    println!(
        "bootstrap {booted:.2?} ({:.2}× the plain copy), open {opened:.2?}, tail {} changes {caught:.2?}",
        booted.as_secs_f64() / copy.as_secs_f64(),
        head_seq - from
    );
    println!("a wiped node of {ids} IDs at the head again in {total:.2?}");
}
