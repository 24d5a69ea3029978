//! Writes through PostgreSQL against the local log, in one run on one machine: the same
//! registrations and links, by 1 and by 16 concurrent writers, into a single node (its local
//! log is the system of record) and into a node whose group commit goes through a throwaway
//! PostgreSQL (`engine/CLUSTER.md`); then how fast a new follower applies the rows.
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

fn main() {
    let writes: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("WRITES is a number"))
        .unwrap_or(4_000);
    let Some(pg) = Postgres::start("cluster-bench") else {
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = pg.url();
    let (admin, writer) = rt.block_on(async {
        let mut admin = connect_plain(&url).await.expect("connect");
        schema::migrate(&mut admin).await.expect("schema");
        let w = Writer::take_over(connect_plain(&url).await.expect("connect"), "bench")
            .await
            .expect("writer");
        (admin, w)
    });
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
