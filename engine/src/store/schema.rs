//! The store's tables as its user declares them: a [`Schema`] lists each table's file name and
//! record layout in on-disk id order, and a [`Layout`] adds each table's shard count for a new
//! store. The store keeps keys and values as bytes in whichever tables it is given; it names no
//! table itself (the registry declares the domain's).

use super::{StoreError, manifest};

/// A table of a store: its on-disk id, the 1-based position of its spec in the [`Schema`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId(u8);

impl TableId {
    /// The table with on-disk id `id` (1-based; 0 is no table and is refused at compile time
    /// in a `const`).
    pub const fn new(id: u8) -> Self {
        assert!(id >= 1, "table ids start at 1");
        Self(id)
    }

    /// The on-disk id.
    pub fn id(self) -> u8 {
        self.0
    }

    /// The zero-based position in the schema.
    pub fn index(self) -> usize {
        usize::from(self.0) - 1
    }
}

/// How one table's snapshot files are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// The table's file-name prefix (`<name>-<shard>-<seq>.snap`); never changes once written.
    pub name: &'static str,
    /// Whether every lookup reads the table: its snapshot buckets are filled less, so that
    /// most probes read one bucket; the others, read on the write path, are packed tighter.
    pub hot: bool,
}

/// The tables of a store in on-disk id order: `tables[i]` has id `i + 1`. A table may be added
/// at the end (a store written without it gets it, empty, when opened); none is ever removed,
/// renamed or renumbered.
#[derive(Debug)]
pub struct Schema {
    /// The tables.
    pub tables: &'static [TableSpec],
}

impl Schema {
    /// How many tables.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Every table, in id order.
    pub fn ids(&self) -> impl Iterator<Item = TableId> + '_ {
        (1..=self.tables.len()).map(|i| TableId(i as u8))
    }

    /// The table with on-disk id `id`, if the schema has one.
    pub fn table(&self, id: u8) -> Option<TableId> {
        (id >= 1 && usize::from(id) <= self.tables.len()).then_some(TableId(id))
    }

    /// A table's spec. A [`TableId`] not of this schema is a caller's bug: it panics.
    pub fn spec(&self, t: TableId) -> &TableSpec {
        &self.tables[t.index()]
    }

    /// A table's name.
    pub fn name(&self, t: TableId) -> &'static str {
        self.spec(t).name
    }
}

/// How a new store is laid out: its schema and each table's shard count, in schema order.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The tables.
    pub schema: &'static Schema,
    /// Shards per table (1..=4096 each).
    pub shards: Vec<u16>,
}

impl Layout {
    /// Checks that every table has a shard count in range.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.shards.len() != self.schema.len() {
            return Err(StoreError::Config("one shard count per table"));
        }
        if self
            .shards
            .iter()
            .any(|&n| n == 0 || n > manifest::SHARDS_MAX)
        {
            return Err(StoreError::Config("shard counts must be 1..=4096"));
        }
        Ok(())
    }
}

/// The file name of a table's shard written at `seq`.
pub fn shard_file_name(table: &str, shard: u16, seq: u64) -> String {
    format!("{table}-{shard:04}-{seq:016x}.snap")
}

#[cfg(test)]
mod tests {
    use super::*;

    static TWO: Schema = Schema {
        tables: &[
            TableSpec {
                name: "a",
                hot: true,
            },
            TableSpec {
                name: "b",
                hot: false,
            },
        ],
    };

    #[test]
    fn ids_are_one_based_positions() {
        assert_eq!(TWO.ids().map(TableId::id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(TWO.table(0), None);
        assert_eq!(TWO.table(3), None);
        assert_eq!(TWO.table(2).map(|t| TWO.name(t)), Some("b"));
        let ok = Layout {
            schema: &TWO,
            shards: vec![4, 1],
        };
        assert!(ok.check().is_ok());
        for bad in [vec![4], vec![0, 1], vec![1, 4097]] {
            assert!(
                Layout {
                    schema: &TWO,
                    shards: bad
                }
                .check()
                .is_err()
            );
        }
    }
}
