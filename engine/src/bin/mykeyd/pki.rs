//! `mykeyd pki`: the operator's client-CA directory. Issues terminal certificates (a role, and
//! for a counter its providers), the server's certificate, and revokes them by publishing the
//! CRL the server reloads on SIGHUP.
//!
//! The directory (`mykeyd init` writes one in `DIR/pki`, `mykeyd pki init` a production one):
//!
//! | file | what |
//! |---|---|
//! | `client-ca.pem` | the CA certificate: the server's `tls.client_ca`, and every client's server root |
//! | `client-ca.key` | its PKCS#8 key, mode 0600; the only secret here, keep it offline when not issuing |
//! | `client-ca.crl` | the current CRL (PEM): the server's `tls.client_crl` |
//! | `ledger.tsv` | one line per certificate issued: serial, status, role, notAfter, name, providers |
//!
//! `ledger.tsv` is UTF-8, tab-separated, `#` lines are comments:
//! `serial` (decimal, unique, above 1), `status` (`valid` or `revoked:<unix seconds>`), `role`
//! (`server` or a terminal role), `not_after` (unix seconds), `name` (the certificate's CN),
//! `providers` (comma-separated, `-` for none). The next serial is the largest + 1; the next
//! CRL number is the current CRL's + 1. Both files are replaced atomically (`.tmp`, rename).
//!
//! Owns these files; the certificates themselves are built by `server::pki::OperatorCa`. Never
//! writes a private key anywhere but the path it was asked for, and always with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mykey_engine::id::{ProviderId, Timestamp};
use mykey_engine::jpki::dev::pem;
use mykey_engine::server::Role;
use mykey_engine::server::pki::{Issued, OperatorCa, Validity};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// File names in a CA directory.
pub const CA_CERT: &str = "client-ca.pem";
/// The CA's key.
pub const CA_KEY: &str = "client-ca.key";
/// The current CRL.
pub const CA_CRL: &str = "client-ca.crl";
/// The ledger of issued certificates.
pub const LEDGER: &str = "ledger.tsv";
/// Longest ledger accepted: a national deployment has ~13,000 streets and a few terminals each.
const LEDGER_LINES_MAX: usize = 1_000_000;
/// Clock skew tolerated by a CRL's thisUpdate and a certificate's notBefore: issued a minute in
/// the past, so a server whose clock lags a little does not refuse them as not yet valid.
const BACKDATE_SECS: u64 = 60;

const LEDGER_HEADER: &str =
    "# mykeyd pki ledger v1: serial\tstatus\trole\tnot_after\tname\tproviders\n";

/// One certificate the CA issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its serial.
    pub serial: u64,
    /// Unix time of its revocation, if revoked.
    pub revoked_at: Option<u64>,
    /// `server`, or a terminal role's name.
    pub role: String,
    /// End of validity, Unix seconds.
    pub not_after: u64,
    /// Its CN.
    pub name: String,
    /// Providers it names (counters only).
    pub providers: Vec<String>,
}

/// A CA directory, loaded.
pub struct CaDir {
    dir: PathBuf,
    ca: OperatorCa,
    ledger: Vec<Entry>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Writes `bytes` to `path` atomically: `path.tmp` (with `mode`), fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Parses a ledger; errors name the line.
pub fn parse_ledger(text: &str) -> Result<Vec<Entry>, String> {
    let mut v: Vec<Entry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if v.len() >= LEDGER_LINES_MAX {
            return Err(format!(
                "line {n}: more than {LEDGER_LINES_MAX} certificates"
            ));
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [serial, status, role, not_after, name, providers] = f[..] else {
            return Err(format!("line {n}: {} fields, want 6", f.len()));
        };
        let serial: u64 = serial
            .parse()
            .map_err(|_| format!("line {n}: serial {serial:?} is not a number"))?;
        if v.iter().any(|e| e.serial == serial) {
            return Err(format!("line {n}: serial {serial} appears twice"));
        }
        let revoked_at = match status {
            "valid" => None,
            s => Some(
                s.strip_prefix("revoked:")
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| {
                        format!("line {n}: status {s:?}: valid or revoked:<unix time>")
                    })?,
            ),
        };
        if role != "server" && Role::parse(role).is_none() {
            return Err(format!("line {n}: unknown role {role:?}"));
        }
        v.push(Entry {
            serial,
            revoked_at,
            role: role.to_owned(),
            not_after: not_after
                .parse()
                .map_err(|_| format!("line {n}: not_after {not_after:?} is not a number"))?,
            name: name.to_owned(),
            providers: match providers {
                "-" => Vec::new(),
                p => p.split(',').map(str::to_owned).collect(),
            },
        });
    }
    Ok(v)
}

/// Formats a ledger.
pub fn format_ledger(entries: &[Entry]) -> String {
    let mut s = String::from(LEDGER_HEADER);
    for e in entries {
        let status = e
            .revoked_at
            .map_or_else(|| "valid".to_owned(), |t| format!("revoked:{t}"));
        let providers = if e.providers.is_empty() {
            "-".to_owned()
        } else {
            e.providers.join(",")
        };
        s.push_str(&format!(
            "{}\t{status}\t{}\t{}\t{}\t{providers}\n",
            e.serial, e.role, e.not_after, e.name
        ));
    }
    s
}

fn entry(issued: &Issued, role: &str, name: &str, providers: &[String]) -> Result<Entry, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(&issued.cert).map_err(|e| e.to_string())?;
    Ok(Entry {
        serial: issued.serial,
        revoked_at: None,
        role: role.to_owned(),
        not_after: c.validity().not_after.timestamp().max(0) as u64,
        name: name.to_owned(),
        providers: providers.to_vec(),
    })
}

/// Names and tabs would break the ledger's columns.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(format!(
            "name {name:?}: 1 to 64 bytes, no tabs or control characters"
        ));
    }
    Ok(())
}

impl CaDir {
    /// Creates a CA directory with a new CA `O=org, CN=name` and an empty CRL. Refuses a
    /// directory that has a CA already.
    pub fn init(
        dir: &Path,
        org: &str,
        name: &str,
        validity: Validity,
        now: Timestamp,
        crl_days: u64,
    ) -> Result<Self, String> {
        if dir.join(CA_KEY).exists() || dir.join(CA_CERT).exists() {
            return Err(format!(
                "{}: a CA is there already; use another directory",
                dir.display()
            ));
        }
        check_name(org)?;
        check_name(name)?;
        let ca = OperatorCa::generate(org, name, validity).map_err(|e| e.to_string())?;
        Self::adopt(dir, ca, Vec::new(), now, crl_days)
    }

    /// Writes `ca` and `ledger` as a new CA directory (also what `mykeyd init` uses).
    pub fn adopt(
        dir: &Path,
        ca: OperatorCa,
        ledger: Vec<Entry>,
        now: Timestamp,
        crl_days: u64,
    ) -> Result<Self, String> {
        write_atomic(
            &dir.join(CA_KEY),
            pem("PRIVATE KEY", &ca.key_pkcs8()).as_bytes(),
            0o600,
        )?;
        write_atomic(
            &dir.join(CA_CERT),
            pem("CERTIFICATE", ca.der()).as_bytes(),
            0o644,
        )?;
        let d = Self {
            dir: dir.to_owned(),
            ca,
            ledger,
        };
        d.save_ledger()?;
        d.publish_crl(now, crl_days)?;
        Ok(d)
    }

    /// Loads a CA directory.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let der = CertificateDer::from_pem_file(&cert_path)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        let ca = OperatorCa::load(der, key.secret_der())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let ledger_path = dir.join(LEDGER);
        let ledger = match std::fs::read_to_string(&ledger_path) {
            Ok(t) => parse_ledger(&t).map_err(|e| format!("{}: {e}", ledger_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", ledger_path.display())),
        };
        Ok(Self {
            dir: dir.to_owned(),
            ca,
            ledger,
        })
    }

    /// The certificates issued.
    pub fn ledger(&self) -> &[Entry] {
        &self.ledger
    }

    fn save_ledger(&self) -> Result<(), String> {
        write_atomic(
            &self.dir.join(LEDGER),
            format_ledger(&self.ledger).as_bytes(),
            0o644,
        )
    }

    fn next_serial(&self) -> u64 {
        self.ledger
            .iter()
            .map(|e| e.serial)
            .max()
            .unwrap_or(mykey_engine::server::pki::CA_SERIAL)
            + 1
    }

    fn validity(now: Timestamp, days: u64) -> Result<Validity, String> {
        Ok(Validity {
            not_before: Timestamp::from_unix_secs(now.unix_secs().saturating_sub(BACKDATE_SECS))
                .map_err(|e| e.to_string())?,
            not_after: now.plus_secs(days * 86_400),
        })
    }

    /// Issues a terminal certificate and records it; writes `out.pem` and `out.key` (0600).
    pub fn issue_terminal(
        &mut self,
        name: &str,
        role: Role,
        providers: &[String],
        out: Out<'_>,
        now: Timestamp,
        days: u64,
    ) -> Result<Entry, String> {
        check_name(name)?;
        out.check()?;
        if let Some(p) = providers.iter().find(|p| p.contains(',')) {
            return Err(format!(
                "provider {p:?}: a provider ID with a comma cannot be recorded in the ledger"
            ));
        }
        match (role, providers.is_empty()) {
            (Role::Counter, true) => {
                return Err("a counter certificate names at least one --provider".into());
            }
            (Role::Counter, false) => {}
            (_, false) => {
                return Err(format!(
                    "only counter certificates name providers; a {} certificate acts for none",
                    role.name()
                ));
            }
            (_, true) => {}
        }
        let ids: Vec<ProviderId> = providers
            .iter()
            .map(|p| ProviderId::parse(p.as_bytes()).map_err(|e| format!("provider {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let issued = self
            .ca
            .terminal(
                name,
                role,
                &ids,
                self.next_serial(),
                Self::validity(now, days)?,
            )
            .map_err(|e| e.to_string())?;
        self.record(issued, role.name(), name, providers, out.prefix)
    }

    /// Issues a server certificate for `hosts` and records it; writes `out.pem`, `out.key`.
    pub fn issue_server(
        &mut self,
        hosts: &[String],
        out: Out<'_>,
        now: Timestamp,
        days: u64,
    ) -> Result<Entry, String> {
        out.check()?;
        if hosts.is_empty() {
            return Err("give at least one --host (DNS name or IP address)".into());
        }
        let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let issued = self
            .ca
            .server(&names, self.next_serial(), Self::validity(now, days)?)
            .map_err(|e| e.to_string())?;
        self.record(issued, "server", &hosts.join(","), &[], out.prefix)
    }

    fn record(
        &mut self,
        issued: Issued,
        role: &str,
        name: &str,
        providers: &[String],
        out: &Path,
    ) -> Result<Entry, String> {
        let e = entry(&issued, role, name, providers)?;
        // The key first and the certificate second, each replaced atomically: a server
        // reloading in between finds the old certificate with a new key and refuses the
        // reload, keeping its running pair, rather than serving a mismatched one.
        write_atomic(
            &with_ext(out, "key"),
            pem("PRIVATE KEY", &issued.key).as_bytes(),
            0o600,
        )?;
        write_atomic(
            &with_ext(out, "pem"),
            pem("CERTIFICATE", &issued.cert).as_bytes(),
            0o644,
        )?;
        self.ledger.push(e.clone());
        self.save_ledger()?;
        Ok(e)
    }

    /// Revokes `serials` and publishes the new CRL; returns its number. Revoking a revoked
    /// serial again only republishes.
    pub fn revoke(
        &mut self,
        serials: &[u64],
        now: Timestamp,
        crl_days: u64,
    ) -> Result<u64, String> {
        for &serial in serials {
            let e = self
                .ledger
                .iter_mut()
                .find(|e| e.serial == serial)
                .ok_or_else(|| {
                    format!("serial {serial} was not issued by this CA (see `mykeyd pki list`)")
                })?;
            if e.revoked_at.is_none() {
                e.revoked_at = Some(now.unix_secs());
            }
        }
        self.save_ledger()?;
        self.publish_crl(now, crl_days)
    }

    /// Writes a new CRL of every revoked serial, numbered one above the current CRL's; returns
    /// its number.
    pub fn publish_crl(&self, now: Timestamp, days: u64) -> Result<u64, String> {
        let path = self.dir.join(CA_CRL);
        let number = match std::fs::read(&path) {
            Ok(bytes) => crl_number(&bytes).map_err(|e| format!("{}: {e}", path.display()))? + 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let revoked: Vec<u64> = self
            .ledger
            .iter()
            .filter(|e| e.revoked_at.is_some())
            .map(|e| e.serial)
            .collect();
        let v = Self::validity(now, days)?;
        let crl = self
            .ca
            .crl(number, v.not_before, v.not_after, &revoked)
            .map_err(|e| e.to_string())?;
        write_atomic(&path, pem("X509 CRL", &crl).as_bytes(), 0o644)?;
        Ok(number)
    }
}

/// Where an issued certificate goes: `prefix.pem` and `prefix.key`.
#[derive(Clone, Copy, Debug)]
pub struct Out<'a> {
    /// The path prefix.
    pub prefix: &'a Path,
    /// Whether existing files may be overwritten. A key is never overwritten by accident.
    pub replace: bool,
}

impl Out<'_> {
    fn check(&self) -> Result<(), String> {
        for ext in ["pem", "key"] {
            let p = with_ext(self.prefix, ext);
            if !self.replace && p.exists() {
                return Err(format!(
                    "{} exists; give another --out or --replace to overwrite it",
                    p.display()
                ));
            }
        }
        Ok(())
    }
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// The CRL number of a PEM or DER CRL.
fn crl_number(bytes: &[u8]) -> Result<u64, String> {
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    let der = if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::from_pem_slice(bytes).map_err(|e| e.to_string())?
    } else {
        CertificateRevocationListDer::from(bytes.to_vec())
    };
    let (_, crl) = CertificateRevocationList::from_der(&der).map_err(|e| e.to_string())?;
    let n = crl.crl_number().ok_or("the CRL has no CRL number")?;
    u64::try_from(n).map_err(|_| "the CRL number is over 64 bits".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_round_trips_and_bad_lines_are_named() {
        let v = vec![
            Entry {
                serial: 2,
                revoked_at: None,
                role: "server".into(),
                not_after: 1_900_000_000,
                name: "mykey.example.jp".into(),
                providers: vec![],
            },
            Entry {
                serial: 3,
                revoked_at: Some(1_800_000_000),
                role: "counter".into(),
                not_after: 1_900_000_000,
                name: "sugamo-1".into(),
                providers: vec!["13116-ST-0001".into(), "13116-LIB-0001".into()],
            },
        ];
        assert_eq!(parse_ledger(&format_ledger(&v)).expect("parse"), v);
        for (text, want) in [
            ("2\tvalid\tserver\t1\tx\n", "line 1: 5 fields"),
            ("x\tvalid\tserver\t1\tx\t-\n", "line 1: serial \"x\""),
            ("# c\n2\tgone\tserver\t1\tx\t-\n", "line 2: status \"gone\""),
            ("2\tvalid\tmayor\t1\tx\t-\n", "line 1: unknown role"),
            (
                "2\tvalid\tserver\t1\tx\t-\n2\tvalid\tserver\t1\ty\t-\n",
                "line 2: serial 2 appears twice",
            ),
        ] {
            let e = parse_ledger(text).expect_err(text);
            assert!(e.starts_with(want), "{e:?} for {text:?}");
        }
    }
}
