//! `mykeyd log`: the changes in a store's write-ahead log, one line each (seq, time, actor,
//! operation, tables written), optionally only those that concern one MyKey ID, as the
//! registry decides.

use std::path::Path;

use mykey_engine::id::MyKeyId;
use mykey_engine::registry::{self, OpKind, Table};
use mykey_engine::store;

use crate::common::existing_fs;

/// `mykeyd log`.
pub fn log(dir: &Path, id: Option<&str>) -> Result<(), String> {
    let fs = existing_fs(dir)?;
    let id = id
        .map(|s| MyKeyId::parse(s.as_bytes()).map_err(|e| format!("{s:?}: {e}")))
        .transpose()?;
    store::read_log(&*fs, |c| {
        if let Some(id) = &id
            && !registry::concerns(c, id)
        {
            return;
        }
        let kind = OpKind::from_u8(c.kind).map_or("unknown", OpKind::name);
        let tables: Vec<&str> = c
            .puts
            .iter()
            .filter_map(|p| Table::from_id(p.table).map(Table::name))
            .collect();
        println!(
            "seq {} at {} by {}: {kind} ({} writes: {})",
            c.seq,
            c.at,
            c.actor,
            c.puts.len(),
            tables.join(" ")
        );
    })
    .map_err(|e| e.to_string())
}
