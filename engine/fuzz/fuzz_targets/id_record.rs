//! An ID record of arbitrary bytes: decoding and the lookup path's `find_link` agree, and
//! whatever decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mykey_tests::fuzz::id_record(data));
