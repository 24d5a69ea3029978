//! A card certificate of arbitrary bytes, or a real-profile one with bytes spliced in: the
//! leaf check and the anchor parser answer with a typed error or a verified certificate whose
//! fields are within their limits; nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mykey_tests::fuzz::jpki_cert(data));
