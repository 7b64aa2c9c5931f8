//! `rempart incident …`: the breach register and the exact scope of an
//! incident, read from the audit ledger.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use rempart_breach::Scope;
use rempart_consult::{IncidentRequest, IncidentRequestError};
use rempart_domain::incident::{Event, Incident, IncidentId, Milestone, NoticeChannel};
use rempart_domain::{AccountId, OrganisationId};

use crate::audit::parse_time;
use crate::location::Location;
use crate::scoping::{BoundScope, bound_scope, open_incident};

#[derive(Subcommand)]
pub enum IncidentCommand {
    /// Enter an incident in the breach register: what was compromised
    /// (accounts, organisations) and the window.
    Open(OpenArgs),
    /// The register: every incident, newest first.
    List(Location),
    /// One incident with its timeline and the 72-hour clock.
    Show {
        #[command(flatten)]
        location: Location,
        /// Its number.
        id: i64,
    },
    /// Add a step to an incident's timeline (contained, authority_notified,
    /// persons_informed, closed).
    Event {
        #[command(flatten)]
        location: Location,
        /// Its number.
        id: i64,
        /// The step.
        #[arg(long)]
        milestone: String,
        /// When it happened (default: now).
        #[arg(long)]
        at: Option<String>,
        /// What was done.
        #[arg(long)]
        note: Option<String>,
    },
    /// Its exact scope from the ledger: every person revealed to the
    /// compromised subjects in the window, what of them, and the refused
    /// attempts; bound to a signed checkpoint.
    Scope(ScopeArgs),
    /// The draft notification to the CNIL (Art. 33), in French: initial
    /// until `authority_notified` is recorded, complementary after.
    Report(crate::notices::ReportArgs),
    /// Render and queue one notice per person to inform (Art. 34), shown
    /// at once in their personal space.
    Notify(crate::notices::NotifyArgs),
    /// Deliver the queued notices: e-mails through SMTP, letters as PDF
    /// files; resumable, each notice delivered and recorded once.
    Dispatch(crate::notices::DispatchArgs),
}

#[derive(Args)]
pub struct OpenArgs {
    #[command(flatten)]
    location: Location,
    /// What happened, in a line (name no job seeker); from an alert, its
    /// kind by default.
    #[arg(long)]
    title: Option<String>,
    /// A guard alert (its id in `rempart alerts`): its account, or for an
    /// organisation's alert every account it names, is compromised; the
    /// window runs by default from a week before the alert's evidence to
    /// now.
    #[arg(long)]
    alert: Option<i64>,
    /// Scope it at once (as `incident scope`).
    #[arg(long)]
    scope: bool,
    /// A compromised account's id (repeat for several).
    #[arg(long = "account")]
    accounts: Vec<i64>,
    /// A compromised API client (`rmpc_…`, repeat for several): the
    /// account it reads as. The ledger records that account, so the scope
    /// also counts the account's own reads: more than the client's, never
    /// less.
    #[arg(long = "client")]
    clients: Vec<String>,
    /// A compromised organisation's id: all its accounts (repeat for
    /// several).
    #[arg(long = "organisation")]
    organisations: Vec<i64>,
    /// Window start (YYYY-MM-DD or RFC 3339), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// Window end (YYYY-MM-DD or RFC 3339), exclusive; default now.
    #[arg(long)]
    to: Option<String>,
    /// When the controller became aware (default: now); the 72 hours of
    /// Art. 33 run from it.
    #[arg(long)]
    aware_at: Option<String>,
    /// Who enters it.
    #[arg(long, env = "USER", default_value = "operator")]
    by: String,
}

#[derive(Args)]
pub struct ScopeArgs {
    #[command(flatten)]
    location: Location,
    /// The incident's number.
    id: i64,
    /// `text` for people, `json` for tools.
    #[arg(long, value_enum, default_value_t = ScopeFormat::Text)]
    format: ScopeFormat,
    /// Write the affected persons' ids there, one per line with what was
    /// shown of each (CSV).
    #[arg(long)]
    persons: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScopeFormat {
    Text,
    Json,
}

pub async fn run(cmd: IncidentCommand) -> Result<()> {
    match cmd {
        IncidentCommand::Open(args) => open(&args).await,
        IncidentCommand::List(location) => list(&location).await,
        IncidentCommand::Show { location, id } => show(&location, IncidentId::new(id)).await,
        IncidentCommand::Event {
            location,
            id,
            milestone,
            at,
            note,
        } => {
            event(
                &location,
                IncidentId::new(id),
                &milestone,
                at.as_deref(),
                note,
            )
            .await
        }
        IncidentCommand::Scope(args) => scope(&args).await,
        IncidentCommand::Report(args) => crate::notices::report(&args).await,
        IncidentCommand::Notify(args) => crate::notices::notify(&args).await,
        IncidentCommand::Dispatch(args) => crate::notices::dispatch(&args).await.map(|_| ()),
    }
}

fn instant(text: &str, field: &str) -> Result<DateTime<Utc>> {
    parse_time(text, field)?
        .to_datetime()
        .with_context(|| format!("--{field}: out of range"))
}

async fn open(args: &OpenArgs) -> Result<()> {
    let now = Utc::now();
    let stores = args.location.open_stores().await?;
    let time = |t: &Option<String>, field| t.as_deref().map(|t| instant(t, field)).transpose();
    let request = IncidentRequest {
        title: args.title.clone(),
        accounts: args.accounts.iter().map(|a| AccountId::new(*a)).collect(),
        organisations: args
            .organisations
            .iter()
            .map(|o| OrganisationId::new(*o))
            .collect(),
        clients: args.clients.clone(),
        alert: args.alert,
        from: time(&args.from, "from")?,
        to: time(&args.to, "to")?,
        aware_at: time(&args.aware_at, "aware-at")?,
    };
    let found = match request.alert_query() {
        Some(query) => stores.guard.alerts(&query).await?,
        None => Vec::new(),
    };
    let new = request
        .resolve(stores.auth.as_ref(), found, args.by.clone(), now)
        .await
        .map_err(|e| match e {
            IncidentRequestError::Invalid { field, reason } => {
                anyhow::anyhow!("--{}: {reason}", flag(field))
            }
            IncidentRequestError::Unavailable(cause) => anyhow::anyhow!(cause),
        })?;
    let id = stores.incidents.open_incident(&new, now).await?;
    println!("incident {id} opened");
    let incident = stores
        .incidents
        .incident(id)
        .await?
        .context("the incident just opened is not in the register")?;
    print!("{}", incident_text(&incident, now));
    if args.scope {
        scope(&ScopeArgs {
            location: args.location.clone(),
            id: id.get(),
            format: ScopeFormat::Text,
            persons: None,
        })
        .await?;
    }
    Ok(())
}

async fn list(location: &Location) -> Result<()> {
    let stores = location.open_stores().await?;
    let now = Utc::now();
    let all = stores.incidents.incidents().await?;
    if all.is_empty() {
        println!("the breach register is empty");
    }
    for i in &all {
        let state = if i.is_closed() { "closed" } else { "open" };
        println!(
            "{:>5}  {state:<6}  aware {}  {}  {}",
            i.id,
            i.aware_at.format("%Y-%m-%d %H:%M"),
            clock(i, now),
            i.title
        );
    }
    Ok(())
}

async fn show(location: &Location, id: IncidentId) -> Result<()> {
    let stores = location.open_stores().await?;
    let incident = stores
        .incidents
        .incident(id)
        .await?
        .with_context(|| format!("incident {id}: no such incident"))?;
    print!("{}", incident_text(&incident, Utc::now()));
    let p = stores.notices.notice_progress(id).await?;
    if p.total_queued() > 0 {
        let channel = |c| {
            format!(
                "{}/{}",
                p.sent.get(&c).unwrap_or(&0),
                p.queued.get(&c).unwrap_or(&0)
            )
        };
        println!(
            "  notices: {} of {} delivered (e-mail {}, letters {}){}",
            p.total_sent(),
            p.total_queued(),
            channel(NoticeChannel::Email),
            channel(NoticeChannel::Letter),
            if p.interrupted > 0 {
                format!("; {} interrupted, to deliver again", p.interrupted)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

async fn event(
    location: &Location,
    id: IncidentId,
    milestone: &str,
    at: Option<&str>,
    note: Option<String>,
) -> Result<()> {
    let Some(milestone) = Milestone::parse(milestone) else {
        bail!(
            "--milestone: expected one of contained, scoped, authority_notified, persons_informed, closed"
        );
    };
    let now = Utc::now();
    let at = match at {
        Some(t) => instant(t, "at")?,
        None => now,
    };
    let stores = location.open_stores().await?;
    stores
        .incidents
        .record_event(
            id,
            &Event {
                at,
                milestone,
                note,
                recorded_at: now,
            },
        )
        .await?;
    println!("incident {id}: {milestone} recorded");
    Ok(())
}

/// The command's flag for a field of an incident request.
fn flag(field: &str) -> &str {
    match field {
        "accounts" => "account",
        "organisations" => "organisation",
        "clients" => "client",
        "aware_at" => "aware-at",
        "compromised" => "account/--organisation/--client/--alert",
        other => other,
    }
}

/// Where the 72 hours of Art. 33 stand.
fn clock(i: &Incident, now: DateTime<Utc>) -> String {
    let deadline = i.notification_deadline();
    match i.reached(Milestone::AuthorityNotified) {
        Some(at) if at <= deadline => format!("notified {}", at.format("%Y-%m-%d %H:%M")),
        Some(at) => format!(
            "notified {} ({} h late)",
            at.format("%Y-%m-%d %H:%M"),
            (at - deadline).num_hours()
        ),
        None if now <= deadline => {
            format!("{} h left to notify", (deadline - now).num_hours())
        }
        None => format!("notification {} h overdue", (now - deadline).num_hours()),
    }
}

fn incident_text(i: &Incident, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let subjects: Vec<String> = i.compromised.iter().map(|c| c.to_string()).collect();
    out.push_str(&format!("incident {}: {}\n", i.id, i.title));
    out.push_str(&format!("  compromised: {}\n", subjects.join(", ")));
    out.push_str(&format!(
        "  window: {} to {}\n",
        i.window.from(),
        i.window.to()
    ));
    out.push_str(&format!(
        "  aware: {}; Art. 33 deadline {}: {}\n",
        i.aware_at.format("%Y-%m-%d %H:%M UTC"),
        i.notification_deadline().format("%Y-%m-%d %H:%M UTC"),
        clock(i, now)
    ));
    out.push_str(&format!("  opened by {}\n  timeline:\n", i.opened_by));
    for e in &i.timeline {
        out.push_str(&format!(
            "    {}  {}{}\n",
            e.at.format("%Y-%m-%d %H:%M"),
            e.milestone,
            e.note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ));
    }
    out
}

async fn scope(args: &ScopeArgs) -> Result<()> {
    let stores = args.location.open_stores().await?;
    let id = IncidentId::new(args.id);
    let incident = open_incident(&stores, id).await?;
    let BoundScope {
        scope,
        checkpoint,
        later,
        seconds,
    } = bound_scope(&args.location, &incident).await?;
    let size = scope.tree_size;
    if let Some(path) = &args.persons {
        write_persons(path, &scope)?;
    }
    let now = Utc::now();
    let note = format!(
        "{} persons revealed ({} pseudonymous only), ledger size {size}",
        scope.persons.len(),
        scope.pseudonymous_only()
    );
    stores
        .incidents
        .record_event(id, &Event::happening(now, Milestone::Scoped, Some(note)))
        .await?;
    match args.format {
        ScopeFormat::Text => print!(
            "{}",
            scope_text(&incident, &scope, &checkpoint, later, seconds)
        ),
        ScopeFormat::Json => println!(
            "{}",
            scope_json(&incident, &scope, &checkpoint, later, seconds)?
        ),
    }
    Ok(())
}

fn write_persons(path: &PathBuf, scope: &Scope) -> Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("--persons: cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(
        out,
        "person_id,field_groups,nir,reads,first,last,first_leaf,pseudonymous_only"
    )?;
    for (p, e) in &scope.persons {
        let groups: Vec<&str> = e.groups.iter().map(|g| g.as_str()).collect();
        writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            p,
            groups.join(";"),
            e.nir.map_or("", |n| n.as_str()),
            e.reads,
            e.first.0,
            e.last.0,
            e.first.1,
            e.pseudonymous_only()
        )?;
    }
    out.flush()?;
    Ok(())
}

fn scope_text(i: &Incident, s: &Scope, checkpoint: &str, later: u64, seconds: f64) -> String {
    let mut out = String::new();
    out.push_str(&format!("incident {}: {}\n", i.id, i.title));
    out.push_str(&format!(
        "  window {} to {}; {} leaves of the compromised subjects read in {:.2} s\n",
        i.window.from(),
        i.window.to(),
        s.leaves,
        seconds
    ));
    out.push_str(&format!(
        "  persons revealed: {} ({} reads); of whom pseudonymous only (Art. 34(3)(a), no notice): {}\n",
        s.persons.len(),
        s.revealing,
        s.pseudonymous_only()
    ));
    let groups: Vec<String> = s
        .persons_by_group()
        .iter()
        .map(|(g, n)| format!("{g} {n}"))
        .collect();
    out.push_str(&format!(
        "  persons by field group: {}\n",
        groups.join(", ")
    ));
    let nir: Vec<String> = s
        .persons_by_nir()
        .iter()
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    out.push_str(&format!("  persons by NIR view: {}\n", nir.join(", ")));
    let orgs: Vec<String> = s
        .persons_by_organisation()
        .iter()
        .map(|(o, n)| format!("organisation {o}: {n}"))
        .collect();
    out.push_str(&format!("  persons by organisation: {}\n", orgs.join(", ")));
    let refused: Vec<String> = s.refused.iter().map(|(r, n)| format!("{r} {n}")).collect();
    out.push_str(&format!(
        "  refused attempts: {} ({}); persons only attempted: {}\n",
        s.refused.values().sum::<u64>(),
        refused.join(", "),
        s.refused_only_persons
    ));
    match s.leaf_range {
        Some((lo, hi)) => out.push_str(&format!(
            "  evidence: leaves {lo} to {hi} of a ledger of {} (prove any with `rempart audit prove --leaf N --size {}`)\n",
            s.tree_size, s.tree_size
        )),
        None => out.push_str(&format!(
            "  evidence: no leaf of the compromised subjects in the window, in a ledger of {}\n",
            s.tree_size
        )),
    }
    if later > 0 {
        out.push_str(&format!(
            "  {later} leaves appended after this checkpoint are not covered: scope again after the next one\n"
        ));
    }
    out.push_str("  signed checkpoint:\n");
    for line in checkpoint.lines() {
        out.push_str(&format!("    {line}\n"));
    }
    out
}

fn scope_json(
    i: &Incident,
    s: &Scope,
    checkpoint: &str,
    later: u64,
    seconds: f64,
) -> Result<String> {
    #[derive(serde::Serialize)]
    struct ScopeJson<'a> {
        incident: i64,
        window: serde_json::Value,
        compromised: Vec<String>,
        #[serde(flatten)]
        counts: rempart_breach::ScopeSummary,
        leaves_after_checkpoint: u64,
        checkpoint: &'a str,
        seconds: f64,
    }
    let json = ScopeJson {
        incident: i.id.get(),
        window: serde_json::json!({"from": i.window.from().to_string(), "to": i.window.to().to_string()}),
        compromised: i.compromised.iter().map(|c| c.to_string()).collect(),
        counts: s.summary(),
        leaves_after_checkpoint: later,
        checkpoint,
        seconds,
    };
    Ok(serde_json::to_string(&json)?)
}
