//! A MANIFEST of arbitrary bytes decodes or is refused with a typed error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mykey_engine::store::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode("MANIFEST".into(), data, 6) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(m.encode(), data);
    }
});
