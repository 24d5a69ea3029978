//! The domain rules of DESIGN §3, each with its refusal, on a real store that is reopened
//! (and compacted) so every answer is also checked after recovery.

use std::sync::Arc;

use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{
    IdRecord, IdState, LinkOutcome, Lookup, ProviderOutcome, REVOCATIONS_PER_CHANGE_MAX,
    RecordEncoding, Registry, RegistryConfig, RegistryError, RevokeSummary, Table, UnlinkOutcome,
};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_tests::*;

fn fresh(dir: &TempDir) -> Registry {
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    Registry::create(fs, StoreConfig::default(), RegistryConfig::default()).expect("create")
}

fn reopen(dir: &TempDir) -> Registry {
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    Registry::open(fs, RegistryConfig::default()).expect("reopen")
}

/// What `r` answers at `at(t)` for ID `n` and `provider`.
fn look(r: &Registry, t: u64, n: u64, provider: &mykey_engine::id::ProviderId) -> Lookup {
    r.lookup(at(t), &mykey(n), provider).expect("lookup")
}

/// A registry with both providers in a new directory under `tag`, and the first provider.
fn setup(tag: &str) -> (TempDir, Registry, mykey_engine::id::ProviderId) {
    let dir = TempDir::new(tag);
    let r = with_providers(&dir);
    (dir, r, provider("A-α1-0001"))
}

fn with_providers(dir: &TempDir) -> Registry {
    registry_with(dir, &["A-α1-0001", "A-β1-0001"])
}

#[test]
fn providers_must_be_registered_before_links_name_them() {
    let dir = TempDir::new("providers");
    let r = fresh(&dir);
    let p = provider("A-α1-0001");
    r.register_full(at(0), actor("portal"), mykey(1), cert(1, 1))
        .expect("register");
    assert!(matches!(
        r.link(at(1), actor("shop"), mykey(1), p, service("S1"), false),
        Err(RegistryError::UnknownProvider { .. })
    ));
    assert!(matches!(
        r.lookup(at(1), &mykey(1), &p),
        Err(RegistryError::UnknownProvider { .. })
    ));
    assert_eq!(
        r.register_provider(at(2), actor("operator"), p)
            .expect("ok"),
        ProviderOutcome::Registered
    );
    assert_eq!(
        r.register_provider(at(3), actor("operator"), p)
            .expect("ok"),
        ProviderOutcome::AlreadyRegistered
    );
    assert_eq!(
        r.link(at(4), actor("shop"), mykey(1), p, service("S1"), false)
            .expect("link"),
        LinkOutcome::Linked
    );
    drop(r);
    let r = reopen(&dir);
    assert_eq!(r.providers(), vec![p]);
    assert_eq!(look(&r, 5, 1, &p), Lookup::Linked(service("S1")));
}

#[test]
fn full_registration_and_its_refusals() {
    let dir = TempDir::new("full");
    let r = with_providers(&dir);
    let a = actor("portal");
    r.register_full(at(0), a, mykey(1), cert(1, 1)).expect("ok");
    let p = provider("A-α1-0001");
    assert_eq!(look(&r, 0, 1, &p), Lookup::NotLinked);
    let seq = r.store().durable_seq();
    assert!(matches!(
        r.register_full(at(1), a, mykey(1), cert(1, 2)),
        Err(RegistryError::IdTaken {
            state: IdState::Active
        })
    ));
    assert!(matches!(
        r.register_full(at(1), a, mykey(2), cert(1, 1)),
        Err(RegistryError::CertBound { .. })
    ));
    r.revoke(at(1), actor("partner"), &[cert(1, 9)])
        .expect("revoke");
    let seq_after_revoke = r.store().durable_seq();
    assert!(matches!(
        r.register_full(at(2), a, mykey(3), cert(1, 9)),
        Err(RegistryError::CertRevoked { .. })
    ));
    // Refusals wrote nothing.
    assert_eq!(seq + 1, seq_after_revoke);
    assert_eq!(r.store().durable_seq(), seq_after_revoke);
    assert_eq!(look(&r, 2, 2, &p), Lookup::UnknownId);
    assert_eq!(look(&r, 2, 3, &p), Lookup::UnknownId);
}

#[test]
fn provisional_registration_confirmation_and_expiry() {
    let (dir, r, p) = setup("provisional");
    let portal = actor("portal");
    let counter = actor("municipal-13101");
    r.register_provisional(at(0), portal, mykey(10), cert(1, 10))
        .expect("provisional");
    assert_eq!(look(&r, 0, 10, &p), Lookup::Provisional);
    // Taken by a provisional registration, then by an active one.
    assert!(matches!(
        r.register_provisional(at(1), portal, mykey(10), cert(1, 11)),
        Err(RegistryError::IdTaken {
            state: IdState::Provisional
        })
    ));
    r.register_full(at(1), portal, mykey(11), cert(1, 12))
        .expect("full");
    assert!(matches!(
        r.register_provisional(at(1), portal, mykey(11), cert(1, 13)),
        Err(RegistryError::IdTaken {
            state: IdState::Active
        })
    ));
    // Not usable before confirmation.
    assert!(matches!(
        r.link(at(2), actor("shop"), mykey(10), p, service("X"), false),
        Err(RegistryError::WrongState {
            state: IdState::Provisional,
            ..
        })
    ));
    assert!(matches!(
        r.confirm(at(2), counter, mykey(10), cert(1, 99)),
        Err(RegistryError::CertMismatch)
    ));
    assert!(matches!(
        r.confirm(at(2), counter, mykey(11), cert(1, 12)),
        Err(RegistryError::WrongState {
            state: IdState::Active,
            ..
        })
    ));
    r.confirm(at(3), counter, mykey(10), cert(1, 10))
        .expect("confirm");
    assert_eq!(look(&r, 3, 10, &p), Lookup::NotLinked);
    let v = r.describe(&mykey(10)).expect("ok").expect("exists");
    assert_eq!((v.state, v.state_by), (IdState::Active, counter));

    // Expiry: default 30 days, exact boundary.
    let month = 30 * 86_400;
    r.register_provisional(at(100), portal, mykey(20), cert(1, 20))
        .expect("provisional");
    assert_eq!(
        r.lookup(at(100 + month - 1), &mykey(20), &p).expect("ok"),
        Lookup::Provisional
    );
    assert_eq!(
        r.lookup(at(100 + month), &mykey(20), &p).expect("ok"),
        Lookup::UnknownId
    );
    assert!(matches!(
        r.confirm(at(100 + month), counter, mykey(20), cert(1, 20)),
        Err(RegistryError::ProvisionalExpired { .. })
    ));
    // The expired ID is free again, even before the sweep, for someone else's certificate.
    r.register_provisional(at(100 + month), portal, mykey(20), cert(1, 21))
        .expect("reuse of an expired provisional ID");
    // And the first holder's certificate is free too.
    r.register_full(at(100 + month), portal, mykey(21), cert(1, 20))
        .expect("the expired registration's certificate is free");
    // Revoking the certificate of an expired provisional registration does not revive it
    // as a suspended one: the ID stays free.
    r.register_provisional(at(300), portal, mykey(40), cert(1, 40))
        .expect("provisional");
    let s = r
        .revoke(at(300 + month), actor("partner"), &[cert(1, 40)])
        .expect("revoke");
    assert_eq!((s.newly_revoked, s.suspended), (1, 0));
    assert_eq!(
        r.lookup(at(300 + month), &mykey(40), &p).expect("ok"),
        Lookup::UnknownId
    );
    // The sweep frees what is left: mykey(20) (new registration) is not expired yet.
    r.register_provisional(at(200), portal, mykey(30), cert(1, 30))
        .expect("provisional");
    assert_eq!(
        r.expire_provisional(at(200 + month), actor("operator"))
            .expect("sweep"),
        1
    );
    assert_eq!(r.describe(&mykey(30)).expect("ok"), None);
    drop(r);
    let r = reopen(&dir);
    assert_eq!(r.describe(&mykey(30)).expect("ok"), None);
    assert_eq!(
        r.lookup(at(200 + month), &mykey(20), &p).expect("ok"),
        Lookup::Provisional
    );
}

#[test]
fn provisional_expiry_is_configurable() {
    let dir = TempDir::new("expiry");
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    let cfg = RegistryConfig {
        provisional_expiry_secs: 60,
        ..RegistryConfig::default()
    };
    let r = Registry::create(fs, StoreConfig::default(), cfg).expect("create");
    r.register_provider(at(0), actor("op"), provider("P"))
        .expect("provider");
    r.register_provisional(at(0), actor("portal"), mykey(1), cert(1, 1))
        .expect("ok");
    assert_eq!(
        r.lookup(at(59), &mykey(1), &provider("P")).expect("ok"),
        Lookup::Provisional
    );
    assert_eq!(
        r.lookup(at(60), &mykey(1), &provider("P")).expect("ok"),
        Lookup::UnknownId
    );
}

#[test]
fn link_unlink_replace() {
    let dir = TempDir::new("link");
    let r = with_providers(&dir);
    let (pa, pb) = (provider("A-α1-0001"), provider("A-β1-0001"));
    let shop = actor("terminal-A-α1-0001-01");
    r.register_full(at(0), actor("portal"), mykey(1), cert(1, 1))
        .expect("ok");
    let link = |s: &str, replace| r.link(at(5), shop, mykey(1), pa, service(s), replace);
    assert_eq!(link("ABCDEFGHI", false).expect("ok"), LinkOutcome::Linked);
    assert_eq!(
        link("ABCDEFGHI", false).expect("ok"),
        LinkOutcome::AlreadyLinked
    );
    match link("OTHER", false) {
        Err(RegistryError::LinkConflict { existing, .. }) => {
            assert_eq!(existing, service("ABCDEFGHI"))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(look(&r, 6, 1, &pa), Lookup::Linked(service("ABCDEFGHI")));
    assert_eq!(
        link("OTHER", true).expect("ok"),
        LinkOutcome::Replaced {
            previous: service("ABCDEFGHI")
        }
    );
    r.link(at(7), shop, mykey(1), pb, service("2802121234"), false)
        .expect("second provider");
    assert_eq!(look(&r, 8, 1, &pa), Lookup::Linked(service("OTHER")));
    assert_eq!(
        r.unlink(at(9), shop, mykey(1), pa).expect("ok"),
        UnlinkOutcome::Unlinked
    );
    assert_eq!(
        r.unlink(at(9), shop, mykey(1), pa).expect("ok"),
        UnlinkOutcome::NotLinked
    );
    assert!(matches!(
        r.link(at(9), shop, mykey(2), pa, service("X"), false),
        Err(RegistryError::UnknownId)
    ));
    drop(r);
    let r = reopen(&dir);
    assert_eq!(look(&r, 10, 1, &pa), Lookup::NotLinked);
    assert_eq!(look(&r, 10, 1, &pb), Lookup::Linked(service("2802121234")));
    // Who changed this link, and when.
    let v = r.describe(&mykey(1)).expect("ok").expect("exists");
    assert_eq!(v.links, vec![(pb, service("2802121234"), at(7), shop)]);
}

#[test]
fn revocation_suspends_and_rebind_restores_with_links() {
    let (dir, r, p) = setup("revoke");
    let partner = actor("verifier-partner-1");
    r.register_full(at(0), actor("portal"), mykey(1), cert(1, 1))
        .expect("ok");
    r.register_provisional(at(0), actor("portal"), mykey(2), cert(1, 2))
        .expect("ok");
    r.link(at(1), actor("shop"), mykey(1), p, service("S"), false)
        .expect("link");
    let sum = r
        .revoke(
            at(2),
            partner,
            &[cert(1, 1), cert(1, 2), cert(1, 3), cert(1, 1)],
        )
        .expect("revoke");
    assert_eq!(
        sum,
        RevokeSummary {
            newly_revoked: 3,
            already_known: 1,
            suspended: 2
        }
    );
    let again = r.revoke(at(3), partner, &[cert(1, 1)]).expect("revoke");
    assert_eq!(
        again,
        RevokeSummary {
            newly_revoked: 0,
            already_known: 1,
            suspended: 0
        }
    );
    assert_eq!(look(&r, 3, 1, &p), Lookup::Suspended);
    assert_eq!(look(&r, 3, 2, &p), Lookup::Suspended);
    assert!(r.is_revoked(&cert(1, 3)).expect("ok"));
    assert!(matches!(
        r.link(at(3), actor("shop"), mykey(1), p, service("T"), true),
        Err(RegistryError::WrongState {
            state: IdState::Suspended,
            ..
        })
    ));
    let counter = actor("municipal-13101");
    assert!(matches!(
        r.rebind(at(4), counter, mykey(1), cert(1, 3)),
        Err(RegistryError::CertRevoked { .. })
    ));
    r.register_full(at(4), actor("portal"), mykey(5), cert(2, 5))
        .expect("ok");
    assert!(matches!(
        r.rebind(at(4), counter, mykey(1), cert(2, 5)),
        Err(RegistryError::CertBound { .. })
    ));
    r.rebind(at(5), counter, mykey(1), cert(2, 1))
        .expect("rebind");
    assert_eq!(look(&r, 5, 1, &p), Lookup::Linked(service("S")));
    drop(r);
    let r = reopen(&dir);
    let v = r.describe(&mykey(1)).expect("ok").expect("exists");
    assert_eq!(v.state, IdState::Active);
    assert_eq!(v.cert, Some(cert(2, 1)));
    // Revoking the new certificate suspends again; the old one is no longer bound.
    let s = r.revoke(at(6), partner, &[cert(2, 1)]).expect("revoke");
    assert_eq!(s.suspended, 1);
    r.store().compact().expect("compact");
    drop(r);
    let r = reopen(&dir);
    assert_eq!(look(&r, 7, 1, &p), Lookup::Suspended);
}

/// A revocation too big for one change is applied in several, certificates read in batches:
/// each certificate counts once (a repeat, in the same batch or after a change boundary, is
/// "already known"; one revoked earlier is too), and every bound ID is suspended, also after a
/// reopen. The IDs carry 256 links each, so their suspensions fill a change part-way through a
/// batch, and the rest of that batch is carried into the next change.
#[test]
fn a_revocation_over_several_changes_counts_each_certificate_once() {
    const IDS: u64 = 40;
    let names: Vec<String> = (0..256).map(|i| format!("A-α1-{i:04}")).collect();
    let dir = TempDir::new("revoke-many");
    let r = registry_with(&dir, &names.iter().map(String::as_str).collect::<Vec<_>>());
    let (shop, partner) = (actor("shop"), actor("verifier-partner-1"));
    for n in 0..IDS {
        r.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
            .expect("register");
        for p in &names {
            let s = service(&format!("{n:02}{}", "s".repeat(62)));
            r.link(at(1), shop, mykey(n), provider(p), s, false)
                .expect("link");
        }
    }
    r.revoke(at(2), partner, &[cert(2, 1), cert(2, 2)])
        .expect("earlier revocation");
    // Bound certificates, each followed by an unbound one, some known and some repeated.
    let mut list = Vec::new();
    for n in 0..IDS {
        list.push(cert(1, n));
        list.push(cert(2, n));
        if n % 7 == 3 {
            list.push(cert(1, n));
        }
    }
    list.push(cert(1, 0));
    let repeats = (0..IDS).filter(|n| n % 7 == 3).count() as u64 + 1;
    let before = r.store().submitted_seq();
    let sum = r.revoke(at(3), partner, &list).expect("revoke");
    assert!(
        r.store().submitted_seq() - before >= 2,
        "the suspensions must not fit one change, or this test shows nothing"
    );
    let expected = RevokeSummary {
        newly_revoked: 2 * IDS - 2,
        already_known: 2 + repeats,
        suspended: IDS,
    };
    assert_eq!(sum, expected);
    drop(r);
    let r = reopen(&dir);
    let p = provider(&names[0]);
    for n in 0..IDS {
        assert_eq!(look(&r, 4, n, &p), Lookup::Suspended, "ID {n}");
        assert!(r.is_revoked(&cert(2, n)).expect("read"), "cert (2, {n})");
    }
    let again = r.revoke(at(5), partner, &list).expect("again");
    assert_eq!(
        again,
        RevokeSummary {
            newly_revoked: 0,
            already_known: list.len() as u64,
            suspended: 0
        }
    );
}

/// A push whose serials ascend writes its revocations unread (no pending-map entry, since no
/// other writer can read before they are durable) in exclusive writes of at most
/// `revocation_changes_per_hold` changes (1 here), each made durable before the next writer
/// comes in. Over four holds nothing is lost or counted twice: every bound ID is suspended,
/// the next registration of a revoked certificate is refused, and so after a reopen.
#[test]
fn a_push_of_ascending_serials_over_several_holds_loses_nothing() {
    const BOUND: u64 = 10;
    let dir = TempDir::new("revoke-holds");
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    let config = RegistryConfig {
        revocation_changes_per_hold: 1,
        ..RegistryConfig::default()
    };
    let r = Registry::create(fs, StoreConfig::default(), config).expect("create");
    r.register_provider(at(0), actor("operator"), provider("A-α1-0001"))
        .expect("provider");
    let step = 1_000;
    for n in 0..BOUND {
        r.register_full(at(0), actor("portal"), mykey(n), cert(1, n * step))
            .expect("register");
    }
    let entries = 3 * REVOCATIONS_PER_CHANGE_MAX as u64 + 5;
    let list: Vec<_> = (0..entries).map(|n| cert(1, n)).collect();
    let before = r.store().submitted_seq();
    let sum = r
        .revoke(at(1), actor("verifier-partner-1"), &list)
        .expect("revoke");
    assert_eq!(
        sum,
        RevokeSummary {
            newly_revoked: entries,
            already_known: 0,
            suspended: BOUND,
        }
    );
    assert_eq!(r.store().submitted_seq() - before, 4, "four changes");
    assert_eq!(r.store().durable_seq(), r.store().submitted_seq());
    let check = |r: &Registry| {
        let p = provider("A-α1-0001");
        for n in 0..BOUND {
            assert!(matches!(
                r.lookup(at(2), &mykey(n), &p).expect("lookup"),
                Lookup::Suspended
            ));
        }
        for n in [0, 4_095, 4_096, 12_292] {
            assert!(r.is_revoked(&cert(1, n)).expect("read"), "cert {n}");
        }
        assert!(!r.is_revoked(&cert(1, entries)).expect("read"));
    };
    check(&r);
    assert!(matches!(
        r.register_full(at(2), actor("portal"), mykey(BOUND + 1), cert(1, 12_000)),
        Err(RegistryError::CertRevoked { .. })
    ));
    drop(r);
    let r = reopen(&dir);
    check(&r);
    let again = r
        .revoke(at(3), actor("verifier-partner-1"), &list)
        .expect("again");
    assert_eq!(again.already_known, entries);
}

/// A change of certificates all revoked already writes nothing, so a CA first seen at its end
/// must get its dictionary index in the change that applies its certificates: otherwise the
/// index is never recorded, the next new CA is given it too, and its certificates read as
/// revoked when they are not.
#[test]
fn a_new_ca_after_a_change_of_known_revocations_keeps_its_own_index() {
    let dir = TempDir::new("revoke-new-ca");
    let r = registry_with(&dir, &[]);
    let partner = actor("verifier-partner-1");
    let known: Vec<_> = (0..REVOCATIONS_PER_CHANGE_MAX as u64)
        .map(|n| cert(1, n))
        .collect();
    r.revoke(at(1), partner, &known).expect("first");
    let mut list = known.clone();
    list.extend([cert(3, 1), cert(3, 2)]);
    let sum = r.revoke(at(2), partner, &list).expect("second");
    assert_eq!(
        (sum.newly_revoked, sum.already_known),
        (2, known.len() as u64)
    );
    r.revoke(at(3), partner, &[cert(4, 2)]).expect("third");
    drop(r);
    let r = reopen(&dir);
    for (c, revoked) in [
        (cert(3, 1), true),
        (cert(3, 2), true),
        (cert(3, 3), false),
        (cert(4, 1), false),
        (cert(4, 2), true),
        (cert(1, 7), true),
    ] {
        assert_eq!(r.is_revoked(&c).expect("read"), revoked, "{c:?}");
    }
}

/// A change big enough that its keys are made and read on one thread per core, with CA runs
/// that start inside a thread's share (the last a CA first seen there), certificates revoked
/// already (in the snapshot and in the delta) and IDs bound to some: every certificate is
/// counted and applied as if read alone.
#[test]
fn a_big_change_over_several_cas_reads_each_certificate_as_alone() {
    let dir = TempDir::new("revoke-big-change");
    let r = registry_with(&dir, &["A-α1-0001"]);
    let partner = actor("verifier-partner-1");
    // Three runs of 1,000 (CAs 1, 2, 3) and one of 500 (CA 4, new in this change).
    let ca_of = |n: u64| match n {
        0..1000 => 1,
        1000..2000 => 2,
        2000..3000 => 3,
        _ => 4,
    };
    let list: Vec<_> = (0..3500).map(|n| cert(ca_of(n), n)).collect();
    let bound = [11, 1501, 2049, 2999, 3001, 3499];
    for (i, &n) in bound.iter().enumerate() {
        r.register_full(at(0), actor("portal"), mykey(i as u64), cert(ca_of(n), n))
            .expect("register");
    }
    let in_snapshot: Vec<_> = (0..3000)
        .filter(|n| n % 5 == 0)
        .map(|n| cert(ca_of(n), n))
        .collect();
    r.revoke(at(1), partner, &in_snapshot).expect("earlier");
    r.store().compact().expect("compact");
    let in_delta: Vec<_> = (0..3000)
        .filter(|n| n % 7 == 1)
        .map(|n| cert(ca_of(n), n))
        .collect();
    r.revoke(at(1), partner, &in_delta).expect("earlier");
    let known = (0..3000u64).filter(|n| n % 5 == 0 || n % 7 == 1).count() as u64;
    let sum = r.revoke(at(2), partner, &list).expect("revoke");
    assert_eq!(
        sum,
        RevokeSummary {
            newly_revoked: 3500 - known,
            already_known: known,
            suspended: bound.len() as u64,
        }
    );
    drop(r);
    let r = reopen(&dir);
    let p = provider("A-α1-0001");
    for i in 0..bound.len() as u64 {
        assert_eq!(look(&r, 3, i, &p), Lookup::Suspended, "ID {i}");
    }
    for n in [0, 999, 1000, 2048, 2050, 3000, 3499] {
        assert!(r.is_revoked(&cert(ca_of(n), n)).expect("read"), "cert {n}");
    }
    assert!(!r.is_revoked(&cert(4, 3500)).expect("read"));
    assert!(
        !r.is_revoked(&cert(1, 1000)).expect("read"),
        "CA 1's run ends at 999"
    );
}

/// A node set to `record_encoding = 1` (a rolling upgrade, while nodes of a build that reads
/// only encoding 1 remain) writes every ID record in encoding 1 (first byte the bare state
/// code, byte for byte what that build wrote), whatever the operation, also over a record
/// of encoding 2 that it read; the default writes encoding 2. Both answer alike.
#[test]
fn a_node_set_to_encoding_1_writes_only_records_an_earlier_build_reads() {
    for (encoding, first_high) in [(RecordEncoding::V1, 0x00), (RecordEncoding::V2, 0x10)] {
        let dir = TempDir::new("record-encoding");
        let p = provider("A-α1-0001");
        {
            // Records of encoding 2 first, then the node is set to `encoding`.
            let r = with_providers(&dir);
            r.register_full(at(0), actor("portal"), mykey(1), cert(1, 1))
                .expect("register");
        }
        let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
        let config = RegistryConfig {
            record_encoding: encoding,
            ..RegistryConfig::default()
        };
        let r = Registry::open(fs, config).expect("open");
        let stored = |r: &Registry, n: u64| {
            r.store()
                .get(Table::Ids, mykey(n).as_bytes(), |v| v.map(<[u8]>::to_vec))
                .expect("read")
                .expect("an ID record")
        };
        r.link(
            at(1),
            actor("shop"),
            mykey(1),
            p,
            service("2802121234"),
            false,
        )
        .expect("link");
        r.register_provisional(at(2), actor("portal"), mykey(2), cert(1, 2))
            .expect("provisional");
        r.confirm(at(3), actor("municipal"), mykey(2), cert(1, 2))
            .expect("confirm");
        r.register_full(at(4), actor("portal"), mykey(3), cert(1, 3))
            .expect("register");
        r.link(at(4), actor("shop"), mykey(3), p, service("S-3"), false)
            .expect("link");
        r.revoke(at(5), actor("verifier-partner-1"), &[cert(1, 3)])
            .expect("revoke");
        for n in 1..=3 {
            let b = stored(&r, n);
            assert_eq!(b[0] & 0xF0, first_high, "ID {n}: {encoding:?}");
            let rec = IdRecord::decode(&b).expect("decodes");
            assert_eq!(rec.encode_as(encoding), b, "ID {n}: canonical {encoding:?}");
        }
        assert_eq!(
            look(&r, 6, 1, &p),
            Lookup::Linked(service("2802121234")),
            "{encoding:?}"
        );
        assert_eq!(look(&r, 6, 3, &p), Lookup::Suspended, "{encoding:?}");
    }
}

#[test]
fn deletion_is_final() {
    let (_dir, r, p) = setup("delete");
    r.register_full(at(0), actor("portal"), mykey(1), cert(1, 1))
        .expect("ok");
    r.link(at(1), actor("shop"), mykey(1), p, service("S"), false)
        .expect("link");
    r.delete(at(2), actor("municipal"), mykey(1))
        .expect("delete");
    assert_eq!(look(&r, 3, 1, &p), Lookup::Deleted);
    assert!(matches!(
        r.delete(at(3), actor("municipal"), mykey(1)),
        Err(RegistryError::WrongState {
            state: IdState::Deleted,
            ..
        })
    ));
    assert!(matches!(
        r.register_provisional(at(3), actor("portal"), mykey(1), cert(1, 2)),
        Err(RegistryError::IdDeleted)
    ));
    assert!(matches!(
        r.delete(at(3), actor("municipal"), mykey(9)),
        Err(RegistryError::UnknownId)
    ));
    // The deleted ID's certificate is unbound and may register a new ID.
    r.register_full(at(4), actor("portal"), mykey(2), cert(1, 1))
        .expect("certificate freed by deletion");
}

#[test]
fn export_lists_one_providers_pairs_with_audit() {
    let dir = TempDir::new("export");
    let r = with_providers(&dir);
    let (pa, pb) = (provider("A-α1-0001"), provider("A-β1-0001"));
    for n in 0..50 {
        r.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
            .expect("ok");
        if n % 2 == 0 {
            r.link(
                at(n),
                actor("shop"),
                mykey(n),
                pa,
                service(&format!("A{n}")),
                false,
            )
            .expect("link");
        }
        if n % 5 == 0 {
            r.link(
                at(n),
                actor("lib"),
                mykey(n),
                pb,
                service(&format!("B{n}")),
                false,
            )
            .expect("link");
        }
    }
    // Half of the links are folded into snapshots, half stay in the delta.
    r.store().compact().expect("compact");
    for n in 50..60 {
        r.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
            .expect("ok");
        r.link(
            at(n),
            actor("shop2"),
            mykey(n),
            pa,
            service(&format!("A{n}")),
            false,
        )
        .expect("link");
    }
    r.revoke(at(70), actor("partner"), &[cert(1, 0)])
        .expect("revoke");
    let mut rows = Vec::new();
    let n = r
        .export(&pa, |row| {
            rows.push((row.id, row.state, row.service, row.linked_at, row.linked_by))
        })
        .expect("export");
    rows.sort_by_key(|r| r.0);
    assert_eq!(n, 35);
    assert_eq!(rows.len(), 35);
    assert_eq!(
        rows[0],
        (
            mykey(0),
            IdState::Suspended,
            service("A0"),
            at(0),
            actor("shop")
        )
    );
    assert_eq!(
        rows[34],
        (
            mykey(59),
            IdState::Active,
            service("A59"),
            at(59),
            actor("shop2")
        )
    );
    assert_eq!(r.export(&pb, |_| {}).expect("export"), 10);
}

#[test]
fn concurrent_writers_are_all_durable_across_a_reopen() {
    let (dir, r, p) = setup("group");
    let before = r.store().durable_seq();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let r = &r;
            s.spawn(move || {
                for i in 0..50u64 {
                    let n = t * 1000 + i;
                    r.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
                        .expect("register");
                    r.link(
                        at(1),
                        actor("shop"),
                        mykey(n),
                        p,
                        service(&n.to_string()),
                        false,
                    )
                    .expect("link");
                }
            });
        }
    });
    assert_eq!(r.store().durable_seq(), before + 800);
    drop(r);
    let r = reopen(&dir);
    for t in 0..8u64 {
        for i in 0..50u64 {
            let n = t * 1000 + i;
            assert_eq!(look(&r, 2, n, &p), Lookup::Linked(service(&n.to_string())));
        }
    }
}

#[test]
fn batched_lookups_answer_like_single_ones() {
    let (_dir, r, p) = setup("batch");
    for n in 0..40 {
        r.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
            .expect("ok");
        if n % 3 == 0 {
            r.link(
                at(0),
                actor("shop"),
                mykey(n),
                p,
                service(&n.to_string()),
                false,
            )
            .expect("link");
        }
    }
    r.store().compact().expect("compact");
    // After the compaction: links that override snapshot records (IDs 1, 4, 7 …, and a
    // replaced one, 0), new IDs only in the delta (40–44), and IDs nowhere (45–49): the batch
    // reads the snapshot, the delta and the misses in one call.
    for n in (1..40).step_by(3) {
        r.link(at(1), actor("shop"), mykey(n), p, service("NEW"), false)
            .expect("link");
    }
    r.link(at(1), actor("shop"), mykey(0), p, service("REPLACED"), true)
        .expect("replace");
    for n in 40..45 {
        r.register_full(at(1), actor("portal"), mykey(n), cert(1, n))
            .expect("register");
    }
    assert!(
        r.store().delta_keys() > 0,
        "the delta holds the later writes"
    );
    let ids: Vec<_> = (0..50).map(mykey).collect();
    let mut out = Vec::new();
    r.lookup_batch(at(2), &p, &ids, &mut out).expect("batch");
    assert_eq!(out.len(), 50);
    for (id, got) in ids.iter().zip(&out) {
        assert_eq!(
            got.as_ref().expect("ok"),
            &r.lookup(at(2), id, &p).expect("ok")
        );
    }
    assert_eq!(
        out[0].as_ref().expect("ok"),
        &Lookup::Linked(service("REPLACED"))
    );
    assert_eq!(
        out[1].as_ref().expect("ok"),
        &Lookup::Linked(service("NEW"))
    );
    assert_eq!(out[3].as_ref().expect("ok"), &Lookup::Linked(service("3")));
    assert_eq!(out[42].as_ref().expect("ok"), &Lookup::NotLinked);
    assert_eq!(out[47].as_ref().expect("ok"), &Lookup::UnknownId);
}
