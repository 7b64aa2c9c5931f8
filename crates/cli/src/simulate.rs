//! `rempart simulate`: a month of normal traffic (`rempart_synth::traffic`)
//! through the real guard over the real guard store, in simulated time,
//! counting the false alerts and suspensions it would have caused.
//!
//! The month drives the guard's API directly (`check`, `raise`, `sync`),
//! with attempts built as the consultation path builds them for a read;
//! there is no HTTP, no policy and no vault in between (every read is one
//! the account's mandates allow). A step-up verdict is followed by a
//! step-up (the person is at the desk) and the read retried; a throttled
//! read is dropped; a suspended account reads nothing more that month.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use rempart_domain::{FieldGroup, OrganisationKind, PersonId, Purpose, Role};
use rempart_guard::{
    AccountFacts, Attempt, AttemptKind, Digest16, Feature, Fields, Guard, GuardConfig, GuardStore,
    PeerGroup, SessionFacts, Verdict,
};
use rempart_synth::traffic::{NormalMonth, Reason, TrafficAccount, TrafficOptions};

/// Arguments of `rempart simulate`.
#[derive(Args)]
pub struct SimulateArgs {
    /// Accounts working.
    #[arg(long, default_value_t = 3_000)]
    accounts: u32,
    /// Days simulated.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// First day (YYYY-MM-DD).
    #[arg(long, default_value = "2026-11-02")]
    start: NaiveDate,
    /// Same seed, same month.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for the guard's SQLite store (default: a temporary one).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// PostgreSQL URL: the guard's store in a fresh schema there instead.
    #[arg(long)]
    database: Option<String>,
    /// Guard configuration file (TOML or JSON); the defaults otherwise.
    #[arg(long)]
    guard_config: Option<std::path::PathBuf>,
}

/// The month's figures.
#[derive(Default)]
struct Figures {
    reads: u64,
    account_days: u64,
    alerts: u64,
    fresh_alerts: u64,
    suspensions: u64,
    throttled: u64,
    step_ups: u64,
    by_verdict: HashMap<Verdict, u64>,
    features: HashMap<Feature, u64>,
    examples: Vec<String>,
    /// Reads per reason (campaign days, sessions starting…).
    reasons: HashMap<Reason, u64>,
    /// Alerts raised by the organisation stage, and their accounts.
    organisation_alerts: u64,
}

/// Runs the month and prints its figures.
pub async fn simulate(args: &SimulateArgs) -> Result<()> {
    let config: GuardConfig =
        rempart_server::alerts::load_config(args.guard_config.as_deref())?.guard;
    let options = TrafficOptions {
        accounts: args.accounts,
        start: args.start,
        days: args.days,
        seed: args.seed,
    };
    let month = NormalMonth::new(options)?;
    let tmp = tempfile::tempdir()?;
    let (at, place) = match &args.database {
        Some(url) => {
            let schema = format!("simulation_{}", Utc::now().timestamp_micros());
            let place = format!("PostgreSQL, schema {schema} (dropped after the month)");
            let at = rempart_server::RegistryAt::Postgres {
                url: url.clone(),
                schema,
            };
            (at, place)
        }
        None => {
            let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
            std::fs::create_dir_all(&dir)?;
            (
                rempart_server::RegistryAt::Sqlite(dir),
                "SQLite".to_string(),
            )
        }
    };
    let scratch = at.open_scratch().await.context("opening the guard store")?;
    let ran = run(args, config, month, scratch.stores.guard.clone(), &place).await;
    // The month's schema is scratch: dropped whatever the outcome.
    let dropped = scratch
        .discard()
        .await
        .context("dropping the simulation's schema");
    ran.and(dropped)
}

/// The month itself, through the guard over `store`.
async fn run(
    args: &SimulateArgs,
    config: GuardConfig,
    mut month: NormalMonth,
    store: Arc<dyn GuardStore>,
    place: &str,
) -> Result<()> {
    let start = first_instant(args.start);
    let guard = Guard::open(config, store, 1, start)
        .await
        .context("opening the guard")?;
    let interval = i64::from(config.sync.interval_secs.max(1))
        .max(i64::from(config.sync.max_staleness_secs) / 2);
    let mut last_sync = start.timestamp();
    let accounts: Vec<TrafficAccount> = month.accounts().to_vec();
    let mut suspended = vec![false; accounts.len()];
    let mut stepped_up: Vec<Option<DateTime<Utc>>> = vec![None; accounts.len()];
    let mut fig = Figures::default();
    let started = std::time::Instant::now();
    for d in 0..args.days {
        let visits = month.day(d);
        let mut worked = vec![false; accounts.len()];
        for v in visits {
            if suspended[v.account] {
                continue;
            }
            worked[v.account] = true;
            if v.at.timestamp() - last_sync >= interval {
                guard.sync(v.at).await.context("guard sync")?;
                last_sync = v.at.timestamp();
            }
            let a = &accounts[v.account];
            let mut attempt = read_attempt(a, v.at, v.person_id, stepped_up[v.account], d);
            // An arrival's or a new trainee's mandate began today.
            attempt.new_mandate = matches!(v.reason, Reason::Arrival | Reason::NewSession);
            fig.reads += 1;
            *fig.reasons.entry(v.reason).or_default() += 1;
            for _retry in 0..2 {
                let decision = guard.check(&attempt).await.context("guard check")?;
                let Some(alert) = decision.alert else { break };
                fig.alerts += 1;
                fig.fresh_alerts += u64::from(alert.fresh);
                fig.organisation_alerts +=
                    u64::from(alert.kind == rempart_guard::AlertKind::OrganisationBehaviour);
                *fig.by_verdict.entry(alert.verdict).or_default() += 1;
                for e in &alert.explanation {
                    *fig.features.entry(e.feature).or_default() += 1;
                }
                if fig.examples.len() < 5 {
                    fig.examples.push(format!(
                        "{} account {} ({}) {}: {}",
                        alert.at.format("%Y-%m-%d %H:%M"),
                        a.account_id,
                        a.kind,
                        alert.verdict,
                        crate::guard::features_line(&alert.explanation)
                    ));
                }
                let verdict = alert.verdict;
                guard.raise(alert);
                match verdict {
                    Verdict::StepUp => {
                        fig.step_ups += 1;
                        stepped_up[v.account] = Some(v.at);
                        attempt.session.stepped_up_at = Some(v.at);
                    }
                    Verdict::Throttle => {
                        fig.throttled += 1;
                        break;
                    }
                    Verdict::Suspend | Verdict::FreezeOrganisation => {
                        fig.suspensions += 1;
                        suspended[v.account] = true;
                        break;
                    }
                    Verdict::Allow => break,
                }
            }
        }
        fig.account_days += worked.iter().filter(|w| **w).count() as u64;
        let end_of_day = first_instant(args.start + chrono::TimeDelta::days(i64::from(d) + 1));
        guard.sync(end_of_day).await.context("guard sync")?;
        last_sync = end_of_day.timestamp();
    }
    print(args, place, &fig, started.elapsed());
    let suspensions_rate = per(fig.suspensions, fig.account_days, 10_000.0);
    let alert_rate = per(fig.alerts, fig.account_days, 1_000.0);
    if suspensions_rate > 1.0 || alert_rate > 1.0 {
        bail!(
            "targets missed: {suspensions_rate:.2} suspensions per 10,000 account-days (≤ 1), {alert_rate:.2} alerts per 1,000 account-days (≤ 1)"
        );
    }
    Ok(())
}

fn per(n: u64, days: u64, scale: f64) -> f64 {
    if days == 0 {
        0.0
    } else {
        n as f64 * scale / days as f64
    }
}

fn print(args: &SimulateArgs, place: &str, fig: &Figures, took: std::time::Duration) {
    println!(
        "normal month: {} accounts, {} days from {}, seed {} (guard store on {place})",
        args.accounts, args.days, args.start, args.seed
    );
    println!(
        "driven through the guard's API directly (check, raise, sync): no HTTP, policy or vault"
    );
    println!("reads:                         {}", fig.reads);
    println!("account-days (worked):         {}", fig.account_days);
    println!(
        "suspensions:                   {} ({:.2} per 10,000 account-days; target ≤ 1)",
        fig.suspensions,
        per(fig.suspensions, fig.account_days, 10_000.0)
    );
    println!(
        "alerts:                        {} ({:.2} per 1,000 account-days; target ≤ 1), {} fresh",
        fig.alerts,
        per(fig.alerts, fig.account_days, 1_000.0),
        fig.fresh_alerts
    );
    println!(
        "verdicts:                      step-up {}, throttle {}, suspend {}",
        fig.step_ups, fig.throttled, fig.suspensions
    );
    println!(
        "by the organisation stage:     {} alerts",
        fig.organisation_alerts
    );
    let r = |why: Reason| fig.reasons.get(&why).copied().unwrap_or(0);
    println!(
        "reads by reason:               routine {}, arrivals {}, covering {}, campaign days {}, sessions starting {}",
        r(Reason::Routine),
        r(Reason::Arrival),
        r(Reason::Covering),
        r(Reason::Campaign),
        r(Reason::NewSession)
    );
    let mut features: Vec<_> = fig.features.iter().collect();
    features.sort_by(|a, b| b.1.cmp(a.1).then(a.0.as_str().cmp(b.0.as_str())));
    if !features.is_empty() {
        let top: Vec<String> = features
            .iter()
            .take(5)
            .map(|(f, n)| format!("{f} ({n})"))
            .collect();
        println!("top features in alerts:        {}", top.join(", "));
        for e in &fig.examples {
            println!("  {e}");
        }
    }
    println!("simulated in {:.1} s", took.as_secs_f64());
}

/// Midnight UTC of `day`.
pub fn first_instant(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

fn digest(tag: u8, a: &TrafficAccount, extra: u32) -> Digest16 {
    let mut d = [0u8; 16];
    d[0] = tag;
    d[1..9].copy_from_slice(&a.account_id.get().to_be_bytes());
    d[9..13].copy_from_slice(&extra.to_be_bytes());
    d
}

/// A read as the consultation path's `Consultation::attempts` describes it:
/// established account (imported), its usual device and network, one
/// session a day, the field groups the purpose shows.
fn read_attempt(
    a: &TrafficAccount,
    at: DateTime<Utc>,
    person_id: PersonId,
    stepped_up_at: Option<DateTime<Utc>>,
    day: u32,
) -> Attempt {
    let (groups, nir_clear): (&[FieldGroup], bool) = match (a.kind, a.purpose) {
        (OrganisationKind::FranceTravail, Purpose::Compensation) => (
            &[FieldGroup::Identity, FieldGroup::Status, FieldGroup::Nir],
            true,
        ),
        (OrganisationKind::FranceTravail, _) => (FieldGroup::ALL, true),
        (OrganisationKind::CapEmploi | OrganisationKind::MissionLocale, _) => {
            (FieldGroup::ALL, false)
        }
        (OrganisationKind::TrainingProvider, _) => {
            (&[FieldGroup::Identity, FieldGroup::Contact], false)
        }
        (OrganisationKind::Processor, _) => (&[FieldGroup::Nir], false),
    };
    Attempt {
        at,
        account: AccountFacts {
            account_id: a.account_id,
            organisation_id: a.organisation_id,
            role: Role::Agent,
            created_at: None,
            peer: PeerGroup::of(a.kind, Some(a.departement)),
        },
        session: SessionFacts {
            session_id: digest(1, a, day),
            high_risk: false,
            device: Some(digest(2, a, 0)),
            network: Some(digest(3, a, 0)),
            stepped_up_at,
        },
        kind: AttemptKind::ReadPerson,
        person_id: Some(person_id),
        purpose: Some(a.purpose),
        fields: Fields::of(groups, nir_clear),
        new_mandate: false,
    }
}
