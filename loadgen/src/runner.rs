//! Drives a `mykeyd` with a schedule.
//!
//! Open loop (the default): every request has a scheduled start, sent on time whether or not
//! earlier ones have been answered, and its latency counts from the schedule. A stalled server
//! therefore shows in the percentiles (no coordinated omission). Closed loop (for comparison):
//! a fixed number of workers send back to back and time each request from its own send.
//!
//! One QUIC connection per terminal, each with its own client certificate (role counter, the
//! providers it serves in the schedule), multiplexed over a few UDP sockets. All terminals
//! connect at once before the schedule starts (the "morning open"); the time that takes is
//! reported. Owns the clock of the run; never decides what is sent (that is the schedule).

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mykey_engine::client::{Client, ClientError, ClientTls, Pipeline};
use mykey_engine::id::ProviderId;
use mykey_engine::server::Role;
use mykey_engine::server::pki::OperatorCa;
use tokio::sync::{Mutex, Semaphore};

use crate::report::Report;
use crate::trace::{Event, Request};

/// Most providers one terminal certificate names.
const PROVIDERS_PER_TERMINAL_MAX: usize = mykey_engine::server::auth::PROVIDERS_PER_CERT_MAX;
/// Handshakes in progress at once during the morning open.
const HANDSHAKES_AT_ONCE: usize = 512;

/// Where and how to connect.
pub struct Target {
    /// The servers' QUIC addresses: terminal `t` connects to `addrs[t % addrs.len()]`, and
    /// registrations and pushes go to the first. At least one.
    pub addrs: Vec<SocketAddr>,
    /// The name in its certificate.
    pub server_name: String,
    /// The operator CA that issues the terminals' certificates (from `mykeyd init`).
    pub pki: Arc<OperatorCa>,
    /// Simulated cards for authenticated lookups, if the setup has the JPKI CA's key.
    pub cards: Option<Arc<Cards>>,
}

/// Open or closed loop.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Scheduled starts; latency from the schedule.
    Open,
    /// `workers` back-to-back senders; latency from each send.
    Closed {
        /// Concurrent workers.
        workers: usize,
    },
}

/// Options of a run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Open or closed loop.
    pub mode: Mode,
    /// Schedule speed: 10.0 plays a business day in a tenth of the time.
    pub speed: f64,
    /// UDP sockets the terminals share.
    pub sockets: usize,
    /// A live progress line on stderr (only if it is a terminal).
    pub progress: bool,
    /// Terminals to connect at the morning open, at least: terminals without a request in the
    /// schedule connect too (and stay idle), as a real street's quiet terminals do.
    pub terminals: u32,
    /// Each terminal sends its lookups and batches in turn on one `PIPELINE` stream
    /// (`engine/PROTOCOL.md`) instead of a stream each; its other requests keep their own.
    pub pipeline: bool,
}

/// The error class of a failed request, for the report.
pub fn error_class(e: &ClientError) -> String {
    match e {
        ClientError::Refused { status, .. } => mykey_engine::wire::Status::from_u8(*status)
            .map_or_else(|| format!("status {status}"), |s| s.name().to_owned()),
        ClientError::Connect(_) => "connect".into(),
        ClientError::Io(_) => "connection".into(),
        ClientError::Protocol(_) => "protocol".into(),
        _ => "other".into(),
    }
}

async fn send(
    c: Option<&Arc<Client>>,
    ctx: &Ctx,
    terminal: u32,
    r: &Request,
) -> Result<(), String> {
    let cards = ctx.cards.as_deref();
    match r {
        Request::Register(id, serial) => return register(ctx, id, *serial).await,
        Request::PushSerials(push, serials) => return push_serials(ctx, push, serials).await,
        _ => {}
    }
    let c = c.ok_or("no connection")?;
    if let Some(slot) = ctx.pipes.as_ref().and_then(|p| p.get(&terminal))
        && matches!(r, Request::Lookup(..) | Request::Batch(..))
    {
        return pipelined(c, slot, r).await;
    }
    match r {
        Request::Lookup(p, id) => c.lookup(*p, *id).await.map(|_| ()),
        Request::Link(p, id, s) => c.link(*id, *p, *s, true).await.map(|_| ()),
        Request::Batch(p, ids) => c.lookup_batch(*p, ids).await.map(|_| ()),
        Request::CardLookup(p, id, serial) => return card_lookup(c, cards, *p, id, *serial).await,
        Request::Register(..) | Request::PushSerials(..) => return Ok(()),
    }
    .map_err(|e: ClientError| error_class(&e))
}

/// A lookup or batch on its terminal's `PIPELINE` stream, opened on first use and again after
/// any failure (a failed call may leave the stream unusable). A terminal's requests wait their
/// turn for it, as on a real terminal; in open loop that wait counts in their latency.
async fn pipelined(c: &Client, slot: &Mutex<Option<Pipeline>>, r: &Request) -> Result<(), String> {
    let mut slot = slot.lock().await;
    let pipe = match &mut *slot {
        Some(p) => p,
        None => slot.insert(c.pipeline().await.map_err(|e| error_class(&e))?),
    };
    let result = match r {
        Request::Lookup(p, id) => pipe.lookup(*p, *id).await.map(|_| ()),
        Request::Batch(p, ids) => pipe.lookup_batch(*p, ids).await.map(|_| ()),
        _ => Ok(()),
    };
    if result.is_err() {
        *slot = None;
    }
    result.map_err(|e| error_class(&e))
}

async fn register(ctx: &Ctx, id: &mykey_engine::id::MyKeyId, serial: u64) -> Result<(), String> {
    let portal = ctx.portal.as_ref().ok_or("no portal connection")?;
    let (cert, ch, sig) = card_proof(portal, ctx.cards.as_deref(), id, serial).await?;
    let proof = mykey_engine::jpki::CardProof {
        cert_der: &cert,
        challenge: &ch,
        signature: &sig,
    };
    portal
        .register_full(proof)
        .await
        .map(|_| ())
        .map_err(|e| error_class(&e))
}

async fn push_serials(ctx: &Ctx, push: &str, serials: &[u64]) -> Result<(), String> {
    let partner = ctx.partner.as_ref().ok_or("no partner connection")?;
    let cards = ctx
        .cards
        .as_deref()
        .ok_or("no JPKI generation (give jpki-ca.key)")?;
    let mut list = format!("ca {}\n", cards.key_id_hex);
    for s in serials {
        list.push_str(&format!("{s:x}\n"));
    }
    let push = mykey_engine::id::PushId::parse(push.as_bytes()).map_err(|e| e.to_string())?;
    partner
        .push_serials(push, list.as_bytes())
        .await
        .map(|_| ())
        .map_err(|e| error_class(&e))
}

fn provider_of(r: &Request) -> Option<ProviderId> {
    match r {
        Request::Lookup(p, _)
        | Request::Link(p, _, _)
        | Request::Batch(p, _)
        | Request::CardLookup(p, _, _) => Some(*p),
        Request::Register(..) | Request::PushSerials(..) => None,
    }
}

/// What every request task shares: the simulated cards and the run's portal and partner
/// connections (registrations and revocation pushes are not a counter's to make).
struct Ctx {
    cards: Option<Arc<Cards>>,
    portal: Option<Client>,
    partner: Option<Client>,
    /// With [`Options::pipeline`]: each terminal's `PIPELINE` stream, once opened.
    pipes: Option<BTreeMap<u32, Mutex<Option<Pipeline>>>>,
}

/// Simulated cards: certificates issued on demand by the development JPKI generation for the
/// population's full registrations (CN = the ID and a suffix, serial = the row's), all with one
/// shared key (the server checks the signature with the certificate's key; sharing one is
/// enough for load).
pub struct Cards {
    ca: mykey_engine::jpki::dev::DevCa,
    key: mykey_engine::jpki::dev::DevKey,
    certs: std::sync::Mutex<std::collections::HashMap<u64, Arc<Vec<u8>>>>,
    validity: (mykey_engine::id::Timestamp, mykey_engine::id::Timestamp),
    key_id_hex: String,
}

/// Most card certificates kept; beyond it the oldest are issued again when needed.
const CARDS_CACHED_MAX: usize = 100_000;

impl Cards {
    /// Cards of `ca` (loaded from `mykeyd init`'s files).
    pub fn new(ca: mykey_engine::jpki::dev::DevCa) -> Result<Self, String> {
        let now = mykey_engine::server::system_clock();
        let from =
            mykey_engine::id::Timestamp::from_unix_secs(now.unix_secs().saturating_sub(86_400))
                .map_err(|e| e.to_string())?;
        let anchor = mykey_engine::jpki::Anchor::parse("dev JPKI CA", ca.der())
            .map_err(|e| e.to_string())?;
        Ok(Self {
            key_id_hex: mykey_engine::jpki::hex(anchor.key_id()),
            ca,
            key: mykey_engine::jpki::dev::DevKey::generate(2048).map_err(|e| e.to_string())?,
            certs: std::sync::Mutex::new(std::collections::HashMap::new()),
            validity: (from, now.plus_secs(365 * 86_400)),
        })
    }

    /// Issues, before a run starts, the certificates of the cards `events` present (up to the
    /// cache's size), so that issuing them (an RSA signature each, ~1 ms) does not take the
    /// generator's threads during the run; a run and its floor run then present cards at the
    /// same cost. Returns how many were issued.
    pub fn issue_ahead(&self, events: &[Event]) -> Result<usize, String> {
        let mut issued = 0;
        for e in events {
            let (Request::CardLookup(_, id, serial) | Request::Register(id, serial)) = &e.request
            else {
                continue;
            };
            if issued >= CARDS_CACHED_MAX {
                break;
            }
            let known = self
                .certs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(serial);
            if !known {
                self.cert(id, *serial)?;
                issued += 1;
            }
        }
        Ok(issued)
    }

    fn cert(&self, id: &mykey_engine::id::MyKeyId, serial: u64) -> Result<Arc<Vec<u8>>, String> {
        let mut certs = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = certs.get(&serial) {
            return Ok(c.clone());
        }
        if certs.len() >= CARDS_CACHED_MAX {
            certs.clear();
        }
        let cn = format!("{id}13101001A");
        let der = self
            .ca
            .issue(
                &self.key,
                &cn,
                &serial.to_be_bytes(),
                self.validity.0,
                self.validity.1,
            )
            .map_err(|e| e.to_string())?;
        let c = Arc::new(der);
        certs.insert(serial, c.clone());
        Ok(c)
    }
}

/// What a simulated card presents: its certificate, a challenge asked of the server over `c`,
/// and its signature over it.
async fn card_proof(
    c: &Client,
    cards: Option<&Cards>,
    id: &mykey_engine::id::MyKeyId,
    serial: u64,
) -> Result<(Arc<Vec<u8>>, [u8; 32], Vec<u8>), String> {
    let cards = cards.ok_or("no cards (give the development setup's jpki-ca.key)")?;
    let cert = cards.cert(id, serial).map_err(|e| format!("card: {e}"))?;
    let ch = c.challenge().await.map_err(|e| error_class(&e))?;
    let sig = cards
        .key
        .sign(&ch.bytes)
        .map_err(|e| format!("card: {e}"))?;
    Ok((cert, ch.bytes, sig))
}

async fn card_lookup(
    c: &Client,
    cards: Option<&Cards>,
    p: ProviderId,
    id: &mykey_engine::id::MyKeyId,
    serial: u64,
) -> Result<(), String> {
    let (cert, ch, sig) = card_proof(c, cards, id, serial).await?;
    let proof = mykey_engine::jpki::CardProof {
        cert_der: &cert,
        challenge: &ch,
        signature: &sig,
    };
    c.lookup_card(p, proof)
        .await
        .map(|_| ())
        .map_err(|e| error_class(&e))
}

/// Connects every terminal of the schedule at once; returns the clients by terminal index.
async fn connect_all(
    target: &Target,
    events: &[Event],
    sockets: usize,
    terminals: u32,
) -> Result<(BTreeMap<u32, Arc<Client>>, f64), String> {
    let mut providers: BTreeMap<u32, BTreeSet<ProviderId>> = BTreeMap::new();
    for e in events {
        let Some(p) = provider_of(&e.request) else {
            continue;
        };
        let set = providers.entry(e.terminal).or_default();
        if set.len() < PROVIDERS_PER_TERMINAL_MAX {
            set.insert(p);
        }
    }
    if let Some(first) = events.iter().find_map(|e| provider_of(&e.request)) {
        for t in 0..terminals {
            providers
                .entry(t)
                .or_insert_with(|| BTreeSet::from([first]));
        }
    }
    let endpoints = (0..sockets.max(1))
        .map(|_| Client::endpoint(target.addrs[0].is_ipv6()).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    // Certificates first (ECDSA, fast), so the handshakes really start together.
    let mut tls: Vec<(u32, ClientTls)> = Vec::with_capacity(providers.len());
    for (t, ps) in &providers {
        let ps: Vec<ProviderId> = ps.iter().copied().collect();
        let term = target
            .pki
            .terminal(
                &format!("load-{t}"),
                Role::Counter,
                &ps,
                1000 + u64::from(*t),
                target.pki.validity(),
            )
            .map_err(|e| e.to_string())?;
        tls.push((*t, target.pki.client_tls(&term)));
    }
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(HANDSHAKES_AT_ONCE));
    let mut tasks = Vec::with_capacity(tls.len());
    for (i, (t, tls)) in tls.into_iter().enumerate() {
        let ep = endpoints[i % endpoints.len()].clone();
        let gate = gate.clone();
        let (addr, name) = (target.node_of(t), target.server_name.clone());
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await;
            (t, Client::connect_on(&ep, addr, &name, tls).await)
        }));
    }
    let mut clients = BTreeMap::new();
    for task in tasks {
        let (t, c) = task.await.map_err(|e| e.to_string())?;
        clients.insert(t, Arc::new(c.map_err(|e| format!("terminal {t}: {e}"))?));
    }
    Ok((clients, start.elapsed().as_secs_f64()))
}

impl Target {
    /// The server terminal `t` talks to.
    fn node_of(&self, t: u32) -> SocketAddr {
        self.addrs[t as usize % self.addrs.len()]
    }
}

/// Records one answer in `report`, by server too when there are several (`nodes`, their
/// labels in `Target::addrs` order).
async fn record(
    report: &Mutex<Report>,
    nodes: &[String],
    e: &Event,
    at_secs: f64,
    latency: Duration,
    error: Option<String>,
) {
    let mut r = report.lock().await;
    if nodes.len() > 1 {
        r.record_at(
            &nodes[e.terminal as usize % nodes.len()],
            e.request.name(),
            at_secs,
            latency,
            error,
        );
    } else {
        r.record(e.request.name(), at_secs, latency, error);
    }
}

/// Counts a request as answered when its task ends, however it ends.
struct Answered(Arc<AtomicU64>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Runs `events` against `target`.
pub async fn run(target: &Target, events: Vec<Event>, opts: Options) -> Result<Report, String> {
    let speed = opts.speed.max(1e-6);
    let span = events.last().map_or(0.0, |e| e.at_us as f64 / 1e6 / speed);
    let mode = match opts.mode {
        Mode::Open => "open",
        Mode::Closed { .. } => "closed",
    };
    let mut report = Report::new(mode, events.len() as u64, span);
    for e in &events {
        report.scheduled_at(e.at_us as f64 / 1e6 / speed);
    }
    let report = Arc::new(Mutex::new(report));
    if let Some(cards) = &target.cards {
        let t = Instant::now();
        let n = cards.issue_ahead(&events)?;
        if n > 0 && opts.progress {
            eprintln!(
                "issued {n} card certificates in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    let (clients, connect_secs) =
        connect_all(target, &events, opts.sockets, opts.terminals).await?;
    {
        let mut r = report.lock().await;
        r.connect_secs = connect_secs;
        r.terminals = clients.len() as u64;
    }
    // Registrations and pushes go over a portal and a partner connection of their own.
    let needs = |f: fn(&Request) -> bool| events.iter().any(|e| f(&e.request));
    let special = async |role: Role, name: &str, serial: u64| -> Result<Option<Client>, String> {
        let t = target
            .pki
            .terminal(name, role, &[], serial, target.pki.validity())
            .map_err(|e| e.to_string())?;
        Client::connect(
            target.addrs[0],
            &target.server_name,
            target.pki.client_tls(&t),
        )
        .await
        .map(Some)
        .map_err(|e| format!("{name}: {e}"))
    };
    let portal = if needs(|r| matches!(r, Request::Register(..))) {
        special(Role::Portal, "load-portal", 900).await?
    } else {
        None
    };
    let partner = if needs(|r| matches!(r, Request::PushSerials(..))) {
        special(Role::Partner, "load-partner", 901).await?
    } else {
        None
    };
    let pipes = opts
        .pipeline
        .then(|| clients.keys().map(|&t| (t, Mutex::new(None))).collect());
    let ctx = Arc::new(Ctx {
        cards: target.cards.clone(),
        portal,
        partner,
        pipes,
    });
    let clients = Arc::new(clients);
    let nodes: Arc<Vec<String>> = Arc::new(target.addrs.iter().map(|a| a.to_string()).collect());
    let events = Arc::new(events);
    let done = Arc::new(AtomicU64::new(0));
    let progress = opts.progress && std::io::stderr().is_terminal();
    let ticker = progress.then(|| {
        let done = done.clone();
        let total = events.len() as u64;
        tokio::spawn(async move {
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d = done.load(Ordering::Relaxed);
                eprint!(
                    "\r{:>6.1} s  {d}/{total} answered  {:.0}/s   ",
                    t0.elapsed().as_secs_f64(),
                    d as f64 / t0.elapsed().as_secs_f64()
                );
            }
        })
    });
    let start = Instant::now();
    match opts.mode {
        Mode::Open => {
            // The dispatcher is an OS thread: its sleeps are precise to tens of microseconds,
            // where tokio's timer has a 1 ms granularity, and it never spins a core that the
            // server and the senders need.
            let handle = tokio::runtime::Handle::current();
            let dispatcher = {
                let (clients, events, report, done) = (
                    clients.clone(),
                    events.clone(),
                    report.clone(),
                    done.clone(),
                );
                let ctx = ctx.clone();
                let nodes = nodes.clone();
                std::thread::spawn(move || {
                    for i in 0..events.len() {
                        let due =
                            start + Duration::from_secs_f64(events[i].at_us as f64 / 1e6 / speed);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let (clients, events, report) =
                            (clients.clone(), events.clone(), report.clone());
                        let (ctx, nodes) = (ctx.clone(), nodes.clone());
                        // Counted as answered even if the task panics, so the wait below ends.
                        let answered = Answered(done.clone());
                        // Not kept: a finished task's memory is freed at once, which a day-long
                        // trace of millions of requests needs; `done` tells when all are in.
                        drop(handle.spawn(async move {
                            let _answered = answered;
                            let e = &events[i];
                            let r =
                                send(clients.get(&e.terminal), &ctx, e.terminal, &e.request).await;
                            // Latency from the schedule: a late answer is late however it
                            // came about.
                            let latency = Instant::now().saturating_duration_since(due);
                            let at = e.at_us as f64 / 1e6 / speed;
                            record(&report, &nodes, e, at, latency, r.err()).await;
                        }));
                    }
                })
            };
            tokio::task::spawn_blocking(move || dispatcher.join())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|_| "the dispatcher panicked".to_owned())?;
            while done.load(Ordering::Acquire) < events.len() as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Mode::Closed { workers } => {
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..workers.max(1) {
                let (ctx, nodes) = (ctx.clone(), nodes.clone());
                let (clients, events, report, done, next) = (
                    clients.clone(),
                    events.clone(),
                    report.clone(),
                    done.clone(),
                    next.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(e) = events.get(i) else { break };
                        let sent = Instant::now();
                        let r = send(clients.get(&e.terminal), &ctx, e.terminal, &e.request).await;
                        let at = sent.duration_since(start).as_secs_f64();
                        record(&report, &nodes, e, at, sent.elapsed(), r.err()).await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                t.await.map_err(|e| e.to_string())?;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(t) = ticker {
        t.abort();
        eprintln!();
    }
    for c in clients.values() {
        c.close_ref();
    }
    let mut r = Arc::try_unwrap(report)
        .map_err(|_| "report still shared".to_owned())?
        .into_inner();
    r.elapsed_secs = elapsed;
    Ok(r)
}
