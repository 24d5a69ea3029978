//! Store benchmarks, each with its baseline in the same run:
//! - group commit: acknowledged writes/s and fsyncs per write with 1, 8 and 64 concurrent
//!   writers, against the floor of one bare `fdatasync` per write on the same disk;
//! - snapshot open time of a 1M-mapping store, against reading its manifest alone;
//! - compaction throughput (store bytes rewritten per second), against a plain file copy of
//!   the same bytes.
// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::io::{BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mykey_bench::*;
use mykey_engine::id::{ActorId, Timestamp};
use mykey_engine::population::{BuildOptions, build};
use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{LinkOutcome, Registry, RegistryConfig};
use mykey_engine::store::Store;
use mykey_engine::store::fs::{Fs, RealFs, TracedFs};

const ROWS: u64 = 400_000;

fn t(secs: u64) -> Timestamp {
    Timestamp::from_unix_secs(1_764_028_800 + secs).expect("time")
}

fn built(dir: &BenchDir) {
    let fs = RealFs::new(dir.path()).expect("dir");
    let opts = BuildOptions {
        at: t(0),
        actor: ActorId::parse(b"bench").expect("actor"),
        store: StoreConfig::default(),
        hash_key: None,
    };
    let pop = BufReader::with_capacity(1 << 20, PopulationReader::new(ROWS));
    build(&fs, providers_file().as_bytes(), pop, &opts, &mut |_| {}).expect("build");
}

fn group_commit(c: &mut Criterion) {
    let dir = BenchDir::new("group-commit");
    built(&dir);
    let real: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    let cfs = Arc::new(TracedFs::new(real));
    let syncs = cfs.syncs.clone();
    let reg = Registry::open(cfs as Arc<dyn Fs>, RegistryConfig::default()).expect("open");
    let shop = ActorId::parse(b"terminal-1").expect("actor");
    let mut g = c.benchmark_group("group-commit");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10).measurement_time(Duration::from_secs(5));

    // The floor: one bare fdatasync per 64-byte append, on the same file system.
    let floor = dir.path().join("floor.bin");
    let mut f = std::fs::File::create(&floor).expect("floor file");
    g.bench_function("bare fdatasync per write (baseline)", |b| {
        b.iter(|| {
            f.write_all(&[7u8; 64]).expect("write");
            f.sync_data().expect("sync");
        })
    });
    let mut next_row = 0u64;
    for writers in [1u64, 8, 64] {
        let mut writes_total = 0u64;
        let syncs_before = syncs.load(Ordering::Relaxed);
        g.bench_function(format!("link, {writers} writers"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(writers);
                let base = next_row;
                next_row += per * writers;
                writes_total += per * writers;
                let start = Instant::now();
                std::thread::scope(|s| {
                    for w in 0..writers {
                        let reg = &reg;
                        s.spawn(move || {
                            for k in 0..per {
                                // Each write replaces a row's first link with a service ID
                                // it has never had, so every write is a real change.
                                let n = base + w * per + k;
                                let i = n % ROWS;
                                let outcome = reg
                                    .link(
                                        t(1),
                                        shop,
                                        id(i, false),
                                        provider(provider_of(i, 0)),
                                        service(i, 100 + n / ROWS),
                                        true,
                                    )
                                    .expect("link");
                                assert!(matches!(outcome, LinkOutcome::Replaced { .. }));
                            }
                        });
                    }
                });
                // Time per write, as if one writer had done them all.
                start.elapsed() / (per * writers) as u32 * iters as u32
            })
        });
        let syncs_used = syncs.load(Ordering::Relaxed) - syncs_before;
        eprintln!(
            "group-commit {writers} writers: {writes_total} writes, {syncs_used} fsyncs, {:.2} writes per fsync",
            writes_total as f64 / syncs_used.max(1) as f64
        );
    }
    g.finish();
}

fn open_and_compact(c: &mut Criterion) {
    let dir = BenchDir::new("open");
    built(&dir);
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    let mut g = c.benchmark_group("open");
    g.sample_size(20);
    g.bench_function("read MANIFEST only (baseline)", |b| {
        b.iter(|| std::fs::read(dir.path().join("MANIFEST")).expect("read"))
    });
    g.bench_function("Store::open 1M mappings", |b| {
        b.iter(|| Store::open(fs.clone(), &mykey_engine::registry::SCHEMA).expect("open"))
    });
    g.finish();

    let reg = Registry::open(fs.clone(), RegistryConfig::default()).expect("open");
    let bytes: u64 = reg.store().stats().iter().map(|s| s.file_bytes).sum();
    let mut g = c.benchmark_group("compaction");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(bytes));
    let copy_dir = BenchDir::new("copy");
    g.bench_function("copy the store's files (baseline)", |b| {
        b.iter(|| {
            for e in std::fs::read_dir(dir.path()).expect("dir") {
                let e = e.expect("entry");
                std::fs::copy(e.path(), copy_dir.path().join(e.file_name())).expect("copy");
            }
        })
    });
    let shop = ActorId::parse(b"terminal-1").expect("actor");
    let mut round = 0u64;
    g.bench_function("compact 1M mappings + 1000 logged links", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                for k in 0..1000 {
                    let i = (round * 1000 + k) % ROWS;
                    reg.link(
                        t(2),
                        shop,
                        id(i, false),
                        provider(provider_of(i, 0)),
                        service(i, round % 7),
                        true,
                    )
                    .expect("link");
                }
                let start = Instant::now();
                reg.store().compact().expect("compact");
                spent += start.elapsed();
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(benches, group_commit, open_and_compact);
criterion_main!(benches);
