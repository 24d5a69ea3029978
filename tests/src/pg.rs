//! PostgreSQL for the cluster tests: the throwaway server (`postgres.rs`, shared with the
//! engine's process tests) and a registry writing through it.

use std::sync::Arc;

use mykey_engine::cluster::record::PgRecord;
use mykey_engine::cluster::writer::Writer;
use mykey_engine::registry::Registry;

use crate::{TempDir, registry_with};

#[path = "postgres.rs"]
mod postgres;
pub use postgres::Postgres;

/// A new, empty registry in `dir` whose group commit goes through `writer` to PostgreSQL.
pub fn registry_through(dir: &TempDir, writer: Writer) -> Arc<Registry> {
    writing_through(registry_with(dir, &[]), writer)
}

/// `node`, its group commit now going through `writer` to PostgreSQL.
pub fn writing_through(node: Registry, writer: Writer) -> Arc<Registry> {
    let node = Arc::new(node);
    let record = PgRecord::spawn(writer, node.mirror_handle()).expect("writer thread");
    node.store()
        .set_system_of_record(Arc::new(record))
        .expect("set once");
    node
}
