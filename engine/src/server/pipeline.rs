//! Pipelined lookups (`engine/PROTOCOL.md`, "Pipelined lookups: `PIPELINE`"): one stream that
//! carries a terminal's `LOOKUP` and `LOOKUP_BATCH` requests one after another, each read
//! within its deadline, checked as on a stream of its own (drain, header, role, rate, read
//! budget, body, providers) and answered in turn, so a terminal pays for opening and closing a
//! stream once instead of once a request.
//!
//! Owns the framing of such a stream, its deadlines, and when it ends; never decides what a
//! request means (the handler does), and never runs anything but a lookup on it: no write,
//! push or export waits behind a terminal's lookups or holds its stream. An idle pipelined
//! stream is not counted as serving, so it never holds up a drain.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream};

use super::Identity;
use super::handler::{self, Handled};
use super::limits::{Bucket, Budget};
use super::stream::{Shared, arrived_by, read_arrived};
use crate::wire::{self, HEADER_LEN, Op, Status, WireError};

/// The bytes of a pipelined stream that have arrived and are not answered yet. Grows only while
/// a frame is incomplete: bytes are read when the frame being served needs more, so it holds at
/// most one read's chunks beyond that frame; one buffer for the stream's whole life.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
    at: usize,
}

impl Frames {
    fn ahead(&self) -> &[u8] {
        &self.buf[self.at..]
    }

    fn len(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Drops the first `n` bytes ahead (a frame answered).
    fn consume(&mut self, n: usize) {
        self.at += n;
        if self.at >= self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
    }

    /// Takes what has arrived; false once the client has finished its side, or when the
    /// stream failed (reset, the connection lost). The bytes already answered are dropped
    /// first.
    fn read_more<'a>(
        &'a mut self,
        recv: &'a mut RecvStream,
    ) -> impl Future<Output = Result<bool, quinn::ReadError>> + 'a {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        read_arrived(recv, |chunk| self.buf.extend_from_slice(&chunk))
    }
}

/// While it lives, the stream is waiting for its client's next request and is not counted as
/// serving: the drain does not wait for it.
struct Idle<'a>(&'a Shared);

impl<'a> Idle<'a> {
    fn new(shared: &'a Shared) -> Self {
        if shared.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.idle.notify_waiters();
        }
        Self(shared)
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_add(1, Ordering::AcqRel);
    }
}

/// Why a pipelined stream stops before its client finished it.
enum Ended {
    /// The client's stream failed or was reset, or an answer could not be written.
    Lost,
    /// A frame was refused in a way that ends the stream: its answer, then STOP_SENDING.
    Refused(u8, WireError),
}

/// Serves the requests after a `PIPELINE` frame whose acknowledgement was written. `ahead`
/// holds what arrived after that frame. Records each request in the metrics; returns once the
/// client has finished and every request is answered, or the stream ended early.
pub(super) async fn serve_pipeline(
    shared: &Arc<Shared>,
    ident: &Identity,
    bucket: &Bucket,
    send: &mut SendStream,
    recv: &mut RecvStream,
    ahead: &[u8],
) {
    let mut frames = Frames {
        buf: ahead.to_vec(),
        at: 0,
    };
    let mut out = Vec::with_capacity(256);
    let ended = loop {
        if frames.len() == 0 {
            let idle = Idle::new(shared);
            let more = frames.read_more(recv).await;
            drop(idle);
            match more {
                Ok(true) => continue,
                // The client finished its side and every request it sent is answered.
                Ok(false) => break None,
                Err(_) => break Some(Ended::Lost),
            }
        }
        let started = Instant::now();
        match serve_one(shared, ident, bucket, recv, &mut frames, &mut out, started).await {
            Ok((op, status)) => {
                let delivered = send.write_all(&out).await.is_ok();
                shared
                    .meters
                    .record(op, status, delivered, started.elapsed().as_secs_f64());
                if !delivered {
                    break Some(Ended::Lost);
                }
            }
            Err(Ended::Refused(op, e)) => {
                let _ = recv.stop(quinn::VarInt::from_u32(0));
                wire::error_response(&mut out, op, e.status, &e.message, None);
                let delivered = send.write_all(&out).await.is_ok();
                shared
                    .meters
                    .record(op, e.status, delivered, started.elapsed().as_secs_f64());
                break Some(Ended::Refused(op, e));
            }
            Err(Ended::Lost) => break Some(Ended::Lost),
        }
    };
    if let Some(Ended::Refused(op, e)) = &ended {
        tracing::debug!(op = *op, status = e.status.name(), by = %ident.name, "a pipelined stream ended on a refused frame");
    }
    if !matches!(ended, Some(Ended::Lost)) {
        let _ = send.finish();
    }
}

/// Reads, checks and answers into `out` the request at the front of `frames`, whose first byte
/// arrived at `started`; returns its opcode and status. A refusal that leaves the stream usable
/// (rate, budget, body, providers) is an answer; one that does not is [`Ended::Refused`].
async fn serve_one(
    shared: &Shared,
    ident: &Identity,
    bucket: &Bucket,
    recv: &mut RecvStream,
    frames: &mut Frames,
    out: &mut Vec<u8>,
    started: Instant,
) -> Result<(u8, Status), Ended> {
    let read_timeout = shared.limits.read_timeout;
    let deadline = tokio::time::Instant::from_std(started) + read_timeout;
    let late = |what: &str, limit: Duration| {
        WireError::bad(format!(
            "the {what} did not arrive within {} ms of its first byte; send a request whole",
            limit.as_millis()
        ))
    };
    while frames.len() < HEADER_LEN {
        match arrived_by(deadline, frames.read_more(recv)).await {
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                let e = WireError::bad("the stream ended inside a frame header");
                return Err(Ended::Refused(0, e));
            }
            Some(Err(_)) => return Err(Ended::Lost),
            None => return Err(Ended::Refused(0, late("frame header", read_timeout))),
        }
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&frames.ahead()[..HEADER_LEN]);
    if shared.draining.load(Ordering::Acquire) {
        let e = WireError::new(
            Status::Busy,
            "the server is draining; send the rest on another node",
        );
        return Err(Ended::Refused(header[1], e));
    }
    let admitted = handler::admit(ident, &header).map_err(|r| Ended::Refused(r.op, r.error))?;
    let op = admitted.op();
    if !matches!(op, Op::Lookup | Op::LookupBatch) {
        let e = WireError::bad(format!(
            "{} may not follow a PIPELINE on its stream, only LOOKUP and LOOKUP_BATCH: send it on a stream of its own",
            op.name()
        ));
        return Err(Ended::Refused(op as u8, e));
    }
    let whole = HEADER_LEN + admitted.body_len() as usize;
    while frames.len() < whole {
        match arrived_by(deadline, frames.read_more(recv)).await {
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                let e = WireError::bad(format!(
                    "the stream ended inside a {}-byte body",
                    admitted.body_len()
                ));
                return Err(Ended::Refused(op as u8, e));
            }
            Some(Err(_)) => return Err(Ended::Lost),
            None => return Err(Ended::Refused(op as u8, late("request", read_timeout))),
        }
    }
    let answered = answer(
        shared,
        ident,
        bucket,
        started,
        admitted,
        &frames.ahead()[HEADER_LEN..whole],
        out,
    );
    frames.consume(whole);
    Ok((op as u8, answered))
}

/// Answers one whole lookup request into `out`: rate, read budget, then the handler, as on a
/// stream of its own. Every refusal here leaves the stream usable.
fn answer(
    shared: &Shared,
    ident: &Identity,
    bucket: &Bucket,
    started: Instant,
    admitted: handler::Admitted,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Status {
    let op = admitted.op() as u8;
    let refuse = |out: &mut Vec<u8>, e: WireError| {
        wire::error_response(out, op, e.status, &e.message, None);
        e.status
    };
    let rate = shared.rate.load(Ordering::Relaxed);
    if !bucket.take(rate, started) {
        let e = WireError::new(
            Status::RateLimited,
            format!("this certificate is over its {rate} requests per second; retry shortly"),
        );
        return refuse(out, e);
    }
    let Some(_permit) = Budget::try_take(&*shared.in_flight) else {
        let e = WireError::new(Status::Busy, "too many requests in flight; retry shortly");
        return refuse(out, e);
    };
    let service = &shared.service;
    let now = (service.clock)();
    // A lookup comes in no wrapper (`serve_one` lets no other operation through), so its body
    // goes to the handler as it is.
    match handler::handle_body(service, ident, now, admitted, body, out) {
        Handled::Answered(status) => status,
        // Only lookups reach here; neither is streamed.
        Handled::Export(_) => refuse(
            out,
            WireError::new(Status::Internal, "an export cannot be pipelined"),
        ),
    }
}
