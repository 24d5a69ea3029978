//! Child process of the SIGKILL test: writes registrations and links from several threads and
//! prints `reg N` / `link N` on stdout only after each write returned (was acknowledged), until
//! killed or until its bounds run out (`WRITES_MAX` writes or `RUN_SECS_MAX` seconds).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{Registry, RegistryConfig};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_tests::{actor, at, cert, mykey, provider, service};

const WRITES_MAX: u64 = 200_000;
const RUN_SECS_MAX: u64 = 60;
/// Thread 0 compacts after this many of its writes, so kills also land inside compactions.
const COMPACT_EVERY: u64 = 150;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, start, threads] = &args[..] else {
        eprintln!("usage: crash-writer DIR START THREADS");
        std::process::exit(2);
    };
    let start: u64 = start.parse().expect("START is a number");
    let threads: u64 = threads.parse().expect("THREADS is a number");
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir).expect("store dir"));
    let small = StoreConfig {
        ids_shards: 4,
        certs_shards: 4,
        revoked_shards: 1,
    };
    let reg = match Registry::open(fs.clone(), RegistryConfig::default()) {
        Ok(r) => r,
        Err(_) if !fs.exists("MANIFEST") => {
            Registry::create(fs, small, RegistryConfig::default()).expect("create")
        }
        Err(e) => panic!("open: {e}"),
    };
    let p = provider("A-α1-0001");
    reg.register_provider(at(0), actor("operator"), p)
        .expect("provider");
    let deadline = Instant::now() + Duration::from_secs(RUN_SECS_MAX);
    std::thread::scope(|s| {
        for t in 0..threads {
            let reg = &reg;
            s.spawn(move || {
                let out = std::io::stdout();
                for k in 0..WRITES_MAX / threads {
                    if Instant::now() > deadline {
                        return;
                    }
                    let n = start + t + k * threads;
                    reg.register_full(at(1), actor("portal"), mykey(n), cert(1, n))
                        .expect("register");
                    writeln!(out.lock(), "reg {n}").expect("stdout");
                    reg.link(
                        at(2),
                        actor("shop"),
                        mykey(n),
                        p,
                        service(&n.to_string()),
                        false,
                    )
                    .expect("link");
                    writeln!(out.lock(), "link {n}").expect("stdout");
                    if t == 0 && k % COMPACT_EVERY == COMPACT_EVERY - 1 {
                        reg.store().compact().expect("compact");
                    }
                }
            });
        }
    });
}
