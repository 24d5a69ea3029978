//! A development JPKI, generated with rcgen, that mimics the real profile (see
//! `domain/jpki.md` in the shared documents): self-signed RSA-2048 CA generations that share
//! one UTF8String DN, with a DirName SAN and a DirName CRL distribution point, SKI and no AKI;
//! end-entity certificates with `C=JP, CN=<14 random + 9 suffix>`, no EKU and no AKI; simulated
//! cards that sign challenges; CRLs signed by a generation.
//!
//! For tests, benchmarks, the demo and load generation only: its keys live in memory and are
//! never trusted unless a deployment puts its CA certificates in the anchor directory. Owns no
//! trust decision.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, KeyPair as _, RsaKeyPair};
use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};

use super::anchors::{OU_DIGITAL_SIGNATURE, OU_USER_AUTHENTICATION};
use super::crl::SerialNo;
use super::der_header;
use crate::id::Timestamp;

/// The organisation of every JPKI CA.
pub const ORGANISATION: &str = "JPKI";
/// The last OU of every JPKI CA.
pub const OU_JLIS: &str = "Japan Agency for Local Authority Information Systems";
/// The organisation in the CA's DirName SAN.
pub const SAN_ORGANISATION: &str = "公的個人認証サービス";

/// Why the development PKI could not make something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevPkiError {
    /// rcgen refused.
    #[error("rcgen: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Key generation, key parsing or signing failed in aws-lc-rs (which says no more).
    #[error("aws-lc-rs could not {op}")]
    Crypto {
        /// What was being done: `generate an RSA key`, `sign`, …
        op: &'static str,
    },
    /// An RSA size other than 2048, 3072 or 4096.
    #[error("unsupported RSA size {bits}")]
    RsaSize {
        /// The size asked for.
        bits: usize,
    },
    /// A CRL that rcgen wrote has a structure the editor does not expect.
    #[error("unexpected CRL structure")]
    CrlStructure,
    /// A time out of range.
    #[error("time out of range")]
    Time,
}

/// A result of the development PKI.
pub type DevResult<T> = Result<T, DevPkiError>;

fn crypto<E>(op: &'static str) -> impl Fn(E) -> DevPkiError {
    move |_| DevPkiError::Crypto { op }
}

/// A [`Timestamp`] as rcgen's time type.
pub(crate) fn time(t: Timestamp) -> Result<time::OffsetDateTime, DevPkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.unix_secs() as i64).map_err(|_| DevPkiError::Time)
}

/// An RSA-2048 key usable both by rcgen (to sign certificates) and directly (to sign
/// challenges as a card does).
pub struct DevKey {
    rsa: RsaKeyPair,
    rcgen: KeyPair,
}

impl DevKey {
    /// Generates an RSA key of `bits` (2048, 3072 or 4096).
    pub fn generate(bits: usize) -> Result<Self, DevPkiError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            _ => return Err(DevPkiError::RsaSize { bits }),
        };
        let rsa = RsaKeyPair::generate(size).map_err(crypto("generate an RSA key"))?;
        Self::from_pkcs8(rsa.as_der().map_err(crypto("encode a key"))?.as_ref())
    }

    /// Signs `msg` with RSA PKCS#1 v1.5 and SHA-256, as a card signs a challenge.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, DevPkiError> {
        let mut sig = vec![0u8; self.rsa.public_modulus_len()];
        self.rsa
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                msg,
                &mut sig,
            )
            .map_err(crypto("sign"))?;
        Ok(sig)
    }

    /// The private key as PKCS#8 DER (to keep a simulated card in a file).
    pub fn pkcs8(&self) -> Result<Vec<u8>, DevPkiError> {
        Ok(self
            .rsa
            .as_der()
            .map_err(crypto("encode a key"))?
            .as_ref()
            .to_vec())
    }

    /// A key from PKCS#8 DER, as written by [`DevKey::pkcs8`].
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, DevPkiError> {
        let rsa = RsaKeyPair::from_pkcs8(der).map_err(crypto("read a PKCS#8 key"))?;
        let rcgen = KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(der),
            &rcgen::PKCS_RSA_SHA256,
        )?;
        Ok(Self { rsa, rcgen })
    }

    /// The public key as an RSAPublicKey (PKCS#1 DER).
    pub fn public_key(&self) -> &[u8] {
        self.rsa.public_key().as_ref()
    }
}

/// Encodes a DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A DER Name of UTF8String attributes; `attrs` are (OID content bytes, value).
fn name_der(attrs: &[(&[u8], &str)]) -> Vec<u8> {
    let mut rdns = Vec::new();
    for (oid, value) in attrs {
        let mut atv = tlv(0x06, oid);
        // countryName is a PrintableString, as in the real certificates; the rest UTF8String.
        let tag = if *oid == OID_C { 0x13 } else { 0x0c };
        atv.extend(tlv(tag, value.as_bytes()));
        rdns.extend(tlv(0x31, &tlv(0x30, &atv)));
    }
    tlv(0x30, &rdns)
}

const OID_C: &[u8] = &[0x55, 0x04, 0x06];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_OU: &[u8] = &[0x55, 0x04, 0x0b];
const OID_SAN: &[u64] = &[2, 5, 29, 17];
const OID_CRL_DP: &[u64] = &[2, 5, 29, 31];

fn ca_attrs(ou: &str) -> [(&'static [u8], &str); 4] {
    [
        (OID_C, "JP"),
        (OID_O, ORGANISATION),
        (OID_OU, ou),
        (OID_OU, OU_JLIS),
    ]
}

fn ca_dn(ou: &str) -> DistinguishedName {
    // rcgen keeps one value per attribute type; the second OU goes in as a custom type with
    // the same OID, which encodes identically.
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, country());
    dn.push(DnType::OrganizationName, ORGANISATION);
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::CustomDnType(vec![2, 5, 4, 11]), OU_JLIS);
    dn
}

/// `JP` as a PrintableString.
fn country() -> DnValue {
    DnValue::PrintableString(PrintableString::try_from("JP").unwrap_or_else(|_| unreachable!()))
}

/// The CRL distribution point extension of the JPKI profile: one DirName, the CA's subject.
fn crl_dp(ou: &str) -> CustomExtension {
    // DistributionPointName: fullName [0] GeneralNames, holding directoryName [4] Name.
    let full_name = tlv(0xa0, &tlv(0xa4, &name_der(&ca_attrs(ou))));
    CustomExtension::from_oid_content(OID_CRL_DP, tlv(0x30, &tlv(0x30, &tlv(0xa0, &full_name))))
}

/// The parameters of a CRL revoking `serials` (big-endian magnitudes) at `this_update`.
pub(crate) fn crl_params<'a>(
    number: u64,
    this_update: Timestamp,
    next_update: Timestamp,
    serials: impl Iterator<Item = &'a [u8]>,
) -> Result<CertificateRevocationListParams, DevPkiError> {
    let at = time(this_update)?;
    Ok(CertificateRevocationListParams {
        this_update: at,
        next_update: time(next_update)?,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: serials
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: at,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    })
}

/// How an end-entity certificate departs from the JPKI profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafVariant {
    /// The profile: no EKU, no AKI.
    Jpki,
    /// With an AKI naming the issuer's key (RFC 5280 allows it).
    Aki,
    /// With an EKU of clientAuth (allowed).
    ClientAuthEku,
    /// With an EKU of serverAuth only (not usable to authenticate a client).
    ServerAuthEku,
    /// Marked as a CA (RFC 5280 forbids using it as an end entity).
    Ca,
    /// keyUsage keyCertSign only: the key may not sign a challenge (RFC 5280 §4.2.1.3).
    KeyCertSignOnly,
    /// keyUsage nonRepudiation (contentCommitment) only.
    NonRepudiationOnly,
    /// keyUsage keyEncipherment only.
    KeyEnciphermentOnly,
    /// No keyUsage extension at all.
    NoKeyUsage,
    /// The same unknown, non-critical extension twice (RFC 5280 §4.2 allows one of each).
    DuplicateExtension,
    /// An unknown extension marked critical (RFC 5280 §4.2: must be refused).
    UnknownCriticalExtension,
}

/// A JPKI-like CA generation.
pub struct DevCa {
    key: DevKey,
    params: CertificateParams,
    der: Vec<u8>,
    ou: &'static str,
}

impl DevCa {
    /// A user-authentication CA generation valid from `not_before` to `not_after`.
    pub fn auth(serial: u64, not_before: Timestamp, not_after: Timestamp) -> DevResult<Self> {
        Self::generate(OU_USER_AUTHENTICATION, serial, not_before, not_after)
    }

    /// A digital-signature CA generation (which must never be accepted for authentication).
    pub fn signature(serial: u64, not_before: Timestamp, not_after: Timestamp) -> DevResult<Self> {
        Self::generate(OU_DIGITAL_SIGNATURE, serial, not_before, not_after)
    }

    fn generate(
        ou: &'static str,
        serial: u64,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<Self, DevPkiError> {
        let key = DevKey::generate(2048)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = ca_dn(ou);
        p.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        p.not_before = time(not_before)?;
        p.not_after = time(not_after)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.use_authority_key_identifier_extension = false;
        let san_ou = if ou == OU_USER_AUTHENTICATION {
            "公的個人認証サービス利用者証明用"
        } else {
            "公的個人認証サービス署名用"
        };
        let san_name = name_der(&[
            (OID_C, "JP"),
            (OID_O, SAN_ORGANISATION),
            (OID_OU, san_ou),
            (OID_OU, "地方公共団体情報システム機構"),
        ]);
        let san = tlv(0x30, &tlv(0xa4, &san_name));
        p.custom_extensions = vec![CustomExtension::from_oid_content(OID_SAN, san), crl_dp(ou)];
        let der = p.self_signed(&key.rcgen)?.der().to_vec();
        Ok(Self {
            key,
            params: p,
            der,
            ou,
        })
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key.rcgen)
    }

    /// Issues an end-entity certificate for a card: `C=JP, CN=<cn>`, the given serial and
    /// validity, the card's key, a DirName CRL distribution point, no EKU, no AKI.
    pub fn issue(
        &self,
        card: &DevKey,
        cn: &str,
        serial: &[u8],
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<Vec<u8>, DevPkiError> {
        self.issue_with(card, cn, serial, not_before, not_after, LeafVariant::Jpki)
    }

    /// As [`DevCa::issue`], departing from the JPKI profile as `variant` says (tests of what
    /// RFC 5280 allows or forbids in an end-entity certificate).
    pub fn issue_with(
        &self,
        card: &DevKey,
        cn: &str,
        serial: &[u8],
        not_before: Timestamp,
        not_after: Timestamp,
        variant: LeafVariant,
    ) -> Result<Vec<u8>, DevPkiError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, country());
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.serial_number = Some(SerialNumber::from_slice(serial));
        p.not_before = time(not_before)?;
        p.not_after = time(not_after)?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = false;
        p.custom_extensions = vec![crl_dp(self.ou)];
        match variant {
            LeafVariant::Jpki => {}
            LeafVariant::Aki => p.use_authority_key_identifier_extension = true,
            LeafVariant::ClientAuthEku => {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]
            }
            LeafVariant::ServerAuthEku => {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
            }
            LeafVariant::Ca => {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
            }
            LeafVariant::KeyCertSignOnly => p.key_usages = vec![KeyUsagePurpose::KeyCertSign],
            LeafVariant::NonRepudiationOnly => {
                p.key_usages = vec![KeyUsagePurpose::ContentCommitment]
            }
            LeafVariant::KeyEnciphermentOnly => {
                p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]
            }
            LeafVariant::NoKeyUsage => p.key_usages = Vec::new(),
            LeafVariant::DuplicateExtension => {
                // A private-arc OID no verifier knows, with an empty value, twice.
                let oid = [1, 3, 6, 1, 4, 1, 99999, 1];
                p.custom_extensions
                    .push(CustomExtension::from_oid_content(&oid, vec![0x05, 0x00]));
                p.custom_extensions
                    .push(CustomExtension::from_oid_content(&oid, vec![0x05, 0x00]));
            }
            LeafVariant::UnknownCriticalExtension => {
                let oid = [1, 3, 6, 1, 4, 1, 99999, 2];
                let mut e = CustomExtension::from_oid_content(&oid, vec![0x05, 0x00]);
                e.set_criticality(true);
                p.custom_extensions.push(e);
            }
        }
        Ok(p.signed_by(&card.rcgen, &self.issuer())?.der().to_vec())
    }

    /// A CRL of this generation revoking `serials`.
    pub fn crl(
        &self,
        number: u64,
        this_update: Timestamp,
        next_update: Timestamp,
        serials: &[SerialNo],
    ) -> Result<Vec<u8>, DevPkiError> {
        let p = crl_params(
            number,
            this_update,
            next_update,
            serials.iter().map(SerialNo::as_bytes),
        )?;
        Ok(p.signed_by(&self.issuer())?.der().to_vec())
    }

    /// As [`DevCa::crl`], without the authority key identifier (rcgen always writes one; RFC
    /// 5280 requires it of conforming CAs, but the JPKI CRL profile is not public), re-signed.
    pub fn crl_without_aki(
        &self,
        number: u64,
        this_update: Timestamp,
        next_update: Timestamp,
        serials: &[SerialNo],
    ) -> Result<Vec<u8>, DevPkiError> {
        // Extension ::= SEQUENCE { OID 2.5.29.35 = 06 03 55 1d 23, ... }
        self.crl_with_extensions(number, this_update, next_update, serials, &|exts| {
            exts.into_iter()
                .filter(|e| {
                    !e.windows(5)
                        .take(4)
                        .any(|w| w == [0x06, 0x03, 0x55, 0x1d, 0x23])
                })
                .collect()
        })
    }

    /// As [`DevCa::crl`], with its list of extensions (each a whole `Extension` TLV) replaced
    /// by what `edit` makes of it, and re-signed: CRLs no conforming CA would issue, for tests.
    pub fn crl_with_extensions(
        &self,
        number: u64,
        this_update: Timestamp,
        next_update: Timestamp,
        serials: &[SerialNo],
        edit: &dyn Fn(Vec<Vec<u8>>) -> Vec<Vec<u8>>,
    ) -> Result<Vec<u8>, DevPkiError> {
        let der = self.crl(number, this_update, next_update, serials)?;
        let bad = || DevPkiError::CrlStructure;
        let elements = |b: &[u8]| -> Result<Vec<(usize, usize)>, DevPkiError> {
            // (start, end) of each TLV in `b`.
            let mut out = Vec::new();
            let mut at = 0;
            while at < b.len() {
                let (_, start, len) = der_header(b, at).ok_or_else(bad)?;
                out.push((at, start + len));
                at = start + len;
            }
            Ok(out)
        };
        let content = |b: &[u8]| -> Result<Vec<u8>, DevPkiError> {
            let (_, start, len) = der_header(b, 0).ok_or_else(bad)?;
            b.get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(bad)
        };
        let outer = content(&der)?;
        let parts = elements(&outer)?;
        let [tbs, alg, _] = parts[..] else {
            return Err(bad());
        };
        let mut new_tbs = Vec::new();
        let tbs_content = content(&outer[tbs.0..tbs.1])?;
        for (a, b) in elements(&tbs_content)? {
            let el = &tbs_content[a..b];
            if el.first() != Some(&0xa0) {
                new_tbs.extend_from_slice(el);
                continue;
            }
            let exts = content(&content(el)?)?;
            let list = elements(&exts)?
                .into_iter()
                .map(|(x, y)| exts[x..y].to_vec())
                .collect();
            new_tbs.extend(tlv(0xa0, &tlv(0x30, &edit(list).concat())));
        }
        let new_tbs = tlv(0x30, &new_tbs);
        let sig = self.key.sign(&new_tbs)?;
        let mut bits = vec![0u8];
        bits.extend_from_slice(&sig);
        let mut body = new_tbs;
        body.extend_from_slice(&outer[alg.0..alg.1]);
        body.extend(tlv(0x03, &bits));
        Ok(tlv(0x30, &body))
    }

    /// A user-authentication generation loaded from its certificate and PKCS#8 key (as
    /// `mykeyd init` keeps them), to issue more simulated cards. Issuing needs the subject and
    /// the key only; validity and extensions of the loaded certificate are kept as they are.
    pub fn load_auth(der: &[u8], key_pkcs8: &[u8]) -> Result<Self, DevPkiError> {
        let key = DevKey::from_pkcs8(key_pkcs8)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = ca_dn(OU_USER_AUTHENTICATION);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = KeyIdMethod::Sha256;
        Ok(Self {
            key,
            params,
            der: der.to_vec(),
            ou: OU_USER_AUTHENTICATION,
        })
    }

    /// The key, to sign things this CA should not (tests of forged CRLs).
    pub fn key(&self) -> &DevKey {
        &self.key
    }
}

/// `der` as a PEM block with `label` (CERTIFICATE, PRIVATE KEY, X509 CRL).
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64_lines(der);
    format!("-----BEGIN {label}-----\n{b64}-----END {label}-----\n")
}

/// Standard base64 of `b` in 64-character lines, each ending in a newline.
fn base64_lines(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in b.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &x| acc << 8 | u32::from(x)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    let mut out = String::new();
    for line in s.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push('\n');
    }
    out
}
