//! A CRL of arbitrary bytes, or a signed one with bytes spliced in: parsing answers with a
//! typed error or a list whose every serial is a positive integer of at most 20 octets, from
//! a configured CA; nothing panics, and a tampered signed part never verifies.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mykey_engine::id::Timestamp;
use mykey_engine::jpki::dev::DevCa;
use mykey_engine::jpki::{Anchors, Jpki, JpkiConfig, SerialNo};

struct Fixture {
    jpki: Jpki,
    crl: Vec<u8>,
}

fn now() -> Timestamp {
    Timestamp::from_unix_secs(1_800_000_000).expect("time")
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let t = |s| Timestamp::from_unix_secs(s).expect("time");
        let ca = DevCa::auth(1, t(1_600_000_000), t(2_000_000_000)).expect("CA");
        let serials: Vec<SerialNo> = (1u32..20)
            .map(|i| SerialNo::from_integer(&(i * 977).to_be_bytes()).expect("serial"))
            .collect();
        let crl = ca.crl(7, now(), now().plus_secs(86_400), &serials).expect("crl");
        let anchors = Anchors::from_files(&[("ca.der".into(), ca.der().to_vec())]).expect("anchors");
        Fixture {
            jpki: Jpki::new(anchors, JpkiConfig::default()),
            crl,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (input, spliced) = match data.split_first() {
        Some((&0, rest)) if rest.len() >= 2 => {
            let at = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % f.crl.len();
            let mut c = f.crl.clone();
            for (i, b) in rest[2..].iter().enumerate() {
                if let Some(x) = c.get_mut(at + i) {
                    *x ^= b;
                }
            }
            let changed = c != f.crl;
            (c, changed)
        }
        _ => (data.to_vec(), false),
    };
    if let Ok(list) = f.jpki.parse_crl(now(), &input) {
        assert!(f.jpki.anchors().by_key_id(&list.ca_key_id).is_some());
        for s in &list.serials {
            assert!(!s.as_bytes().is_empty() && s.as_bytes().len() <= 20 && s.as_bytes()[0] != 0);
        }
        if spliced {
            // Only bytes outside the signed part (the signature's unused tail cannot be: RSA
            // is exact) may change and still verify; the list must equal the original's.
            let orig = f.jpki.parse_crl(now(), &f.crl).expect("original");
            assert_eq!(list.serials, orig.serials);
        }
    }
});
