//! `mykey-load`: generate a population and counter traffic, and drive a `mykeyd` with it.
//! See `loadgen/README.md`. Exit status: 0 success, 1 a failure or a broken SLO, 2 bad usage.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use mykey_engine::server::pki::OperatorCa;
use mykey_load::floor::Floor;
use mykey_load::model::{Mix, Model};
use mykey_load::population::PopulationSpec;
use mykey_load::report::Slo;
use mykey_load::runner::{self, Mode, Options, Target};
use mykey_load::trace;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Parser)]
#[command(
    name = "mykey-load",
    version,
    about = "Counter traffic for mykeyd: populations, traces, open-loop runs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct PopArgs {
    /// MyKey IDs in the population.
    #[arg(long, default_value_t = 100_000)]
    ids: u64,
    /// Shopping streets.
    #[arg(long, default_value_t = 13_000)]
    streets: usize,
    /// Libraries.
    #[arg(long, default_value_t = 3_300)]
    libraries: usize,
    /// Public facilities.
    #[arg(long, default_value_t = 2_000)]
    facilities: usize,
    /// Seed of the population.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Requests per second averaged over opening hours.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Simulated seconds of traffic.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Simulated time of day at the start, in hours (counters open 10–20).
    #[arg(long, default_value_t = 12.0)]
    start_hour: f64,
    /// Terminals in all.
    #[arg(long, default_value_t = 2000)]
    terminals: u32,
    /// Operation mix: lookup,link,batch,card,register,push shares (card: authenticated
    /// lookups; register: new cards at the portal; push: partner serial lists).
    #[arg(long, default_value = "0.875,0.08,0.02,0.02,0.004,0.001")]
    mix: String,
    /// IDs per batched lookup.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Seed of the schedule.
    #[arg(long, default_value_t = 7)]
    schedule_seed: u64,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The development setup of the server (`mykeyd init`): its operator CA issues the
    /// terminals' certificates.
    #[arg(long, default_value = "mykey-dev")]
    dev: PathBuf,
    /// The servers' QUIC addresses, comma-separated (a cluster's nodes): terminals are spread
    /// over them in turn, and the report gives each its own latencies.
    #[arg(long, default_value = "127.0.0.1:4433", value_delimiter = ',', num_args = 1..)]
    server: Vec<SocketAddr>,
    /// The name in the server's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Play the schedule this many times faster (10 = a business day in 1/10 of the time).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Closed loop with this many workers instead of the open-loop schedule.
    #[arg(long)]
    closed: Option<usize>,
    /// Send each terminal's lookups and batches in turn on one PIPELINE stream (mykey/1
    /// opcode 0x15), as a terminal looking up one ID after another would, instead of a stream
    /// each; the floor run (--floor) does the same.
    #[arg(long)]
    pipeline: bool,
    /// UDP sockets the terminals share.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
    /// Fail (exit 1) if a p99 is above this: `1ms` for every operation, `lookup=1ms` for one
    /// (lookup, link, batch, card-lookup, register, push-serials). Repeatable.
    #[arg(long, value_parser = parse_p99_limit)]
    max_p99: Vec<(Option<String>, Duration)>,
    /// Fail (exit 1) if more than this share of requests fail, e.g. 0.001.
    #[arg(long)]
    max_error_rate: Option<f64>,
    /// Play the same schedule again against an in-process server with no engine on the same
    /// QUIC setup (the floor), and report the engine's percentiles beside the floor's.
    #[arg(long)]
    floor: bool,
    /// Fail (exit 1) if a p99 is more than this many times the floor's (needs --floor):
    /// `1.2` for every operation, `lookup=1.2` for one. Repeatable.
    #[arg(long, value_parser = parse_ratio_limit)]
    max_p99_over_floor: Vec<(Option<String>, f64)>,
    /// Write a self-contained HTML report here (plots of each operation's percentiles and
    /// latency over time, engine and floor side by side, rates and errors over time).
    #[arg(long)]
    html: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a population in the engine's bulk-load format: DIR/providers.txt and
    /// DIR/population.csv (load with `mykeyd snapshot build`).
    Population {
        #[command(flatten)]
        pop: PopArgs,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// JPKI anchor directory: the certificates name its first generation.
        #[arg(long)]
        anchors: Option<PathBuf>,
    },
    /// Write a trace generated by the traffic model.
    Generate {
        #[command(flatten)]
        pop: PopArgs,
        #[command(flatten)]
        model: ModelArgs,
        /// The trace file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate traffic from the model and play it against a server.
    Run {
        #[command(flatten)]
        pop: PopArgs,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Also write the trace that was played.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Play a trace (recorded or generated) against a server.
    Replay {
        /// The trace file.
        #[arg(long)]
        trace: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("{s:?}: give a unit: us, ms or s"))?;
    let n: f64 = num.parse().map_err(|_| format!("{s:?}: not a number"))?;
    let secs = match unit {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        _ => return Err(format!("{s:?}: unit must be us, ms or s")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_p99_limit(s: &str) -> Result<(Option<String>, Duration), String> {
    match s.split_once('=') {
        None => Ok((None, parse_duration(s)?)),
        Some((op, d)) if trace::OP_NAMES.contains(&op) => {
            Ok((Some(op.to_owned()), parse_duration(d)?))
        }
        Some((op, _)) => Err(format!(
            "{op:?} is not an operation: give one of {}",
            trace::OP_NAMES.join(", ")
        )),
    }
}

fn parse_ratio_limit(s: &str) -> Result<(Option<String>, f64), String> {
    let (op, r) = match s.split_once('=') {
        None => (None, s),
        Some((op, r)) if trace::OP_NAMES.contains(&op) => (Some(op.to_owned()), r),
        Some((op, _)) => {
            return Err(format!(
                "{op:?} is not an operation: give one of {}",
                trace::OP_NAMES.join(", ")
            ));
        }
    };
    match r.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok((op, x)),
        _ => Err(format!("{r:?}: give a ratio above 0, e.g. 1.2")),
    }
}

fn population(p: &PopArgs, ca_key_id: Vec<u8>) -> PopulationSpec {
    PopulationSpec {
        ids: p.ids,
        streets: p.streets,
        libraries: p.libraries,
        facilities: p.facilities,
        seed: p.seed,
        ca_key_id,
        ..PopulationSpec::default()
    }
}

fn model(p: &PopArgs, m: &ModelArgs) -> Result<Model, String> {
    let shares: Vec<f64> = m
        .mix
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<f64>()
                .map_err(|_| format!("--mix {:?}: not three numbers", m.mix))
        })
        .collect::<Result<_, _>>()?;
    let (lookup, link, batch, card, register, push) = match shares[..] {
        [a, b, c] => (a, b, c, 0.0, 0.0, 0.0),
        [a, b, c, d] => (a, b, c, d, 0.0, 0.0),
        [a, b, c, d, e, f] => (a, b, c, d, e, f),
        _ => {
            return Err(format!(
                "--mix {:?}: give lookup,link,batch[,card[,register,push]]",
                m.mix
            ));
        }
    };
    let sum = lookup + link + batch + card + register + push;
    if sum.is_nan() || sum <= 0.0 || shares.iter().any(|x| *x < 0.0) {
        return Err("--mix: the shares must be non-negative and add up to more than 0".into());
    }
    Ok(Model {
        population: population(p, vec![0x0d; 20]),
        rate: m.rate,
        duration_secs: m.duration,
        start_hour: m.start_hour,
        terminals: m.terminals,
        mix: Mix {
            lookup: lookup / sum,
            link: link / sum,
            batch: batch / sum,
            card: card / sum,
            register: register / sum,
            push: push / sum,
        },
        batch_size: m.batch_size.clamp(1, trace::BATCH_MAX),
        seed: m.schedule_seed,
    })
}

fn write_trace(path: &Path, events: &[trace::Event]) -> Result<(), String> {
    let f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = BufWriter::new(f);
    trace::write(&mut w, events)
        .and_then(|()| w.flush())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn target(r: &RunArgs) -> Result<Target, String> {
    let pki = r.dev.join("pki");
    let ca = CertificateDer::from_pem_file(pki.join("client-ca.pem"))
        .map_err(|e| format!("{}: {e}", pki.join("client-ca.pem").display()))?;
    let key = PrivateKeyDer::from_pem_file(pki.join("client-ca.key"))
        .map_err(|e| format!("{}: {e}", pki.join("client-ca.key").display()))?;
    let pki = OperatorCa::load(ca, key.secret_der()).map_err(|e| e.to_string())?;
    // Simulated cards need the development JPKI generation's key (kept by `mykeyd init`).
    let cards = match (
        std::fs::read(r.dev.join("jpki-anchors/dev-auth-ca.pem")),
        PrivateKeyDer::from_pem_file(r.dev.join("jpki-ca.key")),
    ) {
        (Ok(pem), Ok(key)) => {
            let der = CertificateDer::from_pem_slice(&pem).map_err(|e| format!("JPKI CA: {e}"))?;
            let ca = mykey_engine::jpki::dev::DevCa::load_auth(&der, key.secret_der())
                .map_err(|e| e.to_string())?;
            Some(Arc::new(runner::Cards::new(ca)?))
        }
        _ => None,
    };
    Ok(Target {
        addrs: r.server.clone(),
        server_name: r.server_name.clone(),
        pki: Arc::new(pki),
        cards,
    })
}

fn play(r: &RunArgs, events: Vec<trace::Event>, terminals: u32) -> Result<bool, String> {
    let target = target(r)?;
    let opts = Options {
        mode: r
            .closed
            .map_or(Mode::Open, |workers| Mode::Closed { workers }),
        speed: r.speed,
        sockets: r.sockets,
        progress: !r.no_progress,
        terminals,
        pipeline: r.pipeline,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    eprintln!(
        "connecting the terminals and playing {} requests ...",
        events.len()
    );
    if !r.max_p99_over_floor.is_empty() && !r.floor {
        return Err("--max-p99-over-floor needs --floor".into());
    }
    let floor_events = r.floor.then(|| events.clone());
    let mut report = rt.block_on(runner::run(&target, events, opts))?;
    // A floor run that fails leaves the engine's report whole, and the exit status 1.
    let mut floor_failed = false;
    if let Some(events) = floor_events {
        let played = Floor::start(&target.pki, &target.server_name).and_then(|floor| {
            eprintln!(
                "playing the same {} requests against the floor server on {} ...",
                events.len(),
                floor.addr()
            );
            let at_floor = Target {
                addrs: vec![floor.addr()],
                server_name: target.server_name.clone(),
                pki: target.pki.clone(),
                cards: target.cards.clone(),
            };
            rt.block_on(runner::run(&at_floor, events, opts))
        });
        match played {
            Ok(f) => report.floor = Some(Box::new(f)),
            Err(e) => {
                eprintln!("mykey-load: the floor run failed: {e}");
                floor_failed = true;
            }
        }
    }
    print!("{}", report.human());
    if let Some(p) = &r.html {
        std::fs::write(p, mykey_load::html::render(&report))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("wrote the HTML report to {}", p.display());
    }
    if let Some(p) = &r.json {
        std::fs::write(p, report.json().to_string())
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let broken = report.violations(&Slo {
        max_p99: r.max_p99.clone(),
        max_error_rate: r.max_error_rate,
        max_p99_over_floor: r.max_p99_over_floor.clone(),
    });
    for v in &broken {
        println!("SLO broken: {v}");
    }
    Ok(broken.is_empty() && !floor_failed)
}

fn run(cli: Cli) -> Result<bool, String> {
    match cli.cmd {
        Cmd::Population { pop, out, anchors } => {
            let ca = match anchors {
                Some(dir) => mykey_engine::jpki::Anchors::load_dir(&dir)
                    .map_err(|e| e.to_string())?
                    .all()[0]
                    .key_id()
                    .to_vec(),
                None => vec![0x0d; 20],
            };
            let spec = population(&pop, ca);
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let open = |name: &str| {
                File::create(out.join(name))
                    .map(BufWriter::new)
                    .map_err(|e| format!("{}: {e}", out.join(name).display()))
            };
            let (mut prov, mut rows) = (open("providers.txt")?, open("population.csv")?);
            let start = Instant::now();
            let sum = spec
                .write(&mut prov, &mut rows, &mut |n| {
                    eprintln!(
                        "  {n} IDs ({:.0}/s)",
                        n as f64 / start.elapsed().as_secs_f64()
                    )
                })
                .and_then(|s| prov.flush().and(rows.flush()).map(|()| s))
                .map_err(|e| e.to_string())?;
            eprintln!(
                "wrote {} providers, {} IDs, {} links to {} in {:.1} s",
                sum.providers,
                sum.ids,
                sum.links,
                out.display(),
                start.elapsed().as_secs_f64()
            );
            Ok(true)
        }
        Cmd::Generate { pop, model: m, out } => {
            let events = model(&pop, &m)?.schedule();
            write_trace(&out, &events)?;
            eprintln!("wrote {} requests to {}", events.len(), out.display());
            Ok(true)
        }
        Cmd::Run {
            pop,
            model: m,
            run,
            record,
        } => {
            let events = model(&pop, &m)?.schedule();
            if let Some(p) = &record {
                write_trace(p, &events)?;
            }
            play(&run, events, m.terminals)
        }
        Cmd::Replay { trace: path, run } => {
            let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let events =
                trace::read(BufReader::new(f)).map_err(|e| format!("{}: {e}", path.display()))?;
            play(&run, events, 0)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mykey-load: {e}");
            ExitCode::FAILURE
        }
    }
}
