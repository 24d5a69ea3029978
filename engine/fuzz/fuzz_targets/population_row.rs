//! A population line of arbitrary text parses or is refused with a reason, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mykey_tests::fuzz::population_row(data));
