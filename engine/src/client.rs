//! The async client library of `mykey/1`, used by the `mykey` CLI, the load generator and the
//! tests: one QUIC connection with a client certificate, one stream per request, or lookups in
//! turn on one stream ([`Pipeline`]).
//!
//! Owns the client side of the transport and the typed calls, and read-your-writes: a client
//! in that mode sends every write it can in `WITH_SEQ` and every read it can in `AT_SEQ` at
//! the highest seq it has seen, so that any node answers it with its own writes applied. Never decides anything a server
//! decides: a refusal comes back as [`ClientError::Refused`] with the server's status and
//! message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use quinn::Endpoint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::answer::{LinkOutcome, Lookup, ProviderOutcome, PushSummary, UnlinkOutcome};
use crate::id::{MyKeyId, ProviderId, PushId, ServiceId};
use crate::jpki::{CardProof, Challenge};
use crate::wire::{
    self, ExportDecoder, ExportStep, HEADER_LEN, IdList, Op, Refused, Request, Response,
    ResponseHeader, Status, WireError,
};

/// Largest response a client reads (an `EXPORT` is read chunk by chunk instead).
const RESPONSE_READ_MAX: usize = wire::RESPONSE_LEN_MAX as usize + HEADER_LEN;

/// The client's TLS material.
pub struct ClientTls {
    /// The client certificate chain, leaf first (issued by the operator's client CA).
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// The CA certificates the server's certificate must chain to.
    pub server_roots: Vec<CertificateDer<'static>>,
}

impl ClientTls {
    /// The TLS configuration a client connects with: TLS 1.3, aws-lc-rs, this certificate,
    /// the server's roots, ALPN `mykey/1`, no session resumption. The handshake benchmark
    /// runs it without QUIC.
    pub fn rustls_config(self) -> Result<rustls::ClientConfig, ClientError> {
        let provider = crate::server::crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for r in self.server_roots {
            roots.add(r).map_err(ConnectError::ServerRoot)?;
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(ConnectError::Tls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain, self.key)
            .map_err(ConnectError::ClientCert)?;
        cfg.alpn_protocols = vec![wire::ALPN.to_vec()];
        // A server resumes no session (PROTOCOL.md), so there is nothing to keep.
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(cfg)
    }

    /// Reads a client certificate chain, its key and the server's CA certificates from PEM
    /// files; the error names the file.
    pub fn from_pem_files(
        cert: &std::path::Path,
        key: &std::path::Path,
        server_ca: &std::path::Path,
    ) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        let certs = |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
            let v = CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if v.is_empty() {
                return Err(format!("{}: no CERTIFICATE", p.display()));
            }
            Ok(v)
        };
        Ok(Self {
            chain: certs(cert)?,
            key: PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("{}: {e}", key.display()))?,
            server_roots: certs(server_ca)?,
        })
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TLS material was refused, or the connection could not be set up.
    #[error("cannot connect: {0}")]
    Connect(#[from] ConnectError),
    /// The connection or a stream failed.
    #[error("connection: {0}")]
    Io(#[from] StreamError),
    /// The server answered with a refusal.
    #[error("{name} ({status}): {message}", name = Status::from_u8(*status).map_or("UNKNOWN_STATUS", Status::name))]
    Refused {
        /// The status code.
        status: u8,
        /// The server's reason.
        message: String,
        /// For `LINK_CONFLICT`: the service ID linked now.
        existing: Option<ServiceId>,
    },
    /// The server's answer did not follow the protocol.
    #[error("protocol: {0}")]
    Protocol(#[from] WireError),
    /// A request field is too long for its length prefix (a card certificate over 64 KiB).
    #[error("a {op} request field is too long for its length prefix")]
    RequestTooLarge {
        /// The operation.
        op: &'static str,
    },
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The client's UDP endpoint could not be made.
    #[error("client endpoint: {0}")]
    Endpoint(std::io::Error),
    /// A server root certificate was refused as a trust anchor.
    #[error("server root: {0}")]
    ServerRoot(rustls::Error),
    /// TLS 1.3 could not be chosen with the provider.
    #[error("TLS 1.3: {0}")]
    Tls(rustls::Error),
    /// The client certificate or its key was refused.
    #[error("client certificate: {0}")]
    ClientCert(rustls::Error),
    /// The provider has no cipher suite QUIC can start with.
    #[error("QUIC: {0}")]
    Quic(quinn::crypto::rustls::NoInitialCipherSuite),
    /// The server name is not a DNS name or IP address.
    #[error("server name {name:?}: {source}")]
    ServerName {
        /// The name given.
        name: String,
        /// Why it is not one.
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The connection could not be started.
    #[error("{0}")]
    Start(quinn::ConnectError),
    /// The handshake failed (the server refused the certificate, or did not answer).
    #[error("{0}")]
    Handshake(quinn::ConnectionError),
}

/// Why a request's stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// No stream could be opened: the connection is gone.
    #[error("{0}")]
    Open(quinn::ConnectionError),
    /// The request could not be written.
    #[error("write: {0}")]
    Write(quinn::WriteError),
    /// The answer could not be read.
    #[error("read: {0}")]
    Read(quinn::ReadToEndError),
    /// Part of a streamed answer could not be read.
    #[error("read: {0}")]
    ReadExact(quinn::ReadExactError),
}

impl ClientError {
    /// The refusal's status, if the server refused.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Refused { status, .. } => Status::from_u8(*status),
            _ => None,
        }
    }

    fn refused(status: u8, body: &[u8]) -> Self {
        let r = Refused::decode(status, body);
        ClientError::Refused {
            status,
            message: r.message.into_owned(),
            existing: r.existing,
        }
    }
}

/// One row of an export.
pub use crate::wire::ExportedLink;

/// The success body of the response frame `resp` to a request answered under the opcode
/// `answered_for`, or the refusal it carries.
fn success_body(resp: &[u8], answered_for: Op) -> Result<&[u8], ClientError> {
    let (header, body) = wire::split_response(resp)?;
    if !header.is_ok() {
        return Err(ClientError::refused(header.status, body));
    }
    if header.op != answered_for as u8 {
        return Err(WireError::bad(format!(
            "an answer for opcode {:#04x} to a {} request",
            header.op,
            answered_for.name()
        ))
        .into());
    }
    Ok(body)
}

/// Decodes the success `body` of `op` into `read`'s answer.
fn decode_as<'b, T>(
    op: Op,
    body: &'b [u8],
    read: impl FnOnce(Response<'b>) -> Option<T>,
) -> Result<T, ClientError> {
    let resp = Response::decode(op, body)?;
    read(resp)
        .ok_or_else(|| WireError::bad(format!("an answer of another kind to {}", op.name())).into())
}

fn read_lookup(r: Response<'_>) -> Option<Lookup> {
    match r {
        Response::Lookup(l) => Some(l),
        _ => None,
    }
}

fn read_batch(r: Response<'_>) -> Option<Vec<Lookup>> {
    match r {
        Response::LookupBatch(a) => {
            let mut v = Vec::with_capacity(a.len());
            v.extend(a.iter());
            Some(v)
        }
        _ => None,
    }
}

/// A batch's answers, refused unless there is one for each of its `asked` IDs.
fn checked_batch(answers: Vec<Lookup>, asked: usize) -> Result<Vec<Lookup>, ClientError> {
    if answers.len() != asked {
        return Err(WireError::bad(format!(
            "{} answers to a batch of {asked} IDs",
            answers.len()
        ))
        .into());
    }
    Ok(answers)
}

/// A stream of pipelined lookups, opened by [`Client::pipeline`]: each call writes one request
/// and reads its answer, on the same stream as the calls before it. One call at a time (a
/// stream answers in order); open several for lookups at once. A call that fails on the
/// stream itself (a drain ended it, the connection was lost) leaves it unusable: open another.
pub struct Pipeline {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Whether the server's answer to the `PIPELINE` frame has been read.
    acked: bool,
    /// The request being sent, its buffer reused.
    frame: Vec<u8>,
    /// The answers read: the current one first, `answer_len` bytes; any bytes after it
    /// arrived with it. The buffer is reused.
    answer: Vec<u8>,
    answer_len: usize,
}

impl Pipeline {
    /// `LOOKUP` on this stream.
    pub async fn lookup(
        &mut self,
        provider: ProviderId,
        id: MyKeyId,
    ) -> Result<Lookup, ClientError> {
        self.call(&Request::Lookup { provider, id }).await?;
        decode_as(
            Op::Lookup,
            &self.answer[HEADER_LEN..self.answer_len],
            read_lookup,
        )
    }

    /// `LOOKUP_BATCH` on this stream: answers in the order of `ids`.
    pub async fn lookup_batch(
        &mut self,
        provider: ProviderId,
        ids: &[MyKeyId],
    ) -> Result<Vec<Lookup>, ClientError> {
        let mut raw = Vec::new();
        let req = Request::LookupBatch {
            provider,
            ids: IdList::from_ids(ids, &mut raw),
        };
        self.call(&req).await?;
        let answers = decode_as(
            Op::LookupBatch,
            &self.answer[HEADER_LEN..self.answer_len],
            read_batch,
        )?;
        checked_batch(answers, ids.len())
    }

    /// Ends the stream: no more requests. The server finishes its side once it has answered.
    pub async fn finish(mut self) -> Result<(), ClientError> {
        let _ = self.send.finish();
        if !self.acked {
            self.read_answer(Op::Pipeline).await?;
        }
        let mut rest = [0u8; 1];
        match self.recv.read(&mut rest).await {
            Ok(None) if self.answer.len() == self.answer_len => Ok(()),
            Ok(_) => {
                Err(WireError::bad("bytes after the last answer of a pipelined stream").into())
            }
            Err(e) => Err(StreamError::ReadExact(quinn::ReadExactError::ReadError(e)).into()),
        }
    }

    /// Writes `req` and reads its answer into `self.answer`, checked to be a success for it;
    /// the first call reads the `PIPELINE` frame's own answer first.
    async fn call(&mut self, req: &Request<'_>) -> Result<(), ClientError> {
        let op = req.op();
        self.frame.clear();
        req.encode(&mut self.frame)
            .ok_or(ClientError::RequestTooLarge { op: op.name() })?;
        self.send
            .write_all(&self.frame)
            .await
            .map_err(StreamError::Write)?;
        if !self.acked {
            self.read_answer(Op::Pipeline).await?;
            self.acked = true;
        }
        self.read_answer(op).await
    }

    /// Reads the next answer frame to the front of `self.answer`, checked to be a success
    /// for `op`: whatever has arrived, a chunk at a time, so an answer that came in one packet
    /// costs one read; bytes past it (the next answer, when the `PIPELINE` frame's and the
    /// first request's came together) stay for the next call.
    async fn read_answer(&mut self, op: Op) -> Result<(), ClientError> {
        self.answer.drain(..self.answer_len);
        self.answer_len = 0;
        let mut whole = None;
        loop {
            if whole.is_none() && self.answer.len() >= HEADER_LEN {
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&self.answer[..HEADER_LEN]);
                let header = ResponseHeader::decode(&h)?;
                if header.len == wire::STREAMED {
                    return Err(WireError::bad("a streamed answer on a pipelined stream").into());
                }
                whole = Some(HEADER_LEN + header.len as usize);
            }
            if let Some(w) = whole
                && self.answer.len() >= w
            {
                self.answer_len = w;
                break;
            }
            let chunk = self
                .recv
                .read_chunk(usize::MAX, true)
                .await
                .map_err(|e| StreamError::ReadExact(quinn::ReadExactError::ReadError(e)))?
                .ok_or(StreamError::ReadExact(
                    quinn::ReadExactError::FinishedEarly(self.answer.len()),
                ))?;
            self.answer.extend_from_slice(&chunk.bytes);
        }
        success_body(&self.answer[..self.answer_len], op)?;
        Ok(())
    }
}

/// A connection to a `mykeyd`.
pub struct Client {
    endpoint: Endpoint,
    conn: quinn::Connection,
    /// Whether writes and reads go in `WITH_SEQ` and `AT_SEQ`.
    read_your_writes: AtomicBool,
    /// The highest seq a write's answer gave (or [`Client::saw_seq`] was told).
    seen: AtomicU64,
}

impl Client {
    /// Connects to `addr`, checking the server's certificate against `tls.server_roots` for
    /// `server_name`, and presenting the client certificate.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: ClientTls,
    ) -> Result<Self, ClientError> {
        let endpoint = Self::endpoint(addr.is_ipv6())?;
        Self::connect_on(&endpoint, addr, server_name, tls).await
    }

    /// A client UDP endpoint (one socket) that many connections can share: thousands of
    /// terminals multiplexed over a few sockets, as a load generator needs.
    pub fn endpoint(ipv6: bool) -> Result<Endpoint, ClientError> {
        let bind: SocketAddr = if ipv6 {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        crate::server::endpoint_on(bind, None)
            .map(|(e, _)| e)
            .map_err(|e| ConnectError::Endpoint(e).into())
    }

    /// Connects over an existing endpoint (see [`Client::endpoint`]) with this certificate.
    pub async fn connect_on(
        endpoint: &Endpoint,
        addr: SocketAddr,
        server_name: &str,
        tls: ClientTls,
    ) -> Result<Self, ClientError> {
        let cfg = tls.rustls_config()?;
        let quic =
            quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(ConnectError::Quic)?;
        let mut cc = quinn::ClientConfig::new(Arc::new(quic));
        cc.transport_config(Arc::new(crate::server::transport()));
        ServerName::try_from(server_name.to_owned()).map_err(|source| {
            ConnectError::ServerName {
                name: server_name.to_owned(),
                source,
            }
        })?;
        let conn = endpoint
            .connect_with(cc, addr, server_name)
            .map_err(ConnectError::Start)?
            .await
            .map_err(ConnectError::Handshake)?;
        Ok(Self {
            endpoint: endpoint.clone(),
            conn,
            read_your_writes: AtomicBool::new(false),
            seen: AtomicU64::new(0),
        })
    }

    /// Turns read-your-writes on or off (engine/PROTOCOL.md, "Read-your-writes"). While on,
    /// every write that `WITH_SEQ` can carry learns its seq, and every read that `AT_SEQ` can
    /// carry is served only by a node at the highest seq seen (waiting up to
    /// [`crate::server::AT_SEQ_WAIT_MAX`], else [`Status::Behind`]).
    pub fn set_read_your_writes(&self, on: bool) {
        self.read_your_writes.store(on, Ordering::Relaxed);
    }

    /// The highest seq this client has seen: of its own writes in read-your-writes mode, or
    /// given to [`Client::saw_seq`].
    pub fn seen_seq(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    /// Records `seq` as seen (a seq learnt from another connection, another node's answer):
    /// later reads in read-your-writes mode ask for at least it.
    pub fn saw_seq(&self, seq: u64) {
        self.seen.fetch_max(seq, Ordering::AcqRel);
    }

    /// The QUIC connection, for tests and diagnostics that drive streams by hand (a client that
    /// stops reading mid-answer, a request sent in pieces).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Sends one raw frame on its own stream and returns the response's header and body (for
    /// tests and diagnostics of malformed frames).
    pub async fn raw(&self, frame: &[u8]) -> Result<(ResponseHeader, Vec<u8>), ClientError> {
        let mut resp = self.exchange(frame).await?;
        let (header, body) = wire::split_response(&resp)?;
        let len = body.len();
        resp.drain(..resp.len() - len);
        Ok((header, resp))
    }

    /// Sends one raw frame on its own stream and returns the whole response frame, checked
    /// to be one (a node relaying a forwarded write's answer).
    pub async fn exchange(&self, frame: &[u8]) -> Result<Vec<u8>, ClientError> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(StreamError::Open)?;
        send.write_all(frame).await.map_err(StreamError::Write)?;
        // Dropping the sending half finishes it under one lock of quinn's connection (`finish`
        // and then the drop take two). The server may stop reading early (a refused header);
        // that is not an error here.
        drop(send);
        let resp = recv
            .read_to_end(RESPONSE_READ_MAX)
            .await
            .map_err(StreamError::Read)?;
        wire::split_response(&resp)?;
        Ok(resp)
    }

    /// Sends `req` and decodes its success body into `read`'s answer.
    async fn call<T>(
        &self,
        req: &Request<'_>,
        read: impl FnOnce(Response<'_>) -> Option<T>,
    ) -> Result<T, ClientError> {
        let op = req.op();
        let rw = self.read_your_writes.load(Ordering::Relaxed);
        let seen = self.seen_seq();
        let wrapper = if rw && op.seq_wrappable_write() {
            Some(Op::WithSeq)
        } else if rw && seen > 0 && op.seq_wrappable_read() {
            Some(Op::AtSeq)
        } else {
            None
        };
        let mut frame = Vec::with_capacity(64);
        let wait_ms = crate::server::AT_SEQ_WAIT_MAX.as_millis() as u16;
        match wrapper {
            None => req.encode(&mut frame),
            Some(Op::AtSeq) => wire::encode_wrapped(req, Some((seen, wait_ms)), &mut frame),
            Some(_) => wire::encode_wrapped(req, None, &mut frame),
        }
        .ok_or(ClientError::RequestTooLarge { op: op.name() })?;
        let resp = self.exchange(&frame).await?;
        let body = success_body(&resp, wrapper.unwrap_or(op))?;
        let body = if wrapper == Some(Op::WithSeq) {
            let (seq, rest) = wire::split_seq(body)?;
            self.saw_seq(seq);
            rest
        } else {
            body
        };
        decode_as(op, body, read)
    }

    /// `LOOKUP`.
    pub async fn lookup(&self, provider: ProviderId, id: MyKeyId) -> Result<Lookup, ClientError> {
        self.call(&Request::Lookup { provider, id }, read_lookup)
            .await
    }

    /// `LOOKUP_BATCH`: answers in the order of `ids`.
    pub async fn lookup_batch(
        &self,
        provider: ProviderId,
        ids: &[MyKeyId],
    ) -> Result<Vec<Lookup>, ClientError> {
        let mut raw = Vec::new();
        let ids_list = IdList::from_ids(ids, &mut raw);
        let req = Request::LookupBatch {
            provider,
            ids: ids_list,
        };
        checked_batch(self.call(&req, read_batch).await?, ids.len())
    }

    /// Opens a stream for pipelined lookups (`PIPELINE`, `engine/PROTOCOL.md`): its lookups go
    /// one after another on that one stream, each answered in turn, instead of a stream each.
    /// A server that does not know `PIPELINE` refuses the first lookup with `UNKNOWN_OPCODE`;
    /// send lookups with [`Client::lookup`] then.
    pub async fn pipeline(&self) -> Result<Pipeline, ClientError> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(StreamError::Open)?;
        let mut frame = Vec::with_capacity(64);
        Request::Pipeline
            .encode(&mut frame)
            .ok_or(ClientError::RequestTooLarge { op: "PIPELINE" })?;
        send.write_all(&frame).await.map_err(StreamError::Write)?;
        Ok(Pipeline {
            send,
            recv,
            acked: false,
            frame,
            answer: Vec::with_capacity(64),
            answer_len: 0,
        })
    }

    /// `CHALLENGE`.
    pub async fn challenge(&self) -> Result<Challenge, ClientError> {
        self.call(&Request::Challenge, |r| match r {
            Response::Challenge(c) => Some(c),
            _ => None,
        })
        .await
    }

    /// `LOOKUP_CARD`: the ID bound to the card (if any) and the answer for `provider`.
    pub async fn lookup_card(
        &self,
        provider: ProviderId,
        card: CardProof<'_>,
    ) -> Result<(Option<MyKeyId>, Lookup), ClientError> {
        self.call(&Request::LookupCard { provider, card }, |r| match r {
            Response::LookupCard { id, answer } => Some((id, answer)),
            _ => None,
        })
        .await
    }

    async fn done(&self, req: &Request<'_>) -> Result<(), ClientError> {
        self.call(req, |r| matches!(r, Response::Done).then_some(()))
            .await
    }

    /// `REGISTER_FULL`: returns the new MyKey ID.
    pub async fn register_full(&self, card: CardProof<'_>) -> Result<MyKeyId, ClientError> {
        self.call(&Request::RegisterFull { card }, |r| match r {
            Response::Registered(id) => Some(id),
            _ => None,
        })
        .await
    }

    /// `REGISTER_PROVISIONAL`.
    pub async fn register_provisional(
        &self,
        id: MyKeyId,
        card: CardProof<'_>,
    ) -> Result<(), ClientError> {
        self.done(&Request::RegisterProvisional { id, card }).await
    }

    /// `CONFIRM`.
    pub async fn confirm(&self, id: MyKeyId, card: CardProof<'_>) -> Result<(), ClientError> {
        self.done(&Request::Confirm { id, card }).await
    }

    /// `LINK`.
    pub async fn link(
        &self,
        id: MyKeyId,
        provider: ProviderId,
        service: ServiceId,
        replace: bool,
    ) -> Result<LinkOutcome, ClientError> {
        let req = Request::Link {
            id,
            provider,
            service,
            replace,
        };
        self.call(&req, |r| match r {
            Response::Link(o) => Some(o),
            _ => None,
        })
        .await
    }

    /// `UNLINK`: true if a link was removed.
    pub async fn unlink(&self, id: MyKeyId, provider: ProviderId) -> Result<bool, ClientError> {
        self.call(&Request::Unlink { id, provider }, |r| match r {
            Response::Unlink(o) => Some(o == UnlinkOutcome::Unlinked),
            _ => None,
        })
        .await
    }

    /// `REBIND`.
    pub async fn rebind(&self, id: MyKeyId, card: CardProof<'_>) -> Result<(), ClientError> {
        self.done(&Request::Rebind { id, card }).await
    }

    /// `DELETE`.
    pub async fn delete(&self, id: MyKeyId) -> Result<(), ClientError> {
        self.done(&Request::Delete { id }).await
    }

    async fn summary(&self, req: &Request<'_>) -> Result<PushSummary, ClientError> {
        self.call(req, |r| match r {
            Response::Push(s) => Some(s),
            _ => None,
        })
        .await
    }

    /// `PUSH_CRL`.
    pub async fn push_crl(&self, push: PushId, crl: &[u8]) -> Result<PushSummary, ClientError> {
        self.summary(&Request::PushCrl { push, crl }).await
    }

    /// `PUSH_SERIALS`.
    pub async fn push_serials(
        &self,
        push: PushId,
        list: &[u8],
    ) -> Result<PushSummary, ClientError> {
        self.summary(&Request::PushSerials { push, list }).await
    }

    /// `STATS`.
    pub async fn stats(&self) -> Result<Vec<(String, u64)>, ClientError> {
        self.call(&Request::Stats, |r| match r {
            Response::Stats(s) => Some(s.iter().map(|(n, v)| (n.to_owned(), v)).collect()),
            _ => None,
        })
        .await
    }

    /// `REGISTER_PROVIDER`: true if newly registered.
    pub async fn register_provider(&self, provider: ProviderId) -> Result<bool, ClientError> {
        self.call(&Request::RegisterProvider { provider }, |r| match r {
            Response::RegisterProvider(o) => Some(o == ProviderOutcome::Registered),
            _ => None,
        })
        .await
    }

    /// `EXPORT`: calls `row` for every link of `provider`, and returns how many there were.
    pub async fn export(
        &self,
        provider: ProviderId,
        mut row: impl FnMut(ExportedLink),
    ) -> Result<u64, ClientError> {
        let mut frame = Vec::new();
        Request::Export { provider }
            .encode(&mut frame)
            .ok_or(ClientError::RequestTooLarge {
                op: Op::Export.name(),
            })?;
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(StreamError::Open)?;
        send.write_all(&frame).await.map_err(StreamError::Write)?;
        let _ = send.finish();
        let mut header = [0u8; HEADER_LEN];
        recv.read_exact(&mut header)
            .await
            .map_err(StreamError::ReadExact)?;
        let header = ResponseHeader::decode(&header)?;
        if !header.is_ok() {
            let body = recv
                .read_to_end(header.len.min(wire::RESPONSE_LEN_MAX) as usize)
                .await
                .map_err(StreamError::Read)?;
            return Err(ClientError::refused(header.status, &body));
        }
        if header.len != wire::STREAMED || header.op != Op::Export as u8 {
            return Err(WireError::bad("an export answer that is not streamed").into());
        }
        let mut decoder = ExportDecoder::new();
        let mut buf = [0u8; u8::MAX as usize + wire::EXPORT_ROW_FIXED];
        loop {
            let part = &mut buf[..decoder.need()];
            recv.read_exact(part)
                .await
                .map_err(StreamError::ReadExact)?;
            match decoder.step(part)? {
                ExportStep::More => {}
                ExportStep::Row(r) => row(r),
                ExportStep::End(total) => return Ok(total),
            }
        }
    }

    /// Closes the connection without waiting (a shared endpoint carries on).
    pub fn close_ref(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"bye");
    }

    /// Closes the connection. When this client owns its endpoint (made by
    /// [`Client::connect`]), waits until the server has been told.
    pub async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"bye");
        // A shared endpoint serves other connections; only a last holder waits for idle.
        if self.endpoint.open_connections() == 0 {
            self.endpoint.wait_idle().await;
        }
    }
}
