//! Online backup and the restore drill (`snapshots/README.md`, "Backups"; ops/RUNBOOK.md): a
//! backup taken while a writer writes and compactions run holds every write acknowledged before
//! it began, and what it restores is exactly a prefix of the store's history.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mykey_engine::registry::SCHEMA;
use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{Lookup, Registry, RegistryConfig};
use mykey_engine::store::backup::{self, BackupError};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_engine::store::{CompactionPolicy, spawn_compactor};
use mykey_tests::*;

/// IDs the writer cycles over; write `n` links ID `n % IDS` to service `n`.
const IDS: u64 = 256;
const BACKUPS: usize = 4;

fn fs(dir: &std::path::Path) -> Arc<dyn Fs> {
    Arc::new(RealFs::new(dir).expect("dir"))
}

/// `mykeyd backup` of the store in `src` into `dest`, without progress.
fn copy(src: &TempDir, dest: &TempDir) -> Result<backup::BackupReport, BackupError> {
    backup::backup(&*fs(src.path()), &*fs(dest.path()), &SCHEMA, &mut |_, _| {})
}

/// `mykeyd restore` of the backup in `from` into `dest`, without progress.
fn restore_into(
    from: &TempDir,
    dest: &std::path::Path,
) -> Result<backup::BackupReport, BackupError> {
    backup::restore(fs(from.path()), fs(dest), &SCHEMA, &mut |_, _| {})
}

#[test]
fn a_backup_under_writes_and_compactions_restores_a_prefix_with_every_acknowledged_write() {
    let dir = TempDir::new("backup-src");
    let reg = Arc::new(
        Registry::create(
            fs(dir.path()),
            StoreConfig::default(),
            RegistryConfig::default(),
        )
        .expect("create"),
    );
    let p = provider("A-α1-0001");
    reg.register_provider(at(0), actor("op"), p)
        .expect("provider");
    for k in 0..IDS {
        reg.register_full(at(0), actor("portal"), mykey(k), cert(1, k))
            .expect("register");
    }
    // A compaction every ~40 writes: several run between backups, and some race one.
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = spawn_compactor(
        reg.clone(),
        CompactionPolicy {
            delta_keys_max: 40,
            poll: Duration::from_millis(1),
        },
        stop.clone(),
    );
    // The index of the last acknowledged write, plus one (0: none yet).
    let acked = AtomicU64::new(0);
    let writing = AtomicBool::new(true);
    let backups = (0..BACKUPS)
        .map(|i| TempDir::new(&format!("backup-{i}")))
        .collect::<Vec<_>>();
    let taken = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0u64;
            while writing.load(Ordering::Acquire) {
                reg.link(
                    at(1),
                    actor("shop"),
                    mykey(n % IDS),
                    p,
                    service(&n.to_string()),
                    true,
                )
                .expect("link");
                n += 1;
                acked.store(n, Ordering::Release);
            }
        });
        // Stops the writer however this thread leaves the scope (a failed backup panics, and
        // the scope would otherwise wait for the writer forever).
        struct StopWriter<'a>(&'a AtomicBool);
        impl Drop for StopWriter<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _stop_writer = StopWriter(&writing);
        let mut taken = Vec::new();
        for b in &backups {
            let before = acked.load(Ordering::Acquire);
            while acked.load(Ordering::Acquire) < before + 300 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let acked_at_start = acked.load(Ordering::Acquire);
            let r = copy(&dir, b).expect("an online backup succeeds");
            eprintln!("backup {}: {r:?}", taken.len());
            taken.push((acked_at_start, r));
        }
        drop(_stop_writer);
        writer.join().expect("writer");
        taken
    });
    stop.store(true, Ordering::Release);
    let compactions = compactor.join().expect("thread");
    assert!(compactions > 0, "no compaction raced the backups");

    for ((acked_at_start, report), b) in taken.iter().zip(&backups) {
        let restored = TempDir::new("restored");
        let r = restore_into(b, restored.path()).expect("restore");
        assert_eq!(r.snapshot_seq, report.snapshot_seq);
        let reg = Registry::open(fs(restored.path()), RegistryConfig::default()).expect("open");
        // The index of the write each ID shows.
        let shown: Vec<u64> = (0..IDS)
            .map(
                |k| match reg.lookup(at(5), &mykey(k), &p).expect("lookup") {
                    Lookup::Linked(s) => s.to_string().parse::<u64>().expect("written form"),
                    other => panic!("ID {k}: {other:?} (every ID was linked before any backup)"),
                },
            )
            .collect();
        let last = *shown.iter().max().expect("IDs");
        assert!(
            last + 1 >= *acked_at_start,
            "write {} was acknowledged before the backup began, the backup ends at {last}",
            acked_at_start - 1
        );
        // A prefix 0..=last of the history: each ID shows its own last write at or before
        // `last`, none older and none newer.
        for (k, &n) in shown.iter().enumerate() {
            assert_eq!(n % IDS, k as u64, "ID {k} shows another ID's write");
            assert!(
                n <= last && n + IDS > last,
                "ID {k} shows write {n}, but the prefix ends at {last}: not a prefix"
            );
        }
    }
}

#[test]
fn a_backup_refuses_a_directory_that_is_not_empty_and_restore_needs_a_store() {
    let dir = TempDir::new("backup-refusals");
    drop(
        Registry::create(
            fs(dir.path()),
            StoreConfig::default(),
            RegistryConfig::default(),
        )
        .expect("create"),
    );
    let dest = TempDir::new("backup-busy-dest");
    std::fs::write(dest.path().join("notes.txt"), "keep me").expect("write");
    let e = copy(&dir, &dest).expect_err("a non-empty destination is refused");
    assert!(matches!(e, BackupError::DestinationNotEmpty { .. }), "{e}");
    assert_eq!(
        std::fs::read_to_string(dest.path().join("notes.txt")).expect("kept"),
        "keep me"
    );
    let nothing = TempDir::new("backup-nothing");
    let e = restore_into(&nothing, TempDir::new("x").path()).expect_err("no store to restore");
    assert!(e.to_string().contains("store"), "{e}");
}
