//! The floor and the HTML report: a schedule played against the floor server is answered in
//! full on the mykeyd QUIC setup; the HTML report of an engine run beside its floor draws all
//! its plots in a real browser (Debian's `chromium`, headless), with nothing fetched.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mykey_engine::id::{MyKeyId, ProviderId, ServiceId, Timestamp};
use mykey_engine::server::dev::DevOperatorPki;
use mykey_engine::server::pki::OperatorCa;
use mykey_engine::server::system_clock;
use mykey_load::floor::Floor;
use mykey_load::report::Report;
use mykey_load::runner::{Mode, Options, Target, run};
use mykey_load::trace::{Event, Request};

fn operator_ca() -> Arc<OperatorCa> {
    let now = system_clock();
    let from = Timestamp::from_unix_secs(now.unix_secs() - 86_400).expect("t");
    let pki = DevOperatorPki::generate(&["localhost"], from, now.plus_secs(86_400)).expect("pki");
    Arc::new(OperatorCa::load(pki.ca().clone(), &pki.operator_ca().key_pkcs8()).expect("ca"))
}

/// 300 requests from 6 terminals over 0.6 s: lookups, batches of 20 and links.
fn schedule() -> Vec<Event> {
    let p = ProviderId::parse(b"13101-ST-0001").expect("p");
    let id = MyKeyId::parse(b"1C2410DF79DGEL").expect("id");
    let s = ServiceId::parse(b"NEW0000000001").expect("s");
    (0..300u64)
        .map(|i| Event {
            at_us: i * 2_000,
            terminal: (i % 6) as u32,
            request: match i % 3 {
                0 => Request::Lookup(p, id),
                1 => Request::Batch(p, vec![id; 20]),
                _ => Request::Link(p, id, s),
            },
        })
        .collect()
}

/// The floor answers every request of the schedule with a body of its kind, on the same
/// TLS (client certificates issued by the run's operator CA) and transport as mykeyd, on
/// streams of their own and on `PIPELINE` streams.
#[test]
fn a_schedule_played_against_the_floor_is_answered_in_full() {
    let pki = operator_ca();
    let floor = Floor::start(&pki, "localhost").expect("floor");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let target = Target {
        addrs: vec![floor.addr()],
        server_name: "localhost".into(),
        pki,
        cards: None,
    };
    // A stream per request, then each terminal's lookups and batches in turn on its PIPELINE
    // stream, which the floor serves as mykeyd does.
    for pipeline in [false, true] {
        let opts = Options {
            mode: Mode::Open,
            speed: 1.0,
            sockets: 2,
            progress: false,
            terminals: 8,
            pipeline,
        };
        let report = rt.block_on(run(&target, schedule(), opts)).expect("run");
        assert_eq!(
            (report.ok(), report.failed()),
            (300, 0),
            "pipeline {pipeline}: {}",
            report.human()
        );
        assert_eq!(report.terminals, 8, "idle terminals connect too");
        let j = report.json();
        for op in ["lookup", "batch", "link"] {
            assert_eq!(
                j["ops"][op]["count"],
                100,
                "{op}, pipeline {pipeline}: {}",
                report.human()
            );
        }
    }
}

/// A report with three operations, errors in its second half, and a floor run.
fn report_with_floor() -> Report {
    let mut engine = Report::new("open", 3000, 30.0);
    let mut floor = Report::new("open", 3000, 30.0);
    for i in 0..3000u64 {
        let at = i as f64 / 100.0;
        let op = ["lookup", "batch", "link"][(i % 3) as usize];
        engine.scheduled_at(at);
        floor.scheduled_at(at);
        let slow = if at > 20.0 { 8 } else { 1 };
        let error = (at > 15.0 && i % 17 == 0).then(|| "BUSY".to_owned());
        engine.record(op, at, Duration::from_micros(300 * slow + i % 97), error);
        floor.record(op, at, Duration::from_micros(200 + i % 89), None);
    }
    engine.elapsed_secs = 30.2;
    floor.elapsed_secs = 30.1;
    engine.floor = Some(Box::new(floor));
    engine
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// The page, opened in headless Chromium, draws every plot (three percentile plots, three
/// over time, the rate and the errors), each with points, engine and floor both; the page
/// names no outside resource.
#[test]
fn the_html_report_draws_its_plots_in_headless_chromium() {
    let html = mykey_load::html::render(&report_with_floor());
    for outside in [
        "src=",
        "href=",
        "url(",
        "@import",
        "fetch(",
        "XMLHttpRequest",
    ] {
        assert!(
            !html.contains(outside),
            "the page fetches something: {outside}"
        );
    }
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed (.ci/run installs Debian's chromium)"
        );
        eprintln!(
            "\n*** SKIPPED: no chromium on the PATH (apt-get install chromium to run this test) ***\n"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("mykey-load-html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let page = dir.join("report.html");
    std::fs::write(&page, &html).expect("write page");
    let out = Command::new("timeout")
        .arg("120")
        .arg(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&dir);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("data-done=\"1\""),
        "chromium did not finish the page: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dom.contains("data-error="),
        "the page's script failed: {dom}"
    );
    assert!(dom.contains("data-plots=\"8\""), "not all 8 plots drawn");
    // Every figure drew points; none is empty.
    let figures = dom.matches("<figure class=\"plot\"").count();
    assert_eq!(figures, 8);
    assert!(!dom.contains("data-points=\"0\""), "an empty plot");
    for series in [
        "engine p99",
        "floor p99",
        "scheduled",
        "engine answered",
        "floor answered",
        "engine BUSY",
    ] {
        assert!(
            dom.contains(&format!("data-series=\"{series}\"")),
            "no line for {series}"
        );
    }
    // A line has its points: the first plot's (a distribution) has one per quantile.
    let tag = "<path class=\"line\" d=\"";
    let from = dom.find(tag).expect("a drawn line") + tag.len();
    let d = &dom[from..from + dom[from..].find('"').expect("end of d")];
    assert!(d.starts_with('M') && d.matches('L').count() >= 13, "{d}");
}
