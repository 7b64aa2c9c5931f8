//! Federated browser login through an external OpenID provider
//! (ProConnect), ending in the same device-bound session as the other
//! logins, and the officer's links from a provider's identities to
//! accounts. Nothing here knows HTTP.
//!
//! The flow, with the page's device key made first as for every login:
//!
//! 1. [`Consultation::start_federated_login`] (the request carries a proof
//!    by the new key): [`Federation::begin`] makes the state, nonce and
//!    PKCE verifier; they and the key's thumbprint are stored as a
//!    single-use ceremony (kind `oidc_login`) keyed by a digest of the
//!    state, for [`PENDING_LOGIN_MAX_AGE`]; the page is sent to the
//!    provider's authorization URL.
//! 2. The provider sends the browser back to the callback page with the
//!    code and the state; the page's script posts them, with a proof by
//!    the same key, to [`Consultation::login_federated`], which takes the
//!    ceremony (so a state works once), checks the key is the one that
//!    began, lets [`Federation::complete`] check everything the provider
//!    says (state, age, code exchange with the verifier, id_token issuer,
//!    audience, signature, expiry, nonce, multi-factor `acr`/`amr`), then
//!    finds the account an officer linked to the (issuer, subject) and
//!    opens a session bound to the key, method `oidc`, like the others.
//!
//! Binding the ceremony to the device key is also the login-CSRF defence
//! here: a callback URL an attacker got for their own identity and pushed
//! into a victim's browser finds no ceremony begun by the victim's key.
//!
//! Every refusal reads the same to the page ([`LoginFailure::Federation`]),
//! whether the state was unknown or replayed, the key another one, the
//! provider's answer refused (no multi-factor authentication included),
//! the identity linked to no account or the account inactive: which one
//! it was goes to the ledger only. An identity is matched on (issuer,
//! subject), never on the e-mail the provider also gives (an address can
//! change hands, a subject does not); the e-mail is neither kept nor
//! ledgered.
//!
//! Links are made and removed by an officer
//! ([`Consultation::link_federation`], [`Consultation::unlink_federation`];
//! the store enforces the role), each a ledger leaf under the officer.

use std::time::SystemTime;

use chrono::{DateTime, Duration, Utc};
use rempart_auth::oidc::{OidcError, PENDING_LOGIN_MAX_AGE, PendingLogin};
use rempart_domain::AccountState;
use rempart_ledger::{
    AccountId, Action as LeafAction, AuditLeaf, Decision as LeafDecision, DenyReason, FieldGroups,
    Timestamp,
};
use rempart_storage::{AccountRecord, FederationLink, StorageError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::authenticate::ProofRequest;
use crate::kernel::{Consultation, LoginFailure, Refusal};
use crate::session::LoginAnswer;

/// The ceremony kind of a federated login waiting for the provider.
const KIND_OIDC: &str = "oidc_login";

/// The session method of a federated login (one of the store's
/// `SESSION_METHODS`).
const METHOD_OIDC: &str = "oidc";

/// Longest code or state read from the callback, in bytes: both are a few
/// dozen characters; anything longer is not from the provider.
const MAX_CALLBACK_FIELD: usize = 512;

/// Longest ledger note built from a provider's refusal (the ledger allows
/// 1,000 bytes; the provider chooses part of the text, e.g. its `acr`).
const MAX_NOTE: usize = 400;

/// A started federated login: where to send the browser.
#[derive(Debug, Clone)]
pub struct FederatedStart {
    /// The provider's authorization URL, with this attempt's state, nonce
    /// and PKCE challenge.
    pub authorization_url: String,
}

/// What the provider sent back to the callback page, posted by its script.
#[derive(Clone, Copy)]
pub struct FederatedCallback<'a> {
    /// The authorization code (single use at the provider).
    pub code: &'a str,
    /// The state the login began with.
    pub state: &'a str,
    /// The browser's device token (its trusted-browser cookie), if any.
    pub device: Option<&'a str>,
}

impl std::fmt::Debug for FederatedCallback<'_> {
    // The code is a bearer value until exchanged; the state keys a ceremony.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FederatedCallback(<redacted>)")
    }
}

/// What a federated login remembers while the provider authenticates the
/// person (JSON in the store, deleted when taken). The nonce and the PKCE
/// verifier are secrets for those few minutes; they are worth nothing
/// without the code, which only the provider and this browser see.
#[derive(Serialize, Deserialize)]
struct FederationCeremony {
    /// Thumbprint of the device key that began the login.
    jkt: String,
    pending: PendingLogin,
}

/// The store's key for a federated login's ceremony: a digest of its state
/// (a bearer value while the login is open), with a prefix of its own so
/// it can never meet the key of another kind of ceremony.
fn state_key(state: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"rempart oidc_login state\0")
        .chain_update(state.as_bytes())
        .finalize()
        .into()
}

/// The ledger note of a refusal by [`Federation::complete`]: the error's
/// own text (it never holds a token, a code, a secret or a response body),
/// bounded.
fn refusal_note(e: &OidcError) -> String {
    let mut note = format!("oidc: {e}");
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    note
}

impl Consultation {
    /// Begins a federated login for the page whose new device key signed
    /// `proof`: stores the attempt and returns the provider's URL.
    pub async fn start_federated_login(
        &self,
        proof: ProofRequest<'_>,
    ) -> Result<FederatedStart, Refusal> {
        let (auth, web) = self.login_parts()?;
        let federation = self.federation.as_ref().ok_or(Refusal::NotOffered)?;
        let now = self.now();
        let jkt = self.login_proof(web, proof, now).await?;
        let (url, pending) = federation.begin(SystemTime::from(now));
        let key = state_key(pending.state());
        let payload = serde_json::to_string(&FederationCeremony {
            jkt: jkt.to_string(),
            pending,
        })
        .map_err(|e| Refusal::Unavailable(format!("ceremony: {e}")))?;
        let max_age = Duration::from_std(PENDING_LOGIN_MAX_AGE)
            .map_err(|e| Refusal::Unavailable(format!("ceremony: {e}")))?;
        auth.put_ceremony(key, KIND_OIDC, &payload, now + max_age)
            .await
            .map_err(|e| self.login_unavailable(&e))?;
        Ok(FederatedStart {
            authorization_url: url.to_string(),
        })
    }

    /// Finishes a federated login with what the provider sent back, posted
    /// with a proof by the device key that began it.
    pub async fn login_federated(
        &self,
        callback: FederatedCallback<'_>,
        proof: ProofRequest<'_>,
    ) -> Result<LoginAnswer, Refusal> {
        let (auth, web) = self.login_parts()?;
        let federation = self.federation.as_ref().ok_or(Refusal::NotOffered)?;
        let now = self.now();

        // 1. The device proof: the key that will hold the session.
        let jkt = self.login_proof(web, proof, now).await?;

        // 2. The ceremony the state names, taken (used once, whatever
        //    happens next), begun by this very key.
        if callback.code.len() > MAX_CALLBACK_FIELD || callback.state.len() > MAX_CALLBACK_FIELD {
            return self
                .federation_refused(
                    None,
                    DenyReason::InvalidRequest,
                    "oidc: callback too long",
                    now,
                )
                .await;
        }
        let payload = auth
            .take_ceremony(state_key(callback.state), KIND_OIDC, now)
            .await
            .map_err(|e| self.login_unavailable(&e))?;
        let Some(payload) = payload else {
            return self
                .federation_refused(
                    None,
                    DenyReason::InvalidRequest,
                    "oidc: state unknown, used or expired",
                    now,
                )
                .await;
        };
        let ceremony: FederationCeremony = serde_json::from_str(&payload).map_err(|_| {
            Refusal::Unavailable(
                "ceremony: a federated login's stored state is not readable".into(),
            )
        })?;
        if ceremony.jkt != jkt.to_string() {
            return self
                .federation_refused(
                    None,
                    DenyReason::SessionInvalid,
                    "oidc: callback with another device key than the one that began the login",
                    now,
                )
                .await;
        }

        // 3. What the provider says, checked whole (multi-factor included).
        let identity = match federation
            .complete(
                &ceremony.pending,
                callback.code,
                callback.state,
                SystemTime::from(now),
            )
            .await
        {
            Ok(identity) => identity,
            Err(e) => {
                return self
                    .federation_refused(None, DenyReason::BadCredentials, &refusal_note(&e), now)
                    .await;
            }
        };

        // 4. The account an officer linked to this identity, active.
        let link = auth
            .federation_link(&identity.issuer, &identity.subject)
            .await
            .map_err(|e| self.login_unavailable(&e))?;
        let Some(link) = link else {
            return self
                .federation_refused(
                    None,
                    DenyReason::BadCredentials,
                    "oidc: no account linked to this identity",
                    now,
                )
                .await;
        };
        let account = self
            .store
            .account_by_id(link.account_id)
            .await
            .map_err(|e| self.login_unavailable(&e))?;
        let account = match account {
            Some(a) if a.state == AccountState::Active => a,
            other => {
                return self
                    .federation_refused(
                        other.as_ref(),
                        DenyReason::BadCredentials,
                        "oidc: account not active",
                        now,
                    )
                    .await;
            }
        };

        // 5. The session, bound to the key, as every login opens it.
        let opening = self
            .opening(auth.as_ref(), &account, callback.device, METHOD_OIDC, now)
            .await?;
        self.open_session(auth.as_ref(), web, &account, &jkt, opening, now)
            .await
    }

    /// Ledgers a refused federated login, then refuses with the one message.
    async fn federation_refused(
        &self,
        account: Option<&AccountRecord>,
        reason: DenyReason,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<LoginAnswer, Refusal> {
        self.login_leaf(account, LeafAction::LoginFailed, reason, note, now)
            .await?;
        Err(Refusal::LoginFailed(LoginFailure::Federation))
    }

    /// Links the identity (`issuer`, `subject`) to `account_id`, by
    /// `officer_id` (an active officer, not the account: the store's
    /// rule). Ledgered under the officer, allowed or refused, naming the
    /// account and the issuer, never the subject. For the command line.
    pub async fn link_federation(
        &self,
        account_id: AccountId,
        issuer: &str,
        subject: &str,
        officer_id: AccountId,
    ) -> Result<(), Refusal> {
        let now = self.now();
        let officer = self.federation_officer(officer_id).await?;
        let stored = self
            .auth
            .link_federation(FederationLink {
                issuer: issuer.to_owned(),
                subject: subject.to_owned(),
                account_id,
                linked_by: officer_id,
                linked_at: now,
            })
            .await;
        let what = format!("federation: identity of {issuer} linked to account {account_id}");
        self.federation_admin_leaf(&officer, stored, what, now)
            .await
    }

    /// Removes the link of the identity (`issuer`, `subject`), by
    /// `officer_id` (an active officer), and ends the sessions its account
    /// opened through federated logins. Returns the account it named, or
    /// `None` if the identity was linked to none (ledgered too).
    pub async fn unlink_federation(
        &self,
        issuer: &str,
        subject: &str,
        officer_id: AccountId,
    ) -> Result<Option<AccountId>, Refusal> {
        let now = self.now();
        let officer = self.federation_officer(officer_id).await?;
        let removed = self
            .auth
            .unlink_federation(issuer, subject, officer_id, now)
            .await;
        let (stored, what, account) = match removed {
            Ok(Some(account_id)) => (
                Ok(()),
                format!(
                    "federation: identity of {issuer} unlinked from account {account_id}, \
                     its federated sessions ended"
                ),
                Some(account_id),
            ),
            Ok(None) => (
                Ok(()),
                format!("federation: unlink of an identity of {issuer} linked to no account"),
                None,
            ),
            Err(e) => (
                Err(e),
                format!("federation: unlink of an identity of {issuer}"),
                None,
            ),
        };
        self.federation_admin_leaf(&officer, stored, what, now)
            .await?;
        Ok(account)
    }

    async fn federation_officer(&self, officer_id: AccountId) -> Result<AccountRecord, Refusal> {
        match self.store.account_by_id(officer_id).await {
            Ok(Some(o)) => Ok(o),
            Ok(None) => Err(Refusal::invalid("officer", "no such account")),
            Err(e) => Err(Refusal::Unavailable(format!("accounts: {e}"))),
        }
    }

    /// The leaf of a link or an unlink under the officer: allowed, or
    /// refused with the store's reason (the role rule as `four_eyes`).
    async fn federation_admin_leaf(
        &self,
        officer: &AccountRecord,
        stored: Result<(), StorageError>,
        what: String,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        let (decision, refusal, note) = match stored {
            Ok(()) => (LeafDecision::Allow, None, format!("{what} (command line)")),
            Err(e @ (StorageError::Refused { .. } | StorageError::NotFound { .. })) => {
                let (field, reason) = e.refused().unwrap_or(("request", e.to_string()));
                let (deny, field) = match field {
                    "linked_by" | "unlinked_by" => (DenyReason::FourEyes, "officer"),
                    "account_id" => (DenyReason::InvalidRequest, "account"),
                    "issuer" => (DenyReason::InvalidRequest, "issuer"),
                    _ => (DenyReason::InvalidRequest, "subject"),
                };
                (
                    LeafDecision::Deny(deny),
                    Some(Refusal::invalid(field, reason.clone())),
                    format!("{what}: refused, {field}: {reason} (command line)"),
                )
            }
            Err(e) => return Err(Refusal::Unavailable(format!("federation: {e}"))),
        };
        self.record(AuditLeaf {
            time: Timestamp::from_datetime(now),
            account: officer.account_id,
            organisation: officer.organisation_id,
            session: None,
            person: None,
            action: LeafAction::FactorEnrol,
            field_groups: FieldGroups::EMPTY,
            purpose: None,
            decision,
            guard: None,
            note: Some(note),
        })
        .await?;
        match refusal {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_are_per_state_and_apart_from_other_ceremonies() {
        assert_eq!(state_key("abc"), state_key("abc"));
        assert_ne!(state_key("abc"), state_key("abd"));
        // Another ceremony's key is SHA-256 of its id alone.
        let plain: [u8; 32] = Sha256::digest(b"abc").into();
        assert_ne!(state_key("abc"), plain);
    }

    #[test]
    fn refusal_notes_are_bounded_on_a_character_boundary() {
        let e = OidcError::NoMultiFactor {
            acr: Some("é".repeat(400)),
            amr: vec!["pwd".into()],
        };
        let note = refusal_note(&e);
        assert!(note.len() <= MAX_NOTE, "{}", note.len());
        assert!(note.starts_with("oidc: acr/amr: no multi-factor authentication"));
        let short = refusal_note(&OidcError::WrongNonce);
        assert_eq!(
            short,
            "oidc: nonce: the id_token belongs to another login attempt"
        );
    }

    #[test]
    fn callbacks_debug_shows_nothing() {
        let c = FederatedCallback {
            code: "SplxlOBeZQQYbYS6WxSbIA",
            state: "af0ifjsldkj",
            device: None,
        };
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("Splx") && !debug.contains("af0i"),
            "{debug}"
        );
    }
}
