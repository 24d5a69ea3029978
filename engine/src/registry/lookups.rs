//! Reads: a lookup of (ID, provider), batched lookups through the store's prefetching path
//! (allocation-free), an ID's full record for operators, a provider's export and the provider
//! list. Never writes.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Registry {
    /// Answers which service ID `provider` has for `id`. Allocation-free.
    #[inline]
    pub fn lookup(
        &self,
        now: Timestamp,
        id: &MyKeyId,
        provider: &ProviderId,
    ) -> Result<Lookup, RegistryError> {
        // The ID's bucket is requested first, so its memory miss overlaps the provider's
        // name lookup instead of following it; the view that prefetched it reads it.
        let h = self.store.hash(id.as_bytes());
        let ids = self.store.reader(Table::Ids);
        ids.prefetch(h);
        let p = self.provider_ref(provider)?;
        ids.get_hashed(h, id.as_bytes(), |v| self.answer(now, v, p.0))?
    }

    /// Resolves a registered provider once, so that many lookups for it skip the name lookup
    /// (the server resolves a `LOOKUP_BATCH`'s provider once for the whole batch; a single
    /// `LOOKUP` resolves its own, while its bucket is being fetched). Provider indexes are
    /// never reused, so a reference stays valid for the store's life.
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
        // The answer is made while the record's bytes are borrowed, so its service ID is
        // decoded once, into the answer itself.
        let h = self.store.hash(id.as_bytes());
        self.store.get_hashed(Table::Ids, h, id.as_bytes(), |v| {
            self.answer(now, v, provider.0)
        })?
    }

    /// The lookup answer for the ID record `record` (`None`: no record) and provider `p`.
    #[inline]
    pub(super) fn answer(
        &self,
        now: Timestamp,
        record: Option<&[u8]>,
        p: u32,
    ) -> Result<Lookup, RegistryError> {
        let Some(record) = record else {
            return Ok(Lookup::UnknownId);
        };
        let bad = || RegistryError::BadRecord { what: "ID" };
        let found = find_link(record, p).ok_or_else(bad)?;
        Ok(match found.state {
            IdState::Active => match found.service().ok_or_else(bad)? {
                Some(s) => Lookup::Linked(s),
                None => Lookup::NotLinked,
            },
            IdState::Provisional if now >= self.expires_at(found.state_at) => Lookup::UnknownId,
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
                    f(self.answer(now, v, p));
                })?;
                n = 0;
            }
            if next.is_none() {
                return Ok(());
            }
        }
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

    pub(super) fn actor_name(&self, i: u32) -> Result<ActorId, RegistryError> {
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
