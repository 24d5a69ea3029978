//! A partner's serial list of arbitrary bytes: parsed whole or refused with a line number;
//! every serial accepted is a positive integer of at most 20 octets; nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mykey_tests::fuzz::jpki_serial_list(data));
