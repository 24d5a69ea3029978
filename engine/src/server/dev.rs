//! The development operator PKI: an [`OperatorCa`] with a fixed development subject, a server
//! certificate for the names given, and terminals and CRLs that share the CA's validity, so a
//! test, a demo, `mykeyd init` or a load run gets a working mTLS setup in moments.
//!
//! For tests, `mykeyd init` and load generation; a deployment's CA is kept by `mykeyd pki`
//! (the same [`OperatorCa`] underneath). Owns no trust decision.

use rustls::pki_types::{CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ServerTls;
use super::auth::Role;
use super::pki::{Issued, OperatorCa, Validity};
use crate::client::ClientTls;
use crate::id::{ProviderId, Timestamp};

/// The organisation of the development client CA's subject.
pub const DEV_CA_ORG: &str = "MyKey operator (development)";
/// The common name of the development client CA's subject.
pub const DEV_CA_NAME: &str = "MyKey development CA";
/// The development server certificate's serial.
const DEV_SERVER_SERIAL: u64 = 2;

/// The development operator PKI: an [`OperatorCa`] whose certificates all share its validity.
pub struct DevOperatorPki {
    ca: OperatorCa,
    server: Issued,
}

impl DevOperatorPki {
    /// A client CA and a server certificate for `server_names` (DNS names or IP addresses),
    /// valid from `not_before` to `not_after`.
    pub fn generate(
        server_names: &[&str],
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<Self, super::pki::CaError> {
        let validity = Validity {
            not_before,
            not_after,
        };
        let ca = OperatorCa::generate(DEV_CA_ORG, DEV_CA_NAME, validity)?;
        let server = ca.server(server_names, DEV_SERVER_SERIAL, validity)?;
        Ok(Self { ca, server })
    }

    /// The CA itself.
    pub fn operator_ca(&self) -> &OperatorCa {
        &self.ca
    }

    /// The client CA certificate (also the root the server's certificate chains to).
    pub fn ca(&self) -> &rustls::pki_types::CertificateDer<'static> {
        self.ca.der()
    }

    /// The server's certificate and key.
    pub fn server(&self) -> &Issued {
        &self.server
    }

    /// Issues a terminal certificate named `name` with `role` for `providers`, valid as long
    /// as the CA; `serial` must be unique per CA (above 2).
    pub fn terminal(
        &self,
        name: &str,
        role: Role,
        providers: &[ProviderId],
        serial: u64,
    ) -> Result<Issued, super::pki::CaError> {
        self.ca
            .terminal(name, role, providers, serial, self.ca.validity())
    }

    /// The server's TLS material, with the client CA and `crls`.
    pub fn server_tls(&self, crls: Vec<CertificateRevocationListDer<'static>>) -> ServerTls {
        ServerTls {
            chain: vec![self.server.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.key.clone())),
            client_cas: vec![self.ca.der().clone()],
            client_crls: crls,
        }
    }

    /// A client's TLS material for `terminal`, trusting this PKI's server certificate.
    pub fn client_tls(&self, terminal: &Issued) -> ClientTls {
        self.ca.client_tls(terminal)
    }
}
