//! The notification to the supervisory authority (GDPR Art. 33): a draft
//! in French, as Markdown for the officer and JSON for tools, built from
//! the register's incident and its exact scope. It holds what Art. 33(3)
//! requires — nature of the breach, categories and numbers of persons and
//! of records, the DPO's contact, likely consequences, measures taken and
//! planned — and the 72-hour clock of Art. 33(1), with the reasons for a
//! delay when the initial notification is late (the draft is refused
//! without them).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use rempart_domain::incident::{Compromised, Incident, Milestone};
use rempart_domain::{FieldGroup, OrganisationId, OrganisationKind};
use serde::Serialize;

use crate::scope::{NirSeen, Scope};

/// The controller, as every draft and notice names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Controller {
    /// The controller's name.
    pub name: String,
    /// How to reach its data protection officer (an address, an e-mail).
    pub dpo: String,
}

/// What the draft says of an organisation: its name and kind, from the
/// registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrganisationLabel {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: OrganisationKind,
}

/// Which notification this is (Art. 33(4): information may be provided in
/// phases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The first, due within 72 hours of awareness.
    Initial,
    /// A later one, once the authority was notified.
    Complementary,
}

/// Why a draft cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DraftError {
    /// The initial notification is late and no reason was given
    /// (Art. 33(1) requires it).
    #[error(
        "delay reason: the initial notification is {hours_late} h past the 72 hours; Art. 33(1) requires the reasons for the delay"
    )]
    DelayReasonMissing {
        /// Hours past the deadline.
        hours_late: i64,
    },
    /// The reason given is empty or too long.
    #[error("delay reason: {0}")]
    DelayReasonInvalid(&'static str),
}

/// Where the 72 hours stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clock {
    /// When the controller became aware.
    pub aware_at: DateTime<Utc>,
    /// Awareness plus 72 hours.
    pub deadline: DateTime<Utc>,
    /// When the authority was notified, if it was.
    pub notified_at: Option<DateTime<Utc>>,
    /// Whole hours left before the deadline (0 once past).
    pub hours_left: i64,
    /// Whole hours past the deadline at notification (or now, if not yet
    /// notified); 0 when on time.
    pub hours_late: i64,
}

/// One category of data, with the persons it was shown of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Category {
    /// The field group's code.
    pub group: FieldGroup,
    /// What it holds, in French.
    pub label: &'static str,
    /// Persons shown it.
    pub persons: u64,
}

/// An organisation whose accounts were shown data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrganisationCount {
    /// Its id.
    pub id: i64,
    /// Its name and kind, if the registry still has it.
    pub label: Option<OrganisationLabel>,
    /// Persons shown to its accounts.
    pub persons: u64,
}

/// The ledger's proof of the figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// The ledger size the scope covers.
    pub tree_size: u64,
    /// The lowest and highest leaf counted.
    pub leaf_range: Option<(u64, u64)>,
    /// A signed checkpoint of at least that size (C2SP signed note).
    pub checkpoint: String,
}

/// A draft of the notification to the CNIL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Art33Draft {
    /// Initial or complementary.
    pub phase: Phase,
    /// The register's number.
    pub incident: i64,
    /// The incident's title.
    pub title: String,
    /// The controller and its DPO's contact (Art. 33(3)(b)).
    pub controller: Controller,
    /// When the draft was made.
    pub drafted_at: DateTime<Utc>,
    /// The 72 hours.
    pub clock: Clock,
    /// The reasons for the delay, when late.
    pub delay_reason: Option<String>,
    /// Start of the breach, inclusive.
    pub window_from: DateTime<Utc>,
    /// End of the breach, exclusive.
    pub window_to: DateTime<Utc>,
    /// The nature of the breach (Art. 33(3)(a)), in French.
    pub nature: String,
    /// What was compromised, in French.
    pub compromised: Vec<String>,
    /// Persons whose data was shown: the exact count from the ledger.
    pub persons: u64,
    /// Of whom shown only pseudonymous or masked values (Art. 34(3)(a)).
    pub persons_pseudonymous_only: u64,
    /// Records shown (each a consultation that revealed data).
    pub records: u64,
    /// Attempts refused.
    pub refused_attempts: u64,
    /// Categories of data, with persons.
    pub categories: Vec<Category>,
    /// Persons by how their NIR was shown.
    pub nir_views: BTreeMap<String, u64>,
    /// Persons by organisation.
    pub organisations: Vec<OrganisationCount>,
    /// Persons by département, when the notices were prepared (it needs
    /// their address).
    pub departements: Option<BTreeMap<String, u64>>,
    /// Likely consequences (Art. 33(3)(c)).
    pub consequences: Vec<String>,
    /// Measures taken (Art. 33(3)(d)), from the timeline.
    pub measures_taken: Vec<String>,
    /// Measures planned.
    pub measures_planned: Vec<String>,
    /// The ledger's proof.
    pub evidence: Evidence,
}

/// What a field group holds, in plain French.
pub fn group_label(g: FieldGroup) -> &'static str {
    match g {
        FieldGroup::Identity => {
            "identité (nom, prénom, date de naissance, identifiant France Travail)"
        }
        FieldGroup::Contact => "coordonnées (adresse postale, adresse électronique, téléphone)",
        FieldGroup::Nir => "numéro de sécurité sociale (NIR)",
        FieldGroup::Status => "situation d'inscription (statut, dates d'inscription et de fin)",
    }
}

/// An organisation kind, in French, with its article.
pub fn kind_label(k: OrganisationKind) -> &'static str {
    match k {
        OrganisationKind::FranceTravail => "une agence France Travail",
        OrganisationKind::CapEmploi => "un organisme Cap emploi",
        OrganisationKind::MissionLocale => "une Mission Locale",
        OrganisationKind::TrainingProvider => "un organisme de formation",
        OrganisationKind::Processor => "un prestataire de traitement de documents",
    }
}

fn nir_label(n: NirSeen) -> &'static str {
    match n {
        NirSeen::Token => "jeton pseudonyme",
        NirSeen::Masked => "masqué (sexe, année et mois de naissance)",
        NirSeen::Clear => "en clair",
        NirSeen::NotRecorded => "vue non enregistrée (comptée en clair)",
    }
}

/// A French date and time, in UTC.
pub(crate) fn when(at: DateTime<Utc>) -> String {
    at.format("%d/%m/%Y à %H:%M UTC").to_string()
}

/// What a draft is made from.
#[derive(Debug, Clone, Copy)]
pub struct DraftFacts<'a> {
    /// The register's incident.
    pub incident: &'a Incident,
    /// Its exact scope.
    pub scope: &'a Scope,
    /// A signed checkpoint covering the scope.
    pub checkpoint: &'a str,
    /// Names and kinds of the organisations involved.
    pub organisations: &'a BTreeMap<OrganisationId, OrganisationLabel>,
    /// Persons by département, once the notices were prepared.
    pub departements: Option<&'a BTreeMap<String, u64>>,
}

/// The longest delay reason kept.
const MAX_REASON_CHARS: usize = 2_000;

impl Art33Draft {
    /// Builds the draft of `facts.incident` at `now`. The phase follows
    /// the timeline: initial until the authority was notified,
    /// complementary after. A late initial draft needs `delay_reason`.
    pub fn new(
        facts: DraftFacts<'_>,
        controller: &Controller,
        delay_reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, DraftError> {
        let DraftFacts {
            incident,
            scope,
            checkpoint,
            organisations,
            departements,
        } = facts;
        let deadline = incident.notification_deadline();
        let notified_at = incident.reached(Milestone::AuthorityNotified);
        let phase = if notified_at.is_some() {
            Phase::Complementary
        } else {
            Phase::Initial
        };
        let reference = notified_at.unwrap_or(now);
        let hours_late = if reference > deadline {
            // A started hour counts: 30 minutes late is late.
            ((reference - deadline).num_minutes() + 59) / 60
        } else {
            0
        };
        let delay_reason = match delay_reason.map(str::trim) {
            Some("") => return Err(DraftError::DelayReasonInvalid("must not be empty")),
            Some(r) if r.chars().count() > MAX_REASON_CHARS => {
                return Err(DraftError::DelayReasonInvalid("at most 2000 characters"));
            }
            Some(r) => Some(r.to_string()),
            None if phase == Phase::Initial && hours_late > 0 => {
                return Err(DraftError::DelayReasonMissing { hours_late });
            }
            None => None,
        };
        let clock = Clock {
            aware_at: incident.aware_at,
            deadline,
            notified_at,
            hours_left: if now < deadline {
                (deadline - now).num_hours()
            } else {
                0
            },
            hours_late,
        };
        let compromised = incident
            .compromised
            .iter()
            .map(|c| match c {
                Compromised::Account(a) => format!("compte {a}"),
                Compromised::Organisation(o) => match organisations.get(o) {
                    Some(l) => format!(
                        "tous les comptes de l'organisme {o} ({}, {})",
                        l.name,
                        kind_label(l.kind)
                    ),
                    None => format!("tous les comptes de l'organisme {o}"),
                },
            })
            .collect();
        let by_group = scope.persons_by_group();
        let categories = FieldGroup::ALL
            .iter()
            .filter_map(|g| {
                by_group.get(g).map(|n| Category {
                    group: *g,
                    label: group_label(*g),
                    persons: *n,
                })
            })
            .collect();
        let nir = scope.persons_by_nir();
        let nir_views = nir
            .iter()
            .map(|(v, n)| (v.as_str().to_string(), *n))
            .collect();
        let organisations_counted = scope
            .persons_by_organisation()
            .into_iter()
            .map(|(o, n)| OrganisationCount {
                id: o.get(),
                label: organisations.get(&o).cloned(),
                persons: n,
            })
            .collect();
        let identifies = nir.iter().any(|(v, n)| v.identifies() && *n > 0);
        let mut consequences = Vec::new();
        if by_group.contains_key(&FieldGroup::Contact) {
            consequences.push(
                "Hameçonnage ciblé (courriels, SMS, appels) se réclamant de France Travail ou d'un organisme partenaire, rendu crédible par les données consultées.".to_string(),
            );
        }
        if identifies && by_group.contains_key(&FieldGroup::Identity) {
            consequences.push(
                "Usurpation d'identité : l'identité et le NIR en clair permettent des démarches frauduleuses (ouverture de comptes, prestations sociales).".to_string(),
            );
        }
        // A status seen with nothing identifying says nothing of anyone.
        let identified_status = scope
            .persons
            .iter()
            .any(|(_, e)| !e.pseudonymous_only() && e.groups.contains(FieldGroup::Status));
        if identified_status {
            consequences.push(
                "Atteinte à la vie privée : la situation de demandeur d'emploi est révélée, et peut servir d'appât (fausses offres, fausses aides).".to_string(),
            );
        }
        if consequences.is_empty() {
            consequences.push(
                "Risque faible : seules des valeurs pseudonymes ou masquées ont été vues, inintelligibles sans la clé (art. 34(3)(a)).".to_string(),
            );
        }
        let mut measures_taken: Vec<String> = incident
            .timeline
            .iter()
            .filter(|e| {
                !matches!(
                    e.milestone,
                    Milestone::Opened | Milestone::AuthorityNotified
                )
            })
            .map(|e| {
                let what = match e.milestone {
                    Milestone::Contained => "Confinement",
                    Milestone::Scoped => "Périmètre établi depuis le journal d'audit",
                    Milestone::PersonsInformed => "Personnes informées",
                    Milestone::Closed => "Clôture",
                    Milestone::Opened | Milestone::AuthorityNotified => "Étape",
                };
                match &e.note {
                    Some(n) => format!("{} ({what}) : {n}", when(e.at)),
                    None => format!("{} ({what})", when(e.at)),
                }
            })
            .collect();
        measures_taken.push(format!(
            "Périmètre exact établi depuis le journal d'audit signé (arbre de {} feuilles) : chaque consultation des comptes compromis est comptée.",
            scope.tree_size
        ));
        let to_inform = scope.persons.len() as u64 - scope.pseudonymous_only();
        let mut measures_planned = Vec::new();
        if to_inform > 0 {
            measures_planned.push(format!(
                "Communication à chaque personne concernée (art. 34), soit {to_inform} : par courriel, ou par courrier à défaut d'adresse électronique, et dans son espace personnel."
            ));
        }
        if scope.pseudonymous_only() > 0 {
            measures_planned.push(format!(
                "Personnes exposées uniquement à des valeurs pseudonymes ou masquées, sans communication individuelle (art. 34(3)(a)) : {}.",
                scope.pseudonymous_only()
            ));
        }
        measures_planned.push(
            "Revue des droits d'accès des organismes concernés et réinitialisation des moyens d'authentification des comptes compromis.".to_string(),
        );
        Ok(Art33Draft {
            phase,
            incident: incident.id.get(),
            title: incident.title.clone(),
            controller: controller.clone(),
            drafted_at: now,
            clock,
            delay_reason,
            window_from: incident.window.from(),
            window_to: incident.window.to(),
            nature: "Violation de la confidentialité : consultation de données personnelles de demandeurs d'emploi par des comptes d'accès compromis ou détournés.".to_string(),
            compromised,
            persons: scope.persons.len() as u64,
            persons_pseudonymous_only: scope.pseudonymous_only(),
            records: scope.revealing,
            refused_attempts: scope.refused.values().sum(),
            categories,
            nir_views,
            organisations: organisations_counted,
            departements: departements.cloned(),
            consequences,
            measures_taken,
            measures_planned,
            evidence: Evidence {
                tree_size: scope.tree_size,
                leaf_range: scope.leaf_range,
                checkpoint: checkpoint.to_string(),
            },
        })
    }

    /// The draft as Markdown, in French.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let phase = match self.phase {
            Phase::Initial => "initiale",
            Phase::Complementary => "complémentaire",
        };
        let _ = writeln!(
            md,
            "# Notification de violation de données à la CNIL — {phase}\n"
        );
        let _ = writeln!(
            md,
            "*Projet établi le {} — incident n° {} du registre des violations (art. 33(5)).*\n",
            when(self.drafted_at),
            self.incident
        );
        let _ = writeln!(md, "## Délai de 72 heures (art. 33(1))\n");
        let _ = writeln!(
            md,
            "- Prise de connaissance : {}",
            when(self.clock.aware_at)
        );
        let _ = writeln!(md, "- Échéance : {}", when(self.clock.deadline));
        match (self.clock.notified_at, self.clock.hours_late) {
            (Some(at), 0) => {
                let _ = writeln!(md, "- Notification initiale : {} (dans le délai)", when(at));
            }
            (Some(at), late) => {
                let _ = writeln!(
                    md,
                    "- Notification initiale : {} ({late} h après l'échéance)",
                    when(at)
                );
            }
            (None, 0) => {
                let _ = writeln!(
                    md,
                    "- État : **{} h restantes** pour notifier",
                    self.clock.hours_left
                );
            }
            (None, late) => {
                let _ = writeln!(md, "- État : **en retard de {late} h**");
            }
        }
        if let Some(r) = &self.delay_reason {
            let _ = writeln!(md, "- Motifs du retard : {r}");
        }
        let _ = writeln!(md, "\n## Responsable du traitement\n");
        let _ = writeln!(md, "- {}", self.controller.name);
        let _ = writeln!(
            md,
            "- Contact du délégué à la protection des données : {}",
            self.controller.dpo
        );
        let _ = writeln!(md, "\n## Nature de la violation (art. 33(3)(a))\n");
        let _ = writeln!(md, "{}\n", self.nature);
        let _ = writeln!(md, "- Intitulé : {}", self.title);
        let _ = writeln!(
            md,
            "- Période : du {} au {}",
            when(self.window_from),
            when(self.window_to)
        );
        let _ = writeln!(md, "- Compromis : {}", self.compromised.join(" ; "));
        let _ = writeln!(md, "\n## Personnes et enregistrements concernés\n");
        let _ = writeln!(
            md,
            "- Personnes concernées (demandeurs d'emploi) : **{}** (nombre exact, établi depuis le journal d'audit)",
            self.persons
        );
        let _ = writeln!(
            md,
            "- dont exposées uniquement à des valeurs pseudonymes ou masquées : {}",
            self.persons_pseudonymous_only
        );
        let _ = writeln!(
            md,
            "- Enregistrements consultés : {} ; tentatives refusées : {}",
            self.records, self.refused_attempts
        );
        let _ = writeln!(md, "\n## Catégories de données\n");
        let _ = writeln!(md, "| Catégorie | Personnes |\n|---|---:|");
        for c in &self.categories {
            let _ = writeln!(md, "| {} | {} |", c.label, c.persons);
        }
        if !self.nir_views.is_empty() {
            let _ = writeln!(md, "\nNIR, selon la forme sous laquelle il a été vu :\n");
            for (v, n) in &self.nir_views {
                let label = match v.as_str() {
                    "token" => nir_label(NirSeen::Token),
                    "masked" => nir_label(NirSeen::Masked),
                    "clear" => nir_label(NirSeen::Clear),
                    _ => nir_label(NirSeen::NotRecorded),
                };
                let _ = writeln!(md, "- {label} : {n}");
            }
        }
        if !self.organisations.is_empty() {
            let _ = writeln!(md, "\n### Par organisme\n");
            let _ = writeln!(md, "| Organisme | Personnes |\n|---|---:|");
            for o in &self.organisations {
                let name = match &o.label {
                    Some(l) => format!("{} ({}, n° {})", l.name, kind_label(l.kind), o.id),
                    None => format!("n° {}", o.id),
                };
                let _ = writeln!(md, "| {name} | {} |", o.persons);
            }
        }
        match &self.departements {
            Some(d) if !d.is_empty() => {
                let _ = writeln!(
                    md,
                    "\n### Par département (personnes à informer, selon leur adresse)\n"
                );
                let _ = writeln!(md, "| Département | Personnes |\n|---|---:|");
                for (dep, n) in d {
                    let _ = writeln!(md, "| {dep} | {n} |");
                }
            }
            Some(_) => {
                let _ = writeln!(
                    md,
                    "\n*Répartition par département : aucune personne à informer.*"
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "\n*Répartition par département : disponible une fois les communications préparées (`rempart incident notify`).*"
                );
            }
        }
        let _ = writeln!(md, "\n## Conséquences probables (art. 33(3)(c))\n");
        for c in &self.consequences {
            let _ = writeln!(md, "- {c}");
        }
        let _ = writeln!(md, "\n## Mesures prises (art. 33(3)(d))\n");
        for m in &self.measures_taken {
            let _ = writeln!(md, "- {m}");
        }
        let _ = writeln!(md, "\n## Mesures envisagées\n");
        for m in &self.measures_planned {
            let _ = writeln!(md, "- {m}");
        }
        let _ = writeln!(md, "\n## Preuve\n");
        match self.evidence.leaf_range {
            Some((lo, hi)) => {
                let _ = writeln!(
                    md,
                    "Feuilles {lo} à {hi} du journal d'audit, couvertes par le point de contrôle signé ci-dessous (taille {}) ; toute feuille se prouve par `rempart audit prove`.\n",
                    self.evidence.tree_size
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "Aucune feuille des comptes compromis dans la période, dans un journal de {} feuilles.\n",
                    self.evidence.tree_size
                );
            }
        }
        let _ = writeln!(md, "```");
        let _ = write!(md, "{}", self.evidence.checkpoint);
        if !self.evidence.checkpoint.ends_with('\n') {
            md.push('\n');
        }
        let _ = writeln!(md, "```");
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Exposure;
    use chrono::Duration;
    use rempart_domain::incident::{Event, IncidentId, Window};
    use rempart_domain::{AccountId, NirView};
    use rempart_ledger::leaf::{DenyReason, FieldGroups};
    use rempart_ledger::{PersonId, Timestamp};

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000, 0).unwrap_or_default() + Duration::hours(hours)
    }

    fn incident(timeline: Vec<(Milestone, i64, Option<&str>)>) -> Incident {
        Incident {
            id: IncidentId::new(3),
            title: "Comptes Cap emploi détournés".into(),
            compromised: vec![
                Compromised::Organisation(OrganisationId::new(7)),
                Compromised::Account(AccountId::new(70)),
            ],
            window: Window::new(at(-48), at(-1)).unwrap(),
            aware_at: at(0),
            opened_by: "rssi".into(),
            timeline: timeline
                .into_iter()
                .map(|(milestone, h, note)| Event {
                    at: at(h),
                    milestone,
                    note: note.map(String::from),
                    recorded_at: at(h),
                })
                .collect(),
        }
    }

    fn exposure(groups: &[FieldGroup], view: NirView) -> Exposure {
        let g = FieldGroups::of(groups).with_nir_view(view);
        Exposure {
            groups: g.groups_only(),
            nir: NirSeen::of(g),
            reads: 2,
            first: (Timestamp::from_datetime(at(-40)), 5),
            last: (Timestamp::from_datetime(at(-30)), 9),
            organisations: vec![OrganisationId::new(7)],
        }
    }

    fn scope() -> Scope {
        use FieldGroup::*;
        Scope {
            compromised: vec![],
            window: Window::new(at(-48), at(-1)).unwrap(),
            tree_size: 100,
            persons: vec![
                (
                    PersonId::new(1),
                    exposure(&[Identity, Contact, Nir], NirView::Masked),
                ),
                (
                    PersonId::new(2),
                    exposure(&[Identity, Status], NirView::None),
                ),
                (PersonId::new(3), exposure(&[Nir, Status], NirView::Token)),
            ],
            leaves: 8,
            revealing: 6,
            refused: [(DenyReason::NoMandate, 2)].into_iter().collect(),
            refused_only_persons: 1,
            leaf_range: Some((5, 40)),
        }
    }

    fn draft(
        i: &Incident,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Art33Draft, DraftError> {
        let orgs: BTreeMap<OrganisationId, OrganisationLabel> = [(
            OrganisationId::new(7),
            OrganisationLabel {
                name: "Cap emploi Isère".into(),
                kind: OrganisationKind::CapEmploi,
            },
        )]
        .into_iter()
        .collect();
        let deps: BTreeMap<String, u64> = [("38".to_string(), 2)].into_iter().collect();
        let s = scope();
        Art33Draft::new(
            DraftFacts {
                incident: i,
                scope: &s,
                checkpoint: "rempart.example/ledger\n100\nAAAA\n\n— sig\n",
                organisations: &orgs,
                departements: Some(&deps),
            },
            &Controller {
                name: "France Travail".into(),
                dpo: "dpo@example.org".into(),
            },
            reason,
            now,
        )
    }

    #[test]
    fn an_initial_draft_within_72_hours_counts_what_the_scope_found() {
        let i = incident(vec![
            (Milestone::Opened, 0, None),
            (Milestone::Contained, 1, Some("comptes suspendus")),
        ]);
        let d = draft(&i, None, at(10)).unwrap();
        assert_eq!(d.phase, Phase::Initial);
        assert_eq!(d.clock.hours_left, 62);
        assert_eq!(d.clock.hours_late, 0);
        assert_eq!((d.persons, d.persons_pseudonymous_only), (3, 1));
        assert_eq!((d.records, d.refused_attempts), (6, 2));
        let by: Vec<(FieldGroup, u64)> =
            d.categories.iter().map(|c| (c.group, c.persons)).collect();
        use FieldGroup::*;
        assert_eq!(by, vec![(Identity, 2), (Contact, 1), (Nir, 2), (Status, 2)]);
        let md = d.to_markdown();
        assert!(md.contains("Notification de violation de données à la CNIL — initiale"));
        assert!(md.contains("**62 h restantes**"));
        assert!(md.contains("Personnes concernées (demandeurs d'emploi) : **3**"));
        assert!(md.contains("Cap emploi Isère (un organisme Cap emploi, n° 7)"));
        assert!(md.contains("| 38 | 2 |"));
        assert!(md.contains("comptes suspendus"));
        assert!(md.contains("dpo@example.org"));
        assert!(md.contains("Hameçonnage"));
        // Masked and token NIRs only: no identity-theft consequence.
        assert!(!md.contains("Usurpation"));
        assert!(md.contains("Feuilles 5 à 40"));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["phase"], "initial");
        assert_eq!(json["persons"], 3);
        assert_eq!(json["nir_views"]["token"], 1);
        assert_eq!(json["departements"]["38"], 2);
    }

    #[test]
    fn tokens_only_propose_no_notice() {
        let i = incident(vec![(Milestone::Opened, 0, None)]);
        let mut s = scope();
        s.persons.retain(|(p, _)| p.get() == 3);
        let orgs = BTreeMap::new();
        let none = BTreeMap::new();
        let d = Art33Draft::new(
            DraftFacts {
                incident: &i,
                scope: &s,
                checkpoint: "c\n",
                organisations: &orgs,
                departements: Some(&none),
            },
            &Controller {
                name: "France Travail".into(),
                dpo: "dpo@example.org".into(),
            },
            None,
            at(1),
        )
        .unwrap();
        assert_eq!((d.persons, d.persons_pseudonymous_only), (1, 1));
        let md = d.to_markdown();
        assert!(md.contains("Risque faible"), "{md}");
        assert!(!md.contains("Communication à chaque personne"), "{md}");
        assert!(
            md.contains("sans communication individuelle (art. 34(3)(a)) : 1."),
            "{md}"
        );
        assert!(md.contains("aucune personne à informer"), "{md}");
    }

    #[test]
    fn a_late_initial_draft_needs_the_reasons_for_the_delay() {
        let i = incident(vec![(Milestone::Opened, 0, None)]);
        // 72 h and one minute: late by a started hour.
        let late = at(72) + Duration::minutes(1);
        assert_eq!(
            draft(&i, None, late),
            Err(DraftError::DelayReasonMissing { hours_late: 1 })
        );
        assert_eq!(
            draft(&i, Some("  "), late),
            Err(DraftError::DelayReasonInvalid("must not be empty"))
        );
        let d = draft(&i, Some("périmètre établi au 4e jour"), late).unwrap();
        assert!(d.to_markdown().contains("**en retard de 1 h**"));
        assert!(
            d.to_markdown()
                .contains("Motifs du retard : périmètre établi au 4e jour")
        );
        // On time to the minute: no reason asked.
        assert!(draft(&i, None, at(72)).is_ok());
    }

    #[test]
    fn once_notified_the_draft_is_complementary_and_says_when() {
        let i = incident(vec![
            (Milestone::Opened, 0, None),
            (Milestone::AuthorityNotified, 80, None),
        ]);
        // Notified 8 h late: the complementary draft says so, and asks
        // nothing more (the reasons went with the initial one).
        let d = draft(&i, None, at(200)).unwrap();
        assert_eq!(d.phase, Phase::Complementary);
        assert_eq!(d.clock.hours_late, 8);
        assert!(d.to_markdown().contains("— complémentaire"));
        assert!(d.to_markdown().contains("(8 h après l'échéance)"));
    }
}
