//! The values the caller persists: registered passkeys and the state of a
//! ceremony between its two requests. All are plain serde structs; Debug
//! never shows a challenge.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rempart_domain::AccountId;
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration, Uuid,
};

use super::PasskeyError;

/// Longest credential id WebAuthn allows (§5.8.3 of Level 3).
const MAX_CREDENTIAL_ID_LEN: usize = 1023;

/// The id an authenticator gave a credential: opaque bytes, unique across
/// all accounts (the store should hold a unique index on it).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialId(Vec<u8>);

impl CredentialId {
    /// Wraps raw bytes, refusing an empty or over-long id.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, PasskeyError> {
        if bytes.is_empty() {
            return Err(PasskeyError::MalformedClientJson {
                field: "rawId".into(),
                reason: "empty",
            });
        }
        if bytes.len() > MAX_CREDENTIAL_ID_LEN {
            return Err(PasskeyError::MalformedClientJson {
                field: "rawId".into(),
                reason: "longer than 1023 bytes",
            });
        }
        Ok(Self(bytes))
    }

    /// The raw bytes, for a binary column.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The unpadded base64url form browsers use, for a text column or a log.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0)
    }
}

impl fmt::Debug for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not a secret, but long: a prefix is enough to tell ids apart.
        let full = self.to_base64url();
        let short: String = full.chars().take(12).collect();
        write!(f, "CredentialId({short}…)")
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64url())
    }
}

impl Serialize for CredentialId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64url())
    }
}

impl<'de> Deserialize<'de> for CredentialId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("credential id: not unpadded base64url"))?;
        Self::from_bytes(bytes).map_err(serde::de::Error::custom)
    }
}

/// A passkey registered to an account, as the store keeps it.
///
/// Suggested row: `credential_id` (unique), `account_id` (indexed), and
/// the whole value as JSON. Write it back whenever a ceremony returns an
/// updated copy: the counter and the replay guard live in it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "StoredPasskeyRepr", into = "StoredPasskeyRepr")]
pub struct StoredPasskey {
    pub(super) account_id: AccountId,
    pub(super) credential_id: CredentialId,
    /// The WebAuthn user handle: random, one per account, reused for each
    /// new passkey of the account; never derived from personal data.
    pub(super) user_handle: Uuid,
    /// The library's credential: public key, algorithm, flags, counter.
    pub(super) passkey: Passkey,
    /// Highest signature counter seen, checked against the current row
    /// rather than the ceremony's snapshot (two parallel ceremonies).
    pub(super) sign_count: u32,
    pub(super) registered_at_ms: u64,
    pub(super) last_used_at_ms: Option<u64>,
    /// Start time of the last ceremony this credential completed: a
    /// ceremony started at or before it is a replay.
    pub(super) last_ceremony_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct StoredPasskeyRepr {
    account_id: AccountId,
    credential_id: CredentialId,
    user_handle: Uuid,
    passkey: Passkey,
    sign_count: u32,
    registered_at_ms: u64,
    last_used_at_ms: Option<u64>,
    last_ceremony_ms: Option<u64>,
}

impl TryFrom<StoredPasskeyRepr> for StoredPasskey {
    type Error = PasskeyError;

    fn try_from(r: StoredPasskeyRepr) -> Result<Self, PasskeyError> {
        // The indexed column and the key inside must agree, or a row edited
        // in the database could let one credential stand for another.
        if r.credential_id.as_bytes() != r.passkey.cred_id().as_slice() {
            return Err(PasskeyError::CorruptStoredPasskey {
                reason: "credential_id differs from the passkey's own id",
            });
        }
        Ok(Self {
            account_id: r.account_id,
            credential_id: r.credential_id,
            user_handle: r.user_handle,
            passkey: r.passkey,
            sign_count: r.sign_count,
            registered_at_ms: r.registered_at_ms,
            last_used_at_ms: r.last_used_at_ms,
            last_ceremony_ms: r.last_ceremony_ms,
        })
    }
}

impl From<StoredPasskey> for StoredPasskeyRepr {
    fn from(p: StoredPasskey) -> Self {
        Self {
            account_id: p.account_id,
            credential_id: p.credential_id,
            user_handle: p.user_handle,
            passkey: p.passkey,
            sign_count: p.sign_count,
            registered_at_ms: p.registered_at_ms,
            last_used_at_ms: p.last_used_at_ms,
            last_ceremony_ms: p.last_ceremony_ms,
        }
    }
}

impl StoredPasskey {
    /// The account this passkey opens.
    pub fn account_id(&self) -> AccountId {
        self.account_id
    }

    /// The credential's id (the store's unique key).
    pub fn credential_id(&self) -> &CredentialId {
        &self.credential_id
    }

    /// The highest signature counter accepted so far (0 for authenticators
    /// that keep no counter, as synced passkeys do).
    pub fn sign_count(&self) -> u32 {
        self.sign_count
    }

    /// When the registration finished.
    pub fn registered_at(&self) -> SystemTime {
        from_unix_ms(self.registered_at_ms)
    }

    /// When the passkey last completed a login or step-up.
    pub fn last_used_at(&self) -> Option<SystemTime> {
        self.last_used_at_ms.map(from_unix_ms)
    }
}

impl fmt::Debug for StoredPasskey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredPasskey")
            .field("account_id", &self.account_id)
            .field("credential_id", &self.credential_id)
            .field("sign_count", &self.sign_count)
            .field("registered_at_ms", &self.registered_at_ms)
            .field("last_used_at_ms", &self.last_used_at_ms)
            .finish_non_exhaustive()
    }
}

/// A registration between its start and its finish. Persist it server
/// side (never in the page), keyed by the browser's pre-session, and take
/// it out (delete) when finishing.
#[derive(Clone, Serialize, Deserialize)]
pub struct RegistrationState {
    pub(super) account_id: AccountId,
    pub(super) user_handle: Uuid,
    pub(super) started_at_ms: u64,
    pub(super) ceremony: PasskeyRegistration,
}

impl RegistrationState {
    /// The account the passkey is being registered for.
    pub fn account_id(&self) -> AccountId {
        self.account_id
    }

    /// When the ceremony started.
    pub fn started_at(&self) -> SystemTime {
        from_unix_ms(self.started_at_ms)
    }
}

impl fmt::Debug for RegistrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationState")
            .field("account_id", &self.account_id)
            .field("started_at_ms", &self.started_at_ms)
            .field("ceremony", &"<redacted>")
            .finish()
    }
}

/// Which authentication ceremony a state belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CeremonyKind {
    /// Username-less login: the authenticator says which credential.
    Discoverable,
    /// Login for an account named beforehand.
    Account,
    /// A fresh assertion by the logged-in account before a sensitive action.
    StepUp,
}

/// An authentication between its start and its finish. Persist it server
/// side, keyed by the browser's (pre-)session, and take it out (delete)
/// when finishing.
#[derive(Clone, Serialize, Deserialize)]
pub struct AuthenticationState {
    pub(super) started_at_ms: u64,
    pub(super) flow: Flow,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) enum Flow {
    Discoverable(DiscoverableAuthentication),
    Account {
        account_id: AccountId,
        step_up: bool,
        ceremony: PasskeyAuthentication,
    },
}

impl AuthenticationState {
    /// Which ceremony this is.
    pub fn kind(&self) -> CeremonyKind {
        match &self.flow {
            Flow::Discoverable(_) => CeremonyKind::Discoverable,
            Flow::Account { step_up: false, .. } => CeremonyKind::Account,
            Flow::Account { step_up: true, .. } => CeremonyKind::StepUp,
        }
    }

    /// The account the ceremony is bound to; `None` for a username-less
    /// login, where the credential decides. Load this account's passkeys
    /// before finishing.
    pub fn account_id(&self) -> Option<AccountId> {
        match &self.flow {
            Flow::Discoverable(_) => None,
            Flow::Account { account_id, .. } => Some(*account_id),
        }
    }

    /// When the ceremony started.
    pub fn started_at(&self) -> SystemTime {
        from_unix_ms(self.started_at_ms)
    }
}

impl fmt::Debug for AuthenticationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthenticationState")
            .field("kind", &self.kind())
            .field("account_id", &self.account_id())
            .field("started_at_ms", &self.started_at_ms)
            .field("ceremony", &"<redacted>")
            .finish()
    }
}

/// `now` as milliseconds since 1970.
pub(super) fn unix_ms(now: SystemTime) -> Result<u64, PasskeyError> {
    let since = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PasskeyError::ClockBeforeEpoch)?;
    // u64 milliseconds last 584 million years; saturate rather than fail.
    Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}
