//! The breach register, for agency security and the DPO (GDPR Art. 33(5)):
//! open an incident ([`Consultation::open_incident`]), read the register
//! ([`Consultation::incidents`], [`Consultation::incident`]), record a
//! step of its timeline ([`Consultation::record_incident_event`]) and
//! scope it from the ledger ([`Consultation::scope_incident`]).
//!
//! What an officer names as compromised is resolved to the register's
//! subjects by [`IncidentRequest::resolve`], which the `rempart incident
//! open` command uses too: an API client is the account it reads as, an
//! alert its accounts and, by default, its window and title.
//!
//! Each operation reads top to bottom: authenticate → authorize (the
//! `manage_incidents` action) → ledger → change. Every answer has its leaf;
//! a leaf names the incident and the step, never the officer's text
//! (which the register keeps).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rempart_breach::{Scope, ScopeError};
use rempart_domain::incident::NoticeProgress;
use rempart_domain::incident::{
    Compromised, Event, Incident, IncidentId, Milestone, NewIncident, Window,
};
use rempart_domain::{AccountId, OrganisationId, Purpose};
use rempart_guard::Alert;
use rempart_guard::store::{AlertQuery, StoredAlert};
use rempart_ledger::{Action as LeafAction, DenyReason};
use rempart_policy::Action;
use rempart_storage::{AuthStore, RegisterError};

use crate::authenticate::Caller;
use crate::authorize;
use crate::kernel::{ChangeRefusal, Consultation, Ctx, Presented, Refusal};
use crate::settings::Register;

/// How far before an alert's evidence its incident's window starts by
/// default: the guard speaks once the reads look wrong, and the same
/// hands may have read quietly before.
pub const BEFORE_ALERT: Duration = Duration::days(7);

/// An incident as an officer describes it, before it is checked against
/// the registry and the guard's alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentRequest {
    /// What happened, in a line (no job seeker named); from an alert, its
    /// kind by default.
    pub title: Option<String>,
    /// Compromised accounts.
    pub accounts: Vec<AccountId>,
    /// Compromised organisations: every account of each.
    pub organisations: Vec<OrganisationId>,
    /// Compromised API clients (`rmpc_…`): the account each reads as. The
    /// ledger records that account, so the scope also counts the
    /// account's own reads: more than the client's, never less.
    pub clients: Vec<String>,
    /// A guard alert's id: its account, or each account an
    /// organisation's alert names.
    pub alert: Option<i64>,
    /// Window start, inclusive; from an alert, a week before its evidence
    /// by default.
    pub from: Option<DateTime<Utc>>,
    /// Window end, exclusive; now by default.
    pub to: Option<DateTime<Utc>>,
    /// When the controller became aware (now by default): the 72 hours of
    /// Art. 33 run from it.
    pub aware_at: Option<DateTime<Utc>>,
}

/// Why an incident request cannot be entered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncidentRequestError {
    /// A field is refused: which, and why (never a value).
    #[error("{field}: {reason}")]
    Invalid {
        /// The request's field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A store could not be read.
    #[error("{0}")]
    Unavailable(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> IncidentRequestError {
    IncidentRequestError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl IncidentRequest {
    /// The query that finds this request's alert, if it names one.
    pub fn alert_query(&self) -> Option<AlertQuery> {
        self.alert.map(|id| AlertQuery {
            after_id: id.saturating_sub(1),
            limit: 1,
            ..AlertQuery::default()
        })
    }

    /// The incident to enter: clients and the alert resolved to accounts,
    /// the window and title completed from the alert. `found` is what
    /// [`IncidentRequest::alert_query`] found. Accounts and organisations
    /// are checked by the register itself when it enters the incident.
    pub async fn resolve(
        &self,
        auth: &dyn AuthStore,
        found: Vec<StoredAlert>,
        opened_by: String,
        now: DateTime<Utc>,
    ) -> Result<NewIncident, IncidentRequestError> {
        let mut compromised: Vec<Compromised> = self
            .accounts
            .iter()
            .map(|a| Compromised::Account(*a))
            .chain(
                self.organisations
                    .iter()
                    .map(|o| Compromised::Organisation(*o)),
            )
            .collect();
        for (n, client) in self.clients.iter().enumerate() {
            let known = auth
                .api_client(client)
                .await
                .map_err(|e| IncidentRequestError::Unavailable(format!("API clients: {e}")))?;
            match known {
                Some((_, account)) => compromised.push(Compromised::Account(account.account_id)),
                None => {
                    return Err(invalid(
                        "clients",
                        format!("item {} is not a registered API client", n + 1),
                    ));
                }
            }
        }
        let (mut from, mut title) = (self.from, self.title.clone());
        if let Some(id) = self.alert {
            let Some(alert) = found.into_iter().find(|a| a.id == id).map(|a| a.alert) else {
                return Err(invalid("alert", "no such alert in the guard's store"));
            };
            compromised.extend(alert_accounts(&alert).map(Compromised::Account));
            from.get_or_insert(alert.evidence.from - BEFORE_ALERT);
            title.get_or_insert_with(|| {
                format!("Alerte {id} de la garde ({})", alert.kind.as_str())
            });
        }
        if compromised.is_empty() {
            return Err(invalid(
                "compromised",
                "say what was compromised: accounts, organisations, clients or an alert",
            ));
        }
        let from = from.ok_or_else(|| invalid("from", "the window's start is required"))?;
        let window = Window::new(from, self.to.unwrap_or(now))
            .map_err(|_| invalid("to", "the window must end after it starts"))?;
        let title = title.ok_or_else(|| invalid("title", "say what happened, in a line"))?;
        Ok(NewIncident {
            title,
            compromised,
            window,
            aware_at: self.aware_at.unwrap_or(now),
            opened_by,
        })
    }
}

/// The accounts an alert is about: those an organisation's alert names,
/// else its own.
fn alert_accounts(alert: &Alert) -> impl Iterator<Item = AccountId> + '_ {
    let own = alert.accounts.is_empty().then_some(alert.account_id);
    alert.accounts.iter().copied().chain(own)
}

/// An incident of the register, with where its notices stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentView {
    /// The incident and its timeline.
    pub incident: Incident,
    /// Its notices: queued, delivered, interrupted.
    pub notices: NoticeProgress,
}

/// An incident's scope as computed for the register, with its evidence.
#[derive(Debug, Clone)]
pub struct ScopeView {
    /// The incident scoped.
    pub incident: Incident,
    /// The scope: persons (ids), what of them, refusals, leaf range.
    pub scope: Scope,
    /// The signed checkpoint (a C2SP signed note) of the size the scope
    /// covers.
    pub checkpoint: String,
    /// Leaves appended after that checkpoint, not covered.
    pub later: u64,
}

impl Consultation {
    /// Adds the breach register (the server always does; without it the
    /// register's operations are not offered).
    pub fn with_register(mut self, register: Register) -> Self {
        self.register = Some(Arc::new(register));
        self
    }

    /// Enters an incident in the register: what was compromised and the
    /// window, resolved by [`IncidentRequest::resolve`]. A refused field
    /// is a ledgered `Invalid` naming it; nothing is written.
    pub async fn open_incident(
        &self,
        presented: &Presented<'_>,
        request: &IncidentRequest,
    ) -> Result<IncidentView, Refusal> {
        let (caller, register, now) = self
            .register_keeper(presented, LeafAction::IncidentRecord)
            .await?;
        let ctx = Ctx::new(&caller, LeafAction::IncidentRecord, now);
        let found = match request.alert_query() {
            Some(query) => {
                self.fail_on(&ctx, None, "guard", self.guard.alerts(&query).await)
                    .await?
            }
            None => Vec::new(),
        };
        let opened_by = format!(
            "account {} ({})",
            caller.account.account_id, caller.account.login
        );
        let new = match request
            .resolve(self.auth.as_ref(), found, opened_by, now)
            .await
        {
            Ok(new) => new,
            Err(IncidentRequestError::Invalid { field, reason }) => {
                let refusal = Refusal::Invalid { field, reason };
                return Err(self
                    .deny(&ctx, None, DenyReason::InvalidRequest, refusal)
                    .await);
            }
            Err(IncidentRequestError::Unavailable(cause)) => {
                return Err(self.fail(&ctx, None, "incident", &cause).await);
            }
        };
        // Rehearsed (the fields, every subject in the registry), so that a
        // refusal is ledgered alone; then the leaf, then the register,
        // which checks all again in its transaction.
        if let Err(e) = self.rehearse_open(&new, now).await {
            return Err(self.register_refusal(&ctx, e).await);
        }
        let leaf = ctx.noted(format!(
            "incident opened: {} subjects, window of {} h",
            new.compromised.len(),
            (new.window.to() - new.window.from()).num_hours()
        ));
        let id = self
            .leaf_then(&ctx, leaf, async {
                register
                    .incidents
                    .open_incident(&new, now)
                    .await
                    .map_err(change_refusal)
            })
            .await?;
        self.view(&ctx, &register, id).await
    }

    /// The register: every incident, newest first, with its notices.
    pub async fn incidents(&self, presented: &Presented<'_>) -> Result<Vec<IncidentView>, Refusal> {
        let (caller, register, now) = self
            .register_keeper(presented, LeafAction::AdminList)
            .await?;
        let ctx = Ctx::new(&caller, LeafAction::AdminList, now);
        let all = match register.incidents.incidents().await {
            Ok(all) => all,
            Err(e) => return Err(self.register_refusal(&ctx, e).await),
        };
        let mut views = Vec::with_capacity(all.len());
        for incident in all {
            let notices = self
                .fail_on(
                    &ctx,
                    None,
                    "notices",
                    register.notices.notice_progress(incident.id).await,
                )
                .await?;
            views.push(IncidentView { incident, notices });
        }
        self.record(ctx.noted(format!("incidents ({} rows)", views.len())))
            .await?;
        Ok(views)
    }

    /// One incident of the register.
    pub async fn incident(
        &self,
        presented: &Presented<'_>,
        id: IncidentId,
    ) -> Result<IncidentView, Refusal> {
        let (caller, register, now) = self
            .register_keeper(presented, LeafAction::AdminList)
            .await?;
        let ctx = Ctx::new(&caller, LeafAction::AdminList, now);
        let view = self.view(&ctx, &register, id).await?;
        self.record(ctx.noted(format!("incident {id}"))).await?;
        Ok(view)
    }

    /// Records a step of an open incident's timeline (`at` defaults to
    /// now). A closed incident refuses it: `Conflict`, ledgered, nothing
    /// written.
    pub async fn record_incident_event(
        &self,
        presented: &Presented<'_>,
        id: IncidentId,
        milestone: Milestone,
        at: Option<DateTime<Utc>>,
        note: Option<String>,
    ) -> Result<IncidentView, Refusal> {
        let (caller, register, now) = self
            .register_keeper(presented, LeafAction::IncidentRecord)
            .await?;
        let ctx = Ctx::new(&caller, LeafAction::IncidentRecord, now);
        let event = Event {
            at: at.unwrap_or(now),
            milestone,
            note,
            recorded_at: now,
        };
        // Rehearsed (the event's fields, the incident open), so that a
        // refusal is ledgered alone; then the leaf, then the register's
        // one statement that finds the incident open (a racing close wins
        // or loses whole: a step that lost is a deny leaf after its allow).
        let rehearsal = stored_incident(&register, id, true)
            .await
            .and_then(|_| rempart_storage::validate_event(&event));
        if let Err(e) = rehearsal {
            return Err(self.register_refusal(&ctx, e).await);
        }
        let leaf = ctx.noted(format!("incident {id}: {milestone}"));
        self.leaf_then(&ctx, leaf, async {
            register
                .incidents
                .record_event(id, &event)
                .await
                .map_err(change_refusal)
        })
        .await?;
        self.view(&ctx, &register, id).await
    }

    /// Scopes an open incident from the ledger, bound to a signed
    /// checkpoint (a fresh one where this server integrates the ledger,
    /// else the latest), and records the `scoped` step. The scope names
    /// persons by id only.
    pub async fn scope_incident(
        &self,
        presented: &Presented<'_>,
        id: IncidentId,
    ) -> Result<ScopeView, Refusal> {
        let (caller, register, now) = self.register_keeper(presented, LeafAction::Export).await?;
        let ctx = Ctx::new(&caller, LeafAction::Export, now);
        let incident = match stored_incident(&register, id, true).await {
            Ok(i) => i,
            Err(e) => return Err(self.register_refusal(&ctx, e).await),
        };
        let (size, checkpoint) = self.evidence(&ctx).await?;
        let store = self.ledger().store();
        let scope = self
            .fail_on(
                &ctx,
                None,
                "scope",
                rempart_breach::scope_at(
                    store.as_ref(),
                    &incident.compromised,
                    incident.window,
                    size,
                )
                .await
                .map_err(|e: ScopeError| e.to_string()),
            )
            .await?;
        let later = self
            .fail_on(&ctx, None, "ledger", store.size().await)
            .await?
            .saturating_sub(size);
        let summary = format!(
            "{} persons revealed ({} pseudonymous only), ledger size {size}",
            scope.persons.len(),
            scope.pseudonymous_only()
        );
        self.record(ctx.noted(format!("incident {id} scoped: {summary}")))
            .await?;
        // The scope stands on its leaf whether or not the step is recorded
        // (a close racing it): it is answered either way, and a step that
        // could not be recorded is a deny leaf after it.
        let event = Event::happening(now, Milestone::Scoped, Some(summary));
        if let Err(e) = register.incidents.record_event(id, &event).await {
            let refused = change_refusal(e);
            let _ = self.refuse_rehearsed(&ctx, None, refused, None).await;
        }
        Ok(ScopeView {
            incident,
            scope,
            checkpoint,
            later,
        })
    }

    /// Stage 1 and 2 of every register operation: an active account that
    /// may keep the register (agency security, the DPO).
    async fn register_keeper(
        &self,
        presented: &Presented<'_>,
        action: LeafAction,
    ) -> Result<(Caller, Arc<Register>, DateTime<Utc>), Refusal> {
        let now = self.now();
        let caller = self.authenticate(presented, action, now).await?;
        let ctx = Ctx::new(&caller, action, now);
        let who = authorize::who(&caller.account);
        // The purpose is irrelevant here; any value does.
        self.allow_registry_action(&ctx, &who, Action::ManageIncidents, Purpose::FollowUp, 0)
            .await?;
        let Some(register) = self.register.clone() else {
            return Err(self
                .deny(&ctx, None, DenyReason::InvalidRequest, Refusal::NotOffered)
                .await);
        };
        Ok((caller, register, now))
    }

    /// One incident and its notices.
    async fn view(
        &self,
        ctx: &Ctx<'_>,
        register: &Register,
        id: IncidentId,
    ) -> Result<IncidentView, Refusal> {
        let incident = match stored_incident(register, id, false).await {
            Ok(i) => i,
            Err(e) => return Err(self.register_refusal(ctx, e).await),
        };
        let notices = self
            .fail_on(
                ctx,
                None,
                "notices",
                register.notices.notice_progress(id).await,
            )
            .await?;
        Ok(IncidentView { incident, notices })
    }

    /// The register's refusal, ledgered alone as what it is.
    async fn register_refusal(&self, ctx: &Ctx<'_>, e: RegisterError) -> Refusal {
        self.refuse_rehearsed(ctx, None, change_refusal(e), None)
            .await
    }

    /// What the register will check when it enters `new`, checked first:
    /// its fields, and every subject in the registry.
    async fn rehearse_open(
        &self,
        new: &NewIncident,
        now: DateTime<Utc>,
    ) -> Result<(), RegisterError> {
        rempart_storage::validate_new(new, now)?;
        let backend = |e: rempart_storage::StorageError| RegisterError::Backend(e.to_string());
        let mut organisations = None;
        for subject in &new.compromised {
            let known = match subject {
                Compromised::Account(a) => self
                    .store
                    .account_by_id(*a)
                    .await
                    .map_err(backend)?
                    .is_some(),
                Compromised::Organisation(o) => {
                    if organisations.is_none() {
                        organisations = Some(self.store.organisations().await.map_err(backend)?);
                    }
                    organisations.iter().flatten().any(|(id, _)| id == o)
                }
            };
            if !known {
                return Err(RegisterError::UnknownSubject(*subject));
            }
        }
        Ok(())
    }

    /// The checkpoint a scope is bound to: a fresh one where this server
    /// integrates, else the latest one signed (a staging replica's leaves
    /// after it are left out, and the answer says how many).
    async fn evidence(&self, ctx: &Ctx<'_>) -> Result<(u64, String), Refusal> {
        match self.ledger().checkpoint_now().await {
            Ok(signed) => return Ok((signed.checkpoint.size, signed.note)),
            Err(rempart_ledger::LedgerError::NotIntegrating) => {}
            Err(e) => return Err(self.fail(ctx, None, "checkpoint", &e).await),
        }
        match self
            .fail_on(
                ctx,
                None,
                "checkpoint",
                self.ledger().store().latest_checkpoint().await,
            )
            .await?
        {
            Some(c) => Ok((c.size, c.note)),
            None => Err(self
                .fail(ctx, None, "checkpoint", &"no signed checkpoint yet")
                .await),
        }
    }
}

/// An incident of the register: `Unknown` if there is none, `Closed` if
/// it must be `open` and is not.
async fn stored_incident(
    register: &Register,
    id: IncidentId,
    open: bool,
) -> Result<Incident, RegisterError> {
    match register.incidents.incident(id).await? {
        None => Err(RegisterError::Unknown(id)),
        Some(i) if open && i.is_closed() => Err(RegisterError::Closed(id)),
        Some(i) => Ok(i),
    }
}

/// How a refusal of the register reads: a refused field, an unknown
/// incident or subject, a closed incident, or a failure.
fn change_refusal(e: RegisterError) -> ChangeRefusal {
    let invalid = |refusal| ChangeRefusal::new(DenyReason::InvalidRequest, refusal);
    match e {
        RegisterError::Invalid { field, reason } => invalid(Refusal::Invalid { field, reason }),
        RegisterError::UnknownSubject(Compromised::Account(_)) => invalid(Refusal::Invalid {
            field: "accounts",
            reason: "an account named is not in the registry".into(),
        }),
        RegisterError::UnknownSubject(Compromised::Organisation(_)) => invalid(Refusal::Invalid {
            field: "organisations",
            reason: "an organisation named is not in the registry".into(),
        }),
        RegisterError::Unknown(_) => invalid(Refusal::NotFound),
        RegisterError::Closed(id) => invalid(Refusal::Conflict(format!(
            "incident {id} is closed: nothing more can be recorded on it"
        ))),
        RegisterError::Backend(_) | RegisterError::Corrupt(_) => ChangeRefusal::new(
            DenyReason::InternalError,
            Refusal::Unavailable(format!("breach register: {e}")),
        ),
    }
}
