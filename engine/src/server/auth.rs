//! Client identities: the role and providers a terminal's client certificate carries (the
//! authorisation extension of `engine/PROTOCOL.md`), and which operations each role may run.
//!
//! Owns least privilege: a certificate allows exactly its role's operations, and a counter only
//! for the providers it names. Never trusts a certificate itself: by the time an identity is
//! read, rustls has verified the chain to the operator's client CA (and its CRL).

use x509_parser::prelude::*;

use crate::id::{IdError, ProviderId};
use crate::wire::Op;

/// Prefix of the subjectAltName URI naming a certificate's role.
pub const ROLE_URI: &str = "urn:mykey:role:";
/// Prefix of a subjectAltName URI naming a provider a counter acts for (percent-encoded).
pub const PROVIDER_URI: &str = "urn:mykey:provider:";
/// Most providers one counter certificate may name.
pub const PROVIDERS_PER_CERT_MAX: usize = 256;

/// What a client certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A terminal at a shopping street, library or facility: lookups and links for its
    /// providers.
    Counter,
    /// A municipal counter: registrations with the card present, confirmation, re-binding,
    /// deletion.
    Municipal,
    /// The citizen portal: full and provisional registration.
    Portal,
    /// A certified JPKI verifier: revocation pushes.
    Partner,
    /// The national operator: providers, lookups, links, deletion, export, statistics.
    Operator,
    /// Another node of the cluster: forwards the writes it was sent to the writer
    /// (`FORWARD`), and nothing else.
    Node,
}

impl Role {
    /// The role named in a certificate.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "counter" => Role::Counter,
            "municipal" => Role::Municipal,
            "portal" => Role::Portal,
            "partner" => Role::Partner,
            "operator" => Role::Operator,
            "node" => Role::Node,
            _ => return None,
        })
    }

    /// The name written in certificates.
    pub fn name(self) -> &'static str {
        match self {
            Role::Counter => "counter",
            Role::Municipal => "municipal",
            Role::Portal => "portal",
            Role::Partner => "partner",
            Role::Operator => "operator",
            Role::Node => "node",
        }
    }

    /// The role's code in a `FORWARD` (engine/PROTOCOL.md): its place in [`Role::ALL`].
    pub fn code(self) -> u8 {
        Role::ALL.iter().position(|&r| r == self).unwrap_or(0) as u8
    }

    /// The role of a code (see [`Role::code`]).
    pub fn from_code(c: u8) -> Option<Self> {
        Role::ALL.get(usize::from(c)).copied()
    }

    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::Counter,
        Role::Municipal,
        Role::Portal,
        Role::Partner,
        Role::Operator,
        Role::Node,
    ];

    /// Whether this role may run `op` (PROTOCOL.md, the operations table).
    pub fn may(self, op: Op) -> bool {
        use Op::*;
        use Role::*;
        match op {
            Lookup | LookupBatch | Link | Unlink | Export | Pipeline => {
                matches!(self, Counter | Operator)
            }
            Challenge => matches!(self, Counter | Municipal | Portal),
            LookupCard => self == Counter,
            RegisterFull => matches!(self, Municipal | Portal),
            RegisterProvisional => self == Portal,
            Confirm | Rebind => self == Municipal,
            Delete => matches!(self, Municipal | Operator),
            PushCrl | PushSerials => self == Partner,
            Stats | RegisterProvider => self == Operator,
            // A wrapper's own header: any role that may run one of the operations it wraps
            // (the wrapped operation is checked once the body is read).
            WithSeq => matches!(self, Counter | Municipal | Portal | Operator),
            AtSeq => matches!(self, Counter | Operator),
            Forward | ForwardPush => self == Node,
        }
    }
}

/// Who is connected: from the verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The role.
    pub role: Role,
    /// For a counter: the providers it acts for.
    pub providers: Vec<ProviderId>,
    /// The certificate's subject CN, for logs and the audit trail.
    pub name: String,
    /// SHA-256 of the certificate: challenges are bound to it, rate buckets keyed by it.
    pub fingerprint: [u8; 32],
}

impl Identity {
    /// Whether this identity may act for `provider`: a counter only for its own, an operator
    /// for all.
    pub fn may_act_for(&self, provider: &ProviderId) -> bool {
        match self.role {
            Role::Counter => self.providers.contains(provider),
            _ => true,
        }
    }
}

/// Why a client certificate that chains to the client CA carries no usable MyKey identity.
/// The connection is closed with [`IdentityError::close_code`] as its QUIC application error
/// code and the message as its reason (`engine/PROTOCOL.md`, "Connection close codes").
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The connection carries no client certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate or its subjectAltName cannot be read.
    #[error("the client certificate's {part} cannot be read: {source}")]
    Unreadable {
        /// Which part: `certificate` or `subjectAltName`.
        part: &'static str,
        /// What the X.509 parser said.
        source: X509Error,
    },
    /// No `urn:mykey:role:` URI.
    #[error("the client certificate names no MyKey role")]
    NoRole,
    /// More than one role URI.
    #[error("the client certificate names more than one role")]
    SeveralRoles,
    /// A role that is not one of the five.
    #[error("unknown role {role:?}")]
    UnknownRole {
        /// The role the certificate names.
        role: String,
    },
    /// A provider URI that does not decode to a provider ID.
    #[error("malformed provider URI {uri:?}: {}", source.as_ref().map_or_else(|| "bad percent-encoding".to_owned(), ToString::to_string))]
    BadProvider {
        /// The URI.
        uri: String,
        /// Why the decoded bytes are not a provider ID; `None` when the percent-encoding
        /// itself is broken.
        source: Option<IdError>,
    },
    /// More than [`PROVIDERS_PER_CERT_MAX`] providers.
    #[error("more than {PROVIDERS_PER_CERT_MAX} providers in one certificate")]
    TooManyProviders,
    /// A counter certificate without a provider.
    #[error("a counter certificate names no provider")]
    CounterWithoutProvider,
}

impl IdentityError {
    /// The QUIC application close code of this refusal (0 is the server's shutdown).
    pub fn close_code(&self) -> u32 {
        match self {
            IdentityError::NoCertificate => 1,
            IdentityError::Unreadable { .. } => 2,
            IdentityError::NoRole => 3,
            IdentityError::SeveralRoles => 4,
            IdentityError::UnknownRole { .. } => 5,
            IdentityError::BadProvider { .. } => 6,
            IdentityError::TooManyProviders => 7,
            IdentityError::CounterWithoutProvider => 8,
        }
    }
}

/// Reads the identity of a client certificate (already verified by rustls).
pub fn identity(cert_der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| IdentityError::Unreadable {
        part: "certificate",
        source: match e {
            nom::Err::Error(e) | nom::Err::Failure(e) => e,
            nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
        },
    })?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_owned();
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(source) => {
            return Err(IdentityError::Unreadable {
                part: "subjectAltName",
                source,
            });
        }
    };
    let (role, providers) = decode_uris(&uris)?;
    Ok(Identity {
        role,
        providers,
        name,
        fingerprint: crate::jpki::sha256(cert_der),
    })
}

/// The subjectAltName URIs that authorise `role` for `providers`.
pub fn authorisation_uris(role: Role, providers: &[ProviderId]) -> Vec<String> {
    let mut out = vec![format!("{ROLE_URI}{}", role.name())];
    for p in providers {
        let mut u = PROVIDER_URI.to_owned();
        for &b in p.as_bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                u.push(b as char);
            } else {
                u.push_str(&format!("%{b:02X}"));
            }
        }
        out.push(u);
    }
    out
}

fn decode_uris(uris: &[&str]) -> Result<(Role, Vec<ProviderId>), IdentityError> {
    let mut role = None;
    let mut providers = Vec::new();
    for u in uris {
        if let Some(r) = u.strip_prefix(ROLE_URI) {
            if role.is_some() {
                return Err(IdentityError::SeveralRoles);
            }
            role = Some(
                Role::parse(r).ok_or_else(|| IdentityError::UnknownRole { role: r.to_owned() })?,
            );
        } else if let Some(p) = u.strip_prefix(PROVIDER_URI) {
            if providers.len() == PROVIDERS_PER_CERT_MAX {
                return Err(IdentityError::TooManyProviders);
            }
            let bad = |source| IdentityError::BadProvider {
                uri: (*u).to_owned(),
                source,
            };
            let bytes = percent_decode(p).ok_or_else(|| bad(None))?;
            providers.push(ProviderId::parse(&bytes).map_err(|e| bad(Some(e)))?);
        }
    }
    let role = role.ok_or(IdentityError::NoRole)?;
    if role == Role::Counter && providers.is_empty() {
        return Err(IdentityError::CounterWithoutProvider);
    }
    Ok((role, providers))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorisation_uris_round_trip_and_refuse_garbage() {
        let ps = [
            ProviderId::parse("A-α1-0001".as_bytes()).expect("p"),
            ProviderId::parse(b"13101-LIB-0001").expect("p"),
        ];
        let uris = authorisation_uris(Role::Counter, &ps);
        assert_eq!(uris[1], "urn:mykey:provider:A-%CE%B11-0001");
        let refs: Vec<&str> = uris.iter().map(String::as_str).collect();
        assert_eq!(
            decode_uris(&refs).expect("decode"),
            (Role::Counter, ps.to_vec())
        );
        assert!(
            decode_uris(&["urn:mykey:role:counter"]).is_err(),
            "counter without provider"
        );
        assert!(decode_uris(&["urn:mykey:role:root"]).is_err());
        assert!(decode_uris(&[]).is_err());
        assert!(decode_uris(&["urn:mykey:role:operator", "urn:mykey:role:partner"]).is_err());
        assert!(decode_uris(&["urn:mykey:role:counter", "urn:mykey:provider:%ZZ"]).is_err());
        assert_eq!(
            decode_uris(&["urn:mykey:role:partner", "https://example.org"]).map(|r| r.0),
            Ok(Role::Partner)
        );
    }

    /// The operations table of PROTOCOL.md, written out: C counter, M municipal, P portal,
    /// R partner, O operator.
    #[test]
    fn roles_match_the_protocol_table() {
        let table: [(Op, &str); 21] = [
            (Op::Lookup, "CO"),
            (Op::LookupBatch, "CO"),
            (Op::Challenge, "CMP"),
            (Op::LookupCard, "C"),
            (Op::RegisterFull, "MP"),
            (Op::RegisterProvisional, "P"),
            (Op::Confirm, "M"),
            (Op::Link, "CO"),
            (Op::Unlink, "CO"),
            (Op::Rebind, "M"),
            (Op::Delete, "MO"),
            (Op::PushCrl, "R"),
            (Op::PushSerials, "R"),
            (Op::Export, "CO"),
            (Op::Stats, "O"),
            (Op::RegisterProvider, "O"),
            (Op::WithSeq, "CMPO"),
            (Op::AtSeq, "CO"),
            (Op::Forward, "N"),
            (Op::ForwardPush, "N"),
            (Op::Pipeline, "CO"),
        ];
        let letter = |r: Role| match r {
            Role::Counter => 'C',
            Role::Municipal => 'M',
            Role::Portal => 'P',
            Role::Partner => 'R',
            Role::Operator => 'O',
            Role::Node => 'N',
        };
        for (op, allowed) in table {
            for role in Role::ALL {
                assert_eq!(
                    role.may(op),
                    allowed.contains(letter(role)),
                    "{role:?} {op:?}"
                );
            }
        }
    }

    #[test]
    fn roles_allow_exactly_their_operations() {
        for b in 0..=255u8 {
            let Some(op) = Op::from_u8(b) else { continue };
            let allowed: Vec<Role> = Role::ALL.into_iter().filter(|r| r.may(op)).collect();
            assert!(!allowed.is_empty(), "{op:?} is allowed to nobody");
        }
        assert!(!Role::Counter.may(Op::PushCrl));
        assert!(!Role::Partner.may(Op::Lookup));
        assert!(!Role::Portal.may(Op::Link));
        assert!(Role::Municipal.may(Op::Rebind));
    }

    #[test]
    fn a_wrapper_is_admitted_for_exactly_the_roles_of_what_it_wraps() {
        let ops: Vec<Op> = (0..=255u8).filter_map(Op::from_u8).collect();
        for role in Role::ALL {
            let any = |wraps: fn(Op) -> bool| ops.iter().any(|&op| wraps(op) && role.may(op));
            assert_eq!(
                role.may(Op::WithSeq),
                any(Op::seq_wrappable_write),
                "{role:?}"
            );
            assert_eq!(role.may(Op::AtSeq), any(Op::seq_wrappable_read), "{role:?}");
        }
    }
}
