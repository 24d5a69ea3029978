//! The registry's tables in the store (`snapshots/README.md`, "Tables"): which exist, their
//! on-disk ids and file names, which keeps its records inline, how many shards each gets, and
//! which logged changes concern one MyKey ID. The store takes this schema and knows nothing of
//! what its tables mean.

use crate::id::MyKeyId;
use crate::store::{Change, Layout, Schema, StoreError, TableId, TableSpec};

/// The registry's tables (the discriminant is the on-disk table id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Table {
    /// MyKey ID → ID record.
    Ids = 1,
    /// Certificate reference → MyKey ID bound to it.
    Certs = 2,
    /// Certificate reference → revocation record.
    Revoked = 3,
    /// Provider ID → dictionary entry.
    Providers = 4,
    /// Actor id → dictionary entry.
    Actors = 5,
    /// CA key identifier → dictionary entry.
    Cas = 6,
    /// Partner revocation pushes by push id, and the last CRL number applied per CA.
    /// Added after format version 1; an older manifest without it is upgraded on open.
    Pushes = 7,
}

impl Table {
    /// Every table, in id order.
    pub const ALL: [Table; 7] = [
        Table::Ids,
        Table::Certs,
        Table::Revoked,
        Table::Providers,
        Table::Actors,
        Table::Cas,
        Table::Pushes,
    ];

    /// The table's file-name prefix.
    pub fn name(self) -> &'static str {
        SCHEMA.tables[self as usize - 1].name
    }

    /// Zero-based position in [`SCHEMA`].
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// The table with this on-disk id.
    pub fn from_id(id: u8) -> Option<Table> {
        Table::ALL.get(usize::from(id).wrapping_sub(1)).copied()
    }
}

impl From<Table> for TableId {
    fn from(t: Table) -> Self {
        TableId::new(t as u8)
    }
}

impl PartialEq<Table> for TableId {
    fn eq(&self, t: &Table) -> bool {
        self.id() == *t as u8
    }
}

const fn table(name: &'static str, hot: bool) -> TableSpec {
    TableSpec { name, hot }
}

/// The schema of a registry's store. Only `ids`, the table every counter lookup reads, is hot;
/// the others are read on the write path.
pub static SCHEMA: Schema = Schema {
    tables: &[
        table("ids", true),
        table("certs", false),
        table("revoked", false),
        table("providers", false),
        table("actors", false),
        table("cas", false),
        table("pushes", false),
    ],
};

const _: () = assert!(Table::ALL.len() == 7 && Table::Pushes as usize == 7);

/// Shard counts of a new registry store; the small dictionaries and the pushes table have one
/// shard each.
#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    /// Shards of the `ids` table.
    pub ids_shards: u16,
    /// Shards of the `certs` table.
    pub certs_shards: u16,
    /// Shards of the `revoked` table.
    pub revoked_shards: u16,
}

impl Default for StoreConfig {
    fn default() -> Self {
        // 16 shards keep a 100M-ID shard file near 400 MB, small enough to rewrite in seconds.
        Self {
            ids_shards: 16,
            certs_shards: 16,
            revoked_shards: 4,
        }
    }
}

impl StoreConfig {
    /// The store layout: [`SCHEMA`] with these shard counts, checked.
    pub fn layout(&self) -> Result<Layout, StoreError> {
        let l = Layout {
            schema: &SCHEMA,
            shards: vec![
                self.ids_shards,
                self.certs_shards,
                self.revoked_shards,
                1,
                1,
                1,
                1,
            ],
        };
        l.check()?;
        Ok(l)
    }
}

/// Whether a logged change concerns `id`: it writes the ID's record, or binds a certificate to
/// it (a `certs` value is the MyKey ID).
pub fn concerns(c: &Change, id: &MyKeyId) -> bool {
    c.puts.iter().any(|p| {
        (p.table == Table::Ids as u8 && p.key == id.as_bytes())
            || (p.table == Table::Certs as u8 && p.value.as_deref() == Some(id.as_bytes()))
    })
}
