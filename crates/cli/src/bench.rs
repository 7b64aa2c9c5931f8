//! `rempart bench consult`, `bench guard` and `bench auth`, and what every
//! benchmark of a served path shares: the account it reads as, its
//! credential, the server's own runtime, the load generator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rempart_domain::{OrganisationKind, PersonId, Purpose, Role};
use rempart_guard::{Guard, GuardConfig};
use rempart_server::{App, GuardChoice, ServerConfig};
use rempart_storage::{AccountRecord, Store};
use tokio::net::TcpListener;

use crate::accounts::issue;
use crate::location::Location;

/// The active agent of a partner organisation of `kind` with the largest
/// live caseload for `purpose`, and that caseload.
pub async fn busiest_agent(
    store: &Store,
    kind: OrganisationKind,
    purpose: Purpose,
    max_scan: usize,
) -> Result<Option<(AccountRecord, Vec<PersonId>)>> {
    let today = chrono::Utc::now().date_naive();
    let mut best: Option<(AccountRecord, Vec<PersonId>)> = None;
    let orgs = store.organisations().await?;
    for (org_id, _) in orgs.iter().filter(|(_, o)| o.kind == kind).take(max_scan) {
        let accounts = store.accounts_of_organisation(*org_id).await?;
        let Some(agent) = accounts
            .into_iter()
            .find(|a| a.role == Role::Agent && a.state == rempart_domain::AccountState::Active)
        else {
            continue;
        };
        let mut persons = Vec::new();
        let mut after = PersonId::new(0);
        loop {
            let page = store
                .caseload(
                    *org_id,
                    agent.account_id,
                    Some(purpose),
                    today,
                    after,
                    10_000,
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = last.person_id;
            persons.extend(page.iter().map(|e| e.person_id));
        }
        persons.dedup();
        if best.as_ref().is_none_or(|(_, p)| persons.len() > p.len()) {
            best = Some((agent, persons));
        }
    }
    Ok(best)
}

#[derive(Args)]
pub struct BenchConsultArgs {
    #[command(flatten)]
    pub location: Location,
    /// Seconds per measured round (each round measures the no-op endpoint,
    /// then consultations).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
}

/// One measured run: requests/s and latency percentiles.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    failures: u64,
}

/// A benchmark server's own runtime: 2 workers, like the machine, so the
/// load generator on the caller's runtime does not share them.
fn server_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?)
}

/// Waits for a benchmark server's start-up report. On failure the server's
/// runtime is shut down in the background: it must not be dropped inside
/// this async context.
async fn server_ready<T>(
    server_rt: tokio::runtime::Runtime,
    ready: tokio::sync::oneshot::Receiver<Result<T>>,
) -> Result<(tokio::runtime::Runtime, T)> {
    match ready.await {
        Ok(Ok(ready)) => Ok((server_rt, ready)),
        Ok(Err(e)) => {
            server_rt.shutdown_background();
            Err(e.context("server start-up"))
        }
        Err(_) => {
            server_rt.shutdown_background();
            bail!("the server stopped during start-up")
        }
    }
}

/// Consultations/s over HTTP with keep-alive against the server's own no-op
/// endpoint, in one process: the server on its runtime, the load generator
/// on another, both on this machine.
pub async fn bench_consult(args: &BenchConsultArgs) -> Result<()> {
    let purpose = Purpose::FollowUp;
    // The server gets its own runtime (2 workers, like the machine) and
    // opens everything on it; the load generator runs on the caller's.
    let server_rt = server_runtime()?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let loc = args.location.clone();
    let server = server_rt.spawn(async move {
        let opened = async {
            let app = App::build(
                ServerConfig::new(loc.server().storage()).with_guard(GuardChoice::PassThrough),
            )
            .await?;
            let store = app.consultation().store().clone();
            let Some((agent, caseload)) =
                busiest_agent(&store, OrganisationKind::CapEmploi, purpose, 200).await?
            else {
                bail!(
                    "no active Cap emploi agent with a caseload: import a generated population first"
                );
            };
            if caseload.is_empty() {
                bail!("the chosen agent's caseload is empty");
            }
            let credential = issue(&store, &agent, 1).await?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            Ok((app, agent, caseload, credential, listener))
        }
        .await;
        match opened {
            Ok((app, agent, caseload, credential, listener)) => {
                let addr = listener.local_addr()?;
                let _ = ready_tx.send(Ok((agent, caseload, credential, addr)));
                app.serve(listener, async move {
                    let _ = stop_rx.await;
                })
                .await?;
                Ok(())
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                anyhow::Ok(())
            }
        }
    });
    let (server_rt, ready) = server_ready(server_rt, ready_rx).await?;
    let (agent, caseload, credential, addr) = ready;
    println!(
        "account {} ({} agent of {}), caseload {} persons, purpose {}, {} connections, {} round(s) of {} s",
        agent.login,
        agent.kind,
        agent.organisation,
        caseload.len(),
        purpose,
        args.connections,
        args.rounds,
        args.duration
    );

    let base = format!("http://{addr}");
    let token = Arc::new(credential.token.as_str().to_string());
    let caseload = Arc::new(caseload);
    let ledger_before = leaf_count(&args.location).await.unwrap_or(0);

    let mut noop = Vec::new();
    let mut consult = Vec::new();
    let measured = measure(args, &base, &token, &caseload, &mut noop, &mut consult).await;
    let _ = stop_tx.send(());
    let served = server.await;
    server_rt.shutdown_background();
    measured?;
    served.context("server task")??;

    let failures: u64 = consult.iter().map(|r| r.failures).sum();
    let med = |runs: &[Run], f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (n_rps, c_rps) = (med(&noop, |r| r.rps), med(&consult, |r| r.rps));
    let ledger_after = leaf_count(&args.location).await.unwrap_or(0);
    println!(
        "median: consult {c_rps:.0} req/s, no-op {n_rps:.0} req/s, ratio {:.2} (target ≥ 0.5); ledger grew by {} leaves",
        c_rps / n_rps,
        ledger_after.saturating_sub(ledger_before)
    );
    println!(
        "RESULT consult_rps={c_rps:.1} consult_p50_ms={:.3} consult_p99_ms={:.3} noop_rps={n_rps:.1} noop_p50_ms={:.3} noop_p99_ms={:.3} organisation={} account={}",
        med(&consult, |r| r.p50_ms),
        med(&consult, |r| r.p99_ms),
        med(&noop, |r| r.p50_ms),
        med(&noop, |r| r.p99_ms),
        agent.organisation,
        agent.login
    );
    if failures > 0 {
        bail!("{failures} consultation(s) did not answer 200");
    }
    Ok(())
}

/// The warm-up and the measured rounds, alternating no-op and consultations.
async fn measure(
    args: &BenchConsultArgs,
    base: &str,
    token: &Arc<String>,
    caseload: &Arc<Vec<PersonId>>,
    noop: &mut Vec<Run>,
    consult: &mut Vec<Run>,
) -> Result<()> {
    // Warm-up: connections, caches, the ledger's first batches.
    load(
        base,
        token,
        caseload,
        args.connections,
        Duration::from_secs(2),
        false,
    )
    .await?;
    for round in 1..=args.rounds {
        let d = Duration::from_secs(args.duration);
        let n = load(base, token, caseload, args.connections, d, false).await?;
        let c = load(base, token, caseload, args.connections, d, true).await?;
        println!(
            "round {round}: no-op {:>8.0} req/s (p50 {:.2} ms, p99 {:.2} ms) | consult {:>8.0} req/s (p50 {:.2} ms, p99 {:.2} ms, {} failed) | ratio {:.2}",
            n.rps,
            n.p50_ms,
            n.p99_ms,
            c.rps,
            c.p50_ms,
            c.p99_ms,
            c.failures,
            c.rps / n.rps
        );
        noop.push(n);
        consult.push(c);
    }
    Ok(())
}

async fn leaf_count(loc: &Location) -> Result<u64> {
    Ok(loc.open_ledger_store().await?.size().await?)
}

/// `connections` keep-alive clients hammer either the no-op endpoint or a
/// random person of the caseload for `duration`.
async fn load(
    base: &str,
    token: &Arc<String>,
    caseload: &Arc<Vec<PersonId>>,
    connections: usize,
    duration: Duration,
    consult: bool,
) -> Result<Run> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    for worker in 0..connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .no_proxy()
            .build()?;
        let base = base.to_string();
        let token = token.clone();
        let caseload = caseload.clone();
        tasks.push(tokio::spawn(async move {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let url = if consult {
                    let id = caseload[rng.random_range(0..caseload.len())];
                    format!("{base}/api/v1/persons/{id}?purpose=follow_up")
                } else {
                    format!("{base}/api/v1/health/live")
                };
                let t = Instant::now();
                let ok = match client.get(&url).bearer_auth(token.as_str()).send().await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        ok && r.bytes().await.is_ok()
                    }
                    Err(_) => false,
                };
                latencies.push(t.elapsed().as_micros() as u32);
                if !ok {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut all = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await?;
        all.extend(l);
        failures += f;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |&us| f64::from(us) / 1000.0)
    };
    Ok(Run {
        rps: all.len() as f64 / secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failures,
    })
}

/// bench/guard-load-test.toml, for the benchmarks that serve.
pub(crate) const BENCH_GUARD_TOML: &str = include_str!("../../../bench/guard-load-test.toml");

/// The guard's configuration for `bench guard` and for `bench/consult.sh`
/// (one file, `bench/guard-load-test.toml`): the real guard with every
/// quota and threshold far away, so that the figure is the cost of
/// deciding on every request (counting, scoring, the sync task flushing to
/// the store), not of refusing a benchmark that reads like a bulk reader.
pub(crate) fn bench_guard_config() -> Result<GuardConfig> {
    let text = BENCH_GUARD_TOML;
    Ok(
        rempart_server::alerts::parse_config(text, rempart_guard::Format::Toml)
            .context("bench/guard-load-test.toml")?
            .guard,
    )
}

/// `rempart bench guard`: one server process with the same parts served
/// twice, on two listeners, once behind the real guard (over the real
/// store, its sync task running) and once behind the pass-through guard;
/// rounds alternate between them.
pub async fn bench_guard(args: &BenchConsultArgs) -> Result<()> {
    let purpose = Purpose::FollowUp;
    let server_rt = server_runtime()?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let loc = args.location.clone();
    let server = server_rt.spawn(async move {
        let opened = async {
            // The guard's sync task runs, as in production.
            let guarded = App::build(
                ServerConfig::new(loc.server().storage())
                    .with_guard(GuardChoice::real(bench_guard_config()?)),
            )
            .await?;
            // The same parts behind the pass-through guard.
            let mut plain = guarded.state();
            plain.consultation = Arc::new(
                plain
                    .consultation
                    .as_ref()
                    .clone()
                    .with_guard(Guard::pass_through()),
            );
            let store = guarded.consultation().store().clone();
            let Some((agent, caseload)) =
                busiest_agent(&store, OrganisationKind::CapEmploi, purpose, 200).await?
            else {
                bail!(
                    "no active Cap emploi agent with a caseload: import a generated population first"
                );
            };
            if caseload.is_empty() {
                bail!("the chosen agent's caseload is empty");
            }
            let credential = issue(&store, &agent, 1).await?;
            let l_guarded = TcpListener::bind("127.0.0.1:0").await?;
            let l_plain = TcpListener::bind("127.0.0.1:0").await?;
            Ok((guarded, plain, agent, caseload, credential, l_guarded, l_plain))
        }
        .await;
        match opened {
            Ok((guarded, plain, agent, caseload, credential, l_guarded, l_plain)) => {
                let addrs = (l_guarded.local_addr()?, l_plain.local_addr()?);
                let _ = ready_tx.send(Ok((agent, caseload, credential, addrs)));
                let (stop_plain_tx, stop_plain_rx) = tokio::sync::oneshot::channel::<()>();
                let plain_server = tokio::spawn(rempart_web::serve(l_plain, plain, async move {
                    let _ = stop_plain_rx.await;
                }));
                let served = guarded
                    .serve(l_guarded, async move {
                        let _ = stop_rx.await;
                        let _ = stop_plain_tx.send(());
                    })
                    .await;
                plain_server.await??;
                Ok(served?)
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                anyhow::Ok(())
            }
        }
    });
    let (server_rt, ready) = server_ready(server_rt, ready_rx).await?;
    let (agent, caseload, credential, (guarded_addr, plain_addr)) = ready;
    println!(
        "account {} ({} agent of {}), caseload {} persons, {} connections, {} round(s) of {} s each way",
        agent.login,
        agent.kind,
        agent.organisation,
        caseload.len(),
        args.connections,
        args.rounds,
        args.duration
    );
    let token = Arc::new(credential.token.as_str().to_string());
    let caseload = Arc::new(caseload);
    let (guarded_base, plain_base) = (
        format!("http://{guarded_addr}"),
        format!("http://{plain_addr}"),
    );
    let measured = async {
        let warm = Duration::from_secs(2);
        load(&plain_base, &token, &caseload, args.connections, warm, true).await?;
        load(&guarded_base, &token, &caseload, args.connections, warm, true).await?;
        let mut with = Vec::new();
        let mut without = Vec::new();
        for round in 1..=args.rounds {
            let d = Duration::from_secs(args.duration);
            let p = load(&plain_base, &token, &caseload, args.connections, d, true).await?;
            let g = load(&guarded_base, &token, &caseload, args.connections, d, true).await?;
            println!(
                "round {round}: pass-through {:>7.0} req/s (p50 {:.2} ms, p99 {:.2} ms) | guard {:>7.0} req/s (p50 {:.2} ms, p99 {:.2} ms) | ratio {:.3}",
                p.rps,
                p.p50_ms,
                p.p99_ms,
                g.rps,
                g.p50_ms,
                g.p99_ms,
                g.rps / p.rps
            );
            if p.failures + g.failures > 0 {
                bail!(
                    "{} consultation(s) did not answer 200",
                    p.failures + g.failures
                );
            }
            without.push(p);
            with.push(g);
        }
        anyhow::Ok((with, without))
    }
    .await;
    let _ = stop_tx.send(());
    let served = server.await;
    server_rt.shutdown_background();
    let (with, without) = measured?;
    served.context("server task")??;

    let med = |runs: &[Run], f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (g, p) = (med(&with, |r| r.rps), med(&without, |r| r.rps));
    let check = rempart_guard::bench::check_cost(31, 20_000, 200)?;
    println!(
        "median: guard {g:.0} req/s, pass-through {p:.0} req/s, ratio {:.3}, overhead {:.1}% (target ≤ 10%)",
        g / p,
        (1.0 - g / p) * 100.0
    );
    println!(
        "check: {:.2} µs per call with the guard, {:.3} µs pass-through ({} accounts, {} samples of {} calls)",
        check.check_median.as_secs_f64() * 1e6,
        check.pass_through_median.as_secs_f64() * 1e6,
        check.accounts,
        check.samples,
        check.calls_per_sample
    );
    println!(
        "RESULT guard_rps={g:.1} guard_p50_ms={:.3} guard_p99_ms={:.3} pass_rps={p:.1} pass_p50_ms={:.3} pass_p99_ms={:.3} ratio={:.4} check_us={:.3}",
        med(&with, |r| r.p50_ms),
        med(&with, |r| r.p99_ms),
        med(&without, |r| r.p50_ms),
        med(&without, |r| r.p99_ms),
        g / p,
        check.check_median.as_secs_f64() * 1e6
    );
    Ok(())
}

pub fn bench_auth(passwords: usize, proofs: usize, passkeys: usize) -> anyhow::Result<()> {
    use rempart_auth::bench::{argon2_figures, passkey_figures, proof_figures};
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let a = argon2_figures(passwords)?;
    println!(
        "argon2id m={} KiB t={} p={}, medians of {}: hash {:.1} ms, verify {:.1} ms, unknown account {:.1} ms",
        a.params.m_cost_kib,
        a.params.t_cost,
        a.params.p_cost,
        a.samples,
        ms(a.hash_median),
        ms(a.verify_median),
        ms(a.unknown_account_median)
    );
    let p = proof_figures(proofs)?;
    println!(
        "device-bound proof (ES256, DPoP format), median of {}: {:.0} µs per request",
        p.samples,
        p.verify_median.as_secs_f64() * 1e6
    );
    let k = passkey_figures(passkeys)?;
    println!(
        "passkey assertion verification (ES256, webauthn-rs), median of {}: {:.0} µs per login",
        k.samples,
        k.verify_median.as_secs_f64() * 1e6
    );
    println!(
        "RESULT argon2_hash_ms={:.2} argon2_verify_ms={:.2} argon2_unknown_ms={:.2} proof_us={:.1} passkey_verify_us={:.1}",
        ms(a.hash_median),
        ms(a.verify_median),
        ms(a.unknown_account_median),
        p.verify_median.as_secs_f64() * 1e6,
        k.verify_median.as_secs_f64() * 1e6
    );
    Ok(())
}
