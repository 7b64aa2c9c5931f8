//! `rempart bench notices`: how long rendering and queueing one notice
//! per affected person takes (Art. 34; target: 1 million in 5 minutes),
//! against its two parts measured alone in the same process (reading
//! each person's contact from the vault; rendering and hashing each
//! notice), and the delivery rate through the real dispatcher: e-mails to
//! an SMTP server, PDF letters to a directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{Duration, Utc};
use clap::Args;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use rempart_breach::notice::{digest, render};
use rempart_breach::{Controller, Exposure, NoticeContext, NoticeFacts, Scope};
use rempart_domain::incident::{Compromised, NewIncident, Window};
use rempart_domain::{FieldGroup, NirView, OrganisationKind, PersonId};
use rempart_ledger::Timestamp;
use rempart_ledger::leaf::FieldGroups;

use crate::location::Location;
use crate::notices::{DispatchArgs, dispatch, prepare_notices};
use crate::registry::{GenerateArgs, ImportArgs};

#[derive(Args)]
pub struct NoticesBenchArgs {
    /// Persons in the registry, every one of them affected.
    #[arg(long, default_value_t = 1_000_000)]
    persons: u64,
    /// PostgreSQL URL for the registry instead of SQLite.
    #[arg(long)]
    database: Option<String>,
    /// Working directory (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Use the registry an earlier run left in --dir (and --database).
    #[arg(long)]
    reuse: bool,
    /// SMTP server to measure the e-mail delivery rate against, HOST:PORT.
    #[arg(long)]
    smtp: Option<String>,
    /// E-mails delivered for the rate (0: none; the notices stay queued).
    #[arg(long, default_value_t = 20_000)]
    emails: u64,
    /// Letters written for the rate (0: none).
    #[arg(long, default_value_t = 5_000)]
    letters: u64,
}

/// A synthetic exposure for person `p`, varied as real ones are: mostly
/// identity and contact, some with the status, a NIR masked or as a
/// token for some, a few pseudonymous only.
fn exposure(p: i64, organisation: rempart_domain::OrganisationId, at: Timestamp) -> Exposure {
    let r = (p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    let mut groups = match r % 100 {
        0..3 => {
            FieldGroups::of(&[FieldGroup::Nir, FieldGroup::Status]).with_nir_view(NirView::Token)
        }
        3..18 => FieldGroups::of(&[FieldGroup::Identity, FieldGroup::Contact, FieldGroup::Nir])
            .with_nir_view(NirView::Masked),
        18..40 => FieldGroups::of(&[
            FieldGroup::Identity,
            FieldGroup::Contact,
            FieldGroup::Status,
        ]),
        _ => FieldGroups::of(&[FieldGroup::Identity, FieldGroup::Contact]),
    };
    let nir = match groups.nir_view() {
        Some(NirView::Token) => Some(rempart_breach::NirSeen::Token),
        Some(NirView::Masked) => Some(rempart_breach::NirSeen::Masked),
        _ => None,
    };
    groups = groups.groups_only();
    Exposure {
        groups,
        nir,
        reads: 1 + r % 3,
        first: (at, p as u64),
        last: (
            Timestamp(at.0 + (r % 86_400) as i64 * 1_000_000),
            p as u64 + 1,
        ),
        organisations: vec![organisation],
    }
}

pub async fn bench_notices(args: &NoticesBenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let location = Location {
        data: dir.join("data"),
        database: args.database.clone(),
    };
    println!(
        "== notices: {} persons, registry on {}",
        args.persons,
        if args.database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    if !args.reuse {
        crate::registry::init(&location, crate::audit::DEFAULT_ORIGIN).await?;
        let csv = dir.join("csv");
        let started = Instant::now();
        crate::registry::generate(&GenerateArgs {
            persons: args.persons,
            seed: 1,
            out: csv.clone(),
            today: None,
        })?;
        crate::registry::import(&ImportArgs {
            location: location.clone(),
            strict: false,
            rejects: dir.join("rejects.csv"),
            batch: 8192,
            today: None,
            inputs: vec![csv],
        })
        .await?;
        println!(
            "registry generated and imported in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let stores = location.open_stores().await?;
    let vault = location.open_vault().await?;
    let (organisation, _) = stores
        .registry
        .organisations()
        .await?
        .into_iter()
        .find(|(_, o)| o.kind == OrganisationKind::CapEmploi)
        .context("the registry has no Cap emploi organisation")?;
    let now = Utc::now();
    let window = Window::new(now - Duration::days(7), now - Duration::days(1))?;
    let id = stores
        .incidents
        .open_incident(
            &NewIncident {
                title: "Banc d'essai des notifications".into(),
                compromised: vec![Compromised::Organisation(organisation)],
                window,
                aware_at: now,
                opened_by: "bench".into(),
            },
            now,
        )
        .await?;
    let at = Timestamp::from_datetime(window.from());
    let n = i64::try_from(args.persons)?;
    let scope = Scope {
        compromised: vec![Compromised::Organisation(organisation)],
        window,
        tree_size: args.persons * 2,
        persons: (1..=n)
            .map(|p| (PersonId::new(p), exposure(p, organisation, at)))
            .collect(),
        leaves: args.persons,
        revealing: args.persons,
        refused: BTreeMap::new(),
        refused_only_persons: 0,
        leaf_range: Some((0, args.persons * 2 - 1)),
    };
    let context = NoticeContext {
        controller: Controller {
            name: "France Travail".into(),
            dpo: "Délégué à la protection des données, dpo@exemple.invalid".into(),
        },
        measures: "Les comptes utilisés ont été suspendus dès la détection.".into(),
    };

    let p = prepare_notices(&stores, &vault, id, &scope, &context, true).await?;
    let handled = p.queued + p.already + p.unreachable;
    println!(
        "rendered and queued: {} notices ({} e-mail, {} letter; {} exempt, {} unreachable) in {:.1} s = {:.0}/s (target: 1,000,000 in 300 s)",
        p.queued,
        p.email,
        p.letter,
        p.exempt,
        p.unreachable,
        p.seconds,
        handled as f64 / p.seconds
    );

    // The two parts alone, in the same process, over the same persons.
    let to_inform: Vec<&(PersonId, Exposure)> = scope
        .persons
        .iter()
        .filter(|(_, e)| !e.pseudonymous_only())
        .collect();
    let started = Instant::now();
    let read: u64 = stream::iter(to_inform.iter().map(|(person, _)| {
        let vault = vault.clone();
        async move {
            Ok::<_, anyhow::Error>(u64::from(matches!(
                vault.read(*person, &[FieldGroup::Contact]).await?,
                rempart_vault::Read::Found(_)
            )))
        }
    }))
    .buffer_unordered(64)
    .try_fold(0u64, |a, b| async move { Ok(a + b) })
    .await?;
    let read_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut bytes = 0usize;
    for (_, e) in &to_inform {
        let facts = NoticeFacts::of(id, e, [OrganisationKind::CapEmploi]);
        let text = render(&facts, &context);
        bytes += text.body.len();
        std::hint::black_box(digest(&text));
    }
    let render_s = started.elapsed().as_secs_f64();
    println!(
        "  alone: contact reads {read} in {read_s:.1} s = {:.0}/s; rendering and hashing {} in {render_s:.1} s = {:.0}/s ({} bytes per notice); queueing is the rest",
        read as f64 / read_s,
        to_inform.len(),
        to_inform.len() as f64 / render_s,
        bytes / to_inform.len().max(1)
    );
    println!(
        "  ratio: rendered and queued / (reads + rendering) alone = {:.2}",
        p.seconds / (read_s + render_s)
    );

    // The arguments of the real dispatcher, unpaced, 8 workers, for at most
    // `limit` notices.
    let batch = |smtp: Option<String>, letters: Option<PathBuf>, limit: u64| DispatchArgs {
        location: location.clone(),
        id: id.get(),
        smtp,
        from: "dpo@exemple.invalid".into(),
        letters,
        rate: 1e9,
        limit: Some(limit),
        claim_seconds: 120,
        parallel: 8,
    };
    if let Some(relay) = args.smtp.as_ref().filter(|_| args.emails > 0) {
        let d = dispatch(&batch(Some(relay.clone()), None, args.emails)).await?;
        println!(
            "e-mail delivery: {} in {:.1} s = {:.0}/s (8 workers, each notice claimed and recorded in the register around its SMTP transaction)",
            d.sent,
            d.seconds,
            d.sent as f64 / d.seconds
        );
    }
    if args.letters > 0 {
        let d = dispatch(&batch(None, Some(tmp.path().join("letters")), args.letters)).await?;
        println!(
            "letters: {} PDF files in {:.1} s = {:.0}/s (each written, synced and renamed before it is recorded)",
            d.sent,
            d.seconds,
            d.sent as f64 / d.seconds
        );
    }
    Ok(())
}
