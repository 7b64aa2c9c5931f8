//! Quick ledger figures without the CLI:
//!
//! ```text
//! cargo run --release -p rempart-ledger --example bench -- [LEAVES] [sqlite|postgres|both]
//! ```
//!
//! SQLite runs in a temporary directory; PostgreSQL in the schema
//! `ledger_bench` of `REMPART_TEST_DATABASE_URL` (default the local `test`
//! database), dropped and recreated first.

use std::time::Duration;

use rempart_ledger::LedgerKey;
use rempart_ledger::bench::{self, BenchTarget};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let leaves: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let which = args.next().unwrap_or_else(|| "both".into());
    let dir = tempfile::tempdir()?;
    let url = std::env::var("REMPART_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut targets = Vec::new();
    if which == "sqlite" || which == "both" {
        targets.push(BenchTarget::Sqlite {
            dir: dir.path().to_path_buf(),
        });
    }
    if which == "postgres" || which == "both" {
        targets.push(BenchTarget::Postgres {
            url,
            schema: "ledger_bench".into(),
        });
    }
    println!(
        "SHA-256 leaf hashes, one core: {:.0}/s",
        bench::hash_rate(2_000_000)?
    );
    for target in targets {
        println!("\n== {target:?}, {leaves} leaves");
        let store = bench::open_target(&target, true).await?;
        let key = LedgerKey::generate("rempart.bench/ledger")?;
        let copy = || LedgerKey::from_text(&key.signer().to_text());

        // Load most of the log first, so that the durable-append and latency
        // figures are taken on a store of (nearly) the full size.
        let concurrent = (leaves / 2).clamp(1, 500_000);
        let rest = leaves.saturating_sub(concurrent);
        if rest > 0 {
            let p = bench::populate(store.clone(), copy()?, rest).await?;
            println!(
                "batched appends (4096 per call): {} leaves in {:.2} s = {:.0}/s",
                p.leaves, p.seconds, p.per_second
            );
        }
        let t = bench::append_throughput(store.clone(), copy()?, concurrent, 1024).await?;
        println!(
            "durable appends, {} concurrent callers: {} leaves in {:.2} s = {:.0}/s",
            t.callers, t.leaves, t.seconds, t.per_second
        );
        let l =
            bench::append_latency(store.clone(), copy()?, 5000, Duration::from_secs(10)).await?;
        println!(
            "latency at {}/s offered ({:.0}/s achieved, {} appends): p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            l.rate, l.achieved_rate, l.appends, l.p50_us, l.p99_us, l.p999_us, l.max_us
        );
        let v = bench::verify_speed(&store, &key.verifier()).await?;
        println!(
            "verify: {} leaves, {} checkpoints in {:.2} s = {:.0} leaves/s",
            v.leaves, v.checkpoints, v.seconds, v.per_second
        );
        let p = bench::proof_speed(&store, 1000).await?;
        println!(
            "proofs at size {} (⌈log2 n⌉ = {}): inclusion mean {:.0} µs, p99 {} µs, max {} hashes; consistency mean {:.0} µs, p99 {} µs, max {} hashes",
            p.size,
            p.log2_bound,
            p.inclusion.mean_us,
            p.inclusion.p99_us,
            p.inclusion_max_hashes,
            p.consistency.mean_us,
            p.consistency.p99_us,
            p.consistency_max_hashes
        );
        let q = bench::query_speed(&store, 200).await?;
        println!(
            "queries over {} leaves: persons shown to the hot account over the whole log: {} in {} µs; an account's persons over a week: mean {:.0} µs, p99 {} µs; first page of an account: mean {:.0} µs, p99 {} µs; of a person: mean {:.0} µs, p99 {} µs",
            q.leaves,
            q.hot_persons,
            q.hot_us,
            q.account_week.mean_us,
            q.account_week.p99_us,
            q.account_page.mean_us,
            q.account_page.p99_us,
            q.person_page.mean_us,
            q.person_page.p99_us
        );
    }
    Ok(())
}
