//! `rempart incident report|notify|dispatch`: the draft notification to
//! the CNIL (Art. 33) and the notices to persons (Art. 34), from the
//! incident's exact scope.
//!
//! `notify` renders one notice per person to inform (pseudonymous-only
//! exposures are exempt, Art. 34(3)(a)) and queues it in the register,
//! where the person's space shows it; the channel is e-mail when the
//! registry holds an address, else a letter. `dispatch` delivers what is
//! queued: e-mails through SMTP, letters as PDF files for the print batch.
//! Each delivery is claimed in the register (a lease) before the send and
//! recorded after, so a dispatch killed at any moment and started again,
//! or two at once, deliver every notice and record each once; an e-mail
//! interrupted between the relay's acceptance and its record is sent
//! again with the same Message-ID once its claim lapses (at most one per
//! worker of the killed dispatcher), which the report counts. An e-mail
//! refused for good, or whose address is gone, becomes a letter.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::{Args, ValueEnum};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use rempart_breach::notice::{WORDING, digest, letter_pdf, render};
use rempart_breach::{
    Art33Draft, Controller, DraftFacts, NoticeContext, NoticeFacts, OrganisationLabel,
};
use rempart_domain::incident::{
    Event, IncidentId, Milestone, NoticeChannel, NoticeRun, QueuedNotice, StoredNotice,
};
use rempart_domain::{FieldGroup, OrganisationId, OrganisationKind, PersonId};
use rempart_storage::Stores;
use rempart_vault::{Read, Vault};

use crate::location::Location;
use crate::progress::counter;
use crate::scoping::{bound_scope, open_incident};

/// Who the documents name as controller, and its DPO.
#[derive(Args, Clone)]
pub struct ControllerArgs {
    /// The controller's name.
    #[arg(long, env = "REMPART_CONTROLLER", default_value = "France Travail")]
    controller: String,
    /// How persons and the authority reach the data protection officer
    /// (postal address, e-mail).
    #[arg(long, env = "REMPART_DPO")]
    dpo: Option<String>,
}

impl ControllerArgs {
    fn controller(&self) -> Result<Controller> {
        let Some(dpo) = self.dpo.as_deref().map(str::trim).filter(|d| !d.is_empty()) else {
            bail!(
                "--dpo: the DPO's contact is required (Art. 33(3)(b), Art. 34(2)); give it, or set REMPART_DPO"
            );
        };
        Ok(Controller {
            name: self.controller.trim().to_string(),
            dpo: dpo.to_string(),
        })
    }
}

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    location: Location,
    /// The incident's number.
    id: i64,
    #[command(flatten)]
    controller: ControllerArgs,
    /// Why the initial notification comes after the 72 hours (required
    /// then, Art. 33(1)).
    #[arg(long)]
    delay_reason: Option<String>,
    /// `markdown` for the officer, `json` for tools.
    #[arg(long, value_enum, default_value_t = ReportFormat::Markdown)]
    format: ReportFormat,
    /// Write it there instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Markdown,
    Json,
}

#[derive(Args)]
pub struct NotifyArgs {
    #[command(flatten)]
    location: Location,
    /// The incident's number.
    id: i64,
    #[command(flatten)]
    controller: ControllerArgs,
    /// What was done, in a sentence every notice repeats (fixed the first
    /// time the notices are prepared).
    #[arg(long)]
    measures: String,
}

#[derive(Args)]
pub struct DispatchArgs {
    #[command(flatten)]
    pub(crate) location: Location,
    /// The incident's number.
    pub(crate) id: i64,
    /// The SMTP relay for the e-mails, HOST:PORT (no e-mail sent without).
    #[arg(long)]
    pub(crate) smtp: Option<String>,
    /// The e-mails' sender.
    #[arg(long, default_value = "dpo@rempart.invalid")]
    pub(crate) from: String,
    /// Where the letters' PDF files go, one per person, for the print
    /// batch (no letter written without).
    #[arg(long)]
    pub(crate) letters: Option<PathBuf>,
    /// Deliveries per second at most.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Stop after this many deliveries (a batch); the rest stays queued.
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    /// Deliveries under way at once (each e-mail on its own connection
    /// to the relay).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) parallel: u16,
    /// How long a delivery's claim keeps other dispatchers off a notice,
    /// in seconds: a dispatcher killed mid-delivery delays that notice
    /// by as much. It must outlast an SMTP transaction (its timeout is
    /// half of it, 30 s at most).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(2..))]
    pub(crate) claim_seconds: u32,
}

/// Registry names and kinds of every organisation.
pub(crate) async fn organisation_labels(
    registry: &rempart_storage::Store,
) -> Result<BTreeMap<OrganisationId, OrganisationLabel>> {
    Ok(registry
        .organisations()
        .await?
        .into_iter()
        .map(|(id, o)| {
            (
                id,
                OrganisationLabel {
                    name: o.name,
                    kind: o.kind,
                },
            )
        })
        .collect())
}

pub async fn report(args: &ReportArgs) -> Result<()> {
    let controller = args.controller.controller()?;
    let stores = args.location.open_stores().await?;
    let id = IncidentId::new(args.id);
    let incident = open_incident(&stores, id).await?;
    let bound = bound_scope(&args.location, &incident).await?;
    let organisations = organisation_labels(&stores.registry).await?;
    let progress = stores.notices.notice_progress(id).await?;
    let departements = (progress.total_queued() > 0).then_some(progress.by_departement);
    let draft = Art33Draft::new(
        DraftFacts {
            incident: &incident,
            scope: &bound.scope,
            checkpoint: &bound.checkpoint,
            organisations: &organisations,
            departements: departements.as_ref(),
        },
        &controller,
        args.delay_reason.as_deref(),
        Utc::now(),
    )?;
    let text = match args.format {
        ReportFormat::Markdown => draft.to_markdown(),
        ReportFormat::Json => serde_json::to_string_pretty(&draft)? + "\n",
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, text)
                .with_context(|| format!("--out: cannot write {}", path.display()))?;
            eprintln!("incident {id}: draft written to {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Persons read from the vault at once while notices are prepared.
const READ_AHEAD: usize = 64;
/// Notices queued per transaction.
const QUEUE_BATCH: usize = 5_000;

/// What preparing the notices found.
#[derive(Debug, Default)]
pub struct Prepared {
    pub queued: u64,
    pub already: u64,
    pub email: u64,
    pub letter: u64,
    pub exempt: u64,
    pub unreachable: u64,
    pub seconds: f64,
}

/// Renders and queues the notices of an incident's persons to inform:
/// the part of `notify` after the scope, shared with its benchmark.
pub async fn prepare_notices(
    stores: &Stores,
    vault: &Vault,
    id: IncidentId,
    scope: &rempart_breach::Scope,
    context: &NoticeContext,
    show_progress: bool,
) -> Result<Prepared> {
    let started = Instant::now();
    let run = stores
        .notices
        .prepare_notices(
            id,
            &NoticeRun {
                controller: context.controller.name.clone(),
                dpo: context.controller.dpo.clone(),
                measures: context.measures.clone(),
                wording: WORDING,
                prepared_at: Utc::now(),
            },
        )
        .await?;
    if run.wording != WORDING {
        bail!(
            "incident {id}: its notices were prepared with wording {} and this version renders {WORDING}",
            run.wording
        );
    }
    let context_stored = context_of(&run);
    if context_stored != *context {
        // A notice already queued must render again the same: the words
        // fixed when the notices were first prepared stand.
        eprintln!(
            "incident {id}: its notices were prepared on {} with another controller, DPO or measures; those stand",
            run.prepared_at.format("%Y-%m-%d %H:%M UTC")
        );
    }
    let context = context_stored;
    let kinds: BTreeMap<OrganisationId, OrganisationKind> = stores
        .registry
        .organisations()
        .await?
        .into_iter()
        .map(|(id, o)| (id, o.kind))
        .collect();
    let mut p = Prepared::default();
    let to_inform: Vec<_> = scope
        .persons
        .iter()
        .filter(|(_, e)| !e.pseudonymous_only())
        .collect();
    p.exempt = scope.persons.len() as u64 - to_inform.len() as u64;
    let bar = show_progress.then(|| counter(to_inform.len() as u64, "notices"));
    let mut done = 0u64;
    for chunk in to_inform.chunks(QUEUE_BATCH) {
        let read: Vec<Option<QueuedNotice>> = stream::iter(chunk.iter().map(|(person, e)| {
            let vault = vault.clone();
            let facts = NoticeFacts::of(
                id,
                e,
                e.organisations.iter().filter_map(|o| kinds.get(o).copied()),
            );
            let context = &context;
            async move {
                let contact = match vault.read(*person, &[FieldGroup::Contact]).await? {
                    Read::Found(view) => view.contact,
                    Read::Shredded | Read::Missing => None,
                };
                let Some(contact) = contact else {
                    return anyhow::Ok(None);
                };
                let text = render(&facts, context);
                Ok(Some(QueuedNotice {
                    person: *person,
                    channel: if contact.email.is_some() {
                        NoticeChannel::Email
                    } else {
                        NoticeChannel::Letter
                    },
                    departement: contact.adresse.code_postal.departement(),
                    groups: facts.groups_code(),
                    kinds: facts.kinds_code(),
                    reads: facts.reads,
                    first: facts.first,
                    last: facts.last,
                    digest: digest(&text),
                }))
            }
        }))
        .buffered(READ_AHEAD)
        .try_collect()
        .await?;
        let batch: Vec<QueuedNotice> = read.iter().flatten().cloned().collect();
        p.unreachable += (read.len() - batch.len()) as u64;
        for n in &batch {
            match n.channel {
                NoticeChannel::Email => p.email += 1,
                NoticeChannel::Letter => p.letter += 1,
            }
        }
        let added = stores.notices.queue_notices(id, &batch).await?;
        p.queued += added;
        p.already += batch.len() as u64 - added;
        done += chunk.len() as u64;
        if let Some(b) = &bar {
            b.set(done);
        }
    }
    if let Some(b) = bar {
        b.done();
    }
    p.seconds = started.elapsed().as_secs_f64();
    Ok(p)
}

fn context_of(run: &NoticeRun) -> NoticeContext {
    NoticeContext {
        controller: Controller {
            name: run.controller.clone(),
            dpo: run.dpo.clone(),
        },
        measures: run.measures.clone(),
    }
}

pub async fn notify(args: &NotifyArgs) -> Result<()> {
    let controller = args.controller.controller()?;
    let stores = args.location.open_stores().await?;
    let vault = args.location.open_vault().await?;
    let id = IncidentId::new(args.id);
    let incident = open_incident(&stores, id).await?;
    let bound = bound_scope(&args.location, &incident).await?;
    let context = NoticeContext {
        controller,
        measures: args.measures.clone(),
    };
    let p = prepare_notices(&stores, &vault, id, &bound.scope, &context, true).await?;
    println!(
        "incident {id}: {} notices queued in {:.1} s ({} already queued); {} by e-mail, {} by letter; {} persons exempt (pseudonymous only, Art. 34(3)(a)); {} unreachable (record shredded since)",
        p.queued, p.seconds, p.already, p.email, p.letter, p.exempt, p.unreachable
    );
    println!(
        "every queued notice is in its person's space; deliver them with `rempart incident dispatch {id}`"
    );
    Ok(())
}

/// A notice's text again, from the register, checked against the digest
/// it was queued with: a notice whose text would differ is not sent.
pub(crate) fn text_of(
    n: &StoredNotice,
    context: &NoticeContext,
) -> Result<rempart_breach::NoticeText> {
    let q = &n.notice;
    let Some(facts) =
        NoticeFacts::from_codes(n.incident, q.groups, q.kinds, q.reads, q.first, q.last)
    else {
        bail!(
            "incident {}: person {}'s queued notice holds codes this version does not read",
            n.incident,
            q.person
        );
    };
    let text = render(&facts, context);
    if digest(&text) != q.digest {
        bail!(
            "incident {}: person {}'s notice renders differently from the text queued; nothing sent",
            n.incident,
            q.person
        );
    }
    Ok(text)
}

/// Paces deliveries at `rate` per second, across the workers: each
/// delivery takes the next slot.
struct Pace {
    every: Duration,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new(rate: f64) -> Result<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate: expected a positive number of deliveries per second");
        }
        Ok(Pace {
            every: Duration::from_secs_f64(1.0 / rate),
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.every;
            slot
        };
        // A slot already due is taken at once: the timer's millisecond
        // would otherwise cap the rate.
        if slot > tokio::time::Instant::now() {
            tokio::time::sleep_until(slot).await;
        }
    }
}

/// The SMTP relay, with the connections of the workers: each message on
/// a connection of its own while it is sent, connections kept open and
/// reused.
struct Relay {
    addr: String,
    from: Mailbox,
    domain: String,
    timeout: Duration,
    idle: tokio::sync::Mutex<Vec<AsyncSmtpConnection>>,
}

impl Relay {
    async fn connect(&self) -> Result<AsyncSmtpConnection> {
        let tcp = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&self.addr))
            .await
            .with_context(|| format!("--smtp: {} did not answer in time", self.addr))?
            .with_context(|| format!("--smtp: cannot connect to {}", self.addr))?;
        // Every SMTP command waits for its reply, and the message's final
        // "." goes in a write of its own: with Nagle's algorithm it would
        // wait for the relay's delayed acknowledgement, 40 ms a notice.
        tcp.set_nodelay(true)?;
        tokio::time::timeout(
            self.timeout,
            AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &ClientId::default()),
        )
        .await
        .with_context(|| format!("--smtp: {} did not greet in time", self.addr))?
        .with_context(|| format!("--smtp: {} refused the session", self.addr))
    }

    /// Sends one message: `Ok(false)` if the relay refused it for good (a
    /// 5xx reply: that address will not take it), an error for anything
    /// that may pass (the dispatch stops; its claim lapses and a later
    /// run tries again). A connection that saw an error is closed.
    async fn send(&self, message: &Message) -> Result<bool> {
        let idle = self.idle.lock().await.pop();
        let mut conn = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        let sent = tokio::time::timeout(
            self.timeout,
            conn.send(message.envelope(), &message.formatted()),
        )
        .await
        .context("the relay did not answer in time")?;
        match sent {
            Ok(_) if !conn.has_broken() => {
                self.idle.lock().await.push(conn);
                Ok(true)
            }
            Ok(_) => Ok(true),
            Err(e) if e.is_permanent() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn close(&self) {
        for mut c in self.idle.lock().await.drain(..) {
            let _ = c.quit().await;
        }
    }
}

/// Where one channel's deliveries go.
enum Sink {
    Email(Relay),
    Letters(PathBuf),
}

/// What a dispatch did.
#[derive(Debug, Default)]
pub struct Dispatched {
    pub sent: u64,
    pub resent_interrupted: u64,
    /// E-mail notices turned into letters: no e-mail any more, or refused
    /// by the relay for good.
    pub to_letter: u64,
    /// Left queued: no postal address any more (the record shredded).
    pub undeliverable: u64,
    pub seconds: f64,
}

/// What the workers of a dispatch share.
struct Workers<'a> {
    stores: &'a Stores,
    vault: &'a Vault,
    context: &'a NoticeContext,
    id: IncidentId,
    claim: chrono::Duration,
    pace: Pace,
    limit: u64,
    /// Deliveries begun (claimed or not): the limit counts them.
    started: std::sync::atomic::AtomicU64,
    sent: std::sync::atomic::AtomicU64,
    resent: std::sync::atomic::AtomicU64,
    /// E-mail notices sent by letter instead.
    to_letter: std::sync::atomic::AtomicU64,
    /// Notices another dispatcher held a running claim on, this pass.
    deferred: std::sync::atomic::AtomicU64,
    /// Notices this run could not deliver (no address any more, or one
    /// the relay refused for good): left queued, not retried by this run.
    undeliverable: std::sync::Mutex<std::collections::HashSet<PersonId>>,
    bar: crate::progress::Counter,
}

impl Workers<'_> {
    /// Claims, delivers and records one notice.
    async fn deliver_one(&self, sink: &Sink, n: StoredNotice) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let person = n.notice.person;
        let known_without = self
            .undeliverable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&person);
        if known_without || self.started.fetch_add(1, Relaxed) >= self.limit {
            return Ok(());
        }
        self.pace.wait().await;
        let text = text_of(&n, self.context)?;
        let now = Utc::now();
        if !self
            .stores
            .notices
            .begin_notice(self.id, person, now, now + self.claim)
            .await?
        {
            self.deferred.fetch_add(1, Relaxed);
            return Ok(());
        }
        if n.attempts > 0 {
            self.resent.fetch_add(1, Relaxed);
        }
        if !deliver(sink, self.vault, &self.id, person, &text).await? {
            // No e-mail any more, or refused for good: by post instead
            // (the letters' pass comes after the e-mails').
            if matches!(sink, Sink::Email(_))
                && self
                    .stores
                    .notices
                    .notice_to_letter(self.id, person)
                    .await?
            {
                self.to_letter.fetch_add(1, Relaxed);
            } else {
                self.undeliverable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(person);
            }
            return Ok(());
        }
        if self
            .stores
            .notices
            .notice_sent(self.id, person, Utc::now())
            .await?
        {
            let sent = self.sent.fetch_add(1, Relaxed) + 1;
            self.bar.set(sent);
        }
        Ok(())
    }
}

pub async fn dispatch(args: &DispatchArgs) -> Result<Dispatched> {
    use std::sync::atomic::Ordering::Relaxed;
    let stores = args.location.open_stores().await?;
    let vault = args.location.open_vault().await?;
    let id = IncidentId::new(args.id);
    let incident = open_incident(&stores, id).await?;
    let Some(run) = stores.notices.notice_run(id).await? else {
        bail!("incident {id}: no notice queued; run `rempart incident notify {id}` first");
    };
    let context = context_of(&run);
    let mut sinks = Vec::new();
    if let Some(relay) = &args.smtp {
        if relay
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            bail!("--smtp: expected HOST:PORT");
        }
        let from: Mailbox = args.from.parse().context("--from: not an e-mail address")?;
        let domain = from.email.domain().to_string();
        // A local relay, as a mail system's submission agent: no TLS here;
        // the relay carries the messages on.
        sinks.push((
            NoticeChannel::Email,
            Sink::Email(Relay {
                addr: relay.clone(),
                from,
                domain,
                timeout: Duration::from_secs(u64::from(args.claim_seconds / 2).min(30)),
                idle: tokio::sync::Mutex::new(Vec::new()),
            }),
        ));
    }
    if let Some(dir) = &args.letters {
        let dir = dir.join(format!("incident-{id}"));
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&dir)
            .with_context(|| format!("--letters: cannot create {}", dir.display()))?;
        sinks.push((NoticeChannel::Letter, Sink::Letters(dir)));
    }
    if sinks.is_empty() {
        bail!("say where the notices go: --smtp HOST:PORT for e-mails, --letters DIR for letters");
    }
    let before = stores.notices.notice_progress(id).await?;
    let pending: u64 = sinks
        .iter()
        .map(|(c, _)| {
            before
                .queued
                .get(c)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.sent.get(c).copied().unwrap_or(0))
        })
        .sum();
    let workers = Workers {
        stores: &stores,
        vault: &vault,
        context: &context,
        id,
        claim: chrono::Duration::seconds(args.claim_seconds.into()),
        pace: Pace::new(args.rate)?,
        limit: args.limit.unwrap_or(u64::MAX),
        started: 0.into(),
        sent: 0.into(),
        resent: 0.into(),
        to_letter: 0.into(),
        deferred: 0.into(),
        undeliverable: std::sync::Mutex::new(std::collections::HashSet::new()),
        bar: counter(
            pending.min(args.limit.unwrap_or(u64::MAX)),
            "notices delivered",
        ),
    };
    let started = Instant::now();
    let parallel = usize::from(args.parallel);
    let outcome: Result<()> = async {
        loop {
            workers.deferred.store(0, Relaxed);
            for (channel, sink) in &sinks {
                let mut after = PersonId::new(i64::MIN);
                loop {
                    if workers.started.load(Relaxed) >= workers.limit {
                        return Ok(());
                    }
                    let page = stores
                        .notices
                        .pending_notices(id, *channel, after, 500)
                        .await?;
                    let Some(last) = page.last() else { break };
                    after = last.notice.person;
                    stream::iter(page.into_iter().map(Ok))
                        .try_for_each_concurrent(parallel, |n| workers.deliver_one(sink, n))
                        .await?;
                }
            }
            if workers.deferred.load(Relaxed) == 0 {
                return Ok(());
            }
            // Claimed by a dispatcher running beside this one, or by one
            // killed mid-delivery: wait until they are delivered or the
            // claims lapse, then look again.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    .await;
    for (_, sink) in &sinks {
        if let Sink::Email(relay) = sink {
            relay.close().await;
        }
    }
    outcome?;
    workers.bar.done();
    let d = Dispatched {
        sent: workers.sent.load(Relaxed),
        resent_interrupted: workers.resent.load(Relaxed),
        to_letter: workers.to_letter.load(Relaxed),
        undeliverable: workers
            .undeliverable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64,
        seconds: started.elapsed().as_secs_f64(),
    };
    let after = stores.notices.notice_progress(id).await?;
    println!(
        "incident {id}: {} notices delivered in {:.1} s ({:.0}/s); {} of them interrupted before and delivered again; {} e-mails to send by letter instead (no e-mail any more, or refused by the relay for good); {} undeliverable (record shredded), left queued",
        d.sent,
        d.seconds,
        d.sent as f64 / d.seconds.max(1e-9),
        d.resent_interrupted,
        d.to_letter,
        d.undeliverable
    );
    println!(
        "register: {} of {} notices delivered (e-mail {}/{}, letters {}/{})",
        after.total_sent(),
        after.total_queued(),
        after.sent.get(&NoticeChannel::Email).unwrap_or(&0),
        after.queued.get(&NoticeChannel::Email).unwrap_or(&0),
        after.sent.get(&NoticeChannel::Letter).unwrap_or(&0),
        after.queued.get(&NoticeChannel::Letter).unwrap_or(&0),
    );
    if after.total_sent() == after.total_queued()
        && incident.reached(Milestone::PersonsInformed).is_none()
    {
        let now = Utc::now();
        let note = format!(
            "{} notices delivered: {} e-mails, {} letters",
            after.total_sent(),
            after.sent.get(&NoticeChannel::Email).unwrap_or(&0),
            after.sent.get(&NoticeChannel::Letter).unwrap_or(&0),
        );
        stores
            .incidents
            .record_event(
                id,
                &Event::happening(now, Milestone::PersonsInformed, Some(note)),
            )
            .await?;
        println!("incident {id}: persons_informed recorded");
    }
    Ok(d)
}

/// Delivers one notice; `false` when it cannot be: the registry has no
/// address for it any more (shredded, or the e-mail removed since it was
/// queued), or the relay refused the address for good.
async fn deliver(
    sink: &Sink,
    vault: &Vault,
    incident: &IncidentId,
    person: PersonId,
    text: &rempart_breach::NoticeText,
) -> Result<bool> {
    match sink {
        Sink::Email(relay) => {
            let contact = match vault.read(person, &[FieldGroup::Contact]).await? {
                Read::Found(v) => v.contact,
                Read::Shredded | Read::Missing => None,
            };
            let Some(email) = contact.and_then(|c| c.email) else {
                return Ok(false);
            };
            let Ok(to) = email.as_str().parse::<Mailbox>() else {
                return Ok(false);
            };
            // The same Message-ID on every attempt: a notice delivered
            // again after an interruption is recognisably the same one.
            let message = Message::builder()
                .from(relay.from.clone())
                .to(to)
                .subject(text.subject.clone())
                .message_id(Some(format!(
                    "<notice.{incident}.{person}@{}>",
                    relay.domain
                )))
                .header(ContentType::TEXT_PLAIN)
                .body(text.body.clone())
                .context("building the e-mail")?;
            relay.send(&message).await.with_context(|| {
                format!("incident {incident}: person {person}'s notice was not delivered")
            })
        }
        Sink::Letters(dir) => {
            let view = match vault
                .read(person, &[FieldGroup::Identity, FieldGroup::Contact])
                .await?
            {
                Read::Found(v) => v,
                Read::Shredded | Read::Missing => return Ok(false),
            };
            let (Some(identity), Some(contact)) = (view.identity, view.contact) else {
                return Ok(false);
            };
            let recipient = [
                format!("{} {}", identity.prenom.as_str(), identity.nom.as_str()),
                contact.adresse.ligne.as_str().to_string(),
                format!(
                    "{} {}",
                    contact.adresse.code_postal.as_str(),
                    contact.adresse.commune.as_str()
                ),
            ];
            let pdf = letter_pdf(text, &recipient)
                .with_context(|| format!("incident {incident}: person {person}'s letter"))?;
            let path = dir.join(format!("person-{person}.pdf"));
            tokio::task::spawn_blocking(move || crate::files::write_private(&path, &pdf)).await??;
            Ok(true)
        }
    }
}
