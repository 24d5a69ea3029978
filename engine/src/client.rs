//! The async client library of `mykey/1`, used by the `mykey` CLI, the load generator and the
//! tests: one QUIC connection with a client certificate, one stream per request.
//!
//! Owns the client side of the transport and the typed calls. Never decides anything a server
//! decides: a refusal comes back as [`ClientError::Refused`] with the server's status and
//! message.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::Endpoint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::id::{MyKeyId, ProviderId, PushId, ServiceId};
use crate::jpki::{CardProof, Challenge};
use crate::registry::{IdState, LinkOutcome, Lookup, PushSummary};
use crate::wire::{self, HEADER_LEN, IdList, Op, Reader, Request, Status};

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

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TLS material was refused, or the connection could not be set up.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection or stream failed.
    #[error("connection: {0}")]
    Io(String),
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
    Protocol(String),
}

impl ClientError {
    /// The refusal's status, if the server refused.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Refused { status, .. } => Status::from_u8(*status),
            _ => None,
        }
    }
}

fn io(e: impl std::fmt::Display) -> ClientError {
    ClientError::Io(e.to_string())
}

fn proto(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(e.to_string())
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

/// A connection to a `mykeyd`.
pub struct Client {
    endpoint: Endpoint,
    conn: quinn::Connection,
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
            .map_err(|e| ClientError::Connect(e.to_string()))
    }

    /// Connects over an existing endpoint (see [`Client::endpoint`]) with this certificate.
    pub async fn connect_on(
        endpoint: &Endpoint,
        addr: SocketAddr,
        server_name: &str,
        tls: ClientTls,
    ) -> Result<Self, ClientError> {
        let provider = crate::server::crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for r in tls.server_roots {
            roots
                .add(r)
                .map_err(|e| ClientError::Connect(format!("server root: {e}")))?;
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(tls.chain, tls.key)
            .map_err(|e| ClientError::Connect(format!("client certificate: {e}")))?;
        cfg.alpn_protocols = vec![wire::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let mut cc = quinn::ClientConfig::new(Arc::new(quic));
        cc.transport_config(Arc::new(crate::server::transport()));
        ServerName::try_from(server_name.to_owned())
            .map_err(|e| ClientError::Connect(format!("server name {server_name:?}: {e}")))?;
        let conn = endpoint
            .connect_with(cc, addr, server_name)
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(Self {
            endpoint: endpoint.clone(),
            conn,
        })
    }

    /// The QUIC connection, for tests and diagnostics that drive streams by hand (a client that
    /// stops reading mid-answer, a request sent in pieces).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Sends one raw frame on its own stream and returns the response's status byte, opcode
    /// byte and body (for tests and diagnostics of malformed frames).
    pub async fn raw(&self, frame: &[u8]) -> Result<(u8, u8, Vec<u8>), ClientError> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(io)?;
        send.write_all(frame).await.map_err(io)?;
        // The server may stop reading early (a refused header); that is not an error here.
        let _ = send.finish();
        let mut resp = recv.read_to_end(RESPONSE_READ_MAX).await.map_err(io)?;
        if resp.len() < HEADER_LEN || resp[0] != wire::VERSION {
            return Err(proto(
                "response shorter than a header or of another version",
            ));
        }
        let len = u32::from_le_bytes([resp[4], resp[5], resp[6], resp[7]]) as usize;
        if resp.len() != HEADER_LEN + len {
            return Err(proto("response length does not match its header"));
        }
        let (status, op) = (resp[1], resp[2]);
        resp.drain(..HEADER_LEN);
        Ok((status, op, resp))
    }

    async fn call(&self, req: &Request<'_>) -> Result<Vec<u8>, ClientError> {
        let mut frame = Vec::with_capacity(64);
        req.encode(&mut frame)
            .ok_or_else(|| proto("a field is too long for its length prefix"))?;
        let (status, op, body) = self.raw(&frame).await?;
        if status != Status::Ok as u8 {
            let mut r = Reader::new(&body);
            let message = r
                .bytes16()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            let existing = if status == Status::LinkConflict as u8 {
                r.service().ok()
            } else {
                None
            };
            return Err(ClientError::Refused {
                status,
                message,
                existing,
            });
        }
        if op != req.op() as u8 {
            return Err(proto("response for another operation"));
        }
        Ok(body)
    }

    /// `LOOKUP`.
    pub async fn lookup(&self, provider: ProviderId, id: MyKeyId) -> Result<Lookup, ClientError> {
        let b = self.call(&Request::Lookup { provider, id }).await?;
        let mut r = Reader::new(&b);
        let l = wire::get_answer(&mut r).map_err(proto)?;
        r.finish().map_err(proto)?;
        Ok(l)
    }

    /// `LOOKUP_BATCH`: answers in the order of `ids`.
    pub async fn lookup_batch(
        &self,
        provider: ProviderId,
        ids: &[MyKeyId],
    ) -> Result<Vec<Lookup>, ClientError> {
        let raw = wire::id_list_bytes(ids);
        let list = IdList::from_bytes(&raw).map_err(proto)?;
        let b = self
            .call(&Request::LookupBatch {
                provider,
                ids: list,
            })
            .await?;
        let mut r = Reader::new(&b);
        let n = usize::from(r.u16().map_err(proto)?);
        if n != ids.len() {
            return Err(proto("batch answer count differs from the request"));
        }
        let out = (0..n)
            .map(|_| wire::get_answer(&mut r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(proto)?;
        r.finish().map_err(proto)?;
        Ok(out)
    }

    /// `CHALLENGE`.
    pub async fn challenge(&self) -> Result<Challenge, ClientError> {
        let b = self.call(&Request::Challenge).await?;
        let mut r = Reader::new(&b);
        let c = wire::get_challenge(&mut r).map_err(proto)?;
        r.finish().map_err(proto)?;
        Ok(c)
    }

    /// `LOOKUP_CARD`: the ID bound to the card (if any) and the answer for `provider`.
    pub async fn lookup_card(
        &self,
        provider: ProviderId,
        card: CardProof<'_>,
    ) -> Result<(Option<MyKeyId>, Lookup), ClientError> {
        let b = self.call(&Request::LookupCard { provider, card }).await?;
        let mut r = Reader::new(&b);
        let id = match r.u8().map_err(proto)? {
            0 => None,
            1 => Some(r.id().map_err(proto)?),
            x => return Err(proto(format!("bound flag {x}"))),
        };
        let l = wire::get_answer(&mut r).map_err(proto)?;
        r.finish().map_err(proto)?;
        Ok((id, l))
    }

    async fn done(&self, req: &Request<'_>) -> Result<(), ClientError> {
        let b = self.call(req).await?;
        Reader::new(&b).finish().map_err(proto)
    }

    /// `REGISTER_FULL`: returns the new MyKey ID.
    pub async fn register_full(&self, card: CardProof<'_>) -> Result<MyKeyId, ClientError> {
        let b = self.call(&Request::RegisterFull { card }).await?;
        let mut r = Reader::new(&b);
        let id = r.id().map_err(proto)?;
        r.finish().map_err(proto)?;
        Ok(id)
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
        let b = self
            .call(&Request::Link {
                id,
                provider,
                service,
                replace,
            })
            .await?;
        let mut r = Reader::new(&b);
        let o = wire::get_link_outcome(&mut r).map_err(proto)?;
        r.finish().map_err(proto)?;
        Ok(o)
    }

    /// `UNLINK`: true if a link was removed.
    pub async fn unlink(&self, id: MyKeyId, provider: ProviderId) -> Result<bool, ClientError> {
        let b = self.call(&Request::Unlink { id, provider }).await?;
        match b[..] {
            [0] => Ok(true),
            [1] => Ok(false),
            _ => Err(proto("unlink outcome")),
        }
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
        let b = self.call(req).await?;
        let mut r = Reader::new(&b);
        let s = wire::get_push_summary(&mut r).map_err(proto)?;
        r.finish().map_err(proto)?;
        Ok(s)
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
        let b = self.call(&Request::Stats).await?;
        let mut r = Reader::new(&b);
        let n = r.u16().map_err(proto)?;
        let mut out = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let name = String::from_utf8_lossy(r.bytes8().map_err(proto)?).into_owned();
            out.push((name, r.u64().map_err(proto)?));
        }
        r.finish().map_err(proto)?;
        Ok(out)
    }

    /// `REGISTER_PROVIDER`: true if newly registered.
    pub async fn register_provider(&self, provider: ProviderId) -> Result<bool, ClientError> {
        let b = self.call(&Request::RegisterProvider { provider }).await?;
        match b[..] {
            [0] => Ok(true),
            [1] => Ok(false),
            _ => Err(proto("register-provider outcome")),
        }
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
            .ok_or_else(|| proto("provider too long"))?;
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(io)?;
        send.write_all(&frame).await.map_err(io)?;
        let _ = send.finish();
        let mut header = [0u8; HEADER_LEN];
        recv.read_exact(&mut header).await.map_err(io)?;
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if header[1] != Status::Ok as u8 {
            let body = recv
                .read_to_end(len.min(wire::RESPONSE_LEN_MAX) as usize)
                .await
                .map_err(io)?;
            let message = Reader::new(&body)
                .bytes16()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            return Err(ClientError::Refused {
                status: header[1],
                message,
                existing: None,
            });
        }
        if len != wire::STREAMED || header[2] != Op::Export as u8 {
            return Err(proto("an export is streamed"));
        }
        let mut n = 0u64;
        loop {
            let mut count = [0u8; 2];
            recv.read_exact(&mut count).await.map_err(io)?;
            let count = u16::from_le_bytes(count);
            if count == 0 {
                let mut total = [0u8; 8];
                recv.read_exact(&mut total).await.map_err(io)?;
                if u64::from_le_bytes(total) != n {
                    return Err(proto("export total differs from the rows received"));
                }
                return Ok(n);
            }
            for _ in 0..count {
                let mut fixed = [0u8; wire::EXPORT_ROW_FIXED];
                recv.read_exact(&mut fixed).await.map_err(io)?;
                let id = MyKeyId::parse(&fixed[..14]).map_err(proto)?;
                let state = match fixed[14] {
                    0 => IdState::Active,
                    1 => IdState::Provisional,
                    2 => IdState::Suspended,
                    3 => IdState::Deleted,
                    s => return Err(proto(format!("state {s}"))),
                };
                let mut svc = vec![0u8; usize::from(fixed[15])];
                recv.read_exact(&mut svc).await.map_err(io)?;
                let service = ServiceId::parse(&svc).map_err(proto)?;
                row(ExportedLink { id, state, service });
                n += 1;
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
