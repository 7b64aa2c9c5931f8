//! `rempart serve`, `rempart account credential …` and `rempart bench
//! consult`: wiring the consultation path to HTTP and measuring it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rempart_consult::{Consultation, LoginSettings};
use rempart_domain::{OrganisationKind, Purpose, Reference, Role};
use rempart_guard::Guard;
use rempart_ledger::{Ledger, LedgerConfig};
use rempart_policy::Authorizer;
use rempart_storage::{AccountRecord, Store};
use rempart_vault::Vault;
use rempart_web::{AppState, Limits};
use tokio::net::TcpListener;

use crate::{Location, audit};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub location: Location,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory holding rempart.cedarschema and *.cedar policy files
    /// (default: the policies built into this program).
    #[arg(long, env = "REMPART_POLICIES")]
    pub policies: Option<PathBuf>,
    /// The URL browsers reach this server at (scheme, host, port): the
    /// passkeys' origin (its host is their relying-party id, which cannot
    /// be an IP address) and what device proofs name. Default:
    /// http://localhost:<port of --listen>.
    #[arg(long, env = "REMPART_PUBLIC_URL")]
    pub public_url: Option<String>,
}

#[derive(Subcommand)]
pub enum AccountCommand {
    /// API credentials of an account.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Activation codes: the first password and TOTP of an account
    /// approved under four eyes, or whose factors were reset.
    #[command(subcommand)]
    Activation(ActivationCommand),
}

#[derive(Subcommand)]
pub enum ActivationCommand {
    /// Issue a new activation code (voiding the previous one) for an
    /// active account that was approved under four eyes and lacks its
    /// password or TOTP: printed once, only its digest kept, valid 72 h,
    /// one ledger leaf under the officer. Refused for an account never
    /// approved by an officer. Takes the ledger's writer: run it while
    /// `rempart serve` is stopped.
    Issue {
        #[command(flatten)]
        location: Location,
        /// Login of the account to activate.
        #[arg(long)]
        login: String,
        /// Login of the officer handing the code over (an active officer,
        /// not the account).
        #[arg(long)]
        officer: String,
    },
}

#[derive(Subcommand)]
pub enum CredentialCommand {
    /// Issue a credential; it is printed once and only its digest is kept.
    Issue {
        #[command(flatten)]
        location: Location,
        /// Login of the account.
        #[arg(long)]
        login: String,
        /// Days until the credential expires (1–365).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=365))]
        days: u16,
    },
    /// Revoke one credential (--id) or all credentials of an account.
    Revoke {
        #[command(flatten)]
        location: Location,
        #[arg(long)]
        login: String,
        #[arg(long)]
        id: Option<i64>,
    },
}

/// Loads and validates the policies: an invalid file stops start-up here.
pub fn load_policies(dir: Option<&PathBuf>) -> Result<Authorizer> {
    match dir {
        Some(dir) => Authorizer::from_dir(dir)
            .with_context(|| format!("loading the policies in {}", dir.display())),
        None => Authorizer::defaults().context("loading the built-in policies"),
    }
}

/// The consultation path over the registry, the keys and the ledger at
/// `loc`; with `login`, browser sessions and login too.
pub async fn open_consultation(
    loc: &Location,
    policies: Authorizer,
    login: Option<LoginSettings>,
) -> Result<Consultation> {
    let stores = crate::accounts::open_stores(loc).await?;
    let vault = Vault::new(crate::key_source(loc), stores.registry.clone())
        .context("loading the keys (run `rempart init` first?)")?;
    let key = audit::load_key(loc)?;
    let store = audit::open_store(loc).await?;
    let ledger = Ledger::open(store, key, LedgerConfig::default())
        .await
        .context("taking the audit ledger's writer (is another server running on it?)")?;
    let consultation = Consultation::new(
        vault,
        stores.auth,
        Arc::new(policies),
        Guard::pass_through(),
        Arc::new(ledger),
    );
    match login {
        Some(settings) => consultation
            .with_browser_login(settings)
            .context("browser login settings"),
        None => Ok(consultation),
    }
}

/// Serves until Ctrl-C/SIGTERM, then drains and closes the ledger with a
/// final signed checkpoint.
pub async fn serve(args: &ServeArgs) -> Result<()> {
    // Fail-closed causes go to stderr (RUST_LOG overrides the level).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let policies = load_policies(args.policies.as_ref())?;
    println!("policies: {} loaded and validated", policies.policy_count());
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let public_url = match &args.public_url {
        Some(url) => url.clone(),
        None => format!("http://localhost:{}", addr.port()),
    };
    let login = LoginSettings::new(&public_url).context("--public-url")?;
    let consultation = open_consultation(&args.location, policies, Some(login)).await?;
    println!(
        "serving http://{addr}/api/v1 (OpenAPI: http://{addr}/api/v1/openapi.json); Ctrl-C stops"
    );
    println!("browser login: {public_url}/connexion");
    run_until(listener, consultation, rempart_web::shutdown_signal()).await
}

/// Serves on `listener` until `stop`, then closes the ledger.
pub async fn run_until(
    listener: TcpListener,
    consultation: Consultation,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let ledger = consultation.ledger().clone();
    let state = AppState {
        consultation,
        limits: Limits::default(),
    };
    rempart_web::serve(listener, state, stop)
        .await
        .context("serving HTTP")?;
    close_ledger(ledger).await
}

async fn close_ledger(ledger: Arc<Ledger>) -> Result<()> {
    // Every answer already waited for its leaf to be durable; closing adds
    // the final checkpoint.
    match Arc::try_unwrap(ledger) {
        Ok(ledger) => ledger.close().await.context("closing the audit ledger")?,
        Err(shared) => {
            shared
                .checkpoint_now()
                .await
                .context("final checkpoint of the audit ledger")?;
        }
    }
    println!("stopped; audit ledger closed with a final checkpoint");
    Ok(())
}

pub async fn account(cmd: AccountCommand) -> Result<()> {
    match cmd {
        AccountCommand::Credential(CredentialCommand::Issue {
            location,
            login,
            days,
        }) => {
            let store = crate::open_store(&location).await?;
            let account = find_account(&store, &login).await?;
            let issued = issue(&store, &account, i64::from(days)).await?;
            println!(
                "credential {} for {} ({} of {}), expires {}:",
                issued.id,
                account.login,
                account.role,
                account.organisation,
                issued.expires_at.format("%Y-%m-%d %H:%M UTC")
            );
            println!("{}", issued.token.as_str());
            println!("It is shown only now. Use it as `Authorization: Bearer <credential>`.");
            Ok(())
        }
        AccountCommand::Activation(ActivationCommand::Issue {
            location,
            login,
            officer,
        }) => issue_activation(&location, &login, &officer).await,
        AccountCommand::Credential(CredentialCommand::Revoke {
            location,
            login,
            id,
        }) => {
            let store = crate::open_store(&location).await?;
            let account = find_account(&store, &login).await?;
            let n = store
                .revoke_credentials(account.account_id, id, chrono::Utc::now())
                .await?;
            println!("{n} credential(s) of {} revoked", account.login);
            Ok(())
        }
    }
}

/// `rempart account activation issue`: the code is printed once; the
/// store refuses an account never approved under four eyes.
async fn issue_activation(loc: &Location, login: &str, officer: &str) -> Result<()> {
    let consultation = open_consultation(loc, load_policies(None)?, None).await?;
    let account = find_account(consultation.store(), login).await?;
    let officer_login = Reference::parse(officer).context("--officer")?;
    let officer = consultation
        .store()
        .account_by_login(&officer_login)
        .await?
        .with_context(|| format!("--officer: no account with login {officer_login}"))?;
    let ledger = consultation.ledger().clone();
    let result = consultation
        .issue_activation(account.account_id, officer.account_id)
        .await;
    drop(consultation);
    // The ledger is closed (final checkpoint) whatever happened.
    let closed = match std::sync::Arc::try_unwrap(ledger) {
        Ok(ledger) => ledger.close().await.context("closing the audit ledger"),
        Err(shared) => shared
            .checkpoint_now()
            .await
            .map(|_| ())
            .context("final checkpoint of the audit ledger"),
    };
    let issued = result.with_context(|| format!("activation code for {}", account.login))?;
    closed?;
    println!(
        "activation code for {} ({} of {}), handed over by {}, valid until {} (single use):",
        account.login,
        account.role,
        account.organisation,
        officer.login,
        issued
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    println!("{}", issued.code.as_str());
    println!("the person enters it at /activation; only its digest is kept");
    Ok(())
}

async fn find_account(store: &Store, login: &str) -> Result<AccountRecord> {
    let login = Reference::parse(login).context("--login")?;
    store
        .account_by_login(&login)
        .await?
        .with_context(|| format!("no account with login {login}"))
}

/// Issues a credential to an active account; a requested, suspended or
/// disabled account gets none.
pub async fn issue(
    store: &Store,
    account: &AccountRecord,
    days: i64,
) -> Result<rempart_consult::IssuedCredential> {
    rempart_consult::issue_credential(
        store,
        account.account_id,
        chrono::Duration::days(days),
        chrono::Utc::now(),
    )
    .await
    .with_context(|| format!("no credential for {}", account.login))
}

/// The active agent of a partner organisation of `kind` with the largest
/// live caseload for `purpose`, and that caseload.
pub async fn busiest_agent(
    store: &Store,
    kind: OrganisationKind,
    purpose: Purpose,
    max_scan: usize,
) -> Result<Option<(AccountRecord, Vec<i64>)>> {
    let today = chrono::Utc::now().date_naive();
    let mut best: Option<(AccountRecord, Vec<i64>)> = None;
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
        let mut after = 0;
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

/// Consultations/s over HTTP with keep-alive against the server's own no-op
/// endpoint, in one process: the server on its runtime, the load generator
/// on another, both on this machine.
pub async fn bench_consult(args: &BenchConsultArgs) -> Result<()> {
    let purpose = Purpose::FollowUp;
    // The server gets its own runtime (2 workers, like the machine) and
    // opens everything on it; the load generator runs on the caller's.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let loc = args.location.clone();
    let server = server_rt.spawn(async move {
        let opened = async {
            let consultation = open_consultation(&loc, load_policies(None)?, None).await?;
            let store = consultation.store().clone();
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
            Ok((consultation, agent, caseload, credential, listener))
        }
        .await;
        match opened {
            Ok((consultation, agent, caseload, credential, listener)) => {
                let addr = listener.local_addr()?;
                let _ = ready_tx.send(Ok((agent, caseload, credential, addr)));
                run_until(listener, consultation, async move {
                    let _ = stop_rx.await;
                })
                .await
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                Ok(())
            }
        }
    });
    let ready = match ready_rx.await {
        Ok(Ok(ready)) => ready,
        // The server's runtime must not be dropped inside this async context.
        Ok(Err(e)) => {
            server_rt.shutdown_background();
            return Err(e.context("server start-up"));
        }
        Err(_) => {
            server_rt.shutdown_background();
            bail!("the server stopped during start-up");
        }
    };
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
    caseload: &Arc<Vec<i64>>,
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
    Ok(audit::open_store(loc).await?.size().await?)
}

/// `connections` keep-alive clients hammer either the no-op endpoint or a
/// random person of the caseload for `duration`.
async fn load(
    base: &str,
    token: &Arc<String>,
    caseload: &Arc<Vec<i64>>,
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

/// The demo's last step: serve the generated population, make one real
/// consultation as a Cap emploi agent, and print how to make one.
pub async fn demo(loc: &Location, listen: SocketAddr, no_serve: bool) -> Result<()> {
    let consultation = open_consultation(loc, load_policies(None)?, None).await?;
    let store = consultation.store().clone();
    let Some((agent, caseload)) =
        busiest_agent(&store, OrganisationKind::CapEmploi, Purpose::FollowUp, 50).await?
    else {
        bail!("the generated population has no Cap emploi agent with a caseload");
    };
    let Some(&person) = caseload.first() else {
        bail!("the chosen agent's caseload is empty");
    };
    let credential = issue(&store, &agent, 1).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} (use --listen to pick another)"))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run_until(listener, consultation, async move {
        let _ = stop_rx.await;
    }));

    let url = format!("http://{addr}/api/v1/persons/{person}?purpose=follow_up");
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(&url)
        .bearer_auth(credential.token.as_str())
        .send()
        .await
        .context("first consultation")?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.context("first consultation's body")?;
    let groups = body["field_groups"].to_string();
    let nir_view = body["nir"]["view"].as_str().unwrap_or("none").to_string();
    println!(
        "{} agent {} of {} (caseload {} persons) read person {person} for follow_up: HTTP {status}, field groups {groups}, NIR {nir_view}, ledger leaf {}",
        agent.kind,
        agent.login,
        agent.organisation,
        caseload.len(),
        body["ledger_index"]
    );
    println!("\nTry it yourself (the credential is valid for one day):");
    println!("  export TOKEN={}", credential.token.as_str());
    println!("  curl -H \"Authorization: Bearer $TOKEN\" '{url}'");
    println!(
        "  curl -H \"Authorization: Bearer $TOKEN\" 'http://{addr}/api/v1/caseload?purpose=follow_up&limit=5'"
    );
    println!("  curl 'http://{addr}/api/v1/openapi.json'");
    println!(
        "Then `rempart audit query --data {} --account {}` lists what this account read.",
        loc.data.display(),
        agent.account_id
    );
    if no_serve {
        let _ = stop_tx.send(());
    } else {
        println!("\nServing on http://{addr}/api/v1 until Ctrl-C.");
        rempart_web::shutdown_signal().await;
        let _ = stop_tx.send(());
    }
    server.await.context("server task")??;
    if !status.is_success() {
        bail!("the first consultation failed with HTTP {status}");
    }
    Ok(())
}
