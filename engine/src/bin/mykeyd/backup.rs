//! `mykeyd backup` and `mykeyd restore`: a consistent copy of a store taken while it serves,
//! verified before the command returns, and a copy restored into a new directory and opened.

use std::path::Path;
use std::time::Instant;

use mykey_engine::registry::SCHEMA;
use mykey_engine::store;

use crate::common::{copied, existing_fs, new_fs};

/// `mykeyd backup`.
pub fn backup(dir: &Path, out: &Path) -> Result<(), String> {
    let (src, dest) = (existing_fs(dir)?, new_fs(out)?);
    let start = Instant::now();
    let r = store::backup::backup(&*src, &*dest, &SCHEMA, &mut copied(start))
        .map_err(|e| e.to_string())?;
    println!(
        "backed up {} to {}: snapshot seq {}, changes 1..={}, {} files, {} bytes, verified, in {:.2} s",
        dir.display(),
        out.display(),
        r.snapshot_seq,
        r.last_seq,
        r.files,
        r.bytes,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `mykeyd restore`.
pub fn restore(from: &Path, dir: &Path) -> Result<(), String> {
    let (src, dest) = (existing_fs(from)?, new_fs(dir)?);
    let start = Instant::now();
    let r = store::backup::restore(src, dest, &SCHEMA, &mut copied(start))
        .map_err(|e| e.to_string())?;
    println!(
        "restored {} into {}: snapshot seq {}, changes 1..={}, opened and verified in {:.2} s",
        from.display(),
        dir.display(),
        r.snapshot_seq,
        r.last_seq,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
