//! `mykeyd cluster init|verify` and `mykeyd history --pg`: the cluster's system of record in
//! PostgreSQL (engine/CLUSTER.md) from the command line: create or migrate its schema, recompute
//! its chain and name the first mismatch, and list one ID's changes with their seq and chain
//! hash. Writes only the schema (init); never a change.

use std::path::Path;

use mykey_engine::cluster::{self, PgClient, history, schema};
use mykey_engine::id::{Hex, MyKeyId};
use mykey_engine::registry::OpKind;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

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

/// `mykeyd cluster init`.
pub fn init(url: &str, ca: Option<&Path>) -> Result<(), String> {
    runtime()?.block_on(async {
        let mut c = connect(url, ca).await?;
        let before = schema::migrate(&mut c).await.map_err(|e| e.to_string())?;
        if before == schema::VERSION {
            println!("the cluster schema is at version {before} already; nothing to do");
        } else {
            println!(
                "the cluster schema is at version {} (was {before})",
                schema::VERSION
            );
        }
        Ok(())
    })
}

/// `mykeyd cluster verify`: exit 1 naming the first row that breaks the chain.
pub fn verify(url: &str, ca: Option<&Path>, from: u64, to: Option<u64>) -> Result<(), String> {
    runtime()?.block_on(async {
        let c = connect(url, ca).await?;
        schema::check(&c).await.map_err(|e| e.to_string())?;
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

/// `mykeyd history --pg`: who changed what and when for one ID, each with its seq and hash.
pub fn history(url: &str, ca: Option<&Path>, id: &str) -> Result<(), String> {
    let id = MyKeyId::parse(id.as_bytes()).map_err(|e| format!("{id:?}: {e}"))?;
    runtime()?.block_on(async {
        let c = connect(url, ca).await?;
        schema::check(&c).await.map_err(|e| e.to_string())?;
        let entries = history::history(&c, &id).await.map_err(|e| e.to_string())?;
        for e in &entries {
            let kind = OpKind::from_u8(e.change.kind).map_or("unknown", OpKind::name);
            println!(
                "seq {} at {} by {}: {kind} (chain {})",
                e.seq,
                e.change.at,
                e.change.actor,
                Hex(&e.hash)
            );
        }
        println!("{} changes concern {id}", entries.len());
        Ok(())
    })
}
