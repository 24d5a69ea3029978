//! Lookups over QUIC on loopback, side by side with quinn's own floor on the same endpoint
//! setup, in one run: latency at one stream (p50, p99), throughput at 10 and 100 concurrent
//! requests, what the floor and mykey's `PIPELINE` gain when requests go in turn on streams
//! instead of one stream each (also over as many connections as redis-benchmark's `-c`), and
//! batched lookups. `bench/quic-vs-redis.sh` runs it beside redis-benchmark.
//!
//! Usage: `quic-bench [IDS] [SECONDS] [ROUNDS] [lookups]` (default 100,000 IDs, 3 s per
//! throughput point, 5 rounds of each concurrency, engine and floor alternating: the median and
//! the spread of the engine/floor ratio are printed; `lookups` runs only the latency and the
//! lookups-against-the-floor points, so more rounds fit in the same time). Each lookup point
//! also prints the CPU per request, client and server together, and the UDP sends per request. The store holds IDs `K<12 digits>X` linked for provider
//! `BENCH-P`, the same keys the Redis run loads. Client and server share the machine's cores,
//! as the reference figures do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mykey_bench::BenchDir;
use mykey_engine::client::Client;
use mykey_engine::id::{ActorId, MyKeyId, ProviderId, Timestamp};
use mykey_engine::jpki::dev::DevCa;
use mykey_engine::jpki::{Anchors, Jpki, JpkiConfig};
use mykey_engine::population::{self, BuildOptions};
use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{Lookup, Registry, RegistryConfig};
use mykey_engine::server::dev::DevOperatorPki;
use mykey_engine::server::{Limits, Role, Server, Service, system_clock, transport};
use mykey_engine::store::fs::{Fs, RealFs};

fn id(n: u64) -> MyKeyId {
    MyKeyId::parse(format!("K{n:012}X").as_bytes()).expect("id")
}

/// Rounds of each throughput point (engine, then floor, alternating); the median is reported.
const ROUNDS: usize = 5;
/// The longest batch the run sends (`LOOKUP_BATCH` of 1,000 IDs).
const BATCH_MAX: usize = 1000;

/// The median of `v`, which it leaves sorted.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

/// The floor: quinn with the same TLS, transport, sockets (`server::endpoint_on`, the same
/// UDP buffers) and stream grants (`server::StreamGrant`), answering 100 bytes to any request.
async fn floor_server(pki: &DevOperatorPki) -> (quinn::Endpoint, SocketAddr) {
    let sc = mykey_engine::server::server_config(pki.server_tls(Vec::new())).expect("config");
    let (ep, _) = mykey_engine::server::endpoint_on("127.0.0.1:0".parse().expect("addr"), Some(sc))
        .expect("bind");
    let addr = ep.local_addr().expect("addr");
    let e = ep.clone();
    tokio::spawn(async move {
        while let Some(inc) = e.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                let mut grant = mykey_engine::server::StreamGrant::default();
                while let Ok((mut s, mut r)) = conn.accept_bi().await {
                    let open = grant.accepted(&conn);
                    tokio::spawn(async move {
                        let _open = open;
                        // One request is 8 bytes and its answer 100: a stream carries one
                        // (the client finishes it after its request) or, for the pipelining
                        // point, many in turn until the client finishes it. Read as the
                        // server reads a request: whatever has arrived, in one call, so a
                        // request that came whole with its FIN costs one read.
                        let mut pending = 0usize;
                        let mut chunks: [Bytes; 16] = Default::default();
                        while let Ok(Some(n)) = r.read_chunks(&mut chunks).await {
                            pending += chunks[..n].iter().map(Bytes::len).sum::<usize>();
                            while pending >= 8 {
                                pending -= 8;
                                if s.write_all(&[7u8; 100]).await.is_err() {
                                    return;
                                }
                            }
                        }
                        // Dropping the stream finishes it, as the server's does.
                    });
                }
            });
        }
    });
    (ep, addr)
}

/// A raw quinn connection to the floor server (the client side of the same setup).
async fn floor_client(pki: &DevOperatorPki, addr: SocketAddr) -> quinn::Connection {
    let t = pki
        .terminal(
            "bench-floor",
            Role::Counter,
            &[ProviderId::parse(b"BENCH-P").expect("p")],
            90,
        )
        .expect("terminal");
    let tls = pki.client_tls(&t);
    let provider = mykey_engine::server::crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for r in tls.server_roots {
        roots.add(r).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_auth_cert(tls.chain, tls.key)
        .expect("client cert");
    cfg.alpn_protocols = vec![mykey_engine::wire::ALPN.to_vec()];
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(cfg).expect("quic"),
    ));
    cc.transport_config(Arc::new(transport()));
    let (mut ep, _) = mykey_engine::server::endpoint_on("127.0.0.1:0".parse().expect("addr"), None)
        .expect("client");
    ep.set_default_client_config(cc);
    ep.connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake")
}

async fn floor_once(conn: &quinn::Connection) {
    let (mut s, mut r) = conn.open_bi().await.expect("stream");
    s.write_all(&[1u8; 8]).await.expect("write");
    // Finished by its drop, as mykey's client does.
    drop(s);
    let b = r.read_to_end(1024).await.expect("read");
    assert_eq!(b.len(), 100);
}

/// Floor requests per second with `conc` streams each carrying one request after another for
/// `secs`: what several requests on one stream would give instead of one stream per request.
async fn floor_streams(conn: &quinn::Connection, conc: usize, secs: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let conn = conn.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let (mut s, mut r) = conn.open_bi().await.expect("stream");
            let mut answer = [0u8; 100];
            while Instant::now() < stop {
                s.write_all(&[1u8; 8]).await.expect("write");
                r.read_exact(&mut answer).await.expect("read");
                done.fetch_add(1, Ordering::Relaxed);
            }
            let _ = s.finish();
        }));
    }
    let t = Instant::now();
    for t in tasks {
        t.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// Lookups per second on `conc` `PIPELINE` streams, each carrying one lookup after another for
/// `secs`; stream `w` is opened on `clients[w % clients.len()]` (one connection for all, or one
/// each).
async fn pipelined(
    clients: &[Arc<Client>],
    pool: &Arc<Vec<MyKeyId>>,
    p: ProviderId,
    conc: usize,
    secs: f64,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let ids = pool.len() - BATCH_MAX;
    let mut tasks = Vec::new();
    for w in 0..conc {
        let c = clients[w % clients.len()].clone();
        let (pool, done) = (pool.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut pipe = c.pipeline().await.expect("pipeline");
            let mut i = w;
            while Instant::now() < stop {
                let l = pipe.lookup(p, pool[i % ids]).await.expect("lookup");
                assert!(matches!(l, Lookup::Linked(_)));
                i += conc;
                done.fetch_add(1, Ordering::Relaxed);
            }
            pipe.finish().await.expect("finish");
        }));
    }
    let t = Instant::now();
    for t in tasks {
        t.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// Latency of `n` sequential calls: (p50, p99).
async fn latency<F: AsyncFn()>(n: usize, f: F) -> (Duration, Duration) {
    for _ in 0..n / 10 {
        f().await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed());
    }
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// Calls per second with `conc` calls outstanding for `secs`.
/// CPU time every thread of this process (client, server and floor alike) has run, in
/// nanoseconds (`/proc/self/task/*/schedstat`): time the hypervisor took from the machine is
/// not in it, so CPU per request is steadier than requests per second on a shared host.
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// UDP datagrams the host has sent (`OutDatagrams` in `/proc/net/snmp`; a GSO batch counts
/// once). On this loopback-only machine they are all this process's, both ends.
fn udp_sent() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutDatagrams")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// One throughput point: requests per second, and the process's CPU and the datagrams sent
/// per request.
#[derive(Clone, Copy)]
struct Point {
    per_sec: f64,
    cpu_us: f64,
    datagrams: f64,
}

async fn throughput<F, Fut>(conc: usize, secs: f64, f: F) -> Point
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..conc {
        let f = f.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w as u64;
            while Instant::now() < stop {
                f(i).await;
                i += conc as u64;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let (t, cpu, sent) = (Instant::now(), process_cpu_ns(), udp_sent());
    for t in tasks {
        t.await.expect("task");
    }
    let n = done.load(Ordering::Relaxed) as f64;
    Point {
        per_sec: n / t.elapsed().as_secs_f64(),
        cpu_us: process_cpu_ns().saturating_sub(cpu) as f64 / 1e3 / n.max(1.0),
        datagrams: udp_sent().saturating_sub(sent) as f64 / n.max(1.0),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let ids: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let rounds: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS)
        .max(1);
    let only_lookups = match args.next().as_deref() {
        None => false,
        Some("lookups") => true,
        Some(other) => {
            eprintln!("quic-bench: unknown fourth argument {other:?}; the only one is `lookups`");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let now = system_clock();
        let from = Timestamp::from_unix_secs(now.unix_secs() - 86_400).expect("t");
        let pki = DevOperatorPki::generate(&["localhost"], from, now.plus_secs(86_400)).expect("pki");
        // The store: `ids` IDs linked for BENCH-P, bulk-loaded.
        let dir = BenchDir::new("quic-bench");
        eprintln!("building a store of {ids} IDs ...");
        let mut csv = String::from("mykey_id,state,cert,links\n");
        for n in 0..ids {
            csv.push_str(&format!("{},active,BE:{:016X},BENCH-P=S{n}\n", id(n), n + 1));
        }
        let opts = BuildOptions {
            at: now,
            actor: ActorId::parse(b"bench").expect("actor"),
            store: StoreConfig::default(),
            hash_key: None,
        };
        let rfs = RealFs::new(dir.path()).expect("dir");
        population::build(&rfs, &b"BENCH-P\n"[..], csv.as_bytes(), &opts, &mut |_| {}).expect("build");
        drop(rfs);
        let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
        let reg = Registry::open(fs, RegistryConfig::default()).expect("store");
        let p = ProviderId::parse(b"BENCH-P").expect("p");
        let ca = DevCa::auth(1, from, now.plus_secs(86_400)).expect("jpki");
        let jpki = Jpki::new(
            Anchors::from_files(&[("a.der".into(), ca.der().to_vec())]).expect("anchors"),
            JpkiConfig::default(),
        );
        let service = Arc::new(Service { registry: reg, jpki, clock: system_clock });
        let limits = Limits { rate_per_identity: 0, ..Limits::default() };
        let server = Server::start("127.0.0.1:0".parse().expect("addr"), pki.server_tls(Vec::new()), service, limits)
            .expect("server");
        let addr = server.local_addr().expect("addr");
        let t = pki.terminal("bench", Role::Counter, &[p], 91).expect("terminal");
        let client = Arc::new(Client::connect(addr, "localhost", pki.client_tls(&t)).await.expect("client"));
        let (fep, faddr) = floor_server(&pki).await;
        let floor = floor_client(&pki, faddr).await;

        // Every ID a request names is made once, here, so the client's share of the shared
        // cores is the protocol's, not formatting text (a batch window never wraps: the pool
        // runs one batch past the store's IDs).
        let pool: Arc<Vec<MyKeyId>> = Arc::new((0..ids + BATCH_MAX as u64).map(|n| id(n % ids)).collect());
        let lookup = {
            let c = client.clone();
            let pool = pool.clone();
            move |i: u64| {
                let c = c.clone();
                let id = pool[(i % ids) as usize];
                async move {
                    let l = c.lookup(p, id).await.expect("lookup");
                    assert!(matches!(l, Lookup::Linked(_)));
                }
            }
        };
        let fl = {
            let c = floor.clone();
            move |_: u64| {
                let c = c.clone();
                async move { floor_once(&c).await }
            }
        };
        println!("# QUIC on loopback, {ids} IDs, client and server on the same 2 cores");
        let (lp50, lp99) = latency(5000, async || lookup(17).await).await;
        let (fp50, fp99) = latency(5000, async || floor_once(&floor).await).await;
        println!("1 stream latency     mykey lookup p50 {:>6.0} µs p99 {:>6.0} µs | quinn floor p50 {:>6.0} µs p99 {:>6.0} µs",
            lp50.as_secs_f64() * 1e6, lp99.as_secs_f64() * 1e6, fp50.as_secs_f64() * 1e6, fp99.as_secs_f64() * 1e6);
        // A terminal's case: one lookup at a time, each on the same PIPELINE stream.
        let pipe = tokio::sync::Mutex::new(client.pipeline().await.expect("pipeline"));
        let (pp50, pp99) = latency(5000, async || {
            let l = pipe.lock().await.lookup(p, pool[17]).await.expect("lookup");
            assert!(matches!(l, Lookup::Linked(_)));
        })
        .await;
        pipe.into_inner().finish().await.expect("finish");
        println!("1 stream latency     mykey PIPELINE p50 {:>6.0} µs p99 {:>6.0} µs (the same lookup, in turn on one stream)",
            pp50.as_secs_f64() * 1e6, pp99.as_secs_f64() * 1e6);
        for conc in [1usize, 10, 100] {
            // Rounds alternate engine and floor, so a noisy neighbour hits both alike.
            let (mut ms, mut fs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            let (mut mcpu, mut fcpu, mut cpu_ratios) = (Vec::new(), Vec::new(), Vec::new());
            let (mut mdg, mut fdg) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let m = throughput(conc, secs, lookup.clone()).await;
                let f = throughput(conc, secs, fl.clone()).await;
                ms.push(m.per_sec);
                fs.push(f.per_sec);
                ratios.push(m.per_sec / f.per_sec);
                mcpu.push(m.cpu_us);
                fcpu.push(f.cpu_us);
                cpu_ratios.push(f.cpu_us / m.cpu_us);
                mdg.push(m.datagrams);
                fdg.push(f.datagrams);
            }
            let (m, f, r) = (median(&mut ms), median(&mut fs), median(&mut ratios));
            println!(
                "{conc:>3} concurrent        mykey lookup {m:>9.0} /s | quinn floor {f:>9.0} /s | ratio {r:.2} (median of {rounds}; {:.2}..{:.2})",
                ratios[0],
                ratios[ratios.len() - 1]
            );
            let (mc, fc, cr) = (median(&mut mcpu), median(&mut fcpu), median(&mut cpu_ratios));
            let (md, fd) = (median(&mut mdg), median(&mut fdg));
            println!(
                "{conc:>3} concurrent        CPU per request, both ends: mykey {mc:>5.1} µs | floor {fc:>5.1} µs | floor/mykey {cr:.2} (median of {rounds}; {:.2}..{:.2}) | UDP sends per request: mykey {md:.2}, floor {fd:.2}",
                cpu_ratios[0],
                cpu_ratios[cpu_ratios.len() - 1]
            );
        }
        // Pipelining: on one connection, `conc` streams each carrying requests in turn (the
        // floor's, and mykey's `PIPELINE`), beside a stream per request, rounds alternating; then
        // `conc` connections with one `PIPELINE` stream each, which is what redis-benchmark's
        // `-c conc` (one request outstanding a connection) does.
        let mut pki_terminal = 0u32;
        let (pipelined_points, batch_points): (&[usize], &[(usize, usize)]) = if only_lookups {
            (&[], &[])
        } else {
            (&[10, 100], &[(100, 10), (BATCH_MAX, 4)])
        };
        for &conc in pipelined_points {
            let mut rows: [Vec<f64>; 6] = Default::default();
            let mut ratios: [Vec<f64>; 4] = Default::default();
            let mut connections = Vec::new();
            for _ in 0..conc {
                pki_terminal += 1;
                let t = pki.terminal(&format!("bench-{pki_terminal}"), Role::Counter, &[p], 100 + u64::from(pki_terminal)).expect("terminal");
                connections.push(Arc::new(Client::connect(addr, "localhost", pki.client_tls(&t)).await.expect("client")));
            }
            let conns = Arc::new(connections.clone());
            let conn_lookup = {
                let pool = pool.clone();
                move |i: u64| {
                    let c = conns[i as usize % conns.len()].clone();
                    let id = pool[(i % ids) as usize];
                    async move {
                        let l = c.lookup(p, id).await.expect("lookup");
                        assert!(matches!(l, Lookup::Linked(_)));
                    }
                }
            };
            for _ in 0..rounds {
                let fa = throughput(conc, secs, fl.clone()).await.per_sec;
                let fb = floor_streams(&floor, conc, secs).await;
                let ma = throughput(conc, secs, lookup.clone()).await.per_sec;
                let mb = pipelined(std::slice::from_ref(&client), &pool, p, conc, secs).await;
                let ca = throughput(conc, secs, conn_lookup.clone()).await.per_sec;
                let cb = pipelined(&connections, &pool, p, conc, secs).await;
                for (row, v) in rows.iter_mut().zip([fa, fb, ma, mb, ca, cb]) {
                    row.push(v);
                }
                for (row, v) in ratios.iter_mut().zip([fb / fa, mb / ma, mb / fb, cb / ca]) {
                    row.push(v);
                }
            }
            let [fa, fb, ma, mb, ca, cb] = rows.map(|mut r| median(&mut r));
            let spread = |r: &mut Vec<f64>| {
                let m = median(r);
                format!("{m:.2} ({:.2}..{:.2})", r[0], r[r.len() - 1])
            };
            let [mut r_floor, mut r_mykey, mut r_vs_floor, mut r_conns] = ratios;
            println!(
                "{conc:>3} concurrent        floor, stream per request {fa:>9.0} /s | floor, requests in turn on {conc} streams {fb:>9.0} /s | ratio {} (median of {rounds})",
                spread(&mut r_floor)
            );
            println!(
                "{conc:>3} concurrent        mykey lookup, stream per request {ma:>9.0} /s | mykey PIPELINE on {conc} streams {mb:>9.0} /s | ratio {} | PIPELINE / floor in turn {}",
                spread(&mut r_mykey),
                spread(&mut r_vs_floor)
            );
            println!(
                "{conc:>3} connections       mykey lookup, stream per request {ca:>9.0} /s | mykey PIPELINE, one stream a connection {cb:>9.0} /s | ratio {} (compare Redis TLS GET at -c {conc})",
                spread(&mut r_conns)
            );
            for c in connections {
                if let Ok(c) = Arc::try_unwrap(c) {
                    c.close().await;
                }
            }
        }
        for &(batch, conc) in batch_points {
            let c = client.clone();
            let pool = pool.clone();
            let b = throughput(conc, secs, move |i: u64| {
                let c = c.clone();
                let pool = pool.clone();
                async move {
                    let first = (i * batch as u64 % ids) as usize;
                    let r = c.lookup_batch(p, &pool[first..first + batch]).await.expect("batch");
                    assert_eq!(r.len(), batch);
                }
            })
            .await
            .per_sec;
            println!("batch {batch:>4} x {conc:>2}        mykey lookups {:>9.0} IDs/s", b * batch as f64);
        }
        fep.close(quinn::VarInt::from_u32(0), b"");
        server.shutdown().await;
    });
}
