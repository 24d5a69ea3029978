//! The QUIC server: a quinn endpoint with TLS 1.3 (rustls, the aws-lc-rs provider passed
//! explicitly), mandatory client certificates chained to the operator's client CA, and one
//! request per stream as `engine/PROTOCOL.md` specifies.
//!
//! Owns the [`Server`] (start, reload, drain, stop) and the [`Service`] it serves. A request's
//! path runs through one file per concern: `transport` (TLS, QUIC settings, sockets), `stream`
//! (the accept loop and the per-stream task with its deadlines), `limits` (every limit and the
//! rate bucket), `handler` (the sans-IO request handler: checks, registry calls, refusal
//! statuses), `auth` (what a client certificate allows), `admin` (metrics and health over
//! HTTP). Contains no domain logic: the registry decides, `wire` encodes. Nothing a client
//! sends can panic the server or grow memory without bound.

pub mod admin;
pub mod auth;
pub mod config;
pub mod dev;
pub mod forward;
pub mod handler;
pub mod limits;
mod pipeline;
pub mod pki;
mod stream;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::Endpoint;

use crate::id::Timestamp;
use crate::jpki::Jpki;
use crate::registry::Registry;
pub use auth::{Identity, Role};
pub use handler::{
    AT_SEQ_WAIT_MAX, Admitted, Handled, Rejected, Unwrapped, Wrapper, admit, handle, handle_body,
    handle_unwrapped, id_tag, refusal, stats, unwrap,
};
pub use limits::*;
pub use stream::CUT_OFF;
use stream::{Meters, Shared, accept_loop};
pub use transport::*;

/// How long a draining server keeps answering `BUSY` to requests that were already on their
/// way before it closes connections.
pub const DRAIN_LINGER: Duration = Duration::from_millis(250);
/// How long a draining server waits for one answer to be delivered.
pub const DRAIN_FLUSH: Duration = Duration::from_secs(5);
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

/// What the server serves: the registry, the JPKI layer, and the clock.
pub struct Service {
    /// The registry.
    pub registry: Registry,
    /// The JPKI layer.
    pub jpki: Jpki,
    /// Reads the time; tests pass a fixed one.
    pub clock: fn() -> Timestamp,
}

impl AsRef<Registry> for Service {
    fn as_ref(&self) -> &Registry {
        &self.registry
    }
}

impl AsRef<crate::store::Store> for Service {
    fn as_ref(&self) -> &crate::store::Store {
        self.registry.store()
    }
}

/// The system clock in whole seconds: the one clock of the server and the binaries.
pub fn system_clock() -> Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Timestamp::from_unix_secs(secs).unwrap_or(Timestamp::from_raw(u32::MAX))
}

/// A bound server: its endpoints on one port, serving.
pub struct Server {
    endpoints: Vec<Endpoint>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds `addr` and starts serving on the current tokio runtime, on one endpoint.
    pub fn start(
        addr: SocketAddr,
        tls: ServerTls,
        service: Arc<Service>,
        limits: Limits,
    ) -> Result<Self, ServerError> {
        Self::start_with(addr, tls, service, limits, 1)
    }

    /// As [`Server::start`], on `endpoints` endpoints sharing the port ([`endpoints_on`]),
    /// each with its own accept loop; the limits are the node's, shared by all of them.
    pub fn start_with(
        addr: SocketAddr,
        tls: ServerTls,
        service: Arc<Service>,
        limits: Limits,
        endpoints: usize,
    ) -> Result<Self, ServerError> {
        let (endpoints, granted) = endpoints_on(addr, server_config(tls)?, endpoints)
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
            in_flight: Arc::new(limits::Budget::new(limits.in_flight_max)),
            writes_in_flight: Arc::new(limits::Budget::new(limits.writes_in_flight_max)),
            limits,
            draining: AtomicBool::new(false),
            active: std::sync::atomic::AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            buckets: dashmap::DashMap::new(),
            meters: Meters::default(),
            rate: std::sync::atomic::AtomicU32::new(limits.rate_per_identity),
            push_bodies: limits::Budget::new(PUSH_BODIES_MAX),
            forwarder: std::sync::OnceLock::new(),
            connections: Arc::new(limits::Budget::new(limits.connections_max)),
            handshakes: limits::Bucket::default(),
        });
        metrics::gauge!(admin::CONNECTIONS_MAX).set(limits.connections_max as f64);
        let tasks = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| tokio::spawn(accept_loop(e.clone(), i, shared.clone())))
            .collect();
        Ok(Self {
            endpoints,
            tasks,
            shared,
        })
    }

    /// Connections open now on each endpoint, in order.
    pub fn connections_by_endpoint(&self) -> Vec<usize> {
        self.endpoints
            .iter()
            .map(Endpoint::open_connections)
            .collect()
    }

    /// Passes the writes this node refuses as a cluster follower to the writer through `f`
    /// instead (`engine/CLUSTER.md`, "Forwarding writes"). Set once; a second call is ignored.
    pub fn forward_writes(&self, f: Arc<forward::Forwarder>) {
        let _ = self.shared.forwarder.set(f);
    }

    /// The address bound (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoints[0].local_addr()
    }

    /// Replaces the TLS material (server certificate, client CA, client CRL) for new
    /// connections; live connections keep theirs. A refused configuration changes nothing.
    pub fn reload_tls(&self, tls: ServerTls) -> Result<(), ServerError> {
        let sc = server_config(tls)?;
        for e in &self.endpoints {
            e.set_server_config(Some(sc.clone()));
        }
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
        for e in &self.endpoints {
            e.set_server_config(None);
        }
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
        for e in &self.endpoints {
            e.close(quinn::VarInt::from_u32(0), b"server shutting down");
        }
        for t in &self.tasks {
            t.abort();
        }
        for e in &self.endpoints {
            e.wait_idle().await;
        }
    }
}
