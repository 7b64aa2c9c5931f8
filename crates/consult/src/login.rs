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
//! Device proofs' `jti`s are remembered in this process
//! ([`ReplayCache`] behind a mutex: a few hundred nanoseconds, no database
//! write per request). Behind several instances, route each session to one
//! instance (sticky on the session cookie): a proof replayed to another
//! instance would otherwise pass its `jti` check (it still needs the same
//! cookie, key binding, URL and a 60-second-old `iat` at most). The
//! database's replay table (`AuthStore::insert_replay_if_new`) is the
//! alternative for non-sticky routing, at one write per request.
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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use rempart_auth::dpop::{DpopProof, Expected, ReplayCache};
use rempart_auth::jose::{AlgSet, Jkt};
use rempart_auth::lockout::{Lockout, LockoutPolicy, LoginRefusal};
use rempart_auth::passkey::{
    AuthenticationState, CeremonyKind, Passkeys, RP_NAME, RegistrationState, StoredPasskey,
    credential_id_of,
};
use rempart_auth::password::{HashParams, Password, PasswordHash, PasswordHasher};
use rempart_auth::totp::{self, TotpCode, TotpSecret};
use rempart_crypto::{Binding, KeyRing};
use rempart_domain::{AccountState, Reference};
use rempart_ledger::{
    Action as LeafAction, AuditLeaf, Decision as LeafDecision, DenyReason, FieldGroups,
};
use rempart_storage::{AccountRecord, AuthStore, StorageError, StoredPasskeyRow, StoredSession};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::authenticate::{self, Caller, ProofRequest, Via};
use crate::path::{Ctx, unauthenticated_leaf};
use crate::throttle::{self, Counter, ThrottleError};
use crate::{Consultation, Presented, Refusal};

/// How long a login, registration or step-up ceremony stays usable.
const CEREMONY_SECS: i64 = 300;

/// Ceremony kinds, as the store keeps them.
const KIND_PASSWORD: &str = "login_password";
const KIND_PASSKEY: &str = "login_passkey";
const KIND_REGISTER: &str = "passkey_register";
const KIND_STEP_UP: &str = "step_up";

/// Longest login, password or code read from a form, in bytes.
const MAX_FIELD: usize = 512;

/// Browser login settings.
#[derive(Debug, Clone)]
pub struct LoginSettings {
    /// The public URL the browser reaches the server at (scheme, host,
    /// port; no path): the WebAuthn origin, and the base of every URL a
    /// device proof names.
    pub public_url: String,
    /// The WebAuthn relying-party id: the public URL's host.
    pub rp_id: String,
    /// A session ends after this long without a request (30 min).
    pub idle: Duration,
    /// A session ends this long after login, whatever the activity (10 h).
    pub absolute: Duration,
    /// Break-glass through a session needs a step-up at most this old (5 min).
    pub step_up_window: Duration,
    /// Failed password logins: backoff and lock.
    pub lockout: LockoutPolicy,
    /// argon2id parameters for new hashes (and the dummy hash).
    pub hash: HashParams,
    /// Live device-proof `jti`s of open sessions remembered at most.
    pub replay_capacity: usize,
    /// Live device-proof `jti`s of login requests (not yet bound to any
    /// session: anyone can sign them) remembered at most; a space of its
    /// own, so that filling it never refuses an open session's proofs.
    pub login_replay_capacity: usize,
}

/// Default of [`LoginSettings::login_replay_capacity`]: logins are rare
/// next to session requests (two proofs per login); 50,000 live entries
/// sustain about 770 login proofs per second over the 65-second window,
/// in 4.5 to 9 MB.
pub const LOGIN_REPLAY_CAPACITY: usize = 50_000;

/// A [`LoginSettings`] value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginConfigError {
    /// The public URL is not `http(s)://host[:port]`.
    #[error("public_url: {0}")]
    PublicUrl(&'static str),
    /// A duration is out of range.
    #[error("{0}: must be positive, and idle at most absolute")]
    Duration(&'static str),
    /// The passkey settings were refused.
    #[error("{0}")]
    Passkey(String),
    /// The lockout policy was refused.
    #[error("lockout: {0}")]
    Lockout(String),
    /// The password hasher could not be built.
    #[error("hash: {0}")]
    Hash(String),
    /// Federated login cannot be enabled as asked.
    #[error("federation: {0}")]
    Federation(&'static str),
}

impl LoginSettings {
    /// Defaults for a server reached at `public_url` (e.g.
    /// `https://rempart.example` or `http://localhost:8080`): sessions idle
    /// out after 30 minutes and end after 10 hours; step-up lasts 5
    /// minutes; lockout and argon2id at the auth crate's defaults.
    pub fn new(public_url: &str) -> Result<Self, LoginConfigError> {
        let url = public_url.trim_end_matches('/');
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or(LoginConfigError::PublicUrl(
                "must start with https:// or http://",
            ))?;
        if rest.contains(['/', '?', '#', '@']) {
            return Err(LoginConfigError::PublicUrl(
                "must be scheme, host and port only",
            ));
        }
        let host = match rest.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => rest,
        };
        if host.is_empty() {
            return Err(LoginConfigError::PublicUrl("has no host"));
        }
        Ok(LoginSettings {
            public_url: url.to_owned(),
            rp_id: host.to_ascii_lowercase(),
            idle: Duration::minutes(30),
            absolute: Duration::hours(10),
            step_up_window: Duration::minutes(5),
            lockout: LockoutPolicy::default(),
            hash: HashParams::RECOMMENDED,
            replay_capacity: ReplayCache::DEFAULT_CAPACITY,
            login_replay_capacity: LOGIN_REPLAY_CAPACITY,
        })
    }
}

/// What browser login needs at run time, shared by every request.
pub(crate) struct Web {
    pub(crate) settings: LoginSettings,
    passkeys: Passkeys,
    pub(crate) hasher: PasswordHasher,
    pub(crate) lockout: Mutex<Lockout>,
    /// `jti`s of proofs by keys that open sessions are bound to: only a
    /// caller holding a live session's cookie and key adds to it.
    pub(crate) replay: Mutex<ReplayCache>,
    /// `jti`s of login proofs, by keys no session is bound to yet: anyone
    /// adds to it, so it is kept apart (see the module doc).
    pub(crate) login_replay: Mutex<ReplayCache>,
}

impl Web {
    /// Checks the settings and builds what they describe.
    pub(crate) fn new(settings: LoginSettings) -> Result<Web, LoginConfigError> {
        if settings.idle <= Duration::zero()
            || settings.absolute <= Duration::zero()
            || settings.idle > settings.absolute
        {
            return Err(LoginConfigError::Duration("idle, absolute"));
        }
        if settings.step_up_window <= Duration::zero() {
            return Err(LoginConfigError::Duration("step_up_window"));
        }
        let passkeys = Passkeys::new(&settings.rp_id, &settings.public_url, RP_NAME)
            .map_err(|e| LoginConfigError::Passkey(e.to_string()))?;
        let lockout =
            Lockout::new(settings.lockout).map_err(|e| LoginConfigError::Lockout(e.to_string()))?;
        let hasher = PasswordHasher::new(settings.hash)
            .map_err(|e| LoginConfigError::Hash(e.to_string()))?;
        let replay = ReplayCache::new(settings.replay_capacity);
        let login_replay = ReplayCache::new(settings.login_replay_capacity);
        Ok(Web {
            settings,
            passkeys,
            hasher,
            lockout: Mutex::new(lockout),
            replay: Mutex::new(replay),
            login_replay: Mutex::new(login_replay),
        })
    }
}

impl Web {
    /// Failures that lock an account or an address (the alerts' baseline).
    pub(crate) fn lockout_after(&self) -> u32 {
        locked(&self.lockout).policy().lock_after
    }
}

pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Both guarded values stay consistent if a holder panicked: every
    // update completes before the guard is released.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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
    pub account: AccountRecord,
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

/// Why a login did not open a session. [`Self::message_fr`] is what the
/// page shows; it never says whether an account exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Password login refused (one message for every credential failure)
    /// or throttled.
    Refused(LoginRefusal),
    /// The passkey could not be verified (unknown, wrong, inactive account).
    PasskeyRefused,
    /// The device proof or the ceremony is missing, stale, used or
    /// foreign: the page must start again.
    Restart,
    /// A field is too long to be anything real.
    Invalid { field: &'static str },
    /// Browser login is not configured on this server.
    Disabled,
    /// A federated login was refused: unknown, used or expired state,
    /// another device key, the provider's answer refused (no multi-factor
    /// authentication included), no account linked to the identity, or an
    /// inactive account. One message for all; the ledger says which.
    FederationRefused,
    /// Something failed; no session was opened. For operators.
    Unavailable(String),
}

impl LoginError {
    /// The French message for the page.
    pub fn message_fr(&self) -> String {
        match self {
            LoginError::Refused(r) => r.message_fr(),
            LoginError::PasskeyRefused => "La clé d'accès n'a pas pu être vérifiée.".to_owned(),
            LoginError::Restart => {
                "La demande a expiré ou n'est pas valable. Rechargez la page et recommencez."
                    .to_owned()
            }
            LoginError::Invalid { .. } => rempart_auth::lockout::INVALID_CREDENTIALS_FR.to_owned(),
            LoginError::Disabled => "La connexion n'est pas disponible sur ce serveur.".to_owned(),
            LoginError::FederationRefused => {
                "La connexion par ProConnect n'a pas abouti. Recommencez depuis la page de connexion."
                    .to_owned()
            }
            LoginError::Unavailable(_) => {
                "Le service ne peut pas répondre pour le moment. Réessayez plus tard.".to_owned()
            }
        }
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
    /// Enables browser login and sessions .
    pub fn with_browser_login(mut self, settings: LoginSettings) -> Result<Self, LoginConfigError> {
        self.web = Some(Arc::new(Web::new(settings)?));
        Ok(self)
    }

    /// The public URL browser login was configured with.
    pub fn public_url(&self) -> Option<&str> {
        self.web.as_ref().map(|w| w.settings.public_url.as_str())
    }

    /// The authentication store.
    pub fn auth_store(&self) -> &Arc<dyn AuthStore> {
        &self.auth
    }

    /// The browser-login settings, if enabled.
    pub fn login_settings(&self) -> Option<&LoginSettings> {
        self.web.as_ref().map(|w| &w.settings)
    }

    /// Starts a login ceremony for the page whose device key signed
    /// `proof` (no session yet, so no `ath`).
    pub async fn start_login(
        &self,
        kind: LoginKind,
        proof: ProofRequest<'_>,
    ) -> Result<Started, LoginError> {
        let (auth, web) = self.login_parts()?;
        let now = self.now();
        let jkt = self.login_proof(web, proof, now).await?;
        let (store_kind, authentication, options) = match kind {
            LoginKind::Password => (KIND_PASSWORD, None, None),
            LoginKind::Passkey => {
                let (options, state) = web
                    .passkeys
                    .start_discoverable_authentication(SystemTime::from(now))
                    .map_err(|e| LoginError::Unavailable(format!("passkey: {e}")))?;
                let options = serde_json::to_value(&options)
                    .map_err(|e| LoginError::Unavailable(format!("passkey options: {e}")))?;
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
            .map_err(|e| LoginError::Unavailable(format!("ceremony: {e}")))?;
        Ok(Started { ceremony, options })
    }

    /// Password + TOTP login from `addr`, finishing a
    /// [`LoginKind::Password`] ceremony.
    pub async fn login_password(
        &self,
        form: PasswordForm<'_>,
        proof: ProofRequest<'_>,
        addr: IpAddr,
    ) -> Result<LoginAnswer, LoginError> {
        let (auth, web) = self.login_parts()?;
        let now = self.now();
        let now_unix = u64::try_from(now.timestamp()).unwrap_or(0);
        for (field, value) in [
            ("login", form.login),
            ("password", form.password),
            ("code", form.code),
        ] {
            if value.len() > MAX_FIELD {
                return Err(LoginError::Invalid { field });
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
        let admitted = throttle::admit(
            web,
            auth.as_ref(),
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
                return Err(LoginError::Refused(LoginRefusal::from(delay)));
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
            let settled = attempt.failed();
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
            self.raise_login_alerts(known, settled, web.lockout_after(), now, Some(last));
            return Err(LoginError::Refused(refusal));
        }
        let Some(account) = known else {
            return Err(LoginError::Refused(LoginRefusal::UnknownAccount));
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
            return Err(LoginError::Refused(LoginRefusal::from(delay)));
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
            (Some(_), Some((_, shared))) => throttle::parse(shared)
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
    ) -> Result<LoginAnswer, LoginError> {
        let (auth, web) = self.login_parts()?;
        let now = self.now();
        let jkt = self.login_proof(web, proof, now).await?;
        let state = self
            .take_login_ceremony(auth.as_ref(), ceremony, KIND_PASSKEY, &jkt, now)
            .await?;
        let Some(authentication) = state.authentication else {
            return Err(LoginError::Restart);
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
            Err::<LoginAnswer, LoginError>(LoginError::PasskeyRefused)
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
        let stored = parse_passkey(&row)?;
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
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::FactorEnrol,
            purpose: None,
            now,
        };
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
        let (options, registration) = match started {
            Ok(s) => s,
            Err(e) => return Err(self.fail(&ctx, None, "passkey", &e).await),
        };
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
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::FactorEnrol,
            purpose: None,
            now,
        };
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
        let data = match serde_json::to_string(&passkey) {
            Ok(d) => d,
            Err(e) => return Err(self.fail(&ctx, None, "passkey", &e).await),
        };
        let row = StoredPasskeyRow {
            credential_id: passkey.credential_id().as_bytes().to_vec(),
            account_id: caller.account.account_id,
            data,
            created_at: now,
            last_used_at: None,
        };
        match auth.add_passkey(row).await {
            Ok(()) => {}
            Err(StorageError::Invalid(_)) => {
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
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::StepUp,
            purpose: None,
            now,
        };
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
        let (options, authentication) = match started {
            Ok(s) => s,
            Err(e) => return Err(self.fail(&ctx, None, "passkey", &e).await),
        };
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
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::StepUp,
            purpose: None,
            now,
        };
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
        if let Err(e) = self.store_passkey(auth.as_ref(), &done.updated, now).await {
            return Err(self.fail(&ctx, None, "passkey", &e.message_fr()).await);
        }
        let Via::Session { id_digest, .. } = &caller.via else {
            return Err(self.refuse_ceremony(&ctx).await);
        };
        let at = DateTime::<Utc>::from(done.ceremony_started_at);
        if let Err(e) = auth.mark_step_up(*id_digest, at).await {
            return Err(self.fail(&ctx, None, "session", &e).await);
        }
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
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::Logout,
            purpose: None,
            now,
        };
        let (auth, _, _) = self.session_parts(&ctx).await?;
        let Via::Session { id_digest, .. } = &caller.via else {
            return Err(self.refuse_ceremony(&ctx).await);
        };
        if let Err(e) = auth.end_session(*id_digest, now, "logout").await {
            return Err(self.fail(&ctx, None, "session", &e).await);
        }
        self.record(ctx.leaf(None, FieldGroups::EMPTY, LeafDecision::Allow, None, None))
            .await?;
        Ok(())
    }

    // ---------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------

    pub(crate) fn login_parts(&self) -> Result<(&Arc<dyn AuthStore>, &Arc<Web>), LoginError> {
        match &self.web {
            Some(web) => Ok((&self.auth, web)),
            None => Err(LoginError::Disabled),
        }
    }

    pub(crate) fn login_unavailable(&self, e: &StorageError) -> LoginError {
        LoginError::Unavailable(format!("login: {e}"))
    }

    /// Verifies a login request's device proof (not yet bound: the key is
    /// new) and returns its key's thumbprint. A refusal is ledgered.
    pub(crate) async fn login_proof(
        &self,
        web: &Web,
        proof: ProofRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Jkt, LoginError> {
        match verify_login_proof(web, proof, now) {
            Ok(jkt) => Ok(jkt),
            Err(Some(e)) if e.is_unavailable() => {
                Err(LoginError::Unavailable(format!("login: {e}")))
            }
            Err(_) => {
                self.login_leaf(
                    None,
                    LeafAction::LoginFailed,
                    DenyReason::SessionInvalid,
                    "login: device proof missing or invalid",
                    now,
                )
                .await?;
                Err(LoginError::Restart)
            }
        }
    }

    /// Takes a login ceremony; it must have been started by the same
    /// device key.
    async fn take_login_ceremony(
        &self,
        auth: &dyn AuthStore,
        ceremony: &str,
        kind: &str,
        jkt: &Jkt,
        now: DateTime<Utc>,
    ) -> Result<CeremonyState, LoginError> {
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
                Err(LoginError::Restart)
            }
        }
    }

    /// The code's time step if it matches (not yet marked used).
    async fn totp_step(
        &self,
        auth: &dyn AuthStore,
        account_id: i64,
        code: &str,
        now_unix: u64,
    ) -> Result<Option<u64>, LoginError> {
        let Some(row) = auth
            .totp(account_id)
            .await
            .map_err(|e| self.login_unavailable(&e))?
        else {
            return Ok(None);
        };
        let secret = open_totp_secret(&self.vault.keys(), account_id, &row.sealed_secret)
            .map_err(|e| LoginError::Unavailable(format!("totp: {e}")))?;
        let Ok(code) = TotpCode::parse(code.trim()) else {
            return Ok(None);
        };
        Ok(totp::verify(&secret, &code, now_unix, row.last_step).ok())
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
    ) -> Result<LoginAnswer, LoginError> {
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
        let ctx = Ctx {
            caller: &caller,
            action: LeafAction::Login,
            purpose: None,
            now,
        };
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
            return Err(LoginError::Unavailable(refusal.to_string()));
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
            tracing::warn!(account = account.account_id, error = %e, "login device not trusted");
        }
        Ok(LoginAnswer {
            cookie: new.cookie,
            handle: new.handle,
            max_age_secs: settings.absolute.num_seconds(),
            account: account.clone(),
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
    ) -> Result<Opening<'a>, LoginError> {
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
    ) -> Result<u64, LoginError> {
        let mut leaf: AuditLeaf = unauthenticated_leaf(
            account.map_or(0, |a| a.account_id),
            account.map_or(0, |a| a.organisation_id),
            action,
            reason,
            now,
        );
        leaf.note = Some(note.to_owned());
        self.record(leaf)
            .await
            .map_err(|r| LoginError::Unavailable(r.to_string()))
    }

    /// A throttle that cannot be read or stored: the attempt is refused
    /// (the cause goes to the log, never to the page).
    pub(crate) fn throttle_unavailable(&self, e: &ThrottleError) -> LoginError {
        match e {
            ThrottleError::Store(e) => self.login_unavailable(e),
            ThrottleError::Unreadable => LoginError::Unavailable(e.to_string()),
        }
    }

    async fn store_passkey(
        &self,
        auth: &dyn AuthStore,
        updated: &StoredPasskey,
        now: DateTime<Utc>,
    ) -> Result<(), LoginError> {
        let data = serde_json::to_string(updated)
            .map_err(|e| LoginError::Unavailable(format!("passkey: {e}")))?;
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
        let session = match auth.session(*id_digest).await {
            Ok(Some((session, _))) => session,
            Ok(None) => return Err(self.refuse_ceremony(ctx).await),
            Err(e) => return Err(self.fail(ctx, None, "session", &e).await),
        };
        let has_passkey = match auth.passkeys(ctx.caller.account.account_id).await {
            Ok(rows) => !rows.is_empty(),
            Err(e) => return Err(self.fail(ctx, None, "passkeys", &e).await),
        };
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
        let rows = match auth.passkeys(ctx.caller.account.account_id).await {
            Ok(r) => r,
            Err(e) => return Err(self.fail(ctx, None, "passkeys", &e).await),
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match parse_passkey(row) {
                Ok(p) => out.push(p),
                Err(e) => return Err(self.fail(ctx, None, "passkeys", &e.message_fr()).await),
            }
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
        let options = match serde_json::to_value(&options) {
            Ok(o) => o,
            Err(e) => return Err(self.fail(ctx, None, "passkey options", &e).await),
        };
        match put_ceremony(auth, kind, state, ctx.now).await {
            Ok(ceremony) => Ok(Started {
                ceremony,
                options: Some(options),
            }),
            Err(e) => Err(self.fail(ctx, None, "ceremony", &e).await),
        }
    }

    async fn take_session_ceremony(
        &self,
        ctx: &Ctx<'_>,
        auth: &dyn AuthStore,
        ceremony: &str,
        kind: &str,
        session: &str,
    ) -> Result<CeremonyState, Refusal> {
        match take_ceremony(auth, ceremony, kind, ctx.now).await {
            Ok(Some(state)) if state.session.as_deref() == Some(session) => Ok(state),
            Ok(_) => Err(self.refuse_ceremony(ctx).await),
            Err(e) => Err(self.fail(ctx, None, "ceremony", &e).await),
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

fn parse_passkey(row: &StoredPasskeyRow) -> Result<StoredPasskey, LoginError> {
    let passkey: StoredPasskey = serde_json::from_str(&row.data)
        .map_err(|_| LoginError::Unavailable("passkey: stored passkey is not readable".into()))?;
    if passkey.account_id() != row.account_id
        || passkey.credential_id().as_bytes() != row.credential_id.as_slice()
    {
        return Err(LoginError::Unavailable(
            "passkey: stored passkey disagrees with its row".into(),
        ));
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
    let payload =
        serde_json::to_string(state).map_err(|e| StorageError::Invalid(format!("payload: {e}")))?;
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

// -------------------------------------------------------------------------
// TOTP secrets at rest
// -------------------------------------------------------------------------

/// Format tag of a sealed TOTP secret.
const TOTP_FORMAT: &[u8; 2] = b"T1";
/// Field-group code used for account secrets (persons use 0 to 3).
const TOTP_GROUP: u8 = 0x80;

/// Why a TOTP secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpSealError {
    /// The blob is not a sealed TOTP secret of this account (or it was
    /// sealed under a KEK this key ring no longer holds).
    #[error("sealed_secret: cannot be opened for this account")]
    Open,
    /// Encryption failed.
    #[error("sealed_secret: cannot be sealed")]
    Seal,
}

/// The envelope binding of an account's own secrets: the person envelope
/// in the negative id space (person ids are positive), so an account
/// secret can never open as a person's data, nor the reverse.
fn account_binding(account_id: i64) -> Binding {
    Binding {
        person: account_id.saturating_neg(),
        dek_version: 1,
    }
}

/// Seals an account's TOTP secret for [`AuthStore::set_totp`]: a fresh
/// data key wrapped by the current KEK, bound to the account.
/// `T1 ‖ KEK version (u32 BE) ‖ wrapped key ‖ sealed secret`.
pub fn seal_totp_secret(
    keys: &KeyRing,
    account_id: i64,
    secret: &TotpSecret,
) -> Result<Vec<u8>, TotpSealError> {
    let kek = keys.current_kek();
    let (dk, wrapped) = kek
        .new_data_key(account_binding(account_id))
        .map_err(|_| TotpSealError::Seal)?;
    let mut out = Vec::with_capacity(2 + 4 + wrapped.len() + 60);
    out.extend_from_slice(TOTP_FORMAT);
    out.extend_from_slice(&kek.version.to_be_bytes());
    out.extend_from_slice(&wrapped);
    dk.seal(TOTP_GROUP, secret.expose_bytes(), &mut out)
        .map_err(|_| TotpSealError::Seal)?;
    Ok(out)
}

/// Opens what [`seal_totp_secret`] sealed for this account.
pub fn open_totp_secret(
    keys: &KeyRing,
    account_id: i64,
    sealed: &[u8],
) -> Result<TotpSecret, TotpSealError> {
    let wrapped_len = rempart_crypto::envelope::WRAPPED_LEN;
    let rest = sealed
        .strip_prefix(TOTP_FORMAT.as_slice())
        .ok_or(TotpSealError::Open)?;
    let (version, rest) = rest.split_at_checked(4).ok_or(TotpSealError::Open)?;
    let version = u32::from_be_bytes(version.try_into().map_err(|_| TotpSealError::Open)?);
    let (wrapped, blob) = rest
        .split_at_checked(wrapped_len)
        .ok_or(TotpSealError::Open)?;
    let kek = keys.kek(version).map_err(|_| TotpSealError::Open)?;
    let dk = kek
        .unwrap_data_key(account_binding(account_id), wrapped)
        .map_err(|_| TotpSealError::Open)?;
    let plain = Zeroizing::new(dk.open(TOTP_GROUP, blob).map_err(|_| TotpSealError::Open)?);
    TotpSecret::from_bytes(&plain).map_err(|_| TotpSealError::Open)
}

/// Rewraps the data key of a sealed TOTP secret under KEK version
/// `target` of `keys`, leaving the sealed secret itself as it is (the
/// field AD names no KEK version, as for persons). `None` if it is already
/// under `target`.
pub fn rewrap_totp_secret(
    keys: &KeyRing,
    account_id: i64,
    sealed: &[u8],
    target: u32,
) -> Result<Option<Vec<u8>>, TotpSealError> {
    let wrapped_len = rempart_crypto::envelope::WRAPPED_LEN;
    let rest = sealed
        .strip_prefix(TOTP_FORMAT.as_slice())
        .ok_or(TotpSealError::Open)?;
    let (version, rest) = rest.split_at_checked(4).ok_or(TotpSealError::Open)?;
    let version = u32::from_be_bytes(version.try_into().map_err(|_| TotpSealError::Open)?);
    if version == target {
        return Ok(None);
    }
    let (wrapped, blob) = rest
        .split_at_checked(wrapped_len)
        .ok_or(TotpSealError::Open)?;
    let old = keys.kek(version).map_err(|_| TotpSealError::Open)?;
    let new = keys.kek(target).map_err(|_| TotpSealError::Seal)?;
    let rewrapped = new
        .rewrap(old, account_binding(account_id), wrapped)
        .map_err(|_| TotpSealError::Open)?;
    let mut out = Vec::with_capacity(sealed.len());
    out.extend_from_slice(TOTP_FORMAT);
    out.extend_from_slice(&target.to_be_bytes());
    out.extend_from_slice(&rewrapped);
    out.extend_from_slice(blob);
    Ok(Some(out))
}

/// Accounts' TOTP secrets, for `rempart keys rotate`: they are sealed
/// under the KEK like persons' data keys, so a rotation rewraps them
/// before it retires a KEK ([`rempart_vault::OtherSecrets`]).
pub struct TotpSecrets(pub Arc<dyn AuthStore>);

#[async_trait::async_trait]
impl rempart_vault::OtherSecrets for TotpSecrets {
    fn name(&self) -> &'static str {
        "TOTP secrets"
    }

    async fn rewrap(
        &self,
        ring: &KeyRing,
        target: u32,
    ) -> Result<rempart_vault::OtherRewrap, rempart_vault::VaultError> {
        let mut report = rempart_vault::OtherRewrap::default();
        let mut after = 0i64;
        loop {
            let rows = self.0.totp_secrets(after, 1000).await?;
            let Some((last, _)) = rows.last() else { break };
            after = *last;
            for (account_id, sealed) in rows {
                match rewrap_totp_secret(ring, account_id, &sealed, target) {
                    Ok(None) => {}
                    // Compare-and-set: a secret re-enrolled meanwhile is
                    // under the new KEK already, or is caught next run.
                    Ok(Some(new)) => {
                        if self
                            .0
                            .replace_totp_secret(account_id, &sealed, &new)
                            .await?
                        {
                            report.rewrapped += 1;
                        } else {
                            report.left += 1;
                        }
                    }
                    // Not readable with this ring: its KEK must stay.
                    Err(_) => report.left += 1,
                }
            }
        }
        Ok(report)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_secrets_rewrap_under_a_new_kek_and_still_open() {
        let mut keys = KeyRing::generate().unwrap();
        let secret = TotpSecret::generate().unwrap();
        let sealed = seal_totp_secret(&keys, 7, &secret).unwrap();
        let v1 = keys.current_kek().version;
        assert_eq!(rewrap_totp_secret(&keys, 7, &sealed, v1), Ok(None));
        keys.add_kek().unwrap();
        let v2 = keys.current_kek().version;
        let rewrapped = rewrap_totp_secret(&keys, 7, &sealed, v2).unwrap().unwrap();
        assert_ne!(rewrapped, sealed);
        assert_eq!(rewrapped[2..6], v2.to_be_bytes());
        // The sealed secret itself is untouched: only the key is rewrapped.
        let head = 6 + rempart_crypto::envelope::WRAPPED_LEN;
        assert_eq!(rewrapped.len(), sealed.len());
        assert_eq!(rewrapped[head..], sealed[head..]);
        assert_ne!(rewrapped[6..head], sealed[6..head]);
        assert_eq!(
            open_totp_secret(&keys, 7, &rewrapped)
                .unwrap()
                .expose_bytes(),
            secret.expose_bytes()
        );
        // Bound to its account, as before.
        assert_eq!(
            rewrap_totp_secret(&keys, 8, &sealed, v2),
            Err(TotpSealError::Open)
        );
        assert_eq!(
            rewrap_totp_secret(&keys, 7, b"junk", v2),
            Err(TotpSealError::Open)
        );
        // Once the old KEK is retired, only the rewrapped one opens.
        keys.retire_older_keks();
        assert!(open_totp_secret(&keys, 7, &sealed).is_err());
        assert!(open_totp_secret(&keys, 7, &rewrapped).is_ok());
    }

    #[test]
    fn totp_secrets_open_only_for_their_account() {
        let keys = KeyRing::generate().unwrap();
        let secret = TotpSecret::generate().unwrap();
        let sealed = seal_totp_secret(&keys, 7, &secret).unwrap();
        let opened = open_totp_secret(&keys, 7, &sealed).unwrap();
        assert_eq!(opened.expose_bytes(), secret.expose_bytes());
        assert_eq!(
            open_totp_secret(&keys, 8, &sealed).unwrap_err(),
            TotpSealError::Open
        );
        let other = KeyRing::generate().unwrap();
        assert!(open_totp_secret(&other, 7, &sealed).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(open_totp_secret(&keys, 7, &flipped).is_err());
        for n in 0..sealed.len() {
            assert!(open_totp_secret(&keys, 7, &sealed[..n]).is_err(), "{n}");
        }
    }

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
            account_id: 7,
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
            account_id: 7,
            login: Reference::parse("t.agent").unwrap(),
            role: rempart_domain::Role::Agent,
            state: AccountState::Active,
            organisation_id: 1,
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
                Err(authenticate::Rejected::ProofRefused {
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
    fn login_errors_never_tell_which_credential_failed() {
        let same = [
            LoginError::Refused(LoginRefusal::UnknownAccount),
            LoginError::Refused(LoginRefusal::WrongPassword),
            LoginError::Refused(LoginRefusal::WrongCode),
            LoginError::Refused(LoginRefusal::AccountUnavailable),
            LoginError::Invalid { field: "login" },
        ];
        for e in &same {
            assert_eq!(e.message_fr(), same[0].message_fr());
        }
    }
}
