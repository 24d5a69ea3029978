//! A MANIFEST of arbitrary bytes decodes or is refused with a typed error; whatever decodes
//! re-encodes to the same bytes. The trailing checksum is rewritten on a copy so that inputs
//! reach the table walk.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mykey_tests::fuzz::manifest(data));
