//! The operator's client CA: the certificate authority whose certificates the server's mTLS
//! accepts. It issues terminal certificates (a role, and for a counter the providers it acts
//! for, in subjectAltName URIs: `engine/PROTOCOL.md`), the server's certificate, and CRLs.
//! ECDSA P-256 keys, SHA-256 key identifiers, an AKI on everything it issues.
//!
//! Owns building and signing certificates; never decides trust (rustls does, against the CA
//! certificate and its CRL) and never touches files (`mykeyd pki` keeps the CA directory).
//! A CA loaded from its files issues under exactly the subject its certificate carries: the
//! subject is rebuilt from the certificate and checked byte for byte, and the key is checked
//! against the certificate's public key, before anything is signed.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use x509_parser::prelude::FromDer;

use super::auth::{PROVIDERS_PER_CERT_MAX, Role, authorisation_uris};
use crate::client::ClientTls;
use crate::id::{ProviderId, Timestamp};
use crate::jpki::dev::{crl_params, time};

/// Why the operator CA could not load, issue or sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// rcgen refused the parameters, the key or the signature.
    #[error("rcgen: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The CA certificate is not DER X.509.
    #[error("the CA certificate cannot be read: {0}")]
    Unreadable(x509_parser::error::X509Error),
    /// The key given is not the CA certificate's.
    #[error("the key is not the CA certificate's key")]
    KeyMismatch,
    /// The CA certificate's subject lacks an O or a CN.
    #[error("the CA certificate's subject needs an O and a CN")]
    Subject,
    /// The CA certificate's subject is encoded otherwise than `mykeyd pki init` writes it, so
    /// certificates issued now would not chain to it.
    #[error(
        "the CA certificate's subject is not one `mykeyd pki init` writes (O and CN, UTF8String)"
    )]
    SubjectForm,
    /// More providers than a certificate may name.
    #[error("{found} providers: a certificate names at most {max}")]
    TooManyProviders {
        /// Providers asked for.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A serial in the CA's own range.
    #[error("serial {serial} is the CA's own range")]
    SerialInCaRange {
        /// The serial asked for.
        serial: u64,
    },
    /// A time outside what a certificate can carry.
    #[error("a time out of range")]
    Time,
}

fn unreadable(e: x509_parser::nom::Err<x509_parser::error::X509Error>) -> CaError {
    match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => {
            CaError::Unreadable(e)
        }
        x509_parser::nom::Err::Incomplete(_) => {
            CaError::Unreadable(x509_parser::error::X509Error::InvalidCertificate)
        }
    }
}

/// A time as a certificate carries it.
fn at(t: Timestamp) -> Result<time::OffsetDateTime, CaError> {
    time(t).map_err(|_| CaError::Time)
}

/// The CA certificate's own serial; issued serials start above it.
pub const CA_SERIAL: u64 = 1;

/// An issued certificate and its key.
pub struct Issued {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// Its PKCS#8 private key.
    pub key: Vec<u8>,
    /// Its serial, for revocation.
    pub serial: u64,
}

/// Validity of a certificate to issue.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Start.
    pub not_before: Timestamp,
    /// End.
    pub not_after: Timestamp,
}

/// The operator's client CA.
pub struct OperatorCa {
    key: KeyPair,
    params: CertificateParams,
    der: CertificateDer<'static>,
    validity: Validity,
}

fn ca_params(org: &str, name: &str, v: Validity) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::OrganizationName, org);
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.not_before = at(v.not_before)?;
    p.not_after = at(v.not_after)?;
    p.serial_number = Some(SerialNumber::from_slice(&CA_SERIAL.to_be_bytes()));
    Ok(p)
}

fn new_key() -> Result<KeyPair, CaError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

impl OperatorCa {
    /// A new CA `O=org, CN=name`.
    pub fn generate(org: &str, name: &str, validity: Validity) -> Result<Self, CaError> {
        let key = new_key()?;
        let params = ca_params(org, name, validity)?;
        let der = params.self_signed(&key)?.der().clone();
        Ok(Self {
            key,
            params,
            der,
            validity,
        })
    }

    /// Loads a CA from its certificate and PKCS#8 key (as written by `mykeyd pki init` or
    /// `mykeyd init`). Refuses a key that is not the certificate's, and a subject this module
    /// would not reproduce exactly (so issued certificates always chain to it).
    pub fn load(der: CertificateDer<'static>, key_pkcs8: &[u8]) -> Result<Self, CaError> {
        let key = KeyPair::try_from(key_pkcs8)?;
        let (_, cert) =
            x509_parser::prelude::X509Certificate::from_der(&der).map_err(unreadable)?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        let attr = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
            it.next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned)
                .ok_or(CaError::Subject)
        };
        let org = attr(&mut cert.subject().iter_organization())?;
        let name = attr(&mut cert.subject().iter_common_name())?;
        let clamp = |t: i64| Timestamp::from_unix_secs(t.max(0) as u64).map_err(|_| CaError::Time);
        let validity = Validity {
            not_before: clamp(cert.validity().not_before.timestamp())?,
            not_after: clamp(cert.validity().not_after.timestamp())?,
        };
        let params = ca_params(&org, &name, validity)?;
        let rebuilt = params.self_signed(&key)?;
        let (_, again) =
            x509_parser::prelude::X509Certificate::from_der(rebuilt.der()).map_err(unreadable)?;
        if again.subject().as_raw() != cert.subject().as_raw() {
            return Err(CaError::SubjectForm);
        }
        Ok(Self {
            key,
            params,
            der,
            validity,
        })
    }

    /// The CA certificate.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The CA's validity.
    pub fn validity(&self) -> Validity {
        self.validity
    }

    /// The CA's private key, PKCS#8 DER (to keep beside the certificate, mode 0600).
    pub fn key_pkcs8(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// Issues a terminal certificate named `name` with `role` for `providers` (at most
    /// `PROVIDERS_PER_CERT_MAX`; the server ignores providers on other roles than counter, and
    /// `mykeyd pki` refuses them). `serial` must be unique for this CA and above
    /// [`CA_SERIAL`].
    pub fn terminal(
        &self,
        name: &str,
        role: Role,
        providers: &[ProviderId],
        serial: u64,
        validity: Validity,
    ) -> Result<Issued, CaError> {
        if providers.len() > PROVIDERS_PER_CERT_MAX {
            return Err(CaError::TooManyProviders {
                found: providers.len(),
                max: PROVIDERS_PER_CERT_MAX,
            });
        }
        self.terminal_with_uris(name, &authorisation_uris(role, providers), serial, validity)
    }

    /// As [`OperatorCa::terminal`], with the subjectAltName URIs given as they are: for tests
    /// of certificates whose authorisation the server must refuse.
    pub fn terminal_with_uris(
        &self,
        name: &str,
        uris: &[String],
        serial: u64,
        validity: Validity,
    ) -> Result<Issued, CaError> {
        let k = new_key()?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = uris
            .iter()
            .map(|u| Ok(SanType::URI(u.clone().try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p, k, serial, validity)
    }

    /// Issues the server's certificate for `names` (DNS names or IP addresses).
    pub fn server(
        &self,
        names: &[&str],
        serial: u64,
        validity: Validity,
    ) -> Result<Issued, CaError> {
        let k = new_key()?;
        let mut p =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
        p.distinguished_name.push(DnType::CommonName, "mykeyd");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p, k, serial, validity)
    }

    fn sign(
        &self,
        mut p: CertificateParams,
        k: KeyPair,
        serial: u64,
        validity: Validity,
    ) -> Result<Issued, CaError> {
        if serial <= CA_SERIAL {
            return Err(CaError::SerialInCaRange { serial });
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Never beyond the CA: a certificate outliving its issuer fails at the CA's expiry.
        p.not_before = at(validity.not_before.max(self.validity.not_before))?;
        p.not_after = at(validity.not_after.min(self.validity.not_after))?;
        p.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&k, &self.issuer())?.der().clone();
        Ok(Issued {
            cert,
            key: k.serialize_der(),
            serial,
        })
    }

    /// A CRL revoking `serials`, numbered `number` (which must grow from one CRL to the next).
    pub fn crl(
        &self,
        number: u64,
        this_update: Timestamp,
        next_update: Timestamp,
        serials: &[u64],
    ) -> Result<CertificateRevocationListDer<'static>, CaError> {
        let serials: Vec<[u8; 8]> = serials.iter().map(|s| s.to_be_bytes()).collect();
        let p = crl_params(
            number,
            this_update,
            next_update,
            serials.iter().map(|s| &s[..]),
        )
        // Its one failure is a time a CRL cannot carry.
        .map_err(|_| CaError::Time)?;
        Ok(p.signed_by(&self.issuer())?.der().clone())
    }

    /// A client's TLS material for `terminal`, trusting server certificates this CA issued.
    pub fn client_tls(&self, terminal: &Issued) -> ClientTls {
        ClientTls {
            chain: vec![terminal.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(terminal.key.clone())),
            server_roots: vec![self.der.clone()],
        }
    }
}
