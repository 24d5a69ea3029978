//! Reading the system of record back: the chain recomputed over `change_log` with the first
//! mismatch named (`mykeyd cluster verify`), one ID's history, each entry with its seq and
//! chain hash (`mykeyd history`), and the extract of it a municipality checks against a
//! published head without PostgreSQL and without seeing any other ID's data (`mykeyd history
//! --extract`, `mykeyd cluster check-extract`). Read-only.

use tokio_postgres::Client;

use super::{ClusterError, ROWS_PER_QUERY, check_row};
use crate::id::MyKeyId;
use crate::store::Change;

fn pg(source: tokio_postgres::Error) -> ClusterError {
    ClusterError::Postgres {
        op: "read change_log",
        source,
    }
}

/// What a verification checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The first seq checked.
    pub from: u64,
    /// The last seq checked.
    pub to: u64,
    /// The chain hash at `to`.
    pub hash: [u8; 32],
}

/// Recomputes the chain over `from..=to` (`to`: the head when `None`), starting from the
/// stored hash at `from - 1` (the recorded genesis digest when `from` is 1). Every seq must be present,
/// every payload must decode, and every stored hash must equal the recomputed one; the first
/// that does not is the error.
pub async fn verify(c: &Client, from: u64, to: Option<u64>) -> Result<Verified, ClusterError> {
    let from = from.max(1);
    let to = head_or(c, to).await?;
    let prev = hash_before(c, from).await?;
    let hash = walk(c, from, to, prev, &mut |_, _| Ok(())).await?;
    Ok(Verified { from, to, hash })
}

/// `to`, or the head's seq when `None`.
async fn head_or(c: &Client, to: Option<u64>) -> Result<u64, ClusterError> {
    match to {
        Some(t) => Ok(t),
        None => Ok(super::writer::head(c).await?.seq),
    }
}

/// The chain hash before `from`: the stored hash at `from - 1`, the recorded genesis digest
/// when `from` is 1.
async fn hash_before(c: &Client, from: u64) -> Result<[u8; 32], ClusterError> {
    if from <= 1 {
        return super::genesis::recorded(c).await;
    }
    let h = super::hash_at(c, from - 1, "read change_log")
        .await?
        .ok_or(ClusterError::BadRow {
            seq: from - 1,
            what: "missing (pruned, or the start of the range does not follow a stored row)",
        })?;
    stored_hash(from - 1, &h)
}

/// What [`walk`] calls with each checked row's seq and payload.
type EachRow<'a> = dyn FnMut(u64, &[u8]) -> Result<(), ClusterError> + 'a;

/// Reads and checks the rows `from..=to` in seq order ([`check_row`], from the chain hash
/// `prev`), [`ROWS_PER_QUERY`] per query, calling `each` with every row's seq and payload;
/// returns the chain hash at `to`. Every seq must be present.
async fn walk(
    c: &Client,
    from: u64,
    to: u64,
    prev: [u8; 32],
    each: &mut EachRow<'_>,
) -> Result<[u8; 32], ClusterError> {
    let mut hash = prev;
    let mut next = from;
    while next <= to {
        let rows = c
            .query(
                "SELECT seq, payload, hash FROM change_log WHERE seq >= $1 AND seq <= $2
                 ORDER BY seq LIMIT $3",
                &[&(next as i64), &(to as i64), &ROWS_PER_QUERY],
            )
            .await
            .map_err(pg)?;
        if rows.is_empty() {
            return Err(ClusterError::BadRow {
                seq: next,
                what: "missing",
            });
        }
        for r in rows {
            let (_, payload, h) = check_row(&r, next, &hash)?;
            each(next, payload)?;
            hash = h;
            next += 1;
        }
    }
    Ok(hash)
}

fn stored_hash(seq: u64, v: &[u8]) -> Result<[u8; 32], ClusterError> {
    v.try_into().map_err(|_| ClusterError::BadRow {
        seq,
        what: "a chain hash that is not 32 bytes",
    })
}

/// One change in an ID's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its seq.
    pub seq: u64,
    /// The change itself (time, actor, kind, the record writes).
    pub change: Change,
    /// Its chain hash.
    pub hash: [u8; 32],
}

/// Every change that concerns `id`, in seq order, from the per-ID index the writer keeps.
pub async fn history(c: &Client, id: &MyKeyId) -> Result<Vec<Entry>, ClusterError> {
    let rows = c
        .query(
            "SELECT l.seq, l.payload, l.hash FROM id_changes i JOIN change_log l USING (seq)
             WHERE i.mykey_id = $1 ORDER BY l.seq",
            &[&id.as_str()],
        )
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|r| {
            let seq = r.get::<_, i64>(0) as u64;
            let change = Change::decode(seq, r.get(1)).ok_or(ClusterError::BadRow {
                seq,
                what: "its payload is not a change",
            })?;
            Ok(Entry {
                seq,
                change,
                hash: stored_hash(seq, r.get(2))?,
            })
        })
        .collect()
}

/// The first line of an extract (format version 1).
pub const EXTRACT_MAGIC: &str = "mykey-extract 1";
/// Longest extract line accepted by [`check_extract`]: a change's payload in hex.
pub const EXTRACT_LINE_MAX: usize = 2 * 1024 * 1024;

/// Writes the extract of `id`'s history to `out` (`engine/CLUSTER.md`, "Provable history"):
/// every `change_log` row from the ID's first change to `to` (the head when `None`), the ID's
/// own changes with their payloads and every other change by its payload's digest only, so
/// that the holder can recompute the chain to a published head without seeing anyone else's
/// data. Returns the last seq and the chain hash there.
///
/// Text, one record per line: `mykey-extract 1`, `id <ID>`, `prev <hash at the first seq - 1>`,
/// then per seq `<seq> c <payload hex>` (the ID's) or `<seq> d <SHA-256 of the payload, hex>`,
/// then `end <seq> <chain hash hex>`.
pub async fn extract(
    c: &Client,
    id: &MyKeyId,
    to: Option<u64>,
    out: &mut dyn std::io::Write,
) -> Result<(u64, [u8; 32]), ClusterError> {
    let mine: std::collections::BTreeSet<u64> = c
        .query(
            "SELECT seq FROM id_changes WHERE mykey_id = $1 ORDER BY seq",
            &[&id.as_str()],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect();
    let Some(&from) = mine.first() else {
        return Err(ClusterError::BadRow {
            seq: 0,
            what: "no change concerns this ID (or its history was pruned)",
        });
    };
    let to = head_or(c, to).await?;
    let prev = hash_before(c, from).await?;
    let io = ClusterError::Extract;
    writeln!(
        out,
        "{EXTRACT_MAGIC}\nid {id}\nprev {:x}",
        crate::id::Hex(&prev)
    )
    .map_err(io)?;
    let hash = walk(c, from, to, prev, &mut |seq, payload| {
        if mine.contains(&seq) {
            writeln!(out, "{seq} c {:x}", crate::id::Hex(payload)).map_err(io)
        } else {
            let d = super::payload_digest(payload);
            writeln!(out, "{seq} d {:x}", crate::id::Hex(&d)).map_err(io)
        }
    })
    .await?;
    writeln!(out, "end {to} {:x}", crate::id::Hex(&hash)).map_err(io)?;
    Ok((to, hash))
}

/// What [`check_extract`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedExtract {
    /// The ID.
    pub id: MyKeyId,
    /// Its changes in the extract, each with its seq and chain hash.
    pub entries: Vec<Entry>,
    /// The last seq.
    pub to: u64,
    /// The chain hash recomputed at `to`.
    pub hash: [u8; 32],
}

/// Why an extract does not check.
#[derive(Debug, thiserror::Error)]
#[error("extract line {line}: {what}")]
pub struct ExtractError {
    /// The line (from 1).
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

/// Checks an extract without PostgreSQL: its seqs run without a gap, each of the ID's changes
/// decodes and touches the ID, the chain recomputed from `prev` over every line gives the
/// extract's `end` hash, and, when given, that hash is the published head `(seq, hash)`. What it
/// proves: these changes are in the history whose head was published, at these seqs. What it
/// cannot: that the holder was given every change of the ID (a change given by digest only
/// cannot be told apart).
pub fn check_extract(
    text: &str,
    published: Option<(u64, [u8; 32])>,
) -> Result<CheckedExtract, ExtractError> {
    let bad = |line: usize, what: &str| ExtractError {
        line,
        what: what.to_owned(),
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut field = |name: &str| -> Result<(usize, String), ExtractError> {
        let (n, l) = lines.next().ok_or_else(|| bad(0, "ends early"))?;
        if l.len() > EXTRACT_LINE_MAX {
            return Err(bad(n, "longer than an extract line may be"));
        }
        l.strip_prefix(name)
            .map(|v| (n, v.to_owned()))
            .ok_or_else(|| bad(n, &format!("expected `{name}…`")))
    };
    let (n, magic) = field("")?;
    if magic != EXTRACT_MAGIC {
        return Err(bad(n, "not a mykey extract of format 1"));
    }
    let (n, id) = field("id ")?;
    let id = MyKeyId::parse(id.as_bytes()).map_err(|e| bad(n, &e.to_string()))?;
    let (n, prev) = field("prev ")?;
    let mut hash =
        crate::id::parse_hex32(&prev).ok_or_else(|| bad(n, "prev is not 64 hex digits"))?;
    let mut entries = Vec::new();
    let mut last: Option<u64> = None;
    for (n, l) in lines {
        if l.len() > EXTRACT_LINE_MAX {
            return Err(bad(n, "longer than an extract line may be"));
        }
        let parts: Vec<&str> = l.split(' ').collect();
        match parts.as_slice() {
            ["end", seq, h] => {
                let seq: u64 = seq.parse().map_err(|_| bad(n, "end seq is not a number"))?;
                let h = crate::id::parse_hex32(h)
                    .ok_or_else(|| bad(n, "end hash is not 64 hex digits"))?;
                if last != Some(seq) {
                    return Err(bad(n, "end names another seq than the last change"));
                }
                if h != hash {
                    return Err(bad(
                        n,
                        "the chain recomputed over the extract ends at another hash",
                    ));
                }
                if let Some((pseq, phash)) = published
                    && (pseq != seq || phash != hash)
                {
                    return Err(bad(
                        n,
                        &format!(
                            "the extract ends at seq {seq} with {:x}, not at the published head (seq {pseq}, {:x})",
                            crate::id::Hex(&hash),
                            crate::id::Hex(&phash)
                        ),
                    ));
                }
                if entries.is_empty() {
                    return Err(bad(n, "no change of the ID"));
                }
                return Ok(CheckedExtract {
                    id,
                    entries,
                    to: seq,
                    hash,
                });
            }
            [seq, kind, v] => {
                let seq: u64 = seq.parse().map_err(|_| bad(n, "seq is not a number"))?;
                if last.is_some_and(|l| seq != l + 1) {
                    return Err(bad(n, "a gap in the seqs"));
                }
                let bytes = crate::id::parse_hex(v).ok_or_else(|| bad(n, "not hex"))?;
                match *kind {
                    "d" => {
                        let d: [u8; 32] = bytes
                            .try_into()
                            .map_err(|_| bad(n, "a digest is 32 bytes"))?;
                        hash = super::chain_step(&hash, &d);
                    }
                    "c" => {
                        let change = Change::decode(seq, &bytes)
                            .ok_or_else(|| bad(n, "the payload is not a change"))?;
                        let mine = change.puts.iter().any(|p| {
                            p.key == id.as_bytes() || p.value.as_deref() == Some(id.as_bytes())
                        });
                        if !mine {
                            return Err(bad(
                                n,
                                "a change given in full that does not touch the ID",
                            ));
                        }
                        hash = super::chain_hash(&hash, &bytes);
                        entries.push(Entry { seq, change, hash });
                    }
                    _ => {
                        return Err(bad(
                            n,
                            "a change line is `<seq> c <payload>` or `<seq> d <digest>`",
                        ));
                    }
                }
                last = Some(seq);
            }
            _ => return Err(bad(n, "not a change line nor `end`")),
        }
    }
    Err(bad(0, "no `end` line"))
}
