//! Golden files: a store written by format version 1 is committed under `snapshots/golden/v1/`
//! (snapshot shards from a bulk build, plus log records from live writes), and one written by
//! version 2 (MANIFEST with the log-required flag, a sealed log segment and its successor)
//! under `snapshots/golden/v2/`; both hold snapshot shards of format version 1 and ID records of
//! encoding 1. `snapshots/golden/v3/` holds snapshot shards of format version 2 (packed buckets)
//! and ID records of encoding 2. Each must keep opening and answering the same lookups in every
//! later release.
//!
//! Regenerate only when adding a *new* version's directory, never for an existing one:
//! `cargo test -p mykey-tests -- --ignored write_golden` writes `snapshots/golden/v3-new/`
//! (the v1 directory was written the same way, without the failed compaction).

use std::path::PathBuf;
use std::sync::Arc;

use mykey_engine::id::{MyKeyId, Timestamp};
use mykey_engine::population::{BuildOptions, build};
use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{Lookup, Registry, RegistryConfig};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_engine::store::hash::HashKey;
use mykey_engine::store::inspect;
use mykey_tests::*;

fn golden_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../snapshots/golden")
        .join(name)
}

fn id(s: &str) -> MyKeyId {
    s.parse().expect("id")
}

/// The lookups the golden store must answer, at T0 + 1 day.
fn expected() -> Vec<(&'static str, &'static str, Lookup)> {
    let linked = |s| Lookup::Linked(service(s));
    vec![
        ("1C2410DF79DGEL", "A-α1-0001", linked("ABCDEFGHI")),
        ("1C2410DF79DGEL", "A-β1-0001", linked("2802121234")),
        ("1C2410DF79DGEL", "A-γ1-0001", linked("1111358665")),
        // Linked through the log after the bulk load.
        ("1C2410DF79DGEL", "13101-LIB-0001", linked("LIB-0042")),
        // Revoked through the log.
        ("997794E9AGCIEG", "13101-LIB-0001", Lookup::Suspended),
        // Provisional in the bulk load.
        ("02IS5D9IK40VST", "A-α1-0001", Lookup::Provisional),
        // Registered provisionally through the log.
        ("GOLDENPROVISNL", "A-α1-0001", Lookup::Provisional),
        // Deleted through the log.
        ("UJZDE8GXD6NCF1", "A-α1-0001", Lookup::Deleted),
        ("ZDOC9IS0J8HT9L", "46201-POINT-0003", Lookup::NotLinked),
        ("ZZZZZZZZZZZZZZ", "A-α1-0001", Lookup::UnknownId),
    ]
}

fn check_expected(reg: &Registry) {
    for (i, p, want) in expected() {
        assert_eq!(
            reg.lookup(at(86_400), &id(i), &provider(p))
                .expect("lookup"),
            want,
            "{i} @ {p}"
        );
    }
}

#[test]
fn golden_v1_still_opens_and_answers_the_same() {
    let src = golden_dir("v1");
    let d = TempDir::new("golden");
    copy_dir(&src, d.path());
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(d.path()).expect("dir"));
    let ins = inspect(&*fs, &mykey_engine::registry::SCHEMA, true, &mut |_| {})
        .expect("golden v1 verifies");
    assert_eq!(ins.manifest.hash_key, HashKey([0x1234, 0x5678]));
    assert_eq!(
        ins.segments.iter().map(|s| s.changes).sum::<u64>(),
        5,
        "log records in the golden store"
    );
    let reg = Registry::open(fs, RegistryConfig::default()).expect("golden v1 opens");
    check_expected(&reg);
}

/// A version 1 store opens, and its first writable open upgrades it: the MANIFEST becomes
/// version 2 with the log required, so a log segment deleted afterwards is found missing.
#[test]
fn golden_v1_is_upgraded_by_its_first_writable_open() {
    let d = TempDir::new("golden-upgrade");
    copy_dir(&golden_dir("v1"), d.path());
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(d.path()).expect("dir"));
    let before =
        inspect(&*fs, &mykey_engine::registry::SCHEMA, false, &mut |_| {}).expect("inspect");
    assert_eq!(
        (before.manifest.version, before.manifest.log_required),
        (1, false)
    );
    drop(Registry::open(fs.clone(), RegistryConfig::default()).expect("opens"));
    let after =
        inspect(&*fs, &mykey_engine::registry::SCHEMA, false, &mut |_| {}).expect("inspect");
    assert_eq!(
        (after.manifest.version, after.manifest.log_required),
        (2, true)
    );
    check_expected(&Registry::open(fs, RegistryConfig::default()).expect("reopens"));
    std::fs::remove_file(d.path().join("wal-0000000000000001.log")).expect("remove");
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(d.path()).expect("dir"));
    assert!(matches!(
        Registry::open(fs, RegistryConfig::default()),
        Err(mykey_engine::registry::RegistryError::Store(
            mykey_engine::store::StoreError::MissingLog { .. }
        ))
    ));
}

#[test]
fn golden_v2_still_opens_and_answers_the_same() {
    let d = TempDir::new("golden-v2");
    copy_dir(&golden_dir("v2"), d.path());
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(d.path()).expect("dir"));
    let ins = inspect(&*fs, &mykey_engine::registry::SCHEMA, true, &mut |_| {})
        .expect("golden v2 verifies");
    assert_eq!(ins.manifest.hash_key, HashKey([0x1234, 0x5678]));
    assert_eq!((ins.manifest.version, ins.manifest.log_required), (2, true));
    let shape: Vec<(u16, bool, u64)> = ins
        .segments
        .iter()
        .map(|s| (s.version, s.sealed, s.changes))
        .collect();
    assert_eq!(
        shape,
        vec![(2, true, 1), (2, false, 4)],
        "a sealed segment and its successor"
    );
    let reg = Registry::open(fs, RegistryConfig::default()).expect("golden v2 opens");
    check_expected(&reg);
}

/// The snapshot format version of every shard file in `dir`.
fn shard_versions(dir: &std::path::Path) -> Vec<u16> {
    let mut v: Vec<u16> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| {
            let p = e.expect("entry").path();
            (p.extension()? == "snap").then(|| {
                let b = std::fs::read(&p).expect("read");
                u16::from_le_bytes([b[8], b[9]])
            })
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn golden_v3_still_opens_and_answers_the_same() {
    let d = TempDir::new("golden-v3");
    copy_dir(&golden_dir("v3"), d.path());
    assert_eq!(shard_versions(d.path()), vec![2], "packed-bucket shards");
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(d.path()).expect("dir"));
    let ins = inspect(&*fs, &mykey_engine::registry::SCHEMA, true, &mut |_| {})
        .expect("golden v3 verifies");
    assert_eq!(ins.manifest.hash_key, HashKey([0x1234, 0x5678]));
    let reg = Registry::open(fs, RegistryConfig::default()).expect("golden v3 opens");
    check_expected(&reg);
}

/// A store of version 1 shards compacts into version 2 shards that answer the same, and a
/// record of encoding 1 rewritten by a write comes back in encoding 2 beside the others.
#[test]
fn golden_v2_compacts_into_packed_shards_that_answer_the_same() {
    let d = TempDir::new("golden-v2-compact");
    copy_dir(&golden_dir("v2"), d.path());
    assert_eq!(shard_versions(d.path()), vec![1]);
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(d.path()).expect("dir"));
    let reg = Registry::open(fs.clone(), RegistryConfig::default()).expect("opens");
    reg.link(
        at(60),
        actor("lib-terminal-2"),
        id("1C2410DF79DGEL"),
        provider("GOLDEN-NEW-0001"),
        service("0123456789"),
        false,
    )
    .expect("link");
    reg.store().compact().expect("compact");
    assert_eq!(shard_versions(d.path()), vec![2]);
    check_expected_but_new_link(&reg);
    drop(reg);
    inspect(&*fs, &mykey_engine::registry::SCHEMA, true, &mut |_| {}).expect("verifies");
    let reg = Registry::open(fs, RegistryConfig::default()).expect("reopens");
    check_expected_but_new_link(&reg);
}

fn check_expected_but_new_link(reg: &Registry) {
    check_expected(reg);
    assert_eq!(
        reg.lookup(
            at(86_400),
            &id("1C2410DF79DGEL"),
            &provider("GOLDEN-NEW-0001")
        )
        .expect("lookup"),
        Lookup::Linked(service("0123456789"))
    );
}

#[test]
#[ignore = "writes a new golden directory; run by hand for a new format version"]
fn write_golden() {
    let out = golden_dir("v3-new");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("dir");
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../snapshots/sample");
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(&out).expect("dir"));
    let opts = BuildOptions {
        at: Timestamp::from_unix_secs(T0).expect("t0"),
        actor: actor("golden-bulk-load"),
        store: StoreConfig {
            ids_shards: 4,
            certs_shards: 2,
            revoked_shards: 1,
        },
        hash_key: Some(HashKey([0x1234, 0x5678])),
    };
    let read = |f: &str| std::fs::read(sample.join(f)).expect("sample");
    build(
        &*fs,
        &read("providers.txt")[..],
        &read("population.csv")[..],
        &opts,
        &mut |_| {},
    )
    .expect("build");
    let traced = mykey_engine::store::fs::TracedFs::new(fs);
    let faults = traced.faults.clone();
    let reg = Registry::open(Arc::new(traced), RegistryConfig::default()).expect("open");
    reg.link(
        at(10),
        actor("lib-terminal-1"),
        id("1C2410DF79DGEL"),
        provider("13101-LIB-0001"),
        service("LIB-0042"),
        false,
    )
    .expect("link");
    // A compaction that fails after rotating the log: the first segment is sealed.
    faults.arm(mykey_engine::store::fs::FaultOp::Create, ".snap.tmp", 28);
    assert!(reg.store().compact().is_err());
    faults.clear();
    let c = reg
        .describe(&id("997794E9AGCIEG"))
        .expect("ok")
        .expect("exists")
        .cert
        .expect("cert");
    reg.revoke(at(20), actor("partner-1"), &[c])
        .expect("revoke");
    reg.register_provisional(at(30), actor("portal"), id("GOLDENPROVISNL"), cert(7, 1))
        .expect("provisional");
    reg.delete(at(40), actor("municipal-13101"), id("UJZDE8GXD6NCF1"))
        .expect("delete");
    reg.register_provider(at(50), actor("operator"), provider("GOLDEN-NEW-0001"))
        .expect("provider");
    check_expected(&reg);
    drop(reg);
    // The lock file belongs to whoever opens the store, not to the store's format.
    std::fs::remove_file(out.join("LOCK")).expect("remove LOCK");
}
