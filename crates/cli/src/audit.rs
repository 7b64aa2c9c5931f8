//! `rempart audit …` and `rempart bench ledger`: the audit ledger from the
//! command line. The ledger lives beside the registry: `ledger.db` in the
//! data directory, or the `ledger` schema of the PostgreSQL database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand, ValueEnum};
use rempart_ledger::bench::{self, BenchTarget};
use rempart_ledger::{
    AccountId, LedgerError, LedgerKey, LedgerStore, OrganisationId, PersonId, QueryRange, Subject,
    Timestamp, VerifierKey, VerifyOptions, proof,
};

use crate::location::Location;

/// Name a new ledger signs its checkpoints with, unless `init --origin` says otherwise.
pub const DEFAULT_ORIGIN: &str = "rempart.local/audit";

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the whole log from its leaves and check every stored
    /// checkpoint (signature, root, consistency); on failure, say what and
    /// where (first bad leaf, first failing checkpoint).
    ///
    /// Only the public key is needed: with --verifier-key, the private
    /// `ledger.key` is not read (nor needed in the data directory).
    Verify {
        #[command(flatten)]
        location: Location,
        /// Signed checkpoints kept elsewhere (files), checked like stored ones:
        /// they catch a rewrite that also replaced the stored checkpoints.
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
        /// The public key to trust: a C2SP signed-note verifier key
        /// (`name+hash+base64`, as `rempart audit verifier-key` prints it), or
        /// a file holding one. Without it, the data directory's `ledger.key`.
        #[arg(long = "verifier-key", value_name = "FILE|KEY")]
        verifier_key: Option<String>,
    },
    /// Print the ledger's public verifier key (C2SP signed-note,
    /// `name+hash+base64`): publish it, and verify with it alone.
    VerifierKey(Location),
    /// Sign and store a checkpoint of the log as it is now, and print it.
    Checkpoint(Location),
    /// Inclusion proof of one leaf in the tree of a given size.
    Prove {
        #[command(flatten)]
        location: Location,
        /// Leaf index.
        #[arg(long, required_unless_present = "receipt", conflicts_with = "receipt")]
        leaf: Option<u64>,
        /// The receipt a staging replica answered with (`ledger_receipt`):
        /// the proof of the leaf it was integrated as.
        #[arg(long)]
        receipt: Option<u64>,
        /// Tree size (default: the whole log).
        #[arg(long)]
        size: Option<u64>,
    },
    /// Consistency proof between two tree sizes.
    Consistency {
        #[command(flatten)]
        location: Location,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// Leaves of an account, an organisation or a person in a time window.
    Query(QueryArgs),
    /// One person's history, newest first, each entry with its inclusion
    /// proof against a signed checkpoint: the answer to a right-of-access
    /// request (GDPR Art. 15). With --bundle, the file anyone verifies
    /// with the ledger's public key alone (`audit verify-bundle`).
    History(HistoryArgs),
    /// Check a history bundle with the ledger's public key alone: the
    /// checkpoint's signature, each entry's proof against its root, each
    /// entry about the bundle's person. Names the first failure.
    VerifyBundle {
        /// The bundle (JSON).
        file: PathBuf,
        /// The public key to trust (as for `audit verify`).
        #[arg(long = "verifier-key", value_name = "FILE|KEY")]
        verifier_key: String,
    },
}

#[derive(Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    location: Location,
    /// Person id (the registry's opaque id; stays valid after shredding).
    #[arg(long)]
    person: i64,
    /// Entries skipped from the newest.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Most entries.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Write the bundle (JSON: the signed checkpoint, each leaf and its
    /// proof) there.
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    location: Location,
    /// Acting account id.
    #[arg(long, group = "subject")]
    account: Option<i64>,
    /// Organisation id of the acting accounts.
    #[arg(long, group = "subject")]
    organisation: Option<i64>,
    /// Person id (the registry's opaque id; stays valid after shredding).
    #[arg(long, group = "subject")]
    person: Option<i64>,
    /// Window start (YYYY-MM-DD or RFC 3339), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// Window end (YYYY-MM-DD or RFC 3339), exclusive.
    #[arg(long)]
    to: Option<String>,
    /// Only the distinct persons whose data the account was shown.
    #[arg(long, requires = "account")]
    persons_only: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Most leaves printed.
    #[arg(long, default_value_t = 1000)]
    limit: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Jsonl,
}

/// Creates the ledger key (mode 0600) unless it exists, and the ledger store.
pub async fn init(loc: &Location, origin: &str) -> Result<()> {
    let path = loc.server().ledger_key_path();
    if path.exists() {
        println!("ledger key: {} already exists, kept as is", path.display());
    } else {
        LedgerKey::generate(origin)?.save_new(&path)?;
        println!(
            "ledger key: created {} (mode 0600, origin {origin})",
            path.display()
        );
    }
    // The public half, to keep apart from the data: it alone verifies.
    if let Ok(key) = LedgerKey::load(&path) {
        println!("ledger verifier key: {}", key.verifier());
    }
    let store = loc.open_ledger_store().await?;
    println!("ledger: {} ready", store.location());
    Ok(())
}

pub async fn run(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify {
            location,
            checkpoints,
            verifier_key,
        } => verify(&location, &checkpoints, verifier_key.as_deref()).await,
        AuditCommand::VerifierKey(location) => {
            println!("{}", location.load_ledger_key()?.verifier());
            Ok(())
        }
        AuditCommand::Checkpoint(location) => checkpoint(&location).await,
        AuditCommand::Prove {
            location,
            leaf,
            receipt,
            size,
        } => prove(&location, leaf, receipt, size).await,
        AuditCommand::Consistency { location, from, to } => consistency(&location, from, to).await,
        AuditCommand::Query(args) => query(&args).await,
        AuditCommand::History(args) => history(&args).await,
        AuditCommand::VerifyBundle { file, verifier_key } => verify_bundle(&file, &verifier_key),
    }
}

async fn history(args: &HistoryArgs) -> Result<()> {
    use rempart_ledger::history::{AccessBundle, HistoryPage, person_history};
    let store = args.location.open_ledger_store().await?;
    let (size, checkpoint) = evidence(&args.location, store.as_ref()).await?;
    let person = PersonId::new(args.person);
    let started = std::time::Instant::now();
    let history = person_history(
        store.as_ref(),
        person,
        size,
        HistoryPage {
            offset: args.offset,
            limit: args.limit,
        },
    )
    .await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Some(path) = &args.bundle {
        let bundle = AccessBundle::new(&history, &checkpoint);
        let json = serde_json::to_string_pretty(&bundle)?;
        crate::files::write_private(path, json.as_bytes())
            .with_context(|| format!("--bundle: writing {}", path.display()))?;
    }
    if matches!(args.format, Format::Table) {
        print_header();
    }
    for e in &history.entries {
        print_entry(
            &rempart_ledger::LedgerEntry {
                index: e.index,
                leaf: e.leaf.clone(),
            },
            args.format,
        );
    }
    eprintln!(
        "person {person}: {} of {} entries (newest first, from {}), each proven in the log of size {size} ({ms:.1} ms){}",
        history.entries.len(),
        history.total,
        args.offset,
        args.bundle
            .as_ref()
            .map(|p| format!("; bundle written to {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}

fn verify_bundle(file: &Path, verifier_key: &str) -> Result<()> {
    let trusted = given_verifier_key(verifier_key)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let bundle: rempart_ledger::history::AccessBundle = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a history bundle", file.display()))?;
    let verified = bundle
        .verify(&trusted.key)
        .with_context(|| format!("{}: does not verify", file.display()))?;
    println!(
        "bundle of person {}: {} entries (of {}), each in the log of size {} signed by {} ({})",
        verified.person,
        verified.entries.len(),
        bundle.total,
        verified.checkpoint.size,
        verified.checkpoint.origin,
        trusted.source
    );
    Ok(())
}

/// The key a verification trusts, and where it came from.
struct Trusted {
    key: VerifierKey,
    source: String,
}

/// `--verifier-key`: the key's text, or a file holding it (its first
/// non-empty line). A private key given by mistake is refused without
/// being echoed.
fn given_verifier_key(arg: &str) -> Result<Trusted> {
    const PRIVATE: &str = "PRIVATE+KEY+";
    let refuse_private = |what: &str| {
        anyhow::anyhow!(
            "--verifier-key: {what} is a private signing key; give the public verifier key instead (`rempart audit verifier-key` prints it)"
        )
    };
    let text = arg.trim();
    if text.starts_with(PRIVATE) {
        return Err(refuse_private("the value"));
    }
    let text_error = match VerifierKey::parse(text) {
        Ok(key) => {
            return Ok(Trusted {
                key,
                source: "given with --verifier-key".into(),
            });
        }
        Err(e) => e,
    };
    let path = Path::new(arg);
    if !path.is_file() {
        bail!(
            "--verifier-key: neither a verifier key (name+hash+base64: {text_error}) nor a readable file"
        );
    }
    let content = std::fs::read_to_string(path)
        .with_context(|| format!("--verifier-key: reading {}", path.display()))?;
    let line = content
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    if line.starts_with(PRIVATE) {
        return Err(refuse_private(&path.display().to_string()));
    }
    let key = VerifierKey::parse(line).with_context(|| {
        format!(
            "--verifier-key: {} does not hold a verifier key (name+hash+base64)",
            path.display()
        )
    })?;
    Ok(Trusted {
        key,
        source: format!("from {}", path.display()),
    })
}

/// The key to trust: the one given, else the data directory's.
fn trusted_key(loc: &Location, given: Option<&str>) -> Result<Trusted> {
    match given {
        Some(arg) => {
            let trusted = given_verifier_key(arg)?;
            // A private key still present that is not the trusted one is
            // the key change itself: say so up front. Unreadable or absent,
            // it is simply not needed.
            if let Ok(local) = LedgerKey::load(&loc.server().ledger_key_path())
                && local.verifier() != trusted.key
            {
                eprintln!(
                    "warning: the data directory's ledger key is {}, not the trusted key {}: the signing key changed",
                    local.verifier().name_and_id(),
                    trusted.key.name_and_id()
                );
            }
            Ok(trusted)
        }
        None => {
            let path = loc.server().ledger_key_path();
            if !path.exists() {
                bail!(
                    "no ledger key at {}: give the ledger's public key with --verifier-key (name+hash+base64, or a file holding it)",
                    path.display()
                );
            }
            Ok(Trusted {
                key: loc.load_ledger_key()?.verifier(),
                source: format!("the verifier of {}", path.display()),
            })
        }
    }
}

async fn verify(loc: &Location, external: &[PathBuf], given_key: Option<&str>) -> Result<()> {
    let trusted = trusted_key(loc, given_key)?;
    let key = &trusted.key;
    let store = loc.open_ledger_store().await?;
    let mut options = VerifyOptions::default();
    for path in external {
        options.external_checkpoints.push(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading checkpoint {}", path.display()))?,
        );
    }
    let start = std::time::Instant::now();
    match rempart_ledger::verify_with(&store, key, &options).await {
        Ok(report) => {
            let secs = start.elapsed().as_secs_f64();
            println!(
                "audit ledger OK: {} leaves rehashed, {} checkpoints checked (latest at size {}), root {}, in {secs:.2}s ({:.0} leaves/s), with key {} ({})",
                report.leaves,
                report.checkpoints,
                report
                    .latest_checkpoint
                    .map_or_else(|| "none".into(), |s| s.to_string()),
                B64.encode(report.root),
                report.leaves as f64 / secs.max(1e-9),
                key.name_and_id(),
                trusted.source
            );
            Ok(())
        }
        Err(LedgerError::Tampered(failure)) => bail!(
            "{failure}\n  (trusted key: {}, {})",
            key.name_and_id(),
            trusted.source
        ),
        Err(e) => Err(e.into()),
    }
}

async fn checkpoint(loc: &Location) -> Result<()> {
    let (ledger, _) = loc
        .server()
        .storage()
        .ledger
        .open()
        .await
        .context("taking the ledger's writer (is a server running on it?)")?;
    let signed = sign_and_close(ledger).await??;
    print!("{}", signed.note);
    Ok(())
}

/// The checkpoint a scope or a history is bound to: a fresh one when no server holds
/// the ledger's writer, else the latest one a server signed (leaves after
/// it are left out, and the report says how many). Any other failure to
/// open the ledger (unreachable, not matching its checkpoint) is the
/// command's error: nothing is ever bound to a ledger that did not open.
pub(crate) async fn evidence(
    location: &Location,
    store: &dyn LedgerStore,
) -> Result<(u64, String)> {
    match location.server().storage().ledger.open().await {
        Ok((ledger, _)) => {
            match crate::audit::sign_and_close(ledger).await? {
                Ok(signed) => return Ok((signed.checkpoint.size, signed.note)),
                // A PostgreSQL replica integrates: this process only stages.
                Err(LedgerError::NotIntegrating) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(rempart_server::BuildError::Ledger(LedgerError::Store(
            rempart_ledger::StoreError::WriterBusy(_),
        ))) => {}
        Err(e) => return Err(e.into()),
    }
    match store.latest_checkpoint().await? {
        Some(c) => Ok((c.size, c.note)),
        None => bail!(
            "the ledger has no signed checkpoint yet and its writer is busy: wait for the server's next checkpoint"
        ),
    }
}

/// Signs a checkpoint now on a ledger this command opened, then closes it:
/// opened here and held nowhere else, closing releases the writer lock.
/// The outer error is the close's, the inner the signature's.
pub(crate) async fn sign_and_close(
    ledger: std::sync::Arc<rempart_ledger::Ledger>,
) -> Result<Result<rempart_ledger::SignedCheckpoint, rempart_ledger::LedgerError>> {
    let signed = ledger.checkpoint_now().await;
    if let Ok(ledger) = std::sync::Arc::try_unwrap(ledger) {
        ledger.close().await?;
    }
    Ok(signed)
}

async fn current_size(store: &dyn LedgerStore) -> Result<u64> {
    Ok(store.size().await?)
}

async fn prove(
    loc: &Location,
    leaf: Option<u64>,
    receipt: Option<u64>,
    size: Option<u64>,
) -> Result<()> {
    let store = loc.open_ledger_store().await?;
    let leaf = match (leaf, receipt) {
        (Some(leaf), _) => leaf,
        (None, Some(r)) => match store.index_of_receipt(r).await? {
            Some(leaf) => leaf,
            None => bail!(
                "--receipt {r}: no leaf was integrated under this receipt (yet: a staged leaf is integrated within about a second while a server integrates)"
            ),
        },
        (None, None) => bail!("give --leaf or --receipt"),
    };
    let size = match size {
        Some(s) => s,
        None => current_size(&*store).await?,
    };
    if leaf >= size {
        bail!("--leaf {leaf} is not in a tree of {size} leaves");
    }
    let start = std::time::Instant::now();
    let p = proof::prove_inclusion(&*store, leaf, size).await?;
    let elapsed = start.elapsed();
    let root = proof::root(&*store, size).await?;
    let leaf_hash = leaf_hash_of(&*store, leaf).await?;
    p.verify(&leaf_hash, &root)
        .context("the proof does not verify against the stored tree")?;
    println!(
        "{}",
        serde_json::json!({
            "leaf_index": leaf,
            "receipt": receipt,
            "tree_size": size,
            "leaf_hash": B64.encode(leaf_hash),
            "root": B64.encode(root),
            "inclusion_path": p.hashes.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
            "hashes": p.hashes.len(),
            "microseconds": elapsed.as_micros() as u64,
        })
    );
    Ok(())
}

async fn leaf_hash_of(store: &dyn LedgerStore, index: u64) -> Result<rempart_ledger::Hash> {
    let rows = store.leaves(index, 1).await?;
    let row = rows
        .first()
        .with_context(|| format!("leaf {index} is not in the store"))?;
    Ok(rempart_ledger::merkle::leaf_hash(&row.data))
}

async fn consistency(loc: &Location, from: u64, to: u64) -> Result<()> {
    let store = loc.open_ledger_store().await?;
    let size = current_size(&*store).await?;
    if from > to || to > size {
        bail!("need --from ≤ --to ≤ {size} (the log's size)");
    }
    let start = std::time::Instant::now();
    let p = proof::prove_consistency(&*store, from, to).await?;
    let elapsed = start.elapsed();
    let (old_root, new_root) = (
        proof::root(&*store, from).await?,
        proof::root(&*store, to).await?,
    );
    p.verify(&old_root, &new_root)
        .context("the proof does not verify against the stored tree")?;
    println!(
        "{}",
        serde_json::json!({
            "old_size": from,
            "new_size": to,
            "old_root": B64.encode(old_root),
            "new_root": B64.encode(new_root),
            "consistency_path": p.hashes.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
            "hashes": p.hashes.len(),
            "microseconds": elapsed.as_micros() as u64,
        })
    );
    Ok(())
}

/// A time given on the command line: YYYY-MM-DD (midnight UTC) or RFC 3339.
pub(crate) fn parse_time(s: &str, field: &str) -> Result<Timestamp> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Timestamp::from_datetime(t.with_timezone(&Utc)));
    }
    let day = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .with_context(|| format!("--{field}: expected YYYY-MM-DD or an RFC 3339 time"))?;
    let midnight = day
        .and_hms_opt(0, 0, 0)
        .with_context(|| format!("--{field}: out of range"))?;
    Ok(Timestamp::from_datetime(midnight.and_utc()))
}

async fn query(args: &QueryArgs) -> Result<()> {
    let store = args.location.open_ledger_store().await?;
    let from = match &args.from {
        Some(s) => parse_time(s, "from")?,
        None => Timestamp(i64::MIN),
    };
    let to = match &args.to {
        Some(s) => parse_time(s, "to")?,
        None => Timestamp(i64::MAX),
    };
    let subject = match (args.account, args.organisation, args.person) {
        (Some(a), _, _) => Subject::Account(AccountId::new(a)),
        (_, Some(o), _) => Subject::Organisation(OrganisationId::new(o)),
        (_, _, Some(p)) => Subject::Person(PersonId::new(p)),
        _ => bail!("say whose leaves: --account, --organisation or --person"),
    };
    if args.persons_only {
        let Subject::Account(account) = subject else {
            bail!("--persons-only needs --account");
        };
        let start = std::time::Instant::now();
        let persons =
            rempart_ledger::query::persons_read_by_account(&*store, account, from, to).await?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        for p in &persons {
            match args.format {
                Format::Jsonl => println!("{}", serde_json::json!({ "person": p.get() })),
                Format::Table => println!("{}", p),
            }
        }
        eprintln!(
            "{} distinct persons shown to account {} ({ms:.1} ms)",
            persons.len(),
            account
        );
        return Ok(());
    }
    if matches!(args.format, Format::Table) {
        print_header();
    }
    let mut after = None;
    let mut printed = 0u64;
    while printed < args.limit {
        let page = rempart_ledger::query::query(
            &*store,
            &QueryRange {
                subject,
                from,
                to,
                after,
                limit: (args.limit - printed).min(1000) as u32,
            },
        )
        .await?;
        for e in &page.entries {
            print_entry(e, args.format);
            printed += 1;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(())
}

fn print_header() {
    println!(
        "{:>10}  {:<27} {:>8} {:>6} {:>10}  {:<14} {:<24} {:<20} {:<10} guard",
        "index",
        "time (UTC)",
        "account",
        "org",
        "person",
        "action",
        "field groups",
        "purpose",
        "decision"
    );
}

fn print_entry(e: &rempart_ledger::LedgerEntry, format: Format) {
    let l = &e.leaf;
    let time = l
        .time
        .to_datetime()
        .map_or_else(|| l.time.micros().to_string(), |t| t.to_rfc3339());
    let groups: Vec<&str> = l.field_groups.iter().map(|g| g.as_str()).collect();
    let decision = if l.decision.is_allow() {
        "allow".to_string()
    } else {
        format!("{:?}", l.decision).to_lowercase()
    };
    match format {
        Format::Jsonl => println!(
            "{}",
            serde_json::json!({
                "index": e.index,
                "time": time,
                "account": l.account.get(),
                "organisation": l.organisation.get(),
                "person": l.person.map(|p| p.get()),
                "action": l.action.as_str(),
                "field_groups": groups,
                "purpose": l.purpose.map(|p| p.as_str()),
                "decision": decision,
                "guard": l.guard.map(|g| g.as_str()),
                "note": l.note.as_deref(),
            })
        ),
        Format::Table => println!(
            "{:>10}  {:<27} {:>8} {:>6} {:>10}  {:<14} {:<24} {:<20} {:<10} {:<10} {}",
            e.index,
            time,
            l.account.get(),
            l.organisation.get(),
            l.person.map_or_else(|| "-".into(), |p| p.to_string()),
            l.action.as_str(),
            groups.join(","),
            l.purpose.map_or("-", |p| p.as_str()),
            decision,
            l.guard.map_or("-", |g| g.as_str()),
            l.note.as_deref().unwrap_or("-"),
        ),
    }
}

/// Where `rempart bench ledger` runs: the PostgreSQL `schema` of
/// `database` if given, else SQLite in `dir` (`None`: a temporary one).
pub struct LedgerBenchAt {
    /// PostgreSQL URL.
    pub database: Option<String>,
    /// PostgreSQL schema.
    pub schema: String,
    /// SQLite directory.
    pub dir: Option<PathBuf>,
}

/// `rempart bench ledger`: the figures on a fresh ledger.
pub async fn bench_ledger(
    leaves: u64,
    at: LedgerBenchAt,
    persons: u64,
    keep: bool,
    reuse: bool,
    proofs_only: bool,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let target = match at.database {
        Some(url) => BenchTarget::Postgres {
            url,
            schema: at.schema,
        },
        None => BenchTarget::Sqlite {
            dir: at.dir.unwrap_or_else(|| tmp.path().to_path_buf()),
        },
    };
    println!(
        "SHA-256 leaf hashes, one core: {:.0}/s",
        bench::hash_rate(2_000_000)?
    );
    let store = bench::open_target(&target, !reuse).await?;
    let key = LedgerKey::generate("rempart.bench/ledger")?;
    if reuse {
        println!(
            "== {target:?}, the {} leaves already there",
            store.size().await?
        );
    } else {
        println!("== {target:?}, {leaves} leaves reading {persons} persons");
        build_bench_ledger(&store, &key, leaves, persons).await?;
    }
    // PostgreSQL's indexer works behind the appends: the bytes and queries
    // below are measured on a settled index (SQLite's moves with the appends).
    if proofs_only {
        println!("query index not waited for: its tables may hold runs not yet merged");
    } else {
        let settle = std::time::Instant::now();
        store.settle_index().await?;
        println!(
            "query index settled {:.2} s after the last append",
            settle.elapsed().as_secs_f64()
        );
    }
    let bytes = bench::bytes_used(&target).await?;
    let size = store.size().await?;
    println!(
        "bytes on disk: {bytes} for {size} leaves = {:.0} bytes per leaf",
        bytes as f64 / size.max(1) as f64
    );
    let tables = bench::bytes_by_table(&target).await?;
    if !tables.is_empty() {
        let per_leaf = |b: u64| b as f64 / size.max(1) as f64;
        let parts: Vec<String> = tables
            .iter()
            .filter(|(_, b)| per_leaf(*b) >= 0.05)
            .map(|(t, b)| format!("{t} {:.1}", per_leaf(*b)))
            .collect();
        println!("bytes per leaf by table: {}", parts.join(", "));
    }
    if !reuse {
        let v = bench::verify_speed(&store, &key.verifier()).await?;
        println!(
            "verify: {} leaves, {} checkpoints in {:.2} s = {:.0} leaves/s",
            v.leaves, v.checkpoints, v.seconds, v.per_second
        );
    }
    // Two passes over different leaves: after a restart, the first reads
    // everything cold; the second finds what every proof shares (the
    // b-trees' upper pages, the upper hashes) cached and its own leaves'
    // pages still cold, as a server does once it has run a while.
    for (pass, seed) in [("first pass", 3), ("second pass, other leaves", 4)] {
        let p = bench::proof_speed(&store, 1000, seed).await?;
        println!(
            "proofs at size {} (⌈log2 n⌉ = {}), {pass}: inclusion mean {:.0} µs, p99 {} µs, max {} hashes; consistency mean {:.0} µs, p99 {} µs, max {} hashes",
            p.size,
            p.log2_bound,
            p.inclusion.mean_us,
            p.inclusion.p99_us,
            p.inclusion_max_hashes,
            p.consistency.mean_us,
            p.consistency.p99_us,
            p.consistency_max_hashes
        );
    }
    if !proofs_only {
        print_query_speed(&store, persons).await?;
    }
    drop(store);
    if keep {
        return Ok(());
    }
    bench::close_target(&target).await?;
    if let BenchTarget::Postgres { schema, .. } = &target {
        println!("schema {schema} dropped");
    }
    Ok(())
}

/// The query figures of `bench ledger`.
async fn print_query_speed(
    store: &std::sync::Arc<dyn rempart_ledger::store::LedgerStore>,
    persons: u64,
) -> Result<()> {
    let q = bench::query_speed(store, 200, persons).await?;
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
    println!(
        "a person's history (every leaf about them, newest first, the first 20 with inclusion proofs): p50 {} µs, p99 {} µs, max {} µs ({} persons)",
        q.person_history.p50_us,
        q.person_history.p99_us,
        q.person_history.max_us,
        q.person_history.samples
    );
    Ok(())
}

/// The building half of `bench ledger`: most of the log in batches, then
/// durable appends from many callers, then the latency at a steady rate.
async fn build_bench_ledger(
    store: &std::sync::Arc<dyn rempart_ledger::store::LedgerStore>,
    key: &LedgerKey,
    leaves: u64,
    persons: u64,
) -> Result<()> {
    let copy = || LedgerKey::from_text(&key.signer().to_text());
    // Load most of the log first, so that the durable-append and latency
    // figures are taken on a store of (nearly) the full size.
    let concurrent = (leaves / 2).clamp(1, 500_000);
    let rest = leaves.saturating_sub(concurrent);
    if rest > 0 {
        let p = bench::populate(store.clone(), copy()?, rest, persons).await?;
        println!(
            "batched appends (4096 per call): {} leaves in {:.2} s = {:.0}/s",
            p.leaves, p.seconds, p.per_second
        );
    }
    let t = bench::append_throughput(store.clone(), copy()?, concurrent, 1024, persons).await?;
    println!(
        "durable appends, {} concurrent callers, group commit: {} leaves in {:.2} s = {:.0}/s",
        t.callers, t.leaves, t.seconds, t.per_second
    );
    let l = bench::append_latency(
        store.clone(),
        copy()?,
        5000,
        Duration::from_secs(10),
        persons,
    )
    .await?;
    println!(
        "latency at {}/s offered ({:.0}/s achieved, {} appends): p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        l.rate, l.achieved_rate, l.appends, l.p50_us, l.p99_us, l.p999_us, l.max_us
    );
    Ok(())
}
