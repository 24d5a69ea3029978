//! Lookup benchmarks, each beside its baselines in the same run: the engine's lookup of a
//! (MyKey ID, provider) pair, hit and miss, at 1M and 10M mappings, against a std `HashMap`
//! probe and a flat open-addressing array probe of the same keys; and batched lookups (16 IDs,
//! prefetched) against a prefetched batch of flat-array probes; and LMDB (heed) with the same
//! keys, the usual embedded store for such a table.
//!
//! Set `MYKEY_BENCH_MAPPINGS=1000000,10000000` (the default) to choose the sizes.
// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::BufReader;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mykey_bench::*;
use mykey_engine::id::{ActorId, MyKeyId, ProviderId, Timestamp};
use mykey_engine::population::{BuildOptions, build};
use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{Lookup, Registry, RegistryConfig};
use mykey_engine::store::fs::{Fs, RealFs};

/// Query keys per benchmark: enough that at 10M mappings every probe misses the CPU caches.
const QUERIES: usize = 1 << 18;
const BATCH: usize = 16;

fn sizes() -> Vec<u64> {
    std::env::var("MYKEY_BENCH_MAPPINGS")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("MYKEY_BENCH_MAPPINGS: comma-separated numbers")
        })
        .collect()
}

fn open_store(dir: &BenchDir, rows: u64) -> Registry {
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    let opts = BuildOptions {
        at: Timestamp::from_unix_secs(1_764_028_800).expect("time"),
        actor: ActorId::parse(b"bench").expect("actor"),
        store: StoreConfig::default(),
        hash_key: None,
    };
    let pop = BufReader::with_capacity(1 << 20, PopulationReader::new(rows));
    build(&*fs, providers_file().as_bytes(), pop, &opts, &mut |_| {}).expect("build");
    Registry::open(fs, RegistryConfig::default()).expect("open")
}

type LmdbDb = heed::Database<heed::types::Bytes, heed::types::Bytes>;

/// LMDB holding the same keys, each with a value the size of an average ID record (76 bytes),
/// written in key order in one transaction.
fn lmdb_of(dir: &std::path::Path, rows: u64) -> (heed::Env, LmdbDb) {
    // SAFETY: heed marks opening unsafe because LMDB must not open one environment twice in a
    // process or have its files changed underneath; this directory is fresh and private to
    // this benchmark, opened once.
    #[allow(unsafe_code)]
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(8 << 30)
            .open(dir)
            .expect("open lmdb")
    };
    let mut keys: Vec<[u8; 14]> = (0..rows).map(|i| id_bytes(i, false)).collect();
    keys.sort_unstable();
    let mut wtxn = env.write_txn().expect("write txn");
    let db: LmdbDb = env.create_database(&mut wtxn, None).expect("db");
    for (n, k) in keys.iter().enumerate() {
        db.put(&mut wtxn, &k[..], &[n as u8; 76]).expect("put");
    }
    wtxn.commit().expect("commit");
    (env, db)
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn lookups(c: &mut Criterion) {
    let now = Timestamp::from_unix_secs(1_764_100_000).expect("time");
    for mappings in sizes() {
        // 2.5 links per ID on average.
        let rows = mappings * 2 / 5;
        let dir = BenchDir::new(&format!("lookup-{mappings}"));
        let reg = open_store(&dir, rows);
        let flat = FlatTable::build(rows);
        let map = std_map(rows);
        let lmdb_dir = BenchDir::new(&format!("lmdb-{mappings}"));
        let (lmdb, lmdb_db) = lmdb_of(lmdb_dir.path(), rows);
        let lmdb_txn = lmdb.read_txn().expect("read txn");
        let mut x = 0x5EED_u64;
        let picks: Vec<u64> = (0..QUERIES).map(|_| xorshift(&mut x) % rows).collect();
        let hits: Vec<(MyKeyId, ProviderId)> = picks
            .iter()
            .map(|&i| (id(i, false), provider(provider_of(i, 0))))
            .collect();
        let miss_ids: Vec<MyKeyId> = picks.iter().map(|&i| id(i, true)).collect();
        let hit_keys: Vec<[u8; 14]> = picks.iter().map(|&i| id_bytes(i, false)).collect();
        let miss_keys: Vec<[u8; 14]> = picks.iter().map(|&i| id_bytes(i, true)).collect();
        // Sanity: the engine answers what the generator wrote.
        let (i0, p0) = &hits[0];
        assert!(matches!(
            reg.lookup(now, i0, p0).expect("lookup"),
            Lookup::Linked(_)
        ));
        assert_eq!(
            reg.lookup(now, &miss_ids[0], p0).expect("lookup"),
            Lookup::UnknownId
        );

        let mut g = c.benchmark_group(format!("lookup/{mappings}-mappings"));
        g.throughput(Throughput::Elements(1));
        let mut k = 0usize;
        g.bench_function("engine hit", |b| {
            b.iter(|| {
                k = (k + 1) & (QUERIES - 1);
                let (id, p) = &hits[k];
                black_box(reg.lookup(now, id, p).expect("lookup"))
            })
        });
        let refs: Vec<_> = hits
            .iter()
            .map(|(_, p)| reg.provider_ref(p).expect("registered"))
            .collect();
        g.bench_function("engine hit, provider resolved once", |b| {
            b.iter(|| {
                k = (k + 1) & (QUERIES - 1);
                black_box(reg.lookup_ref(now, &hits[k].0, refs[k]).expect("lookup"))
            })
        });
        // Dependent chains: the next key depends on this answer, so probes cannot overlap;
        // this is the latency one request sees, free of the memory-level parallelism an
        // independent loop gets from out-of-order execution.
        g.bench_function("engine hit, dependent chain", |b| {
            b.iter(|| {
                let (id, p) = &hits[k];
                let v = match reg.lookup(now, id, p).expect("lookup") {
                    Lookup::Linked(s) => s.as_bytes()[0],
                    _ => 0,
                };
                k = (k + 1 + usize::from(v & 1)) & (QUERIES - 1);
            })
        });
        g.bench_function("flat-array hit, dependent chain (baseline)", |b| {
            b.iter(|| {
                let key = &hit_keys[k];
                let v = flat.get_hashed(flat.hash(key), key).unwrap_or(0);
                k = (k + 1 + usize::from(v & 1)) & (QUERIES - 1);
            })
        });
        g.bench_function("engine miss", |b| {
            b.iter(|| {
                k = (k + 1) & (QUERIES - 1);
                black_box(reg.lookup(now, &miss_ids[k], p0).expect("lookup"))
            })
        });
        g.bench_function("flat-array hit (baseline)", |b| {
            b.iter(|| {
                k = (k + 1) & (QUERIES - 1);
                let key = &hit_keys[k];
                black_box(flat.get_hashed(flat.hash(key), key))
            })
        });
        g.bench_function("flat-array miss (baseline)", |b| {
            b.iter(|| {
                k = (k + 1) & (QUERIES - 1);
                let key = &miss_keys[k];
                black_box(flat.get_hashed(flat.hash(key), key))
            })
        });
        g.bench_function("std-hashmap hit (baseline)", |b| {
            b.iter(|| {
                k = (k + 1) & (QUERIES - 1);
                black_box(map.get(&hit_keys[k]))
            })
        });
        g.bench_function("lmdb hit (baseline)", |b| {
            b.iter(|| {
                k = (k + 1) & (QUERIES - 1);
                black_box(lmdb_db.get(&lmdb_txn, &hit_keys[k][..]).expect("lmdb get"))
            })
        });
        g.bench_function("lmdb hit, dependent chain (baseline)", |b| {
            b.iter(|| {
                let v = lmdb_db
                    .get(&lmdb_txn, &hit_keys[k][..])
                    .expect("lmdb get")
                    .map_or(0, |v| v[0]);
                k = (k + 1 + usize::from(v & 1)) & (QUERIES - 1);
            })
        });
        g.bench_function("std-hashmap miss (baseline)", |b| {
            b.iter(|| {
                k = (k + 1) & (QUERIES - 1);
                black_box(map.get(&miss_keys[k]))
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("batch{BATCH}/{mappings}-mappings"));
        g.throughput(Throughput::Elements(BATCH as u64));
        let mut out = Vec::with_capacity(BATCH);
        let ids: Vec<MyKeyId> = hits.iter().map(|(i, _)| *i).collect();
        g.bench_function("engine batch", |b| {
            b.iter(|| {
                k = (k + BATCH) % (QUERIES - BATCH);
                reg.lookup_batch(now, p0, &ids[k..k + BATCH], &mut out)
                    .expect("batch");
                black_box(out.len())
            })
        });
        g.bench_function("flat-array prefetched batch (baseline)", |b| {
            let mut hs = [0u64; BATCH];
            b.iter(|| {
                k = (k + BATCH) % (QUERIES - BATCH);
                let keys = &hit_keys[k..k + BATCH];
                for (h, key) in hs.iter_mut().zip(keys) {
                    *h = flat.hash(key);
                    flat.prefetch(*h);
                }
                let mut found = 0;
                for (h, key) in hs.iter().zip(keys) {
                    found += usize::from(flat.get_hashed(*h, key).is_some());
                }
                black_box(found)
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = lookups
}
criterion_main!(benches);
