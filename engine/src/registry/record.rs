//! The value encodings of the registry's tables (`snapshots/README.md`, "Values").
//!
//! Owns [`IdRecord`] and the small fixed records of dictionaries and revocations, and the
//! allocation-free [`find_link`] that the lookup path runs on raw record bytes. Decoding never
//! panics: malformed bytes give `None`, which the registry reports as a corrupt record.

use crate::answer::IdState;
use crate::id::{ServiceId, Timestamp};

/// Most links one MyKey ID may hold. The seed counts 15 card types in Kagoshima and 22 in
/// Toshima ward; 256 is ten times that, and bounds a record to about 20 KB.
pub const LINKS_PER_ID_MAX: usize = 256;

/// The on-disk byte of an ID's state (`snapshots/README.md`, "Values"); not the wire byte.
fn state_byte(s: IdState) -> u8 {
    match s {
        IdState::Active => 1,
        IdState::Provisional => 2,
        IdState::Suspended => 3,
        IdState::Deleted => 4,
    }
}

/// The state of an on-disk state byte; `None` for any other byte.
fn state_from_byte(b: u8) -> Option<IdState> {
    Some(match b {
        1 => IdState::Active,
        2 => IdState::Provisional,
        3 => IdState::Suspended,
        4 => IdState::Deleted,
        _ => return None,
    })
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
    /// The certificate `cert` with its CA at dictionary index `ca`.
    pub fn of(ca: u32, cert: &crate::id::CertRef) -> Self {
        let mut serial = [0u8; crate::id::SERIAL_LEN_MAX];
        serial[..cert.serial().len()].copy_from_slice(cert.serial());
        Self {
            ca,
            serial_len: cert.serial().len() as u8,
            serial,
        }
    }

    /// The serial bytes.
    pub fn serial(&self) -> &[u8] {
        &self.serial[..usize::from(self.serial_len)]
    }

    /// The key of this certificate in `certs` and `revoked`: CA index (varint), then serial.
    pub fn key(&self) -> Vec<u8> {
        let mut buf = [0u8; CERT_KEY_LEN_MAX];
        self.key_in(&mut buf).to_vec()
    }

    /// As [`BoundCert::key`], written into `buf` without allocating (the card-check path).
    pub fn key_in<'b>(&self, buf: &'b mut [u8; CERT_KEY_LEN_MAX]) -> &'b [u8] {
        let mut n = 0;
        let mut v = self.ca;
        while v >= 0x80 {
            buf[n] = v as u8 | 0x80;
            v >>= 7;
            n += 1;
        }
        buf[n] = v as u8;
        n += 1;
        let serial = self.serial();
        buf[n..n + serial.len()].copy_from_slice(serial);
        &buf[..n + serial.len()]
    }
}

/// Longest certificate key: a 5-byte varint CA index and a 20-byte serial.
pub const CERT_KEY_LEN_MAX: usize = 5 + crate::id::SERIAL_LEN_MAX;

/// An ID record, decoded (the write path; lookups use [`find_link`] on the bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdRecord {
    /// Current state.
    pub state: IdState,
    /// When the state was set (for a provisional ID: when it was registered).
    pub state_at: Timestamp,
    /// Who set it (index into `actors`).
    pub state_actor: u32,
    /// When the ID was registered (or bulk-loaded).
    pub registered_at: Timestamp,
    /// Who registered it (index into `actors`).
    pub registered_by: u32,
    /// The bound certificate, if any.
    pub cert: Option<BoundCert>,
    /// Links in ascending provider order, one per provider.
    pub links: Vec<Link>,
}

/// Appends `v` as LEB128 (7 bits a byte, low first).
pub fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 `u32` at `*at`, advancing it; `None` if truncated, over 32 bits, or not in
/// its shortest form (so every value has exactly one encoding).
#[inline]
pub fn varint(b: &[u8], at: &mut usize) -> Option<u32> {
    let mut v = 0u32;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        let bits = u32::from(byte & 0x7F);
        if shift == 28 && bits > 0x0F {
            return None;
        }
        v |= bits << shift;
        if byte & 0x80 == 0 {
            return (byte != 0 || shift == 0).then_some(v);
        }
    }
    None
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Bit of a link's length byte saying the link carries its own audit (time and actor); without
/// it the link was made at registration (a bulk load) and inherits the record's.
const OWN_AUDIT: u8 = 0x80;

impl IdRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        // The format keeps links in ascending provider order, one per provider.
        debug_assert!(
            self.links.windows(2).all(|w| w[0].provider < w[1].provider),
            "links out of provider order"
        );
        debug_assert!(self.links.len() <= LINKS_PER_ID_MAX);
        let mut b = Vec::with_capacity(24 + self.links.len() * 16);
        b.push(state_byte(self.state));
        b.extend_from_slice(&self.state_at.raw().to_le_bytes());
        put_varint(&mut b, self.state_actor);
        b.extend_from_slice(&self.registered_at.raw().to_le_bytes());
        put_varint(&mut b, self.registered_by);
        match &self.cert {
            // Dictionary indexes stop below u32::MAX, so the +1 never overflows.
            Some(c) => {
                put_varint(&mut b, c.ca + 1);
                b.push(c.serial_len);
                b.extend_from_slice(c.serial());
            }
            None => put_varint(&mut b, 0),
        }
        // The registry refuses a link beyond LINKS_PER_ID_MAX, so the count fits.
        put_varint(&mut b, self.links.len() as u32);
        for l in &self.links {
            put_varint(&mut b, l.provider);
            let own = l.at != self.registered_at || l.actor != self.registered_by;
            let len = l.service.as_bytes().len() as u8;
            b.push(if own { len | OWN_AUDIT } else { len });
            b.extend_from_slice(l.service.as_bytes());
            if own {
                b.extend_from_slice(&l.at.raw().to_le_bytes());
                put_varint(&mut b, l.actor);
            }
        }
        b
    }

    /// Decodes a record; `None` if malformed.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let state = state_from_byte(*b.first()?)?;
        let state_at = Timestamp::from_raw(u32_at(b, 1)?);
        let mut at = 5;
        let state_actor = varint(b, &mut at)?;
        let registered_at = Timestamp::from_raw(u32_at(b, at)?);
        at += 4;
        let registered_by = varint(b, &mut at)?;
        let cert = match varint(b, &mut at)? {
            0 => None,
            ca1 => {
                let len = usize::from(*b.get(at)?);
                let s = b.get(at + 1..at + 1 + len)?;
                if s.is_empty() || s.len() > crate::id::SERIAL_LEN_MAX {
                    return None;
                }
                let mut serial = [0u8; crate::id::SERIAL_LEN_MAX];
                serial[..len].copy_from_slice(s);
                at += 1 + len;
                Some(BoundCert {
                    ca: ca1 - 1,
                    serial_len: len as u8,
                    serial,
                })
            }
        };
        let n = varint(b, &mut at)? as usize;
        if n > LINKS_PER_ID_MAX {
            return None;
        }
        let mut links: Vec<Link> = Vec::with_capacity(n);
        for _ in 0..n {
            let provider = varint(b, &mut at)?;
            // Strictly ascending providers: `find_link` stops early relying on it.
            if links.last().is_some_and(|l| l.provider >= provider) {
                return None;
            }
            let flags = *b.get(at)?;
            let slen = usize::from(flags & !OWN_AUDIT);
            let service = ServiceId::parse(b.get(at + 1..at + 1 + slen)?).ok()?;
            at += 1 + slen;
            let (la, actor) = if flags & OWN_AUDIT != 0 {
                let t = Timestamp::from_raw(u32_at(b, at)?);
                at += 4;
                let actor = varint(b, &mut at)?;
                // An own audit equal to the registration's is never written.
                if t == registered_at && actor == registered_by {
                    return None;
                }
                (t, actor)
            } else {
                (registered_at, registered_by)
            };
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
            registered_at,
            registered_by,
            cert,
            links,
        })
    }
}

/// Reads the state and, if present, the service ID linked for `provider` straight from record
/// bytes, without decoding or allocating. `None` if the bytes are malformed.
#[inline]
pub fn find_link(b: &[u8], provider: u32) -> Option<(IdState, Timestamp, Option<ServiceId>)> {
    let state = state_from_byte(*b.first()?)?;
    let state_at = Timestamp::from_raw(u32_at(b, 1)?);
    let mut at = 5;
    varint(b, &mut at)?;
    at += 4;
    varint(b, &mut at)?;
    if varint(b, &mut at)? != 0 {
        at += 1 + usize::from(*b.get(at)?);
    }
    let n = varint(b, &mut at)? as usize;
    for _ in 0..n.min(LINKS_PER_ID_MAX) {
        let p = varint(b, &mut at)?;
        let flags = *b.get(at)?;
        let slen = usize::from(flags & !OWN_AUDIT);
        if p == provider {
            let s = ServiceId::parse(b.get(at + 1..at + 1 + slen)?).ok()?;
            return Some((state, state_at, Some(s)));
        }
        if p > provider {
            break;
        }
        at += 1 + slen;
        if flags & OWN_AUDIT != 0 {
            at += 4;
            varint(b, &mut at)?;
        }
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
    let mut b = Vec::with_capacity(8);
    b.extend_from_slice(&at.raw().to_le_bytes());
    b.extend_from_slice(&actor.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_refuse_overlong() {
        for v in [0, 1, 127, 128, 300, 16_383, 16_384, u32::MAX - 1, u32::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut at = 0;
            assert_eq!(varint(&b, &mut at), Some(v));
            assert_eq!(at, b.len());
        }
        let mut at = 0;
        assert_eq!(varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x1F], &mut at), None);
        let mut at = 0;
        assert_eq!(varint(&[0x80], &mut at), None);
        let mut at = 0;
        assert_eq!(varint(&[0x80, 0x00], &mut at), None, "overlong zero");
    }

    fn sample() -> IdRecord {
        let mut serial = [0u8; 20];
        serial[..3].copy_from_slice(&[1, 2, 3]);
        IdRecord {
            state: IdState::Active,
            state_at: Timestamp::from_raw(100),
            state_actor: 2,
            registered_at: Timestamp::from_raw(5),
            registered_by: 1,
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
                    provider: 700,
                    service: ServiceId::parse(b"2802121234").expect("valid"),
                    at: Timestamp::from_raw(6),
                    actor: 300,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_find_link() {
        let r = sample();
        let b = r.encode();
        assert_eq!(IdRecord::decode(&b), Some(r));
        let (state, _, svc) = find_link(&b, 700).expect("well-formed");
        assert_eq!(state, IdState::Active);
        assert_eq!(svc.expect("linked").as_bytes(), b"2802121234");
        assert_eq!(find_link(&b, 3).expect("well-formed").2, None);
        assert_eq!(find_link(&b, 900).expect("well-formed").2, None);
        // The first link inherits the registration audit, so it costs no audit bytes.
        assert_eq!(
            b.len(),
            1 + 4 + 1 + 4 + 1 + 1 + 1 + 3 + 1 + (1 + 1 + 3) + (2 + 1 + 10 + 4 + 2)
        );
    }

    #[test]
    fn truncations_never_panic_and_are_refused() {
        let b = sample().encode();
        for cut in 0..b.len() {
            assert_eq!(IdRecord::decode(&b[..cut]), None, "cut {cut}");
            let _ = find_link(&b[..cut], 700);
        }
    }
}
