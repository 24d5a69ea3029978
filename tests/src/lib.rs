//! Shared helpers of the integration tests: temporary store directories, identifiers built from
//! numbers, fixed clocks. Nothing here decides a test's verdict; each test asserts its own.
#![allow(missing_docs)]

pub mod fuzz;
pub mod pg;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mykey_engine::id::{ActorId, CertRef, MyKeyId, ProviderId, ServiceId, Timestamp};
use mykey_engine::registry::{Registry, RegistryConfig, StoreConfig};
use mykey_engine::store::fs::{Fs, RealFs};

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

/// A new registry with the default layout in `dir`, with `providers` registered at `at(0)`.
pub fn registry_with(dir: &TempDir, providers: &[&str]) -> Registry {
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    let r =
        Registry::create(fs, StoreConfig::default(), RegistryConfig::default()).expect("create");
    for p in providers {
        r.register_provider(at(0), actor("operator"), provider(p))
            .expect("register provider");
    }
    r
}

/// The test JPKI: three user-authentication CA generations sharing one DN (dates of the real
/// 2015, 2019 and 2023 generations), a digital-signature CA, and a few card keys, generated
/// once per test process with rcgen (RSA key generation is slow).
pub mod pki {
    use std::sync::OnceLock;

    use mykey_engine::id::Timestamp;
    use mykey_engine::jpki::dev::{DevCa, DevKey};
    use mykey_engine::jpki::{Anchors, CardProof, Jpki, JpkiConfig};

    /// Seconds since the epoch of a UTC calendar date.
    pub fn date(y: i64, m: u32, d: u32) -> Timestamp {
        // Days from civil (Howard Hinnant's algorithm).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (i64::from(m) + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Timestamp::from_unix_secs((days * 86_400) as u64).expect("date in range")
    }

    /// The fixed "now" of the JPKI tests.
    pub fn now() -> Timestamp {
        date(2026, 11, 25)
    }

    pub struct TestPki {
        pub gen2015: DevCa,
        pub gen2019: DevCa,
        pub gen2023: DevCa,
        pub sign: DevCa,
        pub cards: Vec<DevKey>,
    }

    /// The process-wide test PKI.
    pub fn pki() -> &'static TestPki {
        static PKI: OnceLock<TestPki> = OnceLock::new();
        PKI.get_or_init(|| TestPki {
            gen2015: DevCa::auth(1, date(2015, 10, 20), date(2025, 10, 19)).expect("2015"),
            gen2019: DevCa::auth(0x0133_c349, date(2019, 9, 14), date(2029, 9, 14)).expect("2019"),
            gen2023: DevCa::auth(0x06d1_8006, date(2023, 7, 16), date(2033, 7, 15)).expect("2023"),
            sign: DevCa::signature(0x067c_6a21, date(2023, 7, 16), date(2033, 7, 15))
                .expect("sign"),
            cards: (0..3)
                .map(|_| DevKey::generate(2048).expect("card key"))
                .collect(),
        })
    }

    impl TestPki {
        /// The three authentication generations as anchors.
        pub fn anchors(&self) -> Anchors {
            Anchors::from_files(&[
                ("auth2015.der".into(), self.gen2015.der().to_vec()),
                ("auth2019.pem".into(), self.gen2019.pem().into_bytes()),
                ("auth2023.der".into(), self.gen2023.der().to_vec()),
            ])
            .expect("test anchors load")
        }

        /// The 2023 generation's key identifier in hex (for serial lists).
        pub fn gen2023_key_id_hex(&self) -> String {
            mykey_engine::id::Hex(self.anchors().all()[2].key_id()).to_string()
        }

        /// A JPKI layer over the three generations.
        pub fn jpki(&self) -> Jpki {
            Jpki::new(self.anchors(), JpkiConfig::default())
        }
    }

    /// The CN of test card `n`: 14 characters from A–Z0–9, then a 9-character suffix.
    pub fn cn(n: u64) -> String {
        format!("T{n:013}13221003A")
    }

    /// A card certificate from `ca` for card key `key`, valid 2024-01-01 to 2029-01-01.
    pub fn card(ca: &DevCa, key: &DevKey, n: u64) -> Vec<u8> {
        ca.issue(
            key,
            &cn(n),
            &(0x1000_0000 + n).to_be_bytes(),
            date(2024, 1, 1),
            date(2029, 1, 1),
        )
        .expect("issue card")
    }

    /// A fresh challenge signed by `key`, with the certificate: a full card proof's parts.
    pub struct Proof {
        pub cert: Vec<u8>,
        pub challenge: Vec<u8>,
        pub signature: Vec<u8>,
    }

    impl Proof {
        pub fn new(jpki: &Jpki, now: Timestamp, key: &DevKey, cert: Vec<u8>) -> Self {
            let c = jpki.issue_challenge(now).expect("challenge");
            let signature = key.sign(&c.bytes).expect("sign");
            Self {
                cert,
                challenge: c.bytes.to_vec(),
                signature,
            }
        }

        pub fn get(&self) -> CardProof<'_> {
            CardProof {
                cert_der: &self.cert,
                challenge: &self.challenge,
                signature: &self.signature,
            }
        }
    }
}
