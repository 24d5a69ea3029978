//! The `mykey/1` codec round-trips every request and every response: what is encoded decodes
//! to the same value and re-encodes to the same bytes, and every truncation of a body is
//! refused, never a panic. Property-based over the fields' whole ranges.

use mykey_engine::answer::{
    IdState, LinkOutcome, Lookup, ProviderOutcome, PushSummary, RevokeSummary, UnlinkOutcome,
};
use mykey_engine::id::{MyKeyId, ProviderId, PushId, ServiceId, Timestamp};
use mykey_engine::jpki::{CHALLENGE_LEN, CardProof, Challenge};
use mykey_engine::wire::{
    self, BatchFrame, ExportDecoder, ExportStep, ExportedLink, HEADER_LEN, IdList, Op, Refused,
    Request, Response, ResponseHeader, Status,
};
use mykey_tests::mykey;
use proptest::prelude::*;

fn ids() -> impl Strategy<Value = MyKeyId> {
    any::<u64>().prop_map(mykey)
}

fn providers() -> impl Strategy<Value = ProviderId> {
    "[A-Za-z0-9α-]{1,10}".prop_filter_map("provider", |s| ProviderId::parse(s.as_bytes()).ok())
}

fn services() -> impl Strategy<Value = ServiceId> {
    "[A-Z0-9]{1,64}".prop_filter_map("service", |s| ServiceId::parse(s.as_bytes()).ok())
}

fn pushes() -> impl Strategy<Value = PushId> {
    "[a-z0-9-]{1,64}".prop_filter_map("push", |s| PushId::parse(s.as_bytes()).ok())
}

fn lookups() -> impl Strategy<Value = Lookup> {
    prop_oneof![
        services().prop_map(Lookup::Linked),
        Just(Lookup::NotLinked),
        Just(Lookup::UnknownId),
        Just(Lookup::Provisional),
        Just(Lookup::Suspended),
        Just(Lookup::Deleted),
    ]
}

/// The owned parts of a request; [`Parts::request`] borrows them.
#[derive(Clone, Debug)]
struct Parts {
    op: u8,
    provider: ProviderId,
    id: MyKeyId,
    ids: Vec<u8>,
    service: ServiceId,
    replace: bool,
    push: PushId,
    blob: Vec<u8>,
    cert: Vec<u8>,
    challenge: Vec<u8>,
    signature: Vec<u8>,
}

impl Parts {
    fn request(&self) -> Request<'_> {
        let card = CardProof {
            cert_der: &self.cert,
            challenge: &self.challenge,
            signature: &self.signature,
        };
        let (provider, id) = (self.provider, self.id);
        match Op::from_u8(self.op).expect("op") {
            Op::Lookup => Request::Lookup { provider, id },
            Op::LookupBatch => Request::LookupBatch {
                provider,
                ids: IdList::from_bytes(&self.ids).expect("ids"),
            },
            Op::Challenge => Request::Challenge,
            Op::LookupCard => Request::LookupCard { provider, card },
            Op::RegisterFull => Request::RegisterFull { card },
            Op::RegisterProvisional => Request::RegisterProvisional { id, card },
            Op::Confirm => Request::Confirm { id, card },
            Op::Link => Request::Link {
                id,
                provider,
                service: self.service,
                replace: self.replace,
            },
            Op::Unlink => Request::Unlink { id, provider },
            Op::Rebind => Request::Rebind { id, card },
            Op::Delete => Request::Delete { id },
            Op::PushCrl => Request::PushCrl {
                push: self.push,
                crl: &self.blob,
            },
            Op::PushSerials => Request::PushSerials {
                push: self.push,
                list: &self.blob,
            },
            Op::Export => Request::Export { provider },
            Op::Stats => Request::Stats,
            Op::RegisterProvider => Request::RegisterProvider { provider },
            Op::Pipeline => Request::Pipeline,
            Op::WithSeq | Op::AtSeq | Op::Forward | Op::ForwardPush => {
                panic!("a wrapper is built by wire::encode_wrapped or encode_forward")
            }
        }
    }
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        (
            // Every operation but the wrappers (0x11..=0x14).
            prop_oneof![1u8..=0x10, Just(Op::Pipeline as u8)],
            providers(),
            ids(),
            prop::collection::vec(ids(), 1..40),
        ),
        (services(), any::<bool>(), pushes()),
        (
            prop::collection::vec(any::<u8>(), 0..600),
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 0..300),
        ),
    )
        .prop_map(
            |((op, provider, id, batch), (service, replace, push), (blob, cert, ch, sig))| Parts {
                op,
                provider,
                id,
                ids: wire::id_list_bytes(&batch),
                service,
                replace,
                push,
                blob,
                cert,
                challenge: ch,
                signature: sig,
            },
        )
}

/// An owned response of each operation.
#[derive(Clone, Debug)]
enum Owned {
    One(Op, Response<'static>),
    Batch(Vec<Lookup>),
    Stats(Vec<(String, u64)>),
}

fn responses() -> impl Strategy<Value = Owned> {
    let summary = (any::<[u64; 4]>(), any::<bool>()).prop_map(|(n, replayed)| PushSummary {
        entries: n[0],
        revoke: RevokeSummary {
            newly_revoked: n[1],
            already_known: n[2],
            suspended: n[3],
        },
        replayed,
    });
    prop_oneof![
        lookups().prop_map(|l| Owned::One(Op::Lookup, Response::Lookup(l))),
        prop::collection::vec(lookups(), 0..64).prop_map(Owned::Batch),
        (any::<[u8; CHALLENGE_LEN]>(), 0u32..u32::MAX).prop_map(|(bytes, t)| Owned::One(
            Op::Challenge,
            Response::Challenge(Challenge {
                bytes,
                expires_at: Timestamp::from_unix_secs(u64::from(t)).expect("in range"),
            })
        )),
        (prop::option::of(ids()), lookups()).prop_map(|(id, answer)| Owned::One(
            Op::LookupCard,
            Response::LookupCard { id, answer }
        )),
        ids().prop_map(|id| Owned::One(Op::RegisterFull, Response::Registered(id))),
        prop_oneof![
            Just(Op::RegisterProvisional),
            Just(Op::Confirm),
            Just(Op::Rebind),
            Just(Op::Delete)
        ]
        .prop_map(|op| Owned::One(op, Response::Done)),
        prop_oneof![
            Just(LinkOutcome::Linked),
            Just(LinkOutcome::AlreadyLinked),
            services().prop_map(|previous| LinkOutcome::Replaced { previous }),
        ]
        .prop_map(|o| Owned::One(Op::Link, Response::Link(o))),
        prop_oneof![
            Just(UnlinkOutcome::Unlinked),
            Just(UnlinkOutcome::NotLinked)
        ]
        .prop_map(|o| Owned::One(Op::Unlink, Response::Unlink(o))),
        (summary, any::<bool>()).prop_map(|(s, crl)| Owned::One(
            if crl { Op::PushCrl } else { Op::PushSerials },
            Response::Push(s)
        )),
        prop::collection::vec(("[a-z_]{1,20}", any::<u64>()), 0..20).prop_map(Owned::Stats),
        prop_oneof![
            Just(ProviderOutcome::Registered),
            Just(ProviderOutcome::AlreadyRegistered)
        ]
        .prop_map(|o| Owned::One(Op::RegisterProvider, Response::RegisterProvider(o))),
    ]
}

/// The frame of an owned response, through the builder the server uses.
fn encode(r: &Owned) -> (Op, Vec<u8>) {
    let mut out = Vec::new();
    match r {
        Owned::One(op, resp) => {
            resp.encode(*op, &mut out);
            (*op, out)
        }
        Owned::Batch(answers) => {
            let mut f = BatchFrame::begin(&mut out, answers.len() as u16);
            for a in answers {
                f.push(a);
            }
            assert!(f.finish());
            (Op::LookupBatch, out)
        }
        Owned::Stats(stats) => {
            let s: Vec<(&str, u64)> = stats.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            wire::stats_frame(&mut out, &s);
            (Op::Stats, out)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_request_round_trips(p in parts()) {
        let req = p.request();
        let mut frame = Vec::new();
        req.encode(&mut frame).expect("fits");
        let h: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header");
        let (op, len) = wire::request_header(&h).expect("a header the codec wrote");
        prop_assert_eq!(op, req.op());
        prop_assert_eq!(len as usize, frame.len() - HEADER_LEN);
        let body = &frame[HEADER_LEN..];
        let back = Request::decode(op, body).expect("decodes");
        let mut again = Vec::new();
        back.encode(&mut again).expect("fits");
        prop_assert_eq!(&frame, &again);
        for cut in 0..body.len() {
            prop_assert!(Request::decode(op, &body[..cut]).is_err(), "{} cut at {}", op.name(), cut);
        }
    }

    #[test]
    fn every_wrappable_request_round_trips_in_its_wrapper(
        p in parts(),
        seq in any::<u64>(),
        wait_ms in any::<u16>(),
    ) {
        let inner = p.request();
        let op = inner.op();
        let at = if op.seq_wrappable_write() {
            None
        } else if op.seq_wrappable_read() {
            Some((seq, wait_ms))
        } else {
            return Ok(());
        };
        let mut bare = Vec::new();
        inner.encode(&mut bare).expect("fits");
        let mut frame = Vec::new();
        wire::encode_wrapped(&inner, at, &mut frame).expect("fits");
        let h: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header");
        let (wop, len) = wire::request_header(&h).expect("a header the codec wrote");
        prop_assert_eq!(wop, if at.is_some() { Op::AtSeq } else { Op::WithSeq });
        prop_assert_eq!(len as usize, frame.len() - HEADER_LEN);
        let body = &frame[HEADER_LEN..];
        let outer = Request::decode(wop, body).expect("decodes");
        match (outer, at) {
            (Request::AtSeq { seq: s, wait_ms: w, op: o, .. }, Some((seq, wait_ms))) => {
                prop_assert_eq!((s, w, o), (seq, wait_ms, op));
            }
            (Request::WithSeq { op: o, .. }, None) => prop_assert_eq!(o, op),
            (other, _) => prop_assert!(false, "decoded as {:?}", other),
        }
        let back = outer.wrapped().expect("a wrapper").expect("the wrapped request decodes");
        let mut again = Vec::new();
        back.encode(&mut again).expect("fits");
        prop_assert_eq!(&bare, &again);
        // Cut anywhere, the wrapper or what it wraps fails to decode.
        for cut in 0..body.len() {
            let whole = Request::decode(wop, &body[..cut])
                .and_then(|o| o.wrapped().expect("a wrapper"));
            prop_assert!(whole.is_err(), "{} in {} cut at {}", op.name(), wop.name(), cut);
        }
    }

    #[test]
    fn every_forwardable_request_and_push_round_trips_in_a_forward(
        p in parts(),
        role in 0u8..5,
        name in "\\PC{0,40}",
        fingerprint in any::<[u8; 32]>(),
        providers in prop::collection::vec(providers(), 0..5),
        taken in any::<bool>(),
    ) {
        let inner = p.request();
        let push = matches!(inner.op(), Op::PushCrl | Op::PushSerials);
        if !inner.op().forwardable() && !push {
            return Ok(());
        }
        let mut frame = Vec::new();
        inner.encode(&mut frame).expect("fits");
        let mut f = Vec::new();
        wire::encode_forward(role, &name, fingerprint, &providers, taken, &frame, &mut f)
            .expect("fits");
        let h: [u8; HEADER_LEN] = f[..HEADER_LEN].try_into().expect("header");
        let (op, len) = wire::request_header(&h).expect("a header the codec wrote");
        prop_assert_eq!(op, if push { Op::ForwardPush } else { Op::Forward });
        prop_assert_eq!(len as usize, f.len() - HEADER_LEN);
        let body = &f[HEADER_LEN..];
        let Request::Forward { push: got_push, client, frame: got } = Request::decode(op, body).expect("decodes") else {
            panic!("not a FORWARD")
        };
        prop_assert_eq!(got_push, push);
        prop_assert_eq!(client.role, role);
        prop_assert_eq!(client.name, name.as_str());
        prop_assert_eq!(client.fingerprint, fingerprint);
        prop_assert_eq!(client.providers().collect::<Vec<_>>(), providers);
        prop_assert_eq!(client.challenge_taken, taken);
        prop_assert_eq!(got, &frame[..]);
        let mut again = Vec::new();
        Request::Forward { push, client, frame: got }.encode(&mut again).expect("fits");
        prop_assert_eq!(&f, &again);
        // Cut inside the client or the carried frame's header, it does not decode.
        let client_len = body.len() - frame.len();
        for cut in 0..client_len + HEADER_LEN {
            prop_assert!(Request::decode(op, &body[..cut]).is_err(), "cut at {}", cut);
        }
    }

    #[test]
    fn every_response_round_trips(r in responses()) {
        let (op, frame) = encode(&r);
        let (head, body) = wire::split_response(&frame).expect("a frame the codec wrote");
        prop_assert!(head.is_ok());
        prop_assert_eq!(head.op, op as u8);
        let back = Response::decode(op, body).expect("decodes");
        prop_assert!(back.answers(op));
        match (&r, back) {
            (Owned::One(_, want), got) => prop_assert_eq!(*want, got),
            (Owned::Batch(want), Response::LookupBatch(a)) => {
                prop_assert_eq!(want, &a.iter().collect::<Vec<_>>());
            }
            (Owned::Stats(want), Response::Stats(s)) => {
                let got: Vec<(String, u64)> = s.iter().map(|(n, v)| (n.to_owned(), v)).collect();
                prop_assert_eq!(want, &got);
            }
            (_, other) => prop_assert!(false, "decoded as {:?}", other),
        }
        let mut again = Vec::new();
        back.encode(op, &mut again);
        prop_assert_eq!(&frame, &again);
        // Empty bodies (Done) have nothing to truncate; every other truncation is refused.
        for cut in 0..body.len() {
            prop_assert!(Response::decode(op, &body[..cut]).is_err(), "{} cut at {}", op.name(), cut);
        }
    }

    #[test]
    fn refusals_round_trip(
        status in 1u8..=57,
        message in "\\PC{0,80}",
        existing in prop::option::of(services()),
    ) {
        let Some(status) = Status::from_u8(status) else { return Ok(()) };
        let existing = existing.filter(|_| status == Status::LinkConflict);
        let mut out = Vec::new();
        wire::error_response(&mut out, Op::Link as u8, status, &message, existing.as_ref());
        let (head, body) = wire::split_response(&out).expect("frame");
        prop_assert_eq!(head.status, status as u8);
        let r = Refused::decode(head.status, body);
        prop_assert_eq!(r.message.as_ref(), message.as_str());
        prop_assert_eq!(r.existing, existing);
    }

    #[test]
    fn exports_round_trip_in_chunks(
        rows in prop::collection::vec((ids(), 0usize..4, services()), 0..50),
        chunk in 1usize..8,
    ) {
        let rows: Vec<ExportedLink> = rows
            .into_iter()
            .map(|(id, s, service)| ExportedLink { id, state: IdState::ALL[s], service })
            .collect();
        let mut out = Vec::new();
        wire::begin_export(&mut out);
        for c in rows.chunks(chunk) {
            wire::export_chunk(&mut out, c);
        }
        wire::export_end(&mut out, rows.len() as u64);
        let h: [u8; HEADER_LEN] = out[..HEADER_LEN].try_into().expect("header");
        let head = ResponseHeader::decode(&h).expect("header");
        prop_assert_eq!(head.len, wire::STREAMED);
        let mut d = ExportDecoder::new();
        let mut at = HEADER_LEN;
        let mut got = Vec::new();
        let total = loop {
            let n = d.need();
            match d.step(&out[at..at + n]).expect("step") {
                ExportStep::More => {}
                ExportStep::Row(r) => got.push(r),
                ExportStep::End(t) => break t,
            }
            at += n;
        };
        prop_assert_eq!(at + 8, out.len());
        prop_assert_eq!(total, rows.len() as u64);
        prop_assert_eq!(got, rows);
    }
}

/// A total that disagrees with the rows sent is refused.
#[test]
fn an_export_whose_total_lies_is_refused() {
    let mut out = Vec::new();
    wire::export_end(&mut out, 3);
    let mut d = ExportDecoder::new();
    assert_eq!(d.step(&out[..2]), Ok(ExportStep::More));
    assert_eq!(
        d.step(&out[2..]).map_err(|e| e.status),
        Err(Status::BadFrame)
    );
}
