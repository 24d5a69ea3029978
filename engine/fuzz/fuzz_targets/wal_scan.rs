//! A log segment of arbitrary bytes: scanning it as the last or an older segment must return
//! changes or a typed error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mykey_engine::store::wal;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.log");
    for last in [true, false] {
        if let Ok(scan) = wal::scan(path, data, last) {
            assert!(scan.valid_len as usize <= data.len());
        }
    }
    let _ = wal::Change::decode(1, data);
});
