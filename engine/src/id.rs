//! Identifiers of the MyKey domain and their parsers.
//!
//! Owns `MyKeyId`, `ProviderId`, `ServiceId`, `CertRef`, `ActorId` and `Timestamp`. Parse, don't
//! validate: a value of one of these types is always well-formed, so code that holds one never
//! checks it again. Every type is stored inline (fixed arrays plus a length), so parsing, copying
//! and comparing them never allocates: the lookup path depends on that. Parsers return an
//! [`IdError`] that names the rule broken and the offending position; they never panic on any
//! input bytes.

use std::fmt;

/// Length of a MyKey ID: the 14-character random string of the JPKI subject CN (seed document).
pub const MYKEY_ID_LEN: usize = 14;
/// Largest service provider ID in bytes (DESIGN §3: UTF-8, at most 32 bytes).
pub const PROVIDER_ID_LEN_MAX: usize = 32;
/// Largest service ID in bytes (DESIGN §3: opaque bytes, at most 64).
pub const SERVICE_ID_LEN_MAX: usize = 64;
/// Largest CA key identifier in bytes. A Subject Key Identifier is in practice a 20-byte SHA-1;
/// 32 leaves room for a SHA-256 based one without changing the format.
pub const CA_KEY_ID_LEN_MAX: usize = 32;
/// Largest certificate serial in bytes (RFC 5280 §4.1.2.2: at most 20 octets).
pub const SERIAL_LEN_MAX: usize = 20;
/// Most bytes of a partner's revocation push id.
pub const PUSH_ID_LEN_MAX: usize = 64;
/// Largest actor id in bytes: a terminal, municipal counter or partner name for the audit trail.
pub const ACTOR_ID_LEN_MAX: usize = 64;

/// Why an identifier was refused. Each variant names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A MyKey ID is exactly 14 characters.
    #[error("MyKey ID must be exactly {MYKEY_ID_LEN} characters A-Z0-9, got {len} bytes")]
    MyKeyIdLength {
        /// Length of the input in bytes.
        len: usize,
    },
    /// A MyKey ID holds only `A`–`Z` and `0`–`9`.
    #[error("MyKey ID may only hold A-Z and 0-9: byte 0x{byte:02x} at position {pos}")]
    MyKeyIdChar {
        /// Zero-based position of the first bad byte.
        pos: usize,
        /// The byte found there.
        byte: u8,
    },
    /// An identifier of this kind may not be empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier.
        kind: &'static str,
    },
    /// An identifier of this kind is longer than its limit.
    #[error("{kind} is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// Which identifier.
        kind: &'static str,
        /// Length of the input in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An identifier of this kind must be UTF-8.
    #[error("{kind} is not valid UTF-8 (first bad byte at position {pos})")]
    NotUtf8 {
        /// Which identifier.
        kind: &'static str,
        /// Position of the first invalid byte.
        pos: usize,
    },
    /// Control characters would break logs, exports and the population file format.
    #[error("{kind} holds a control character at position {pos}")]
    ControlChar {
        /// Which identifier.
        kind: &'static str,
        /// Position of the control character.
        pos: usize,
    },
    /// A hex field held something else than an even number of hex digits.
    #[error("{kind} must be hex digits (pairs), bad at position {pos}")]
    BadHex {
        /// Which identifier.
        kind: &'static str,
        /// Position of the first bad character.
        pos: usize,
    },
    /// A certificate reference is written `<CA key id hex>:<serial hex>`.
    #[error("certificate reference must be <CA key id hex>:<serial hex>")]
    CertRefForm,
    /// A timestamp is whole seconds since the Unix epoch that fit the store's 32-bit field.
    #[error("timestamp {secs} is outside 0..={max} seconds since the Unix epoch")]
    TimeRange {
        /// The value given.
        secs: u64,
        /// Largest value the store can hold.
        max: u64,
    },
}

/// A MyKey ID: exactly 14 bytes from `A`–`Z0`–`9`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MyKeyId([u8; MYKEY_ID_LEN]);

impl MyKeyId {
    /// Parses a MyKey ID from bytes; allocation-free.
    pub fn parse(bytes: &[u8]) -> Result<Self, IdError> {
        let arr: [u8; MYKEY_ID_LEN] = bytes
            .try_into()
            .map_err(|_| IdError::MyKeyIdLength { len: bytes.len() })?;
        if let Some(pos) = arr
            .iter()
            .position(|b| !(b.is_ascii_uppercase() || b.is_ascii_digit()))
        {
            return Err(IdError::MyKeyIdChar {
                pos,
                byte: arr[pos],
            });
        }
        Ok(Self(arr))
    }

    /// The 14 ASCII bytes.
    pub fn as_bytes(&self) -> &[u8; MYKEY_ID_LEN] {
        &self.0
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        // The parser admits only ASCII, so this never fails; the fallback keeps it panic-free.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::str::FromStr for MyKeyId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s.as_bytes())
    }
}

impl fmt::Display for MyKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MyKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MyKeyId({})", self.as_str())
    }
}

/// Bytes of at most `N`, stored inline. The shared representation of the variable-length IDs.
/// Bytes past `len` are always zero, so the derived comparisons equal comparing the slices;
/// hashing covers only the used bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Inline<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> std::hash::Hash for Inline<N> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl<const N: usize> Inline<N> {
    fn new(kind: &'static str, src: &[u8]) -> Result<Self, IdError> {
        if src.is_empty() {
            return Err(IdError::Empty { kind });
        }
        if src.len() > N {
            return Err(IdError::TooLong {
                kind,
                len: src.len(),
                max: N,
            });
        }
        let mut bytes = [0u8; N];
        bytes[..src.len()].copy_from_slice(src);
        // N is at most 64, so the length fits a u8.
        Ok(Self {
            len: src.len() as u8,
            bytes,
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Checks that `src` is UTF-8 without control characters.
fn check_text(kind: &'static str, src: &[u8]) -> Result<(), IdError> {
    let s = std::str::from_utf8(src).map_err(|e| IdError::NotUtf8 {
        kind,
        pos: e.valid_up_to(),
    })?;
    if let Some((pos, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
        return Err(IdError::ControlChar { kind, pos });
    }
    Ok(())
}

/// Declares an identifier that is UTF-8 text of 1 to `$max` bytes without control characters,
/// with its parser, accessors and formatting.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $max:expr, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Inline<$max>);

        impl $name {
            const KIND: &'static str = $kind;

            /// Parses the identifier from bytes; allocation-free.
            pub fn parse(src: &[u8]) -> Result<Self, IdError> {
                let inline = Inline::new(Self::KIND, src)?;
                check_text(Self::KIND, src)?;
                Ok(Self(inline))
            }

            /// The UTF-8 bytes.
            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_slice()
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                // Checked to be UTF-8 by the parser; the fallback keeps it panic-free.
                std::str::from_utf8(self.0.as_slice()).unwrap_or("")
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s.as_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.as_str())
            }
        }
    };
}

text_id!(
    /// A service provider ID such as `A-α1-0001`: UTF-8, 1–32 bytes, no control characters.
    ProviderId,
    PROVIDER_ID_LEN_MAX,
    "service provider ID"
);

text_id!(
    /// Who made a change: a terminal, a municipal counter, a partner, the operator. Recorded
    /// with every change so that an operator can answer "who changed this link, and when".
    /// UTF-8, 1–64 bytes, no control characters.
    ActorId,
    ACTOR_ID_LEN_MAX,
    "actor id"
);

text_id!(
    /// A partner's id for one revocation push (a CRL or a serial list). Retrying a push with
    /// the same id and the same content changes nothing and answers the first summary.
    /// UTF-8, 1–64 bytes, no control characters.
    PushId,
    PUSH_ID_LEN_MAX,
    "push id"
);

/// A service ID: opaque bytes, 1–64 of them (a library card number, a point-card number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(Inline<SERVICE_ID_LEN_MAX>);

impl ServiceId {
    const KIND: &'static str = "service ID";

    /// Wraps opaque bytes; allocation-free.
    pub fn parse(src: &[u8]) -> Result<Self, IdError> {
        Inline::new(Self::KIND, src).map(Self)
    }

    /// A service ID of `len` bytes (1..=64) written in place by `fill`, which returns whether
    /// it wrote a valid one; allocation-free, and without a second copy (a store decoding a
    /// packed form writes straight into the result). `fill` writes bytes `..len` and at most
    /// the one after them (a packed form's padding, cleared here); the rest stays zero. So no
    /// clearing of the tail (a `memset` call on the lookup path) is needed.
    #[inline]
    pub fn build(
        len: usize,
        fill: impl FnOnce(&mut [u8; SERVICE_ID_LEN_MAX]) -> bool,
    ) -> Option<Self> {
        if len == 0 || len > SERVICE_ID_LEN_MAX {
            return None;
        }
        let mut bytes = [0u8; SERVICE_ID_LEN_MAX];
        if !fill(&mut bytes) {
            return None;
        }
        // Bytes past `len` stay zero, as `Inline::new` leaves them, so equality holds.
        if let Some(pad) = bytes.get_mut(len) {
            *pad = 0;
        }
        debug_assert!(
            bytes[len..].iter().all(|&b| b == 0),
            "fill wrote past len + 1"
        );
        Some(Self(Inline {
            len: len as u8,
            bytes,
        }))
    }

    /// Parses a service ID written as text (the population file and the CLI): UTF-8 without
    /// control characters, so that it survives a CSV row and a terminal.
    pub fn parse_text(src: &str) -> Result<Self, IdError> {
        check_text(Self::KIND, src.as_bytes())?;
        Self::parse(src.as_bytes())
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.as_bytes()) {
            Ok(s) if !s.chars().any(char::is_control) => f.write_str(s),
            _ => write_hex(f, self.as_bytes()),
        }
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({self})")
    }
}

/// Bytes shown as hex: `{}` uppercase (certificate references, CA key identifiers, the
/// population format), `{:x}` lowercase (log tags, fingerprints). The one hex encoder.
#[derive(Clone, Copy)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

impl fmt::LowerHex for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    fmt::Display::fmt(&Hex(bytes), f)
}

/// Hex digits (either case) as bytes; `None` unless they are whole pairs of hex digits.
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    let mut out = vec![0u8; s.len() / 2];
    (decode_hex("hex", s, &mut out).ok()? == out.len()).then_some(out)
}

/// Exactly 64 hex digits as 32 bytes (a SHA-256 digest or chain hash).
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    (s.len() == 64 && decode_hex("hash", s, &mut out).ok()? == 32).then_some(out)
}

/// Decodes pairs of hex digits into `out`, returning the number of bytes written.
pub(crate) fn decode_hex(kind: &'static str, s: &str, out: &mut [u8]) -> Result<usize, IdError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if !b.len().is_multiple_of(2) {
        return Err(IdError::BadHex { kind, pos: b.len() });
    }
    if b.len() / 2 > out.len() {
        return Err(IdError::TooLong {
            kind,
            len: b.len() / 2,
            max: out.len(),
        });
    }
    let nibble = |pos: usize| -> Result<u8, IdError> {
        (b[pos] as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or(IdError::BadHex { kind, pos })
    };
    for (i, o) in out.iter_mut().take(b.len() / 2).enumerate() {
        *o = nibble(2 * i)? << 4 | nibble(2 * i + 1)?;
    }
    Ok(b.len() / 2)
}

/// A certificate reference: the issuing CA's key identifier (which names the CA generation,
/// since all generations share one DN) and the serial number. The serial is kept without
/// leading zero bytes, so `00 85` and `85` (the same positive INTEGER) are one reference.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertRef {
    ca: Inline<CA_KEY_ID_LEN_MAX>,
    serial: Inline<SERIAL_LEN_MAX>,
}

impl CertRef {
    /// Builds a reference from the CA key identifier and the serial's big-endian bytes.
    pub fn new(ca_key_id: &[u8], serial: &[u8]) -> Result<Self, IdError> {
        let ca = Inline::new("CA key identifier", ca_key_id)?;
        let first = serial
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(serial.len().saturating_sub(1));
        let serial = Inline::new("certificate serial", &serial[first.min(serial.len())..])?;
        Ok(Self { ca, serial })
    }

    /// Parses the text form `<CA key id hex>:<serial hex>`.
    pub fn parse_text(s: &str) -> Result<Self, IdError> {
        let (ca_hex, serial_hex) = s.split_once(':').ok_or(IdError::CertRefForm)?;
        let mut ca = [0u8; CA_KEY_ID_LEN_MAX];
        let ca_len = decode_hex("CA key identifier", ca_hex, &mut ca)?;
        // A serial may carry a sign byte beyond 20 octets of magnitude; allow one extra.
        let mut serial = [0u8; SERIAL_LEN_MAX + 1];
        let serial_len = decode_hex("certificate serial", serial_hex, &mut serial)?;
        Self::new(&ca[..ca_len], &serial[..serial_len])
    }

    /// The CA key identifier.
    pub fn ca_key_id(&self) -> &[u8] {
        self.ca.as_slice()
    }

    /// The serial, big-endian, without leading zero bytes.
    pub fn serial(&self) -> &[u8] {
        self.serial.as_slice()
    }
}

impl fmt::Display for CertRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, self.ca_key_id())?;
        f.write_str(":")?;
        write_hex(f, self.serial())
    }
}

impl fmt::Debug for CertRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertRef({self})")
    }
}

/// A point in time: whole seconds since the Unix epoch, held in 32 bits as the store records it
/// (good until 2106-02-07). Callers pass it explicitly; the engine core never reads a clock.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Timestamp(u32);

impl Timestamp {
    /// Builds a timestamp, refusing values the store cannot hold.
    pub fn from_unix_secs(secs: u64) -> Result<Self, IdError> {
        u32::try_from(secs)
            .map(Self)
            .map_err(|_| IdError::TimeRange {
                secs,
                max: u64::from(u32::MAX),
            })
    }

    /// Seconds since the Unix epoch.
    pub fn unix_secs(self) -> u64 {
        u64::from(self.0)
    }

    pub(crate) fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    pub(crate) fn raw(self) -> u32 {
        self.0
    }

    /// This time plus `secs`, saturating at the largest representable time.
    pub fn plus_secs(self, secs: u64) -> Self {
        Self(u32::try_from(self.unix_secs().saturating_add(secs)).unwrap_or(u32::MAX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Civil date from days since the epoch (Howard Hinnant's algorithm), UTC.
        let secs = self.unix_secs();
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_digest_in_hex_reads_back_and_anything_else_is_refused() {
        let d = [0xA5u8; 32];
        let s = format!("{:x}", Hex(&d));
        assert_eq!(parse_hex32(&s), Some(d));
        assert_eq!(parse_hex32(&s.to_uppercase()), Some(d));
        assert_eq!(parse_hex32(&s[1..]), None);
        assert_eq!(parse_hex32(&s[2..]), None);
        assert_eq!(parse_hex32(&s.replace('a', "g")), None);
        assert_eq!(parse_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(parse_hex(""), Some(vec![]));
        assert_eq!(parse_hex("abc"), None);
    }

    #[test]
    fn hex_is_uppercase_by_default_and_lowercase_on_request() {
        assert_eq!(Hex(&[0x0a, 0xbc, 0x00]).to_string(), "0ABC00");
        assert_eq!(format!("{:x}", Hex(&[0x0a, 0xbc, 0x00])), "0abc00");
        assert_eq!(Hex(&[]).to_string(), "");
    }

    use super::*;

    #[test]
    fn mykey_id_rules() {
        assert!(MyKeyId::parse(b"1C2410DF79DGEL").is_ok());
        assert_eq!(
            MyKeyId::parse(b"1C2410DF79DGE"),
            Err(IdError::MyKeyIdLength { len: 13 })
        );
        assert_eq!(
            MyKeyId::parse(b"1C2410DF79DGELX"),
            Err(IdError::MyKeyIdLength { len: 15 })
        );
        assert_eq!(
            MyKeyId::parse(b"1C2410dF79DGEL"),
            Err(IdError::MyKeyIdChar { pos: 6, byte: b'd' })
        );
        // Multi-byte UTF-8 of the right byte length is still refused by character.
        assert!(matches!(
            MyKeyId::parse("ＡBCDEFGHIJKL".as_bytes()),
            Err(IdError::MyKeyIdChar { pos: 0, .. })
        ));
    }

    #[test]
    fn provider_and_service_rules() {
        let p = ProviderId::parse("A-α1-0001".as_bytes()).expect("valid");
        assert_eq!(p.as_str(), "A-α1-0001");
        assert_eq!(
            ProviderId::parse(b""),
            Err(IdError::Empty {
                kind: "service provider ID"
            })
        );
        assert!(matches!(
            ProviderId::parse(&[b'a'; 33]),
            Err(IdError::TooLong {
                len: 33,
                max: 32,
                ..
            })
        ));
        assert!(ProviderId::parse(&[b'a'; 32]).is_ok());
        assert!(matches!(
            ProviderId::parse(&[0xff, 0x41]),
            Err(IdError::NotUtf8 { pos: 0, .. })
        ));
        assert!(matches!(
            ProviderId::parse(b"A\n1"),
            Err(IdError::ControlChar { pos: 1, .. })
        ));
        assert!(ServiceId::parse(&[0u8; 64]).is_ok());
        assert!(matches!(
            ServiceId::parse(&[0u8; 65]),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(ServiceId::parse(b"").is_err());
    }

    #[test]
    fn cert_ref_normalises_serial_and_round_trips() {
        let a = CertRef::new(&[0xAB; 20], &[0, 0x85]).expect("valid");
        let b = CertRef::new(&[0xAB; 20], &[0x85]).expect("valid");
        assert_eq!(a, b);
        let text = a.to_string();
        assert_eq!(CertRef::parse_text(&text), Ok(a));
        assert_eq!(CertRef::parse_text("AB"), Err(IdError::CertRefForm));
        assert!(matches!(
            CertRef::parse_text("AB:1"),
            Err(IdError::BadHex { .. })
        ));
        assert!(matches!(
            CertRef::new(&[1], &[1; 21]),
            Err(IdError::TooLong { max: 20, .. })
        ));
        // A zero serial stays one byte long rather than becoming empty.
        assert_eq!(CertRef::new(&[1], &[0, 0]).expect("valid").serial(), &[0]);
    }

    #[test]
    fn timestamp_display_and_range() {
        let t = Timestamp::from_unix_secs(1_764_089_569).expect("fits");
        assert_eq!(t.to_string(), "2025-11-25T16:52:49Z");
        assert!(Timestamp::from_unix_secs(1 << 32).is_err());
        assert_eq!(t.plus_secs(u64::MAX).raw(), u32::MAX);
    }
}
