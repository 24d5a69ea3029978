//! Revocations pushed by certified JPKI verifier partners: DER X.509 CRLs and plain serial
//! lists, parsed, bounded and (for CRLs) signature-checked into a [`RevocationList`] of one CA
//! generation's serials.
//!
//! A CRL's issuer is found by key: its AKI names the generation when present; otherwise each
//! generation with the CRL's issuer name is tried, newest valid one first, at most
//! [`super::anchors::ANCHORS_MAX`] signature checks. thisUpdate and nextUpdate are checked
//! against `now`; the CRL number is read here and compared by the registry, which keeps the
//! last one applied per CA. Anything this engine does not understand (delta CRLs, indirect
//! entries, partitioned scopes, unknown critical extensions) refuses the whole CRL. Never
//! applies anything: a list is only returned once every entry has been read and checked.
//!
//! A CRL of a million entries is not built as a million structures at once: x509-parser reads
//! the CRL with its revokedCertificates cut out (`Split`), the signature is checked over the
//! TBSCertList as it came, and then the entries are read one at a time, each with x509-parser's
//! own entry parser. The headers x509-parser does not see are checked for DER here.
//!
//! The serial-list format (UTF-8 text, at most [`SERIAL_LIST_LEN_MAX`] bytes):
//!
//! ```text
//! # comments and blank lines are ignored
//! ca 1AC100F5...            <- hex key identifier (SKI) of the CA generation, once, first
//! 06D18006                  <- one serial per line, hex (colons allowed), 1 to 20 octets
//! ```

use aws_lc_rs::signature::ParsedPublicKey;
use x509_parser::oid_registry::{
    OID_X509_EXT_INVALIDITY_DATE, OID_X509_EXT_ISSUER, OID_X509_EXT_REASON_CODE,
};
use x509_parser::prelude::*;

use super::anchors::{Anchors, OID_SHA256_WITH_RSA};
use super::{JpkiError, clamp_time, der_header, der_length_minimal, hex};
use crate::id::{CA_KEY_ID_LEN_MAX, SERIAL_LEN_MAX, Timestamp};

/// Largest CRL accepted, in bytes: room for about 5 million entries.
pub const CRL_LEN_MAX: usize = 256 * 1024 * 1024;
/// Most entries in one CRL.
pub const CRL_ENTRIES_MAX: usize = 5_000_000;
/// Largest serial list accepted, in bytes.
pub const SERIAL_LIST_LEN_MAX: usize = 64 * 1024 * 1024;
/// Most serials in one list.
pub const SERIAL_LIST_ENTRIES_MAX: usize = 2_000_000;
/// Seconds a CRL's thisUpdate may lie ahead of `now` (clock skew between J-LIS and us).
pub const CRL_CLOCK_SKEW_SECS: u64 = 300;

const OID_CRL_NUMBER: &str = "2.5.29.20";
const OID_DELTA_CRL_INDICATOR: &str = "2.5.29.27";
const OID_ISSUING_DISTRIBUTION_POINT: &str = "2.5.29.28";
const OID_AUTHORITY_KEY_ID: &str = "2.5.29.35";

/// A certificate serial: a positive INTEGER's magnitude, 1 to 20 octets, no leading zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SerialNo {
    len: u8,
    bytes: [u8; SERIAL_LEN_MAX],
}

impl SerialNo {
    /// From an INTEGER's content octets (a leading sign byte allowed); `None` unless positive
    /// and at most 20 octets of magnitude.
    pub fn from_integer(raw: &[u8]) -> Option<Self> {
        if raw.first().is_none_or(|&b| b & 0x80 != 0) {
            return None;
        }
        let first = raw.iter().position(|&b| b != 0)?;
        let m = &raw[first..];
        if m.len() > SERIAL_LEN_MAX {
            return None;
        }
        let mut bytes = [0u8; SERIAL_LEN_MAX];
        bytes[..m.len()].copy_from_slice(m);
        Some(Self {
            len: m.len() as u8,
            bytes,
        })
    }

    /// The magnitude, big-endian.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for SerialNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SerialNo({})", hex(self.as_bytes()))
    }
}

/// The CRL-specific part of a revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// The CRL number's magnitude, big-endian, no leading zeros (empty for zero).
    pub number: Vec<u8>,
    /// thisUpdate.
    pub this_update: Timestamp,
    /// nextUpdate.
    pub next_update: Timestamp,
}

/// Serials revoked by one CA generation, checked and ready to apply.
#[derive(Clone, Debug)]
pub struct RevocationList {
    /// Key identifier of the CA generation.
    pub ca_key_id: Vec<u8>,
    /// Present for a CRL.
    pub crl: Option<CrlInfo>,
    /// The serials, in input order (duplicates kept; applying them is idempotent).
    pub serials: Vec<SerialNo>,
}

fn refuse(reason: impl Into<String>) -> JpkiError {
    JpkiError::CrlMalformed {
        reason: reason.into(),
    }
}

/// Compares two unsigned big-endian magnitudes without leading zeros.
pub fn cmp_number(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Parses and checks a DER CRL at `now`. See the module documentation for the rules.
pub fn parse_crl(
    anchors: &Anchors,
    now: Timestamp,
    der: &[u8],
) -> Result<RevocationList, JpkiError> {
    if der.len() > CRL_LEN_MAX {
        return Err(JpkiError::PushTooLarge {
            what: "CRL",
            len: der.len(),
            max: CRL_LEN_MAX,
        });
    }
    // Count the entries before x509-parser builds them, so no CRL can make it allocate more
    // than the limit allows.
    let entries = count_entries(der);
    if entries.is_some_and(|n| n > CRL_ENTRIES_MAX) {
        return Err(JpkiError::TooManyEntries {
            what: "CRL",
            max: CRL_ENTRIES_MAX,
        });
    }
    if let Some(problem) = super::outer_der_problem(der, "the CRL") {
        return Err(refuse(problem));
    }
    // x509-parser reads the CRL without its entries (`Split`), so that a million entries do
    // not become a million heap-built structures at once; they are read one by one below.
    let split = Split::of(der)?;
    let shell = split.as_ref().map_or(der, |s| &s.shell[..]);
    let (rest, crl) = CertificateRevocationList::from_der(shell).map_err(|e| {
        refuse(format!(
            "a field inside it is not valid DER (RFC 5280 requires DER; x509-parser: {e})"
        ))
    })?;
    if !rest.is_empty() {
        return Err(refuse(format!("{} bytes after the CRL", rest.len())));
    }
    let tbs = &crl.tbs_cert_list;
    if crl.signature_algorithm.algorithm.to_id_string() != OID_SHA256_WITH_RSA
        || tbs.signature.algorithm != crl.signature_algorithm.algorithm
    {
        return Err(refuse("not signed with sha256WithRSAEncryption"));
    }
    unique_extensions(tbs.extensions(), None, "§5.2")?;
    let mut number = None;
    let mut aki: Option<&[u8]> = None;
    for ext in tbs.extensions() {
        let oid = ext.oid.to_id_string();
        match (oid.as_str(), ext.parsed_extension()) {
            (OID_CRL_NUMBER, ParsedExtension::CRLNumber(n)) => number = Some(n.to_bytes_be()),
            (OID_AUTHORITY_KEY_ID, ParsedExtension::AuthorityKeyIdentifier(a)) => {
                aki = a.key_identifier.as_ref().map(|k| k.0)
            }
            (OID_DELTA_CRL_INDICATOR, _) => {
                return Err(refuse("delta CRLs are not accepted; push the full CRL"));
            }
            (OID_ISSUING_DISTRIBUTION_POINT, ParsedExtension::IssuingDistributionPoint(idp))
                if idp.only_contains_ca_certs
                    || idp.only_contains_attribute_certs
                    || idp.indirect_crl
                    || idp.only_some_reasons.is_some() =>
            {
                return Err(refuse(
                    "the issuing distribution point limits the CRL's scope (CA-only, attribute, indirect or reason-partitioned CRLs are not accepted)",
                ));
            }
            (OID_ISSUING_DISTRIBUTION_POINT, ParsedExtension::IssuingDistributionPoint(_)) => {}
            (OID_CRL_NUMBER | OID_AUTHORITY_KEY_ID | OID_ISSUING_DISTRIBUTION_POINT, _) => {
                return Err(refuse(format!("unreadable extension {oid}")));
            }
            _ if ext.critical => {
                return Err(refuse(format!("unknown critical extension {oid}")));
            }
            _ => {}
        }
    }
    let number = number.ok_or_else(|| refuse("no CRL number (RFC 5280 §5.2.3 requires one)"))?;
    let number = strip_zeros(&number).to_vec();
    if number.len() > SERIAL_LEN_MAX {
        return Err(refuse("the CRL number is longer than 20 octets"));
    }
    let this_update = clamp_time(tbs.this_update.timestamp());
    let next_update = clamp_time(
        tbs.next_update
            .ok_or_else(|| refuse("no nextUpdate (RFC 5280 §5.1.2.5 requires one)"))?
            .timestamp(),
    );

    // The issuer, by key.
    let issuer_raw = tbs.issuer.as_raw();
    let issuer_name = der_header(issuer_raw, 0)
        .and_then(|(_, start, _)| issuer_raw.get(start..))
        .unwrap_or(&[]);
    let (order, n) = anchors.candidates(issuer_name, this_update);
    if n == 0 {
        return Err(JpkiError::CrlUnknownIssuer);
    }
    let sig = &crl.signature_value.data;
    let mut issuer = None;
    let mut named = false;
    for &i in &order[..n] {
        let Some(a) = anchors.get(i) else { continue };
        if aki.is_some_and(|k| k != a.key_id()) {
            continue;
        }
        named = true;
        // Over the TBSCertList as it came, entries and all.
        let signed = split.as_ref().map_or(tbs.as_ref(), |s| &der[s.tbs.clone()]);
        if verify(a.key(), signed, sig) {
            issuer = Some(a);
            break;
        }
    }
    if !named {
        return Err(JpkiError::CrlUnknownIssuer);
    }
    let issuer = issuer.ok_or(JpkiError::CrlBadSignature)?;

    // Times only after the signature: an unsigned CRL's dates mean nothing.
    if this_update > now.plus_secs(CRL_CLOCK_SKEW_SECS) {
        return Err(JpkiError::CrlNotYetValid { this_update });
    }
    if next_update < now {
        return Err(JpkiError::CrlStale { next_update });
    }
    if next_update < this_update {
        return Err(refuse("nextUpdate is before thisUpdate"));
    }

    let serials = match &split {
        Some(split) => {
            let n = entries.unwrap_or(0);
            let threads = crate::par::threads_for(n, CRL_PARALLEL_ENTRIES_MIN);
            read_entries(&der[split.entries.clone()], n, threads)?
        }
        None => {
            let mut serials = Vec::with_capacity(tbs.revoked_certificates.len());
            for (i, entry) in tbs.revoked_certificates.iter().enumerate() {
                serials.push(check_entry(i + 1, entry)?);
            }
            serials
        }
    };
    Ok(RevocationList {
        ca_key_id: issuer.key_id().to_vec(),
        crl: Some(CrlInfo {
            number,
            this_update,
            next_update,
        }),
        serials,
    })
}

/// Entries from which a CRL's entries are read by several threads at once (`par`).
pub const CRL_PARALLEL_ENTRIES_MIN: usize = 65_536;

/// Reads and checks the entries of a revokedCertificates list (`list`: its content, about `n`
/// entries by the count) on `threads` threads: the list is cut at entry boundaries (walking
/// the headers only) into runs of equal count, read on one thread each (a CRL of
/// [`CRL_PARALLEL_ENTRIES_MIN`] entries or more gets one per core). The serials come back in
/// list order, and of several bad entries the first is named, as a single reader would.
fn read_entries(list: &[u8], n: usize, threads: usize) -> Result<Vec<SerialNo>, JpkiError> {
    if threads <= 1 || n == 0 {
        return read_entry_run(list, 0, n);
    }
    let per = n.div_ceil(threads);
    // Byte offsets where runs begin; a header that does not read ends the walk, and the run
    // holding it then names that entry.
    let mut cuts = vec![0];
    let (mut at, mut i) = (0, 0);
    while at < list.len() && cuts.len() < threads {
        let Some(next) = der_header(list, at).and_then(|(_, s, l)| s.checked_add(l)) else {
            break;
        };
        at = next;
        i += 1;
        if i % per == 0 && at < list.len() {
            cuts.push(at);
        }
    }
    cuts.push(list.len());
    let runs: Vec<(usize, &[u8])> = cuts
        .windows(2)
        .enumerate()
        .map(|(k, w)| (k * per, &list[w[0]..w[1]]))
        .collect();
    let mut serials = Vec::with_capacity(n);
    // In list order, so the first failing run names the first bad entry.
    for run in crate::par::map(runs, threads, |(first, run)| {
        read_entry_run(run, first, per)
    }) {
        serials.extend_from_slice(&run?);
    }
    Ok(serials)
}

/// Reads and checks the entries in `run`, the first of which is entry `first + 1` of the
/// list (`n`: about how many there are).
fn read_entry_run(mut run: &[u8], first: usize, n: usize) -> Result<Vec<SerialNo>, JpkiError> {
    let mut serials = Vec::with_capacity(n.min(CRL_ENTRIES_MAX));
    while !run.is_empty() {
        // The count may not have read every header; this bound holds anyway.
        if first + serials.len() == CRL_ENTRIES_MAX {
            return Err(JpkiError::TooManyEntries {
                what: "CRL",
                max: CRL_ENTRIES_MAX,
            });
        }
        let number = first + serials.len() + 1;
        let (rest, entry) = RevokedCertificate::from_der(run).map_err(|e| {
            refuse(format!(
                "entry {number}: not valid DER (RFC 5280 requires DER; x509-parser: {e})"
            ))
        })?;
        serials.push(check_entry(number, &entry)?);
        run = rest;
    }
    Ok(serials)
}

/// Extensions a CRL, or one of its entries, may carry: a CRL has a handful and an entry one or
/// two; the cap keeps the duplicate check (quadratic) bounded whatever a partner sends.
pub const CRL_EXTENSIONS_MAX: usize = 32;

/// One revoked-certificate entry (number `n`, from 1) checked: no indirect entry, no critical
/// extension but the two RFC 5280 §5.3 defines, a serial this engine can hold. Allocates only
/// to say why an entry is refused.
fn check_entry(n: usize, entry: &RevokedCertificate<'_>) -> Result<SerialNo, JpkiError> {
    unique_extensions(entry.extensions(), Some(n), "§5.3")?;
    for ext in entry.extensions() {
        if ext.oid == OID_X509_EXT_ISSUER {
            return Err(refuse(format!(
                "entry {n}: indirect entries (certificateIssuer) are not accepted"
            )));
        }
        if ext.critical
            && ext.oid != OID_X509_EXT_REASON_CODE
            && ext.oid != OID_X509_EXT_INVALIDITY_DATE
        {
            return Err(refuse(format!(
                "entry {n}: unknown critical extension {}",
                ext.oid.to_id_string()
            )));
        }
    }
    SerialNo::from_integer(entry.raw_serial()).ok_or_else(|| {
        refuse(format!(
            "entry {n}: the serial is not a positive integer of at most 20 octets"
        ))
    })
}

/// Refuses a list with more than [`CRL_EXTENSIONS_MAX`] extensions or one OID twice (RFC 5280
/// `section`: at most one instance of an extension). `entry` names the entry in the message
/// ("entry 7: "); `None` for the CRL's own extensions.
fn unique_extensions(
    exts: &[x509_parser::extensions::X509Extension<'_>],
    entry: Option<usize>,
    section: &str,
) -> Result<(), JpkiError> {
    let at = || entry.map_or_else(String::new, |n| format!("entry {n}: "));
    if exts.len() > CRL_EXTENSIONS_MAX {
        return Err(refuse(format!(
            "{}{} extensions, more than the {CRL_EXTENSIONS_MAX} accepted",
            at(),
            exts.len()
        )));
    }
    match exts
        .iter()
        .enumerate()
        .find(|(i, e)| exts[..*i].iter().any(|p| p.oid == e.oid))
    {
        Some((_, e)) => Err(refuse(format!(
            "{}extension {} appears twice (RFC 5280 {section}: at most one of each)",
            at(),
            e.oid.to_id_string()
        ))),
        None => Ok(()),
    }
}

/// A CRL cut in two for parsing: the `shell`, the CRL re-encoded without its
/// revokedCertificates for x509-parser to read (every other byte as it came), and where the
/// TBSCertList (what the signature covers) and the entries lie in the CRL as it came.
struct Split {
    shell: Vec<u8>,
    tbs: std::ops::Range<usize>,
    entries: std::ops::Range<usize>,
}

impl Split {
    /// `None` when the CRL has no revokedCertificates where RFC 5280 §5.1 puts them (after
    /// `version`, `signature`, `issuer`, `thisUpdate` and `nextUpdate`, the optional ones
    /// absent or not), or its outer structure is broken: x509-parser then reads the CRL as it
    /// came, and says what is wrong with it. A length of the TBSCertList or of the list not in
    /// DER's shortest form is refused here, since x509-parser never sees those headers.
    fn of(der: &[u8]) -> Result<Option<Self>, JpkiError> {
        let Some((0x30, os, ol)) = der_header(der, 0) else {
            return Ok(None);
        };
        if os.checked_add(ol) != Some(der.len()) {
            return Ok(None);
        }
        let Some((0x30, ts, tl)) = der_header(der, os) else {
            return Ok(None);
        };
        let Some(te) = ts.checked_add(tl).filter(|&e| e <= der.len()) else {
            return Ok(None);
        };
        let element = |at: usize| {
            der_header(der, at)
                .and_then(|(tag, s, l)| Some((tag, s.checked_add(l).filter(|&e| e <= te)?)))
        };
        let mut at = ts;
        let mut list = None;
        // version?, signature, issuer, thisUpdate, nextUpdate?, revokedCertificates?
        for (want, optional) in [
            (&[0x02][..], true),
            (&[0x30], false),
            (&[0x30], false),
            (&[0x17, 0x18], false),
            (&[0x17, 0x18], true),
            (&[0x30], true),
        ] {
            match element(at) {
                Some((tag, end)) if want.contains(&tag) => {
                    if want == [0x30] && optional {
                        list = Some((at, end));
                    }
                    at = end;
                }
                _ if optional => {}
                _ => return Ok(None),
            }
        }
        let Some((list_at, list_end)) = list else {
            return Ok(None);
        };
        if !der_length_minimal(der, os) || !der_length_minimal(der, list_at) {
            return Err(refuse(
                "a length inside it is not in DER's shortest form (BER); DER (RFC 5280) is required",
            ));
        }
        let Some((_, entries_at, _)) = der_header(der, list_at) else {
            return Ok(None);
        };
        let mut tbs_header = vec![0x30];
        push_der_length(&mut tbs_header, tl - (list_end - list_at));
        let mut shell = Vec::with_capacity(der.len() - (list_end - list_at) + 8);
        shell.push(0x30);
        push_der_length(
            &mut shell,
            tbs_header.len() + tl - (list_end - list_at) + (der.len() - te),
        );
        shell.extend_from_slice(&tbs_header);
        shell.extend_from_slice(&der[ts..list_at]);
        shell.extend_from_slice(&der[list_end..]);
        Ok(Some(Self {
            shell,
            tbs: os..te,
            entries: entries_at..list_end,
        }))
    }
}

/// Appends a DER length in its shortest form.
fn push_der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

fn verify(key: &ParsedPublicKey, msg: &[u8], sig: &[u8]) -> bool {
    key.verify_sig(msg, sig).is_ok()
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Counts the revokedCertificates entries of a CRL by walking DER headers only (no
/// allocation). `None` if the structure is not what a CRL looks like; the full parse then
/// says why.
fn count_entries(der: &[u8]) -> Option<usize> {
    let (_, outer, _) = der_header(der, 0)?;
    let (_, mut at, tbs_len) = der_header(der, outer)?;
    let end = at.checked_add(tbs_len)?.min(der.len());
    // version (INTEGER, optional), signature, issuer, thisUpdate, nextUpdate (optional)
    let mut skipped = 0;
    while at < end {
        let (tag, start, len) = der_header(der, at)?;
        if tag == 0x30 && skipped >= 2 {
            // The first SEQUENCE after the issuer that is not a time: revokedCertificates.
            let mut n = 0;
            let mut e = start;
            let stop = start.checked_add(len)?.min(end);
            while e < stop {
                let (_, s, l) = der_header(der, e)?;
                e = s.checked_add(l)?;
                n += 1;
            }
            return Some(n);
        }
        if tag == 0x30 {
            skipped += 1;
        }
        at = start.checked_add(len)?;
    }
    Some(0)
}

/// Parses a serial list (see the module documentation). The CA must be a configured anchor.
pub fn parse_serial_list(anchors: &Anchors, text: &[u8]) -> Result<RevocationList, JpkiError> {
    if text.len() > SERIAL_LIST_LEN_MAX {
        return Err(JpkiError::PushTooLarge {
            what: "serial list",
            len: text.len(),
            max: SERIAL_LIST_LEN_MAX,
        });
    }
    let bad = |line: usize, reason: String| JpkiError::SerialList { line, reason };
    let text = std::str::from_utf8(text).map_err(|e| {
        let line = text[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        bad(line, "not UTF-8".into())
    })?;
    let mut ca: Option<Vec<u8>> = None;
    let mut serials = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(rest) = l.strip_prefix("ca ") {
            if ca.is_some() || !serials.is_empty() {
                return Err(bad(
                    line,
                    "the `ca` line must come once, before the serials".into(),
                ));
            }
            let mut buf = [0u8; CA_KEY_ID_LEN_MAX];
            let n = hex_digits(rest.trim(), &mut buf)
                .ok_or_else(|| bad(line, "the CA key id is not 1 to 32 bytes of hex".into()))?;
            let key_id = buf[..n].to_vec();
            if anchors.by_key_id(&key_id).is_none() {
                return Err(JpkiError::UnknownCa {
                    key_id: hex(&key_id),
                });
            }
            ca = Some(key_id);
            continue;
        }
        if ca.is_none() {
            return Err(bad(
                line,
                "expected `ca <key id hex>` before the serials".into(),
            ));
        }
        let mut buf = [0u8; SERIAL_LEN_MAX + 1];
        let n = hex_digits(l, &mut buf).ok_or_else(|| {
            bad(
                line,
                format!("`{}` is not a hex serial of 1 to 20 octets", clip(l)),
            )
        })?;
        // Hex text is a magnitude: prefix a zero sign byte so a high first bit is not negative.
        let mut int = [0u8; SERIAL_LEN_MAX + 2];
        int[1..=n].copy_from_slice(&buf[..n]);
        let s = SerialNo::from_integer(&int[..=n])
            .ok_or_else(|| bad(line, "the serial is zero or longer than 20 octets".into()))?;
        if serials.len() == SERIAL_LIST_ENTRIES_MAX {
            return Err(JpkiError::TooManyEntries {
                what: "serial list",
                max: SERIAL_LIST_ENTRIES_MAX,
            });
        }
        serials.push(s);
    }
    let ca_key_id = ca.ok_or_else(|| bad(1, "no `ca <key id hex>` line".into()))?;
    Ok(RevocationList {
        ca_key_id,
        crl: None,
        serials,
    })
}

/// Decodes hex digits (colons between bytes allowed, odd length allowed) into `out`; `None` if
/// anything else appears or it does not fit.
fn hex_digits(s: &str, out: &mut [u8]) -> Option<usize> {
    let digits: usize = s.bytes().filter(|&b| b != b':').count();
    if digits == 0 {
        return None;
    }
    let n = digits.div_ceil(2);
    if n > out.len() {
        return None;
    }
    out[..n].fill(0);
    // Fill from the right so an odd count gets an implied leading zero.
    let mut pos = 2 * n - digits;
    for b in s.bytes() {
        if b == b':' {
            continue;
        }
        let d = (b as char).to_digit(16)? as u8;
        out[pos / 2] |= if pos.is_multiple_of(2) { d << 4 } else { d };
        pos += 1;
    }
    Some(n)
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(48) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_magnitudes() {
        assert_eq!(
            SerialNo::from_integer(&[0x00, 0x85]).map(|s| s.as_bytes().to_vec()),
            Some(vec![0x85])
        );
        assert!(SerialNo::from_integer(&[0x85]).is_none(), "negative");
        assert!(SerialNo::from_integer(&[0x00]).is_none(), "zero");
        assert!(SerialNo::from_integer(&[]).is_none());
        assert!(SerialNo::from_integer(&[1; 21]).is_none());
        assert!(SerialNo::from_integer(&[1; 20]).is_some());
    }

    #[test]
    fn hex_digits_take_colons_and_odd_lengths() {
        let mut b = [0u8; 4];
        assert_eq!(hex_digits("6D18006", &mut b), Some(4));
        assert_eq!(b, [0x06, 0xd1, 0x80, 0x06]);
        assert_eq!(hex_digits("1a:c1", &mut b), Some(2));
        assert_eq!(&b[..2], &[0x1a, 0xc1]);
        assert_eq!(hex_digits("xyz", &mut b), None);
        assert_eq!(hex_digits("", &mut b), None);
        assert_eq!(hex_digits("0102030405", &mut b), None);
    }

    #[test]
    fn entries_are_counted_from_headers_alone() {
        use crate::jpki::dev::DevCa;
        let t = |s| Timestamp::from_unix_secs(s).expect("time");
        let ca = DevCa::auth(1, t(1_600_000_000), t(2_000_000_000)).expect("CA");
        for n in [0u32, 1, 3, 200] {
            let serials: Vec<SerialNo> = (1..=n)
                .map(|i| SerialNo::from_integer(&i.to_be_bytes()).expect("serial"))
                .collect();
            let der = ca
                .crl(1, t(1_700_000_000), t(1_700_086_400), &serials)
                .expect("crl");
            assert_eq!(count_entries(&der), Some(n as usize), "{n} entries");
        }
        assert_eq!(count_entries(b"\x30"), None);
    }

    /// A dev CA, its anchors, and a CRL of `n` serials (1, 2, …) issued now.
    fn ca_and_crl(n: u32) -> (crate::jpki::dev::DevCa, Anchors, Vec<u8>, Vec<SerialNo>) {
        use crate::jpki::dev::DevCa;
        let t = |s| Timestamp::from_unix_secs(s).expect("time");
        let ca = DevCa::auth(1, t(1_600_000_000), t(2_000_000_000)).expect("CA");
        let anchors = Anchors::from_files(&[("ca".into(), ca.der().to_vec())]).expect("anchor");
        let serials: Vec<SerialNo> = (1..=n)
            .map(|i| SerialNo::from_integer(&(0x0100_0000 + i).to_be_bytes()).expect("serial"))
            .collect();
        let der = ca
            .crl(1, t(1_700_000_000), t(1_700_086_400), &serials)
            .expect("crl");
        (ca, anchors, der, serials)
    }

    fn at_crl_time() -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_100).expect("time")
    }

    /// `der` with its TBSCertList replaced by `edit(tbs)` and signed again by `ca`.
    fn resigned(
        ca: &crate::jpki::dev::DevCa,
        der: &[u8],
        edit: impl Fn(&[u8]) -> Vec<u8>,
    ) -> Vec<u8> {
        let (_, os, _) = der_header(der, 0).expect("outer");
        let (_, ts, tl) = der_header(der, os).expect("tbs");
        let (_, as_, al) = der_header(der, ts + tl).expect("algorithm");
        let tbs = edit(&der[os..ts + tl]);
        let mut bits = vec![0u8];
        bits.extend(ca.key().sign(&tbs).expect("sign"));
        let mut body = tbs;
        body.extend_from_slice(&der[ts + tl..as_ + al]);
        body.push(0x03);
        push_der_length(&mut body, bits.len());
        body.extend(bits);
        let mut out = vec![0x30];
        push_der_length(&mut out, body.len());
        out.extend(body);
        out
    }

    /// Where the revokedCertificates TLV of a TBSCertList starts: the first SEQUENCE after the
    /// two times (the dev CA writes a version and a nextUpdate).
    fn list_at(tbs: &[u8]) -> usize {
        let (_, mut at, _) = der_header(tbs, 0).expect("tbs");
        for _ in 0..5 {
            let (_, s, l) = der_header(tbs, at).expect("element");
            at = s + l;
        }
        assert_eq!(tbs[at], 0x30, "revokedCertificates");
        at
    }

    /// The entries are read one by one outside x509-parser, in order, and the signature is
    /// still checked over the CRL as it came: a serial changed after signing is a bad
    /// signature, not a revocation.
    #[test]
    fn entries_are_read_one_by_one_under_the_signature_of_the_whole_crl() {
        let (ca, anchors, der, serials) = ca_and_crl(300);
        let split = Split::of(&der).expect("split").expect("a list");
        assert!(
            split.shell.len() + 300 * 10 < der.len(),
            "the shell has no entries"
        );
        let list = parse_crl(&anchors, at_crl_time(), &der).expect("parse");
        assert_eq!(list.serials, serials);

        let t = |s| Timestamp::from_unix_secs(s).expect("time");
        let none = ca
            .crl(2, t(1_700_000_000), t(1_700_086_400), &[])
            .expect("crl");
        assert!(
            Split::of(&none).expect("split").is_none(),
            "no list, nothing cut"
        );
        let empty = parse_crl(&anchors, at_crl_time(), &none).expect("parse");
        assert!(empty.serials.is_empty());

        let mut forged = der.clone();
        let target = serials[149].as_bytes();
        let pos = forged
            .windows(target.len())
            .position(|w| w == target)
            .expect("serial 150 in the DER");
        forged[pos + target.len() - 1] ^= 0x40;
        assert!(matches!(
            parse_crl(&anchors, at_crl_time(), &forged),
            Err(JpkiError::CrlBadSignature)
        ));
    }

    /// What x509-parser never sees is checked here: a list or TBSCertList length not in DER's
    /// shortest form is refused, and so is an entry that is not DER, naming it, even when the CA signed both.
    #[test]
    fn a_list_or_an_entry_that_is_not_der_is_refused_though_signed() {
        let (ca, anchors, der, _) = ca_and_crl(3);
        let refused = |bytes: &[u8], want: &str| match parse_crl(&anchors, at_crl_time(), bytes) {
            Err(e @ JpkiError::CrlMalformed { .. }) => {
                assert!(e.to_string().contains(want), "{want}: {e}")
            }
            other => panic!("{want}: {:?}", other.map(|l| l.serials.len())),
        };
        // 30 len -> 30 81 len: the same list, one length byte longer.
        let long_form = resigned(&ca, &der, |tbs| {
            let at = list_at(tbs);
            assert!(tbs[at + 1] < 0x80, "a short list");
            let mut body = tbs[der_header(tbs, 0).expect("tbs").1..at].to_vec();
            body.extend_from_slice(&[0x30, 0x81]);
            body.extend_from_slice(&tbs[at + 1..]);
            let mut out = vec![0x30];
            push_der_length(&mut out, body.len());
            out.extend(body);
            out
        });
        refused(&long_form, "shortest form");
        // The TBSCertList's own length in four bytes, two of them leading zeros.
        let padded = resigned(&ca, &der, |tbs| {
            let (_, s, l) = der_header(tbs, 0).expect("tbs");
            let mut out = vec![0x30, 0x84];
            out.extend_from_slice(&u32::try_from(l).expect("len").to_be_bytes());
            out.extend_from_slice(&tbs[s..]);
            out
        });
        refused(&padded, "shortest form");
        // The second entry's revocationDate tagged as an OCTET STRING.
        let bad_entry = resigned(&ca, &der, |tbs| {
            let mut tbs = tbs.to_vec();
            let (_, first, _) = der_header(&tbs, list_at(&tbs)).expect("list");
            let (_, s, l) = der_header(&tbs, first).expect("entry 1");
            let (_, serial_at, _) = der_header(&tbs, s + l).expect("entry 2");
            let (_, ss, sl) = der_header(&tbs, serial_at).expect("serial 2");
            assert_eq!(tbs[ss + sl], 0x17, "UTCTime");
            tbs[ss + sl] = 0x04;
            tbs
        });
        refused(&bad_entry, "entry 2: not valid DER");
    }

    /// A list read in runs on several threads gives the serials in list order, and names its
    /// first bad entry wherever the runs are cut, whichever run holds it.
    #[test]
    fn a_list_read_in_runs_gives_the_serials_in_order_and_names_the_first_bad_entry() {
        let (_, anchors, der, serials) = ca_and_crl(5_000);
        let split = Split::of(&der).expect("split").expect("a list");
        let list = &der[split.entries.clone()];
        for threads in [1, 2, 3, 4, 7] {
            assert_eq!(
                read_entries(list, serials.len(), threads).expect("read"),
                serials,
                "{threads} threads"
            );
        }
        // Entry `k` (from 1) with its revocationDate tagged as an OCTET STRING.
        let spoil = |list: &mut [u8], k: usize| {
            let mut at = 0;
            for _ in 1..k {
                let (_, s, l) = der_header(list, at).expect("entry");
                at = s + l;
            }
            let (_, serial_at, _) = der_header(list, at).expect("entry k");
            let (_, ss, sl) = der_header(list, serial_at).expect("serial");
            list[ss + sl] = 0x04;
        };
        let named = |list: &[u8], threads: usize| match read_entries(list, serials.len(), threads) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a bad entry read with {threads} threads"),
        };
        let mut one = list.to_vec();
        spoil(&mut one, 4_000);
        let mut two = one.clone();
        spoil(&mut two, 2_600);
        for threads in [1, 2, 4] {
            assert!(named(&one, threads).contains("entry 4000: not valid DER"));
            assert!(named(&two, threads).contains("entry 2600: not valid DER"));
        }
        // A header that does not read ends the cutting; the run holding it names the entry.
        let mut cut = list.to_vec();
        let mut at = 0;
        for _ in 1..3_000 {
            let (_, s, l) = der_header(&cut, at).expect("entry");
            at = s + l;
        }
        cut[at] = 0x31;
        cut[at + 1] = 0x84;
        assert!(named(&cut, 4).contains("entry 3000"), "{}", named(&cut, 4));
        // The parse of a whole CRL agrees.
        assert_eq!(
            parse_crl(&anchors, at_crl_time(), &der)
                .expect("parse")
                .serials,
            serials
        );
    }

    #[test]
    fn numbers_compare_as_integers() {
        use std::cmp::Ordering::*;
        assert_eq!(cmp_number(&[2], &[1, 0]), Less);
        assert_eq!(cmp_number(&[3], &[2]), Greater);
        assert_eq!(cmp_number(&[], &[1]), Less);
        assert_eq!(cmp_number(&[7, 7], &[7, 7]), Equal);
    }
}
