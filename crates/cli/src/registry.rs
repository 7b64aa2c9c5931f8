//! The registry's commands: `init`, `generate`, `import`, `inventory`,
//! `keys rotate|verify`, `person shred`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use clap::Args;
use rempart_crypto::KeyRing;
use rempart_domain::{FieldGroup, PersonId};
use rempart_import::{ImportOptions, RejectSink};
use rempart_vault::{Read, Vault};

use crate::location::Location;
use crate::{audit, progress};

#[derive(Args)]
pub struct GenerateArgs {
    /// Number of persons.
    #[arg(long, default_value_t = 10_000)]
    pub persons: u64,
    /// Seed: the same seed gives the same files.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Reference date for ages and statuses (YYYY-MM-DD); today by default.
    #[arg(long)]
    pub today: Option<NaiveDate>,
}

#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub location: Location,
    /// Fail the run on any bad line (persons: validate the whole file first, write nothing).
    #[arg(long)]
    pub strict: bool,
    /// Reject report (CSV: file, line, field, reason).
    #[arg(long, default_value = "rejects.csv")]
    pub rejects: PathBuf,
    /// Records per transaction.
    #[arg(long, default_value_t = 8192)]
    pub batch: usize,
    /// Reference date for validation rules (YYYY-MM-DD); today by default.
    #[arg(long)]
    pub today: Option<NaiveDate>,
    /// CSV files or directories holding organisations.csv, accounts.csv, persons.csv, mandates.csv.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

pub fn today() -> NaiveDate {
    chrono::Local::now().date_naive()
}

pub async fn init(loc: &Location, origin: &str) -> Result<()> {
    create_private_dir(&loc.data)?;
    let keys = loc.server().key_path();
    if keys.exists() {
        println!("keys: {} already exists, kept as is", keys.display());
    } else {
        KeyRing::generate()?.save_new(&keys)?;
        println!("keys: created {} (mode 0600)", keys.display());
    }
    let store = loc.open_store().await?;
    println!("registry: {} ready (schema up to date)", loc.describe());
    drop(store);
    audit::init(loc, origin).await
}

pub fn create_private_dir(dir: &Path) -> Result<()> {
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

pub fn generate(args: &GenerateArgs) -> Result<()> {
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

pub async fn import(args: &ImportArgs) -> Result<Vec<rempart_import::FileReport>> {
    let vault = args.location.open_vault().await?;
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
        if let Some(line) = r.resumed_at {
            println!(
                "  (resumed an interrupted import at line {line}: the counts cover the whole file; \
                 lines rejected before it are in the earlier run's reject report)"
            );
        }
    }
    for r in reports.iter().filter(|r| {
        matches!(
            r.kind,
            rempart_import::FileKind::Persons | rempart_import::FileKind::Mandates
        )
    }) {
        let st = r.stages;
        println!(
            "{} pipeline (stages overlap): parse {:.2}s, lookup {:.2}s, seal {:.2}s, write {:.2}s, index build {:.2}s",
            r.kind_name().trim_end_matches(".csv"),
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

pub trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for rempart_import::FileReport {
    fn kind_name(&self) -> &'static str {
        self.kind.file_name()
    }
}

pub async fn inventory(vault: &Vault) -> Result<()> {
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

pub async fn rotate(loc: &Location) -> Result<()> {
    let vault = loc.open_vault().await?;
    // Accounts' TOTP secrets are sealed under the KEK too: rewrapped in
    // the same rotation, before any KEK is retired.
    let totp = rempart_vault::AccountSecrets(loc.open_stores().await?.auth);
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

pub async fn shred(loc: &Location, ft_id: &str) -> Result<()> {
    let ft_id = rempart_domain::FtId::parse(ft_id).context("--ft-id")?;
    let vault = loc.open_vault().await?;
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

pub async fn verify(loc: &Location) -> Result<()> {
    use futures_util::StreamExt;
    let vault = loc.open_vault().await?;
    let start = Instant::now();
    let (mut ok, mut shredded, mut failed, mut after) = (0u64, 0u64, 0u64, PersonId::new(0));
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
