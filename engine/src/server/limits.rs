//! The limits of a running server: how many connections, requests, writes and handshakes it
//! takes at once, how long a request may take to arrive and a write to be acknowledged, and
//! the per-certificate token bucket. Every limit is a named constant with its reason.
//!
//! Owns the numbers and the bucket; the stream task (`stream`) applies them.

use std::time::Duration;

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
/// Default handshakes accepted per second: each costs the server a TLS handshake with an RSA
/// or ECDSA signature and a client-certificate chain check (~1 ms of a core), so an
/// unthrottled reconnect storm of 13,000 terminals would take the node's CPU from lookups;
/// 5,000 per second lets them all in within about three seconds.
pub const HANDSHAKES_PER_SECOND: u32 = 5_000;

/// How long a request may take to arrive, header and body: a lookup is one datagram, a card
/// registration a few kilobytes; 10 s covers a terminal on a bad mobile link.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a revocation push (up to `wire::PUSH_LEN_MAX`) may take to arrive: 256 MiB
/// through a [`STREAM_RECEIVE_WINDOW`](super::STREAM_RECEIVE_WINDOW) per round trip of 100 ms takes about 100 s.
pub const PUSH_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Default requests per second per client certificate: far above a counter terminal's needs,
/// low enough that one misbehaving terminal cannot take a node.
pub const RATE_PER_IDENTITY: u32 = 5_000;

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

/// A token bucket shared by every connection of one client certificate.
pub(super) struct Bucket {
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl Bucket {
    pub(super) fn new(rate: u32) -> Self {
        Self {
            state: std::sync::Mutex::new((f64::from(rate), std::time::Instant::now())),
        }
    }

    /// Takes one token at `rate` per second (a burst of one second's worth); false when the
    /// identity is over its rate. A rate of 0 means no limit.
    pub(super) fn take(&self, rate: u32) -> bool {
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
