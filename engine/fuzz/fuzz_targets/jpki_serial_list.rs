//! A partner's serial list of arbitrary bytes: parsed whole or refused with a line number;
//! every serial accepted is a positive integer of at most 20 octets; nothing panics.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mykey_engine::id::Timestamp;
use mykey_engine::jpki::dev::DevCa;
use mykey_engine::jpki::{Anchors, Jpki, JpkiConfig, JpkiError};

fn jpki() -> &'static (Jpki, String) {
    static J: OnceLock<(Jpki, String)> = OnceLock::new();
    J.get_or_init(|| {
        let t = |s| Timestamp::from_unix_secs(s).expect("time");
        let ca = DevCa::auth(1, t(1_600_000_000), t(2_000_000_000)).expect("CA");
        let anchors = Anchors::from_files(&[("ca.der".into(), ca.der().to_vec())]).expect("anchors");
        let hex: String = anchors.all()[0].key_id().iter().map(|b| format!("{b:02x}")).collect();
        (Jpki::new(anchors, JpkiConfig::default()), hex)
    })
}

fuzz_target!(|data: &[u8]| {
    let (j, ca) = jpki();
    // Half the inputs get a valid header, so the fuzzer reaches the serial lines.
    let input = match data.split_first() {
        Some((&0, rest)) => [format!("ca {ca}\n").as_bytes(), rest].concat(),
        _ => data.to_vec(),
    };
    match j.parse_serial_list(&input) {
        Ok(list) => {
            for s in &list.serials {
                assert!(!s.as_bytes().is_empty() && s.as_bytes().len() <= 20 && s.as_bytes()[0] != 0);
            }
        }
        Err(JpkiError::SerialList { line, .. }) => {
            assert!(line >= 1 && line <= input.split(|&b| b == b'\n').count().max(1));
        }
        Err(_) => {}
    }
});
