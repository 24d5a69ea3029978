//! A serving node's part in the cluster (`engine/CLUSTER.md`): the loop that follows
//! PostgreSQL, takes part in the writer election, and, as the writer, watches that it still is.
//! It runs on a thread of its own (a tail step blocks on the local fsync) and tells the serving
//! process what the node can do right now through [`State`] (readiness, `mykey_cluster_*`).
//!
//! Owns the node's role. Never applies a row it could not check, never lets a follower's store
//! take a local write (the store is put in follower mode before anything is served), and never
//! keeps a store that failed a commit as the writer: it ends with [`Ended::SteppedDown`] and the
//! process reopens the store as a follower.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::record::PgRecord;
use super::tail::{TAIL_BATCH, TAIL_POLL, Tail};
use super::writer::{Writer, head};
use super::{ClusterError, PgClient, SyncCancels, chain, schema};
use crate::registry::Registry;
use crate::server::admin::Finding;
use crate::store::fs::Fs;

/// How often a follower checks that the row at its applied seq still carries its hash, and
/// reads the head (who writes, how far it is).
pub const TAIL_RECHECK: Duration = Duration::from_secs(1);
/// How often a follower tries to become the writer (one query on a connection to the primary
/// it keeps for that, made again only when it ends).
pub const ELECTION_EVERY: Duration = Duration::from_secs(1);
/// How often the writer checks that the head's epoch is still its own.
pub const WRITER_CHECK: Duration = Duration::from_millis(200);
/// The first and the longest wait before connecting to PostgreSQL again.
pub const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2));
/// How long a new writer may take to apply the rows up to the head it took over at, before it
/// gives the lock up again (a standby it tails that lags too far behind).
pub const CATCH_UP_MAX: Duration = Duration::from_secs(60);

/// Gauge: the node's role (0 follower, 1 writer, 2 stopped).
pub const ROLE: &str = "mykey_cluster_role";
/// Gauge: the epoch of the writer this node last saw.
pub const EPOCH: &str = "mykey_cluster_epoch";
/// Gauge: the last seq this node's store holds.
pub const APPLIED_SEQ: &str = "mykey_cluster_applied_seq";
/// Gauge: seconds since this node last knew it held every committed change (0 when it does).
pub const LAG_SECONDS: &str = "mykey_cluster_lag_seconds";

/// Where a node connects and what it is called.
#[derive(Clone)]
pub struct Membership {
    /// The node's name (stored in `head.writer` while it writes).
    pub node: String,
    /// The primary: the writer's commits and the election.
    pub pg: String,
    /// The database this node tails (the primary or a hot standby).
    pub tail_pg: String,
    /// TLS roots for PostgreSQL's certificate; `None`: no TLS.
    pub roots: Option<rustls::RootCertStore>,
    /// Where this node takes forwarded writes while it is the writer (`None`: it takes none).
    pub advertise: Option<SocketAddr>,
}

impl Membership {
    async fn connect(&self, url: &str) -> Result<PgClient, ClusterError> {
        Ok(self.connect_watched(url).await?.0)
    }

    async fn connect_watched(&self, url: &str) -> Result<(PgClient, SyncCancels), ClusterError> {
        match &self.roots {
            None => super::connect_plain_watched(url).await,
            Some(r) => super::connect_tls_watched(url, r.clone()).await,
        }
    }
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Applies what the writer commits; refuses local writes (`NO_WRITER`).
    Follower = 0,
    /// Commits every write through PostgreSQL.
    Writer = 1,
    /// Found a row it cannot apply (or its own files failed): serves nothing until an operator
    /// acts.
    Stopped = 2,
}

/// How the loop ended.
#[derive(Debug)]
pub enum Ended {
    /// Asked to stop.
    Stop,
    /// The node was the writer and no longer is (a commit failed or was fenced, another node
    /// took over, PostgreSQL went away): its store must be reopened as a follower's.
    SteppedDown(String),
    /// The node cannot go on (a gap, a chain mismatch, a local failure): it must stop serving.
    Stopped(String),
}

/// What the node can do right now, written by the loop, read by readiness and `/metrics`.
pub struct State {
    role: AtomicU8,
    epoch: AtomicU64,
    applied: AtomicU64,
    /// Since when the node has not known it holds every committed change (`None`: it does).
    behind_since: Mutex<Option<Instant>>,
    /// Since when, and why, PostgreSQL has been unreachable.
    unreachable: Mutex<Option<(Instant, String)>>,
    stopped: Mutex<Option<String>>,
    /// The head's writer, as last read.
    writer: Mutex<String>,
    /// Where that writer takes forwarded writes, as last read (`None`: nowhere yet).
    writer_addr: Mutex<Option<SocketAddr>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            role: AtomicU8::new(Role::Follower as u8),
            epoch: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            behind_since: Mutex::new(Some(Instant::now())),
            unreachable: Mutex::new(None),
            stopped: Mutex::new(None),
            writer: Mutex::new(String::new()),
            writer_addr: Mutex::new(None),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// The node's role now.
    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            0 => Role::Follower,
            1 => Role::Writer,
            _ => Role::Stopped,
        }
    }

    /// Where the writer takes forwarded writes, as this node last read it from the head.
    pub fn writer_addr(&self) -> Option<SocketAddr> {
        *lock(&self.writer_addr)
    }

    /// The last seq the node applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn set_role(&self, r: Role) {
        self.role.store(r as u8, Ordering::Release);
    }

    fn set_applied(&self, seq: u64) {
        self.applied.store(seq, Ordering::Release);
    }

    fn caught_up(&self, yes: bool) {
        let mut b = lock(&self.behind_since);
        match (yes, b.is_some()) {
            (true, _) => *b = None,
            (false, false) => *b = Some(Instant::now()),
            (false, true) => {}
        }
    }

    fn reachable(&self) {
        *lock(&self.unreachable) = None;
    }

    fn unreachable(&self, why: &ClusterError) {
        let mut u = lock(&self.unreachable);
        if u.is_none() {
            tracing::warn!(op = "cluster", error = %why, "postgres unreachable; serving reads at the applied seq");
            *u = Some((Instant::now(), why.to_string()));
        }
        drop(u);
        self.caught_up(false);
    }

    fn stop(&self, why: &str) {
        tracing::error!(op = "cluster", reason = why, "this node stops serving");
        *lock(&self.stopped) = Some(why.to_owned());
        self.set_role(Role::Stopped);
    }

    /// What readiness says of the cluster, refreshing the `mykey_cluster_*` gauges: stopped is
    /// not ready; PostgreSQL unreachable is degraded (reads go on at the applied seq).
    pub fn findings(&self) -> Vec<Finding> {
        let role = self.role();
        let applied = self.applied();
        let lag = lock(&self.behind_since).map_or(0.0, |t| t.elapsed().as_secs_f64());
        metrics::gauge!(ROLE).set(f64::from(role as u8));
        metrics::gauge!(EPOCH).set(self.epoch.load(Ordering::Acquire) as f64);
        metrics::gauge!(APPLIED_SEQ).set(applied as f64);
        metrics::gauge!(LAG_SECONDS).set(lag);
        let mut v = Vec::new();
        if let Some(why) = &*lock(&self.stopped) {
            v.push(Finding::NotReady(format!("cluster: stopped: {why}")));
        }
        if let Some((since, why)) = &*lock(&self.unreachable) {
            v.push(Finding::Degraded(format!(
                "cluster: postgres unreachable for {} s (serving reads at seq {applied}; writes answer NO_WRITER): {why}",
                since.elapsed().as_secs()
            )));
        } else if role == Role::Follower {
            let w = lock(&self.writer);
            if w.is_empty() {
                v.push(Finding::Degraded(
                    "cluster: follower; no writer has taken over yet (writes answer NO_WRITER)"
                        .into(),
                ));
            }
        }
        v
    }
}

/// Starts the loop for `reg`, whose store lives in `fs`, on a thread of its own. Puts the store
/// in follower mode first, so that it takes no local write until the node is the writer. `done`
/// receives how the loop ended.
pub fn spawn(
    m: Membership,
    reg: Arc<dyn AsRef<Registry> + Send + Sync>,
    fs: Arc<dyn Fs>,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    done: tokio::sync::oneshot::Sender<Ended>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    (*reg).as_ref().store().follow();
    state.set_role(Role::Follower);
    state.set_applied((*reg).as_ref().store().durable_seq());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("mykey-cluster".into())
        .spawn(move || {
            let node = Node {
                m,
                reg,
                fs,
                state,
                stop,
                election: Mutex::new(None),
            };
            let ended = rt.block_on(node.run());
            if let Ended::Stopped(why) = &ended {
                node.state.stop(why);
            }
            let _ = done.send(ended);
        })
}

struct Node {
    m: Membership,
    reg: Arc<dyn AsRef<Registry> + Send + Sync>,
    fs: Arc<dyn Fs>,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    /// The connection to the primary the election tries the writer lock on, kept between
    /// tries (with TLS and SCRAM, a connection per try per node would be a handshake per
    /// second per node on the primary).
    election: Mutex<Option<(PgClient, SyncCancels)>>,
}

/// How following on one connection ended.
enum Flow {
    /// The connection failed: connect again.
    Reconnect(ClusterError),
    /// The loop is over.
    End(Ended),
}

/// A failure of the connection or of PostgreSQL, as opposed to a row or a file that is wrong.
fn is_connection(e: &ClusterError) -> bool {
    matches!(
        e,
        ClusterError::Postgres { .. } | ClusterError::ConnectTimeout | ClusterError::Tls(_)
    )
}

impl Node {
    fn reg(&self) -> &Registry {
        (*self.reg).as_ref()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    async fn run(&self) -> Ended {
        let mut tail: Option<Tail> = None;
        let mut backoff = RECONNECT_BACKOFF.0;
        loop {
            if self.stopping() {
                return Ended::Stop;
            }
            let c = match self.tail_connection().await {
                Ok(c) => c,
                Err(e) if is_connection(&e) => {
                    self.state.unreachable(&e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
                    continue;
                }
                Err(e) => return Ended::Stopped(e.to_string()),
            };
            backoff = RECONNECT_BACKOFF.0;
            let t = match tail.take() {
                Some(t) => t,
                None => match chain::resume(&c, &*self.fs, self.reg()).await {
                    Ok(t) => {
                        tracing::info!(
                            applied = t.applied(),
                            "cluster: following from the store's applied seq"
                        );
                        t
                    }
                    Err(e) if is_connection(&e) => {
                        self.state.unreachable(&e);
                        continue;
                    }
                    Err(e) => return Ended::Stopped(format!("resume: {e}")),
                },
            };
            self.state.reachable();
            let mut t = t;
            match self.follow(&c, &mut t).await {
                Flow::Reconnect(e) => {
                    self.state.unreachable(&e);
                    tail = Some(t);
                }
                Flow::End(e) => return e,
            }
        }
    }

    async fn tail_connection(&self) -> Result<PgClient, ClusterError> {
        let c = self.m.connect(&self.m.tail_pg).await?;
        schema::check(&c).await?;
        Ok(c)
    }

    /// Follows on `c` until the connection fails or the node becomes the writer and stops
    /// being it.
    async fn follow(&self, c: &PgClient, t: &mut Tail) -> Flow {
        let mut next_recheck = Instant::now();
        let mut next_election = Instant::now();
        loop {
            if self.stopping() {
                return Flow::End(Ended::Stop);
            }
            if Instant::now() >= next_election {
                next_election = Instant::now() + ELECTION_EVERY;
                match self.try_lead(c, t).await {
                    Ok(Some((record, epoch))) => return Flow::End(self.lead(record, epoch).await),
                    Ok(None) => {}
                    Err(Flow::End(e)) => return Flow::End(e),
                    Err(f) => return f,
                }
            }
            let n = match self.step(c, t).await {
                Ok(n) => n,
                Err(f) => return f,
            };
            if Instant::now() >= next_recheck {
                next_recheck = Instant::now() + TAIL_RECHECK;
                if let Err(e) = t.recheck(c).await {
                    return flow(e);
                }
                match head_and_writer(c).await {
                    Ok((seq, epoch, writer, addr)) => {
                        self.state.epoch.store(epoch, Ordering::Release);
                        *lock(&self.state.writer) = writer;
                        *lock(&self.state.writer_addr) = addr;
                        if seq < t.applied() {
                            return Flow::End(Ended::Stopped(format!(
                                "this node applied seq {} and the head of the database it tails is at seq {seq}: it holds changes PostgreSQL does not (a standby promoted without them?)",
                                t.applied()
                            )));
                        }
                    }
                    Err(e) => return flow(e),
                }
            }
            if n == 0 {
                tokio::time::sleep(TAIL_POLL).await;
            }
        }
    }

    /// One tail step, with the `CHAIN` file and the state brought up to it (also after a
    /// step that applied the rows before a bad one).
    async fn step(&self, c: &PgClient, t: &mut Tail) -> Result<usize, Flow> {
        let r = t.step(c, self.reg()).await;
        if t.applied() != self.state.applied() {
            if let Err(e) = chain::write(&*self.fs, t) {
                return Err(Flow::End(Ended::Stopped(format!("CHAIN file: {e}"))));
            }
            self.state.set_applied(t.applied());
        }
        let n = r.map_err(flow)?;
        self.state.reachable();
        self.state.caught_up((n as i64) < TAIL_BATCH);
        Ok(n)
    }

    /// Tries to take the writer lock. With it, catches the store up to the head it took over
    /// at, checks the chain there, and returns the system of record to write through.
    async fn try_lead(
        &self,
        c: &PgClient,
        t: &mut Tail,
    ) -> Result<Option<(Arc<PgRecord>, u64)>, Flow> {
        let kept = lock(&self.election).take().filter(|(c, _)| !c.is_closed());
        let (client, sync_cancels) = match kept {
            Some(cl) => cl,
            None => match self.m.connect_watched(&self.m.pg).await {
                Ok(cl) => cl,
                // The primary unreachable while the tail's database answers: stay a follower.
                Err(e) => {
                    tracing::debug!(op = "cluster election", error = %e, "cannot reach the primary");
                    return Ok(None);
                }
            },
        };
        match super::writer::try_lock(&client).await {
            Ok(()) => {}
            Err(ClusterError::NotWriter) => {
                *lock(&self.election) = Some((client, sync_cancels));
                return Ok(None);
            }
            Err(e) if is_connection(&e) => {
                tracing::debug!(op = "cluster election", error = %e, "the election's connection failed");
                return Ok(None);
            }
            Err(e) => return Err(Flow::End(Ended::Stopped(format!("take over: {e}")))),
        }
        let mut w = match Writer::take_over(client, &self.m.node).await {
            Ok(w) => w,
            Err(ClusterError::NotWriter) => return Ok(None),
            Err(e) if is_connection(&e) => {
                tracing::warn!(op = "cluster election", error = %e, "could not take over");
                return Ok(None);
            }
            Err(e) => return Err(Flow::End(Ended::Stopped(format!("take over: {e}")))),
        };
        w.watch(sync_cancels);
        let h = w.head();
        self.state.epoch.store(h.epoch, Ordering::Release);
        let deadline = Instant::now() + CATCH_UP_MAX;
        while t.applied() < h.seq {
            if Instant::now() >= deadline || self.stopping() {
                tracing::warn!(
                    applied = t.applied(),
                    head = h.seq,
                    "cluster: could not catch up with the head in time; giving the writer lock up"
                );
                return Ok(None);
            }
            if self.step(c, t).await? == 0 {
                tokio::time::sleep(TAIL_POLL).await;
            }
        }
        if t.applied() > h.seq || t.hash() != h.hash {
            return Err(Flow::End(Ended::Stopped(format!(
                "taking over at the head (seq {}): this node's chain is at seq {} with another hash: it holds another history than PostgreSQL",
                h.seq,
                t.applied()
            ))));
        }
        let record = match PgRecord::spawn(w, self.reg().mirror_handle()) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                return Err(Flow::End(Ended::Stopped(format!(
                    "start the writer thread: {e}"
                ))));
            }
        };
        if let Err(e) = self.reg().store().set_system_of_record(record.clone()) {
            return Err(Flow::End(Ended::Stopped(format!("become the writer: {e}"))));
        }
        Ok(Some((record, h.epoch)))
    }

    /// As the writer: watches that the head's epoch is still its own and that its store still
    /// takes writes, and keeps the `CHAIN` file at the store's durable seq.
    async fn lead(&self, record: Arc<PgRecord>, epoch: u64) -> Ended {
        self.state.set_role(Role::Writer);
        *lock(&self.state.writer) = self.m.node.clone();
        self.state.caught_up(true);
        tracing::info!(
            node = self.m.node,
            epoch,
            "cluster: this node is the writer"
        );
        let monitor = match self.m.connect(&self.m.pg).await {
            Ok(c) => c,
            Err(e) => return Ended::SteppedDown(format!("cannot watch the head: {e}")),
        };
        // Serving writes now: the followers may forward theirs here.
        let addr = self.m.advertise.map(|a| a.to_string()).unwrap_or_default();
        let epoch_i = epoch as i64;
        match monitor
            .execute(
                "UPDATE head SET writer_addr = $1 WHERE epoch = $2",
                &[&addr, &epoch_i],
            )
            .await
        {
            Ok(1) => {}
            Ok(_) => {
                return Ended::SteppedDown(format!(
                    "another writer took over before this node (epoch {epoch}) served a write"
                ));
            }
            Err(e) => return Ended::SteppedDown(format!("cannot advertise this writer: {e}")),
        }
        let mut written = 0;
        loop {
            if self.stopping() {
                return Ended::Stop;
            }
            let store = self.reg().store();
            if let Some(why) = store.health().read_only {
                return Ended::SteppedDown(format!("the store stopped taking writes: {why}"));
            }
            match head(&monitor).await {
                Ok(h) if h.epoch != epoch => {
                    return Ended::SteppedDown(format!(
                        "another writer took over (epoch {} after this node's {epoch})",
                        h.epoch
                    ));
                }
                Ok(_) => {}
                Err(e) => return Ended::SteppedDown(format!("cannot read the head: {e}")),
            }
            let h = record.head();
            let durable = store.durable_seq();
            self.state.set_applied(durable);
            if h.seq == durable && durable != written {
                if let Err(e) = chain::write(&*self.fs, &Tail::at(h.seq, h.hash)) {
                    return Ended::Stopped(format!("CHAIN file: {e}"));
                }
                written = durable;
            }
            tokio::time::sleep(WRITER_CHECK).await;
        }
    }
}

fn flow(e: ClusterError) -> Flow {
    if is_connection(&e) {
        Flow::Reconnect(e)
    } else {
        Flow::End(Ended::Stopped(e.to_string()))
    }
}

/// The head's seq, epoch, writer name and the address it takes forwarded writes at.
async fn head_and_writer(
    c: &PgClient,
) -> Result<(u64, u64, String, Option<SocketAddr>), ClusterError> {
    let r = c
        .query_one("SELECT seq, epoch, writer, writer_addr FROM head", &[])
        .await
        .map_err(|source| ClusterError::Postgres {
            op: "read the head",
            source,
        })?;
    let addr: &str = r.get(3);
    let parsed = addr.parse().ok();
    if parsed.is_none() && !addr.is_empty() {
        tracing::warn!(
            op = "cluster",
            writer_addr = addr,
            "the head's writer_addr is not an address; writes are not forwarded"
        );
    }
    Ok((
        r.get::<_, i64>(0) as u64,
        r.get::<_, i64>(1) as u64,
        r.get(2),
        parsed,
    ))
}
