//! A request frame of arbitrary bytes: the header is checked, the body decodes or is refused
//! with a status, and whatever decodes re-encodes to the same frame; nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mykey_tests::fuzz::wire_request(data));
