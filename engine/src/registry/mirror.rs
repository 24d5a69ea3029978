//! The relational mirror of a change (engine/CLUSTER.md, "Tables"): what a logged change does
//! to providers, IDs, certificate bindings and links, in the terms the cluster's PostgreSQL
//! tables keep, so that their constraints fence engine bugs and split brains. Reads the
//! registry's dictionaries; never writes.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::Change;

/// One row change of the mirror, in the order the change made it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MirrorOp {
    /// A provider was registered.
    Provider(ProviderId),
    /// An ID's record was written: its state and all its links now.
    Id {
        /// The MyKey ID.
        id: MyKeyId,
        /// Its state.
        state: IdState,
        /// Its links, one per provider.
        links: Vec<(ProviderId, ServiceId)>,
    },
    /// An ID's record was removed (an unconfirmed provisional registration expired).
    Forget {
        /// The MyKey ID.
        id: MyKeyId,
    },
    /// A certificate (the engine's key of it: CA index and serial) was bound to an ID.
    Bind {
        /// The certificate key.
        cert: Vec<u8>,
        /// The ID.
        id: MyKeyId,
    },
    /// A certificate binding was removed (a re-bind or a deletion).
    Unbind {
        /// The certificate key.
        cert: Vec<u8>,
    },
}

impl MirrorOp {
    /// The state's number in the mirror (`ids.state`): 1 active, 2 provisional, 3 suspended,
    /// 4 deleted.
    pub fn state_code(state: IdState) -> i16 {
        match state {
            IdState::Active => 1,
            IdState::Provisional => 2,
            IdState::Suspended => 3,
            IdState::Deleted => 4,
        }
    }
}

impl Registry {
    /// What `change` does to the mirror. Providers it names must be in this registry's
    /// dictionary (they are, once the change has been submitted here).
    pub fn mirror(&self, change: &Change) -> Result<Vec<MirrorOp>, RegistryError> {
        self.mirror_handle().ops(change)
    }

    /// A handle that computes mirrors from this registry's provider dictionary as it grows,
    /// for the cluster writer's thread.
    pub fn mirror_handle(&self) -> Mirror {
        Mirror(self.providers.clone())
    }
}

/// Computes a change's mirror ([`Registry::mirror`]) from a registry's live provider dictionary.
#[derive(Clone)]
pub struct Mirror(Arc<ArcSwap<Dict<ProviderId>>>);

impl Mirror {
    /// What `change` does to the mirror.
    pub fn ops(&self, change: &Change) -> Result<Vec<MirrorOp>, RegistryError> {
        let mut ops = Vec::new();
        let providers = self.0.load();
        for p in &change.puts {
            match Table::from_id(p.table) {
                Some(Table::Providers) if p.value.is_some() => {
                    ops.push(MirrorOp::Provider(ProviderId::parse(&p.key)?));
                }
                Some(Table::Ids) => {
                    let id = MyKeyId::parse(&p.key)?;
                    let Some(v) = &p.value else {
                        ops.push(MirrorOp::Forget { id });
                        continue;
                    };
                    let rec = IdRecord::decode(v).ok_or(RegistryError::BadRecord { what: "ID" })?;
                    let links = rec
                        .links
                        .iter()
                        .map(|l| {
                            providers
                                .names
                                .get(l.provider as usize)
                                .map(|name| (*name, l.service))
                                .ok_or(RegistryError::BadRecord {
                                    what: "provider index",
                                })
                        })
                        .collect::<Result<_, _>>()?;
                    ops.push(MirrorOp::Id {
                        id,
                        state: rec.state,
                        links,
                    });
                }
                Some(Table::Certs) => match &p.value {
                    Some(v) => ops.push(MirrorOp::Bind {
                        cert: p.key.clone(),
                        id: MyKeyId::parse(v)?,
                    }),
                    None => ops.push(MirrorOp::Unbind {
                        cert: p.key.clone(),
                    }),
                },
                _ => {}
            }
        }
        Ok(ops)
    }
}
