//! Partner reads: what an agent, or a program through the API, reads
//! persons with. [`Consultation::read_person`] (THE consultation),
//! [`Consultation::search`], [`Consultation::caseload`] and
//! [`Consultation::break_glass`], each read top to bottom: authenticate →
//! authorize → guard → vault → ledger → response.
//!
//! The stages come from the kernel (authentication, the ledger) and the
//! stage modules (`authorize`, `guard`); the reads themselves fetch what
//! only they need from the store and the vault (the consultation rows,
//! search candidates, caseload pages, the break-glass mandate and its
//! sealed reason), every failure of it ledgered through
//! [`Consultation::fail_on`].

use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, Utc};
use rempart_domain::{
    Contact, FieldGroup, Identity, Nir, PersonId, Purpose, Reference, Registration,
};
use rempart_guard::{AttemptKind, Fields, Observed, SearchKind};
use rempart_ledger::{
    Action as LeafAction, Decision as LeafDecision, DenyReason, FieldGroups, LeafRef,
};
use rempart_policy::{Action, Decision, NirView, Who};
use rempart_storage::{ConsultationRows, NewBreakGlassReason, NewMandate, StoredMandate};
use rempart_vault::Read;

use crate::authenticate::{self, Caller, Via};
use crate::authorize::{
    self, GRANT_PREFIX, MAX_REASON_BYTES, break_glass_source, mandate_reference, written_reason,
};
use crate::guard::{Attempts, Pending, deny_leaf, fields};
use crate::kernel::{ChangeRefusal, Consultation, Ctx, Presented, Refusal};
use crate::views::CaseloadEntry;

/// Largest caseload page.
pub const MAX_PAGE: u32 = 1000;
/// Longest name accepted in a search, in characters.
const MAX_SEARCH_NAME: usize = 100;

/// How the NIR is shown to this caller.
#[derive(Clone, PartialEq, Eq)]
pub enum NirShown {
    /// France Travail: the NIR itself.
    Clear(String),
    /// Partners: sex, year and month of birth only.
    Masked(String),
    /// Processors: a pseudonymous token, stable per processor.
    Token(String),
}

impl std::fmt::Debug for NirShown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NirShown::Clear(_) => "NirShown::Clear(<redacted>)",
            NirShown::Masked(_) => "NirShown::Masked(<redacted>)",
            NirShown::Token(_) => "NirShown::Token(<redacted>)",
        })
    }
}

/// One person as shown to one caller for one purpose: exactly the field
/// groups the policy allowed, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The person's id in the registry.
    pub person_id: PersonId,
    /// The purpose it was read for.
    pub purpose: Purpose,
    /// The groups present, in `FieldGroup::ALL` order.
    pub field_groups: Vec<FieldGroup>,
    /// Identity, if the policy shows it.
    pub identity: Option<Identity>,
    /// Contact details, if the policy shows them.
    pub contact: Option<Contact>,
    /// Registration status, if the policy shows it.
    pub status: Option<Registration>,
    /// The NIR, as the policy shows it to this caller, if at all.
    pub nir: Option<NirShown>,
    /// How the policy lets this caller see the NIR (what the ledger
    /// records, whether or not the person has one).
    pub nir_view: NirView,
    /// Where the consultation sits in the audit ledger: its index, or the
    /// receipt of a leaf staged for the integrating server.
    pub ledger: LeafRef,
}

impl Shown {
    /// The field groups shown and the NIR's view, as the ledger records
    /// them (breach scoping tells a clear NIR from a token by them).
    pub fn ledger_groups(&self) -> FieldGroups {
        FieldGroups::of(&self.field_groups).with_nir_view(self.nir_view)
    }
}

/// What a search looks for: exact values only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchBy {
    /// One NIR.
    Nir(Nir),
    /// Family name, first name and birth date, exactly (see
    /// [`SearchBy::name_birth`]).
    NameBirth {
        /// Family name.
        nom: String,
        /// First name.
        prenom: String,
        /// Birth date.
        born: NaiveDate,
    },
}

impl SearchBy {
    /// An exact name + birth date search. Wildcards and partial values are
    /// refused: search finds one person the caller already knows, it does
    /// not browse.
    pub fn name_birth(nom: &str, prenom: &str, born: NaiveDate) -> Result<Self, Refusal> {
        Ok(SearchBy::NameBirth {
            nom: exact_name("nom", nom)?,
            prenom: exact_name("prenom", prenom)?,
            born,
        })
    }
}

fn exact_name(field: &'static str, value: &str) -> Result<String, Refusal> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Refusal::invalid(field, "is empty"));
    }
    if v.chars().count() > MAX_SEARCH_NAME {
        return Err(Refusal::invalid(
            field,
            format!("is longer than {MAX_SEARCH_NAME} characters"),
        ));
    }
    if v.chars()
        .any(|c| matches!(c, '*' | '%' | '?' | '_' | '[' | ']'))
    {
        return Err(Refusal::invalid(
            field,
            "wildcards (* % ? _ [ ]) are not allowed: search is exact",
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(Refusal::invalid(field, "contains a control character"));
    }
    Ok(v.to_string())
}

/// The result of a search: the matching persons the caller may see. A
/// match outside the caller's mandates is left out, exactly as if it did
/// not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchResults {
    /// The persons shown, each with its own ledger leaf.
    pub persons: Vec<Shown>,
}

/// One page of a caseload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseloadPage {
    /// This page's live mandates, by person.
    pub entries: Vec<CaseloadEntry>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<PersonId>,
}

/// A break-glass request: one person, outside the caller's mandates, with a
/// written reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    /// The person to reach.
    pub person_id: PersonId,
    /// What for.
    pub purpose: Purpose,
    /// Why, in writing ([`MIN_REASON_CHARS`](crate::authorize::MIN_REASON_CHARS)
    /// characters to [`MAX_REASON_BYTES`] bytes).
    pub reason: String,
}

impl Consultation {
    /// Reads one person for a purpose. THE consultation. `from` is the
    /// client's address, if known (the guard tells new networks by it).
    pub async fn read_person(
        &self,
        presented: &Presented<'_>,
        from: Option<IpAddr>,
        person_id: PersonId,
        purpose: Purpose,
    ) -> Result<Shown, Refusal> {
        let now = self.now();
        let action = LeafAction::ReadPerson;

        // 0. One round trip for the rows every later stage needs: the
        //    credential, the person's mandates as stored right now, and the
        //    person's sealed groups. Nothing is decrypted before stage 4.
        //    A browser session is checked first (its row is in the
        //    authentication store), then the rows come in one trip too.
        let (caller, mut rows) = match presented {
            Presented::ApiCredential(token) => {
                let (credential_id, digest) = match authenticate::parse(token) {
                    Ok(parsed) => parsed,
                    Err(rejected) => return Err(self.reject(rejected, action, now).await),
                };
                let mut rows = match self.store.consultation_rows(credential_id, person_id).await {
                    Ok(rows) => rows,
                    Err(e) => return Err(self.unavailable(&e, action, now).await),
                };
                // 1. Authenticate.
                let checked =
                    authenticate::check(rows.credential.take(), credential_id, &digest, now);
                match checked {
                    Ok(caller) => (self.admit(caller, action, now).await?, rows),
                    Err(rejected) => return Err(self.reject(rejected, action, now).await),
                }
            }
            Presented::Nothing | Presented::Session { .. } | Presented::AccessToken { .. } => {
                // 1. Authenticate.
                let caller = self.authenticate(presented, action, now).await?;
                // No credential has id 0: the credential part stays empty.
                match self.store.consultation_rows(0, person_id).await {
                    Ok(rows) => (caller, rows),
                    Err(e) => return Err(self.unavailable(&e, action, now).await),
                }
            }
        };
        rows.credential = None;
        self.read_authenticated(&caller, from, person_id, purpose, rows, now)
            .await
    }

    /// Stages 2 to 6 of [`Consultation::read_person`], for a caller
    /// authenticated once already, over the rows read for the person (the
    /// credential part unused). Break-glass reads through here too: its
    /// request's device proof was checked once, at the top, and is never
    /// presented again.
    async fn read_authenticated(
        &self,
        caller: &Caller,
        from: Option<IpAddr>,
        person_id: PersonId,
        purpose: Purpose,
        rows: ConsultationRows,
        now: DateTime<Utc>,
    ) -> Result<Shown, Refusal> {
        let action = LeafAction::ReadPerson;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(caller, action, now).for_purpose(purpose);
        let attempts = self.attempts(&ctx, from);

        // 2. Authorize: the mandates and the policy. A denial is the
        //    guard's business too (enumeration, denied share).
        let decision = self
            .decide(&ctx, &who, person_id, purpose, &rows.mandates, now)
            .await?;
        if decision.is_denied() {
            let reason = denial(&who, &rows.mandates, purpose, now.date_naive());
            let attempt = attempts.of(AttemptKind::ReadPerson, Some(person_id), Fields::NONE);
            self.observed(
                &ctx,
                &attempt,
                Observed::Denied,
                deny_leaf(&ctx, &attempt, reason),
            )
            .await?;
            return Err(Refusal::NotFound);
        }

        // 3. Guard: quotas and behaviour, before anything is decrypted.
        let mut attempt = attempts.of(AttemptKind::ReadPerson, Some(person_id), fields(&decision));
        attempt.new_mandate = mandates_are_new(&who, &rows.mandates, purpose, now.date_naive());
        let verdict = self.screen(&ctx, &attempt).await?;

        // 4. Vault: open only the allowed groups.
        let shown = match &rows.person {
            Some(stored) => self.show(&ctx, caller, stored, purpose, &decision).await?,
            None => None,
        };
        let Some(mut shown) = shown else {
            let leaf = deny_leaf(&ctx, &attempt, DenyReason::UnknownPerson);
            self.observed(&ctx, &attempt, Observed::NotFound, leaf)
                .await?;
            return Err(Refusal::NotFound);
        };

        // 5. Ledger, durable before anything leaves.
        shown.ledger = self
            .record(ctx.leaf(
                Some(person_id),
                shown.ledger_groups(),
                LeafDecision::Allow,
                Some(verdict),
                None,
            ))
            .await?;

        // 6. Response.
        Ok(shown)
    }

    /// Exact search within the caller's mandates. `from` as for
    /// [`Consultation::read_person`].
    pub async fn search(
        &self,
        presented: &Presented<'_>,
        from: Option<IpAddr>,
        by: SearchBy,
        purpose: Purpose,
    ) -> Result<SearchResults, Refusal> {
        let started = tokio::time::Instant::now();
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::Search, now)
            .await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, LeafAction::Search, now).for_purpose(purpose);
        self.allow_registry_action(&ctx, &who, Action::Search, purpose, 0)
            .await?;
        // The query itself is counted (search quotas, enumeration) before
        // any lookup; each person it would show is checked below.
        let attempts = self.attempts(&ctx, from);
        let kind = AttemptKind::Search(match &by {
            SearchBy::Nir(_) => SearchKind::Nir,
            SearchBy::NameBirth { .. } => SearchKind::NameBirth,
        });
        let query = attempts.of(kind, None, Fields::NONE);
        self.screen(&ctx, &query).await?;

        let found = match &by {
            SearchBy::Nir(nir) => self.vault.find_by_nir(nir).await,
            SearchBy::NameBirth { nom, prenom, born } => {
                self.vault.find_by_name_birth(nom, prenom, *born).await
            }
        };
        let candidates = self.fail_on(&ctx, None, "vault search", found).await?;

        // A search costs the same whether what it found is out of the
        // caller's scope or does not exist (else its time tells one from
        // the other): one mandates read and one policy decision per
        // candidate, and as many for a miss, on no one; every leaf in one
        // durable append at the end, whatever the outcome.
        let looked_up = if candidates.is_empty() {
            vec![NO_ONE]
        } else {
            candidates
        };
        let mut pending: Vec<Pending> = Vec::new();
        let mut persons = Vec::new();
        for person_id in looked_up {
            let step = self
                .search_one(&ctx, &who, &attempts, kind, person_id, purpose)
                .await;
            match step {
                Ok(None) => {}
                Ok(Some((leaf, shown))) => {
                    pending.push(leaf);
                    persons.extend(shown);
                }
                Err(refusal) => {
                    // The denials seen so far are ledgered all the same.
                    if !pending.is_empty() {
                        let _ = self.settle(&ctx, pending).await;
                    }
                    return Err(refusal);
                }
            }
        }
        if pending.is_empty() {
            // Nobody found at all: a search miss for the guard, and the
            // query in the ledger. (Found but out of scope, the denials
            // above are the query's record and the guard's count: one
            // observation and one leaf either way, so that a miss and an
            // out-of-scope hit cost the same.)
            let leaf = ctx.leaf(None, FieldGroups::EMPTY, LeafDecision::Allow, None, None);
            match self.observe(&ctx, &query, Observed::NotFound, leaf).await {
                Ok(p) => pending.push(p),
                Err(refusal) => {
                    let _ = self.settle(&ctx, pending).await;
                    return Err(refusal);
                }
            }
        }
        let leaves: Vec<bool> = pending
            .iter()
            .map(|(l, _)| l.reveals_person_data())
            .collect();
        let first = self.settle(&ctx, pending).await?;
        if persons.is_empty() {
            // What is left of the difference (a few rows more to read and
            // decide on) is rounded away: an empty answer leaves on the
            // next multiple of the quantum since the request began.
            let quantum = EMPTY_SEARCH_QUANTUM.as_micros().max(1);
            let padded = started.elapsed().as_micros().div_ceil(quantum) * quantum;
            let padded = u64::try_from(padded).unwrap_or(u64::MAX);
            tokio::time::sleep_until(started + std::time::Duration::from_micros(padded)).await;
        }
        // Shown persons get the place of their own leaf, in order.
        if let Some(first) = first {
            let allowed = (0..).zip(leaves).filter(|(_, reveals)| *reveals);
            for (p, (i, _)) in persons.iter_mut().zip(allowed) {
                p.ledger = first.offset(i);
            }
        }
        Ok(SearchResults { persons })
    }

    /// One candidate of a search: its mandates, the policy's decision, and
    /// either a denial observed by the guard (its leaf, nothing shown) or,
    /// past the guard, the person opened (its leaf and the person, unless
    /// missing or shredded). [`NO_ONE`] costs the same and yields nothing.
    async fn search_one(
        &self,
        ctx: &Ctx<'_>,
        who: &Who,
        attempts: &Attempts,
        kind: AttemptKind,
        person_id: PersonId,
        purpose: Purpose,
    ) -> Result<Option<(Pending, Option<Shown>)>, Refusal> {
        let now = ctx.now;
        let mandates = self.mandates_of(ctx, person_id).await?;
        let decision = self
            .decide(ctx, who, person_id, purpose, &mandates, now)
            .await?;
        if person_id == NO_ONE {
            return Ok(None);
        }
        if decision.is_denied() {
            // Evidence of a look outside one's scope; invisible to the
            // caller, counted by the guard.
            let reason = denial(who, &mandates, purpose, now.date_naive());
            let attempt = attempts.of(kind, Some(person_id), Fields::NONE);
            let leaf = deny_leaf(ctx, &attempt, reason);
            let pending = self.observe(ctx, &attempt, Observed::Denied, leaf).await?;
            return Ok(Some((pending, None)));
        }
        // A refusal here refuses the whole search: the persons opened so
        // far are dropped unshown, with no leaf saying otherwise.
        let attempt = attempts.of(kind, Some(person_id), fields(&decision));
        let verdict = self.screen(ctx, &attempt).await?;
        let Some(shown) = self
            .open(ctx, ctx.caller, person_id, purpose, &decision)
            .await?
        else {
            return Ok(None);
        };
        let leaf = ctx.leaf(
            Some(person_id),
            shown.ledger_groups(),
            LeafDecision::Allow,
            Some(verdict),
            None,
        );
        Ok(Some(((leaf, None), Some(shown))))
    }

    /// One page of the caller's caseload: persons with a live mandate held
    /// by the caller's organisation or naming the caller.
    pub async fn caseload(
        &self,
        presented: &Presented<'_>,
        from: Option<IpAddr>,
        purpose: Purpose,
        after: PersonId,
        limit: u32,
    ) -> Result<CaseloadPage, Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::ListCaseload, now)
            .await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, LeafAction::ListCaseload, now).for_purpose(purpose);
        if limit == 0 || limit > MAX_PAGE {
            return Err(self
                .deny(
                    &ctx,
                    None,
                    DenyReason::InvalidRequest,
                    Refusal::invalid("limit", format!("must be between 1 and {MAX_PAGE}")),
                )
                .await);
        }
        self.allow_registry_action(&ctx, &who, Action::ListCaseload, purpose, 0)
            .await?;
        let attempt = self
            .attempts(&ctx, from)
            .of(AttemptKind::ListCaseload, None, Fields::NONE);
        let verdict = self.screen(&ctx, &attempt).await?;
        let a = &caller.account;
        let today = now.date_naive();
        let page = |after: PersonId, limit: u32| {
            self.store.caseload(
                a.organisation_id,
                a.account_id,
                Some(purpose),
                today,
                after,
                limit,
            )
        };
        let entries = self
            .fail_on(&ctx, None, "caseload", page(after, limit).await)
            .await?;
        // A page never splits a person's mandates, so it may be shorter
        // than `limit` with more to come: ask whether anything follows.
        let next = match entries.last() {
            None => None,
            Some(last) => {
                let more = page(last.person_id, 1).await;
                let more = self.fail_on(&ctx, None, "caseload", more).await?;
                (!more.is_empty()).then_some(last.person_id)
            }
        };
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            Some(verdict),
            None,
        ))
        .await?;
        Ok(CaseloadPage {
            entries: entries.into_iter().map(CaseloadEntry::from).collect(),
            next,
        })
    }

    /// Break-glass: a France Travail agent reaches one person outside their
    /// mandates, with a written reason. It is a human act: only a
    /// device-bound browser session with a fresh step-up may do it (API
    /// credentials and API clients are refused, ledgered). A one-day
    /// mandate naming the agent is created with the reason, sealed under
    /// the person's data key in the registry (erased with the person); the
    /// ledger's leaf keeps the mandate's reference and a salted digest of
    /// the reason, never its text. Then the person is read through the
    /// ordinary stages, as the caller authenticated here, once.
    pub async fn break_glass(
        &self,
        presented: &Presented<'_>,
        from: Option<IpAddr>,
        request: BreakGlass,
    ) -> Result<Shown, Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::BreakGlass, now)
            .await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, LeafAction::BreakGlass, now).for_purpose(request.purpose);
        let person_id = request.person_id;
        if let Some(refused) = self.human_presence_missing(&ctx, person_id).await {
            return Err(refused);
        }
        let reason = match written_reason(&request.reason, MAX_REASON_BYTES) {
            Ok(r) => r,
            Err(refusal) => {
                return Err(self
                    .deny(&ctx, Some(person_id), DenyReason::InvalidRequest, refusal)
                    .await);
            }
        };
        let mandates = self.mandates_of(&ctx, person_id).await?;
        let attempt =
            self.attempts(&ctx, from)
                .of(AttemptKind::BreakGlass, Some(person_id), Fields::NONE);
        let allowed = authorize::person_action(
            &self.policy,
            &who,
            Action::BreakGlass,
            &authorize::about_person(
                person_id,
                request.purpose,
                &mandates,
                now.date_naive(),
                reason.chars().count(),
            ),
        );
        if !self
            .fail_on(&ctx, Some(person_id), "policy", allowed)
            .await?
        {
            let leaf = deny_leaf(&ctx, &attempt, DenyReason::PolicyDenied);
            self.observed(&ctx, &attempt, Observed::Denied, leaf)
                .await?;
            return Err(Refusal::Forbidden);
        }
        let verdict = self.screen(&ctx, &attempt).await?;
        // No such person: the same answer as any other miss.
        let unknown = async || -> Result<Shown, Refusal> {
            let leaf = deny_leaf(&ctx, &attempt, DenyReason::UnknownPerson);
            self.observed(&ctx, &attempt, Observed::NotFound, leaf)
                .await?;
            Err(Refusal::NotFound)
        };
        let sealed = self.vault.seal_reason(person_id, reason).await;
        let Some(sealed) = self.fail_on(&ctx, Some(person_id), "vault", sealed).await? else {
            return unknown().await;
        };
        let today = now.date_naive();
        let grant = NewMandate {
            reference: mandate_reference("BG", now),
            organisation_id: caller.account.organisation_id,
            account_id: Some(caller.account.account_id),
            person_id,
            purpose: request.purpose,
            valid_from: today,
            valid_to: today.succ_opt(),
            source: break_glass_source(),
        };
        let kept = NewBreakGlassReason {
            account_id: caller.account.account_id,
            created_at: now,
            dek_version: sealed.dek_version,
            sealed: sealed.sealed,
        };
        // Rehearsed (a person gone meanwhile is a miss like any other),
        // ledgered, then made.
        match self.store.rehearse_grant(&grant).await {
            Ok(()) => {}
            Err(
                rempart_storage::StorageError::Refused { .. }
                | rempart_storage::StorageError::NotFound { .. },
            ) => return unknown().await,
            Err(e) => return Err(self.fail(&ctx, Some(person_id), "mandate", &e).await),
        }
        let leaf = ctx.leaf(
            Some(person_id),
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            Some(verdict),
            Some(break_glass_note(&grant.reference, &sealed.digest)),
        );
        self.leaf_then(&ctx, leaf, async {
            match self.store.grant_break_glass(grant, kept).await {
                Ok(_) => Ok(()),
                Err(
                    rempart_storage::StorageError::Refused { .. }
                    | rempart_storage::StorageError::NotFound { .. },
                ) => Err(ChangeRefusal::new(
                    DenyReason::UnknownPerson,
                    Refusal::NotFound,
                )),
                Err(e) => Err(ChangeRefusal::failed("mandate", &e)),
            }
        })
        .await?;
        let rows = self
            .fail_on(
                &ctx,
                Some(person_id),
                "registry",
                self.store.consultation_rows(0, person_id).await,
            )
            .await?;
        self.read_authenticated(&caller, from, person_id, request.purpose, rows, now)
            .await
    }

    /// Break-glass is a human act: a device-bound browser session whose
    /// passkey step-up is within the step-up window. `Some(refusal)`,
    /// ledgered as a `step_up_required` denial with a note saying why,
    /// otherwise: `BrowserSessionRequired` for an API credential or an API
    /// client's access token (a program's copyable secret, which no step-up
    /// can strengthen), `StepUpRequired` for a session without a fresh one.
    async fn human_presence_missing(&self, ctx: &Ctx<'_>, person_id: PersonId) -> Option<Refusal> {
        let (note, refusal) = match &ctx.caller.via {
            Via::Session { step_up_at, .. } => {
                let window = self
                    .web
                    .as_ref()
                    .map_or(chrono::Duration::zero(), |w| w.settings.step_up_window);
                let fresh = step_up_at.is_some_and(|t| t <= ctx.now && ctx.now - t <= window);
                if fresh {
                    return None;
                }
                ("break-glass: no fresh step-up", Refusal::StepUpRequired)
            }
            Via::Credential(_) => (
                "break-glass: api credential, browser session required",
                Refusal::BrowserSessionRequired,
            ),
            Via::AccessToken { .. } => (
                "break-glass: access token, browser session required",
                Refusal::BrowserSessionRequired,
            ),
        };
        let leaf = ctx.leaf(
            Some(person_id),
            FieldGroups::EMPTY,
            LeafDecision::Deny(DenyReason::StepUpRequired),
            None,
            Some(note.to_string()),
        );
        Some(match self.record(leaf).await {
            Ok(_) => refusal,
            Err(unavailable) => unavailable,
        })
    }

    /// Stage 2 for reads.
    async fn decide(
        &self,
        ctx: &Ctx<'_>,
        who: &Who,
        person_id: PersonId,
        purpose: Purpose,
        mandates: &[StoredMandate],
        now: DateTime<Utc>,
    ) -> Result<Decision, Refusal> {
        let decided = authorize::read(
            &self.policy,
            who,
            person_id,
            purpose,
            mandates,
            now.date_naive(),
        );
        self.fail_on(ctx, Some(person_id), "policy", decided).await
    }

    /// Stage 4: opens exactly the allowed groups. `None` when the person is
    /// missing or shredded.
    async fn open(
        &self,
        ctx: &Ctx<'_>,
        caller: &Caller,
        person_id: PersonId,
        purpose: Purpose,
        decision: &Decision,
    ) -> Result<Option<Shown>, Refusal> {
        let stored = self.store.read_person(person_id, &decision.groups).await;
        match self.fail_on(ctx, Some(person_id), "vault", stored).await? {
            Some(stored) => self.show(ctx, caller, &stored, purpose, decision).await,
            None => Ok(None),
        }
    }

    /// Stage 4 on sealed rows already fetched: decrypts the allowed groups
    /// only, and shows the NIR as the decision says.
    async fn show(
        &self,
        ctx: &Ctx<'_>,
        caller: &Caller,
        stored: &rempart_storage::StoredPerson,
        purpose: Purpose,
        decision: &Decision,
    ) -> Result<Option<Shown>, Refusal> {
        let person_id = stored.id;
        let read = self
            .fail_on(
                ctx,
                Some(person_id),
                "vault",
                self.vault.open(stored, &decision.groups),
            )
            .await?;
        let view = match read {
            Read::Found(v) => v,
            Read::Shredded | Read::Missing => return Ok(None),
        };
        let nir = view.nir.as_ref().and_then(|n| match decision.nir {
            NirView::Clear => Some(NirShown::Clear(n.as_str().to_string())),
            NirView::Masked => Some(NirShown::Masked(n.masked())),
            NirView::Token => Some(NirShown::Token(
                self.vault.nir_token(caller.account.organisation_id, n),
            )),
            NirView::None => None,
        });
        let view = *view;
        Ok(Some(Shown {
            person_id,
            purpose,
            field_groups: decision.groups.clone(),
            identity: view.identity,
            contact: view.contact,
            status: view.status,
            nir,
            nir_view: decision.nir,
            ledger: LeafRef::Index(0),
        }))
    }
}

/// Empty search answers leave on a multiple of this since the request
/// began (see [`Consultation::search`]).
const EMPTY_SEARCH_QUANTUM: std::time::Duration = std::time::Duration::from_millis(2);

/// The person a search miss is looked up as, so that a miss costs what an
/// out-of-scope hit does; no person has this id.
const NO_ONE: PersonId = PersonId::UNKNOWN;

/// Why a read was refused, for the ledger (the caller only hears "not
/// found"): no live mandate of the caller's for the purpose, or a mandate
/// whose purpose shows nothing to this account.
fn denial(who: &Who, mandates: &[StoredMandate], purpose: Purpose, today: NaiveDate) -> DenyReason {
    let ours = mandates.iter().any(|m| {
        m.organisation_id == who.organisation_id
            && m.account_id.is_none_or(|a| a == who.account_id)
            && m.purpose == purpose
            && m.is_live_on(today)
    });
    if ours {
        DenyReason::PolicyDenied
    } else {
        DenyReason::NoMandate
    }
}

/// Whether every live mandate letting `who` read the person for `purpose`
/// began in the last [`rempart_guard::NEW_MANDATE_DAYS`] days: a person
/// who just joined the caseload (the guard's volume features leave them
/// out). A break-glass mandate is no explanation: it is alert-worthy.
fn mandates_are_new(
    who: &Who,
    mandates: &[StoredMandate],
    purpose: Purpose,
    today: NaiveDate,
) -> bool {
    let since = today - chrono::Duration::days(rempart_guard::NEW_MANDATE_DAYS);
    let mut ours = mandates
        .iter()
        .filter(|m| {
            m.organisation_id == who.organisation_id
                && m.account_id.is_none_or(|a| a == who.account_id)
                && m.purpose == purpose
                && m.is_live_on(today)
        })
        .peekable();
    ours.peek().is_some() && ours.all(|m| m.valid_from >= since && !made_by_hand(m))
}

/// Whether a mandate was made through the API (an officer's grant, a
/// break-glass) rather than by the referral imports. Such a mandate
/// explains no volume: a burst of fresh grants to a colleague must not
/// launder the bulk read they open.
fn made_by_hand(m: &StoredMandate) -> bool {
    m.reference
        .as_str()
        .strip_prefix(GRANT_PREFIX)
        .is_some_and(|rest| rest.starts_with('-'))
        || m.source == break_glass_source()
}

/// The break-glass leaf's note: the mandate it created (where the reason
/// is kept, sealed) and the reason's salted digest, never its text.
fn break_glass_note(mandate: &Reference, digest: &[u8; 32]) -> String {
    use base64::Engine;
    format!(
        "mandate {}; reason hmac-sha256 {}",
        mandate.as_str(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// Handlers run on a multi-threaded runtime: the operations must be `Send`.
#[allow(dead_code)]
fn operations_are_send(c: &Consultation) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&c.read_person(
        &Presented::Nothing,
        None,
        PersonId::new(1),
        Purpose::FollowUp,
    ));
    is_send(&c.caseload(
        &Presented::Nothing,
        None,
        Purpose::FollowUp,
        PersonId::new(0),
        1,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rempart_domain::{MandateId, OrganisationId};

    #[test]
    fn mandates_made_by_hand_explain_no_volume() {
        let who = Who {
            account_id: rempart_domain::AccountId::new(7),
            login: "a7".into(),
            role: rempart_domain::Role::Agent,
            state: rempart_domain::AccountState::Active,
            organisation_id: rempart_domain::OrganisationId::new(3),
            kind: rempart_domain::OrganisationKind::CapEmploi,
        };
        let today = NaiveDate::from_ymd_opt(2026, 12, 6).unwrap();
        let mandate = |reference: &str, source: Reference| StoredMandate {
            id: MandateId::new(1),
            reference: Reference::parse(reference).unwrap(),
            organisation: Reference::parse("T-CE1").unwrap(),
            organisation_id: OrganisationId::new(3),
            account: None,
            account_id: None,
            person_id: PersonId::new(42),
            purpose: Purpose::FollowUp,
            valid_from: today,
            valid_to: None,
            source,
            revoked_at: None,
        };
        let imported = mandate("ORIENT-2026-0042", Reference::parse("referral").unwrap());
        let granted = mandate(
            mandate_reference(GRANT_PREFIX, Utc::now()).as_str(),
            Reference::parse("orientation").unwrap(),
        );
        let glassed = mandate("BG-2026-1", break_glass_source());
        assert!(mandates_are_new(
            &who,
            std::slice::from_ref(&imported),
            Purpose::FollowUp,
            today
        ));
        for by_hand in [granted, glassed] {
            assert!(made_by_hand(&by_hand));
            assert!(!mandates_are_new(
                &who,
                std::slice::from_ref(&by_hand),
                Purpose::FollowUp,
                today
            ));
            assert!(!mandates_are_new(
                &who,
                &[imported.clone(), by_hand],
                Purpose::FollowUp,
                today
            ));
        }
    }
}
