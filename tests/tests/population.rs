//! Bulk load: `population::build` turns a population file into snapshot files, refuses every bad
//! row naming its line, and installs nothing when any row is bad.

use std::sync::Arc;

use mykey_engine::id::Timestamp;
use mykey_engine::population::{BuildOptions, PopulationError, build};
use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{Lookup, Registry, RegistryConfig};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_engine::store::inspect;
use mykey_tests::*;

const PROVIDERS: &str = "# providers\nA-α1-0001\nA-β1-0001\nL-1\n";

fn opts() -> BuildOptions {
    BuildOptions {
        at: Timestamp::from_unix_secs(T0).expect("t0"),
        actor: actor("bulk"),
        store: StoreConfig {
            ids_shards: 3,
            certs_shards: 2,
            revoked_shards: 1,
        },
        hash_key: None,
    }
}

fn try_build(pop: &str) -> (TempDir, Result<u64, PopulationError>) {
    let d = TempDir::new("population");
    let fs = RealFs::new(d.path()).expect("dir");
    let r = build(
        &fs,
        PROVIDERS.as_bytes(),
        pop.as_bytes(),
        &opts(),
        &mut |_| {},
    )
    .map(|s| s.links);
    (d, r)
}

fn line_of(e: PopulationError) -> (u64, String) {
    match e {
        PopulationError::Line { line, reason, .. } => (line, reason),
        other => panic!("expected a line error, got {other}"),
    }
}

#[test]
fn builds_a_store_that_answers_lookups_and_takes_writes() {
    let pop = "mykey_id,state,cert,links\n\
        1C2410DF79DGEL,active,AB:01,A-α1-0001=ABCDEFGHI;A-β1-0001=2802121234\n\
        997794E9AGCIEG,provisional,AB:02,\n\
        000000000000AA,suspended,CD:0003,L-1=X\n";
    let (d, r) = try_build(pop);
    assert_eq!(r.expect("build"), 3);
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(d.path()).expect("dir"));
    inspect(&*fs, &mykey_engine::registry::SCHEMA, true, &mut |_| {}).expect("verify");
    let reg = Registry::open(fs.clone(), RegistryConfig::default()).expect("open");
    let id = |s: &str| s.parse().expect("id");
    let p = provider("A-β1-0001");
    assert_eq!(
        reg.lookup(at(1), &id("1C2410DF79DGEL"), &p).expect("ok"),
        Lookup::Linked(service("2802121234"))
    );
    assert_eq!(
        reg.lookup(at(1), &id("997794E9AGCIEG"), &p).expect("ok"),
        Lookup::Provisional
    );
    assert_eq!(
        reg.lookup(at(1), &id("000000000000AA"), &p).expect("ok"),
        Lookup::Suspended
    );
    assert_eq!(
        reg.lookup(at(1), &id("ZZZZZZZZZZZZZZ"), &p).expect("ok"),
        Lookup::UnknownId
    );
    // The bulk-loaded certificate bindings hold: the same certificate cannot register again.
    let c = mykey_engine::id::CertRef::parse_text("AB:01").expect("cert");
    assert!(
        reg.register_full(at(2), actor("portal"), mykey(5), c)
            .is_err()
    );
    // Writes go on top of the bulk load, and survive a reopen and a compaction.
    reg.link(
        at(2),
        actor("shop"),
        id("1C2410DF79DGEL"),
        provider("L-1"),
        service("LIB-9"),
        false,
    )
    .expect("link");
    reg.store().compact().expect("compact");
    drop(reg);
    let reg = Registry::open(fs, RegistryConfig::default()).expect("reopen");
    assert_eq!(
        reg.lookup(at(3), &id("1C2410DF79DGEL"), &provider("L-1"))
            .expect("ok"),
        Lookup::Linked(service("LIB-9"))
    );
    let v = reg
        .describe(&id("1C2410DF79DGEL"))
        .expect("ok")
        .expect("exists");
    assert_eq!(v.state_by, actor("bulk"));
}

#[test]
fn every_bad_row_is_refused_with_its_line_and_nothing_is_installed() {
    let header = "mykey_id,state,cert,links\n";
    let cases = [
        ("1C2410DF79DGE,active,AB:01,\n", "14 characters"),
        (
            "1C2410DF79DGEL,active,AB:01,NOPE=1\n",
            "not in the provider list",
        ),
        ("1C2410DF79DGEL,active,AB:0,\n", "hex"),
        ("1C2410DF79DGEL,active,AB:01\n", "4 comma-separated"),
        ("1C2410DF79DGEL,frozen,AB:01,\n", "state must be"),
        ("1C2410DF79DGEL,active,AB:01,L-1=a;L-1=b\n", "linked twice"),
        ("1C2410DF79DGEL,provisional,AB:01,L-1=a\n", "provisional"),
    ];
    for (row, want) in cases {
        let pop = format!("{header}# a comment\n\n{row}");
        let (d, r) = try_build(&pop);
        let (line, reason) = line_of(r.expect_err(row));
        assert_eq!(line, 4, "{row}");
        assert!(reason.contains(want), "{row}: {reason}");
        assert!(
            !d.path().join("MANIFEST").exists(),
            "{row}: a store was installed"
        );
    }
    let (_, r) = try_build("1C2410DF79DGEL,active,AB:01,\n");
    assert!(line_of(r.expect_err("no header")).1.contains("header"));
    let (_, r) = try_build("");
    assert!(line_of(r.expect_err("empty")).1.contains("empty"));
}

/// Asserts that a build was refused for a repeated `what` on lines `first` and `second`.
fn assert_duplicate<T: std::fmt::Debug>(r: Result<T, PopulationError>, want: (&str, u64, u64)) {
    match r.expect_err("a duplicate") {
        PopulationError::Duplicate {
            what,
            first,
            second,
        } => assert_eq!((what, first, second), want),
        other => panic!("{other}"),
    }
}

#[test]
fn duplicates_name_both_lines() {
    let pop = "mykey_id,state,cert,links\n\
        1C2410DF79DGEL,active,AB:01,\n\
        2C2410DF79DGEL,active,AB:02,\n\
        1C2410DF79DGEL,active,AB:03,\n";
    let (d, r) = try_build(pop);
    assert_duplicate(r, ("MyKey ID", 2, 4));
    assert!(!d.path().join("MANIFEST").exists());
    let pop = "mykey_id,state,cert,links\n\
        1C2410DF79DGEL,active,AB:01,\n\
        2C2410DF79DGEL,active,AB:0001,\n";
    let (d, r) = try_build(pop);
    assert_duplicate(r, ("certificate", 2, 3));
    // The ids shards were written before the certs duplicate showed; they are removed again.
    let left: Vec<_> = std::fs::read_dir(d.path()).expect("dir").collect();
    assert!(
        left.is_empty(),
        "a failed build left files behind: {left:?}"
    );
}

#[test]
fn a_bad_provider_list_is_refused_by_line() {
    let d = TempDir::new("providers");
    let fs = RealFs::new(d.path()).expect("dir");
    let pop = "mykey_id,state,cert,links\n";
    let e = build(
        &fs,
        "A\nB\nA\n".as_bytes(),
        pop.as_bytes(),
        &opts(),
        &mut |_| {},
    )
    .expect_err("duplicate provider");
    assert_eq!(line_of(e).0, 3);
    let long = "x".repeat(33);
    let e =
        build(&fs, long.as_bytes(), pop.as_bytes(), &opts(), &mut |_| {}).expect_err("too long");
    assert!(line_of(e).1.contains("33 bytes"));
}
