//! Scale figures of a store built from `gen-population ROWS`: time to open, RSS right after
//! open, and hot lookup time (random rows, after one warm-up pass that faults the pages in),
//! beside a flat open-addressing array of the same keys built in the same process afterwards.
//! The store's probe of the `ids` table is also timed alone (the record's bytes, no answer
//! made of them), which splits an engine lookup into the probe and the answer.
//!
//! `scale-probe STORE ROWS [QUERIES]`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use mykey_bench::{FlatTable, id, id_bytes, provider, provider_of};
use mykey_engine::id::{MyKeyId, ProviderId, Timestamp};
use mykey_engine::registry::{Lookup, Registry, RegistryConfig, Table};
use mykey_engine::store::fs::{Fs, RealFs};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Prints how much of the process's memory is mapped in huge pages (the store's mapped files
/// as `FilePmdMapped`, the flat array as `AnonHugePages`): a random probe's TLB cost differs
/// by page size, so a comparison holds only when both sides are on the same.
fn huge_pages(when: &str) {
    if let Ok(s) = std::fs::read_to_string("/proc/self/smaps_rollup") {
        let got: Vec<String> = s
            .lines()
            .filter(|l| l.starts_with("FilePmdMapped") || l.starts_with("AnonHugePages"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        println!("huge pages {when}: {}", got.join(", "));
    }
}

/// The store's probe of `ids` for the same keys, through `Store::get_hashed` and
/// `Store::get_batch` (view, delta, bucket CRC, key compare), returning the record's length
/// instead of an answer: independent, as a dependent chain, and in batches of 16.
fn probe_alone(reg: &Registry, keys: &[[u8; 14]]) {
    let store = reg.store();
    let n = keys.len() as f64;
    let probe = |k: &[u8; 14]| {
        store
            .get_hashed(Table::Ids, store.hash(k), k, |v| v.map_or(0, <[u8]>::len))
            .expect("probe")
    };
    let t = Instant::now();
    for k in keys {
        black_box(probe(k));
    }
    println!(
        "store probe alone (the record's bytes, no answer), hot: {:.1} ns",
        t.elapsed().as_nanos() as f64 / n
    );
    let t = Instant::now();
    let mut i = 0usize;
    for _ in 0..keys.len() {
        i = (i + 1 + (probe(&keys[i]) & 1)) % keys.len();
    }
    black_box(i);
    println!(
        "store probe alone, hot, dependent chain: {:.1} ns",
        t.elapsed().as_nanos() as f64 / n
    );
    let t = Instant::now();
    for chunk in keys.chunks(16) {
        let refs: [&[u8]; 16] = std::array::from_fn(|j| chunk.get(j).map_or(&[][..], |k| &k[..]));
        store
            .get_batch(Table::Ids, &refs[..chunk.len()], |_, v| {
                black_box(v.map(<[u8]>::len));
            })
            .expect("batch");
    }
    println!(
        "store probe alone, hot, batches of 16: {:.1} ns",
        t.elapsed().as_nanos() as f64 / n
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (store, rows, queries) = match args.as_slice() {
        [s, r] => (s.clone(), r.parse::<u64>(), Ok(2_000_000usize)),
        [s, r, q] => (s.clone(), r.parse::<u64>(), q.parse::<usize>()),
        _ => {
            eprintln!("usage: scale-probe STORE ROWS [QUERIES]");
            std::process::exit(2);
        }
    };
    let (Ok(rows), Ok(queries)) = (rows, queries) else {
        eprintln!("scale-probe: ROWS and QUERIES are numbers");
        std::process::exit(2);
    };
    let rss_before = rss_kib();
    let start = Instant::now();
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(&store).expect("store dir"));
    let reg = Registry::open(fs, RegistryConfig::default()).unwrap_or_else(|e| {
        eprintln!("scale-probe: {e}");
        std::process::exit(1);
    });
    let open = start.elapsed();
    let rss_open = rss_kib();
    println!("open: {:.1} ms", open.as_secs_f64() * 1e3);
    println!(
        "RSS: {} MiB before open, {} MiB right after open",
        rss_before / 1024,
        rss_open / 1024
    );

    let now = Timestamp::from_unix_secs(1_764_100_000).expect("time");
    let mut x = 0x5EED_u64;
    let picks: Vec<u64> = (0..queries)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % rows
        })
        .collect();
    let q: Vec<(MyKeyId, ProviderId)> = picks
        .iter()
        .map(|&i| (id(i, false), provider(provider_of(i, 0))))
        .collect();
    let keys: Vec<[u8; 14]> = picks.iter().map(|&i| id_bytes(i, false)).collect();
    let mut linked = 0usize;
    for pass in ["cold (first touch)", "hot"] {
        let t = Instant::now();
        for (i, p) in &q {
            linked += usize::from(matches!(
                black_box(reg.lookup(now, i, p)),
                Ok(Lookup::Linked(_))
            ));
        }
        println!(
            "engine lookup, {pass}: {:.1} ns",
            t.elapsed().as_nanos() as f64 / queries as f64
        );
    }
    assert_eq!(
        linked,
        2 * queries,
        "every generated row must be linked for its first provider"
    );
    let refs: Vec<_> = q
        .iter()
        .map(|(_, p)| reg.provider_ref(p).expect("registered"))
        .collect();
    let t = Instant::now();
    for ((i, _), p) in q.iter().zip(&refs) {
        black_box(reg.lookup_ref(now, i, *p).expect("lookup"));
    }
    println!(
        "engine lookup, hot, provider resolved once: {:.1} ns",
        t.elapsed().as_nanos() as f64 / queries as f64
    );
    let mut out = Vec::with_capacity(16);
    let ids: Vec<MyKeyId> = q.iter().map(|(i, _)| *i).collect();
    let p0 = q[0].1;
    let t = Instant::now();
    for chunk in ids.chunks(16) {
        reg.lookup_batch(now, &p0, chunk, &mut out).expect("batch");
        black_box(out.len());
    }
    println!(
        "engine lookup, hot, batches of 16: {:.1} ns",
        t.elapsed().as_nanos() as f64 / queries as f64
    );
    probe_alone(&reg, &keys);
    println!("RSS after lookups: {} MiB", rss_kib() / 1024);
    huge_pages("after the engine's lookups");

    let t = Instant::now();
    let flat = FlatTable::build(rows);
    eprintln!(
        "(flat array baseline built in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    huge_pages("with the flat array built");
    for pass in ["cold (first touch)", "hot"] {
        let t = Instant::now();
        let mut found = 0usize;
        for k in &keys {
            found += usize::from(flat.get_hashed(flat.hash(k), k).is_some());
        }
        assert_eq!(black_box(found), queries);
        println!(
            "flat-array baseline, {pass}: {:.1} ns",
            t.elapsed().as_nanos() as f64 / queries as f64
        );
    }
    // A dependent chain: each probe's key depends on the previous answer, so probes cannot
    // overlap. This is the latency of one probe, which a single request sees.
    let t = Instant::now();
    let mut k = 0usize;
    for _ in 0..queries {
        let key = &keys[k];
        let v = flat.get_hashed(flat.hash(key), key).unwrap_or(0);
        k = (k + 1 + usize::from(v & 1)) % queries;
    }
    black_box(k);
    println!(
        "flat-array baseline, hot, dependent chain: {:.1} ns",
        t.elapsed().as_nanos() as f64 / queries as f64
    );
    let t = Instant::now();
    let mut k = 0usize;
    for _ in 0..queries {
        let v = match reg.lookup(now, &q[k].0, &q[k].1) {
            Ok(Lookup::Linked(s)) => s.as_bytes()[0],
            _ => 0,
        };
        k = (k + 1 + usize::from(v & 1)) % queries;
    }
    black_box(k);
    println!(
        "engine lookup, hot, dependent chain: {:.1} ns",
        t.elapsed().as_nanos() as f64 / queries as f64
    );
    let t = Instant::now();
    let mut hs = [0u64; 16];
    for chunk in keys.chunks(16) {
        for (h, k) in hs.iter_mut().zip(chunk) {
            *h = flat.hash(k);
            flat.prefetch(*h);
        }
        for (h, k) in hs.iter().zip(chunk) {
            black_box(flat.get_hashed(*h, k));
        }
    }
    println!(
        "flat-array baseline, hot, prefetched batches of 16: {:.1} ns",
        t.elapsed().as_nanos() as f64 / queries as f64
    );
}
