//! The sans-IO request handler, without sockets: every role against every operation as the
//! roles column of `engine/PROTOCOL.md` gives it, a counter kept to its own providers, a
//! challenge redeemed only by the certificate that asked, and the domain operations answered
//! frame in, frame out.

use mykey_engine::answer::{IdState, LinkOutcome, Lookup, ProviderOutcome, UnlinkOutcome};
use mykey_engine::id::{MyKeyId, ProviderId, PushId};
use mykey_engine::jpki::CardProof;
use mykey_engine::server::{self, Handled, Identity, Role, Service};
use mykey_engine::wire::{self, IdList, Op, Refused, Request, Response, Status};
use mykey_tests::pki::{card, now, pki};
use mykey_tests::{TempDir, provider, registry_with, service};

const ROLES: [(Role, char); 6] = [
    (Role::Counter, 'C'),
    (Role::Municipal, 'M'),
    (Role::Portal, 'P'),
    (Role::Partner, 'R'),
    (Role::Node, 'N'),
    (Role::Operator, 'O'),
];

fn ident(role: Role, providers: &[ProviderId], fingerprint: u8) -> Identity {
    Identity {
        role,
        providers: providers.to_vec(),
        name: format!("{}-1", role.name()),
        fingerprint: [fingerprint; 32],
    }
}

fn service_in(dir: &TempDir) -> Service {
    Service {
        registry: registry_with(dir, &["A-α1-0001", "B-β1-0002"]),
        jpki: pki().jpki(),
        clock: now,
    }
}

/// Sends `req` through the handler and returns the status and the frame.
fn send(svc: &Service, who: &Identity, req: &Request<'_>) -> (Status, Vec<u8>) {
    let mut frame = Vec::new();
    req.encode(&mut frame).expect("fits");
    let mut out = Vec::new();
    match server::handle(svc, who, now(), &frame, &mut out) {
        Handled::Answered(status) => {
            let (head, _) = wire::split_response(&out).expect("a whole frame");
            assert_eq!(
                head.status, status as u8,
                "the frame says the status returned"
            );
            assert_eq!(head.op, req.op() as u8, "the answer echoes the opcode");
            (status, out)
        }
        Handled::Export(p) => {
            assert!(out.is_empty(), "an export writes nothing itself");
            assert_eq!(req.op(), Op::Export);
            let _ = p;
            (Status::Ok, out)
        }
    }
}

/// The success body of `req`, decoded; panics on a refusal.
fn ok<'a>(svc: &Service, who: &Identity, req: &Request<'_>, keep: &'a mut Vec<u8>) -> Response<'a> {
    let (status, frame) = send(svc, who, req);
    assert_eq!(
        status,
        Status::Ok,
        "{}: {:?}",
        req.op().name(),
        refused(&frame)
    );
    *keep = frame;
    let (_, body) = wire::split_response(keep).expect("frame");
    Response::decode(req.op(), body).expect("a success body")
}

/// What `who` looks up for `id` at `provider`.
fn lookup(svc: &Service, who: &Identity, provider: ProviderId, id: MyKeyId) -> Lookup {
    let mut keep = Vec::new();
    match ok(svc, who, &Request::Lookup { provider, id }, &mut keep) {
        Response::Lookup(l) => l,
        other => panic!("{other:?}"),
    }
}

fn refused(frame: &[u8]) -> Option<Refused<'_>> {
    let (head, body) = wire::split_response(frame).ok()?;
    (!head.is_ok()).then(|| Refused::decode(head.status, body))
}

fn status(svc: &Service, who: &Identity, req: &Request<'_>) -> Status {
    send(svc, who, req).0
}

fn as_card(pr: &(Vec<u8>, [u8; 32], Vec<u8>)) -> CardProof<'_> {
    CardProof {
        cert_der: &pr.0,
        challenge: &pr.1,
        signature: &pr.2,
    }
}

/// The roles column of PROTOCOL.md's operations table, by opcode.
fn spec_roles() -> Vec<(u8, String)> {
    let spec = include_str!("../../engine/PROTOCOL.md");
    let start = spec.find("## Operations").expect("operations section");
    spec[start..]
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let code = u8::from_str_radix(cells.get(1)?.strip_prefix("0x")?, 16).ok()?;
            Some((code, cells.get(3)?.to_string()))
        })
        .collect()
}

#[test]
fn every_role_is_admitted_to_exactly_the_operations_protocol_md_gives_it() {
    let roles = spec_roles();
    assert_eq!(roles.len(), 21, "{roles:?}");
    for (code, allowed) in roles {
        let op = Op::from_u8(code).expect("opcode");
        for (role, letter) in ROLES {
            let who = ident(role, &[provider("A")], 1);
            let header = [wire::VERSION, code, 0, 0, 0, 0, 0, 0];
            let got = server::admit(&who, &header);
            let may = allowed.split_whitespace().any(|r| r == letter.to_string());
            match got {
                Ok(a) => {
                    assert!(may, "{} admitted to {}", role.name(), op.name());
                    assert_eq!(a.op(), op);
                }
                Err(r) => {
                    assert!(!may, "{} refused {}: {:?}", role.name(), op.name(), r);
                    assert_eq!(r.error.status, Status::Forbidden);
                    assert_eq!(r.op, code);
                }
            }
        }
    }
}

#[test]
fn a_counter_acts_only_for_its_own_providers() {
    let dir = TempDir::new("handler-providers");
    let svc = service_in(&dir);
    let (a, b) = (provider("A-α1-0001"), provider("B-β1-0002"));
    let counter_a = ident(Role::Counter, &[a], 1);
    let operator = ident(Role::Operator, &[], 2);
    let id = MyKeyId::parse(b"1C2410DF79DGEL").expect("id");
    let ids = wire::id_list_bytes(&[id]);
    let for_b = |p: ProviderId| {
        [
            Request::Lookup { provider: p, id },
            Request::LookupBatch {
                provider: p,
                ids: IdList::from_bytes(&ids).expect("ids"),
            },
            Request::Link {
                id,
                provider: p,
                service: service("S"),
                replace: false,
            },
            Request::Unlink { id, provider: p },
            Request::Export { provider: p },
        ]
    };
    for req in for_b(b) {
        assert_eq!(
            status(&svc, &counter_a, &req),
            Status::Forbidden,
            "{}",
            req.op().name()
        );
        // The operator acts for every provider: the same request is not refused as forbidden.
        assert_ne!(status(&svc, &operator, &req), Status::Forbidden);
    }
    for req in for_b(a) {
        assert_ne!(status(&svc, &counter_a, &req), Status::Forbidden);
    }
    // A card lookup names a provider too.
    let card_req = Request::LookupCard {
        provider: b,
        card: CardProof {
            cert_der: &[0x30],
            challenge: &[0; 32],
            signature: &[0],
        },
    };
    assert_eq!(status(&svc, &counter_a, &card_req), Status::Forbidden);
}

#[test]
fn bad_frames_are_refused_with_their_status_before_anything_runs() {
    let dir = TempDir::new("handler-frames");
    let svc = service_in(&dir);
    let operator = ident(Role::Operator, &[], 2);
    let mut good = Vec::new();
    Request::RegisterProvider {
        provider: provider("C-γ1-0003"),
    }
    .encode(&mut good)
    .expect("fits");
    let mut out = Vec::new();
    let mut st = |frame: &[u8]| match server::handle(&svc, &operator, now(), frame, &mut out) {
        Handled::Answered(s) => s,
        Handled::Export(_) => panic!("not an export"),
    };
    assert_eq!(st(&good[..5]), Status::BadFrame, "short header");
    assert_eq!(st(&good[..good.len() - 1]), Status::BadFrame, "short body");
    assert_eq!(
        st(&[&good[..], &[0]].concat()),
        Status::BadFrame,
        "long body"
    );
    let mut v2 = good.clone();
    v2[0] = 2;
    assert_eq!(st(&v2), Status::UnsupportedVersion);
    // None of these registered the provider: the whole request does, once.
    let mut keep = Vec::new();
    let req = Request::RegisterProvider {
        provider: provider("C-γ1-0003"),
    };
    assert_eq!(
        ok(&svc, &operator, &req, &mut keep),
        Response::RegisterProvider(ProviderOutcome::Registered)
    );
}

#[test]
fn the_domain_operations_answer_frame_in_frame_out() {
    let dir = TempDir::new("handler-domain");
    let svc = service_in(&dir);
    let a = provider("A-α1-0001");
    let portal = ident(Role::Portal, &[], 1);
    let counter = ident(Role::Counter, &[a], 2);
    let other_counter = ident(Role::Counter, &[a], 3);
    let partner = ident(Role::Partner, &[], 4);
    let operator = ident(Role::Operator, &[], 5);
    let municipal = ident(Role::Municipal, &[], 6);
    let p = pki();
    let cert = card(&p.gen2023, &p.cards[0], 4242);
    let mut keep = Vec::new();

    // A card proof over a challenge issued to `who`.
    let proof = |who: &Identity, cert: &[u8]| {
        let mut keep = Vec::new();
        let Response::Challenge(c) = ok(&svc, who, &Request::Challenge, &mut keep) else {
            panic!("a challenge")
        };
        (
            cert.to_vec(),
            c.bytes,
            p.cards[0].sign(&c.bytes).expect("sign"),
        )
    };

    let pr = proof(&portal, &cert);
    let Response::Registered(id) = ok(
        &svc,
        &portal,
        &Request::RegisterFull { card: as_card(&pr) },
        &mut keep,
    ) else {
        panic!("registered")
    };
    assert_eq!(id.as_str(), "T0000000004242");
    assert_eq!(
        status(&svc, &portal, &Request::RegisterFull { card: as_card(&pr) }),
        Status::ChallengeReused
    );

    let link = |s: &str, replace| Request::Link {
        id,
        provider: a,
        service: service(s),
        replace,
    };
    assert_eq!(
        ok(&svc, &counter, &link("LIB-0001", false), &mut keep),
        Response::Link(LinkOutcome::Linked)
    );
    assert_eq!(
        ok(&svc, &counter, &link("LIB-0001", false), &mut keep),
        Response::Link(LinkOutcome::AlreadyLinked)
    );
    // A conflicting link says what is linked now.
    let (st, frame) = send(&svc, &counter, &link("LIB-9999", false));
    assert_eq!(st, Status::LinkConflict);
    assert_eq!(
        refused(&frame).expect("refusal").existing,
        Some(service("LIB-0001"))
    );
    assert_eq!(
        lookup(&svc, &counter, a, id),
        Lookup::Linked(service("LIB-0001"))
    );
    // A batch, in order, with an unknown ID in it.
    let unknown = MyKeyId::parse(b"ZZZZZZZZZZZZZZ").expect("id");
    let ids = wire::id_list_bytes(&[id, unknown, id]);
    let batch = Request::LookupBatch {
        provider: a,
        ids: IdList::from_bytes(&ids).expect("ids"),
    };
    let Response::LookupBatch(answers) = ok(&svc, &counter, &batch, &mut keep) else {
        panic!("answers")
    };
    assert_eq!(
        answers.iter().collect::<Vec<_>>(),
        [
            Lookup::Linked(service("LIB-0001")),
            Lookup::UnknownId,
            Lookup::Linked(service("LIB-0001"))
        ]
    );

    // A challenge is redeemed only by the certificate that asked for it.
    let pr = proof(&counter, &cert);
    let card_lookup = Request::LookupCard {
        provider: a,
        card: as_card(&pr),
    };
    assert_eq!(
        status(&svc, &other_counter, &card_lookup),
        Status::ChallengeUnknown
    );
    // ... and presenting it from another certificate burnt it.
    assert_eq!(
        status(&svc, &counter, &card_lookup),
        Status::ChallengeUnknown
    );
    let pr = proof(&counter, &cert);
    let card_lookup = Request::LookupCard {
        provider: a,
        card: as_card(&pr),
    };
    assert_eq!(
        ok(&svc, &counter, &card_lookup, &mut keep),
        Response::LookupCard {
            id: Some(id),
            answer: Lookup::Linked(service("LIB-0001"))
        }
    );

    // The partner revokes the card: the ID is suspended.
    let list = format!(
        "ca {}\n{:X}\n",
        p.gen2023_key_id_hex(),
        0x1000_0000u64 + 4242
    );
    let push = Request::PushSerials {
        push: PushId::parse(b"lost-4242").expect("push"),
        list: list.as_bytes(),
    };
    let Response::Push(s) = ok(&svc, &partner, &push, &mut keep) else {
        panic!("summary")
    };
    assert_eq!(
        (s.entries, s.revoke.newly_revoked, s.revoke.suspended),
        (1, 1, 1)
    );
    assert_eq!(lookup(&svc, &counter, a, id), Lookup::Suspended);

    // The operator's export is handed to the transport, whose rows say the state.
    let export = Request::Export { provider: a };
    let mut frame = Vec::new();
    export.encode(&mut frame).expect("fits");
    let mut out = Vec::new();
    assert_eq!(
        server::handle(&svc, &operator, now(), &frame, &mut out),
        Handled::Export(a)
    );
    let rows = server::handler::export_rows(&svc, &a).expect("rows");
    assert_eq!(
        rows.iter()
            .map(|r| (r.id, r.state, r.service))
            .collect::<Vec<_>>(),
        [(id, IdState::Suspended, service("LIB-0001"))]
    );
    let Response::Stats(stats) = ok(&svc, &operator, &Request::Stats, &mut keep) else {
        panic!("stats")
    };
    assert!(stats.iter().any(|(n, v)| n == "ids" && v >= 1));
    assert_eq!(
        ok(
            &svc,
            &operator,
            &Request::RegisterProvider {
                provider: provider("C-γ1-0003")
            },
            &mut keep
        ),
        Response::RegisterProvider(ProviderOutcome::Registered)
    );

    // The municipal counter re-binds the holder's new card; the link answers again.
    let renewed = card(&p.gen2023, &p.cards[0], 4343);
    let pr = proof(&municipal, &renewed);
    assert_eq!(
        ok(
            &svc,
            &municipal,
            &Request::Rebind {
                id,
                card: as_card(&pr)
            },
            &mut keep
        ),
        Response::Done
    );
    assert_eq!(
        ok(
            &svc,
            &counter,
            &Request::Unlink { id, provider: a },
            &mut keep
        ),
        Response::Unlink(UnlinkOutcome::Unlinked)
    );
    assert_eq!(
        ok(&svc, &operator, &Request::Delete { id }, &mut keep),
        Response::Done
    );
    assert_eq!(
        status(&svc, &counter, &link("LIB-0002", false)),
        Status::WrongState
    );
    assert_eq!(lookup(&svc, &counter, a, id), Lookup::Deleted);
}

#[test]
fn wrapped_writes_learn_their_seq_and_wrapped_reads_wait_for_it() {
    let dir = TempDir::new("handler-seq");
    let svc = service_in(&dir);
    let a = provider("A-α1-0001");
    let operator = ident(Role::Operator, &[], 1);
    let counter = ident(Role::Counter, &[a], 2);
    let municipal = ident(Role::Municipal, &[], 3);
    let seq_now = || svc.registry.store().durable_seq();
    let wrapped = |inner: &Request<'_>, at: Option<(u64, u16)>| {
        let mut f = Vec::new();
        wire::encode_wrapped(inner, at, &mut f).expect("fits");
        f
    };
    let answer = |who: &Identity, frame: &[u8]| {
        let mut out = Vec::new();
        let Handled::Answered(st) = server::handle(&svc, who, now(), frame, &mut out) else {
            panic!("not an export")
        };
        let (head, _) = wire::split_response(&out).expect("a whole frame");
        assert_eq!(head.op, frame[1], "the answer echoes the wrapper");
        (st, out)
    };
    let body = |frame: &[u8]| wire::split_response(frame).expect("frame").1.to_vec();

    // A write in WITH_SEQ: the seq its change made, then the write's own answer.
    let before = seq_now();
    let reg = Request::RegisterProvider {
        provider: provider("C-γ1-0003"),
    };
    let (st, out) = answer(&operator, &wrapped(&reg, None));
    assert_eq!(st, Status::Ok, "{:?}", refused(&out));
    let b = body(&out);
    let (seq, rest) = wire::split_seq(&b).expect("a seq");
    assert_eq!(seq, before + 1, "the write's own change");
    assert_eq!(seq, seq_now());
    assert_eq!(
        Response::decode(Op::RegisterProvider, rest).expect("the write's body"),
        Response::RegisterProvider(ProviderOutcome::Registered)
    );
    // A write that changes nothing still answers the node's seq.
    let (st, out) = answer(&operator, &wrapped(&reg, None));
    assert_eq!(st, Status::Ok);
    let b = body(&out);
    let (again, rest) = wire::split_seq(&b).expect("a seq");
    assert_eq!(again, seq);
    assert_eq!(
        Response::decode(Op::RegisterProvider, rest).expect("body"),
        Response::RegisterProvider(ProviderOutcome::AlreadyRegistered)
    );

    // The wrapped operation's role and providers are checked as if it came alone.
    let (st, _) = answer(&municipal, &wrapped(&reg, None));
    assert_eq!(
        st,
        Status::Forbidden,
        "a municipal certificate may not register a provider"
    );
    let id = MyKeyId::parse(b"1C2410DF79DGEL").expect("id");
    let foreign = Request::Unlink {
        id,
        provider: provider("B-β1-0002"),
    };
    let (st, _) = answer(&counter, &wrapped(&foreign, None));
    assert_eq!(st, Status::Forbidden, "a counter's providers");
    // Only the operations listed may be wrapped, and nothing is run for the others.
    let lookup_req = Request::Lookup { provider: a, id };
    assert_eq!(
        answer(&operator, &wrapped(&lookup_req, None)).0,
        Status::BadFrame
    );
    assert_eq!(
        answer(&operator, &wrapped(&reg, Some((0, 0)))).0,
        Status::BadFrame
    );
    let push = Request::PushSerials {
        push: PushId::parse(b"p-1").expect("push id"),
        list: b"",
    };
    let (st, _) = answer(&operator, &wrapped(&push, None));
    assert_eq!(st, Status::BadFrame, "a push is not wrapped");
    let nested = wrapped(&reg, None);
    let mut twice = wire::request_header_bytes(Op::WithSeq as u8, nested.len() as u32 - 7).to_vec();
    twice.push(Op::WithSeq as u8);
    twice.extend_from_slice(&nested[wire::HEADER_LEN..]);
    assert_eq!(
        answer(&operator, &twice).0,
        Status::BadFrame,
        "a wrapper in a wrapper"
    );
    assert_eq!(seq_now(), seq, "nothing refused changed the store");

    // A read in AT_SEQ at or below the node's seq is answered as the read alone.
    let (st, out) = answer(&counter, &wrapped(&lookup_req, Some((seq, 100))));
    assert_eq!(st, Status::Ok);
    assert_eq!(
        Response::decode(Op::Lookup, &body(&out)).expect("a lookup's body"),
        Response::Lookup(lookup(&svc, &counter, a, id))
    );
    // Above it: BEHIND, saying where the node is.
    let (st, out) = answer(&counter, &wrapped(&lookup_req, Some((seq + 1, 0))));
    assert_eq!(st, Status::Behind);
    let why = refused(&out).expect("refusal").message.to_string();
    assert!(why.contains(&format!("applied seq {seq}")), "{why}");
    // A municipal certificate may run no read AT_SEQ wraps: refused from the header.
    let (st, _) = answer(&municipal, &wrapped(&lookup_req, Some((0, 0))));
    assert_eq!(st, Status::Forbidden);
}

#[test]
fn a_forwarded_write_runs_as_its_client_and_answers_in_its_clients_frame() {
    let dir = TempDir::new("handler-forward");
    let svc = service_in(&dir);
    let a = provider("A-α1-0001");
    let node = ident(Role::Node, &[], 9);
    let operator = ident(Role::Operator, &[], 1);
    // A FORWARD, or with `push` a FORWARD_PUSH, carrying `req` (the opcode set by hand, so
    // that the wrong pairings can be sent too).
    let forward_as = |push: bool, client: &Identity, req: &Request<'_>, taken: bool| {
        let mut inner = Vec::new();
        req.encode(&mut inner).expect("fits");
        let mut f = Vec::new();
        wire::encode_forward(
            client.role.code(),
            &client.name,
            client.fingerprint,
            &client.providers,
            taken,
            &inner,
            &mut f,
        )
        .expect("fits");
        f[1] = if push { Op::ForwardPush } else { Op::Forward } as u8;
        f
    };
    let forward =
        |client: &Identity, req: &Request<'_>, taken: bool| forward_as(false, client, req, taken);
    let answer = |who: &Identity, frame: &[u8]| {
        let mut out = Vec::new();
        let Handled::Answered(st) = server::handle(&svc, who, now(), frame, &mut out) else {
            panic!("not an export")
        };
        (st, out)
    };
    let reg = Request::RegisterProvider {
        provider: provider("C-γ1-0003"),
    };
    // Run as the operator it names; the answer is REGISTER_PROVIDER's own frame.
    let (st, out) = answer(&node, &forward(&operator, &reg, false));
    assert_eq!(st, Status::Ok, "{:?}", refused(&out));
    let (head, body) = wire::split_response(&out).expect("frame");
    assert_eq!(
        head.op,
        Op::RegisterProvider as u8,
        "the client's opcode, not FORWARD's"
    );
    assert_eq!(
        Response::decode(Op::RegisterProvider, body).expect("body"),
        Response::RegisterProvider(ProviderOutcome::Registered)
    );
    // A WITH_SEQ write forwarded keeps its seq.
    let mut wrapped = Vec::new();
    wire::encode_wrapped(
        &Request::RegisterProvider {
            provider: provider("D-δ1-0004"),
        },
        None,
        &mut wrapped,
    )
    .expect("fits");
    let mut f = Vec::new();
    wire::encode_forward(
        Role::Operator.code(),
        "op",
        [1; 32],
        &[],
        false,
        &wrapped,
        &mut f,
    )
    .expect("fits");
    let (st, out) = answer(&node, &f);
    assert_eq!(st, Status::Ok);
    let (head, body) = wire::split_response(&out).expect("frame");
    assert_eq!(head.op, Op::WithSeq as u8);
    assert_eq!(
        wire::split_seq(body).expect("seq").0,
        svc.registry.store().durable_seq()
    );
    // The client's role and providers hold as if it had come itself.
    let municipal = ident(Role::Municipal, &[], 3);
    let (st, out) = answer(&node, &forward(&municipal, &reg, false));
    assert_eq!(st, Status::Forbidden);
    assert_eq!(
        wire::split_response(&out).expect("frame").0.op,
        Op::RegisterProvider as u8
    );
    let counter = ident(Role::Counter, &[a], 2);
    let id = MyKeyId::parse(b"1C2410DF79DGEL").expect("id");
    let foreign = Request::Unlink {
        id,
        provider: provider("B-β1-0002"),
    };
    assert_eq!(
        answer(&node, &forward(&counter, &foreign, false)).0,
        Status::Forbidden
    );
    let own = Request::Unlink { id, provider: a };
    assert_eq!(
        answer(&node, &forward(&counter, &own, false)).0,
        Status::UnknownId,
        "run, for a provider the counter acts for"
    );
    // Only a node certificate forwards, only a client's write, and only as a client.
    for who in [&operator, &counter] {
        let (st, out) = answer(who, &forward(&operator, &reg, false));
        assert_eq!(st, Status::Forbidden);
        assert_eq!(
            wire::split_response(&out).expect("frame").0.op,
            Op::Forward as u8
        );
    }
    let lookup_req = Request::Lookup { provider: a, id };
    let (st, out) = answer(&node, &forward(&operator, &lookup_req, false));
    assert_eq!(st, Status::BadFrame, "a read is not forwarded");
    assert_eq!(
        wire::split_response(&out).expect("frame").0.op,
        Op::Forward as u8
    );
    let (st, _) = answer(&node, &forward(&node, &reg, false));
    assert_eq!(st, Status::BadFrame, "a node forwarding as a node");
    let f = forward(&operator, &reg, false);
    for cut in [wire::HEADER_LEN + 3, f.len() - 1] {
        let mut short = f[..cut].to_vec();
        let len = (short.len() - wire::HEADER_LEN) as u32;
        short[4..8].copy_from_slice(&len.to_le_bytes());
        assert_eq!(answer(&node, &short).0, Status::BadFrame, "cut at {cut}");
    }
    // A revocation push goes in a FORWARD_PUSH, run as the partner it names; its answer is
    // the push's own frame. A FORWARD does not carry a push, nor a FORWARD_PUSH another
    // write, and only a node sends one.
    let p = pki();
    let partner = ident(Role::Partner, &[], 4);
    let list = format!("ca {}\n{:X}\n", p.gen2023_key_id_hex(), 0x1000_0000u64 + 77);
    let push = Request::PushSerials {
        push: PushId::parse(b"forwarded-77").expect("push"),
        list: list.as_bytes(),
    };
    let (st, out) = answer(&node, &forward_as(true, &partner, &push, false));
    assert_eq!(st, Status::Ok, "{:?}", refused(&out));
    let (head, body) = wire::split_response(&out).expect("frame");
    assert_eq!(head.op, Op::PushSerials as u8);
    let Response::Push(s) = Response::decode(Op::PushSerials, body).expect("body") else {
        panic!("a push summary")
    };
    assert_eq!((s.entries, s.revoke.newly_revoked), (1, 1));
    let (st, out) = answer(&node, &forward(&partner, &push, false));
    assert_eq!(st, Status::BadFrame, "a FORWARD carrying a push");
    assert_eq!(
        wire::split_response(&out).expect("frame").0.op,
        Op::Forward as u8
    );
    let (st, out) = answer(&node, &forward_as(true, &operator, &reg, false));
    assert_eq!(
        st,
        Status::BadFrame,
        "a FORWARD_PUSH carrying another write"
    );
    assert_eq!(
        wire::split_response(&out).expect("frame").0.op,
        Op::ForwardPush as u8
    );
    let (st, _) = answer(&node, &forward_as(true, &operator, &push, false));
    assert_eq!(st, Status::Forbidden, "a push as the operator");
    assert_eq!(
        answer(&partner, &forward_as(true, &partner, &push, false)).0,
        Status::Forbidden,
        "a partner sending FORWARD_PUSH"
    );
    // A node may send nothing but FORWARD and FORWARD_PUSH.
    assert_eq!(status(&svc, &node, &reg), Status::Forbidden);
    assert_eq!(status(&svc, &node, &push), Status::Forbidden);
}
