//! The `mykeyd` binary as an operator runs it: the demo, build, inspect, verify (and its exit
//! code on a damaged store), lookup, show, export and log.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mykeyd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mykeyd"))
        .args(args)
        .output()
        .expect("run mykeyd")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("mykeyd-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    Dir(p)
}

/// `mykeyd snapshot build` of the sample providers and `population` into `out`.
fn build_args(population: &str, out: &str) -> Vec<String> {
    let providers = sample("providers.txt");
    [
        "snapshot",
        "build",
        "--providers",
        &providers,
        "--population",
        population,
        "--out",
        out,
    ]
    .map(String::from)
    .to_vec()
}

fn sample(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../snapshots/sample")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn demo_builds_once_and_answers() {
    let d = dir("demo");
    let s = d.0.to_string_lossy().into_owned();
    let o = mykeyd(&["demo", "--dir", &s]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("built the sample store"), "{out}");
    assert!(
        out.contains("1C2410DF79DGEL @ A-α1-0001: linked: service ID ABCDEFGHI"),
        "{out}"
    );
    assert!(
        out.contains("02IS5D9IK40VST @ A-α1-0001: provisional"),
        "{out}"
    );
    assert!(out.contains("@ 13101-LIB-0001: suspended"), "{out}");
    assert!(
        out.contains("ZZZZZZZZZZZZZZ @ A-α1-0001: unknown MyKey ID"),
        "{out}"
    );
    let o = mykeyd(&[
        "demo",
        "--dir",
        &s,
        "1C2410DF79DGEL",
        "A-β1-0001",
        "ZZZZZZZZZZZZZZ",
        "A-β1-0001",
    ]);
    let (out, _) = text(&o);
    assert!(
        !out.contains("built the sample store"),
        "built twice: {out}"
    );
    assert!(
        out.contains("A-β1-0001: linked: service ID 2802121234"),
        "{out}"
    );
    assert!(
        out.contains("ZZZZZZZZZZZZZZ @ A-β1-0001: unknown MyKey ID"),
        "{out}"
    );
    let o = mykeyd(&["demo", "--dir", &s, "bad-id", "A-β1-0001"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("14 characters"), "{}", text(&o).1);
}

#[test]
fn build_inspect_verify_and_a_damaged_store() {
    let d = dir("build");
    let s = d.0.to_string_lossy().into_owned();
    let mut args = build_args(&sample("population.csv"), &s);
    args.extend(["--shards", "2", "--at", "1764028800"].map(String::from));
    let o = mykeyd(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(
        text(&o).0.contains("24 IDs, 39 links, 6 providers"),
        "{}",
        text(&o).0
    );
    let o = mykeyd(&["snapshot", "inspect", &s]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.contains("MANIFEST format version 2"), "{out}");
    assert!(
        out.contains("ids                 24 records in 2 shard(s)"),
        "{out}"
    );
    // What layout each table's shards have, read from their headers.
    let ids = out.lines().find(|l| l.contains("ids ")).unwrap_or_default();
    assert!(ids.contains("; format 2, packed MyKey IDs, "), "{out}");
    let certs = out
        .lines()
        .find(|l| l.contains("certs "))
        .unwrap_or_default();
    assert!(
        certs.contains("; format 2, ") && !certs.contains("MyKey IDs"),
        "{out}"
    );
    let o = mykeyd(&["snapshot", "verify", &s]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("verify: OK"));
    let o = mykeyd(&["lookup", "--store", &s, "1C2410DF79DGEL", "A-γ1-0001"]);
    assert!(text(&o).0.contains("linked: service ID 1111358665"));
    let o = mykeyd(&["show", "--store", &s, "1C2410DF79DGEL"]);
    assert!(
        text(&o)
            .0
            .contains("active since 2025-11-25T00:00:00Z by operator-bulk-load"),
        "{}",
        text(&o).0
    );
    let o = mykeyd(&["export", "--store", &s, "A-α1-0001"]);
    let (out, err) = text(&o);
    assert!(
        out.starts_with("mykey_id,state,service_id,linked_at,linked_by\n"),
        "{out}"
    );
    assert!(
        out.contains("1C2410DF79DGEL,active,ABCDEFGHI,2025-11-25T00:00:00Z,operator-bulk-load"),
        "{out}"
    );
    assert!(err.contains("rows"));

    // A flipped bit in a snapshot: verify exits 1 and names the file.
    let victim = std::fs::read_dir(&d.0)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ids-0001"))
        })
        .expect("an ids shard");
    let mut b = std::fs::read(&victim).expect("read");
    let last = b.len() - 1;
    b[last] ^= 1;
    std::fs::write(&victim, b).expect("write");
    let o = mykeyd(&["snapshot", "verify", &s]);
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    assert!(
        err.contains(victim.file_name().and_then(|n| n.to_str()).expect("name")),
        "{err}"
    );
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn bad_input_is_named() {
    let d = dir("bad");
    let s = d.0.to_string_lossy().into_owned();
    let bad = d.0.with_extension("csv");
    std::fs::write(
        &bad,
        "mykey_id,state,cert,links\n1C2410DF79DGEL,active,AB:01,\nSHORT,active,AB:02,\n",
    )
    .expect("write");
    let args = build_args(&bad.to_string_lossy(), &s);
    let o = mykeyd(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let _ = std::fs::remove_file(&bad);
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    assert!(err.contains("population line 3"), "{err}");
    let o = mykeyd(&["snapshot", "verify", "/nonexistent/store"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no such store directory"));
    let o = mykeyd(&["snapshot", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn anchors_are_listed_and_the_signature_ca_is_named() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/jpki-ca");
    let o = mykeyd(&["anchors", &shared.to_string_lossy()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("jpki-myna_sign_ca_2015.pem") && err.contains("digital-signature"),
        "{err}"
    );
    // The two authentication generations alone (copied at run time into a scratch directory).
    let d = dir("anchors");
    std::fs::create_dir_all(&d.0).expect("dir");
    for f in ["jpki-myna_auth_ca_2015.pem", "jpki-myna_auth_ca_2023.pem"] {
        std::fs::copy(shared.join(f), d.0.join(f)).expect("copy");
    }
    let o = mykeyd(&["anchors", &d.0.to_string_lossy()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("jpki-myna_auth_ca_2015.pem: key id 9567951B"),
        "{out}"
    );
    assert!(
        out.contains("jpki-myna_auth_ca_2023.pem: key id 1AC100F5"),
        "{out}"
    );
    assert!(
        out.contains("2 user-authentication CA generations"),
        "{out}"
    );
}

#[test]
fn a_crl_is_pushed_by_hand_once() {
    use mykey_engine::id::Timestamp;
    use mykey_engine::jpki::SerialNo;
    use mykey_engine::jpki::dev::DevCa;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let t = |s| Timestamp::from_unix_secs(s).expect("time");
    let ca = DevCa::auth(9, t(now - 86_400), t(now + 86_400 * 365)).expect("CA");
    let d = dir("revoke");
    let anchors = d.0.join("anchors");
    std::fs::create_dir_all(&anchors).expect("dir");
    std::fs::write(anchors.join("dev-auth-ca.pem"), ca.pem()).expect("write");
    let serials: Vec<SerialNo> = [[0x0a], [0x0b]]
        .iter()
        .map(|s| SerialNo::from_integer(s).expect("serial"))
        .collect();
    let crl = d.0.join("dev.crl");
    std::fs::write(
        &crl,
        ca.crl(3, t(now - 60), t(now + 86_400), &serials)
            .expect("crl"),
    )
    .expect("write");
    let store = d.0.join("store");
    let o = mykeyd(&[
        "snapshot",
        "build",
        "--population",
        &sample("population.csv"),
        "--providers",
        &sample("providers.txt"),
        "--out",
        &store.to_string_lossy(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let push = |id: &str| {
        mykeyd(&[
            "revoke",
            "--store",
            &store.to_string_lossy(),
            "--anchors",
            &anchors.to_string_lossy(),
            "--push-id",
            id,
            "--crl",
            &crl.to_string_lossy(),
        ])
    };
    let o = push("by-hand-1");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("2 entries, 2 newly revoked, 0 already known"),
        "{out}"
    );
    let (out, _) = text(&push("by-hand-1"));
    assert!(out.starts_with("already applied: push by-hand-1"), "{out}");
    let o = push("by-hand-2");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("not newer"), "{err}");
}
