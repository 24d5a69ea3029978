//! A CRL of arbitrary bytes, or a signed one with bytes spliced in: parsing answers with a
//! typed error or a list whose every serial is a positive integer of at most 20 octets, from
//! a configured CA; nothing panics, and a tampered signed part never verifies.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mykey_tests::fuzz::jpki_crl(data));
