//! `mykeyd cluster init|verify|snapshot|snapshots|bootstrap|prune` and `mykeyd history --pg`:
//! the cluster's system of record in PostgreSQL (engine/CLUSTER.md) from the command line:
//! create or migrate its schema, recompute its chain and name the first mismatch, take and
//! record tagged snapshots, bootstrap a node's store from one, prune change_log below the
//! oldest, and list one ID's changes with their seq and chain hash. Never writes a change.

use std::path::Path;
use std::time::Instant;

use mykey_engine::cluster::{self, PgClient, history, schema, snapshot};
use mykey_engine::id::{Hex, MyKeyId};
use mykey_engine::registry::OpKind;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::common::{copied, existing_fs, new_fs, open_registry};

/// The CA certificates (PEM) in `ca`, which PostgreSQL's server certificate must chain to.
pub fn roots(ca: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CERTIFICATE", ca.display()));
    }
    Ok(roots)
}

/// Connects to `url`, over TLS checked against the CA certificates in `ca` when given.
async fn connect(url: &str, ca: Option<&Path>) -> Result<PgClient, String> {
    match ca {
        None => cluster::connect_plain(url).await,
        Some(ca) => cluster::connect_tls(url, roots(ca)?).await,
    }
    .map_err(|e| e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// `mykeyd cluster init [--genesis STORE]`.
pub fn init(url: &str, ca: Option<&Path>, genesis: Option<&Path>) -> Result<(), String> {
    runtime()?.block_on(async {
        let mut c = connect(url, ca).await?;
        let before = schema::migrate(&mut c).await.map_err(|e| e.to_string())?;
        if before == schema::VERSION {
            println!("the cluster schema is at version {before} already");
        } else {
            println!(
                "the cluster schema is at version {} (was {before})",
                schema::VERSION
            );
        }
        let Some(dir) = genesis else {
            return Ok(());
        };
        let reg = std::sync::Arc::new(open_registry(dir)?);
        let fs = existing_fs(dir)?;
        let start = Instant::now();
        let g = cluster::genesis::record(&mut c, reg, &*fs, &mut |n| {
            if n % 1_000_000 < cluster::genesis::GENESIS_CHUNK as u64 {
                eprintln!(
                    "  {n} records loaded into the mirror ({:.1} s)",
                    start.elapsed().as_secs_f64()
                );
            }
        })
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?;
        if g.already {
            println!(
                "{} is the cluster's genesis already (digest {:x}); nothing to do",
                dir.display(),
                Hex(&g.digest)
            );
        } else {
            println!(
                "recorded {} as the cluster's genesis: digest {:x}; {} providers, {} IDs, {} links, {} certificate bindings in the mirror, in {:.2} s; copy this store (with its CHAIN file) to every node",
                dir.display(),
                Hex(&g.digest),
                g.providers,
                g.ids,
                g.links,
                g.certs,
                start.elapsed().as_secs_f64()
            );
        }
        Ok(())
    })
}

/// `mykeyd cluster verify`: exit 1 naming the first row that breaks the chain.
pub fn verify(url: &str, ca: Option<&Path>, from: u64, to: Option<u64>) -> Result<(), String> {
    runtime()?.block_on(async {
        let c = connect_checked(url, ca).await?;
        let v = history::verify(&c, from, to)
            .await
            .map_err(|e| format!("verify: {e}"))?;
        if v.to < v.from {
            println!("verify: OK, no change in seqs {}.. yet", v.from);
        } else {
            println!(
                "verify: OK, seqs {}..={} chain to {}",
                v.from,
                v.to,
                Hex(&v.hash)
            );
        }
        Ok(())
    })
}

/// `mykeyd history --pg`: who changed what and when for one ID, each with its seq and hash;
/// with `extract`, its extract written there.
pub fn history(
    url: &str,
    ca: Option<&Path>,
    id: &str,
    extract: Option<&Path>,
    to: Option<u64>,
) -> Result<(), String> {
    let id = MyKeyId::parse(id.as_bytes()).map_err(|e| format!("{id:?}: {e}"))?;
    runtime()?.block_on(async {
        let c = connect_checked(url, ca).await?;
        let entries = history::history(&c, &id).await.map_err(|e| e.to_string())?;
        print_entries(&entries);
        println!("{} changes concern {id}", entries.len());
        if let Some(path) = extract {
            let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut w = std::io::BufWriter::new(f);
            let (seq, hash) = history::extract(&c, &id, to, &mut w)
                .await
                .map_err(|e| format!("extract: {e}"))?;
            std::io::Write::flush(&mut w).map_err(|e| format!("{}: {e}", path.display()))?;
            println!(
                "extract of {id} written to {}: ends at seq {seq}, chain {:x}; check it with `mykeyd cluster check-extract {} --head {seq}:{:x}`",
                path.display(),
                Hex(&hash),
                path.display(),
                Hex(&hash)
            );
        }
        Ok(())
    })
}

/// Connects to `url` and checks that it holds this build's schema.
async fn connect_checked(url: &str, ca: Option<&Path>) -> Result<PgClient, String> {
    let c = connect(url, ca).await?;
    schema::check(&c).await.map_err(|e| e.to_string())?;
    Ok(c)
}

/// `mykeyd cluster snapshot`: a tagged backup of a node's store, recorded in `snapshots`.
pub fn snapshot(
    url: &str,
    ca: Option<&Path>,
    store: &Path,
    out: &Path,
    node: &str,
) -> Result<(), String> {
    runtime()?.block_on(async {
        let c = connect_checked(url, ca).await?;
        let (src, dest) = (existing_fs(store)?, new_fs(out)?);
        let start = Instant::now();
        let (r, tag) = snapshot::take(&*src, &*dest, &mut copied(start))
            .map_err(|e| format!("snapshot of {}: {e}", store.display()))?;
        let location = out
            .canonicalize()
            .map_err(|e| format!("{}: {e}", out.display()))?;
        snapshot::record(&c, node, &tag, &location.display().to_string())
            .await
            .map_err(|e| format!("record the snapshot: {e}"))?;
        println!(
            "snapshot of {} in {}: tag seq {} chain {}, changes 1..={}, {} files, {} bytes, verified and recorded for {node} in {:.2} s",
            store.display(),
            location.display(),
            tag.seq,
            Hex(&tag.hash),
            r.last_seq,
            r.files,
            r.bytes,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// `mykeyd cluster snapshots`: the recorded snapshots, newest first.
pub fn snapshots(url: &str, ca: Option<&Path>) -> Result<(), String> {
    runtime()?.block_on(async {
        let c = connect_checked(url, ca).await?;
        let all = snapshot::list(&c).await.map_err(|e| e.to_string())?;
        for s in &all {
            let at = mykey_engine::id::Timestamp::from_unix_secs(s.taken_at.max(0) as u64)
                .map_or_else(|_| s.taken_at.to_string(), |t| t.to_string());
            println!(
                "seq {} chain {} by {} at {at} in {}",
                s.tag.seq,
                Hex(&s.tag.hash),
                s.node,
                s.location
            );
        }
        println!("{} snapshots recorded", all.len());
        Ok(())
    })
}

/// `mykeyd cluster bootstrap`: a new or wiped node's store from a tagged snapshot.
pub fn bootstrap(url: &str, ca: Option<&Path>, from: &Path, store: &Path) -> Result<(), String> {
    runtime()?.block_on(async {
        let c = connect_checked(url, ca).await?;
        let (src, dest) = (existing_fs(from)?, new_fs(store)?);
        let start = Instant::now();
        let (r, tail) = snapshot::bootstrap(&c, src, dest, &mut copied(start))
            .await
            .map_err(|e| format!("bootstrap from {}: {e}", from.display()))?;
        println!(
            "bootstrapped {} from {}: at seq {} chain {} (snapshot seq {}), checked against change_log, in {:.2} s; `mykeyd serve` tails from seq {}",
            store.display(),
            from.display(),
            tail.applied(),
            Hex(&tail.hash()),
            r.snapshot_seq,
            start.elapsed().as_secs_f64(),
            tail.applied() + 1
        );
        Ok(())
    })
}

/// `mykeyd cluster prune`: change_log rows below the oldest recorded snapshot deleted.
pub fn prune(url: &str, ca: Option<&Path>, keep: Option<usize>) -> Result<(), String> {
    runtime()?.block_on(async {
        let c = connect_checked(url, ca).await?;
        let start = Instant::now();
        let p = snapshot::prune(&c, keep, &mut |n| {
            eprintln!(
                "  pruned {n} rows ({:.1} s)",
                start.elapsed().as_secs_f64()
            )
        })
        .await
        .map_err(|e| format!("prune: {e}"))?;
        println!(
            "pruned {} change_log rows below seq {} (the oldest recorded snapshot); {} older snapshot records forgotten; in {:.2} s",
            p.rows,
            p.below,
            p.forgotten,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// One line per change of an ID's history: seq, time, actor, operation, chain hash.
fn print_entries(entries: &[history::Entry]) {
    for e in entries {
        let kind = OpKind::from_u8(e.change.kind).map_or("unknown", OpKind::name);
        println!(
            "seq {} at {} by {}: {kind} (chain {})",
            e.seq,
            e.change.at,
            e.change.actor,
            Hex(&e.hash)
        );
    }
}

/// `mykeyd cluster check-extract`: exit 1 naming the first line that does not check.
pub fn check_extract(file: &Path, head: Option<&str>) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let published = match head {
        None => None,
        Some(h) => {
            let (seq, hash) = h
                .split_once(':')
                .ok_or_else(|| format!("--head {h}: give SEQ:HASH"))?;
            let seq = seq
                .parse()
                .map_err(|_| format!("--head {h}: SEQ is not a number"))?;
            let hash = mykey_engine::id::parse_hex32(hash)
                .ok_or_else(|| format!("--head {h}: HASH is not 64 hex digits"))?;
            Some((seq, hash))
        }
    };
    let c =
        history::check_extract(&text, published).map_err(|e| format!("{}: {e}", file.display()))?;
    print_entries(&c.entries);
    println!(
        "checked: {} changes of {} in a chain that ends at seq {} with {:x}{}",
        c.entries.len(),
        c.id,
        c.to,
        Hex(&c.hash),
        if published.is_some() {
            ", the published head"
        } else {
            " (no published head given: compare it with one)"
        }
    );
    Ok(())
}
