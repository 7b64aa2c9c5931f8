//! Prints the decision throughput of the default policies, uncached and
//! memoized:
//! `cargo run --release -p rempart-policy --example policy_bench [uncached] [memoized] [mandates] [threads]`.

use rempart_policy::bench::{BenchConfig, BenchReport, compare};

fn main() {
    let mut args = std::env::args().skip(1);
    let default = BenchConfig::default();
    let mut number = |fallback: u64| {
        args.next()
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(fallback)
    };
    let config = BenchConfig {
        uncached_evaluations: number(default.uncached_evaluations),
        memoized_evaluations: number(default.memoized_evaluations),
        mandates_per_person: usize::try_from(number(default.mandates_per_person as u64))
            .unwrap_or(default.mandates_per_person),
        threads: usize::try_from(number(default.threads as u64)).unwrap_or(default.threads),
    };
    let authorizer = match rempart_policy::Authorizer::defaults() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    match compare(&authorizer, config) {
        Ok(c) => {
            println!(
                "allowed_field_groups on {} requests, {} mandates per person (memoizes: {})",
                c.requests, config.mandates_per_person, c.memoizes
            );
            let line = |label: &str, r: &BenchReport| {
                println!(
                    "  {label:<22} {:>9} decisions in {:>7.3} s = {:>12.0} decisions/s, {:>8.3} µs each ({} thread{})",
                    r.evaluations,
                    r.elapsed.as_secs_f64(),
                    r.evaluations_per_second,
                    r.micros_per_evaluation,
                    r.threads,
                    if r.threads == 1 { "" } else { "s" }
                )
            };
            line("uncached (6 Cedar req)", &c.uncached);
            line("memoized", &c.memoized);
            if let Some(r) = &c.memoized_concurrent {
                line("memoized, concurrent", r);
            }
            println!(
                "  speed-up {:.0}×; {} decisions remembered",
                c.uncached.micros_per_evaluation / c.memoized.micros_per_evaluation.max(1e-9),
                c.cached_decisions
            );
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
