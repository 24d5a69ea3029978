//! The floor of a run: an in-process `mykey/1` server with no engine behind it, on the same
//! QUIC setup as `mykeyd` (its TLS configuration with client certificates checked against the
//! run's operator CA, its transport settings, its UDP socket buffers and its stream grants), on
//! a runtime of its own as `mykeyd`'s. It decodes every request and answers it at once with a
//! fixed, well-formed success body of the request's kind, so the same schedule played against
//! it costs the generator and the QUIC stack what the engine run cost them, and nothing else:
//! the engine's share of a tail is what its run has above the floor's at the same rate.
//!
//! Owns the floor server's endpoint and runtime; never stores, checks or forwards anything
//! (a card's signature, a push's list and a registration are answered without being read).

use std::net::SocketAddr;

use mykey_engine::answer::{
    LinkOutcome, Lookup, ProviderOutcome, PushSummary, RevokeSummary, UnlinkOutcome,
};
use mykey_engine::id::{MyKeyId, ServiceId};
use mykey_engine::jpki::{CHALLENGE_LEN, Challenge};
use mykey_engine::server::pki::OperatorCa;
use mykey_engine::server::{ServerTls, StreamGrant, endpoint_on, server_config, system_clock};
use mykey_engine::wire::{self, HEADER_LEN, Op, Request, Response, Status};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The serial of the floor server's certificate (issued by the run's operator CA; terminals'
/// serials start at 1,000, the portal's and partner's are 900 and 901).
const FLOOR_CERT_SERIAL: u64 = 902;
/// Seconds a floor challenge says it is valid for.
const CHALLENGE_TTL_SECS: u64 = 60;
/// Largest request the floor reads: a push, the largest `mykey/1` request.
const FLOOR_REQUEST_MAX: usize = wire::PUSH_LEN_MAX as usize + HEADER_LEN;

/// The service ID every floor lookup answers (a linked ID's answer, the common case).
const FLOOR_SERVICE: &[u8] = b"FLOOR-SERVICE-0001";
/// The ID a floor registration returns and a floor card lookup names.
const FLOOR_ID: &[u8] = b"FLOOR000000001";

/// A running floor server; stopped when dropped.
pub struct Floor {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Floor {
    /// Starts the floor on 127.0.0.1 and a free port, its certificate for `server_name` issued
    /// by `pki` (which also issued the terminals' certificates it will accept).
    pub fn start(pki: &OperatorCa, server_name: &str) -> Result<Self, String> {
        let cert = pki
            .server(&[server_name], FLOOR_CERT_SERIAL, pki.validity())
            .map_err(|e| format!("floor server certificate: {e}"))?;
        let tls = ServerTls {
            chain: vec![cert.cert],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key)),
            client_cas: vec![pki.der().clone()],
            client_crls: Vec::new(),
        };
        let sc = server_config(tls).map_err(|e| format!("floor server: {e}"))?;
        // Its own threads, as many as `mykeyd`'s runtime has, so the floor competes for the
        // cores as the engine's process does.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("floor")
            .build()
            .map_err(|e| format!("floor runtime: {e}"))?;
        let local: SocketAddr = ([127, 0, 0, 1], 0).into();
        let (endpoint, _) = {
            let _in = rt.enter();
            endpoint_on(local, Some(sc)).map_err(|e| format!("floor server: bind {local}: {e}"))?
        };
        let addr = endpoint
            .local_addr()
            .map_err(|e| format!("floor server: {e}"))?;
        rt.spawn(accept_loop(endpoint.clone()));
        Ok(Self {
            endpoint,
            addr,
            rt: Some(rt),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"floor done");
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let mut grant = StreamGrant::default();
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let open = grant.accepted(&conn);
                tokio::spawn(async move {
                    let _open = open;
                    serve_stream(&mut send, &mut recv).await;
                    let _ = send.finish();
                });
            }
        });
    }
}

/// Answers one stream: its one request, or, for a stream that opens with `PIPELINE`, the
/// acknowledgement and then each lookup after it in turn, as `mykeyd` does.
async fn serve_stream(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    let mut head = [0u8; HEADER_LEN];
    let mut out = Vec::with_capacity(64);
    let frame = match recv.read_exact(&mut head).await {
        Ok(()) if head[1] == Op::Pipeline as u8 => return serve_pipeline(&head, send, recv).await,
        Ok(()) => match recv.read_to_end(FLOOR_REQUEST_MAX - HEADER_LEN).await {
            Ok(rest) => [&head[..], &rest].concat(),
            Err(_) => return,
        },
        Err(quinn::ReadExactError::FinishedEarly(n)) => head[..n].to_vec(),
        Err(_) => return,
    };
    answer(&frame, &mut out);
    let _ = send.write_all(&out).await;
}

/// A `PIPELINE` stream whose frame header is `head`: each frame after it answered in turn,
/// until the client finishes (or a frame's header announces a body past the floor's limit).
/// Unlike `mykeyd`, the floor answers any operation there rather than ending the stream on one
/// that is not a lookup; the generator sends it only lookups and batches.
async fn serve_pipeline(
    head: &[u8; HEADER_LEN],
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) {
    let mut out = Vec::with_capacity(64);
    answer(head, &mut out);
    if send.write_all(&out).await.is_err() || out.get(1).is_none_or(|s| *s != 0) {
        return;
    }
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let whole = buf
            .get(..HEADER_LEN)
            .map(|h| HEADER_LEN + u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize);
        match whole {
            Some(w) if w > FLOOR_REQUEST_MAX => return,
            Some(w) if buf.len() >= w => {
                answer(&buf[..w], &mut out);
                buf.drain(..w);
                if send.write_all(&out).await.is_err() {
                    return;
                }
            }
            _ => match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                _ => return,
            },
        }
    }
}

/// Writes into `out` the floor's answer to the request `frame`: a fixed success body of its
/// kind, or the refusal a malformed frame gets.
pub fn answer(frame: &[u8], out: &mut Vec<u8>) {
    let Some((header, body)) = frame.split_first_chunk::<HEADER_LEN>() else {
        let e = wire::WireError::bad("a frame shorter than its header");
        wire::error_response(out, 0, e.status, &e.message, None);
        return;
    };
    let op = match wire::request_header(header) {
        Ok((op, _)) => op,
        Err((byte, e)) => {
            wire::error_response(out, byte, e.status, &e.message, None);
            return;
        }
    };
    let (Ok(service), Ok(id)) = (ServiceId::parse(FLOOR_SERVICE), MyKeyId::parse(FLOOR_ID)) else {
        unreachable!("the floor's fixed IDs are well-formed");
    };
    let linked = Lookup::Linked(service);
    let resp = match Request::decode(op, body) {
        Err(e) => {
            wire::error_response(out, op as u8, e.status, &e.message, None);
            return;
        }
        Ok(Request::LookupBatch { ids, .. }) => {
            let mut f = wire::BatchFrame::begin(out, ids.len() as u16);
            for _ in 0..ids.len() {
                f.push(&linked);
            }
            f.finish();
            return;
        }
        Ok(Request::Stats) => {
            wire::stats_frame(out, &[]);
            return;
        }
        Ok(Request::Lookup { .. }) => Response::Lookup(linked),
        Ok(Request::Challenge) => Response::Challenge(Challenge {
            bytes: [0x5A; CHALLENGE_LEN],
            expires_at: system_clock().plus_secs(CHALLENGE_TTL_SECS),
        }),
        Ok(Request::LookupCard { .. }) => Response::LookupCard {
            id: Some(id),
            answer: linked,
        },
        Ok(Request::RegisterFull { .. }) => Response::Registered(id),
        Ok(
            Request::RegisterProvisional { .. }
            | Request::Confirm { .. }
            | Request::Rebind { .. }
            | Request::Delete { .. },
        ) => Response::Done,
        Ok(Request::Link { .. }) => Response::Link(LinkOutcome::Linked),
        Ok(Request::Unlink { .. }) => Response::Unlink(UnlinkOutcome::Unlinked),
        Ok(Request::PushCrl { .. } | Request::PushSerials { .. }) => Response::Push(PushSummary {
            revoke: RevokeSummary {
                newly_revoked: 0,
                already_known: 0,
                suspended: 0,
            },
            entries: 0,
            replayed: false,
        }),
        Ok(Request::Pipeline) => Response::Done,
        Ok(Request::RegisterProvider { .. }) => {
            Response::RegisterProvider(ProviderOutcome::Registered)
        }
        Ok(_) => {
            let m = format!("the floor server does not answer {}", op.name());
            wire::error_response(out, op as u8, Status::UnknownOpcode, &m, None);
            return;
        }
    };
    resp.encode(op, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use mykey_engine::id::ProviderId;

    fn frame(req: &Request<'_>) -> Vec<u8> {
        let mut f = Vec::new();
        req.encode(&mut f).expect("encodable");
        f
    }

    fn decoded(op: Op, out: &[u8]) -> Response<'_> {
        let (h, body) = wire::split_response(out).expect("a response frame");
        assert!(h.is_ok(), "status {}", h.status);
        assert_eq!(h.op, op as u8);
        Response::decode(op, body).expect("a success body of the request's kind")
    }

    /// Every request the load generator sends gets a success body of its own kind (a batch
    /// one answer per ID), and a malformed frame its refusal, as the engine would answer it.
    #[test]
    fn the_floor_answers_each_request_with_a_body_of_its_kind() {
        let p = ProviderId::parse(b"13101-ST-0001").expect("provider");
        let id = MyKeyId::parse(b"ABCDEFGHIJKLMN").expect("id");
        let mut out = Vec::new();
        answer(&frame(&Request::Lookup { provider: p, id }), &mut out);
        assert!(matches!(
            decoded(Op::Lookup, &out),
            Response::Lookup(Lookup::Linked(_))
        ));
        let raw = wire::id_list_bytes(&[id; 37]);
        let ids = wire::IdList::from_bytes(&raw).expect("ids");
        answer(&frame(&Request::LookupBatch { provider: p, ids }), &mut out);
        match decoded(Op::LookupBatch, &out) {
            Response::LookupBatch(a) => assert_eq!(a.iter().count(), 37),
            r => panic!("{r:?}"),
        }
        answer(&frame(&Request::Challenge), &mut out);
        assert!(matches!(
            decoded(Op::Challenge, &out),
            Response::Challenge(_)
        ));
        let s = ServiceId::parse(b"S-1").expect("service");
        answer(
            &frame(&Request::Link {
                id,
                provider: p,
                service: s,
                replace: true,
            }),
            &mut out,
        );
        assert!(matches!(
            decoded(Op::Link, &out),
            Response::Link(LinkOutcome::Linked)
        ));
        // A bad version, an unknown opcode and a short frame are refused, not answered.
        for bad in [
            &[9u8, 1, 0, 0, 0, 0, 0, 0][..],
            &[1, 0x7F, 0, 0, 0, 0, 0, 0],
            &[1, 1],
        ] {
            answer(bad, &mut out);
            let (h, _) = wire::split_response(&out).expect("a refusal frame");
            assert!(!h.is_ok(), "{bad:?} answered OK");
        }
    }
}
