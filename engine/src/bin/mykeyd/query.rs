//! `mykeyd lookup` and `mykeyd show`: one answer, or everything a store holds for one MyKey
//! ID, read from a store directory. Writes nothing to the store.

use std::path::Path;

use mykey_engine::id::{MyKeyId, ProviderId, Timestamp};
use mykey_engine::registry::Registry;

use crate::common::{now, open_registry};

/// One lookup line: `<id> @ <provider>: <answer>`, the answer worded as the `mykey` CLI words
/// it.
pub fn lookup_line(
    reg: &Registry,
    at: Timestamp,
    id: &str,
    provider: &str,
) -> Result<String, String> {
    let id = MyKeyId::parse(id.as_bytes()).map_err(|e| format!("{id:?}: {e}"))?;
    let p = ProviderId::parse(provider.as_bytes()).map_err(|e| format!("{provider:?}: {e}"))?;
    let l = reg.lookup(at, &id, &p).map_err(|e| e.to_string())?;
    Ok(format!("{id} @ {p}: {l}"))
}

/// `mykeyd lookup`.
pub fn lookup(dir: &Path, id: &str, provider: &str) -> Result<(), String> {
    let reg = open_registry(dir)?;
    println!("{}", lookup_line(&reg, now(), id, provider)?);
    Ok(())
}

/// `mykeyd show`.
pub fn show(dir: &Path, id: &str) -> Result<(), String> {
    let reg = open_registry(dir)?;
    let id = MyKeyId::parse(id.as_bytes()).map_err(|e| format!("{id:?}: {e}"))?;
    let Some(v) = reg.describe(&id).map_err(|e| e.to_string())? else {
        return Err(format!("{id}: unknown MyKey ID"));
    };
    println!(
        "{id}: {} since {} by {}",
        v.state.name(),
        v.state_at,
        v.state_by
    );
    match v.cert {
        Some(c) => println!("  certificate {c}"),
        None => println!("  no certificate bound"),
    }
    for (p, s, at, by) in v.links {
        println!("  {p} = {s} (linked {at} by {by})");
    }
    Ok(())
}
