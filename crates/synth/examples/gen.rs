//! Generates a population and reports how long it took and the file sizes.
//!
//! `cargo run --release -p rempart-synth --example gen -- <persons> <out_dir> [seed] [today]`

use std::time::Instant;

use chrono::NaiveDate;
use rempart_synth::{GenerateOptions, generate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let persons: u64 = args.next().as_deref().unwrap_or("100000").parse()?;
    let out = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/synth".into()));
    let seed: u64 = args.next().as_deref().unwrap_or("42").parse()?;
    let today = match args.next() {
        Some(s) => NaiveDate::parse_from_str(&s, "%Y-%m-%d")?,
        None => NaiveDate::from_ymd_opt(2026, 11, 1).ok_or("bad date")?,
    };
    let opts = GenerateOptions {
        persons,
        seed,
        today,
    };
    let started = Instant::now();
    let summary = generate(&opts, &out, &|_| {})?;
    let elapsed = started.elapsed();
    println!(
        "{} persons, {} organisations, {} accounts, {} mandates in {:.2} s ({} threads)",
        summary.persons,
        summary.organisations,
        summary.accounts,
        summary.mandates,
        elapsed.as_secs_f64(),
        rayon::current_num_threads(),
    );
    for name in [
        "persons.csv",
        "organisations.csv",
        "accounts.csv",
        "mandates.csv",
    ] {
        let len = std::fs::metadata(out.join(name))?.len();
        println!("{name:>18}: {:>10.1} MB", len as f64 / 1e6);
    }
    Ok(())
}
