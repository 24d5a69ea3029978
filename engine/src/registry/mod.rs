//! The MyKey registry: every domain operation of the seed, over the store.
//!
//! Owns the domain rules of DESIGN §3: service providers registered before links name them;
//! full and provisional registration; confirmation by a municipal counter; expiry of unconfirmed
//! provisional IDs; link, unlink and replace; lookup; revocation and the suspension it causes;
//! re-binding to a new certificate; deletion; and the per-provider export. Every operation takes
//! an explicit `now` and the actor making it, and each write is one durable [`Change`] carrying
//! both, so the log and the records answer "who changed this, and when".
//!
//! It never reads a clock, never touches sockets, and never checks certificates itself: the
//! card operations (`card`) have the `jpki` layer authenticate the card and then check the
//! revocation index; the operations taking a [`CertRef`] trust their caller (bulk load, tests,
//! a replicated log) and must not be reachable from the network. A refused request changes nothing: every
//! check runs before the first put. Provider, actor and CA names are interned into dense `u32`
//! indexes kept in their own tables, so an ID record stays small.
//!
//! [`Change`]: crate::store::Change

mod card;
pub mod record;
mod schema;

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;

pub use crate::answer::{
    IdState, LinkOutcome, Lookup, ProviderOutcome, PushSummary, RevokeSummary, UnlinkOutcome,
};
use crate::id::{ActorId, CertRef, IdError, MyKeyId, ProviderId, ServiceId, Timestamp};
use crate::store::fs::Fs;
use crate::store::{Store, StoreError, WriteTx};
pub use card::CardLookup;
use record::{BoundCert, DictEntry, Link, encode_revocation, find_link};
pub use record::{IdRecord, LINKS_PER_ID_MAX};
pub use schema::{SCHEMA, StoreConfig, Table, concerns};

/// Default lifetime of an unconfirmed provisional registration (DESIGN §3: 30 days).
pub const PROVISIONAL_EXPIRY_SECS_DEFAULT: u64 = 30 * 86_400;
/// Most certificates revoked in one durable change; a longer list is split into several
/// changes, each atomic for its certificates and their suspensions.
pub const REVOCATIONS_PER_CHANGE_MAX: usize = 4096;
/// Largest index a dictionary hands out; `u32::MAX` marks "none" in records.
const DICT_INDEX_MAX: u32 = u32::MAX - 1;

/// The domain operation a change records, for the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum OpKind {
    /// A service provider was registered.
    RegisterProvider = 1,
    /// A full registration.
    RegisterFull = 2,
    /// A provisional registration.
    RegisterProvisional = 3,
    /// A municipal counter confirmed a provisional ID.
    Confirm = 4,
    /// Unconfirmed provisional IDs expired.
    Expire = 5,
    /// A service ID was linked or replaced.
    Link = 6,
    /// A service ID was unlinked.
    Unlink = 7,
    /// Certificates were revoked (and their IDs suspended).
    Revoke = 8,
    /// An ID was re-bound to a new certificate.
    Rebind = 9,
    /// An ID was deleted.
    Delete = 10,
}

impl OpKind {
    /// The kind with this code, if known.
    pub fn from_u8(b: u8) -> Option<Self> {
        use OpKind::*;
        [
            RegisterProvider,
            RegisterFull,
            RegisterProvisional,
            Confirm,
            Expire,
            Link,
            Unlink,
            Revoke,
            Rebind,
            Delete,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }

    /// Lower-case name for logs and the audit listing.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::RegisterProvider => "register-provider",
            OpKind::RegisterFull => "register-full",
            OpKind::RegisterProvisional => "register-provisional",
            OpKind::Confirm => "confirm",
            OpKind::Expire => "expire",
            OpKind::Link => "link",
            OpKind::Unlink => "unlink",
            OpKind::Revoke => "revoke",
            OpKind::Rebind => "rebind",
            OpKind::Delete => "delete",
        }
    }
}

/// Why a registry operation was refused or failed. Messages never carry a MyKey ID: the caller
/// knows which one it asked about, and errors end up in logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The store failed (I/O, corruption, limits).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A malformed identifier.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A record read from the store did not decode.
    #[error("a stored {what} record is malformed")]
    BadRecord {
        /// Which kind of record.
        what: &'static str,
    },
    /// The provider was never registered by the operator.
    #[error("service provider {provider} is not registered")]
    UnknownProvider {
        /// The provider.
        provider: ProviderId,
    },
    /// The ID is held by another registration ("cannot register provisionally").
    #[error("cannot register: the MyKey ID is already taken ({state})", state = state.name())]
    IdTaken {
        /// State of the registration holding it.
        state: IdState,
    },
    /// The ID was deleted; deleted IDs are never issued again, so that an old card or a
    /// provider's stale table cannot reach a new holder.
    #[error("cannot register: the MyKey ID was deleted and is not issued again")]
    IdDeleted,
    /// The certificate is already bound to a MyKey ID.
    #[error("certificate {cert} is already bound to a MyKey ID")]
    CertBound {
        /// The certificate.
        cert: CertRef,
    },
    /// The certificate is revoked.
    #[error("certificate {cert} is revoked")]
    CertRevoked {
        /// The certificate.
        cert: CertRef,
    },
    /// No registration holds this ID.
    #[error("the MyKey ID is not registered")]
    UnknownId,
    /// The operation needs another state.
    #[error("the MyKey ID is {state}, the operation needs {needed}", state = state.name())]
    WrongState {
        /// The state found.
        state: IdState,
        /// What the operation needs.
        needed: &'static str,
    },
    /// The provisional registration expired before confirmation.
    #[error("the provisional registration expired at {expired_at}")]
    ProvisionalExpired {
        /// When it expired.
        expired_at: Timestamp,
    },
    /// The certificate presented is not the one bound to the ID.
    #[error("the certificate presented is not the one bound to this MyKey ID")]
    CertMismatch,
    /// Another service ID is linked for this provider; pass `replace` to overwrite it.
    #[error(
        "a different service ID is already linked for {provider} (link with replace to change it)"
    )]
    LinkConflict {
        /// The provider.
        provider: ProviderId,
        /// The service ID linked now.
        existing: ServiceId,
    },
    /// The ID holds the most links allowed.
    #[error("the MyKey ID already holds {max} links, the limit")]
    TooManyLinks {
        /// The limit.
        max: usize,
    },
    /// The card failed a JPKI check (certificate, chain, challenge, signature) or a pushed
    /// revocation list was refused.
    #[error(transparent)]
    Jpki(#[from] crate::jpki::JpkiError),
    /// A CRL whose number is not above the last one applied for its CA: replayed or older.
    #[error(
        "CRL number {got} is not newer than {last}, the last applied for this CA; nothing changed"
    )]
    CrlNotNewer {
        /// The last number applied, hex.
        last: String,
        /// The number pushed, hex.
        got: String,
    },
    /// A push id was used before for different content.
    #[error("push id {push} was used before for different content; use a new push id")]
    PushIdReused {
        /// The push id.
        push: crate::id::PushId,
    },
    /// A dictionary (providers, actors, CAs) ran out of indexes.
    #[error("the {what} dictionary is full")]
    DictionaryFull {
        /// Which dictionary.
        what: &'static str,
    },
}

/// A registered provider resolved to its dense index by [`Registry::provider_ref`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProviderRef(u32);

/// One row of a provider's export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportRow {
    /// The MyKey ID.
    pub id: MyKeyId,
    /// Its state (a provider keeping its own table must honour suspensions).
    pub state: IdState,
    /// The provider's service ID.
    pub service: ServiceId,
    /// When the link was made.
    pub linked_at: Timestamp,
    /// Who made it.
    pub linked_by: ActorId,
}

/// An ID record with names resolved, for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdView {
    /// State.
    pub state: IdState,
    /// When the state was set.
    pub state_at: Timestamp,
    /// Who set it.
    pub state_by: ActorId,
    /// The bound certificate.
    pub cert: Option<CertRef>,
    /// Links: provider, service ID, when, by whom.
    pub links: Vec<(ProviderId, ServiceId, Timestamp, ActorId)>,
}

/// Registry settings.
#[derive(Clone, Copy, Debug)]
pub struct RegistryConfig {
    /// Seconds an unconfirmed provisional registration lives.
    pub provisional_expiry_secs: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            provisional_expiry_secs: PROVISIONAL_EXPIRY_SECS_DEFAULT,
        }
    }
}

impl AsRef<Store> for Registry {
    fn as_ref(&self) -> &Store {
        &self.store
    }
}

/// A name ↔ dense index dictionary.
#[derive(Clone)]
struct Dict<K> {
    by_name: HashMap<K, u32, ahash::RandomState>,
    names: Vec<K>,
}

impl<K: Clone + Eq + Hash> Default for Dict<K> {
    fn default() -> Self {
        Self {
            by_name: HashMap::default(),
            names: Vec::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> Dict<K> {
    fn insert(&mut self, name: K, index: u32) {
        let i = index as usize;
        if self.names.len() <= i {
            self.names.resize(i + 1, name.clone());
        }
        self.names[i] = name.clone();
        self.by_name.insert(name, index);
    }
}

/// Dictionary entries created by a write, made visible in memory only once it is submitted.
#[derive(Default)]
struct NewNames {
    actor: Option<(ActorId, u32)>,
    ca: Vec<(Vec<u8>, u32)>,
    provider: Option<(ProviderId, u32)>,
}

/// The registry over one store.
pub struct Registry {
    store: Store,
    config: RegistryConfig,
    providers: ArcSwap<Dict<ProviderId>>,
    actors: RwLock<Dict<ActorId>>,
    cas: RwLock<Dict<Vec<u8>>>,
    /// Serialises revocation pushes, so a CRL number is compared and recorded atomically.
    pushing: Mutex<()>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// A write being prepared: the store transaction and the names it adds.
struct Tx<'a> {
    tx: WriteTx<'a>,
    names: NewNames,
    actor: ActorId,
    actor_index: u32,
    now: Timestamp,
}

impl Registry {
    /// Creates a new, empty store in `fs` and a registry over it.
    pub fn create(
        fs: Arc<dyn Fs>,
        store: StoreConfig,
        config: RegistryConfig,
    ) -> Result<Self, RegistryError> {
        Self::over(Store::create(fs, store.layout()?)?, config)
    }

    /// Opens (and recovers) the store in `fs`.
    pub fn open(fs: Arc<dyn Fs>, config: RegistryConfig) -> Result<Self, RegistryError> {
        Self::over(Store::open(fs, &SCHEMA)?, config)
    }

    /// As [`Registry::open`], also saying what recovery did (changes replayed, torn bytes cut).
    pub fn open_with_report(
        fs: Arc<dyn Fs>,
        config: RegistryConfig,
    ) -> Result<(Self, crate::store::Recovery), RegistryError> {
        let (store, report) = Store::open_with_report(fs, &SCHEMA)?;
        Ok((Self::over(store, config)?, report))
    }

    /// A registry over an open store: loads the dictionaries.
    pub fn over(store: Store, config: RegistryConfig) -> Result<Self, RegistryError> {
        let mut providers = Dict::default();
        let mut actors = Dict::default();
        let mut cas = Dict::default();
        let mut bad = None;
        store.for_each(Table::Providers, |k, v| {
            match (ProviderId::parse(k), DictEntry::decode(v)) {
                (Ok(p), Some(e)) => providers.insert(p, e.index),
                _ => bad = Some("provider"),
            }
        })?;
        store.for_each(Table::Actors, |k, v| {
            match (ActorId::parse(k), DictEntry::decode(v)) {
                (Ok(a), Some(e)) => actors.insert(a, e.index),
                _ => bad = Some("actor"),
            }
        })?;
        store.for_each(Table::Cas, |k, v| match DictEntry::decode(v) {
            Some(e) => cas.insert(k.to_vec(), e.index),
            None => bad = Some("CA"),
        })?;
        if let Some(what) = bad {
            return Err(RegistryError::BadRecord { what });
        }
        Ok(Self {
            store,
            config,
            providers: ArcSwap::from_pointee(providers),
            actors: RwLock::new(actors),
            cas: RwLock::new(cas),
            pushing: Mutex::new(()),
        })
    }

    /// The store underneath (compaction, stats).
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn expires_at(&self, registered: Timestamp) -> Timestamp {
        registered.plus_secs(self.config.provisional_expiry_secs)
    }

    fn begin(&self, now: Timestamp, actor: ActorId) -> Result<Tx<'_>, RegistryError> {
        let tx = self.store.write()?;
        let mut names = NewNames::default();
        let known = read(&self.actors).by_name.get(&actor).copied();
        let actor_index = match known {
            Some(i) => i,
            None => {
                let i = read(&self.actors).names.len() as u32;
                if i > DICT_INDEX_MAX {
                    return Err(RegistryError::DictionaryFull { what: "actor" });
                }
                names.actor = Some((actor, i));
                i
            }
        };
        Ok(Tx {
            tx,
            names,
            actor,
            actor_index,
            now,
        })
    }

    /// Puts the dictionary entries of a write, submits it, publishes the names, and waits
    /// until it is durable.
    fn finish(&self, t: Tx<'_>, kind: OpKind) -> Result<(), RegistryError> {
        let Tx {
            mut tx,
            names,
            actor,
            actor_index,
            now,
        } = t;
        if tx.is_empty() && names.provider.is_none() {
            return Ok(());
        }
        let entry = |index| {
            DictEntry {
                index,
                at: now,
                actor: actor_index,
            }
            .encode()
        };
        if let Some((a, i)) = &names.actor {
            tx.put(Table::Actors, a.as_bytes(), Some(entry(*i)));
        }
        for (k, i) in &names.ca {
            tx.put(Table::Cas, k, Some(entry(*i)));
        }
        if let Some((p, i)) = &names.provider {
            tx.put(Table::Providers, p.as_bytes(), Some(entry(*i)));
        }
        let store = &self.store;
        // Names become visible while the writer lock is still held, so the next writer
        // numbers after them; a submit error leaves them unpublished.
        let seq = {
            let seq_or_err = tx.submit_with(now, actor, kind as u8, || {
                if let Some((a, i)) = names.actor {
                    write(&self.actors).insert(a, i);
                }
                for (k, i) in names.ca {
                    write(&self.cas).insert(k, i);
                }
                if let Some((p, i)) = names.provider {
                    self.providers.rcu(|d| {
                        let mut d = Dict::clone(d);
                        d.insert(p, i);
                        d
                    });
                }
            });
            seq_or_err?
        };
        store.wait_durable(seq)?;
        Ok(())
    }

    fn ca_index(&self, t: &mut Tx<'_>, ca: &[u8]) -> Result<u32, RegistryError> {
        if let Some(&i) = read(&self.cas).by_name.get(ca) {
            return Ok(i);
        }
        if let Some((_, i)) = t.names.ca.iter().find(|(k, _)| k == ca) {
            return Ok(*i);
        }
        let i = (read(&self.cas).names.len() + t.names.ca.len()) as u32;
        if i > DICT_INDEX_MAX {
            return Err(RegistryError::DictionaryFull { what: "CA" });
        }
        t.names.ca.push((ca.to_vec(), i));
        Ok(i)
    }

    fn bound(&self, t: &mut Tx<'_>, cert: &CertRef) -> Result<BoundCert, RegistryError> {
        let ca = self.ca_index(t, cert.ca_key_id())?;
        let mut serial = [0u8; crate::id::SERIAL_LEN_MAX];
        serial[..cert.serial().len()].copy_from_slice(cert.serial());
        Ok(BoundCert {
            ca,
            serial_len: cert.serial().len() as u8,
            serial,
        })
    }

    fn cert_of(&self, b: &BoundCert) -> Result<CertRef, RegistryError> {
        let cas = read(&self.cas);
        let ca = cas
            .names
            .get(b.ca as usize)
            .ok_or(RegistryError::BadRecord { what: "CA index" })?;
        Ok(CertRef::new(ca, b.serial())?)
    }

    fn provider_index(&self, provider: &ProviderId) -> Result<u32, RegistryError> {
        self.providers
            .load()
            .by_name
            .get(provider)
            .copied()
            .ok_or(RegistryError::UnknownProvider {
                provider: *provider,
            })
    }

    fn record(tx: &WriteTx<'_>, id: &MyKeyId) -> Result<Option<IdRecord>, RegistryError> {
        match tx.get(Table::Ids, id.as_bytes())? {
            None => Ok(None),
            Some(b) => IdRecord::decode(&b)
                .map(Some)
                .ok_or(RegistryError::BadRecord { what: "ID" }),
        }
    }

    /// Registers a service provider (an operator's act). Links may name it afterwards.
    pub fn register_provider(
        &self,
        now: Timestamp,
        actor: ActorId,
        provider: ProviderId,
    ) -> Result<ProviderOutcome, RegistryError> {
        let mut t = self.begin(now, actor)?;
        if t.tx.get(Table::Providers, provider.as_bytes())?.is_some() {
            return Ok(ProviderOutcome::AlreadyRegistered);
        }
        let i = self.providers.load().names.len() as u32;
        if i > DICT_INDEX_MAX {
            return Err(RegistryError::DictionaryFull { what: "provider" });
        }
        // The provider's dictionary entry is the whole change; `finish` writes it.
        t.names.provider = Some((provider, i));
        self.finish(t, OpKind::RegisterProvider)?;
        Ok(ProviderOutcome::Registered)
    }

    /// Checks that `cert` may be bound by this write: not revoked, and not bound to another
    /// registration, except a provisional one that expired, which this write frees.
    fn claim_cert(&self, t: &mut Tx<'_>, cert: &CertRef, key: &[u8]) -> Result<(), RegistryError> {
        if t.tx.get(Table::Revoked, key)?.is_some() {
            return Err(RegistryError::CertRevoked { cert: *cert });
        }
        let Some(holder) = t.tx.get(Table::Certs, key)? else {
            return Ok(());
        };
        let holder = MyKeyId::parse(&holder).map_err(|_| RegistryError::BadRecord {
            what: "certificate binding",
        })?;
        match Self::record(&t.tx, &holder)? {
            Some(r) if r.state == IdState::Provisional && t.now >= self.expires_at(r.state_at) => {
                t.tx.put(Table::Ids, holder.as_bytes(), None);
                t.tx.put(Table::Certs, key, None);
                Ok(())
            }
            _ => Err(RegistryError::CertBound { cert: *cert }),
        }
    }

    fn register(
        &self,
        now: Timestamp,
        actor: ActorId,
        id: MyKeyId,
        cert: CertRef,
        state: IdState,
    ) -> Result<(), RegistryError> {
        let mut t = self.begin(now, actor)?;
        let bound = self.bound(&mut t, &cert)?;
        let key = bound.key();
        let mut freed_cert = None;
        if let Some(old) = Self::record(&t.tx, &id)? {
            match old.state {
                IdState::Provisional if now >= self.expires_at(old.state_at) => {
                    freed_cert = old.cert;
                }
                IdState::Deleted => return Err(RegistryError::IdDeleted),
                s => return Err(RegistryError::IdTaken { state: s }),
            }
        }
        self.claim_cert(&mut t, &cert, &key)?;
        if let Some(c) = freed_cert
            && c.key() != key
        {
            t.tx.put(Table::Certs, &c.key(), None);
        }
        let rec = IdRecord {
            state,
            state_at: now,
            state_actor: t.actor_index,
            registered_at: now,
            registered_by: t.actor_index,
            cert: Some(bound),
            links: Vec::new(),
        };
        t.tx.put(Table::Ids, id.as_bytes(), Some(rec.encode()));
        t.tx.put(Table::Certs, &key, Some(id.as_bytes().to_vec()));
        let kind = if state == IdState::Active {
            OpKind::RegisterFull
        } else {
            OpKind::RegisterProvisional
        };
        self.finish(t, kind)
    }

    /// Full registration (本登録): `id` is the random string of the certificate's subject CN.
    /// Refused if the ID or the certificate is taken, the certificate revoked, or the ID deleted.
    pub fn register_full(
        &self,
        now: Timestamp,
        actor: ActorId,
        id: MyKeyId,
        cert: CertRef,
    ) -> Result<(), RegistryError> {
        self.register(now, actor, id, cert, IdState::Active)
    }

    /// Provisional registration (仮登録) of a chosen ID, bound to the holder's certificate.
    /// Refused ("cannot register provisionally") while an active, suspended or unexpired
    /// provisional registration holds the ID.
    pub fn register_provisional(
        &self,
        now: Timestamp,
        actor: ActorId,
        id: MyKeyId,
        cert: CertRef,
    ) -> Result<(), RegistryError> {
        self.register(now, actor, id, cert, IdState::Provisional)
    }

    /// Confirmation of a provisional ID by a municipal counter, with the card (its certificate)
    /// present.
    pub fn confirm(
        &self,
        now: Timestamp,
        actor: ActorId,
        id: MyKeyId,
        cert: CertRef,
    ) -> Result<(), RegistryError> {
        let mut t = self.begin(now, actor)?;
        let mut rec = Self::record(&t.tx, &id)?.ok_or(RegistryError::UnknownId)?;
        if rec.state != IdState::Provisional {
            return Err(RegistryError::WrongState {
                state: rec.state,
                needed: "provisional",
            });
        }
        let expired_at = self.expires_at(rec.state_at);
        if now >= expired_at {
            return Err(RegistryError::ProvisionalExpired { expired_at });
        }
        let bound = rec.cert.as_ref().map(|c| self.cert_of(c)).transpose()?;
        if bound != Some(cert) {
            return Err(RegistryError::CertMismatch);
        }
        rec.state = IdState::Active;
        rec.state_at = now;
        rec.state_actor = t.actor_index;
        t.tx.put(Table::Ids, id.as_bytes(), Some(rec.encode()));
        self.finish(t, OpKind::Confirm)
    }

    /// Frees every provisional ID unconfirmed past its expiry. Returns how many were freed.
    /// Lookups already answer "unknown ID" for them; this reclaims their space and certificates.
    pub fn expire_provisional(&self, now: Timestamp, actor: ActorId) -> Result<u64, RegistryError> {
        let mut expired = Vec::new();
        self.store.for_each(Table::Ids, |k, v| {
            if let Some(r) = IdRecord::decode(v)
                && r.state == IdState::Provisional
                && now >= self.expires_at(r.state_at)
                && let Ok(id) = MyKeyId::parse(k)
            {
                expired.push(id);
            }
        })?;
        let mut freed = 0;
        for chunk in expired.chunks(REVOCATIONS_PER_CHANGE_MAX) {
            let mut t = self.begin(now, actor)?;
            for id in chunk {
                // Re-check under the writer lock: it may have been confirmed meanwhile.
                let Some(r) = Self::record(&t.tx, id)? else {
                    continue;
                };
                if r.state != IdState::Provisional || now < self.expires_at(r.state_at) {
                    continue;
                }
                if let Some(c) = &r.cert {
                    t.tx.put(Table::Certs, &c.key(), None);
                }
                t.tx.put(Table::Ids, id.as_bytes(), None);
                freed += 1;
            }
            self.finish(t, OpKind::Expire)?;
        }
        Ok(freed)
    }

    /// Links `service` for `provider` to an active ID. The same service ID again answers
    /// [`LinkOutcome::AlreadyLinked`]; a different one is a [`RegistryError::LinkConflict`]
    /// unless `replace` is set.
    pub fn link(
        &self,
        now: Timestamp,
        actor: ActorId,
        id: MyKeyId,
        provider: ProviderId,
        service: ServiceId,
        replace: bool,
    ) -> Result<LinkOutcome, RegistryError> {
        let p = self.provider_index(&provider)?;
        let mut t = self.begin(now, actor)?;
        let mut rec = Self::record(&t.tx, &id)?.ok_or(RegistryError::UnknownId)?;
        self.check_usable(&rec, now)?;
        let link = Link {
            provider: p,
            service,
            at: now,
            actor: t.actor_index,
        };
        let outcome = match rec.links.binary_search_by_key(&p, |l| l.provider) {
            Ok(i) if rec.links[i].service == service => return Ok(LinkOutcome::AlreadyLinked),
            Ok(i) if !replace => {
                return Err(RegistryError::LinkConflict {
                    provider,
                    existing: rec.links[i].service,
                });
            }
            Ok(i) => {
                let previous = std::mem::replace(&mut rec.links[i], link).service;
                LinkOutcome::Replaced { previous }
            }
            Err(i) => {
                if rec.links.len() >= LINKS_PER_ID_MAX {
                    return Err(RegistryError::TooManyLinks {
                        max: LINKS_PER_ID_MAX,
                    });
                }
                rec.links.insert(i, link);
                LinkOutcome::Linked
            }
        };
        t.tx.put(Table::Ids, id.as_bytes(), Some(rec.encode()));
        self.finish(t, OpKind::Link)?;
        Ok(outcome)
    }

    /// Removes the link of `provider` from an ID.
    pub fn unlink(
        &self,
        now: Timestamp,
        actor: ActorId,
        id: MyKeyId,
        provider: ProviderId,
    ) -> Result<UnlinkOutcome, RegistryError> {
        let p = self.provider_index(&provider)?;
        let mut t = self.begin(now, actor)?;
        let mut rec = Self::record(&t.tx, &id)?.ok_or(RegistryError::UnknownId)?;
        self.check_usable(&rec, now)?;
        let Ok(i) = rec.links.binary_search_by_key(&p, |l| l.provider) else {
            return Ok(UnlinkOutcome::NotLinked);
        };
        rec.links.remove(i);
        t.tx.put(Table::Ids, id.as_bytes(), Some(rec.encode()));
        self.finish(t, OpKind::Unlink)?;
        Ok(UnlinkOutcome::Unlinked)
    }

    /// An ID can take links only when active.
    fn check_usable(&self, rec: &IdRecord, now: Timestamp) -> Result<(), RegistryError> {
        match rec.state {
            IdState::Active => Ok(()),
            IdState::Provisional if now >= self.expires_at(rec.state_at) => {
                Err(RegistryError::UnknownId)
            }
            state => Err(RegistryError::WrongState {
                state,
                needed: "active",
            }),
        }
    }

    /// Answers which service ID `provider` has for `id`. Allocation-free.
    #[inline]
    pub fn lookup(
        &self,
        now: Timestamp,
        id: &MyKeyId,
        provider: &ProviderId,
    ) -> Result<Lookup, RegistryError> {
        let p = self.provider_ref(provider)?;
        self.lookup_ref(now, id, p)
    }

    /// Resolves a registered provider once, so that many lookups for it skip the name lookup
    /// (the server resolves the providers a terminal's certificate names when it connects).
    /// Provider indexes are never reused, so a reference stays valid for the store's life.
    pub fn provider_ref(&self, provider: &ProviderId) -> Result<ProviderRef, RegistryError> {
        self.provider_index(provider).map(ProviderRef)
    }

    /// As [`Registry::lookup`], for a provider resolved by [`Registry::provider_ref`].
    #[inline]
    pub fn lookup_ref(
        &self,
        now: Timestamp,
        id: &MyKeyId,
        provider: ProviderRef,
    ) -> Result<Lookup, RegistryError> {
        let h = self.store.hash(id.as_bytes());
        self.lookup_hashed(now, h, id, provider.0)
    }

    #[inline]
    fn lookup_hashed(
        &self,
        now: Timestamp,
        h: u64,
        id: &MyKeyId,
        p: u32,
    ) -> Result<Lookup, RegistryError> {
        let found = self
            .store
            .get_hashed(Table::Ids, h, id.as_bytes(), |v| v.map(|b| find_link(b, p)))?;
        self.answer(now, found)
    }

    /// The lookup answer for what `find_link` found (`None`: no record).
    #[inline]
    fn answer(
        &self,
        now: Timestamp,
        found: Option<Option<(IdState, Timestamp, Option<ServiceId>)>>,
    ) -> Result<Lookup, RegistryError> {
        let Some(found) = found else {
            return Ok(Lookup::UnknownId);
        };
        let (state, state_at, service) = found.ok_or(RegistryError::BadRecord { what: "ID" })?;
        Ok(match state {
            IdState::Active => service.map_or(Lookup::NotLinked, Lookup::Linked),
            IdState::Provisional if now >= self.expires_at(state_at) => Lookup::UnknownId,
            IdState::Provisional => Lookup::Provisional,
            IdState::Suspended => Lookup::Suspended,
            IdState::Deleted => Lookup::Deleted,
        })
    }

    /// Answers a batch of lookups for one provider into `out` (cleared first), in order. The
    /// store overlaps the memory misses of the whole batch ([`Store::get_batch`]).
    pub fn lookup_batch(
        &self,
        now: Timestamp,
        provider: &ProviderId,
        ids: &[MyKeyId],
        out: &mut Vec<Result<Lookup, RegistryError>>,
    ) -> Result<(), RegistryError> {
        let p = self.provider_ref(provider)?;
        out.clear();
        self.lookup_batch_each(now, p, ids.iter().copied(), |r| out.push(r))
    }

    /// Answers a batch of lookups for a provider resolved by [`Registry::provider_ref`],
    /// calling `f` with each answer in order, without allocating: the IDs are read
    /// [`crate::store::BATCH_WINDOW`] at a time and the store overlaps each window's memory
    /// misses ([`Store::get_batch`]). The server answers `LOOKUP_BATCH` through it.
    pub fn lookup_batch_each(
        &self,
        now: Timestamp,
        provider: ProviderRef,
        ids: impl IntoIterator<Item = MyKeyId>,
        mut f: impl FnMut(Result<Lookup, RegistryError>),
    ) -> Result<(), RegistryError> {
        const W: usize = crate::store::BATCH_WINDOW;
        let p = provider.0;
        let mut window = [[0u8; crate::id::MYKEY_ID_LEN]; W];
        let mut n = 0;
        let mut ids = ids.into_iter();
        loop {
            let next = ids.next();
            if let Some(id) = next {
                window[n] = *id.as_bytes();
                n += 1;
            }
            if n == W || (next.is_none() && n > 0) {
                let mut keys = [&[][..]; W];
                for (k, id) in keys.iter_mut().zip(&window[..n]) {
                    *k = id;
                }
                self.store.get_batch(Table::Ids, &keys[..n], |_, v| {
                    f(self.answer(now, v.map(|b| find_link(b, p))));
                })?;
                n = 0;
            }
            if next.is_none() {
                return Ok(());
            }
        }
    }

    /// Revokes certificates and suspends the IDs bound to them, each certificate in the same
    /// durable change as its suspension. Idempotent: a known revocation changes nothing.
    pub fn revoke(
        &self,
        now: Timestamp,
        actor: ActorId,
        certs: &[CertRef],
    ) -> Result<RevokeSummary, RegistryError> {
        self.revoke_all(now, actor, &mut certs.iter().copied(), &mut |_, _| Ok(()))
    }

    /// The revocation loop: `certs` in changes of at most [`REVOCATIONS_PER_CHANGE_MAX`];
    /// `last` adds its puts to the final change, seeing the summary of the whole batch.
    fn revoke_all(
        &self,
        now: Timestamp,
        actor: ActorId,
        certs: &mut dyn Iterator<Item = CertRef>,
        last: &mut dyn FnMut(&mut Tx<'_>, &RevokeSummary) -> Result<(), RegistryError>,
    ) -> Result<RevokeSummary, RegistryError> {
        let mut sum = RevokeSummary::default();
        let mut certs = certs.peekable();
        loop {
            let mut t = self.begin(now, actor)?;
            let mut taken = 0;
            while let Some(cert) = certs.peek().copied() {
                // Keep each change well under the log's record limit, whatever the records hold.
                if taken == REVOCATIONS_PER_CHANGE_MAX
                    || t.tx.approx_len() > crate::store::wal::CHANGE_LEN_MAX / 2
                {
                    break;
                }
                certs.next();
                taken += 1;
                self.revoke_one(&mut t, &cert, &mut sum)?;
            }
            let done = certs.peek().is_none();
            if done {
                last(&mut t, &sum)?;
            }
            self.finish(t, OpKind::Revoke)?;
            if done {
                return Ok(sum);
            }
        }
    }

    fn revoke_one(
        &self,
        t: &mut Tx<'_>,
        cert: &CertRef,
        sum: &mut RevokeSummary,
    ) -> Result<(), RegistryError> {
        let now = t.now;
        let key = self.bound(t, cert)?.key();
        if t.tx.get(Table::Revoked, &key)?.is_some() {
            sum.already_known += 1;
            return Ok(());
        }
        t.tx.put(
            Table::Revoked,
            &key,
            Some(encode_revocation(now, t.actor_index)),
        );
        sum.newly_revoked += 1;
        let Some(idb) = t.tx.get(Table::Certs, &key)? else {
            return Ok(());
        };
        let id = MyKeyId::parse(&idb).map_err(|_| RegistryError::BadRecord {
            what: "certificate binding",
        })?;
        let mut rec = Self::record(&t.tx, &id)?.ok_or(RegistryError::BadRecord {
            what: "certificate binding",
        })?;
        // An expired provisional registration is void already (its ID and certificate are
        // free); suspending it would hold the ID forever.
        let void = rec.state == IdState::Provisional && now >= self.expires_at(rec.state_at);
        if !void && matches!(rec.state, IdState::Active | IdState::Provisional) {
            rec.state = IdState::Suspended;
            rec.state_at = now;
            rec.state_actor = t.actor_index;
            t.tx.put(Table::Ids, id.as_bytes(), Some(rec.encode()));
            sum.suspended += 1;
        }
        Ok(())
    }

    /// Whether a certificate is recorded as revoked.
    pub fn is_revoked(&self, cert: &CertRef) -> Result<bool, RegistryError> {
        // A certificate of a CA never seen cannot have been revoked here.
        let Some(b) = self.known_cert(cert) else {
            return Ok(false);
        };
        let mut key = [0u8; record::CERT_KEY_LEN_MAX];
        Ok(self
            .store
            .get(Table::Revoked, b.key_in(&mut key), |v| v.is_some())?)
    }

    /// The certificate in store form, if its CA is in the dictionary.
    fn known_cert(&self, cert: &CertRef) -> Option<BoundCert> {
        let ca = *read(&self.cas).by_name.get(cert.ca_key_id())?;
        let mut serial = [0u8; crate::id::SERIAL_LEN_MAX];
        serial[..cert.serial().len()].copy_from_slice(cert.serial());
        Some(BoundCert {
            ca,
            serial_len: cert.serial().len() as u8,
            serial,
        })
    }

    /// Re-binds an active or suspended ID to the holder's new certificate (after a card
    /// renewal or reissue), keeping every link. The old certificate's binding is removed.
    pub fn rebind(
        &self,
        now: Timestamp,
        actor: ActorId,
        id: MyKeyId,
        new_cert: CertRef,
    ) -> Result<(), RegistryError> {
        let mut t = self.begin(now, actor)?;
        let bound = self.bound(&mut t, &new_cert)?;
        let key = bound.key();
        let mut rec = Self::record(&t.tx, &id)?.ok_or(RegistryError::UnknownId)?;
        if !matches!(rec.state, IdState::Active | IdState::Suspended) {
            return Err(RegistryError::WrongState {
                state: rec.state,
                needed: "active or suspended",
            });
        }
        self.claim_cert(&mut t, &new_cert, &key)?;
        if let Some(old) = &rec.cert {
            t.tx.put(Table::Certs, &old.key(), None);
        }
        rec.cert = Some(bound);
        rec.state = IdState::Active;
        rec.state_at = now;
        rec.state_actor = t.actor_index;
        t.tx.put(Table::Ids, id.as_bytes(), Some(rec.encode()));
        t.tx.put(Table::Certs, &key, Some(id.as_bytes().to_vec()));
        self.finish(t, OpKind::Rebind)
    }

    /// Deletes an ID: its links and certificate binding go; the ID stays as a tombstone so that
    /// lookups answer "deleted" and it is never issued again.
    pub fn delete(&self, now: Timestamp, actor: ActorId, id: MyKeyId) -> Result<(), RegistryError> {
        let mut t = self.begin(now, actor)?;
        let mut rec = Self::record(&t.tx, &id)?.ok_or(RegistryError::UnknownId)?;
        if rec.state == IdState::Deleted {
            return Err(RegistryError::WrongState {
                state: rec.state,
                needed: "not deleted",
            });
        }
        if let Some(c) = rec.cert.take() {
            t.tx.put(Table::Certs, &c.key(), None);
        }
        rec.links.clear();
        rec.state = IdState::Deleted;
        rec.state_at = now;
        rec.state_actor = t.actor_index;
        t.tx.put(Table::Ids, id.as_bytes(), Some(rec.encode()));
        self.finish(t, OpKind::Delete)
    }

    /// The ID record with names resolved, or `None`.
    pub fn describe(&self, id: &MyKeyId) -> Result<Option<IdView>, RegistryError> {
        let Some(b) = self
            .store
            .get(Table::Ids, id.as_bytes(), |v| v.map(<[u8]>::to_vec))?
        else {
            return Ok(None);
        };
        let rec = IdRecord::decode(&b).ok_or(RegistryError::BadRecord { what: "ID" })?;
        let providers = self.providers.load();
        let links = rec
            .links
            .iter()
            .map(|l| {
                let p = providers.names.get(l.provider as usize).copied().ok_or(
                    RegistryError::BadRecord {
                        what: "provider index",
                    },
                )?;
                Ok((p, l.service, l.at, self.actor_name(l.actor)?))
            })
            .collect::<Result<_, RegistryError>>()?;
        Ok(Some(IdView {
            state: rec.state,
            state_at: rec.state_at,
            state_by: self.actor_name(rec.state_actor)?,
            cert: rec.cert.as_ref().map(|c| self.cert_of(c)).transpose()?,
            links,
        }))
    }

    fn actor_name(&self, i: u32) -> Result<ActorId, RegistryError> {
        read(&self.actors)
            .names
            .get(i as usize)
            .copied()
            .ok_or(RegistryError::BadRecord {
                what: "actor index",
            })
    }

    /// Calls `f` with every (MyKey ID, service ID) pair linked for `provider`, with the ID's
    /// state and who linked it when. Returns the number of rows.
    pub fn export(
        &self,
        provider: &ProviderId,
        mut f: impl FnMut(&ExportRow),
    ) -> Result<u64, RegistryError> {
        let p = self.provider_index(provider)?;
        let actors = read(&self.actors).names.clone();
        let mut n = 0;
        let mut bad = None;
        self.store.for_each(Table::Ids, |k, v| {
            let rec = match (MyKeyId::parse(k), IdRecord::decode(v)) {
                (Ok(id), Some(rec)) => (id, rec),
                _ => {
                    bad = Some(RegistryError::BadRecord { what: "ID" });
                    return;
                }
            };
            let (id, rec) = rec;
            if let Ok(i) = rec.links.binary_search_by_key(&p, |l| l.provider) {
                let l = rec.links[i];
                match actors.get(l.actor as usize) {
                    Some(a) => {
                        f(&ExportRow {
                            id,
                            state: rec.state,
                            service: l.service,
                            linked_at: l.at,
                            linked_by: *a,
                        });
                        n += 1;
                    }
                    None => {
                        bad = Some(RegistryError::BadRecord {
                            what: "actor index",
                        })
                    }
                }
            }
        })?;
        match bad {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Registered providers, in registration order.
    pub fn providers(&self) -> Vec<ProviderId> {
        self.providers.load().names.clone()
    }
}
