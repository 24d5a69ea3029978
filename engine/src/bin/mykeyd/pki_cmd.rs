//! `mykeyd pki`: the operator's client CA as commands: create it, issue terminal and server
//! certificates, revoke them and publish the CRL, list what was issued. The CA directory
//! itself is `pki`.

use mykey_engine::id::Timestamp;

use crate::PkiCmd;
use crate::common::now;
use crate::pki::{self, CaDir};

/// `mykeyd pki ...`.
pub fn run(cmd: PkiCmd) -> Result<(), String> {
    let at = now();
    let show = |e: &pki::Entry| {
        let date =
            |t: u64| Timestamp::from_unix_secs(t).map_or_else(|_| t.to_string(), |t| t.to_string());
        let status = e
            .revoked_at
            .map_or_else(|| "valid".to_owned(), |t| format!("revoked at {}", date(t)));
        format!(
            "serial {} {} {} {status}, expires {} ({})",
            e.serial,
            e.role,
            e.name,
            date(e.not_after),
            if e.providers.is_empty() {
                "no providers".to_owned()
            } else {
                e.providers.join(",")
            }
        )
    };
    match cmd {
        PkiCmd::Init {
            ca,
            org,
            name,
            years,
            crl_days,
        } => {
            let v = mykey_engine::server::pki::Validity {
                not_before: Timestamp::from_unix_secs(at.unix_secs().saturating_sub(60))
                    .map_err(|e| e.to_string())?,
                not_after: at.plus_secs(years * 365 * 86_400),
            };
            CaDir::init(&ca.dir, &org, &name, v, at, crl_days)?;
            println!(
                "created the client CA {}/{} (key {} mode 0600) and CRL 1",
                ca.dir.display(),
                pki::CA_CERT,
                pki::CA_KEY
            );
        }
        PkiCmd::Issue {
            ca,
            role,
            providers,
            name,
            out,
        } => {
            let role = mykey_engine::server::Role::parse(&role).ok_or_else(|| {
                format!("--role {role:?}: counter, municipal, portal, partner, operator or node")
            })?;
            let e = CaDir::open(&ca.dir)?.issue_terminal(
                &name,
                role,
                &providers,
                out.out(),
                at,
                out.days,
            )?;
            let p = out.out.display();
            println!("issued {} -> {p}.pem, {p}.key", show(&e));
        }
        PkiCmd::Server { ca, hosts, out } => {
            let e = CaDir::open(&ca.dir)?.issue_server(&hosts, out.out(), at, out.days)?;
            let p = out.out.display();
            println!(
                "issued {} -> {p}.pem, {p}.key; send SIGHUP to load it",
                show(&e)
            );
        }
        PkiCmd::Revoke {
            ca,
            serial,
            name,
            crl_days,
        } => {
            let mut d = CaDir::open(&ca.dir)?;
            let serials: Vec<u64> = match (serial, &name) {
                (Some(s), _) => vec![s],
                (None, Some(n)) => d
                    .ledger()
                    .iter()
                    .filter(|e| &e.name == n && e.revoked_at.is_none())
                    .map(|e| e.serial)
                    .collect(),
                (None, None) => Vec::new(),
            };
            if serials.is_empty() {
                return Err(format!(
                    "no valid certificate named {:?}",
                    name.unwrap_or_default()
                ));
            }
            let number = d.revoke(&serials, at, crl_days)?;
            println!(
                "revoked serial {}; published CRL {number} in {}; send SIGHUP to load it",
                serials
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                ca.dir.join(pki::CA_CRL).display()
            );
        }
        PkiCmd::Crl { ca, days } => {
            let n = CaDir::open(&ca.dir)?.publish_crl(at, days)?;
            println!(
                "published CRL {n} (valid {days} days) in {}; send SIGHUP to load it",
                ca.dir.join(pki::CA_CRL).display()
            );
        }
        PkiCmd::List { ca } => {
            for e in CaDir::open(&ca.dir)?.ledger() {
                println!("{}", show(e));
            }
        }
    }
    Ok(())
}
