//! The admin HTTP endpoint and the metrics: `/metrics` (Prometheus text), `/livez` and
//! `/readyz`, on a separate TCP port bound to loopback by default.
//!
//! Owns the metric names (`mykey_` prefix, base units, `_total` counters, `_seconds`
//! histograms with explicit buckets; labels never carry a MyKey ID or a serial) and a minimal
//! HTTP/1.1 responder: one GET per connection, bounded request size, closed after the answer.
//! Never serves anything but these three paths.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Requests by operation and status.
pub const REQUESTS_TOTAL: &str = "mykey_requests_total";
/// Request latency by operation, from the first byte read to the last byte queued.
pub const REQUEST_SECONDS: &str = "mykey_request_duration_seconds";
/// Connections open now.
pub const CONNECTIONS: &str = "mykey_connections";
/// Connections open now on each endpoint (`server.endpoints` of them share the port).
pub const ENDPOINT_CONNECTIONS: &str = "mykey_endpoint_connections";
/// Connections refused (limit reached, or a client certificate without a valid identity).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "mykey_connections_refused_total";
/// Revocation pushes by kind and outcome.
pub const PUSHES_TOTAL: &str = "mykey_revocation_pushes_total";
/// Unix time of the last revocation push applied.
pub const LAST_PUSH_SECONDS: &str = "mykey_revocation_last_push_timestamp_seconds";
/// 1 when ready to serve.
pub const READY: &str = "mykey_ready";
/// Unix time at which a certificate the node depends on expires, by `cert`: `server` (its
/// TLS certificate), `client_ca` (the operator's client CA, the earliest if several),
/// `client_crl` (the client CRL's nextUpdate: a CRL past it must be republished) and
/// `jpki_anchor` (the newest JPKI generation: cards stop verifying once all have expired).
pub const CERT_EXPIRY_SECONDS: &str = "mykey_certificate_expiry_timestamp_seconds";
/// Unix time of the last successful start or reload of the certificates.
pub const LAST_RELOAD_SECONDS: &str = "mykey_config_last_reload_timestamp_seconds";
/// Reloads (SIGHUP) by outcome (`ok`, `refused`).
pub const RELOADS_TOTAL: &str = "mykey_config_reloads_total";
/// Limit on connections, for alerting on the fraction in use.
pub const CONNECTIONS_MAX: &str = "mykey_connections_max";

/// Every metric a node exports, the store's included (ops/ dashboards and alerts may use no
/// other: `tests/tests/ops.rs` checks both ways).
pub const ALL_METRICS: [&str; 27] = [
    REQUESTS_TOTAL,
    REQUEST_SECONDS,
    CONNECTIONS,
    ENDPOINT_CONNECTIONS,
    CONNECTIONS_MAX,
    CONNECTIONS_REFUSED_TOTAL,
    PUSHES_TOTAL,
    LAST_PUSH_SECONDS,
    READY,
    CERT_EXPIRY_SECONDS,
    LAST_RELOAD_SECONDS,
    RELOADS_TOTAL,
    crate::store::WAL_FSYNC_SECONDS,
    crate::store::WRITABLE,
    crate::store::WAL_FSYNC_AGE_SECONDS,
    crate::store::COMPACTOR_RUNNING,
    crate::store::RECOVERY_CUT_BYTES,
    crate::store::CORRUPT_READS_TOTAL,
    crate::store::DELTA_KEYS,
    crate::store::COMPACTIONS_TOTAL,
    crate::store::COMPACTION_SECONDS,
    crate::store::HUGE_PAGE_BYTES,
    // A cluster node's only (engine/CLUSTER.md).
    crate::cluster::node::ROLE,
    crate::cluster::node::EPOCH,
    crate::cluster::node::APPLIED_SEQ,
    crate::cluster::node::LAG_SECONDS,
    // Prometheus's own, per target.
    "up",
];

/// Latency buckets, in seconds: 50 µs to 1 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_4, 0.000_8, 0.001_6, 0.003_2, 0.006_4, 0.012_8, 0.025_6,
    0.051_2, 0.1, 0.5, 1.0,
];

/// Most bytes of an admin request read.
const ADMIN_REQUEST_MAX: usize = 4096;
/// Admin connections served at once: Prometheus, a health checker and an operator's curl
/// need a handful; more are closed on accept.
const ADMIN_CONNECTIONS_MAX: usize = 32;
/// Wait after a failed accept (EMFILE) before the next.
const ADMIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Time an admin client has to send its request.
const ADMIN_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed once; later calls get the same handle).
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let r = builder.build_recorder();
            let handle = r.handle();
            // Another recorder may be installed already (a test harness); then this handle
            // renders nothing, which /metrics reports honestly as empty.
            let _ = metrics::set_global_recorder(r);
            describe();
            handle
        })
        .clone()
}

/// The HELP text of every metric (Prometheus's linter, `promtool check metrics`, wants one).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by operation and status."
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Request time by operation, from the first byte read to the last byte queued."
    );
    describe_gauge!(CONNECTIONS, "QUIC connections open now.");
    describe_gauge!(
        ENDPOINT_CONNECTIONS,
        "QUIC connections open now on each endpoint of the port (server.endpoints)."
    );
    describe_gauge!(
        CONNECTIONS_MAX,
        "The connection limit (limits.connections_max)."
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "Connections refused: limit reached, or a client certificate without a valid identity."
    );
    describe_counter!(PUSHES_TOTAL, "Revocation pushes by operation and outcome.");
    describe_gauge!(
        LAST_PUSH_SECONDS,
        Unit::Seconds,
        "Unix time of the last revocation push applied since the start."
    );
    describe_gauge!(
        READY,
        "1 when the node serves: store open, certificates loaded, not draining."
    );
    describe_gauge!(
        CERT_EXPIRY_SECONDS,
        Unit::Seconds,
        "Unix time a certificate (or the client CRL's nextUpdate) the node uses runs out."
    );
    describe_gauge!(
        LAST_RELOAD_SECONDS,
        Unit::Seconds,
        "Unix time of the start or of the last reload that took."
    );
    describe_counter!(RELOADS_TOTAL, "SIGHUP reloads by outcome.");
    describe_histogram!(
        crate::store::WAL_FSYNC_SECONDS,
        Unit::Seconds,
        "Time of each group-commit log write and fsync."
    );
    describe_gauge!(
        crate::store::WRITABLE,
        "1 while the store accepts writes; 0 after a log write or fsync failed (lookups go on, writes are refused until restart)."
    );
    describe_gauge!(
        crate::store::WAL_FSYNC_AGE_SECONDS,
        Unit::Seconds,
        "Age of the log write and fsync in progress; 0 when none."
    );
    describe_gauge!(
        crate::store::COMPACTOR_RUNNING,
        "1 while the compactor runs and its last compaction succeeded; 0 while it retries after a failure or has stopped."
    );
    describe_gauge!(
        crate::store::RECOVERY_CUT_BYTES,
        Unit::Bytes,
        "Bytes of torn log tail cut by the last open of the store."
    );
    describe_counter!(
        crate::store::CORRUPT_READS_TOTAL,
        "Reads refused because a snapshot bucket or record failed its checksum."
    );
    describe_gauge!(
        crate::store::DELTA_KEYS,
        "Keys in the active delta, folded by the next compaction."
    );
    describe_counter!(crate::store::COMPACTIONS_TOTAL, "Compactions by outcome.");
    describe_gauge!(
        crate::store::HUGE_PAGE_BYTES,
        Unit::Bytes,
        "Bytes of the snapshot files mapped in 2 MiB pages now (FilePmdMapped; near 0 on a warm store: a page walk per lookup)."
    );
    describe_histogram!(
        crate::store::COMPACTION_SECONDS,
        Unit::Seconds,
        "Time of each compaction."
    );
    use crate::cluster::node;
    describe_gauge!(
        node::ROLE,
        "Cluster nodes only: 0 follower, 1 writer, 2 stopped (a gap, a chain mismatch or a local failure; /readyz says which)."
    );
    describe_gauge!(
        node::EPOCH,
        "Cluster nodes only: the writer epoch this node last saw."
    );
    describe_gauge!(
        node::APPLIED_SEQ,
        "Cluster nodes only: the last change seq this node's store holds."
    );
    describe_gauge!(
        node::LAG_SECONDS,
        Unit::Seconds,
        "Cluster nodes only: seconds since this node last knew it held every committed change (0 while it does)."
    );
}

/// Readiness: what `/readyz` and `mykey_ready` say. Not ready while starting and while
/// draining (the phase), and whenever a probe (the store's health, the cluster's state) names
/// a reason the node cannot do its whole job; ready but **degraded** while a probe names
/// something the node works around (a cluster follower serving reads while PostgreSQL is
/// unreachable). Evaluated on every `/readyz` and `/metrics` request, so a stuck fsync or a
/// dead compactor shows while it lasts.
pub struct Readiness {
    phase: std::sync::Mutex<Option<&'static str>>,
    probe: std::sync::Mutex<Option<Probe>>,
}

/// One thing a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The node cannot do its whole job: `/readyz` answers 503 with this reason.
    NotReady(String),
    /// The node serves, with this limitation: `/readyz` answers 200 and names it.
    Degraded(String),
}

impl Finding {
    /// Each reason of `reasons` (a store's health problems) as a reason not to be ready.
    pub fn not_ready(reasons: Vec<String>) -> Vec<Self> {
        reasons.into_iter().map(Self::NotReady).collect()
    }
}

/// Reads what can fail while serving: returns what it found, and refreshes the gauges it owns.
pub type Probe = Box<dyn Fn() -> Vec<Finding> + Send + Sync>;

impl Default for Readiness {
    fn default() -> Self {
        Self {
            phase: std::sync::Mutex::new(Some("starting")),
            probe: std::sync::Mutex::new(None),
        }
    }
}

impl Readiness {
    /// Sets the phase: `None` once serving, `Some("draining")` on the way out.
    pub fn set_phase(&self, phase: Option<&'static str>) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
        let _ = self.check();
    }

    /// Installs the probe, replacing any earlier one (a node that reopened its store probes
    /// the new one).
    pub fn set_probe(&self, probe: Probe) {
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(probe);
    }

    /// `Ok` with the degradations (none when all is well) when ready, else every reason not
    /// to be on one line (joined by `; `). Sets `mykey_ready`.
    pub fn check(&self) -> Result<Vec<String>, String> {
        let mut reasons: Vec<String> = Vec::new();
        let mut degraded = Vec::new();
        if let Some(p) = *self.phase.lock().unwrap_or_else(|e| e.into_inner()) {
            reasons.push(p.to_owned());
        }
        if let Some(probe) = &*self.probe.lock().unwrap_or_else(|e| e.into_inner()) {
            for f in probe() {
                match f {
                    Finding::NotReady(r) => reasons.push(r),
                    Finding::Degraded(d) => degraded.push(d),
                }
            }
        }
        metrics::gauge!(READY).set(if reasons.is_empty() { 1.0 } else { 0.0 });
        if reasons.is_empty() {
            Ok(degraded)
        } else {
            Err(reasons.join("; "))
        }
    }
}

/// The expiry times of the TLS material and the JPKI anchors a node runs with, read when they
/// are loaded and published once they are in use (at start and after a reload that took).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Expiry {
    server: Option<f64>,
    client_ca: Option<f64>,
    client_crl: Option<f64>,
    jpki_anchor: Option<f64>,
}

impl Expiry {
    /// Reads them. A certificate or CRL that cannot be parsed leaves its time unknown (and its
    /// gauge unset): the server refuses such material before it is used.
    pub fn of(tls: &super::ServerTls, anchors: &crate::jpki::Anchors) -> Self {
        use x509_parser::prelude::{FromDer, X509Certificate};
        use x509_parser::revocation_list::CertificateRevocationList;
        let not_after = |der: &[u8]| {
            X509Certificate::from_der(der)
                .ok()
                .map(|(_, c)| c.validity().not_after.timestamp() as f64)
        };
        Self {
            server: tls.chain.first().and_then(|c| not_after(c)),
            client_ca: tls
                .client_cas
                .iter()
                .filter_map(|c| not_after(c))
                .reduce(f64::min),
            client_crl: tls
                .client_crls
                .iter()
                .filter_map(|c| {
                    let (_, crl) = CertificateRevocationList::from_der(c).ok()?;
                    Some(crl.next_update()?.timestamp() as f64)
                })
                .reduce(f64::min),
            jpki_anchor: anchors
                .all()
                .iter()
                .map(|a| a.not_after().unix_secs() as f64)
                .reduce(f64::max),
        }
    }

    /// Sets the `mykey_certificate_expiry_timestamp_seconds` gauges.
    pub fn publish(&self) {
        for (cert, at) in [
            ("server", self.server),
            ("client_ca", self.client_ca),
            ("client_crl", self.client_crl),
            ("jpki_anchor", self.jpki_anchor),
        ] {
            if let Some(at) = at {
                metrics::gauge!(CERT_EXPIRY_SECONDS, "cert" => cert).set(at);
            }
        }
    }
}

/// Serves the admin endpoint on `addr` until the task is dropped. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    ready: Arc<Readiness>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = recorder();
    let task = tokio::spawn(async move {
        let open = Arc::new(super::limits::Budget::new(ADMIN_CONNECTIONS_MAX));
        loop {
            let mut sock = match listener.accept().await {
                Ok((sock, _)) => sock,
                Err(e) => {
                    // Out of file descriptors, typically: wait instead of spinning on it.
                    tracing::warn!(op = "accept", error = %e, "admin endpoint cannot accept");
                    tokio::time::sleep(ADMIN_ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Beyond the cap the connection is closed at once: a scraper or a health check
            // never needs more, and each one holds a task and a 4 KiB buffer.
            let Some(permit) = super::limits::Budget::try_take(open.clone()) else {
                drop(sock);
                continue;
            };
            let ready = ready.clone();
            let handle = handle.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut buf = vec![0u8; ADMIN_REQUEST_MAX];
                let mut n = 0;
                // Read until the end of the request head, the size limit, or the timeout.
                let read = tokio::time::timeout(ADMIN_READ_TIMEOUT, async {
                    while n < buf.len() {
                        match sock.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                n += k;
                                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                    break;
                                }
                            }
                        }
                    }
                })
                .await;
                let (status, ctype, body) = if read.is_err() {
                    ("408 Request Timeout", "text/plain", "timeout\n".to_owned())
                } else {
                    route(&buf[..n], &ready, &handle)
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok((local, task))
}

fn route(
    req: &[u8],
    ready: &Readiness,
    handle: &PrometheusHandle,
) -> (&'static str, &'static str, String) {
    let line = req.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return ("405 Method Not Allowed", "text/plain", "GET only\n".into());
    }
    match path {
        "/metrics" => {
            // Refreshes mykey_ready and the store gauges before they are rendered; the
            // huge-page reading walks the node's page tables, so only a scrape pays for it.
            let _ = ready.check();
            crate::store::publish_huge_pages();
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        }
        "/livez" => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" => match ready.check() {
            Ok(d) if d.is_empty() => ("200 OK", "text/plain", "ready\n".into()),
            Ok(d) => (
                "200 OK",
                "text/plain",
                format!("ready, degraded: {}\n", d.join("; ")),
            ),
            Err(reason) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}
