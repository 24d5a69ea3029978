//! The value encodings of the registry's tables (`snapshots/README.md`, "Values").
//!
//! Owns [`IdRecord`] and the small fixed records of dictionaries and revocations, and the
//! allocation-free [`find_link`] that the lookup path runs on raw record bytes. Decoding never
//! panics: malformed bytes give `None`, which the registry reports as a corrupt record.

use crate::id::{ServiceId, Timestamp};

/// Most links one MyKey ID may hold. The seed counts 15 card types in Kagoshima and 22 in
/// Toshima ward; 256 is ten times that, and bounds a record to about 20 KB.
pub const LINKS_PER_ID_MAX: usize = 256;
/// Index value meaning "no CA" in an ID record.
const NO_CA: u32 = u32::MAX;

/// The state of a MyKey ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum IdState {
    /// Registered and usable.
    Active = 1,
    /// Provisionally registered; usable once a municipal counter confirms it.
    Provisional = 2,
    /// Its certificate was revoked; a municipal counter can re-bind it to a new certificate.
    Suspended = 3,
    /// Deleted; the ID is never issued again.
    Deleted = 4,
}

impl IdState {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Active,
            2 => Self::Provisional,
            3 => Self::Suspended,
            4 => Self::Deleted,
            _ => return None,
        })
    }

    /// Lower-case name, as the population file and the CLI write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Provisional => "provisional",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
        }
    }
}

/// One service link: provider (dictionary index), service ID, when and by whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Index into the `providers` dictionary.
    pub provider: u32,
    /// The service ID.
    pub service: ServiceId,
    /// When it was linked.
    pub at: Timestamp,
    /// Who linked it (index into `actors`).
    pub actor: u32,
}

/// The bound certificate: CA (dictionary index) and serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundCert {
    /// Index into the `cas` dictionary.
    pub ca: u32,
    /// Serial length.
    pub serial_len: u8,
    /// Serial bytes (first `serial_len`).
    pub serial: [u8; crate::id::SERIAL_LEN_MAX],
}

impl BoundCert {
    /// The serial bytes.
    pub fn serial(&self) -> &[u8] {
        &self.serial[..usize::from(self.serial_len)]
    }
}

/// An ID record, decoded (the write path; lookups use [`find_link`] on the bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdRecord {
    /// Current state.
    pub state: IdState,
    /// When the state was set (for a provisional ID: when it was registered).
    pub state_at: Timestamp,
    /// Who set it (index into `actors`).
    pub state_actor: u32,
    /// The bound certificate, if any.
    pub cert: Option<BoundCert>,
    /// Links in ascending provider order, one per provider.
    pub links: Vec<Link>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl IdRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + self.links.len() * 24);
        b.push(self.state as u8);
        b.extend_from_slice(&self.state_at.raw().to_le_bytes());
        b.extend_from_slice(&self.state_actor.to_le_bytes());
        match &self.cert {
            Some(c) => {
                b.extend_from_slice(&c.ca.to_le_bytes());
                b.push(c.serial_len);
                b.extend_from_slice(c.serial());
            }
            None => {
                b.extend_from_slice(&NO_CA.to_le_bytes());
                b.push(0);
            }
        }
        // The registry refuses a link beyond LINKS_PER_ID_MAX, so the count fits.
        b.extend_from_slice(&(self.links.len() as u16).to_le_bytes());
        for l in &self.links {
            b.extend_from_slice(&l.provider.to_le_bytes());
            b.push(l.service.as_bytes().len() as u8);
            b.extend_from_slice(l.service.as_bytes());
            b.extend_from_slice(&l.at.raw().to_le_bytes());
            b.extend_from_slice(&l.actor.to_le_bytes());
        }
        b
    }

    /// Decodes a record; `None` if malformed.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let state = IdState::from_u8(*b.first()?)?;
        let state_at = Timestamp::from_raw(u32_at(b, 1)?);
        let state_actor = u32_at(b, 5)?;
        let ca = u32_at(b, 9)?;
        let serial_len = *b.get(13)?;
        let mut at = 14;
        let cert = if ca == NO_CA {
            if serial_len != 0 {
                return None;
            }
            None
        } else {
            let s = b.get(at..at + usize::from(serial_len))?;
            if s.is_empty() || s.len() > crate::id::SERIAL_LEN_MAX {
                return None;
            }
            let mut serial = [0u8; crate::id::SERIAL_LEN_MAX];
            serial[..s.len()].copy_from_slice(s);
            at += s.len();
            Some(BoundCert {
                ca,
                serial_len,
                serial,
            })
        };
        let n = usize::from(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
        at += 2;
        if n > LINKS_PER_ID_MAX {
            return None;
        }
        let mut links = Vec::with_capacity(n);
        for _ in 0..n {
            let provider = u32_at(b, at)?;
            let slen = usize::from(*b.get(at + 4)?);
            let service = ServiceId::parse(b.get(at + 5..at + 5 + slen)?).ok()?;
            at += 5 + slen;
            let la = Timestamp::from_raw(u32_at(b, at)?);
            let actor = u32_at(b, at + 4)?;
            at += 8;
            links.push(Link {
                provider,
                service,
                at: la,
                actor,
            });
        }
        if at != b.len() {
            return None;
        }
        Some(Self {
            state,
            state_at,
            state_actor,
            cert,
            links,
        })
    }
}

/// Reads the state and, if present, the service ID linked for `provider` straight from record
/// bytes, without decoding or allocating. `None` if the bytes are malformed.
#[inline]
pub fn find_link(b: &[u8], provider: u32) -> Option<(IdState, Timestamp, Option<ServiceId>)> {
    let state = IdState::from_u8(*b.first()?)?;
    let state_at = Timestamp::from_raw(u32_at(b, 1)?);
    let serial_len = usize::from(*b.get(13)?);
    let mut at = 14 + serial_len;
    let n = usize::from(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
    at += 2;
    for _ in 0..n.min(LINKS_PER_ID_MAX) {
        let p = u32_at(b, at)?;
        let slen = usize::from(*b.get(at + 4)?);
        if p == provider {
            let s = ServiceId::parse(b.get(at + 5..at + 5 + slen)?).ok()?;
            return Some((state, state_at, Some(s)));
        }
        if p > provider {
            break;
        }
        at += 13 + slen;
    }
    Some((state, state_at, None))
}

/// A dictionary entry: dense index, when and by whom it was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DictEntry {
    /// The index records use.
    pub index: u32,
    /// When it was created.
    pub at: Timestamp,
    /// Who created it (index into `actors`).
    pub actor: u32,
}

impl DictEntry {
    /// Encodes the entry (12 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12);
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.at.raw().to_le_bytes());
        b.extend_from_slice(&self.actor.to_le_bytes());
        b
    }

    /// Decodes an entry; `None` if malformed.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 12 {
            return None;
        }
        Some(Self {
            index: u32_at(b, 0)?,
            at: Timestamp::from_raw(u32_at(b, 4)?),
            actor: u32_at(b, 8)?,
        })
    }
}

/// A revocation record: when and by whom (8 bytes).
pub fn encode_revocation(at: Timestamp, actor: u32) -> Vec<u8> {
    let mut b = at.raw().to_le_bytes().to_vec();
    b.extend_from_slice(&actor.to_le_bytes());
    b
}

/// The key of a certificate reference in `certs` and `revoked`.
pub fn cert_key(cert: &crate::id::CertRef) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + cert.ca_key_id().len() + cert.serial().len());
    k.push(cert.ca_key_id().len() as u8);
    k.extend_from_slice(cert.ca_key_id());
    k.extend_from_slice(cert.serial());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IdRecord {
        let mut serial = [0u8; 20];
        serial[..3].copy_from_slice(&[1, 2, 3]);
        IdRecord {
            state: IdState::Active,
            state_at: Timestamp::from_raw(100),
            state_actor: 2,
            cert: Some(BoundCert {
                ca: 0,
                serial_len: 3,
                serial,
            }),
            links: vec![
                Link {
                    provider: 1,
                    service: ServiceId::parse(b"ABC").expect("valid"),
                    at: Timestamp::from_raw(5),
                    actor: 1,
                },
                Link {
                    provider: 7,
                    service: ServiceId::parse(b"2802121234").expect("valid"),
                    at: Timestamp::from_raw(6),
                    actor: 0,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_find_link() {
        let r = sample();
        let b = r.encode();
        assert_eq!(IdRecord::decode(&b), Some(r));
        let (state, _, svc) = find_link(&b, 7).expect("well-formed");
        assert_eq!(state, IdState::Active);
        assert_eq!(svc.expect("linked").as_bytes(), b"2802121234");
        assert_eq!(find_link(&b, 3).expect("well-formed").2, None);
        assert_eq!(find_link(&b, 9).expect("well-formed").2, None);
    }

    #[test]
    fn truncations_never_panic_and_are_refused() {
        let b = sample().encode();
        for cut in 0..b.len() {
            assert_eq!(IdRecord::decode(&b[..cut]), None, "cut {cut}");
            let _ = find_link(&b[..cut], 7);
        }
    }
}
