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
//! This file holds the machinery every operation shares (the registry over its store, the
//! dictionaries, a write's begin and finish); the operations live by concern in `registration`,
//! `links`, `lookups`, `revocation` and `card` (the card-authenticated operations and partner
//! pushes); `record` and `schema` are the on-disk records and tables.
//!
//! [`Change`]: crate::store::Change

mod card;
mod links;
mod lookups;
mod mirror;
pub mod record;
mod registration;
mod replica;
mod revocation;
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
pub use card::{CardLookup, CardWrite};
pub use mirror::{Mirror, MirrorOp};
use record::{BoundCert, DictEntry, Link, encode_revocation, find_link};
pub use record::{IdRecord, LINKS_PER_ID_MAX, RecordEncoding};
pub use schema::{SCHEMA, StoreConfig, Table, concerns};

/// Default lifetime of an unconfirmed provisional registration (DESIGN §3: 30 days).
pub const PROVISIONAL_EXPIRY_SECS_DEFAULT: u64 = 30 * 86_400;
/// Most certificates revoked in one durable change; a longer list is split into several
/// changes, each atomic for its certificates and their suspensions.
pub const REVOCATIONS_PER_CHANGE_MAX: usize = 4096;
/// Changes a push holds other writes for, by default: 256 × 4,096 revocations, about 1M, a
/// few hundred milliseconds of apply (`ops/CAPACITY.md`, "Revocation pushes"), well under
/// the server's `write_timeout` for the writes that wait.
pub const REVOCATION_CHANGES_PER_HOLD_DEFAULT: usize = 256;
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
    /// Changes of at most [`REVOCATIONS_PER_CHANGE_MAX`] revocations a push writes in one
    /// exclusive write, made durable together while other writes wait; a longer push lets
    /// them in between such holds. At least 1.
    pub revocation_changes_per_hold: usize,
    /// How the ID records this registry writes are encoded (it reads both): encoding 1 while
    /// a cluster still has nodes of a build that reads only that.
    pub record_encoding: RecordEncoding,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            provisional_expiry_secs: PROVISIONAL_EXPIRY_SECS_DEFAULT,
            revocation_changes_per_hold: REVOCATION_CHANGES_PER_HOLD_DEFAULT,
            record_encoding: RecordEncoding::default(),
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
    providers: Arc<ArcSwap<Dict<ProviderId>>>,
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
            providers: Arc::new(ArcSwap::from_pointee(providers)),
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
        self.begin_with(self.store.write()?, now, actor)
    }

    /// As [`Registry::begin`], for a bulk write of several changes: other writers wait until
    /// it is durable (`Store::write_exclusive`).
    fn begin_exclusive(&self, now: Timestamp, actor: ActorId) -> Result<Tx<'_>, RegistryError> {
        self.begin_with(self.store.write_exclusive()?, now, actor)
    }

    fn begin_with<'a>(
        &'a self,
        tx: WriteTx<'a>,
        now: Timestamp,
        actor: ActorId,
    ) -> Result<Tx<'a>, RegistryError> {
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
        if let Some(seq) = self.submit(t, kind)? {
            self.store.wait_durable(seq)?;
        }
        Ok(())
    }

    /// Puts the dictionary entries of a write, submits it and publishes the names; returns its
    /// seq (`None` for a write that changed nothing). Durable once `Store::wait_durable`
    /// returns for the seq: a caller with several changes waits once, for the last.
    fn submit(&self, mut t: Tx<'_>, kind: OpKind) -> Result<Option<u64>, RegistryError> {
        let Some(names) = Self::put_names(&mut t) else {
            return Ok(None);
        };
        let Tx { tx, actor, now, .. } = t;
        // Names become visible while the writer lock is still held, so the next writer
        // numbers after them; a submit error leaves them unpublished.
        Ok(Some(tx.submit_with(now, actor, kind as u8, || {
            self.publish_names(names)
        })?))
    }

    /// In an exclusive write (`begin_exclusive`): submits the write so far as one change, as
    /// [`Registry::submit`] does, and goes on with the next in `t`. Every part is durable once
    /// `WriteTx::commit_parts` returns.
    fn submit_part(&self, t: &mut Tx<'_>, kind: OpKind) -> Result<Option<u64>, RegistryError> {
        let Some(names) = Self::put_names(t) else {
            return Ok(None);
        };
        Ok(Some(t.tx.submit_part(
            t.now,
            t.actor,
            kind as u8,
            || self.publish_names(names),
        )?))
    }

    /// Puts the dictionary entries of the names `t` adds, and takes those names for
    /// [`Registry::publish_names`]; `None` for a write that changes nothing.
    fn put_names(t: &mut Tx<'_>) -> Option<NewNames> {
        if t.tx.is_empty() && t.names.provider.is_none() {
            return None;
        }
        let names = std::mem::take(&mut t.names);
        let entry = |index| {
            DictEntry {
                index,
                at: t.now,
                actor: t.actor_index,
            }
            .encode()
        };
        if let Some((a, i)) = &names.actor {
            t.tx.put(Table::Actors, a.as_bytes(), Some(entry(*i)));
        }
        for (k, i) in &names.ca {
            t.tx.put(Table::Cas, k, Some(entry(*i)));
        }
        if let Some((p, i)) = &names.provider {
            t.tx.put(Table::Providers, p.as_bytes(), Some(entry(*i)));
        }
        Some(names)
    }

    /// Makes the names of a queued change visible to the next writers.
    fn publish_names(&self, names: NewNames) {
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
        Ok(BoundCert::of(self.ca_index(t, cert.ca_key_id())?, cert))
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

    /// Puts `rec` as the record of `id`, in the configured encoding.
    fn put_record(&self, t: &mut Tx<'_>, id: &MyKeyId, rec: &IdRecord) {
        t.tx.put(
            Table::Ids,
            id.as_bytes(),
            Some(rec.encode_as(self.config.record_encoding)),
        );
    }

    fn record(tx: &WriteTx<'_>, id: &MyKeyId) -> Result<Option<IdRecord>, RegistryError> {
        match tx.get(Table::Ids, id.as_bytes())? {
            None => Ok(None),
            Some(b) => IdRecord::decode(&b)
                .map(Some)
                .ok_or(RegistryError::BadRecord { what: "ID" }),
        }
    }
}
