//! A snapshot shard file of arbitrary bytes, presented as the manifest would expect it (its own
//! length and header CRC): opening, probing, walking and verifying it must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mykey_engine::store::fs::{Fs, SimFs};
use mykey_engine::store::hash::HashKey;
use mykey_engine::store::snapshot::{ShardFile, ShardId};

/// Rewrites the checksums the fuzzer cannot guess (bucket CRCs, body CRC, header CRC), so that
/// inputs reach the probe, walk and verify logic instead of stopping at the header.
fn fix_checksums(d: &mut [u8]) {
    let u64_at = |d: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&d[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let buckets = u64_at(d, 32);
    let stride = u64::from(u32::from_le_bytes([d[52], d[53], d[54], d[55]]));
    if stride >= 64 && stride % 64 == 0 {
        for b in 0..buckets.min(4096) {
            let at = 64 + (b * stride) as usize;
            if at + 64 > d.len() {
                break;
            }
            let crc = crc32c::crc32c(&d[at..at + 60]);
            d[at + 60..at + 64].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let body = crc32c::crc32c(&d[64..]);
    d[48..52].copy_from_slice(&body.to_le_bytes());
    let head = crc32c::crc32c(&d[..60]);
    d[60..64].copy_from_slice(&head.to_le_bytes());
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 64 {
        return;
    }
    let mut owned = input.to_vec();
    fix_checksums(&mut owned);
    let data = &owned[..];
    let fs = SimFs::new(1);
    let Ok(mut f) = fs.create("f.snap") else { return };
    if f.write_all(data).is_err() {
        return;
    }
    drop(f);
    let u16_at = |at: usize| u16::from_le_bytes([data[at], data[at + 1]]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&data[16..24]);
    let id = ShardId {
        table: data[10],
        shard: u16_at(12),
        shard_count: u16_at(14),
        seq: u64::from_le_bytes(seq),
    };
    let crc = u32::from_le_bytes([data[60], data[61], data[62], data[63]]);
    let Ok(file) = ShardFile::open(&fs, "f.snap", id, data.len() as u64, crc) else {
        return;
    };
    let key = HashKey([1, 2]);
    for k in [&b"1C2410DF79DGEL"[..], b"x", &data[..14]] {
        let _ = file.get(key.hash(k), k);
        let h = key.hash(k);
        if let Ok(Some(off)) = file.candidate(h) {
            let _ = file.get_at(off, h, k);
        }
    }
    let _ = file.for_each(|_, _| {});
    let _ = file.verify(&key);
});
