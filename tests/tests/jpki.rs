//! The JPKI layer: real JPKI CA certificates as anchors (read in place from the shared data),
//! chain validation with rustls-webpki against a generated test PKI that mimics the real
//! profile, the verified-leaf cache, the CN rule, challenges, and the Wycheproof RSA PKCS#1
//! v1.5 vectors. Every refusal is checked for its own typed error.

use std::path::PathBuf;

use mykey_engine::id::{MyKeyId, Timestamp};
use mykey_engine::jpki::dev::DevCa;
use mykey_engine::jpki::leaf::{CnError, parse_cn, verify_rsa_sha256};
use mykey_engine::jpki::{
    AnchorError, Anchors, CERT_LEN_MAX, CardProof, Jpki, JpkiConfig, JpkiError,
};
use mykey_tests::pki::{Proof, card, cn, date, now, pki};

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel)
}

fn real_file(name: &str) -> (String, Vec<u8>) {
    let p = shared("jpki-ca").join(name);
    let b = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    (name.to_owned(), b)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn real_jpki_auth_generations_load_and_the_signature_ca_is_refused() {
    let a = Anchors::from_files(&[
        real_file("jpki-myna_auth_ca_2015.pem"),
        real_file("jpki-myna_auth_ca_2023.pem"),
    ])
    .expect("both real authentication generations load");
    let [g2015, g2023] = a.all() else {
        panic!("two anchors expected")
    };
    // One DN, two keys: the generation is named by its SKI.
    assert_eq!(g2015.subject(), g2023.subject());
    assert_eq!(&g2015.key_id()[..4], &[0x95, 0x67, 0x95, 0x1b]);
    assert_eq!(&g2023.key_id()[..4], &[0x1a, 0xc1, 0x00, 0xf5]);
    assert_eq!(
        g2015.fingerprint()[..],
        unhex("4DCFC4CA0AAF9FB2A3081B3F0C991C320B3ACC008667A341EEAEC5AF1D58CA7D")[..]
    );
    assert_eq!(
        g2023.fingerprint()[..],
        unhex("64114F29620C24ED2631D46476A040E7EE740D956089C00B036A6A8118C322B5")[..]
    );
    assert_eq!(
        g2015.not_after(),
        date(2025, 10, 19).plus_secs(14 * 3600 + 59 * 60 + 59)
    );
    // A certificate issued in 2018 tries 2015 first; one issued in 2024 tries 2023 first.
    let (o, n) = a.candidates(g2015.subject_content(), date(2018, 1, 1));
    assert_eq!((n, o[0]), (2, 0));
    let (o, _) = a.candidates(g2015.subject_content(), date(2024, 1, 1));
    assert_eq!(o[0], 1);
    assert_eq!(
        a.by_key_id(g2023.key_id()).map(|x| x.name()),
        Some("jpki-myna_auth_ca_2023.pem")
    );

    // The test PKI's generations carry the real DN, byte for byte.
    assert_eq!(pki().anchors().all()[0].subject(), g2023.subject());

    for sign in ["jpki-myna_sign_ca_2015.pem", "jpki-myna_sign_ca_2023.pem"] {
        let e = Anchors::from_files(&[real_file(sign)]).expect_err("sign CA refused");
        assert!(
            matches!(&e, AnchorError::SignatureCa { file } if file == sign),
            "{e}"
        );
        assert!(e.to_string().contains("digital-signature"), "{e}");
    }
    // The shared directory holds the sign CAs too: loading it whole is refused, naming one.
    let e = Anchors::load_dir(&shared("jpki-ca")).expect_err("directory with sign CA");
    assert!(matches!(e, AnchorError::SignatureCa { .. }), "{e}");
}

#[test]
fn anchor_directory_loads_pem_and_der_and_refuses_bad_files() {
    let p = pki();
    let d = mykey_tests::TempDir::new("anchors");
    std::fs::write(d.path().join("a.der"), p.gen2015.der()).expect("write");
    std::fs::write(d.path().join("b.pem"), p.gen2023.pem()).expect("write");
    std::fs::write(d.path().join("README.md"), "not a certificate").expect("write");
    let a = Anchors::load_dir(d.path()).expect("load");
    assert_eq!(a.all().len(), 2);
    assert_eq!(a.all()[0].subject(), a.all()[1].subject());

    std::fs::write(d.path().join("c.der"), p.gen2015.der()).expect("write");
    assert!(matches!(
        Anchors::load_dir(d.path()),
        Err(AnchorError::Duplicate { .. })
    ));
    std::fs::write(d.path().join("c.der"), b"\x30\x03\x02\x01").expect("write");
    assert!(matches!(
        Anchors::load_dir(d.path()),
        Err(AnchorError::Malformed { .. })
    ));
    let empty = mykey_tests::TempDir::new("anchors-empty");
    assert!(matches!(
        Anchors::load_dir(empty.path()),
        Err(AnchorError::None { .. })
    ));
    // An end-entity certificate is not a CA.
    let leaf = card(&p.gen2023, &p.cards[0], 1);
    assert!(matches!(
        Anchors::from_files(&[("leaf.der".into(), leaf)]),
        Err(AnchorError::NotAuthCa { .. })
    ));
}

#[test]
fn every_generation_sharing_the_dn_verifies_its_own_cards_picked_by_key() {
    let p = pki();
    let jpki = p.jpki();
    let now = date(2025, 1, 1);
    for (n, ca) in [&p.gen2015, &p.gen2019, &p.gen2023].into_iter().enumerate() {
        let cert = card(ca, &p.cards[n], n as u64);
        let leaf = jpki.verify_cert(now, &cert).expect("card verifies");
        let c = leaf.card();
        let anchors = jpki.anchors();
        let anchor = anchors.by_key_id(c.cert.ca_key_id()).expect("anchor");
        assert_eq!(
            anchor.der().as_ref(),
            ca.der(),
            "issuer picked by key, not name"
        );
        assert_eq!(
            c.cn_id,
            MyKeyId::parse(&cn(n as u64).as_bytes()[..14]).expect("id")
        );
        assert_eq!(
            c.cert.serial(),
            &(0x1000_0000u64 + n as u64).to_be_bytes()[4..]
        );
        assert_eq!(c.fingerprint, mykey_engine::jpki::sha256(&cert));
    }
}

#[test]
fn refusals_each_have_their_own_error() {
    let p = pki();
    let jpki = p.jpki();
    let key = &p.cards[0];
    let good = card(&p.gen2023, key, 7);
    let now = now();
    let check = |der: &[u8], at: Timestamp| jpki.verify_cert(at, der).map(|_| ());

    // Expired, not yet valid.
    assert!(matches!(
        check(&good, date(2029, 1, 2)),
        Err(JpkiError::Expired { .. })
    ));
    assert!(matches!(
        check(&good, date(2023, 12, 31)),
        Err(JpkiError::NotYetValid { .. })
    ));
    // A card of the 2015 generation, valid to 2029: its CA expired on 2025-10-19.
    let old = card(&p.gen2015, key, 8);
    check(&old, date(2025, 6, 1)).expect("valid while its CA is");
    assert!(
        matches!(check(&old, now), Err(JpkiError::Expired { not_after }) if not_after < date(2025, 10, 20))
    );
    // Unknown CA: a generation with the same DN that is not an anchor.
    let rogue = DevCa::auth(99, date(2023, 1, 1), date(2033, 1, 1)).expect("rogue CA");
    assert!(matches!(
        check(&card(&rogue, key, 9), now),
        Err(JpkiError::UnknownIssuer)
    ));
    // The digital-signature certificate is never accepted.
    assert!(matches!(
        check(&card(&p.sign, key, 10), now),
        Err(JpkiError::SignatureCertificate)
    ));
    // Malformed input.
    assert!(matches!(
        check(&good[..good.len() - 10], now),
        Err(JpkiError::CertMalformed { .. })
    ));
    assert!(matches!(
        check(b"garbage", now),
        Err(JpkiError::CertMalformed { .. })
    ));
    assert!(matches!(
        check(&[], now),
        Err(JpkiError::CertMalformed { .. })
    ));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        check(&trailing, now),
        Err(JpkiError::CertMalformed { .. })
    ));
    assert!(matches!(
        check(&vec![0x30; CERT_LEN_MAX + 1], now),
        Err(JpkiError::CertTooLarge { .. })
    ));
    // A flipped bit in the issuer's signature: it no longer verifies under any generation's
    // key, so no configured CA issued the certificate.
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    assert!(
        matches!(check(&flipped, now), Err(JpkiError::UnknownIssuer)),
        "{:?}",
        check(&flipped, now)
    );
    // CNs that break the rule.
    for (bad, want) in [
        ("T00000000000113221003", CnError::Length { len: 21 }),
        ("t0000000000001322100 3A", CnError::Char { pos: 0 }),
    ] {
        let der = p
            .gen2023
            .issue(key, bad, &[0x42], date(2024, 1, 1), date(2029, 1, 1))
            .expect("issue");
        match check(&der, now) {
            Err(JpkiError::BadCn(e)) => assert_eq!(e, want, "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

/// The generated PKI mimics the real profile: UTF8String DN, DirName SAN, DirName CRL
/// distribution point, SKI and no AKI on the CA; no AKI and no EKU on the card; RSA-2048 and
/// sha256WithRSA throughout; a 14 + 9 character CN.
#[test]
fn test_pki_mimics_the_real_profile() {
    use x509_parser::prelude::*;
    let p = pki();
    let leaf = card(&p.gen2023, &p.cards[0], 40);
    for der in [p.gen2015.der(), p.gen2023.der(), &leaf[..]] {
        let (_, c) = X509Certificate::from_der(der).expect("parse");
        assert_eq!(
            c.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.11"
        );
        for atv in c.subject().iter_attributes() {
            let want = if atv.attr_type().to_id_string() == "2.5.4.6" {
                x509_parser::der_parser::asn1_rs::Tag::PrintableString
            } else {
                x509_parser::der_parser::asn1_rs::Tag::Utf8String
            };
            assert_eq!(atv.attr_value().tag(), want);
        }
        let mut has = (false, false, false, false);
        for ext in c.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    has.0 = san
                        .general_names
                        .iter()
                        .any(|g| matches!(g, GeneralName::DirectoryName(_)));
                }
                ParsedExtension::CRLDistributionPoints(dps) => {
                    has.1 = dps.points.iter().any(|dp| {
                        matches!(&dp.distribution_point, Some(DistributionPointName::FullName(n))
                            if n.iter().any(|g| matches!(g, GeneralName::DirectoryName(_))))
                    });
                }
                ParsedExtension::AuthorityKeyIdentifier(_) => has.2 = true,
                ParsedExtension::ExtendedKeyUsage(_) => has.3 = true,
                _ => {}
            }
        }
        let is_ca = der != &leaf[..];
        assert_eq!(has.0, is_ca, "DirName SAN on CAs");
        assert!(has.1, "DirName CRL distribution point");
        assert!(!has.2 && !has.3, "no AKI, no EKU");
        if let Ok(x509_parser::public_key::PublicKey::RSA(k)) = c.public_key().parsed() {
            assert_eq!(
                k.modulus.iter().skip_while(|&&b| b == 0).count(),
                256,
                "RSA-2048"
            );
        } else {
            panic!("RSA key");
        }
    }
    let (_, c) = X509Certificate::from_der(&leaf).expect("parse");
    let cn = c
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok());
    assert_eq!(cn.map(str::len), Some(23));
}

/// A card of the 2023 generation, valid 2024–2029, serial `serial`, CN number `n`, departing
/// from the JPKI profile as `v` says.
fn variant_card(serial: &[u8], n: u64, v: mykey_engine::jpki::dev::LeafVariant) -> Vec<u8> {
    let p = pki();
    p.gen2023
        .issue_with(
            &p.cards[0],
            &cn(n),
            serial,
            date(2024, 1, 1),
            date(2029, 1, 1),
            v,
        )
        .expect("issue")
}

/// The end-entity profile is not public: accept what RFC 5280 allows (an AKI, a clientAuth EKU,
/// or neither), refuse what it forbids (an EKU without clientAuth, a CA certificate used as an
/// end entity).
#[test]
fn end_entity_extensions_follow_rfc_5280() {
    use mykey_engine::jpki::dev::LeafVariant;
    let p = pki();
    let jpki = p.jpki();
    let issue = |n: u64, v| variant_card(&[0x50, n as u8], n, v);
    for (n, v) in [
        (1, LeafVariant::Jpki),
        (2, LeafVariant::Aki),
        (3, LeafVariant::ClientAuthEku),
    ] {
        jpki.verify_cert(now(), &issue(n, v))
            .unwrap_or_else(|e| panic!("{v:?}: {e}"));
    }
    match jpki.verify_cert(now(), &issue(4, LeafVariant::ServerAuthEku)) {
        Err(JpkiError::Chain(webpki::Error::RequiredEkuNotFoundContext(_))) => {}
        other => panic!("serverAuth-only EKU: {other:?}"),
    }
    match jpki.verify_cert(now(), &issue(5, LeafVariant::Ca)) {
        Err(JpkiError::Chain(webpki::Error::CaUsedAsEndEntity)) => {}
        other => panic!("CA as end entity: {other:?}"),
    }
}

#[test]
fn cn_rule() {
    let (id, suffix) = parse_cn("997794E9AGCIEG13221003A").expect("test card CN");
    assert_eq!(id.as_str(), "997794E9AGCIEG");
    assert_eq!(&suffix, b"13221003A");
    parse_cn("1C2410DF79DGEL07202002B").expect("seed CN");
    for (cn, want) in [
        ("", CnError::Length { len: 0 }),
        ("997794E9AGCIEG13221003AB", CnError::Length { len: 24 }),
        ("997794e9AGCIEG13221003A", CnError::Char { pos: 6 }),
        ("997794E9AGCIEG1322100-A", CnError::Char { pos: 21 }),
        ("997794E9AGCIEG13221003あ", CnError::Char { pos: 22 }),
    ] {
        assert_eq!(parse_cn(cn), Err(want), "{cn:?}");
    }
}

#[test]
fn challenges_prove_possession_once_and_briefly() {
    let p = pki();
    let jpki = p.jpki();
    let now = now();
    let cert = card(&p.gen2023, &p.cards[0], 20);
    let proof = Proof::new(&jpki, now, &p.cards[0], cert.clone());
    let c = jpki.authenticate(now, &proof.get()).expect("authenticated");
    assert_eq!(c.cn_id.as_str(), &cn(20)[..14]);
    // Single use.
    assert!(matches!(
        jpki.authenticate(now, &proof.get()),
        Err(JpkiError::ChallengeReused)
    ));
    // Another card's key signing this card's challenge: refused, and the challenge is burnt.
    let other = Proof::new(&jpki, now, &p.cards[1], cert.clone());
    assert!(matches!(
        jpki.authenticate(now, &other.get()),
        Err(JpkiError::BadSignature)
    ));
    assert!(matches!(
        jpki.authenticate(now, &other.get()),
        Err(JpkiError::ChallengeReused)
    ));
    // A signature over other bytes.
    let mut p2 = Proof::new(&jpki, now, &p.cards[0], cert.clone());
    p2.signature = p.cards[0].sign(b"something else").expect("sign");
    assert!(matches!(
        jpki.authenticate(now, &p2.get()),
        Err(JpkiError::BadSignature)
    ));
    // Expired.
    let late = Proof::new(&jpki, now, &p.cards[0], cert.clone());
    assert!(matches!(
        jpki.authenticate(now.plus_secs(121), &late.get()),
        Err(JpkiError::ChallengeExpired { .. })
    ));
    // Never issued here (another engine's challenge).
    let elsewhere = Jpki::new(p.anchors(), JpkiConfig::default());
    let foreign = Proof::new(&elsewhere, now, &p.cards[0], cert.clone());
    assert!(matches!(
        jpki.authenticate(now, &foreign.get()),
        Err(JpkiError::ChallengeUnknown)
    ));
    // A valid signature does not rescue a bad certificate.
    let expired = Proof::new(&jpki, date(2029, 6, 1), &p.cards[0], cert);
    assert!(matches!(
        jpki.authenticate(date(2029, 6, 1), &expired.get()),
        Err(JpkiError::Expired { .. })
    ));
    assert!(matches!(
        jpki.authenticate(
            now,
            &CardProof {
                cert_der: b"",
                challenge: b"short",
                signature: b""
            }
        ),
        Err(JpkiError::ChallengeUnknown)
    ));
}

#[test]
fn cache_skips_the_chain_but_never_outlives_validity() {
    let p = pki();
    let jpki = p.jpki();
    let cert = card(&p.gen2023, &p.cards[2], 30);
    assert_eq!(jpki.cached_leaves(), 0);
    let first = jpki.verify_cert(now(), &cert).expect("cold");
    assert_eq!(jpki.cached_leaves(), 1);
    let again = jpki.verify_cert(now(), &cert).expect("cached");
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "a repeat visit is served from the cache"
    );
    // The very next check after expiry refuses, although the certificate is cached.
    assert!(matches!(
        jpki.verify_cert(date(2029, 1, 2), &cert),
        Err(JpkiError::Expired { .. })
    ));
    // Bounded: a small cache never holds more than twice its size.
    let small = Jpki::new(
        p.anchors(),
        JpkiConfig {
            leaf_cache_entries: 16,
            ..JpkiConfig::default()
        },
    );
    for n in 0..80 {
        small
            .verify_cert(now(), &card(&p.gen2023, &p.cards[0], 100 + n))
            .expect("verify");
    }
    assert!(small.cached_leaves() <= 32, "{}", small.cached_leaves());
}

/// Wycheproof RSA PKCS#1 v1.5 SHA-256 vectors (2048, 3072, 4096 bits). "valid" must verify,
/// "invalid" must not. "acceptable" vectors (a DigestInfo without the NULL parameters) are
/// rejected: the engine accepts only the DER encoding that PKCS#1 v1.5 specifies.
#[test]
fn wycheproof_rsa_pkcs1_sha256() {
    let mut counts = [0usize; 3];
    for bits in [2048, 3072, 4096] {
        let path = shared(&format!("wycheproof/rsa_signature_{bits}_sha256_test.json"));
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read vectors")).expect("json");
        for group in doc["testGroups"].as_array().expect("groups") {
            let key = unhex(group["publicKeyAsn"].as_str().expect("key"));
            for t in group["tests"].as_array().expect("tests") {
                let msg = unhex(t["msg"].as_str().expect("msg"));
                let sig = unhex(t["sig"].as_str().expect("sig"));
                let ok = verify_rsa_sha256(&key, &msg, &sig);
                let id = t["tcId"].as_u64().unwrap_or(0);
                match t["result"].as_str() {
                    Some("valid") => {
                        assert!(ok, "{bits} tc {id} valid but rejected");
                        counts[0] += 1;
                    }
                    Some("invalid") => {
                        assert!(!ok, "{bits} tc {id} invalid but accepted");
                        counts[1] += 1;
                    }
                    Some("acceptable") => {
                        assert!(!ok, "{bits} tc {id}: acceptable vectors are rejected");
                        counts[2] += 1;
                    }
                    other => panic!("tc {id}: result {other:?}"),
                }
            }
        }
    }
    assert_eq!(counts, [24, 749, 3], "every vector was run");
}

/// RFC 5280 rules the engine enforces beyond rustls-webpki, each refused with its own error and
/// a message a partner can act on: a keyUsage without digitalSignature (or none), the same
/// extension twice, a CA generation not valid yet; and malformed inputs said in words.
#[test]
fn rfc_5280_strictness_on_cards() {
    use mykey_engine::jpki::dev::LeafVariant;
    let p = pki();
    let jpki = p.jpki();
    let issue = |n: u64, v| variant_card(&[0x60, n as u8], n, v);
    for (n, v, want) in [
        (
            1,
            LeafVariant::KeyCertSignOnly,
            "keyCertSign without digitalSignature",
        ),
        (
            2,
            LeafVariant::NonRepudiationOnly,
            "nonRepudiation without digitalSignature",
        ),
        (
            3,
            LeafVariant::KeyEnciphermentOnly,
            "keyEncipherment without digitalSignature",
        ),
        (4, LeafVariant::NoKeyUsage, "no keyUsage extension"),
    ] {
        match jpki.verify_cert(now(), &issue(n, v)) {
            Err(e @ JpkiError::KeyUsage { .. }) => {
                assert!(e.to_string().contains(want), "{v:?}: {e}")
            }
            other => panic!("{v:?}: {other:?}"),
        }
    }
    match jpki.verify_cert(now(), &issue(5, LeafVariant::DuplicateExtension)) {
        Err(e @ JpkiError::CertMalformed { .. }) => assert!(
            e.to_string()
                .contains("extension 1.3.6.1.4.1.99999.1 appears twice"),
            "{e}"
        ),
        other => panic!("duplicate extension: {other:?}"),
    }
    // A card of a generation that is not valid yet (the card's own validity has begun).
    let early = p
        .gen2023
        .issue(
            &p.cards[0],
            &cn(6),
            &[0x60, 6],
            date(2023, 1, 1),
            date(2029, 1, 1),
        )
        .expect("issue");
    match jpki.verify_cert(date(2023, 3, 1), &early) {
        Err(JpkiError::NotYetValid { not_before }) => assert_eq!(not_before, date(2023, 7, 16)),
        other => panic!("a generation not valid yet: {other:?}"),
    }
    // Malformed inputs, each said in words.
    let good = card(&p.gen2023, &p.cards[0], 7);
    let mut ber = vec![0x30, 0x82, 0x00];
    ber.extend_from_slice(&good[2..]);
    let mut indefinite = vec![0x30, 0x80];
    indefinite.extend_from_slice(&good[4..]);
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0, 0, 0]);
    for (bytes, want) in [
        (&[][..], "the certificate is empty"),
        (&good[..good.len() - 10], "truncated: its header says"),
        (b"garbage", "does not start with a DER SEQUENCE"),
        (b"-----BEGIN CERTIFICATE-----", "PEM text"),
        (&ber[..], "not in DER's shortest form (BER)"),
        (&indefinite[..], "BER's indefinite length"),
        (&trailing[..], "followed by 3 bytes"),
    ] {
        match jpki.verify_cert(now(), bytes) {
            Err(e @ JpkiError::CertMalformed { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains(want) && !m.contains("TrailingData"),
                    "{want}: {m}"
                )
            }
            other => panic!("{want}: {other:?}"),
        }
    }
}

/// A CRL with two CRL Number extensions (1018 then 1019) is refused, so a forged "newer" number
/// cannot freeze revocation; so is an entry with one extension twice; a truncated CRL is said in
/// words.
#[test]
fn rfc_5280_strictness_on_crls() {
    let p = pki();
    let jpki = p.jpki();
    let (from, to) = (now(), now().plus_secs(86_400));
    let crl_number = |n: u8| {
        vec![
            0x30, 0x0a, 0x06, 0x03, 0x55, 0x1d, 0x14, 0x04, 0x03, 0x02, 0x01, n,
        ]
    };
    let twice = p
        .gen2023
        .crl_with_extensions(250, from, to, &[], &|mut exts| {
            exts.push(crl_number(251));
            exts
        })
        .expect("crl");
    match jpki.parse_crl(now(), &twice) {
        Err(e @ JpkiError::CrlMalformed { .. }) => {
            assert!(
                e.to_string().contains("extension 2.5.29.20 appears twice"),
                "{e}"
            )
        }
        other => panic!(
            "two CRL numbers: {:?}",
            other.map(|l| l.crl.map(|c| c.number))
        ),
    }
    let good = p.gen2023.crl(250, from, to, &[]).expect("crl");
    jpki.parse_crl(now(), &good)
        .expect("the same CRL with one number");
    for (bytes, want) in [
        (&good[..good.len() / 2], "the CRL is truncated"),
        (&[][..], "the CRL is empty"),
    ] {
        match jpki.parse_crl(now(), bytes) {
            Err(e @ JpkiError::CrlMalformed { .. }) => {
                let m = e.to_string();
                assert!(m.contains(want) && !m.contains("NomError"), "{want}: {m}")
            }
            other => panic!("{want}: {:?}", other.map(|_| ())),
        }
    }
}
