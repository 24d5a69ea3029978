//! Changes made elsewhere, applied here: a cluster node applies the writer's changes (rows of
//! PostgreSQL's `change_log`) through the same store path a local write takes, under their own
//! seqs, and keeps its dictionaries in step with them. Checks no domain rule (the writer did);
//! refuses a change that is out of order or writes outside the schema.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::Change;

impl Registry {
    /// Applies `change`, whose seq must be the store's next, and returns once it is durable in
    /// the local log and visible.
    pub fn apply_replicated(&self, change: &Change) -> Result<(), RegistryError> {
        self.apply_replicated_batch(std::slice::from_ref(change))
    }

    /// Applies consecutive `changes` (the first one's seq the store's next) and returns once
    /// all are durable and visible: one local fsync for the batch, as a group commit. An error
    /// part-way leaves the changes queued before it to the next flush: the node must stop
    /// following (its tail no longer knows its store's seq) until it is reopened.
    pub fn apply_replicated_batch(&self, changes: &[Change]) -> Result<(), RegistryError> {
        let mut last = None;
        for c in changes {
            last = Some(self.submit_replicated(c)?);
        }
        if let Some(seq) = last {
            self.store.wait_durable(seq)?;
        }
        Ok(())
    }

    /// Queues one replicated change, its dictionary entries published with it.
    fn submit_replicated(&self, change: &Change) -> Result<u64, RegistryError> {
        let mut providers = Vec::new();
        let mut actors = Vec::new();
        let mut cas = Vec::new();
        for p in &change.puts {
            let (Some(table), Some(v)) = (Table::from_id(p.table), &p.value) else {
                continue;
            };
            let entry = || {
                DictEntry::decode(v).ok_or(RegistryError::BadRecord {
                    what: "dictionary entry",
                })
            };
            match table {
                Table::Providers => providers.push((ProviderId::parse(&p.key)?, entry()?.index)),
                Table::Actors => actors.push((ActorId::parse(&p.key)?, entry()?.index)),
                Table::Cas => cas.push((p.key.clone(), entry()?.index)),
                _ => {}
            }
        }
        Ok(self.store.write()?.submit_replicated(change, || {
            for (a, i) in actors {
                write(&self.actors).insert(a, i);
            }
            for (k, i) in cas {
                write(&self.cas).insert(k, i);
            }
            if !providers.is_empty() {
                self.providers.rcu(|d| {
                    let mut d = Dict::clone(d);
                    for (p, i) in &providers {
                        d.insert(*p, *i);
                    }
                    d
                });
            }
        })?)
    }
}
