//! First factors after a four-eyes approval or an approved reset: the
//! activation code.
//!
//! - **Issue.** When an officer approves an account request, or a reset
//!   that removed the password or the TOTP factor, the consultation path
//!   issues an [`ActivationCode`] for the account (in the same operation,
//!   after the store's four-eyes decision) and returns it once, in the
//!   answer to that officer, to hand over out of band (phone, in person).
//!   The store keeps only its digest, one live code per account (a new
//!   code voids the old one), and refuses a code for an account that was
//!   never approved under four eyes: the command line
//!   ([`Consultation::issue_activation`]) cannot bypass it either. The
//!   code expires after [`ACTIVATION_HOURS`]. It is never written to the
//!   ledger, to a log or to an error.
//! - **Step 1** ([`Consultation::start_activation`]): login + code.
//!   Throttled like passwords (the same [`Lockout`], per account with the
//!   state kept beside the code, and per source address), and every
//!   failure (unknown login, wrong, used or expired code, inactive
//!   account) reads the same ([`ACTIVATION_REFUSED_FR`]). Success opens a
//!   single-use `activation` ceremony holding the account, the code's
//!   digest and, if a TOTP factor is missing, a fresh secret sealed as
//!   enrolled secrets are; the page shows the secret and its otpauth URI.
//! - **Step 2** ([`Consultation::finish_activation`]): the new password
//!   (twice; the CNIL rules of `rempart_auth::password`, each broken rule
//!   named in French) and one valid TOTP code from the new secret. A
//!   mistake re-opens the ceremony under a new id, at most
//!   [`MAX_FACTOR_ATTEMPTS`] times. Success uses the code and sets the
//!   factors in one store transaction ([`AuthStore::complete_activation`]):
//!   a code works once even when two browsers race.
//!
//! The person then logs in with password + TOTP at `/connexion` (the
//! first session after a reset is high-risk, as the reset marked it) and
//! may register a passkey there. Every step is a ledger leaf (action
//! `factor_enrol` for successes, `login_failed` / `locked_out` for
//! refusals), under the account when it is known, with notes that start
//! with `activation:` and never carry a code or a password.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use rempart_auth::activation::ActivationCode;
use rempart_auth::lockout::{LoginRefusal, Scope};
use rempart_auth::password::{Password, PasswordError, PasswordPolicy, PersonalContext};
use rempart_auth::totp::{self, TotpCode, TotpSecret};
use rempart_domain::{AccountState, Reference};
use rempart_ledger::{
    AccountId, Action as LeafAction, AuditLeaf, Decision as LeafDecision, DenyReason, FieldGroups,
    LeafRef, OrganisationId, Timestamp,
};
use rempart_storage::{AccountRecord, ActivationFactors, AuthStore, StorageError, StoredTotp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::kernel::{Consultation, LoginFailure, Refusal, unauthenticated_leaf};
use crate::secrets::{open_totp_secret, seal_totp_secret};
use crate::throttle::{Counter, ThrottleError};
use crate::views::AccountView;

pub use crate::secrets::{ACTIVATION_HOURS, IssuedActivation};

/// Mistakes allowed in step 2 (password rules, confirmation, TOTP code)
/// before the person must start again from the code.
pub const MAX_FACTOR_ATTEMPTS: u32 = 5;
/// What the page shows for every failure of step 1.
pub const ACTIVATION_REFUSED_FR: &str =
    "Identifiant ou code d'activation incorrect, expiré ou déjà utilisé.";

/// How long step 2 may wait after step 1.
const CEREMONY_SECS: i64 = 900;
/// The ceremony kind, as the store keeps it.
const KIND_ACTIVATION: &str = "activation";
/// Longest login, code or password read from a form, in bytes.
const MAX_FIELD: usize = 512;

/// Step 1's fields.
#[derive(Clone, Copy)]
pub struct ActivationForm<'a> {
    pub login: &'a str,
    pub code: &'a str,
}

impl std::fmt::Debug for ActivationForm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActivationForm(<redacted>)")
    }
}

/// Step 2's fields.
#[derive(Clone, Copy)]
pub struct FactorsForm<'a> {
    pub ceremony: &'a str,
    pub password: &'a str,
    pub confirm: &'a str,
    pub totp_code: &'a str,
}

impl std::fmt::Debug for FactorsForm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FactorsForm(<redacted>)")
    }
}

/// What step 2's page shows.
pub struct Enrolment {
    /// The ceremony id to send back with step 2.
    pub ceremony: String,
    /// The account's login (the person typed it).
    pub login: String,
    /// Whether a password must be chosen.
    pub needs_password: bool,
    /// The TOTP secret to enrol, if the account has none.
    pub totp: Option<TotpShown>,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment")
            .field("needs_password", &self.needs_password)
            .field("totp", &self.totp.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A TOTP secret to enrol, as an authenticator app takes it.
pub struct TotpShown {
    /// The `otpauth://` URI (QR code content).
    pub uri: Zeroizing<String>,
    /// The secret in base32, to type by hand.
    pub secret: Zeroizing<String>,
}

/// What step 2 came to, when it was not refused.
pub enum ActivationStep {
    /// The factors are set: the person may log in.
    Done(AccountView),
    /// Step 2 must be corrected: the page shows the enrolment again (a
    /// new ceremony id, the same TOTP secret) with these messages, each
    /// broken password rule, a mismatch or a wrong code, in French. Not a
    /// refusal: it holds the secret to enrol.
    Retry {
        enrolment: Enrolment,
        messages: Vec<String>,
    },
}

impl std::fmt::Debug for ActivationStep {
    // Written out so that the TOTP secret can never reach it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActivationStep::Done(account) => f
                .debug_tuple("ActivationStep::Done")
                .field(account)
                .finish(),
            ActivationStep::Retry {
                enrolment,
                messages,
            } => f
                .debug_struct("ActivationStep::Retry")
                .field("enrolment", enrolment)
                .field("messages", &messages.len())
                .finish(),
        }
    }
}

/// What the ceremony between the two steps remembers (JSON in the store).
#[derive(Serialize, Deserialize)]
struct Pending {
    account_id: AccountId,
    /// base64url of the code's digest: step 2 uses the code.
    digest: String,
    needs_password: bool,
    /// base64 of the sealed TOTP secret to enrol, if one is missing.
    sealed_totp: Option<String>,
    attempts: u32,
}

impl Consultation {
    /// Issues an activation code for `account_id`, handed over by
    /// `officer_id` (the store's rules: see the module doc). For the
    /// command line; the consultation path calls the same after approvals.
    /// Ledgered under the officer, with a note naming the account.
    pub async fn issue_activation(
        &self,
        account_id: AccountId,
        officer_id: AccountId,
    ) -> Result<IssuedActivation, Refusal> {
        let now = self.now();
        let officer = match self.store.account_by_id(officer_id).await {
            Ok(Some(o)) => o,
            Ok(None) => return Err(Refusal::invalid("officer", "no such account")),
            Err(e) => return Err(Refusal::Unavailable(format!("accounts: {e}"))),
        };
        let issued = match self.new_activation(account_id, officer_id, now).await {
            Ok(i) => i,
            Err(e @ (StorageError::Refused { .. } | StorageError::NotFound { .. })) => {
                let (field, reason) = e.refused().unwrap_or(("account", e.to_string()));
                let field = if field == "issued_by" {
                    "officer"
                } else {
                    "account"
                };
                return Err(Refusal::invalid(field, reason));
            }
            Err(e) => return Err(Refusal::Unavailable(format!("activation: {e}"))),
        };
        self.record(allow_leaf(
            &officer,
            now,
            format!("activation: code issued for account {account_id} (command line)"),
        ))
        .await?;
        Ok(issued)
    }

    /// Step 1: login and code, from `addr`.
    pub async fn start_activation(
        &self,
        form: ActivationForm<'_>,
        addr: IpAddr,
    ) -> Result<Enrolment, Refusal> {
        let (auth, web) = self.login_parts()?;
        let now = self.now();
        let now_unix = u64::try_from(now.timestamp()).unwrap_or(0);
        let login = form.login.trim();
        if login.len() > MAX_FIELD || form.code.len() > MAX_FIELD {
            return Err(refused(LoginRefusal::UnknownAccount));
        }

        // The account and its code; a login that is not a reference, or an
        // account without a code, names nothing.
        let account = match Reference::parse(login) {
            Ok(l) => self
                .store
                .account_by_login(&l)
                .await
                .map_err(|e| unavailable(&e))?,
            Err(_) => None,
        };
        let stored = match &account {
            Some(a) => auth
                .activation(a.account_id)
                .await
                .map_err(|e| unavailable(&e))?,
            None => None,
        };
        let known = account.as_ref().filter(|_| stored.is_some());

        // Reserve the attempt before anything is evaluated (`throttle.rs`).
        let admitted = self
            .admit_attempt(
                web,
                Counter::Activation,
                known
                    .zip(stored.as_ref())
                    .map(|(a, s)| (a.account_id, s.throttle.clone())),
                login,
                addr,
                now_unix,
            )
            .await
            .map_err(|e| throttle_unavailable(&e))?;
        let attempt = match admitted {
            Ok(attempt) => attempt,
            Err(delay) => {
                let note = match delay.scope {
                    Scope::Account => "activation: throttled: account",
                    Scope::Address => "activation: throttled: address",
                };
                self.refusal_leaf(
                    known,
                    LeafAction::LoginFailed,
                    DenyReason::LockedOut,
                    note,
                    now,
                )
                .await?;
                return Err(refused(LoginRefusal::from(delay)));
            }
        };

        // Evaluate: the digest in constant time, then use and expiry.
        let typed = ActivationCode::parse(form.code).ok().map(|c| c.digest());
        let verdict = match (known, &stored, typed) {
            (Some(a), Some(s), Some(d)) => {
                if !bool::from(d.as_slice().ct_eq(s.digest.as_slice())) {
                    Err("activation: wrong code")
                } else if s.used_at.is_some() {
                    Err("activation: code already used")
                } else if now >= s.expires_at {
                    Err("activation: code expired")
                } else if a.state != AccountState::Active {
                    Err("activation: account not active")
                } else {
                    Ok(d)
                }
            }
            (Some(_), _, None) => Err("activation: malformed code"),
            _ => Err("activation: unknown login or no code"),
        };
        let digest = match verdict {
            Ok(d) => d,
            Err(note) => {
                let settled = attempt.failed().await;
                let mut last = self
                    .refusal_leaf(
                        known,
                        LeafAction::LoginFailed,
                        DenyReason::BadCredentials,
                        note,
                        now,
                    )
                    .await?;
                if known.is_some() && settled.account_locked.is_some() {
                    last = self
                        .refusal_leaf(
                            known,
                            LeafAction::LockedOut,
                            DenyReason::LockedOut,
                            "activation: too many failures",
                            now,
                        )
                        .await?;
                }
                self.raise_login_alerts(known, settled, web.lockout_after(), now, Some(last))
                    .await;
                return Err(refused(LoginRefusal::WrongCode));
            }
        };
        let Some(account) = known else {
            return Err(refused(LoginRefusal::UnknownAccount));
        };
        let locked_meanwhile = attempt
            .succeeded(auth.as_ref(), Counter::Activation)
            .await
            .map_err(|e| throttle_unavailable(&e))?;
        if let Some(delay) = locked_meanwhile {
            self.refusal_leaf(
                known,
                LeafAction::LoginFailed,
                DenyReason::LockedOut,
                "activation: throttled: account locked during the attempt",
                now,
            )
            .await?;
            return Err(refused(LoginRefusal::from(delay)));
        }

        // Which factors are missing, and a fresh secret if TOTP is.
        let needs_password = auth
            .password(account.account_id)
            .await
            .map_err(|e| unavailable(&e))?
            .is_none();
        let needs_totp = auth
            .totp(account.account_id)
            .await
            .map_err(|e| unavailable(&e))?
            .is_none();
        let sealed_totp = if needs_totp {
            let secret =
                TotpSecret::generate().map_err(|e| Refusal::Unavailable(format!("totp: {e}")))?;
            let sealed = seal_totp_secret(&self.vault, account.account_id, &secret)
                .map_err(|e| Refusal::Unavailable(format!("totp: {e}")))?;
            Some(STANDARD.encode(sealed))
        } else {
            None
        };
        let pending = Pending {
            account_id: account.account_id,
            digest: URL_SAFE_NO_PAD.encode(digest),
            needs_password,
            sealed_totp,
            attempts: 0,
        };
        let enrolment = self
            .enrolment(auth.as_ref(), account, &pending, now)
            .await?;
        self.record(allow_leaf(
            account,
            now,
            "activation: code accepted".to_owned(),
        ))
        .await?;
        Ok(enrolment)
    }

    /// Step 2: the new password and the first TOTP code.
    pub async fn finish_activation(
        &self,
        form: FactorsForm<'_>,
    ) -> Result<ActivationStep, Refusal> {
        let (auth, web) = self.login_parts()?;
        let now = self.now();
        let now_unix = u64::try_from(now.timestamp()).unwrap_or(0);
        let Some(key) = ceremony_key(form.ceremony) else {
            return Err(Refusal::Restart);
        };
        let Some(payload) = auth
            .take_ceremony(key, KIND_ACTIVATION, now)
            .await
            .map_err(|e| unavailable(&e))?
        else {
            return Err(Refusal::Restart);
        };
        let mut pending: Pending = serde_json::from_str(&payload)
            .map_err(|_| Refusal::Unavailable("activation: stored state is not readable".into()))?;
        let account = self
            .store
            .account_by_id(pending.account_id)
            .await
            .map_err(|e| unavailable(&e))?
            .filter(|a| a.state == AccountState::Active);
        let Some(account) = account else {
            return Err(Refusal::Restart);
        };

        // Check each factor; collect every mistake.
        let mut messages = Vec::new();
        let mut phc = None;
        if pending.needs_password {
            if form.password.len() > MAX_FIELD {
                messages.push("Le mot de passe est trop long.".to_owned());
            } else if form.password != form.confirm {
                messages.push("Les deux mots de passe saisis ne sont pas identiques.".to_owned());
            } else {
                match check_new_password(form.password, account.login.as_str()) {
                    Ok(password) => {
                        let web2 = Arc::clone(web);
                        let hashed =
                            tokio::task::spawn_blocking(move || web2.hasher.hash(&password))
                                .await
                                .map_err(|e| Refusal::Unavailable(format!("hash: {e}")))?
                                .map_err(|e| Refusal::Unavailable(format!("hash: {e}")))?;
                        phc = Some(hashed.to_phc_string());
                    }
                    Err(mut m) => messages.append(&mut m),
                }
            }
        }
        let mut totp_row = None;
        if let Some(sealed_b64) = &pending.sealed_totp {
            let sealed = STANDARD.decode(sealed_b64).map_err(|_| {
                Refusal::Unavailable("activation: stored secret is not readable".into())
            })?;
            let secret = open_totp_secret(&self.vault, account.account_id, &sealed)
                .map_err(|e| Refusal::Unavailable(format!("totp: {e}")))?;
            let step = TotpCode::parse(form.totp_code.trim())
                .ok()
                .and_then(|code| totp::verify(&secret, &code, now_unix, None).ok());
            match step {
                Some(step) => {
                    totp_row = Some(StoredTotp {
                        account_id: account.account_id,
                        sealed_secret: sealed,
                        // The confirming code is used up: it cannot log in.
                        last_step: Some(step),
                        enrolled_at: now,
                    });
                }
                None => messages.push(
                    "Le code à six chiffres ne correspond pas : vérifiez l'heure de votre \
                     téléphone et saisissez le code affiché par l'application."
                        .to_owned(),
                ),
            }
        }
        if !messages.is_empty() {
            pending.attempts += 1;
            let note = format!(
                "activation: factors refused (attempt {} of {MAX_FACTOR_ATTEMPTS})",
                pending.attempts
            );
            self.refusal_leaf(
                Some(&account),
                LeafAction::FactorEnrol,
                DenyReason::InvalidRequest,
                &note,
                now,
            )
            .await?;
            if pending.attempts >= MAX_FACTOR_ATTEMPTS {
                return Err(Refusal::Restart);
            }
            let enrolment = self
                .enrolment(auth.as_ref(), &account, &pending, now)
                .await?;
            return Ok(ActivationStep::Retry {
                enrolment,
                messages,
            });
        }

        // Use the code and set the factors, in one transaction.
        let digest: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&pending.digest)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| {
                Refusal::Unavailable("activation: stored digest is not readable".into())
            })?;
        let done = auth
            .complete_activation(
                account.account_id,
                digest,
                ActivationFactors {
                    phc,
                    totp: totp_row,
                },
                now,
            )
            .await
            .map_err(|e| unavailable(&e))?;
        if !done {
            self.refusal_leaf(
                Some(&account),
                LeafAction::FactorEnrol,
                DenyReason::InvalidRequest,
                "activation: code used or expired meanwhile",
                now,
            )
            .await?;
            return Err(Refusal::Restart);
        }
        let what = match (pending.needs_password, pending.sealed_totp.is_some()) {
            (true, true) => "password and TOTP set",
            (true, false) => "password set",
            (false, true) => "TOTP set",
            (false, false) => "nothing missing",
        };
        self.record(allow_leaf(&account, now, format!("activation: {what}")))
            .await?;
        Ok(ActivationStep::Done(AccountView::from(account)))
    }

    /// Stores `pending` under a new ceremony id and describes step 2.
    async fn enrolment(
        &self,
        auth: &dyn AuthStore,
        account: &AccountRecord,
        pending: &Pending,
        now: DateTime<Utc>,
    ) -> Result<Enrolment, Refusal> {
        let totp = match &pending.sealed_totp {
            Some(sealed_b64) => {
                let sealed = STANDARD.decode(sealed_b64).map_err(|_| {
                    Refusal::Unavailable("activation: sealed secret unreadable".into())
                })?;
                let secret = open_totp_secret(&self.vault, account.account_id, &sealed)
                    .map_err(|e| Refusal::Unavailable(format!("totp: {e}")))?;
                let uri = totp::provisioning_uri(&secret, account.login.as_str())
                    .map_err(|e| Refusal::Unavailable(format!("totp: {e}")))?;
                Some(TotpShown {
                    uri: Zeroizing::new(uri.expose().to_owned()),
                    secret: secret.to_base32(),
                })
            }
            None => None,
        };
        let payload = serde_json::to_string(pending)
            .map_err(|e| Refusal::Unavailable(format!("activation: {e}")))?;
        let mut id = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        let key: [u8; 32] = Sha256::digest(id).into();
        auth.put_ceremony(
            key,
            KIND_ACTIVATION,
            &payload,
            now + Duration::seconds(CEREMONY_SECS),
        )
        .await
        .map_err(|e| unavailable(&e))?;
        Ok(Enrolment {
            ceremony: URL_SAFE_NO_PAD.encode(id),
            login: account.login.as_str().to_owned(),
            needs_password: pending.needs_password,
            totp,
        })
    }

    /// Ledgers a refused step, under the account when it is known.
    async fn refusal_leaf(
        &self,
        account: Option<&AccountRecord>,
        action: LeafAction,
        reason: DenyReason,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<LeafRef, Refusal> {
        let mut leaf = unauthenticated_leaf(
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

/// A successful step of `account`, outside any session.
fn allow_leaf(account: &AccountRecord, now: DateTime<Utc>, note: String) -> AuditLeaf {
    AuditLeaf {
        time: Timestamp::from_datetime(now),
        account: account.account_id,
        organisation: account.organisation_id,
        session: None,
        person: None,
        action: LeafAction::FactorEnrol,
        field_groups: FieldGroups::EMPTY,
        purpose: None,
        decision: LeafDecision::Allow,
        guard: None,
        note: Some(note),
    }
}

/// A new password under the CNIL rules, or the French message of each
/// rule it breaks.
fn check_new_password(typed: &str, login: &str) -> Result<Password, Vec<String>> {
    let password = match Password::new(typed.to_owned()) {
        Ok(p) => p,
        Err(PasswordError::Empty) => return Err(vec!["Choisissez un mot de passe.".to_owned()]),
        Err(_) => return Err(vec!["Le mot de passe est trop long.".to_owned()]),
    };
    let personal = PersonalContext {
        login: Some(login),
        names: &[],
    };
    match PasswordPolicy::CNIL.check(&password, &personal) {
        Ok(()) => Ok(password),
        Err(PasswordError::Weak(w)) => Err(w.as_slice().iter().map(|w| w.message_fr()).collect()),
        Err(PasswordError::Empty) => Err(vec!["Choisissez un mot de passe.".to_owned()]),
        Err(PasswordError::TooLong { .. }) => {
            Err(vec!["Le mot de passe est trop long.".to_owned()])
        }
    }
}

/// Step 1 refused with the lockout's verdict.
fn refused(r: LoginRefusal) -> Refusal {
    Refusal::LoginFailed(LoginFailure::Credentials(r))
}

fn unavailable(e: &StorageError) -> Refusal {
    Refusal::Unavailable(format!("activation: {e}"))
}

fn throttle_unavailable(e: &ThrottleError) -> Refusal {
    match e {
        ThrottleError::Store(e) => unavailable(e),
        ThrottleError::Unreadable | ThrottleError::Contended => {
            Refusal::Unavailable(format!("activation: {e}"))
        }
    }
}

/// The store's key for a ceremony id: its SHA-256.
fn ceremony_key(id: &str) -> Option<[u8; 32]> {
    let bytes = URL_SAFE_NO_PAD.decode(id).ok()?;
    (bytes.len() == 32).then(|| Sha256::digest(&bytes).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_name_each_rule_they_break() {
        let m = check_new_password("court", "ml.agent").unwrap_err();
        assert!(
            m.iter().any(|m| m.contains("au moins 12 caractères")),
            "{m:?}"
        );
        assert!(m.iter().any(|m| m.contains("types de caractères")), "{m:?}");
        let m = check_new_password("Azerty123456!", "ml.agent").unwrap_err();
        assert!(m.iter().any(|m| m.contains("trop courant")), "{m:?}");
        let m = check_new_password("Xx-ml.agent-2031", "ml.agent").unwrap_err();
        assert!(m.iter().any(|m| m.contains("identifiant")), "{m:?}");
        assert_eq!(
            check_new_password("", "ml.agent").unwrap_err(),
            vec!["Choisissez un mot de passe.".to_owned()]
        );
        assert!(check_new_password("Verger-Orage-47-Brume", "ml.agent").is_ok());
    }
}
