//! Background compaction folds the delta while writers write and readers read: no reader ever
//! sees an error or a value that was never written, every acknowledged write survives, and the
//! log is cut back after each fold.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mykey_engine::registry::{Lookup, Registry, RegistryConfig};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_engine::store::{CompactionPolicy, inspect, spawn_compactor};
use mykey_tests::*;

#[test]
fn compaction_runs_in_the_background_without_blocking_or_losing_anything() {
    let dir = TempDir::new("bg-compaction");
    let reg = Arc::new(registry_with(&dir, &["A-α1-0001"]));
    let p = provider("A-α1-0001");
    for n in 0..200 {
        reg.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
            .expect("register");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let policy = CompactionPolicy {
        delta_keys_max: 100,
        poll: Duration::from_millis(1),
    };
    let compactor = spawn_compactor(reg.clone(), policy, stop.clone());
    let readers_stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut readers = Vec::new();
        for r in 0..2u64 {
            let (reg, readers_stop) = (&reg, &readers_stop);
            readers.push(s.spawn(move || {
                let mut reads = 0u64;
                while !readers_stop.load(Ordering::Acquire) {
                    let n = (reads * 7 + r) % 200;
                    match reg.lookup(at(5), &mykey(n), &p).expect("reads never fail") {
                        Lookup::NotLinked => {}
                        Lookup::Linked(s) => {
                            let s = s.to_string();
                            let (id, round) = s.split_once('/').expect("written form");
                            assert_eq!(id, n.to_string(), "a value that was never written");
                            assert!(round.parse::<u64>().expect("round") < 5);
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                    reads += 1;
                }
                reads
            }));
        }
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let reg = &reg;
                s.spawn(move || {
                    for round in 0..5u64 {
                        for n in (w * 50)..(w * 50 + 50) {
                            reg.link(
                                at(1),
                                actor("shop"),
                                mykey(n),
                                p,
                                service(&format!("{n}/{round}")),
                                true,
                            )
                            .expect("link");
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        readers_stop.store(true, Ordering::Release);
        for r in readers {
            assert!(r.join().expect("reader") > 0);
        }
    });
    // On a loaded machine the writers may finish before the compactor's first pass; give it
    // a bounded chance to fold what they left (1,000 changed keys, over the policy's 100).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reg.store().snapshot_seq() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Release);
    let compactions = compactor.join().expect("thread");
    assert!(compactions >= 1, "no background compaction ran");
    assert!(reg.store().snapshot_seq() > 0);
    drop(reg);
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    let ins = inspect(&*fs, &mykey_engine::registry::SCHEMA, true, &mut |_| {})
        .expect("verify after compactions");
    assert_eq!(
        ins.segments.len(),
        1,
        "old log segments are removed after each fold"
    );
    let reg = Registry::open(fs, RegistryConfig::default()).expect("reopen");
    for n in 0..200 {
        assert_eq!(
            reg.lookup(at(5), &mykey(n), &p).expect("lookup"),
            Lookup::Linked(service(&format!("{n}/4")))
        );
    }
}
