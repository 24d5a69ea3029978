//! Damaged files: truncation and bit flips in logs, snapshots and the manifest give typed
//! errors naming the file and offset, or (for a log's torn tail) a clean recovery of the
//! acknowledged prefix. Never a panic, never a wrong answer.

use std::path::Path;
use std::sync::Arc;

use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{Lookup, Registry, RegistryConfig, RegistryError};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_engine::store::{StoreError, inspect};
use mykey_tests::*;

const N: u64 = 40;

/// A store with N IDs folded into snapshots and N more in the log.
fn make_store(dir: &TempDir) {
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    let cfg = StoreConfig {
        ids_shards: 2,
        certs_shards: 2,
        revoked_shards: 1,
    };
    let r = Registry::create(fs, cfg, RegistryConfig::default()).expect("create");
    r.register_provider(at(0), actor("op"), provider("P"))
        .expect("provider");
    for n in 0..2 * N {
        r.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
            .expect("register");
        r.link(
            at(0),
            actor("shop"),
            mykey(n),
            provider("P"),
            service(&format!("S{n}")),
            false,
        )
        .expect("link");
        if n == N - 1 {
            r.store().compact().expect("compact");
        }
    }
}

fn open(dir: &Path) -> Result<Registry, RegistryError> {
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir).expect("dir"));
    Registry::open(fs, RegistryConfig::default())
}

fn file(dir: &Path, prefix: &str) -> std::path::PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v.pop().unwrap_or_else(|| panic!("no file {prefix}*"))
}

/// A new store under `tag`, and a copy of it to damage.
fn fresh_copy(tag: &str) -> (TempDir, TempDir) {
    let src = TempDir::new(tag);
    make_store(&src);
    let d = copy_of(&src);
    (src, d)
}

fn copy_of(src: &TempDir) -> TempDir {
    let d = TempDir::new("corrupt-copy");
    copy_dir(src.path(), d.path());
    d
}

fn flip(path: &Path, offset: usize) {
    let mut b = std::fs::read(path).expect("read");
    b[offset] ^= 0x04;
    std::fs::write(path, b).expect("write");
}

fn corrupt_at(e: RegistryError) -> (String, u64) {
    match e {
        RegistryError::Store(StoreError::Corrupt { path, offset, .. }) => (
            path.file_name()
                .expect("file")
                .to_string_lossy()
                .into_owned(),
            offset,
        ),
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn a_log_cut_anywhere_recovers_the_prefix_and_cuts_the_tail() {
    let src = TempDir::new("wal-cut");
    make_store(&src);
    let wal = file(src.path(), "wal-");
    let len = std::fs::metadata(&wal).expect("meta").len();
    let mut last_seen = 0;
    for cut in (32..len).step_by(37) {
        let d = copy_of(&src);
        let w = d.path().join(wal.file_name().expect("name"));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&w)
            .and_then(|f| f.set_len(cut))
            .expect("truncate");
        let r = open(d.path()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        // Recovered IDs form a prefix, growing with the cut.
        let linked = (0..2 * N)
            .take_while(|&n| {
                r.lookup(at(1), &mykey(n), &provider("P")).expect("lookup")
                    == Lookup::Linked(service(&format!("S{n}")))
            })
            .count();
        assert!(linked >= N as usize, "cut at {cut}: snapshot data lost");
        assert!(
            linked >= last_seen,
            "cut at {cut}: fewer records than a shorter cut"
        );
        for n in linked as u64 + 1..2 * N {
            assert_eq!(
                r.lookup(at(1), &mykey(n), &provider("P")).expect("lookup"),
                Lookup::UnknownId,
                "cut at {cut}: a later change survived a gap"
            );
        }
        last_seen = linked;
        drop(r);
        // The torn tail was cut: the log now holds only whole records, and a second open
        // finds nothing to cut.
        let ins = inspect(
            &RealFs::new(d.path()).expect("dir"),
            &mykey_engine::registry::SCHEMA,
            true,
            &mut |_| {},
        )
        .expect("verify");
        assert!(
            ins.segments.iter().all(|s| !s.torn),
            "cut at {cut}: tail left behind"
        );
    }
    assert!(last_seen > N as usize, "no cut kept any logged change");
    let d = copy_of(&src);
    let r = open(d.path()).expect("uncut");
    assert_eq!(
        r.lookup(at(1), &mykey(2 * N - 1), &provider("P"))
            .expect("lookup"),
        Lookup::Linked(service(&format!("S{}", 2 * N - 1)))
    );
}

#[test]
fn a_flipped_bit_before_the_log_tail_refuses_to_open_naming_file_and_offset() {
    let (src, d) = fresh_copy("wal-flip");
    let wal = file(d.path(), "wal-");
    flip(&wal, 32 + 20);
    let e = open(d.path()).err().expect("must refuse");
    let (name, offset) = corrupt_at(e);
    assert_eq!(name, wal.file_name().expect("name").to_string_lossy());
    assert_eq!(
        offset, 32,
        "the first record starts right after the 32-byte header"
    );
    // Nothing was modified: the damaged file is still there, same length, for forensics.
    assert_eq!(
        std::fs::metadata(&wal).expect("meta").len(),
        std::fs::metadata(file(src.path(), "wal-"))
            .expect("meta")
            .len()
    );
}

#[test]
fn flipped_bits_in_snapshots_are_detected_and_never_served() {
    let src = TempDir::new("snap-flip");
    make_store(&src);
    let snap = file(src.path(), "ids-0001");
    let len = std::fs::metadata(&snap).expect("meta").len() as usize;
    for offset in (0..len).step_by(5) {
        let d = copy_of(&src);
        let s = d.path().join(snap.file_name().expect("name"));
        flip(&s, offset);
        match open(d.path()) {
            Err(RegistryError::Store(StoreError::Corrupt { path, .. })) => {
                assert_eq!(path.file_name(), s.file_name(), "offset {offset}");
            }
            Err(e) => panic!("offset {offset}: unexpected error {e}"),
            Ok(r) => {
                let v = inspect(
                    &RealFs::new(d.path()).expect("dir"),
                    &mykey_engine::registry::SCHEMA,
                    true,
                    &mut |_| {},
                );
                match v {
                    Err(StoreError::Corrupt { path, .. }) => {
                        assert_eq!(path.file_name(), s.file_name(), "offset {offset}")
                    }
                    other => panic!("offset {offset}: verify passed a flipped bit: {other:?}"),
                }
                for n in 0..2 * N {
                    if let Ok(l) = r.lookup(at(1), &mykey(n), &provider("P")) {
                        assert_eq!(
                            l,
                            Lookup::Linked(service(&format!("S{n}"))),
                            "offset {offset}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_truncated_snapshot_refuses_to_open() {
    let (_src, d) = fresh_copy("snap-cut");
    let s = file(d.path(), "certs-0000");
    let len = std::fs::metadata(&s).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&s)
        .and_then(|f| f.set_len(len - 1))
        .expect("truncate");
    let (name, _) = corrupt_at(open(d.path()).err().expect("must refuse"));
    assert_eq!(name, s.file_name().expect("name").to_string_lossy());
}

#[test]
fn manifest_damage_and_missing_files_are_typed_errors() {
    let src = TempDir::new("manifest");
    make_store(&src);
    let m = src.path().join("MANIFEST");
    let len = std::fs::metadata(&m).expect("meta").len() as usize;
    for offset in 0..len {
        let d = copy_of(&src);
        flip(&d.path().join("MANIFEST"), offset);
        match open(d.path()) {
            Err(RegistryError::Store(StoreError::Corrupt { path, .. })) => {
                assert_eq!(path.file_name().expect("f"), "MANIFEST", "offset {offset}")
            }
            Err(RegistryError::Store(StoreError::Version { .. })) => {}
            Err(e) => panic!("offset {offset}: unexpected {e}"),
            Ok(_) => panic!("offset {offset}: a damaged manifest opened"),
        }
    }
    for cut in [0, 10, len as u64 - 1] {
        let d = copy_of(&src);
        std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join("MANIFEST"))
            .and_then(|f| f.set_len(cut))
            .expect("truncate");
        let (name, _) = corrupt_at(open(d.path()).err().expect("must refuse"));
        assert_eq!(name, "MANIFEST");
    }
    let d = copy_of(&src);
    std::fs::remove_file(d.path().join("MANIFEST")).expect("rm");
    assert!(matches!(
        open(d.path()),
        Err(RegistryError::Store(StoreError::NotAStore { .. }))
    ));
    let d = copy_of(&src);
    let s = file(d.path(), "ids-0000");
    std::fs::remove_file(&s).expect("rm");
    match open(d.path()) {
        Err(RegistryError::Store(StoreError::Io { path, .. })) => assert_eq!(path, s),
        other => panic!(
            "expected an I/O error naming the file, got {:?}",
            other.err()
        ),
    }
}

#[test]
fn a_shard_file_from_another_store_is_refused() {
    let a = TempDir::new("store-a");
    let b = TempDir::new("store-b");
    make_store(&a);
    make_store(&b);
    let name = file(a.path(), "ids-0000")
        .file_name()
        .expect("name")
        .to_owned();
    std::fs::copy(b.path().join(&name), a.path().join(&name)).expect("swap");
    let e = open(a.path()).err().expect("must refuse");
    assert_eq!(corrupt_at(e).0, name.to_string_lossy());
}

#[test]
fn a_store_open_in_one_place_cannot_be_opened_in_another() {
    let dir = TempDir::new("lock");
    make_store(&dir);
    let first = open(dir.path()).expect("first open");
    match open(dir.path()) {
        Err(RegistryError::Store(StoreError::Io { path, source, .. })) => {
            assert_eq!(path.file_name().expect("file"), "LOCK");
            assert_eq!(source.kind(), std::io::ErrorKind::WouldBlock);
        }
        other => panic!("a second open must be refused, got {:?}", other.err()),
    }
    drop(first);
    open(dir.path()).expect("open after the first one closed");
}
