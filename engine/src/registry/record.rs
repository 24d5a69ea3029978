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

/// The on-disk code of an ID's state (`snapshots/README.md`, "Values"); not the wire byte.
fn state_code(s: IdState) -> u8 {
    match s {
        IdState::Active => 1,
        IdState::Provisional => 2,
        IdState::Suspended => 3,
        IdState::Deleted => 4,
    }
}

/// The state of an on-disk state code; `None` for any other value.
fn state_from_code(b: u8) -> Option<IdState> {
    Some(match b {
        1 => IdState::Active,
        2 => IdState::Provisional,
        3 => IdState::Suspended,
        4 => IdState::Deleted,
        _ => return None,
    })
}

/// First-byte bits of an ID record of encoding 2 (`snapshots/README.md`, "ID record"): bits
/// 4–7 are `1`, bits 0–2 the state code. An encoding 1 record's first byte is the bare code.
const ENCODING_2: u8 = 0x10;
/// Encoding 2, first byte: the registration's time and actor are the state's (not written).
const REGISTERED_AS_STATE: u8 = 0x08;
/// Encoding 2, a link's length byte: bits 0–5 are the service ID's length − 1; bit 6 says it
/// is all ASCII digits, written two to a byte; bit 7 says the link carries its own audit.
const DIGITS: u8 = 0x40;
const LEN_BITS: u8 = 0x3F;

/// How a record begins: its state and audit, and where the bound certificate starts.
struct Head {
    v2: bool,
    state: IdState,
    state_at: Timestamp,
    state_actor: u32,
    registered_at: Timestamp,
    registered_by: u32,
    at: usize,
}

#[inline]
fn head(b: &[u8]) -> Option<Head> {
    let first = *b.first()?;
    let v2 = first & 0xF0 == ENCODING_2;
    if !v2 && first & !0x07 != 0 {
        return None;
    }
    let state = state_from_code(first & 0x07)?;
    let state_at = Timestamp::from_raw(u32_at(b, 1)?);
    let mut at = 5;
    let state_actor = varint(b, &mut at)?;
    let (registered_at, registered_by) = if v2 && first & REGISTERED_AS_STATE != 0 {
        (state_at, state_actor)
    } else {
        let t = Timestamp::from_raw(u32_at(b, at)?);
        at += 4;
        let a = varint(b, &mut at)?;
        // Encoding 2 never writes a registration equal to the state's.
        if v2 && t == state_at && a == state_actor {
            return None;
        }
        (t, a)
    };
    Some(Head {
        v2,
        state,
        state_at,
        state_actor,
        registered_at,
        registered_by,
        at,
    })
}

/// The stored form of a service ID: digits packed two to a byte (high nibble first, an odd
/// count padded with a zero nibble), or the bytes themselves.
fn put_service(out: &mut Vec<u8>, s: &[u8]) -> bool {
    if !s.iter().all(u8::is_ascii_digit) {
        out.extend_from_slice(s);
        return false;
    }
    for pair in s.chunks(2) {
        let lo = pair.get(1).map_or(0, |d| d - b'0');
        out.push((pair[0] - b'0') << 4 | lo);
    }
    true
}

/// Two ASCII digits for each packed-decimal byte, `[0, 0]` where a nibble is not a digit.
static DIGIT_PAIRS: [[u8; 2]; 256] = digit_pairs();

const fn digit_pairs() -> [[u8; 2]; 256] {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        let (hi, lo) = ((i >> 4) as u8, (i & 0x0F) as u8);
        if hi <= 9 && lo <= 9 {
            t[i] = [b'0' + hi, b'0' + lo];
        }
        i += 1;
    }
    t
}

/// The service ID of `len` characters stored at `b[*at..]` (packed digits with `digits`),
/// advancing `*at`; `None` when malformed. Allocation-free: the lookup path runs it on every
/// hit, one table read per digit pair.
#[inline]
fn service_at(b: &[u8], at: &mut usize, len: usize, digits: bool) -> Option<ServiceId> {
    if !digits {
        let s = b.get(*at..*at + len)?;
        *at += len;
        return ServiceId::parse(s).ok();
    }
    let packed = b.get(*at..*at + len.div_ceil(2))?;
    *at += packed.len();
    ServiceId::build(len, |out| {
        let mut ok = true;
        for (pair, &byte) in out.chunks_exact_mut(2).zip(packed) {
            let d = DIGIT_PAIRS[usize::from(byte)];
            ok &= d[0] != 0;
            pair.copy_from_slice(&d);
        }
        // An odd count ends in a zero nibble (its '0' is cut off by `build`).
        ok && (len.is_multiple_of(2) || packed[len / 2] & 0x0F == 0)
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
        Self::of_serial(ca, cert.serial())
    }

    /// The certificate of serial `serial` (big-endian, no leading zero byte) with its CA at
    /// dictionary index `ca`. The caller checks that the serial has at most `SERIAL_LEN_MAX`
    /// bytes; past that it is cut, never read out of bounds.
    pub fn of_serial(ca: u32, serial: &[u8]) -> Self {
        let serial = &serial[..serial.len().min(crate::id::SERIAL_LEN_MAX)];
        let mut bytes = [0u8; crate::id::SERIAL_LEN_MAX];
        bytes[..serial.len()].copy_from_slice(serial);
        Self {
            ca,
            serial_len: serial.len() as u8,
            serial: bytes,
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

/// How ID records are written (`snapshots/README.md`, "ID record"); every build since
/// 2026-12-04 reads both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordEncoding {
    /// Encoding 1, the only one earlier builds read: for a cluster that still has nodes of
    /// such a build during a rolling upgrade (`ops/RUNBOOK.md`).
    V1,
    /// Encoding 2: the registration's audit written once when it is the state's, all-digit
    /// service IDs packed two digits to a byte.
    #[default]
    V2,
}

impl IdRecord {
    /// Encodes the record in encoding 2.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(RecordEncoding::V2)
    }

    /// Encodes the record in `encoding`.
    pub fn encode_as(&self, encoding: RecordEncoding) -> Vec<u8> {
        // The format keeps links in ascending provider order, one per provider.
        debug_assert!(
            self.links.windows(2).all(|w| w[0].provider < w[1].provider),
            "links out of provider order"
        );
        debug_assert!(self.links.len() <= LINKS_PER_ID_MAX);
        let v2 = encoding == RecordEncoding::V2;
        let mut b = Vec::with_capacity(16 + self.links.len() * 12);
        let as_state =
            v2 && self.registered_at == self.state_at && self.registered_by == self.state_actor;
        let first = if v2 {
            ENCODING_2 | state_code(self.state)
        } else {
            state_code(self.state)
        };
        b.push(if as_state {
            first | REGISTERED_AS_STATE
        } else {
            first
        });
        b.extend_from_slice(&self.state_at.raw().to_le_bytes());
        put_varint(&mut b, self.state_actor);
        if !as_state {
            b.extend_from_slice(&self.registered_at.raw().to_le_bytes());
            put_varint(&mut b, self.registered_by);
        }
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
            let service = l.service.as_bytes();
            let len_at = b.len();
            if v2 {
                // A service ID is 1..=64 bytes, so its length − 1 fits the six bits.
                b.push((service.len() - 1) as u8);
                if put_service(&mut b, service) {
                    b[len_at] |= DIGITS;
                }
            } else {
                // Encoding 1: the length itself (at most 64, under the audit bit), the bytes.
                b.push(service.len() as u8);
                b.extend_from_slice(service);
            }
            if own {
                b[len_at] |= OWN_AUDIT;
                b.extend_from_slice(&l.at.raw().to_le_bytes());
                put_varint(&mut b, l.actor);
            }
        }
        b
    }

    /// Decodes a record; `None` if malformed.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let Head {
            v2,
            state,
            state_at,
            state_actor,
            registered_at,
            registered_by,
            mut at,
        } = head(b)?;
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
            at += 1;
            let service = if v2 {
                let len = usize::from(flags & LEN_BITS) + 1;
                let s = service_at(b, &mut at, len, flags & DIGITS != 0)?;
                if flags & DIGITS == 0 && s.as_bytes().iter().all(u8::is_ascii_digit) {
                    return None;
                }
                s
            } else {
                service_at(b, &mut at, usize::from(flags & !OWN_AUDIT), false)?
            };
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

/// What [`find_link`] read from record bytes. It borrows the service ID's stored bytes, so the
/// service ID is decoded once, straight into the answer ([`Found::service`]).
#[derive(Clone, Copy, Debug)]
pub struct Found<'a> {
    /// The ID's state.
    pub state: IdState,
    /// When the state was set.
    pub state_at: Timestamp,
    /// The stored service ID for the provider: its bytes, length and whether packed.
    service: Option<(&'a [u8], usize, bool)>,
}

impl Found<'_> {
    /// The service ID linked for the provider: `Some(None)` when none is, `None` when its
    /// stored bytes are malformed.
    #[inline]
    pub fn service(&self) -> Option<Option<ServiceId>> {
        match self.service {
            None => Some(None),
            Some((b, len, digits)) => service_at(b, &mut 0, len, digits).map(Some),
        }
    }
}

/// Reads the state and where the service ID linked for `provider` is stored, straight from
/// record bytes, without decoding or allocating. `None` if the bytes are malformed.
#[inline]
pub fn find_link(b: &[u8], provider: u32) -> Option<Found<'_>> {
    let Head {
        v2,
        state,
        state_at,
        mut at,
        ..
    } = head(b)?;
    if varint(b, &mut at)? != 0 {
        at += 1 + usize::from(*b.get(at)?);
    }
    let n = varint(b, &mut at)? as usize;
    let mut service = None;
    for _ in 0..n.min(LINKS_PER_ID_MAX) {
        let p = varint(b, &mut at)?;
        let flags = *b.get(at)?;
        at += 1;
        let (len, digits) = if v2 {
            (usize::from(flags & LEN_BITS) + 1, flags & DIGITS != 0)
        } else {
            (usize::from(flags & !OWN_AUDIT), false)
        };
        let stored = if digits { len.div_ceil(2) } else { len };
        if p == provider {
            service = Some((b.get(at..at + stored)?, len, digits));
            break;
        }
        if p > provider {
            break;
        }
        at += stored;
        if flags & OWN_AUDIT != 0 {
            at += 4;
            varint(b, &mut at)?;
        }
    }
    Some(Found {
        state,
        state_at,
        service,
    })
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
        let found = find_link(&b, 700).expect("well-formed");
        assert_eq!(found.state, IdState::Active);
        let svc = found.service().expect("well-formed").expect("linked");
        assert_eq!(svc.as_bytes(), b"2802121234");
        assert_eq!(find_link(&b, 3).expect("well-formed").service(), Some(None));
        assert_eq!(
            find_link(&b, 900).expect("well-formed").service(),
            Some(None)
        );
        // The first link inherits the registration audit, so it costs no audit bytes; the
        // second's ten digits take five.
        assert_eq!(
            b.len(),
            1 + 4 + 1 + 4 + 1 + 1 + 1 + 3 + 1 + (1 + 1 + 3) + (2 + 1 + 5 + 4 + 2)
        );
    }

    #[test]
    fn a_bulk_loaded_record_writes_its_registration_once_and_odd_digits_pack() {
        let mut r = sample();
        r.state_at = r.registered_at;
        r.state_actor = r.registered_by;
        r.links[0].service = ServiceId::parse(b"0012345").expect("valid");
        let b = r.encode();
        assert_eq!(b[0], ENCODING_2 | REGISTERED_AS_STATE | 1);
        assert_eq!(
            b.len(),
            1 + 4 + 1 + 1 + 1 + 3 + 1 + (1 + 1 + 4) + (2 + 1 + 5 + 4 + 2)
        );
        assert_eq!(IdRecord::decode(&b), Some(r.clone()));
        let svc = find_link(&b, 1).expect("well-formed").service();
        assert_eq!(
            svc.expect("well-formed").expect("linked").as_bytes(),
            b"0012345"
        );
        // The padding nibble of an odd count must be zero, and every nibble a digit.
        let link = b.len() - (2 + 1 + 5 + 4 + 2) - 4;
        let mut bad = b.clone();
        bad[link + 3] |= 0x01;
        assert_eq!(IdRecord::decode(&bad), None);
        let mut bad = b.clone();
        bad[link] = 0xA0;
        assert_eq!(IdRecord::decode(&bad), None);
        assert_eq!(find_link(&bad, 1).and_then(|f| f.service()), None);
    }

    /// Records of encoding 1, as an earlier release wrote them (and as old logs and snapshots
    /// hold them), still decode and answer.
    #[test]
    fn an_encoding_1_record_still_decodes() {
        let r = sample();
        let mut b = vec![1u8];
        b.extend_from_slice(&100u32.to_le_bytes());
        b.push(2);
        b.extend_from_slice(&5u32.to_le_bytes());
        b.push(1);
        b.extend_from_slice(&[1, 3, 1, 2, 3]);
        b.push(2);
        b.extend_from_slice(&[1, 3]);
        b.extend_from_slice(b"ABC");
        b.extend_from_slice(&[0xBC, 0x05, 10 | OWN_AUDIT]);
        b.extend_from_slice(b"2802121234");
        b.extend_from_slice(&6u32.to_le_bytes());
        b.extend_from_slice(&[0xAC, 0x02]);
        assert_eq!(IdRecord::decode(&b), Some(r.clone()));
        // Written in encoding 1 (a rolling upgrade), the record is those bytes exactly.
        assert_eq!(r.encode_as(RecordEncoding::V1), b);
        let svc = find_link(&b, 700).expect("well-formed").service();
        assert_eq!(
            svc.expect("well-formed").expect("linked").as_bytes(),
            b"2802121234"
        );
        // An all-digit service ID stored unpacked is refused in encoding 2 only.
        let mut v2 = sample().encode();
        let at = v2.len() - (5 + 4 + 2);
        v2[at - 1] &= !DIGITS;
        v2.splice(at..at + 5, b"2802121234".iter().copied());
        assert_eq!(IdRecord::decode(&v2), None);
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
