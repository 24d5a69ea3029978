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
//! The serial-list format (UTF-8 text, at most [`SERIAL_LIST_LEN_MAX`] bytes):
//!
//! ```text
//! # comments and blank lines are ignored
//! ca 1AC100F5...            <- hex key identifier (SKI) of the CA generation, once, first
//! 06D18006                  <- one serial per line, hex (colons allowed), 1 to 20 octets
//! ```

use aws_lc_rs::signature::ParsedPublicKey;
use x509_parser::prelude::*;

use super::anchors::{Anchors, OID_SHA256_WITH_RSA};
use super::{JpkiError, clamp_time, der_header, hex};
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
const OID_CERTIFICATE_ISSUER: &str = "2.5.29.29";
const OID_REASON_CODE: &str = "2.5.29.21";
const OID_INVALIDITY_DATE: &str = "2.5.29.24";

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
    if count_entries(der).is_some_and(|n| n > CRL_ENTRIES_MAX) {
        return Err(JpkiError::TooManyEntries {
            what: "CRL",
            max: CRL_ENTRIES_MAX,
        });
    }
    if let Some(problem) = super::outer_der_problem(der, "the CRL") {
        return Err(refuse(problem));
    }
    let (rest, crl) = CertificateRevocationList::from_der(der).map_err(|e| {
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
    unique_extensions(tbs.extensions(), "", "§5.2")?;
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
        if verify(a.key(), tbs.as_ref(), sig) {
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

    let mut serials = Vec::with_capacity(tbs.revoked_certificates.len());
    for (i, entry) in tbs.revoked_certificates.iter().enumerate() {
        unique_extensions(entry.extensions(), &format!("entry {}: ", i + 1), "§5.3")?;
        for ext in entry.extensions() {
            let oid = ext.oid.to_id_string();
            if oid == OID_CERTIFICATE_ISSUER {
                return Err(refuse(format!(
                    "entry {}: indirect entries (certificateIssuer) are not accepted",
                    i + 1
                )));
            }
            if ext.critical && oid != OID_REASON_CODE && oid != OID_INVALIDITY_DATE {
                return Err(refuse(format!(
                    "entry {}: unknown critical extension {oid}",
                    i + 1
                )));
            }
        }
        let s = SerialNo::from_integer(entry.raw_serial()).ok_or_else(|| {
            refuse(format!(
                "entry {}: the serial is not a positive integer of at most 20 octets",
                i + 1
            ))
        })?;
        serials.push(s);
    }
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

/// Extensions a CRL, or one of its entries, may carry: a CRL has a handful and an entry one or
/// two; the cap keeps the duplicate check (quadratic) bounded whatever a partner sends.
pub const CRL_EXTENSIONS_MAX: usize = 32;

/// Refuses a list with more than [`CRL_EXTENSIONS_MAX`] extensions or one OID twice (RFC 5280
/// `section`: at most one instance of an extension). `at` prefixes the message ("entry 7: ").
fn unique_extensions(
    exts: &[x509_parser::extensions::X509Extension<'_>],
    at: &str,
    section: &str,
) -> Result<(), JpkiError> {
    if exts.len() > CRL_EXTENSIONS_MAX {
        return Err(refuse(format!(
            "{at}{} extensions, more than the {CRL_EXTENSIONS_MAX} accepted",
            exts.len()
        )));
    }
    match exts
        .iter()
        .enumerate()
        .find(|(i, e)| exts[..*i].iter().any(|p| p.oid == e.oid))
    {
        Some((_, e)) => Err(refuse(format!(
            "{at}extension {} appears twice (RFC 5280 {section}: at most one of each)",
            e.oid.to_id_string()
        ))),
        None => Ok(()),
    }
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

    #[test]
    fn numbers_compare_as_integers() {
        use std::cmp::Ordering::*;
        assert_eq!(cmp_number(&[2], &[1, 0]), Less);
        assert_eq!(cmp_number(&[3], &[2]), Greater);
        assert_eq!(cmp_number(&[], &[1]), Less);
        assert_eq!(cmp_number(&[7, 7], &[7, 7]), Equal);
    }
}
