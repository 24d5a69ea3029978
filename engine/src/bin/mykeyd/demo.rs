//! `mykeyd demo`: builds a store from the embedded sample data once, then answers lookups
//! from it (a tour of the sample, or the pairs given). For a first look at the engine; not for
//! serving.

use std::path::Path;
use std::sync::Arc;

use mykey_engine::id::ActorId;
use mykey_engine::population::{self, BuildOptions};
use mykey_engine::registry::{Registry, RegistryConfig, StoreConfig, Table};
use mykey_engine::store;
use mykey_engine::store::fs::{Fs, RealFs};

use crate::common::{SAMPLE_POPULATION, SAMPLE_PROVIDERS, now};
use crate::query::lookup_line;

/// `mykeyd demo`.
pub fn demo(dir: &Path, queries: &[String]) -> Result<(), String> {
    let at = now();
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

fn table_entries(reg: &Registry, t: Table) -> u64 {
    reg.store()
        .stats()
        .iter()
        .find(|s| s.table == t)
        .map_or(0, |s| {
            s.shard_entries.iter().sum::<u64>() + s.delta_keys as u64
        })
}
