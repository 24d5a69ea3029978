//! PROTOCOL.md's table "Answers by ID state" is what the engine does: every operation that
//! names a MyKey ID is run against an ID in each state, and the status (or lookup answer) it
//! gives is compared cell by cell with the table.

use std::sync::Arc;

use mykey_engine::registry::StoreConfig;
use mykey_engine::registry::{Lookup, Registry, RegistryConfig, RegistryError};
use mykey_engine::server;
use mykey_engine::store::fs::{Fs, SimFs};
use mykey_tests::*;

const STATES: [&str; 6] = [
    "unknown",
    "provisional",
    "provisional, expired",
    "active",
    "suspended",
    "deleted",
];
const OPS: [&str; 8] = [
    "LOOKUP",
    "LINK",
    "UNLINK",
    "CONFIRM",
    "REBIND",
    "DELETE",
    "REGISTER_PROVISIONAL",
    "REGISTER_FULL",
];

fn name(r: Result<(), RegistryError>) -> String {
    match r {
        Ok(()) => "OK".into(),
        Err(e) => server::refusal(&e).status.name().into(),
    }
}

/// What `op` gives on an ID in `state`: a status name, or for LOOKUP the answer.
fn observe(state: &str, op: &str) -> String {
    let fs: Arc<dyn Fs> = Arc::new(SimFs::new(7));
    let r =
        Registry::create(fs, StoreConfig::default(), RegistryConfig::default()).expect("create");
    let p = provider("P-1");
    r.register_provider(at(0), actor("op"), p)
        .expect("provider");
    let id = mykey(1);
    let card = cert(1, 1);
    match state {
        "unknown" => {}
        "provisional" | "provisional, expired" => r
            .register_provisional(at(0), actor("portal"), id, card)
            .expect("setup"),
        _ => r
            .register_full(at(0), actor("portal"), id, card)
            .expect("setup"),
    }
    match state {
        "suspended" => drop(r.revoke(at(1), actor("partner"), &[card]).expect("revoke")),
        "deleted" => r.delete(at(1), actor("municipal"), id).expect("delete"),
        _ => {}
    }
    let t = if state == "provisional, expired" {
        at(31 * 86_400)
    } else {
        at(2)
    };
    match op {
        "LOOKUP" => match r.lookup(t, &id, &p).expect("lookup") {
            Lookup::Linked(_) => "linked".into(),
            Lookup::NotLinked => "not linked".into(),
            Lookup::UnknownId => "unknown".into(),
            Lookup::Provisional => "provisional".into(),
            Lookup::Suspended => "suspended".into(),
            Lookup::Deleted => "deleted".into(),
        },
        "LINK" => name(
            r.link(t, actor("shop"), id, p, service("S"), false)
                .map(drop),
        ),
        "UNLINK" => name(r.unlink(t, actor("shop"), id, p).map(drop)),
        "CONFIRM" => name(r.confirm(t, actor("municipal"), id, card)),
        "REBIND" => name(r.rebind(t, actor("municipal"), id, cert(1, 2))),
        "DELETE" => name(r.delete(t, actor("municipal"), id)),
        "REGISTER_PROVISIONAL" => name(r.register_provisional(t, actor("portal"), id, cert(1, 3))),
        "REGISTER_FULL" => name(r.register_full(t, actor("portal"), id, card)),
        _ => unreachable!("an operation of OPS"),
    }
}

#[test]
fn the_answers_by_id_state_table_is_what_the_engine_does() {
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/PROTOCOL.md"),
    )
    .expect("PROTOCOL.md");
    let start = spec
        .find("### Answers by ID state")
        .expect("the table's section");
    let rows: Vec<Vec<String>> = spec[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect();
    let header = &rows[0];
    assert_eq!(&header[1..], &STATES.map(String::from)[..], "the columns");
    let mut wrong = Vec::new();
    for op in OPS {
        let row = rows
            .iter()
            .find(|r| r[0] == op)
            .unwrap_or_else(|| panic!("no row for {op}"));
        for (i, state) in STATES.iter().enumerate() {
            let got = observe(state, op);
            if row[i + 1] != got {
                wrong.push(format!(
                    "{op} on {state}: table {:?}, engine {got:?}",
                    row[i + 1]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
