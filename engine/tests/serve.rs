//! `mykeyd serve` as a process, as systemd and an operator drive it: READY=1 only once it
//! serves, RELOADING=1 … READY=1 around each SIGHUP, STOPPING=1 on SIGTERM (`sd_notify`). SIGHUP
//! reloads the client CRL that `mykeyd pki revoke` publishes (a revoked terminal is refused at
//! the handshake while live connections keep working), a server certificate rotated with
//! `mykeyd pki server`, and the JPKI anchors (a new generation's cards are accepted); a broken
//! config is refused without stopping the server. SIGTERM drains a request in flight and exits
//! 0; `kill -9` loses no acknowledged write.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mykey_engine::client::{Client, ClientTls};
use mykey_engine::id::{CertRef, MyKeyId, ProviderId, PushId, ServiceId, Timestamp};
use mykey_engine::jpki::Anchors;
use mykey_engine::registry::{Lookup, Registry, RegistryConfig};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_engine::wire::{self, Op, Request, Response};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("mykeyd-serve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    Dir(p)
}

struct Daemon {
    child: Option<Child>,
    admin: SocketAddr,
    quic: SocketAddr,
    dir: PathBuf,
    /// Where the server's sd_notify messages arrive (`NOTIFY_SOCKET`), as systemd's would.
    notify: Option<UnixDatagram>,
    /// Environment overrides the server starts with.
    env: Vec<(String, String)>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http_get(admin: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_millis(200)) else {
        return String::new();
    };
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes());
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r
}

fn ready(admin: SocketAddr) -> bool {
    http_get(admin, "/readyz").starts_with("HTTP/1.1 200")
}

/// Runs `mykeyd ARGS`, asserting success; returns its standard output.
fn mykeyd(args: &[&std::ffi::OsStr]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_mykeyd"))
        .args(args)
        .output()
        .expect("mykeyd");
    assert!(
        o.status.success(),
        "mykeyd {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Daemon {
    /// `mykeyd init` on free ports.
    fn init(dir: &Path) -> Self {
        let quic = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp port");
        let admin = TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("tcp port");
        let o = Command::new(env!("CARGO_BIN_EXE_mykeyd"))
            .args(["init", "--dir"])
            .arg(dir)
            .args(["--listen", &quic.to_string(), "--admin", &admin.to_string()])
            .output()
            .expect("init");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Self {
            child: None,
            admin,
            quic,
            dir: dir.to_owned(),
            notify: None,
            env: Vec::new(),
        }
    }

    /// Starts the server and waits for its READY=1, which must come only once it serves.
    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log");
        let sock_path = self.dir.join("notify.sock");
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let child = Command::new(env!("CARGO_BIN_EXE_mykeyd"))
            .args(["serve", "--config"])
            .arg(self.dir.join("mykeyd.toml"))
            .env("NOTIFY_SOCKET", &sock_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        self.child = Some(child);
        self.notify = Some(sock);
        let first = self.notification();
        assert!(
            first.starts_with("READY=1\nSTATUS=serving"),
            "{first:?}: {}",
            self.log()
        );
        assert!(ready(self.admin), "READY=1 came before /readyz turned 200");
    }

    /// The next sd_notify message (waits up to 60 s).
    fn notification(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .notify
            .as_ref()
            .expect("started")
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no sd_notify message: {e}: {}", self.log()));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Sends SIGHUP and returns the STATUS the server reports once the reload is done
    /// (RELOADING=1, then READY=1).
    fn reload(&self) -> String {
        self.signal("-HUP");
        let reloading = self.notification();
        assert!(reloading.starts_with("RELOADING=1"), "{reloading:?}");
        let done = self.notification();
        assert!(done.starts_with("READY=1\nSTATUS="), "{done:?}");
        done
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let t = Instant::now();
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn tls(&self, role: &str) -> ClientTls {
        let pki = self.dir.join("pki");
        let certs = |p: PathBuf| -> Vec<CertificateDer<'static>> {
            CertificateDer::pem_file_iter(&p)
                .expect("pem")
                .collect::<Result<_, _>>()
                .expect("certs")
        };
        ClientTls {
            chain: certs(pki.join(format!("terminals/{role}.pem"))),
            key: PrivateKeyDer::from_pem_file(pki.join(format!("terminals/{role}.key")))
                .expect("key"),
            server_roots: certs(pki.join("client-ca.pem")),
        }
    }

    async fn client(&self, role: &str) -> Result<Client, mykey_engine::client::ClientError> {
        Client::connect(self.quic, "localhost", self.tls(role)).await
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn p(s: &str) -> ProviderId {
    ProviderId::parse(s.as_bytes()).expect("provider")
}

fn id(s: &str) -> MyKeyId {
    MyKeyId::parse(s.as_bytes()).expect("id")
}

fn now() -> Timestamp {
    mykey_engine::server::system_clock()
}

#[test]
fn sighup_reloads_the_client_crl_without_dropping_live_connections() {
    let d = dir("hup");
    let mut daemon = Daemon::init(&d.0);
    daemon.start();
    rt().block_on(async {
        let live = daemon.client("counter").await.expect("connect");
        assert_eq!(
            live.lookup(p("A-α1-0001"), id("1C2410DF79DGEL"))
                .await
                .expect("lookup"),
            Lookup::Linked(ServiceId::parse(b"ABCDEFGHI").expect("svc"))
        );
        // The operator issues a second counter terminal with `mykeyd pki`; it connects.
        let pki_dir = daemon.dir.join("pki");
        let pki_arg = pki_dir.as_os_str();
        let out = mykeyd(&[
            "pki".as_ref(),
            "issue".as_ref(),
            "--dir".as_ref(),
            pki_arg,
            "--role".as_ref(),
            "counter".as_ref(),
            "--provider".as_ref(),
            "A-α1-0001".as_ref(),
            "--name".as_ref(),
            "sugamo-2".as_ref(),
            "--out".as_ref(),
            pki_dir.join("terminals/sugamo-2").as_os_str(),
        ]);
        assert!(out.contains("counter sugamo-2 valid"), "{out}");
        let second = daemon
            .client("sugamo-2")
            .await
            .expect("a newly issued terminal");
        second
            .lookup(p("A-α1-0001"), id("1C2410DF79DGEL"))
            .await
            .expect("lookup");
        // It revokes the first counter terminal by name, and reloads.
        let out = mykeyd(&[
            "pki".as_ref(),
            "revoke".as_ref(),
            "--dir".as_ref(),
            pki_arg,
            "--name".as_ref(),
            "dev-counter".as_ref(),
        ]);
        assert!(out.contains("published CRL 2"), "{out}");
        let status = daemon.reload();
        assert!(status.contains("STATUS=serving"), "{status:?}");
        // A new connection of the revoked terminal is refused (once the reload is in).
        let t0 = Instant::now();
        loop {
            let r = async {
                let c = daemon.client("counter").await?;
                c.lookup(p("A-α1-0001"), id("1C2410DF79DGEL")).await
            }
            .await;
            if r.is_err() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "revoked terminal still served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The live connection keeps working; other terminals connect.
        live.lookup(p("A-α1-0001"), id("1C2410DF79DGEL"))
            .await
            .expect("the live connection survives the reload");
        let op = daemon.client("operator").await.expect("operator connects");
        op.stats().await.expect("stats");
        daemon
            .client("sugamo-2")
            .await
            .expect("the second counter is not revoked");
        // The server certificate is rotated: a new one valid 30 days, loaded on SIGHUP, seen by
        // new connections and in the expiry metric.
        let expiry = || {
            let m = http_get(daemon.admin, "/metrics");
            m.lines()
                .find_map(|l| {
                    l.strip_prefix("mykey_certificate_expiry_timestamp_seconds{cert=\"server\"} ")
                })
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no server expiry in /metrics:\n{m}"))
        };
        let before = expiry();
        mykeyd(&[
            "pki".as_ref(),
            "server".as_ref(),
            "--dir".as_ref(),
            pki_arg,
            "--host".as_ref(),
            "localhost".as_ref(),
            "--host".as_ref(),
            "127.0.0.1".as_ref(),
            "--days".as_ref(),
            "30".as_ref(),
            "--out".as_ref(),
            pki_dir.join("server").as_os_str(),
            "--replace".as_ref(),
        ]);
        daemon.reload();
        let after = expiry();
        let want = (now().unix_secs() + 30 * 86_400) as f64;
        assert!(
            (after - want).abs() < 600.0 && after < before,
            "server expiry {before} -> {after}, want about {want}"
        );
        daemon
            .client("operator")
            .await
            .expect("a new connection gets the rotated certificate")
            .stats()
            .await
            .expect("stats");
        // A new JPKI generation: its cards are unknown until the anchors are reloaded.
        let t = now();
        let from = Timestamp::from_unix_secs(t.unix_secs() - 86_400).expect("t");
        let generation =
            mykey_engine::jpki::dev::DevCa::auth(0x2027, from, t.plus_secs(86_400 * 365))
                .expect("generation");
        let card_key = mykey_engine::jpki::dev::DevKey::generate(2048).expect("card key");
        let cert = generation
            .issue(
                &card_key,
                "NEWGEN00000001132210030",
                &[0x51],
                from,
                t.plus_secs(86_400 * 300),
            )
            .expect("card");
        let portal = daemon.client("portal").await.expect("portal");
        let register = async |portal: &Client| {
            let ch = portal.challenge().await.expect("challenge");
            let sig = card_key.sign(&ch.bytes).expect("sign");
            portal
                .register_full(mykey_engine::jpki::CardProof {
                    cert_der: &cert,
                    challenge: &ch.bytes,
                    signature: &sig,
                })
                .await
        };
        let before = register(&portal).await;
        assert_eq!(
            before.as_ref().err().and_then(|e| e.status()),
            Some(mykey_engine::wire::Status::UnknownIssuer),
            "{before:?}"
        );
        std::fs::write(
            daemon.dir.join("jpki-anchors/gen-2027.pem"),
            generation.pem(),
        )
        .expect("write");
        daemon.reload();
        let t0 = Instant::now();
        loop {
            match register(&portal).await {
                Ok(id) => {
                    assert_eq!(id.as_str(), "NEWGEN00000001");
                    break;
                }
                Err(e) => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(20),
                        "anchors not reloaded: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // A broken config is refused on reload; the server keeps serving.
        let cfg = daemon.dir.join("mykeyd.toml");
        let good = std::fs::read_to_string(&cfg).expect("config");
        std::fs::write(&cfg, good.replace("[limits]", "[limits]\nbogus_key = 1")).expect("write");
        let status = daemon.reload();
        assert!(
            status.contains("the last reload was refused") && status.contains("bogus_key"),
            "{status:?}"
        );
        let op = daemon.client("operator").await.expect("still serving");
        op.stats().await.expect("stats");
    });
    let log = daemon.log();
    assert!(
        log.contains("reload refused") && log.contains("bogus_key"),
        "{log}"
    );
}

#[test]
fn sigterm_drains_a_push_in_flight_and_kill_9_loses_no_acknowledged_write() {
    let d = dir("term");
    let mut daemon = Daemon::init(&d.0);
    daemon.start();
    let svc = ServiceId::parse(b"KILL-9").expect("svc");
    rt().block_on(async {
        let c = daemon.client("counter").await.expect("connect");
        c.link(id("1C2410DF79DGEL"), p("13101-LIB-0001"), svc, true)
            .await
            .expect("acknowledged");
    });
    daemon.signal("-KILL");
    daemon.wait();
    daemon.start();
    let anchors = Anchors::load_dir(&daemon.dir.join("jpki-anchors")).expect("anchors");
    let key_id = anchors.all()[0].key_id().to_vec();
    const N: u64 = 300_000;
    let mut list = format!(
        "ca {}\n",
        key_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    for n in 1..=N {
        list.push_str(&format!("{:x}\n", 0x7000_0000 + n));
    }
    let summary = rt().block_on(async {
        let c = daemon.client("counter").await.expect("connect");
        assert_eq!(
            c.lookup(p("13101-LIB-0001"), id("1C2410DF79DGEL"))
                .await
                .expect("lookup"),
            Lookup::Linked(svc),
            "the acknowledged link survived kill -9"
        );
        let partner = daemon.client("partner").await.expect("partner");
        let mut frame = Vec::new();
        Request::PushSerials {
            push: PushId::parse(b"drain-test").expect("push"),
            list: list.as_bytes(),
        }
        .encode(&mut frame)
        .expect("fits");
        // The push is held in flight by its sender: the first part of its body goes out, and
        // QUIC's flow control lets `write_all` return only once the server has read all but
        // one receive window of it, so the server is inside the request when SIGTERM comes.
        let (mut send, mut recv) = partner.connection().open_bi().await.expect("stream");
        let first = frame.len() - 200_000;
        assert!(
            first > 4 * 256 * 1024,
            "more than a receive window goes first"
        );
        send.write_all(&frame[..first]).await.expect("first part");
        daemon.signal("-TERM");
        let stopping = daemon.notification();
        assert!(stopping.starts_with("STOPPING=1"), "{stopping:?}");
        // Draining now: the rest of the body arrives, and the push is applied and answered.
        send.write_all(&frame[first..]).await.expect("rest");
        send.finish().expect("finish");
        let answer = recv.read_to_end(1 << 16).await.expect("answer");
        let (head, body) = wire::split_response(&answer).expect("a whole answer");
        if !head.is_ok() {
            return Err(wire::Refused::decode(head.status, body)
                .message
                .into_owned());
        }
        match Response::decode(Op::PushSerials, body) {
            Ok(Response::Push(s)) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    });
    let status = daemon.wait();
    assert!(status.success(), "exit {status:?}: {}", daemon.log());
    let s = summary.unwrap_or_else(|e| {
        panic!(
            "the push in flight must complete during the drain: {e}\n{}",
            daemon.log()
        )
    });
    assert_eq!(s.entries, N);
    // Durable: the store, opened after the exit, has every serial.
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(daemon.dir.join("store")).expect("dir"));
    let reg = Registry::open(fs, RegistryConfig::default()).expect("open");
    for n in [1, N / 2, N] {
        let serial = (0x7000_0000u64 + n).to_be_bytes();
        assert!(
            reg.is_revoked(&CertRef::new(&key_id, &serial).expect("cert"))
                .expect("revoked?")
        );
    }
    let log = daemon.log();
    let (drain_at, push_at) = (log.find("draining"), log.find("revocation push"));
    assert!(
        matches!((drain_at, push_at), (Some(d), Some(p)) if d < p),
        "SIGTERM must arrive while the push is in flight: {log}"
    );
}

/// The restore drill of ops/RUNBOOK.md: `mykeyd backup` of the store a server is serving,
/// `mykeyd restore` into a new directory, and a server started on it answers every write
/// acknowledged before the backup and none made after it.
#[test]
fn restore_drill_a_live_backup_restores_into_a_serving_store() {
    let d = dir("drill");
    let mut daemon = Daemon::init(&d.0);
    daemon.start();
    let (before, after) = (
        ServiceId::parse(b"BEFORE-BACKUP").expect("svc"),
        ServiceId::parse(b"AFTER-BACKUP").expect("svc"),
    );
    let counter = |daemon: &Daemon, svc: ServiceId| {
        rt().block_on(async {
            let c = daemon.client("counter").await.expect("connect");
            c.link(id("1C2410DF79DGEL"), p("13101-LIB-0001"), svc, true)
                .await
                .expect("acknowledged");
        })
    };
    counter(&daemon, before);
    let backup = daemon.dir.join("backup");
    let out = mykeyd(&[
        "backup".as_ref(),
        "--store".as_ref(),
        daemon.dir.join("store").as_os_str(),
        "--out".as_ref(),
        backup.as_os_str(),
    ]);
    assert!(out.contains("verified"), "{out}");
    counter(&daemon, after);
    daemon.signal("-TERM");
    assert!(daemon.wait().success());
    let restored = daemon.dir.join("restored");
    let out = mykeyd(&[
        "restore".as_ref(),
        "--from".as_ref(),
        backup.as_os_str(),
        "--store".as_ref(),
        restored.as_os_str(),
    ]);
    assert!(out.contains("opened and verified"), "{out}");
    // A second restore into the same place is refused: it never overwrites a store.
    let o = Command::new(env!("CARGO_BIN_EXE_mykeyd"))
        .args(["restore", "--from"])
        .arg(&backup)
        .arg("--store")
        .arg(&restored)
        .output()
        .expect("mykeyd");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    // Serve the restored store (the config's store.dir, overridden as an operator would).
    let cfg = daemon.dir.join("mykeyd.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, text.replace("dir = \"store\"", "dir = \"restored\"")).expect("write");
    daemon.start();
    let got = rt().block_on(async {
        let c = daemon.client("counter").await.expect("connect");
        c.lookup(p("13101-LIB-0001"), id("1C2410DF79DGEL"))
            .await
            .expect("lookup")
    });
    assert_eq!(
        got,
        Lookup::Linked(before),
        "the restored store is the backup's"
    );
}

/// Runs `mykeyd serve --config DIR/mykeyd.toml --check-config` with `env`; returns whether it
/// succeeded and what it wrote to stderr.
fn check_config(dir: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_mykeyd"))
        .args(["serve", "--check-config", "--config"])
        .arg(dir.join("mykeyd.toml"))
        .envs(env.iter().copied())
        .output()
        .expect("mykeyd");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `--check-config` opens what `serve` will use and names the first problem: each damage an
/// operator met that it used to call usable.
#[test]
fn check_config_opens_everything_and_names_the_first_problem() {
    let base = dir("check-config");
    let d = Daemon::init(&base.0);
    // Give the store a log of two changes (a bulk-built store has none yet).
    {
        let fs: Arc<dyn Fs> = Arc::new(RealFs::new(d.dir.join("store")).expect("dir"));
        let r = Registry::open(fs, RegistryConfig::default()).expect("open");
        for name in ["X-1", "X-2"] {
            r.register_provider(
                now(),
                mykey_engine::id::ActorId::parse(b"t").expect("a"),
                p(name),
            )
            .expect("provider");
        }
    }
    let (ok, err) = check_config(&d.dir, &[]);
    assert!(ok, "a sound setup: {err}");
    let copy = |tag: &str| {
        let c = dir(&format!("check-config-{tag}"));
        let status = Command::new("cp")
            .arg("-r")
            .arg(&d.dir)
            .arg(&c.0)
            .status()
            .expect("cp");
        assert!(status.success());
        c
    };
    fn flip(path: PathBuf, at: usize) {
        let mut b = std::fs::read(&path).expect("read");
        b[at] ^= 0x10;
        std::fs::write(&path, b).expect("write");
    }
    fn file_named(dir: &Path, prefix: &str) -> PathBuf {
        std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("no {prefix}*"))
    }
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "manifest",
            Box::new(|c| flip(c.join("store/MANIFEST"), 20)),
            "MANIFEST: corrupt",
        ),
        (
            "snapshot",
            Box::new(|c| {
                std::fs::remove_file(file_named(&c.join("store"), "ids-0000-")).expect("rm")
            }),
            "ids-0000-",
        ),
        (
            "log",
            Box::new(|c| flip(file_named(&c.join("store"), "wal-"), 32 + 20)),
            "corrupt at offset 32",
        ),
        (
            "key",
            Box::new(|c| {
                std::fs::copy(
                    c.join("pki/terminals/counter.key"),
                    c.join("pki/server.key"),
                )
                .expect("cp");
            }),
            "server.pem",
        ),
    ];
    for (tag, damage, expect) in cases {
        let c = copy(tag);
        damage(&c.0);
        let (ok, err) = check_config(&c.0, &[]);
        assert!(!ok, "{tag}: called usable");
        assert!(err.contains(expect), "{tag}: {err}");
    }
    // A held lock: the store is open in this process.
    {
        let fs: Arc<dyn Fs> = Arc::new(RealFs::new(d.dir.join("store")).expect("dir"));
        let _open = Registry::open(fs, RegistryConfig::default()).expect("open");
        let (ok, err) = check_config(&d.dir, &[]);
        assert!(
            !ok && err.contains("LOCK") && err.contains("another process"),
            "{err}"
        );
    }
    // Ports in use.
    {
        let _udp = UdpSocket::bind(d.quic).expect("take the QUIC port");
        let (ok, err) = check_config(&d.dir, &[]);
        assert!(!ok && err.contains("server.listen"), "{err}");
    }
    {
        let _tcp = TcpListener::bind(d.admin).expect("take the admin port");
        let (ok, err) = check_config(&d.dir, &[]);
        assert!(!ok && err.contains("server.admin_listen"), "{err}");
    }
    // Environment: a typo is refused naming the variable; a stranger's variable is ignored.
    let (ok, err) = check_config(&d.dir, &[("MYKEYD_STORE_COMPACT_DELTA_KEY", "5")]);
    assert!(
        !ok && err.contains("MYKEYD_STORE_COMPACT_DELTA_KEY"),
        "{err}"
    );
    let (ok, err) = check_config(&d.dir, &[("MYKEYD_STORE_COMPACT_DELTA_KEYS", "0")]);
    assert!(!ok && err.contains("1..=100000000"), "{err}");
    let (ok, err) = check_config(
        &d.dir,
        &[
            ("MYKEYD_BIN", "/usr/local/bin/mykeyd"),
            ("MYKEYD_PORT", "udp://10.0.0.7:4433"),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("MYKEYD_BIN: ignored") && err.contains("MYKEYD_PORT: ignored"),
        "{err}"
    );
}

/// A file system frozen under a serving node (`fsfreeze`, the way an operator's snapshot tool
/// or a hung volume stops every write): a write is answered `OUTCOME_UNKNOWN` at its deadline,
/// lookups go on, `/readyz` says the fsync is stuck, and SIGTERM reaches its exit within the
/// drain grace with exit status 3, losing no acknowledged write. Needs root and a loop device
/// (CI has both); skipped with a message otherwise.
#[test]
fn sigterm_with_a_frozen_store_exits_3_within_the_grace_and_loses_nothing() {
    let base = dir("frozen");
    std::fs::create_dir_all(&base.0).expect("dir");
    let img = base.0.join("store.img");
    let mnt = base.0.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mnt");
    let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let made = std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .is_ok()
        && run("mkfs.ext4", &["-q".as_ref(), img.as_os_str()])
        && run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                img.as_os_str(),
                mnt.as_os_str(),
            ],
        );
    if !made {
        eprintln!("SKIPPED: cannot mount a loop file system here (needs root and mkfs.ext4)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    struct Thaw(PathBuf);
    impl Drop for Thaw {
        fn drop(&mut self) {
            // Already thawed on the way that passes; this is for a failure midway.
            let _ = Command::new("fsfreeze")
                .arg("-u")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status();
        }
    }
    let mut d = Daemon::init(&base.0.join("dev"));
    // Declared after the daemon, so dropped before it: on a failure the file system thaws
    // before the daemon's drop waits for the killed process.
    let thaw = Thaw(mnt.clone());
    let store = mnt.join("store");
    assert!(run(
        "cp",
        &[
            "-r".as_ref(),
            d.dir.join("store").as_os_str(),
            store.as_os_str()
        ]
    ));
    d.env = vec![
        ("MYKEYD_STORE_DIR".into(), store.display().to_string()),
        ("MYKEYD_LIMITS_WRITE_TIMEOUT".into(), "500ms".into()),
    ];
    d.start();
    let rt = rt();
    let operator = rt.block_on(d.client("operator")).expect("connect");
    let counter = rt.block_on(d.client("counter")).expect("connect");
    assert!(
        rt.block_on(operator.register_provider(p("FROZEN-1")))
            .expect("acknowledged")
    );
    assert!(
        Command::new("fsfreeze")
            .arg("-f")
            .arg(&mnt)
            .status()
            .expect("fsfreeze")
            .success()
    );
    let e = rt
        .block_on(operator.register_provider(p("FROZEN-2")))
        .expect_err("no answer but an unknown outcome");
    assert_eq!(
        e.status(),
        Some(mykey_engine::wire::Status::OutcomeUnknown),
        "{e}"
    );
    assert_eq!(
        rt.block_on(counter.lookup(p("A-α1-0001"), id("1C2410DF79DGEL")))
            .expect("a lookup is answered"),
        Lookup::Linked(ServiceId::parse(b"ABCDEFGHI").expect("service"))
    );
    // The write stays stuck: /readyz turns to "fsync stuck" once it is past 5 s.
    let t = Instant::now();
    let readyz = loop {
        let r = http_get(d.admin, "/readyz");
        if r.contains("fsync stuck for") || t.elapsed() > Duration::from_secs(60) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        readyz.starts_with("HTTP/1.1 503") && readyz.contains("fsync stuck for"),
        "{readyz}"
    );
    let metrics = http_get(d.admin, "/metrics");
    assert!(metrics.contains("\nmykey_ready 0"), "{metrics}");
    assert!(
        !metrics.contains("\nmykey_wal_fsync_age_seconds 0\n"),
        "{metrics}"
    );
    d.signal("-TERM");
    let t = Instant::now();
    while !d.log().contains("stopped with a log fsync stuck") {
        assert!(
            t.elapsed() < Duration::from_secs(45),
            "no exit within the unit's 45 s: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The stuck thread sits in the kernel until the file system thaws; then the process ends.
    assert!(
        Command::new("fsfreeze")
            .arg("-u")
            .arg(&mnt)
            .status()
            .expect("fsfreeze")
            .success()
    );
    let status = d.wait();
    assert_eq!(status.code(), Some(3), "{}", d.log());
    // Nothing acknowledged is lost.
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(&store).expect("dir"));
    let r = Registry::open(fs, RegistryConfig::default()).expect("reopens");
    assert!(
        !r.register_provider(
            now(),
            mykey_engine::id::ActorId::parse(b"t").expect("a"),
            p("FROZEN-1")
        )
        .map(|o| o == mykey_engine::registry::ProviderOutcome::Registered)
        .expect("answer"),
        "the acknowledged write is there"
    );
    drop(r);
    drop(thaw);
}

/// What a serving `mykeyd` exports is `admin::ALL_METRICS`, both ways (the list the ops/
/// dashboards and alerts are checked against): every `mykey_` series on `/metrics` is in the
/// list, and every name of the list is exported once the node has served a lookup and a
/// write, but for the few that need an event this test does not cause.
#[test]
fn the_exported_metrics_are_all_metrics() {
    use mykey_engine::server::admin::ALL_METRICS;
    let base = dir("metrics");
    let mut d = Daemon::init(&base.0);
    d.start();
    let rt = rt();
    rt.block_on(async {
        let c = d.client("counter").await.expect("connect");
        c.lookup(p("A-α1-0001"), id("1C2410DF79DGEL"))
            .await
            .expect("lookup");
        let o = d.client("operator").await.expect("connect");
        o.register_provider(p("METRICS-1")).await.expect("a write");
    });
    let body = http_get(d.admin, "/metrics");
    let mut exported = std::collections::BTreeSet::new();
    for line in body.lines().filter(|l| l.starts_with("mykey_")) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        exported.insert(base.to_owned());
    }
    let listed: std::collections::BTreeSet<String> = ALL_METRICS
        .iter()
        .filter(|m| m.starts_with("mykey_"))
        .map(|m| (*m).to_owned())
        .collect();
    let unlisted: Vec<_> = exported.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "exported but not in ALL_METRICS: {unlisted:?}"
    );
    // Exported only after an event this test does not cause, or by a cluster node only
    // (engine/tests/cluster_nodes.rs reads those).
    let later = [
        mykey_engine::cluster::node::ROLE,
        mykey_engine::cluster::node::EPOCH,
        mykey_engine::cluster::node::APPLIED_SEQ,
        mykey_engine::cluster::node::LAG_SECONDS,
        mykey_engine::store::COMPACTION_SECONDS,
        mykey_engine::server::admin::PUSHES_TOTAL,
        mykey_engine::server::admin::LAST_PUSH_SECONDS,
    ];
    let missing: Vec<_> = listed
        .iter()
        .filter(|m| !exported.contains(*m) && !later.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "in ALL_METRICS but not exported: {missing:?}\n{body}"
    );
    d.signal("-TERM");
    assert!(d.wait().success(), "{}", d.log());
}
