//! Writes the synthetic population used by the scale runs to stdout (or the provider list with
//! `--providers`): `gen-population ROWS | mykeyd snapshot build --population - ...`.
//! Deterministic: the same ROWS gives the same file.

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = std::io::stdout();
    let mut out = out.lock();
    let r = match args.as_slice() {
        [flag] if flag == "--providers" => out.write_all(mykey_bench::providers_file().as_bytes()),
        [rows] => match rows.parse::<u64>() {
            Ok(rows) => {
                std::io::copy(&mut mykey_bench::PopulationReader::new(rows), &mut out).map(|_| ())
            }
            Err(e) => {
                eprintln!("gen-population: ROWS must be a number: {e}");
                std::process::exit(2);
            }
        },
        _ => {
            eprintln!("usage: gen-population ROWS | gen-population --providers");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("gen-population: {e}");
        std::process::exit(1);
    }
}
