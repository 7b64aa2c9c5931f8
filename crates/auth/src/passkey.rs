//! Passkeys (WebAuthn): registration, username-less login, login for a
//! known account, and step-up before sensitive actions.
//!
//! Built on `webauthn-rs` (pure Rust crypto, no OpenSSL). User verification
//! is required everywhere: a passkey here is a second factor on its own
//! (something held, plus a PIN or biometric checked by the authenticator),
//! so a stolen password alone never opens an account.
//!
//! Each ceremony has two halves. `start_*` returns the options the page
//! hands to `navigator.credentials` (serialise them as JSON) and a state
//! the caller keeps server side; `finish_*` takes that state, the browser's
//! JSON answer, the stored passkeys and `now`. Nothing here reads a clock
//! or a store. The browser half is `assets/passkey.js`.
//!
//! Beyond the library's checks (challenge, origin, RP id, flags, signature,
//! counter against the ceremony's snapshot) this module adds: a maximum
//! ceremony age, a shorter one available for step-up, the account binding
//! of the credential, the user handle check of username-less logins, a
//! counter check against the *current* row, and a replay guard (a
//! credential never completes a ceremony older than its last one, which
//! matters for synced passkeys whose counter stays 0).

mod error;
mod state;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

use rempart_domain::AccountId;
use serde::de::DeserializeOwned;
use webauthn_rs::prelude::{
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};
use webauthn_rs_proto::ResidentKeyRequirement;

pub use error::{PasskeyConfigError, PasskeyError};
pub use state::{
    AuthenticationState, CeremonyKind, CredentialId, RegistrationState, StoredPasskey,
};
/// Options for `navigator.credentials.create()`; serialise as JSON.
pub use webauthn_rs::prelude::CreationChallengeResponse;
/// Options for `navigator.credentials.get()`; serialise as JSON.
pub use webauthn_rs::prelude::RequestChallengeResponse;

use state::{Flow, unix_ms};

/// The relying-party name shown by browsers and authenticators.
pub const RP_NAME: &str = "Rempart";

/// How long a registration or login ceremony may stay open by default:
/// the WebAuthn recommended timeout, also sent to the browser.
pub const DEFAULT_CEREMONY_MAX_AGE: Duration = Duration::from_secs(300);

/// How old a step-up ceremony may be when it finishes, by default.
pub const DEFAULT_STEP_UP_MAX_AGE: Duration = Duration::from_secs(300);

/// Upper bound for either limit: a ceremony open longer than this is no
/// longer "the person at the keyboard now".
const LONGEST_MAX_AGE: Duration = Duration::from_secs(600);

/// Shortest limit accepted: people need time to find a key or type a PIN.
const SHORTEST_MAX_AGE: Duration = Duration::from_secs(30);

/// Largest client JSON read; real answers are a few KiB.
const MAX_CLIENT_JSON: usize = 64 * 1024;

/// Longest `login` or `display_name`; authenticators may truncate at 64
/// bytes, browsers show less.
const MAX_NAME_CHARS: usize = 128;

/// The relying party: our passkey settings and the ceremonies.
#[derive(Debug, Clone)]
pub struct Passkeys {
    webauthn: Webauthn,
    rp_id: String,
    rp_origin: Url,
    rp_name: String,
    ceremony_max_age: Duration,
    step_up_max_age: Duration,
}

/// A successful login or step-up.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The account the credential is registered to.
    pub account_id: AccountId,
    /// The credential that signed.
    pub credential_id: CredentialId,
    /// Which ceremony this was.
    pub kind: CeremonyKind,
    /// The authenticator verified the person (PIN, biometric). Always true
    /// on success, since it is required; kept for the ledger.
    pub user_verified: bool,
    /// When the ceremony was started: for a step-up, the caller records
    /// this as the time of the fresh assertion.
    pub ceremony_started_at: SystemTime,
    /// The passkey with its counter, flags and replay guard updated: write
    /// it back (it changes on every success).
    pub updated: StoredPasskey,
}

impl Passkeys {
    /// The relying party for `rp_id` (e.g. `rempart.example`), served at
    /// `rp_origin` (e.g. `https://rempart.example`), named `rp_name`
    /// ([`RP_NAME`]). The RP id cannot change later without orphaning
    /// every registered passkey.
    pub fn new(rp_id: &str, rp_origin: &str, rp_name: &str) -> Result<Self, PasskeyConfigError> {
        check_rp_id(rp_id)?;
        let origin = check_rp_origin(rp_origin, rp_id)?;
        check_rp_name(rp_name)?;
        let webauthn = build(rp_id, &origin, rp_name, DEFAULT_CEREMONY_MAX_AGE)?;
        Ok(Self {
            webauthn,
            rp_id: rp_id.to_owned(),
            rp_origin: origin,
            rp_name: rp_name.to_owned(),
            ceremony_max_age: DEFAULT_CEREMONY_MAX_AGE,
            step_up_max_age: DEFAULT_STEP_UP_MAX_AGE,
        })
    }

    /// Sets how long a ceremony may stay open (also the timeout the browser
    /// is given) and how old a step-up may be when it finishes; each
    /// between 30 s and 10 min.
    pub fn with_max_ages(
        self,
        ceremony_max_age: Duration,
        step_up_max_age: Duration,
    ) -> Result<Self, PasskeyConfigError> {
        check_max_age("ceremony_max_age", ceremony_max_age)?;
        check_max_age("step_up_max_age", step_up_max_age)?;
        let webauthn = build(
            &self.rp_id,
            &self.rp_origin,
            &self.rp_name,
            ceremony_max_age,
        )?;
        Ok(Self {
            webauthn,
            ceremony_max_age,
            step_up_max_age,
            ..self
        })
    }

    /// Starts registering a new passkey for `account_id`. `login` and
    /// `display_name` are what the authenticator shows; `existing` are the
    /// account's passkeys, excluded so one authenticator is not registered
    /// twice.
    pub fn start_registration(
        &self,
        account_id: AccountId,
        login: &str,
        display_name: &str,
        existing: &[StoredPasskey],
        now: SystemTime,
    ) -> Result<(CreationChallengeResponse, RegistrationState), PasskeyError> {
        check_name("login", login)?;
        check_name("display_name", display_name)?;
        let now_ms = unix_ms(now)?;
        if let Some(other) = existing.iter().find(|p| p.account_id != account_id) {
            return Err(PasskeyError::WrongAccount {
                ceremony_account: account_id,
                credential_account: other.account_id,
            });
        }
        // One handle per account, so an authenticator replaces rather than
        // duplicates a discoverable credential for the same account.
        let user_handle = existing
            .first()
            .map(|p| p.user_handle)
            .unwrap_or_else(Uuid::new_v4);
        let exclude: Vec<_> = existing
            .iter()
            .map(|p| p.passkey.cred_id().clone())
            .collect();
        let exclude = (!exclude.is_empty()).then_some(exclude);
        let (mut options, ceremony) =
            self.webauthn
                .start_passkey_registration(user_handle, login, display_name, exclude)?;
        // The library asks for non-discoverable credentials; username-less
        // login needs discoverable ones. "preferred" only hints: a key that
        // cannot store one still registers and serves account-bound login.
        if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
            selection.resident_key = Some(ResidentKeyRequirement::Preferred);
        }
        let state = RegistrationState {
            account_id,
            user_handle,
            started_at_ms: now_ms,
            ceremony,
        };
        Ok((options, state))
    }

    /// Finishes a registration with the browser's JSON answer. `existing`
    /// are the account's passkeys as stored *now* (a second finish of the
    /// same state then finds its credential already there). The store must
    /// still refuse a credential id registered to another account (unique
    /// index).
    pub fn finish_registration(
        &self,
        state: &RegistrationState,
        client_json: &str,
        existing: &[StoredPasskey],
        now: SystemTime,
    ) -> Result<StoredPasskey, PasskeyError> {
        let now_ms = unix_ms(now)?;
        check_age(state.started_at_ms, now_ms, self.ceremony_max_age)?;
        if let Some(other) = existing.iter().find(|p| p.account_id != state.account_id) {
            return Err(PasskeyError::WrongAccount {
                ceremony_account: state.account_id,
                credential_account: other.account_id,
            });
        }
        let answer: RegisterPublicKeyCredential = parse_client_json(client_json)?;
        let credential_id = CredentialId::from_bytes(answer.raw_id.to_vec())?;
        if existing.iter().any(|p| p.credential_id == credential_id) {
            return Err(PasskeyError::CredentialAlreadyRegistered);
        }
        let passkey = self
            .webauthn
            .finish_passkey_registration(&answer, &state.ceremony)?;
        if passkey.cred_id().as_slice() != credential_id.as_bytes() {
            return Err(PasskeyError::UnknownCredential);
        }
        Ok(StoredPasskey {
            account_id: state.account_id,
            credential_id,
            user_handle: state.user_handle,
            passkey,
            sign_count: 0,
            registered_at_ms: now_ms,
            last_used_at_ms: None,
            last_ceremony_ms: None,
        })
    }

    /// Starts a username-less login: the browser offers the person the
    /// passkeys it holds for this site. After the answer comes back, look
    /// up the passkey by [`credential_id_of`] and call
    /// [`finish_authentication`](Self::finish_authentication).
    pub fn start_discoverable_authentication(
        &self,
        now: SystemTime,
    ) -> Result<(RequestChallengeResponse, AuthenticationState), PasskeyError> {
        let started_at_ms = unix_ms(now)?;
        let (mut options, ceremony) = self.webauthn.start_discoverable_authentication()?;
        // The library asks for conditional mediation (autofill); the login
        // page uses a plain button, which needs the modal prompt.
        options.mediation = None;
        let state = AuthenticationState {
            started_at_ms,
            flow: Flow::Discoverable(ceremony),
        };
        Ok((options, state))
    }

    /// Starts a login for a known account, allowing only its `passkeys`.
    pub fn start_authentication(
        &self,
        account_id: AccountId,
        passkeys: &[StoredPasskey],
        now: SystemTime,
    ) -> Result<(RequestChallengeResponse, AuthenticationState), PasskeyError> {
        self.start_bound(account_id, passkeys, false, now)
    }

    /// Starts a step-up for the logged-in account: a fresh assertion, user
    /// verification required, which must finish within the step-up limit.
    /// The caller checks the finished state's account against the session's.
    pub fn start_step_up(
        &self,
        account_id: AccountId,
        passkeys: &[StoredPasskey],
        now: SystemTime,
    ) -> Result<(RequestChallengeResponse, AuthenticationState), PasskeyError> {
        self.start_bound(account_id, passkeys, true, now)
    }

    fn start_bound(
        &self,
        account_id: AccountId,
        passkeys: &[StoredPasskey],
        step_up: bool,
        now: SystemTime,
    ) -> Result<(RequestChallengeResponse, AuthenticationState), PasskeyError> {
        let started_at_ms = unix_ms(now)?;
        // An empty allow list would silently turn into a username-less
        // ceremony, so refuse it.
        if passkeys.is_empty() {
            return Err(PasskeyError::NoPasskey);
        }
        if let Some(other) = passkeys.iter().find(|p| p.account_id != account_id) {
            return Err(PasskeyError::WrongAccount {
                ceremony_account: account_id,
                credential_account: other.account_id,
            });
        }
        let keys: Vec<_> = passkeys.iter().map(|p| p.passkey.clone()).collect();
        let (options, ceremony) = self.webauthn.start_passkey_authentication(&keys)?;
        let state = AuthenticationState {
            started_at_ms,
            flow: Flow::Account {
                account_id,
                step_up,
                ceremony,
            },
        };
        Ok((options, state))
    }

    /// Finishes a login or step-up with the browser's JSON answer.
    /// `stored` are the candidate passkeys as stored now: the account's
    /// passkeys for an account-bound ceremony, the passkey found by
    /// [`credential_id_of`] for a username-less one.
    pub fn finish_authentication(
        &self,
        state: &AuthenticationState,
        client_json: &str,
        stored: &[StoredPasskey],
        now: SystemTime,
    ) -> Result<Authenticated, PasskeyError> {
        let now_ms = unix_ms(now)?;
        let max_age = match state.kind() {
            CeremonyKind::StepUp => self.step_up_max_age,
            CeremonyKind::Discoverable | CeremonyKind::Account => self.ceremony_max_age,
        };
        check_age(state.started_at_ms, now_ms, max_age)?;
        let answer: PublicKeyCredential = parse_client_json(client_json)?;
        let credential_id = CredentialId::from_bytes(answer.raw_id.to_vec())?;
        let current = stored
            .iter()
            .find(|p| p.credential_id == credential_id)
            .ok_or(PasskeyError::UnknownCredential)?;
        if let Some(ceremony_account) = state.account_id()
            && current.account_id != ceremony_account
        {
            return Err(PasskeyError::WrongAccount {
                ceremony_account,
                credential_account: current.account_id,
            });
        }
        if current
            .last_ceremony_ms
            .is_some_and(|last| state.started_at_ms <= last)
        {
            return Err(PasskeyError::CeremonyReplayed);
        }

        let result = match &state.flow {
            Flow::Discoverable(ceremony) => {
                // The handle is not signed; checking it is the spec's rule
                // that the credential's owner is who the client claims.
                let handle = answer
                    .get_user_unique_id()
                    .ok_or(PasskeyError::UserHandleMissing)?;
                if handle != current.user_handle.as_bytes() {
                    return Err(PasskeyError::UserHandleMismatch);
                }
                self.webauthn.finish_discoverable_authentication_v2(
                    &answer,
                    ceremony.clone(),
                    &current.passkey,
                )?
            }
            Flow::Account { ceremony, .. } => {
                // Optional here, but when sent it must name the same user.
                if answer
                    .get_user_unique_id()
                    .is_some_and(|handle| handle != current.user_handle.as_bytes())
                {
                    return Err(PasskeyError::UserHandleMismatch);
                }
                self.webauthn
                    .finish_passkey_authentication(&answer, ceremony)?
            }
        };
        if !result.user_verified() {
            return Err(PasskeyError::UserVerificationMissing);
        }
        // The library compared with the counter of the ceremony's snapshot;
        // the current row may be newer (another ceremony finished between).
        let counter = result.counter();
        if (counter > 0 || current.sign_count > 0) && counter <= current.sign_count {
            return Err(PasskeyError::CounterRegression);
        }

        let mut updated = current.clone();
        updated.passkey.update_credential(&result);
        updated.sign_count = counter.max(current.sign_count);
        updated.last_used_at_ms = Some(now_ms);
        updated.last_ceremony_ms = Some(state.started_at_ms);
        Ok(Authenticated {
            account_id: current.account_id,
            credential_id,
            kind: state.kind(),
            user_verified: result.user_verified(),
            ceremony_started_at: state.started_at(),
            updated,
        })
    }
}

/// The credential id in an authentication answer, to look up the stored
/// passkey before finishing a username-less login.
pub fn credential_id_of(client_json: &str) -> Result<CredentialId, PasskeyError> {
    let answer: PublicKeyCredential = parse_client_json(client_json)?;
    CredentialId::from_bytes(answer.raw_id.to_vec())
}

fn build(
    rp_id: &str,
    origin: &Url,
    rp_name: &str,
    timeout: Duration,
) -> Result<Webauthn, PasskeyConfigError> {
    WebauthnBuilder::new(rp_id, origin)
        .map_err(|_| PasskeyConfigError::RpOrigin {
            reason: "host is neither rp_id nor a subdomain of it",
        })?
        .rp_name(rp_name)
        .timeout(timeout)
        .build()
        .map_err(|_| PasskeyConfigError::RpId {
            reason: "refused by the WebAuthn library",
        })
}

fn check_rp_id(rp_id: &str) -> Result<(), PasskeyConfigError> {
    let refuse = |reason| Err(PasskeyConfigError::RpId { reason });
    if rp_id.is_empty() {
        return refuse("empty");
    }
    if rp_id.len() > 253 {
        return refuse("longer than 253 characters");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !rp_id.split('.').all(label_ok) {
        return refuse("not a lowercase domain name (letters, digits, '-', dots)");
    }
    // An IP address is not a valid RP id in WebAuthn.
    if rp_id
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return refuse("an IP address, not a domain name");
    }
    Ok(())
}

fn check_rp_origin(rp_origin: &str, rp_id: &str) -> Result<Url, PasskeyConfigError> {
    let refuse = |reason| Err(PasskeyConfigError::RpOrigin { reason });
    let Ok(url) = Url::parse(rp_origin) else {
        return refuse("not a URL");
    };
    let Some(host) = url.domain() else {
        return refuse("has no domain name");
    };
    match url.scheme() {
        "https" => {}
        "http" if host == "localhost" => {}
        "http" => return refuse("http is allowed only for localhost"),
        _ => return refuse("scheme must be https"),
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return refuse("must be an origin, without path, query or fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("must not carry credentials");
    }
    if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
        return refuse("host is neither rp_id nor a subdomain of it");
    }
    Ok(url)
}

fn check_rp_name(rp_name: &str) -> Result<(), PasskeyConfigError> {
    let refuse = |reason| Err(PasskeyConfigError::RpName { reason });
    if rp_name.trim().is_empty() {
        return refuse("empty");
    }
    if rp_name.chars().count() > 64 {
        return refuse("longer than 64 characters");
    }
    if rp_name.chars().any(char::is_control) {
        return refuse("contains control characters");
    }
    Ok(())
}

fn check_max_age(field: &'static str, age: Duration) -> Result<(), PasskeyConfigError> {
    if age < SHORTEST_MAX_AGE {
        return Err(PasskeyConfigError::MaxAge {
            field,
            reason: "shorter than 30 s",
        });
    }
    if age > LONGEST_MAX_AGE {
        return Err(PasskeyConfigError::MaxAge {
            field,
            reason: "longer than 10 min",
        });
    }
    Ok(())
}

fn check_name(field: &'static str, value: &str) -> Result<(), PasskeyError> {
    let refuse = |reason| Err(PasskeyError::InvalidInput { field, reason });
    if value.trim().is_empty() {
        return refuse("empty");
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return refuse("longer than 128 characters");
    }
    if value.chars().any(char::is_control) {
        return refuse("contains control characters");
    }
    Ok(())
}

fn check_age(started_at_ms: u64, now_ms: u64, max_age: Duration) -> Result<(), PasskeyError> {
    let age_ms = now_ms
        .checked_sub(started_at_ms)
        .ok_or(PasskeyError::CeremonyInFuture)?;
    let max_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    if age_ms > max_ms {
        return Err(PasskeyError::StaleCeremony {
            age_secs: age_ms / 1000,
            max_secs: max_age.as_secs(),
        });
    }
    Ok(())
}

/// Reads the browser's JSON, naming the field at fault without echoing
/// any value (serde's messages may quote the input).
fn parse_client_json<T: DeserializeOwned>(json: &str) -> Result<T, PasskeyError> {
    if json.len() > MAX_CLIENT_JSON {
        return Err(PasskeyError::MalformedClientJson {
            field: "(body)".into(),
            reason: "larger than 64 KiB",
        });
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let (field, reason) = match inner.classify() {
            serde_json::error::Category::Eof => (path, "truncated JSON"),
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                (path, "not valid JSON")
            }
            serde_json::error::Category::Data => {
                if let Some(name) = missing_field(&message) {
                    (join_path(&path, name), "missing")
                } else if message.starts_with("invalid type") {
                    (path, "wrong type")
                } else if message.starts_with("invalid length") {
                    (path, "wrong length")
                } else if message.starts_with("unknown variant") {
                    (path, "unknown value")
                } else {
                    (path, "invalid value")
                }
            }
        };
        PasskeyError::MalformedClientJson {
            field: clean_path(field),
            reason,
        }
    })?;
    de.end().map_err(|_| PasskeyError::MalformedClientJson {
        field: "(body)".into(),
        reason: "trailing characters after the JSON",
    })?;
    Ok(value)
}

/// The field name in serde's "missing field `name`" message; names come
/// from our own types, never from the input.
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn join_path(parent: &str, name: &str) -> String {
    if parent == "." || parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// Keeps a path only if it looks like our field names: map keys in a path
/// may come from the client.
fn clean_path(path: String) -> String {
    let plain = path.len() <= 80
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'[' | b']'));
    if path == "." || path.is_empty() {
        "(body)".into()
    } else if plain {
        path
    } else {
        "(unnamed field)".into()
    }
}
