//! Registration and the life of an ID: service providers registered, full and provisional
//! registration, confirmation by a municipal counter, expiry of unconfirmed provisional IDs,
//! re-binding to a new certificate, and deletion. Every check runs before the first put.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Registry {
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
    pub(super) fn claim_cert(
        &self,
        t: &mut Tx<'_>,
        cert: &CertRef,
        key: &[u8],
    ) -> Result<(), RegistryError> {
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

    pub(super) fn register(
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
        self.put_record(&mut t, &id, &rec);
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
        self.put_record(&mut t, &id, &rec);
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
        self.put_record(&mut t, &id, &rec);
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
        self.put_record(&mut t, &id, &rec);
        self.finish(t, OpKind::Delete)
    }
}
