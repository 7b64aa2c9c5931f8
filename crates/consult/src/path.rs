//! The consultation path, one operation per function, each read top to
//! bottom: authenticate → authorize → guard → vault → ledger → response.
//! The stage helpers at the end of the file are the only places that talk
//! to the store, the policy, the guard and the ledger.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use rempart_domain::{
    Contact, FieldGroup, Identity, Nir, Organisation, Purpose, Reference, Registration,
};
use rempart_guard::{
    AccountFacts, Alert, Attempt, AttemptKind, BUCKET_SECS, Feature, Fields, Guard, GuardConfig,
    GuardDecision, Observed, PeerGroup, SearchKind, SessionFacts, Verdict,
};
use rempart_ledger::{
    AccountId, Action as LeafAction, AuditLeaf, Decision as LeafDecision, DenyReason, FieldGroups,
    GuardVerdict, LeafIndex, Ledger, OrganisationId, PersonRef, SessionId, Timestamp,
};
use rempart_policy::{Action, Authorizer, Decision, NirView, Who};
use rempart_storage::{
    AccountChange, AccountRecord, AuthStore, CaseloadEntry, ConsultationRows, NewBreakGlassReason,
    NewMandate, Store, StoredMandate,
};
use rempart_storage::{GrantDecision, GrantRequest};
use rempart_vault::{Read, Vault};

use crate::authenticate::{self, Caller, Rejected, Via};
use crate::login::Web;
use crate::{Presented, Refusal, authorize};

/// Longest a written reason (break-glass, lifting a freeze) may be, in
/// bytes (a freeze's goes into its ledger leaf; a break-glass's is sealed
/// in the registry, the leaf keeping its digest).
pub const MAX_REASON_BYTES: usize = 1000;
/// Shortest written reason, in characters (the policy checks it too).
pub const MIN_REASON_CHARS: usize = 20;

/// Longest reason for lifting a freeze, in bytes: its leaf's note also
/// names the organisation and the outcome (at most 45 bytes more), and a
/// note holds [`MAX_REASON_BYTES`].
pub const MAX_LIFT_REASON_BYTES: usize = 950;

/// A written reason (break-glass, lifting a freeze), trimmed, or the
/// refusal naming the field: [`MIN_REASON_CHARS`] characters to
/// `max_bytes` bytes.
fn written_reason(raw: &str, max_bytes: usize) -> Result<&str, Refusal> {
    let reason = raw.trim();
    if reason.chars().count() < MIN_REASON_CHARS || reason.len() > max_bytes {
        return Err(Refusal::invalid(
            "reason",
            format!("must be {MIN_REASON_CHARS} characters to {max_bytes} bytes"),
        ));
    }
    Ok(reason)
}

/// Largest caseload page.
pub const MAX_PAGE: u32 = 1000;
/// Longest name accepted in a search, in characters.
const MAX_SEARCH_NAME: usize = 100;

pub use rempart_domain::AccountState;

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
    pub person_id: i64,
    pub purpose: Purpose,
    /// The groups present, in `FieldGroup::ALL` order.
    pub field_groups: Vec<FieldGroup>,
    pub identity: Option<Identity>,
    pub contact: Option<Contact>,
    pub status: Option<Registration>,
    pub nir: Option<NirShown>,
    /// Where the consultation sits in the audit ledger.
    pub ledger_index: LeafIndex,
}

/// What a search looks for: exact values only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchBy {
    Nir(Nir),
    NameBirth {
        nom: String,
        prenom: String,
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
    pub persons: Vec<Shown>,
}

/// One page of a caseload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseloadPage {
    pub entries: Vec<CaseloadEntry>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<i64>,
}

/// A break-glass request: one person, outside the caller's mandates, with a
/// written reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    pub person_id: i64,
    pub purpose: Purpose,
    pub reason: String,
}

/// A mandate grant by an officer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub person_id: i64,
    pub organisation_id: i64,
    pub account_id: Option<i64>,
    pub purpose: Purpose,
    pub valid_from: Option<NaiveDate>,
    pub valid_to: Option<NaiveDate>,
    pub source: Reference,
}

/// An organisation as administration sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganisationEntry {
    pub id: i64,
    pub organisation: Organisation,
    /// Since when the guard has frozen every account of it, if it has.
    pub frozen_since: Option<DateTime<Utc>>,
}

/// Organisations, for account administration.
pub type Organisations = Vec<OrganisationEntry>;

/// Where "now" comes from: the system clock, or a test's.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The consultation path's parts, shared by every request.
#[derive(Clone)]
pub struct Consultation {
    pub(crate) store: Store,
    /// The account lifecycle, credential resets, browser sessions and
    /// logins (same database as `store`).
    pub(crate) auth: Arc<dyn AuthStore>,
    pub(crate) vault: Vault,
    pub(crate) policy: Arc<Authorizer>,
    pub(crate) guard: Guard,
    ledger: Arc<Ledger>,
    // Browser sessions and logins (see `login.rs`); absent, every session
    // is refused and no login can happen.
    pub(crate) web: Option<Arc<Web>>,
    // API clients' token endpoint and DPoP-bound tokens (see
    // `clients.rs`); absent, no token is issued.
    pub(crate) clients: Option<Arc<crate::clients::Clients>>,
    // Federated login through an OpenID provider (see `federation.rs`);
    // absent, the login page does not offer it.
    pub(crate) federation: Option<Arc<rempart_auth::oidc::Federation>>,
    pub(crate) clock: Clock,
}

impl std::fmt::Debug for Consultation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consultation")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

impl Consultation {
    /// The path over a vault, the authentication store of the same
    /// database (`rempart_storage::open_stores` gives both), the policies,
    /// the guard and the ledger.
    pub fn new(
        vault: Vault,
        auth: Arc<dyn AuthStore>,
        policy: Arc<Authorizer>,
        guard: Guard,
        ledger: Arc<Ledger>,
    ) -> Self {
        Consultation {
            store: vault.store().clone(),
            auth,
            vault,
            policy,
            guard,
            ledger,
            web: None,
            clients: None,
            federation: None,
            clock: Arc::new(Utc::now),
        }
    }

    /// Replaces the guard (a benchmark serves the same parts with and
    /// without it).
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = guard;
        self
    }

    /// The guard, for its sync task.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Replaces the clock (tests move time forward instead of sleeping).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The current instant, from the clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// The store, for readiness checks.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The vault, for benchmarks that need the clear values they search.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The ledger, for readiness checks and shutdown.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Who is calling (no consultation, nothing ledgered on success).
    pub async fn whoami(&self, presented: &Presented<'_>) -> Result<AccountRecord, Refusal> {
        let caller = self
            .authenticate(presented, LeafAction::Login, Utc::now())
            .await?;
        Ok(caller.account)
    }

    /// Reads one person for a purpose. THE consultation. `from` is the
    /// client's address, if known (the guard tells new networks by it).
    pub async fn read_person(
        &self,
        presented: &Presented<'_>,
        from: Option<IpAddr>,
        person_id: i64,
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
        person_id: i64,
        purpose: Purpose,
        rows: ConsultationRows,
        now: DateTime<Utc>,
    ) -> Result<Shown, Refusal> {
        let action = LeafAction::ReadPerson;
        let who = authorize::who(&caller.account);
        let ctx = Ctx {
            caller,
            action,
            purpose: Some(purpose),
            now,
        };
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
        shown.ledger_index = self
            .record(ctx.leaf(
                Some(person_id),
                FieldGroups::of(&shown.field_groups),
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
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::Search,
            purpose: Some(purpose),
            now,
        };
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
        let candidates = match found {
            Ok(ids) => ids,
            Err(e) => return Err(self.fail(&ctx, None, "vault search", &e).await),
        };

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
        // Shown persons get the index of their own leaf, in order.
        let allowed = (first..).zip(leaves).filter(|(_, reveals)| *reveals);
        for (p, (index, _)) in persons.iter_mut().zip(allowed) {
            p.ledger_index = index;
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
        person_id: i64,
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
            FieldGroups::of(&shown.field_groups),
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
        after: i64,
        limit: u32,
    ) -> Result<CaseloadPage, Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::ListCaseload, now)
            .await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::ListCaseload,
            purpose: Some(purpose),
            now,
        };
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
        let page = |after: i64, limit: u32| {
            self.store.caseload(
                a.organisation_id,
                a.account_id,
                Some(purpose),
                today,
                after,
                limit,
            )
        };
        let entries = match page(after, limit).await {
            Ok(e) => e,
            Err(e) => return Err(self.fail(&ctx, None, "caseload", &e).await),
        };
        // A page never splits a person's mandates, so it may be shorter
        // than `limit` with more to come: ask whether anything follows.
        let next = match entries.last() {
            None => None,
            Some(last) => match page(last.person_id, 1).await {
                Ok(more) if more.is_empty() => None,
                Ok(_) => Some(last.person_id),
                Err(e) => return Err(self.fail(&ctx, None, "caseload", &e).await),
            },
        };
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            Some(verdict),
            None,
        ))
        .await?;
        Ok(CaseloadPage { entries, next })
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
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::BreakGlass,
            purpose: Some(request.purpose),
            now,
        };
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
        match allowed {
            Ok(true) => {}
            Ok(false) => {
                let leaf = deny_leaf(&ctx, &attempt, DenyReason::PolicyDenied);
                self.observed(&ctx, &attempt, Observed::Denied, leaf)
                    .await?;
                return Err(Refusal::Forbidden);
            }
            Err(e) => return Err(self.fail(&ctx, Some(person_id), "policy", &e).await),
        }
        let verdict = self.screen(&ctx, &attempt).await?;
        // No such person: the same answer as any other miss.
        let unknown = async || -> Result<Shown, Refusal> {
            let leaf = deny_leaf(&ctx, &attempt, DenyReason::UnknownPerson);
            self.observed(&ctx, &attempt, Observed::NotFound, leaf)
                .await?;
            Err(Refusal::NotFound)
        };
        let sealed = match self.vault.seal_reason(person_id, reason).await {
            Ok(Some(sealed)) => sealed,
            Ok(None) => return unknown().await,
            Err(e) => return Err(self.fail(&ctx, Some(person_id), "vault", &e).await),
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
            Err(rempart_storage::StorageError::Invalid(_)) => return unknown().await,
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
                Err(rempart_storage::StorageError::Invalid(_)) => {
                    Err(NotMade::new(DenyReason::UnknownPerson, Refusal::NotFound))
                }
                Err(e) => Err(NotMade::failed("mandate", &e)),
            }
        })
        .await?;
        let rows = match self.store.consultation_rows(0, person_id).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(&ctx, Some(person_id), "registry", &e).await),
        };
        self.read_authenticated(&caller, from, person_id, request.purpose, rows, now)
            .await
    }

    /// Grants a mandate (France Travail officers). A grant to the
    /// officer's own organisation is not made but requested: an officer of
    /// another organisation decides it ([`Consultation::decide_grant`]).
    pub async fn grant_mandate(
        &self,
        presented: &Presented<'_>,
        grant: Grant,
    ) -> Result<Granted, Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::MandateGrant, now)
            .await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::MandateGrant,
            purpose: Some(grant.purpose),
            now,
        };
        let person_id = grant.person_id;
        let mandates = self.mandates_of(&ctx, person_id).await?;
        self.allow_person_action(
            &ctx,
            &who,
            Action::GrantMandate,
            person_id,
            grant.purpose,
            &mandates,
        )
        .await?;
        // Grants are the guard's business too: a burst of them is how one
        // hands a colleague a caseload to read (quota, alert).
        let attempt =
            self.attempts(&ctx, None)
                .of(AttemptKind::MandateGrant, Some(person_id), Fields::NONE);
        self.screen(&ctx, &attempt).await?;
        let today = now.date_naive();
        let new = NewMandate {
            reference: mandate_reference(GRANT_PREFIX, now),
            organisation_id: grant.organisation_id,
            account_id: grant.account_id,
            person_id,
            purpose: grant.purpose,
            valid_from: grant.valid_from.unwrap_or(today),
            valid_to: grant.valid_to,
            source: grant.source,
        };
        // Rehearsed (an invalid grant is one denial), ledgered under its
        // reference, then made.
        if let Err(e) = self.store.rehearse_grant(&new).await {
            return Err(self
                .refuse_rehearsed(&ctx, Some(person_id), grant_refused(e), None)
                .await);
        }
        // Four eyes: an officer never hands its own organisation a
        // mandate alone (a colleague given a caseload to read): the grant
        // waits for an officer of another organisation, as account
        // decisions do.
        if grant.organisation_id == caller.account.organisation_id {
            let leaf = ctx.leaf(
                Some(person_id),
                FieldGroups::EMPTY,
                LeafDecision::Allow,
                None,
                Some(format!(
                    "mandate {} requested for the officer's own organisation: awaits an officer of another",
                    new.reference
                )),
            );
            let requested_by = caller.account.account_id;
            return self
                .leaf_then(&ctx, leaf, async {
                    self.store
                        .request_grant(new, requested_by, now)
                        .await
                        .map(Granted::Requested)
                        .map_err(grant_refused)
                })
                .await;
        }
        let leaf = ctx.leaf(
            Some(person_id),
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("mandate {}", new.reference)),
        );
        self.leaf_then(&ctx, leaf, async {
            self.store
                .grant_mandate(new)
                .await
                .map(Granted::Mandate)
                .map_err(grant_refused)
        })
        .await
    }

    /// An officer of another organisation than the requester's approves
    /// (the mandate is made) or rejects a grant request. The same checks as
    /// a grant (policy, guard quota), four eyes in the store, rehearsed,
    /// ledgered, then decided. A request decided already, or none, is
    /// `NotFound`.
    pub async fn decide_grant(
        &self,
        presented: &Presented<'_>,
        request_id: i64,
        approve: bool,
    ) -> Result<GrantDecision, Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::MandateGrant, now)
            .await?;
        let who = authorize::who(&caller.account);
        let mut ctx = Ctx {
            caller: &caller,
            action: LeafAction::MandateGrant,
            purpose: None,
            now,
        };
        let pending = match self.store.pending_grants().await {
            Ok(p) => p,
            Err(e) => return Err(self.fail(&ctx, None, "mandate requests", &e).await),
        };
        let Some(request) = pending.into_iter().find(|r| r.id == request_id) else {
            return Err(self
                .deny(&ctx, None, DenyReason::InvalidRequest, Refusal::NotFound)
                .await);
        };
        let m = &request.mandate;
        ctx.purpose = Some(m.purpose);
        let person_id = m.person_id;
        let mandates = self.mandates_of(&ctx, person_id).await?;
        self.allow_person_action(
            &ctx,
            &who,
            Action::GrantMandate,
            person_id,
            m.purpose,
            &mandates,
        )
        .await?;
        if approve {
            let attempt = self.attempts(&ctx, None).of(
                AttemptKind::MandateGrant,
                Some(person_id),
                Fields::NONE,
            );
            self.screen(&ctx, &attempt).await?;
        }
        let officer = caller.account.account_id;
        let undecided = || NotMade::new(DenyReason::InvalidRequest, Refusal::NotFound);
        let about = format!("mandate request {request_id}");
        let rehearsed = match self
            .store
            .rehearse_grant_decision(request_id, officer, approve, now)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(undecided()),
            Err(e) => Err(decision_refused(e)),
        };
        if let Err(not_made) = rehearsed {
            return Err(self
                .refuse_rehearsed(&ctx, Some(person_id), not_made, Some(about))
                .await);
        }
        let note = if approve {
            format!("{about} approved: mandate {}", m.reference)
        } else {
            format!("{about} rejected")
        };
        let leaf = ctx.leaf(
            Some(person_id),
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(note),
        );
        self.leaf_then(&ctx, leaf, async {
            match self
                .store
                .decide_grant(request_id, officer, approve, now)
                .await
            {
                Ok(Some(decision)) => Ok(decision),
                Ok(None) => Err(undecided()),
                Err(e) => Err(decision_refused(e)),
            }
        })
        .await
    }

    /// Grant requests awaiting a second officer, oldest first (officers).
    pub async fn pending_grant_requests(
        &self,
        presented: &Presented<'_>,
    ) -> Result<Vec<GrantRequest>, Refusal> {
        let (caller, now) = self.admin(presented).await?;
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::AdminList,
            purpose: None,
            now,
        };
        let pending = match self.store.pending_grants().await {
            Ok(p) => p,
            Err(e) => return Err(self.fail(&ctx, None, "mandate requests", &e).await),
        };
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("pending mandate requests ({} rows)", pending.len())),
        ))
        .await?;
        Ok(pending)
    }

    /// Revokes a mandate (France Travail officers), effective from the
    /// next request.
    pub async fn revoke_mandate(
        &self,
        presented: &Presented<'_>,
        mandate_id: i64,
    ) -> Result<(), Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::MandateRevoke, now)
            .await?;
        let who = authorize::who(&caller.account);
        let mut ctx = Ctx {
            caller: &caller,
            action: LeafAction::MandateRevoke,
            purpose: None,
            now,
        };
        let mandate = match self.store.mandate(mandate_id).await {
            Ok(m) => m,
            Err(e) => return Err(self.fail(&ctx, None, "mandate", &e).await),
        };
        let Some(mandate) = mandate.filter(|m| m.revoked_at.is_none()) else {
            return Err(self
                .deny(&ctx, None, DenyReason::InvalidRequest, Refusal::NotFound)
                .await);
        };
        ctx.purpose = Some(mandate.purpose);
        let mandates = self.mandates_of(&ctx, mandate.person_id).await?;
        self.allow_person_action(
            &ctx,
            &who,
            Action::RevokeMandate,
            mandate.person_id,
            mandate.purpose,
            &mandates,
        )
        .await?;
        // Ledgered, then made (revoked meanwhile: not made, not found).
        let leaf = ctx.leaf(
            Some(mandate.person_id),
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("mandate {mandate_id}")),
        );
        self.leaf_then(&ctx, leaf, async {
            match self.store.revoke_mandate(mandate_id, now).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(NotMade::new(DenyReason::InvalidRequest, Refusal::NotFound)),
                Err(e) => Err(NotMade::failed("mandate", &e)),
            }
        })
        .await
    }

    /// Organisations (account administration).
    pub async fn organisations(&self, presented: &Presented<'_>) -> Result<Organisations, Refusal> {
        let (caller, now) = self.admin(presented).await?;
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::AdminList,
            purpose: None,
            now,
        };
        let all = match self.store.organisations().await {
            Ok(o) => o,
            Err(e) => return Err(self.fail(&ctx, None, "organisations", &e).await),
        };
        let frozen = match self.guard.frozen_organisations().await {
            Ok(f) => f,
            Err(e) => return Err(self.fail(&ctx, None, "guard", &e).await),
        };
        // Every answer has its leaf, durable before the answer leaves.
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("organisations ({} rows)", all.len())),
        ))
        .await?;
        Ok(all
            .into_iter()
            .map(|(id, organisation)| OrganisationEntry {
                id,
                organisation,
                frozen_since: frozen
                    .iter()
                    .find(|f| f.organisation_id == id)
                    .map(|f| f.frozen_at),
            })
            .collect())
    }

    /// Accounts of one organisation (account administration).
    pub async fn accounts(
        &self,
        presented: &Presented<'_>,
        organisation_id: i64,
    ) -> Result<Vec<AccountRecord>, Refusal> {
        let (caller, now) = self.admin(presented).await?;
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::AdminList,
            purpose: None,
            now,
        };
        let accounts = match self.store.accounts_of_organisation(organisation_id).await {
            Ok(a) => a,
            Err(e) => return Err(self.fail(&ctx, None, "accounts", &e).await),
        };
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!(
                "accounts of organisation {organisation_id} ({} rows)",
                accounts.len()
            )),
        ))
        .await?;
        Ok(accounts)
    }

    /// Suspends or reactivates an account (account administration). An
    /// account cannot change its own state, and a requested account is not
    /// activated here (that is an approval, with four eyes).
    pub async fn set_account_state(
        &self,
        presented: &Presented<'_>,
        account_id: i64,
        state: AccountState,
    ) -> Result<AccountRecord, Refusal> {
        let (caller, now) = self.admin(presented).await?;
        let action = match state {
            AccountState::Active => LeafAction::AccountReactivate,
            _ => LeafAction::AccountSuspend,
        };
        let ctx = Ctx {
            caller: &caller,
            action,
            purpose: None,
            now,
        };
        if !matches!(state, AccountState::Active | AccountState::Suspended) {
            return Err(self
                .deny(
                    &ctx,
                    None,
                    DenyReason::InvalidRequest,
                    Refusal::invalid("state", "must be active or suspended"),
                )
                .await);
        }
        if account_id == caller.account.account_id {
            return Err(self
                .deny(&ctx, None, DenyReason::FourEyes, Refusal::Forbidden)
                .await);
        }
        let target = match self.store.account_by_id(account_id).await {
            Ok(t) => t,
            Err(e) => return Err(self.fail(&ctx, None, "accounts", &e).await),
        };
        let Some(target) = target else {
            return Err(self
                .deny(&ctx, None, DenyReason::InvalidRequest, Refusal::NotFound)
                .await);
        };
        // The store moves the state only along the account state machine
        // (suspend from active, reactivate from suspended and approved
        // under four eyes): a requested or rejected account does not become
        // active by a detour through here, whoever asks. Rehearsed, so a
        // refusal is one denial; ledgered, then made.
        let moved = |r: Result<bool, rempart_storage::StorageError>| match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(NotMade::new(DenyReason::InvalidRequest, Refusal::NotFound)),
            Err(rempart_storage::StorageError::Invalid(m)) if m.starts_with("state:") => {
                Err(NotMade::new(DenyReason::FourEyes, Refusal::Forbidden))
            }
            Err(e) => Err(NotMade::failed("accounts", &e)),
        };
        let change = AccountChange::State { account_id, state };
        let rehearsed = self.auth.rehearse(&change, now).await.map(|r| r.is_some());
        if let Err(not_made) = moved(rehearsed) {
            return Err(self.refuse_rehearsed(&ctx, None, not_made, None).await);
        }
        let leaf = ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("account {account_id}")),
        );
        self.leaf_then(&ctx, leaf, async {
            moved(self.change_state(account_id, state, now).await)
        })
        .await?;
        Ok(AccountRecord { state, ..target })
    }

    /// The registry's side of [`Consultation::set_account_state`]. Suspending
    /// an active account ends, in the same transaction, its sessions, API
    /// credentials, API clients and access tokens
    /// ([`AuthStore::suspend_account`]); reactivation restores none of them.
    /// Other changes set the state alone. False if there is no such account.
    async fn change_state(
        &self,
        account_id: i64,
        state: AccountState,
        now: DateTime<Utc>,
    ) -> Result<bool, rempart_storage::StorageError> {
        if state == AccountState::Suspended
            && self
                .auth
                .suspend_account(account_id, now, "suspension")
                .await?
                .is_some()
        {
            return Ok(true);
        }
        self.store.set_account_state(account_id, state).await
    }

    /// Lifts the guard's freeze of an organisation: agency security or an
    /// agency officer, with a written reason kept in the ledger. Every
    /// account of the organisation may read again from its next request
    /// (on other instances, from their next guard sync); accounts the guard
    /// suspended stay suspended, each reactivated on its own. `Ok(false)`
    /// when the organisation was not frozen.
    pub async fn lift_freeze(
        &self,
        presented: &Presented<'_>,
        organisation_id: i64,
        reason: &str,
    ) -> Result<bool, Refusal> {
        let now = self.now();
        let action = LeafAction::OrganisationUnfreeze;
        let caller = self.authenticate(presented, action, now).await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx {
            caller: &caller,
            action,
            purpose: None,
            now,
        };
        // The policy decides on roles; the reason's length is checked here
        // first, so that a short one is a 400 naming the field, not a 403.
        let reason = match written_reason(reason, MAX_LIFT_REASON_BYTES) {
            Ok(r) => r,
            Err(refusal) => {
                return Err(self
                    .deny(&ctx, None, DenyReason::InvalidRequest, refusal)
                    .await);
            }
        };
        // The purpose is irrelevant here; any value does.
        self.allow_registry_action(
            &ctx,
            &who,
            Action::LiftFreeze,
            Purpose::FollowUp,
            reason.chars().count(),
        )
        .await?;
        let known = match self.store.organisations().await {
            Ok(all) => all.iter().any(|(id, _)| *id == organisation_id),
            Err(e) => return Err(self.fail(&ctx, None, "organisations", &e).await),
        };
        if !known {
            return Err(self
                .deny(&ctx, None, DenyReason::InvalidRequest, Refusal::NotFound)
                .await);
        }
        // Ledgered (saying whether it is frozen now), then lifted.
        let frozen = match self.guard.frozen_organisations().await {
            Ok(f) => f.iter().any(|f| f.organisation_id == organisation_id),
            Err(e) => return Err(self.fail(&ctx, None, "guard", &e).await),
        };
        let leaf = ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(lift_note(organisation_id, frozen, reason)),
        );
        self.leaf_then(&ctx, leaf, async {
            self.guard
                .lift_freeze(organisation_id, now)
                .await
                .map_err(|e| {
                    NotMade::new(
                        DenyReason::InternalError,
                        Refusal::Unavailable(format!("guard: {e}")),
                    )
                })
        })
        .await
    }

    // ---------------------------------------------------------------------
    // Stages. Each refusal is ledgered before it is returned.
    // ---------------------------------------------------------------------

    /// Stage 1. A rejected credential is ledgered (under account 0 when the
    /// credential names no account) and answered `Unauthenticated`; an
    /// inactive account is ledgered and answered `AccountInactive`.
    pub(crate) async fn authenticate(
        &self,
        presented: &Presented<'_>,
        action: LeafAction,
        now: DateTime<Utc>,
    ) -> Result<Caller, Refusal> {
        let checked = match *presented {
            Presented::Nothing => Ok(Err(Rejected::Malformed)),
            Presented::ApiCredential(token) => {
                authenticate::authenticate(&self.store, Some(token), now).await
            }
            Presented::Session {
                cookie,
                proof,
                method,
                url,
            } => match &self.web {
                Some(web) => {
                    let request = authenticate::ProofRequest { proof, method, url };
                    authenticate::authenticate_session(
                        self.auth.as_ref(),
                        cookie,
                        request,
                        now,
                        &web.replay,
                    )
                    .await
                }
                // Browser login is not configured: no session exists.
                _ => Ok(Err(Rejected::SessionUnknown)),
            },
            Presented::AccessToken {
                authorization,
                proof,
                method,
                url,
            } => {
                let request = authenticate::ProofRequest { proof, method, url };
                authenticate::authenticate_access_token(
                    self.auth.as_ref(),
                    authorization,
                    request,
                    now,
                )
                .await
            }
        };
        match checked {
            Ok(Ok(caller)) => self.admit(caller, action, now).await,
            Ok(Err(rejected)) => Err(self.reject(rejected, action, now).await),
            Err(e) => Err(self.unavailable(&e, action, now).await),
        }
    }

    /// The end of stage 1 for a good credential: an active account goes
    /// on; any other state is ledgered and refused.
    async fn admit(
        &self,
        caller: Caller,
        action: LeafAction,
        now: DateTime<Utc>,
    ) -> Result<Caller, Refusal> {
        if caller.account.state == AccountState::Active {
            return Ok(caller);
        }
        let a = &caller.account;
        self.record(unauthenticated_leaf(
            a.account_id,
            a.organisation_id,
            action,
            DenyReason::AccountInactive,
            now,
        ))
        .await?;
        // A suspended account is told so (the guard, or an officer, did
        // it); requested and disabled ones are simply inactive.
        Err(match a.state {
            AccountState::Suspended => Refusal::AccountSuspended,
            _ => Refusal::AccountInactive,
        })
    }

    /// Stage 1 refused the credential: ledgered (under account 0 when the
    /// credential names no account), then `Unauthenticated`.
    async fn reject(&self, rejected: Rejected, action: LeafAction, now: DateTime<Utc>) -> Refusal {
        // The organisation is not looked up for a failed credential: the
        // account id is enough to find it, and a miss costs one query.
        let account = rejected.account_id().unwrap_or(0);
        let (reason, refusal) = match rejected {
            // The replay cache could not record the proof: our failure.
            Rejected::ProofRefused { error, .. } | Rejected::TokenProofRefused { error, .. }
                if error.is_unavailable() =>
            {
                (
                    DenyReason::InternalError,
                    Refusal::Unavailable(format!("authentication: {error}")),
                )
            }
            r if r.is_session() => (DenyReason::SessionInvalid, Refusal::Unauthenticated),
            Rejected::TokenProofRefused { .. } => (
                DenyReason::SessionInvalid,
                Refusal::TokenRejected {
                    oauth_error: rejected.oauth_error().unwrap_or("invalid_dpop_proof"),
                },
            ),
            Rejected::TokenRefused { .. } => (
                DenyReason::BadCredentials,
                Refusal::TokenRejected {
                    oauth_error: rejected.oauth_error().unwrap_or("invalid_token"),
                },
            ),
            _ => (DenyReason::BadCredentials, Refusal::Unauthenticated),
        };
        let mut leaf = unauthenticated_leaf(account, 0, action, reason, now);
        leaf.note = Some(rejected.note().to_string());
        match self.record(leaf).await {
            Ok(_) => refusal,
            Err(unavailable) => unavailable,
        }
    }

    /// The store failed before the caller was known: ledgered under account
    /// 0 (best effort, like [`Consultation::fail`]), then `Unavailable`.
    pub(crate) async fn unavailable(
        &self,
        error: &rempart_storage::StorageError,
        action: LeafAction,
        now: DateTime<Utc>,
    ) -> Refusal {
        let message = format!("authentication: {error}");
        let _ = self
            .record(unauthenticated_leaf(
                0,
                0,
                action,
                DenyReason::InternalError,
                now,
            ))
            .await;
        Refusal::Unavailable(message)
    }

    /// Break-glass is a human act: a device-bound browser session whose
    /// passkey step-up is within the step-up window. `Some(refusal)`,
    /// ledgered as a `step_up_required` denial with a note saying why,
    /// otherwise: `BrowserSessionRequired` for an API credential or an API
    /// client's access token (a program's copyable secret, which no step-up
    /// can strengthen), `StepUpRequired` for a session without a fresh one.
    async fn human_presence_missing(&self, ctx: &Ctx<'_>, person_id: i64) -> Option<Refusal> {
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

    async fn mandates_of(
        &self,
        ctx: &Ctx<'_>,
        person_id: i64,
    ) -> Result<Vec<StoredMandate>, Refusal> {
        match self.store.mandates_of_person(person_id).await {
            Ok(m) => Ok(m),
            Err(e) => Err(self.fail(ctx, Some(person_id), "mandates", &e).await),
        }
    }

    /// Stage 2 for reads.
    async fn decide(
        &self,
        ctx: &Ctx<'_>,
        who: &Who,
        person_id: i64,
        purpose: Purpose,
        mandates: &[StoredMandate],
        now: DateTime<Utc>,
    ) -> Result<Decision, Refusal> {
        match authorize::read(
            &self.policy,
            who,
            person_id,
            purpose,
            mandates,
            now.date_naive(),
        ) {
            Ok(d) => Ok(d),
            Err(e) => Err(self.fail(ctx, Some(person_id), "policy", &e).await),
        }
    }

    /// Stage 2 for registry-wide actions; `reason_len` is the length in
    /// characters of the written reason the action comes with (0 if none).
    async fn allow_registry_action(
        &self,
        ctx: &Ctx<'_>,
        who: &Who,
        action: Action,
        purpose: Purpose,
        reason_len: usize,
    ) -> Result<(), Refusal> {
        match authorize::registry_action_with_reason(&self.policy, who, action, purpose, reason_len)
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(self
                .deny(ctx, None, DenyReason::PolicyDenied, Refusal::Forbidden)
                .await),
            Err(e) => Err(self.fail(ctx, None, "policy", &e).await),
        }
    }

    /// Stage 2 for actions on one person.
    async fn allow_person_action(
        &self,
        ctx: &Ctx<'_>,
        who: &Who,
        action: Action,
        person_id: i64,
        purpose: Purpose,
        mandates: &[StoredMandate],
    ) -> Result<(), Refusal> {
        let today = ctx.now.date_naive();
        match authorize::person_action(
            &self.policy,
            who,
            action,
            &authorize::about_person(person_id, purpose, mandates, today, 0),
        ) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self
                .deny(
                    ctx,
                    Some(person_id),
                    DenyReason::PolicyDenied,
                    Refusal::Forbidden,
                )
                .await),
            Err(e) => Err(self.fail(ctx, Some(person_id), "policy", &e).await),
        }
    }

    /// Administration: officers of France Travail only.
    async fn admin(&self, presented: &Presented<'_>) -> Result<(Caller, DateTime<Utc>), Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::AdminList, now)
            .await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::AdminList,
            purpose: None,
            now,
        };
        // The purpose is irrelevant to account management; any value does.
        self.allow_registry_action(&ctx, &who, Action::ManageAccounts, Purpose::FollowUp, 0)
            .await?;
        Ok((caller, now))
    }

    /// The guard's view of this request's attempts, built once: who, from
    /// which session, device and network.
    fn attempts(&self, ctx: &Ctx<'_>, from: Option<IpAddr>) -> Attempts {
        let a = &ctx.caller.account;
        let (high_risk, device, stepped_up_at) = match &ctx.caller.via {
            Via::Session {
                high_risk,
                device,
                step_up_at,
                ..
            } => (*high_risk, Some(*device), *step_up_at),
            Via::AccessToken { device, .. } => (false, Some(*device), None),
            // An API credential has no session flags and no key.
            Via::Credential(_) => (false, None, None),
        };
        Attempts(Attempt {
            at: ctx.now,
            account: AccountFacts {
                account_id: a.account_id,
                organisation_id: a.organisation_id,
                role: a.role,
                created_at: a.created_at,
                peer: PeerGroup::of(a.kind, a.departement.as_deref()),
            },
            session: SessionFacts {
                session_id: session_of(&ctx.caller.via).0,
                high_risk,
                device,
                network: from.map(|ip| self.vault.network_digest(ip)),
                stepped_up_at,
            },
            kind: AttemptKind::ReadPerson,
            person_id: None,
            purpose: ctx.purpose,
            fields: Fields::NONE,
            new_mandate: false,
        })
    }

    /// Stage 3, on an attempt the policy allowed: `Ok` lets it go on to
    /// the vault. Any other verdict is refused, ledgered and contained
    /// (see [`Consultation::contain`]); a guard error fails closed.
    async fn screen(&self, ctx: &Ctx<'_>, attempt: &Attempt) -> Result<GuardVerdict, Refusal> {
        let decision = match self.guard.check(attempt).await {
            Ok(d) => d,
            Err(e) => return Err(self.fail(ctx, attempt.person_id, "guard", &e).await),
        };
        let (reason, refusal) = match decision.verdict {
            Verdict::Allow => return Ok(GuardVerdict::Allow),
            Verdict::StepUp => (DenyReason::StepUpRequired, Refusal::StepUpRequired),
            Verdict::Throttle => (
                DenyReason::Throttled,
                Refusal::Throttled {
                    retry_after_secs: retry_after(&self.guard.config(), decision.alert.as_ref()),
                },
            ),
            Verdict::Suspend => (DenyReason::Suspended, Refusal::AccountSuspended),
            Verdict::FreezeOrganisation => {
                (DenyReason::OrganisationFrozen, Refusal::OrganisationFrozen)
            }
        };
        let mut leaf = deny_leaf(ctx, attempt, reason);
        leaf.guard = Some(ledger_verdict(decision.verdict));
        // The groups it would have shown: what was attempted.
        leaf.field_groups = FieldGroup::ALL
            .iter()
            .copied()
            .filter(|g| attempt.fields.contains(*g))
            .collect();
        self.contain(ctx, decision, leaf).await?;
        Err(refusal)
    }

    /// Stage 3 told of an attempt that ended without data (a policy
    /// denial, nothing found): the guard counts it, then `leaf` is appended
    /// with the guard's verdict. The caller's answer stays what it was; a
    /// verdict other than allow is contained from now on.
    async fn observed(
        &self,
        ctx: &Ctx<'_>,
        attempt: &Attempt,
        how: Observed,
        leaf: AuditLeaf,
    ) -> Result<LeafIndex, Refusal> {
        let pending = self.observe(ctx, attempt, how, leaf).await?;
        self.settle(ctx, vec![pending]).await
    }

    /// [`Consultation::observed`] without the append: the leaf with the
    /// guard's verdict, and the decision to contain if it is not allow,
    /// for [`Consultation::settle`] to append with others in one batch.
    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        attempt: &Attempt,
        how: Observed,
        mut leaf: AuditLeaf,
    ) -> Result<Pending, Refusal> {
        let decision = match self.guard.observe(attempt, how).await {
            Ok(d) => d,
            Err(e) => return Err(self.fail(ctx, attempt.person_id, "guard", &e).await),
        };
        if decision.lets_through() {
            return Ok((leaf, None));
        }
        leaf.guard = Some(ledger_verdict(decision.verdict));
        Ok((leaf, Some(decision)))
    }

    /// A verdict other than allow: its leaf first, then its alert pointing
    /// at that leaf, then the containment it calls for.
    async fn contain(
        &self,
        ctx: &Ctx<'_>,
        decision: GuardDecision,
        leaf: AuditLeaf,
    ) -> Result<LeafIndex, Refusal> {
        self.settle(ctx, vec![(leaf, Some(decision))]).await
    }

    /// Appends `pending` leaves in one batch (one durable write), then, for
    /// each verdict other than allow, its alert pointing at its leaf and
    /// the containment it calls for (a suspension ends the account's
    /// sessions; a freeze reaches the other instances at their next
    /// sync). The alerts and the suspension happen even if the ledger
    /// fails; the caller then gets `Unavailable`. The first leaf's index.
    async fn settle(&self, ctx: &Ctx<'_>, pending: Vec<Pending>) -> Result<LeafIndex, Refusal> {
        let (leaves, decisions): (Vec<AuditLeaf>, Vec<Option<GuardDecision>>) =
            pending.into_iter().unzip();
        let recorded = self.record_all(&leaves).await;
        let mut suspend = false;
        for (i, decision) in (0u64..).zip(decisions) {
            let Some(decision) = decision else { continue };
            if let Some(alert) = decision.alert {
                let at = recorded.as_ref().ok().map(|first| first + i);
                self.guard.raise(alert.with_ledger_range(None, at));
            }
            suspend |= decision.suspends_account;
        }
        if suspend {
            self.suspend(ctx).await?;
        }
        recorded
    }

    /// The guard suspended the caller's account: in the registry, with its
    /// sessions, API credentials, API clients and access tokens ended in the
    /// same transaction, so every instance refuses them from the next
    /// request ([`AuthStore::suspend_account`]). An account no longer
    /// active (an officer was quicker) was already ended with its change.
    async fn suspend(&self, ctx: &Ctx<'_>) -> Result<(), Refusal> {
        let id = ctx.caller.account.account_id;
        if let Err(e) = self
            .auth
            .suspend_account(id, ctx.now, "guard_suspension")
            .await
        {
            return Err(self.fail(ctx, None, "guard suspension", &e).await);
        }
        Ok(())
    }

    /// Stage 4: opens exactly the allowed groups. `None` when the person is
    /// missing or shredded.
    async fn open(
        &self,
        ctx: &Ctx<'_>,
        caller: &Caller,
        person_id: i64,
        purpose: Purpose,
        decision: &Decision,
    ) -> Result<Option<Shown>, Refusal> {
        match self.store.read_person(person_id, &decision.groups).await {
            Ok(Some(stored)) => self.show(ctx, caller, &stored, purpose, decision).await,
            Ok(None) => Ok(None),
            Err(e) => Err(self.fail(ctx, Some(person_id), "vault", &e).await),
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
        let read = match self.vault.open(stored, &decision.groups) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(ctx, Some(person_id), "vault", &e).await),
        };
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
            ledger_index: 0,
        }))
    }

    /// Stage 5. A failed append is `Unavailable`: nothing may be released.
    pub(crate) async fn record(&self, leaf: AuditLeaf) -> Result<LeafIndex, Refusal> {
        self.ledger
            .append(&leaf)
            .await
            .map_err(|e| Refusal::Unavailable(format!("audit ledger: {e}")))
    }

    pub(crate) async fn record_all(&self, leaves: &[AuditLeaf]) -> Result<LeafIndex, Refusal> {
        self.ledger
            .append_batch(leaves)
            .await
            .map_err(|e| Refusal::Unavailable(format!("audit ledger: {e}")))
    }

    /// A state change and its leaf, atomic in effect: `leaf`, the change
    /// allowed, is made durable first, and `change` runs only then, so a
    /// failed append (or a request cut short while it waits) changes
    /// nothing. The caller rehearses the change before (see
    /// [`AuthStore::rehearse`]), so that a refusal is ledgered alone, as a
    /// denial. If the change still fails (something moved since its
    /// rehearsal, or the store failed), a deny leaf pointing at the first
    /// follows (best effort) and the change's refusal is returned: the
    /// ledger may hold an allowed change undone by the next leaf, never a
    /// change without its leaf.
    pub(crate) async fn leaf_then<T>(
        &self,
        ctx: &Ctx<'_>,
        leaf: AuditLeaf,
        change: impl std::future::Future<Output = Result<T, NotMade>>,
    ) -> Result<T, Refusal> {
        let person = leaf.person.map(|p| p.0);
        let index = self.record(leaf).await?;
        match change.await {
            Ok(done) => Ok(done),
            Err(not_made) => {
                let _ = self
                    .record(ctx.leaf(
                        person,
                        FieldGroups::EMPTY,
                        LeafDecision::Deny(not_made.reason),
                        None,
                        Some(format!("{} (leaf {index})", not_made.what)),
                    ))
                    .await;
                Err(not_made.refusal)
            }
        }
    }

    /// A change refused at its rehearsal: ledgered as a denial (an internal
    /// error without note, like [`Consultation::fail`]), then its refusal.
    pub(crate) async fn refuse_rehearsed(
        &self,
        ctx: &Ctx<'_>,
        person_id: Option<i64>,
        not_made: NotMade,
        note: Option<String>,
    ) -> Refusal {
        let note = match not_made.reason {
            DenyReason::InternalError => None,
            _ => note,
        };
        let leaf = ctx.leaf(
            person_id,
            FieldGroups::EMPTY,
            LeafDecision::Deny(not_made.reason),
            None,
            note,
        );
        match self.record(leaf).await {
            Ok(_) => not_made.refusal,
            Err(unavailable) => unavailable,
        }
    }

    /// Ledgers a denial, then hands back the refusal to return (or
    /// `Unavailable` if even the denial could not be ledgered).
    pub(crate) async fn deny(
        &self,
        ctx: &Ctx<'_>,
        person_id: Option<i64>,
        reason: DenyReason,
        refusal: Refusal,
    ) -> Refusal {
        match self
            .record(ctx.leaf(
                person_id,
                FieldGroups::EMPTY,
                LeafDecision::Deny(reason),
                None,
                None,
            ))
            .await
        {
            Ok(_) => refusal,
            Err(unavailable) => unavailable,
        }
    }

    /// A stage failed: ledger it as an internal error (best effort) and fail
    /// closed.
    pub(crate) async fn fail(
        &self,
        ctx: &Ctx<'_>,
        person_id: Option<i64>,
        stage: &str,
        error: &(dyn std::fmt::Display + Sync),
    ) -> Refusal {
        // Formatted first: the error need not live across the await.
        let message = format!("{stage}: {error}");
        let _ = self
            .record(ctx.leaf(
                person_id,
                FieldGroups::EMPTY,
                LeafDecision::Deny(DenyReason::InternalError),
                None,
                None,
            ))
            .await;
        Refusal::Unavailable(message)
    }
}

/// Empty search answers leave on a multiple of this since the request
/// began (see [`Consultation::search`]).
const EMPTY_SEARCH_QUANTUM: std::time::Duration = std::time::Duration::from_millis(2);

/// The person a search miss is looked up as, so that a miss costs what an
/// out-of-scope hit does; no person has this id.
const NO_ONE: i64 = 0;

/// A leaf waiting for its batch, with the guard's decision to contain
/// when it is not allow (see [`Consultation::settle`]).
type Pending = (AuditLeaf, Option<GuardDecision>);

/// What a grant came to.
#[derive(Debug)]
pub enum Granted {
    /// The mandate, made.
    Mandate(StoredMandate),
    /// A grant to the officer's own organisation, waiting for an officer of
    /// another.
    Requested(GrantRequest),
}

/// Why the store refused a grant request's decision: the four-eyes rule
/// (`officer_id: …`) is a 403, the rest as for a grant.
fn decision_refused(e: rempart_storage::StorageError) -> NotMade {
    match e {
        rempart_storage::StorageError::Invalid(m) if m.starts_with("officer_id:") => {
            NotMade::new(DenyReason::FourEyes, Refusal::Forbidden)
        }
        e => grant_refused(e),
    }
}

/// Why the store refused a mandate grant.
fn grant_refused(e: rempart_storage::StorageError) -> NotMade {
    match e {
        rempart_storage::StorageError::Invalid(reason) => NotMade::new(
            DenyReason::InvalidRequest,
            Refusal::invalid("mandate", reason),
        ),
        e => NotMade::failed("mandate", &e),
    }
}

/// Why a change was not made, rehearsed or for real (see
/// [`Consultation::leaf_then`]).
#[derive(Debug)]
pub(crate) struct NotMade {
    /// How its deny leaf reads.
    pub reason: DenyReason,
    /// What the caller is answered.
    pub refusal: Refusal,
    /// The follow-up leaf's note, after the change was ledgered.
    pub what: &'static str,
}

impl NotMade {
    /// Refused or not made, with the follow-up note "not made".
    pub(crate) fn new(reason: DenyReason, refusal: Refusal) -> NotMade {
        NotMade {
            reason,
            refusal,
            what: "not made",
        }
    }

    /// The store failed at `stage`: an internal error, `Unavailable`.
    pub(crate) fn failed(stage: &str, error: &rempart_storage::StorageError) -> NotMade {
        NotMade::new(
            DenyReason::InternalError,
            Refusal::Unavailable(format!("{stage}: {error}")),
        )
    }
}

/// A leaf for a request refused at stage 1, with no session.
pub(crate) fn unauthenticated_leaf(
    account: i64,
    organisation: i64,
    action: LeafAction,
    reason: DenyReason,
    now: DateTime<Utc>,
) -> AuditLeaf {
    AuditLeaf {
        time: Timestamp::from_datetime(now),
        account: AccountId(account),
        organisation: OrganisationId(organisation),
        session: None,
        person: None,
        action,
        field_groups: FieldGroups::EMPTY,
        purpose: None,
        decision: LeafDecision::Deny(reason),
        guard: None,
        note: None,
    }
}

/// What a request is about, for its ledger leaves.
pub(crate) struct Ctx<'a> {
    pub(crate) caller: &'a Caller,
    pub(crate) action: LeafAction,
    pub(crate) purpose: Option<Purpose>,
    pub(crate) now: DateTime<Utc>,
}

impl Ctx<'_> {
    pub(crate) fn leaf(
        &self,
        person_id: Option<i64>,
        field_groups: FieldGroups,
        decision: LeafDecision,
        guard: Option<GuardVerdict>,
        note: Option<String>,
    ) -> AuditLeaf {
        let a = &self.caller.account;
        AuditLeaf {
            time: Timestamp::from_datetime(self.now),
            account: AccountId(a.account_id),
            organisation: OrganisationId(a.organisation_id),
            session: Some(session_of(&self.caller.via)),
            person: person_id.map(PersonRef),
            action: self.action,
            field_groups,
            purpose: self.purpose,
            decision,
            guard,
            note,
        }
    }
}

/// This request's attempts, for the guard: one template, each attempt
/// naming its kind, person and fields.
struct Attempts(Attempt);

impl Attempts {
    fn of(&self, kind: AttemptKind, person_id: Option<i64>, fields: Fields) -> Attempt {
        Attempt {
            kind,
            person_id,
            fields,
            ..self.0.clone()
        }
    }
}

/// What a decision would show, for the guard.
fn fields(decision: &Decision) -> Fields {
    Fields::of(&decision.groups, decision.nir == NirView::Clear)
}

/// The leaf of a refused attempt.
fn deny_leaf(ctx: &Ctx<'_>, attempt: &Attempt, reason: DenyReason) -> AuditLeaf {
    ctx.leaf(
        attempt.person_id,
        FieldGroups::EMPTY,
        LeafDecision::Deny(reason),
        None,
        None,
    )
}

/// The ledger's code for a guard verdict.
fn ledger_verdict(v: Verdict) -> GuardVerdict {
    match v {
        Verdict::Allow => GuardVerdict::Allow,
        Verdict::StepUp => GuardVerdict::StepUp,
        Verdict::Throttle => GuardVerdict::Throttle,
        Verdict::Suspend => GuardVerdict::Suspend,
        Verdict::FreezeOrganisation => GuardVerdict::FreezeOrganisation,
    }
}

/// When a throttled account may usefully try again, in seconds: a daily
/// quota's window slides by the hour, an hourly one's by a counter bucket,
/// a behaviour throttle lasts `containment.throttle_minutes`.
fn retry_after(config: &GuardConfig, alert: Option<&Alert>) -> u32 {
    let features = alert.map_or(&[][..], |a| a.explanation.as_slice());
    let has = |fs: &[Feature]| features.iter().any(|e| fs.contains(&e.feature));
    if has(&[
        Feature::PersonsPerDay,
        Feature::NirPerDay,
        Feature::SearchesPerDay,
        Feature::BreakGlassPerDay,
    ]) {
        3600
    } else if has(&[
        Feature::PersonsPerHour,
        Feature::NirPerHour,
        Feature::SearchesPerHour,
        Feature::BreakGlassPerHour,
    ]) {
        BUCKET_SECS as u32
    } else {
        config.containment.throttle_minutes.saturating_mul(60)
    }
}

/// The ledger's session id: for an API credential its id, so every read
/// made with one credential can be listed; for a browser session the first
/// half of its row's key (a digest of the cookie's secret, from which the
/// cookie cannot be rebuilt), so every read of one session can be listed;
/// for an access token the first half of its digest.
pub(crate) fn session_of(via: &Via) -> SessionId {
    let mut s = [0u8; 16];
    match via {
        Via::Credential(credential_id) => {
            s[..4].copy_from_slice(b"cred");
            s[8..].copy_from_slice(&credential_id.to_be_bytes());
        }
        Via::Session { id_digest, .. } => s.copy_from_slice(&id_digest[..16]),
        // A token's digest, as for sessions: the token's issuance leaf
        // carries the same id, so every read made with one token can be
        // traced back to the client assertion that obtained it.
        Via::AccessToken { digest, .. } => return token_session(digest),
    }
    SessionId(s)
}

/// The session id of reads made with the access token whose digest this is.
pub(crate) fn token_session(digest: &[u8; 32]) -> SessionId {
    let mut s = [0u8; 16];
    s.copy_from_slice(&digest[..16]);
    SessionId(s)
}

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

/// How the reference of a mandate an officer grants starts.
const GRANT_PREFIX: &str = "MG";

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

fn break_glass_source() -> Reference {
    // A constant that satisfies the reference rules.
    Reference::parse("break_glass").unwrap_or_else(|_| unreachable!("valid reference"))
}

/// The note of a lift's leaf: the organisation, the outcome and the
/// reason; at most [`MAX_REASON_BYTES`] for a reason of at most
/// [`MAX_LIFT_REASON_BYTES`].
fn lift_note(organisation_id: i64, lifted: bool, reason: &str) -> String {
    let outcome = if lifted { "lifted" } else { "not frozen" };
    format!("organisation {organisation_id} {outcome}: {reason}")
}

/// A unique mandate reference for mandates created through the API.
fn mandate_reference(prefix: &str, now: DateTime<Utc>) -> Reference {
    let mut random = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
    let mut text = format!("{prefix}-{}-", now.format("%Y%m%d%H%M%S"));
    for b in random {
        use std::fmt::Write;
        let _ = write!(text, "{b:02x}");
    }
    Reference::parse(&text).unwrap_or_else(|_| unreachable!("valid reference"))
}

/// Handlers run on a multi-threaded runtime: the operations must be `Send`.
#[allow(dead_code)]
fn operations_are_send(c: &Consultation) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&c.read_person(&Presented::Nothing, None, 1, Purpose::FollowUp));
    is_send(&c.caseload(&Presented::Nothing, None, Purpose::FollowUp, 0, 1));
    is_send(&c.whoami(&Presented::Nothing));
}

#[cfg(test)]
mod tests {

    #[test]
    fn mandates_made_by_hand_explain_no_volume() {
        let who = Who {
            account_id: 7,
            login: "a7".into(),
            role: rempart_domain::Role::Agent,
            state: rempart_domain::AccountState::Active,
            organisation_id: 3,
            kind: rempart_domain::OrganisationKind::CapEmploi,
        };
        let today = NaiveDate::from_ymd_opt(2026, 12, 6).unwrap();
        let mandate = |reference: &str, source: Reference| StoredMandate {
            id: 1,
            reference: Reference::parse(reference).unwrap(),
            organisation: Reference::parse("T-CE1").unwrap(),
            organisation_id: 3,
            account: None,
            account_id: None,
            person_id: 42,
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

    use super::*;

    #[test]
    fn written_reasons_are_trimmed_and_bounded() {
        assert_eq!(
            written_reason("  vingt caractères ou plus  ", 100),
            Ok("vingt caractères ou plus")
        );
        // Characters at the bottom, bytes at the top.
        assert!(written_reason(&"é".repeat(19), 100).is_err());
        assert!(written_reason(&"é".repeat(20), 40).is_ok());
        assert!(written_reason(&"é".repeat(20), 39).is_err());
        match written_reason("court", 100) {
            Err(Refusal::Invalid { field, .. }) => assert_eq!(field, "reason"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lift_note_fits_a_leaf_whatever_the_organisation() {
        let reason = "x".repeat(MAX_LIFT_REASON_BYTES);
        for id in [1, i64::MAX, i64::MIN] {
            for lifted in [true, false] {
                let note = lift_note(id, lifted, &reason);
                assert!(note.len() <= MAX_REASON_BYTES, "{} bytes", note.len());
                assert!(note.ends_with(&reason));
            }
        }
    }
}
