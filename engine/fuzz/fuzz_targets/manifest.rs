//! A MANIFEST of arbitrary bytes decodes or is refused with a typed error; whatever decodes
//! re-encodes to the same bytes. The trailing checksum is rewritten on a copy so that inputs
//! reach the table walk.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mykey_engine::store::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let mut fixed = data.to_vec();
    if fixed.len() >= 4 {
        let n = fixed.len() - 4;
        let crc = crc32c::crc32c(&fixed[..n]);
        fixed[n..].copy_from_slice(&crc.to_le_bytes());
    }
    for bytes in [data, &fixed[..]] {
        if let Ok(m) = Manifest::decode("MANIFEST".into(), bytes, 6) {
            assert_eq!(m.encode(), bytes);
        }
    }
});
