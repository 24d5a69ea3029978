//! Storage failures as an operator meets them, on a real directory behind the failing and
//! stalling seam of `TracedFs` (and, where the kernel lets us mount one, a real full tmpfs):
//! each failure is logged where it happens, naming the operation, the file and the OS error;
//! readiness says what the node cannot do; a failed compaction cleans up, leaves writes working
//! and retries; a stuck fsync blocks no read; recovery says what it cuts and refuses to open
//! when a log segment went missing; the read-only tools never map a live log segment.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mykey_engine::id::ActorId;
use mykey_engine::registry::{SCHEMA, StoreConfig, Table};
use mykey_engine::server::admin::Readiness;
use mykey_engine::store::Layout;
use mykey_engine::store::fs::{FaultOp, Faults, RealFs, TracedFs};
use mykey_engine::store::{CompactionPolicy, Compactor, CompactorState, Store, StoreError};
use mykey_tests::TempDir;

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// Log lines written while `f` runs on this thread. One global subscriber writes each event
/// into the buffer of the thread that logs it, if that thread is capturing: a per-test
/// `with_default` subscriber races with the other tests' over tracing's per-callsite interest
/// cache, and an event could then go unseen (it did, one run in five).
fn capture<R>(f: impl FnOnce() -> R) -> (R, String) {
    use std::cell::RefCell;
    thread_local! {
        static CAPTURED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    }
    struct ThisThread;
    impl std::io::Write for ThisThread {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            CAPTURED.with(|c| {
                if let Some(v) = c.borrow_mut().as_mut() {
                    v.extend_from_slice(b);
                }
            });
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let sub = tracing_subscriber::fmt()
            .with_writer(|| ThisThread)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(sub).expect("the only subscriber of this binary");
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let r = f();
    let bytes = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (r, String::from_utf8_lossy(&bytes).into_owned())
}

/// Asserts that the store reports a problem starting with `kind` and naming `detail`.
fn assert_problem(store: &Store, kind: &str, detail: &str) {
    let problems = store.health().problems();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(kind) && p.contains(detail)),
        "{problems:?}"
    );
}

fn small() -> Layout {
    StoreConfig {
        ids_shards: 1,
        certs_shards: 1,
        revoked_shards: 1,
    }
    .layout()
    .expect("layout")
}

/// A new store in `dir` behind a `TracedFs`, and its faults.
fn traced(dir: &TempDir) -> (Store, Arc<Faults>) {
    let t = TracedFs::new(Arc::new(RealFs::new(dir.path()).expect("dir")));
    let faults = t.faults.clone();
    (Store::create(Arc::new(t), small()).expect("create"), faults)
}

/// A new store in `dir` on the real file system.
fn plain(dir: &TempDir) -> Store {
    Store::create(Arc::new(RealFs::new(dir.path()).expect("dir")), small()).expect("create")
}

fn reopen(dir: &Path) -> Result<Store, StoreError> {
    Store::open(Arc::new(RealFs::new(dir).expect("dir")), &SCHEMA)
}

fn put(store: &Store, k: &[u8], v: &[u8]) -> Result<u64, StoreError> {
    let mut tx = store.write()?;
    tx.put(Table::Ids, k, Some(v.to_vec()));
    tx.commit(
        mykey_tests::at(0),
        ActorId::parse(b"test").expect("actor"),
        0,
    )
}

fn get(store: &Store, k: &[u8]) -> Option<Vec<u8>> {
    store
        .get(Table::Ids, k, |v| v.map(<[u8]>::to_vec))
        .expect("read")
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const WAL1: &str = "wal-0000000000000001.log";

#[test]
fn a_failed_fsync_is_logged_the_store_goes_read_only_and_reads_go_on() {
    let dir = TempDir::new("fault-fsync");
    let (store, faults) = traced(&dir);
    put(&store, b"K1", b"v1").expect("write");
    faults.arm(FaultOp::Sync, ".log", EIO);
    let (r, logs) = capture(|| put(&store, b"K2", b"v2"));
    // The change was queued and may be in the file: its outcome is unknown, never "not applied".
    match r {
        Err(e @ StoreError::OutcomeUnknown { .. }) => {
            assert!(
                e.to_string().contains("may or may not have been applied"),
                "{e}"
            )
        }
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    let line = logs
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no ERROR line: {logs}"));
    for part in [
        "store read-only: fsync failed on wal-0000000000000001.log",
        "Input/output error",
        dir.path().to_str().expect("utf-8"),
    ] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
    // Readiness names it; lookups go on; a later write is refused before it is queued.
    let ready = Readiness::default();
    let probed = Arc::new(store);
    let store = probed.clone();
    ready.set_probe(Box::new(move || {
        mykey_engine::server::admin::Finding::not_ready(probed.health().problems())
    }));
    ready.set_phase(None);
    let reason = ready.check().expect_err("not ready");
    assert!(
        reason.starts_with(
            "store read-only: fsync failed on wal-0000000000000001.log: Input/output error"
        ),
        "{reason}"
    );
    assert_eq!(get(&store, b"K1").as_deref(), Some(&b"v1"[..]));
    faults.clear();
    match put(&store, b"K3", b"v3") {
        Err(e @ StoreError::Failed { .. }) => {
            assert!(e.to_string().contains("this write was not applied"), "{e}")
        }
        other => panic!("expected a read-only refusal, got {other:?}"),
    }
}

#[test]
fn a_full_disk_on_append_names_the_operation_and_the_file() {
    let dir = TempDir::new("fault-append");
    let (store, faults) = traced(&dir);
    faults.arm(FaultOp::Write, ".log", ENOSPC);
    let (r, logs) = capture(|| put(&store, b"K1", b"v1"));
    assert!(matches!(r, Err(StoreError::OutcomeUnknown { .. })), "{r:?}");
    assert!(
        logs.contains(
            "store read-only: append failed on wal-0000000000000001.log: No space left on device"
        ),
        "{logs}"
    );
    assert_eq!(
        store
            .health()
            .read_only
            .as_deref()
            .map(|r| r.starts_with("append failed")),
        Some(true)
    );
}

/// Every way a compaction can fail for lack of space: its files go, writes go on, it is
/// logged each time, retried with a doubling backoff, and the next attempt folds it all.
#[test]
fn a_failed_compaction_cleans_up_keeps_writes_and_retries() {
    for (op, suffix, what) in [
        (FaultOp::Write, ".snap.tmp", "write"),
        (FaultOp::Create, ".snap.tmp", "create"),
        (FaultOp::Sync, ".snap.tmp", "fsync"),
        (FaultOp::Rename, "MANIFEST.tmp", "rename"),
        (FaultOp::Create, ".log", "create"),
    ] {
        let dir = TempDir::new("fault-compact");
        let (store, faults) = traced(&dir);
        for n in 0..20u8 {
            put(&store, &[b'K', n], &[n]).expect("write");
        }
        let before: Vec<String> = files(dir.path())
            .into_iter()
            .filter(|n| n.ends_with(".snap"))
            .collect();
        let mut compactor = Compactor::new(CompactionPolicy {
            delta_keys_max: 1,
            poll: Duration::from_secs(1),
        });
        faults.arm(op, suffix, ENOSPC);
        let (wait, logs) = capture(|| compactor.step(&store));
        assert_eq!(wait, Duration::from_secs(1), "{what} {suffix}");
        let line = logs
            .lines()
            .find(|l| l.contains("ERROR") && l.contains("compaction failed"))
            .unwrap_or_else(|| panic!("{what} {suffix}: no ERROR line: {logs}"));
        assert!(
            line.contains(what)
                && line.contains(suffix)
                && line.contains("No space left on device"),
            "{line}"
        );
        // Nothing it wrote is left: no temporary file, no shard or log file of the new seq.
        let left = files(dir.path());
        assert!(
            !left.iter().any(|n| n.ends_with(".tmp")),
            "{what}: {left:?}"
        );
        let snaps: Vec<String> = left
            .iter()
            .filter(|n| n.ends_with(".snap"))
            .cloned()
            .collect();
        assert_eq!(snaps, before, "{what} {suffix}");
        if suffix == ".log" {
            assert_eq!(
                left.iter().filter(|n| n.ends_with(".log")).count(),
                1,
                "{left:?}"
            );
        }
        assert_problem(&store, "compactor stopped: ", "retrying in 1 s");
        // Writes go on, and a second failure waits twice as long.
        put(&store, b"after", b"1").expect("writes go on after a failed compaction");
        assert_eq!(compactor.step(&store), Duration::from_secs(2));
        faults.clear();
        let (wait, logs) = capture(|| compactor.step(&store));
        assert_eq!(wait, Duration::ZERO);
        assert!(logs.contains("compaction succeeded again"), "{logs}");
        assert_eq!(store.health().compactor, CompactorState::Running);
        assert!(store.health().problems().is_empty());
        assert_eq!(
            store.snapshot_seq(),
            21,
            "{what}: the fold took every change"
        );
        drop(store);
        let store = reopen(dir.path()).expect("reopen");
        assert_eq!(get(&store, b"after").as_deref(), Some(&b"1"[..]));
        assert_eq!(get(&store, &[b'K', 7]).as_deref(), Some(&[7u8][..]));
    }
}

/// A compaction on a real, full file system (a 2 MiB tmpfs): it fails, gives the space back,
/// and writes go on. Needs permission to mount (root in CI); skipped with a message otherwise.
#[test]
fn a_disk_full_compaction_on_a_real_tmpfs_never_takes_writes_down() {
    let mnt = TempDir::new("tmpfs");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(mnt.path())
        .stderr(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the TracedFs test covers the logic"
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path());
    let dir = mnt.path().join("store");
    let store = Store::create(Arc::new(RealFs::new(&dir).expect("dir")), small()).expect("create");
    // ~600 KB of records in the log; a snapshot of them needs as much again.
    let value = vec![7u8; 3000];
    for n in 0..200u32 {
        put(&store, &n.to_le_bytes(), &value).expect("write");
    }
    // Leave less free space than the snapshot needs, more than the next writes do.
    let mut ballast = std::fs::File::create(mnt.path().join("ballast")).expect("ballast");
    let chunk = vec![0u8; 16 * 1024];
    while ballast.write_all(&chunk).is_ok() {}
    drop(ballast);
    let cut = std::fs::metadata(mnt.path().join("ballast"))
        .expect("ballast")
        .len()
        - 300_000;
    std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.path().join("ballast"))
        .and_then(|f| f.set_len(cut))
        .expect("free 300 KB");
    let mut compactor = Compactor::new(CompactionPolicy {
        delta_keys_max: 1,
        poll: Duration::from_secs(1),
    });
    let (wait, logs) = capture(|| compactor.step(&store));
    assert_eq!(
        wait,
        Duration::from_secs(1),
        "the compaction should fail: {logs}"
    );
    assert!(logs.contains("No space left on device"), "{logs}");
    assert!(
        !files(&dir).iter().any(|n| n.ends_with(".tmp")),
        "{:?}",
        files(&dir)
    );
    for n in 200..240u32 {
        put(&store, &n.to_le_bytes(), b"small").expect("writes go on on a full disk");
    }
    std::fs::remove_file(mnt.path().join("ballast")).expect("free the disk");
    assert_eq!(
        compactor.step(&store),
        Duration::ZERO,
        "compacts once there is room"
    );
    drop(store);
    let store = reopen(&dir).expect("reopen");
    assert_eq!(get(&store, &5u32.to_le_bytes()), Some(value));
    assert_eq!(
        get(&store, &239u32.to_le_bytes()).as_deref(),
        Some(&b"small"[..])
    );
}

#[test]
fn a_stuck_fsync_shows_while_it_hangs_and_blocks_no_read() {
    let dir = TempDir::new("fault-stall");
    let (store, faults) = traced(&dir);
    put(&store, b"K1", b"v1").expect("write");
    let store = Arc::new(store);
    faults.stall_syncs();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || put(&store, b"K2", b"v2"))
    };
    // The seam, not a sleep: wait until the writer's fsync is held.
    while faults.stalled_now() == 0 {
        std::thread::yield_now();
    }
    let health = store.health();
    let (_, file) = health.log_io.clone().expect("an fsync in progress");
    assert_eq!(file, WAL1);
    let problems = health.problems_with(Duration::ZERO);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("fsync stuck for ")
                && p.ends_with(" s on wal-0000000000000001.log")),
        "{problems:?}"
    );
    // Reads never wait for the log.
    for _ in 0..100 {
        assert_eq!(get(&store, b"K1").as_deref(), Some(&b"v1"[..]));
    }
    assert_eq!(get(&store, b"K2"), None, "not visible before it is durable");
    faults.release_syncs();
    writer
        .join()
        .expect("thread")
        .expect("durable once the fsync returns");
    assert!(store.health().log_io.is_none());
    assert_eq!(get(&store, b"K2").as_deref(), Some(&b"v2"[..]));
}

#[test]
fn a_torn_tail_is_cut_with_a_warning_naming_segment_offset_and_bytes() {
    let dir = TempDir::new("fault-torn");
    let store = plain(&dir);
    for n in 0..3u8 {
        put(&store, &[n], b"v").expect("write");
    }
    drop(store);
    let wal = dir.path().join(WAL1);
    let valid = std::fs::metadata(&wal).expect("wal").len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&wal)
        .and_then(|mut f| f.write_all(&[9, 0, 0, 0, 1, 2, 3]))
        .expect("a torn record");
    let (r, logs) = capture(|| {
        Store::open_with_report(Arc::new(RealFs::new(dir.path()).expect("dir")), &SCHEMA)
    });
    let (store, report) = r.expect("opens");
    assert_eq!(report.torn_bytes, 7);
    let line = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("cut a torn tail"))
        .unwrap_or_else(|| panic!("no WARN line: {logs}"));
    for part in [
        WAL1.to_owned(),
        format!("offset={valid}"),
        "bytes=7".to_owned(),
    ] {
        assert!(line.contains(&part), "{part} not in {line}");
    }
    assert_eq!(get(&store, &[2]).as_deref(), Some(&b"v"[..]));
}

fn missing(r: Result<Store, StoreError>) -> (String, String) {
    match r {
        Err(StoreError::MissingLog { path, what }) => (
            path.file_name()
                .expect("file")
                .to_string_lossy()
                .into_owned(),
            what,
        ),
        Err(e) => panic!("expected a missing log segment, got {e}"),
        Ok(_) => panic!("expected a missing log segment, the store opened"),
    }
}

#[test]
fn a_deleted_or_shortened_log_segment_refuses_to_open_naming_it() {
    // The only segment, deleted: the MANIFEST says the log continues from change 1.
    let dir = TempDir::new("missing-only");
    let store = plain(&dir);
    put(&store, b"K1", b"v1").expect("write");
    drop(store);
    std::fs::remove_file(dir.path().join(WAL1)).expect("remove");
    let (file, what) = missing(reopen(dir.path()));
    assert_eq!(file, WAL1);
    assert!(what.contains("change 1"), "{what}");

    // The newest segment, deleted after a rotation sealed the one before it.
    let dir = TempDir::new("missing-last");
    let (store, faults) = traced(&dir);
    put(&store, b"K1", b"v1").expect("write");
    faults.arm(FaultOp::Create, ".snap.tmp", ENOSPC);
    assert!(store.compact().is_err(), "rotates the log, then fails");
    faults.clear();
    put(&store, b"K2", b"v2").expect("write");
    drop(store);
    let copy = TempDir::new("missing-last-copy");
    mykey_tests::copy_dir(dir.path(), copy.path());
    std::fs::remove_file(dir.path().join("wal-0000000000000002.log")).expect("remove");
    let (file, what) = missing(reopen(dir.path()));
    assert_eq!(file, "wal-0000000000000002.log");
    assert!(what.contains("sealed at change 1"), "{what}");

    // The older segment cut short (its seal and last record gone): a gap before the next.
    let old = copy.path().join(WAL1);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&old)
        .expect("open");
    f.set_len(32).expect("cut to the header");
    drop(f);
    let (file, what) = missing(reopen(copy.path()));
    assert_eq!(file, WAL1);
    assert!(
        what.contains("changes 1..=1 are missing") && what.contains(WAL1),
        "{what}"
    );
}

#[test]
fn inspect_verify_and_log_read_live_segments_without_mapping_them() {
    let dir = TempDir::new("no-map");
    let store = plain(&dir);
    for n in 0..5u8 {
        put(&store, &[n], b"v").expect("write");
    }
    // While the store is open and serving, through a view that refuses to map a log segment.
    let fs = TracedFs::new(Arc::new(RealFs::new(dir.path()).expect("dir")));
    fs.faults.arm(FaultOp::Map, ".log", EIO);
    let ins = mykey_engine::store::inspect(&fs, &mykey_engine::registry::SCHEMA, true, &mut |_| {})
        .expect("inspect");
    assert_eq!(ins.segments.iter().map(|s| s.changes).sum::<u64>(), 5);
    let mut seen = 0;
    mykey_engine::store::read_log(&fs, |_| seen += 1).expect("read the log");
    assert_eq!(seen, 5);
    drop(store);
}

#[test]
fn a_corrupt_snapshot_read_is_refused_logged_once_and_named_by_readiness() {
    let dir = TempDir::new("fault-corrupt");
    let store = plain(&dir);
    put(&store, b"K1", b"v1").expect("write");
    let seq = store.compact().expect("compact");
    drop(store);
    // Flip a bit in every bucket's checksum of the ids shard, so any probe meets one.
    let shard = dir.path().join(mykey_engine::store::shard_file_name(
        Table::Ids.name(),
        0,
        seq,
    ));
    let mut b = std::fs::read(&shard).expect("read");
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
    // Format version 2 (`snapshots/README.md`): `T` buckets of `P` bytes from offset `P`,
    // each opening with its CRC.
    let buckets = u32_at(&b, 36);
    let stride = u32_at(&b, 52);
    for i in 0..buckets {
        b[stride * (i + 1)] ^= 1;
    }
    std::fs::write(&shard, b).expect("write");
    let store = reopen(dir.path()).expect("opens: only headers are checked on open");
    let (reads, logs) = capture(|| {
        (0..3)
            .map(|_| store.get(Table::Ids, b"K1", |v| v.map(<[u8]>::to_vec)))
            .collect::<Vec<_>>()
    });
    assert!(
        reads
            .iter()
            .all(|r| matches!(r, Err(StoreError::Corrupt { .. }))),
        "{reads:?}"
    );
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "logged once, not per read: {logs}");
    assert!(
        errors[0].contains("refused a corrupt snapshot read")
            && errors[0].contains("ids-0000-")
            && errors[0].contains("offset"),
        "{}",
        errors[0]
    );
    assert_problem(&store, "store corrupt: ", "ids-0000-");
}

/// Group commit, held with the stall seam rather than left to timing: while one writer's fsync
/// is stalled, seven more queue their changes; once it returns, a single fsync makes all seven
/// durable. Two log fsyncs for eight writes.
#[test]
fn writers_queued_behind_an_fsync_share_the_next_one() {
    let dir = TempDir::new("group-commit");
    let t = TracedFs::new(Arc::new(RealFs::new(dir.path()).expect("dir")));
    let (faults, syncs) = (t.faults.clone(), t.syncs.clone());
    let store = Arc::new(Store::create(Arc::new(t), small()).expect("create"));
    let before = store.submitted_seq();
    faults.stall_syncs();
    let syncs_before = syncs.load(std::sync::atomic::Ordering::Acquire);
    let first = {
        let store = store.clone();
        std::thread::spawn(move || put(&store, b"first", b"1"))
    };
    while faults.stalled_now() == 0 {
        std::thread::yield_now();
    }
    let rest: Vec<_> = (0..7u8)
        .map(|n| {
            let store = store.clone();
            std::thread::spawn(move || put(&store, &[b'w', n], b"1"))
        })
        .collect();
    while store.submitted_seq() < before + 8 {
        std::thread::yield_now();
    }
    faults.release_syncs();
    first.join().expect("thread").expect("durable");
    for w in rest {
        w.join().expect("thread").expect("durable");
    }
    let spent = syncs.load(std::sync::atomic::Ordering::Acquire) - syncs_before;
    assert_eq!(
        spent, 2,
        "eight writes, one fsync held and one shared by the seven behind it"
    );
    assert_eq!(store.durable_seq(), before + 8);
}
