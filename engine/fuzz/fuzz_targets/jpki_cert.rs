//! A card certificate of arbitrary bytes, or a real-profile one with bytes spliced in: the
//! leaf check and the anchor parser answer with a typed error or a verified certificate whose
//! fields are within their limits; nothing panics.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mykey_engine::id::Timestamp;
use mykey_engine::jpki::dev::{DevCa, DevKey};
use mykey_engine::jpki::{Anchor, Anchors, Jpki, JpkiConfig};

struct Fixture {
    jpki: Jpki,
    cert: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let t = |s| Timestamp::from_unix_secs(s).expect("time");
        let ca = DevCa::auth(1, t(1_600_000_000), t(2_000_000_000)).expect("CA");
        let key = DevKey::generate(2048).expect("key");
        let cert = ca
            .issue(&key, "FUZZ0000000001132210030", &[0x42], t(1_700_000_000), t(1_900_000_000))
            .expect("cert");
        let anchors = Anchors::from_files(&[("ca.der".into(), ca.der().to_vec())]).expect("anchors");
        Fixture {
            jpki: Jpki::new(anchors, JpkiConfig { leaf_cache_entries: 64, ..JpkiConfig::default() }),
            cert,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let now = Timestamp::from_unix_secs(1_800_000_000).expect("time");
    let input = match data.split_first() {
        // Splice the rest of the input into the valid certificate at a chosen offset.
        Some((&0, rest)) if rest.len() >= 2 => {
            let at = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % f.cert.len();
            let mut c = f.cert.clone();
            for (i, b) in rest[2..].iter().enumerate() {
                if let Some(x) = c.get_mut(at + i) {
                    *x ^= b;
                }
            }
            c
        }
        _ => data.to_vec(),
    };
    if let Ok(leaf) = f.jpki.verify_cert(now, &input) {
        let c = leaf.card();
        assert!(c.cert.serial().len() <= 20 && !c.cert.serial().is_empty());
        assert_eq!(c.cn_id.as_str().len(), 14);
        leaf.check_time(now).expect("a verified leaf is valid now");
    }
    let _ = Anchor::parse("fuzz", &input);
});
