//! The QUIC server: a quinn endpoint with TLS 1.3 (rustls, the aws-lc-rs provider passed
//! explicitly), mandatory client certificates chained to the operator's client CA, and one
//! request per stream as `engine/PROTOCOL.md` specifies.
//!
//! Owns the transport, the limits and the authorisation of every request against the identity
//! its client certificate carries (`auth`). Contains no domain logic: it decodes with `wire`,
//! asks the registry (writes on the blocking pool, since they wait for an fsync), and encodes
//! the answer. Every refusal is a status in a response; nothing a client sends can panic the
//! server or grow memory without bound (connection, stream, in-flight and frame limits are named
//! constants).

pub mod admin;
pub mod auth;
pub mod config;
pub mod dev;
pub mod pki;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::{Endpoint, RecvStream, SendStream};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::sync::Semaphore;

use crate::id::{ActorId, Timestamp};
use crate::jpki::Jpki;
use crate::registry::{Registry, RegistryError};
use crate::wire::{self, HEADER_LEN, Op, Request, Status, WireError};
pub use auth::{Identity, Role};

/// Connections served at once; more are refused at the handshake.
pub const CONNECTIONS_MAX: usize = 20_000;
/// Requests being executed at once, over all connections; more are answered `BUSY`. Writes
/// have a budget of their own ([`WRITES_IN_FLIGHT_MAX`]), so a stuck disk cannot use these up.
pub const IN_FLIGHT_MAX: usize = 4096;
/// Writes being executed at once (each holds a thread of tokio's blocking pool while it waits
/// for its fsync); more are answered `BUSY`. Half of the pool's 512 threads, so that card
/// lookups and exports, which also run there, keep threads even with every write stuck.
pub const WRITES_IN_FLIGHT_MAX: usize = 256;
/// How long a write may wait for its fsync before the client is answered `OUTCOME_UNKNOWN`:
/// a healthy fsync takes milliseconds, and the deadline must stay well inside the drain grace
/// so that a stop is not held up by a stuck disk.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Revocation-push bodies received at once (each up to `wire::PUSH_LEN_MAX`); more are
/// answered `BUSY` before any byte of them is buffered.
pub const PUSH_BODIES_MAX: usize = 2;
/// How long a draining server keeps answering `BUSY` to requests that were already on their
/// way before it closes connections.
pub const DRAIN_LINGER: Duration = Duration::from_millis(250);
/// How long a draining server waits for one answer to be delivered.
pub const DRAIN_FLUSH: Duration = Duration::from_secs(5);
/// Idle time after which a connection is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A client CA certificate was refused as a trust anchor.
    #[error("TLS: client CA: {0}")]
    ClientCa(rustls::Error),
    /// The client-certificate verifier could not be built (no client CA, a bad CRL).
    #[error("TLS: client verifier: {0}")]
    ClientVerifier(rustls::server::VerifierBuilderError),
    /// The server's certificate chain or key was refused (a key that does not match its
    /// certificate, an unsupported key type).
    #[error("TLS: server certificate: {0}")]
    ServerCert(rustls::Error),
    /// TLS 1.3 could not be chosen with the provider.
    #[error("TLS: protocol version: {0}")]
    Protocol(rustls::Error),
    /// The provider has no cipher suite QUIC can start with.
    #[error("TLS: QUIC: {0}")]
    Quic(quinn::crypto::rustls::NoInitialCipherSuite),
    /// The socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

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

/// The aws-lc-rs crypto provider: the one provider, passed explicitly everywhere.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The transport settings both ends use. ACKs are asked for at once (threshold 0), so a lone
/// request's response is not held back by QUIC's 25 ms delayed ACK.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(wire::STREAMS_PER_CONNECTION_MAX))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(Some(Duration::from_secs(15)));
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(0))
        .max_ack_delay(Some(Duration::from_millis(1)));
    t.ack_frequency_config(Some(ack));
    t
}

/// The QUIC server configuration `mykeyd` serves with: TLS 1.3, aws-lc-rs, client
/// certificates required and checked against the client CA and its CRLs, ALPN `mykey/1`, and
/// the shared transport settings. Benchmarks and test servers use it to match `mykeyd`.
pub fn server_config(tls: ServerTls) -> Result<quinn::ServerConfig, ServerError> {
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
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(ServerError::Quic)?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut t = transport();
    // What a client may send ahead of the server: bounded per stream and per connection,
    // so that half-sent requests cannot pin more than this per connection.
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    sc.transport_config(Arc::new(t));
    Ok(sc)
}

/// What the server serves: the registry, the JPKI layer, and the clock.
pub struct Service {
    /// The registry.
    pub registry: Registry,
    /// The JPKI layer.
    pub jpki: Jpki,
    /// Reads the time; tests pass a fixed one.
    pub clock: fn() -> Timestamp,
}

impl AsRef<crate::store::Store> for Service {
    fn as_ref(&self) -> &crate::store::Store {
        self.registry.store()
    }
}

/// The system clock in whole seconds.
pub fn system_clock() -> Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Timestamp::from_unix_secs(secs).unwrap_or(Timestamp::from_raw(u32::MAX))
}

/// Limits of a running server (the `[limits]` section of the config).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are refused at the handshake.
    pub connections_max: usize,
    /// Reads executed at once over all connections; more are answered `BUSY`.
    pub in_flight_max: usize,
    /// Writes executed at once; more are answered `BUSY`.
    pub writes_in_flight_max: usize,
    /// How long a write may wait for its fsync before `OUTCOME_UNKNOWN` is answered.
    pub write_timeout: Duration,
    /// Requests per second one client certificate may make, over all its connections, with a
    /// burst of one second's worth; more are answered `RATE_LIMITED`. 0: no limit.
    pub rate_per_identity: u32,
    /// New connections (handshakes) accepted per second, with a burst of one second's worth;
    /// more are refused with QUIC's CONNECTION_REFUSED.
    pub handshakes_per_second: u32,
    /// How long a request (header and body) may take to arrive.
    pub read_timeout: Duration,
    /// How long a revocation push may take to arrive.
    pub push_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX,
            in_flight_max: IN_FLIGHT_MAX,
            writes_in_flight_max: WRITES_IN_FLIGHT_MAX,
            write_timeout: WRITE_TIMEOUT,
            rate_per_identity: RATE_PER_IDENTITY,
            handshakes_per_second: HANDSHAKES_PER_SECOND,
            read_timeout: READ_TIMEOUT,
            push_read_timeout: PUSH_READ_TIMEOUT,
        }
    }
}

/// How often a push waiting on the store looks whether the store's log is stuck.
const PUSH_STUCK_POLL: Duration = Duration::from_millis(100);

/// Default handshakes accepted per second: each costs the server a TLS handshake with an RSA
/// or ECDSA signature and a client-certificate chain check (~1 ms of a core), so an
/// unthrottled reconnect storm of 13,000 terminals would take the node's CPU from lookups;
/// 5,000 per second lets them all in within about three seconds.
pub const HANDSHAKES_PER_SECOND: u32 = 5_000;

/// How long a request may take to arrive, header and body: a lookup is one datagram, a card
/// registration a few kilobytes; 10 s covers a terminal on a bad mobile link.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a revocation push (up to `wire::PUSH_LEN_MAX`) may take to arrive: 256 MiB
/// through a [`STREAM_RECEIVE_WINDOW`] per round trip of 100 ms takes about 100 s.
pub const PUSH_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes a client may send on one stream ahead of the server reading them: four of the
/// largest requests (`wire::REQUEST_LEN_MAX`, 64 KiB), so requests arrive in one round trip,
/// and a push streams at 256 KiB per round trip.
pub const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;
/// Bytes a client may send on all its streams of a connection ahead of the server reading
/// them: what one connection can pin in the server's receive buffers (it was 16 MiB with
/// 256 streams at quinn's defaults).
pub const CONNECTION_RECEIVE_WINDOW: u32 = 256 * 1024;

/// Default requests per second per client certificate: far above a counter terminal's needs,
/// low enough that one misbehaving terminal cannot take a node.
pub const RATE_PER_IDENTITY: u32 = 5_000;

/// Receive and send buffer asked for on every QUIC UDP socket, server and client. All of a
/// node's connections (13,000 terminals) share one socket, so a burst of datagrams lands in one
/// kernel buffer; at Linux's default (208 KiB) a 13,000-terminal day at 3,000 requests/s lost
/// 6 % of its datagrams to `RcvbufErrors`, and each loss cost a QUIC retransmission timeout,
/// seconds at the tail. The kernel caps the request at `net.core.rmem_max` / `wmem_max`
/// (ops/RUNBOOK.md says how to raise them); what was granted is logged at start.
pub const UDP_BUFFER_BYTES: usize = 8 << 20;

/// A UDP socket bound to `addr` with [`UDP_BUFFER_BYTES`] asked for both buffers. Returns
/// the socket and the receive buffer the kernel granted for data.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, usize)> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // An IPv6 address binds IPv6 only, as std's bind does.
        sock.set_only_v6(true)?;
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
    let (socket, granted) = udp_socket(addr)?;
    let e = Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok((e, granted))
}

/// A token bucket shared by every connection of one client certificate.
struct Bucket {
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Self {
            state: std::sync::Mutex::new((f64::from(rate), std::time::Instant::now())),
        }
    }

    /// Takes one token at `rate` per second (a burst of one second's worth); false when the
    /// identity is over its rate. A rate of 0 means no limit.
    fn take(&self, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * rate;
        s.0 = (s.0 + refill).min(rate);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// State shared by the accept loop and every stream.
struct Shared {
    service: Arc<Service>,
    /// Reads' budget. A permit taken for work on the blocking pool lives as long as that
    /// work, not as long as the request.
    in_flight: Arc<Semaphore>,
    /// Writes' own budget.
    writes_in_flight: Arc<Semaphore>,
    limits: Limits,
    draining: AtomicBool,
    /// Streams being served (from accept to the last byte of the answer), for the drain.
    active: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    /// Rate buckets by client certificate fingerprint; an entry lives while a connection of
    /// that certificate does, so the map is bounded by the connection limit.
    buckets: dashmap::DashMap<[u8; 32], Arc<Bucket>>,
    /// Metric handles, registered once per (operation, status) instead of per request.
    meters: Meters,
    /// Requests per second per certificate; changed by a reload.
    rate: std::sync::atomic::AtomicU32,
    /// Revocation-push bodies being received (each up to 256 MiB).
    push_bodies: Semaphore,
}

/// The `status` label of an answer the peer cut off before it was delivered. Not a wire
/// status: nothing is sent.
pub const CUT_OFF: &str = "CUT_OFF";
/// Its key in the metric handles; no wire status has this code.
const CUT_OFF_CODE: u8 = 0xFF;

/// Pre-registered metric handles (bounded: 256 opcodes × 256 statuses at most).
#[derive(Default)]
struct Meters {
    requests: dashmap::DashMap<(u8, u8), metrics::Counter>,
    latency: dashmap::DashMap<u8, metrics::Histogram>,
}

impl Meters {
    /// Counts one answer: by its status, or as `CUT_OFF` when the peer went away before all of
    /// it was written (an export it stopped reading, say), which is not an answer delivered.
    fn record(&self, op: u8, status: Status, delivered: bool, seconds: f64) {
        let (code, label) = if delivered {
            (status as u8, status.name())
        } else {
            (CUT_OFF_CODE, CUT_OFF)
        };
        // Read locks on the hot path; the write lock only the first time a pair is seen.
        match self.requests.get(&(op, code)) {
            Some(c) => c.increment(1),
            None => {
                let op_name = Op::from_u8(op).map_or("UNKNOWN", Op::name);
                self.requests
                    .entry((op, code))
                    .or_insert_with(|| {
                        metrics::counter!(admin::REQUESTS_TOTAL, "op" => op_name, "status" => label)
                    })
                    .increment(1);
            }
        }
        match self.latency.get(&op) {
            Some(h) => h.record(seconds),
            None => {
                let op_name = Op::from_u8(op).map_or("UNKNOWN", Op::name);
                self.latency
                    .entry(op)
                    .or_insert_with(|| metrics::histogram!(admin::REQUEST_SECONDS, "op" => op_name))
                    .record(seconds);
            }
        }
    }
}

/// A bound, serving endpoint.
pub struct Server {
    endpoint: Endpoint,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds `addr` and starts serving on the current tokio runtime.
    pub fn start(
        addr: SocketAddr,
        tls: ServerTls,
        service: Arc<Service>,
        limits: Limits,
    ) -> Result<Self, ServerError> {
        let (endpoint, granted) = endpoint_on(addr, Some(server_config(tls)?))
            .map_err(|source| ServerError::Bind { addr, source })?;
        if granted < UDP_BUFFER_BYTES {
            tracing::warn!(
                granted,
                wanted = UDP_BUFFER_BYTES,
                "the kernel granted a smaller UDP receive buffer: raise net.core.rmem_max (ops/RUNBOOK.md) or bursts will drop datagrams"
            );
        } else {
            tracing::info!(granted, "UDP receive buffer");
        }
        let shared = Arc::new(Shared {
            service,
            in_flight: Arc::new(Semaphore::new(limits.in_flight_max)),
            writes_in_flight: Arc::new(Semaphore::new(limits.writes_in_flight_max)),
            limits,
            draining: AtomicBool::new(false),
            active: std::sync::atomic::AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            buckets: dashmap::DashMap::new(),
            meters: Meters::default(),
            rate: std::sync::atomic::AtomicU32::new(limits.rate_per_identity),
            push_bodies: Semaphore::new(PUSH_BODIES_MAX),
        });
        metrics::gauge!(admin::CONNECTIONS_MAX).set(limits.connections_max as f64);
        let task = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        Ok(Self {
            endpoint,
            task,
            shared,
        })
    }

    /// The address bound (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Replaces the TLS material (server certificate, client CA, client CRL) for new
    /// connections; live connections keep theirs. A refused configuration changes nothing.
    pub fn reload_tls(&self, tls: ServerTls) -> Result<(), ServerError> {
        self.endpoint.set_server_config(Some(server_config(tls)?));
        Ok(())
    }

    /// Changes the per-certificate request rate (a reload).
    pub fn set_rate_per_identity(&self, rate: u32) {
        self.shared.rate.store(rate, Ordering::Relaxed);
    }

    /// Drains: refuses new connections and new requests (`BUSY`), waits up to `grace` for the
    /// requests in flight to finish (every acknowledged write is already durable), then closes.
    pub async fn drain(self, grace: Duration) {
        self.shared.draining.store(true, Ordering::Release);
        self.endpoint.set_server_config(None);
        // Requests already on their way over live connections get a BUSY answer rather than a
        // closed connection.
        tokio::time::sleep(DRAIN_LINGER.min(grace)).await;
        let shared = self.shared.clone();
        let _ = tokio::time::timeout(grace, async move {
            loop {
                let notified = shared.idle.notified();
                if shared.active.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
        self.shutdown().await;
    }

    /// Stops accepting, closes every connection, and waits for the endpoint to go idle.
    pub async fn shutdown(self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"server shutting down");
        self.task.abort();
        self.endpoint.wait_idle().await;
    }
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.limits.connections_max));
    let handshakes = Bucket::new(shared.limits.handshakes_per_second);
    for reason in ["limit", "identity", "handshake_rate"] {
        metrics::counter!(admin::CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(0);
    }
    while let Some(incoming) = endpoint.accept().await {
        if !handshakes.take(shared.limits.handshakes_per_second) {
            metrics::counter!(admin::CONNECTIONS_REFUSED_TOTAL, "reason" => "handshake_rate")
                .increment(1);
            incoming.refuse();
            continue;
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!(admin::CONNECTIONS_REFUSED_TOTAL, "reason" => "limit").increment(1);
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(conn) = incoming.await else {
                return;
            };
            let (ident, fingerprint) = match peer_identity(&conn) {
                Ok((i, f)) => (Arc::new(i), f),
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
            let bucket = shared
                .buckets
                .entry(fingerprint)
                .or_insert_with(|| Arc::new(Bucket::new(shared.limits.rate_per_identity)))
                .clone();
            let gauge = metrics::gauge!(admin::CONNECTIONS);
            gauge.increment(1.0);
            tracing::debug!(role = ident.role.name(), name = %ident.name, "connection");
            while let Ok((send, recv)) = conn.accept_bi().await {
                let shared = shared.clone();
                let ident = ident.clone();
                let bucket = bucket.clone();
                shared.active.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    serve_stream(&shared, &ident, &bucket, send, recv).await;
                    if shared.active.fetch_sub(1, Ordering::AcqRel) == 1 {
                        shared.idle.notify_waiters();
                    }
                });
            }
            gauge.decrement(1.0);
            // The last connection of this certificate takes its bucket away.
            drop(bucket);
            shared
                .buckets
                .remove_if(&fingerprint, |_, b| Arc::strong_count(b) == 1);
        });
    }
}

fn peer_identity(conn: &quinn::Connection) -> Result<(Identity, [u8; 32]), auth::IdentityError> {
    let certs = conn
        .peer_identity()
        .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(auth::IdentityError::NoCertificate)?;
    let leaf = certs.first().ok_or(auth::IdentityError::NoCertificate)?;
    let ident = auth::identity(leaf)?;
    let fingerprint = ident.fingerprint;
    Ok((ident, fingerprint))
}

/// Writes a whole answer and finishes the stream; false when the peer went away first (it
/// cannot be answered, and the metrics count it `CUT_OFF`).
async fn respond(send: &mut SendStream, frame: &[u8]) -> bool {
    send.write_all(frame).await.is_ok() && send.finish().is_ok()
}

async fn serve_stream(
    shared: &Arc<Shared>,
    ident: &Arc<Identity>,
    bucket: &Bucket,
    mut send: SendStream,
    recv: RecvStream,
) {
    let start = std::time::Instant::now();
    let (op, status, delivered) = serve_request(shared, ident, bucket, &mut send, recv).await;
    if shared.draining.load(Ordering::Acquire) {
        // While draining, a stream counts as active until its answer is delivered, so the
        // close that ends the drain cannot discard it.
        let _ = tokio::time::timeout(DRAIN_FLUSH, send.stopped()).await;
    }
    shared
        .meters
        .record(op, status, delivered, start.elapsed().as_secs_f64());
    let op_name = Op::from_u8(op).map_or("UNKNOWN", Op::name);
    if matches!(Op::from_u8(op), Some(Op::PushCrl | Op::PushSerials)) {
        let outcome = if status == Status::Ok {
            "applied"
        } else {
            "refused"
        };
        metrics::counter!(admin::PUSHES_TOTAL, "op" => op_name, "outcome" => outcome).increment(1);
        if status == Status::Ok {
            metrics::gauge!(admin::LAST_PUSH_SECONDS).set(system_clock().unix_secs() as f64);
        }
        tracing::info!(op = op_name, status = status.name(), actor = %ident.name, "revocation push");
    }
}

/// Serves one stream; returns the opcode byte and the status answered.
async fn serve_request(
    shared: &Arc<Shared>,
    ident: &Arc<Identity>,
    bucket: &Bucket,
    send: &mut SendStream,
    mut recv: RecvStream,
) -> (u8, Status, bool) {
    let service = &shared.service;
    // Room for any single answer but a batch's, so the common case never reallocates.
    let mut out = Vec::with_capacity(256);
    if shared.draining.load(Ordering::Acquire) {
        let e = WireError {
            status: Status::Busy,
            message: "the server is draining; retry on another node".into(),
        };
        let _ = recv.stop(quinn::VarInt::from_u32(0));
        return refuse(send, 0, &e).await;
    }
    // The whole request must arrive within its deadline, or the stream is answered and
    // dropped (which stops it), so a client cannot pin receive buffers by sending slowly.
    let started = tokio::time::Instant::now();
    let late = |what: &str, limit: Duration| WireError {
        status: Status::BadFrame,
        message: format!(
            "the {what} did not arrive within {} ms; send a request whole",
            limit.as_millis()
        ),
    };
    let read_timeout = shared.limits.read_timeout;
    let mut header = [0u8; HEADER_LEN];
    match tokio::time::timeout(read_timeout, recv.read_exact(&mut header)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => {
            let e = WireError {
                status: Status::BadFrame,
                message: "the stream ended inside the frame header".into(),
            };
            return refuse(send, 0, &e).await;
        }
        Err(_) => return refuse(send, 0, &late("frame header", read_timeout)).await,
    }
    let (op, len) = match wire::request_header(&header) {
        Ok(v) => v,
        Err((op, e)) => {
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            return refuse(send, op, &e).await;
        }
    };
    // Nothing is buffered for a request its certificate may not make, and at most
    // PUSH_BODIES_MAX large push bodies are buffered at once.
    if !ident.role.may(op) {
        let e = forbidden(format!(
            "a {} certificate may not run {}",
            ident.role.name(),
            op.name()
        ));
        let _ = recv.stop(quinn::VarInt::from_u32(0));
        return refuse(send, op as u8, &e).await;
    }
    let _push_permit = if matches!(op, Op::PushCrl | Op::PushSerials) {
        match shared.push_bodies.try_acquire() {
            Ok(p) => Some(p),
            Err(_) => {
                let e = WireError {
                    status: Status::Busy,
                    message: "another revocation push is being received; retry shortly".into(),
                };
                let _ = recv.stop(quinn::VarInt::from_u32(0));
                return refuse(send, op as u8, &e).await;
            }
        }
    } else {
        None
    };
    // The body grows as it arrives (never sized from the header alone) and must end exactly
    // where the header says.
    let limit = if matches!(op, Op::PushCrl | Op::PushSerials) {
        shared.limits.push_read_timeout
    } else {
        read_timeout
    };
    let body =
        match tokio::time::timeout_at(started + limit, recv.read_to_end(len as usize + 1)).await {
            Ok(Ok(b)) if b.len() == len as usize => b,
            Err(_) => return refuse(send, op as u8, &late("request", limit)).await,
            Ok(_) => {
                let e = WireError {
                    status: Status::BadFrame,
                    message: format!("the stream does not hold exactly one {len}-byte body"),
                };
                return refuse(send, op as u8, &e).await;
            }
        };
    let rate = shared.rate.load(Ordering::Relaxed);
    if !bucket.take(rate) {
        let e = WireError {
            status: Status::RateLimited,
            message: format!(
                "this certificate is over its {rate} requests per second; retry shortly"
            ),
        };
        return refuse(send, op as u8, &e).await;
    }
    // Reads and writes draw on separate budgets: writes waiting on a stuck fsync hold theirs
    // until the fsync returns, and must not leave lookups without slots.
    let (budget, what) = if changes_store(op) {
        (&shared.writes_in_flight, "writes")
    } else {
        (&shared.in_flight, "requests")
    };
    let Ok(permit) = budget.clone().try_acquire_owned() else {
        let e = WireError {
            status: Status::Busy,
            message: format!("too many {what} in flight; retry shortly"),
        };
        return refuse(send, op as u8, &e).await;
    };
    let req = match Request::decode(op, &body) {
        Ok(r) => r,
        Err(e) => return refuse(send, op as u8, &e).await,
    };
    if let Err(e) = authorise(ident, &req) {
        return refuse(send, op as u8, &e).await;
    }
    if let Request::Export { provider } = req {
        let (status, delivered) = export(service, provider, send).await;
        return (op as u8, status, delivered);
    }
    let result = if runs_blocking(op) {
        let service = service.clone();
        let ident = ident.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Held until the work returns, however long after its client was answered.
            let _permit = permit;
            let mut out = Vec::new();
            match Request::decode(op, &body) {
                Ok(req) => execute(&service, &ident, &req, &mut out),
                Err(e) => Err(e.into()),
            }
            .map(|()| out)
        });
        let (timeout, writes) = (shared.limits.write_timeout, changes_store(op));
        let outcome_unknown = |message: String| {
            Err(Refusal::from(WireError {
                status: Status::OutcomeUnknown,
                message,
            }))
        };
        let finished = if !writes {
            Ok(task.await)
        } else if matches!(op, Op::PushCrl | Op::PushSerials) {
            // A push applies up to millions of revocations in many changes and may take
            // minutes on a healthy disk: its deadline is a log write or fsync stuck for
            // `write_timeout`, not its own length.
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
            Ok(Ok(r)) => r,
            Ok(Err(_)) if writes => outcome_unknown(
                "the write failed inside the server after it may have been applied; retry the same request to learn its outcome".into(),
            ),
            Ok(Err(_)) => Err(WireError {
                status: Status::Internal,
                message: "the request failed inside the server; it changed nothing".into(),
            }
            .into()),
            Err(_) => {
                tracing::warn!(
                    op = op.name(),
                    timeout_ms = timeout.as_millis() as u64,
                    "a write did not complete within write_timeout: answered OUTCOME_UNKNOWN"
                );
                outcome_unknown(format!(
                    "the write did not complete within {} ms (the store's log is slow or stuck): it may or may not be applied; retry the same request to learn its outcome",
                    timeout.as_millis()
                ))
            }
        }
    } else {
        let r = execute(service, ident, &req, &mut out).map(|()| std::mem::take(&mut out));
        drop(permit);
        r
    };
    match result {
        Ok(frame) => {
            let delivered = respond(send, &frame).await;
            (op as u8, Status::Ok, delivered)
        }
        Err(Refusal(e, existing)) => {
            wire::error_response(&mut out, op as u8, &e, existing.as_ref());
            let delivered = respond(send, &out).await;
            (op as u8, e.status, delivered)
        }
    }
}

async fn refuse(send: &mut SendStream, op: u8, e: &WireError) -> (u8, Status, bool) {
    let mut out = Vec::new();
    wire::error_response(&mut out, op, e, None);
    let delivered = respond(send, &out).await;
    (op, e.status, delivered)
}

/// Operations that wait for an fsync or do heavy work (RSA, whole-table walks), run off the
/// async workers.
fn runs_blocking(op: Op) -> bool {
    !matches!(op, Op::Lookup | Op::LookupBatch | Op::Challenge | Op::Stats)
}

/// Operations that change the store: they wait for an fsync, draw on the write budget and
/// have the write deadline.
fn changes_store(op: Op) -> bool {
    runs_blocking(op) && !matches!(op, Op::LookupCard | Op::Export)
}

fn forbidden(message: String) -> WireError {
    WireError {
        status: Status::Forbidden,
        message,
    }
}

/// Checks the request against the identity's role and, for a counter, its providers.
pub fn authorise(ident: &Identity, req: &Request<'_>) -> Result<(), WireError> {
    let op = req.op();
    if !ident.role.may(op) {
        return Err(forbidden(format!(
            "a {} certificate may not run {}",
            ident.role.name(),
            op.name()
        )));
    }
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
pub fn id_tag(id: &crate::id::MyKeyId) -> String {
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
pub struct Refusal(WireError, Option<crate::id::ServiceId>);

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        Self(e, None)
    }
}

fn refused(e: RegistryError) -> Refusal {
    let existing = match &e {
        RegistryError::LinkConflict { existing, .. } => Some(*existing),
        _ => None,
    };
    Refusal(wire::refusal(&e), existing)
}

/// Runs a decoded, authorised request and writes the success frame into `out`.
fn execute(
    service: &Service,
    ident: &Identity,
    req: &Request<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let now = (service.clock)();
    let reg = &service.registry;
    let op = req.op() as u8;
    // A card's challenge must come back over a connection of the certificate that asked.
    if let Request::LookupCard { card, .. }
    | Request::RegisterFull { card }
    | Request::RegisterProvisional { card, .. }
    | Request::Confirm { card, .. }
    | Request::Rebind { card, .. } = req
    {
        service
            .jpki
            .check_challenge_owner(card.challenge, &ident.fingerprint)
            .map_err(|e| refused(e.into()))?;
    }
    wire::begin_response(out, op, Status::Ok);
    match *req {
        Request::Lookup { provider, id } => {
            let l = reg.lookup(now, &id, &provider).map_err(refused)?;
            wire::put_answer(out, &l);
        }
        Request::LookupBatch { provider, ids } => {
            let p = reg.provider_ref(&provider).map_err(refused)?;
            out.extend_from_slice(&(ids.len() as u16).to_le_bytes());
            // Through the store's batched path, which overlaps the IDs' memory misses.
            let mut failed = None;
            reg.lookup_batch_each(now, p, ids.iter(), |l| match l {
                Ok(l) => wire::put_answer(out, &l),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            })
            .map_err(refused)?;
            if let Some(e) = failed {
                return Err(refused(e));
            }
        }
        Request::Challenge => {
            let c = service
                .jpki
                .issue_challenge_for(now, ident.fingerprint)
                .map_err(|e| refused(e.into()))?;
            wire::put_challenge(out, &c);
        }
        Request::LookupCard { provider, card } => {
            let l = reg
                .lookup_card(now, &service.jpki, &card, &provider)
                .map_err(refused)?;
            match l.id {
                Some(id) => {
                    out.push(1);
                    out.extend_from_slice(id.as_bytes());
                }
                None => out.push(0),
            }
            wire::put_answer(out, &l.lookup);
        }
        Request::RegisterFull { card } => {
            let id = reg
                .register_card(now, actor(ident)?, &service.jpki, &card)
                .map_err(refused)?;
            tracing::info!(id = %id_tag(&id), by = %ident.name, "full registration");
            out.extend_from_slice(id.as_bytes());
        }
        Request::RegisterProvisional { id, card } => reg
            .register_provisional_card(now, actor(ident)?, &service.jpki, id, &card)
            .map_err(refused)?,
        Request::Confirm { id, card } => reg
            .confirm_card(now, actor(ident)?, &service.jpki, id, &card)
            .map_err(refused)?,
        Request::Link {
            id,
            provider,
            service: svc,
            replace,
        } => {
            let o = reg
                .link(now, actor(ident)?, id, provider, svc, replace)
                .map_err(refused)?;
            wire::put_link_outcome(out, &o);
        }
        Request::Unlink { id, provider } => {
            let o = reg
                .unlink(now, actor(ident)?, id, provider)
                .map_err(refused)?;
            out.push(match o {
                crate::registry::UnlinkOutcome::Unlinked => 0,
                crate::registry::UnlinkOutcome::NotLinked => 1,
            });
        }
        Request::Rebind { id, card } => reg
            .rebind_card(now, actor(ident)?, &service.jpki, id, &card)
            .map_err(refused)?,
        Request::Delete { id } => {
            reg.delete(now, actor(ident)?, id).map_err(refused)?;
            tracing::info!(id = %id_tag(&id), by = %ident.name, "deleted");
        }
        Request::PushCrl { push, crl } => {
            let s = reg
                .push_crl(now, actor(ident)?, &service.jpki, push, crl)
                .map_err(refused)?;
            wire::put_push_summary(out, &s);
        }
        Request::PushSerials { push, list } => {
            let s = reg
                .push_serials(now, actor(ident)?, &service.jpki, push, list)
                .map_err(refused)?;
            wire::put_push_summary(out, &s);
        }
        Request::Stats => {
            let stats = stats(service);
            out.extend_from_slice(&(stats.len() as u16).to_le_bytes());
            for (name, v) in stats {
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Request::RegisterProvider { provider } => {
            let o = reg
                .register_provider(now, actor(ident)?, provider)
                .map_err(refused)?;
            out.push(match o {
                crate::registry::ProviderOutcome::Registered => 0,
                crate::registry::ProviderOutcome::AlreadyRegistered => 1,
            });
        }
        Request::Export { .. } => {
            return Err(WireError {
                status: Status::Internal,
                message: "EXPORT is streamed".into(),
            }
            .into());
        }
    }
    wire::end_response(out);
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
        v.push((t.table.name(), n));
    }
    v
}

async fn export(
    service: &Arc<Service>,
    provider: crate::id::ProviderId,
    send: &mut SendStream,
) -> (Status, bool) {
    // Rows are gathered on the blocking pool (the export walks the whole table), then streamed
    // in chunks of at most EXPORT_CHUNK_MAX rows.
    let svc = service.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        svc.registry
            .export(&provider, |r| rows.push(*r))
            .map(|_| rows)
    })
    .await;
    let mut out = Vec::new();
    let rows = match rows {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            let (_, status, delivered) = refuse(send, Op::Export as u8, &wire::refusal(&e)).await;
            return (status, delivered);
        }
        Err(_) => {
            let e = WireError {
                status: Status::Internal,
                message: "the export failed inside the server".into(),
            };
            let (_, status, delivered) = refuse(send, Op::Export as u8, &e).await;
            return (status, delivered);
        }
    };
    wire::begin_response(&mut out, Op::Export as u8, Status::Ok);
    out[4..8].copy_from_slice(&wire::STREAMED.to_le_bytes());
    for chunk in rows.chunks(wire::EXPORT_CHUNK_MAX) {
        out.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
        for r in chunk {
            out.extend_from_slice(r.id.as_bytes());
            out.push(match r.state {
                crate::registry::IdState::Active => 0,
                crate::registry::IdState::Provisional => 1,
                crate::registry::IdState::Suspended => 2,
                crate::registry::IdState::Deleted => 3,
            });
            out.push(r.service.as_bytes().len() as u8);
            out.extend_from_slice(r.service.as_bytes());
        }
        if send.write_all(&out).await.is_err() {
            // The peer stopped reading: the export was not delivered.
            return (Status::Ok, false);
        }
        out.clear();
    }
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    (Status::Ok, respond(send, &out).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_tags_are_stable_distinct_and_hide_the_id() {
        let a = crate::id::MyKeyId::parse(b"1C2410DF79DGEL").expect("id");
        let b = crate::id::MyKeyId::parse(b"1C2410DF79DGEM").expect("id");
        assert_eq!(id_tag(&a), id_tag(&a));
        assert_ne!(id_tag(&a), id_tag(&b));
        assert_eq!(id_tag(&a).len(), 16);
        assert!(!id_tag(&a).to_uppercase().contains("1C2410"));
    }
}
