//! Browser login: opening, strengthening and closing device-bound
//! sessions. Nothing here knows HTTP; the web edge hands over the form's
//! fields, the device proof and the source address.
//!
//! - **Passkey login** (username-less): [`Consultation::start_login`] with
//!   [`LoginKind::Passkey`] returns WebAuthn request options and a
//!   ceremony id; [`Consultation::login_passkey`] finishes it.
//! - **Password + TOTP** (the fallback): [`Consultation::login_password`],
//!   after a [`LoginKind::Password`] ceremony. argon2id runs for unknown
//!   logins too ([`PasswordHasher::verify_or_dummy`]); failures are
//!   throttled per account (state persisted with the password) and per
//!   source address (in this process); every credential failure gets the
//!   same message ([`LoginRefusal::message_fr`]).
//! - **Passkey enrolment**: an account gets its first passkey from a
//!   session opened with password + TOTP (two factors already) within the
//!   step-up window, later ones from a session with a fresh passkey
//!   step-up ([`Consultation::start_passkey_registration`]): a stolen
//!   session alone adds no factor. This
//!   is the simplest secure path: no new kind of secret (an enrolment link
//!   would be a bearer token travelling by e-mail), and the factors that
//!   open that session were themselves issued under the four-eyes rule.
//! - **Step-up**: a fresh passkey assertion bound to the session
//!   ([`Consultation::finish_step_up`]); break-glass through a session
//!   needs one within [`LoginSettings::step_up_window`].
//! - **Logout**: [`Consultation::logout`] ends the session; the page then
//!   forgets its device key.
//!
//! Every event (success, failure, lockout, step-up, logout, enrolment) is
//! a ledger leaf appended before the answer; a session whose `Login` leaf
//! cannot be appended is ended at once and the login fails closed.
//!
//! # The device key and login CSRF
//!
//! The page creates a non-extractable P-256 key just before logging in and
//! signs a DPoP-format proof with it on the request that starts the
//! ceremony and on the one that finishes it; the ceremony remembers the
//! key's thumbprint and the session is bound to it. Login CSRF (a foreign
//! page logging the victim's browser into the attacker's account) fails
//! three times over: the login requests are `fetch()` calls with a JSON
//! body and a `DPoP` header, which a cross-site page can only send after a
//! CORS preflight this server never grants; the ceremony id comes in a
//! response that the same-origin policy keeps from a foreign page, and it
//! is single-use and tied to the key that asked for it; and even a session
//! opened that way would be bound to a key held in the foreign origin's
//! storage, which no Rempart page can use, while its cookie
//! (`SameSite=Strict`) is not even stored from a cross-site response.
//!
//! # Replay cache and several instances
//!
//! A session's device proofs are remembered in this process first
//! ([`ReplayCache`] behind a mutex: a replay to the same instance costs no
//! database call), then in the database's replay table
//! (`AuthStore::insert_replay_if_new`, one write per session request), so
//! that behind a balancer sending each request to any instance a proof
//! replayed to another is refused there too. Login proofs stay in this
//! process's bounded space: what they carry is single-use in the database
//! already (a ceremony, and the passkey challenge it holds, is consumed
//! once; a TOTP step is accepted once), and an anonymous flood must not
//! become database writes.
//!
//! # Two replay spaces: who can fill which
//!
//! A bounded cache that refuses new proofs when full (evicting would let a
//! flood make room for a replay) is a switch for whoever can fill it. A
//! login proof is signed by a key nobody vouches for yet: anyone can make
//! a fresh key per request and sign proofs at will. A session proof is
//! recorded only after the cookie found a live session and the proof was
//! verified against the key that session is bound to. So the two go into
//! separate bounded spaces ([`Web::login_replay`] and [`Web::replay`],
//! sized by [`LoginSettings::login_replay_capacity`] and
//! [`LoginSettings::replay_capacity`]): a flood of signed anonymous
//! requests to the login endpoints fills the login space only, and the
//! sessions already open keep working. What such a flood can still do is
//! refuse *new* logins (503) while it lasts; that is a rate problem for
//! the network's edge, and it never spreads to open sessions.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use rempart_auth::jose::Jkt;
use rempart_auth::lockout::LoginRefusal;
use rempart_auth::passkey::{
    AuthenticationState, CeremonyKind, RegistrationState, StoredPasskey, credential_id_of,
};
use rempart_auth::password::{Password, PasswordHash};
use rempart_auth::totp::{self, TotpCode};
use rempart_domain::{AccountId, AccountState, Reference};
use rempart_ledger::{Action as LeafAction, Decision as LeafDecision, DenyReason, FieldGroups};
use rempart_storage::{AccountRecord, AuthStore, StorageError, StoredPasskeyRow};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::authenticate::{self, ProofRequest, Via};
use crate::kernel::{Consultation, Ctx, LoginFailure, Presented, Refusal};
use crate::session::Opening;
use crate::settings::Web;
use crate::throttle::{Counter, ThrottleError};

pub use crate::secrets::{TotpSealError, open_totp_secret, seal_totp_secret};
pub use crate::session::{DEVICE_TRUST_DAYS, LoginAnswer};
pub use crate::settings::{LOGIN_REPLAY_CAPACITY, LoginConfigError, LoginSettings};

/// How long a login, registration or step-up ceremony stays usable.
const CEREMONY_SECS: i64 = 300;

/// Ceremony kinds, as the store keeps them.
const KIND_PASSWORD: &str = "login_password";
const KIND_PASSKEY: &str = "login_passkey";
const KIND_REGISTER: &str = "passkey_register";
const KIND_STEP_UP: &str = "step_up";

/// Longest login, password or code read from a form, in bytes.
const MAX_FIELD: usize = 512;

/// Which login a ceremony is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginKind {
    /// Password and TOTP code.
    Password,
    /// A passkey, username-less.
    Passkey,
}

/// A started ceremony: its id (send it back when finishing) and, for
/// passkeys, the options for `navigator.credentials`.
#[derive(Debug, Clone)]
pub struct Started {
    pub ceremony: String,
    pub options: Option<serde_json::Value>,
}

/// The password form's fields.
#[derive(Clone, Copy)]
pub struct PasswordForm<'a> {
    pub ceremony: &'a str,
    pub login: &'a str,
    pub password: &'a str,
    pub code: &'a str,
    /// The browser's device token (its trusted-browser cookie), if any.
    pub device: Option<&'a str>,
}

impl std::fmt::Debug for PasswordForm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordForm(<redacted>)")
    }
}

/// What a ceremony remembers between its two requests (JSON in the store).
#[derive(Serialize, Deserialize)]
struct CeremonyState {
    /// Thumbprint of the device key that started a login.
    jkt: Option<String>,
    /// The session (id digest, base64url) a registration or step-up
    /// belongs to.
    session: Option<String>,
    authentication: Option<AuthenticationState>,
    registration: Option<RegistrationState>,
}

impl Consultation {
    /// Starts a login ceremony for the page whose device key signed
    /// `proof` (no session yet, so no `ath`).
    pub async fn start_login(
        &self,
        kind: LoginKind,
        proof: ProofRequest<'_>,
    ) -> Result<Started, Refusal> {
        let (auth, web) = self.login_parts()?;
        let now = self.now();
        let jkt = self.login_proof(web, proof, now).await?;
        let (store_kind, authentication, options) = match kind {
            LoginKind::Password => (KIND_PASSWORD, None, None),
            LoginKind::Passkey => {
                let (options, state) = web
                    .passkeys
                    .start_discoverable_authentication(SystemTime::from(now))
                    .map_err(|e| Refusal::Unavailable(format!("passkey: {e}")))?;
                let options = serde_json::to_value(&options)
                    .map_err(|e| Refusal::Unavailable(format!("passkey options: {e}")))?;
                (KIND_PASSKEY, Some(state), Some(options))
            }
        };
        let state = CeremonyState {
            jkt: Some(jkt.to_string()),
            session: None,
            authentication,
            registration: None,
        };
        let ceremony = put_ceremony(auth.as_ref(), store_kind, &state, now)
            .await
            .map_err(|e| Refusal::Unavailable(format!("ceremony: {e}")))?;
        Ok(Started { ceremony, options })
    }

    /// Password + TOTP login from `addr`, finishing a
    /// [`LoginKind::Password`] ceremony.
    pub async fn login_password(
        &self,
        form: PasswordForm<'_>,
        proof: ProofRequest<'_>,
        addr: IpAddr,
    ) -> Result<LoginAnswer, Refusal> {
        let (auth, web) = self.login_parts()?;
        let now = self.now();
        let now_unix = u64::try_from(now.timestamp()).unwrap_or(0);
        for (field, value) in [
            ("login", form.login),
            ("password", form.password),
            ("code", form.code),
        ] {
            if value.len() > MAX_FIELD {
                return Err(Refusal::invalid(field, "is too long"));
            }
        }

        // 1. The device proof and the ceremony it started.
        let jkt = self.login_proof(web, proof, now).await?;
        self.take_login_ceremony(auth.as_ref(), form.ceremony, KIND_PASSWORD, &jkt, now)
            .await?;

        // 2. The account, its password and its throttle state. A login
        //    that is not a valid reference names no account.
        let account = match Reference::parse(form.login.trim()) {
            Ok(login) => self
                .store
                .account_by_login(&login)
                .await
                .map_err(|e| self.login_unavailable(&e))?,
            Err(_) => None,
        };
        let stored = match &account {
            Some(a) => auth
                .password(a.account_id)
                .await
                .map_err(|e| self.login_unavailable(&e))?,
            None => None,
        };
        // An account without a password is, for this form, no account.
        let known = account.as_ref().filter(|_| stored.is_some());
        // A browser the account trusts (it logged in there before) counts
        // its failures on its own counter; every other browser shares the
        // account's. So failing on purpose from elsewhere locks out
        // unknown browsers only, never the owner's: the lock is no remote
        // switch (issue 17).
        let device = match (
            known,
            form.device.and_then(authenticate::device_token_digest),
        ) {
            (Some(a), Some(digest)) => auth
                .login_device_throttle(&digest, a.account_id, now)
                .await
                .map_err(|e| self.login_unavailable(&e))?
                .map(|throttle| (digest, throttle)),
            _ => None,
        };
        let (counter, throttle_state) = match &device {
            Some((digest, throttle)) => (Counter::Device(*digest), Some(throttle.clone())),
            None => (Counter::Password, stored.as_ref().map(|(_, t)| t.clone())),
        };

        // 3. Reserve the attempt before anything is evaluated: one place of
        //    the address, and on a known account the state counting it as
        //    a failure, stored by compare-and-set (`throttle.rs`).
        let admitted = self
            .admit_attempt(
                web,
                counter,
                known.zip(throttle_state).map(|(a, t)| (a.account_id, t)),
                form.login.trim(),
                addr,
                now_unix,
            )
            .await
            .map_err(|e| self.throttle_unavailable(&e))?;
        let attempt = match admitted {
            Ok(attempt) => attempt,
            Err(delay) => {
                let note = match delay.scope {
                    rempart_auth::lockout::Scope::Account => "throttled: account",
                    rempart_auth::lockout::Scope::Address => "throttled: address",
                };
                self.login_leaf(
                    known,
                    LeafAction::LoginFailed,
                    DenyReason::LockedOut,
                    note,
                    now,
                )
                .await?;
                return Err(Refusal::LoginFailed(LoginFailure::Credentials(
                    LoginRefusal::from(delay),
                )));
            }
        };

        // 4. Evaluate. argon2id runs whatever the login (a dummy hash for
        //    unknown ones) on the blocking pool; the code is checked for
        //    every known account, but its step is only used up once the
        //    password matched.
        let hash = stored
            .as_ref()
            .and_then(|(phc, _)| PasswordHash::parse(phc).ok());
        let password_ok = match Password::new(form.password.to_owned()) {
            Ok(password) => {
                let web = Arc::clone(web);
                let hash = hash.clone();
                tokio::task::spawn_blocking(move || {
                    web.hasher.verify_or_dummy(hash.as_ref(), &password)
                })
                .await
                .unwrap_or(false)
            }
            Err(_) => false,
        };
        let step = match known {
            Some(a) => {
                self.totp_step(auth.as_ref(), a.account_id, form.code, now_unix)
                    .await?
            }
            None => None,
        };
        let refusal = match (known, password_ok, step) {
            (None, _, _) => Some(LoginRefusal::UnknownAccount),
            (Some(_), false, _) => Some(LoginRefusal::WrongPassword),
            (Some(_), true, None) => Some(LoginRefusal::WrongCode),
            (Some(a), true, Some(step)) => {
                let fresh = auth
                    .accept_totp_step(a.account_id, step)
                    .await
                    .map_err(|e| self.login_unavailable(&e))?;
                if !fresh {
                    Some(LoginRefusal::WrongCode)
                } else if a.state != AccountState::Active {
                    Some(LoginRefusal::AccountUnavailable)
                } else {
                    None
                }
            }
        };

        // 5. A failure was counted against the account when it was
        //    reserved; the address counts it now. A lock it caused is its
        //    own event, and an alert.
        if let Some(refusal) = refusal {
            let settled = attempt.failed().await;
            let note = match refusal {
                LoginRefusal::UnknownAccount => "password: unknown login",
                LoginRefusal::WrongPassword => "password: wrong password",
                LoginRefusal::WrongCode => "password: wrong or replayed code",
                LoginRefusal::AccountUnavailable => "password: account not active",
                _ => "password: refused",
            };
            let mut last = self
                .login_leaf(
                    known,
                    LeafAction::LoginFailed,
                    DenyReason::BadCredentials,
                    note,
                    now,
                )
                .await?;
            if known.is_some() && settled.account_locked.is_some() {
                last = self
                    .login_leaf(
                        known,
                        LeafAction::LockedOut,
                        DenyReason::LockedOut,
                        "password: too many failures",
                        now,
                    )
                    .await?;
            }
            self.raise_login_alerts(known, settled, web.lockout_after(), now, Some(last))
                .await;
            return Err(Refusal::LoginFailed(LoginFailure::Credentials(refusal)));
        }
        let Some(account) = known else {
            return Err(Refusal::LoginFailed(LoginFailure::Credentials(
                LoginRefusal::UnknownAccount,
            )));
        };

        // 6. Success: the counter starts again (unless a lock came into
        //    force meanwhile), an old hash is upgraded.
        let locked_meanwhile = attempt
            .succeeded(auth.as_ref(), counter)
            .await
            .map_err(|e| self.throttle_unavailable(&e))?;
        if let Some(delay) = locked_meanwhile {
            self.login_leaf(
                known,
                LeafAction::LoginFailed,
                DenyReason::LockedOut,
                "throttled: account locked during the attempt",
                now,
            )
            .await?;
            return Err(Refusal::LoginFailed(LoginFailure::Credentials(
                LoginRefusal::from(delay),
            )));
        }
        if let Some(old) = &hash
            && web.hasher.needs_rehash(old)
            && let Ok(password) = Password::new(form.password.to_owned())
        {
            let web2 = Arc::clone(web);
            if let Ok(Ok(new)) =
                tokio::task::spawn_blocking(move || web2.hasher.hash(&password)).await
            {
                auth.set_password(account.account_id, &new.to_phc_string(), now)
                    .await
                    .map_err(|e| self.login_unavailable(&e))?;
            }
        }
        // What other browsers failed meanwhile (read before this attempt:
        // from a trusted browser, that counter was not touched here).
        let failed_elsewhere = match (&device, &stored) {
            (Some(_), Some((_, shared))) => crate::throttle::parse(shared)
                .map(|t| t.consecutive_failures)
                .unwrap_or(0),
            _ => 0,
        };
        let opening = Opening {
            replaces: device.map(|(digest, _)| digest),
            failed_elsewhere,
            ..Opening::by("password_totp")
        };
        self.open_session(auth.as_ref(), web, account, &jkt, opening, now)
            .await
    }

    /// Passkey login (username-less), finishing a [`LoginKind::Passkey`]
    /// ceremony with the browser's answer (JSON).
    pub async fn login_passkey(
        &self,
        ceremony: &str,
        credential_json: &str,
        proof: ProofRequest<'_>,
        device: Option<&str>,
    ) -> Result<LoginAnswer, Refusal> {
        let (auth, web) = self.login_parts()?;
        let now = self.now();
        let jkt = self.login_proof(web, proof, now).await?;
        let state = self
            .take_login_ceremony(auth.as_ref(), ceremony, KIND_PASSKEY, &jkt, now)
            .await?;
        let Some(authentication) = state.authentication else {
            return Err(Refusal::Restart);
        };
        let failed = |note: String, account: Option<AccountRecord>| async move {
            self.login_leaf(
                account.as_ref(),
                LeafAction::LoginFailed,
                DenyReason::BadCredentials,
                &note,
                now,
            )
            .await?;
            Err::<LoginAnswer, Refusal>(Refusal::LoginFailed(LoginFailure::Passkey))
        };
        let Ok(credential_id) = credential_id_of(credential_json) else {
            return failed("passkey: malformed answer".into(), None).await;
        };
        let row = auth
            .passkey_by_credential(credential_id.as_bytes())
            .await
            .map_err(|e| self.login_unavailable(&e))?;
        let Some(row) = row else {
            return failed("passkey: unknown credential".into(), None).await;
        };
        let account = self
            .store
            .account_by_id(row.account_id)
            .await
            .map_err(|e| self.login_unavailable(&e))?;
        let stored =
            parse_passkey(&row).map_err(|e| Refusal::Unavailable(format!("passkey: {e}")))?;
        let checked = web.passkeys.finish_authentication(
            &authentication,
            credential_json,
            &[stored],
            SystemTime::from(now),
        );
        let done = match checked {
            Ok(done) => done,
            Err(e) => return failed(format!("passkey: {e}"), account).await,
        };
        self.store_passkey(auth.as_ref(), &done.updated, now)
            .await?;
        let Some(account) = account.filter(|a| a.state == AccountState::Active) else {
            let account = self
                .store
                .account_by_id(row.account_id)
                .await
                .map_err(|e| self.login_unavailable(&e))?;
            return failed("passkey: account not active".into(), account).await;
        };
        self.open_session(
            auth.as_ref(),
            web,
            &account,
            &jkt,
            self.opening(auth.as_ref(), &account, device, "passkey", now)
                .await?,
            now,
        )
        .await
    }

    /// Starts registering a passkey for the session's account.
    pub async fn start_passkey_registration(
        &self,
        presented: &Presented<'_>,
    ) -> Result<Started, Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::FactorEnrol, now)
            .await?;
        let ctx = Ctx::new(&caller, LeafAction::FactorEnrol, now);
        let (auth, web, session) = self.session_parts(&ctx).await?;
        self.factor_change_allowed(&ctx, auth.as_ref()).await?;
        let existing = self.passkeys_of(&ctx, auth.as_ref()).await?;
        let login = caller.account.login.as_str();
        let started = web.passkeys.start_registration(
            caller.account.account_id,
            login,
            login,
            &existing,
            SystemTime::from(now),
        );
        let (options, registration) = self.fail_on(&ctx, None, "passkey", started).await?;
        let state = CeremonyState {
            jkt: None,
            session: Some(session),
            authentication: None,
            registration: Some(registration),
        };
        self.session_ceremony(&ctx, auth.as_ref(), KIND_REGISTER, &state, options)
            .await
    }

    /// Finishes a passkey registration with the browser's answer (JSON).
    pub async fn finish_passkey_registration(
        &self,
        presented: &Presented<'_>,
        ceremony: &str,
        credential_json: &str,
    ) -> Result<(), Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::FactorEnrol, now)
            .await?;
        let ctx = Ctx::new(&caller, LeafAction::FactorEnrol, now);
        let (auth, web, session) = self.session_parts(&ctx).await?;
        let state = self
            .take_session_ceremony(&ctx, auth.as_ref(), ceremony, KIND_REGISTER, &session)
            .await?;
        let Some(registration) = state.registration else {
            return Err(self.refuse_ceremony(&ctx).await);
        };
        // Again at the end: the proof may have aged while the ceremony ran.
        self.factor_change_allowed(&ctx, auth.as_ref()).await?;
        let existing = self.passkeys_of(&ctx, auth.as_ref()).await?;
        let passkey = match web.passkeys.finish_registration(
            &registration,
            credential_json,
            &existing,
            SystemTime::from(now),
        ) {
            Ok(p) => p,
            Err(e) => {
                return Err(self
                    .refuse(
                        &ctx,
                        DenyReason::InvalidRequest,
                        Refusal::invalid("credential", "the passkey could not be registered"),
                        format!("passkey: {e}"),
                    )
                    .await);
            }
        };
        let data = self
            .fail_on(&ctx, None, "passkey", serde_json::to_string(&passkey))
            .await?;
        let row = StoredPasskeyRow {
            credential_id: passkey.credential_id().as_bytes().to_vec(),
            account_id: caller.account.account_id,
            data,
            created_at: now,
            last_used_at: None,
        };
        match auth.add_passkey(row).await {
            Ok(()) => {}
            Err(StorageError::Refused { .. } | StorageError::NotFound { .. }) => {
                return Err(self
                    .refuse(
                        &ctx,
                        DenyReason::InvalidRequest,
                        Refusal::invalid("credential", "this passkey is already registered"),
                        "passkey: already registered".into(),
                    )
                    .await);
            }
            Err(e) => return Err(self.fail(&ctx, None, "passkey", &e).await),
        }
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some("passkey registered".into()),
        ))
        .await?;
        Ok(())
    }

    /// Starts a step-up: a fresh passkey assertion by the session's account.
    pub async fn start_step_up(&self, presented: &Presented<'_>) -> Result<Started, Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::StepUp, now)
            .await?;
        let ctx = Ctx::new(&caller, LeafAction::StepUp, now);
        let (auth, web, session) = self.session_parts(&ctx).await?;
        let existing = self.passkeys_of(&ctx, auth.as_ref()).await?;
        if existing.is_empty() {
            return Err(self
                .refuse(
                    &ctx,
                    DenyReason::StepUpRequired,
                    Refusal::invalid("passkey", "register a passkey first"),
                    "step-up: no passkey registered".into(),
                )
                .await);
        }
        let started =
            web.passkeys
                .start_step_up(caller.account.account_id, &existing, SystemTime::from(now));
        let (options, authentication) = self.fail_on(&ctx, None, "passkey", started).await?;
        let state = CeremonyState {
            jkt: None,
            session: Some(session),
            authentication: Some(authentication),
            registration: None,
        };
        self.session_ceremony(&ctx, auth.as_ref(), KIND_STEP_UP, &state, options)
            .await
    }

    /// Finishes a step-up; the session records it (for break-glass).
    pub async fn finish_step_up(
        &self,
        presented: &Presented<'_>,
        ceremony: &str,
        credential_json: &str,
    ) -> Result<(), Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::StepUp, now)
            .await?;
        let ctx = Ctx::new(&caller, LeafAction::StepUp, now);
        let (auth, web, session) = self.session_parts(&ctx).await?;
        let state = self
            .take_session_ceremony(&ctx, auth.as_ref(), ceremony, KIND_STEP_UP, &session)
            .await?;
        let Some(authentication) = state
            .authentication
            .filter(|a| a.kind() == CeremonyKind::StepUp)
        else {
            return Err(self.refuse_ceremony(&ctx).await);
        };
        let existing = self.passkeys_of(&ctx, auth.as_ref()).await?;
        let done = match web.passkeys.finish_authentication(
            &authentication,
            credential_json,
            &existing,
            SystemTime::from(now),
        ) {
            Ok(d) => d,
            Err(e) => {
                return Err(self
                    .refuse(
                        &ctx,
                        DenyReason::BadCredentials,
                        Refusal::Unauthenticated,
                        format!("step-up: {e}"),
                    )
                    .await);
            }
        };
        let stored = self
            .store_passkey(auth.as_ref(), &done.updated, now)
            .await
            .map_err(|e| e.to_string());
        self.fail_on(&ctx, None, "passkey", stored).await?;
        let Via::Session { id_digest, .. } = &caller.via else {
            return Err(self.refuse_ceremony(&ctx).await);
        };
        let at = DateTime::<Utc>::from(done.ceremony_started_at);
        let marked = auth.mark_step_up(*id_digest, at).await;
        self.fail_on(&ctx, None, "session", marked).await?;
        self.record(ctx.leaf(
            None,
            FieldGroups::EMPTY,
            LeafDecision::Allow,
            None,
            Some("step-up: passkey".into()),
        ))
        .await?;
        Ok(())
    }

    /// Ends the session the request comes with.
    pub async fn logout(&self, presented: &Presented<'_>) -> Result<(), Refusal> {
        let now = self.now();
        let caller = self
            .authenticate(presented, LeafAction::Logout, now)
            .await?;
        let ctx = Ctx::new(&caller, LeafAction::Logout, now);
        let (auth, _, _) = self.session_parts(&ctx).await?;
        let Via::Session { id_digest, .. } = &caller.via else {
            return Err(self.refuse_ceremony(&ctx).await);
        };
        let ended = auth.end_session(*id_digest, now, "logout").await;
        self.fail_on(&ctx, None, "session", ended).await?;
        self.record(ctx.leaf(None, FieldGroups::EMPTY, LeafDecision::Allow, None, None))
            .await?;
        Ok(())
    }

    // ---------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------

    /// Takes a login ceremony; it must have been started by the same
    /// device key.
    async fn take_login_ceremony(
        &self,
        auth: &dyn AuthStore,
        ceremony: &str,
        kind: &str,
        jkt: &Jkt,
        now: DateTime<Utc>,
    ) -> Result<CeremonyState, Refusal> {
        let state = take_ceremony(auth, ceremony, kind, now)
            .await
            .map_err(|e| self.login_unavailable(&e))?;
        match state {
            Some(s) if s.jkt.as_deref() == Some(jkt.to_string().as_str()) => Ok(s),
            _ => {
                self.login_leaf(
                    None,
                    LeafAction::LoginFailed,
                    DenyReason::InvalidRequest,
                    "login: ceremony unknown, used, expired or of another device",
                    now,
                )
                .await?;
                Err(Refusal::Restart)
            }
        }
    }

    /// The code's time step if it matches (not yet marked used).
    async fn totp_step(
        &self,
        auth: &dyn AuthStore,
        account_id: AccountId,
        code: &str,
        now_unix: u64,
    ) -> Result<Option<u64>, Refusal> {
        let Some(row) = auth
            .totp(account_id)
            .await
            .map_err(|e| self.login_unavailable(&e))?
        else {
            return Ok(None);
        };
        let secret = open_totp_secret(&self.vault, account_id, &row.sealed_secret)
            .map_err(|e| Refusal::Unavailable(format!("totp: {e}")))?;
        let Ok(code) = TotpCode::parse(code.trim()) else {
            return Ok(None);
        };
        Ok(totp::verify(&secret, &code, now_unix, row.last_step).ok())
    }

    /// A throttle that cannot be read or stored: the attempt is refused
    /// (the cause goes to the log, never to the page).
    pub(crate) fn throttle_unavailable(&self, e: &ThrottleError) -> Refusal {
        match e {
            ThrottleError::Store(e) => self.login_unavailable(e),
            ThrottleError::Unreadable | ThrottleError::Contended => {
                Refusal::Unavailable(e.to_string())
            }
        }
    }

    async fn store_passkey(
        &self,
        auth: &dyn AuthStore,
        updated: &StoredPasskey,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        let data = serde_json::to_string(updated)
            .map_err(|e| Refusal::Unavailable(format!("passkey: {e}")))?;
        auth.update_passkey(updated.credential_id().as_bytes(), &data, now)
            .await
            .map_err(|e| self.login_unavailable(&e))
    }

    /// The parts a session operation needs, and the session's key
    /// (base64url of its id digest); refused for API credentials.
    async fn session_parts(
        &self,
        ctx: &Ctx<'_>,
    ) -> Result<(&Arc<dyn AuthStore>, &Arc<Web>, String), Refusal> {
        let session = match &ctx.caller.via {
            Via::Session { id_digest, .. } => URL_SAFE_NO_PAD.encode(id_digest),
            Via::Credential(_) | Via::AccessToken { .. } => {
                return Err(self
                    .deny(ctx, None, DenyReason::InvalidRequest, Refusal::Forbidden)
                    .await);
            }
        };
        match &self.web {
            Some(web) => Ok((&self.auth, web, session)),
            None => Err(self
                .deny(ctx, None, DenyReason::InvalidRequest, Refusal::Forbidden)
                .await),
        }
    }

    /// Adding or removing a factor through a session needs a fresh proof of
    /// the account's factors, within [`LoginSettings::step_up_window`]: a
    /// passkey step-up in this session, or a session opened by a passkey
    /// that recently; for an account with no passkey yet (its first one,
    /// after a password + TOTP or federated login), the login itself. So a
    /// stolen session cannot plant the attacker's passkey, which would
    /// outlive a reset of the password and TOTP. A refusal is ledgered
    /// (`step_up_required`) and answered [`Refusal::StepUpRequired`].
    async fn factor_change_allowed(
        &self,
        ctx: &Ctx<'_>,
        auth: &dyn AuthStore,
    ) -> Result<(), Refusal> {
        let Via::Session { id_digest, .. } = &ctx.caller.via else {
            return Err(self
                .deny(ctx, None, DenyReason::InvalidRequest, Refusal::Forbidden)
                .await);
        };
        // The row as it is now, not as the request's check read it.
        let session = auth.session(*id_digest).await;
        let Some((session, _)) = self.fail_on(ctx, None, "session", session).await? else {
            return Err(self.refuse_ceremony(ctx).await);
        };
        let passkeys = auth.passkeys(ctx.caller.account.account_id).await;
        let has_passkey = !self
            .fail_on(ctx, None, "passkeys", passkeys)
            .await?
            .is_empty();
        let window = self
            .web
            .as_ref()
            .map_or(Duration::zero(), |w| w.settings.step_up_window);
        let fresh = |t: DateTime<Utc>| t <= ctx.now && ctx.now - t <= window;
        let stepped_up = session.step_up_at.is_some_and(fresh);
        let opened_recently =
            fresh(session.created_at) && (session.method == "passkey" || !has_passkey);
        if stepped_up || opened_recently {
            return Ok(());
        }
        Err(self
            .refuse(
                ctx,
                DenyReason::StepUpRequired,
                Refusal::StepUpRequired,
                "factor change: no recent step-up".into(),
            )
            .await)
    }

    async fn passkeys_of(
        &self,
        ctx: &Ctx<'_>,
        auth: &dyn AuthStore,
    ) -> Result<Vec<StoredPasskey>, Refusal> {
        let rows = self
            .fail_on(
                ctx,
                None,
                "passkeys",
                auth.passkeys(ctx.caller.account.account_id).await,
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let parsed = parse_passkey(row);
            out.push(self.fail_on(ctx, None, "passkeys", parsed).await?);
        }
        Ok(out)
    }

    async fn session_ceremony<T: Serialize>(
        &self,
        ctx: &Ctx<'_>,
        auth: &dyn AuthStore,
        kind: &str,
        state: &CeremonyState,
        options: T,
    ) -> Result<Started, Refusal> {
        let options = self
            .fail_on(ctx, None, "passkey options", serde_json::to_value(&options))
            .await?;
        let ceremony = put_ceremony(auth, kind, state, ctx.now).await;
        let ceremony = self.fail_on(ctx, None, "ceremony", ceremony).await?;
        Ok(Started {
            ceremony,
            options: Some(options),
        })
    }

    async fn take_session_ceremony(
        &self,
        ctx: &Ctx<'_>,
        auth: &dyn AuthStore,
        ceremony: &str,
        kind: &str,
        session: &str,
    ) -> Result<CeremonyState, Refusal> {
        let taken = take_ceremony(auth, ceremony, kind, ctx.now).await;
        match self.fail_on(ctx, None, "ceremony", taken).await? {
            Some(state) if state.session.as_deref() == Some(session) => Ok(state),
            _ => Err(self.refuse_ceremony(ctx).await),
        }
    }

    async fn refuse_ceremony(&self, ctx: &Ctx<'_>) -> Refusal {
        self.refuse(
            ctx,
            DenyReason::InvalidRequest,
            Refusal::invalid("ceremony", "is unknown, used or expired: start again"),
            "ceremony unknown, used, expired or of another session".into(),
        )
        .await
    }
}

fn parse_passkey(row: &StoredPasskeyRow) -> Result<StoredPasskey, &'static str> {
    let passkey: StoredPasskey =
        serde_json::from_str(&row.data).map_err(|_| "stored passkey is not readable")?;
    if passkey.account_id() != row.account_id
        || passkey.credential_id().as_bytes() != row.credential_id.as_slice()
    {
        return Err("stored passkey disagrees with its row");
    }
    Ok(passkey)
}

/// The store's key for a ceremony id: its SHA-256 (the id is a bearer
/// value while the ceremony is open).
fn ceremony_key(id: &str) -> Option<[u8; 32]> {
    let bytes = URL_SAFE_NO_PAD.decode(id).ok()?;
    (bytes.len() == 32).then(|| Sha256::digest(&bytes).into())
}

async fn put_ceremony(
    auth: &dyn AuthStore,
    kind: &str,
    state: &CeremonyState,
    now: DateTime<Utc>,
) -> Result<String, StorageError> {
    let mut id = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    let payload = serde_json::to_string(state).map_err(|e| StorageError::Refused {
        field: "payload",
        reason: e.to_string(),
    })?;
    let key: [u8; 32] = Sha256::digest(id).into();
    auth.put_ceremony(key, kind, &payload, now + Duration::seconds(CEREMONY_SECS))
        .await?;
    Ok(URL_SAFE_NO_PAD.encode(id))
}

async fn take_ceremony(
    auth: &dyn AuthStore,
    id: &str,
    kind: &str,
    now: DateTime<Utc>,
) -> Result<Option<CeremonyState>, StorageError> {
    let Some(key) = ceremony_key(id) else {
        return Ok(None);
    };
    let Some(payload) = auth.take_ceremony(key, kind, now).await? else {
        return Ok(None);
    };
    serde_json::from_str(&payload)
        .map(Some)
        .map_err(|_| StorageError::Corrupt("a ceremony's stored state is not readable".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::verify_login_proof;
    use crate::settings::locked;
    use rempart_domain::OrganisationId;
    use rempart_storage::StoredSession;

    /// A P-256 device key signing DPoP-format proofs, as the page does.
    struct DeviceKey(p256::ecdsa::SigningKey);

    impl DeviceKey {
        fn new() -> DeviceKey {
            use p256::elliptic_curve::Generate as _;
            DeviceKey(p256::ecdsa::SigningKey::generate())
        }

        fn proof(
            &self,
            method: &str,
            url: &str,
            handle: Option<&str>,
            at: DateTime<Utc>,
        ) -> String {
            use p256::ecdsa::signature::Signer as _;
            let point = self.0.verifying_key().to_sec1_point(false);
            let jwk = serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
            });
            let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
            let mut jti = [0u8; 16];
            rand::rng().fill_bytes(&mut jti);
            let mut claims = serde_json::json!({
                "htm": method,
                "htu": url,
                "iat": at.timestamp(),
                "jti": URL_SAFE_NO_PAD.encode(jti),
            });
            if let Some(h) = handle {
                claims["ath"] =
                    serde_json::json!(URL_SAFE_NO_PAD.encode(Sha256::digest(h.as_bytes())));
            }
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig: p256::ecdsa::Signature = self.0.sign(input.as_bytes());
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
        }
    }

    #[test]
    fn a_flood_of_login_proofs_fills_the_login_space_only() {
        const BASE: &str = "http://localhost:8080";
        let mut settings = LoginSettings::new(BASE).unwrap();
        settings.login_replay_capacity = 64;
        settings.replay_capacity = 64;
        let web = Web::new(settings).unwrap();
        let now = Utc::now();
        let login_url = format!("{BASE}/connexion/defi");
        let login = |key: &DeviceKey| {
            let proof = key.proof("POST", &login_url, None, now);
            verify_login_proof(
                &web,
                ProofRequest {
                    proof: Some(&proof),
                    method: "POST",
                    url: &login_url,
                },
                now,
            )
        };

        // A session opened before the flood, bound to its device key.
        let device = DeviceKey::new();
        let jkt = login(&device).unwrap();
        let opened = authenticate::new_session();
        let session = StoredSession {
            id_digest: opened.id_digest,
            account_id: AccountId::new(7),
            jkt: jkt.to_string(),
            method: "passkey".into(),
            created_at: now,
            last_seen_at: now,
            absolute_expiry: now + Duration::hours(10),
            idle_timeout_secs: 1800,
            high_risk: false,
            step_up_at: None,
            ended_at: None,
            end_reason: None,
        };
        let account = AccountRecord {
            account_id: AccountId::new(7),
            login: Reference::parse("t.agent").unwrap(),
            role: rempart_domain::Role::Agent,
            state: AccountState::Active,
            organisation_id: OrganisationId::new(1),
            organisation: Reference::parse("T-FT").unwrap(),
            kind: rempart_domain::OrganisationKind::FranceTravail,
            created_at: None,
            departement: None,
        };

        // Anyone: a fresh key per request, signed proofs until the login
        // space is full.
        let mut accepted = 1;
        let refusal = loop {
            match login(&DeviceKey::new()) {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted <= 64, "the login space is bounded");
        };
        assert_eq!(accepted, 64);
        assert!(
            refusal.is_some_and(|e| e.is_unavailable()),
            "a full login space refuses new logins (503): {refusal:?}"
        );
        assert_eq!(locked(&web.login_replay).len(), 64);
        assert_eq!(
            locked(&web.replay).len(),
            0,
            "nothing of it in the sessions' space"
        );

        // The session opened before keeps working, request after request,
        // well past what the login space holds; its replays are refused.
        let url = format!("{BASE}/portail/f/dossiers");
        for n in 0..64 {
            let proof = device.proof("GET", &url, Some(&opened.handle), now);
            let request = ProofRequest {
                proof: Some(&proof),
                method: "GET",
                url: &url,
            };
            let checked = authenticate::check_session(
                Some((session.clone(), account.clone())),
                &opened.handle,
                request,
                now,
                &web.replay,
            );
            assert!(checked.is_ok(), "session request {n}: {:?}", checked.err());
            let again = authenticate::check_session(
                Some((session.clone(), account.clone())),
                &opened.handle,
                request,
                now,
                &web.replay,
            );
            assert!(matches!(
                again,
                Err(authenticate::BadCredential::ProofRefused {
                    error: rempart_auth::dpop::DpopError::Replayed,
                    ..
                })
            ));
        }
        // Still full on the login side: the flood did not drain into it.
        assert!(login(&DeviceKey::new()).is_err_and(|e| e.is_some_and(|e| e.is_unavailable())));
    }

    #[test]
    fn settings_derive_the_rp_id_and_refuse_paths() {
        let s = LoginSettings::new("http://localhost:8080/").unwrap();
        assert_eq!(s.rp_id, "localhost");
        assert_eq!(s.public_url, "http://localhost:8080");
        let s = LoginSettings::new("https://Rempart.example").unwrap();
        assert_eq!(s.rp_id, "rempart.example");
        for bad in [
            "localhost:8080",
            "ftp://x",
            "https://x/portail",
            "https://u@x",
            "https://",
            "https://x?y",
        ] {
            assert!(LoginSettings::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ceremony_ids_are_32_bytes_of_base64url() {
        assert!(ceremony_key(&URL_SAFE_NO_PAD.encode([1u8; 32])).is_some());
        assert!(ceremony_key(&URL_SAFE_NO_PAD.encode([1u8; 31])).is_none());
        assert!(ceremony_key("!!").is_none());
        assert!(ceremony_key("").is_none());
    }

    #[test]
    fn login_refusals_never_tell_which_credential_failed() {
        let same = [
            LoginRefusal::UnknownAccount,
            LoginRefusal::WrongPassword,
            LoginRefusal::WrongCode,
            LoginRefusal::AccountUnavailable,
        ]
        .map(|r| Refusal::LoginFailed(LoginFailure::Credentials(r)));
        for e in &same {
            assert_eq!(e.to_string(), same[0].to_string());
        }
    }
}
