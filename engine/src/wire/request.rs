//! The request bodies of `mykey/1` (`engine/PROTOCOL.md`, "Operations"): one [`Request`]
//! variant per operation, decoded from a frame's body without copying and encoded into a whole
//! frame. Owns the byte layout of every request; never checks who may send one.

use super::{
    BATCH_MAX, FORWARD_PROVIDERS_MAX, HEADER_LEN, Op, Reader, Status, WireError, put_bytes8,
    put_bytes32, put_card, put_service, request_header_bytes,
};
use crate::id::{MYKEY_ID_LEN, MyKeyId, ProviderId, PushId, ServiceId};
use crate::jpki::CardProof;

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
    /// `PIPELINE`: the stream carries lookups after it, each answered in turn.
    Pipeline,
    /// `REGISTER_PROVIDER`.
    RegisterProvider {
        /// The provider.
        provider: ProviderId,
    },
    /// `WITH_SEQ`: one write ([`Op::seq_wrappable_write`]), its body decoded on its own.
    WithSeq {
        /// The wrapped write.
        op: Op,
        /// Its body.
        body: &'a [u8],
    },
    /// `FORWARD` (or `FORWARD_PUSH`, `push`): a client's write passed on by a cluster node,
    /// with who sent it.
    Forward {
        /// A `FORWARD_PUSH`: the frame is a revocation push.
        push: bool,
        /// The client the write came from.
        client: ForwardedClient<'a>,
        /// The client's whole request frame (header and body), not decoded yet.
        frame: &'a [u8],
    },
    /// `AT_SEQ`: one read ([`Op::seq_wrappable_read`]) served once the node holds `seq`.
    AtSeq {
        /// The seq the node must have applied.
        seq: u64,
        /// How long the node may wait for it, in milliseconds (the server caps it).
        wait_ms: u16,
        /// The wrapped read.
        op: Op,
        /// Its body.
        body: &'a [u8],
    },
}

/// Who a forwarded write came from, as the forwarding node authenticated it.
#[derive(Clone, Copy, Debug)]
pub struct ForwardedClient<'a> {
    /// The client's role, by its code (engine/PROTOCOL.md, `FORWARD`).
    pub role: u8,
    /// The client certificate's subject CN.
    pub name: &'a str,
    /// SHA-256 of the client certificate.
    pub fingerprint: [u8; 32],
    /// The providers it acts for: `count` × `provider`, each checked when decoded.
    providers: &'a [u8],
    count: u16,
    /// The forwarding node checked the card's challenge against this client and consumed it.
    pub challenge_taken: bool,
}

impl<'a> ForwardedClient<'a> {
    /// A client to forward; `providers` as they are, at most [`FORWARD_PROVIDERS_MAX`].
    pub fn encode_parts(
        role: u8,
        name: &str,
        fingerprint: [u8; 32],
        providers: &[ProviderId],
        challenge_taken: bool,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        out.push(role);
        let mut cut = name.len().min(255);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        put_bytes8(out, &name.as_bytes()[..cut])?;
        out.extend_from_slice(&fingerprint);
        if providers.len() > FORWARD_PROVIDERS_MAX {
            return None;
        }
        out.extend_from_slice(&(providers.len() as u16).to_le_bytes());
        for p in providers {
            put_bytes8(out, p.as_bytes())?;
        }
        out.push(u8::from(challenge_taken));
        Some(())
    }

    /// The providers, in order.
    pub fn providers(&self) -> impl Iterator<Item = ProviderId> + 'a {
        let mut r = Reader::new(self.providers);
        (0..self.count).filter_map(move |_| r.provider().ok())
    }

    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let role = r.u8()?;
        let name = std::str::from_utf8(r.bytes8()?)
            .map_err(|_| WireError::bad("a forwarded client's name is not UTF-8"))?;
        let fingerprint = r.array::<32>()?;
        let count = r.u16()?;
        if usize::from(count) > FORWARD_PROVIDERS_MAX {
            return Err(WireError::bad(format!(
                "a forwarded client with {count} providers; at most {FORWARD_PROVIDERS_MAX}"
            )));
        }
        let start = r.at;
        for _ in 0..count {
            r.provider()?;
        }
        let providers = &r.b[start..r.at];
        let challenge_taken = r.flag("challenge taken")?;
        Ok(Self {
            role,
            name,
            fingerprint,
            providers,
            count,
            challenge_taken,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) -> Option<()> {
        out.push(self.role);
        put_bytes8(out, self.name.as_bytes())?;
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(self.providers);
        out.push(u8::from(self.challenge_taken));
        Some(())
    }
}

/// Appends a `FORWARD` frame (`FORWARD_PUSH` when `frame` is a revocation push): the client
/// (see [`ForwardedClient::encode_parts`]) and its whole request `frame`. `None` if a field
/// does not fit.
pub fn encode_forward(
    role: u8,
    name: &str,
    fingerprint: [u8; 32],
    providers: &[ProviderId],
    challenge_taken: bool,
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Option<()> {
    let start = out.len();
    let push = frame
        .get(1)
        .is_some_and(|&b| matches!(Op::from_u8(b), Some(Op::PushCrl | Op::PushSerials)));
    let op = if push { Op::ForwardPush } else { Op::Forward };
    out.extend_from_slice(&request_header_bytes(op as u8, 0));
    ForwardedClient::encode_parts(role, name, fingerprint, providers, challenge_taken, out)?;
    out.extend_from_slice(frame);
    let len = u32::try_from(out.len() - start - HEADER_LEN).ok()?;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    Some(())
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
            Request::Pipeline => Op::Pipeline,
            Request::RegisterProvider { .. } => Op::RegisterProvider,
            Request::WithSeq { .. } => Op::WithSeq,
            Request::AtSeq { .. } => Op::AtSeq,
            Request::Forward { push: false, .. } => Op::Forward,
            Request::Forward { push: true, .. } => Op::ForwardPush,
        }
    }

    /// The card this request presents, if it presents one.
    pub fn card(&self) -> Option<CardProof<'a>> {
        match *self {
            Request::LookupCard { card, .. }
            | Request::RegisterFull { card }
            | Request::RegisterProvisional { card, .. }
            | Request::Confirm { card, .. }
            | Request::Rebind { card, .. } => Some(card),
            _ => None,
        }
    }

    /// The request a wrapper carries, decoded (`None` for a request that is not a wrapper).
    pub fn wrapped(&self) -> Option<Result<Request<'a>, WireError>> {
        match *self {
            Request::WithSeq { op, body } | Request::AtSeq { op, body, .. } => {
                Some(Request::decode(op, body))
            }
            _ => None,
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
                let replace = r.flag("replace")?;
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
            Op::Pipeline => Request::Pipeline,
            Op::RegisterProvider => Request::RegisterProvider {
                provider: r.provider()?,
            },
            Op::WithSeq => {
                let op = wrapped_op(r.u8()?, Op::seq_wrappable_write, "WITH_SEQ", "a write")?;
                Request::WithSeq { op, body: r.rest() }
            }
            Op::Forward | Op::ForwardPush => {
                let client = ForwardedClient::decode(&mut r)?;
                let frame = r.rest();
                if frame.len() < HEADER_LEN {
                    return Err(WireError::bad(
                        "a FORWARD carries a whole request frame after the client",
                    ));
                }
                Request::Forward {
                    push: op == Op::ForwardPush,
                    client,
                    frame,
                }
            }
            Op::AtSeq => {
                let seq = r.u64()?;
                let wait_ms = r.u16()?;
                let op = wrapped_op(r.u8()?, Op::seq_wrappable_read, "AT_SEQ", "a read")?;
                Request::AtSeq {
                    seq,
                    wait_ms,
                    op,
                    body: r.rest(),
                }
            }
        };
        r.finish()?;
        Ok(req)
    }

    /// Appends the whole request frame (header and body) to `out`. `None` if a field does not
    /// fit its length prefix (a card certificate over 64 KiB, say).
    pub fn encode(&self, out: &mut Vec<u8>) -> Option<()> {
        let start = out.len();
        out.extend_from_slice(&request_header_bytes(self.op() as u8, 0));
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
            Request::Challenge | Request::Stats | Request::Pipeline => {}
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
                put_service(out, service);
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
            Request::WithSeq { op, body } => {
                out.push(*op as u8);
                out.extend_from_slice(body);
            }
            Request::Forward { client, frame, .. } => {
                client.encode(out)?;
                out.extend_from_slice(frame);
            }
            Request::AtSeq {
                seq,
                wait_ms,
                op,
                body,
            } => {
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&wait_ms.to_le_bytes());
                out.push(*op as u8);
                out.extend_from_slice(body);
            }
        }
        let len = u32::try_from(out.len() - start - HEADER_LEN).ok()?;
        out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
        Some(())
    }
}

/// The operation a wrapper names, if `allowed` lets `wrapper` carry it.
fn wrapped_op(b: u8, allowed: fn(Op) -> bool, wrapper: &str, what: &str) -> Result<Op, WireError> {
    match Op::from_u8(b) {
        Some(op) if allowed(op) => Ok(op),
        _ => Err(WireError::bad(format!(
            "{wrapper} wraps {what} (engine/PROTOCOL.md, \"Read-your-writes\"), not opcode 0x{b:02x}"
        ))),
    }
}

/// Appends the frame of `inner` wrapped in `WITH_SEQ` (`inner` a write it may wrap) or, with
/// `at = Some((seq, wait_ms))`, in `AT_SEQ` (`inner` a read it may wrap). `None` if a field does
/// not fit.
pub fn encode_wrapped(
    inner: &Request<'_>,
    at: Option<(u64, u16)>,
    out: &mut Vec<u8>,
) -> Option<()> {
    let mut frame = Vec::with_capacity(64);
    inner.encode(&mut frame)?;
    let body = &frame[HEADER_LEN..];
    let op = inner.op();
    match at {
        None => Request::WithSeq { op, body },
        Some((seq, wait_ms)) => Request::AtSeq {
            seq,
            wait_ms,
            op,
            body,
        },
    }
    .encode(out)
}

/// Builds the IDs of a batch request from parsed IDs (client side).
pub fn id_list_bytes(ids: &[MyKeyId]) -> Vec<u8> {
    let mut out = Vec::new();
    put_ids(ids, &mut out);
    out
}

/// `ids`' 14 bytes each into `out`, cleared first.
fn put_ids(ids: &[MyKeyId], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(ids.len() * MYKEY_ID_LEN);
    for id in ids {
        out.extend_from_slice(id.as_bytes());
    }
}

impl<'a> IdList<'a> {
    /// The list of `ids`, written into `buf`: well-formed because each is a parsed
    /// [`MyKeyId`], so not checked again as [`IdList::from_bytes`] checks bytes from outside.
    pub fn from_ids(ids: &[MyKeyId], buf: &'a mut Vec<u8>) -> Self {
        put_ids(ids, buf);
        Self(buf)
    }

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
