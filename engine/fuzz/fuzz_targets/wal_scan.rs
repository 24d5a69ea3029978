//! A log segment of arbitrary bytes: scanning it as the last or an older segment must return
//! changes or a typed error, never panic. Checksums the fuzzer cannot guess are rewritten on a
//! copy, so inputs also reach the record walk, the seq checks and the payload decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mykey_tests::fuzz::wal_scan(data));
