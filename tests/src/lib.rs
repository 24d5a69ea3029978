//! Shared helpers of the integration tests: temporary store directories, identifiers built from
//! numbers, fixed clocks. Nothing here decides a test's verdict; each test asserts its own.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use mykey_engine::id::{ActorId, CertRef, MyKeyId, ProviderId, ServiceId, Timestamp};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "mykey-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies every file of `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// 2025-11-25T00:00:00Z, the tests' "now".
pub const T0: u64 = 1_764_028_800;

pub fn at(secs_after_t0: u64) -> Timestamp {
    Timestamp::from_unix_secs(T0 + secs_after_t0).expect("in range")
}

pub fn actor(name: &str) -> ActorId {
    ActorId::parse(name.as_bytes()).expect("valid actor")
}

/// The MyKey ID numbered `n`: base 36, 14 characters.
pub fn mykey(n: u64) -> MyKeyId {
    const A: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut b = [b'0'; 14];
    let mut x = n;
    for c in b.iter_mut().rev() {
        *c = A[(x % 36) as usize];
        x /= 36;
    }
    MyKeyId::parse(&b).expect("valid id")
}

/// The certificate numbered `n` of CA generation `ca`.
pub fn cert(ca: u8, n: u64) -> CertRef {
    let mut serial = n.to_be_bytes().to_vec();
    serial.insert(0, 0x01);
    CertRef::new(&[ca; 20], &serial).expect("valid cert")
}

pub fn provider(s: &str) -> ProviderId {
    ProviderId::parse(s.as_bytes()).expect("valid provider")
}

pub fn service(s: &str) -> ServiceId {
    ServiceId::parse(s.as_bytes()).expect("valid service")
}
