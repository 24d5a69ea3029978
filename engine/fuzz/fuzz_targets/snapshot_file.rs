//! A snapshot shard file of arbitrary bytes, presented as the manifest would expect it (its own
//! length and header CRC): opening, probing, walking and verifying it must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mykey_tests::fuzz::snapshot_file(data));
