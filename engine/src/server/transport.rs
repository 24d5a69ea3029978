//! The QUIC transport of the server and the client: the one TLS provider, the TLS 1.3
//! configuration with mandatory client certificates, the transport settings both ends share,
//! receive windows, and the UDP sockets under them.
//!
//! Owns how bytes reach a stream; never reads a request or decides what to answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use quinn::Endpoint;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::ServerError;
use crate::wire;

/// Idle time after which a connection is closed (keep-alives every 15 s keep a terminal's
/// connection open).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes a client may send on one stream ahead of the server reading them: four of the
/// largest requests (`wire::REQUEST_LEN_MAX`, 64 KiB), so requests arrive in one round trip,
/// and a push streams at 256 KiB per round trip.
pub const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;
/// Bytes a client may send on all its streams of a connection ahead of the server reading
/// them: what one connection can pin in the server's receive buffers (it was 16 MiB with
/// 256 streams at quinn's defaults).
pub const CONNECTION_RECEIVE_WINDOW: u32 = 256 * 1024;

/// The server's TLS material.
pub struct ServerTls {
    /// The server's certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// The operator's client CA certificates.
    pub client_cas: Vec<CertificateDer<'static>>,
    /// CRLs of the client CA: a revoked client certificate fails the handshake.
    pub client_crls: Vec<CertificateRevocationListDer<'static>>,
}

impl Clone for ServerTls {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            client_cas: self.client_cas.clone(),
            client_crls: self.client_crls.clone(),
        }
    }
}

/// The aws-lc-rs crypto provider: the one provider, passed explicitly everywhere. TLS 1.3's
/// AES-128-GCM with SHA-256 comes first: a handshake derives its QUIC keys with HKDF, and
/// SHA-256 runs on the CPU's SHA extensions where SHA-384 does not (the SHA-384 suite cost
/// ~6 % of a node's CPU during a morning open of 13,000 terminals).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// The transport settings both ends use. ACKs are asked for at once (threshold 0), so a lone
/// request's response is not held back by QUIC's 25 ms delayed ACK. The peer may open no
/// stream toward this end: a client is never asked anything, and the server grants its
/// streams itself ([`server_config`], [`wire::STREAMS_GRANTED_FIRST`]).
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(Some(Duration::from_secs(15)));
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(0))
        .max_ack_delay(Some(Duration::from_millis(1)));
    t.ack_frequency_config(Some(ack));
    t
}

/// The TLS configuration under [`server_config`]: TLS 1.3, aws-lc-rs, client certificates
/// required and checked against the client CA and its CRLs, ALPN `mykey/1`, no session
/// resumption. The handshake benchmark runs it without QUIC.
pub fn server_tls_config(tls: ServerTls) -> Result<rustls::ServerConfig, ServerError> {
    let provider = crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for ca in tls.client_cas {
        roots.add(ca).map_err(ServerError::ClientCa)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .with_crls(tls.client_crls)
    .build()
    .map_err(ServerError::ClientVerifier)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ServerError::Protocol)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.chain, tls.key)
        .map_err(ServerError::ServerCert)?;
    cfg.alpn_protocols = vec![wire::ALPN.to_vec()];
    // No session resumption. A resumed TLS 1.3 handshake restores the client's certificate
    // from the stored session without checking it again (chain, CRL, expiry), so it would let
    // a certificate in past what a full handshake refuses. rustls's defaults would otherwise
    // keep every session, client chain included, in a 256-entry cache and send two tickets on
    // each connection: work on every handshake for resumptions that 13,000 terminals evict
    // before they come back.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// The QUIC server configuration `mykeyd` serves with: [`server_tls_config`] and the shared
/// transport settings. Benchmarks and test servers use it to match `mykeyd`.
pub fn server_config(tls: ServerTls) -> Result<quinn::ServerConfig, ServerError> {
    let cfg = server_tls_config(tls)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(ServerError::Quic)?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut t = transport();
    // What a client may send ahead of the server: bounded per stream and per connection,
    // so that half-sent requests cannot pin more than this per connection.
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(wire::STREAMS_GRANTED_FIRST));
    sc.transport_config(Arc::new(t));
    Ok(sc)
}

/// The streams a server grants one connection: [`wire::STREAMS_GRANTED_FIRST`] at its
/// handshake (set by [`server_config`]), four times as many each time the client has them all
/// open, up to [`wire::STREAMS_PER_CONNECTION_MAX`]. quinn keeps state for every stream a peer
/// may open, so an idle terminal holding the small grant costs kilobytes, while a pipelining
/// client reaches the full limit. One per connection, in its accept loop.
pub struct StreamGrant {
    open: Arc<AtomicU32>,
    granted: u32,
}

/// A stream counted open by its [`StreamGrant`] until this is dropped.
pub struct OpenStream(Arc<AtomicU32>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for StreamGrant {
    fn default() -> Self {
        Self {
            open: Arc::new(AtomicU32::new(0)),
            granted: wire::STREAMS_GRANTED_FIRST,
        }
    }
}

impl StreamGrant {
    /// Counts a stream `conn` accepted as open, granting more streams when the client now has
    /// all it was granted open. Keep the returned guard as long as the stream is served.
    pub fn accepted(&mut self, conn: &quinn::Connection) -> OpenStream {
        if self.open.fetch_add(1, Ordering::AcqRel) + 1 >= self.granted
            && self.granted < wire::STREAMS_PER_CONNECTION_MAX
        {
            self.granted = (self.granted * 4).min(wire::STREAMS_PER_CONNECTION_MAX);
            conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(self.granted));
        }
        OpenStream(self.open.clone())
    }
}

/// Receive and send buffer asked for on every QUIC UDP socket, server and client. All of a
/// node's connections (13,000 terminals) share one socket, so a burst of datagrams lands in one
/// kernel buffer; at Linux's default (208 KiB) a 13,000-terminal day at 3,000 requests/s lost
/// 6 % of its datagrams to `RcvbufErrors`, and each loss cost a QUIC retransmission timeout,
/// seconds at the tail. The kernel caps the request at `net.core.rmem_max` / `wmem_max`
/// (ops/RUNBOOK.md says how to raise them); what was granted is logged at start.
pub const UDP_BUFFER_BYTES: usize = 8 << 20;

/// Most endpoints (UDP sockets sharing one port, each with its own quinn endpoint and
/// accept loop) one server runs.
pub const ENDPOINTS_MAX: usize = 64;

/// A UDP socket bound to `addr` with [`UDP_BUFFER_BYTES`] asked for both buffers, and
/// `SO_REUSEPORT` set when `shared_port` (so several sockets can bind the same port, the
/// kernel spreading the peers over them by a hash of their addresses). Returns the socket and
/// the receive buffer the kernel granted for data.
pub fn udp_socket(
    addr: SocketAddr,
    shared_port: bool,
) -> std::io::Result<(std::net::UdpSocket, usize)> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // An IPv6 address binds IPv6 only, as std's bind does.
        sock.set_only_v6(true)?;
    }
    if shared_port {
        sock.set_reuse_port(true)?;
    }
    // Best effort: a smaller buffer still works, with more loss under bursts.
    let _ = sock.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(UDP_BUFFER_BYTES);
    sock.bind(&addr.into())?;
    let reported = sock.recv_buffer_size().unwrap_or(0);
    // Linux reports twice what it grants for data (the rest is its bookkeeping).
    let granted = if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    };
    Ok((sock.into(), granted))
}

/// A quinn endpoint on a socket from [`udp_socket`].
pub fn endpoint_on(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<(Endpoint, usize)> {
    let (socket, granted) = udp_socket(addr, false)?;
    Ok((endpoint_of(socket, server)?, granted))
}

fn endpoint_of(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<Endpoint> {
    Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// `n` server endpoints on one port (`SO_REUSEPORT`): the first binds `addr` (port 0 picks
/// one), the others the port it got. Each is a quinn endpoint with its own driver task, so the
/// datagram path of a node runs on up to `n` cores; the kernel sends each client address to
/// one socket, so a connection stays on the endpoint it started on. `n` = 1 is one socket
/// without `SO_REUSEPORT`. Returns the endpoints and the smallest receive buffer granted.
pub fn endpoints_on(
    addr: SocketAddr,
    server: quinn::ServerConfig,
    n: usize,
) -> std::io::Result<(Vec<Endpoint>, usize)> {
    if n == 1 {
        let (e, granted) = endpoint_on(addr, Some(server))?;
        return Ok((vec![e], granted));
    }
    if n == 0 || n > ENDPOINTS_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{n} endpoints: give 1 to {ENDPOINTS_MAX}"),
        ));
    }
    let (first, mut granted) = udp_socket(addr, true)?;
    let bound = first.local_addr()?;
    let mut endpoints = vec![endpoint_of(first, Some(server.clone()))?];
    for _ in 1..n {
        let (socket, g) = udp_socket(bound, true)?;
        granted = granted.min(g);
        endpoints.push(endpoint_of(socket, Some(server.clone()))?);
    }
    Ok((endpoints, granted))
}
