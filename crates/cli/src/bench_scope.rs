//! `rempart bench scope`: how long the exact scope of a breach takes on a
//! large ledger, against the query index's own answer for the same
//! account (distinct persons, from the index alone) in the same process.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use rempart_breach::{Scope, scope};
use rempart_domain::incident::{Compromised, Window};
use rempart_ledger::bench::{self, BenchTarget, HOT_ACCOUNT, Synthetic};
use rempart_ledger::{LedgerKey, OrganisationId, Timestamp};

#[derive(Args)]
pub struct ScopeBenchArgs {
    /// Leaves in the benchmark log.
    #[arg(long, default_value_t = 50_000_000)]
    leaves: u64,
    /// Distinct persons the synthetic leaves read.
    #[arg(long, default_value_t = 43_000_000)]
    persons: u64,
    /// Share of the leaves, in percent, made by the compromised account
    /// (3 % of 50 M leaves reveal about 1.3 M persons of 43 M).
    #[arg(long, default_value_t = 3)]
    hot_percent: u64,
    /// Run on PostgreSQL (in `--schema`, recreated, dropped at the end)
    /// instead of SQLite.
    #[arg(long)]
    database: Option<String>,
    /// The PostgreSQL schema; its name must start with `ledger_bench`.
    #[arg(long, default_value = "ledger_bench_scope")]
    schema: String,
    /// Directory for the SQLite ledger (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the ledger afterwards.
    #[arg(long)]
    keep: bool,
    /// Build nothing: measure on a ledger kept by an earlier run.
    #[arg(long)]
    reuse: bool,
    /// Timed runs of each scope (the median is printed).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

pub async fn bench_scope(args: &ScopeBenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let target = match &args.database {
        Some(url) => BenchTarget::Postgres {
            url: url.clone(),
            schema: args.schema.clone(),
        },
        None => BenchTarget::Sqlite {
            dir: args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf()),
        },
    };
    let store = bench::open_target(&target, !args.reuse).await?;
    if args.reuse {
        println!(
            "== {target:?}, the {} leaves already there",
            store.size().await?
        );
    } else {
        println!(
            "== {target:?}, {} leaves reading {} persons, {} % by the compromised account",
            args.leaves, args.persons, args.hot_percent
        );
        let key = LedgerKey::generate("rempart.bench/scope")?;
        let (persons, hot) = (args.persons, args.hot_percent);
        let p = bench::populate_with(store.clone(), key, args.leaves, |first| {
            Synthetic::new(7, first)
                .with_persons(persons)
                .with_hot_percent(hot)
        })
        .await?;
        println!(
            "batched appends: {} leaves in {:.1} s = {:.0}/s",
            p.leaves, p.seconds, p.per_second
        );
    }
    let settle = Instant::now();
    store.settle_index().await?;
    println!(
        "query index settled {:.1} s after the last append",
        settle.elapsed().as_secs_f64()
    );
    let all = Window::new(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC)?;
    // The baseline: the index's distinct persons for the account, no leaf
    // read or decoded.
    let (baseline, persons) = median_of(args.rounds, || async {
        let t = Instant::now();
        let n = store
            .persons_revealed_to(HOT_ACCOUNT, Timestamp::MIN, Timestamp::MAX)
            .await?
            .len();
        Ok((t.elapsed().as_secs_f64(), n))
    })
    .await?;
    println!(
        "baseline, distinct persons shown to the account from the index alone: {persons} in {baseline:.2} s (median of {})",
        args.rounds
    );
    for (what, subject) in [
        ("the account", Compromised::Account(HOT_ACCOUNT)),
        (
            "its organisation",
            Compromised::Organisation(OrganisationId::new(1)),
        ),
    ] {
        let (seconds, s) = median_of(args.rounds, || async {
            let t = Instant::now();
            let s = scope(store.as_ref(), &[subject], all).await?;
            Ok((t.elapsed().as_secs_f64(), s))
        })
        .await?;
        print_scope(what, &s, seconds, baseline, args.rounds);
    }
    drop(store);
    if !args.keep {
        bench::close_target(&target).await?;
    }
    Ok(())
}

fn print_scope(what: &str, s: &Scope, seconds: f64, baseline: f64, rounds: usize) {
    println!(
        "scope of {what}: {} persons ({} pseudonymous only) from {} leaves ({} revealing, {} refused) in {seconds:.2} s (median of {rounds}) = {:.0} leaves/s, {:.1}x the baseline",
        s.persons.len(),
        s.pseudonymous_only(),
        s.leaves,
        s.revealing,
        s.refused.values().sum::<u64>(),
        s.leaves as f64 / seconds.max(1e-9),
        seconds / baseline.max(1e-9)
    );
}

/// Runs `f` `rounds` times (at least once) and returns the median time
/// with the last run's result.
async fn median_of<T, F, Fut>(rounds: usize, f: F) -> Result<(f64, T)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(f64, T)>>,
{
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..rounds.max(1) {
        let (t, v) = f().await?;
        times.push(t);
        last = Some(v);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    match last {
        Some(v) => Ok((median, v)),
        None => anyhow::bail!("no round ran"),
    }
}
