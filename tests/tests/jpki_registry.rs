//! The registry wired to the JPKI layer: card operations run every check (challenge, chain,
//! signature, revocation) and refuse a card that fails one, changing nothing; partners' CRL and
//! serial-list pushes are checked, idempotent by push id, refused whole when bad, durable when
//! answered, and enforced on the very next check even for a cached certificate.

use std::sync::Arc;

use mykey_engine::id::{ActorId, MyKeyId, PushId};
use mykey_engine::jpki::dev::{DevCa, DevKey};
use mykey_engine::jpki::{Jpki, JpkiError, SerialNo};
use mykey_engine::registry::{CardWrite, StoreConfig};
use mykey_engine::registry::{
    IdState, Lookup, PushSummary, Registry, RegistryConfig, RegistryError, RevokeSummary,
};
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_tests::pki::{Proof, TestPki, card, cn, date, now, pki};
use mykey_tests::{TempDir, provider, service};

/// The test PKI, its JPKI layer, and a fresh registry in a new directory under `tag`.
fn setup(tag: &str) -> (&'static TestPki, Jpki, TempDir, Registry) {
    let p = pki();
    let dir = TempDir::new(tag);
    let r = fresh(&dir);
    (p, p.jpki(), dir, r)
}

fn fresh(dir: &TempDir) -> Registry {
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    let r =
        Registry::create(fs, StoreConfig::default(), RegistryConfig::default()).expect("create");
    r.register_provider(now(), op(), provider("A-α1-0001"))
        .expect("provider");
    r
}

fn reopen(dir: &TempDir) -> Registry {
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    Registry::open(fs, RegistryConfig::default()).expect("reopen")
}

fn op() -> ActorId {
    ActorId::parse(b"test-operator").expect("actor")
}

fn push(s: &str) -> PushId {
    PushId::parse(s.as_bytes()).expect("push id")
}

fn serial(n: u64) -> SerialNo {
    SerialNo::from_integer(&(0x1000_0000 + n).to_be_bytes()).expect("serial")
}

fn id_of(n: u64) -> MyKeyId {
    MyKeyId::parse(&cn(n).as_bytes()[..14]).expect("id")
}

/// Which JPKI refusal a case expects.
type Want = fn(&JpkiError) -> bool;

fn is_jpki(r: Result<impl std::fmt::Debug, RegistryError>, want: Want) {
    match r {
        Err(RegistryError::Jpki(e)) if want(&e) => {}
        other => panic!("unexpected {other:?}"),
    }
}

/// A full registration with `key`'s card `cert`, over a fresh challenge.
fn register(
    r: &Registry,
    jpki: &Jpki,
    key: &DevKey,
    cert: Vec<u8>,
) -> Result<MyKeyId, RegistryError> {
    r.register_card(now(), op(), jpki, &Proof::new(jpki, now(), key, cert).get())
}

/// A card-present write on `id` with `key`'s card `cert`, over a fresh challenge.
fn with_card(
    r: &Registry,
    jpki: &Jpki,
    write: CardWrite,
    id: MyKeyId,
    key: &DevKey,
    cert: Vec<u8>,
) -> Result<(), RegistryError> {
    r.with_card(
        write,
        now(),
        op(),
        jpki,
        id,
        &Proof::new(jpki, now(), key, cert).get(),
    )
}

#[test]
fn card_operations_run_every_check_and_a_revocation_bites_the_next_check() {
    let (p, jpki, dir, r) = setup("card-ops");
    let now = now();
    let shop = provider("A-α1-0001");
    let (key, other) = (&p.cards[0], &p.cards[1]);
    let a = card(&p.gen2023, key, 50);

    // Full registration: the ID is the CN's random string.
    let id = register(&r, &jpki, key, a.clone()).expect("register");
    assert_eq!(id, id_of(50));
    let l = r
        .lookup_card(
            now,
            &jpki,
            &Proof::new(&jpki, now, key, a.clone()).get(),
            &shop,
        )
        .expect("lookup");
    assert_eq!((l.id, l.lookup), (Some(id), Lookup::NotLinked));
    r.link(now, op(), id, shop, service("CARD-1"), false)
        .expect("link");

    // Refused cards change nothing.
    let expired = p
        .gen2023
        .issue(key, &cn(51), &[0x51], date(2020, 1, 1), date(2024, 1, 1))
        .expect("issue");
    is_jpki(register(&r, &jpki, key, expired), |e| {
        matches!(e, JpkiError::Expired { .. })
    });
    let mut forged = Proof::new(&jpki, now, key, card(&p.gen2023, key, 52));
    forged.signature = other.sign(&forged.challenge).expect("sign");
    is_jpki(r.register_card(now, op(), &jpki, &forged.get()), |e| {
        matches!(e, JpkiError::BadSignature)
    });
    assert_eq!(r.describe(&id_of(51)).expect("describe"), None);
    assert_eq!(r.describe(&id_of(52)).expect("describe"), None);

    // Provisional registration and confirmation refuse failing cards.
    let chosen = MyKeyId::parse(b"MYCHOSENID0001").expect("id");
    let b = card(&p.gen2023, other, 53);
    let sign_cert = card(&p.sign, other, 54);
    let provisional = |cert| {
        with_card(
            &r,
            &jpki,
            CardWrite::RegisterProvisional,
            chosen,
            other,
            cert,
        )
    };
    is_jpki(provisional(sign_cert), |e| {
        matches!(e, JpkiError::SignatureCertificate)
    });
    assert_eq!(r.describe(&chosen).expect("describe"), None);
    provisional(b.clone()).expect("provisional");
    let rogue = DevCa::auth(77, date(2023, 1, 1), date(2033, 1, 1)).expect("rogue");
    is_jpki(
        with_card(
            &r,
            &jpki,
            CardWrite::Confirm,
            chosen,
            other,
            card(&rogue, other, 53),
        ),
        |e| matches!(e, JpkiError::UnknownIssuer),
    );
    assert!(matches!(
        with_card(&r, &jpki, CardWrite::Confirm, chosen, key, a.clone()),
        Err(RegistryError::CertMismatch)
    ));
    with_card(&r, &jpki, CardWrite::Confirm, chosen, other, b).expect("confirm");
    assert_eq!(
        r.describe(&chosen).expect("describe").map(|v| v.state),
        Some(IdState::Active)
    );

    // The certificate of `a` is cached now; revoking its serial bites on the very next check.
    assert!(jpki.cached_leaves() >= 2);
    let key_id = hex(jpki.anchors().all()[2].key_id());
    let list = format!("# lost card\nca {key_id}\n{:X}\n", 0x1000_0000u64 + 50);
    let s = r
        .push_serials(now, op(), &jpki, push("lost-50"), list.as_bytes())
        .expect("push");
    assert_eq!(
        (s.revoke, s.entries, s.replayed),
        (
            RevokeSummary {
                newly_revoked: 1,
                already_known: 0,
                suspended: 1
            },
            1,
            false
        )
    );
    assert!(matches!(
        r.lookup_card(
            now,
            &jpki,
            &Proof::new(&jpki, now, key, a.clone()).get(),
            &shop
        ),
        Err(RegistryError::CertRevoked { .. })
    ));
    assert_eq!(
        r.lookup(now, &id, &shop).expect("lookup"),
        Lookup::Suspended
    );

    // Re-binding to the renewed card restores the ID with its links.
    let renewed = card(&p.gen2023, key, 60);
    with_card(&r, &jpki, CardWrite::Rebind, id, key, renewed.clone()).expect("rebind");
    drop(r);
    let r = reopen(&dir);
    let l = r
        .lookup_card(
            now,
            &jpki,
            &Proof::new(&jpki, now, key, renewed).get(),
            &shop,
        )
        .expect("lookup after reopen");
    assert_eq!(l.id, Some(id));
    assert!(matches!(l.lookup, Lookup::Linked(s) if s == service("CARD-1")));
    // A card bound to nothing answers unknown.
    let l = r
        .lookup_card(
            now,
            &jpki,
            &Proof::new(&jpki, now, key, card(&p.gen2023, key, 61)).get(),
            &shop,
        )
        .expect("lookup");
    assert_eq!((l.id, l.lookup), (None, Lookup::UnknownId));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[test]
fn crl_pushes_are_checked_idempotent_monotonic_and_durable() {
    let (p, jpki, dir, r) = setup("crl-push");
    let now = now();
    let key = &p.cards[2];
    let shop = provider("A-α1-0001");
    // Two cards of two generations with the same serial (and distinct CNs), both registered.
    let c2019 = card(&p.gen2019, key, 70);
    let id2019 = register(&r, &jpki, key, c2019.clone()).expect("register 2019");
    let c2023b = p
        .gen2023
        .issue(
            key,
            &cn(71),
            &(0x1000_0000u64 + 70).to_be_bytes(),
            date(2024, 1, 1),
            date(2029, 1, 1),
        )
        .expect("issue");
    let id2023 = register(&r, &jpki, key, c2023b.clone()).expect("register 2023");

    let day = 86_400;
    let crl = |ca: &DevCa, n: u64, serials: &[SerialNo]| {
        ca.crl(n, now, now.plus_secs(day), serials).expect("crl")
    };
    let first = crl(&p.gen2019, 5, &[serial(70), serial(1), serial(2)]);
    let s = r
        .push_crl(now, op(), &jpki, push("crl-2019-5"), &first)
        .expect("push");
    let want = PushSummary {
        revoke: RevokeSummary {
            newly_revoked: 3,
            already_known: 0,
            suspended: 1,
        },
        entries: 3,
        replayed: false,
    };
    assert_eq!(s, want);
    // Only the 2019 generation's serial 70 is revoked; the 2023 card with the same serial is not.
    assert_eq!(
        r.lookup(now, &id2019, &shop).expect("lookup"),
        Lookup::Suspended
    );
    assert_eq!(
        r.lookup(now, &id2023, &shop).expect("lookup"),
        Lookup::NotLinked
    );
    r.lookup_card(
        now,
        &jpki,
        &Proof::new(&jpki, now, key, c2023b.clone()).get(),
        &shop,
    )
    .expect("the 2023 card still authenticates");

    // Retrying the same push: the first summary, nothing changed.
    let again = r
        .push_crl(now, op(), &jpki, push("crl-2019-5"), &first)
        .expect("retry");
    assert_eq!(
        again,
        PushSummary {
            replayed: true,
            ..want
        }
    );
    // The same push id with other content is refused.
    let other = crl(&p.gen2019, 6, &[serial(3)]);
    assert!(matches!(
        r.push_crl(now, op(), &jpki, push("crl-2019-5"), &other),
        Err(RegistryError::PushIdReused { .. })
    ));
    // The same CRL under a new push id, or an older one: not newer, nothing changed.
    for (n, body) in [(5, first.clone()), (4, crl(&p.gen2019, 4, &[serial(4)]))] {
        match r.push_crl(now, op(), &jpki, push(&format!("replay-{n}")), &body) {
            Err(RegistryError::CrlNotNewer { last, got }) => {
                assert_eq!((last.as_str(), got), ("05", format!("{n:02x}")))
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!r.is_revoked(&cert_ref(&jpki, 1, 4)).expect("revoked?"));
    // A newer CRL applies; what was known is counted as known.
    let s = r
        .push_crl(now, op(), &jpki, push("crl-2019-6"), &other)
        .expect("newer");
    assert_eq!((s.revoke.newly_revoked, s.revoke.already_known), (1, 0));
    let s = r
        .push_crl(
            now,
            op(),
            &jpki,
            push("crl-2019-7"),
            &crl(&p.gen2019, 7, &[serial(3), serial(70), serial(9)]),
        )
        .expect("newer");
    assert_eq!(
        (
            s.revoke.newly_revoked,
            s.revoke.already_known,
            s.revoke.suspended
        ),
        (1, 2, 0)
    );
    // A CRL without an AKI is attributed by its signature: the 2023 generation is tried first
    // (newest valid at thisUpdate), fails, and the 2019 one verifies.
    let no_aki = p
        .gen2019
        .crl_without_aki(8, now, now.plus_secs(day), &[serial(11)])
        .expect("crl");
    r.push_crl(now, op(), &jpki, push("crl-2019-8-no-aki"), &no_aki)
        .expect("no-AKI CRL");
    assert!(r.is_revoked(&cert_ref(&jpki, 1, 11)).expect("revoked?"));
    assert!(!r.is_revoked(&cert_ref(&jpki, 2, 11)).expect("revoked?"));
    // The CRL number is kept per CA: the 2023 generation starts afresh.
    r.push_crl(
        now,
        op(),
        &jpki,
        push("crl-2023-1"),
        &crl(&p.gen2023, 1, &[serial(99)]),
    )
    .expect("2023 CRL");

    // Durable when answered.
    drop(r);
    let r = reopen(&dir);
    assert!(r.is_revoked(&cert_ref(&jpki, 1, 9)).expect("revoked?"));
    assert_eq!(
        r.crl_state(jpki.anchors().all()[1].key_id())
            .expect("state")
            .map(|s| s.1),
        Some(vec![8])
    );
    assert_eq!(
        r.lookup(now, &id2019, &shop).expect("lookup"),
        Lookup::Suspended
    );
}

fn cert_ref(jpki: &Jpki, anchor: usize, n: u64) -> mykey_engine::id::CertRef {
    mykey_engine::id::CertRef::new(jpki.anchors().all()[anchor].key_id(), serial(n).as_bytes())
        .expect("cert ref")
}

#[test]
fn bad_pushes_are_refused_whole_with_their_own_error_and_change_nothing() {
    let (p, jpki, _dir, r) = setup("bad-push");
    let now = now();
    let day = 86_400;
    let good = p
        .gen2023
        .crl(10, now, now.plus_secs(day), &[serial(1), serial(2)])
        .expect("crl");
    r.push_crl(now, op(), &jpki, push("base"), &good)
        .expect("base");
    let before = r
        .crl_state(jpki.anchors().all()[2].key_id())
        .expect("state");

    let rogue = DevCa::auth(78, date(2023, 1, 1), date(2033, 1, 1)).expect("rogue");
    let mut bad_sig = p
        .gen2023
        .crl(11, now, now.plus_secs(day), &[serial(5)])
        .expect("crl");
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 1;
    let mut bad_tbs = p
        .gen2023
        .crl(11, now, now.plus_secs(day), &[serial(5)])
        .expect("crl");
    // The last revoked serial's final byte sits well inside the signed part.
    let at = bad_tbs
        .windows(4)
        .rposition(|w| w == [0x10, 0x00, 0x00, 0x05])
        .expect("serial bytes")
        + 3;
    bad_tbs[at] ^= 0x0f;
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "unknown CA (same DN, other key)",
            rogue
                .crl(11, now, now.plus_secs(day), &[serial(5)])
                .expect("crl"),
            |e| matches!(e, JpkiError::CrlUnknownIssuer),
        ),
        (
            "signature CA",
            p.sign
                .crl(11, now, now.plus_secs(day), &[serial(5)])
                .expect("crl"),
            |e| matches!(e, JpkiError::CrlUnknownIssuer),
        ),
        ("bad signature", bad_sig, |e| {
            matches!(e, JpkiError::CrlBadSignature)
        }),
        ("tampered entry", bad_tbs, |e| {
            matches!(e, JpkiError::CrlBadSignature)
        }),
        (
            "stale",
            p.gen2023
                .crl(11, date(2026, 1, 1), date(2026, 1, 2), &[serial(5)])
                .expect("crl"),
            |e| matches!(e, JpkiError::CrlStale { .. }),
        ),
        (
            "future",
            p.gen2023
                .crl(11, now.plus_secs(day), now.plus_secs(2 * day), &[serial(5)])
                .expect("crl"),
            |e| matches!(e, JpkiError::CrlNotYetValid { .. }),
        ),
        ("truncated", good[..good.len() - 7].to_vec(), |e| {
            matches!(e, JpkiError::CrlMalformed { .. })
        }),
        ("garbage", b"not a CRL at all".to_vec(), |e| {
            matches!(e, JpkiError::CrlMalformed { .. })
        }),
        ("empty", Vec::new(), |e| {
            matches!(e, JpkiError::CrlMalformed { .. })
        }),
    ];
    for (i, (what, body, want)) in cases.into_iter().enumerate() {
        match r.push_crl(now, op(), &jpki, push(&format!("bad-{i}")), &body) {
            Err(RegistryError::Jpki(e)) if want(&e) => {
                assert!(!e.to_string().is_empty());
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(!r.is_revoked(&cert_ref(&jpki, 2, 5)).expect("revoked?"));
    assert_eq!(
        r.crl_state(jpki.anchors().all()[2].key_id())
            .expect("state"),
        before
    );

    // Serial lists: each malformed list names its line; an unknown CA is refused.
    let ca = hex(jpki.anchors().all()[2].key_id());
    let lists: Vec<(String, Want)> = vec![
        (format!("ca {ca}\n01\nzz\n"), |e| {
            matches!(e, JpkiError::SerialList { line: 3, .. })
        }),
        ("0102\n".to_string(), |e| {
            matches!(e, JpkiError::SerialList { line: 1, .. })
        }),
        (format!("ca {ca}\n{}\n", "11".repeat(21)), |e| {
            matches!(e, JpkiError::SerialList { line: 2, .. })
        }),
        (format!("ca {ca}\n00\n"), |e| {
            matches!(e, JpkiError::SerialList { line: 2, .. })
        }),
        (format!("ca {ca}\n05\nca {ca}\n"), |e| {
            matches!(e, JpkiError::SerialList { line: 3, .. })
        }),
        ("# nothing\n".to_string(), |e| {
            matches!(e, JpkiError::SerialList { .. })
        }),
        ("ca 0102030405\n05\n".to_string(), |e| {
            matches!(e, JpkiError::UnknownCa { .. })
        }),
    ];
    for (i, (text, want)) in lists.into_iter().enumerate() {
        match r.push_serials(
            now,
            op(),
            &jpki,
            push(&format!("list-{i}")),
            text.as_bytes(),
        ) {
            Err(RegistryError::Jpki(e)) if want(&e) => {}
            other => panic!("{text:?}: {other:?}"),
        }
    }
    let mut invalid_utf8 = format!("ca {ca}\n").into_bytes();
    invalid_utf8.extend_from_slice(b"05\n\xff\n");
    is_jpki(
        r.push_serials(now, op(), &jpki, push("utf8"), &invalid_utf8),
        |e| matches!(e, JpkiError::SerialList { line: 3, .. }),
    );
    assert!(!r.is_revoked(&cert_ref(&jpki, 2, 5)).expect("revoked?"));
}

/// A power cut at every point of a push that spans several changes (they are written and
/// fsync'd together, so the cut lands on that one write or fsync, and keeps a random prefix of
/// the unsynced bytes): the push fails, the store recovers, and retrying with the same push id
/// completes it: every serial is revoked exactly once, and the summaries add up (or, if the cut
/// struck after the push was durable, the retry answers the first summary). Some cuts must
/// leave a strict prefix of the push's changes, the case a bulk push must survive. Run with
/// the push in one exclusive write and in one per change (`revocation_changes_per_hold` 1),
/// so that cuts also land between holds.
#[test]
fn a_push_cut_by_a_crash_completes_on_retry_with_the_same_push_id() {
    use mykey_engine::store::fs::SimFs;
    let p = pki();
    let jpki = p.jpki();
    let now = now();
    let ca = hex(jpki.anchors().all()[2].key_id());
    const N: u64 = 10_000;
    let mut list = format!("ca {ca}\n");
    for n in 0..N {
        list.push_str(&format!("{:X}\n", 0x1000_0000u64 + n));
    }
    let (mut struck, mut prefix) = (0, 0);
    let one_per_change = RegistryConfig {
        revocation_changes_per_hold: 1,
        ..RegistryConfig::default()
    };
    for (seed, config) in (1..=24)
        .map(|s| (s, RegistryConfig::default()))
        .chain((25..=36).map(|s| (s, one_per_change)))
    {
        for k in 1..=4 {
            let fs = SimFs::new(seed);
            let reg = Registry::create(
                Arc::new(fs.clone()) as Arc<dyn Fs>,
                StoreConfig::default(),
                config,
            )
            .expect("create");
            fs.arm_crash(k);
            let first = reg.push_serials(now, op(), &jpki, push("big"), list.as_bytes());
            let crashed = fs.crashed_since_armed();
            drop(reg);
            let reg =
                Registry::open(Arc::new(fs.clone()) as Arc<dyn Fs>, config).expect("recovers");
            let retry = reg
                .push_serials(now, op(), &jpki, push("big"), list.as_bytes())
                .expect("retry completes");
            match first {
                Ok(s) => {
                    assert!(
                        retry.replayed && retry.revoke == s.revoke,
                        "seed={seed} k={k}"
                    );
                }
                Err(_) => {
                    assert!(
                        crashed,
                        "seed={seed} k={k}: only the power cut fails a push"
                    );
                    struck += 1;
                    assert!(
                        !retry.replayed,
                        "seed={seed} k={k}: the push record came last"
                    );
                    assert_eq!(
                        retry.revoke.newly_revoked + retry.revoke.already_known,
                        N,
                        "seed={seed} k={k}"
                    );
                    if retry.revoke.already_known > 0 {
                        prefix += 1;
                    }
                }
            }
            for n in [0, N / 2, N - 1] {
                assert!(
                    reg.is_revoked(&cert_ref(&jpki, 2, n)).expect("revoked?"),
                    "seed={seed} k={k} n={n}"
                );
            }
        }
    }
    assert!(
        struck >= 24,
        "the cut struck inside the push {struck} times"
    );
    assert!(
        prefix >= 3,
        "a cut left part of the push durable {prefix} times"
    );
}
