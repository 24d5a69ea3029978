//! The fuzz targets' bodies (`mykey_tests::fuzz`, the same functions `engine/fuzz` runs under
//! libFuzzer on nightly) as property tests on stable: arbitrary bytes, and real files, records
//! and frames with bytes flipped, so that each body also reaches past the first check.

use mykey_engine::answer::IdState;
use mykey_engine::id::{ServiceId, Timestamp};
use mykey_engine::registry::record::{IdRecord, Link};
use mykey_tests::fuzz;
use proptest::prelude::*;

fn golden(name: &str) -> Vec<u8> {
    golden_in("v2", name)
}

fn golden_in(dir: &str, name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../snapshots/golden")
        .join(dir);
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The golden file `name` with the bytes at the chosen offsets XORed with the chosen values.
fn flipped(base: &[u8], flips: &[(usize, u8)]) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(at, x) in flips {
        if !b.is_empty() {
            let n = b.len();
            b[at % n] ^= x;
        }
    }
    b
}

/// The input the JPKI bodies read as "XOR `splice` into the real file at offset `at`".
fn spliced(at: u16, splice: &[u8]) -> Vec<u8> {
    [&[0][..], &at.to_le_bytes(), splice].concat()
}

fn flips() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), 1u8..=255), 0..6)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn records() -> impl Strategy<Value = Vec<u8>> {
    (
        0usize..4,
        any::<[u32; 4]>(),
        any::<bool>(),
        // Card numbers (all digits, packed) and other service IDs.
        prop::collection::btree_map(
            any::<u32>(),
            ("[0-9]{1,64}|[A-Z0-9]{1,20}", any::<bool>()),
            0..8,
        ),
    )
        .prop_map(|(s, mut n, bulk, links)| {
            if bulk {
                // A bulk load: registered when and by whom the state was set.
                (n[2], n[3]) = (n[0], n[1] % 1000);
            }
            let at = |x: u32| Timestamp::from_unix_secs(u64::from(x)).expect("u32 seconds");
            IdRecord {
                state: IdState::ALL[s],
                state_at: at(n[0]),
                state_actor: n[1] % 1000,
                registered_at: at(n[2]),
                registered_by: n[3] % 1000,
                cert: None,
                links: links
                    .into_iter()
                    .map(|(provider, (svc, own))| Link {
                        provider: provider % (u32::MAX - 1),
                        service: ServiceId::parse(svc.as_bytes()).expect("service"),
                        at: if own { at(n[0]) } else { at(n[2]) },
                        actor: if own { 7 } else { n[3] % 1000 },
                    })
                    .collect(),
            }
            .encode()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn id_record(rec in records(), f in flips(), raw in bytes(200)) {
        fuzz::id_record(&rec);
        fuzz::id_record(&flipped(&rec, &f));
        fuzz::id_record(&raw);
    }

    #[test]
    fn manifest(f in flips(), raw in bytes(300)) {
        fuzz::manifest(&flipped(&golden("MANIFEST"), &f));
        fuzz::manifest(&raw);
    }

    #[test]
    fn wal_scan(f in flips(), cut in any::<usize>(), raw in bytes(300)) {
        let seg = golden("wal-0000000000000001.log");
        let mut b = flipped(&seg, &f);
        b.truncate(cut % (seg.len() + 1));
        fuzz::wal_scan(&b);
        fuzz::wal_scan(&raw);
    }

    #[test]
    fn snapshot_file(f in flips(), table in 0usize..2, version in 0usize..2, raw in bytes(400)) {
        // Shards of format version 1 (golden v2) and version 2 (golden v3).
        let name = ["ids-0000-0000000000000000.snap", "certs-0000-0000000000000000.snap"][table];
        fuzz::snapshot_file(&flipped(&golden_in(["v2", "v3"][version], name), &f));
        fuzz::snapshot_file(&raw);
    }

    #[test]
    fn population_row(row in "[0-9A-Za-z:,;=α_-]{0,80}", raw in bytes(100)) {
        fuzz::population_row(row.as_bytes());
        fuzz::population_row(&raw);
    }

    #[test]
    fn wire_request(op in 0u8..=0x12, len in any::<u32>(), body in bytes(200), raw in bytes(64)) {
        let mut frame = vec![1, op, 0, 0];
        let len = if len % 2 == 0 { body.len() as u32 } else { len };
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&body);
        fuzz::wire_request(&frame);
        fuzz::wire_request(&raw);
    }
}

proptest! {
    // Each case verifies an RSA signature or two: fewer cases.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn jpki_cert(at in any::<u16>(), splice in bytes(8), raw in bytes(300)) {
        fuzz::jpki_cert(&spliced(at, &splice));
        fuzz::jpki_cert(&raw);
    }

    #[test]
    fn jpki_crl(at in any::<u16>(), splice in bytes(8), raw in bytes(300)) {
        fuzz::jpki_crl(&spliced(at, &splice));
        fuzz::jpki_crl(&raw);
    }

    #[test]
    fn jpki_serial_list(lines in "[0-9a-fA-F \\n#:-]{0,120}", raw in bytes(200)) {
        let mut with_header = vec![0];
        with_header.extend_from_slice(lines.as_bytes());
        fuzz::jpki_serial_list(&with_header);
        fuzz::jpki_serial_list(&raw);
    }
}
