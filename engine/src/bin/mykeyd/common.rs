//! What every `mykeyd` subcommand shares: the clock read once for `now`, opening a store
//! directory (which must exist) or a directory to write into, opening a registry with a
//! recovery report, reading a file or standard input, and copy progress. Owns no command.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mykey_engine::id::Timestamp;
use mykey_engine::registry::{Registry, RegistryConfig};
use mykey_engine::store::fs::{Fs, RealFs};

/// The sample providers, embedded for `demo` and `init`.
pub const SAMPLE_PROVIDERS: &str = include_str!("../../../../snapshots/sample/providers.txt");
/// The sample population, embedded for `demo` and `init`.
pub const SAMPLE_POPULATION: &str = include_str!("../../../../snapshots/sample/population.csv");

/// Now, from the one system clock the server uses too.
pub fn now() -> Timestamp {
    mykey_engine::server::system_clock()
}

/// A directory that must exist already (`RealFs::new` would create it).
pub fn existing_fs(dir: &Path) -> Result<Arc<dyn Fs>, String> {
    if !dir.is_dir() {
        return Err(format!("{}: no such store directory", dir.display()));
    }
    new_fs(dir)
}

/// A directory to write into, created if missing.
pub fn new_fs(dir: &Path) -> Result<Arc<dyn Fs>, String> {
    Ok(Arc::new(
        RealFs::new(dir).map_err(|e| format!("{}: {e}", dir.display()))?,
    ))
}

/// Opens the store in `dir` (which must exist) as a registry, saying what recovery did.
pub fn open_registry(dir: &Path) -> Result<Registry, String> {
    let (reg, rec) = Registry::open_with_report(existing_fs(dir)?, RegistryConfig::default())
        .map_err(|e| e.to_string())?;
    if rec.replayed > 0 || rec.torn_bytes > 0 {
        eprintln!(
            "recovered {}: snapshots at seq {}, {} logged changes replayed, {} torn bytes cut",
            dir.display(),
            rec.snapshot_seq,
            rec.replayed,
            rec.torn_bytes
        );
    }
    Ok(reg)
}

/// A file, or standard input for `-`, buffered.
pub fn open_input(path: &Path) -> Result<Box<dyn BufRead>, String> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            std::io::stdin(),
        )));
    }
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
}

/// Progress of a copy: each file as it lands.
pub fn copied(start: Instant) -> impl FnMut(&str, u64) {
    move |name, bytes| {
        eprintln!(
            "  copied {name} ({bytes} bytes, {:.1} s)",
            start.elapsed().as_secs_f64()
        )
    }
}
