//! An ID record of arbitrary bytes: decoding and the lookup path's `find_link` agree, and
//! whatever decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mykey_engine::registry::record::{IdRecord, find_link};

fuzz_target!(|data: &[u8]| {
    let decoded = IdRecord::decode(data);
    for p in [0u32, 1, 7, 300, u32::MAX] {
        let fast = find_link(data, p);
        if let Some(rec) = &decoded {
            let (state, _, svc) = fast.expect("a record that decodes is readable by find_link");
            assert_eq!(state, rec.state);
            let slow = rec.links.iter().find(|l| l.provider == p).map(|l| l.service);
            assert_eq!(svc, slow);
        }
    }
    if let Some(rec) = decoded {
        assert_eq!(rec.encode(), data);
    }
});
