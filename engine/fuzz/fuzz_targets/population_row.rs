//! A population line of arbitrary text parses or is refused with a reason, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mykey_engine::population::parse_row(text);
        let _ = mykey_engine::id::CertRef::parse_text(text);
    }
    let _ = mykey_engine::population::read_providers(data);
});
