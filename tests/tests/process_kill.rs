//! A real process writes and reports acknowledgements; the test SIGKILLs it at random moments,
//! many rounds over one store, and checks after every kill that each acknowledged write is
//! there. Kills land in group commits, log rotations and compactions alike.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mykey_engine::registry::{Lookup, Registry, RegistryConfig};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_tests::*;

const ROUNDS: u64 = 12;
const THREADS: u64 = 4;

#[test]
fn sigkill_never_loses_an_acknowledged_write() {
    let dir = TempDir::new("sigkill");
    let exe = env!("CARGO_BIN_EXE_crash-writer");
    // The kill times come from this seed; MYKEY_TEST_SEED replays a failed run's.
    let seed = std::env::var("MYKEY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(std::process::id() as u64 | 1);
    eprintln!("sigkill test seed {seed} (replay with MYKEY_TEST_SEED={seed})");
    let mut rng = seed;
    let mut total_acks = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(exe)
            .arg(dir.path())
            .arg(((round + 1) * 1_000_000).to_string())
            .arg(THREADS.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn crash-writer");
        let stdout = child.stdout.take().expect("piped");
        let acks: Arc<Mutex<Vec<(bool, u64)>>> = Arc::default();
        let reader = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let (kind, n) = line.split_once(' ').expect("ack line");
                    acks.lock()
                        .expect("lock")
                        .push((kind == "link", n.parse().expect("number")));
                }
            })
        };
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(40 + rng % 400));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        reader.join().expect("reader");
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        assert!(
            !status.success(),
            "the child must have been killed: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "child failed: {stderr}");

        let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
        let reg = Registry::open(fs, RegistryConfig::default())
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: recovery failed: {e}"));
        let p = provider("A-α1-0001");
        let acks = acks.lock().expect("lock").clone();
        for &(linked, n) in &acks {
            let got = reg.lookup(at(3), &mykey(n), &p).expect("lookup");
            if linked {
                assert_eq!(
                    got,
                    Lookup::Linked(service(&n.to_string())),
                    "seed {seed} round {round}: link {n} lost"
                );
            } else {
                assert_ne!(
                    got,
                    Lookup::UnknownId,
                    "round {round}: registration {n} lost"
                );
            }
        }
        total_acks += acks.len();
    }
    eprintln!("{total_acks} acknowledged writes checked across {ROUNDS} SIGKILLs");
    assert!(
        total_acks > 100,
        "the child acknowledged too little to test anything: {total_acks}"
    );
}
