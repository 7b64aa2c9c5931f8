//! Prints the evaluation throughput of the default policies:
//! `cargo run --release -p rempart-policy --example policy_bench [evaluations] [mandates]`.

fn main() {
    let mut args = std::env::args().skip(1);
    let evaluations = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let mandates = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let authorizer = match rempart_policy::Authorizer::defaults() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    match rempart_policy::bench::bench(&authorizer, evaluations, mandates) {
        Ok(r) => println!(
            "allowed_field_groups: {} evaluations in {:.3} s = {:.0} evaluations/s ({:.1} µs each, {} mandates per person, 6 Cedar requests per evaluation)",
            r.evaluations,
            r.elapsed.as_secs_f64(),
            r.evaluations_per_second,
            r.micros_per_evaluation,
            mandates
        ),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
