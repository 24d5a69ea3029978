//! The sans-IO request handler: from a request's bytes and the identity of the certificate
//! that sent it to the whole response frame, synchronously, without a socket. The QUIC stream
//! task (`stream`) calls it, and so do tests that need no network.
//!
//! Owns the order of the checks every request passes, each made once: the header (version,
//! opcode, length) and the role in [`admit`], before any body is buffered; then in
//! [`handle_body`] the body decoded once, the counter's providers, a card's challenge owner,
//! and the registry call; and the mapping from domain refusals to statuses ([`refusal`]).
//! Also the read-your-writes wrappers: [`unwrap`] takes `WITH_SEQ` / `AT_SEQ` off a request
//! and checks what it carries against the role, [`behind`] says whether a node holds a seq,
//! and [`handle_unwrapped`] answers in the wrapper's frame (the stream task does the waiting).
//! Owns no limits, timeouts or threads (those are the stream task's), and never writes a byte
//! of the protocol itself: `wire` encodes every answer.

use crate::answer::Lookup;
use crate::id::{ActorId, MyKeyId, ProviderId, ServiceId, Timestamp};
use crate::jpki::JpkiError;
use crate::registry::{CardWrite, RegistryError};
use crate::store::StoreError;
use crate::wire::{self, BatchFrame, HEADER_LEN, Op, Request, Response, Status, WireError};

use super::{Identity, Role, Service};

/// The message of `NO_WRITER`.
pub const NO_WRITER_MESSAGE: &str = "this node is a cluster follower and does not take writes; nothing was applied; send the write to the cluster's writer (see /readyz or mykey_cluster_role), or retry once a writer is elected";
/// The message of `OUTCOME_UNKNOWN`.
pub const OUTCOME_UNKNOWN_MESSAGE: &str = "the write may or may not have been applied (the store's log did not confirm it); retry the same request to learn its outcome";
/// The message of `INTERNAL` for a storage failure other than a read-only store.
pub const STORE_FAILED_MESSAGE: &str = "the store failed (details in the server's log); this request applied nothing, except that a revocation push split over several changes may have applied its first part: retry it with the same push id";

/// A request header that passed [`admit`]: its version, opcode and length are served, and the
/// certificate's role may run the operation. Only [`admit`] makes one, so a body never reaches
/// [`handle_body`] without its role checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    op: Op,
    len: u32,
}

impl Admitted {
    /// The operation.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The body length the header announced.
    pub fn body_len(&self) -> u32 {
        self.len
    }
}

/// A request refused before its body was read: the opcode byte to echo and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The opcode byte of the request (echoed in the answer, even when unknown).
    pub op: u8,
    /// The status and message.
    pub error: WireError,
}

impl Rejected {
    /// Writes the refusal frame into `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        wire::error_response(out, self.op, self.error.status, &self.error.message, None);
    }
}

/// The longest an `AT_SEQ` read waits for its node to reach the seq it asks for.
pub const AT_SEQ_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(2000);

/// What a wrapper (`WITH_SEQ`, `AT_SEQ`) asks of the request it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrapper {
    /// Answer the write with the seq at which it is visible.
    WithSeq,
    /// Serve the read once the node has applied `seq`, waiting at most `wait`.
    AtSeq {
        /// The seq asked for.
        seq: u64,
        /// How long to wait for it (at most [`AT_SEQ_WAIT_MAX`]).
        wait: std::time::Duration,
    },
}

impl Wrapper {
    fn op(self) -> Op {
        match self {
            Wrapper::WithSeq => Op::WithSeq,
            Wrapper::AtSeq { .. } => Op::AtSeq,
        }
    }
}

/// An admitted request with its wrapper taken off: the request to run (its header checked
/// against the role like any other) and where its body starts in the frame's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unwrapped {
    /// The wrapper, if the request came in one.
    pub wrapper: Option<Wrapper>,
    /// The request to run.
    pub inner: Admitted,
    /// Where its body starts in the body that was read.
    pub body_at: usize,
}

/// Takes the wrapper off an admitted request whose whole `body` was read, checking the
/// wrapped operation against the role; a request in no wrapper comes back as it is.
pub fn unwrap(ident: &Identity, admitted: Admitted, body: &[u8]) -> Result<Unwrapped, Rejected> {
    let bare = Unwrapped {
        wrapper: None,
        inner: admitted,
        body_at: 0,
    };
    let rejected = |error| Rejected {
        op: admitted.op as u8,
        error,
    };
    if !matches!(admitted.op, Op::WithSeq | Op::AtSeq) {
        return Ok(bare);
    }
    let (wrapper, op, inner) = match Request::decode(admitted.op, body).map_err(rejected)? {
        Request::WithSeq { op, body } => (Wrapper::WithSeq, op, body),
        Request::AtSeq {
            seq,
            wait_ms,
            op,
            body,
        } => {
            let wait = std::time::Duration::from_millis(u64::from(wait_ms)).min(AT_SEQ_WAIT_MAX);
            (Wrapper::AtSeq { seq, wait }, op, body)
        }
        _ => return Ok(bare),
    };
    if !ident.role.may(op) {
        return Err(rejected(forbidden(format!(
            "a {} certificate may not run {}",
            ident.role.name(),
            op.name()
        ))));
    }
    Ok(Unwrapped {
        wrapper: Some(wrapper),
        inner: Admitted {
            op,
            len: inner.len() as u32,
        },
        body_at: body.len() - inner.len(),
    })
}

/// Before a follower forwards a write to the writer: consumes the challenge of the card the
/// write presents (checked against `ident`, as the write would have been here), so that it is
/// used once in the cluster; returns whether there was one. A refusal is the client's answer.
pub fn take_challenge_to_forward(
    service: &Service,
    ident: &Identity,
    now: Timestamp,
    u: &Unwrapped,
    body: &[u8],
) -> Result<bool, WireError> {
    let req = Request::decode(u.inner.op, &body[u.body_at..])?;
    let Some(card) = req.card() else {
        return Ok(false);
    };
    service
        .jpki
        .take_challenge(now, card.challenge, &ident.fingerprint)
        .map_err(|e| refusal(&RegistryError::from(e)))?;
    Ok(true)
}

/// `BEHIND` for an `AT_SEQ` read asking for `seq` on a node that has not applied it after
/// waiting `waited`; `None` once it has.
pub fn behind(service: &Service, seq: u64, waited: std::time::Duration) -> Option<WireError> {
    let at = service.registry.store().durable_seq();
    (at < seq).then(|| {
        WireError::new(
            Status::Behind,
            format!(
                "this node has applied seq {at}, not yet the {seq} asked for, after waiting {} ms; nothing was read; retry, or ask another node",
                waited.as_millis()
            ),
        )
    })
}

/// What [`handle_body`] left in its output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// A whole response frame with this status (`OK` or a refusal).
    Answered(Status),
    /// An authorised `EXPORT` of this provider: nothing is written; the transport streams the
    /// rows (see [`export_rows`]).
    Export(ProviderId),
}

/// Checks a request header against what is served and against the certificate's role. Nothing
/// of a request its certificate may not make is ever buffered.
pub fn admit(ident: &Identity, header: &[u8; HEADER_LEN]) -> Result<Admitted, Rejected> {
    let (op, len) = wire::request_header(header).map_err(|(op, error)| Rejected { op, error })?;
    if !ident.role.may(op) {
        return Err(Rejected {
            op: op as u8,
            error: forbidden(format!(
                "a {} certificate may not run {}",
                ident.role.name(),
                op.name()
            )),
        });
    }
    Ok(Admitted { op, len })
}

/// Handles one whole request frame (header and body) from `ident` at `now`, writing the
/// response frame into `out`. The QUIC task runs the same two steps ([`admit`] when the header
/// arrives, [`handle_body`] when the body has), with its limits and deadlines between them.
pub fn handle(
    service: &Service,
    ident: &Identity,
    now: Timestamp,
    request: &[u8],
    out: &mut Vec<u8>,
) -> Handled {
    let (admitted, u) = match admit_frame(ident, request, out) {
        Ok(a) => a,
        Err(h) => return h,
    };
    let body = &request[HEADER_LEN..];
    // Without a socket there is nothing to wait on: a node behind answers at once.
    if let Some(Wrapper::AtSeq { seq, .. }) = u.wrapper
        && let Some(e) = behind(service, seq, std::time::Duration::ZERO)
    {
        wire::error_response(out, admitted.op as u8, e.status, &e.message, None);
        return Handled::Answered(e.status);
    }
    handle_unwrapped(service, ident, now, &u, body, out)
}

/// Admits a whole request `frame` (header and body) from `ident` and takes its wrapper off;
/// a refusal is written into `out` and comes back as what was handled.
fn admit_frame(
    ident: &Identity,
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Result<(Admitted, Unwrapped), Handled> {
    let mut refused = |op: u8, e: &WireError| {
        wire::error_response(out, op, e.status, &e.message, None);
        Handled::Answered(e.status)
    };
    let Some(header) = frame.get(..HEADER_LEN).and_then(|h| h.try_into().ok()) else {
        return Err(refused(
            0,
            &WireError::bad("the stream ended inside the frame header"),
        ));
    };
    let admitted = admit(ident, header).map_err(|r| refused(r.op, &r.error))?;
    let body = &frame[HEADER_LEN..];
    if body.len() != admitted.len as usize {
        let e = WireError::bad(format!(
            "the stream does not hold exactly one {}-byte body",
            admitted.len
        ));
        return Err(refused(admitted.op as u8, &e));
    }
    let u = unwrap(ident, admitted, body).map_err(|r| refused(r.op, &r.error))?;
    Ok((admitted, u))
}

/// Runs an unwrapped request (see [`unwrap`]; an `AT_SEQ` read once its seq is applied) and
/// writes the answer frame, the wrapper's if it came in one, into `out`.
pub fn handle_unwrapped(
    service: &Service,
    ident: &Identity,
    now: Timestamp,
    u: &Unwrapped,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Handled {
    let h = handle_body(service, ident, now, u.inner, &body[u.body_at..], out);
    if let Some(w) = u.wrapper {
        // Read after the write returned: its change is durable and visible by this seq.
        let seq = (w == Wrapper::WithSeq).then(|| service.registry.store().durable_seq());
        wire::wrap_answer(out, w.op(), seq);
    }
    h
}

/// Handles the body of an admitted request: decodes it (once), checks the counter's
/// providers, runs it, and writes the response frame into `out`.
pub fn handle_body(
    service: &Service,
    ident: &Identity,
    now: Timestamp,
    admitted: Admitted,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Handled {
    let op = admitted.op;
    if matches!(op, Op::Forward | Op::ForwardPush) {
        return handle_forward(service, now, op, body, out);
    }
    let result = Request::decode(op, body)
        .map_err(Refusal::from)
        .and_then(|req| {
            authorise_providers(ident, &req)?;
            if let Request::Export { provider } = req {
                return Ok(Some(provider));
            }
            execute(service, ident, now, &req, out).map(|()| None)
        });
    match result {
        Ok(None) => Handled::Answered(Status::Ok),
        Ok(Some(provider)) => Handled::Export(provider),
        Err(Refusal(e, existing)) => {
            wire::error_response(out, op as u8, e.status, &e.message, existing.as_ref());
            Handled::Answered(e.status)
        }
    }
}

/// Runs a write another node forwarded (`FORWARD`, admitted for a `node` certificate only) as
/// the client it names: its header admitted for that client's role, its wrapper taken off,
/// a challenge the forwarding node consumed adopted, and the answer written as the client's
/// own frame (its opcode, not `FORWARD`'s), for the node to relay unchanged. A `FORWARD` that
/// cannot be read is answered in a `FORWARD` frame.
fn handle_forward(
    service: &Service,
    now: Timestamp,
    op: Op,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Handled {
    let refuse = |out: &mut Vec<u8>, e: WireError| {
        wire::error_response(out, op as u8, e.status, &e.message, None);
        Handled::Answered(e.status)
    };
    let (client, frame) = match Request::decode(op, body) {
        Ok(Request::Forward { client, frame, .. }) => (client, frame),
        Ok(_) => return refuse(out, WireError::bad("not a FORWARD")),
        Err(e) => return refuse(out, e),
    };
    let Some(role) = Role::from_code(client.role).filter(|&r| r != Role::Node) else {
        return refuse(
            out,
            WireError::bad(format!("a forwarded client of role code {}", client.role)),
        );
    };
    let ident = Identity {
        role,
        providers: client.providers().collect(),
        name: client.name.to_owned(),
        fingerprint: client.fingerprint,
    };
    let (admitted, u) = match admit_frame(&ident, frame, out) {
        Ok(a) => a,
        Err(h) => return h,
    };
    // A FORWARD carries a write of a request's size, a FORWARD_PUSH a push.
    let carried = if op == Op::ForwardPush {
        matches!(admitted.op, Op::PushCrl | Op::PushSerials)
    } else {
        admitted.op.forwardable()
    };
    if !carried {
        return refuse(
            out,
            WireError::bad(format!(
                "{} does not carry {}",
                op.name(),
                admitted.op.name()
            )),
        );
    }
    let inner = &frame[HEADER_LEN..];
    if client.challenge_taken
        && let Some(card) = Request::decode(u.inner.op, &inner[u.body_at..])
            .ok()
            .and_then(|r| r.card())
    {
        service
            .jpki
            .adopt_challenge(now, card.challenge, ident.fingerprint);
    }
    handle_unwrapped(service, &ident, now, &u, inner, out)
}

fn forbidden(message: String) -> WireError {
    WireError::new(Status::Forbidden, message)
}

/// Checks that a counter acts only for the providers its certificate names.
fn authorise_providers(ident: &Identity, req: &Request<'_>) -> Result<(), WireError> {
    let provider = match req {
        Request::Lookup { provider, .. }
        | Request::LookupBatch { provider, .. }
        | Request::LookupCard { provider, .. }
        | Request::Link { provider, .. }
        | Request::Unlink { provider, .. }
        | Request::Export { provider } => Some(provider),
        _ => None,
    };
    if let Some(p) = provider
        && !ident.may_act_for(p)
    {
        return Err(forbidden(format!(
            "this certificate does not act for provider {p}"
        )));
    }
    Ok(())
}

/// A MyKey ID as logs may show it: the first 8 bytes of HMAC-SHA256 under a key drawn at
/// process start, in hex. The same ID gives the same tag within one process, so an operator
/// can follow it through the logs, and the ID itself never reaches them.
pub fn id_tag(id: &MyKeyId) -> String {
    use aws_lc_rs::hmac;
    use std::sync::OnceLock;
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        // Without the system's randomness the tags could be reversed (the clock is not a
        // secret), and logs would then carry MyKey IDs in effect: stop rather than log.
        hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            tracing::error!("no randomness for the log-tag key; stopping rather than logging MyKey IDs weakly hidden");
            std::process::abort()
        })
    });
    let tag = hmac::sign(key, id.as_bytes());
    crate::jpki::hex(&tag.as_ref()[..8])
}

/// The actor recorded in the audit trail: `<role>:<certificate CN>`, cut to 64 bytes; the
/// role alone if the CN cannot be part of an actor id.
fn actor(ident: &Identity) -> Result<ActorId, Refusal> {
    let name = format!("{}:{}", ident.role.name(), ident.name);
    let mut cut = name.len().min(crate::id::ACTOR_ID_LEN_MAX);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    ActorId::parse(&name.as_bytes()[..cut])
        .or_else(|_| ActorId::parse(ident.role.name().as_bytes()))
        .map_err(|e| Refusal::from(WireError::from(e)))
}

/// A refused request: its status and message, and for `LINK_CONFLICT` the existing service ID.
#[derive(Debug)]
struct Refusal(WireError, Option<ServiceId>);

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        Self(e, None)
    }
}

impl From<RegistryError> for Refusal {
    fn from(e: RegistryError) -> Self {
        let existing = match &e {
            RegistryError::LinkConflict { existing, .. } => Some(*existing),
            _ => None,
        };
        Refusal(refusal(&e), existing)
    }
}

impl From<JpkiError> for Refusal {
    fn from(e: JpkiError) -> Self {
        RegistryError::from(e).into()
    }
}

/// Runs a decoded, authorised request and writes the success frame into `out`.
fn execute(
    service: &Service,
    ident: &Identity,
    now: Timestamp,
    req: &Request<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let reg = &service.registry;
    let jpki = &service.jpki;
    // A card's challenge must come back over a connection of the certificate that asked.
    if let Some(card) = req.card() {
        jpki.check_challenge_owner(card.challenge, &ident.fingerprint)?;
    }
    let response = match *req {
        Request::Lookup { provider, id } => Response::Lookup(reg.lookup(now, &id, &provider)?),
        Request::LookupBatch { provider, ids } => {
            let p = reg.provider_ref(&provider)?;
            // Through the store's batched path, which overlaps the IDs' memory misses; the
            // answers go straight into the frame.
            let mut frame = BatchFrame::begin(out, ids.len() as u16);
            let mut failed = None;
            reg.lookup_batch_each(now, p, ids.iter(), |l: Result<Lookup, _>| match l {
                Ok(l) => frame.push(&l),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            })?;
            let whole = frame.finish();
            if let Some(e) = failed {
                return Err(e.into());
            }
            debug_assert!(whole, "a batch answered with fewer answers than IDs");
            return Ok(());
        }
        Request::Challenge => {
            Response::Challenge(jpki.issue_challenge_for(now, ident.fingerprint)?)
        }
        Request::LookupCard { provider, card } => {
            let l = reg.lookup_card(now, jpki, &card, &provider)?;
            Response::LookupCard {
                id: l.id,
                answer: l.lookup,
            }
        }
        Request::RegisterFull { card } => {
            let id = reg.register_card(now, actor(ident)?, jpki, &card)?;
            tracing::info!(id = %id_tag(&id), by = %ident.name, "full registration");
            Response::Registered(id)
        }
        Request::RegisterProvisional { id, card }
        | Request::Confirm { id, card }
        | Request::Rebind { id, card } => {
            let write = match req {
                Request::RegisterProvisional { .. } => CardWrite::RegisterProvisional,
                Request::Confirm { .. } => CardWrite::Confirm,
                _ => CardWrite::Rebind,
            };
            reg.with_card(write, now, actor(ident)?, jpki, id, &card)?;
            Response::Done
        }
        Request::Link {
            id,
            provider,
            service: svc,
            replace,
        } => Response::Link(reg.link(now, actor(ident)?, id, provider, svc, replace)?),
        Request::Unlink { id, provider } => {
            Response::Unlink(reg.unlink(now, actor(ident)?, id, provider)?)
        }
        Request::Delete { id } => {
            reg.delete(now, actor(ident)?, id)?;
            tracing::info!(id = %id_tag(&id), by = %ident.name, "deleted");
            Response::Done
        }
        Request::PushCrl { push, crl } => {
            Response::Push(reg.push_crl(now, actor(ident)?, jpki, push, crl)?)
        }
        Request::PushSerials { push, list } => {
            Response::Push(reg.push_serials(now, actor(ident)?, jpki, push, list)?)
        }
        // On its own (a stream holding nothing else) a PIPELINE is answered OK; the lookups
        // that follow it on a stream are the QUIC task's (`pipeline::serve_pipeline`).
        Request::Pipeline => Response::Done,
        Request::Stats => {
            wire::stats_frame(out, &stats(service));
            return Ok(());
        }
        Request::RegisterProvider { provider } => {
            Response::RegisterProvider(reg.register_provider(now, actor(ident)?, provider)?)
        }
        Request::Export { .. } => {
            return Err(WireError::new(Status::Internal, "EXPORT is streamed").into());
        }
        Request::WithSeq { .. } | Request::AtSeq { .. } | Request::Forward { .. } => {
            return Err(WireError::bad("a wrapper inside a wrapper").into());
        }
    };
    response.encode(req.op(), out);
    Ok(())
}

/// The `STATS` names and values.
pub fn stats(service: &Service) -> Vec<(&'static str, u64)> {
    let store = service.registry.store();
    let mut v = vec![
        ("durable_seq", store.durable_seq()),
        ("delta_keys", store.delta_keys() as u64),
        ("cached_leaves", service.jpki.cached_leaves() as u64),
    ];
    for t in store.stats() {
        let n = t.shard_entries.iter().sum::<u64>() + t.delta_keys as u64;
        v.push((t.name, n));
    }
    v
}

/// The rows of an authorised `EXPORT` (see [`Handled::Export`]); walks the whole table, so the
/// transport runs it off its async workers.
pub fn export_rows(
    service: &Service,
    provider: &ProviderId,
) -> Result<Vec<wire::ExportedLink>, WireError> {
    let mut rows = Vec::new();
    service
        .registry
        .export(provider, |r| {
            rows.push(wire::ExportedLink {
                id: r.id,
                state: r.state,
                service: r.service,
            })
        })
        .map_err(|e| refusal(&e))?;
    Ok(rows)
}

/// The status and message of a registry refusal. Messages never carry a MyKey ID.
pub fn refusal(e: &RegistryError) -> WireError {
    use RegistryError as R;
    let status = match e {
        R::Store(StoreError::OutcomeUnknown { .. }) => Status::OutcomeUnknown,
        R::Store(StoreError::NotWriter) => Status::NoWriter,
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
        R::Store(StoreError::NotWriter) => NO_WRITER_MESSAGE.to_owned(),
        R::Store(StoreError::Failed { .. }) => {
            "the store is read-only after a storage failure; this write was not applied; retry on another node"
                .to_owned()
        }
        R::Store(_) => STORE_FAILED_MESSAGE.to_owned(),
        e => e.to_string(),
    };
    WireError::new(status, message)
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

    #[test]
    fn id_tags_are_stable_distinct_and_hide_the_id() {
        let a = MyKeyId::parse(b"1C2410DF79DGEL").expect("id");
        let b = MyKeyId::parse(b"1C2410DF79DGEM").expect("id");
        assert_eq!(id_tag(&a), id_tag(&a));
        assert_ne!(id_tag(&a), id_tag(&b));
        assert_eq!(id_tag(&a).len(), 16);
        assert!(!id_tag(&a).to_uppercase().contains("1C2410"));
    }
}
