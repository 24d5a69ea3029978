//! The store's tables: which exist, their on-disk ids and file names, how their snapshot files
//! lay records out, and how many shards each has.

#[allow(clippy::wildcard_imports)]
use super::*;


/// The tables of a store (ids are the on-disk table ids).
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
        match self {
            Table::Ids => "ids",
            Table::Certs => "certs",
            Table::Revoked => "revoked",
            Table::Providers => "providers",
            Table::Actors => "actors",
            Table::Cas => "cas",
            Table::Pushes => "pushes",
        }
    }

    /// Whether the table's snapshot files keep records inline with their buckets: only `ids`,
    /// the table every counter lookup reads; the others are read on the write path and stay
    /// compact.
    pub fn inline_records(self) -> bool {
        self == Table::Ids
    }

    /// Zero-based index.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// The table with this on-disk id.
    pub fn from_id(id: u8) -> Option<Table> {
        Table::ALL.get(usize::from(id).wrapping_sub(1)).copied()
    }
}

/// Name of the shard file of `table`, `shard`, as of `seq`.
pub fn shard_file_name(table: Table, shard: u16, seq: u64) -> String {
    format!("{}-{shard:04}-{seq:016x}.snap", table.name())
}

/// Shard counts of a new store.
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
    /// Shard count per table, in table order.
    pub fn shard_counts(&self) -> Result<[u16; Table::ALL.len()], StoreError> {
        let c = [
            self.ids_shards,
            self.certs_shards,
            self.revoked_shards,
            1,
            1,
            1,
            1,
        ];
        if c.iter().any(|&n| n == 0 || n > manifest::SHARDS_MAX) {
            return Err(StoreError::Config("shard counts must be 1..=4096"));
        }
        Ok(c)
    }
}

