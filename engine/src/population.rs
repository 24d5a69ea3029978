//! Bulk load: the population file format and the build of snapshot files straight from it.
//!
//! Owns the population and provider-list formats (documented in `snapshots/POPULATION.md`)
//! and [`build`], which turns them into a complete store at seq 0 without going through the log:
//! a national population of 100M links would otherwise be 100M fsync'd changes. It never
//! accepts a row it cannot place exactly: every malformed row, unknown provider, duplicate ID or
//! duplicate certificate is refused with its line number, and nothing is installed unless every
//! row was good.

use std::collections::HashMap;
use std::io::{BufRead, Read};

use crate::answer::IdState;
use crate::id::{ActorId, CertRef, IdError, MyKeyId, ProviderId, ServiceId, Timestamp};
use crate::registry::LINKS_PER_ID_MAX;
use crate::registry::record::{BoundCert, DictEntry, IdRecord, Link};
use crate::registry::{SCHEMA, StoreConfig, Table};
use crate::store::fs::Fs;
use crate::store::hash::{HashKey, shard_of};
use crate::store::snapshot::ShardBuilder;
use crate::store::{StoreError, install_snapshot};

/// The header line every population file starts with.
pub const HEADER: &str = "mykey_id,state,cert,links";
/// Longest line accepted: 14 + state + certificate + 256 links of 32 + 64 bytes fits in 32 KiB.
pub const LINE_LEN_MAX: usize = 32 * 1024;

/// Why a bulk build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PopulationError {
    /// Reading an input failed.
    #[error("{file}: {source}")]
    Read {
        /// Which input.
        file: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line breaks the format.
    #[error("{file} line {line}: {reason}")]
    Line {
        /// Which input.
        file: &'static str,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// A MyKey ID or a certificate appears on two lines.
    #[error("population lines {first} and {second}: the same {what} twice")]
    Duplicate {
        /// What repeats.
        what: &'static str,
        /// Line of the first occurrence.
        first: u64,
        /// Line of the second.
        second: u64,
    },
    /// Writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a build did.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildSummary {
    /// MyKey IDs written.
    pub ids: u64,
    /// Links (mappings) written.
    pub links: u64,
    /// Providers registered.
    pub providers: u64,
}

/// Progress of a long build, reported every [`PROGRESS_EVERY_ROWS`] rows and per phase.
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// Rows parsed so far.
    Rows(u64),
    /// All rows parsed; writing shard files.
    Writing,
    /// A shard file was written and installed.
    Wrote(&'a str),
}

/// Rows between progress reports.
pub const PROGRESS_EVERY_ROWS: u64 = 1_000_000;

/// Settings of a build.
#[derive(Clone, Copy, Debug)]
pub struct BuildOptions {
    /// The time recorded as when every row was registered and linked.
    pub at: Timestamp,
    /// The actor recorded as having done it (the operator's bulk load).
    pub actor: ActorId,
    /// Shard counts.
    pub store: StoreConfig,
    /// A fixed hash key (golden files); random when `None`.
    pub hash_key: Option<HashKey>,
}

fn line_err(file: &'static str, line: u64, reason: impl std::fmt::Display) -> PopulationError {
    PopulationError::Line {
        file,
        line,
        reason: reason.to_string(),
    }
}

/// Reads lines, bounding their length, skipping blank lines and `#` comments.
fn for_each_line(
    file: &'static str,
    mut r: impl BufRead,
    mut f: impl FnMut(u64, &str) -> Result<(), PopulationError>,
) -> Result<(), PopulationError> {
    let mut buf = Vec::with_capacity(256);
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = r
            .by_ref()
            .take(LINE_LEN_MAX as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| PopulationError::Read { file, source })?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        if buf.len() > LINE_LEN_MAX {
            return Err(line_err(
                file,
                line,
                format!("line longer than {LINE_LEN_MAX} bytes"),
            ));
        }
        let text = std::str::from_utf8(&buf)
            .map_err(|e| line_err(file, line, format!("not UTF-8 at byte {}", e.valid_up_to())))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() || text.starts_with('#') {
            continue;
        }
        f(line, text)?;
    }
}

/// Reads a provider list: one provider ID per line.
pub fn read_providers(r: impl BufRead) -> Result<Vec<ProviderId>, PopulationError> {
    let mut seen: HashMap<ProviderId, u64> = HashMap::new();
    let mut out = Vec::new();
    for_each_line("providers", r, |line, text| {
        let p = ProviderId::parse(text.as_bytes()).map_err(|e| line_err("providers", line, e))?;
        if let Some(first) = seen.insert(p, line) {
            return Err(line_err(
                "providers",
                line,
                format!("provider {p} already listed on line {first}"),
            ));
        }
        out.push(p);
        Ok(())
    })?;
    Ok(out)
}

/// One parsed population row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The MyKey ID.
    pub id: MyKeyId,
    /// Its state: active, provisional or suspended.
    pub state: IdState,
    /// Its certificate.
    pub cert: CertRef,
    /// Its links.
    pub links: Vec<(ProviderId, ServiceId)>,
}

/// Why a population row is refused, by column.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// Not exactly four comma-separated columns.
    #[error("expected 4 comma-separated columns ({HEADER}), got {found}")]
    Columns {
        /// Columns found.
        found: usize,
    },
    /// The MyKey ID column.
    #[error("{0}")]
    Id(IdError),
    /// The state column is not `active`, `provisional` or `suspended`.
    #[error("state must be active, provisional or suspended, got {found:?}")]
    State {
        /// The state found.
        found: String,
    },
    /// The certificate column.
    #[error("cert: {0}")]
    Cert(IdError),
    /// A link that is not `provider=service_id`.
    #[error("link {link} must be provider=service_id")]
    LinkForm {
        /// 1-based position of the link in the column.
        link: usize,
    },
    /// A link's provider or service ID.
    #[error("link {link}: {source}")]
    Link {
        /// 1-based position of the link in the column.
        link: usize,
        /// What is wrong with it.
        source: IdError,
    },
    /// A provisional ID with links.
    #[error("a provisional ID cannot have links before confirmation")]
    ProvisionalLinks,
    /// More links than an ID may hold.
    #[error("{found} links, more than {LINKS_PER_ID_MAX}")]
    TooManyLinks {
        /// Links found.
        found: usize,
    },
}

/// Parses one data line of a population file.
pub fn parse_row(text: &str) -> Result<Row, RowError> {
    let mut cols = text.split(',');
    let (Some(id), Some(state), Some(cert), Some(links), None) = (
        cols.next(),
        cols.next(),
        cols.next(),
        cols.next(),
        cols.next(),
    ) else {
        return Err(RowError::Columns {
            found: text.split(',').count(),
        });
    };
    let id = MyKeyId::parse(id.as_bytes()).map_err(RowError::Id)?;
    let state = match state {
        "active" => IdState::Active,
        "provisional" => IdState::Provisional,
        "suspended" => IdState::Suspended,
        other => {
            return Err(RowError::State {
                found: other.to_owned(),
            });
        }
    };
    let cert = CertRef::parse_text(cert).map_err(RowError::Cert)?;
    let mut out = Vec::new();
    if !links.is_empty() {
        for (i, pair) in links.split(';').enumerate() {
            let link = i + 1;
            let (p, s) = pair.split_once('=').ok_or(RowError::LinkForm { link })?;
            let bad = |source| RowError::Link { link, source };
            let p = ProviderId::parse(p.as_bytes()).map_err(bad)?;
            let s = ServiceId::parse_text(s).map_err(bad)?;
            out.push((p, s));
        }
    }
    if state == IdState::Provisional && !out.is_empty() {
        return Err(RowError::ProvisionalLinks);
    }
    if out.len() > LINKS_PER_ID_MAX {
        return Err(RowError::TooManyLinks { found: out.len() });
    }
    Ok(Row {
        id,
        state,
        cert,
        links: out,
    })
}

/// Builds a complete store in `fs` (which must hold none) from a provider list and a
/// population file, at seq 0, without writing the log.
pub fn build(
    fs: &dyn Fs,
    providers: impl BufRead,
    population: impl BufRead,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<BuildSummary, PopulationError> {
    if fs.exists(crate::store::manifest::NAME) {
        return Err(StoreError::Exists {
            path: fs.root().to_owned(),
        }
        .into());
    }
    let counts = opts.store.layout()?.shards;
    let key = opts.hash_key.unwrap_or_else(HashKey::random);
    let providers = read_providers(providers)?;
    let provider_index: HashMap<ProviderId, u32, ahash::RandomState> = providers
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, i as u32))
        .collect();
    let mut builders: Vec<Vec<ShardBuilder>> = counts
        .iter()
        .map(|&n| (0..n).map(|_| ShardBuilder::default()).collect())
        .collect();
    // Line number of every record pushed, per (table, shard), to name lines in errors.
    let mut lines: Vec<Vec<Vec<u64>>> = counts
        .iter()
        .map(|&n| (0..n).map(|_| Vec::new()).collect())
        .collect();
    let mut cas: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut summary = BuildSummary {
        providers: providers.len() as u64,
        ..BuildSummary::default()
    };
    let mut push = |table: Table, k: &[u8], v: &[u8], line: u64| -> Result<(), PopulationError> {
        let h = key.hash(k);
        let s = shard_of(h, builders[table.index()].len());
        builders[table.index()][s].push(h, k, v)?;
        lines[table.index()][s].push(line);
        Ok(())
    };

    let mut seen_header = false;
    for_each_line("population", population, |line, text| {
        if !seen_header {
            if text.trim() != HEADER {
                return Err(line_err(
                    "population",
                    line,
                    format!("the first line must be the header {HEADER:?}"),
                ));
            }
            seen_header = true;
            return Ok(());
        }
        let row = parse_row(text).map_err(|r| line_err("population", line, r))?;
        let next_ca = cas.len() as u32;
        let ca = *cas.entry(row.cert.ca_key_id().to_vec()).or_insert(next_ca);
        let mut links = Vec::with_capacity(row.links.len());
        for (p, s) in &row.links {
            let provider = *provider_index.get(p).ok_or_else(|| {
                line_err(
                    "population",
                    line,
                    format!("provider {p} is not in the provider list"),
                )
            })?;
            links.push(Link {
                provider,
                service: *s,
                at: opts.at,
                actor: 0,
            });
        }
        links.sort_by_key(|l| l.provider);
        if let Some(w) = links.windows(2).find(|w| w[0].provider == w[1].provider) {
            let p = providers[w[0].provider as usize];
            return Err(line_err(
                "population",
                line,
                format!("provider {p} linked twice"),
            ));
        }
        let bound = BoundCert::of(ca, &row.cert);
        let rec = IdRecord {
            state: row.state,
            state_at: opts.at,
            state_actor: 0,
            registered_at: opts.at,
            registered_by: 0,
            cert: Some(bound),
            links,
        };
        summary.ids += 1;
        summary.links += rec.links.len() as u64;
        push(Table::Ids, row.id.as_bytes(), &rec.encode(), line)?;
        push(Table::Certs, &bound.key(), row.id.as_bytes(), line)?;
        if summary.ids.is_multiple_of(PROGRESS_EVERY_ROWS) {
            progress(Progress::Rows(summary.ids));
        }
        Ok(())
    })?;
    if !seen_header {
        return Err(line_err(
            "population",
            1,
            format!("empty file: expected the header {HEADER:?}"),
        ));
    }
    let entry = |index: u32| {
        DictEntry {
            index,
            at: opts.at,
            actor: 0,
        }
        .encode()
    };
    for (i, p) in providers.iter().enumerate() {
        push(Table::Providers, p.as_bytes(), &entry(i as u32), 0)?;
    }
    push(Table::Actors, opts.actor.as_bytes(), &entry(0), 0)?;
    for (ca, i) in &cas {
        push(Table::Cas, ca, &entry(*i), 0)?;
    }
    progress(Progress::Writing);
    let mut written: Vec<String> = Vec::new();
    let installed = install_snapshot(fs, &SCHEMA, key, 0, &builders, false, &mut |name| {
        written.push(name.to_owned());
        progress(Progress::Wrote(name))
    });
    if installed.is_err() {
        // Leave no half-built store behind: without a manifest these files are only clutter.
        for name in &written {
            let _ = fs.remove(name);
        }
    }
    match installed {
        Err(StoreError::Duplicate {
            table,
            shard,
            first,
            second,
        }) => {
            let l = &lines[table.index()][usize::from(shard)];
            Err(PopulationError::Duplicate {
                what: if table == Table::Ids {
                    "MyKey ID"
                } else {
                    "certificate"
                },
                first: l[first],
                second: l[second],
            })
        }
        Err(e) => Err(e.into()),
        Ok(()) => Ok(summary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_row_rules() {
        let r = parse_row("1C2410DF79DGEL,active,AB:01,A-α1-0001=ABCDEFGHI;A-β1-0001=2802121234")
            .expect("valid");
        assert_eq!(r.links.len(), 2);
        assert!(
            parse_row("1C2410DF79DGEL,active,AB:01,")
                .expect("valid")
                .links
                .is_empty()
        );
        let e = parse_row("1C2410DF79DGEL,active,AB:01").expect_err("3 columns");
        assert_eq!(e, RowError::Columns { found: 3 });
        assert!(e.to_string().contains("4 comma-separated columns"), "{e}");
        let e = parse_row("1C2410df79DGEL,active,AB:01,").expect_err("lower case");
        assert!(matches!(e, RowError::Id(_)), "{e:?}");
        assert!(e.to_string().contains("A-Z and 0-9"), "{e}");
        let e = parse_row("1C2410DF79DGEL,gone,AB:01,").expect_err("state");
        assert_eq!(
            e,
            RowError::State {
                found: "gone".into()
            }
        );
        let e = parse_row("1C2410DF79DGEL,provisional,AB:01,P=1").expect_err("links");
        assert_eq!(e, RowError::ProvisionalLinks);
        let e = parse_row("1C2410DF79DGEL,active,AB:01,P1").expect_err("pair");
        assert_eq!(e, RowError::LinkForm { link: 1 });
        let e = parse_row("1C2410DF79DGEL,active,ZZ:01,").expect_err("cert");
        assert!(matches!(e, RowError::Cert(_)), "{e:?}");
        let e = parse_row("1C2410DF79DGEL,active,AB:01,P=1;Q=").expect_err("empty service");
        assert!(matches!(e, RowError::Link { link: 2, .. }), "{e:?}");
    }
}
