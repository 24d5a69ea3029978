//! The `mykey/1` codec of `engine/PROTOCOL.md`: frame headers, every request body and every
//! response body, typed both ways. The server, the client, the load generator and the tests all
//! encode and decode through it, so each byte of the protocol is written down once.
//!
//! Sans-IO: it turns bytes into typed values and back, and never touches a socket, the clock,
//! the store or the registry. What a domain refusal means as a status is the server's mapping,
//! not the codec's.
//!
//! Decoding borrows from the input and allocates nothing on the request path (certificates,
//! CRLs and batched IDs stay slices of the frame). Every length is checked against a named
//! limit before it is used, and bytes from the network never panic: every malformed input is a
//! [`WireError`] carrying the status to answer with.
//!
//! `codes` holds the opcode and status tables, `request` the request bodies, `response` the
//! response bodies (the streamed `EXPORT` included); this file the limits, the frame headers
//! and the field primitives they share.

mod codes;
mod request;
mod response;

pub use codes::{Op, Status};
pub use request::{
    ForwardedClient, IdList, Request, encode_forward, encode_wrapped, id_list_bytes,
};
pub use response::{
    Answers, BatchFrame, Counted, ExportDecoder, ExportStep, ExportedLink, Refused, Response,
    StatList, begin_export, error_response, export_chunk, export_end, split_seq, stats_frame,
    wrap_answer,
};

use crate::id::{IdError, MYKEY_ID_LEN, MyKeyId, ProviderId, ServiceId};
use crate::jpki::CardProof;

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
/// Concurrent requests (streams) per connection, at most.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Concurrent requests a connection is granted at first. QUIC keeps state for every stream
/// the peer may open (quinn ~70 bytes per allowed stream, allocated at once), so a grant of
/// 256 cost every idle counter terminal ~17 KiB; a connection that uses all of its grant is
/// granted four times as many, up to [`STREAMS_PER_CONNECTION_MAX`].
pub const STREAMS_GRANTED_FIRST: u32 = 16;
/// Most providers a forwarded client's identity carries (a certificate naming more is refused
/// at its handshake).
pub const FORWARD_PROVIDERS_MAX: usize = 256;
/// The most a `FORWARD` body holds beyond the request frame it carries: role, name,
/// fingerprint, providers, flags, and the frame's header.
pub const FORWARD_OVERHEAD_MAX: u32 = (1
    + 1
    + 255
    + 32
    + 2
    + FORWARD_PROVIDERS_MAX * (1 + crate::id::PROVIDER_ID_LEN_MAX)
    + 1
    + HEADER_LEN) as u32;

// Counts travel as u16.
const _: () = assert!(BATCH_MAX <= u16::MAX as usize);
const _: () = assert!(EXPORT_CHUNK_MAX <= u16::MAX as usize);
const _: () = assert!(RESPONSE_LEN_MAX < STREAMED && PUSH_LEN_MAX < STREAMED);

/// A request or response that cannot be served as sent, with the status to answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}", status = status.name())]
#[non_exhaustive]
pub struct WireError {
    /// The status to answer with.
    pub status: Status,
    /// Why, for a human.
    pub message: String,
}

impl WireError {
    /// A refusal with `status`, explained by `message`.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A `BAD_FRAME` refusal.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(Status::BadFrame, message)
    }
}

impl From<IdError> for WireError {
    fn from(e: IdError) -> Self {
        Self::new(Status::BadId, e.to_string())
    }
}

/// Reads a request header: the operation and its body length, checked against its limit. On a
/// refusal, also the opcode byte to echo in the answer.
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
    let op = Op::from_u8(h[1]).ok_or_else(|| {
        (
            h[1],
            WireError::new(
                Status::UnknownOpcode,
                format!("unknown opcode 0x{:02x}", h[1]),
            ),
        )
    })?;
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

/// The header of a request frame for opcode byte `op` with a body of `len` bytes (any byte and
/// any length: tests build refused frames with it too).
pub fn request_header_bytes(op: u8, len: u32) -> [u8; HEADER_LEN] {
    let l = len.to_le_bytes();
    [VERSION, op, 0, 0, l[0], l[1], l[2], l[3]]
}

/// A response header as a client reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The status byte (a client may meet a status newer than its build).
    pub status: u8,
    /// The opcode byte the answer is for.
    pub op: u8,
    /// The body length, or [`STREAMED`].
    pub len: u32,
}

impl ResponseHeader {
    /// Reads a response header; refused if it is of another version or its reserved byte is
    /// set, or a non-streamed body is over [`RESPONSE_LEN_MAX`].
    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        if h[0] != VERSION {
            return Err(WireError::new(
                Status::UnsupportedVersion,
                format!("a response of protocol version {}", h[0]),
            ));
        }
        if h[3] != 0 {
            return Err(WireError::bad(
                "a response's reserved header byte is not zero",
            ));
        }
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len != STREAMED && len > RESPONSE_LEN_MAX {
            return Err(WireError::new(
                Status::FrameTooLarge,
                format!("a response body of {len} bytes; at most {RESPONSE_LEN_MAX}"),
            ));
        }
        Ok(Self {
            status: h[1],
            op: h[2],
            len,
        })
    }

    /// Whether the status is `OK`.
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok as u8
    }
}

/// Splits a whole response frame into its header and body, checking that the body is exactly
/// as long as the header says.
pub fn split_response(frame: &[u8]) -> Result<(ResponseHeader, &[u8]), WireError> {
    let h: &[u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| WireError::bad("a response shorter than its header"))?;
    let header = ResponseHeader::decode(h)?;
    let body = &frame[HEADER_LEN..];
    if header.len == STREAMED || body.len() != header.len as usize {
        return Err(WireError::bad(
            "a response length that does not match its header",
        ));
    }
    Ok((header, body))
}

/// Starts a response frame in `out` (cleared first), its body length to be filled in by
/// [`end_response`].
fn begin_response(out: &mut Vec<u8>, op: u8, status: Status) {
    out.clear();
    out.extend_from_slice(&[VERSION, status as u8, op, 0, 0, 0, 0, 0]);
}

/// Fills in the body length of a response begun by [`begin_response`].
fn end_response(out: &mut [u8]) {
    let len = (out.len().saturating_sub(HEADER_LEN)) as u32;
    if let Some(h) = out.get_mut(4..8) {
        h.copy_from_slice(&len.to_le_bytes());
    }
}

/// A bounds-checked reader over a body.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self, what: &str) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(WireError::bad(format!("{what} flag {b}, not 0 or 1"))),
        }
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bytes8(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn bytes16(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn bytes32(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()?;
        self.take(n as usize)
    }

    fn id(&mut self) -> Result<MyKeyId, WireError> {
        Ok(MyKeyId::parse(self.take(MYKEY_ID_LEN)?)?)
    }

    fn provider(&mut self) -> Result<ProviderId, WireError> {
        Ok(ProviderId::parse(self.bytes8()?)?)
    }

    fn service(&mut self) -> Result<ServiceId, WireError> {
        Ok(ServiceId::parse(self.bytes8()?)?)
    }

    fn card(&mut self) -> Result<CardProof<'a>, WireError> {
        Ok(CardProof {
            cert_der: self.bytes16()?,
            challenge: self.bytes8()?,
            signature: self.bytes16()?,
        })
    }

    /// The bytes not read yet, all of them.
    fn rest(&mut self) -> &'a [u8] {
        let r = &self.b[self.at..];
        self.at = self.b.len();
        r
    }

    fn finish(&self) -> Result<(), WireError> {
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

/// Appends `v` as `bytes16`; `None` if it is longer than 65,535 bytes.
fn put_bytes16(out: &mut Vec<u8>, v: &[u8]) -> Option<()> {
    out.extend_from_slice(&u16::try_from(v.len()).ok()?.to_le_bytes());
    out.extend_from_slice(v);
    Some(())
}

/// Appends `v` as `bytes32`.
fn put_bytes32(out: &mut Vec<u8>, v: &[u8]) -> Option<()> {
    out.extend_from_slice(&u32::try_from(v.len()).ok()?.to_le_bytes());
    out.extend_from_slice(v);
    Some(())
}

/// Appends a service ID (at most 64 bytes, so it always fits `bytes8`).
fn put_service(out: &mut Vec<u8>, s: &ServiceId) {
    out.push(s.as_bytes().len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn put_card(out: &mut Vec<u8>, c: &CardProof<'_>) -> Option<()> {
    put_bytes16(out, c.cert_der)?;
    put_bytes8(out, c.challenge)?;
    put_bytes16(out, c.signature)
}

const _: () = assert!(crate::id::SERVICE_ID_LEN_MAX <= u8::MAX as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{PushId, ServiceId};

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
                    || cut == 0
                        && matches!(req, Request::Challenge | Request::Stats | Request::Pipeline)
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
    fn a_list_built_from_parsed_ids_is_the_list_read_from_their_bytes() {
        let ids = [
            id("1C2410DF79DGEL"),
            id("ABCDEFGHIJKLMN"),
            id("1C2410DF79DGEL"),
        ];
        let bytes = id_list_bytes(&ids);
        assert_eq!(bytes.len(), ids.len() * crate::id::MYKEY_ID_LEN);
        let read = IdList::from_bytes(&bytes).expect("ids");
        // The buffer is cleared first, whatever it held.
        let mut buf = b"leftover".to_vec();
        let built = IdList::from_ids(&ids, &mut buf);
        assert_eq!(built.len(), read.len());
        assert_eq!(
            built.iter().collect::<Vec<_>>(),
            read.iter().collect::<Vec<_>>()
        );
        assert_eq!(built.iter().collect::<Vec<_>>(), ids);
        assert_eq!(IdList::from_ids(&[], &mut buf).len(), 0);
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
            Request::Pipeline,
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
        let spec = include_str!("../../PROTOCOL.md");
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
            statuses.len() > 40 && ops.len() == 21,
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
        assert_eq!(names.len(), 48 + 21);
    }
}
