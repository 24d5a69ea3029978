//! The registry operations that take a card instead of a trusted certificate reference, and
//! the revocation pushes of certified JPKI verifier partners.
//!
//! Every card operation authenticates first: the `jpki` layer checks the challenge, the
//! certificate chain (or its cached result) and the card's signature; then the registry checks
//! the revocation index, on every call, so a revocation takes effect on the very next check.
//! Pushes are serialised, idempotent by push id (the same id and content answers the first
//! summary; the same id with other content is refused), refused whole before anything is
//! applied, and durable before the call returns. The push record and a CRL's number go in the
//! last change of the push, so a push interrupted by a crash is simply retried. Never parses
//! certificates itself and never reads a clock.
//!
//! Records of the `pushes` table (keys begin with a kind byte):
//!
//! | key | value |
//! |---|---|
//! | `p` + push id | kind u8 (1 CRL, 2 serial list), SHA-256 of the content (32), newly revoked u64, suspended u64, already known u64, entries u64, at u32, actor index u32 — little-endian |
//! | `n` + CA key id | thisUpdate u32, then the CRL number's magnitude (big-endian, ≤ 20 bytes) |

use std::sync::PoisonError;

use super::Table;
use super::{Lookup, PushSummary, Registry, RegistryError, RevokeSummary, Tx};
use crate::id::{ActorId, CertRef, MyKeyId, ProviderId, PushId, Timestamp};
use crate::jpki::crl::{RevocationList, cmp_number};
use crate::jpki::{Card, CardProof, Jpki, hex};

const KIND_CRL: u8 = 1;
const KIND_SERIALS: u8 = 2;
const PUSH_RECORD_LEN: usize = 1 + 32 + 8 * 4 + 4 + 4;

/// The writes on a chosen ID that need the holder's card ([`Registry::with_card`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardWrite {
    /// Provisional registration of the chosen ID.
    RegisterProvisional,
    /// Confirmation of a provisional ID.
    Confirm,
    /// Re-binding to the holder's new card.
    Rebind,
}

/// What an authenticated lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardLookup {
    /// The MyKey ID bound to the card's certificate, if any.
    pub id: Option<MyKeyId>,
    /// The answer for the provider (`UnknownId` when no ID is bound to the card).
    pub lookup: Lookup,
}

impl Registry {
    /// Authenticates a card at `now` (challenge, chain, signature) and checks that its
    /// certificate is not revoked.
    pub fn authenticate(
        &self,
        now: Timestamp,
        jpki: &Jpki,
        proof: &CardProof<'_>,
    ) -> Result<Card, RegistryError> {
        let card = jpki.authenticate(now, proof)?;
        if self.is_revoked(&card.cert)? {
            return Err(RegistryError::CertRevoked { cert: card.cert });
        }
        Ok(card)
    }

    /// Full registration (本登録) with the card present: the MyKey ID is the random string of
    /// the certificate's subject CN. Returns it.
    pub fn register_card(
        &self,
        now: Timestamp,
        actor: ActorId,
        jpki: &Jpki,
        proof: &CardProof<'_>,
    ) -> Result<MyKeyId, RegistryError> {
        let card = self.authenticate(now, jpki, proof)?;
        self.register_full(now, actor, card.cn_id, card.cert)?;
        Ok(card.cn_id)
    }

    /// A write on a chosen ID with the holder's card present, authenticated first:
    /// provisional registration (仮登録), confirmation at a municipal counter, or re-binding
    /// to a new card (renewal, reissue; the links are kept).
    pub fn with_card(
        &self,
        write: CardWrite,
        now: Timestamp,
        actor: ActorId,
        jpki: &Jpki,
        id: MyKeyId,
        proof: &CardProof<'_>,
    ) -> Result<(), RegistryError> {
        let cert = self.authenticate(now, jpki, proof)?.cert;
        match write {
            CardWrite::RegisterProvisional => self.register_provisional(now, actor, id, cert),
            CardWrite::Confirm => self.confirm(now, actor, id, cert),
            CardWrite::Rebind => self.rebind(now, actor, id, cert),
        }
    }

    /// Authenticated lookup: the service ID of `provider` for the MyKey ID bound to the card.
    pub fn lookup_card(
        &self,
        now: Timestamp,
        jpki: &Jpki,
        proof: &CardProof<'_>,
        provider: &ProviderId,
    ) -> Result<CardLookup, RegistryError> {
        let p = self.provider_ref(provider)?;
        let card = self.authenticate(now, jpki, proof)?;
        let Some(id) = self.bound_id(&card.cert)? else {
            return Ok(CardLookup {
                id: None,
                lookup: Lookup::UnknownId,
            });
        };
        Ok(CardLookup {
            id: Some(id),
            lookup: self.lookup_ref(now, &id, p)?,
        })
    }

    /// The MyKey ID bound to a certificate.
    pub fn bound_id(&self, cert: &CertRef) -> Result<Option<MyKeyId>, RegistryError> {
        let Some(b) = self.known_cert(cert) else {
            return Ok(None);
        };
        let mut key = [0u8; super::record::CERT_KEY_LEN_MAX];
        let found = self
            .store
            .get(Table::Certs, b.key_in(&mut key), |v| v.map(MyKeyId::parse))?;
        found.transpose().map_err(|_| RegistryError::BadRecord {
            what: "certificate binding",
        })
    }

    /// Applies a partner's DER CRL under `push`. The CRL must be signed by a configured CA
    /// generation, current at `now`, and numbered above the last CRL applied for that CA.
    pub fn push_crl(
        &self,
        now: Timestamp,
        actor: ActorId,
        jpki: &Jpki,
        push: PushId,
        der: &[u8],
    ) -> Result<PushSummary, RegistryError> {
        let _one = self.pushing.lock().unwrap_or_else(PoisonError::into_inner);
        let digest = content_digest(KIND_CRL, der);
        if let Some(s) = self.replay(&push, &digest)? {
            return Ok(s);
        }
        let list = jpki.parse_crl(now, der)?;
        let info = list
            .crl
            .as_ref()
            .ok_or(RegistryError::BadRecord { what: "CRL" })?;
        if let Some((_, last)) = self.crl_state(&list.ca_key_id)?
            && cmp_number(&info.number, &last) != std::cmp::Ordering::Greater
        {
            return Err(RegistryError::CrlNotNewer {
                last: hex_or_zero(&last),
                got: hex_or_zero(&info.number),
            });
        }
        self.apply(now, actor, push, KIND_CRL, digest, &list)
    }

    /// Applies a partner's serial list (see [`crate::jpki::crl`] for the format) under `push`.
    pub fn push_serials(
        &self,
        now: Timestamp,
        actor: ActorId,
        jpki: &Jpki,
        push: PushId,
        text: &[u8],
    ) -> Result<PushSummary, RegistryError> {
        let _one = self.pushing.lock().unwrap_or_else(PoisonError::into_inner);
        let digest = content_digest(KIND_SERIALS, text);
        if let Some(s) = self.replay(&push, &digest)? {
            return Ok(s);
        }
        let list = jpki.parse_serial_list(text)?;
        self.apply(now, actor, push, KIND_SERIALS, digest, &list)
    }

    /// The last CRL applied for a CA: (thisUpdate, number).
    pub fn crl_state(
        &self,
        ca_key_id: &[u8],
    ) -> Result<Option<(Timestamp, Vec<u8>)>, RegistryError> {
        let key = [b"n".as_slice(), ca_key_id].concat();
        let v = self
            .store
            .get(Table::Pushes, &key, |v| v.map(<[u8]>::to_vec))?;
        v.map(|v| {
            let at: [u8; 4] = v
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(RegistryError::BadRecord { what: "CRL state" })?;
            Ok((Timestamp::from_raw(u32::from_le_bytes(at)), v[4..].to_vec()))
        })
        .transpose()
    }

    fn replay(
        &self,
        push: &PushId,
        digest: &[u8; 32],
    ) -> Result<Option<PushSummary>, RegistryError> {
        let key = [b"p".as_slice(), push.as_bytes()].concat();
        let Some(v) = self
            .store
            .get(Table::Pushes, &key, |v| v.map(<[u8]>::to_vec))?
        else {
            return Ok(None);
        };
        if v.len() != PUSH_RECORD_LEN {
            return Err(RegistryError::BadRecord { what: "push" });
        }
        if &v[1..33] != digest {
            return Err(RegistryError::PushIdReused { push: *push });
        }
        let n = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[33 + 8 * i..41 + 8 * i]);
            u64::from_le_bytes(b)
        };
        Ok(Some(PushSummary {
            revoke: RevokeSummary {
                newly_revoked: n(0),
                suspended: n(1),
                already_known: n(2),
            },
            entries: n(3),
            replayed: true,
        }))
    }

    fn apply(
        &self,
        now: Timestamp,
        actor: ActorId,
        push: PushId,
        kind: u8,
        digest: [u8; 32],
        list: &RevocationList,
    ) -> Result<PushSummary, RegistryError> {
        // Checked once here, so the loop below cannot fail half-way on a bad identifier.
        CertRef::new(&list.ca_key_id, &[1])?;
        let entries = list.serials.len() as u64;
        let certs = super::revocation::OneCa {
            ca_key_id: &list.ca_key_id,
            serials: &list.serials,
        };
        // Serials that ascend are distinct (`SerialNo` orders as the numbers do).
        let distinct = list.serials.windows(2).all(|w| w[0] < w[1]);
        let revoke =
            self.revoke_all(now, actor, &certs, distinct, &mut |t: &mut Tx<'_>, sum| {
                let mut rec = Vec::with_capacity(PUSH_RECORD_LEN);
                rec.push(kind);
                rec.extend_from_slice(&digest);
                for n in [sum.newly_revoked, sum.suspended, sum.already_known, entries] {
                    rec.extend_from_slice(&n.to_le_bytes());
                }
                rec.extend_from_slice(&now.raw().to_le_bytes());
                rec.extend_from_slice(&t.actor_index.to_le_bytes());
                t.tx.put(
                    Table::Pushes,
                    &[b"p".as_slice(), push.as_bytes()].concat(),
                    Some(rec),
                );
                if let Some(info) = &list.crl {
                    let mut v = info.this_update.raw().to_le_bytes().to_vec();
                    v.extend_from_slice(&info.number);
                    t.tx.put(
                        Table::Pushes,
                        &[b"n".as_slice(), &list.ca_key_id].concat(),
                        Some(v),
                    );
                }
                Ok(())
            })?;
        Ok(PushSummary {
            revoke,
            entries,
            replayed: false,
        })
    }
}

fn content_digest(kind: u8, content: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&[kind]);
    ctx.update(content);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn hex_or_zero(n: &[u8]) -> String {
    if n.is_empty() { "0".into() } else { hex(n) }
}
