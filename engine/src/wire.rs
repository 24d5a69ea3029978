//! The `mykey/1` codec of `engine/PROTOCOL.md`: request and response frames, their bodies,
//! status codes, and the mapping from domain refusals to statuses. Sans-IO: it turns bytes into
//! typed values and back, and never touches a socket, the clock or the store.
//!
//! Decoding borrows from the input and allocates nothing on the request path (certificates,
//! CRLs and batched IDs stay slices of the frame). Every length is checked against a named
//! limit before it is used, and bytes from the network never panic: every malformed input is a
//! [`WireError`] carrying the status to answer with.

use crate::id::{IdError, MYKEY_ID_LEN, MyKeyId, ProviderId, PushId, ServiceId};
use crate::jpki::{CHALLENGE_LEN, CardProof, JpkiError};
use crate::registry::{LinkOutcome, Lookup, RegistryError};
use crate::store::StoreError;

/// The protocol version of every frame.
pub const VERSION: u8 = 1;
/// The ALPN a server and client agree on.
pub const ALPN: &[u8] = b"mykey/1";
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 8;
/// Largest request body, except revocation pushes.
pub const REQUEST_LEN_MAX: u32 = 64 * 1024;
/// Largest body of `PUSH_CRL` and `PUSH_SERIALS`: the largest CRL plus room for the push id.
pub const PUSH_LEN_MAX: u32 = crate::jpki::crl::CRL_LEN_MAX as u32 + 1024;
/// Largest response body, except `EXPORT`'s streamed one.
pub const RESPONSE_LEN_MAX: u32 = 1024 * 1024;
/// The body length of a streamed response ("until the end of the stream").
pub const STREAMED: u32 = u32::MAX;
/// Most IDs in one `LOOKUP_BATCH`.
pub const BATCH_MAX: usize = 1024;
/// Most rows in one `EXPORT` chunk.
pub const EXPORT_CHUNK_MAX: usize = 4096;
/// Bytes of an export row before its service ID: the MyKey ID, the state, the service length.
pub const EXPORT_ROW_FIXED: usize = MYKEY_ID_LEN + 2;
/// Concurrent requests (streams) per connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;

macro_rules! codes {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident = $n:literal => $s:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vdoc])* $v = $n,)*
        }

        impl $name {
            /// The value with this code.
            pub fn from_u8(b: u8) -> Option<Self> {
                match b {
                    $($n => Some(Self::$v),)*
                    _ => None,
                }
            }

            /// The name used in `engine/PROTOCOL.md`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$v => $s,)*
                }
            }
        }
    };
}

codes! {
    /// An operation.
    Op {
        /// One lookup.
        Lookup = 0x01 => "LOOKUP",
        /// Many lookups for one provider.
        LookupBatch = 0x02 => "LOOKUP_BATCH",
        /// A fresh challenge for a card to sign.
        Challenge = 0x03 => "CHALLENGE",
        /// A lookup for the ID bound to an authenticated card.
        LookupCard = 0x04 => "LOOKUP_CARD",
        /// Full registration with a card.
        RegisterFull = 0x05 => "REGISTER_FULL",
        /// Provisional registration of a chosen ID with a card.
        RegisterProvisional = 0x06 => "REGISTER_PROVISIONAL",
        /// Confirmation of a provisional ID with the card.
        Confirm = 0x07 => "CONFIRM",
        /// Link (or replace) a service ID.
        Link = 0x08 => "LINK",
        /// Unlink a service ID.
        Unlink = 0x09 => "UNLINK",
        /// Re-bind an ID to a new card.
        Rebind = 0x0A => "REBIND",
        /// Delete an ID.
        Delete = 0x0B => "DELETE",
        /// A partner's CRL.
        PushCrl = 0x0C => "PUSH_CRL",
        /// A partner's serial list.
        PushSerials = 0x0D => "PUSH_SERIALS",
        /// A provider's links, streamed.
        Export = 0x0E => "EXPORT",
        /// Server statistics.
        Stats = 0x0F => "STATS",
        /// Register a service provider.
        RegisterProvider = 0x10 => "REGISTER_PROVIDER",
    }
}

codes! {
    /// A response status.
    Status {
        /// Success.
        Ok = 0 => "OK",
        /// The frame or its body does not follow the protocol.
        BadFrame = 1 => "BAD_FRAME",
        /// A protocol version other than 1.
        UnsupportedVersion = 2 => "UNSUPPORTED_VERSION",
        /// An unknown opcode.
        UnknownOpcode = 3 => "UNKNOWN_OPCODE",
        /// A body over its limit.
        FrameTooLarge = 4 => "FRAME_TOO_LARGE",
        /// The certificate's role or providers do not allow this.
        Forbidden = 5 => "FORBIDDEN",
        /// This identity's request rate is over its limit.
        RateLimited = 6 => "RATE_LIMITED",
        /// Too many requests in flight.
        Busy = 7 => "BUSY",
        /// The server failed; the message says whether anything was applied.
        Internal = 8 => "INTERNAL",
        /// A malformed identifier.
        BadId = 9 => "BAD_ID",
        /// A write whose outcome the server cannot know (its log fsync failed or did not
        /// finish in time): it may or may not have been applied; retry the same request.
        OutcomeUnknown = 10 => "OUTCOME_UNKNOWN",
        /// The provider is not registered.
        UnknownProvider = 16 => "UNKNOWN_PROVIDER",
        /// The MyKey ID is held by another registration.
        IdTaken = 17 => "ID_TAKEN",
        /// The MyKey ID was deleted and is never issued again.
        IdDeleted = 18 => "ID_DELETED",
        /// The certificate is bound to another MyKey ID.
        CertBound = 19 => "CERT_BOUND",
        /// The certificate is revoked.
        CertRevoked = 20 => "CERT_REVOKED",
        /// No registration holds the MyKey ID.
        UnknownId = 21 => "UNKNOWN_ID",
        /// The ID's state does not allow this operation.
        WrongState = 22 => "WRONG_STATE",
        /// The provisional registration expired.
        ProvisionalExpired = 23 => "PROVISIONAL_EXPIRED",
        /// The card is not the one bound to the ID.
        CertMismatch = 24 => "CERT_MISMATCH",
        /// Another service ID is linked.
        LinkConflict = 25 => "LINK_CONFLICT",
        /// The ID holds the most links allowed.
        TooManyLinks = 26 => "TOO_MANY_LINKS",
        /// The card's certificate is not well-formed or too large.
        CertMalformed = 32 => "CERT_MALFORMED",
        /// The certificate or its CA expired.
        CertExpired = 33 => "CERT_EXPIRED",
        /// The certificate is not valid yet.
        CertNotYetValid = 34 => "CERT_NOT_YET_VALID",
        /// Not issued by a trusted JPKI user-authentication CA.
        UnknownIssuer = 35 => "UNKNOWN_ISSUER",
        /// A digital-signature certificate was offered.
        SignatureCertificate = 36 => "SIGNATURE_CERTIFICATE",
        /// The subject CN breaks the rule.
        BadCn = 37 => "BAD_CN",
        /// The key is not RSA 2048–8192.
        BadKey = 38 => "BAD_KEY",
        /// The chain is refused for another reason.
        ChainInvalid = 39 => "CHAIN_INVALID",
        /// The challenge was not issued by this server.
        ChallengeUnknown = 40 => "CHALLENGE_UNKNOWN",
        /// The challenge was used already.
        ChallengeReused = 41 => "CHALLENGE_REUSED",
        /// The challenge expired.
        ChallengeExpired = 42 => "CHALLENGE_EXPIRED",
        /// Too many outstanding challenges.
        TooManyChallenges = 43 => "TOO_MANY_CHALLENGES",
        /// The card's signature does not verify.
        BadSignature = 44 => "BAD_SIGNATURE",
        /// The card certificate's keyUsage does not allow digitalSignature.
        BadKeyUsage = 45 => "BAD_KEY_USAGE",
        /// The CRL is malformed or of a kind not accepted.
        CrlMalformed = 48 => "CRL_MALFORMED",
        /// The CRL's issuer is not a configured CA generation.
        CrlUnknownIssuer = 49 => "CRL_UNKNOWN_ISSUER",
        /// The CRL's signature does not verify.
        CrlBadSignature = 50 => "CRL_BAD_SIGNATURE",
        /// The CRL's thisUpdate is in the future.
        CrlNotYetValid = 51 => "CRL_NOT_YET_VALID",
        /// The CRL's nextUpdate has passed.
        CrlStale = 52 => "CRL_STALE",
        /// The CRL number is not above the last applied.
        CrlNotNewer = 53 => "CRL_NOT_NEWER",
        /// The CRL or serial list has too many entries.
        TooManyEntries = 54 => "TOO_MANY_ENTRIES",
        /// A serial-list line is malformed.
        SerialListMalformed = 55 => "SERIAL_LIST_MALFORMED",
        /// The serial list names an unconfigured CA.
        UnknownCa = 56 => "UNKNOWN_CA",
        /// The push id was used for different content.
        PushIdReused = 57 => "PUSH_ID_REUSED",
    }
}

impl Op {
    /// Largest request body of this operation.
    pub fn body_len_max(self) -> u32 {
        match self {
            Op::PushCrl | Op::PushSerials => PUSH_LEN_MAX,
            _ => REQUEST_LEN_MAX,
        }
    }
}

/// A request or response that cannot be served as sent, with the status to answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status:?}: {message}", status = status.name())]
pub struct WireError {
    /// The status to answer with.
    pub status: Status,
    /// Why, for a human.
    pub message: String,
}

impl WireError {
    fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(Status::BadFrame, message)
    }
}

impl From<IdError> for WireError {
    fn from(e: IdError) -> Self {
        Self::new(Status::BadId, e.to_string())
    }
}

/// Reads a request header: the operation and its body length, checked against its limit.
pub fn request_header(h: &[u8; HEADER_LEN]) -> Result<(Op, u32), (u8, WireError)> {
    if h[0] != VERSION {
        return Err((
            h[1],
            WireError::new(
                Status::UnsupportedVersion,
                format!(
                    "protocol version {} is not served; this server speaks 1",
                    h[0]
                ),
            ),
        ));
    }
    let op = Op::from_u8(h[1]).ok_or((
        h[1],
        WireError::new(
            Status::UnknownOpcode,
            format!("unknown opcode 0x{:02x}", h[1]),
        ),
    ))?;
    if h[2] != 0 || h[3] != 0 {
        return Err((h[1], WireError::bad("reserved header bytes are not zero")));
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len > op.body_len_max() {
        return Err((
            h[1],
            WireError::new(
                Status::FrameTooLarge,
                format!(
                    "{} body of {len} bytes; at most {}",
                    op.name(),
                    op.body_len_max()
                ),
            ),
        ));
    }
    Ok((op, len))
}

/// A bounds-checked reader over a body.
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let s = self
            .at
            .checked_add(n)
            .and_then(|end| self.b.get(self.at..end))
            .ok_or_else(|| {
                WireError::bad(format!("body ends inside a field at byte {}", self.at))
            })?;
        self.at += n;
        Ok(s)
    }

    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// `bytes8`.
    pub fn bytes8(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// `bytes16`.
    pub fn bytes16(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// `bytes32`.
    pub fn bytes32(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()?;
        self.take(n as usize)
    }

    /// An `id`.
    pub fn id(&mut self) -> Result<MyKeyId, WireError> {
        Ok(MyKeyId::parse(self.take(MYKEY_ID_LEN)?)?)
    }

    /// A `provider`.
    pub fn provider(&mut self) -> Result<ProviderId, WireError> {
        Ok(ProviderId::parse(self.bytes8()?)?)
    }

    /// A `service`.
    pub fn service(&mut self) -> Result<ServiceId, WireError> {
        Ok(ServiceId::parse(self.bytes8()?)?)
    }

    /// A `card`.
    pub fn card(&mut self) -> Result<CardProof<'a>, WireError> {
        Ok(CardProof {
            cert_der: self.bytes16()?,
            challenge: self.bytes8()?,
            signature: self.bytes16()?,
        })
    }

    /// Bytes not read yet.
    pub fn rest(&self) -> usize {
        self.b.len() - self.at
    }

    /// Checks that the body was read to its end.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.at != self.b.len() {
            return Err(WireError::bad(format!(
                "{} bytes after the last field",
                self.b.len() - self.at
            )));
        }
        Ok(())
    }
}

/// Appends `v` as `bytes8`; `None` if it is longer than 255 bytes.
fn put_bytes8(out: &mut Vec<u8>, v: &[u8]) -> Option<()> {
    out.push(u8::try_from(v.len()).ok()?);
    out.extend_from_slice(v);
    Some(())
}

fn put_bytes16(out: &mut Vec<u8>, v: &[u8]) -> Option<()> {
    out.extend_from_slice(&u16::try_from(v.len()).ok()?.to_le_bytes());
    out.extend_from_slice(v);
    Some(())
}

fn put_bytes32(out: &mut Vec<u8>, v: &[u8]) -> Option<()> {
    out.extend_from_slice(&u32::try_from(v.len()).ok()?.to_le_bytes());
    out.extend_from_slice(v);
    Some(())
}

fn put_card(out: &mut Vec<u8>, c: &CardProof<'_>) -> Option<()> {
    put_bytes16(out, c.cert_der)?;
    put_bytes8(out, c.challenge)?;
    put_bytes16(out, c.signature)
}

/// A decoded request, borrowing its bytes from the frame.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// `LOOKUP`.
    Lookup {
        /// The provider.
        provider: ProviderId,
        /// The MyKey ID.
        id: MyKeyId,
    },
    /// `LOOKUP_BATCH`.
    LookupBatch {
        /// The provider.
        provider: ProviderId,
        /// The IDs, checked well-formed.
        ids: IdList<'a>,
    },
    /// `CHALLENGE`.
    Challenge,
    /// `LOOKUP_CARD`.
    LookupCard {
        /// The provider.
        provider: ProviderId,
        /// The card.
        card: CardProof<'a>,
    },
    /// `REGISTER_FULL`.
    RegisterFull {
        /// The card.
        card: CardProof<'a>,
    },
    /// `REGISTER_PROVISIONAL`.
    RegisterProvisional {
        /// The chosen ID.
        id: MyKeyId,
        /// The card.
        card: CardProof<'a>,
    },
    /// `CONFIRM`.
    Confirm {
        /// The provisional ID.
        id: MyKeyId,
        /// The card.
        card: CardProof<'a>,
    },
    /// `LINK`.
    Link {
        /// The MyKey ID.
        id: MyKeyId,
        /// The provider.
        provider: ProviderId,
        /// The service ID.
        service: ServiceId,
        /// Whether a different service ID may be replaced.
        replace: bool,
    },
    /// `UNLINK`.
    Unlink {
        /// The MyKey ID.
        id: MyKeyId,
        /// The provider.
        provider: ProviderId,
    },
    /// `REBIND`.
    Rebind {
        /// The MyKey ID.
        id: MyKeyId,
        /// The holder's new card.
        card: CardProof<'a>,
    },
    /// `DELETE`.
    Delete {
        /// The MyKey ID.
        id: MyKeyId,
    },
    /// `PUSH_CRL`.
    PushCrl {
        /// The push id.
        push: PushId,
        /// The DER CRL.
        crl: &'a [u8],
    },
    /// `PUSH_SERIALS`.
    PushSerials {
        /// The push id.
        push: PushId,
        /// The serial list.
        list: &'a [u8],
    },
    /// `EXPORT`.
    Export {
        /// The provider.
        provider: ProviderId,
    },
    /// `STATS`.
    Stats,
    /// `REGISTER_PROVIDER`.
    RegisterProvider {
        /// The provider.
        provider: ProviderId,
    },
}

/// The IDs of a batch: `count` × 14 bytes, each checked well-formed when decoded.
#[derive(Clone, Copy, Debug)]
pub struct IdList<'a>(&'a [u8]);

impl<'a> IdList<'a> {
    /// How many IDs.
    pub fn len(&self) -> usize {
        self.0.len() / MYKEY_ID_LEN
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The IDs, in order.
    pub fn iter(&self) -> impl Iterator<Item = MyKeyId> + 'a {
        self.0
            .chunks_exact(MYKEY_ID_LEN)
            .filter_map(|c| MyKeyId::parse(c).ok())
    }
}

impl<'a> Request<'a> {
    /// The operation.
    pub fn op(&self) -> Op {
        match self {
            Request::Lookup { .. } => Op::Lookup,
            Request::LookupBatch { .. } => Op::LookupBatch,
            Request::Challenge => Op::Challenge,
            Request::LookupCard { .. } => Op::LookupCard,
            Request::RegisterFull { .. } => Op::RegisterFull,
            Request::RegisterProvisional { .. } => Op::RegisterProvisional,
            Request::Confirm { .. } => Op::Confirm,
            Request::Link { .. } => Op::Link,
            Request::Unlink { .. } => Op::Unlink,
            Request::Rebind { .. } => Op::Rebind,
            Request::Delete { .. } => Op::Delete,
            Request::PushCrl { .. } => Op::PushCrl,
            Request::PushSerials { .. } => Op::PushSerials,
            Request::Export { .. } => Op::Export,
            Request::Stats => Op::Stats,
            Request::RegisterProvider { .. } => Op::RegisterProvider,
        }
    }

    /// Decodes the body of `op`.
    pub fn decode(op: Op, body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let req = match op {
            Op::Lookup => Request::Lookup {
                provider: r.provider()?,
                id: r.id()?,
            },
            Op::LookupBatch => {
                let provider = r.provider()?;
                let count = usize::from(r.u16()?);
                if count == 0 || count > BATCH_MAX {
                    return Err(WireError::bad(format!(
                        "a batch holds 1 to {BATCH_MAX} IDs, not {count}"
                    )));
                }
                let raw = r.take(count * MYKEY_ID_LEN)?;
                for (i, c) in raw.chunks_exact(MYKEY_ID_LEN).enumerate() {
                    MyKeyId::parse(c).map_err(|e| {
                        WireError::new(Status::BadId, format!("ID {} of the batch: {e}", i + 1))
                    })?;
                }
                Request::LookupBatch {
                    provider,
                    ids: IdList(raw),
                }
            }
            Op::Challenge => Request::Challenge,
            Op::LookupCard => Request::LookupCard {
                provider: r.provider()?,
                card: r.card()?,
            },
            Op::RegisterFull => Request::RegisterFull { card: r.card()? },
            Op::RegisterProvisional => Request::RegisterProvisional {
                id: r.id()?,
                card: r.card()?,
            },
            Op::Confirm => Request::Confirm {
                id: r.id()?,
                card: r.card()?,
            },
            Op::Link => {
                let id = r.id()?;
                let provider = r.provider()?;
                let service = r.service()?;
                let replace = match r.u8()? {
                    0 => false,
                    1 => true,
                    b => return Err(WireError::bad(format!("replace flag {b}, not 0 or 1"))),
                };
                Request::Link {
                    id,
                    provider,
                    service,
                    replace,
                }
            }
            Op::Unlink => Request::Unlink {
                id: r.id()?,
                provider: r.provider()?,
            },
            Op::Rebind => Request::Rebind {
                id: r.id()?,
                card: r.card()?,
            },
            Op::Delete => Request::Delete { id: r.id()? },
            Op::PushCrl => Request::PushCrl {
                push: PushId::parse(r.bytes8()?)?,
                crl: r.bytes32()?,
            },
            Op::PushSerials => Request::PushSerials {
                push: PushId::parse(r.bytes8()?)?,
                list: r.bytes32()?,
            },
            Op::Export => Request::Export {
                provider: r.provider()?,
            },
            Op::Stats => Request::Stats,
            Op::RegisterProvider => Request::RegisterProvider {
                provider: r.provider()?,
            },
        };
        r.finish()?;
        Ok(req)
    }

    /// Appends the whole request frame (header and body) to `out`. `None` if a field does not
    /// fit its length prefix (a card certificate over 64 KiB, say).
    pub fn encode(&self, out: &mut Vec<u8>) -> Option<()> {
        let start = out.len();
        out.extend_from_slice(&[VERSION, self.op() as u8, 0, 0, 0, 0, 0, 0]);
        match self {
            Request::Lookup { provider, id } => {
                put_bytes8(out, provider.as_bytes())?;
                out.extend_from_slice(id.as_bytes());
            }
            Request::LookupBatch { provider, ids } => {
                put_bytes8(out, provider.as_bytes())?;
                out.extend_from_slice(&u16::try_from(ids.len()).ok()?.to_le_bytes());
                out.extend_from_slice(ids.0);
            }
            Request::Challenge | Request::Stats => {}
            Request::LookupCard { provider, card } => {
                put_bytes8(out, provider.as_bytes())?;
                put_card(out, card)?;
            }
            Request::RegisterFull { card } => put_card(out, card)?,
            Request::RegisterProvisional { id, card }
            | Request::Confirm { id, card }
            | Request::Rebind { id, card } => {
                out.extend_from_slice(id.as_bytes());
                put_card(out, card)?;
            }
            Request::Link {
                id,
                provider,
                service,
                replace,
            } => {
                out.extend_from_slice(id.as_bytes());
                put_bytes8(out, provider.as_bytes())?;
                put_bytes8(out, service.as_bytes())?;
                out.push(u8::from(*replace));
            }
            Request::Unlink { id, provider } => {
                out.extend_from_slice(id.as_bytes());
                put_bytes8(out, provider.as_bytes())?;
            }
            Request::Delete { id } => out.extend_from_slice(id.as_bytes()),
            Request::PushCrl { push, crl: body } | Request::PushSerials { push, list: body } => {
                put_bytes8(out, push.as_bytes())?;
                put_bytes32(out, body)?;
            }
            Request::Export { provider } | Request::RegisterProvider { provider } => {
                put_bytes8(out, provider.as_bytes())?;
            }
        }
        let len = u32::try_from(out.len() - start - HEADER_LEN).ok()?;
        out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
        Some(())
    }
}

/// Builds the IDs of a batch request from parsed IDs (client side).
pub fn id_list_bytes(ids: &[MyKeyId]) -> Vec<u8> {
    ids.iter()
        .flat_map(|i| i.as_bytes().iter().copied())
        .collect()
}

impl<'a> IdList<'a> {
    /// An ID list over `count` × 14 bytes of well-formed IDs (see [`id_list_bytes`]).
    pub fn from_bytes(b: &'a [u8]) -> Result<Self, WireError> {
        if !b.len().is_multiple_of(MYKEY_ID_LEN) {
            return Err(WireError::bad("an ID list is a multiple of 14 bytes"));
        }
        for c in b.chunks_exact(MYKEY_ID_LEN) {
            MyKeyId::parse(c)?;
        }
        Ok(Self(b))
    }
}

/// Starts a response frame in `out` (cleared first): header with the body length to fill in by
/// [`end_response`].
pub fn begin_response(out: &mut Vec<u8>, op: u8, status: Status) {
    out.clear();
    out.extend_from_slice(&[VERSION, status as u8, op, 0, 0, 0, 0, 0]);
}

/// Fills in the body length of a response begun by [`begin_response`].
pub fn end_response(out: &mut [u8]) {
    let len = (out.len().saturating_sub(HEADER_LEN)) as u32;
    if let Some(h) = out.get_mut(4..8) {
        h.copy_from_slice(&len.to_le_bytes());
    }
}

/// A whole error response: status, message and, for `LINK_CONFLICT`, the existing service.
pub fn error_response(out: &mut Vec<u8>, op: u8, e: &WireError, existing: Option<&ServiceId>) {
    begin_response(out, op, e.status);
    // Keep the message within text16 and on a character boundary.
    let mut m = e.message.as_str();
    while m.len() > usize::from(u16::MAX) {
        let mut cut = usize::from(u16::MAX);
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m = &m[..cut];
    }
    let _ = put_bytes16(out, m.as_bytes());
    if let Some(s) = existing {
        let _ = put_bytes8(out, s.as_bytes());
    }
    end_response(out);
}

/// Appends a lookup `answer`.
pub fn put_answer(out: &mut Vec<u8>, l: &Lookup) {
    match l {
        Lookup::Linked(s) => {
            out.push(0);
            let _ = put_bytes8(out, s.as_bytes());
        }
        Lookup::NotLinked => out.push(1),
        Lookup::UnknownId => out.push(2),
        Lookup::Provisional => out.push(3),
        Lookup::Suspended => out.push(4),
        Lookup::Deleted => out.push(5),
    }
}

/// Reads a lookup `answer`.
pub fn get_answer(r: &mut Reader<'_>) -> Result<Lookup, WireError> {
    Ok(match r.u8()? {
        0 => Lookup::Linked(r.service()?),
        1 => Lookup::NotLinked,
        2 => Lookup::UnknownId,
        3 => Lookup::Provisional,
        4 => Lookup::Suspended,
        5 => Lookup::Deleted,
        k => return Err(WireError::bad(format!("answer kind {k}"))),
    })
}

/// Appends a `link_outcome`.
pub fn put_link_outcome(out: &mut Vec<u8>, o: &LinkOutcome) {
    match o {
        LinkOutcome::Linked => out.push(0),
        LinkOutcome::AlreadyLinked => out.push(1),
        LinkOutcome::Replaced { previous } => {
            out.push(2);
            let _ = put_bytes8(out, previous.as_bytes());
        }
    }
}

/// Reads a `link_outcome`.
pub fn get_link_outcome(r: &mut Reader<'_>) -> Result<LinkOutcome, WireError> {
    Ok(match r.u8()? {
        0 => LinkOutcome::Linked,
        1 => LinkOutcome::AlreadyLinked,
        2 => LinkOutcome::Replaced {
            previous: r.service()?,
        },
        k => return Err(WireError::bad(format!("link outcome {k}"))),
    })
}

/// Appends a `push_summary`.
pub fn put_push_summary(out: &mut Vec<u8>, s: &crate::registry::PushSummary) {
    for n in [
        s.entries,
        s.revoke.newly_revoked,
        s.revoke.already_known,
        s.revoke.suspended,
    ] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.push(u8::from(s.replayed));
}

/// Reads a `push_summary`.
pub fn get_push_summary(r: &mut Reader<'_>) -> Result<crate::registry::PushSummary, WireError> {
    let entries = r.u64()?;
    let revoke = crate::registry::RevokeSummary {
        newly_revoked: r.u64()?,
        already_known: r.u64()?,
        suspended: r.u64()?,
    };
    let replayed = match r.u8()? {
        0 => false,
        1 => true,
        b => return Err(WireError::bad(format!("replayed flag {b}"))),
    };
    Ok(crate::registry::PushSummary {
        revoke,
        entries,
        replayed,
    })
}

/// Appends a challenge's success body.
pub fn put_challenge(out: &mut Vec<u8>, c: &crate::jpki::Challenge) {
    out.extend_from_slice(&c.bytes);
    out.extend_from_slice(&c.expires_at.raw().to_le_bytes());
}

/// Reads a challenge's success body.
pub fn get_challenge(r: &mut Reader<'_>) -> Result<crate::jpki::Challenge, WireError> {
    let mut bytes = [0u8; CHALLENGE_LEN];
    bytes.copy_from_slice(r.take(CHALLENGE_LEN)?);
    let expires_at = crate::id::Timestamp::from_unix_secs(u64::from(r.u32()?))?;
    Ok(crate::jpki::Challenge { bytes, expires_at })
}

/// The message of `OUTCOME_UNKNOWN`.
pub const OUTCOME_UNKNOWN_MESSAGE: &str = "the write may or may not have been applied (the store's log did not confirm it); retry the same request to learn its outcome";
/// The message of `INTERNAL` for a storage failure other than a read-only store.
pub const STORE_FAILED_MESSAGE: &str = "the store failed (details in the server's log); this request applied nothing, except that a revocation push split over several changes may have applied its first part: retry it with the same push id";

/// The status and message of a registry refusal. Messages never carry a MyKey ID.
pub fn refusal(e: &RegistryError) -> WireError {
    use RegistryError as R;
    let status = match e {
        R::Store(StoreError::OutcomeUnknown { .. }) => Status::OutcomeUnknown,
        R::Store(_) | R::BadRecord { .. } | R::DictionaryFull { .. } => Status::Internal,
        R::Id(_) => Status::BadId,
        R::UnknownProvider { .. } => Status::UnknownProvider,
        R::IdTaken { .. } => Status::IdTaken,
        R::IdDeleted => Status::IdDeleted,
        R::CertBound { .. } => Status::CertBound,
        R::CertRevoked { .. } => Status::CertRevoked,
        R::UnknownId => Status::UnknownId,
        R::WrongState { .. } => Status::WrongState,
        R::ProvisionalExpired { .. } => Status::ProvisionalExpired,
        R::CertMismatch => Status::CertMismatch,
        R::LinkConflict { .. } => Status::LinkConflict,
        R::TooManyLinks { .. } => Status::TooManyLinks,
        R::CrlNotNewer { .. } => Status::CrlNotNewer,
        R::PushIdReused { .. } => Status::PushIdReused,
        R::Jpki(j) => jpki_status(j),
    };
    // Storage details (files, OS errors) stay in the server's log.
    let message = match e {
        R::Store(StoreError::OutcomeUnknown { .. }) => OUTCOME_UNKNOWN_MESSAGE.to_owned(),
        R::Store(StoreError::Failed { .. }) => {
            "the store is read-only after a storage failure; this write was not applied; retry on another node"
                .to_owned()
        }
        R::Store(_) => STORE_FAILED_MESSAGE.to_owned(),
        e => e.to_string(),
    };
    WireError { status, message }
}

fn jpki_status(e: &JpkiError) -> Status {
    use JpkiError as J;
    match e {
        J::CertTooLarge { .. } | J::CertMalformed { .. } => Status::CertMalformed,
        J::SignatureCertificate => Status::SignatureCertificate,
        J::BadCn(_) => Status::BadCn,
        J::BadKey { .. } => Status::BadKey,
        J::KeyUsage { .. } => Status::BadKeyUsage,
        J::Expired { .. } => Status::CertExpired,
        J::NotYetValid { .. } => Status::CertNotYetValid,
        J::UnknownIssuer => Status::UnknownIssuer,
        J::Chain(_) => Status::ChainInvalid,
        J::ChallengeUnknown | J::ChallengeNotYours => Status::ChallengeUnknown,
        J::ChallengeReused => Status::ChallengeReused,
        J::ChallengeExpired { .. } => Status::ChallengeExpired,
        J::TooManyChallenges { .. } => Status::TooManyChallenges,
        J::BadSignature => Status::BadSignature,
        J::PushTooLarge { .. } => Status::FrameTooLarge,
        J::CrlMalformed { .. } => Status::CrlMalformed,
        J::CrlUnknownIssuer => Status::CrlUnknownIssuer,
        J::CrlBadSignature => Status::CrlBadSignature,
        J::CrlNotYetValid { .. } => Status::CrlNotYetValid,
        J::CrlStale { .. } => Status::CrlStale,
        J::TooManyEntries { .. } => Status::TooManyEntries,
        J::SerialList { .. } => Status::SerialListMalformed,
        J::UnknownCa { .. } => Status::UnknownCa,
        J::Id(_) => Status::BadId,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MyKeyId {
        MyKeyId::parse(s.as_bytes()).expect("id")
    }

    fn p(s: &str) -> ProviderId {
        ProviderId::parse(s.as_bytes()).expect("provider")
    }

    fn round_trip(req: Request<'_>) {
        let mut frame = Vec::new();
        req.encode(&mut frame).expect("encode");
        let h: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header");
        let (op, len) = request_header(&h).expect("header");
        assert_eq!(op, req.op());
        assert_eq!(len as usize, frame.len() - HEADER_LEN);
        let back = Request::decode(op, &frame[HEADER_LEN..]).expect("decode");
        let mut again = Vec::new();
        back.encode(&mut again).expect("encode");
        assert_eq!(frame, again, "{:?}", req.op());
        // Every truncation of the body is refused, never a panic.
        for cut in 0..frame.len() - HEADER_LEN {
            assert!(
                Request::decode(op, &frame[HEADER_LEN..HEADER_LEN + cut]).is_err()
                    || cut == 0 && matches!(req, Request::Challenge | Request::Stats)
            );
        }
        // A trailing byte is refused.
        let mut long = frame[HEADER_LEN..].to_vec();
        long.push(0);
        assert_eq!(
            Request::decode(op, &long).map(|_| ()).map_err(|e| e.status),
            Err(Status::BadFrame)
        );
    }

    #[test]
    fn every_request_round_trips_and_refuses_truncation() {
        let card = CardProof {
            cert_der: &[0x30, 1, 2],
            challenge: &[7; 32],
            signature: &[9; 256],
        };
        let ids = id_list_bytes(&[id("1C2410DF79DGEL"), id("ABCDEFGHIJKLMN")]);
        let svc = ServiceId::parse(b"CARD-1").expect("service");
        let push = PushId::parse(b"push-1").expect("push");
        for req in [
            Request::Lookup {
                provider: p("A-α1-0001"),
                id: id("1C2410DF79DGEL"),
            },
            Request::LookupBatch {
                provider: p("A"),
                ids: IdList::from_bytes(&ids).expect("ids"),
            },
            Request::Challenge,
            Request::LookupCard {
                provider: p("A"),
                card,
            },
            Request::RegisterFull { card },
            Request::RegisterProvisional {
                id: id("MYCHOSENID0001"),
                card,
            },
            Request::Confirm {
                id: id("MYCHOSENID0001"),
                card,
            },
            Request::Link {
                id: id("1C2410DF79DGEL"),
                provider: p("A"),
                service: svc,
                replace: true,
            },
            Request::Unlink {
                id: id("1C2410DF79DGEL"),
                provider: p("A"),
            },
            Request::Rebind {
                id: id("1C2410DF79DGEL"),
                card,
            },
            Request::Delete {
                id: id("1C2410DF79DGEL"),
            },
            Request::PushCrl {
                push,
                crl: &[0x30, 0],
            },
            Request::PushSerials {
                push,
                list: b"ca 01\n02\n",
            },
            Request::Export { provider: p("A") },
            Request::Stats,
            Request::RegisterProvider { provider: p("A") },
        ] {
            round_trip(req);
        }
    }

    #[test]
    fn headers_are_checked() {
        let ok = [1, 0x01, 0, 0, 10, 0, 0, 0];
        assert_eq!(
            request_header(&ok).map_err(|e| e.1.status),
            Ok((Op::Lookup, 10))
        );
        let st = |h: [u8; 8]| request_header(&h).map(|_| ()).map_err(|e| e.1.status);
        assert_eq!(
            st([2, 1, 0, 0, 0, 0, 0, 0]),
            Err(Status::UnsupportedVersion)
        );
        assert_eq!(st([1, 0x7f, 0, 0, 0, 0, 0, 0]), Err(Status::UnknownOpcode));
        assert_eq!(st([1, 1, 1, 0, 0, 0, 0, 0]), Err(Status::BadFrame));
        assert_eq!(st([1, 1, 0, 0, 0, 0, 1, 0]), Ok(()), "exactly the limit");
        assert_eq!(st([1, 1, 0, 0, 1, 0, 1, 0]), Err(Status::FrameTooLarge));
        // A push may be large; a lookup may not.
        assert_eq!(st([1, 0x0c, 0, 0, 0, 0, 0, 1]), Ok(()));
        assert_eq!(
            st([1, 0x0c, 0, 0, 0, 0, 0, 0x20]),
            Err(Status::FrameTooLarge)
        );
    }

    #[test]
    fn bad_bodies_get_their_status() {
        let st = |op, b: &[u8]| Request::decode(op, b).map(|_| ()).map_err(|e| e.status);
        // A malformed MyKey ID.
        let mut b = vec![1, b'A'];
        b.extend_from_slice(b"lowercase_id!!");
        assert_eq!(st(Op::Lookup, &b), Err(Status::BadId));
        // An empty or oversized batch.
        assert_eq!(st(Op::LookupBatch, &[1, b'A', 0, 0]), Err(Status::BadFrame));
        assert_eq!(
            st(Op::LookupBatch, &[1, b'A', 0x01, 0x04]),
            Err(Status::BadFrame)
        );
        // A replace flag other than 0 or 1.
        let mut l = b"1C2410DF79DGEL".to_vec();
        l.extend_from_slice(&[1, b'A', 1, b'S', 2]);
        assert_eq!(st(Op::Link, &l), Err(Status::BadFrame));
    }

    /// The status and opcode tables of PROTOCOL.md and the codec agree both ways: no code
    /// without a row, no row without a code, and each row's name is the code's.
    #[test]
    fn protocol_md_tables_match_the_codec() {
        let spec = include_str!("../PROTOCOL.md");
        let section = |title: &str| {
            let start = spec.find(title).unwrap_or_else(|| panic!("no {title}"));
            let rest = &spec[start + title.len()..];
            &rest[..rest.find("\n## ").unwrap_or(rest.len())]
        };
        let rows = |text: &str| -> Vec<(u8, String)> {
            text.lines()
                .filter_map(|l| {
                    let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                    let code = cells.get(1)?;
                    let code = match code.strip_prefix("0x") {
                        Some(hex) => u8::from_str_radix(hex, 16).ok()?,
                        None => code.parse().ok()?,
                    };
                    Some((code, cells.get(2)?.trim_matches('`').to_owned()))
                })
                .collect()
        };
        let statuses = rows(section("## Status codes"));
        let ops = rows(section("## Operations"));
        assert!(
            statuses.len() > 40 && ops.len() == 16,
            "{statuses:?} {ops:?}"
        );
        for (code, name) in &statuses {
            let s = Status::from_u8(*code)
                .unwrap_or_else(|| panic!("row {code} {name}: no such status"));
            assert_eq!(s.name(), name, "status {code}");
        }
        for (code, name) in &ops {
            let o = Op::from_u8(*code)
                .unwrap_or_else(|| panic!("row {code:#04x} {name}: no such opcode"));
            assert_eq!(o.name(), name, "opcode {code:#04x}");
        }
        for b in 0..=255u8 {
            if let Some(s) = Status::from_u8(b) {
                assert!(
                    statuses.iter().any(|(c, _)| *c == b),
                    "status {} has no row",
                    s.name()
                );
            }
            if let Some(o) = Op::from_u8(b) {
                assert!(
                    ops.iter().any(|(c, _)| *c == b),
                    "opcode {} has no row",
                    o.name()
                );
            }
        }
    }

    #[test]
    fn every_status_and_op_has_one_code_and_name() {
        let mut names = std::collections::HashSet::new();
        for b in 0..=255u8 {
            if let Some(s) = Status::from_u8(b) {
                assert_eq!(s as u8, b);
                assert!(names.insert(s.name()));
            }
            if let Some(o) = Op::from_u8(b) {
                assert_eq!(o as u8, b);
                assert!(names.insert(o.name()));
            }
        }
        assert_eq!(names.len(), 46 + 16);
    }
}
