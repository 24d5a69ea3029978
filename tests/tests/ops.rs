//! The operator's kit in `ops/` names only metrics the engine exports, and its dashboard covers
//! every one of them: a renamed metric breaks this test instead of silently emptying a panel or
//! an alert. (`promtool check rules`, `promtool test rules`, `promtool check metrics` on a live
//! scrape and `systemd-analyze verify` run in `.ci/run`.) The list itself, `ALL_METRICS`, is
//! checked both ways against a serving node's `/metrics` by `engine/tests/serve.rs`
//! (`the_exported_metrics_are_all_metrics`).

use std::collections::BTreeSet;

use mykey_engine::server::admin::ALL_METRICS;

fn ops_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ops")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The engine's metric names an expression text mentions: `mykey_…` tokens without the
/// histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !word(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && word(bytes[i]) {
            i += 1;
        }
        let tok = &text[start..i];
        if tok.starts_with("mykey_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| tok.strip_suffix(s))
                .unwrap_or(tok);
            names.insert(base.to_owned());
        }
    }
    names
}

fn exported() -> BTreeSet<String> {
    ALL_METRICS.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let used = metric_names(&ops_file("prometheus/alerts.yml"));
    assert!(used.len() >= 10, "{used:?}");
    let known = exported();
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "alerts.yml names unknown metrics: {unknown:?}"
    );
}

#[test]
fn the_dashboard_parses_and_covers_every_metric() {
    let d: serde_json::Value =
        serde_json::from_str(&ops_file("grafana/mykeyd.json")).expect("the dashboard is JSON");
    let panels = d["panels"].as_array().expect("panels");
    let mut exprs = String::new();
    for p in panels {
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let e = t["expr"].as_str().expect("expr");
            assert!(
                e.contains("$node"),
                "panel {} ignores the node variable: {e}",
                p["title"]
            );
            exprs.push_str(e);
            exprs.push('\n');
        }
    }
    let used = metric_names(&exprs);
    let known = exported();
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names unknown metrics: {unknown:?}"
    );
    let missing: Vec<_> = known
        .iter()
        .filter(|m| *m != "up" && !used.contains(*m))
        .collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
}
