//! `rempart drill SCENARIO`: a seed breach replayed against a live server
//! over HTTP, on a generated population, inside a week of normal traffic.
//!
//! Everything is real but the clock: the registry, policies, guard, vault
//! and ledger are those `rempart serve` runs, on SQLite or PostgreSQL, and
//! every request (normal or hostile) goes over a loopback TCP connection.
//! Time is simulated: the server's clock (`Consultation::with_clock`) and
//! the guard's syncs follow the drill's timeline, so a week runs in
//! seconds. Requests are sent one at a time in timeline order, which
//! makes a run reproducible from its seed.
//!
//! Each account, normal or hostile, connects from its own loopback
//! network (127.x.y.0/24): the guard tells networks apart by /24.
//!
//! The timeline starts on a Monday: five working days of normal traffic
//! build the accounts' own and peer baselines, then the attacks come, with
//! normal traffic going on around them:
//! - `cap-emploi-2024`, fast: Saturday 21:00, a hijacked Cap emploi
//!   advisor's credential reads 20 persons a second from a new network,
//!   half of them from its caseload and half random persons of the
//!   registry;
//! - `kairos-2025`: Monday 10:00, a training provider's advisor logs in
//!   (password + TOTP) from her PC; at 10:20 an infostealer replays her
//!   session cookie and password from another device and network;
//! - `missions-locales-2025`: Monday 11:00, a Mission Locale manager's
//!   credential asks for five accounts, tries to approve them itself, then
//!   reads persons through the manager's own account;
//! - `majorel-2023`: Monday 9:00–16:00, a processor reads its caseload for
//!   its job and keeps every answer in its own store, which is then
//!   stolen: what does that store hold?
//! - `cap-emploi-2024`, slow: Tuesday 21:30, another hijacked advisor
//!   reads one person every 20 seconds.
//! - `distributed-agency`: every agent account of the largest organisation
//!   (those in the normal traffic with their history, the others dormant)
//!   reads up to 35 persons of its own caseload, each under its quota,
//!   from one machine, one account after another, Saturday 22:00; the
//!   same with the second largest organisation on Monday 14:00 (office
//!   hours: ≤ 200 records, contained within 10 minutes).
//! - `slow-agency`: every account of the third largest organisation reads
//!   two persons of its caseload five times a working day, from one
//!   machine, Wednesday to the next Tuesday; the target is an alert within
//!   the first working day.
//! - `shared-device`: accounts of two more organisations, in turn, from one
//!   machine, Monday 16:00.
//!
//! Per attack it prints the records obtained beyond the identity's
//! legitimate scope, the records read after the attack began and before
//! containment, the time to containment and the alerts raised; for the
//! normal accounts, the alerts raised on them (false alerts). Then the
//! breach's scope as an incident response would compute it from the
//! ledger (the attack's accounts over its window), against every person
//! the answers to those accounts revealed in that window as the drill's
//! client saw them. It fails if an attack misses a target: any record
//! beyond scope, more than 50 records before containment, containment
//! later than 60 s, a person the scope misses or adds, or one it calls
//! pseudonymous when the answers were not (or the reverse).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Utc, Weekday};
use clap::{Args, ValueEnum};
use rempart_auth::password::{HashParams, Password, PasswordHasher};
use rempart_auth::totp::TotpSecret;
use rempart_consult::LoginSettings;
use rempart_domain::incident::{Compromised, Window};
use rempart_domain::{
    AccountId, AccountState, FieldGroup, OrganisationId, OrganisationKind, PersonId, Purpose, Role,
};
use rempart_guard::store::AlertQuery;
use rempart_guard::{Guard, GuardConfig};
use rempart_server::{App, GuardChoice, ServerConfig};
use rempart_storage::{AccountRecord, AuthStore, Store, StoredTotp};
use rempart_synth::traffic::{NormalMonth, TrafficOptions, paris_to_utc};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::device_key::DeviceKey;
use crate::location::Location;
use crate::registry::{GenerateArgs, ImportArgs};

/// The targets of must-show 1.
const MAX_RECORDS_BEFORE_CONTAINMENT: u64 = 50;
const MAX_SECONDS_TO_CONTAINMENT: f64 = 60.0;
/// Days in the timeline: Monday to the next Tuesday.
const DAYS: u32 = 9;
const PASSWORD: &str = "Verger-Orage-47-Brume";

/// Which breach to replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// A hijacked advisor account reads in bulk, evenings and weekends, fast and slowly.
    #[value(name = "cap-emploi-2024")]
    CapEmploi2024,
    /// An infostealer replays a training provider's password and cookie from another device.
    #[value(name = "kairos-2025")]
    Kairos2025,
    /// A manager account requests accounts and reads through them.
    #[value(name = "missions-locales-2025")]
    MissionsLocales2025,
    /// A processor's own store is stolen: what does it hold?
    #[value(name = "majorel-2023")]
    Majorel2023,
    /// Every account of one organisation reads its own caseload, each under
    /// its quota, from one machine: off hours, then (another organisation)
    /// at office hours.
    #[value(name = "distributed-agency")]
    DistributedAgency,
    /// The same spread over a working week at office hours, in small doses.
    #[value(name = "slow-agency")]
    SlowAgency,
    /// Accounts of two organisations driven from one machine.
    #[value(name = "shared-device")]
    SharedDevice,
    /// Every scenario, in one timeline.
    All,
}

impl Scenario {
    fn includes(self, other: Scenario) -> bool {
        self == Scenario::All || self == other
    }
}

/// Arguments of `rempart drill`.
#[derive(Args)]
pub struct DrillArgs {
    /// The breach to replay.
    scenario: Scenario,
    /// Persons generated and imported (the organisations and accounts
    /// grow with them: 20,000 give about 25 working accounts).
    #[arg(long, default_value_t = 50_000)]
    persons: u64,
    /// Normal accounts working around the attacks.
    #[arg(long, default_value_t = 200)]
    accounts: u32,
    /// Same seed, same population and same week.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Working directory (default: a temporary one, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// PostgreSQL URL: registry, ledger and guard there instead of SQLite.
    #[arg(long)]
    database: Option<String>,
    /// Guard configuration file (TOML or JSON); the defaults otherwise.
    #[arg(long)]
    guard_config: Option<PathBuf>,
    /// Write each attack's breach report there: the draft notification
    /// to the CNIL (`<attack>.cnil.md`, `.cnil.json`) and one person's
    /// notice (`<attack>.notice.txt`).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// The server's clock: the drill's timeline, in microseconds.
#[derive(Clone)]
struct SimClock(Arc<AtomicI64>);

impl SimClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0.load(Ordering::SeqCst)).unwrap_or_default()
    }
    fn set(&self, t: DateTime<Utc>) {
        self.0.fetch_max(t.timestamp_micros(), Ordering::SeqCst);
    }
}

/// An account's live mandates: person and purpose.
type Caseload = Vec<(i64, Purpose)>;

/// An account the drill sends requests as, with its own network.
struct Reader {
    account: AccountRecord,
    token: String,
    client: reqwest::Client,
    caseload: Vec<(i64, Purpose)>,
}

/// What one attack did, attempt by attempt.
#[derive(Default)]
struct Tally {
    /// (instant, record obtained, person outside the legitimate scope,
    /// refused by the guard).
    attempts: Vec<(DateTime<Utc>, bool, bool, bool)>,
    answers: BTreeMap<String, u64>,
    accounts: HashSet<AccountId>,
    /// When the attack began (the first hostile move).
    since: Option<DateTime<Utc>>,
    notes: Vec<String>,
    /// Extra target checks of the scenario (what failed).
    missed: Vec<String>,
    /// Records served per day (UTC weekday), for the slow attacks.
    served_on: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, at: DateTime<Utc>, status: u16, code: &str, served: bool, beyond: bool) {
        let guard = status == 429
            || matches!(
                code,
                "step_up_required" | "account_suspended" | "organisation_frozen"
            );
        self.attempts.push((at, served, served && beyond, guard));
        *self.answers.entry(format!("{status} {code}")).or_default() += 1;
    }
}

/// The week's figures for the normal accounts.
#[derive(Default)]
struct Normal {
    reads: u64,
    served: u64,
    refused: BTreeMap<String, u64>,
    account_days: u64,
}

struct World {
    base: String,
    public: String,
    clock: SimClock,
    guard: Guard,
    store: Store,
    auth: Arc<dyn AuthStore>,
    interval: i64,
    last_sync: i64,
    max_person: i64,
    ledger: Arc<dyn rempart_ledger::LedgerStore>,
    /// The server's ledger, to sign the checkpoint a breach's scope is
    /// bound to.
    signer: Arc<rempart_ledger::Ledger>,
    /// The register and the registry, for each attack's incident.
    stores: rempart_storage::Stores,
    vault: rempart_vault::Vault,
    /// Where the breach reports go, if anywhere.
    report: Option<PathBuf>,
    /// Every person an answer revealed, as the drill's client saw it: when,
    /// to which account, whether pseudonymously only (no identity, no
    /// contact, no NIR in clear). What a breach's scope must find again.
    revealed: std::sync::Mutex<Vec<Revealed>>,
}

/// One person's data in one answer.
#[derive(Debug, Clone, Copy)]
struct Revealed {
    at: DateTime<Utc>,
    account: AccountId,
    person: i64,
    pseudonymous: bool,
}

impl World {
    /// Moves the timeline to `t`, syncing the guard as a server would.
    async fn at(&mut self, t: DateTime<Utc>) -> Result<()> {
        self.clock.set(t);
        if t.timestamp() - self.last_sync >= self.interval {
            self.guard.sync(t).await.context("guard sync")?;
            self.last_sync = t.timestamp();
        }
        Ok(())
    }

    /// Reads a person over the API as `r`; what a served answer revealed is
    /// kept in `revealed`.
    async fn read(&self, r: &Reader, person: i64, purpose: Purpose) -> Result<(u16, Value)> {
        let (status, body) = self.read_unlogged(r, person, purpose).await?;
        if status == 200 {
            let pseudonymous = body.get("identity").is_none()
                && body.get("contact").is_none()
                && body["nir"]["view"].as_str() != Some("clear");
            if let Ok(mut log) = self.revealed.lock() {
                log.push(Revealed {
                    at: self.clock.now(),
                    account: r.account.account_id,
                    person,
                    pseudonymous,
                });
            }
        }
        Ok((status, body))
    }

    async fn read_unlogged(
        &self,
        r: &Reader,
        person: i64,
        purpose: Purpose,
    ) -> Result<(u16, Value)> {
        let resp = r
            .client
            .get(format!(
                "{}/api/v1/persons/{person}?purpose={}",
                self.base,
                purpose.as_str()
            ))
            .bearer_auth(&r.token)
            .send()
            .await
            .context("a drill request")?;
        answer(resp).await
    }
}

async fn answer(resp: reqwest::Response) -> Result<(u16, Value)> {
    let status = resp.status().as_u16();
    let text = resp.text().await.context("a drill answer")?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn code(body: &Value) -> String {
    body["error"]["code"].as_str().unwrap_or("").to_string()
}

/// A client whose connections come from 127.`a`.`b`.1.
fn client_from(a: u8, b: u8) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, a, b, 1)))
        .build()?)
}

/// Local Paris time `hh:mm` on day `d` of the timeline.
fn local(start: NaiveDate, d: u32, hh: u32, mm: u32) -> DateTime<Utc> {
    let day = start + Duration::days(i64::from(d));
    paris_to_utc(day.and_time(NaiveTime::from_hms_opt(hh, mm, 0).unwrap_or(NaiveTime::MIN)))
}

/// What happens at one instant of the timeline.
enum Step {
    /// A normal account reads one of its persons.
    Normal { reader: usize, person: i64 },
    /// An attack's next move.
    Attack { attack: usize, n: usize },
}

/// Runs the drill and prints its figures.
pub async fn drill(args: &DrillArgs) -> Result<()> {
    let config: GuardConfig =
        rempart_server::alerts::load_config(args.guard_config.as_deref())?.guard;
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    // The timeline's Monday: the first one after today, so that the
    // population generated "today" holds live mandates all week.
    let today = Utc::now().date_naive();
    let start = (1..=7)
        .map(|n| today + Duration::days(n))
        .find(|d| d.weekday() == Weekday::Mon)
        .unwrap_or(today);
    let loc = Location {
        data: dir.join("data"),
        database: args.database.clone(),
    };
    println!(
        "drill {:?}: {} persons, {} normal accounts, seed {}, week from Monday {start} ({})",
        args.scenario,
        args.persons,
        args.accounts,
        args.seed,
        if args.database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    crate::registry::init(&loc, crate::audit::DEFAULT_ORIGIN).await?;
    let csv = dir.join("csv");
    crate::registry::generate(&GenerateArgs {
        persons: args.persons,
        seed: args.seed,
        out: csv.clone(),
        today: Some(start),
    })?;
    crate::registry::import(&ImportArgs {
        location: loc.clone(),
        strict: false,
        rejects: dir.join("rejects.csv"),
        batch: 8192,
        today: Some(start),
        inputs: vec![csv],
    })
    .await?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let public = format!("http://localhost:{}", addr.port());
    let first = local(start, 0, 0, 0);
    let clock = SimClock(Arc::new(AtomicI64::new(first.timestamp_micros())));
    // The real guard on the drill's clock; the drill syncs it itself, at
    // the simulated sync interval.
    let mut server = ServerConfig::new(loc.server().storage())
        .with_guard(GuardChoice::Real {
            config: Box::new(config),
            sync: false,
        })
        .with_login(LoginSettings::new(&public)?)
        .with_clock({
            let c = clock.clone();
            Arc::new(move || c.now())
        });
    server.guard_instance = 1;
    let app = App::build(server).await?;
    let guard = app.consultation().guard().clone();
    let store = app.consultation().store().clone();
    let auth = app.consultation().auth_store().clone();
    let ledger = app.ledger_store().clone();
    let vault = app.consultation().vault().clone();
    let signer = app.consultation().ledger().clone();
    let stores = app.stores().clone();
    if let Some(dir) = &args.report {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--report: cannot create {}", dir.display()))?;
    }
    let server = app.spawn(listener)?;
    let mut world = World {
        base: format!("http://{addr}"),
        public,
        clock,
        guard,
        store,
        auth,
        interval: i64::from(config.sync.interval_secs.max(1)),
        last_sync: first.timestamp(),
        max_person: i64::try_from(args.persons).unwrap_or(i64::MAX),
        ledger,
        signer,
        stores,
        vault: vault.clone(),
        report: args.report.clone(),
        revealed: std::sync::Mutex::new(Vec::new()),
    };
    let ran = run(args, &mut world, &vault, start).await;
    server.stop().await?;
    ran
}

/// The people of the drill, read off the imported population: the normal
/// accounts (the attacks hijack some of them, so that they come with a
/// history), and a Mission Locale manager.
struct Cast {
    normal: Vec<Reader>,
    manager: Option<Reader>,
    /// Organisations with their agent accounts that hold a caseload,
    /// largest first.
    teams: Vec<Vec<(AccountRecord, Caseload)>>,
}

async fn cast(world: &World, accounts: u32, start: NaiveDate) -> Result<Cast> {
    let mut by_kind: HashMap<OrganisationKind, Vec<(AccountRecord, Caseload)>> = HashMap::new();
    let mut managers: Vec<AccountRecord> = Vec::new();
    let mut officers: Vec<AccountRecord> = Vec::new();
    let mut idle_processors: Vec<AccountRecord> = Vec::new();
    for (org_id, _) in world.store.organisations().await? {
        for a in world.store.accounts_of_organisation(org_id).await? {
            if a.state != AccountState::Active {
                continue;
            }
            if a.role == Role::Manager {
                managers.push(a);
                continue;
            }
            if a.role == Role::Officer && a.kind == OrganisationKind::FranceTravail {
                officers.push(a);
                continue;
            }
            if a.role != Role::Agent {
                continue;
            }
            let mut caseload = Vec::new();
            let mut after = PersonId::new(0);
            loop {
                let page = world
                    .store
                    .caseload(org_id, a.account_id, None, start, after, 10_000)
                    .await?;
                let Some(last) = page.last() else { break };
                after = last.person_id;
                caseload.extend(page.iter().map(|e| (e.person_id.get(), e.purpose)));
            }
            caseload.dedup_by_key(|e| e.0);
            if !caseload.is_empty() {
                by_kind.entry(a.kind).or_default().push((a, caseload));
            } else if a.kind == OrganisationKind::Processor {
                idle_processors.push(a);
            }
        }
    }
    // Processors work in lots; if none is live this week, one is
    // imported, as France Travail does when it sends a lot.
    if !by_kind.contains_key(&OrganisationKind::Processor)
        && let Some(p) = idle_processors.pop()
    {
        let lot = grant_lot(world, &p, start).await?;
        by_kind.insert(OrganisationKind::Processor, vec![(p, lot)]);
    }
    for v in by_kind.values_mut() {
        // Largest caseloads last: `pop` takes them first.
        v.sort_by_key(|(a, c)| (c.len(), std::cmp::Reverse(a.account_id)));
    }
    let mut by_org: BTreeMap<OrganisationId, Vec<(AccountRecord, Caseload)>> = BTreeMap::new();
    for v in by_kind.values() {
        for (a, c) in v {
            by_org
                .entry(a.organisation_id)
                .or_default()
                .push((a.clone(), c.clone()));
        }
    }
    let mut teams: Vec<_> = by_org.into_values().collect();
    for t in &mut teams {
        t.sort_by_key(|(a, _)| a.account_id);
    }
    teams.sort_by_key(|t| std::cmp::Reverse(t.len()));
    let now = world.clock.now();
    let mut made = 0u32;
    let mut take = |kind: OrganisationKind| by_kind.get_mut(&kind).and_then(Vec::pop);
    // Normal accounts: of each kind as the traffic model asks, any other
    // partner kind when the population has no more of one.
    let month = NormalMonth::new(traffic(accounts, start, 0))?;
    let mut picked = Vec::new();
    for t in month.accounts() {
        let got = take(t.kind).or_else(|| {
            [
                OrganisationKind::FranceTravail,
                OrganisationKind::CapEmploi,
                OrganisationKind::MissionLocale,
                OrganisationKind::TrainingProvider,
            ]
            .into_iter()
            .find_map(&mut take)
        });
        let Some(got) = got else { break };
        picked.push(got);
    }
    // The attacks need accounts of these kinds among the normal ones (with
    // a week of history); the traffic model's random kinds may lack some.
    // A missing one takes the place of an account of the most common kind.
    for (kind, want) in [
        (OrganisationKind::CapEmploi, 2),
        (OrganisationKind::TrainingProvider, 1),
        (OrganisationKind::Processor, 1),
    ] {
        while picked.iter().filter(|(a, _)| a.kind == kind).count() < want {
            let Some(got) = take(kind) else { break };
            let mut counts: HashMap<OrganisationKind, usize> = HashMap::new();
            for (a, _) in &picked {
                *counts.entry(a.kind).or_default() += 1;
            }
            let commonest = counts
                .iter()
                .filter(|(k, n)| **k != kind && **n > 2)
                .max_by_key(|(_, n)| **n)
                .map(|(k, _)| *k);
            match commonest.and_then(|k| picked.iter().rposition(|(a, _)| a.kind == k)) {
                Some(i) if picked.len() >= accounts as usize => picked[i] = got,
                _ => picked.push(got),
            }
        }
    }
    let manager = managers
        .into_iter()
        .find(|m| m.kind == OrganisationKind::MissionLocale)
        .map(|m| (m, Vec::new()));
    let mut normal = Vec::new();
    for (account, caseload) in picked {
        made += 1;
        normal.push(reader(world, account, caseload, now, made).await?);
    }
    let manager = match manager {
        Some((m, c)) => Some(reader(world, m, c, now, made + 1).await?),
        None => None,
    };
    Ok(Cast {
        normal,
        manager,
        teams,
    })
}

/// Gives `processor` a lot of 150 persons for document processing, valid
/// two weeks from `start`, as France Travail's lot import does (the
/// registry's mandates, not an officer's grants: those are a few at a time,
/// under the guard's quota).
async fn grant_lot(
    world: &World,
    processor: &AccountRecord,
    start: NaiveDate,
) -> Result<Vec<(i64, Purpose)>> {
    let mut lot = Vec::new();
    for k in 0..150i64 {
        let person = 1 + (k * 7_919) % world.max_person.max(1);
        let granted = world
            .store
            .grant_mandate(rempart_storage::NewMandate {
                reference: rempart_domain::Reference::parse(&format!("LOT-EXERCICE-0001-{k}"))?,
                organisation_id: processor.organisation_id,
                account_id: Some(processor.account_id),
                person_id: PersonId::new(person),
                purpose: Purpose::DocumentProcessing,
                valid_from: start,
                valid_to: Some(start + Duration::days(14)),
                source: rempart_domain::Reference::parse("lot-exercice-0001")?,
            })
            .await;
        match granted {
            Ok(_) => {}
            // The same person twice in the lot, or shredded: skipped.
            Err(
                rempart_storage::StorageError::Refused { .. }
                | rempart_storage::StorageError::NotFound { .. },
            ) => continue,
            Err(e) => bail!("importing the processor's lot: {e}"),
        }
        lot.push((person, Purpose::DocumentProcessing));
    }
    lot.sort_unstable();
    lot.dedup();
    Ok(lot)
}

/// An account with a fresh credential and the `n`-th loopback network.
async fn reader(
    world: &World,
    account: AccountRecord,
    caseload: Vec<(i64, Purpose)>,
    now: DateTime<Utc>,
    n: u32,
) -> Result<Reader> {
    let credential = rempart_consult::issue_credential(
        &world.store,
        account.account_id,
        Duration::days(60),
        now,
    )
    .await
    .with_context(|| format!("a credential for account {}", account.account_id))?;
    Ok(Reader {
        token: credential.token.as_str().to_string(),
        client: client_from((n / 250 + 1) as u8, (n % 250) as u8)?,
        account,
        caseload,
    })
}

/// The same account's credential, used from another network (127.`a`.`b`.0/24).
fn hijacked(r: &Reader, a: u8, b: u8) -> Result<Reader> {
    Ok(Reader {
        account: r.account.clone(),
        token: r.token.clone(),
        client: client_from(a, b)?,
        caseload: r.caseload.clone(),
    })
}

fn traffic(accounts: u32, start: NaiveDate, seed: u64) -> TrafficOptions {
    TrafficOptions {
        accounts,
        start,
        days: DAYS,
        seed,
    }
}

/// One attack of the timeline.
struct Attack {
    name: &'static str,
    /// When each move happens.
    schedule: Vec<DateTime<Utc>>,
    kind: AttackKind,
    tally: Tally,
    /// Its targets: records before containment, seconds to containment,
    /// and the instant by which the guard must have alerted, if any.
    targets: Targets,
}

#[derive(Clone, Copy)]
struct Targets {
    records: u64,
    secs: f64,
    alerted_by: Option<DateTime<Utc>>,
}

impl Targets {
    const SEED: Targets = Targets {
        records: MAX_RECORDS_BEFORE_CONTAINMENT,
        secs: MAX_SECONDS_TO_CONTAINMENT,
        alerted_by: None,
    };
}

enum AttackKind {
    /// Reads by a hijacked credential from a new network.
    Bulk {
        reader: Reader,
        scope: HashSet<i64>,
        seed: u64,
    },
    Infostealer(Box<Infostealer>),
    Manager {
        reader: Reader,
        requested: Vec<AccountId>,
        scope: HashSet<i64>,
    },
    /// The processor's normal reads are its attack surface: what it keeps.
    Processor {
        account: AccountId,
        held: Vec<(i64, Value)>,
    },
    /// Several hijacked accounts driven from one machine: move `n` reads
    /// `plan[n]` (reader, person, purpose), always of the reader's own
    /// caseload.
    Fleet {
        readers: Vec<Reader>,
        plan: Vec<(usize, i64, Purpose)>,
    },
}

struct Infostealer {
    victim: Reader,
    victim_key: DeviceKey,
    secret: TotpSecret,
    cookie: Option<String>,
    /// The session's public handle (in the page, so the thief has it too).
    handle: String,
    used_code: Option<String>,
    thief: reqwest::Client,
    thief_key: DeviceKey,
}

async fn run(
    args: &DrillArgs,
    world: &mut World,
    vault: &rempart_vault::Vault,
    start: NaiveDate,
) -> Result<()> {
    let Cast {
        normal,
        manager,
        teams,
    } = cast(world, args.accounts, start).await?;
    println!(
        "normal accounts: {}; server {} (clock simulated)",
        normal.len(),
        world.base
    );
    let of_kind = |kind: OrganisationKind| {
        normal
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.account.kind == kind)
            .map(|(i, _)| i)
    };
    let mut attacks: Vec<Attack> = Vec::new();
    // Normal accounts whose owner no longer works once the attack starts.
    let mut hijacked_from: HashMap<usize, DateTime<Utc>> = HashMap::new();
    if args.scenario.includes(Scenario::CapEmploi2024) {
        let mut advisors = of_kind(OrganisationKind::CapEmploi);
        let (Some(fast), Some(slow)) = (advisors.next(), advisors.next()) else {
            bail!(
                "fewer than two Cap emploi advisors among the normal accounts: use more --accounts or --persons"
            );
        };
        for (name, victim, net, t0, every_ms, n) in [
            (
                "cap-emploi-2024 (fast)",
                fast,
                66,
                local(start, 5, 21, 0),
                50i64,
                1_200u64,
            ),
            (
                "cap-emploi-2024 (slow)",
                slow,
                67,
                local(start, 8, 21, 30),
                20_000,
                180,
            ),
        ] {
            let reader = hijacked(&normal[victim], net, 1)?;
            let scope = reader.caseload.iter().map(|e| e.0).collect();
            hijacked_from.insert(victim, t0);
            attacks.push(Attack {
                name,
                schedule: (0..n)
                    .map(|i| t0 + Duration::milliseconds(i as i64 * every_ms))
                    .collect(),
                tally: Tally::default(),
                targets: Targets::SEED,
                kind: AttackKind::Bulk {
                    reader,
                    scope,
                    seed: args.seed ^ n,
                },
            });
        }
    }
    if args.scenario.includes(Scenario::Kairos2025) {
        let Some(victim) = of_kind(OrganisationKind::TrainingProvider).next() else {
            bail!(
                "no training provider's advisor among the normal accounts: use more --accounts or --persons"
            );
        };
        let v = &normal[victim];
        let secret = seed_factors(world, vault, v.account.account_id).await?;
        let t0 = local(start, 7, 10, 0);
        let theft = local(start, 7, 10, 20);
        let mut schedule = vec![t0, t0 + Duration::seconds(30)];
        schedule.extend((0..16).map(|i| theft + Duration::seconds(i * 5)));
        // She goes on working, within her session's idle time.
        schedule.push(local(start, 7, 10, 25));
        attacks.push(Attack {
            name: "kairos-2025",
            schedule,
            tally: Tally::default(),
            targets: Targets::SEED,
            kind: AttackKind::Infostealer(Box::new(Infostealer {
                // Her PC: the network her normal work comes from.
                victim: Reader {
                    account: v.account.clone(),
                    token: v.token.clone(),
                    client: v.client.clone(),
                    caseload: v.caseload.clone(),
                },
                victim_key: DeviceKey::new(),
                secret,
                cookie: None,
                handle: String::new(),
                used_code: None,
                thief: client_from(200, 1)?,
                thief_key: DeviceKey::new(),
            })),
        });
    }
    if args.scenario.includes(Scenario::MissionsLocales2025) {
        let Some(m) = &manager else {
            bail!("the population has no Mission Locale manager: use more --persons");
        };
        let reader = hijacked(m, 201, 1)?;
        let scope = reader.caseload.iter().map(|e| e.0).collect();
        let t0 = local(start, 7, 11, 0);
        attacks.push(Attack {
            name: "missions-locales-2025",
            schedule: (0..60).map(|i| t0 + Duration::seconds(i * 10)).collect(),
            tally: Tally::default(),
            targets: Targets::SEED,
            kind: AttackKind::Manager {
                reader,
                requested: Vec::new(),
                scope,
            },
        });
    }
    if args.scenario.includes(Scenario::Majorel2023) {
        let Some(p) = of_kind(OrganisationKind::Processor).next() else {
            bail!(
                "no processor account among the normal accounts: use more --accounts or --persons"
            );
        };
        attacks.push(Attack {
            name: "majorel-2023",
            schedule: Vec::new(),
            tally: Tally::default(),
            targets: Targets::SEED,
            kind: AttackKind::Processor {
                account: normal[p].account.account_id,
                held: Vec::new(),
            },
        });
    }
    fleets(
        world,
        args.scenario,
        &teams,
        &normal,
        start,
        &mut attacks,
        &mut hijacked_from,
    )
    .await?;
    for a in &mut attacks {
        a.tally.accounts.extend(attack_accounts(&a.kind));
        // The Kairos victim's own login and first page come before the theft.
        let first_hostile = if matches!(a.kind, AttackKind::Infostealer(_)) {
            2
        } else {
            0
        };
        a.tally.since = a.schedule.get(first_hostile).copied();
    }
    let processor = attacks
        .iter()
        .position(|a| matches!(a.kind, AttackKind::Processor { .. }));
    let ledger_from = leaf_count(world).await?;

    // The week, one day at a time: normal visits and attack moves in
    // timeline order.
    let mut month = NormalMonth::new(traffic(args.accounts, start, args.seed))?;
    let mut fig = Normal::default();
    let started = std::time::Instant::now();
    for d in 0..DAYS {
        let day_start = local(start, d, 0, 0);
        let day_end = local(start, d + 1, 0, 0);
        let mut steps: Vec<(DateTime<Utc>, Step)> = month
            .day(d)
            .into_iter()
            .filter(|v| v.account < normal.len())
            .filter(|v| hijacked_from.get(&v.account).is_none_or(|t| v.at < *t))
            .map(|v| {
                (
                    v.at,
                    Step::Normal {
                        reader: v.account,
                        person: v.person_id.get(),
                    },
                )
            })
            .collect();
        for (i, a) in attacks.iter().enumerate() {
            for (n, at) in a.schedule.iter().enumerate() {
                if *at >= day_start && *at < day_end {
                    steps.push((*at, Step::Attack { attack: i, n }));
                }
            }
        }
        steps.sort_by_key(|s| s.0);
        let mut worked = vec![false; normal.len()];
        for (at, step) in steps {
            world.at(at).await?;
            match step {
                Step::Normal { reader, person } => {
                    let r = &normal[reader];
                    worked[reader] = true;
                    let (p, purpose) = pick(&r.caseload, person);
                    let (status, body) = world.read(r, p, purpose).await?;
                    fig.reads += 1;
                    if status == 200 {
                        fig.served += 1;
                        if let Some(AttackKind::Processor { account, held }) =
                            processor.map(|i| &mut attacks[i].kind)
                            && *account == r.account.account_id
                        {
                            held.push((p, body));
                        }
                    } else {
                        *fig.refused
                            .entry(format!("{status} {}", code(&body)))
                            .or_default() += 1;
                    }
                }
                Step::Attack { attack, n } => {
                    act(world, &mut attacks[attack], n, at).await?;
                }
            }
        }
        fig.account_days += worked.iter().filter(|w| **w).count() as u64;
        world.at(day_end).await?;
        world.guard.sync(day_end).await.context("guard sync")?;
        world.last_sync = day_end.timestamp();
    }
    let took = started.elapsed();
    for a in &mut attacks {
        finish(a, vault).await?;
    }
    report(world, &attacks, &normal, &fig, ledger_from, took).await
}

fn attack_accounts(kind: &AttackKind) -> Vec<AccountId> {
    match kind {
        AttackKind::Bulk { reader, .. } | AttackKind::Manager { reader, .. } => {
            vec![reader.account.account_id]
        }
        AttackKind::Processor { account, .. } => vec![*account],
        AttackKind::Infostealer(i) => vec![i.victim.account.account_id],
        AttackKind::Fleet { readers, .. } => readers.iter().map(|r| r.account.account_id).collect(),
    }
}

/// The hijacked accounts of a team, used from the attacker's machine
/// (127.`net`.1.0/24), or from each account's own network with `None`:
/// the normal reader's credential when the account works in the normal
/// traffic (its owner stops at `t0`), a fresh one for a dormant account.
async fn hijack_team(
    world: &World,
    members: &[(AccountRecord, Caseload)],
    normal: &[Reader],
    hijacked_from: &mut HashMap<usize, DateTime<Utc>>,
    t0: DateTime<Utc>,
    net: Option<u8>,
) -> Result<Vec<Reader>> {
    // Dormant accounts first: no history of their own to betray them,
    // only what the organisation sees.
    let mut members: Vec<_> = members.iter().collect();
    members.sort_by_key(|(a, _)| normal.iter().any(|r| r.account.account_id == a.account_id));
    let mut readers = Vec::new();
    for (account, caseload) in members {
        let own = match normal
            .iter()
            .position(|r| r.account.account_id == account.account_id)
        {
            Some(i) => {
                hijacked_from.insert(i, t0);
                let own = &normal[i];
                match net {
                    Some(net) => hijacked(own, net, 1)?,
                    None => Reader {
                        account: own.account.clone(),
                        token: own.token.clone(),
                        client: own.client.clone(),
                        caseload: own.caseload.clone(),
                    },
                }
            }
            None => {
                let now = world.clock.now();
                // Its own network: one of 127.100.x.0/24.
                let n = 25_000 + account.account_id.get().rem_euclid(20_000) as u32;
                let r = reader(world, account.clone(), caseload.clone(), now, n).await?;
                match net {
                    Some(net) => hijacked(&r, net, 1)?,
                    None => r,
                }
            }
        };
        readers.push(own);
    }
    Ok(readers)
}

/// The attacks through many accounts: `distributed-agency`,
/// `slow-agency`, `shared-device` (see the module doc). Each takes
/// organisations of its own, in `teams` order (largest first), so that
/// one attack's containment says nothing of another's.
async fn fleets(
    world: &World,
    scenario: Scenario,
    teams: &[Vec<(AccountRecord, Caseload)>],
    normal: &[Reader],
    start: NaiveDate,
    attacks: &mut Vec<Attack>,
    hijacked_from: &mut HashMap<usize, DateTime<Utc>>,
) -> Result<()> {
    // Organisations the seed attacks touch are left to them.
    let taken: HashSet<OrganisationId> = attacks
        .iter()
        .flat_map(|a| attack_accounts(&a.kind))
        .filter_map(|id| {
            normal
                .iter()
                .find(|r| r.account.account_id == id)
                .map(|r| r.account.organisation_id)
        })
        .collect();
    let mut free = teams.iter().filter(|t| {
        t.first()
            .is_some_and(|(a, _)| !taken.contains(&a.organisation_id))
    });
    let mut next_team = |min: usize, what: &str| match free.next() {
        Some(t) if t.len() >= min => Ok(t),
        _ => Err(anyhow::anyhow!(
            "no organisation left with {min} working agent accounts for {what}: use more --persons"
        )),
    };
    // Up to `per_account` persons of each reader's own caseload, one
    // account after the other.
    let bulk_plan = |readers: &[Reader], per_account: usize| {
        let mut plan = Vec::new();
        for (i, r) in readers.iter().enumerate() {
            for (p, purpose) in r.caseload.iter().take(per_account) {
                plan.push((i, *p, *purpose));
            }
        }
        plan
    };
    let every = |t0: DateTime<Utc>, ms: i64, n: usize| {
        (0..n)
            .map(|i| t0 + Duration::milliseconds(i as i64 * ms))
            .collect::<Vec<_>>()
    };
    if scenario.includes(Scenario::DistributedAgency) {
        for (name, t0, net, targets) in [
            (
                "distributed-agency (off hours)",
                local(start, 5, 22, 0),
                70u8,
                Targets::SEED,
            ),
            (
                "distributed-agency (office hours)",
                local(start, 7, 14, 0),
                71,
                Targets {
                    records: 200,
                    secs: 600.0,
                    alerted_by: None,
                },
            ),
        ] {
            let team = next_team(3, name)?;
            // From each account's own usual network (a machine inside the
            // agency, or proxies next to each advisor): nothing new per
            // account, only what the organisation sees.
            let readers = hijack_team(world, team, normal, hijacked_from, t0, None).await?;
            let _ = net;
            let plan = bulk_plan(&readers, 35);
            attacks.push(Attack {
                name,
                schedule: every(t0, 20, plan.len()),
                tally: Tally::default(),
                kind: AttackKind::Fleet { readers, plan },
                targets,
            });
        }
    }
    if scenario.includes(Scenario::SlowAgency) {
        let team = next_team(3, "slow-agency")?;
        let t0 = local(start, 2, 10, 0);
        let readers = hijack_team(world, team, normal, hijacked_from, t0, Some(72)).await?;
        let mut plan = Vec::new();
        let mut schedule = Vec::new();
        let mut next = vec![0usize; readers.len()];
        for d in [2u32, 3, 4, 7, 8] {
            for hh in [10u32, 11, 14, 15, 16] {
                let mut at = local(start, d, hh, 0);
                for (i, r) in readers.iter().enumerate() {
                    for _ in 0..2 {
                        if let Some((p, purpose)) = r.caseload.get(next[i]) {
                            plan.push((i, *p, *purpose));
                            schedule.push(at);
                            next[i] += 1;
                            at += Duration::seconds(30);
                        }
                    }
                }
            }
        }
        attacks.push(Attack {
            name: "slow-agency",
            schedule,
            tally: Tally::default(),
            kind: AttackKind::Fleet { readers, plan },
            // What it obtains is reported; the target is an alert within
            // its first working day.
            targets: Targets {
                records: u64::MAX,
                secs: f64::INFINITY,
                alerted_by: Some(local(start, 2, 18, 0)),
            },
        });
    }
    if scenario.includes(Scenario::SharedDevice) {
        let a = next_team(1, "shared-device")?;
        let b = next_team(1, "shared-device")?;
        let t0 = local(start, 7, 16, 0);
        // Two accounts of each, in turn: A, B, A, B.
        let mut members = Vec::new();
        for k in 0..2 {
            for t in [a, b] {
                if let Some(m) = t.get(k) {
                    members.push(m.clone());
                }
            }
        }
        let readers = hijack_team(world, &members, normal, hijacked_from, t0, Some(73)).await?;
        let plan = bulk_plan(&readers, 35);
        attacks.push(Attack {
            name: "shared-device",
            schedule: every(t0, 1_000, plan.len()),
            tally: Tally::default(),
            kind: AttackKind::Fleet { readers, plan },
            targets: Targets::SEED,
        });
    }
    Ok(())
}

/// The traffic model's person `n`, as one of the reader's real persons.
fn pick(caseload: &[(i64, Purpose)], n: i64) -> (i64, Purpose) {
    let i = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
    caseload[(i % caseload.len().max(1) as u64) as usize]
}

/// Gives the victim a password and a TOTP secret, as her enrolment did.
async fn seed_factors(
    world: &World,
    vault: &rempart_vault::Vault,
    account: AccountId,
) -> Result<TotpSecret> {
    let hasher = PasswordHasher::new(HashParams::RECOMMENDED)?;
    let hash = hasher.hash(&Password::new(PASSWORD.to_string())?)?;
    let now = world.clock.now();
    world
        .auth
        .set_password(account, &hash.to_phc_string(), now)
        .await?;
    let secret = TotpSecret::generate()?;
    let sealed = rempart_consult::login::seal_totp_secret(vault, account, &secret)?;
    world
        .auth
        .set_totp(StoredTotp {
            account_id: account,
            sealed_secret: sealed,
            last_step: None,
            enrolled_at: now,
        })
        .await?;
    Ok(secret)
}

/// The code the victim's authenticator app shows at `at`.
fn code_at(secret: &TotpSecret, at: DateTime<Utc>) -> Result<String> {
    let totp = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_skew(0)
        .with_secret(totp_rs::Secret::new_stack(*secret.expose_bytes()))
        .build()
        .map_err(|e| anyhow::anyhow!("TOTP: {e}"))?;
    Ok(totp
        .generate(u64::try_from(at.timestamp()).unwrap_or(0))
        .to_string())
}

/// One move of an attack.
async fn act(world: &mut World, a: &mut Attack, n: usize, at: DateTime<Utc>) -> Result<()> {
    match &mut a.kind {
        AttackKind::Bulk {
            reader,
            scope,
            seed,
        } => {
            // Half from the caseload, half anywhere in the registry.
            let mut x = seed
                .wrapping_add(n as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x ^= x >> 29;
            let person = if n.is_multiple_of(2) && !reader.caseload.is_empty() {
                reader.caseload[(x % reader.caseload.len() as u64) as usize].0
            } else {
                1 + (x % world.max_person.max(1) as u64) as i64
            };
            let (status, body) = world.read(reader, person, Purpose::FollowUp).await?;
            let served = status == 200;
            a.tally
                .record(at, status, &code(&body), served, !scope.contains(&person));
        }
        AttackKind::Infostealer(s) => infostealer(world, &mut a.tally, s, n, at).await?,
        AttackKind::Manager {
            reader,
            requested,
            scope,
        } => {
            if n < 5 {
                // Five accounts, in a burst.
                let resp = reader
                    .client
                    .post(format!(
                        "{}/api/v1/organisations/{}/account-requests",
                        world.base, reader.account.organisation_id
                    ))
                    .bearer_auth(&reader.token)
                    .json(&json!({"login": format!("ml.renfort.{n}"), "role": "agent"}))
                    .send()
                    .await?;
                let (status, body) = answer(resp).await?;
                if let Some(id) = body["id"].as_i64() {
                    requested.push(AccountId::new(id));
                }
                a.tally.record(at, status, &code(&body), false, false);
            } else if n < 10 {
                // Approving its own requests: four eyes say no.
                let Some(&id) = requested.get(n - 5) else {
                    return Ok(());
                };
                let resp = reader
                    .client
                    .post(format!(
                        "{}/api/v1/account-requests/{id}/approve",
                        world.base
                    ))
                    .bearer_auth(&reader.token)
                    .send()
                    .await?;
                let (status, body) = answer(resp).await?;
                a.tally.record(at, status, &code(&body), false, false);
            } else {
                // Reading through the accounts it controls: none of the new
                // ones can get a credential, so its own.
                if n == 10 {
                    let mut still_requested = 0;
                    for &id in requested.iter() {
                        if world
                            .store
                            .account_by_id(id)
                            .await?
                            .is_some_and(|a| a.state == AccountState::Requested)
                        {
                            still_requested += 1;
                        }
                        let refused = rempart_consult::issue_credential(
                            &world.store,
                            id,
                            Duration::days(1),
                            at,
                        )
                        .await
                        .is_err();
                        if !refused {
                            a.tally
                                .missed
                                .push(format!("account {id} got a credential before approval"));
                        }
                    }
                    a.tally.notes.push(format!(
                        "{} accounts requested; {still_requested} still awaiting an officer from another organisation, none with a credential",
                        requested.len()
                    ));
                    if requested.len() != 5 || still_requested != 5 {
                        a.tally
                            .missed
                            .push("the requested accounts are not all awaiting approval".into());
                    }
                }
                let mut x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                x ^= x >> 31;
                let person = 1 + (x % world.max_person.max(1) as u64) as i64;
                let (status, body) = world.read(reader, person, Purpose::FollowUp).await?;
                let served = status == 200;
                a.tally
                    .record(at, status, &code(&body), served, !scope.contains(&person));
            }
        }
        AttackKind::Processor { .. } => {}
        AttackKind::Fleet { readers, plan } => {
            let Some(&(r, person, purpose)) = plan.get(n) else {
                return Ok(());
            };
            let (status, body) = world.read(&readers[r], person, purpose).await?;
            a.tally
                .record(at, status, &code(&body), status == 200, false);
            if status == 200 {
                *a.tally
                    .served_on
                    .entry(at.format("%a").to_string())
                    .or_default() += 1;
            }
        }
    }
    Ok(())
}

/// The Kairos moves: 0 the victim logs in, 1 she opens her caseload, 2–17
/// the thief, 18 the victim again.
async fn infostealer(
    world: &World,
    tally: &mut Tally,
    s: &mut Infostealer,
    n: usize,
    at: DateTime<Utc>,
) -> Result<()> {
    let dossiers = format!("{}/portail/f/dossiers", world.public);
    let purpose = s.victim.caseload.first().map_or(Purpose::Training, |e| e.1);
    let get_dossiers = |client: &reqwest::Client, cookie: &str, proof: Option<String>| {
        let mut req = client
            .get(format!(
                "{}/portail/f/dossiers?finalite={}",
                world.base,
                purpose.as_str()
            ))
            .header("Cookie", format!("__Host-rempart_session={cookie}"));
        if let Some(p) = proof {
            req = req.header("DPoP", p);
        }
        req.send()
    };
    match n {
        0 => {
            let code = code_at(&s.secret, at)?;
            let (status, set_cookie, handle) = password_login(
                world,
                &s.victim.client,
                &s.victim_key,
                s.victim.account.login.as_str(),
                PASSWORD,
                &code,
                at,
            )
            .await?;
            s.cookie = set_cookie.as_deref().and_then(cookie_value);
            s.handle = handle;
            s.used_code = Some(code);
            tally.notes.push(format!(
                "the victim's own login (password + TOTP): HTTP {status}"
            ));
            if s.cookie.is_none() {
                tally.missed.push("the victim could not log in".into());
            }
        }
        1 | 18 => {
            let Some(cookie) = s.cookie.clone() else {
                return Ok(());
            };
            let proof = s.victim_key.proof("GET", &dossiers, Some(&s.handle), at);
            let (status, body) =
                answer(get_dossiers(&s.victim.client, &cookie, Some(proof)).await?).await?;
            tally.notes.push(format!(
                "the victim opens her caseload from her PC{}: HTTP {status} {}",
                if n == 18 { " after the theft" } else { "" },
                code(&body)
            ));
            if n == 1 && status != 200 {
                tally
                    .missed
                    .push("the victim could not open her caseload".into());
            }
        }
        _ => {
            let cookie = s.cookie.clone().unwrap_or_default();
            let k = n - 2;
            let (status, label) = match k {
                0 => {
                    let r = get_dossiers(&s.thief, &cookie, None).await?;
                    (r.status().as_u16(), "copied cookie, no device proof")
                }
                1 => {
                    let proof = s.thief_key.proof("GET", &dossiers, Some(&s.handle), at);
                    let r = get_dossiers(&s.thief, &cookie, Some(proof)).await?;
                    (
                        r.status().as_u16(),
                        "copied cookie, proof by the thief's key",
                    )
                }
                _ => {
                    let (code, label) = match k {
                        2 => (
                            s.used_code.clone().unwrap_or_default(),
                            "stolen password with the code she typed (replay)",
                        ),
                        3 => (String::new(), "stolen password, no code"),
                        _ => (
                            format!("{:06}", (k as u64 * 7_919_113) % 1_000_000),
                            "stolen password, guessed code",
                        ),
                    };
                    let login = s.victim.account.login.as_str();
                    let (st, _, _) =
                        password_login(world, &s.thief, &s.thief_key, login, PASSWORD, &code, at)
                            .await?;
                    (st, label)
                }
            };
            let served = status == 200;
            tally.record(at, status, label, served, served);
        }
    }
    Ok(())
}

fn cookie_value(set_cookie: &str) -> Option<String> {
    let first = set_cookie.split(';').next()?;
    let (name, value) = first.split_once('=')?;
    (name == "__Host-rempart_session").then(|| value.to_string())
}

/// The login page's password form: a ceremony, then the form, both with
/// proofs by `key`. The status, the session cookie if any, and the
/// session's handle.
async fn password_login(
    world: &World,
    client: &reqwest::Client,
    key: &DeviceKey,
    login: &str,
    password: &str,
    code: &str,
    at: DateTime<Utc>,
) -> Result<(u16, Option<String>, String)> {
    let defi = format!("{}/connexion/defi", world.public);
    let resp = client
        .post(format!("{}/connexion/defi", world.base))
        .header("DPoP", key.proof("POST", &defi, None, at))
        .json(&json!({"kind": "password"}))
        .send()
        .await?;
    let (status, body) = answer(resp).await?;
    let Some(ceremony) = body["ceremony"].as_str() else {
        return Ok((status, None, String::new()));
    };
    let form = format!("{}/connexion/mot-de-passe", world.public);
    let resp = client
        .post(format!("{}/connexion/mot-de-passe", world.base))
        .header("DPoP", key.proof("POST", &form, None, at))
        .json(&json!({"ceremony": ceremony, "login": login, "password": password, "code": code}))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (_, body) = answer(resp).await?;
    let handle = body["handle"].as_str().unwrap_or_default().to_string();
    Ok((status, set_cookie, handle))
}

/// What an attack's end adds: the processor's stolen store is examined.
/// What an attack's end adds: the processor's stolen store is searched
/// for each person's real NIR (with or without its key), names and birth
/// date, read from the vault.
async fn finish(a: &mut Attack, vault: &rempart_vault::Vault) -> Result<()> {
    let AttackKind::Processor { held, .. } = &a.kind else {
        return Ok(());
    };
    let (mut identities, mut nir_clear, mut tokens) = (0u64, 0u64, 0u64);
    let groups = [FieldGroup::Identity, FieldGroup::Nir];
    for (person, body) in held.iter() {
        let text = body.to_string();
        if body["nir"]["view"].as_str() == Some("token") {
            tokens += 1;
        }
        let rempart_vault::Read::Found(view) = vault.read(PersonId::new(*person), &groups).await?
        else {
            continue;
        };
        if let Some(nir) = &view.nir
            && text.contains(&nir.as_str()[..13])
        {
            nir_clear += 1;
        }
        if let Some(id) = &view.identity
            && (contains_name(&text, id.nom.as_str())
                || contains_name(&text, id.prenom.as_str())
                || text.contains(&id.date_naissance.format("%Y-%m-%d").to_string()))
        {
            identities += 1;
        }
    }
    a.tally.notes.push(format!(
        "its stolen store: {} answers; {identities} with an identity, {nir_clear} with a NIR in clear, {tokens} pseudonymous NIR tokens",
        held.len()
    ));
    if identities > 0 || nir_clear > 0 || tokens == 0 {
        a.tally
            .missed
            .push("the processor's store held identities or NIRs in clear".into());
    }
    Ok(())
}

/// The breach's exact scope, read from the ledger for the attack's
/// accounts over its window (from its first hostile move to one second
/// after its last; the whole timeline for a stolen store), against what
/// the answers to those accounts revealed in that window, as the drill's
/// client saw them: persons missed, persons extra, and persons whose
/// exposure the scope calls pseudonymous when the answers were not (or
/// the reverse). Each is a missed target.
async fn scope_check(world: &World, a: &Attack) -> Result<(String, Vec<String>)> {
    let compromised: Vec<Compromised> = a
        .tally
        .accounts
        .iter()
        .map(|id| Compromised::Account(*id))
        .collect();
    if compromised.is_empty() {
        return Ok((
            "breach scope:                          no account to scope".into(),
            Vec::new(),
        ));
    }
    let from = a.tally.since.unwrap_or(DateTime::UNIX_EPOCH);
    let to = a
        .schedule
        .last()
        .copied()
        .unwrap_or_else(|| world.clock.now())
        + Duration::seconds(1);
    let window = Window::new(from, to).context("the attack's window")?;
    world.ledger.settle_index().await?;
    let signed = world.signer.checkpoint_now().await?;
    let started = std::time::Instant::now();
    let scope = rempart_breach::scope_at(
        world.ledger.as_ref(),
        &compromised,
        window,
        signed.checkpoint.size,
    )
    .await?;
    let took = started.elapsed().as_secs_f64();
    // Person → pseudonymous in every answer.
    let mut obtained: BTreeMap<i64, bool> = BTreeMap::new();
    {
        let log = world
            .revealed
            .lock()
            .map_err(|_| anyhow::anyhow!("the drill's log of answers is poisoned"))?;
        for r in log
            .iter()
            .filter(|r| a.tally.accounts.contains(&r.account) && r.at >= from && r.at < to)
        {
            let p = obtained.entry(r.person).or_insert(true);
            *p &= r.pseudonymous;
        }
    }
    let listed: BTreeMap<i64, bool> = scope
        .persons
        .iter()
        .map(|(p, e)| (p.get(), e.pseudonymous_only()))
        .collect();
    let missed_persons = obtained.keys().filter(|p| !listed.contains_key(p)).count();
    let extra = listed.keys().filter(|p| !obtained.contains_key(p)).count();
    let disagree = listed
        .iter()
        .filter(|(p, pseudo)| obtained.get(p).is_some_and(|o| o != *pseudo))
        .count();
    let line = format!(
        "breach scope (ledger, {took:.2} s):        {} persons, {} pseudonymous only (no Art. 34 notice), {} to notify; the answers revealed {}: missed {missed_persons}, extra {extra}, pseudonymity disagreeing {disagree} (target 0, 0, 0)",
        scope.persons.len(),
        scope.pseudonymous_only(),
        scope.persons.len() as u64 - scope.pseudonymous_only(),
        obtained.len(),
    );
    let mut missed = Vec::new();
    if missed_persons > 0 || extra > 0 || disagree > 0 {
        missed.push(format!(
            "the ledger's scope missed {missed_persons}, added {extra} and classed {disagree} persons otherwise than the answers"
        ));
    }
    let (report_line, report_missed) =
        breach_report(world, a, compromised, window, &scope, &signed.note).await?;
    missed.extend(report_missed);
    Ok((format!("{line}\n{report_line}"), missed))
}

/// The attack as the breach register sees it: an incident for its
/// accounts over its window, the draft notification to the CNIL, and the
/// notices queued for every person to inform. A person to inform left
/// without a notice is a missed target.
async fn breach_report(
    world: &World,
    a: &Attack,
    compromised: Vec<Compromised>,
    window: Window,
    scope: &rempart_breach::Scope,
    checkpoint: &str,
) -> Result<(String, Vec<String>)> {
    use rempart_breach::{Art33Draft, Controller, DraftFacts, NoticeContext};
    use rempart_domain::incident::{Event, Milestone, NewIncident};
    let now = world.clock.now();
    let id = world
        .stores
        .incidents
        .open_incident(
            &NewIncident {
                title: format!("Exercice {} : comptes détournés", a.name),
                compromised,
                window,
                aware_at: now,
                opened_by: "drill".into(),
            },
            now,
        )
        .await?;
    world
        .stores
        .incidents
        .record_event(
            id,
            &Event::happening(
                now,
                Milestone::Contained,
                Some("comptes suspendus par la garde".into()),
            ),
        )
        .await?;
    let incident = world
        .stores
        .incidents
        .incident(id)
        .await?
        .context("the drill's incident")?;
    let controller = Controller {
        name: "France Travail".into(),
        dpo: "dpo@exemple.invalid".into(),
    };
    let organisations = crate::notices::organisation_labels(&world.store).await?;
    let context = NoticeContext {
        controller: controller.clone(),
        measures:
            "Les comptes utilisés ont été suspendus dès la détection, et leurs accès révoqués."
                .into(),
    };
    let prepared =
        crate::notices::prepare_notices(&world.stores, &world.vault, id, scope, &context, false)
            .await?;
    let progress = world.stores.notices.notice_progress(id).await?;
    let draft = Art33Draft::new(
        DraftFacts {
            incident: &incident,
            scope,
            checkpoint,
            organisations: &organisations,
            departements: Some(&progress.by_departement),
        },
        &controller,
        None,
        now,
    )?;
    let to_inform = scope.persons.len() as u64 - scope.pseudonymous_only();
    let mut missed = Vec::new();
    if prepared.queued + prepared.unreachable != to_inform {
        missed.push(format!(
            "{}: {to_inform} persons to inform, {} notices queued",
            a.name, prepared.queued
        ));
    }
    if let Some(dir) = &world.report {
        // "cap-emploi-2024 (fast)" → "cap-emploi-2024-fast".
        let slug = a
            .name
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        std::fs::write(dir.join(format!("{slug}.cnil.md")), draft.to_markdown())?;
        std::fs::write(
            dir.join(format!("{slug}.cnil.json")),
            serde_json::to_string_pretty(&draft)? + "\n",
        )?;
        // The first person's notice, whichever its channel.
        let mut first = None;
        for channel in rempart_domain::incident::NoticeChannel::ALL {
            first = world
                .stores
                .notices
                .pending_notices(id, channel, PersonId::new(i64::MIN), 1)
                .await?
                .into_iter()
                .next();
            if first.is_some() {
                break;
            }
        }
        if let Some(n) = &first {
            let text = crate::notices::text_of(n, &context)?;
            std::fs::write(
                dir.join(format!("{slug}.notice.txt")),
                format!("Objet : {}\n\n{}", text.subject, text.body),
            )?;
        }
    }
    let line = format!(
        "breach report:                         incident {id}, CNIL draft {} ({} h left); {} notices queued ({} e-mail, {} letter), {} exempt (pseudonymous only), {} unreachable",
        match draft.phase {
            rempart_breach::Phase::Initial => "initial",
            rempart_breach::Phase::Complementary => "complementary",
        },
        draft.clock.hours_left,
        prepared.queued,
        prepared.email,
        prepared.letter,
        prepared.exempt,
        prepared.unreachable
    );
    Ok((line, missed))
}

/// Whether `text` holds `name` (names of one or two letters would match
/// by chance: they are looked for in quotes).
fn contains_name(text: &str, name: &str) -> bool {
    if name.chars().count() < 3 {
        text.contains(&format!("\"{name}\""))
    } else {
        text.contains(name)
    }
}

async fn leaf_count(world: &World) -> Result<u64> {
    Ok(world.ledger.size().await?)
}

/// Alerts the account lifecycle wrote into the ledger since `from` (bursts
/// of account requests), per account.
async fn ledger_alerts(world: &World, from: u64) -> Result<HashMap<AccountId, u64>> {
    let mut out: HashMap<AccountId, u64> = HashMap::new();
    let end = world.ledger.size().await?;
    let mut at = from;
    while at < end {
        let rows = world.ledger.leaves(at, 10_000).await?;
        let Some(last) = rows.last() else { break };
        at = last.index + 1;
        for row in rows {
            let leaf = rempart_ledger::AuditLeaf::decode(&row.data)
                .with_context(|| format!("ledger leaf {}", row.index))?;
            if rempart_consult::is_alert(&leaf) {
                *out.entry(leaf.account).or_default() += 1;
            }
        }
    }
    Ok(out)
}

/// The figures of one attack.
struct Outcome {
    attempts: usize,
    beyond: u64,
    before_containment: u64,
    containment_secs: Option<f64>,
}

fn outcome(t: &Tally) -> Outcome {
    let beyond = t.attempts.iter().filter(|a| a.2).count() as u64;
    let served = t.attempts.iter().filter(|a| a.1).count() as u64;
    let first = t.attempts.first().map(|a| a.0);
    // Nothing served at all: contained at the first attempt.
    let last_served = t.attempts.iter().rposition(|a| a.1);
    // After the last record served: the guard's first refusal, or the
    // next attempt if the guard never had to speak.
    let contained_at = match last_served {
        None => first,
        Some(i) => {
            let after = &t.attempts[i + 1..];
            after.iter().find(|a| a.3).or(after.first()).map(|a| a.0)
        }
    };
    Outcome {
        attempts: t.attempts.len(),
        beyond,
        before_containment: served,
        containment_secs: match (first, contained_at) {
            (Some(f), Some(c)) => Some((c - f).num_milliseconds() as f64 / 1000.0),
            _ => None,
        },
    }
}

async fn report(
    world: &World,
    attacks: &[Attack],
    normal: &[Reader],
    fig: &Normal,
    ledger_from: u64,
    took: std::time::Duration,
) -> Result<()> {
    world
        .guard
        .sync(world.clock.now())
        .await
        .context("guard sync")?;
    let alerts = world
        .guard
        .alerts(&AlertQuery {
            limit: 1_000_000,
            ..AlertQuery::default()
        })
        .await?;
    let lifecycle = ledger_alerts(world, ledger_from).await?;
    // An alert on an attacked account from the attack's start is the
    // attack's; before it, or on any other account, it is a false alert.
    let attacked: HashMap<AccountId, DateTime<Utc>> = attacks
        .iter()
        .flat_map(|a| {
            a.tally
                .accounts
                .iter()
                .filter_map(|id| a.tally.since.map(|t| (*id, t)))
        })
        .collect();
    let normal_ids: HashSet<AccountId> = normal.iter().map(|r| r.account.account_id).collect();
    let mut missed = Vec::new();
    println!("simulated {DAYS} days in {:.1} s", took.as_secs_f64());
    for a in attacks {
        let o = outcome(&a.tally);
        let raised: Vec<_> = alerts
            .iter()
            .filter(|s| a.tally.accounts.contains(&s.alert.account_id))
            .filter(|s| a.tally.since.is_some_and(|t| s.alert.at >= t))
            .collect();
        println!("\n== {}", a.name);
        println!("attempts:                              {}", o.attempts);
        println!(
            "records beyond the legitimate scope:   {} (target 0)",
            o.beyond
        );
        let t = a.targets;
        let limit = |v: f64, unit: &str| {
            if v.is_finite() && v < 1e18 {
                format!("target ≤ {v}{unit}")
            } else {
                "reported".to_string()
            }
        };
        if let AttackKind::Fleet { readers, .. } = &a.kind {
            println!(
                "accounts driven:                       {} of {} organisation(s)",
                readers.len(),
                readers
                    .iter()
                    .map(|r| r.account.organisation_id)
                    .collect::<HashSet<_>>()
                    .len()
            );
        }
        println!(
            "records after the start, before containment: {} ({})",
            o.before_containment,
            limit(t.records as f64, "")
        );
        match o.containment_secs {
            Some(s) => println!(
                "time to containment:                   {s:.1} s of simulated time ({})",
                limit(t.secs, " s")
            ),
            None if o.attempts == 0 => println!(
                "time to containment:                   n/a: nothing to contain, the attack reads no server"
            ),
            None => println!(
                "time to containment:                   never: the last attempt was served"
            ),
        }
        let fresh = raised.iter().filter(|s| s.alert.fresh).count();
        let logged: u64 = a
            .tally
            .accounts
            .iter()
            .filter_map(|id| lifecycle.get(id))
            .sum();
        println!(
            "alerts:                                {} by the guard ({fresh} fresh), {logged} in the ledger by the account lifecycle",
            raised.len()
        );
        if let Some(first) = raised.first() {
            let after = a.tally.since.map_or(0.0, |t| {
                (first.alert.at - t).num_milliseconds() as f64 / 1000.0
            });
            println!(
                "  first: {} {} at {} ({after:.1} s after the start): {}",
                first.alert.kind,
                first.alert.verdict,
                first.alert.at.format("%a %H:%M:%S UTC"),
                crate::guard::features_line(&first.alert.explanation)
            );
            if !first.alert.accounts.is_empty() {
                let ids: Vec<String> = first.alert.accounts.iter().map(|a| a.to_string()).collect();
                println!(
                    "  naming {} accounts: [{}]",
                    first.alert.accounts.len(),
                    ids.join(", ")
                );
            }
        }
        if let Some(by) = t.alerted_by {
            match raised.first() {
                Some(f) if f.alert.at <= by => {}
                Some(f) => missed.push(format!(
                    "{}: first alerted at {}, after {}",
                    a.name, f.alert.at, by
                )),
                None => missed.push(format!("{}: never alerted", a.name)),
            }
        }
        let answers: Vec<String> = a
            .tally
            .answers
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        if !answers.is_empty() {
            println!(
                "answers:                               {}",
                answers.join(", ")
            );
        }
        for n in &a.tally.notes {
            println!("  {n}");
        }
        if matches!(a.kind, AttackKind::Fleet { .. }) && a.tally.served_on.len() > 1 {
            let days: Vec<String> = a
                .tally
                .served_on
                .iter()
                .map(|(d, n)| format!("{d} {n}"))
                .collect();
            println!("  records served per day: {}", days.join(", "));
        }
        let (scope_line, scope_missed) = scope_check(world, a).await?;
        println!("{scope_line}");
        missed.extend(scope_missed.into_iter().map(|m| format!("{}: {m}", a.name)));
        let first_alert_s = match (raised.first(), a.tally.since) {
            (Some(f), Some(t)) => {
                format!("{:.1}", (f.alert.at - t).num_milliseconds() as f64 / 1000.0)
            }
            _ => "never".to_string(),
        };
        println!(
            "RESULT attack={} attempts={} beyond_scope={} before_containment={} containment_s={} guard_alerts={} ledger_alerts={logged} first_alert_s={first_alert_s}",
            a.name.replace(' ', ""),
            o.attempts,
            o.beyond,
            o.before_containment,
            o.containment_secs
                .map_or("never".to_string(), |s| format!("{s:.1}")),
            raised.len()
        );
        if o.beyond > 0 {
            missed.push(format!("{}: {} records beyond scope", a.name, o.beyond));
        }
        if o.before_containment > t.records && !matches!(a.kind, AttackKind::Processor { .. }) {
            missed.push(format!(
                "{}: {} records before containment",
                a.name, o.before_containment
            ));
        }
        match o.containment_secs {
            Some(s) if s <= t.secs => {}
            Some(s) => missed.push(format!("{}: contained after {s:.1} s", a.name)),
            None if o.attempts == 0 || !t.secs.is_finite() => {}
            None => missed.push(format!("{}: never contained", a.name)),
        }
        missed.extend(a.tally.missed.iter().map(|m| format!("{}: {m}", a.name)));
    }
    // The organisations attacked, from when: their other accounts are
    // stepped up or throttled with them (the organisation's containment),
    // which is no false alert.
    let mut attacked_orgs: HashMap<OrganisationId, DateTime<Utc>> = HashMap::new();
    for a in attacks {
        let (Some(t), AttackKind::Fleet { readers, .. }) = (a.tally.since, &a.kind) else {
            continue;
        };
        for r in readers {
            let e = attacked_orgs.entry(r.account.organisation_id).or_insert(t);
            *e = (*e).min(t);
        }
    }
    let (collateral, false_alerts): (Vec<_>, Vec<_>) = alerts
        .iter()
        .filter(|s| normal_ids.contains(&s.alert.account_id))
        .filter(|s| {
            attacked
                .get(&s.alert.account_id)
                .is_none_or(|t| s.alert.at < *t)
        })
        .partition(|s| {
            attacked_orgs
                .get(&s.alert.organisation_id)
                .is_some_and(|t| s.alert.at >= *t)
        });
    let per_1000 = if fig.account_days == 0 {
        0.0
    } else {
        false_alerts.len() as f64 * 1000.0 / fig.account_days as f64
    };
    println!("\n== normal accounts");
    println!(
        "reads: {} ({} served) over {} account-days",
        fig.reads, fig.served, fig.account_days
    );
    let refused: Vec<String> = fig
        .refused
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect();
    println!(
        "refused: {}",
        if refused.is_empty() {
            "none".to_string()
        } else {
            refused.join(", ")
        }
    );
    println!(
        "false alerts: {} ({per_1000:.2} per 1,000 account-days)",
        false_alerts.len()
    );
    println!(
        "colleagues caught by their organisation's containment during an attack: {} alerts on {} accounts",
        collateral.len(),
        collateral
            .iter()
            .map(|s| s.alert.account_id)
            .collect::<HashSet<_>>()
            .len()
    );
    println!(
        "RESULT normal reads={} account_days={} false_alerts={}",
        fig.reads,
        fig.account_days,
        false_alerts.len()
    );
    for s in false_alerts.iter().take(3) {
        println!(
            "  account {} {} at {}: {}",
            s.alert.account_id,
            s.alert.verdict,
            s.alert.at.format("%a %H:%M UTC"),
            crate::guard::features_line(&s.alert.explanation)
        );
    }
    if !missed.is_empty() {
        bail!("targets missed: {}", missed.join("; "));
    }
    println!("\nevery target met");
    Ok(())
}
