//! TLS 1.3 handshake benchmarks: the CPU one terminal's handshake costs the server, with the
//! server's own TLS configuration (`server_tls_config`: a P-256 client certificate checked
//! against the client CA and a CRL of 1,000 serials) and the client's (`ClientTls::
//! rustls_config`), in memory, without QUIC (whose packet protection and loss recovery come
//! on top). Each handshake is timed on the server's side and, as its baseline in the same
//! run, on the client's:
//! - a full handshake, as every terminal makes today;
//! - a resumed one, from a ticket of the connection before: the server sends none
//!   (PROTOCOL.md, "Transport"), so a copy of its configuration turns on stateless tickets
//!   (aws-lc-rs `Ticketer`, one ticket a connection) and the client keeps them. This is what
//!   resumption would save, measured before deciding on it (`ops/CAPACITY.md`, "Connections");
//! - the server's per-connection reading of the client certificate (`auth::identity`), which an
//!   application-level recheck of a resumed certificate would build on.
// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use mykey_engine::id::{ProviderId, Timestamp};
use mykey_engine::server::dev::DevOperatorPki;
use mykey_engine::server::{Role, auth, server_tls_config, system_clock};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};

/// Serials on the client CA's CRL, none of them the terminal's.
const CRL_SERIALS: u64 = 1_000;
/// The terminal's serial.
const TERMINAL_SERIAL: u64 = 5_000;
/// Tickets the client keeps (it needs one at a time).
const CLIENT_SESSIONS: usize = 8;

struct Setup {
    server_full: Arc<ServerConfig>,
    client_full: Arc<ClientConfig>,
    server_tickets: Arc<ServerConfig>,
    client_tickets: Arc<ClientConfig>,
    leaf: rustls::pki_types::CertificateDer<'static>,
}

fn setup() -> Setup {
    let now = system_clock();
    let from = Timestamp::from_unix_secs(now.unix_secs() - 86_400).expect("time");
    let pki = DevOperatorPki::generate(&["localhost"], from, now.plus_secs(30 * 86_400))
        .expect("dev PKI");
    let revoked: Vec<u64> = (10..10 + CRL_SERIALS).collect();
    let crl = pki
        .operator_ca()
        .crl(2, from, now.plus_secs(86_400), &revoked)
        .expect("CRL");
    let provider = ProviderId::parse(b"BENCH-P").expect("provider");
    let terminal = pki
        .terminal(
            "bench-terminal",
            Role::Counter,
            &[provider],
            TERMINAL_SERIAL,
        )
        .expect("terminal certificate");
    let leaf = terminal.cert.clone();
    let server = server_tls_config(pki.server_tls(vec![crl])).expect("server TLS");
    let client = pki
        .client_tls(&terminal)
        .rustls_config()
        .expect("client TLS");
    let mut server_tickets = server.clone();
    server_tickets.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer");
    server_tickets.send_tls13_tickets = 1;
    let mut client_tickets = client.clone();
    client_tickets.resumption = Resumption::in_memory_sessions(CLIENT_SESSIONS);
    Setup {
        server_full: Arc::new(server),
        client_full: Arc::new(client),
        server_tickets: Arc::new(server_tickets),
        client_tickets: Arc::new(client_tickets),
        leaf,
    }
}

/// Everything `conn` has to send, into `out` (cleared first).
fn flight<D>(conn: &mut rustls::ConnectionCommon<D>, out: &mut Vec<u8>) {
    out.clear();
    while conn.wants_write() {
        conn.write_tls(out).expect("write a flight");
    }
}

/// Feeds the peer's flight `bytes` to `conn`, processing each record as it is read.
fn take<D>(conn: &mut rustls::ConnectionCommon<D>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes).expect("read a flight");
        conn.process_new_packets().expect("handshake");
    }
}

/// One handshake to its end, tickets included: (server's time, client's time, what kind the
/// server saw).
fn handshake(
    client_cfg: &Arc<ClientConfig>,
    server_cfg: &Arc<ServerConfig>,
) -> (Duration, Duration, Option<HandshakeKind>) {
    let t = Instant::now();
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = ClientConnection::new(client_cfg.clone(), name).expect("client connection");
    let mut tc = t.elapsed();
    let t = Instant::now();
    let mut s = ServerConnection::new(server_cfg.clone()).expect("server connection");
    let mut ts = t.elapsed();
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    loop {
        let t = Instant::now();
        flight(&mut c, &mut to_server);
        tc += t.elapsed();
        let t = Instant::now();
        take(&mut s, &to_server);
        flight(&mut s, &mut to_client);
        ts += t.elapsed();
        let t = Instant::now();
        take(&mut c, &to_client);
        tc += t.elapsed();
        if to_server.is_empty()
            && to_client.is_empty()
            && !c.is_handshaking()
            && !s.is_handshaking()
        {
            break;
        }
    }
    (ts, tc, s.handshake_kind())
}

fn bench_handshakes(c: &mut Criterion) {
    let s = setup();
    // The first ticketed handshake is a full one that leaves the client a ticket; from then
    // on each resumed handshake uses one and is sent the next.
    let (_, _, kind) = handshake(&s.client_tickets, &s.server_tickets);
    assert_eq!(kind, Some(HandshakeKind::Full));
    let (_, _, kind) = handshake(&s.client_tickets, &s.server_tickets);
    assert_eq!(
        kind,
        Some(HandshakeKind::Resumed),
        "the ticket must be used"
    );

    let mut g = c.benchmark_group("tls13 handshake, P-256 client certificate");
    g.sample_size(30);
    for (label, client, server, want) in [
        ("full", &s.client_full, &s.server_full, HandshakeKind::Full),
        (
            "resumed from a ticket",
            &s.client_tickets,
            &s.server_tickets,
            HandshakeKind::Resumed,
        ),
    ] {
        for (side, server_side) in [("server's CPU", true), ("client's CPU", false)] {
            g.bench_function(format!("{label}, {side}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (ts, tc, kind) = handshake(client, server);
                        assert_eq!(kind, Some(want), "{label}");
                        total += if server_side { ts } else { tc };
                    }
                    total
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("client certificate, per connection");
    g.bench_function("auth::identity (parse the leaf, role and providers)", |b| {
        b.iter(|| auth::identity(std::hint::black_box(s.leaf.as_ref())).expect("identity"))
    });
    g.finish();
}

criterion_group!(benches, bench_handshakes);
criterion_main!(benches);
