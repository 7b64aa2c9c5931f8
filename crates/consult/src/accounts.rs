//! No account is born alone: the account lifecycle over the consultation
//! path, one operation per function, in the style of `reads.rs`:
//! authenticate → authorize (Cedar) → act (the store) → ledger → answer.
//! Every refusal after authentication is ledgered before it is returned;
//! any failure is [`Refusal::Unavailable`].
//!
//! The rules, and where each one is enforced:
//! - **Who may ask** is the policy's `request_account` and `request_reset`
//!   (managers; for resets also agency officers). The relationship the
//!   policy context does not carry is checked here: a manager asks for
//!   accounts in its own organisation only, for the roles
//!   [`REQUESTABLE_ROLES`] only, and for resets of its own organisation's
//!   agents and managers; nobody asks for a reset of its own factors.
//! - **Who may decide** is the policy's `decide_account` (agency officers),
//!   and the store's four-eyes rule (an active officer, neither the account
//!   nor its requester, never of the requester's organisation, France
//!   Travail agencies included, and from outside a partner's organisation),
//!   which no caller can skip; the store also moves states only along the
//!   account state machine (`rempart_domain::AccountAction`). A store
//!   refusal of either is ledgered as `four_eyes`.
//! - **A requested account cannot work**: it is not `active`, so
//!   authentication refuses it, and [`issue_credential`] refuses to give it
//!   a credential. It starts with an empty caseload: no mandate is created.
//! - **A burst of requests raises an alert**: when a request makes
//!   [`BURST_REQUESTS`] or more by the same requester within
//!   [`BURST_WINDOW_MINUTES`], the request is still recorded, and a second
//!   ledger leaf (action `account_request`, decision allow) whose note
//!   starts with [`ALERT_PREFIX`] is appended with it, in the same batch,
//!   before the answer; a `tracing` warning names ids only. [`is_alert`]
//!   finds such leaves. (Alerts will move to the guard's own store.)
//! - **An approved reset ends access**: the store deletes the factors,
//!   ends the sessions and marks the next session high-risk; a reset of
//!   kind `all` also revokes the account's API credentials here.
//!
//! Leaves about another account say which in their note (`account <id>`);
//! the acting account is the caller. Jobs without a caller
//! ([`Consultation::disable_inactive`]) write leaves whose `account` is the
//! account acted on (the action reads "was disabled"), with no session and
//! a note starting with [`SYSTEM_PREFIX`]: that is the system's identity
//! in the ledger.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use rempart_domain::{AccountState, Purpose, Reference, Role};
use rempart_ledger::{
    AccountId, Action as LeafAction, AuditLeaf, Decision as LeafDecision, DenyReason, FieldGroups,
    OrganisationId, Timestamp,
};
use rempart_policy::Action;
use rempart_storage::{
    AccountChange, AccountLifecycle, AccountRecord, NewAccountRequest,
    ResetKind as StoredResetKind, StorageError, Store,
};

use crate::authenticate::{self, IssuedCredential};
use crate::authorize;
use crate::kernel::{ChangeRefusal, Consultation, Ctx, Presented, Refusal};
use crate::secrets::IssuedActivation;
use crate::views::{
    AccountHistory, AccountReview, AccountView, ResetKind, ResetView, dormant_since,
};

/// A request is a burst (and raises an alert) when it makes this many or
/// more account requests by the same requester within the window.
pub const BURST_REQUESTS: u32 = 3;
/// The window of [`BURST_REQUESTS`], in minutes.
pub const BURST_WINDOW_MINUTES: i64 = 60;
/// Days without a login after which an account is dormant (reviews) and
/// disabled (`rempart accounts disable-inactive`).
pub const INACTIVITY_DAYS: u32 = 90;
/// Longest inactivity window accepted, in days (100 years).
pub const MAX_INACTIVITY_DAYS: u32 = 36_500;
/// The roles a manager may ask for. Officers, security and DPO accounts are
/// not born from a partner's request.
pub const REQUESTABLE_ROLES: &[Role] = &[Role::Agent, Role::Manager];
/// How the note of an alert leaf starts.
pub const ALERT_PREFIX: &str = "alert:";
/// How the note of a leaf written by a job without a caller starts.
pub const SYSTEM_PREFIX: &str = "system:";

/// A manager's request for a new account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRequest {
    /// The organisation the account will belong to: the requester's own.
    pub organisation_id: OrganisationId,
    /// Its login (unique in the registry).
    pub login: Reference,
    /// One of [`REQUESTABLE_ROLES`].
    pub role: Role,
}

/// A decided account request.
#[derive(Debug)]
pub struct AccountDecision {
    /// The account as stored after the decision.
    pub account: AccountView,
    /// On approval, the account's activation code, shown once to the
    /// deciding officer (see [`crate::activation`]).
    pub activation: Option<IssuedActivation>,
}

/// A decided credential reset.
#[derive(Debug)]
pub struct ResetDecision {
    /// The reset as stored after the decision.
    pub reset: ResetView,
    /// API credentials and API clients revoked with it (approved resets of
    /// kind `all`).
    pub credentials_revoked: u64,
    /// On approval of a reset removing the password or the TOTP factor,
    /// the account's activation code, shown once to the deciding officer.
    pub activation: Option<IssuedActivation>,
}

/// Issues an API credential, only to an active account: a requested,
/// suspended or disabled account gets none. (Authentication checks the
/// state on every request too, so a credential issued before a suspension
/// stops working with it.) Refused with [`Refusal::Invalid`] naming
/// `account_id` (no such account, or one not active; requested accounts
/// await an outside officer's approval).
pub async fn issue_credential(
    store: &Store,
    account_id: AccountId,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<IssuedCredential, Refusal> {
    let account = store
        .account_by_id(account_id)
        .await
        .map_err(|e| Refusal::from_store("accounts", &e))?
        .ok_or_else(|| Refusal::invalid("account_id", "no such account"))?;
    if account.state != AccountState::Active {
        return Err(Refusal::invalid(
            "account_id",
            format!(
                "the account is {}, only an active account gets a credential",
                account.state
            ),
        ));
    }
    authenticate::issue(store, account_id, ttl, now)
        .await
        .map_err(|e| Refusal::from_store("credentials", &e))
}

/// Whether an account has gone `days` without a login at `now`: its last
/// login, or (never logged in) its decision or creation, is older. `None`
/// when its history is unknown (imported accounts): the review shows it,
/// and `disable_inactive` leaves it alone.
pub fn dormant(history: &AccountLifecycle, now: DateTime<Utc>, days: u32) -> Option<bool> {
    dormant_since(
        history
            .last_login_at
            .or(history.decided_at)
            .or(history.created_at),
        now,
        days,
    )
}

/// Whether a ledger leaf is an alert raised by this module.
pub fn is_alert(leaf: &AuditLeaf) -> bool {
    leaf.note
        .as_deref()
        .is_some_and(|n| n.starts_with(ALERT_PREFIX))
}

impl Consultation {
    /// A manager asks for a new account in its own organisation. The
    /// account starts `requested`, with no mandate, and works only once an
    /// officer from elsewhere approves it ([`Consultation::decide_account`]).
    /// A burst of requests raises an alert (see the module doc).
    pub async fn request_account(
        &self,
        presented: &Presented<'_>,
        request: AccountRequest,
    ) -> Result<AccountReview, Refusal> {
        let now = self.now().trunc_subsecs(6);
        let action = LeafAction::AccountRequest;
        let caller = self.authenticate(presented, action, now).await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, action, now);
        let asked = format!(
            "account request in organisation {}, role {}",
            request.organisation_id, request.role
        );
        self.allow(&ctx, &who, Action::RequestAccount, &asked)
            .await?;
        if request.organisation_id != caller.account.organisation_id
            || !REQUESTABLE_ROLES.contains(&request.role)
        {
            return Err(self
                .refuse(&ctx, DenyReason::PolicyDenied, Refusal::Forbidden, asked)
                .await);
        }
        let requested_by = caller.account.account_id;
        let stored = self
            .auth
            .request_account(NewAccountRequest {
                organisation_id: request.organisation_id,
                login: request.login,
                role: request.role,
                requested_by,
                at: now,
            })
            .await;
        let account = match stored {
            Ok(a) => a,
            Err(e @ (StorageError::Refused { .. } | StorageError::NotFound { .. })) => {
                let refusal = invalid_from_store(&e);
                return Err(self
                    .refuse(&ctx, DenyReason::InvalidRequest, refusal, asked)
                    .await);
            }
            Err(e) => return Err(self.fail(&ctx, None, "accounts", &e).await),
        };
        let since = now - Duration::minutes(BURST_WINDOW_MINUTES);
        let recent = self
            .fail_on(
                &ctx,
                None,
                "accounts",
                self.auth.requests_since(requested_by, since).await,
            )
            .await?;
        let mut leaves = vec![ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!(
                "account {} requested, role {}",
                account.account_id, account.role
            )),
        )];
        if recent >= BURST_REQUESTS {
            leaves.push(ctx.leaf(
                None,
                FieldGroups::EMPTY,
                LeafDecision::Allow,
                None,
                Some(burst_note(recent)),
            ));
            // Ids only: no login, no name.
            tracing::warn!(
                requester = requested_by.get(),
                organisation = caller.account.organisation_id.get(),
                requests = recent,
                window_minutes = BURST_WINDOW_MINUTES,
                "alert: burst of account requests"
            );
        }
        self.record_all(&leaves).await?;
        Ok(AccountReview {
            history: AccountHistory {
                created_at: Some(now),
                requested_by: Some(requested_by),
                decided_by: None,
                decided_at: None,
                last_login_at: None,
            },
            account: AccountView::from(account),
        })
    }

    /// An officer approves (the account becomes `active`) or rejects (it
    /// becomes `disabled`) a requested account. The store refuses a
    /// decision without four eyes: that is a 403 ledgered as `four_eyes`.
    /// An account that is not awaiting a decision is `NotFound`. An
    /// approval issues the account's activation code, returned here only;
    /// if that fails the approval stands, the answer is a 503, and an
    /// officer issues a code with `rempart account activation issue`.
    pub async fn decide_account(
        &self,
        presented: &Presented<'_>,
        account_id: AccountId,
        approve: bool,
    ) -> Result<AccountDecision, Refusal> {
        let now = self.now().trunc_subsecs(6);
        let action = if approve {
            LeafAction::AccountApprove
        } else {
            LeafAction::AccountReject
        };
        let caller = self.authenticate(presented, action, now).await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, action, now);
        let about = format!("account {account_id}");
        self.allow(&ctx, &who, Action::DecideAccount, &about)
            .await?;
        // Rehearsed (the four-eyes rule and the state machine refuse with
        // one denial), ledgered, then made.
        let officer = caller.account.account_id;
        let change = AccountChange::Decide {
            account_id,
            officer_id: officer,
            approve,
        };
        if let Err(refused) = decided(self.auth.rehearse(&change, now).await, "accounts") {
            return Err(self
                .refuse_rehearsed(&ctx, None, refused, Some(about))
                .await);
        }
        let note = if approve {
            format!("{about}; activation code issued")
        } else {
            about
        };
        let leaf = ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(note),
        );
        self.leaf_then(&ctx, leaf, async {
            let decision = self
                .auth
                .decide_account(account_id, officer, approve, now)
                .await;
            let account = AccountView::from(decided(decision, "accounts")?);
            if !approve {
                return Ok(AccountDecision {
                    account,
                    activation: None,
                });
            }
            // The approval stands if the code cannot be issued: the answer
            // is a 503 and an officer issues one with `rempart account
            // activation issue`.
            match self.new_activation(account_id, officer, now).await {
                Ok(a) => Ok(AccountDecision {
                    account,
                    activation: Some(a),
                }),
                Err(e) => Err(ChangeRefusal {
                    what: "approved, but no activation code issued",
                    ..ChangeRefusal::failed("activation code after an approval", &e)
                }),
            }
        })
        .await
    }

    /// Accounts awaiting a decision, oldest first (officers).
    pub async fn pending_account_requests(
        &self,
        presented: &Presented<'_>,
    ) -> Result<Vec<AccountReview>, Refusal> {
        self.listing(presented, Action::DecideAccount, "pending account requests")
            .await?
            .run(self, self.auth.pending_requests())
            .await
    }

    /// Someone asks for a reset of another account's factors: a manager for
    /// the agents and managers of its own organisation, an agency officer
    /// for any account. Another officer decides
    /// ([`Consultation::decide_reset`]). For a manager, an account outside
    /// its organisation is `NotFound`, like a missing one.
    pub async fn request_reset(
        &self,
        presented: &Presented<'_>,
        account_id: AccountId,
        kind: ResetKind,
    ) -> Result<ResetView, Refusal> {
        let now = self.now().trunc_subsecs(6);
        let action = LeafAction::CredentialResetRequest;
        let caller = self.authenticate(presented, action, now).await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, action, now);
        let about = format!("account {account_id}: reset of {}", kind.as_str());
        self.allow(&ctx, &who, Action::RequestReset, &about).await?;
        let target = self
            .fail_on(
                &ctx,
                None,
                "accounts",
                self.store.account_by_id(account_id).await,
            )
            .await?;
        let me = &caller.account;
        let visible = target
            .as_ref()
            .filter(|t| me.role == Role::Officer || t.organisation_id == me.organisation_id);
        let Some(target) = visible else {
            return Err(self
                .refuse(&ctx, DenyReason::InvalidRequest, Refusal::NotFound, about)
                .await);
        };
        if target.account_id == me.account_id {
            // One's own factors are reset on someone else's request.
            return Err(self
                .refuse(&ctx, DenyReason::FourEyes, Refusal::Forbidden, about)
                .await);
        }
        let allowed = match me.role {
            // The policy admits agency officers only.
            Role::Officer => true,
            Role::Manager => REQUESTABLE_ROLES.contains(&target.role),
            _ => false,
        };
        if !allowed {
            return Err(self
                .refuse(&ctx, DenyReason::PolicyDenied, Refusal::Forbidden, about)
                .await);
        }
        let stored = self
            .auth
            .request_reset(account_id, kind.stored(), me.account_id, now)
            .await;
        let reset = match stored {
            Ok(r) => r,
            Err(e @ (StorageError::Refused { .. } | StorageError::NotFound { .. })) => {
                let refusal = invalid_from_store(&e);
                return Err(self
                    .refuse(&ctx, DenyReason::InvalidRequest, refusal, about)
                    .await);
            }
            Err(e) => return Err(self.fail(&ctx, None, "resets", &e).await),
        };
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!("{about} requested (reset {})", reset.id)),
        ))
        .await?;
        Ok(ResetView::from(reset))
    }

    /// An officer approves or rejects a reset. Approval (in the store, in
    /// one transaction) deletes the factors of its kind, ends the account's
    /// sessions and marks its next session high-risk; for kind `all`, the
    /// account's API credentials are revoked too. Four eyes as for
    /// accounts; a reset already decided, or none, is `NotFound`.
    pub async fn decide_reset(
        &self,
        presented: &Presented<'_>,
        reset_id: i64,
        approve: bool,
    ) -> Result<ResetDecision, Refusal> {
        let now = self.now().trunc_subsecs(6);
        let action = LeafAction::CredentialReset;
        let caller = self.authenticate(presented, action, now).await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, action, now);
        let verb = if approve { "approved" } else { "rejected" };
        let about = format!("reset {reset_id} {verb}");
        self.allow(&ctx, &who, Action::DecideAccount, &about)
            .await?;
        // Rehearsed (four eyes, the state machine), ledgered with what it
        // will do, then made.
        let officer = caller.account.account_id;
        let change = AccountChange::DecideReset {
            reset_id,
            officer_id: officer,
            approve,
        };
        let rehearsal = match decided(self.auth.rehearse(&change, now).await, "resets") {
            Ok(r) => r,
            Err(refused) => {
                return Err(self
                    .refuse_rehearsed(&ctx, None, refused, Some(about))
                    .await);
            }
        };
        let kind = rehearsal.reset_kind.unwrap_or(StoredResetKind::All);
        let revokes = approve && kind == StoredResetKind::All;
        let reactivates = approve && (kind.removes_password() || kind.removes_totp());
        let leaf = ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(format!(
                "reset {reset_id} of account {} ({}) {verb}{}{}",
                rehearsal.account_id,
                kind.as_str(),
                if revokes {
                    ", API credentials and clients revoked"
                } else {
                    ""
                },
                if reactivates {
                    ", activation code issued"
                } else {
                    ""
                },
            )),
        );
        self.leaf_then(&ctx, leaf, async {
            let decision = self.auth.decide_reset(reset_id, officer, approve, now).await;
            let reset = decided(decision, "resets")?;
            let mut credentials_revoked = 0;
            if approve && reset.kind == StoredResetKind::All {
                // The factors went with the store's transaction; the API
                // credentials live in the registry and go now, with the
                // account's API clients (partner software acting as it: a
                // reset of every factor assumes the account was taken). A
                // failure here is reported (503, ledgered): the operator
                // revokes them with `rempart account credential revoke`.
                let partly = |stage: &str, e: &StorageError| ChangeRefusal {
                    what: "reset made, but API credentials or clients not all revoked",
                    ..ChangeRefusal::failed(stage, e)
                };
                credentials_revoked = self
                    .store
                    .revoke_credentials(reset.account_id, None, now)
                    .await
                    .map_err(|e| partly("credential revocation after a reset", &e))?;
                credentials_revoked += self
                    .auth
                    .revoke_api_clients_of_account(reset.account_id, now)
                    .await
                    .map_err(|e| partly("API client revocation after a reset", &e))?;
            }
            // The removed factors come back through an activation code (a
            // passkeys-only reset leaves password + TOTP, which open a
            // session that registers a new passkey).
            let mut activation = None;
            if approve && (reset.kind.removes_password() || reset.kind.removes_totp()) {
                match self.new_activation(reset.account_id, officer, now).await {
                    Ok(a) => activation = Some(a),
                    // The store gives a code only to an active account
                    // approved under four eyes: a suspended one gets its
                    // code once reactivated, one never approved gets none.
                    // The reset stands either way; the ledger says so.
                    Err(
                        StorageError::Refused {
                            field: "account_id",
                            ..
                        }
                        | StorageError::NotFound {
                            field: "account_id",
                            ..
                        },
                    ) => {
                        self.record(ctx.leaf(
                            None,
                            FieldGroups::EMPTY,
                            LeafDecision::Allow,
                            None,
                            Some(format!(
                                "reset {reset_id}: no activation code issued (account not active or never approved under four eyes)"
                            )),
                        ))
                        .await
                        .map_err(|refusal| ChangeRefusal {
                            what: "reset made, no activation code issued",
                            ..ChangeRefusal::new(DenyReason::InternalError, refusal)
                        })?;
                    }
                    Err(e) => {
                        return Err(ChangeRefusal {
                            what: "reset made, but no activation code issued",
                            ..ChangeRefusal::failed("activation code after a reset", &e)
                        });
                    }
                }
            }
            Ok(ResetDecision {
                reset: ResetView::from(reset),
                credentials_revoked,
                activation,
            })
        })
        .await
    }

    /// Resets awaiting a decision, oldest first (officers).
    pub async fn pending_resets(
        &self,
        presented: &Presented<'_>,
    ) -> Result<Vec<ResetView>, Refusal> {
        self.listing(presented, Action::DecideAccount, "pending resets")
            .await?
            .run(self, self.auth.pending_resets())
            .await
    }

    /// Every account not disabled, of one organisation or all, with its
    /// history: the periodic review of who still holds access (agency
    /// officers and security).
    pub async fn accounts_review(
        &self,
        presented: &Presented<'_>,
        organisation_id: Option<OrganisationId>,
    ) -> Result<Vec<AccountReview>, Refusal> {
        let note = match organisation_id {
            Some(id) => format!("account review of organisation {id}"),
            None => "account review".to_string(),
        };
        self.listing(presented, Action::ReviewAccounts, &note)
            .await?
            .run(self, self.auth.accounts_to_review(organisation_id))
            .await
    }

    /// Disables every active account without a login (or, never logged in,
    /// a decision or creation) for `days`, ends its sessions, and ledgers
    /// one `account_disable` leaf per account under the system identity
    /// (see the module doc). For the command line: there is no caller.
    /// The accounts are disabled before their leaves are written, as any
    /// action here; if the ledger fails, the answer says so (503) and the
    /// accounts stay disabled, the safe side.
    pub async fn disable_inactive(
        &self,
        now: DateTime<Utc>,
        days: u32,
    ) -> Result<Vec<AccountRecord>, Refusal> {
        let before = now
            .checked_sub_signed(Duration::days(i64::from(days)))
            .filter(|_| (1..=MAX_INACTIVITY_DAYS).contains(&days));
        let Some(before) = before else {
            return Err(Refusal::invalid(
                "days",
                format!("must be between 1 and {MAX_INACTIVITY_DAYS}"),
            ));
        };
        let ids = self
            .auth
            .disable_inactive(before, now)
            .await
            .map_err(|e| Refusal::Unavailable(format!("accounts: {e}")))?;
        let mut disabled = Vec::with_capacity(ids.len());
        let mut leaves = Vec::with_capacity(ids.len());
        for id in ids {
            let account = match self.store.account_by_id(id).await {
                Ok(Some(a)) => a,
                Ok(None) => {
                    return Err(Refusal::Unavailable(format!(
                        "accounts: account {id} vanished after it was disabled"
                    )));
                }
                Err(e) => return Err(Refusal::Unavailable(format!("accounts: {e}"))),
            };
            leaves.push(AuditLeaf {
                time: Timestamp::from_datetime(now),
                account: account.account_id,
                organisation: account.organisation_id,
                session: None,
                person: None,
                action: LeafAction::AccountDisable,
                field_groups: FieldGroups::EMPTY,
                purpose: None,
                decision: LeafDecision::Allow,
                guard: None,
                note: Some(format!("{SYSTEM_PREFIX} no login for {days} days")),
            });
            disabled.push(account);
        }
        if !leaves.is_empty() {
            self.record_all(&leaves).await?;
        }
        Ok(disabled)
    }

    /// Stage 1 and 2 of a listing: authenticated, allowed, and ready to
    /// ledger what it read.
    async fn listing(
        &self,
        presented: &Presented<'_>,
        action: Action,
        note: &str,
    ) -> Result<Listing, Refusal> {
        let now = self.now().trunc_subsecs(6);
        let caller = self
            .authenticate(presented, LeafAction::AdminList, now)
            .await?;
        let who = authorize::who(&caller.account);
        let ctx = Ctx::new(&caller, LeafAction::AdminList, now);
        self.allow(&ctx, &who, action, note).await?;
        Ok(Listing {
            caller,
            now,
            note: note.to_string(),
        })
    }

    /// Stage 2: the policy's answer for a registry-wide account action; a
    /// refusal is ledgered with `note` (what was asked, about whom).
    async fn allow(
        &self,
        ctx: &Ctx<'_>,
        who: &rempart_policy::Who,
        action: Action,
        note: &str,
    ) -> Result<(), Refusal> {
        // The purpose is irrelevant to account management; any value does.
        let allowed = authorize::registry_action(&self.policy, who, action, Purpose::FollowUp);
        if self.fail_on(ctx, None, "policy", allowed).await? {
            return Ok(());
        }
        Err(self
            .refuse(
                ctx,
                DenyReason::PolicyDenied,
                Refusal::Forbidden,
                note.to_string(),
            )
            .await)
    }
}

/// An authorized listing, waiting for its rows.
struct Listing {
    caller: authenticate::Caller,
    now: DateTime<Utc>,
    note: String,
}

impl Listing {
    /// Reads the rows, ledgers the listing, answers.
    async fn run<R, T: From<R>>(
        self,
        consultation: &Consultation,
        rows: impl std::future::Future<Output = Result<Vec<R>, StorageError>>,
    ) -> Result<Vec<T>, Refusal> {
        let ctx = Ctx::new(&self.caller, LeafAction::AdminList, self.now);
        let rows = consultation
            .fail_on(&ctx, None, "accounts", rows.await)
            .await?;
        consultation
            .record(ctx.leaf(
                None,
                FieldGroups::EMPTY,
                LeafDecision::Allow,
                None,
                Some(format!("{} ({} rows)", self.note, rows.len())),
            ))
            .await?;
        Ok(rows.into_iter().map(T::from).collect())
    }
}

/// The alert's note.
fn burst_note(requests: u32) -> String {
    format!(
        "{ALERT_PREFIX} burst of {requests} account requests in {} min",
        BURST_WINDOW_MINUTES
    )
}

/// The fields a store refusal may name, as the caller knows them.
const STORE_FIELDS: &[&str] = &[
    "login",
    "organisation_id",
    "requested_by",
    "officer_id",
    "account_id",
    "role",
];

/// A store refusal as a 400 naming the field (only fields a caller sent;
/// any other is `request`).
fn invalid_from_store(e: &StorageError) -> Refusal {
    let (field, reason) = e.refused().unwrap_or(("request", e.to_string()));
    let field = STORE_FIELDS
        .iter()
        .copied()
        .find(|f| *f == field)
        .unwrap_or("request");
    Refusal::invalid(field, reason)
}

/// A store refusal of a decision: the four-eyes rule (`officer_id`) and
/// the account state machine (`state`, a detour around an approval) are
/// a 403 ledgered as `four_eyes`; anything else a 400.
fn store_refusal(e: &StorageError) -> (DenyReason, Refusal) {
    match e {
        StorageError::Refused {
            field: "officer_id" | "state",
            ..
        }
        | StorageError::NotFound {
            field: "officer_id",
            ..
        } => (DenyReason::FourEyes, Refusal::Forbidden),
        e => (DenyReason::InvalidRequest, invalid_from_store(e)),
    }
}

/// The store's answer to a decision, rehearsed or made: `None` (no such
/// account or reset, or already decided) is not found; a refusal reads as
/// [`store_refusal`] says; a failure of `stage` is `Unavailable`.
fn decided<T>(r: Result<Option<T>, StorageError>, stage: &str) -> Result<T, ChangeRefusal> {
    match r {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(ChangeRefusal::new(
            DenyReason::InvalidRequest,
            Refusal::NotFound,
        )),
        Err(e @ (StorageError::Refused { .. } | StorageError::NotFound { .. })) => {
            let (reason, refusal) = store_refusal(&e);
            Err(ChangeRefusal::new(reason, refusal))
        }
        Err(e) => Err(ChangeRefusal::failed(stage, &e)),
    }
}

/// Handlers run on a multi-threaded runtime: the operations must be `Send`.
#[allow(dead_code)]
fn operations_are_send(c: &Consultation) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&c.decide_account(&Presented::Nothing, AccountId::new(1), true));
    is_send(&c.pending_account_requests(&Presented::Nothing));
    is_send(&c.accounts_review(&Presented::Nothing, None));
    is_send(&c.disable_inactive(c.now(), 90));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(secs, 0).unwrap()
    }

    fn history() -> AccountLifecycle {
        AccountLifecycle {
            account_id: AccountId::new(7),
            created_at: None,
            requested_by: None,
            decided_by: None,
            decided_at: None,
            last_login_at: None,
            next_session_high_risk: false,
        }
    }

    #[test]
    fn dormancy_counts_from_the_last_known_instant() {
        let day = 86_400;
        let now = at(1_000 * day);
        assert_eq!(dormant(&history(), now, 90), None, "unknown history");
        let created = AccountLifecycle {
            created_at: Some(at(800 * day)),
            ..history()
        };
        assert_eq!(dormant(&created, now, 90), Some(true));
        let decided = AccountLifecycle {
            decided_at: Some(at(950 * day)),
            ..created.clone()
        };
        assert_eq!(dormant(&decided, now, 90), Some(false));
        let logged_in_long_ago = AccountLifecycle {
            last_login_at: Some(at(900 * day)),
            ..decided.clone()
        };
        // The last login wins over a later decision.
        assert_eq!(dormant(&logged_in_long_ago, now, 90), Some(true));
        let edge = AccountLifecycle {
            last_login_at: Some(at(910 * day)),
            ..history()
        };
        assert_eq!(dormant(&edge, now, 90), Some(false), "exactly 90 days");
        assert_eq!(
            dormant(&edge, now, u32::MAX),
            Some(false),
            "a window before the representable past never panics"
        );
    }

    #[test]
    fn store_refusals_name_their_field_and_four_eyes_is_forbidden() {
        let refused = |field, reason: &str| StorageError::Refused {
            field,
            reason: reason.into(),
        };
        assert_eq!(
            invalid_from_store(&refused("login", "already used by another account")),
            Refusal::invalid("login", "already used by another account")
        );
        assert_eq!(
            invalid_from_store(&StorageError::NotFound {
                field: "account_id",
                what: "account"
            }),
            Refusal::invalid("account_id", "no such account")
        );
        assert_eq!(
            invalid_from_store(&refused("secret_field", "x")),
            Refusal::invalid("request", "x")
        );
        let (reason, refusal) = store_refusal(&refused(
            "officer_id",
            "the requester cannot decide on its own request (four eyes)",
        ));
        assert_eq!(
            (reason, refusal),
            (DenyReason::FourEyes, Refusal::Forbidden)
        );
        let (reason, refusal) = store_refusal(&refused(
            "state",
            "an account that is requested cannot be subject to reactivate",
        ));
        assert_eq!(
            (reason, refusal),
            (DenyReason::FourEyes, Refusal::Forbidden)
        );
        let (reason, _) = store_refusal(&refused("at", "out of range (years 1 to 9999)"));
        assert_eq!(reason, DenyReason::InvalidRequest);
    }

    #[test]
    fn alerts_are_recognised_by_their_note() {
        let mut leaf = AuditLeaf {
            time: Timestamp::from_datetime(at(0)),
            account: AccountId::new(1),
            organisation: OrganisationId::new(1),
            session: None,
            person: None,
            action: LeafAction::AccountRequest,
            field_groups: FieldGroups::EMPTY,
            purpose: None,
            decision: LeafDecision::Allow,
            guard: None,
            note: Some(burst_note(5)),
        };
        assert!(is_alert(&leaf));
        assert_eq!(
            leaf.note.as_deref(),
            Some("alert: burst of 5 account requests in 60 min")
        );
        assert!(leaf.encode().is_ok(), "the note fits a leaf");
        leaf.note = Some("account 5 requested, role agent".into());
        assert!(!is_alert(&leaf));
        leaf.note = None;
        assert!(!is_alert(&leaf));
    }
}
