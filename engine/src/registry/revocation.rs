//! Revocation: certificates marked revoked and the IDs bound to them suspended, in changes of
//! at most `REVOCATIONS_PER_CHANGE_MAX` certificates each; the revocation index read by card
//! checks. Partner pushes (`card`) come through here. Whether a certificate is revoked already,
//! and for those that are not whether an ID is bound to it, is read for `BATCH_WINDOW`
//! certificates at a time (`Window`), in batched store reads, and through the transaction only
//! for a key written since; it never writes outside a transaction.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::id::CA_KEY_ID_LEN_MAX;
use crate::store::BATCH_WINDOW;

impl Registry {
    /// Revokes certificates and suspends the IDs bound to them, each certificate in the same
    /// durable change as its suspension. Idempotent: a known revocation changes nothing.
    pub fn revoke(
        &self,
        now: Timestamp,
        actor: ActorId,
        certs: &[CertRef],
    ) -> Result<RevokeSummary, RegistryError> {
        let distinct = certs
            .windows(2)
            .all(|w| cert_order(&w[0]) < cert_order(&w[1]));
        self.revoke_all(
            now,
            actor,
            &mut certs.iter().copied(),
            distinct,
            &mut |_, _| Ok(()),
        )
    }

    /// The revocation loop: `certs` in changes of at most [`REVOCATIONS_PER_CHANGE_MAX`];
    /// `last` adds its puts to the final change, seeing the summary of the whole batch. The
    /// changes are parts of exclusive writes (`Store::write_exclusive`) of at most
    /// `revocation_changes_per_hold` changes each, each made durable together, by one log
    /// write and fsync and one system-of-record batch, while other writers wait; the last
    /// before it returns. A crash part-way leaves a prefix of the changes, each whole, and
    /// never the final one; a retry of the same push then finds its earlier certificates
    /// already revoked. `distinct` says that no certificate comes twice (the caller checked
    /// that they ascend): the revocations are then put unread (`WriteTx::put_unread`), with no
    /// entry in the writers' pending map, since this push never asks for them again.
    pub(super) fn revoke_all(
        &self,
        now: Timestamp,
        actor: ActorId,
        certs: &mut dyn Iterator<Item = CertRef>,
        distinct: bool,
        last: &mut dyn FnMut(&mut Tx<'_>, &RevokeSummary) -> Result<(), RegistryError>,
    ) -> Result<RevokeSummary, RegistryError> {
        let mut sum = RevokeSummary::default();
        let mut certs = certs.peekable();
        let mut window = Window::default();
        loop {
            let mut t = self.begin_exclusive(now, actor)?;
            let r =
                self.submit_revocations(&mut t, &mut certs, &mut window, distinct, last, &mut sum);
            // Even when a later change failed, the ones submitted before it are made durable
            // (and visible) now, before another writer comes in; the failed one is dropped.
            let durable = t.tx.commit_parts();
            let done = r?;
            durable?;
            if done {
                return Ok(sum);
            }
        }
    }

    /// Submits changes of the revocation as parts of `t`, at most
    /// `revocation_changes_per_hold` of them; whether the last is among them (else the caller
    /// makes these durable and goes on in a new exclusive write, with `certs` and `window`).
    fn submit_revocations(
        &self,
        t: &mut Tx<'_>,
        certs: &mut std::iter::Peekable<&mut dyn Iterator<Item = CertRef>>,
        window: &mut Window,
        distinct: bool,
        last: &mut dyn FnMut(&mut Tx<'_>, &RevokeSummary) -> Result<(), RegistryError>,
        sum: &mut RevokeSummary,
    ) -> Result<bool, RegistryError> {
        for _ in 0..self.config.revocation_changes_per_hold.max(1) {
            // Certificates carried over from the last change are bound and read again.
            window.begin_change(self, t)?;
            let mut taken = 0;
            loop {
                if window.next == window.len {
                    window.fill(self, t, certs)?;
                    if window.len == 0 {
                        break;
                    }
                }
                // Keep each change well under the log's record limit, whatever the records hold.
                if taken == REVOCATIONS_PER_CHANGE_MAX
                    || t.tx.approx_len() > crate::store::wal::CHANGE_LEN_MAX / 2
                {
                    break;
                }
                let i = window.next;
                window.next += 1;
                taken += 1;
                let key = window.key(i);
                // The batch read stands unless this push (or a write queued before it) has
                // put the key since.
                let revoked = if t.tx.overrides(Table::Revoked, key) {
                    t.tx.get(Table::Revoked, key)?.is_some()
                } else {
                    window.in_store[i]
                };
                // Likewise whether an ID is bound to it, read only for those not revoked in
                // the store (`None`: not read).
                let bound = (!window.in_store[i] && !t.tx.overrides(Table::Certs, key))
                    .then_some(window.bound[i]);
                self.revoke_key(t, key, revoked, bound, distinct, sum)?;
            }
            let done = window.next == window.len && certs.peek().is_none();
            if done {
                last(t, sum)?;
            }
            self.submit_part(t, OpKind::Revoke)?;
            if done {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Revokes the certificate of store key `key`, which is revoked already when `revoked`,
    /// and suspends the ID bound to it; `bound`, when known, says whether an ID is (else the
    /// transaction is asked). `distinct`: the revocation is put unread, as in `revoke_all`.
    fn revoke_key(
        &self,
        t: &mut Tx<'_>,
        key: &[u8],
        revoked: bool,
        bound: Option<bool>,
        distinct: bool,
        sum: &mut RevokeSummary,
    ) -> Result<(), RegistryError> {
        let now = t.now;
        if revoked {
            sum.already_known += 1;
            return Ok(());
        }
        let value = Some(encode_revocation(now, t.actor_index));
        if distinct {
            t.tx.put_unread(Table::Revoked, key, value);
        } else {
            t.tx.put(Table::Revoked, key, value);
        }
        sum.newly_revoked += 1;
        if bound == Some(false) {
            return Ok(());
        }
        let Some(idb) = t.tx.get(Table::Certs, key)? else {
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

/// The order in which certificates a revocation names must ascend for it to know them
/// distinct: by CA key identifier, then serial (shortest first, then big-endian bytes: a
/// serial has no leading zero byte, so this is the serials' numeric order).
fn cert_order(c: &CertRef) -> (&[u8], usize, &[u8]) {
    (c.ca_key_id(), c.serial().len(), c.serial())
}

/// Certificates of a revocation, [`BATCH_WINDOW`] at a time, with whether the visible store
/// holds each as revoked and, for those it does not, whether it binds an ID to it: batched
/// reads (`Store::get_batch`) overlap their memory misses, where one read per certificate
/// would wait for each in turn. A push of a full CRL the day after the last is mostly
/// certificates revoked already, so the bindings of those are not read.
///
/// Keys are made (`bind`) and read in the change that applies them: a window that a change
/// boundary cuts is bound and read again in the next one, since a CA index the last change
/// added is only recorded if that change had puts, and what the store shows may have moved
/// while the writer lock was released.
struct Window {
    certs: [Option<CertRef>; BATCH_WINDOW],
    keys: [[u8; record::CERT_KEY_LEN_MAX]; BATCH_WINDOW],
    lens: [usize; BATCH_WINDOW],
    in_store: [bool; BATCH_WINDOW],
    /// Whether the store binds an ID to the certificate; read only where `in_store` is false.
    bound: [bool; BATCH_WINDOW],
    /// Certificates in the window, and the next one to apply.
    len: usize,
    next: usize,
    /// The last CA key identifier bound in this change (bytes, length) and its dictionary
    /// index: a CRL names one CA for all its entries, so the dictionary is asked once per
    /// change, not once per entry.
    ca: Option<([u8; CA_KEY_ID_LEN_MAX], usize, u32)>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            certs: [None; BATCH_WINDOW],
            keys: [[0; record::CERT_KEY_LEN_MAX]; BATCH_WINDOW],
            lens: [0; BATCH_WINDOW],
            in_store: [false; BATCH_WINDOW],
            bound: [false; BATCH_WINDOW],
            len: 0,
            next: 0,
            ca: None,
        }
    }
}

impl Window {
    fn key(&self, i: usize) -> &[u8] {
        &self.keys[i][..self.lens[i]]
    }

    /// Takes the next certificates from `certs` (none left: an empty window), binds them in
    /// `t` and reads them.
    fn fill(
        &mut self,
        reg: &Registry,
        t: &mut Tx<'_>,
        certs: &mut dyn Iterator<Item = CertRef>,
    ) -> Result<(), RegistryError> {
        self.len = 0;
        self.next = 0;
        for cert in certs.take(BATCH_WINDOW) {
            self.certs[self.len] = Some(cert);
            self.len += 1;
        }
        self.bind_and_read(reg, t)
    }

    /// A new change begins: forgets the CA index of the last one, then binds and reads the
    /// certificates not yet applied.
    fn begin_change(&mut self, reg: &Registry, t: &mut Tx<'_>) -> Result<(), RegistryError> {
        self.ca = None;
        self.bind_and_read(reg, t)
    }

    /// Makes the store keys of the certificates not yet applied, in `t`, and reads whether the
    /// store holds them as revoked and, for those it does not, bound to an ID.
    fn bind_and_read(&mut self, reg: &Registry, t: &mut Tx<'_>) -> Result<(), RegistryError> {
        let (next, len) = (self.next, self.len);
        for i in next..len {
            // `fill` set every certificate below `len`.
            let Some(cert) = self.certs[i] else { continue };
            let ca_key = cert.ca_key_id();
            let ca = match self.ca {
                Some((k, n, index)) if &k[..n] == ca_key => index,
                _ => {
                    let index = reg.ca_index(t, ca_key)?;
                    let mut k = [0; CA_KEY_ID_LEN_MAX];
                    k[..ca_key.len()].copy_from_slice(ca_key);
                    self.ca = Some((k, ca_key.len(), index));
                    index
                }
            };
            self.lens[i] = BoundCert::of(ca, &cert).key_in(&mut self.keys[i]).len();
        }
        let mut keys = [&[][..]; BATCH_WINDOW];
        for (i, k) in keys.iter_mut().enumerate().take(len).skip(next) {
            *k = &self.keys[i][..self.lens[i]];
        }
        let in_store = &mut self.in_store;
        reg.store
            .get_batch(Table::Revoked, &keys[next..len], |i, v| {
                in_store[next + i] = v.is_some()
            })?;
        // The ones to read bindings of, packed to the front of `keys`.
        let mut at = [0; BATCH_WINDOW];
        let mut n = 0;
        for i in next..len {
            if !self.in_store[i] {
                keys[n] = &self.keys[i][..self.lens[i]];
                at[n] = i;
                n += 1;
            }
        }
        let bound = &mut self.bound;
        reg.store
            .get_batch(Table::Certs, &keys[..n], |j, v| bound[at[j]] = v.is_some())?;
        Ok(())
    }
}
