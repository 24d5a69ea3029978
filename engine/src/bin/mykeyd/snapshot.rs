//! `mykeyd snapshot build|inspect|verify|digest`: a population file turned into snapshot files
//! without the log, what a store directory holds, with every checksum checked on verify, and
//! the content digest that compares replicas.

use std::path::Path;
use std::time::Instant;

use mykey_engine::id::{ActorId, Timestamp};
use mykey_engine::population::{self, BuildOptions, Progress};
use mykey_engine::registry::{SCHEMA, StoreConfig};
use mykey_engine::store;
use mykey_engine::store::fs::RealFs;

use crate::BuildArgs;
use crate::common::{existing_fs, now, open_input};

/// `mykeyd snapshot build`.
pub fn build(a: &BuildArgs) -> Result<(), String> {
    let at = match a.at {
        Some(s) => Timestamp::from_unix_secs(s).map_err(|e| e.to_string())?,
        None => now(),
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
    opts.store.layout().map_err(|e| e.to_string())?;
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

/// `mykeyd snapshot inspect` (and `verify`, which checks every checksum and invariant).
/// `mykeyd snapshot digest`.
pub fn digest(dir: &Path) -> Result<(), String> {
    let reg = crate::common::open_registry(dir)?;
    let d = mykey_engine::cluster::genesis::state_digest(&reg).map_err(|e| e.to_string())?;
    println!(
        "seq {} state digest {:x}",
        reg.store().durable_seq(),
        mykey_engine::id::Hex(&d)
    );
    Ok(())
}

pub fn inspect(dir: &Path, verify: bool) -> Result<(), String> {
    let fs = existing_fs(dir)?;
    let start = Instant::now();
    let ins = store::inspect(&*fs, &SCHEMA, verify, &mut |name| {
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
    for ((t, counts), layouts) in ins.shard_entries.iter().zip(&ins.shard_layouts) {
        let total: u64 = counts.iter().sum();
        println!(
            "  {:<9} {:>12} records in {} shard(s): {}; {}",
            t,
            total,
            counts.len(),
            counts
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            layouts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and ")
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
