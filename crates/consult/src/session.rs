//! Opening a browser session: the last stage of every login, whichever
//! way in (password + TOTP and passkey in `login`, ProConnect in
//! `federation`). A login's device proof is checked here
//! ([`Consultation::login_proof`], in its own replay space, see `login`'s
//! module doc), the session is stored bound to the device key, the login
//! is ledgered (the session ended at once if its leaf cannot be appended)
//! and the browser is trusted for the account's password logins
//! ([`Consultation::open_session`]). The store is read and written here
//! for exactly that: the session row, the login's activity, the device
//! trust and the password's failure counter it reports.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rempart_auth::dpop::{DpopProof, Expected};
use rempart_auth::jose::{AlgSet, Jkt};
use rempart_domain::{AccountId, OrganisationId};
use rempart_ledger::{
    Action as LeafAction, AuditLeaf, Decision as LeafDecision, DenyReason, FieldGroups, LeafRef,
};
use rempart_storage::{AccountRecord, AuthStore, StorageError, StoredSession};
use zeroize::Zeroizing;

use crate::authenticate::{self, Caller, ProofRequest, Via};
use crate::kernel::{Consultation, Ctx, Refusal, unauthenticated_leaf};
use crate::settings::{Web, locked};
use crate::throttle;
use crate::views::AccountView;

/// How long a browser that logged in stays trusted for the account's
/// password logins (its own failure counter; see `throttle.rs`).
pub const DEVICE_TRUST_DAYS: i64 = 90;

/// What a login passes on to the session it opens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opening<'a> {
    /// How it logged in (the session's `method`, the leaf's note).
    pub(crate) method: &'a str,
    /// The trusted browser's device token it showed (replaced by a new one).
    pub(crate) replaces: Option<[u8; 32]>,
    /// Failures from other browsers, for the owner and the ledger.
    pub(crate) failed_elsewhere: u32,
}

impl<'a> Opening<'a> {
    /// A login by `method` from a browser not trusted yet.
    pub(crate) fn by(method: &'a str) -> Opening<'a> {
        Opening {
            method,
            replaces: None,
            failed_elsewhere: 0,
        }
    }
}

/// A session just opened.
pub struct LoginAnswer {
    /// The cookie value, sent once in `Set-Cookie`.
    pub cookie: Zeroizing<String>,
    /// The session's public handle, for the page's `<meta>`.
    pub handle: String,
    /// Seconds until the session's absolute end (the cookie's `Max-Age`).
    pub max_age_secs: i64,
    /// Who logged in.
    pub account: AccountView,
    /// The first session after a credential reset.
    pub high_risk: bool,
    /// The browser's new device token, sent once in `Set-Cookie`: its
    /// password logins to this account count on a counter of their own.
    pub device_token: Zeroizing<String>,
    /// Seconds the browser stays trusted (the device cookie's `Max-Age`).
    pub device_max_age_secs: i64,
    /// Consecutive failed password logins from other browsers since this
    /// account's last success there (the owner is told: someone tries).
    pub failed_elsewhere: u32,
}

impl std::fmt::Debug for LoginAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAnswer")
            .field("cookie", &"<redacted>")
            .field("account", &self.account.account_id)
            .field("high_risk", &self.high_risk)
            .finish_non_exhaustive()
    }
}

impl Consultation {
    /// The store and browser-login parts, or [`Refusal::NotOffered`]
    /// when browser login is not configured.
    pub(crate) fn login_parts(&self) -> Result<(&Arc<dyn AuthStore>, &Arc<Web>), Refusal> {
        match &self.web {
            Some(web) => Ok((&self.auth, web)),
            None => Err(Refusal::NotOffered),
        }
    }

    /// A login's store failure: no session is opened.
    pub(crate) fn login_unavailable(&self, e: &StorageError) -> Refusal {
        Refusal::Unavailable(format!("login: {e}"))
    }

    /// Verifies a login request's device proof (not yet bound: the key is
    /// new) and returns its key's thumbprint. A refusal is ledgered.
    pub(crate) async fn login_proof(
        &self,
        web: &Web,
        proof: ProofRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Jkt, Refusal> {
        match verify_login_proof(web, proof, now) {
            Ok(jkt) => Ok(jkt),
            Err(Some(e)) if e.is_unavailable() => Err(Refusal::Unavailable(format!("login: {e}"))),
            Err(_) => {
                self.login_leaf(
                    None,
                    LeafAction::LoginFailed,
                    DenyReason::SessionInvalid,
                    "login: device proof missing or invalid",
                    now,
                )
                .await?;
                Err(Refusal::Restart)
            }
        }
    }

    /// Opens a session bound to `jkt`, records the login, ledgers it.
    pub(crate) async fn open_session(
        &self,
        auth: &dyn AuthStore,
        web: &Web,
        account: &AccountRecord,
        jkt: &Jkt,
        opening: Opening<'_>,
        now: DateTime<Utc>,
    ) -> Result<LoginAnswer, Refusal> {
        let method = opening.method;
        let lifecycle = auth
            .lifecycle(account.account_id)
            .await
            .map_err(|e| self.login_unavailable(&e))?;
        let high_risk = lifecycle.is_some_and(|l| l.next_session_high_risk);
        let new = authenticate::new_session();
        let settings = &web.settings;
        auth.insert_session(StoredSession {
            id_digest: new.id_digest,
            account_id: account.account_id,
            jkt: jkt.to_string(),
            method: method.to_owned(),
            created_at: now,
            last_seen_at: now,
            absolute_expiry: now + settings.absolute,
            idle_timeout_secs: settings.idle.num_seconds(),
            high_risk,
            step_up_at: None,
            ended_at: None,
            end_reason: None,
        })
        .await
        .map_err(|e| self.login_unavailable(&e))?;
        auth.record_login(account.account_id, now)
            .await
            .map_err(|e| self.login_unavailable(&e))?;
        let caller = Caller {
            account: account.clone(),
            via: Via::Session {
                id_digest: new.id_digest,
                high_risk,
                step_up_at: None,
                device: authenticate::device_digest(&jkt.to_string()),
            },
        };
        let ctx = Ctx::new(&caller, LeafAction::Login, now);
        let mut note = if high_risk {
            format!("{method}; high-risk session")
        } else {
            method.to_owned()
        };
        if opening.failed_elsewhere > 0 {
            use std::fmt::Write;
            let _ = write!(
                note,
                "; {} failed attempts from other browsers",
                opening.failed_elsewhere
            );
        }
        let leaf = ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some(note),
        );
        if let Err(refusal) = self.record(leaf).await {
            // Nothing unrecorded may stay open.
            let _ = auth.end_session(new.id_digest, now, "ledger").await;
            return Err(refusal);
        }
        // The browser is trusted from now on (after the leaf: nothing
        // unrecorded). A failure here costs the trust, not the login.
        let (device_token, digest) = authenticate::new_device_token();
        let trust = chrono::Duration::days(DEVICE_TRUST_DAYS);
        if let Err(e) = auth
            .trust_login_device(
                &digest,
                account.account_id,
                now,
                now + trust,
                opening.replaces.as_ref(),
            )
            .await
        {
            tracing::warn!(account = account.account_id.get(), error = %e, "login device not trusted");
        }
        Ok(LoginAnswer {
            cookie: new.cookie,
            handle: new.handle,
            max_age_secs: settings.absolute.num_seconds(),
            account: AccountView::from(account),
            high_risk,
            device_token,
            device_max_age_secs: trust.num_seconds(),
            failed_elsewhere: opening.failed_elsewhere,
        })
    }

    /// What a passkey or federated login passes on to its session: the
    /// device token the browser showed, if this account trusts it (it is
    /// replaced), and the password failures of other browsers, which the
    /// owner is told of whatever the way in.
    pub(crate) async fn opening<'a>(
        &self,
        auth: &dyn AuthStore,
        account: &AccountRecord,
        device: Option<&str>,
        method: &'a str,
        now: DateTime<Utc>,
    ) -> Result<Opening<'a>, Refusal> {
        let replaces = match device.and_then(authenticate::device_token_digest) {
            Some(digest) => auth
                .login_device_throttle(&digest, account.account_id, now)
                .await
                .map_err(|e| self.login_unavailable(&e))?
                .map(|_| digest),
            None => None,
        };
        let failed_elsewhere = auth
            .password(account.account_id)
            .await
            .map_err(|e| self.login_unavailable(&e))?
            .and_then(|(_, shared)| throttle::parse(&shared).ok())
            .map_or(0, |t| t.consecutive_failures);
        Ok(Opening {
            replaces,
            failed_elsewhere,
            ..Opening::by(method)
        })
    }

    /// Ledgers a login event of a possibly unknown account.
    pub(crate) async fn login_leaf(
        &self,
        account: Option<&AccountRecord>,
        action: LeafAction,
        reason: DenyReason,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<LeafRef, Refusal> {
        let mut leaf: AuditLeaf = unauthenticated_leaf(
            account.map_or(AccountId::UNKNOWN, |a| a.account_id),
            account.map_or(OrganisationId::UNKNOWN, |a| a.organisation_id),
            action,
            reason,
            now,
        );
        leaf.note = Some(note.to_owned());
        self.record(leaf).await
    }
}

/// Checks a login request's device proof (its key is new: bound to
/// nothing yet) and records its `jti` in the login replay space, never in
/// the sessions' one (see the module doc). `Err(None)`: no proof, or this
/// server's URL does not normalise; `Err(Some(_))`: refused, and
/// [`rempart_auth::dpop::DpopError::is_unavailable`] when that space is
/// full.
pub(crate) fn verify_login_proof(
    web: &Web,
    proof: ProofRequest<'_>,
    now: DateTime<Utc>,
) -> Result<Jkt, Option<rempart_auth::dpop::DpopError>> {
    let p = proof.proof.ok_or(None)?;
    let expected = Expected::new(proof.method, proof.url)
        .map_err(|_| None)?
        .with_algs(AlgSet::ES256);
    let mut cache = locked(&web.login_replay);
    DpopProof::verify(p, &expected, now, &mut *cache)
        .map(|v| *v.jkt())
        .map_err(Some)
}
