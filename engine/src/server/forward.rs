//! Writes sent to a cluster follower, passed on to the writer (`engine/CLUSTER.md`,
//! "Forwarding writes"): one mykey/1 connection with this node's `node` certificate to the
//! writer the cluster last named, a `FORWARD` per write carrying the client's identity and its
//! whole request frame, and the writer's answer frame handed back to be relayed unchanged.
//!
//! Owns that connection and the mapping of its failures to what the client is told: a write
//! that never left this node is `NO_WRITER` (nothing applied), one that left and got no answer
//! is `OUTCOME_UNKNOWN`. Never decides anything about the write itself (the writer does). A
//! revocation push goes in a `FORWARD_PUSH`, with a push's body limit and deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Identity;
use crate::client::{Client, ClientError, ClientTls};
use crate::wire::{self, Status, WireError};

/// How long connecting to the writer may take before the write is answered `NO_WRITER`.
pub const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the writer is, as the cluster last said (`None`: no writer known).
pub type WriterAddr = Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync>;

/// This node's way to the writer: see the module documentation.
pub struct Forwarder {
    endpoint: Endpoint,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server_roots: Vec<CertificateDer<'static>>,
    server_name: String,
    writer: WriterAddr,
    conn: tokio::sync::Mutex<Option<(SocketAddr, Arc<Client>)>>,
}

impl Forwarder {
    /// A forwarder presenting `tls` (a `node` certificate) to the writer at `writer()`, whose
    /// certificate must name `server_name`.
    pub fn new(tls: ClientTls, server_name: &str, writer: WriterAddr) -> Result<Self, ClientError> {
        Ok(Self {
            endpoint: Client::endpoint(false)?,
            chain: tls.chain,
            key: tls.key,
            server_roots: tls.server_roots,
            server_name: server_name.to_owned(),
            writer,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// Passes `frame`, the whole request of `client`, to the writer and returns the writer's
    /// whole answer frame. `challenge_taken`: this node consumed the card's challenge. A
    /// revocation push goes in a `FORWARD_PUSH`.
    pub async fn forward(
        &self,
        client: &Identity,
        frame: &[u8],
        challenge_taken: bool,
    ) -> Result<Vec<u8>, WireError> {
        let providers = client.providers.clone();
        let mut msg = Vec::with_capacity(frame.len() + 64);
        wire::encode_forward(
            client.role.code(),
            &client.name,
            client.fingerprint,
            &providers,
            challenge_taken,
            frame,
            &mut msg,
        )
        .ok_or_else(|| WireError::bad("the write does not fit a FORWARD"))?;
        let c = self.connection().await?;
        match c.exchange(&msg).await {
            Ok(answer) => Ok(answer),
            Err(ClientError::Io(crate::client::StreamError::Open(e))) => {
                self.forget(&c).await;
                Err(not_sent(&format!(
                    "the connection to the writer failed: {e}"
                )))
            }
            Err(e) => {
                self.forget(&c).await;
                tracing::warn!(op = "forward", error = %e, "a forwarded write got no answer from the writer");
                Err(WireError::new(
                    Status::OutcomeUnknown,
                    format!(
                        "the write was passed to the cluster's writer and no answer came back ({e}): it may or may not have been applied; retry the same request to learn its outcome"
                    ),
                ))
            }
        }
    }

    /// The connection to the writer, made again when the writer moved or the connection ended.
    async fn connection(&self) -> Result<Arc<Client>, WireError> {
        let Some(addr) = (self.writer)() else {
            return Err(not_sent("no writer is known to this node"));
        };
        let mut held = self.conn.lock().await;
        if let Some((a, c)) = &*held
            && *a == addr
            && c.connection().close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let tls = ClientTls {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            server_roots: self.server_roots.clone(),
        };
        let connect = Client::connect_on(&self.endpoint, addr, &self.server_name, tls);
        let c = match tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(c)) => Arc::new(c),
            Ok(Err(e)) => {
                tracing::warn!(op = "forward", writer = %addr, error = %e, "cannot connect to the cluster's writer");
                return Err(not_sent(&format!(
                    "cannot connect to the writer at {addr}: {e}"
                )));
            }
            Err(_) => {
                tracing::warn!(op = "forward", writer = %addr, "no connection to the cluster's writer within the timeout");
                return Err(not_sent(&format!(
                    "no connection to the writer at {addr} within {} ms",
                    FORWARD_CONNECT_TIMEOUT.as_millis()
                )));
            }
        };
        *held = Some((addr, c.clone()));
        Ok(c)
    }

    async fn forget(&self, c: &Arc<Client>) {
        let mut held = self.conn.lock().await;
        if held.as_ref().is_some_and(|(_, h)| Arc::ptr_eq(h, c)) {
            *held = None;
        }
    }
}

/// `NO_WRITER` for a write that never reached the writer.
fn not_sent(why: &str) -> WireError {
    WireError::new(
        Status::NoWriter,
        format!(
            "this node is a cluster follower and could not pass the write to the writer ({why}); nothing was applied; retry shortly"
        ),
    )
}
