//! End-entity certificates: the JPKI subject-CN rule, the fields the engine keeps, and chain
//! validation with rustls-webpki at an explicit time. The result, a [`VerifiedLeaf`], is what
//! the verified-leaf cache holds: fingerprint, CA, serial, validity, CN and public key.
//!
//! rustls-webpki decides the chain (signature, validity, CA constraints, EKU if present,
//! algorithms); x509-parser only reads the CN, serial, key and issuer OU. Never consults the
//! revocation index (the registry does, on every check) and never keeps the certificate.

use aws_lc_rs::signature::{self, ParsedPublicKey};
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::Validity;
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use x509_parser::prelude::*;

use super::anchors::{Anchors, OU_DIGITAL_SIGNATURE};
use super::{
    Card, JpkiError, RSA_BITS_MAX, RSA_BITS_MIN, SIGNATURE_LEN_MAX, clamp_time, modulus_bits,
};
use crate::id::{CertRef, MYKEY_ID_LEN, MyKeyId, Timestamp};

/// Characters of the CN suffix after the 14-character random string ("reception terminal
/// identifier", starting with the municipality code).
pub const CN_SUFFIX_LEN: usize = 9;
/// Characters of a JPKI authentication subject CN.
pub const CN_LEN: usize = MYKEY_ID_LEN + CN_SUFFIX_LEN;

/// Why a subject CN breaks the JPKI rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CnError {
    /// The subject has no CN.
    #[error("the subject has no CN")]
    Missing,
    /// The subject has more than one CN.
    #[error("the subject has more than one CN")]
    Several,
    /// The CN is not a string type.
    #[error("the CN is not a readable string")]
    NotText,
    /// The CN has the wrong length.
    #[error("the CN has {len} characters, not {CN_LEN} (14 random + 9 suffix)")]
    Length {
        /// Characters found.
        len: usize,
    },
    /// A character outside A–Z and 0–9.
    #[error("character {pos} of the CN is not one of A–Z, 0–9")]
    Char {
        /// 0-based position.
        pos: usize,
    },
}

/// Splits a JPKI authentication CN into its 14-character random string (the MyKey ID of a full
/// registration) and its 9-character suffix. Both are A–Z and 0–9 only.
pub fn parse_cn(cn: &str) -> Result<(MyKeyId, [u8; CN_SUFFIX_LEN]), CnError> {
    let b = cn.as_bytes();
    if let Some(pos) = b
        .iter()
        .position(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit()))
    {
        // Count characters, not bytes, so a multi-byte character is reported where it is.
        let pos = cn[..pos].chars().count();
        if cn.chars().count() != CN_LEN {
            return Err(CnError::Length {
                len: cn.chars().count(),
            });
        }
        return Err(CnError::Char { pos });
    }
    if b.len() != CN_LEN {
        return Err(CnError::Length { len: b.len() });
    }
    let id = MyKeyId::parse(&b[..MYKEY_ID_LEN]).map_err(|_| CnError::Char { pos: 0 })?;
    let mut suffix = [0u8; CN_SUFFIX_LEN];
    suffix.copy_from_slice(&b[MYKEY_ID_LEN..]);
    Ok((id, suffix))
}

/// A certificate that chained to a JPKI user-authentication CA at some time: what the cache
/// keeps. Its validity is checked again at every use.
pub struct VerifiedLeaf {
    card: Card,
    not_before: Timestamp,
    key: ParsedPublicKey,
}

impl VerifiedLeaf {
    /// The card this certificate identifies.
    pub fn card(&self) -> Card {
        self.card
    }

    /// Whether the certificate (and its CA) are valid at `now`.
    pub fn check_time(&self, now: Timestamp) -> Result<(), JpkiError> {
        if now < self.not_before {
            return Err(JpkiError::NotYetValid {
                not_before: self.not_before,
            });
        }
        if now > self.card.not_after {
            return Err(JpkiError::Expired {
                not_after: self.card.not_after,
            });
        }
        Ok(())
    }

    /// Verifies an RSA PKCS#1 v1.5 SHA-256 signature over `message` with the certificate's key.
    pub fn verify_signature(&self, message: &[u8], sig: &[u8]) -> Result<(), JpkiError> {
        if sig.len() > SIGNATURE_LEN_MAX {
            return Err(JpkiError::BadSignature);
        }
        self.key
            .verify_sig(message, sig)
            .map_err(|_| JpkiError::BadSignature)
    }
}

impl std::fmt::Debug for VerifiedLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedLeaf")
            .field("cert", &self.card.cert)
            .field("not_before", &self.not_before)
            .field("not_after", &self.card.not_after)
            .finish()
    }
}

/// Verifies an RSA PKCS#1 v1.5 SHA-256 signature with an RSAPublicKey (PKCS#1 DER), parsing the
/// key on the way: the check used for keys not in the cache, and by the Wycheproof tests.
pub fn verify_rsa_sha256(rsa_public_key: &[u8], message: &[u8], sig: &[u8]) -> bool {
    sig.len() <= SIGNATURE_LEN_MAX
        && signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, rsa_public_key)
            .verify(message, sig)
            .is_ok()
}

/// Fields read from an end-entity certificate before its chain is checked.
struct Fields<'a> {
    cn_id: MyKeyId,
    serial: &'a [u8],
    not_before: Timestamp,
    not_after: Timestamp,
    rsa_key: &'a [u8],
}

fn malformed(reason: impl Into<String>) -> JpkiError {
    JpkiError::CertMalformed {
        reason: reason.into(),
    }
}

/// The TLV that begins at `at` in `der`.
fn tlv_at(der: &[u8], at: usize) -> Option<&[u8]> {
    let (_, start, len) = super::der_header(der, at)?;
    der.get(at..start.checked_add(len)?)
}

/// A DER length field for `len`.
fn der_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let b = len.to_be_bytes();
    let skip = b.iter().position(|&x| x != 0).unwrap_or(b.len() - 1);
    let mut out = vec![0x80 | (b.len() - skip) as u8];
    out.extend_from_slice(&b[skip..]);
    out
}

/// Reads the fields the engine needs. rustls-webpki has parsed the certificate's structure
/// already (`ee`); x509-parser reads only the pieces after the issuer (validity, subject and
/// public key) from their own TLVs, so a card check does not parse the certificate twice.
fn read_fields<'a>(
    anchors: &Anchors,
    ee: &'a EndEntityCert<'a>,
    der: &'a [u8],
) -> Result<Fields<'a>, JpkiError> {
    let issuer = ee.issuer();
    if !anchors.all().iter().any(|a| a.subject_content() == issuer) {
        // Not a configured CA's name; say so precisely if it is the signature CA's.
        let full = [&[0x30u8][..], &der_len(issuer.len()), issuer].concat();
        let (_, name) = X509Name::from_der(&full).map_err(|e| malformed(format!("issuer: {e}")))?;
        if name
            .iter_organizational_unit()
            .any(|a| a.as_str() == Ok(OU_DIGITAL_SIGNATURE))
        {
            return Err(JpkiError::SignatureCertificate);
        }
        return Err(JpkiError::UnknownIssuer);
    }
    // The TLVs after the issuer: validity, subject, subjectPublicKeyInfo.
    let issuer_end = (issuer.as_ptr() as usize)
        .checked_sub(der.as_ptr() as usize)
        .and_then(|o| o.checked_add(issuer.len()))
        .filter(|&e| e <= der.len())
        .ok_or_else(|| malformed("issuer outside the certificate"))?;
    let validity = tlv_at(der, issuer_end).ok_or_else(|| malformed("no validity"))?;
    let subject_at = issuer_end + validity.len();
    let subject = tlv_at(der, subject_at).ok_or_else(|| malformed("no subject"))?;
    let spki = tlv_at(der, subject_at + subject.len()).ok_or_else(|| malformed("no public key"))?;
    check_extensions(der, subject_at + subject.len() + spki.len())?;
    let (_, validity) =
        Validity::from_der(validity).map_err(|e| malformed(format!("validity: {e}")))?;
    let (_, subject) =
        X509Name::from_der(subject).map_err(|e| malformed(format!("subject: {e}")))?;
    let (_, spki) =
        SubjectPublicKeyInfo::from_der(spki).map_err(|e| malformed(format!("public key: {e}")))?;

    let mut cns = subject.iter_common_name();
    let cn = cns.next().ok_or(CnError::Missing)?;
    if cns.next().is_some() {
        return Err(CnError::Several.into());
    }
    let (cn_id, _) = parse_cn(cn.as_str().map_err(|_| CnError::NotText)?)?;
    let serial = ee.serial();
    // RFC 5280 §4.1.2.2: a positive INTEGER of at most 20 octets (a sign byte may precede).
    let magnitude = match serial {
        [0, rest @ ..] => rest,
        s => s,
    };
    if serial.first().is_none_or(|&b| b & 0x80 != 0)
        || magnitude.iter().all(|&b| b == 0)
        || magnitude.len() > crate::id::SERIAL_LEN_MAX
    {
        return Err(malformed(
            "the serial is not a positive integer of at most 20 octets",
        ));
    }
    if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION {
        return Err(JpkiError::BadKey {
            found: format!("algorithm {}", spki.algorithm.algorithm),
            min: RSA_BITS_MIN,
            max: RSA_BITS_MAX,
        });
    }
    let bits = match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(k)) => modulus_bits(k.modulus),
        _ => return Err(malformed("unreadable RSA public key")),
    };
    if !(RSA_BITS_MIN..=RSA_BITS_MAX).contains(&bits) {
        return Err(JpkiError::BadKey {
            found: format!("{bits} bits"),
            min: RSA_BITS_MIN,
            max: RSA_BITS_MAX,
        });
    }
    let rsa_key: &[u8] = match spki.subject_public_key.data {
        std::borrow::Cow::Borrowed(b) => b,
        std::borrow::Cow::Owned(_) => return Err(malformed("public key bit string not aligned")),
    };
    Ok(Fields {
        cn_id,
        serial: magnitude,
        not_before: clamp_time(validity.not_before.timestamp()),
        not_after: clamp_time(validity.not_after.timestamp()),
        rsa_key,
    })
}

/// DER of the keyUsage extension's OID, 2.5.29.15.
const OID_KEY_USAGE: [u8; 3] = [0x55, 0x1d, 0x0f];
/// Extensions an end-entity certificate may carry: the JPKI profile has four; a certificate
/// with more is refused before any is compared (the duplicate check is quadratic).
const EXTENSIONS_MAX: usize = 32;
/// RFC 5280 §4.2.1.3 names of the keyUsage bits, bit 0 first.
const KEY_USAGE_BITS: [&str; 9] = [
    "digitalSignature",
    "nonRepudiation",
    "keyEncipherment",
    "dataEncipherment",
    "keyAgreement",
    "keyCertSign",
    "cRLSign",
    "encipherOnly",
    "decipherOnly",
];

/// The extensions of the TBSCertificate, which follow the subjectPublicKeyInfo ending at
/// `spki_end`: none may appear twice (RFC 5280 §4.2), and the keyUsage must be present with
/// digitalSignature set (§4.2.1.3: the card's key signs the challenge; the JPKI profile always
/// carries a keyUsage). rustls-webpki has checked the certificate's DER already; this walk
/// still checks every length against the bytes.
fn check_extensions(der: &[u8], spki_end: usize) -> Result<(), JpkiError> {
    let bad = || malformed("the extensions are not valid DER");
    let tlv = |at: usize| -> Result<(u8, usize, usize), JpkiError> {
        let (tag, start, len) = super::der_header(der, at).ok_or_else(bad)?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= der.len())
            .ok_or_else(bad)?;
        Ok((tag, start, end))
    };
    let (_, cert_start, _) = tlv(0)?;
    let (_, _, tbs_end) = tlv(cert_start)?;
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut key_usage: Option<&[u8]> = None;
    let mut at = spki_end;
    while at < tbs_end {
        let (tag, start, end) = tlv(at)?;
        if end > tbs_end {
            return Err(bad());
        }
        // [1] issuerUniqueID and [2] subjectUniqueID are skipped; [3] holds the extensions.
        if tag == 0xa3 {
            let (seq, mut e, ext_end) = tlv(start)?;
            if seq != 0x30 || ext_end != end {
                return Err(bad());
            }
            while e < ext_end {
                let (t, es, ee) = tlv(e)?;
                let (ot, os, oe) = tlv(es)?;
                if t != 0x30 || ot != 0x06 || ee > ext_end || oe > ee {
                    return Err(bad());
                }
                let oid = &der[os..oe];
                if seen.len() == EXTENSIONS_MAX {
                    return Err(malformed(format!("more than {EXTENSIONS_MAX} extensions")));
                }
                if seen.contains(&oid) {
                    return Err(malformed(format!(
                        "extension {} appears twice (RFC 5280 §4.2: at most one of each)",
                        oid_text(oid)
                    )));
                }
                seen.push(oid);
                if oid == OID_KEY_USAGE {
                    // critical BOOLEAN (optional), then the OCTET STRING holding a BIT STRING.
                    let (mut vt, mut vs, mut ve) = tlv(oe)?;
                    if vt == 0x01 {
                        (vt, vs, ve) = tlv(ve)?;
                    }
                    let (bt, bs, be) = tlv(vs)?;
                    if vt != 0x04 || bt != 0x03 || be != ve || ve != ee || bs == be {
                        return Err(malformed("the keyUsage extension is not a BIT STRING"));
                    }
                    key_usage = Some(&der[bs + 1..be]);
                }
                e = ee;
            }
        }
        at = end;
    }
    let Some(bits) = key_usage else {
        return Err(JpkiError::KeyUsage {
            found:
                "it has no keyUsage extension (the JPKI profile carries one with digitalSignature)"
                    .into(),
        });
    };
    let set: Vec<&str> = KEY_USAGE_BITS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0))
        .map(|(_, n)| *n)
        .collect();
    if set.first() != Some(&"digitalSignature") {
        return Err(JpkiError::KeyUsage {
            found: format!(
                "its keyUsage is {} without digitalSignature (RFC 5280 §4.2.1.3)",
                if set.is_empty() {
                    "empty".to_owned()
                } else {
                    set.join(", ")
                }
            ),
        });
    }
    Ok(())
}

/// An OID's dotted text, or its hex if it does not decode.
fn oid_text(der: &[u8]) -> String {
    match x509_parser::der_parser::oid::Oid::new(der.into()).to_id_string() {
        s if !s.is_empty() => s,
        _ => crate::jpki::hex(der),
    }
}

/// Maps a rustls-webpki refusal to the typed error a caller can act on.
fn chain_error(e: webpki::Error, f: &Fields<'_>) -> JpkiError {
    match e {
        webpki::Error::CertExpired { .. } => JpkiError::Expired {
            not_after: f.not_after,
        },
        webpki::Error::CertNotValidYet { .. } => JpkiError::NotYetValid {
            not_before: f.not_before,
        },
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            JpkiError::UnknownIssuer
        }
        webpki::Error::BadDer | webpki::Error::TrailingData(_) => inner_der(e),
        e => JpkiError::Chain(e),
    }
}

/// A DER error inside a certificate whose outer structure is sound.
fn inner_der(e: webpki::Error) -> JpkiError {
    malformed(format!(
        "a field inside it is not valid DER (RFC 5280 requires DER; rustls-webpki: {e:?})"
    ))
}

/// Validates `der` at `now` against the anchors and returns what the cache keeps. The issuer
/// is chosen by key: candidates with the certificate's issuer name are tried one at a time,
/// the likely generation first (by issuance date; the JPKI profile needs no AKI), and
/// rustls-webpki checks the signature with each until one verifies.
pub fn verify_chain(
    anchors: &Anchors,
    der: &[u8],
    fingerprint: [u8; 32],
    now: Timestamp,
) -> Result<VerifiedLeaf, JpkiError> {
    if let Some(problem) = super::outer_der_problem(der, "the certificate") {
        return Err(malformed(problem));
    }
    let cert_der = CertificateDer::from(der);
    let ee = EndEntityCert::try_from(&cert_der).map_err(|e| match e {
        webpki::Error::BadDer | webpki::Error::TrailingData(_) => inner_der(e),
        e => JpkiError::Chain(e),
    })?;
    let f = read_fields(anchors, &ee, der)?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.unix_secs()));
    let (order, n) = anchors.candidates(ee.issuer(), f.not_before);
    // The only signature algorithm of the JPKI profile: sha256WithRSA, 2048–8192 bits, with
    // the anchors' keys parsed once.
    let algorithms: [&dyn rustls_pki_types::SignatureVerificationAlgorithm; 1] =
        [anchors.rsa_sha256()];
    let mut last = JpkiError::UnknownIssuer;
    for &i in &order[..n] {
        let Some(anchor) = anchors.get(i) else {
            continue;
        };
        let verified = ee.verify_for_usage(
            &algorithms,
            std::slice::from_ref(anchor.trust_anchor()),
            &[],
            time,
            KeyUsage::client_auth(),
            None,
            None,
        );
        match verified {
            Ok(_) => {
                // rustls-webpki does not check an anchor's own validity; we do: every
                // certificate of the chain must be valid at `now`.
                if now < anchor.not_before() {
                    return Err(JpkiError::NotYetValid {
                        not_before: anchor.not_before().max(f.not_before),
                    });
                }
                if now > anchor.not_after() {
                    return Err(JpkiError::Expired {
                        not_after: anchor.not_after().min(f.not_after),
                    });
                }
                let key = ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, f.rsa_key)
                    .map_err(|e| JpkiError::BadKey {
                    found: e.to_string(),
                    min: RSA_BITS_MIN,
                    max: RSA_BITS_MAX,
                })?;
                return Ok(VerifiedLeaf {
                    card: Card {
                        cn_id: f.cn_id,
                        cert: CertRef::new(anchor.key_id(), f.serial)?,
                        fingerprint,
                        not_after: anchor.not_after().min(f.not_after),
                    },
                    not_before: f.not_before,
                    key,
                });
            }
            Err(e) => {
                last = chain_error(e, &f);
                if !matches!(last, JpkiError::UnknownIssuer) {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}
