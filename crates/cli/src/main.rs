//! `rempart`: the command line. Parses arguments, wires the crates together
//! and reports; no domain rule lives here.

mod accounts;
mod audit;
mod bench;
mod bench_dpop;
mod bench_floor;
mod bench_notices;
mod bench_oracle;
mod bench_replicas;
mod bench_scope;
mod bench_session;
mod clients;
mod demo;
mod device_key;
mod drill;
mod files;
mod guard;
mod incident;
mod location;
mod notices;
mod progress;
mod registry;
mod scoping;
mod serve;
mod simulate;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::location::Location;
use crate::registry::{GenerateArgs, ImportArgs};

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
    Account(accounts::AccountCommand),
    /// Accounts: the periodic review, and disabling the unused ones.
    #[command(subcommand)]
    Accounts(accounts::AccountsCommand),
    /// API clients: partner software with a registered public key, which
    /// gets DPoP-bound access tokens with `private_key_jwt`.
    #[command(subcommand)]
    Client(clients::ClientCommand),
    /// After a breach: the breach register, and an incident's exact scope
    /// read from the audit ledger.
    #[command(subcommand)]
    Incident(incident::IncidentCommand),
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
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Breach scoping: the exact scope of a compromised account and of its
    /// organisation over a large synthetic ledger, against the query
    /// index's distinct persons for the account.
    Scope(bench_scope::ScopeBenchArgs),
    /// Breach notices: one per affected person rendered and queued, against
    /// the vault reads and the rendering alone; the dispatcher's delivery
    /// rate to an SMTP server and as PDF letters.
    Notices(bench_notices::NoticesBenchArgs),
    /// Audit ledger: durable appends/s with group commit, latency at a
    /// steady 5,000 appends/s, verify speed, proof time and size, query time.
    Ledger {
        /// Leaves in the benchmark log.
        #[arg(long, default_value_t = 1_000_000)]
        leaves: u64,
        /// Run on PostgreSQL (in `--schema`, recreated, dropped at the end) instead of SQLite.
        #[arg(long)]
        database: Option<String>,
        /// The PostgreSQL schema; its name must start with `ledger_bench`
        /// (it is dropped and recreated: never a real ledger's).
        #[arg(long, default_value = rempart_ledger::bench::BENCH_SCHEMA_PREFIX)]
        schema: String,
        /// Directory for the SQLite ledger (default: a temporary one). A
        /// `ledger.db` already there is deleted only if a benchmark made it.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Distinct persons the synthetic leaves read (43,000,000 for the
        /// national registry: most persons then appear a few times a year).
        #[arg(long, default_value_t = rempart_ledger::bench::SYNTHETIC_PERSONS)]
        persons: u64,
        /// Keep the ledger at the end (PostgreSQL drops its schema otherwise).
        #[arg(long)]
        keep: bool,
        /// Build nothing: measure bytes, proofs and queries on the ledger an
        /// earlier run kept (`--keep`, or SQLite's `--dir`). Verification is
        /// not measured (the key that signed its checkpoints is gone).
        #[arg(long)]
        reuse: bool,
        /// Measure bytes and proofs only, without waiting for PostgreSQL's
        /// indexer (at hundreds of millions of leaves its last merges take
        /// an hour; proofs do not read the query index).
        #[arg(long)]
        proofs_only: bool,
    },
    /// Consultations/s over HTTP with keep-alive (policy, decryption and a
    /// durable ledger leaf each) against the server's own no-op endpoint,
    /// on an imported population.
    Consult(bench::BenchConsultArgs),
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
    Guard(bench::BenchConsultArgs),
    /// The floor under a consultation's cost: serves the real router
    /// (its no-op endpoint) beside a bench-only route that makes one
    /// durable append to a throwaway audit ledger and nothing else, for a
    /// load generator to compare (`bench/consult.sh` drives wrk).
    Floor(bench_floor::BenchFloorArgs),
    /// Several `rempart serve` processes on one PostgreSQL behind a real
    /// HAProxy, under load, with a replica, the integrator or the database
    /// killed halfway if asked: consultations/s, p50/p99, the errors
    /// clients saw, takeover or outage time, the integration lag; fails
    /// if an answer's leaf is missing or the ledger does not verify.
    Replicas(bench_replicas::BenchReplicasArgs),
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
        Command::Init { location, origin } => registry::init(&location, &origin).await,
        Command::Generate(args) => registry::generate(&args),
        Command::Import(args) => registry::import(&args).await.map(|_| ()),
        Command::Inventory(loc) => registry::inventory(&loc.open_vault().await?).await,
        Command::Keys(KeysCommand::Rotate(loc)) => registry::rotate(&loc).await,
        Command::Keys(KeysCommand::Verify(loc)) => registry::verify(&loc).await,
        Command::Demo(args) => demo::run(&args).await,
        Command::Person(PersonCommand::Shred { location, ft_id }) => {
            registry::shred(&location, &ft_id).await
        }
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Bench(BenchCommand::Ledger {
            leaves,
            database,
            dir,
            persons,
            schema,
            keep,
            reuse,
            proofs_only,
        }) => {
            let target = audit::LedgerBenchAt {
                database,
                schema,
                dir,
            };
            audit::bench_ledger(leaves, target, persons, keep, reuse, proofs_only).await
        }
        Command::Bench(BenchCommand::Consult(args)) => bench::bench_consult(&args).await,
        Command::Bench(BenchCommand::Scope(args)) => bench_scope::bench_scope(&args).await,
        Command::Bench(BenchCommand::Notices(args)) => bench_notices::bench_notices(&args).await,
        Command::Bench(BenchCommand::Auth {
            passwords,
            proofs,
            passkeys,
        }) => bench::bench_auth(passwords, proofs, passkeys),
        Command::Bench(BenchCommand::Session(args)) => bench_session::bench_session(&args).await,
        Command::Bench(BenchCommand::Dpop(args)) => bench_dpop::bench_dpop(&args).await,
        Command::Serve(args) => serve::serve(&args).await,
        Command::Account(cmd) => accounts::account(cmd).await,
        Command::Accounts(cmd) => accounts::run(cmd).await,
        Command::Client(cmd) => clients::run(cmd).await,
        Command::Alerts(args) => guard::alerts(&args).await,
        Command::Incident(cmd) => incident::run(cmd).await,
        Command::Bench(BenchCommand::Guard(args)) => bench::bench_guard(&args).await,
        Command::Bench(BenchCommand::Floor(args)) => bench_floor::bench_floor(&args).await,
        Command::Bench(BenchCommand::Replicas(args)) => bench_replicas::bench_replicas(&args).await,
        Command::Bench(BenchCommand::SearchOracle(args)) => {
            bench_oracle::bench_search_oracle(&args).await
        }
        Command::Simulate(args) => simulate::simulate(&args).await,
        Command::Drill(args) => drill::drill(&args).await,
    }
}
