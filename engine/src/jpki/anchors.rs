//! Trust anchors: the JPKI user-authentication CA generations, loaded once from a directory of
//! PEM or DER files, parsed and checked once, and kept ready for rustls-webpki (a
//! `TrustAnchor`) and for CRL signatures (a parsed public key). All generations share one DN,
//! so an anchor is named by its key identifier (SKI), never by its name.
//!
//! Owns only loading and describing anchors; never decides whether an end-entity certificate
//! is trusted (that is `leaf`, with rustls-webpki) and never accepts a digital-signature CA.

use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{self, ParsedPublicKey, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm,
    TrustAnchor, alg_id,
};
use x509_parser::prelude::*;

use super::{RSA_BITS_MAX, RSA_BITS_MIN, clamp_time, hex, modulus_bits, sha256};
use crate::id::{CA_KEY_ID_LEN_MAX, Timestamp};

/// Most anchors loaded: a generation rolls about every 4 years and lives 10.
pub const ANCHORS_MAX: usize = 16;
/// Largest anchor file read, in bytes.
pub const ANCHOR_FILE_LEN_MAX: usize = 256 * 1024;
/// File name endings read as certificates; other files in the directory (a README, a
/// provenance note) are skipped.
pub const ANCHOR_FILE_ENDINGS: [&str; 4] = [".pem", ".crt", ".cer", ".der"];

/// The organisational unit of the JPKI user-authentication CA.
pub const OU_USER_AUTHENTICATION: &str = "JPKI for user authentication";
/// The organisational unit of the JPKI digital-signature CA, refused as an anchor.
pub const OU_DIGITAL_SIGNATURE: &str = "JPKI for digital signature";

/// OID of sha256WithRSAEncryption.
pub(crate) const OID_SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
/// OID of rsaEncryption.
pub(crate) const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";

/// Why the anchors could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// The directory or a file could not be read.
    #[error("cannot read trust anchors at {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The directory holds no certificate.
    #[error("no trust anchor found in {path} (expected .pem, .crt, .cer or .der files)")]
    None {
        /// The directory.
        path: PathBuf,
    },
    /// More anchors than [`ANCHORS_MAX`].
    #[error("more than {max} trust anchors")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// A file is too large to be a CA certificate.
    #[error("{file}: {len} bytes, more than the {max} allowed for an anchor file")]
    TooLarge {
        /// The file.
        file: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A file is not a certificate.
    #[error("{file}: not a certificate: {reason}")]
    Malformed {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// The JPKI digital-signature CA was offered as an authentication anchor.
    #[error(
        "{file}: this is the JPKI digital-signature CA (OU={OU_DIGITAL_SIGNATURE}); only user-authentication CAs (OU={OU_USER_AUTHENTICATION}) may be anchors"
    )]
    SignatureCa {
        /// The file.
        file: String,
    },
    /// The certificate is not a JPKI user-authentication CA.
    #[error("{file}: not a JPKI user-authentication CA: {reason}")]
    NotAuthCa {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// Two files hold CAs with the same key identifier.
    #[error("{file}: same key identifier {key_id} as {other}")]
    Duplicate {
        /// The second file.
        file: String,
        /// The first file.
        other: String,
        /// The key identifier, hex.
        key_id: String,
    },
}

/// One CA generation.
pub struct Anchor {
    name: String,
    rsa_key: Vec<u8>,
    der: CertificateDer<'static>,
    trust: TrustAnchor<'static>,
    key_id: Vec<u8>,
    subject: Vec<u8>,
    key: ParsedPublicKey,
    not_before: Timestamp,
    not_after: Timestamp,
    fingerprint: [u8; 32],
}

impl Anchor {
    /// Parses and checks one CA certificate; `name` says where it came from.
    pub fn parse(name: &str, der: &[u8]) -> Result<Self, AnchorError> {
        let bad = |reason: String| AnchorError::Malformed {
            file: name.to_owned(),
            reason,
        };
        let not_auth = |reason: &str| AnchorError::NotAuthCa {
            file: name.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after the certificate", rest.len())));
        }
        let ous: Vec<&str> = cert
            .subject()
            .iter_organizational_unit()
            .filter_map(|a| a.as_str().ok())
            .collect();
        if ous.contains(&OU_DIGITAL_SIGNATURE) {
            return Err(AnchorError::SignatureCa {
                file: name.to_owned(),
            });
        }
        if !ous.contains(&OU_USER_AUTHENTICATION) {
            return Err(not_auth(
                "its subject has no OU=JPKI for user authentication",
            ));
        }
        let mut ski = None;
        let (mut is_ca, mut cert_sign) = (false, false);
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
                ParsedExtension::KeyUsage(ku) => cert_sign = ku.key_cert_sign(),
                ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
                _ => {}
            }
        }
        if !is_ca || !cert_sign {
            return Err(not_auth(
                "not a CA certificate (BasicConstraints CA and KeyUsage keyCertSign needed)",
            ));
        }
        if cert.subject().as_raw() != cert.issuer().as_raw() {
            return Err(not_auth(
                "not self-signed (JPKI CAs are roots; no intermediates)",
            ));
        }
        let spki = cert.public_key();
        if spki.algorithm.algorithm.to_id_string() != OID_RSA_ENCRYPTION {
            return Err(not_auth("its key is not RSA"));
        }
        let rsa_key: &[u8] = &spki.subject_public_key.data;
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(k)) => modulus_bits(k.modulus),
            _ => return Err(bad("unreadable RSA public key".into())),
        };
        if !(RSA_BITS_MIN..=RSA_BITS_MAX).contains(&bits) {
            return Err(not_auth(&format!("RSA key of {bits} bits")));
        }
        if cert.signature_algorithm.algorithm.to_id_string() != OID_SHA256_WITH_RSA {
            return Err(not_auth("not signed with sha256WithRSAEncryption"));
        }
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, rsa_key)
            .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
            .map_err(|_| not_auth("its self-signature does not verify"))?;
        // RFC 5280 §4.2.1.2 method 1 when a CA omits the SKI (the real ones carry it).
        let key_id = match ski {
            Some(k) => k,
            None => {
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, rsa_key)
                    .as_ref()
                    .to_vec()
            }
        };
        if key_id.is_empty() || key_id.len() > CA_KEY_ID_LEN_MAX {
            return Err(not_auth(
                "its key identifier is empty or longer than 32 bytes",
            ));
        }
        let key = ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, rsa_key)
            .map_err(|e| bad(format!("RSA key refused: {e}")))?;
        let owned = CertificateDer::from(der.to_vec());
        let trust = webpki::anchor_from_trusted_cert(&owned)
            .map_err(|e| bad(format!("rustls-webpki refused it as an anchor: {e:?}")))?
            .to_owned();
        Ok(Self {
            name: name.to_owned(),
            rsa_key: rsa_key.to_vec(),
            trust,
            key_id,
            subject: cert.subject().as_raw().to_vec(),
            key,
            not_before: clamp_time(cert.validity().not_before.timestamp()),
            not_after: clamp_time(cert.validity().not_after.timestamp()),
            fingerprint: sha256(der),
            der: owned,
        })
    }

    /// Where the anchor came from (file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA's key identifier: its Subject Key Identifier. Certificate references use it.
    pub fn key_id(&self) -> &[u8] {
        &self.key_id
    }

    /// The CA's subject DN, DER.
    pub fn subject(&self) -> &[u8] {
        &self.subject
    }

    /// The CA's subject DN without its outer SEQUENCE header, as rustls-webpki gives a
    /// certificate's issuer.
    pub fn subject_content(&self) -> &[u8] {
        super::der_header(&self.subject, 0)
            .and_then(|(_, start, _)| self.subject.get(start..))
            .unwrap_or(&[])
    }

    /// The anchor for rustls-webpki.
    pub fn trust_anchor(&self) -> &TrustAnchor<'static> {
        &self.trust
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The CA's public key, parsed once, for CRL signatures.
    pub fn key(&self) -> &ParsedPublicKey {
        &self.key
    }

    /// Start of the CA's validity.
    pub fn not_before(&self) -> Timestamp {
        self.not_before
    }

    /// End of the CA's validity.
    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// SHA-256 of the CA certificate's DER.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchor")
            .field("name", &self.name)
            .field("key_id", &hex(&self.key_id))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// sha256WithRSAEncryption for rustls-webpki, verifying with the anchors' public keys parsed
/// once at load (their Montgomery contexts computed once, not per chain check). A key that is
/// not an anchor's goes to rustls-webpki's own aws-lc-rs algorithm. rustls-webpki still builds
/// and decides the chain; this only supplies the signature primitive, with the same bounds
/// (RSA 2048–8192 bits, PKCS#1 v1.5, SHA-256).
pub struct AnchorRsaSha256 {
    keys: Vec<(Vec<u8>, ParsedPublicKey)>,
}

impl std::fmt::Debug for AnchorRsaSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnchorRsaSha256({} keys)", self.keys.len())
    }
}

impl SignatureVerificationAlgorithm for AnchorRsaSha256 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        match self.keys.iter().find(|(k, _)| k == public_key) {
            Some((_, key)) => key
                .verify_sig(message, signature)
                .map_err(|_| InvalidSignature),
            None => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256
                .verify_signature(public_key, message, signature),
        }
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_PKCS1_SHA256
    }

    fn fips(&self) -> bool {
        webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256.fips()
    }
}

/// Every configured CA generation.
#[derive(Debug)]
pub struct Anchors {
    list: Vec<Anchor>,
    rsa_sha256: AnchorRsaSha256,
}

impl Anchors {
    /// Loads every `.pem`, `.crt`, `.cer` or `.der` file of `dir` (PEM files may hold several
    /// certificates). Refuses the whole directory if any certificate is refused.
    pub fn load_dir(dir: &Path) -> Result<Self, AnchorError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AnchorError::Io { path, source }
        };
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io(dir))?;
        names.sort();
        let mut files = Vec::new();
        for path in names {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let lower = file.to_ascii_lowercase();
            if !path.is_file() || !ANCHOR_FILE_ENDINGS.iter().any(|e| lower.ends_with(e)) {
                continue;
            }
            let len = std::fs::metadata(&path).map_err(io(&path))?.len();
            if len > ANCHOR_FILE_LEN_MAX as u64 {
                return Err(AnchorError::TooLarge {
                    file,
                    len: len as usize,
                    max: ANCHOR_FILE_LEN_MAX,
                });
            }
            files.push((file, std::fs::read(&path).map_err(io(&path))?));
        }
        if files.is_empty() {
            return Err(AnchorError::None {
                path: dir.to_owned(),
            });
        }
        Self::from_files(&files)
    }

    /// Loads anchors from `(name, bytes)` pairs, each PEM (one or more certificates) or DER.
    pub fn from_files(files: &[(String, Vec<u8>)]) -> Result<Self, AnchorError> {
        let mut list: Vec<Anchor> = Vec::new();
        for (name, bytes) in files {
            if bytes.len() > ANCHOR_FILE_LEN_MAX {
                return Err(AnchorError::TooLarge {
                    file: name.clone(),
                    len: bytes.len(),
                    max: ANCHOR_FILE_LEN_MAX,
                });
            }
            let ders: Vec<CertificateDer<'static>> = if bytes.starts_with(b"-----BEGIN") {
                CertificateDer::pem_slice_iter(bytes)
                    .collect::<Result<_, _>>()
                    .map_err(|e| AnchorError::Malformed {
                        file: name.clone(),
                        reason: format!("bad PEM: {e}"),
                    })?
            } else {
                vec![CertificateDer::from(bytes.clone())]
            };
            if ders.is_empty() {
                return Err(AnchorError::Malformed {
                    file: name.clone(),
                    reason: "no CERTIFICATE block".into(),
                });
            }
            for der in ders {
                let a = Anchor::parse(name, &der)?;
                if let Some(other) = list.iter().find(|o| o.key_id == a.key_id) {
                    return Err(AnchorError::Duplicate {
                        file: name.clone(),
                        other: other.name.clone(),
                        key_id: hex(&a.key_id),
                    });
                }
                if list.len() == ANCHORS_MAX {
                    return Err(AnchorError::TooMany { max: ANCHORS_MAX });
                }
                list.push(a);
            }
        }
        if list.is_empty() {
            return Err(AnchorError::None {
                path: PathBuf::new(),
            });
        }
        let rsa_sha256 = AnchorRsaSha256 {
            keys: list
                .iter()
                .map(|a| (a.rsa_key.clone(), a.key.clone()))
                .collect(),
        };
        Ok(Self { list, rsa_sha256 })
    }

    /// The signature algorithm chain checks use: sha256WithRSA with the anchors' keys cached.
    pub fn rsa_sha256(&self) -> &AnchorRsaSha256 {
        &self.rsa_sha256
    }

    /// Every anchor, in load order.
    pub fn all(&self) -> &[Anchor] {
        &self.list
    }

    /// The anchor with this key identifier.
    pub fn by_key_id(&self, key_id: &[u8]) -> Option<&Anchor> {
        self.list.iter().find(|a| a.key_id == key_id)
    }

    /// The anchors whose subject is `name` (without its outer header, as
    /// [`Anchor::subject_content`]), in the order to try them for a certificate or CRL
    /// issued at `issued`: first the newest generation that was valid then (a CA issues while
    /// it is current), then the others, newest first. Choosing the likely generation first
    /// keeps the common case at one signature check; the key decides, never the name.
    pub fn candidates(&self, name: &[u8], issued: Timestamp) -> ([usize; ANCHORS_MAX], usize) {
        let mut out = [0usize; ANCHORS_MAX];
        let mut n = 0;
        for (i, a) in self.list.iter().enumerate() {
            if a.subject_content() == name {
                out[n] = i;
                n += 1;
            }
        }
        let covers = |a: &Anchor| a.not_before <= issued && issued <= a.not_after;
        out[..n].sort_by_key(|&i| {
            let a = &self.list[i];
            (!covers(a), std::cmp::Reverse(a.not_before))
        });
        (out, n)
    }

    /// The anchor at `index`.
    pub fn get(&self, index: usize) -> Option<&Anchor> {
        self.list.get(index)
    }
}
