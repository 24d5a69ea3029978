//! Scale figures of a store built from `gen-population ROWS`: time to open, RSS right after
//! open, and hot lookup time (random rows, after one pass that faults the pages in), beside a
//! flat open-addressing array of the same keys built in the same process. The store's probe of
//! the `ids` table is also timed alone (the record's bytes, no answer made of them), which
//! splits an engine lookup into the probe and the answer.
//!
//! Each case (independent lookups, a dependent chain, batches of 16) runs in rounds, the
//! engine's and the flat array's back to back in every round, so that a shared machine getting
//! busier or quieter moves both; each figure is the median of the rounds with its range, and
//! each ratio is the median of the per-round ratios.
//!
//! `scale-probe STORE ROWS [QUERIES]` (`SCALE_PROBE_ROUNDS`, default 7)

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

/// Rounds of every case, interleaved, unless `SCALE_PROBE_ROUNDS` says otherwise.
const ROUNDS_DEFAULT: usize = 7;
/// Keys a batch case reads at a time (the server's window).
const BATCH: usize = 16;

/// The ns per key of each round of one case.
struct Case {
    name: &'static str,
    ns: Vec<f64>,
}

impl Case {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            ns: Vec::new(),
        }
    }

    /// Runs `f` (which reads `n` keys) once and keeps its time per key.
    fn time(&mut self, n: usize, f: impl FnOnce()) {
        let t = Instant::now();
        f();
        self.ns.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
}

/// The median and the range of `v`.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// `case`'s time per key, and its ratio to `base` round by round (the two ran back to back in
/// each round, so a machine that gets busier moves both).
fn report(case: &Case, base: Option<&Case>) {
    let (m, lo, hi) = spread(&case.ns);
    let ratio = base.map_or(String::new(), |b| {
        let r: Vec<f64> = case.ns.iter().zip(&b.ns).map(|(c, b)| c / b).collect();
        let (m, lo, hi) = spread(&r);
        format!("  = {m:.2}× {} ({lo:.2}–{hi:.2})", b.name)
    });
    println!("  {:<44} {m:7.1} ns ({lo:.1}–{hi:.1}){ratio}", case.name);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (store, rows, queries) = match args.as_slice() {
        [s, r] => (s.clone(), r.parse::<u64>(), Ok(1_000_000usize)),
        [s, r, q] => (s.clone(), r.parse::<u64>(), q.parse::<usize>()),
        _ => {
            eprintln!("usage: scale-probe STORE ROWS [QUERIES]");
            std::process::exit(2);
        }
    };
    let rounds = match std::env::var("SCALE_PROBE_ROUNDS") {
        Err(_) => Ok(ROUNDS_DEFAULT),
        Ok(v) => v.parse::<usize>().map_err(|_| ()),
    };
    let (Ok(rows), Ok(queries), Ok(rounds)) = (rows, queries, rounds) else {
        eprintln!("scale-probe: ROWS, QUERIES and SCALE_PROBE_ROUNDS are numbers");
        std::process::exit(2);
    };
    if rows == 0 || queries == 0 || rounds == 0 {
        eprintln!("scale-probe: ROWS, QUERIES and SCALE_PROBE_ROUNDS are at least 1");
        std::process::exit(2);
    }
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
    let refs: Vec<_> = q
        .iter()
        .map(|(_, p)| reg.provider_ref(p).expect("registered"))
        .collect();
    let ids: Vec<MyKeyId> = q.iter().map(|(i, _)| *i).collect();
    let n = queries;

    let t = Instant::now();
    let linked = q
        .iter()
        .filter(|(i, p)| matches!(reg.lookup(now, i, p), Ok(Lookup::Linked(_))))
        .count();
    println!(
        "engine lookup, cold (first touch): {:.1} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    assert_eq!(
        linked, n,
        "every generated row must be linked for its first provider"
    );
    println!("RSS after the first touch: {} MiB", rss_kib() / 1024);
    huge_pages("after the engine's first touch");
    let t = Instant::now();
    let flat = FlatTable::build(rows);
    eprintln!(
        "(flat array baseline built in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let found = keys
        .iter()
        .filter(|k| flat.get_hashed(flat.hash(k), k).is_some())
        .count();
    assert_eq!(found, n, "the flat array holds every generated row");
    println!(
        "flat-array baseline, cold (first touch): {:.1} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    huge_pages("with the flat array built");

    let store = reg.store();
    let probe = |k: &[u8; 14]| {
        store
            .get_hashed(Table::Ids, store.hash(k), k, |v| v.map_or(0, <[u8]>::len))
            .expect("probe")
    };
    let answer_byte = |r: Result<Lookup, _>| match r {
        Ok(Lookup::Linked(s)) => usize::from(s.as_bytes()[0]),
        _ => 0,
    };
    let mut flat_ind = Case::new("flat array");
    let mut eng_ind = Case::new("engine lookup");
    let mut eng_ind_ref = Case::new("engine lookup, provider resolved once");
    let mut probe_ind = Case::new("store probe alone (the record's bytes)");
    let mut flat_chain = Case::new("flat array");
    let mut flat_line_chain = Case::new("flat array + a 64-B bucket's CRC, next requested");
    let mut flat_bucket_chain = Case::new("flat array + a 256-B bucket's CRC, next requested");
    let mut flat_bucket_line_chain =
        Case::new("flat array + 256-B buckets requested, one line's CRC");
    let mut flat_bucket_pair_chain =
        Case::new("flat array + 256-B buckets requested, two lines' CRC");
    let mut eng_chain = Case::new("engine lookup");
    let mut eng_chain_ref = Case::new("engine lookup, provider resolved once");
    let mut probe_chain = Case::new("store probe alone (the record's bytes)");
    let mut flat_batch = Case::new("flat array, prefetched");
    let mut eng_batch = Case::new("engine lookup_batch");
    let mut probe_batch = Case::new("store get_batch alone (the records' bytes)");
    let mut out = Vec::with_capacity(BATCH);
    for round in 0..rounds {
        eprintln!("(round {} of {rounds})", round + 1);
        flat_ind.time(n, || {
            for k in &keys {
                black_box(flat.get_hashed(flat.hash(k), k));
            }
        });
        eng_ind.time(n, || {
            for (i, p) in &q {
                black_box(reg.lookup(now, i, p).ok());
            }
        });
        eng_ind_ref.time(n, || {
            for ((i, _), p) in q.iter().zip(&refs) {
                black_box(reg.lookup_ref(now, i, *p).ok());
            }
        });
        probe_ind.time(n, || {
            for k in &keys {
                black_box(probe(k));
            }
        });
        // A dependent chain: each probe's key depends on the previous answer, so probes cannot
        // overlap. This is the latency of one probe, which a single request sees.
        flat_chain.time(n, || {
            let mut k = 0usize;
            for _ in 0..n {
                let v = flat.get_hashed(flat.hash(&keys[k]), &keys[k]).unwrap_or(0);
                k = (k + 1 + usize::from(v & 1)) % n;
            }
            black_box(k);
        });
        for (case, span, checked) in [
            (&mut flat_line_chain, 64, 64),
            (&mut flat_bucket_line_chain, 256, 64),
            (&mut flat_bucket_pair_chain, 256, 128),
            (&mut flat_bucket_chain, 256, 256),
        ] {
            case.time(n, || {
                let mut k = 0usize;
                for _ in 0..n {
                    let v = flat
                        .get_span_checked(flat.hash(&keys[k]), &keys[k], span, checked)
                        .unwrap_or(0);
                    k = (k + 1 + usize::from(v & 1)) % n;
                }
                black_box(k);
            });
        }
        eng_chain.time(n, || {
            let mut k = 0usize;
            for _ in 0..n {
                let v = answer_byte(reg.lookup(now, &q[k].0, &q[k].1));
                k = (k + 1 + (v & 1)) % n;
            }
            black_box(k);
        });
        eng_chain_ref.time(n, || {
            let mut k = 0usize;
            for _ in 0..n {
                let v = answer_byte(reg.lookup_ref(now, &q[k].0, refs[k]));
                k = (k + 1 + (v & 1)) % n;
            }
            black_box(k);
        });
        probe_chain.time(n, || {
            let mut k = 0usize;
            for _ in 0..n {
                k = (k + 1 + (probe(&keys[k]) & 1)) % n;
            }
            black_box(k);
        });
        flat_batch.time(n, || {
            let mut hs = [0u64; BATCH];
            for chunk in keys.chunks(BATCH) {
                for (h, k) in hs.iter_mut().zip(chunk) {
                    *h = flat.hash(k);
                    flat.prefetch(*h);
                }
                for (h, k) in hs.iter().zip(chunk) {
                    black_box(flat.get_hashed(*h, k));
                }
            }
        });
        eng_batch.time(n, || {
            for chunk in ids.chunks(BATCH) {
                reg.lookup_batch(now, &q[0].1, chunk, &mut out)
                    .expect("batch");
                black_box(out.len());
            }
        });
        probe_batch.time(n, || {
            for chunk in keys.chunks(BATCH) {
                let refs: [&[u8]; BATCH] =
                    std::array::from_fn(|j| chunk.get(j).map_or(&[][..], |k| &k[..]));
                store
                    .get_batch(Table::Ids, &refs[..chunk.len()], |_, v| {
                        black_box(v.map(<[u8]>::len));
                    })
                    .expect("batch");
            }
        });
    }
    println!("hot, {rounds} rounds of {n} random rows, median (range) per key:");
    println!(" independent lookups (a loop; misses may overlap)");
    report(&flat_ind, None);
    for c in [&eng_ind, &eng_ind_ref, &probe_ind] {
        report(c, Some(&flat_ind));
    }
    println!(" dependent chain (each key from the previous answer: one lookup's latency)");
    report(&flat_chain, None);
    for c in [
        &flat_line_chain,
        &flat_bucket_line_chain,
        &flat_bucket_pair_chain,
        &flat_bucket_chain,
        &eng_chain,
        &eng_chain_ref,
        &probe_chain,
    ] {
        report(c, Some(&flat_chain));
    }
    println!(" batches of {BATCH}");
    report(&flat_batch, None);
    for c in [&eng_batch, &probe_batch] {
        report(c, Some(&flat_batch));
    }
    println!(
        "RSS at the end (the store and the flat array): {} MiB",
        rss_kib() / 1024
    );
}
