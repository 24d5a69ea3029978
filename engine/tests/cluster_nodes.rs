//! `mykeyd serve` as cluster nodes, real processes on one machine (`engine/CLUSTER.md`): three
//! nodes sharing one PostgreSQL started by the test. Exactly one is elected writer; writes to a
//! follower are refused `NO_WRITER` and apply nothing; every node reaches the writer's seq and
//! chain hash and serves what the writer acknowledged; `kill -9` of the writer under load
//! elects another, which takes writes again, and no acknowledged write is missing on any node;
//! the killed node, restarted, catches up as a follower; PostgreSQL stopped under the nodes for
//! 30 s: reads go on (readiness degraded), writes are refused `NO_WRITER`, the writer steps down;
//! PostgreSQL back: a writer is elected and everything resumes; a row changed by hand in
//! `change_log` stops every follower (readiness 503, the seq named).
//!
//! Skipped, loudly, where PostgreSQL cannot run (see `tests/src/postgres.rs`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mykey_engine::client::{Client, ClientError, ClientTls};
use mykey_engine::id::{MyKeyId, ProviderId};
use mykey_engine::wire::Status;

#[path = "../../tests/src/postgres.rs"]
mod postgres;
use postgres::Postgres;

/// How long a node may take to be ready, elected or caught up in these tests.
const WAIT: Duration = Duration::from_secs(60);
/// How long PostgreSQL stays down in the outage test (the 30 s).
const OUTAGE: Duration = Duration::from_secs(30);

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("mykeyd-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("dir");
    Dir(p)
}

fn mykeyd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mykeyd"))
        .args(args)
        .output()
        .expect("mykeyd")
}

fn http_get(admin: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_millis(200)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes());
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r
}

/// One node: its own directory (a copy of the first node's PKI and sample store), ports and
/// process.
struct Node {
    name: String,
    dir: PathBuf,
    quic: SocketAddr,
    admin: SocketAddr,
    pg: String,
    /// The database it tails, when not `pg`.
    tail_pg: Option<String>,
    /// Whether it forwards the writes it is sent as a follower (with its `node` certificate),
    /// or answers them `NO_WRITER`.
    forwards: bool,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Node {
    fn new(name: &str, dir: PathBuf, pg: &str) -> Self {
        Self {
            name: name.to_owned(),
            dir,
            quic: UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("udp port"),
            admin: TcpListener::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("tcp port"),
            pg: pg.to_owned(),
            tail_pg: None,
            forwards: true,
            child: None,
        }
    }

    /// Starts `mykeyd serve` with the cluster settings in its environment; waits for `/readyz`
    /// to answer (a follower with no writer yet is ready, degraded).
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mykeyd"));
        cmd.args(["serve", "--config"])
            .arg(self.dir.join("mykeyd.toml"))
            .env("MYKEYD_SERVER_LISTEN", self.quic.to_string())
            .env("MYKEYD_SERVER_ADMIN_LISTEN", self.admin.to_string())
            .env("MYKEYD_CLUSTER_NODE", &self.name)
            .env("MYKEYD_CLUSTER_PG", &self.pg)
            .env("MYKEYD_LOG_LEVEL", "info")
            .stderr(log)
            .stdout(Stdio::null());
        if let Some(t) = &self.tail_pg {
            cmd.env("MYKEYD_CLUSTER_TAIL_PG", t);
        }
        if self.forwards {
            let t = self.dir.join("pki/terminals");
            cmd.env("MYKEYD_CLUSTER_NODE_CERT", t.join("node.pem"))
                .env("MYKEYD_CLUSTER_NODE_KEY", t.join("node.key"));
        }
        let child = cmd.spawn().expect("spawn");
        self.child = Some(child);
        self.wait_for("ready", |n| n.readyz().starts_with("HTTP/1.1 200"));
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn readyz(&self) -> String {
        http_get(self.admin, "/readyz")
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(self.admin, "/metrics");
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn role(&self) -> Option<u8> {
        self.metric("mykey_cluster_role").map(|v| v as u8)
    }

    fn applied(&self) -> Option<u64> {
        self.metric("mykey_cluster_applied_seq").map(|v| v as u64)
    }

    /// The node's `CHAIN` file: (seq, hash) of its applied head.
    fn chain(&self) -> Option<(u64, Vec<u8>)> {
        let b = std::fs::read(self.dir.join("store/CHAIN")).ok()?;
        (b.len() == 52).then(|| {
            (
                u64::from_le_bytes(b[8..16].try_into().expect("8")),
                b[16..48].to_vec(),
            )
        })
    }

    fn wait_for(&self, what: &str, ok: impl Fn(&Self) -> bool) {
        let t = Instant::now();
        while !ok(self) {
            assert!(
                t.elapsed() < WAIT,
                "{}: not {what} within {WAIT:?}; /readyz: {}\n{}",
                self.name,
                self.readyz(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn tls(&self, role: &str) -> ClientTls {
        let pki = self.dir.join("pki");
        ClientTls::from_pem_files(
            &pki.join(format!("terminals/{role}.pem")),
            &pki.join(format!("terminals/{role}.key")),
            &pki.join("client-ca.pem"),
        )
        .expect("TLS material")
    }

    async fn operator(&self) -> Client {
        Client::connect(self.quic, "localhost", self.tls("operator"))
            .await
            .expect("connect")
    }
}

fn p(s: &str) -> ProviderId {
    ProviderId::parse(s.as_bytes()).expect("provider")
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(ok.success());
}

/// Three nodes from one `mykeyd init` (the same PKI and sample store, as a node bootstrapped
/// from a peer's backup has), on a PostgreSQL whose cluster schema `mykeyd cluster init` made.
fn cluster(tag: &str) -> Option<(Postgres, Dir, Vec<Node>)> {
    let pg = Postgres::start(tag)?;
    let url = pg.url();
    let o = mykeyd(&["cluster", "init", "--pg", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (base, nodes) = nodes(tag, &url);
    Some((pg, base, nodes))
}

/// Three nodes from one `mykeyd init`, its store recorded as the genesis, writing through
/// PostgreSQL at `url`.
fn nodes(tag: &str, url: &str) -> (Dir, Vec<Node>) {
    let base = dir(tag);
    let first = base.0.join("a");
    let o = Command::new(env!("CARGO_BIN_EXE_mykeyd"))
        .args(["init", "--dir"])
        .arg(&first)
        .output()
        .expect("init");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The sample store is the cluster's genesis: recorded (its rows in the mirror, its digest
    // the chain hash at seq 0, its CHAIN file written) before it is copied to the others.
    let store = first.join("store");
    let o = mykeyd(&[
        "cluster",
        "init",
        "--pg",
        url,
        "--genesis",
        store.to_str().expect("utf-8"),
    ]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("genesis"),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let d = base.0.join(name);
        if name != "a" {
            copy_dir(&first, &d);
        }
        nodes.push(Node::new(&format!("node-{name}"), d, url));
    }
    (base, nodes)
}

/// The index of the one writer among the running nodes, once there is exactly one.
fn writer(nodes: &[Node]) -> usize {
    let t = Instant::now();
    loop {
        let roles: Vec<Option<u8>> = nodes
            .iter()
            .map(|n| n.child.as_ref().and_then(|_| n.role()))
            .collect();
        let writers: Vec<usize> = (0..nodes.len()).filter(|&i| roles[i] == Some(1)).collect();
        if writers.len() == 1 {
            return writers[0];
        }
        assert!(
            t.elapsed() < WAIT,
            "no single writer within {WAIT:?}: roles {roles:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn refused_with(r: &Result<bool, ClientError>) -> Option<u8> {
    match r {
        Err(ClientError::Refused { status, .. }) => Some(*status),
        _ => None,
    }
}

/// Whether `provider` is registered as the node serves it: an export of it is answered (with
/// no rows) rather than refused `UNKNOWN_PROVIDER`.
async fn has_provider(c: &Client, provider: &str) -> bool {
    match c.export(p(provider), |_| {}).await {
        Ok(_) => true,
        Err(ClientError::Refused { status, .. }) if status == Status::UnknownProvider as u8 => {
            false
        }
        Err(e) => panic!("export {provider}: {e}"),
    }
}

/// Whether the node serves `provider` to a lookup (which `AT_SEQ` can carry, unlike an
/// export): answered, rather than refused `UNKNOWN_PROVIDER`.
async fn serves(c: &Client, provider: &str) -> bool {
    let id = MyKeyId::parse(b"00000000000000").expect("id");
    match c.lookup(p(provider), id).await {
        Ok(_) => true,
        Err(ClientError::Refused { status, .. }) if status == Status::UnknownProvider as u8 => {
            false
        }
        Err(e) => panic!("lookup under {provider}: {e}"),
    }
}

/// Every running node holds the writer's seq and chain hash, at `at_least` or later (the
/// seq of a write acknowledged: the writer's own gauge may lag its store by a check).
fn converged(nodes: &[Node], w: usize, at_least: u64) {
    let t = Instant::now();
    loop {
        let seq = nodes[w].applied().filter(|&s| s >= at_least);
        let heads: Vec<_> = nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| (n.applied(), n.chain()))
            .collect();
        let first = &heads[0];
        if seq.is_some()
            && heads.iter().all(|h| h.0 == seq)
            && heads.iter().all(|h| h.1.is_some() && h.1 == first.1)
            && first.1.as_ref().map(|c| Some(c.0)) == Some(seq)
        {
            return;
        }
        assert!(
            t.elapsed() < WAIT,
            "the nodes did not reach the writer's seq {seq:?} and chain: {heads:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_nodes_elect_one_writer_follow_it_and_survive_its_kill() {
    let Some((mut pg, _base, mut nodes)) = cluster("three") else {
        return;
    };
    // node-c has no node certificate: as a follower it refuses writes instead of forwarding.
    nodes[2].forwards = false;
    for n in &mut nodes {
        n.start();
    }
    let w = writer(&nodes);
    let rt = rt();
    let mut acked: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let seq = rt.block_on(async {
        // Writes sent to every node: the writer acknowledges its own and those a follower
        // forwards to it; a follower that does not forward refuses them NO_WRITER and applies
        // nothing.
        let mut seq = 0;
        for (i, n) in nodes.iter().enumerate() {
            let c = n.operator().await;
            c.set_read_your_writes(true);
            for k in 0..5 {
                let name = format!("CL-{i}-{k}");
                let mut r = c.register_provider(p(&name)).await;
                // A follower learns the new writer's address at its next look at the head
                // (TAIL_RECHECK after the election, at most): until then it answers
                // NO_WRITER, having applied nothing, and the client retries shortly.
                let settling = Instant::now();
                while i != w
                    && n.forwards
                    && refused_with(&r) == Some(Status::NoWriter as u8)
                    && settling.elapsed() < WAIT
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    r = c.register_provider(p(&name)).await;
                }
                if i == w || n.forwards {
                    assert_eq!(
                        r.as_ref().ok(),
                        Some(&true),
                        "{name} through {}: {r:?}",
                        n.name
                    );
                    acked.push(name);
                } else {
                    assert_eq!(
                        refused_with(&r),
                        Some(Status::NoWriter as u8),
                        "{name} on follower {}: {r:?}",
                        n.name
                    );
                    refused.push(name);
                }
            }
            seq = seq.max(c.seen_seq());
        }
        seq
    });
    // A figure, not a check: a write's round trip sent to the writer and through a follower
    // that forwards it, medians of the same number of writes in this run.
    if let Some(f) = (0..nodes.len()).find(|&i| i != w && nodes[i].forwards) {
        let median = |n: &Node, tag: &str| {
            rt.block_on(async {
                let c = n.operator().await;
                let mut t: Vec<Duration> = Vec::new();
                for k in 0..21 {
                    let s = Instant::now();
                    c.register_provider(p(&format!("{tag}-{k}")))
                        .await
                        .expect("write");
                    t.push(s.elapsed());
                }
                t.sort();
                t[t.len() / 2]
            })
        };
        let (direct, forwarded) = (median(&nodes[w], "RTT-W"), median(&nodes[f], "RTT-F"));
        eprintln!(
            "write round trip, median of 21: to the writer {direct:?}, forwarded by a follower {forwarded:?} ({:.2}x)",
            forwarded.as_secs_f64() / direct.as_secs_f64()
        );
    }
    // The same through the `mykey` CLI: a write's seq from the writer, then a read at that
    // seq from each follower, which serves it at once.
    let cli_as = |n: &Node, role: &str, args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_mykey"))
            .args([
                "--dev",
                n.dir.to_str().expect("utf-8"),
                "--as",
                role,
                "--json",
            ])
            .args(["--server", &n.quic.to_string()])
            .args(args)
            .output()
            .expect("mykey");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let cli = |n: &Node, args: &[&str]| cli_as(n, "operator", args);
    let (code, out) = cli(&nodes[w], &["--seq", "add-provider", "CLI-1"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let cli_seq = v["seq"].as_u64().expect("the write's seq");
    assert!(cli_seq > seq, "{out}");
    acked.push("CLI-1".into());
    for n in &nodes {
        let at = cli_seq.to_string();
        let (code, out) = cli(n, &["--at-least", &at, "lookup", "CLI-1", "00000000000000"]);
        // Answered (unknown ID: exit 3), not refused UNKNOWN_PROVIDER (exit 1).
        assert_eq!(code, Some(3), "{} at seq {at}: {out}", n.name);
    }
    // A card write through a follower that forwards: the follower issued the challenge and
    // consumed it; the writer verifies the card and registers it.
    let (seq, card_id) = match (0..nodes.len()).find(|&i| i != w && nodes[i].forwards) {
        Some(f) => {
            let n = &nodes[f];
            let card = |ext: &str| {
                n.dir
                    .join(format!("cards/card-3.{ext}"))
                    .display()
                    .to_string()
            };
            let (code, out) = cli_as(
                n,
                "portal",
                &[
                    "--seq",
                    "register",
                    "--card",
                    &card("der"),
                    "--card-key",
                    &card("key"),
                ],
            );
            assert_eq!(code, Some(0), "register through {}: {out}", n.name);
            let v: serde_json::Value = serde_json::from_str(&out).expect("json");
            let id = v["mykey_id"]
                .as_str()
                .expect("the registered ID")
                .to_owned();
            (v["seq"].as_u64().expect("seq"), Some(id))
        }
        None => (cli_seq, None),
    };
    // Every node serves the registered ID at the registration's seq.
    if let Some(id) = &card_id {
        for n in &nodes {
            let at = seq.to_string();
            let (code, out) = cli(n, &["--at-least", &at, "lookup", "A-α1-0001", id]);
            assert_eq!(code, Some(3), "the registered ID on {}: {out}", n.name);
            assert!(out.contains("not_linked"), "{out}");
        }
    }
    // Links to a provider only the genesis store holds, of the new ID and of a genesis ID,
    // through a follower: the mirror has the genesis rows, so they commit; every node serves
    // them at their seq.
    let mut seq = seq;
    if let Some(f) = (0..nodes.len()).find(|&i| i != w && nodes[i].forwards) {
        let genesis_id = "997794E9AGCIEG".to_owned();
        for id in card_id.iter().chain([&genesis_id]) {
            let (code, out) = cli_as(
                &nodes[f],
                "counter",
                &["--seq", "link", id, "A-α1-0001", "SVC-CLUSTER"],
            );
            assert_eq!(code, Some(0), "link {id} through {}: {out}", nodes[f].name);
            let v: serde_json::Value = serde_json::from_str(&out).expect("json");
            seq = v["seq"].as_u64().expect("seq");
            for n in &nodes {
                let at = seq.to_string();
                let (code, out) = cli(n, &["--at-least", &at, "lookup", "A-α1-0001", id]);
                assert_eq!(code, Some(0), "{id} on {}: {out}", n.name);
                assert!(out.contains("SVC-CLUSTER"), "{out}");
            }
        }
    }
    // The registered ID's extract: written from PostgreSQL, then checked without it against
    // the head it ends at (what an operator publishes), a changed head refused.
    if let Some(id) = &card_id {
        let file = nodes[w].dir.join("extract.txt");
        let o = mykeyd(&[
            "history",
            "--id",
            id,
            "--pg",
            &nodes[w].pg,
            "--extract",
            file.to_str().expect("utf-8"),
        ]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let head = out
            .split("--head ")
            .nth(1)
            .and_then(|r| r.split('`').next())
            .unwrap_or_else(|| panic!("{out}"))
            .to_owned();
        let o = mykeyd(&[
            "cluster",
            "check-extract",
            file.to_str().expect("utf-8"),
            "--head",
            &head,
        ]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success() && out.contains("the published head"),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            out.contains("register-full") && out.contains("link"),
            "{out}"
        );
        let wrong = format!(
            "{}:{}",
            head.split(':').next().expect("seq"),
            "0".repeat(64)
        );
        let o = mykeyd(&[
            "cluster",
            "check-extract",
            file.to_str().expect("utf-8"),
            "--head",
            &wrong,
        ]);
        assert!(!o.status.success(), "a head it does not end at");
    }
    // A partner's revocation push through a follower (a FORWARD_PUSH to the writer): the
    // registered card is revoked, and every node serves its ID suspended.
    if let (Some(f), Some(id)) = (
        (0..nodes.len()).find(|&i| i != w && nodes[i].forwards),
        &card_id,
    ) {
        let anchors = mykeyd(&[
            "anchors",
            &nodes[f].dir.join("jpki-anchors").display().to_string(),
        ]);
        let listing = String::from_utf8_lossy(&anchors.stdout).into_owned();
        let key_id = listing
            .split("key id ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or_else(|| panic!("{listing}"));
        let list = nodes[f].dir.join("lost-card-3.txt");
        // `mykeyd init` issues card n with serial 0x0D00 + n.
        std::fs::write(&list, format!("ca {key_id}\nD03\n")).expect("list");
        let (code, out) = cli_as(
            &nodes[f],
            "partner",
            &[
                "push-serials",
                "--push-id",
                "lost-3",
                list.to_str().expect("utf-8"),
            ],
        );
        assert_eq!(code, Some(0), "push through {}: {out}", nodes[f].name);
        assert!(out.contains("\"suspended\":1"), "{out}");
        let (code, out) = cli(&nodes[w], &["--seq", "add-provider", "AFTER-PUSH"]);
        assert_eq!(code, Some(0), "{out}");
        acked.push("AFTER-PUSH".into());
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        seq = v["seq"].as_u64().expect("seq");
        for n in &nodes {
            let at = seq.to_string();
            let (_, out) = cli(n, &["--at-least", &at, "lookup", "A-α1-0001", id]);
            assert!(out.contains("suspended"), "{id} on {}: {out}", n.name);
        }
    }
    converged(&nodes, w, seq);
    every_node_holds(&rt, &nodes, &acked, &refused);
    // kill -9 the writer while a client writes through it: another node takes over and takes
    // the writes; no acknowledged write is missing anywhere.
    let old = w;
    let (load, rx) = write_load(&nodes[old], "LOAD");
    // Let some writes through, then kill.
    let mut under_load = Vec::new();
    while under_load.len() < 20 {
        under_load.push(rx.recv_timeout(WAIT).expect("writes under load"));
    }
    nodes[old].kill9();
    let killed_at = Instant::now();
    // Nothing is acknowledged by a dead server; the load's client learns of the kill only at
    // its idle timeout, so it is left to end on its own.
    under_load.extend(rx.try_iter());
    acked.extend(under_load);
    drop(load);
    let w = writer(&nodes);
    let elected = killed_at.elapsed();
    assert_ne!(w, old);
    let (resumed, seq) = write_until_acked(&rt, &nodes[w], "AFTER-FAILOVER", killed_at);
    eprintln!(
        "after kill -9 of the writer: another elected in {elected:?}, writes resumed in {resumed:?}"
    );
    acked.push("AFTER-FAILOVER".into());
    // The killed node, restarted, catches up as a follower.
    nodes[old].start();
    converged(&nodes, w, seq);
    assert_eq!(nodes[old].role(), Some(0), "the old writer follows");
    every_node_holds(&rt, &nodes, &acked, &[]);
    // PostgreSQL stopped under the nodes (every session cut): followers keep serving reads
    // and readiness says degraded; the writer steps down. Back, a writer is elected again,
    // takes writes, and every node follows it.
    pg.stop();
    let outage = Instant::now();
    let f = (w + 1) % nodes.len();
    nodes[f].wait_for("degraded", |n| {
        let r = n.readyz();
        r.starts_with("HTTP/1.1 200") && r.contains("postgres unreachable")
    });
    nodes[w].wait_for("stepped down", |n| n.role() == Some(0));
    rt.block_on(async {
        let c = nodes[f].operator().await;
        assert!(has_provider(&c, "AFTER-FAILOVER").await, "reads go on");
        // Forwarded or not, no writer takes it.
        let r = c.register_provider(p("DURING-OUTAGE")).await;
        assert_eq!(refused_with(&r), Some(Status::NoWriter as u8), "{r:?}");
    });
    // Unreachable for 30 s: every node still serves reads and says degraded.
    std::thread::sleep(OUTAGE.saturating_sub(outage.elapsed()));
    rt.block_on(async {
        for n in &nodes {
            let r = n.readyz();
            assert!(
                r.starts_with("HTTP/1.1 200") && r.contains("postgres unreachable"),
                "{} after {:?} without PostgreSQL: {r}",
                n.name,
                outage.elapsed()
            );
            let c = n.operator().await;
            assert!(has_provider(&c, "AFTER-FAILOVER").await, "reads go on");
        }
    });
    pg.restart();
    let back = Instant::now();
    let w = writer(&nodes);
    let (resumed, seq) = write_until_acked(&rt, &nodes[w], "AFTER-OUTAGE", back);
    eprintln!("after PostgreSQL restarted: writes resumed in {resumed:?}, at seq {seq}");
    acked.push("AFTER-OUTAGE".into());
    // Read-your-writes: asked at the write's seq, every node serves it at once (waiting for
    // its tail if it must), however far it was behind when asked.
    rt.block_on(async {
        for n in &nodes {
            let c = n.operator().await;
            c.set_read_your_writes(true);
            c.saw_seq(seq);
            assert!(
                serves(&c, "AFTER-OUTAGE").await,
                "read-your-writes on {}",
                n.name
            );
        }
    });
    converged(&nodes, w, seq);
    // Every node holds every acknowledged write, and none the write refused in the outage;
    // stopped, all three hold the same state.
    every_node_holds(&rt, &nodes, &acked, &["DURING-OUTAGE".to_owned()]);
    same_state_when_stopped(&mut nodes);
}

/// Stops every running node (`kill -9`: each store holds what it made durable) and checks that
/// all hold the same state: equal seq and state digest (`mykeyd snapshot digest`, which opens
/// the store and hashes every record in key order).
fn same_state_when_stopped(nodes: &mut [Node]) {
    let mut digests = Vec::new();
    for n in nodes.iter_mut().filter(|n| n.child.is_some()) {
        n.kill9();
        let o = mykeyd(&[
            "snapshot",
            "digest",
            &n.dir.join("store").display().to_string(),
        ]);
        let out = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        assert!(
            o.status.success() && out.contains("state digest"),
            "{}: {out}{}",
            n.name,
            String::from_utf8_lossy(&o.stderr)
        );
        digests.push((n.name.clone(), out));
    }
    assert!(
        digests.windows(2).all(|w| w[0].1 == w[1].1),
        "the nodes hold different states: {digests:?}"
    );
}

/// Every running node serves every provider in `acked` and none in `refused`.
fn every_node_holds(
    rt: &tokio::runtime::Runtime,
    nodes: &[Node],
    acked: &[String],
    refused: &[String],
) {
    rt.block_on(async {
        for n in nodes.iter().filter(|n| n.child.is_some()) {
            let c = n.operator().await;
            for name in acked {
                assert!(has_provider(&c, name).await, "{name} on {}", n.name);
            }
            for name in refused {
                assert!(
                    !has_provider(&c, name).await,
                    "{name}, refused, is on {}",
                    n.name
                );
            }
        }
    });
}

/// Registers `provider` through `node` until it is acknowledged (a new writer may answer
/// `NO_WRITER` or `OUTCOME_UNKNOWN` while it settles); returns how long after `since` that was
/// and the write's seq.
fn write_until_acked(
    rt: &tokio::runtime::Runtime,
    node: &Node,
    provider: &str,
    since: Instant,
) -> (Duration, u64) {
    rt.block_on(async {
        let c = node.operator().await;
        c.set_read_your_writes(true);
        let t = Instant::now();
        loop {
            match c.register_provider(p(provider)).await {
                Ok(_) => return (since.elapsed(), c.seen_seq()),
                Err(e) if t.elapsed() < WAIT => {
                    eprintln!("{provider} through {} while it settles: {e}", node.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{provider} through {}: {e}", node.name),
            }
        }
    })
}

/// A client registering providers `<prefix>-0`, `<prefix>-1`, … through `node` one after
/// another, on a thread of its own, sending each acknowledged name; it ends at its first
/// refusal or error, or once the receiver is dropped.
fn write_load(
    node: &Node,
    prefix: &str,
) -> (
    std::thread::JoinHandle<()>,
    std::sync::mpsc::Receiver<String>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let (target, tls, prefix) = (node.quic, node.tls("operator"), prefix.to_owned());
    let load = std::thread::spawn(move || {
        rt_one().block_on(async {
            let Ok(c) = Client::connect(target, "localhost", tls).await else {
                return;
            };
            for k in 0.. {
                let name = format!("{prefix}-{k}");
                match c.register_provider(p(&name)).await {
                    Ok(_) => {
                        if tx.send(name).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    });
    (load, rx)
}

fn rt_one() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `sql` on the database at `url` with `psql`.
fn psql(url: &str, sql: &str) -> String {
    let o = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        o.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn a_promoted_synchronous_standby_loses_no_acknowledged_write() {
    let Some(mut primary) = Postgres::start("failover") else {
        return;
    };
    let o = mykeyd(&["cluster", "init", "--pg", &primary.url()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The production setting: every commit waits for the standby (engine/CLUSTER.md).
    let standby = primary.standby("standby_a");
    psql(
        &primary.url(),
        "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (standby_a)'",
    );
    psql(&primary.url(), "SELECT pg_reload_conf()");
    let t = Instant::now();
    while psql(
        &primary.url(),
        "SELECT string_agg(sync_state, ',') FROM pg_stat_replication",
    ) != "quorum"
    {
        assert!(t.elapsed() < WAIT, "the standby never became synchronous");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nodes write to whichever of the two takes writes, and tail the standby.
    let both = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=mykey dbname=postgres target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let (_base, mut nodes) = nodes("failover", &both);
    for n in &mut nodes {
        n.tail_pg = Some(standby.url());
        n.start();
    }
    let old = writer(&nodes);
    let old_epoch = nodes[old].metric("mykey_cluster_epoch").expect("epoch") as u64;
    let (load, rx) = write_load(&nodes[old], "SYNC");
    let mut acked = Vec::new();
    while acked.len() < 20 {
        acked.push(rx.recv_timeout(WAIT).expect("writes under load"));
    }
    // The primary crashes under the load, and the standby is promoted.
    primary.stop();
    let crashed = Instant::now();
    standby.promote();
    let promoted = crashed.elapsed();
    acked.extend(rx.try_iter());
    drop(rx);
    let _ = load.join();
    // A writer of a new epoch, through the promoted standby.
    let t = Instant::now();
    let w = loop {
        let w = writer(&nodes);
        if nodes[w]
            .metric("mykey_cluster_epoch")
            .is_some_and(|e| e as u64 > old_epoch)
        {
            break w;
        }
        assert!(
            t.elapsed() < WAIT,
            "no writer of a new epoch after the promotion"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rt = rt();
    let (resumed, seq) = write_until_acked(&rt, &nodes[w], "AFTER-PROMOTION", crashed);
    eprintln!(
        "primary crashed with {} writes acknowledged; standby promoted in {promoted:?}; writes resumed {resumed:?} after the crash, at seq {seq}",
        acked.len()
    );
    acked.push("AFTER-PROMOTION".into());
    // Every acknowledged write is on every node, and every node holds the same chain.
    rt.block_on(async {
        for n in &nodes {
            let c = n.operator().await;
            c.set_read_your_writes(true);
            c.saw_seq(seq);
            for name in &acked {
                assert!(serves(&c, name).await, "{name} on {}", n.name);
            }
        }
    });
    converged(&nodes, w, seq);
    let o = mykeyd(&["cluster", "verify", "--pg", &standby.url()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // The old writer, if it was not the one elected again, follows under the new epoch.
    if w != old {
        nodes[old].wait_for("a follower", |n| n.role() == Some(0));
    }
    let epoch = nodes[w].metric("mykey_cluster_epoch").expect("epoch") as u64;
    assert!(epoch > old_epoch);
    let head_epoch: u64 = psql(&standby.url(), "SELECT epoch FROM head")
        .parse()
        .expect("epoch");
    assert_eq!(head_epoch, epoch, "the head's epoch is the writer's");
}

#[test]
fn a_row_changed_by_hand_stops_every_follower() {
    let Some((pg, _base, mut nodes)) = cluster("tamper") else {
        return;
    };
    nodes.truncate(2);
    for n in &mut nodes {
        n.start();
    }
    let w = writer(&nodes);
    let seq = rt().block_on(async {
        let c = nodes[w].operator().await;
        c.set_read_your_writes(true);
        for k in 0..3 {
            c.register_provider(p(&format!("T-{k}")))
                .await
                .expect("write");
        }
        c.seen_seq()
    });
    converged(&nodes, w, seq);
    // Steady, the nodes open no new session on PostgreSQL: the follower tries the writer lock
    // every second on a connection it keeps.
    std::thread::sleep(Duration::from_secs(3));
    let new_sessions = psql(
        &pg.url(),
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'mykey' AND backend_start > now() - interval '2500 milliseconds' AND pid <> pg_backend_pid()",
    );
    assert_eq!(new_sessions, "0", "sessions opened in the last 2.5 s");
    // Rewrite the hash of the last row, as a standby given another change by hand would hold.
    psql(
        &pg.url(),
        &format!(
            "UPDATE change_log SET hash = '\\x{}' WHERE seq = {seq}",
            "ab".repeat(32)
        ),
    );
    let f = 1 - w;
    nodes[f].wait_for("stopped", |n| {
        let r = n.readyz();
        r.starts_with("HTTP/1.1 503") && r.contains(&format!("seq {seq}"))
    });
    // Its QUIC endpoint is closed: a lookup there gets no answer.
    let answered = rt_one().block_on(async {
        let connect = Client::connect(nodes[f].quic, "localhost", nodes[f].tls("operator"));
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(c)) => c.stats().await.is_ok(),
            _ => false,
        }
    });
    assert!(!answered, "a stopped node serves nothing");
}

/// Registers `<prefix>-0..10` through `node`, adding each to `acked`; returns the last seq.
fn write10(
    rt: &tokio::runtime::Runtime,
    node: &Node,
    prefix: &str,
    acked: &mut Vec<String>,
) -> u64 {
    rt.block_on(async {
        let c = node.operator().await;
        c.set_read_your_writes(true);
        for k in 0..10 {
            let name = format!("{prefix}-{k}");
            c.register_provider(p(&name)).await.expect("write");
            acked.push(name);
        }
        c.seen_seq()
    })
}

#[test]
fn a_killed_follower_catches_up_and_a_wiped_one_bootstraps_from_a_snapshot() {
    let Some((_pg, base, mut nodes)) = cluster("boot") else {
        return;
    };
    nodes.truncate(2);
    for n in &mut nodes {
        n.start();
    }
    let w = writer(&nodes);
    let f = 1 - w;
    let rt = rt();
    let url = nodes[w].pg.clone();
    let mut acked = Vec::new();
    let seq = write10(&rt, &nodes[w], "BEFORE", &mut acked);
    converged(&nodes, w, seq);
    // kill -9 the follower; the writer goes on; restarted, the follower catches up.
    nodes[f].kill9();
    let seq = write10(&rt, &nodes[w], "WHILE-DOWN", &mut acked);
    nodes[f].start();
    converged(&nodes, w, seq);
    every_node_holds(&rt, &nodes, &acked, &[]);
    // A tagged snapshot of the follower's store, taken while it serves, then more writes and
    // change_log pruned below the snapshot.
    let snap = base.0.join("snapshot-b");
    let store = |n: &Node| n.dir.join("store").display().to_string();
    let run = |args: &[&str]| {
        let o = mykeyd(args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "mykeyd {args:?}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    };
    let snap_s = snap.display().to_string();
    let out = run(&[
        "cluster",
        "snapshot",
        "--pg",
        &url,
        "--store",
        &store(&nodes[f]),
        "--out",
        &snap_s,
        "--node",
        &nodes[f].name,
    ]);
    assert!(out.contains("recorded"), "{out}");
    let seq = write10(&rt, &nodes[w], "AFTER-SNAPSHOT", &mut acked);
    converged(&nodes, w, seq);
    let out = run(&["cluster", "prune", "--pg", &url]);
    let pruned: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(pruned > 0, "{out}");
    let first: u64 = psql(&url, "SELECT min(seq) FROM change_log")
        .parse()
        .expect("seq");
    assert!(first > 1, "rows were pruned: the log starts at {first}");
    // Wipe the follower: without a store it refuses to start and names the bootstrap; after
    // `mykeyd cluster bootstrap` it serves every acknowledged write again.
    nodes[f].kill9();
    std::fs::remove_dir_all(nodes[f].dir.join("store")).expect("wipe");
    let o = Command::new(env!("CARGO_BIN_EXE_mykeyd"))
        .args(["serve", "--config"])
        .arg(nodes[f].dir.join("mykeyd.toml"))
        .env("MYKEYD_CLUSTER_NODE", &nodes[f].name)
        .env("MYKEYD_CLUSTER_PG", &url)
        .env("MYKEYD_SERVER_LISTEN", nodes[f].quic.to_string())
        .env("MYKEYD_SERVER_ADMIN_LISTEN", nodes[f].admin.to_string())
        .output()
        .expect("serve");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cluster bootstrap"),
        "{err}"
    );
    let wiped = Instant::now();
    let out = run(&[
        "cluster",
        "bootstrap",
        "--pg",
        &url,
        "--from",
        &snap_s,
        "--store",
        &store(&nodes[f]),
    ]);
    assert!(out.contains("checked against change_log"), "{out}");
    let booted = wiped.elapsed();
    let seq = write10(&rt, &nodes[w], "AFTER-BOOTSTRAP", &mut acked);
    nodes[f].start();
    converged(&nodes, w, seq);
    eprintln!(
        "wiped follower: bootstrapped in {booted:?}, serving at the writer's seq {:?} after the wipe",
        wiped.elapsed()
    );
    every_node_holds(&rt, &nodes, &acked, &[]);
    assert_eq!(nodes[f].role(), Some(0), "it follows");
    // The bootstrapped node holds exactly the writer's state.
    same_state_when_stopped(&mut nodes);
}
