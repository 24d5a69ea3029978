//! The QUIC side of serving: the accept loop (handshake rate, connection limit, the peer's
//! identity, its rate bucket) and one task per stream, which reads a request within its
//! deadline, applies the limits (push bodies, rate, read and write budgets), hands the bytes to
//! the sans-IO handler (`handler`), on the blocking pool when the work waits for an fsync or
//! RSA, and writes the answer, streaming an `EXPORT`. A stream that opens with `PIPELINE` is
//! acknowledged here and then served by `pipeline`. Counts every answer in the metrics.
//!
//! Owns sockets, deadlines and threads; never decides what a request means.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Endpoint, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;

use super::handler::{self, Handled};
use super::limits::{Bucket, Budget, Limits};
use super::{DRAIN_FLUSH, Identity, Service, admin, auth, system_clock};
use crate::id::ProviderId;
use crate::wire::{self, HEADER_LEN, Op, Status, WireError};

/// How often a push waiting on the store looks whether the store's log is stuck.
const PUSH_STUCK_POLL: Duration = Duration::from_millis(100);

/// The `status` label of an answer the peer cut off before it was delivered. Not a wire
/// status: nothing is sent.
pub const CUT_OFF: &str = "CUT_OFF";
/// Its key in the metric handles; no wire status has this code.
const CUT_OFF_CODE: u8 = 0xFF;

/// State shared by the accept loop and every stream.
pub(super) struct Shared {
    pub(super) service: Arc<Service>,
    /// Reads' budget. A permit taken for work on the blocking pool lives as long as that
    /// work, not as long as the request.
    pub(super) in_flight: Arc<Budget>,
    /// Writes' own budget.
    pub(super) writes_in_flight: Arc<Budget>,
    pub(super) limits: Limits,
    pub(super) draining: AtomicBool,
    /// Streams being served (from accept to the last byte of the answer), for the drain.
    pub(super) active: std::sync::atomic::AtomicUsize,
    pub(super) idle: tokio::sync::Notify,
    /// Rate buckets by client certificate fingerprint; an entry lives while a connection of
    /// that certificate or one of its streams does (`Peer`), so the map is bounded by the
    /// connection limit.
    pub(super) buckets: dashmap::DashMap<[u8; 32], Arc<Bucket>>,
    /// Metric handles, registered once per (operation, status) instead of per request.
    pub(super) meters: Meters,
    /// Requests per second per certificate; changed by a reload.
    pub(super) rate: std::sync::atomic::AtomicU32,
    /// Revocation-push bodies being received (each up to 256 MiB).
    pub(super) push_bodies: Budget,
    /// Where a cluster follower passes the writes it was sent.
    pub(super) forwarder: std::sync::OnceLock<Arc<super::forward::Forwarder>>,
    /// The node's connection limit, over all its endpoints.
    pub(super) connections: Arc<Budget>,
    /// The node's handshake rate, over all its endpoints.
    pub(super) handshakes: Bucket,
}

/// Metric handles, registered the first time an (operation, status) pair is seen and then
/// read with one atomic load per request (bounded: 256 opcodes × 256 statuses at most; a
/// table of statuses is allocated only for an opcode that was answered).
pub(super) struct Meters {
    requests: [OnceLock<Box<[OnceLock<metrics::Counter>]>>; 256],
    latency: [OnceLock<metrics::Histogram>; 256],
}

impl Default for Meters {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| OnceLock::new()),
            latency: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl Meters {
    /// Counts one answer: by its status, or as `CUT_OFF` when the peer went away before all of
    /// it was written (an export it stopped reading, say), which is not an answer delivered.
    pub(super) fn record(&self, op: u8, status: Status, delivered: bool, seconds: f64) {
        let (code, label) = if delivered {
            (status as u8, status.name())
        } else {
            (CUT_OFF_CODE, CUT_OFF)
        };
        let op_name = || Op::from_u8(op).map_or("UNKNOWN", Op::name);
        let statuses = self.requests[usize::from(op)]
            .get_or_init(|| (0..256).map(|_| OnceLock::new()).collect());
        statuses[usize::from(code)]
            .get_or_init(
                || metrics::counter!(admin::REQUESTS_TOTAL, "op" => op_name(), "status" => label),
            )
            .increment(1);
        self.latency[usize::from(op)]
            .get_or_init(|| metrics::histogram!(admin::REQUEST_SECONDS, "op" => op_name()))
            .record(seconds);
    }
}

pub(super) async fn accept_loop(endpoint: Endpoint, index: usize, shared: Arc<Shared>) {
    for reason in ["limit", "identity", "handshake_rate"] {
        metrics::counter!(admin::CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(0);
    }
    let on_endpoint = metrics::gauge!(admin::ENDPOINT_CONNECTIONS, "endpoint" => index.to_string());
    on_endpoint.set(0.0);
    while let Some(incoming) = endpoint.accept().await {
        let now = std::time::Instant::now();
        if !shared
            .handshakes
            .take(shared.limits.handshakes_per_second, now)
        {
            metrics::counter!(admin::CONNECTIONS_REFUSED_TOTAL, "reason" => "handshake_rate")
                .increment(1);
            incoming.refuse();
            continue;
        }
        let Some(permit) = Budget::try_take(shared.connections.clone()) else {
            metrics::counter!(admin::CONNECTIONS_REFUSED_TOTAL, "reason" => "limit").increment(1);
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let on_endpoint = on_endpoint.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(conn) = incoming.await else {
                return;
            };
            let ident = match peer_identity(&conn) {
                Ok(ident) => ident,
                Err(reason) => {
                    metrics::counter!(admin::CONNECTIONS_REFUSED_TOTAL, "reason" => "identity")
                        .increment(1);
                    tracing::warn!(%reason, code = reason.close_code(), "client certificate without a valid MyKey identity");
                    conn.close(
                        quinn::VarInt::from_u32(reason.close_code()),
                        reason.to_string().as_bytes(),
                    );
                    return;
                }
            };
            let bucket = shared.buckets.entry(ident.fingerprint).or_default().clone();
            let peer = Arc::new(Peer {
                shared: shared.clone(),
                ident,
                bucket,
            });
            let gauge = metrics::gauge!(admin::CONNECTIONS);
            gauge.increment(1.0);
            on_endpoint.increment(1.0);
            tracing::debug!(role = peer.ident.role.name(), name = %peer.ident.name, "connection");
            let mut grant = super::StreamGrant::default();
            while let Ok((send, recv)) = conn.accept_bi().await {
                let task = StreamTask::new(&peer, grant.accepted(&conn));
                tokio::spawn(serve_stream(task, send, recv));
            }
            gauge.decrement(1.0);
            on_endpoint.decrement(1.0);
        });
    }
}

fn peer_identity(conn: &quinn::Connection) -> Result<Identity, auth::IdentityError> {
    let certs = conn
        .peer_identity()
        .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(auth::IdentityError::NoCertificate)?;
    let leaf = certs.first().ok_or(auth::IdentityError::NoCertificate)?;
    auth::identity(leaf)
}

/// Writes a whole answer; false when the peer went away first (it cannot be answered, and the
/// metrics count it `CUT_OFF`). The stream is finished when [`serve_stream`] drops it, which
/// takes quinn's connection lock once for the FIN and the stream's cleanup together (a
/// `finish` first would take it once more for every request).
async fn respond(send: &mut SendStream, frame: &[u8]) -> bool {
    send.write_all(frame).await.is_ok()
}

/// What every stream of one connection shares: the server's state, the peer's identity and its
/// certificate's rate bucket. A stream's task holds one `Arc` of it, not one of each.
struct Peer {
    shared: Arc<Shared>,
    ident: Identity,
    bucket: Arc<Bucket>,
}

impl Drop for Peer {
    /// The last connection of a certificate (its last stream gone too) takes its bucket away;
    /// the map and this peer hold the only two references then. The map's shard lock makes
    /// this and another connection's taking of the same bucket one before the other.
    fn drop(&mut self) {
        self.shared
            .buckets
            .remove_if(&self.ident.fingerprint, |_, b| Arc::strong_count(b) == 2);
    }
}

/// What one stream's task holds: its connection's [`Peer`], and its place in the stream grant
/// and in the drain's count, given back when it ends.
struct StreamTask {
    peer: Arc<Peer>,
    _open: super::OpenStream,
}

impl StreamTask {
    fn new(peer: &Arc<Peer>, open: super::OpenStream) -> Self {
        peer.shared.active.fetch_add(1, Ordering::AcqRel);
        Self {
            peer: peer.clone(),
            _open: open,
        }
    }
}

impl Drop for StreamTask {
    fn drop(&mut self) {
        let shared = &self.peer.shared;
        if shared.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.idle.notify_waiters();
        }
    }
}

/// Serves one stream, from its first byte to its answer's metrics.
///
/// Every stream allocates this future, so it is kept under 1 KiB with its task (856 bytes on
/// 2026-12-08, a 1,024-byte task: the allocator's per-thread cache takes blocks up to 1,032):
/// a block, not an `async fn`, which would keep a second copy of its arguments; one await for
/// every refusal (`serve_request`); rare paths (forwarding, work on the blocking pool, an
/// export, waits for a seq and for the drain) boxed; chunks read on the stack of each poll.
#[allow(clippy::manual_async_fn)]
fn serve_stream(
    task: StreamTask,
    mut send: SendStream,
    mut recv: RecvStream,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let peer = &task.peer;
        let (shared, ident) = (&peer.shared, &peer.ident);
        let start = std::time::Instant::now();
        let (op, status, delivered) = serve_request(peer, &mut send, &mut recv, start).await;
        if shared.draining.load(Ordering::Acquire) {
            // While draining, a stream counts as active until its answer is delivered, so the
            // close that ends the drain cannot discard it.
            let _ = send.finish();
            let _ = tokio::time::timeout(DRAIN_FLUSH, Box::pin(send.stopped())).await;
        }
        // The answer's FIN goes out now, before the metrics are counted.
        drop(send);
        if !(op == Op::Pipeline as u8 && status == Status::Ok) {
            shared
                .meters
                .record(op, status, delivered, start.elapsed().as_secs_f64());
        }
        let op_name = Op::from_u8(op).map_or("UNKNOWN", Op::name);
        if matches!(Op::from_u8(op), Some(Op::PushCrl | Op::PushSerials)) {
            let outcome = if status == Status::Ok {
                "applied"
            } else {
                "refused"
            };
            metrics::counter!(admin::PUSHES_TOTAL, "op" => op_name, "outcome" => outcome)
                .increment(1);
            if status == Status::Ok {
                metrics::gauge!(admin::LAST_PUSH_SECONDS).set(system_clock().unix_secs() as f64);
            }
            tracing::info!(op = op_name, status = status.name(), actor = %ident.name, "revocation push");
        }
    }
}

/// Serves one stream accepted at `started` (the request's deadlines count from it); returns
/// the opcode byte, the status answered and whether the answer was delivered.
async fn serve_request(
    peer: &Arc<Peer>,
    send: &mut SendStream,
    recv: &mut RecvStream,
    started: std::time::Instant,
) -> (u8, Status, bool) {
    // Every refusal is answered at this one await, so the stream's future (which every stream
    // allocates) holds one refusal's state, not one per way of refusing.
    match answer_request(peer, send, recv, started).await {
        Ok(answered) => answered,
        Err((op, e)) => refuse(send, op, &e).await,
    }
}

/// A refusal: the opcode byte its answer echoes and the error it carries.
type Refused = (u8, WireError);

/// Reads, checks and answers one request; a refusal comes back unanswered, for
/// [`serve_request`] to send.
async fn answer_request(
    peer: &Arc<Peer>,
    send: &mut SendStream,
    recv: &mut RecvStream,
    started: std::time::Instant,
) -> Result<(u8, Status, bool), Refused> {
    let Peer {
        shared,
        ident,
        bucket,
    } = &**peer;
    let service = &shared.service;
    if shared.draining.load(Ordering::Acquire) {
        let _ = recv.stop(quinn::VarInt::from_u32(0));
        let e = WireError::new(
            Status::Busy,
            "the server is draining; retry on another node",
        );
        return Err((0, e));
    }
    // The whole request must arrive within its deadline, or the stream is answered and
    // dropped (which stops it), so a client cannot pin receive buffers by sending slowly.
    let arrived = started;
    let started = tokio::time::Instant::from_std(started);
    let late = |what: &str, limit: Duration| {
        WireError::bad(format!(
            "the {what} did not arrive within {} ms; send a request whole",
            limit.as_millis()
        ))
    };
    let read_timeout = shared.limits.read_timeout;
    let mut got = Received::default();
    while got.len() < HEADER_LEN {
        match arrived_by(started + read_timeout, got.read_more(recv)).await {
            Some(Ok(true)) => {}
            Some(_) => {
                let e = WireError::bad("the stream ended inside the frame header");
                return Err((0, e));
            }
            None => return Err((0, late("frame header", read_timeout))),
        }
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&got.bytes()[..HEADER_LEN]);
    // Nothing is buffered for a request its certificate may not make, and at most
    // PUSH_BODIES_MAX large push bodies are buffered at once.
    let admitted = match handler::admit(ident, &header) {
        Ok(a) => a,
        Err(r) => {
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            return Err((r.op, r.error));
        }
    };
    let op = admitted.op();
    let len = admitted.body_len() as usize;
    if op == Op::Pipeline {
        return Box::pin(open_pipeline(peer, send, recv, got, admitted)).await;
    }
    let pushes = op.is_push();
    let _push_permit = if pushes {
        match Budget::try_take(&shared.push_bodies) {
            Some(p) => Some(p),
            None => {
                let _ = recv.stop(quinn::VarInt::from_u32(0));
                let e = WireError::new(
                    Status::Busy,
                    "another revocation push is being received; retry shortly",
                );
                return Err((op as u8, e));
            }
        }
    } else {
        None
    };
    // The body grows as it arrives (never sized from the header alone) and must end exactly
    // where the header says.
    let limit = if pushes {
        shared.limits.push_read_timeout
    } else {
        read_timeout
    };
    let whole = HEADER_LEN + len;
    let not_one_body = || {
        WireError::bad(format!(
            "the stream does not hold exactly one {len}-byte body"
        ))
    };
    loop {
        if got.len() > whole {
            return Err((op as u8, not_one_body()));
        }
        match arrived_by(started + limit, got.read_more(recv)).await {
            Some(Ok(true)) => {}
            Some(Ok(false)) if got.len() == whole => break,
            Some(_) => return Err((op as u8, not_one_body())),
            None => return Err((op as u8, late("request", limit))),
        }
    }
    let body = got.into_body();
    let rate = shared.rate.load(Ordering::Relaxed);
    if !bucket.take(rate, arrived) {
        let e = WireError::new(
            Status::RateLimited,
            format!("this certificate is over its {rate} requests per second; retry shortly"),
        );
        return Err((op as u8, e));
    }
    // A wrapped request runs as the request it carries; its answers echo the wrapper's opcode.
    let wrapper_op = op;
    let unwrapped = match handler::unwrap(ident, admitted, &body) {
        Ok(u) => u,
        Err(r) => return Err((r.op, r.error)),
    };
    if let Some(handler::Wrapper::AtSeq { seq, wait }) = unwrapped.wrapper
        && let Err(e) = Box::pin(wait_for_seq(service, seq, wait)).await
    {
        return Err((wrapper_op as u8, e));
    }
    let op = unwrapped.inner.op();
    // Reads and writes draw on separate budgets: writes waiting on a stuck fsync hold theirs
    // until the fsync returns, and must not leave lookups without slots.
    let writes = changes_store(op);
    let (budget, what) = if writes {
        (&shared.writes_in_flight, "writes")
    } else {
        (&shared.in_flight, "requests")
    };
    let Some(permit) = Budget::try_take(budget.clone()) else {
        let e = WireError::new(
            Status::Busy,
            format!("too many {what} in flight; retry shortly"),
        );
        return Err((wrapper_op as u8, e));
    };
    if writes
        && (wrapper_op.forwardable() || matches!(wrapper_op, Op::PushCrl | Op::PushSerials))
        && let Some(f) = shared.forwarder.get()
        && service.registry.store().is_follower()
    {
        let now = (service.clock)();
        let taken = match handler::take_challenge_to_forward(service, ident, now, &unwrapped, &body)
        {
            Ok(t) => t,
            Err(e) => return Err((wrapper_op as u8, e)),
        };
        let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&body);
        // The writer answers within its write_timeout (a push: once applied, however long
        // that takes on a healthy disk, up to FORWARD_PUSH_WAIT); a little longer for the hop.
        let push = wrapper_op.is_push();
        let deadline = if push {
            FORWARD_PUSH_WAIT
        } else {
            shared.limits.write_timeout
        } + FORWARD_MARGIN;
        let forwarded = Box::pin(f.forward(ident, &frame, taken));
        let answer = match tokio::time::timeout(deadline, forwarded).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err((wrapper_op as u8, e)),
            Err(_) => {
                let e = WireError::new(
                    Status::OutcomeUnknown,
                    format!(
                        "the write was passed to the cluster's writer and no answer came within {} ms: it may or may not have been applied; retry the same request to learn its outcome",
                        deadline.as_millis()
                    ),
                );
                return Err((wrapper_op as u8, e));
            }
        };
        drop(permit);
        let status = Status::from_u8(answer[1]).unwrap_or(Status::Internal);
        return Ok((op as u8, status, respond(send, &answer).await));
    }
    let (handled, out, _export_permit) = if runs_blocking(op) {
        let peer = peer.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Held until the work returns, however long after its client was answered.
            let _permit = permit;
            let mut out = Vec::new();
            let service = &peer.shared.service;
            let now = (service.clock)();
            let h =
                handler::handle_unwrapped(service, &peer.ident, now, &unwrapped, &body, &mut out);
            (h, out)
        });
        match Box::pin(wait_for_work(shared, op, writes, task)).await {
            Ok((h, out)) => (h, out, None),
            Err(e) => return Err((wrapper_op as u8, e)),
        }
    } else {
        // Room for any single answer but a batch's, so the common case never reallocates.
        let mut out = Vec::with_capacity(256);
        let now = (service.clock)();
        let h = handler::handle_unwrapped(service, ident, now, &unwrapped, &body, &mut out);
        // An export holds its slot of the read budget while it walks and streams; any other
        // answer gives it back before it is sent.
        let keep = matches!(h, Handled::Export(_)).then_some(permit);
        (h, out, keep)
    };
    match handled {
        Handled::Answered(status) => Ok((op as u8, status, respond(send, &out).await)),
        Handled::Export(provider) => {
            let (status, delivered) = Box::pin(export(service, provider, send)).await;
            Ok((op as u8, status, delivered))
        }
    }
}

/// Acknowledges a `PIPELINE` frame (which has no body) and serves the lookups after it on the
/// same stream (`pipeline`). The acknowledgement and each request are recorded in the metrics
/// as they are answered, so [`serve_stream`] records nothing more for an acknowledged one.
async fn open_pipeline(
    peer: &Peer,
    send: &mut SendStream,
    recv: &mut RecvStream,
    got: Received,
    admitted: handler::Admitted,
) -> Result<(u8, Status, bool), Refused> {
    let Peer {
        shared,
        ident,
        bucket,
    } = peer;
    let op = Op::Pipeline as u8;
    if admitted.body_len() != 0 {
        let _ = recv.stop(quinn::VarInt::from_u32(0));
        return Err((op, WireError::bad("a PIPELINE frame has no body")));
    }
    let started = std::time::Instant::now();
    let mut ack = Vec::with_capacity(HEADER_LEN);
    let service = &shared.service;
    let status =
        match handler::handle_body(service, ident, (service.clock)(), admitted, &[], &mut ack) {
            Handled::Answered(s) => s,
            Handled::Export(_) => Status::Internal,
        };
    let delivered = send.write_all(&ack).await.is_ok();
    shared
        .meters
        .record(op, status, delivered, started.elapsed().as_secs_f64());
    if delivered && status == Status::Ok {
        super::pipeline::serve_pipeline(
            shared,
            ident,
            bucket,
            send,
            recv,
            &got.bytes()[HEADER_LEN..],
        )
        .await;
    }
    Ok((op, Status::Ok, delivered))
}

/// How much longer than its `write_timeout` a follower waits for the writer's answer to a
/// write it forwarded.
const FORWARD_MARGIN: Duration = Duration::from_secs(1);

/// How long a follower waits for the writer's answer to a revocation push it forwarded: the
/// writer answers once the push is applied, which for millions of revocations takes minutes.
const FORWARD_PUSH_WAIT: Duration = Duration::from_secs(600);

/// Waits until the store has applied `seq`, at most `wait`; then `BEHIND` if it has not. Woken
/// by each move of the durable seq, not by polling.
async fn wait_for_seq(service: &Service, seq: u64, wait: Duration) -> Result<(), WireError> {
    let start = tokio::time::Instant::now();
    let store = service.registry.store();
    loop {
        // Registered before the seq is read: a move in between still wakes this wait.
        let moved = store.durable_moved().notified();
        let mut moved = std::pin::pin!(moved);
        moved.as_mut().enable();
        let waited = start.elapsed();
        match handler::behind(service, seq, waited) {
            None => return Ok(()),
            Some(e) if waited >= wait => return Err(e),
            Some(_) => {
                let _ = tokio::time::timeout(wait - waited, moved).await;
            }
        }
    }
}

/// Waits for work running on the blocking pool. A write gets `write_timeout` (a push: until
/// its log write or fsync has been stuck that long), then `OUTCOME_UNKNOWN`; the work goes on
/// and keeps its permit.
async fn wait_for_work(
    shared: &Shared,
    op: Op,
    writes: bool,
    task: tokio::task::JoinHandle<(Handled, Vec<u8>)>,
) -> Result<(Handled, Vec<u8>), WireError> {
    let timeout = shared.limits.write_timeout;
    let finished = if !writes {
        Ok(task.await)
    } else if op.is_push() {
        // A push applies up to millions of revocations in many changes and may take minutes
        // on a healthy disk: its deadline is a log write or fsync stuck for `write_timeout`,
        // not its own length.
        let store = shared.service.registry.store();
        let mut task = std::pin::pin!(task);
        loop {
            match tokio::time::timeout(PUSH_STUCK_POLL, &mut task).await {
                Ok(r) => break Ok(r),
                Err(_) => {
                    if store.health().log_io.is_some_and(|(age, _)| age >= timeout) {
                        break Err(());
                    }
                }
            }
        }
    } else {
        tokio::time::timeout(timeout, task).await.map_err(|_| ())
    };
    match finished {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(_)) if writes => Err(WireError::new(
            Status::OutcomeUnknown,
            "the write failed inside the server after it may have been applied; retry the same request to learn its outcome",
        )),
        Ok(Err(_)) => Err(WireError::new(
            Status::Internal,
            "the request failed inside the server; it changed nothing",
        )),
        Err(()) => {
            tracing::warn!(
                op = op.name(),
                timeout_ms = timeout.as_millis() as u64,
                "a write did not complete within write_timeout: answered OUTCOME_UNKNOWN"
            );
            Err(WireError::new(
                Status::OutcomeUnknown,
                format!(
                    "the write did not complete within {} ms (the store's log is slow or stuck): it may or may not be applied; retry the same request to learn its outcome",
                    timeout.as_millis()
                ),
            ))
        }
    }
}

/// Chunks a stream read takes at most at once. A request that arrived whole (up to this many
/// packets, FIN included: a `LOOKUP_BATCH` of 1,000 IDs is about a dozen) is read in one call,
/// under one lock of quinn's connection, which also learns that the stream ended.
const READ_CHUNKS: usize = 16;

/// Takes whatever has arrived on `recv`, up to [`READ_CHUNKS`] chunks in one call, handing each
/// to `take`; false once the stream has ended, an error when it failed (reset, or the
/// connection lost).
///
/// The chunks are taken into an array on the stack of each poll, not kept in the future, which
/// every stream's task holds (quinn's read is cancel-safe, and a read that finds nothing leaves
/// its waker with the stream).
pub(super) fn read_arrived<'a>(
    recv: &'a mut RecvStream,
    mut take: impl FnMut(Bytes) + 'a,
) -> impl Future<Output = Result<bool, quinn::ReadError>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
        let polled = std::pin::pin!(recv.read_chunks(&mut chunks)).poll(cx);
        let n = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(None)) => return Poll::Ready(Ok(false)),
            Poll::Ready(Ok(Some(n))) => n,
        };
        for chunk in chunks.into_iter().take(n) {
            take(chunk);
        }
        Poll::Ready(Ok(true))
    })
}

/// Runs `read`, a cancel-safe read of what has arrived, until `deadline`; `None` when the
/// deadline came first. `read` is polled once before any timer is made: a request has nearly
/// always arrived whole, FIN included, by the time its stream is accepted, and every tokio
/// timer made costs two atomic updates of the runtime's handle, which all workers share.
pub(super) async fn arrived_by<F: Future>(
    deadline: tokio::time::Instant,
    read: F,
) -> Option<F::Output> {
    let mut read = std::pin::pin!(read);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
    {
        return Some(done);
    }
    tokio::time::timeout_at(deadline, read).await.ok()
}

/// A request's bytes as they arrive. The first chunk is kept as quinn handed it over, so a
/// request that arrived in one chunk is never copied; later chunks are appended to a buffer
/// that grows as they arrive (never sized from the header).
#[derive(Default)]
struct Received {
    first: Bytes,
    more: Option<Vec<u8>>,
}

impl Received {
    fn bytes(&self) -> &[u8] {
        self.more.as_deref().unwrap_or(&self.first)
    }

    fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Takes what has arrived; false once the stream has ended, or when it failed (reset, or
    /// the connection lost), which this request treats alike: it did not arrive whole.
    fn read_more<'a>(
        &'a mut self,
        recv: &'a mut RecvStream,
    ) -> impl Future<Output = Result<bool, quinn::ReadError>> + 'a {
        read_arrived(recv, |chunk| self.push(chunk))
    }

    fn push(&mut self, chunk: Bytes) {
        match &mut self.more {
            None if self.first.is_empty() => self.first = chunk,
            None => {
                let mut v = Vec::with_capacity(self.first.len() + chunk.len());
                v.extend_from_slice(&self.first);
                v.extend_from_slice(&chunk);
                self.first = Bytes::new();
                self.more = Some(v);
            }
            Some(v) => v.extend_from_slice(&chunk),
        }
    }

    /// The body: everything after the frame header.
    fn into_body(self) -> Bytes {
        match self.more {
            None => self.first.slice(HEADER_LEN..),
            Some(v) => Bytes::from(v).slice(HEADER_LEN..),
        }
    }
}

async fn refuse(send: &mut SendStream, op: u8, e: &WireError) -> (u8, Status, bool) {
    let mut out = Vec::new();
    wire::error_response(&mut out, op, e.status, &e.message, None);
    let delivered = respond(send, &out).await;
    (op, e.status, delivered)
}

/// Operations that wait for an fsync or do heavy work (RSA), run off the async workers.
/// (`EXPORT` gathers its rows there too, after it is authorised.)
fn runs_blocking(op: Op) -> bool {
    !matches!(
        op,
        Op::Lookup | Op::LookupBatch | Op::Challenge | Op::Stats | Op::Export
    )
}

/// Operations that change the store: they wait for an fsync, draw on the write budget and
/// have the write deadline.
fn changes_store(op: Op) -> bool {
    runs_blocking(op) && op != Op::LookupCard
}

async fn export(
    service: &Arc<Service>,
    provider: ProviderId,
    send: &mut SendStream,
) -> (Status, bool) {
    // Rows are gathered on the blocking pool (the export walks the whole table), then streamed
    // in chunks of at most EXPORT_CHUNK_MAX rows.
    let svc = service.clone();
    let rows = tokio::task::spawn_blocking(move || handler::export_rows(&svc, &provider)).await;
    let rows = match rows {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            let (_, status, delivered) = refuse(send, Op::Export as u8, &e).await;
            return (status, delivered);
        }
        Err(_) => {
            let e = WireError::new(Status::Internal, "the export failed inside the server");
            let (_, status, delivered) = refuse(send, Op::Export as u8, &e).await;
            return (status, delivered);
        }
    };
    let mut out = Vec::new();
    wire::begin_export(&mut out);
    for chunk in rows.chunks(wire::EXPORT_CHUNK_MAX) {
        wire::export_chunk(&mut out, chunk);
        if send.write_all(&out).await.is_err() {
            // The peer stopped reading: the export was not delivered.
            return (Status::Ok, false);
        }
        out.clear();
    }
    wire::export_end(&mut out, rows.len() as u64);
    (Status::Ok, respond(send, &out).await)
}
