//! A development operator PKI, generated with rcgen: a client CA that issues one certificate per
//! terminal (role and providers in its subjectAltName URIs), a server certificate for the
//! names given, and CRLs of the client CA. ECDSA P-256 keys, so generating a few hundred
//! terminals for a test or a demo takes moments.
//!
//! For tests, `mykeyd init` and load generation; a deployment's operator CA lives elsewhere.
//! Owns no trust decision.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use x509_parser::prelude::FromDer;

use super::ServerTls;
use super::auth::{Role, authorisation_uris};
use crate::client::ClientTls;
use crate::id::{ProviderId, Timestamp};
use crate::jpki::dev::{DevPkiError, crl_params, time};

/// A terminal's certificate and key.
pub struct Terminal {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// Its PKCS#8 private key.
    pub key: Vec<u8>,
    /// Its serial, for revocation.
    pub serial: u64,
}

/// The development operator PKI.
pub struct DevOperatorPki {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_der: CertificateDer<'static>,
    server: Terminal,
    not_before: Timestamp,
    not_after: Timestamp,
}

/// The client CA's parameters: the same every time, so a CA loaded from its files issues under
/// exactly the subject it was created with.
fn ca_params(
    not_before: Timestamp,
    not_after: Timestamp,
) -> Result<CertificateParams, DevPkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::OrganizationName, "MyKey operator (development)");
    p.distinguished_name
        .push(DnType::CommonName, "MyKey development CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.not_before = time(not_before)?;
    p.not_after = time(not_after)?;
    p.serial_number = Some(SerialNumber::from_slice(&[1]));
    Ok(p)
}

fn key() -> Result<KeyPair, DevPkiError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

impl DevOperatorPki {
    /// A client CA and a server certificate for `server_names` (DNS names or IP addresses),
    /// valid from `not_before` to `not_after`.
    pub fn generate(
        server_names: &[&str],
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<Self, DevPkiError> {
        let ca_key = key()?;
        let p = ca_params(not_before, not_after)?;
        let ca_der = p.self_signed(&ca_key)?.der().clone();
        let mut pki = Self {
            ca_key,
            ca_params: p,
            ca_der,
            server: Terminal {
                cert: CertificateDer::from(Vec::new()),
                key: Vec::new(),
                serial: 2,
            },
            not_before,
            not_after,
        };
        let skey = key()?;
        let mut sp = CertificateParams::new(
            server_names
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )?;
        sp.distinguished_name.push(DnType::CommonName, "mykeyd");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.not_before = time(not_before)?;
        sp.not_after = time(not_after)?;
        sp.serial_number = Some(SerialNumber::from_slice(&2u64.to_be_bytes()));
        sp.use_authority_key_identifier_extension = true;
        let cert = sp.signed_by(&skey, &pki.issuer())?.der().clone();
        pki.server = Terminal {
            cert,
            key: skey.serialize_der(),
            serial: 2,
        };
        Ok(pki)
    }

    /// Loads a PKI written by `mykeyd init` (the CA certificate and its PKCS#8 key), to issue
    /// more terminals or CRLs. The server certificate is not loaded.
    pub fn load(ca_der: CertificateDer<'static>, ca_key_pkcs8: &[u8]) -> Result<Self, DevPkiError> {
        let ca_key = KeyPair::try_from(ca_key_pkcs8)?;
        let (_, cert) = x509_parser::prelude::X509Certificate::from_der(&ca_der)
            .map_err(|e| DevPkiError::Crypto(format!("CA certificate: {e}")))?;
        let clamp =
            |t: i64| Timestamp::from_unix_secs(t.max(0) as u64).map_err(|_| DevPkiError::Time);
        let not_before = clamp(cert.validity().not_before.timestamp())?;
        let not_after = clamp(cert.validity().not_after.timestamp())?;
        Ok(Self {
            ca_key,
            ca_params: ca_params(not_before, not_after)?,
            ca_der,
            server: Terminal {
                cert: CertificateDer::from(Vec::new()),
                key: Vec::new(),
                serial: 2,
            },
            not_before,
            not_after,
        })
    }

    /// The CA's private key, PKCS#8 DER (for `mykeyd init` to keep beside the certificate).
    pub fn ca_key_pkcs8(&self) -> Vec<u8> {
        self.ca_key.serialize_der()
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.ca_params, &self.ca_key)
    }

    /// The client CA certificate (also the root the server's certificate chains to).
    pub fn ca(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The server's certificate and key.
    pub fn server(&self) -> &Terminal {
        &self.server
    }

    /// Issues a terminal certificate named `name` with `role` for `providers`; `serial` must be
    /// unique per CA (above 2).
    pub fn terminal(
        &self,
        name: &str,
        role: Role,
        providers: &[ProviderId],
        serial: u64,
    ) -> Result<Terminal, DevPkiError> {
        let k = key()?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = authorisation_uris(role, providers)
            .into_iter()
            .map(|u| Ok(SanType::URI(u.try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = time(self.not_before)?;
        p.not_after = time(self.not_after)?;
        p.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&k, &self.issuer())?.der().clone();
        Ok(Terminal {
            cert,
            key: k.serialize_der(),
            serial,
        })
    }

    /// A CRL of the client CA revoking `serials`, numbered `number`.
    pub fn crl(
        &self,
        number: u64,
        this_update: Timestamp,
        next_update: Timestamp,
        serials: &[u64],
    ) -> Result<CertificateRevocationListDer<'static>, DevPkiError> {
        let serials: Vec<[u8; 8]> = serials.iter().map(|s| s.to_be_bytes()).collect();
        let p = crl_params(
            number,
            this_update,
            next_update,
            serials.iter().map(|s| &s[..]),
        )?;
        Ok(p.signed_by(&self.issuer())?.der().clone())
    }

    /// The server's TLS material, with the client CA and `crls`.
    pub fn server_tls(&self, crls: Vec<CertificateRevocationListDer<'static>>) -> ServerTls {
        ServerTls {
            chain: vec![self.server.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.key.clone())),
            client_cas: vec![self.ca_der.clone()],
            client_crls: crls,
        }
    }

    /// A client's TLS material for `terminal`, trusting this PKI's server certificate.
    pub fn client_tls(&self, terminal: &Terminal) -> ClientTls {
        ClientTls {
            chain: vec![terminal.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(terminal.key.clone())),
            server_roots: vec![self.ca_der.clone()],
        }
    }
}
