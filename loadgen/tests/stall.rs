//! Coordinated omission, shown: a test server that stalls for 300 ms once. In open loop the
//! stall reaches the percentiles (every request scheduled during it is late); in closed loop
//! it hides behind the one request that waited (the senders stopped sending), so p99 stays low
//! while max shows the stall.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mykey_engine::id::{MyKeyId, ProviderId, Timestamp};
use mykey_engine::server::dev::DevOperatorPki;
use mykey_engine::server::pki::OperatorCa;
use mykey_engine::server::system_clock;
use mykey_load::runner::{Mode, Options, Target, run};
use mykey_load::trace::{Event, Request};

const STALL_AFTER: Duration = Duration::from_millis(300);
const STALL_FOR: Duration = Duration::from_millis(300);

/// A mykey/1 server that answers every request "not linked", and stalls every answer due in
/// [first request + 300 ms, + 600 ms) until the end of that window.
fn stalling_server(pki: &DevOperatorPki) -> (quinn::Endpoint, std::net::SocketAddr) {
    let sc = mykey_engine::server::server_config(pki.server_tls(Vec::new())).expect("config");
    let ep = quinn::Endpoint::server(sc, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = ep.local_addr().expect("addr");
    let first: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let e = ep.clone();
    tokio::spawn(async move {
        while let Some(inc) = e.accept().await {
            let first = first.clone();
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((mut s, mut r)) = conn.accept_bi().await {
                    let first = first.clone();
                    tokio::spawn(async move {
                        let _ = r.read_to_end(1024).await;
                        let t0 = *first.get_or_init(Instant::now);
                        let (from, until) = (t0 + STALL_AFTER, t0 + STALL_AFTER + STALL_FOR);
                        let now = Instant::now();
                        if now >= from && now < until {
                            tokio::time::sleep_until(until.into()).await;
                        }
                        // LOOKUP, OK, body: answer kind 1 (not linked).
                        let _ = s.write_all(&[1, 0, 1, 0, 1, 0, 0, 0, 1]).await;
                        let _ = s.finish();
                    });
                }
            });
        }
    });
    (ep, addr)
}

fn schedule(n: u64) -> Vec<Event> {
    let p = ProviderId::parse(b"13101-ST-0001").expect("p");
    let id = MyKeyId::parse(b"1C2410DF79DGEL").expect("id");
    // A request every 5 ms from one terminal.
    (0..n)
        .map(|i| Event {
            at_us: i * 5_000,
            terminal: 0,
            request: Request::Lookup(p, id),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_shows_a_stall_that_closed_loop_hides() {
    let now = system_clock();
    let from = Timestamp::from_unix_secs(now.unix_secs() - 86_400).expect("t");
    let pki = Arc::new(
        DevOperatorPki::generate(&["localhost"], from, now.plus_secs(86_400)).expect("pki"),
    );
    let mut results = Vec::new();
    // Open loop: 300 requests over 1.5 s. Closed loop ignores the schedule and sends back to
    // back, so it gets enough requests to run well past the stall.
    for (mode, n) in [(Mode::Open, 300), (Mode::Closed { workers: 1 }, 3000)] {
        // A fresh server each time, so each run meets the stall from its own first request.
        let (ep, addr) = stalling_server(&pki);
        let target = Target {
            addrs: vec![addr],
            server_name: "localhost".into(),
            pki: Arc::new(
                OperatorCa::load(pki.ca().clone(), &pki.operator_ca().key_pkcs8()).expect("ca"),
            ),
            cards: None,
        };
        let opts = Options {
            mode,
            speed: 1.0,
            sockets: 1,
            progress: false,
            terminals: 1,
            pipeline: false,
        };
        let report = run(&target, schedule(n), opts).await.expect("run");
        assert_eq!((report.ok(), report.failed()), (n, 0), "{}", report.human());
        results.push((
            report.percentile_us("lookup", 0.99).expect("p99"),
            report.percentile_us("lookup", 1.0).expect("max"),
        ));
        ep.close(quinn::VarInt::from_u32(0), b"");
    }
    let ((open_p99, open_max), (closed_p99, closed_max)) = (results[0], results[1]);
    // Open loop: ~60 of 300 requests were scheduled inside the stall, so p99 is near its
    // length.
    assert!(
        open_p99 >= 150_000,
        "open-loop p99 {open_p99} µs must show the 300 ms stall"
    );
    assert!(open_max >= 250_000, "open-loop max {open_max} µs");
    // Closed loop: one request waited, the sender waited with it; p99 looks healthy.
    assert!(
        closed_max >= 250_000,
        "closed loop met the stall too: max {closed_max} µs"
    );
    assert!(
        closed_p99 < 100_000,
        "closed-loop p99 {closed_p99} µs hides the stall"
    );
}
