//! Model-based test: random sequences of every registry operation, with power cuts between and
//! inside operations (through `SimFs`, which drops unsynced writes as SQLite's crash VFS does),
//! checked against an independent `BTreeMap` model of the domain rules.
//!
//! After every recovery the registry's observable state must equal the model: every
//! acknowledged operation survives, and an operation cut by the crash is either wholly there or
//! wholly absent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mykey_engine::id::{MyKeyId, ProviderId, ServiceId};
use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{
    IdState, LinkOutcome, Lookup, ProviderOutcome, Registry, RegistryConfig, RegistryError,
    UnlinkOutcome,
};
use mykey_engine::store::StoreError;
use mykey_engine::store::fs::{Fs, SimFs};
use mykey_tests::*;
use proptest::prelude::*;

const IDS: u64 = 4;
const CERTS: u64 = 6;
const PROVIDERS: [&str; 3] = ["A-α1-0001", "A-β1-0001", "L-13101"];
const SERVICES: [&str; 3] = ["S1", "S2", "2802121234"];
/// Short expiry so that sequences cross it.
const EXPIRY: u64 = 50;

#[derive(Clone, Debug)]
enum Op {
    Provider(usize),
    Register {
        id: u64,
        cert: u64,
        provisional: bool,
    },
    Confirm {
        id: u64,
        cert: u64,
    },
    Link {
        id: u64,
        p: usize,
        s: usize,
        replace: bool,
    },
    Unlink {
        id: u64,
        p: usize,
    },
    Revoke(Vec<u64>),
    Rebind {
        id: u64,
        cert: u64,
    },
    Delete(u64),
    Expire,
    Advance(u64),
    Compact,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..PROVIDERS.len()).prop_map(Op::Provider),
        (0..IDS, 0..CERTS, any::<bool>()).prop_map(|(id, cert, provisional)| Op::Register {
            id,
            cert,
            provisional
        }),
        (0..IDS, 0..CERTS).prop_map(|(id, cert)| Op::Confirm { id, cert }),
        (0..IDS, 0..PROVIDERS.len(), 0..SERVICES.len(), any::<bool>())
            .prop_map(|(id, p, s, replace)| Op::Link { id, p, s, replace }),
        (0..IDS, 0..PROVIDERS.len()).prop_map(|(id, p)| Op::Unlink { id, p }),
        proptest::collection::vec(0..CERTS, 1..3).prop_map(Op::Revoke),
        (0..IDS, 0..CERTS).prop_map(|(id, cert)| Op::Rebind { id, cert }),
        (0..IDS).prop_map(Op::Delete),
        Just(Op::Expire),
        (1..40u64).prop_map(Op::Advance),
        Just(Op::Compact),
        Just(Op::Crash),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MId {
    state: IdState,
    at: u64,
    cert: Option<u64>,
    links: BTreeMap<usize, usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    providers: BTreeSet<usize>,
    ids: BTreeMap<u64, MId>,
    certs: BTreeMap<u64, u64>,
    revoked: BTreeSet<u64>,
}

fn expired(r: &MId, now: u64) -> bool {
    r.state == IdState::Provisional && now >= r.at + EXPIRY
}

impl Model {
    fn claim(&mut self, cert: u64, now: u64) -> Result<(), &'static str> {
        if self.revoked.contains(&cert) {
            return Err("CertRevoked");
        }
        if let Some(&holder) = self.certs.get(&cert) {
            if self.ids.get(&holder).is_some_and(|r| expired(r, now)) {
                self.ids.remove(&holder);
                self.certs.remove(&cert);
            } else {
                return Err("CertBound");
            }
        }
        Ok(())
    }

    fn usable(&self, id: u64, now: u64) -> Result<(), &'static str> {
        match self.ids.get(&id) {
            None => Err("UnknownId"),
            Some(r) if expired(r, now) => Err("UnknownId"),
            Some(r) if r.state != IdState::Active => Err("WrongState"),
            Some(_) => Ok(()),
        }
    }

    /// Applies `op` at `now`; returns the outcome label the registry must give.
    fn apply(&mut self, op: &Op, now: u64) -> String {
        self.step(op, now).unwrap_or_else(|e| format!("Err:{e}"))
    }

    fn step(&mut self, op: &Op, now: u64) -> Result<String, &'static str> {
        Ok(match *op {
            Op::Provider(p) => if self.providers.insert(p) {
                "Registered"
            } else {
                "AlreadyRegistered"
            }
            .into(),
            Op::Register {
                id,
                cert,
                provisional,
            } => {
                let mut freed = None;
                if let Some(r) = self.ids.get(&id) {
                    match r.state {
                        _ if expired(r, now) => freed = r.cert,
                        IdState::Deleted => return Err("IdDeleted"),
                        _ => return Err("IdTaken"),
                    }
                }
                self.claim(cert, now)?;
                if let Some(oc) = freed
                    && oc != cert
                {
                    self.certs.remove(&oc);
                }
                let state = if provisional {
                    IdState::Provisional
                } else {
                    IdState::Active
                };
                self.ids.insert(
                    id,
                    MId {
                        state,
                        at: now,
                        cert: Some(cert),
                        links: BTreeMap::new(),
                    },
                );
                self.certs.insert(cert, id);
                "Ok".into()
            }
            Op::Confirm { id, cert } => {
                let r = self.ids.get_mut(&id).ok_or("UnknownId")?;
                if r.state != IdState::Provisional {
                    return Err("WrongState");
                }
                if now >= r.at + EXPIRY {
                    return Err("ProvisionalExpired");
                }
                if r.cert != Some(cert) {
                    return Err("CertMismatch");
                }
                r.state = IdState::Active;
                r.at = now;
                "Ok".into()
            }
            Op::Link { id, p, s, replace } => {
                if !self.providers.contains(&p) {
                    return Err("UnknownProvider");
                }
                self.usable(id, now)?;
                let r = self.ids.get_mut(&id).ok_or("UnknownId")?;
                match r.links.get(&p).copied() {
                    Some(old) if old == s => "AlreadyLinked".into(),
                    Some(_) if !replace => return Err("LinkConflict"),
                    Some(_) => {
                        r.links.insert(p, s);
                        "Replaced".into()
                    }
                    None => {
                        r.links.insert(p, s);
                        "Linked".into()
                    }
                }
            }
            Op::Unlink { id, p } => {
                if !self.providers.contains(&p) {
                    return Err("UnknownProvider");
                }
                self.usable(id, now)?;
                let r = self.ids.get_mut(&id).ok_or("UnknownId")?;
                if r.links.remove(&p).is_some() {
                    "Unlinked"
                } else {
                    "NotLinked"
                }
                .into()
            }
            Op::Revoke(ref certs) => {
                let (mut new, mut known, mut susp) = (0, 0, 0);
                for &c in certs {
                    if !self.revoked.insert(c) {
                        known += 1;
                        continue;
                    }
                    new += 1;
                    if let Some(&holder) = self.certs.get(&c)
                        && let Some(r) = self.ids.get_mut(&holder)
                        && matches!(r.state, IdState::Active | IdState::Provisional)
                        && !expired(r, now)
                    {
                        r.state = IdState::Suspended;
                        r.at = now;
                        susp += 1;
                    }
                }
                format!("Revoked {new}/{known}/{susp}")
            }
            Op::Rebind { id, cert } => {
                let r = self.ids.get(&id).ok_or("UnknownId")?;
                if !matches!(r.state, IdState::Active | IdState::Suspended) {
                    return Err("WrongState");
                }
                let old = r.cert;
                self.claim(cert, now)?;
                if let Some(oc) = old {
                    self.certs.remove(&oc);
                }
                let r = self.ids.get_mut(&id).ok_or("UnknownId")?;
                r.cert = Some(cert);
                r.state = IdState::Active;
                r.at = now;
                self.certs.insert(cert, id);
                "Ok".into()
            }
            Op::Delete(id) => {
                let r = self.ids.get_mut(&id).ok_or("UnknownId")?;
                if r.state == IdState::Deleted {
                    return Err("WrongState");
                }
                if let Some(c) = r.cert.take() {
                    self.certs.remove(&c);
                }
                r.links.clear();
                r.state = IdState::Deleted;
                r.at = now;
                "Ok".into()
            }
            Op::Expire => {
                let gone: Vec<u64> = self
                    .ids
                    .iter()
                    .filter(|(_, r)| expired(r, now))
                    .map(|(k, _)| *k)
                    .collect();
                for id in &gone {
                    if let Some(c) = self.ids.remove(id).and_then(|r| r.cert) {
                        self.certs.remove(&c);
                    }
                }
                format!("Expired {}", gone.len())
            }
            Op::Advance(_) | Op::Compact | Op::Crash => "Ok".into(),
        })
    }

    fn lookup(&self, id: u64, p: usize, now: u64) -> String {
        if !self.providers.contains(&p) {
            return "Err:UnknownProvider".into();
        }
        match self.ids.get(&id) {
            None => "UnknownId".into(),
            Some(r) => match r.state {
                IdState::Active => r
                    .links
                    .get(&p)
                    .map_or("NotLinked".into(), |s| format!("Linked {}", SERVICES[*s])),
                IdState::Provisional if expired(r, now) => "UnknownId".into(),
                IdState::Provisional => "Provisional".into(),
                IdState::Suspended => "Suspended".into(),
                IdState::Deleted => "Deleted".into(),
            },
        }
    }
}

fn cert_of(n: u64) -> mykey_engine::id::CertRef {
    cert(1, n)
}
fn id_of(n: u64) -> MyKeyId {
    mykey(n)
}
fn p_of(i: usize) -> ProviderId {
    provider(PROVIDERS[i])
}
fn s_of(i: usize) -> ServiceId {
    service(SERVICES[i])
}

fn label_err(e: &RegistryError) -> String {
    let name = match e {
        RegistryError::Store(_) => "Store",
        RegistryError::UnknownProvider { .. } => "UnknownProvider",
        RegistryError::IdTaken { .. } => "IdTaken",
        RegistryError::IdDeleted => "IdDeleted",
        RegistryError::CertBound { .. } => "CertBound",
        RegistryError::CertRevoked { .. } => "CertRevoked",
        RegistryError::UnknownId => "UnknownId",
        RegistryError::WrongState { .. } => "WrongState",
        RegistryError::ProvisionalExpired { .. } => "ProvisionalExpired",
        RegistryError::CertMismatch => "CertMismatch",
        RegistryError::LinkConflict { .. } => "LinkConflict",
        other => return format!("Err:other {other}"),
    };
    format!("Err:{name}")
}

fn run(reg: &Registry, op: &Op, now: u64) -> String {
    let a = actor("actor-1");
    let t = at(now);
    let r: Result<String, RegistryError> = match *op {
        Op::Provider(p) => reg.register_provider(t, a, p_of(p)).map(|o| match o {
            ProviderOutcome::Registered => "Registered".into(),
            ProviderOutcome::AlreadyRegistered => "AlreadyRegistered".into(),
        }),
        Op::Register {
            id,
            cert,
            provisional,
        } => if provisional {
            reg.register_provisional(t, a, id_of(id), cert_of(cert))
        } else {
            reg.register_full(t, a, id_of(id), cert_of(cert))
        }
        .map(|()| "Ok".into()),
        Op::Confirm { id, cert } => reg
            .confirm(t, a, id_of(id), cert_of(cert))
            .map(|()| "Ok".into()),
        Op::Link { id, p, s, replace } => {
            reg.link(t, a, id_of(id), p_of(p), s_of(s), replace)
                .map(|o| match o {
                    LinkOutcome::Linked => "Linked".into(),
                    LinkOutcome::AlreadyLinked => "AlreadyLinked".into(),
                    LinkOutcome::Replaced { .. } => "Replaced".into(),
                })
        }
        Op::Unlink { id, p } => reg.unlink(t, a, id_of(id), p_of(p)).map(|o| match o {
            UnlinkOutcome::Unlinked => "Unlinked".into(),
            UnlinkOutcome::NotLinked => "NotLinked".into(),
        }),
        Op::Revoke(ref certs) => {
            let certs: Vec<_> = certs.iter().map(|&c| cert_of(c)).collect();
            reg.revoke(t, a, &certs).map(|s| {
                format!(
                    "Revoked {}/{}/{}",
                    s.newly_revoked, s.already_known, s.suspended
                )
            })
        }
        Op::Rebind { id, cert } => reg
            .rebind(t, a, id_of(id), cert_of(cert))
            .map(|()| "Ok".into()),
        Op::Delete(id) => reg.delete(t, a, id_of(id)).map(|()| "Ok".into()),
        Op::Expire => reg.expire_provisional(t, a).map(|n| format!("Expired {n}")),
        Op::Compact => reg
            .store()
            .compact()
            .map(|_| "Ok".into())
            .map_err(RegistryError::from),
        Op::Advance(_) | Op::Crash => Ok("Ok".into()),
    };
    r.unwrap_or_else(|e| label_err(&e))
}

/// Everything a client can observe, in the model's terms.
type Observed = (
    BTreeMap<u64, (IdState, Option<u64>, Vec<(usize, usize)>)>,
    Vec<bool>,
    Vec<String>,
);

fn observe(reg: &Registry, now: u64) -> Observed {
    let mut ids = BTreeMap::new();
    for n in 0..IDS {
        if let Some(v) = reg.describe(&id_of(n)).expect("describe") {
            let cert = v
                .cert
                .map(|c| (0..CERTS).find(|&k| cert_of(k) == c).expect("known cert"));
            let mut links: Vec<(usize, usize)> = v
                .links
                .iter()
                .map(|(p, s, _, _)| {
                    (
                        PROVIDERS
                            .iter()
                            .position(|x| *x == p.as_str())
                            .expect("known provider"),
                        SERVICES
                            .iter()
                            .position(|x| x.as_bytes() == s.as_bytes())
                            .expect("known service"),
                    )
                })
                .collect();
            links.sort();
            ids.insert(n, (v.state, cert, links));
        }
    }
    let revoked = (0..CERTS)
        .map(|c| reg.is_revoked(&cert_of(c)).expect("ok"))
        .collect();
    let mut lookups = Vec::new();
    for n in 0..IDS {
        for p in 0..PROVIDERS.len() {
            lookups.push(match reg.lookup(at(now), &id_of(n), &p_of(p)) {
                Ok(Lookup::Linked(s)) => format!("Linked {s}"),
                Ok(other) => format!("{other:?}"),
                Err(e) => label_err(&e),
            });
        }
    }
    (ids, revoked, lookups)
}

fn expect(m: &Model, now: u64) -> Observed {
    let ids = m
        .ids
        .iter()
        .map(|(k, r)| {
            (
                *k,
                (
                    r.state,
                    r.cert,
                    r.links.iter().map(|(p, s)| (*p, *s)).collect(),
                ),
            )
        })
        .collect();
    let revoked = (0..CERTS).map(|c| m.revoked.contains(&c)).collect();
    let mut lookups = Vec::new();
    for n in 0..IDS {
        for p in 0..PROVIDERS.len() {
            lookups.push(m.lookup(n, p, now));
        }
    }
    (ids, revoked, lookups)
}

fn config() -> RegistryConfig {
    RegistryConfig {
        provisional_expiry_secs: EXPIRY,
        ..RegistryConfig::default()
    }
}

/// Reopens after a power cut, itself possibly cut by another one (`cut_at`) during recovery.
fn recover(fs: &SimFs, cut_at: Option<u64>) -> Registry {
    if let Some(k) = cut_at {
        fs.arm_crash(k);
        let r = Registry::open(Arc::new(fs.clone()) as Arc<dyn Fs>, config());
        let crashed = fs.crashed_since_armed();
        match r {
            Ok(reg) if !crashed => return reg,
            Ok(_) | Err(_) => {}
        }
    }
    Registry::open(Arc::new(fs.clone()) as Arc<dyn Fs>, config()).expect("recovery must succeed")
}

fn check_sequence(
    seed: u64,
    ops: Vec<(Op, Option<u64>, Option<u64>)>,
) -> Result<(), TestCaseError> {
    let fs = SimFs::new(seed);
    let small = StoreConfig {
        ids_shards: 2,
        certs_shards: 2,
        revoked_shards: 1,
    };
    let mut reg = Some(
        Registry::create(Arc::new(fs.clone()) as Arc<dyn Fs>, small, config()).expect("create"),
    );
    let mut model = Model::default();
    let mut now = 0u64;
    for (i, (op, cut, recovery_cut)) in ops.into_iter().enumerate() {
        if let Op::Advance(d) = op {
            now += d;
            continue;
        }
        if let Op::Crash = op {
            fs.crash();
            drop(reg.take());
            let r = recover(&fs, recovery_cut);
            prop_assert_eq!(
                observe(&r, now),
                expect(&model, now),
                "after power cut at step {}",
                i
            );
            reg = Some(r);
            continue;
        }
        let r = reg.as_ref().expect("open");
        let mut after = model.clone();
        let want = after.apply(&op, now);
        if let Some(k) = cut {
            fs.arm_crash(k);
        }
        let got = run(r, &op, now);
        if fs.crashed_since_armed() {
            // Cut mid-operation: unacknowledged, so all or nothing.
            drop(reg.take());
            let r = recover(&fs, recovery_cut);
            let seen = observe(&r, now);
            if seen == expect(&after, now) {
                model = after;
            } else {
                prop_assert_eq!(
                    seen,
                    expect(&model, now),
                    "step {}: {:?} half-applied",
                    i,
                    op
                );
            }
            reg = Some(r);
            continue;
        }
        prop_assert_eq!(&got, &want, "step {}: {:?}", i, op);
        model = after;
    }
    // Finally, a clean reopen shows exactly the model.
    drop(reg.take());
    let r = recover(&fs, None);
    prop_assert_eq!(observe(&r, now), expect(&model, now));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn registry_survives_power_cuts_like_the_model(
        seed in any::<u64>(),
        ops in proptest::collection::vec(
            (op(), proptest::option::weighted(0.15, 1..12u64), proptest::option::weighted(0.3, 1..6u64)),
            1..80,
        ),
    ) {
        check_sequence(seed, ops)?;
    }
}

/// A store that failed an fsync refuses every later write, rather than acknowledging writes
/// whose predecessors may be lost.
#[test]
fn a_failed_write_stops_all_writes_until_reopen() {
    let fs = SimFs::new(3);
    let reg = Registry::create(
        Arc::new(fs.clone()) as Arc<dyn Fs>,
        StoreConfig::default(),
        config(),
    )
    .expect("create");
    reg.register_provider(at(0), actor("op"), p_of(0))
        .expect("provider");
    fs.arm_crash(1);
    assert!(matches!(
        reg.register_full(at(1), actor("portal"), id_of(1), cert_of(1)),
        Err(RegistryError::Store(_))
    ));
    assert!(fs.crashed_since_armed());
    assert!(matches!(
        reg.register_full(at(1), actor("portal"), id_of(2), cert_of(2)),
        Err(RegistryError::Store(StoreError::Failed { .. }))
    ));
    // Reads still work on the failed store.
    assert_eq!(
        reg.lookup(at(1), &id_of(2), &p_of(0)).expect("read"),
        Lookup::UnknownId
    );
}
