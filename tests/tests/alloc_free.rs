//! The lookup path allocates nothing (DESIGN §4): counted with a global allocator that tallies
//! this thread's allocations, over lookups answered from snapshots and from the delta.
// A global allocator is an `unsafe impl` by definition; this test-only one forwards to the
// system allocator and is the one exception to the workspace's `unsafe_code = "deny"` outside
// the memory-mapped index.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mykey_engine::registry::Lookup;
use mykey_tests::*;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// thread-local `Cell` with a const initialiser, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn lookups_allocate_nothing() {
    let dir = TempDir::new("alloc");
    let reg = registry_with(&dir, &["A-α1-0001", "A-β1-0001"]);
    let p = provider("A-α1-0001");
    let q = provider("A-β1-0001");
    for n in 0..100 {
        reg.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
            .expect("register");
        let s = service(&format!("S{n}"));
        reg.link(at(0), actor("shop"), mykey(n), p, s, false)
            .expect("link");
    }
    reg.store().compact().expect("compact");
    // Some answers from the delta too.
    for n in 100..120 {
        reg.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
            .expect("register");
    }
    let ids: Vec<_> = (0..130).map(mykey).collect();
    let pref = reg.provider_ref(&p).expect("registered");
    let mut out = Vec::with_capacity(64);
    // Warm up thread-locals (arc-swap's debt list) before counting.
    let _ = reg.lookup(at(1), &ids[0], &p);
    let linked_p = ids
        .iter()
        .filter(|id| matches!(reg.lookup(at(1), id, &p), Ok(Lookup::Linked(_))))
        .count();
    let before = allocations();
    let mut linked = 0;
    for id in &ids {
        for prov in [&p, &q] {
            if let Lookup::Linked(_) = reg.lookup(at(1), id, prov).expect("lookup") {
                linked += 1;
            }
        }
        let _ = reg.lookup_ref(at(1), id, pref).expect("lookup");
    }
    reg.lookup_batch(at(1), &p, &ids[..64], &mut out)
        .expect("batch");
    // The path the server answers LOOKUP_BATCH through: IDs streamed in, answers out.
    let mut answered = 0;
    reg.lookup_batch_each(at(1), pref, ids.iter().copied(), |l| {
        if let Ok(Lookup::Linked(_)) = l {
            answered += 1;
        }
    })
    .expect("batch");
    let spent = allocations() - before;
    assert_eq!(answered, linked_p);
    // The counter is live: one allocation shows.
    let live = allocations();
    std::hint::black_box(vec![0u8; 10]);
    assert_eq!(allocations(), live + 1);
    assert_eq!(linked, 100);
    assert_eq!(out.len(), 64);
    assert_eq!(spent, 0, "the lookup path allocated {spent} times");
}

/// A repeat visit's card check (challenge, cached certificate, card signature, revocation
/// index) makes no allocation on the Rust side. (aws-lc's C code keeps its own allocator.)
#[test]
fn a_cached_card_check_allocates_nothing() {
    use mykey_engine::jpki::CardProof;
    use mykey_tests::pki::{card, now, pki};
    let p = pki();
    let jpki = p.jpki();
    let dir = TempDir::new("alloc-card");
    let reg = registry_with(&dir, &[]);
    let cert = card(&p.gen2023, &p.cards[0], 900);
    // Signing happens on the card, before the check; prepare a few proofs.
    let proofs: Vec<([u8; 32], Vec<u8>)> = (0..5)
        .map(|_| {
            let c = jpki.issue_challenge(now()).expect("challenge");
            (c.bytes, p.cards[0].sign(&c.bytes).expect("sign"))
        })
        .collect();
    let check = |(ch, sig): &([u8; 32], Vec<u8>)| {
        reg.authenticate(
            now(),
            &jpki,
            &CardProof {
                cert_der: &cert,
                challenge: ch,
                signature: sig,
            },
        )
        .expect("authenticated")
    };
    // Registered (so its CA is known and the revocation index is really probed), then cold:
    // the chain is verified and cached.
    let (ch, sig) = &proofs[0];
    reg.register_card(
        now(),
        actor("portal"),
        &jpki,
        &CardProof {
            cert_der: &cert,
            challenge: ch,
            signature: sig,
        },
    )
    .expect("register");
    check(&proofs[1]);
    let before = allocations();
    for proof in &proofs[2..] {
        check(proof);
    }
    assert_eq!(allocations() - before, 0);
}

/// The path the server answers LOOKUP and LOOKUP_BATCH through, frame in and frame out: the
/// sans-IO handler with a reused output buffer allocates nothing.
#[test]
fn served_lookups_allocate_nothing() {
    use mykey_engine::server::{self, Handled, Identity, Role, Service};
    use mykey_engine::wire::{self, IdList, Request, Status};
    let dir = TempDir::new("alloc-served");
    let reg = registry_with(&dir, &["A-α1-0001"]);
    let p = provider("A-α1-0001");
    for n in 0..200 {
        reg.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
            .expect("register");
        reg.link(at(0), actor("shop"), mykey(n), p, service("LIB-1"), false)
            .expect("link");
    }
    reg.store().compact().expect("compact");
    for n in 200..250 {
        reg.register_full(at(0), actor("portal"), mykey(n), cert(1, n))
            .expect("register");
    }
    let svc = Service {
        registry: reg,
        jpki: mykey_tests::pki::pki().jpki(),
        clock: mykey_tests::pki::now,
    };
    let who = Identity {
        role: Role::Counter,
        providers: vec![p],
        name: "shop-1".into(),
        fingerprint: [1; 32],
    };
    let ids: Vec<_> = (0..1000).map(|n| mykey(n % 300)).collect();
    let mut frames = Vec::new();
    for id in &ids[..300] {
        let mut f = Vec::new();
        Request::Lookup {
            provider: p,
            id: *id,
        }
        .encode(&mut f)
        .expect("fits");
        frames.push(f);
    }
    let raw = wire::id_list_bytes(&ids);
    let mut batch = Vec::new();
    Request::LookupBatch {
        provider: p,
        ids: IdList::from_bytes(&raw).expect("ids"),
    }
    .encode(&mut batch)
    .expect("fits");
    frames.push(batch);
    let mut out = Vec::with_capacity(16 * 1024);
    // Warm up thread-locals before counting.
    for f in &frames {
        let _ = server::handle(&svc, &who, at(1), f, &mut out);
    }
    let before = allocations();
    for f in &frames {
        assert_eq!(
            server::handle(&svc, &who, at(1), f, &mut out),
            Handled::Answered(Status::Ok)
        );
    }
    let spent = allocations() - before;
    assert_eq!(spent, 0, "the served lookup path allocated {spent} times");
}
