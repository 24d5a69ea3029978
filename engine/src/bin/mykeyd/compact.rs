//! `mykeyd compact`: folds a store's log into new snapshot files, with each file reported as
//! it is written.

use std::path::Path;
use std::time::Instant;

use crate::common::open_registry;

/// `mykeyd compact`.
pub fn compact(dir: &Path) -> Result<(), String> {
    let reg = open_registry(dir)?;
    let start = Instant::now();
    let seq = reg
        .store()
        .compact_with_progress(&mut |name| {
            eprintln!("  wrote {name} ({:.1} s)", start.elapsed().as_secs_f64())
        })
        .map_err(|e| e.to_string())?;
    println!(
        "compacted {} at seq {seq} in {:.2} s",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
