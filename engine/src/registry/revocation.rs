//! Revocation: certificates marked revoked and the IDs bound to them suspended, in changes of
//! at most `REVOCATIONS_PER_CHANGE_MAX` certificates each; the revocation index read by card
//! checks. Partner pushes (`card`) come through here. A change's certificates are first made
//! into store keys and looked up (`Slots::prepare`: whether each is revoked already, and for
//! those that are not whether an ID is bound to it), in batched store reads shared out among
//! the cores; then they are applied in order on the calling thread, which asks the
//! transaction again only for a key written since. It never writes outside a transaction.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::id::SERIAL_LEN_MAX;
use crate::jpki::crl::SerialNo;
use crate::store::BATCH_WINDOW;

/// Fewest certificates of a change one thread makes keys of and reads (~0.1 ms of work,
/// against tens of microseconds to start a thread): a change of 4,096 takes at most four
/// threads, however many cores the node has, and a small one takes this one alone.
const PREPARE_PER_THREAD_MIN: usize = 1024;

/// The certificates a revocation names, by position, read from several threads at once
/// while a change is prepared.
pub(super) trait Certs: Sync {
    /// How many.
    fn len(&self) -> usize;
    /// The CA key identifier of certificate `i` (below `len`).
    fn ca_key_id(&self, i: usize) -> &[u8];
    /// The serial of certificate `i`, big-endian without leading zero bytes (one of no or of
    /// more than `SERIAL_LEN_MAX` bytes is skipped; neither source makes one).
    fn serial(&self, i: usize) -> &[u8];
}

impl Certs for &[CertRef] {
    fn len(&self) -> usize {
        <[CertRef]>::len(self)
    }
    fn ca_key_id(&self, i: usize) -> &[u8] {
        self[i].ca_key_id()
    }
    fn serial(&self, i: usize) -> &[u8] {
        self[i].serial()
    }
}

/// One CA generation's serials: a CRL or a partner's serial list. The caller checks the key
/// identifier once (`CertRef::new`); a `SerialNo` is a valid serial by construction.
pub(super) struct OneCa<'a> {
    pub(super) ca_key_id: &'a [u8],
    pub(super) serials: &'a [SerialNo],
}

impl Certs for OneCa<'_> {
    fn len(&self) -> usize {
        self.serials.len()
    }
    fn ca_key_id(&self, _: usize) -> &[u8] {
        self.ca_key_id
    }
    fn serial(&self, i: usize) -> &[u8] {
        self.serials[i].as_bytes()
    }
}

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
        self.revoke_all(now, actor, &certs, distinct, &mut |_, _| Ok(()))
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
        certs: &dyn Certs,
        distinct: bool,
        last: &mut dyn FnMut(&mut Tx<'_>, &RevokeSummary) -> Result<(), RegistryError>,
    ) -> Result<RevokeSummary, RegistryError> {
        let mut sum = RevokeSummary::default();
        let mut slots = Slots::default();
        let mut next = 0;
        loop {
            let mut t = self.begin_exclusive(now, actor)?;
            let r = self.submit_revocations(
                &mut t, certs, &mut next, &mut slots, distinct, last, &mut sum,
            );
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
    /// `revocation_changes_per_hold` of them, from certificate `next` on (moved past the
    /// ones applied); whether the last is among them (else the caller makes these durable
    /// and goes on in a new exclusive write).
    #[allow(clippy::too_many_arguments)]
    fn submit_revocations(
        &self,
        t: &mut Tx<'_>,
        certs: &dyn Certs,
        next: &mut usize,
        slots: &mut Slots,
        distinct: bool,
        last: &mut dyn FnMut(&mut Tx<'_>, &RevokeSummary) -> Result<(), RegistryError>,
        sum: &mut RevokeSummary,
    ) -> Result<bool, RegistryError> {
        for _ in 0..self.config.revocation_changes_per_hold.max(1) {
            // Keys are made and read in the change that applies them: certificates a change
            // left (it grew too long) are prepared again in the next one.
            let n = REVOCATIONS_PER_CHANGE_MAX.min(certs.len() - *next);
            slots.prepare(self, t, certs, *next, n)?;
            for s in &slots.slots[..n] {
                // Keep each change well under the log's record limit, whatever the records hold.
                if t.tx.approx_len() > crate::store::wal::CHANGE_LEN_MAX / 2 {
                    break;
                }
                *next += 1;
                let Some(key) = s.key() else { continue };
                // The batch read stands unless this push (or a write queued before it) has
                // put the key since.
                let revoked = if t.tx.overrides(Table::Revoked, key) {
                    t.tx.get(Table::Revoked, key)?.is_some()
                } else {
                    s.in_store
                };
                // Likewise whether an ID is bound to it, read only for those not revoked in
                // the store (`None`: not read).
                let bound = (!s.in_store && !t.tx.overrides(Table::Certs, key)).then_some(s.bound);
                self.revoke_key(t, key, revoked, bound, distinct, sum)?;
            }
            let done = *next == certs.len();
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
            self.put_record(t, &id, &rec);
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

/// One certificate of a change, prepared: its store key and what the store holds of it.
#[derive(Clone, Copy)]
struct Slot {
    key: [u8; record::CERT_KEY_LEN_MAX],
    /// Key length; 0 for a certificate skipped (no valid serial).
    len: u8,
    /// The CA's dictionary index.
    ca: u32,
    /// Whether the visible store holds the certificate as revoked.
    in_store: bool,
    /// Whether the store binds an ID to it; read only where `in_store` is false.
    bound: bool,
}

impl Slot {
    fn key(&self) -> Option<&[u8]> {
        (self.len > 0).then(|| &self.key[..usize::from(self.len)])
    }
}

/// A change's certificates, prepared. Batched reads (`Store::get_batch`) overlap their
/// memory misses, where one read per certificate would wait for each in turn, and the runs
/// of a big change are read on one thread per core; a push of a full CRL the day after the
/// last is mostly certificates revoked already, so the bindings of those are not read.
///
/// The CA indexes are taken in the change that applies the keys made with them, since a
/// CA index a change adds is only recorded if that change has puts, and what the store
/// shows may have moved while the writer lock was released between holds.
#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
}

impl Slots {
    /// Prepares certificates `from..from + n` of `certs` in `t`: their CAs' dictionary
    /// indexes here (a new CA is added to `t`), then keys and reads on up to one thread per
    /// core, each with at least [`PREPARE_PER_THREAD_MIN`] certificates.
    fn prepare(
        &mut self,
        reg: &Registry,
        t: &mut Tx<'_>,
        certs: &dyn Certs,
        from: usize,
        n: usize,
    ) -> Result<(), RegistryError> {
        let empty = Slot {
            key: [0; record::CERT_KEY_LEN_MAX],
            len: 0,
            ca: 0,
            in_store: false,
            bound: false,
        };
        self.slots.clear();
        self.slots.resize(n, empty);
        // A list names one CA for all its entries, so the dictionary is asked once per run
        // of equal CAs, not once per entry.
        let mut last: Option<(&[u8], u32)> = None;
        for (i, s) in self.slots.iter_mut().enumerate() {
            let ca_key = certs.ca_key_id(from + i);
            s.ca = match last {
                Some((k, index)) if k == ca_key => index,
                _ => {
                    let index = reg.ca_index(t, ca_key)?;
                    last = Some((ca_key, index));
                    index
                }
            };
        }
        let threads = crate::par::threads_for(n, 2 * PREPARE_PER_THREAD_MIN)
            .min(n / PREPARE_PER_THREAD_MIN)
            .max(1);
        let per = n
            .div_ceil(threads)
            .next_multiple_of(BATCH_WINDOW)
            .max(BATCH_WINDOW);
        let runs: Vec<(usize, &mut [Slot])> = self
            .slots
            .chunks_mut(per)
            .enumerate()
            .map(|(r, run)| (from + r * per, run))
            .collect();
        let store = &reg.store;
        crate::par::map(runs, threads, |(first, run)| {
            read_run(store, certs, first, run)
        })
        .into_iter()
        .collect::<Result<(), StoreError>>()?;
        Ok(())
    }
}

/// Makes the keys of `run` (certificates `first..` of `certs`, their CA indexes set) and
/// reads them, [`BATCH_WINDOW`] at a time: whether the store holds each as revoked and, for
/// those it does not, whether it binds an ID to it.
fn read_run(
    store: &Store,
    certs: &dyn Certs,
    first: usize,
    run: &mut [Slot],
) -> Result<(), StoreError> {
    for (w, window) in run.chunks_mut(BATCH_WINDOW).enumerate() {
        for (j, s) in window.iter_mut().enumerate() {
            let serial = certs.serial(first + w * BATCH_WINDOW + j);
            s.len = if (1..=SERIAL_LEN_MAX).contains(&serial.len()) {
                BoundCert::of_serial(s.ca, serial).key_in(&mut s.key).len() as u8
            } else {
                0
            };
        }
        let mut keys = [&[][..]; BATCH_WINDOW];
        let mut at = [0; BATCH_WINDOW];
        let n = pack(window, &mut keys, &mut at, |_| true);
        let mut in_store = [false; BATCH_WINDOW];
        store.get_batch(Table::Revoked, &keys[..n], |i, v| {
            in_store[at[i]] = v.is_some()
        })?;
        // Bindings are read only for the certificates not revoked already.
        let n = pack(window, &mut keys, &mut at, |j| !in_store[j]);
        let mut bound = [false; BATCH_WINDOW];
        store.get_batch(Table::Certs, &keys[..n], |i, v| bound[at[i]] = v.is_some())?;
        for (j, s) in window.iter_mut().enumerate() {
            s.in_store = in_store[j];
            s.bound = bound[j];
        }
    }
    Ok(())
}

/// Puts the keys of the slots of `window` that `keep` picks (by place; a skipped slot never)
/// at the front of `keys`, their places in `at`; how many.
fn pack<'w>(
    window: &'w [Slot],
    keys: &mut [&'w [u8]; BATCH_WINDOW],
    at: &mut [usize; BATCH_WINDOW],
    keep: impl Fn(usize) -> bool,
) -> usize {
    let mut n = 0;
    for (j, s) in window.iter().enumerate() {
        if let Some(k) = s.key()
            && keep(j)
        {
            keys[n] = k;
            at[n] = j;
            n += 1;
        }
    }
    n
}
