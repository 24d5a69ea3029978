//! Links: a service ID linked (or replaced, when asked) and unlinked for one provider, on an
//! ID whose state allows it. Every check runs before the first put.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Registry {
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
        let (p, mut t, mut rec) = self.begin_on_usable(now, actor, &provider, &id)?;
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
        self.put_record(&mut t, &id, &rec);
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
        let (p, mut t, mut rec) = self.begin_on_usable(now, actor, &provider, &id)?;
        let Ok(i) = rec.links.binary_search_by_key(&p, |l| l.provider) else {
            return Ok(UnlinkOutcome::NotLinked);
        };
        rec.links.remove(i);
        self.put_record(&mut t, &id, &rec);
        self.finish(t, OpKind::Unlink)?;
        Ok(UnlinkOutcome::Unlinked)
    }

    /// Starts a link change: the provider's index, the write, and the ID's record, checked
    /// usable.
    fn begin_on_usable(
        &self,
        now: Timestamp,
        actor: ActorId,
        provider: &ProviderId,
        id: &MyKeyId,
    ) -> Result<(u32, Tx<'_>, IdRecord), RegistryError> {
        let p = self.provider_index(provider)?;
        let t = self.begin(now, actor)?;
        let rec = Self::record(&t.tx, id)?.ok_or(RegistryError::UnknownId)?;
        self.check_usable(&rec, now)?;
        Ok((p, t, rec))
    }

    /// An ID can take links only when active.
    pub(super) fn check_usable(&self, rec: &IdRecord, now: Timestamp) -> Result<(), RegistryError> {
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
}
