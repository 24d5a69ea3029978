//! Revocation: certificates marked revoked and the IDs bound to them suspended, in changes of
//! at most `REVOCATIONS_PER_CHANGE_MAX` certificates each; the revocation index read by card
//! checks. Partner pushes (`card`) come through here.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Registry {
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
    /// `last` adds its puts to the final change, seeing the summary of the whole batch. The
    /// changes are submitted one after another and made durable together, by one group
    /// commit (one log write and fsync, one system-of-record batch), before it returns. A crash
    /// part-way leaves a prefix of them, each whole, and never the final one; a retry of the
    /// same push then finds its earlier certificates already revoked.
    pub(super) fn revoke_all(
        &self,
        now: Timestamp,
        actor: ActorId,
        certs: &mut dyn Iterator<Item = CertRef>,
        last: &mut dyn FnMut(&mut Tx<'_>, &RevokeSummary) -> Result<(), RegistryError>,
    ) -> Result<RevokeSummary, RegistryError> {
        let mut sum = RevokeSummary::default();
        let mut submitted = None;
        let r = self.submit_revocations(now, actor, certs, last, &mut sum, &mut submitted);
        // Even when a later change failed, the ones submitted before it are made durable
        // (and visible) now, not left to whichever write flushes next.
        if let Some(seq) = submitted {
            self.store.wait_durable(seq)?;
        }
        r.map(|()| sum)
    }

    fn submit_revocations(
        &self,
        now: Timestamp,
        actor: ActorId,
        certs: &mut dyn Iterator<Item = CertRef>,
        last: &mut dyn FnMut(&mut Tx<'_>, &RevokeSummary) -> Result<(), RegistryError>,
        sum: &mut RevokeSummary,
        submitted: &mut Option<u64>,
    ) -> Result<(), RegistryError> {
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
                self.revoke_one(&mut t, &cert, sum)?;
            }
            let done = certs.peek().is_none();
            if done {
                last(&mut t, sum)?;
            }
            *submitted = self.submit(t, OpKind::Revoke)?.or(*submitted);
            if done {
                return Ok(());
            }
        }
    }

    pub(super) fn revoke_one(
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
    pub(super) fn known_cert(&self, cert: &CertRef) -> Option<BoundCert> {
        let ca = *read(&self.cas).by_name.get(cert.ca_key_id())?;
        Some(BoundCert::of(ca, cert))
    }
}
