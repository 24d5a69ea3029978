//! The bodies of the fuzz targets (`engine/fuzz`), one function per target, so that the same
//! checks run under libFuzzer on nightly and as property tests in `cargo test` on stable
//! (`tests/tests/fuzz_bodies.rs`). Each takes arbitrary bytes and panics only when an invariant
//! it names breaks; nothing here decides what input to try.

use std::sync::OnceLock;

use mykey_engine::id::Timestamp;
use mykey_engine::jpki::dev::{DevCa, DevKey};
use mykey_engine::jpki::{Anchor, Anchors, Jpki, JpkiConfig, JpkiError, SerialNo};
use mykey_engine::registry::SCHEMA;
use mykey_engine::registry::record::{IdRecord, find_link};
use mykey_engine::store::fs::{Fs, SimFs};
use mykey_engine::store::hash::HashKey;
use mykey_engine::store::manifest::Manifest;
use mykey_engine::store::snapshot::{ShardFile, ShardId};
use mykey_engine::store::wal;
use mykey_engine::wire::{HEADER_LEN, Request, request_header};

/// An ID record of arbitrary bytes: decoding and the lookup path's `find_link` agree, and
/// whatever decodes re-encodes to the same bytes.
pub fn id_record(data: &[u8]) {
    let decoded = IdRecord::decode(data);
    for p in [0u32, 1, 7, 300, u32::MAX] {
        let fast = find_link(data, p);
        let _ = fast.map(|f| f.service());
        if let Some(rec) = &decoded {
            let found = fast.expect("a record that decodes is readable by find_link");
            assert_eq!(found.state, rec.state);
            let svc = found.service().expect("its service ID reads too");
            let slow = rec
                .links
                .iter()
                .find(|l| l.provider == p)
                .map(|l| l.service);
            assert_eq!(svc, slow);
        }
    }
    if let Some(rec) = decoded {
        // Encoding 2 (first byte 0x1_) has one form per record; encoding 1 is only read, and
        // what it decodes to is written in encoding 2.
        if data[0] & 0xF0 == 0x10 {
            assert_eq!(rec.encode(), data);
        } else {
            assert_eq!(IdRecord::decode(&rec.encode()), Some(rec));
        }
    }
}

struct JpkiCertFixture {
    jpki: Jpki,
    cert: Vec<u8>,
}

fn jpki_cert_fixture() -> &'static JpkiCertFixture {
    static F: OnceLock<JpkiCertFixture> = OnceLock::new();
    F.get_or_init(|| {
        let t = |s| Timestamp::from_unix_secs(s).expect("time");
        let ca = DevCa::auth(1, t(1_600_000_000), t(2_000_000_000)).expect("CA");
        let key = DevKey::generate(2048).expect("key");
        let cert = ca
            .issue(
                &key,
                "FUZZ0000000001132210030",
                &[0x42],
                t(1_700_000_000),
                t(1_900_000_000),
            )
            .expect("cert");
        let anchors =
            Anchors::from_files(&[("ca.der".into(), ca.der().to_vec())]).expect("anchors");
        JpkiCertFixture {
            jpki: Jpki::new(
                anchors,
                JpkiConfig {
                    leaf_cache_entries: 64,
                    ..JpkiConfig::default()
                },
            ),
            cert,
        }
    })
}

/// A card certificate of arbitrary bytes, or a real-profile one with bytes spliced in: the
/// leaf check and the anchor parser answer with a typed error or a verified certificate whose
/// fields are within their limits; nothing panics.
pub fn jpki_cert(data: &[u8]) {
    let f = jpki_cert_fixture();
    let now = Timestamp::from_unix_secs(1_800_000_000).expect("time");
    let input = match data.split_first() {
        // Splice the rest of the input into the valid certificate at a chosen offset.
        Some((&0, rest)) if rest.len() >= 2 => {
            let at = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % f.cert.len();
            let mut c = f.cert.clone();
            for (i, b) in rest[2..].iter().enumerate() {
                if let Some(x) = c.get_mut(at + i) {
                    *x ^= b;
                }
            }
            c
        }
        _ => data.to_vec(),
    };
    if let Ok(leaf) = f.jpki.verify_cert(now, &input) {
        let c = leaf.card();
        assert!(c.cert.serial().len() <= 20 && !c.cert.serial().is_empty());
        assert_eq!(c.cn_id.as_str().len(), 14);
        leaf.check_time(now).expect("a verified leaf is valid now");
    }
    let _ = Anchor::parse("fuzz", &input);
}

struct JpkiCrlFixture {
    jpki: Jpki,
    crl: Vec<u8>,
}

fn jpki_crl_now() -> Timestamp {
    Timestamp::from_unix_secs(1_800_000_000).expect("time")
}

fn jpki_crl_fixture() -> &'static JpkiCrlFixture {
    static F: OnceLock<JpkiCrlFixture> = OnceLock::new();
    F.get_or_init(|| {
        let t = |s| Timestamp::from_unix_secs(s).expect("time");
        let ca = DevCa::auth(1, t(1_600_000_000), t(2_000_000_000)).expect("CA");
        let serials: Vec<SerialNo> = (1u32..20)
            .map(|i| SerialNo::from_integer(&(i * 977).to_be_bytes()).expect("serial"))
            .collect();
        let crl = ca
            .crl(
                7,
                jpki_crl_now(),
                jpki_crl_now().plus_secs(86_400),
                &serials,
            )
            .expect("crl");
        let anchors =
            Anchors::from_files(&[("ca.der".into(), ca.der().to_vec())]).expect("anchors");
        JpkiCrlFixture {
            jpki: Jpki::new(anchors, JpkiConfig::default()),
            crl,
        }
    })
}

/// A CRL of arbitrary bytes, or a signed one with bytes spliced in: parsing answers with a
/// typed error or a list whose every serial is a positive integer of at most 20 octets, from
/// a configured CA; nothing panics, and a tampered signed part never verifies.
pub fn jpki_crl(data: &[u8]) {
    let f = jpki_crl_fixture();
    let (input, spliced) = match data.split_first() {
        Some((&0, rest)) if rest.len() >= 2 => {
            let at = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % f.crl.len();
            let mut c = f.crl.clone();
            for (i, b) in rest[2..].iter().enumerate() {
                if let Some(x) = c.get_mut(at + i) {
                    *x ^= b;
                }
            }
            let changed = c != f.crl;
            (c, changed)
        }
        _ => (data.to_vec(), false),
    };
    if let Ok(list) = f.jpki.parse_crl(jpki_crl_now(), &input) {
        assert!(f.jpki.anchors().by_key_id(&list.ca_key_id).is_some());
        for s in &list.serials {
            assert!(!s.as_bytes().is_empty() && s.as_bytes().len() <= 20 && s.as_bytes()[0] != 0);
        }
        if spliced {
            // Only bytes outside the signed part (the signature's unused tail cannot be: RSA
            // is exact) may change and still verify; the list must equal the original's.
            let orig = f.jpki.parse_crl(jpki_crl_now(), &f.crl).expect("original");
            assert_eq!(list.serials, orig.serials);
        }
    }
}

fn jpki_serial_list_jpki() -> &'static (Jpki, String) {
    static J: OnceLock<(Jpki, String)> = OnceLock::new();
    J.get_or_init(|| {
        let t = |s| Timestamp::from_unix_secs(s).expect("time");
        let ca = DevCa::auth(1, t(1_600_000_000), t(2_000_000_000)).expect("CA");
        let anchors =
            Anchors::from_files(&[("ca.der".into(), ca.der().to_vec())]).expect("anchors");
        let hex: String = anchors.all()[0]
            .key_id()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (Jpki::new(anchors, JpkiConfig::default()), hex)
    })
}

/// A partner's serial list of arbitrary bytes: parsed whole or refused with a line number;
/// every serial accepted is a positive integer of at most 20 octets; nothing panics.
pub fn jpki_serial_list(data: &[u8]) {
    let (j, ca) = jpki_serial_list_jpki();
    // Half the inputs get a valid header, so the fuzzer reaches the serial lines.
    let input = match data.split_first() {
        Some((&0, rest)) => [format!("ca {ca}\n").as_bytes(), rest].concat(),
        _ => data.to_vec(),
    };
    match j.parse_serial_list(&input) {
        Ok(list) => {
            for s in &list.serials {
                assert!(
                    !s.as_bytes().is_empty() && s.as_bytes().len() <= 20 && s.as_bytes()[0] != 0
                );
            }
        }
        Err(JpkiError::SerialList { line, .. }) => {
            assert!(line >= 1 && line <= input.split(|&b| b == b'\n').count().max(1));
        }
        Err(_) => {}
    }
}

/// A MANIFEST of arbitrary bytes decodes or is refused with a typed error; whatever decodes
/// re-encodes to the same bytes. The trailing checksum is rewritten on a copy so that inputs
/// reach the table walk.
pub fn manifest(data: &[u8]) {
    let mut fixed = data.to_vec();
    if fixed.len() >= 4 {
        let n = fixed.len() - 4;
        let crc = crc32c::crc32c(&fixed[..n]);
        fixed[n..].copy_from_slice(&crc.to_le_bytes());
    }
    for bytes in [data, &fixed[..]] {
        if let Ok(m) = Manifest::decode("MANIFEST".into(), bytes, SCHEMA.len()) {
            assert_eq!(m.encode(), bytes);
        }
    }
}

/// A population line of arbitrary text parses or is refused with a reason, never panics.
pub fn population_row(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mykey_engine::population::parse_row(text);
        let _ = mykey_engine::id::CertRef::parse_text(text);
    }
    let _ = mykey_engine::population::read_providers(data);
}

/// Rewrites the checksums the fuzzer cannot guess (bucket CRCs, body CRC, header CRC), so that
/// inputs reach the probe, walk and verify logic instead of stopping at the header.
fn snapshot_file_fix_checksums(d: &mut [u8]) {
    let u64_at = |d: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&d[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let u32_at = |d: &[u8], at: usize| u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
    let stride = u64::from(u32_at(d, 52));
    if stride >= 64 && stride % 64 == 0 {
        if d[8] == 1 {
            // Version 1: slot lines of 64 bytes, CRC at the end of each.
            for b in 0..u64_at(d, 32).min(4096) {
                let at = 64 + (b * stride) as usize;
                if at + 64 > d.len() {
                    break;
                }
                let crc = crc32c::crc32c(&d[at..at + 60]);
                d[at + 60..at + 64].copy_from_slice(&crc.to_le_bytes());
            }
        } else {
            // Version 2: buckets of `stride` bytes from offset `stride`, CRC at their start.
            let p = stride as usize;
            for b in 0..u64::from(u32_at(d, 36)).min(4096) as usize {
                let at = p + b * p;
                if at + p > d.len() {
                    break;
                }
                let crc = crc32c::crc32c(&d[at + 4..at + p]);
                d[at..at + 4].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
    let body = crc32c::crc32c(&d[64..]);
    d[48..52].copy_from_slice(&body.to_le_bytes());
    let head = crc32c::crc32c(&d[..60]);
    d[60..64].copy_from_slice(&head.to_le_bytes());
}

/// A snapshot shard file of arbitrary bytes, presented as the manifest would expect it (its own
/// length and header CRC): opening, probing, walking and verifying it must never panic.
pub fn snapshot_file(input: &[u8]) {
    if input.len() < 64 {
        return;
    }
    let mut owned = input.to_vec();
    snapshot_file_fix_checksums(&mut owned);
    let data = &owned[..];
    let fs = SimFs::new(1);
    let Ok(mut f) = fs.create("f.snap") else {
        return;
    };
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
        if let Ok(p) = file.begin(h, k) {
            let _ = file.finish(p, h, k);
        }
    }
    let _ = file.for_each(|_, _| {});
    let _ = file.verify(&key);
}

fn wal_scan_fix_checksums(d: &mut [u8]) {
    if d.len() < wal::SEGMENT_HEADER_LEN {
        return;
    }
    let crc = crc32c::crc32c(&d[..28]);
    d[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut at = wal::SEGMENT_HEADER_LEN;
    while at + wal::RECORD_HEADER_LEN <= d.len() {
        let len = u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]) as usize;
        let Some(end) = at
            .checked_add(wal::RECORD_HEADER_LEN + len)
            .filter(|&e| e <= d.len())
        else {
            break;
        };
        let crc = crc32c::crc32c(&d[at + 8..end]);
        d[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// A log segment of arbitrary bytes: scanning it as the last or an older segment must return
/// changes or a typed error, never panic. Checksums the fuzzer cannot guess are rewritten on a
/// copy, so inputs also reach the record walk, the seq checks and the payload decoder.
pub fn wal_scan(data: &[u8]) {
    let path = std::path::Path::new("fuzz.log");
    let mut fixed = data.to_vec();
    wal_scan_fix_checksums(&mut fixed);
    for bytes in [data, &fixed[..]] {
        for last in [true, false] {
            if let Ok(scan) = wal::scan(path, bytes, last) {
                assert!(scan.valid_len as usize <= bytes.len());
            }
        }
    }
    let _ = wal::Change::decode(1, data);
}

/// A request frame of arbitrary bytes: the header is checked, the body decodes or is refused
/// with a status, and whatever decodes re-encodes to the same frame; nothing panics.
pub fn wire_request(data: &[u8]) {
    let Some(h) = data.get(..HEADER_LEN) else {
        return;
    };
    let h: [u8; HEADER_LEN] = h.try_into().expect("8 bytes");
    let Ok((op, len)) = request_header(&h) else {
        return;
    };
    // The body is whatever follows the header, whatever length the header claims: the
    // decoder must refuse every body that is not exactly one request.
    let body = &data[HEADER_LEN..];
    if let Ok(req) = Request::decode(op, body) {
        assert_eq!(req.op(), op);
        let mut again = Vec::new();
        req.encode(&mut again).expect("a decoded request encodes");
        assert_eq!(&again[HEADER_LEN..], body);
        assert_eq!(again[..4], data[..4]);
        if body.len() == len as usize {
            assert_eq!(again, data);
        }
    }
}
