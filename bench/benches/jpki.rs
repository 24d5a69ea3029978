//! JPKI benchmarks, each with its baseline in the same run:
//! - authenticated check, cold (challenge + chain + card signature, the certificate not
//!   cached), against a bare rustls-webpki chain check plus one bare aws-lc-rs RSA verify;
//! - authenticated check, cached (challenge + card signature), against one bare RSA verify
//!   (key parsed per call, as `UnparsedPublicKey` does, and pre-parsed);
//! - a 1M-entry CRL ingested end to end (parse, signature, apply, fsync) into a fresh store,
//!   against parsing the same CRL alone;
//! - the next day's CRL (the same 1M entries and 1 % new ones, a higher number) pushed into a
//!   store that holds the first, compacted: the daily steady state, since partners push full
//!   CRLs, never deltas.
//!
//! Every authenticated check consumes a fresh challenge signed by the simulated card; the
//! card's signing is done outside the timed region (it is the card's cost, not ours).
// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{self, ParsedPublicKey, UnparsedPublicKey};
use criterion::{Criterion, criterion_group, criterion_main};
use mykey_bench::BenchDir;
use mykey_engine::id::{ActorId, PushId, Timestamp};
use mykey_engine::jpki::dev::{DevCa, DevKey};
use mykey_engine::jpki::{Anchors, CardProof, Jpki, JpkiConfig, SerialNo, sha256};
use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{Registry, RegistryConfig};
use mykey_engine::store::fs::{Fs, RealFs};
use rustls_pki_types::{CertificateDer, UnixTime};

/// 2026-11-25.
fn now() -> Timestamp {
    Timestamp::from_unix_secs(1_795_564_800).expect("time")
}

fn years(y: u64) -> u64 {
    y * 365 * 86_400
}

struct Setup {
    ca: DevCa,
    card: DevKey,
    cert: Vec<u8>,
    rsa_key: Vec<u8>,
}

fn setup() -> Setup {
    let ca = DevCa::auth(
        0x06d1_8006,
        Timestamp::from_unix_secs(now().unix_secs() - years(3)).expect("t"),
        now().plus_secs(years(7)),
    )
    .expect("CA");
    let card = DevKey::generate(2048).expect("card key");
    let cert = ca
        .issue(
            &card,
            "BENCH000000001132210030",
            &[0x12, 0x34, 0x56, 0x78],
            Timestamp::from_unix_secs(now().unix_secs() - years(1)).expect("t"),
            now().plus_secs(years(4)),
        )
        .expect("card cert");
    let rsa_key = card.public_key().to_vec();
    Setup {
        ca,
        card,
        cert,
        rsa_key,
    }
}

fn jpki(s: &Setup) -> Jpki {
    let anchors =
        Anchors::from_files(&[("bench-ca.der".into(), s.ca.der().to_vec())]).expect("anchors");
    Jpki::new(anchors, JpkiConfig::default())
}

/// `n` fresh challenges issued by `jpki` and signed by the card.
fn proofs(jpki: &Jpki, card: &DevKey, n: u64) -> Vec<([u8; 32], Vec<u8>)> {
    (0..n)
        .map(|_| {
            let c = jpki.issue_challenge(now()).expect("challenge");
            (c.bytes, card.sign(&c.bytes).expect("sign"))
        })
        .collect()
}

/// Times `f` over `iters` fresh challenges and their signatures, made before the clock starts.
fn over_fresh_proofs(
    jpki: &Jpki,
    card: &DevKey,
    iters: u64,
    mut f: impl FnMut(&[u8; 32], &[u8]),
) -> Duration {
    let ps = proofs(jpki, card, iters);
    let start = Instant::now();
    for (ch, sig) in &ps {
        f(ch, sig);
    }
    start.elapsed()
}

fn authenticated(c: &mut Criterion) {
    let s = setup();
    let der = CertificateDer::from(s.cert.as_slice());
    let anchor_der = CertificateDer::from(s.ca.der());
    let anchor = webpki::anchor_from_trusted_cert(&anchor_der).expect("anchor");
    let time = UnixTime::since_unix_epoch(Duration::from_secs(now().unix_secs()));
    let msg = [7u8; 32];
    let sig = s.card.sign(&msg).expect("sign");
    let parsed =
        ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &s.rsa_key).expect("key");

    let mut g = c.benchmark_group("jpki_auth");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    let bare_chain = || {
        let ee = webpki::EndEntityCert::try_from(&der).expect("ee");
        ee.verify_for_usage(
            &[webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256],
            std::slice::from_ref(&anchor),
            &[],
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .expect("chain")
    };
    let bare_verify_of = |ch: &[u8; 32], sig: &[u8]| {
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &s.rsa_key)
            .verify(ch, sig)
            .expect("verify")
    };
    let bare_verify = || bare_verify_of(&msg, &sig);
    g.bench_function("baseline_webpki_chain", |b| b.iter(bare_chain));
    g.bench_function("baseline_rsa_verify", |b| b.iter(bare_verify));
    g.bench_function("baseline_rsa_verify_preparsed", |b| {
        b.iter(|| parsed.verify_sig(&msg, &sig).expect("verify"))
    });
    // The engine's own checks consume a fresh challenge per call, signed outside the timed
    // region; the baselines run over the same kind of freshly signed challenges, so both sides
    // see the same memory and CPU state.
    let j = jpki(&s);
    g.bench_function("baseline_webpki_chain_plus_rsa_verify", |b| {
        b.iter_custom(|iters| {
            over_fresh_proofs(&j, &s.card, iters, |ch, sig| {
                bare_chain();
                bare_verify_of(ch, sig);
            })
        })
    });
    g.bench_function("baseline_rsa_verify_fresh_challenges", |b| {
        b.iter_custom(|iters| over_fresh_proofs(&j, &s.card, iters, bare_verify_of))
    });

    // The engine's full check, each time with the certificate evicted from the cache; then
    // with it cached.
    let fp = sha256(&s.cert);
    g.bench_function("engine_cert_only_cold", |b| {
        b.iter(|| {
            j.evict(&fp);
            j.verify_cert(now(), &s.cert).expect("verified")
        })
    });
    for (name, cold) in [
        ("engine_cold_chain_plus_challenge", true),
        ("engine_cached_challenge_only", false),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                over_fresh_proofs(&j, &s.card, iters, |ch, sig| {
                    if cold {
                        j.evict(&fp);
                    }
                    j.authenticate(
                        now(),
                        &CardProof {
                            cert_der: &s.cert,
                            challenge: ch,
                            signature: sig,
                        },
                    )
                    .expect("authenticated");
                })
            })
        });
    }
    g.finish();
}

const CRL_ENTRIES: u64 = 1_000_000;

/// A new registry in a new directory under `tag` (the directory goes when the first is dropped).
fn fresh_registry(tag: &str) -> (BenchDir, Registry) {
    let dir = BenchDir::new(tag);
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir.path()).expect("dir"));
    let reg =
        Registry::create(fs, StoreConfig::default(), RegistryConfig::default()).expect("registry");
    (dir, reg)
}
/// Entries the next day's CRL adds.
const NEXT_DAY_NEW: u64 = CRL_ENTRIES / 100;

fn crl(c: &mut Criterion) {
    let s = setup();
    let serial = |i: u64| {
        SerialNo::from_integer(&(0x4000_0000_0000 + i * 7919).to_be_bytes()).expect("serial")
    };
    let serials: Vec<SerialNo> = (0..CRL_ENTRIES).map(serial).collect();
    let t0 = Instant::now();
    let der =
        s.ca.crl(42, now(), now().plus_secs(86_400), &serials)
            .expect("CRL");
    eprintln!(
        "CRL of {CRL_ENTRIES} entries: {} bytes, generated in {:.1} s",
        der.len(),
        t0.elapsed().as_secs_f64()
    );
    let j = jpki(&s);
    let actor = ActorId::parse(b"bench-partner").expect("actor");
    let mut g = c.benchmark_group("jpki_crl_1m");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("baseline_parse_and_check_only", |b| {
        b.iter(|| j.parse_crl(now(), &der).expect("parse"))
    });
    g.bench_function("engine_push_durable_and_enforced", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let (_dir, reg) = fresh_registry("crl");
                let push = PushId::parse(format!("bench-{i}").as_bytes()).expect("push id");
                let start = Instant::now();
                let sum = reg.push_crl(now(), actor, &j, push, &der).expect("push");
                total += start.elapsed();
                assert_eq!(sum.revoke.newly_revoked, CRL_ENTRIES);
            }
            total
        })
    });
    let next_serials: Vec<SerialNo> = (0..CRL_ENTRIES + NEXT_DAY_NEW).map(serial).collect();
    let next_der =
        s.ca.crl(43, now(), now().plus_secs(86_400), &next_serials)
            .expect("next CRL");
    g.bench_function("engine_push_next_day_1pct_new", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let (_dir, reg) = fresh_registry("crl-next");
                let first = PushId::parse(format!("day1-{i}").as_bytes()).expect("push id");
                reg.push_crl(now(), actor, &j, first, &der)
                    .expect("first push");
                reg.store().compact().expect("compact");
                let push = PushId::parse(format!("day2-{i}").as_bytes()).expect("push id");
                let start = Instant::now();
                let sum = reg
                    .push_crl(now(), actor, &j, push, &next_der)
                    .expect("next push");
                total += start.elapsed();
                assert_eq!(sum.revoke.newly_revoked, NEXT_DAY_NEW);
                assert_eq!(sum.revoke.already_known, CRL_ENTRIES);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, authenticated, crl);
criterion_main!(benches);
