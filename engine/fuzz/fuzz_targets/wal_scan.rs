//! A log segment of arbitrary bytes: scanning it as the last or an older segment must return
//! changes or a typed error, never panic. Checksums the fuzzer cannot guess are rewritten on a
//! copy, so inputs also reach the record walk, the seq checks and the payload decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mykey_engine::store::wal;

fn fix_checksums(d: &mut [u8]) {
    if d.len() < wal::SEGMENT_HEADER_LEN {
        return;
    }
    let crc = crc32c::crc32c(&d[..28]);
    d[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut at = wal::SEGMENT_HEADER_LEN;
    while at + wal::RECORD_HEADER_LEN <= d.len() {
        let len = u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]) as usize;
        let Some(end) = at.checked_add(wal::RECORD_HEADER_LEN + len).filter(|&e| e <= d.len()) else {
            break;
        };
        let crc = crc32c::crc32c(&d[at + 8..end]);
        d[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.log");
    let mut fixed = data.to_vec();
    fix_checksums(&mut fixed);
    for bytes in [data, &fixed[..]] {
        for last in [true, false] {
            if let Ok(scan) = wal::scan(path, bytes, last) {
                assert!(scan.valid_len as usize <= bytes.len());
            }
        }
    }
    let _ = wal::Change::decode(1, data);
});
