//! The response bodies of `mykey/1` (`engine/PROTOCOL.md`, "Responses"): the success body of
//! every operation as one [`Response`] variant, the refusal body ([`Refused`]), the streamed
//! `EXPORT` body (written by [`begin_export`], [`export_chunk`] and [`export_end`], read by the
//! sans-IO [`ExportDecoder`]) and the allocation-free builders the server answers batches and
//! statistics with ([`BatchFrame`], [`stats_frame`]).
//!
//! Owns the byte layout of every response, including the wire byte of an ID's state (which is
//! not its on-disk byte). Never decides what to answer.

use std::borrow::Cow;
use std::marker::PhantomData;

use super::{
    EXPORT_CHUNK_MAX, EXPORT_ROW_FIXED, HEADER_LEN, Op, Reader, STREAMED, Status, WireError,
    begin_response, end_response, put_bytes8, put_bytes16, put_service,
};
use crate::answer::{
    IdState, LinkOutcome, Lookup, ProviderOutcome, PushSummary, RevokeSummary, UnlinkOutcome,
};
use crate::id::{MYKEY_ID_LEN, MyKeyId, ServiceId, Timestamp};
use crate::jpki::{CHALLENGE_LEN, Challenge};

/// A decoded success body, borrowing from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// `LOOKUP`: the answer.
    Lookup(Lookup),
    /// `LOOKUP_BATCH`: the answers, in the order of the request's IDs.
    LookupBatch(Answers<'a>),
    /// `CHALLENGE`: the challenge and when it expires.
    Challenge(Challenge),
    /// `LOOKUP_CARD`: the ID bound to the card, if any, and the answer for the provider.
    LookupCard {
        /// The bound MyKey ID.
        id: Option<MyKeyId>,
        /// The answer.
        answer: Lookup,
    },
    /// `REGISTER_FULL`: the new MyKey ID.
    Registered(MyKeyId),
    /// `REGISTER_PROVISIONAL`, `CONFIRM`, `REBIND`, `DELETE`, `PIPELINE`: an empty body.
    Done,
    /// `LINK`: what the link did.
    Link(LinkOutcome),
    /// `UNLINK`: what the unlink did.
    Unlink(UnlinkOutcome),
    /// `PUSH_CRL`, `PUSH_SERIALS`: what the push did.
    Push(PushSummary),
    /// `STATS`: named counters.
    Stats(StatList<'a>),
    /// `REGISTER_PROVIDER`: what the registration did.
    RegisterProvider(ProviderOutcome),
}

impl<'a> Response<'a> {
    /// Whether this body is the success body of `op`.
    pub fn answers(&self, op: Op) -> bool {
        matches!(
            (self, op),
            (Response::Lookup(_), Op::Lookup)
                | (Response::LookupBatch(_), Op::LookupBatch)
                | (Response::Challenge(_), Op::Challenge)
                | (Response::LookupCard { .. }, Op::LookupCard)
                | (Response::Registered(_), Op::RegisterFull)
                | (
                    Response::Done,
                    Op::RegisterProvisional | Op::Confirm | Op::Rebind | Op::Delete | Op::Pipeline
                )
                | (Response::Link(_), Op::Link)
                | (Response::Unlink(_), Op::Unlink)
                | (Response::Push(_), Op::PushCrl | Op::PushSerials)
                | (Response::Stats(_), Op::Stats)
                | (Response::RegisterProvider(_), Op::RegisterProvider)
        )
    }

    /// Decodes the success body of `op`. `EXPORT`'s streamed body is read by
    /// [`ExportDecoder`] instead.
    pub fn decode(op: Op, body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let resp = match op {
            Op::Lookup => Response::Lookup(get_answer(&mut r)?),
            Op::LookupBatch => {
                let count = r.u16()?;
                let start = r.at;
                for _ in 0..count {
                    get_answer(&mut r)?;
                }
                Response::LookupBatch(Answers::new(count, &body[start..r.at]))
            }
            Op::Challenge => {
                let bytes = r.array::<CHALLENGE_LEN>()?;
                let expires_at = Timestamp::from_unix_secs(u64::from(r.u32()?))?;
                Response::Challenge(Challenge { bytes, expires_at })
            }
            Op::LookupCard => {
                let id = if r.flag("bound")? {
                    Some(r.id()?)
                } else {
                    None
                };
                Response::LookupCard {
                    id,
                    answer: get_answer(&mut r)?,
                }
            }
            Op::RegisterFull => Response::Registered(r.id()?),
            Op::RegisterProvisional | Op::Confirm | Op::Rebind | Op::Delete | Op::Pipeline => {
                Response::Done
            }
            Op::Link => Response::Link(match r.u8()? {
                0 => LinkOutcome::Linked,
                1 => LinkOutcome::AlreadyLinked,
                2 => LinkOutcome::Replaced {
                    previous: r.service()?,
                },
                k => return Err(WireError::bad(format!("link outcome {k}"))),
            }),
            Op::Unlink => Response::Unlink(match r.u8()? {
                0 => UnlinkOutcome::Unlinked,
                1 => UnlinkOutcome::NotLinked,
                k => return Err(WireError::bad(format!("unlink outcome {k}"))),
            }),
            Op::PushCrl | Op::PushSerials => {
                let entries = r.u64()?;
                let revoke = RevokeSummary {
                    newly_revoked: r.u64()?,
                    already_known: r.u64()?,
                    suspended: r.u64()?,
                };
                Response::Push(PushSummary {
                    revoke,
                    entries,
                    replayed: r.flag("replayed")?,
                })
            }
            Op::Stats => {
                let count = r.u16()?;
                let start = r.at;
                for _ in 0..count {
                    std::str::from_utf8(r.bytes8()?)
                        .map_err(|_| WireError::bad("a statistic's name is not UTF-8"))?;
                    r.u64()?;
                }
                Response::Stats(StatList::new(count, &body[start..r.at]))
            }
            Op::RegisterProvider => Response::RegisterProvider(match r.u8()? {
                0 => ProviderOutcome::Registered,
                1 => ProviderOutcome::AlreadyRegistered,
                k => return Err(WireError::bad(format!("register-provider outcome {k}"))),
            }),
            Op::Export => return Err(WireError::bad("an EXPORT body is streamed")),
            Op::WithSeq | Op::AtSeq | Op::Forward | Op::ForwardPush => {
                return Err(WireError::bad(
                    "a wrapper's answer is the wrapped operation's (see wire::wrapped_answer)",
                ));
            }
        };
        r.finish()?;
        Ok(resp)
    }

    /// Writes the whole success frame of `op` into `out` (cleared first).
    pub fn encode(&self, op: Op, out: &mut Vec<u8>) {
        debug_assert!(
            self.answers(op),
            "{self:?} is not an answer to {}",
            op.name()
        );
        begin_response(out, op as u8, Status::Ok);
        match self {
            Response::Lookup(l) => put_answer(out, l),
            Response::LookupBatch(a) => {
                out.extend_from_slice(&a.count.to_le_bytes());
                out.extend_from_slice(a.raw);
            }
            Response::Challenge(c) => {
                out.extend_from_slice(&c.bytes);
                out.extend_from_slice(&c.expires_at.raw().to_le_bytes());
            }
            Response::LookupCard { id, answer } => {
                match id {
                    Some(id) => {
                        out.push(1);
                        out.extend_from_slice(id.as_bytes());
                    }
                    None => out.push(0),
                }
                put_answer(out, answer);
            }
            Response::Registered(id) => out.extend_from_slice(id.as_bytes()),
            Response::Done => {}
            Response::Link(o) => match o {
                LinkOutcome::Linked => out.push(0),
                LinkOutcome::AlreadyLinked => out.push(1),
                LinkOutcome::Replaced { previous } => {
                    out.push(2);
                    put_service(out, previous);
                }
            },
            Response::Unlink(o) => out.push(match o {
                UnlinkOutcome::Unlinked => 0,
                UnlinkOutcome::NotLinked => 1,
            }),
            Response::Push(s) => {
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
            Response::Stats(s) => {
                out.extend_from_slice(&s.count.to_le_bytes());
                out.extend_from_slice(s.raw);
            }
            Response::RegisterProvider(o) => out.push(match o {
                ProviderOutcome::Registered => 0,
                ProviderOutcome::AlreadyRegistered => 1,
            }),
        }
        end_response(out);
    }
}

fn put_answer(out: &mut Vec<u8>, l: &Lookup) {
    match l {
        Lookup::Linked(s) => {
            out.push(0);
            put_service(out, s);
        }
        Lookup::NotLinked => out.push(1),
        Lookup::UnknownId => out.push(2),
        Lookup::Provisional => out.push(3),
        Lookup::Suspended => out.push(4),
        Lookup::Deleted => out.push(5),
    }
}

fn get_answer(r: &mut Reader<'_>) -> Result<Lookup, WireError> {
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

/// `count` items of a decoded body, checked well-formed when it was decoded and read lazily:
/// [`Answers`] and [`StatList`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted<'a, T> {
    count: u16,
    raw: &'a [u8],
    item: PhantomData<fn() -> T>,
}

impl<'a, T> Counted<'a, T> {
    fn new(count: u16, raw: &'a [u8]) -> Self {
        Self {
            count,
            raw,
            item: PhantomData,
        }
    }

    /// How many items.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The answers of a `LOOKUP_BATCH`.
pub type Answers<'a> = Counted<'a, Lookup>;

impl<'a> Answers<'a> {
    /// The answers, in order.
    pub fn iter(&self) -> impl Iterator<Item = Lookup> + 'a {
        let mut r = Reader::new(self.raw);
        (0..self.count).map_while(move |_| get_answer(&mut r).ok())
    }
}

/// A `LOOKUP_BATCH` success frame written answer by answer into a reused buffer, allocating
/// nothing once the buffer has grown: [`BatchFrame::begin`], one [`BatchFrame::push`] per ID in
/// request order, then [`BatchFrame::finish`].
pub struct BatchFrame<'o> {
    out: &'o mut Vec<u8>,
    count: u16,
    pushed: u16,
}

impl<'o> BatchFrame<'o> {
    /// Starts the frame in `out` (cleared first) for `count` answers.
    pub fn begin(out: &'o mut Vec<u8>, count: u16) -> Self {
        begin_response(out, Op::LookupBatch as u8, Status::Ok);
        out.extend_from_slice(&count.to_le_bytes());
        Self {
            out,
            count,
            pushed: 0,
        }
    }

    /// Appends the next answer.
    pub fn push(&mut self, l: &Lookup) {
        debug_assert!(
            self.pushed < self.count,
            "more answers than the batch's count"
        );
        self.pushed += 1;
        put_answer(self.out, l);
    }

    /// Finishes the frame; `false` (and the frame is not to be sent) if the number of answers
    /// pushed is not the count begun with.
    pub fn finish(self) -> bool {
        end_response(self.out);
        self.pushed == self.count
    }
}

/// The counters of a `STATS` answer: name and value.
pub type StatList<'a> = Counted<'a, (&'a str, u64)>;

impl<'a> StatList<'a> {
    /// The counters, in the server's order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        let mut r = Reader::new(self.raw);
        (0..self.count).map_while(move |_| {
            let name = std::str::from_utf8(r.bytes8().ok()?).ok()?;
            Some((name, r.u64().ok()?))
        })
    }
}

/// Writes a whole `STATS` success frame into `out` (cleared first). Names longer than 255
/// bytes, or counters past the 65,535th, are not sent.
pub fn stats_frame(out: &mut Vec<u8>, stats: &[(&str, u64)]) {
    begin_response(out, Op::Stats as u8, Status::Ok);
    let sent: Vec<_> = stats
        .iter()
        .filter(|(n, _)| n.len() <= usize::from(u8::MAX))
        .take(usize::from(u16::MAX))
        .collect();
    out.extend_from_slice(&(sent.len() as u16).to_le_bytes());
    for (name, v) in sent {
        let _ = put_bytes8(out, name.as_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    end_response(out);
}

/// A refusal body: the server's message and, for `LINK_CONFLICT`, the service ID linked now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused<'a> {
    /// Why, for a human (invalid UTF-8 replaced).
    pub message: Cow<'a, str>,
    /// For `LINK_CONFLICT`: the service ID linked now.
    pub existing: Option<ServiceId>,
}

impl<'a> Refused<'a> {
    /// Reads the refusal body of a response with `status`. Lenient, as a client must be with
    /// a server newer than itself: a body it cannot read gives an empty message.
    pub fn decode(status: u8, body: &'a [u8]) -> Self {
        let mut r = Reader::new(body);
        let message = r.bytes16().map(String::from_utf8_lossy).unwrap_or_default();
        let existing = if status == Status::LinkConflict as u8 {
            r.service().ok()
        } else {
            None
        };
        Self { message, existing }
    }
}

/// Turns the whole answer frame in `out` to a wrapped request into the wrapper's answer: the
/// opcode byte becomes `wrapper`'s, and a `WITH_SEQ` success body gains its leading `seq`.
pub fn wrap_answer(out: &mut Vec<u8>, wrapper: Op, seq: Option<u64>) {
    debug_assert!(out.len() >= HEADER_LEN, "no answer frame to wrap");
    if out.len() < HEADER_LEN {
        return;
    }
    out[2] = wrapper as u8;
    if let Some(seq) = seq
        && out[1] == Status::Ok as u8
    {
        let len = u32::from_le_bytes([out[4], out[5], out[6], out[7]]) + 8;
        out[4..8].copy_from_slice(&len.to_le_bytes());
        out.splice(HEADER_LEN..HEADER_LEN, seq.to_le_bytes());
    }
}

/// The `seq` and the wrapped write's own success body, from a `WITH_SEQ` success body.
pub fn split_seq(body: &[u8]) -> Result<(u64, &[u8]), WireError> {
    let mut r = Reader::new(body);
    let seq = r.u64()?;
    Ok((seq, &body[8..]))
}

/// Writes a whole refusal frame into `out` (cleared first): `status`, `message` (cut to 65,535
/// bytes on a character boundary) and, for `LINK_CONFLICT`, the existing service ID.
pub fn error_response(
    out: &mut Vec<u8>,
    op: u8,
    status: Status,
    message: &str,
    existing: Option<&ServiceId>,
) {
    debug_assert!(status != Status::Ok, "a refusal with status OK");
    begin_response(out, op, status);
    let mut m = message;
    let mut cut = m.len().min(usize::from(u16::MAX));
    while !m.is_char_boundary(cut) {
        cut -= 1;
    }
    m = &m[..cut];
    let _ = put_bytes16(out, m.as_bytes());
    if let Some(s) = existing {
        put_service(out, s);
    }
    end_response(out);
}

/// One row of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportedLink {
    /// The MyKey ID.
    pub id: MyKeyId,
    /// Its state.
    pub state: IdState,
    /// The provider's service ID.
    pub service: ServiceId,
}

/// The wire byte of an ID's state in an export row.
fn state_byte(s: IdState) -> u8 {
    match s {
        IdState::Active => 0,
        IdState::Provisional => 1,
        IdState::Suspended => 2,
        IdState::Deleted => 3,
    }
}

fn state_from_byte(b: u8) -> Result<IdState, WireError> {
    Ok(match b {
        0 => IdState::Active,
        1 => IdState::Provisional,
        2 => IdState::Suspended,
        3 => IdState::Deleted,
        s => return Err(WireError::bad(format!("export row state {s}"))),
    })
}

/// Starts a streamed `EXPORT` success frame in `out` (cleared first): its header, whose body
/// length is [`STREAMED`].
pub fn begin_export(out: &mut Vec<u8>) {
    begin_response(out, Op::Export as u8, Status::Ok);
    out[4..HEADER_LEN].copy_from_slice(&STREAMED.to_le_bytes());
}

/// Appends one chunk of at most [`EXPORT_CHUNK_MAX`] rows (more are refused by the caller's
/// chunking: this panics in debug builds).
pub fn export_chunk(out: &mut Vec<u8>, rows: &[ExportedLink]) {
    debug_assert!(!rows.is_empty() && rows.len() <= EXPORT_CHUNK_MAX);
    out.extend_from_slice(&(rows.len() as u16).to_le_bytes());
    for r in rows {
        out.extend_from_slice(r.id.as_bytes());
        out.push(state_byte(r.state));
        put_service(out, &r.service);
    }
}

/// Appends the end of an export: an empty chunk, then the total number of rows.
pub fn export_end(out: &mut Vec<u8>, total: u64) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
}

/// What the next bytes of a streamed export gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportStep {
    /// Read on: nothing to hand out yet.
    More,
    /// A row.
    Row(ExportedLink),
    /// The end; the total matched the rows read.
    End(u64),
}

#[derive(Clone, Copy, Debug)]
enum ExportAt {
    Count,
    RowHead {
        left: u16,
    },
    Service {
        left: u16,
        id: MyKeyId,
        state: IdState,
        len: usize,
    },
    Total,
    Done,
}

/// Reads a streamed `EXPORT` body after its header, sans-IO: [`ExportDecoder::need`] says how
/// many bytes to read next, [`ExportDecoder::step`] takes exactly those bytes.
#[derive(Clone, Debug)]
pub struct ExportDecoder {
    at: ExportAt,
    rows: u64,
}

impl Default for ExportDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ExportDecoder {
    /// A decoder at the first chunk.
    pub fn new() -> Self {
        Self {
            at: ExportAt::Count,
            rows: 0,
        }
    }

    /// How many bytes the next [`ExportDecoder::step`] takes (at most 264; 0 once ended).
    pub fn need(&self) -> usize {
        match self.at {
            ExportAt::Count => 2,
            ExportAt::RowHead { .. } => EXPORT_ROW_FIXED,
            ExportAt::Service { len, .. } => len,
            ExportAt::Total => 8,
            ExportAt::Done => 0,
        }
    }

    /// Takes the next [`ExportDecoder::need`] bytes.
    pub fn step(&mut self, b: &[u8]) -> Result<ExportStep, WireError> {
        if b.len() != self.need() {
            return Err(WireError::bad(
                "an export step given the wrong number of bytes",
            ));
        }
        let mut r = Reader::new(b);
        let step = match self.at {
            ExportAt::Count => {
                let n = r.u16()?;
                if usize::from(n) > EXPORT_CHUNK_MAX {
                    return Err(WireError::bad(format!(
                        "an export chunk of {n} rows; at most {EXPORT_CHUNK_MAX}"
                    )));
                }
                self.at = if n == 0 {
                    ExportAt::Total
                } else {
                    ExportAt::RowHead { left: n }
                };
                ExportStep::More
            }
            ExportAt::RowHead { left } => {
                let id = r.id()?;
                let state = state_from_byte(r.u8()?)?;
                let len = usize::from(r.u8()?);
                self.at = ExportAt::Service {
                    left,
                    id,
                    state,
                    len,
                };
                ExportStep::More
            }
            ExportAt::Service {
                left, id, state, ..
            } => {
                let service = ServiceId::parse(b)?;
                r.take(b.len())?;
                self.rows += 1;
                self.at = if left > 1 {
                    ExportAt::RowHead { left: left - 1 }
                } else {
                    ExportAt::Count
                };
                ExportStep::Row(ExportedLink { id, state, service })
            }
            ExportAt::Total => {
                let total = r.u64()?;
                if total != self.rows {
                    return Err(WireError::bad(format!(
                        "the export's total {total} differs from the {} rows received",
                        self.rows
                    )));
                }
                self.at = ExportAt::Done;
                ExportStep::End(total)
            }
            ExportAt::Done => return Err(WireError::bad("bytes after the export's end")),
        };
        r.finish()?;
        Ok(step)
    }
}

const _: () = assert!(MYKEY_ID_LEN + 2 == EXPORT_ROW_FIXED);
