//! `rempart`: the command line. Parses arguments, wires the crates together
//! and reports; no domain rule lives here.

mod accounts;
mod audit;
mod bench_dpop;
mod bench_floor;
mod bench_oracle;
mod bench_session;
mod clients;
mod device_key;
mod drill;
mod guard;
mod progress;
mod serve;
mod simulate;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use rempart_crypto::KeyRing;
use rempart_domain::FieldGroup;
use rempart_import::{ImportOptions, RejectSink};
use rempart_storage::Store;
use rempart_vault::{KEYS_ENV, KeySource, Read, Vault};

// The import moves millions of small buffers between threads (parsed on
// rayon, written on SQLite's thread); glibc's malloc spent ~18% of the
// import's CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rempart: the protected home of job seekers' personal data.
#[derive(Parser)]
#[command(name = "rempart", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory, the keys (mode 0600), the registry schema
    /// and the audit ledger.
    Init {
        #[command(flatten)]
        location: Location,
        /// Name the audit ledger signs its checkpoints with (C2SP origin).
        #[arg(long, default_value = audit::DEFAULT_ORIGIN)]
        origin: String,
    },
    /// Write a synthetic French population as CSV files.
    Generate(GenerateArgs),
    /// Import CSV files (or directories of them) into the registry.
    Import(ImportArgs),
    /// Show what the registry holds: counts and sizes, never personal data.
    Inventory(Location),
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Operations on one person.
    #[command(subcommand)]
    Person(PersonCommand),
    /// The audit ledger: verify, checkpoints, proofs, queries.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve the JSON API (/api/v1): the consultation path over HTTP.
    Serve(serve::ServeArgs),
    /// Accounts: API credentials.
    #[command(subcommand)]
    Account(serve::AccountCommand),
    /// Accounts: the periodic review, and disabling the unused ones.
    #[command(subcommand)]
    Accounts(accounts::AccountsCommand),
    /// API clients: partner software with a registered public key, which
    /// gets DPoP-bound access tokens with `private_key_jwt`.
    #[command(subcommand)]
    Client(clients::ClientCommand),
    /// The exfiltration guard's stored alerts, with their top features
    /// (value, baseline) and the ledger range that evidences them.
    Alerts(guard::AlertsArgs),
    /// A month of normal traffic by thousands of accounts of every
    /// organisation kind through the real guard, in simulated time: false
    /// alerts per 1,000 account-days, suspensions per 10,000.
    Simulate(simulate::SimulateArgs),
    /// Replay a seed breach against a live server over HTTP, inside a week
    /// of normal traffic, in simulated time: records beyond scope, records
    /// before containment, time to containment, alerts, false alerts.
    Drill(drill::DrillArgs),
    /// Set everything up on the embedded default and show it working:
    /// init, generate, import, print what is in the store, then serve the
    /// API and make a first consultation.
    Demo(DemoArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Audit ledger: durable appends/s with group commit, latency at a
    /// steady 5,000 appends/s, verify speed, proof time and size, query time.
    Ledger {
        /// Leaves in the benchmark log.
        #[arg(long, default_value_t = 1_000_000)]
        leaves: u64,
        /// Run on PostgreSQL (schema ledger_bench, recreated) instead of SQLite.
        #[arg(long)]
        database: Option<String>,
        /// Directory for the SQLite ledger (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Consultations/s over HTTP with keep-alive (policy, decryption and a
    /// durable ledger leaf each) against the server's own no-op endpoint,
    /// on an imported population.
    Consult(serve::BenchConsultArgs),
    /// Authentication costs: argon2id hash and verification with the
    /// parameters in force (and an unknown account's, which must match),
    /// the check of one device-bound proof (ES256), paid on every
    /// request of a browser session or a DPoP client, and the server's
    /// verification of one passkey assertion.
    Auth {
        /// Password hashes and verifications measured (each).
        #[arg(long, default_value_t = 15)]
        passwords: usize,
        /// Proofs verified.
        #[arg(long, default_value_t = 2_000)]
        proofs: usize,
        /// Passkey assertions verified (signed by a software authenticator).
        #[arg(long, default_value_t = 200)]
        passkeys: usize,
    },
    /// Device-bound sessions: the device proof's verification time, and
    /// the portal's caseload fragment (cookie + proof) beside the API's.
    Session(bench_session::BenchSessionArgs),
    /// API clients: a consultation with a DPoP-bound token and its proof
    /// beside the same consultation with a plain API credential (medians,
    /// same run), and the token endpoint's own cost.
    Dpop(bench_dpop::BenchDpopArgs),
    /// The guard's cost: consultations/s and p50/p99 over HTTP with the
    /// real guard and with the pass-through one in the same run (ratio;
    /// target overhead at most 10%), and one `check`'s median cost.
    Guard(serve::BenchConsultArgs),
    /// The floor under a consultation's cost: serves the real router
    /// (its no-op endpoint) beside a bench-only route that makes one
    /// durable append to a throwaway audit ledger and nothing else, for a
    /// load generator to compare (`bench/consult.sh` drives wrk).
    Floor(bench_floor::BenchFloorArgs),
    /// Whether a search's response time tells a registered NIR outside
    /// the caller's scope from one registered nowhere (both answer an
    /// empty list): medians per kind and a threshold classifier's
    /// held-out accuracy (chance is 50%), with a control that differs.
    SearchOracle(bench_oracle::BenchOracleArgs),
}

#[derive(Subcommand)]
enum PersonCommand {
    /// Crypto-shred one person (erasure, end of retention): destroy the
    /// data key and the search indexes. Irreversible: nothing of the
    /// person can be read afterwards, nobody else is affected.
    Shred {
        #[command(flatten)]
        location: Location,
        /// France Travail identifier of the person.
        #[arg(long)]
        ft_id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rewrap every data key under a new KEK version (resumes an
    /// interrupted rotation). Fields are not re-encrypted.
    Rotate(Location),
    /// Open every person's field groups and count what opens, what is
    /// shredded and what fails. Prints no personal data.
    Verify(Location),
}

/// Where the registry lives.
#[derive(Args, Clone)]
struct Location {
    /// Data directory: keys, and the SQLite registry unless --database is given.
    #[arg(long, env = "REMPART_DATA", default_value = "rempart-data")]
    data: PathBuf,
    /// PostgreSQL URL (postgres://…) for the registry instead of SQLite.
    #[arg(long, env = "REMPART_DATABASE_URL")]
    database: Option<String>,
}

#[derive(Args)]
struct GenerateArgs {
    /// Number of persons.
    #[arg(long, default_value_t = 10_000)]
    persons: u64,
    /// Seed: the same seed gives the same files.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Reference date for ages and statuses (YYYY-MM-DD); today by default.
    #[arg(long)]
    today: Option<NaiveDate>,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    location: Location,
    /// Fail the run on any bad line (persons: validate the whole file first, write nothing).
    #[arg(long)]
    strict: bool,
    /// Reject report (CSV: file, line, field, reason).
    #[arg(long, default_value = "rejects.csv")]
    rejects: PathBuf,
    /// Records per transaction.
    #[arg(long, default_value_t = 8192)]
    batch: usize,
    /// Reference date for validation rules (YYYY-MM-DD); today by default.
    #[arg(long)]
    today: Option<NaiveDate>,
    /// CSV files or directories holding organisations.csv, accounts.csv, persons.csv, mandates.csv.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Directory for the demo's data and CSV files.
    #[arg(long, default_value = "rempart-demo")]
    dir: PathBuf,
    /// Number of synthetic persons.
    #[arg(long, default_value_t = 20_000)]
    persons: u64,
    /// Address the demo server listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Stop after the first consultation instead of serving until Ctrl-C.
    #[arg(long)]
    no_serve: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { location, origin } => init(&location, &origin).await,
        Command::Generate(args) => generate(&args),
        Command::Import(args) => import(&args).await.map(|_| ()),
        Command::Inventory(loc) => inventory(&open_vault(&loc).await?).await,
        Command::Keys(KeysCommand::Rotate(loc)) => rotate(&loc).await,
        Command::Keys(KeysCommand::Verify(loc)) => verify(&loc).await,
        Command::Demo(args) => demo(&args).await,
        Command::Person(PersonCommand::Shred { location, ft_id }) => shred(&location, &ft_id).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Bench(BenchCommand::Ledger {
            leaves,
            database,
            dir,
        }) => audit::bench_ledger(leaves, database, dir).await,
        Command::Bench(BenchCommand::Consult(args)) => serve::bench_consult(&args).await,
        Command::Bench(BenchCommand::Auth {
            passwords,
            proofs,
            passkeys,
        }) => bench_auth(passwords, proofs, passkeys),
        Command::Bench(BenchCommand::Session(args)) => bench_session::bench_session(&args).await,
        Command::Bench(BenchCommand::Dpop(args)) => bench_dpop::bench_dpop(&args).await,
        Command::Serve(args) => serve::serve(&args).await,
        Command::Account(cmd) => serve::account(cmd).await,
        Command::Accounts(cmd) => accounts::run(cmd).await,
        Command::Client(cmd) => clients::run(cmd).await,
        Command::Alerts(args) => guard::alerts(&args).await,
        Command::Bench(BenchCommand::Guard(args)) => serve::bench_guard(&args).await,
        Command::Bench(BenchCommand::Floor(args)) => bench_floor::bench_floor(&args).await,
        Command::Bench(BenchCommand::SearchOracle(args)) => {
            bench_oracle::bench_search_oracle(&args).await
        }
        Command::Simulate(args) => simulate::simulate(&args).await,
        Command::Drill(args) => drill::drill(&args).await,
    }
}

fn today() -> NaiveDate {
    chrono::Local::now().date_naive()
}

fn key_path(data: &Path) -> PathBuf {
    data.join("keys.json")
}

fn key_source(loc: &Location) -> KeySource {
    match std::env::var(KEYS_ENV) {
        Ok(json) if !json.trim().is_empty() => KeySource::Env(json),
        _ => KeySource::File(key_path(&loc.data)),
    }
}

async fn open_store(loc: &Location) -> Result<Store> {
    let target = match &loc.database {
        Some(url) => url.clone(),
        None => loc.data.display().to_string(),
    };
    rempart_storage::open(&target)
        .await
        .with_context(|| format!("opening the registry ({})", describe(loc)))
}

fn describe(loc: &Location) -> String {
    match &loc.database {
        // Never print credentials that may sit in the URL.
        Some(url) => format!("PostgreSQL {}", rempart_sql::redact_url(url)),
        None => format!("SQLite in {}", loc.data.display()),
    }
}

async fn open_vault(loc: &Location) -> Result<Vault> {
    let source = key_source(loc);
    let store = open_store(loc).await?;
    Vault::new(source, store).context("loading the keys (run `rempart init` first?)")
}

async fn init(loc: &Location, origin: &str) -> Result<()> {
    create_private_dir(&loc.data)?;
    let keys = key_path(&loc.data);
    if keys.exists() {
        println!("keys: {} already exists, kept as is", keys.display());
    } else {
        KeyRing::generate()?.save_new(&keys)?;
        println!("keys: created {} (mode 0600)", keys.display());
    }
    let store = open_store(loc).await?;
    println!("registry: {} ready (schema up to date)", describe(loc));
    drop(store);
    audit::init(loc, origin).await
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let opts = rempart_synth::GenerateOptions {
        persons: args.persons,
        seed: args.seed,
        today: args.today.unwrap_or_else(today),
    };
    let start = Instant::now();
    let bar = progress::counter(args.persons, "generating persons");
    let summary = rempart_synth::generate(&opts, &args.out, &|n| bar.set(n))
        .with_context(|| format!("generating into {}", args.out.display()))?;
    bar.done();
    println!(
        "generated in {:.1}s into {}: {} persons, {} organisations, {} accounts, {} mandates",
        start.elapsed().as_secs_f64(),
        args.out.display(),
        summary.persons,
        summary.organisations,
        summary.accounts,
        summary.mandates
    );
    Ok(())
}

async fn import(args: &ImportArgs) -> Result<Vec<rempart_import::FileReport>> {
    let vault = open_vault(&args.location).await?;
    let mut opts = ImportOptions::new(args.today.unwrap_or_else(today));
    opts.strict = args.strict;
    opts.batch = args.batch.max(1);
    let rejects = RejectSink::to_file(&args.rejects)?;
    let progress = progress::ImportProgress::new(std::io::stderr().is_terminal());
    let result = rempart_import::import(&vault, &args.inputs, &opts, &rejects, &progress).await;
    rejects.flush()?;
    let rss = progress::peak_rss_mib();
    let reports = match result {
        Ok(r) => r,
        Err(e) => {
            if rejects.count() > 0 {
                eprintln!(
                    "{} line(s) rejected: see {}",
                    rejects.count(),
                    args.rejects.display()
                );
            }
            return Err(e.into());
        }
    };
    for r in &reports {
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        println!(
            "{:<18} {:>9} lines in {:>7.2}s ({:>9.0}/s): {} inserted, {} updated, {} unchanged, {} rejected",
            r.kind_name(),
            r.records,
            secs,
            r.records as f64 / secs,
            r.inserted,
            r.updated,
            r.unchanged,
            r.rejected
        );
    }
    for r in reports
        .iter()
        .filter(|r| r.kind == rempart_import::FileKind::Persons)
    {
        let st = r.stages;
        println!(
            "persons pipeline (stages overlap): parse {:.2}s, lookup {:.2}s, seal {:.2}s, write {:.2}s, index build {:.2}s",
            st.parse.as_secs_f64(),
            st.lookup.as_secs_f64(),
            st.seal.as_secs_f64(),
            st.write.as_secs_f64(),
            st.index.as_secs_f64()
        );
    }
    if let Some(mib) = rss {
        println!("peak memory (RSS): {mib:.0} MiB");
    }
    if rejects.count() > 0 {
        println!(
            "{} line(s) rejected: see {} (line, column and reason for each)",
            rejects.count(),
            args.rejects.display()
        );
        for r in rejects.first().iter().take(5) {
            println!(
                "  {} line {}: {}{}",
                r.file,
                r.line,
                r.field.map(|f| format!("{f}: ")).unwrap_or_default(),
                r.reason
            );
        }
    }
    Ok(reports)
}

trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for rempart_import::FileReport {
    fn kind_name(&self) -> &'static str {
        self.kind.file_name()
    }
}

async fn inventory(vault: &Vault) -> Result<()> {
    let inv = vault.store().inventory().await?;
    println!("registry ({}):", vault.store().backend());
    println!(
        "  persons          {:>10}  ({} crypto-shredded)",
        inv.persons, inv.shredded
    );
    let line = |label: &str, items: Vec<(String, u64)>| {
        let total: u64 = items.iter().map(|(_, n)| n).sum();
        let detail: Vec<String> = items.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("  {label:<16} {total:>10}  ({})", detail.join(", "));
    };
    line(
        "organisations",
        inv.organisations_by_kind
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect(),
    );
    line(
        "accounts",
        inv.accounts_by_role
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect(),
    );
    line(
        "mandates",
        inv.mandates_by_purpose
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect(),
    );
    let versions: Vec<String> = inv
        .keys_by_kek_version
        .iter()
        .map(|(v, n)| format!("KEK v{v}: {n}"))
        .collect();
    println!("  data keys                    ({})", versions.join(", "));
    let per_person = if inv.persons > 0 {
        inv.bytes as f64 / inv.persons as f64
    } else {
        0.0
    };
    println!(
        "  stored bytes     {:>10}  ({per_person:.0} bytes per person, indexes included)",
        inv.bytes
    );
    Ok(())
}

async fn rotate(loc: &Location) -> Result<()> {
    let vault = open_vault(loc).await?;
    // Accounts' TOTP secrets are sealed under the KEK too: rewrapped in
    // the same rotation, before any KEK is retired.
    let totp = rempart_consult::login::TotpSecrets(accounts::open_stores(loc).await?.auth);
    let bar = progress::counter(0, "rewrapping data keys");
    let report = vault
        .rotate(
            &|done, total| {
                bar.set_total(total);
                bar.set(done);
            },
            &[&totp],
        )
        .await?;
    bar.done();
    println!(
        "{} rotation to KEK v{}: {} data keys rewrapped in {:.2}s ({:.0}/s); no field re-encrypted",
        if report.resumed { "resumed" } else { "new" },
        report.target,
        report.rewrapped,
        report.elapsed.as_secs_f64(),
        report.rewrapped as f64 / report.elapsed.as_secs_f64().max(1e-9)
    );
    for (name, other) in &report.others {
        println!(
            "{name}: {} rewrapped, {} left under an older KEK",
            other.rewrapped, other.left
        );
    }
    if report.retired.is_empty() {
        println!("older KEK versions kept: some keys still use them; run again to finish");
    } else {
        println!(
            "retired KEK versions {:?} from the key file",
            report.retired
        );
    }
    Ok(())
}

async fn shred(loc: &Location, ft_id: &str) -> Result<()> {
    let ft_id = rempart_domain::FtId::parse(ft_id).context("--ft-id")?;
    let vault = open_vault(loc).await?;
    let Some(id) = vault.find_by_ft(&ft_id).await? else {
        bail!(
            "no readable person with this France Travail identifier (unknown or already shredded)"
        );
    };
    if vault.shred(id).await? {
        println!("person {id} crypto-shredded: data key and search indexes destroyed");
        Ok(())
    } else {
        bail!("person {id} was shredded meanwhile")
    }
}

async fn verify(loc: &Location) -> Result<()> {
    use futures_util::StreamExt;
    let vault = open_vault(loc).await?;
    let start = Instant::now();
    let (mut ok, mut shredded, mut failed, mut after) = (0u64, 0u64, 0u64, 0i64);
    loop {
        let ids = vault.store().person_ids(after, 4096).await?;
        let Some(last) = ids.last() else { break };
        after = *last;
        // Several reads in flight: the store has several reader connections.
        let mut reads = futures_util::stream::iter(ids)
            .map(|id| {
                let vault = &vault;
                async move { (id, vault.read(id, FieldGroup::ALL).await) }
            })
            .buffer_unordered(8);
        while let Some((id, result)) = reads.next().await {
            match result {
                Ok(Read::Found(_)) => ok += 1,
                Ok(Read::Shredded) => shredded += 1,
                Ok(Read::Missing) => {}
                Err(e) => {
                    failed += 1;
                    if failed <= 5 {
                        eprintln!("person {id}: {e}");
                    }
                }
            }
        }
    }
    println!(
        "{ok} persons open, {shredded} shredded, {failed} failed, in {:.2}s",
        start.elapsed().as_secs_f64()
    );
    if failed > 0 {
        bail!("{failed} person(s) do not open");
    }
    Ok(())
}

async fn demo(args: &DemoArgs) -> Result<()> {
    let data = args.dir.join("data");
    let csv = args.dir.join("csv");
    let loc = Location {
        data: data.clone(),
        database: None,
    };
    println!("== 1. init: keys and registry in {}", data.display());
    init(&loc, audit::DEFAULT_ORIGIN).await?;
    println!(
        "\n== 2. generate: {} synthetic persons into {}",
        args.persons,
        csv.display()
    );
    generate(&GenerateArgs {
        persons: args.persons,
        seed: 1,
        out: csv.clone(),
        today: None,
    })?;
    println!("\n== 3. import (run it again: everything comes back unchanged)");
    import(&ImportArgs {
        location: loc.clone(),
        strict: false,
        rejects: args.dir.join("rejects.csv"),
        batch: 8192,
        today: None,
        inputs: vec![csv],
    })
    .await?;
    println!("\n== 4. what the store holds");
    let vault = open_vault(&loc).await?;
    inventory(&vault).await?;
    println!(
        "\nEvery name, NIR, e-mail and phone is sealed: try `grep -c Martin {}/registry.db` (0).",
        data.display()
    );
    drop(vault);
    println!("\n== 5. serve the API and make a first consultation");
    serve::demo(&loc, args.listen, args.no_serve).await
}

fn bench_auth(passwords: usize, proofs: usize, passkeys: usize) -> anyhow::Result<()> {
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
