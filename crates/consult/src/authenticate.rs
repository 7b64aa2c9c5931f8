//! Stage 1: who is calling. Two ways in, one [`Caller`] out:
//!
//! - **API credentials** issued by `rempart account credential issue`. A
//!   credential reads `rmp_<id>_<secret>`: the id finds the stored row, the
//!   secret (32 random bytes, base64url) is kept only as its SHA-256 digest.
//!   A fast hash is enough here because the secret has 256 bits of entropy;
//!   passwords, which do not, get argon2id ([`crate::login`]).
//! - **Browser sessions** opened by [`crate::login`]. The cookie reads
//!   `rms_<secret>` (32 random bytes, base64url); the store keeps its
//!   SHA-256 digest only. A session is bound to the device key that signed
//!   the login request, and every request must carry a fresh proof signed
//!   by that key (DPoP format: method, URL, time, unique id, and `ath`, the
//!   hash of the session's public *handle*), so a copied cookie alone opens
//!   nothing. The handle is derived from the secret
//!   ([`session_handle`]): the page learns it at login and keeps it in a
//!   `<meta>` tag, since the cookie itself is `HttpOnly`.
//! - **DPoP-bound access tokens** issued to API clients at the token
//!   endpoint ([`crate::clients`]). `Authorization: DPoP rmpat_…` and a
//!   `DPoP` proof on every request, signed by the key the token is bound
//!   to (`cnf.jkt`), naming the method, the public URL, the hash of the
//!   token (`ath`), a fresh `iat` and a `jti` recorded in the database's
//!   replay table, which every server instance shares: a proof replayed to
//!   another instance is refused too. A stolen token alone opens nothing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use rempart_auth::access_token::{self, AccessTokenError, AccessTokenRecord, Scope, TokenDigest};
use rempart_auth::client_assertion::ClientId;
use rempart_auth::dpop::{DpopError, DpopProof, Expected};
use rempart_auth::jose::{AlgSet, Jkt};
use rempart_domain::{AccountId, AccountState};
use rempart_storage::{
    AccountRecord, AuthStore, StorageError, Store, StoredCredential,
    auth::{AccessTokenRow, StoredSession},
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Every credential starts with this, so secret scanners can spot leaks.
pub const PREFIX: &str = "rmp_";

/// Every session cookie value starts with this.
pub const SESSION_PREFIX: &str = "rms_";

/// A session is touched (its idle clock restarted) at most this often, so
/// a busy page does not write the session row on every request.
pub const TOUCH_EVERY_SECS: i64 = 60;

/// Longest credential accepted before any parsing.
const MAX_LEN: usize = 128;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountRecord,
    /// How the request came in.
    pub via: Via,
}

/// How a caller came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// An API credential, by its id.
    Credential(i64),
    /// A browser session with a valid device proof.
    Session {
        /// SHA-256 of the cookie's secret: the session row's key (not a
        /// bearer value: the cookie cannot be rebuilt from it).
        id_digest: [u8; 32],
        /// First session after a credential reset.
        high_risk: bool,
        /// The last fresh passkey assertion in this session.
        step_up_at: Option<DateTime<Utc>>,
        /// Digest of the device key's thumbprint (see [`device_digest`]):
        /// the guard tells a new device from known ones by it.
        device: [u8; 16],
    },
    /// A DPoP-bound access token with a valid proof by its key.
    AccessToken {
        /// The token's stored digest (not a bearer value).
        digest: [u8; 32],
        /// Digest of the key the token is bound to, as for sessions: the
        /// guard tells a client's new key from its known ones.
        device: [u8; 16],
    },
}

/// What the guard is told of a device key: 16 bytes of SHA-256 over its
/// RFC 7638 thumbprint (itself a hash of the public key, nothing secret).
pub fn device_digest(jkt: &str) -> [u8; 16] {
    let full = Sha256::new()
        .chain_update(b"rempart/guard/device/1\0")
        .chain_update(jkt.as_bytes())
        .finalize();
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// A newly issued credential. The token is shown once and never stored.
pub struct IssuedCredential {
    pub id: i64,
    pub token: Zeroizing<String>,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredential")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a credential or session was not accepted. The client is never told
/// which (all are "401 unauthenticated"); the ledger is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadCredential {
    /// No credential, or not of the `rmp_<id>_<secret>` form.
    Malformed,
    /// No stored credential has this id.
    Unknown,
    /// The secret does not match.
    WrongSecret {
        account_id: AccountId,
    },
    Expired {
        account_id: AccountId,
    },
    Revoked {
        account_id: AccountId,
    },
    /// A session cookie not of the `rms_<secret>` form.
    SessionMalformed,
    /// No stored session has this cookie.
    SessionUnknown,
    /// The session ended (logout, reset), idled out or reached its
    /// absolute expiry.
    SessionEnded {
        account_id: AccountId,
    },
    /// The request carries no device proof (or more than one).
    ProofMissing {
        account_id: AccountId,
    },
    /// The device proof is refused: wrong key, method, URL, handle, time,
    /// or a replay. [`DpopError::is_unavailable`] means the replay cache
    /// could not record it: a 503, not a 401.
    ProofRefused {
        account_id: AccountId,
        error: DpopError,
    },
    /// An access token refused: another scheme (`Bearer`), malformed,
    /// unknown (or of a revoked client), expired, or not the proof key's.
    /// The account is known when the token was found.
    TokenRefused {
        account_id: Option<AccountId>,
        error: AccessTokenError,
    },
    /// A known, live access token whose DPoP proof is missing or refused.
    /// [`DpopError::is_unavailable`] is the server's failure (503).
    TokenProofRefused {
        account_id: AccountId,
        error: DpopError,
    },
}

impl BadCredential {
    /// The account the credential or session belongs to, when known.
    pub fn account_id(self) -> Option<AccountId> {
        match self {
            BadCredential::Malformed
            | BadCredential::Unknown
            | BadCredential::SessionMalformed
            | BadCredential::SessionUnknown => None,
            BadCredential::WrongSecret { account_id }
            | BadCredential::Expired { account_id }
            | BadCredential::Revoked { account_id }
            | BadCredential::SessionEnded { account_id }
            | BadCredential::ProofMissing { account_id }
            | BadCredential::ProofRefused { account_id, .. }
            | BadCredential::TokenProofRefused { account_id, .. } => Some(account_id),
            BadCredential::TokenRefused { account_id, .. } => account_id,
        }
    }

    /// Whether a DPoP-bound access token (rather than a credential or a
    /// session) was refused.
    pub fn is_token(self) -> bool {
        matches!(
            self,
            BadCredential::TokenRefused { .. } | BadCredential::TokenProofRefused { .. }
        )
    }

    /// For a refused access token, the OAuth error code of the answer's
    /// `WWW-Authenticate: DPoP error="…"`: `invalid_dpop_proof` when the
    /// proof is missing or unsound, `invalid_token` otherwise (unknown,
    /// expired, `Bearer`, another key).
    pub fn oauth_error(self) -> Option<&'static str> {
        match self {
            BadCredential::TokenRefused {
                error: AccessTokenError::ProofMissing,
                ..
            } => Some("invalid_dpop_proof"),
            BadCredential::TokenRefused { .. } => Some("invalid_token"),
            BadCredential::TokenProofRefused { error, .. } => match error {
                DpopError::JktMismatch => Some("invalid_token"),
                _ => Some("invalid_dpop_proof"),
            },
            _ => None,
        }
    }

    /// Whether a browser session (rather than an API credential) was refused.
    pub fn is_session(self) -> bool {
        matches!(
            self,
            BadCredential::SessionMalformed
                | BadCredential::SessionUnknown
                | BadCredential::SessionEnded { .. }
                | BadCredential::ProofMissing { .. }
                | BadCredential::ProofRefused { .. }
        )
    }

    /// What the ledger's note says (a fixed text, never a value).
    pub fn note(self) -> &'static str {
        match self {
            BadCredential::Malformed => "malformed credential",
            BadCredential::Unknown => "unknown credential",
            BadCredential::WrongSecret { .. } => "wrong secret",
            BadCredential::Expired { .. } => "expired credential",
            BadCredential::Revoked { .. } => "revoked credential",
            BadCredential::SessionMalformed => "malformed session cookie",
            BadCredential::SessionUnknown => "unknown session",
            BadCredential::SessionEnded { .. } => "session ended or expired",
            BadCredential::ProofMissing { .. } => "no device proof",
            BadCredential::ProofRefused { error, .. } => match error {
                DpopError::JktMismatch => "device proof: another key",
                DpopError::Replayed => "device proof: replayed",
                DpopError::AthMissing | DpopError::AthMismatch => "device proof: another session",
                DpopError::HtmMismatch | DpopError::HtuMismatch => "device proof: another request",
                DpopError::IatTooOld | DpopError::IatInFuture => "device proof: out of time",
                DpopError::ReplayStore(_) => "device proof: replay cache unavailable",
                _ => "device proof: invalid",
            },
            BadCredential::TokenRefused { error, .. } => match error {
                AccessTokenError::BearerScheme => "access token: used as Bearer",
                AccessTokenError::Scheme => "access token: malformed authorization",
                AccessTokenError::Malformed => "access token: malformed",
                AccessTokenError::Unknown => "access token: unknown",
                AccessTokenError::Expired => "access token: expired",
                AccessTokenError::ProofMissing => "access token: no proof",
                AccessTokenError::JktMismatch => "access token: another key",
            },
            BadCredential::TokenProofRefused { error, .. } => match error {
                DpopError::Missing | DpopError::Multiple => "dpop: no single proof",
                DpopError::JktMismatch => "dpop: another key",
                DpopError::Replayed => "dpop: replayed",
                DpopError::AthMissing | DpopError::AthMismatch => "dpop: another token",
                DpopError::HtmMismatch => "dpop: another method",
                DpopError::HtuMismatch | DpopError::HtuInvalid(_) => "dpop: another url",
                DpopError::IatTooOld | DpopError::IatInFuture => "dpop: out of time",
                DpopError::ReplayStore(_) => "dpop: replay table unavailable",
                _ => "dpop: invalid proof",
            },
        }
    }
}

/// A new session's secret and what derives from it.
pub struct NewSession {
    /// The cookie value, `rms_<secret>`: sent once in `Set-Cookie`.
    pub cookie: Zeroizing<String>,
    /// The public handle the page keeps (see [`session_handle`]).
    pub handle: String,
    /// What the store keeps.
    pub id_digest: [u8; 32],
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("cookie", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A fresh session secret (32 bytes from the operating system's CSPRNG).
pub fn new_session() -> NewSession {
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(secret.as_mut());
    NewSession {
        cookie: Zeroizing::new(format!(
            "{SESSION_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(secret.as_ref())
        )),
        handle: session_handle(&secret),
        id_digest: digest(secret.as_ref()),
    }
}

/// The session's public handle: base64url of the first 16 bytes of
/// SHA-256("rempart session handle" ‖ secret). Device proofs carry its
/// hash as `ath`, which ties each proof to one session. It is not a bearer
/// value (nothing is opened with it alone) and cannot give back the
/// secret; the page needs it because the cookie is out of its reach.
pub fn session_handle(secret: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"rempart session handle");
    h.update(secret);
    let full: [u8; 32] = h.finalize().into();
    URL_SAFE_NO_PAD.encode(&full[..16])
}

/// Reads a session cookie's value: (digest of the secret, handle).
pub fn parse_session(cookie: &str) -> Result<([u8; 32], String), BadCredential> {
    if cookie.len() > MAX_LEN {
        return Err(BadCredential::SessionMalformed);
    }
    let encoded = cookie
        .strip_prefix(SESSION_PREFIX)
        .ok_or(BadCredential::SessionMalformed)?;
    let bytes = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| BadCredential::SessionMalformed)?,
    );
    let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| BadCredential::SessionMalformed)?,
    );
    Ok((digest(secret.as_ref()), session_handle(&secret)))
}

/// How a device token (the trusted-browser cookie's value) starts.
pub const DEVICE_PREFIX: &str = "rmd_";

/// A fresh device token, `rmd_<secret>` (32 bytes from the operating
/// system's CSPRNG), and the digest the store keeps of it.
pub fn new_device_token() -> (Zeroizing<String>, [u8; 32]) {
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(secret.as_mut());
    let token = Zeroizing::new(format!(
        "{DEVICE_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(secret.as_ref())
    ));
    (token, digest(secret.as_ref()))
}

/// The digest of a device token as a browser shows it; `None` for anything
/// else (a malformed value is no device, never an error: the login goes on
/// as from an unknown browser).
pub fn device_token_digest(token: &str) -> Option<[u8; 32]> {
    if token.len() > MAX_LEN {
        return None;
    }
    let bytes = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(token.strip_prefix(DEVICE_PREFIX)?)
            .ok()?,
    );
    let secret: &[u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(digest(secret))
}

/// A request's device proof and what it must name.
#[derive(Clone, Copy, Debug)]
pub struct ProofRequest<'a> {
    pub proof: Option<&'a str>,
    pub method: &'a str,
    pub url: &'a str,
}

/// A session request [`check_session`] let through, and the proof's
/// replay key, still to be recorded where every instance sees it.
#[derive(Debug)]
pub struct CheckedSession {
    /// Who asks, through which session.
    pub caller: Caller,
    /// The stored session.
    pub session: StoredSession,
    /// The device proof's key in the shared replay table.
    pub replay_key: rempart_auth::dpop::ReplayKey,
    /// Until when that key must be remembered.
    pub replay_expires_at: DateTime<Utc>,
}

/// Decides on a session request given the stored row: live at `now`,
/// then the device proof, bound to the session's key and handle, checked
/// for this method and URL, its `jti` recorded in `replay` (this process's
/// cache: a replay to the same instance costs no database call). The
/// caller records the key in the shared table too ([`authenticate_session`]
/// does). The account's state is the caller's to check (as for
/// credentials).
pub fn check_session(
    stored: Option<(StoredSession, AccountRecord)>,
    handle: &str,
    request: ProofRequest<'_>,
    now: DateTime<Utc>,
    replay: &std::sync::Mutex<rempart_auth::dpop::ReplayCache>,
) -> Result<CheckedSession, BadCredential> {
    let Some((session, account)) = stored else {
        return Err(BadCredential::SessionUnknown);
    };
    let account_id = account.account_id;
    if session.account_id != account_id || !session.is_live_at(now) {
        return Err(BadCredential::SessionEnded { account_id });
    }
    let Some(proof) = request.proof else {
        return Err(BadCredential::ProofMissing { account_id });
    };
    let refused = |error| BadCredential::ProofRefused { account_id, error };
    // A stored thumbprint that does not parse binds to nothing: refused.
    let jkt = Jkt::parse(&session.jkt).map_err(|_| refused(DpopError::JktMismatch))?;
    let expected = Expected::new(request.method, request.url)
        .map_err(|_| refused(DpopError::HtuMismatch))?
        .bound_to(jkt)
        .with_token(handle)
        .with_algs(AlgSet::ES256);
    let unrecorded = DpopProof::check(proof, &expected, now).map_err(refused)?;
    let (replay_key, replay_expires_at) = (unrecorded.replay_key(), unrecorded.replay_expires_at());
    {
        // A poisoned lock still holds a consistent cache: every insertion
        // completes before it returns.
        let mut cache = replay.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = cache.insert_if_new(replay_key, replay_expires_at, now);
        unrecorded.recorded(outcome).map_err(refused)?;
    }
    let caller = Caller {
        account,
        via: Via::Session {
            id_digest: session.id_digest,
            high_risk: session.high_risk,
            step_up_at: session.step_up_at,
            device: device_digest(&session.jkt),
        },
    };
    Ok(CheckedSession {
        caller,
        session,
        replay_key,
        replay_expires_at,
    })
}

/// Looks up and checks a browser session (see [`check_session`]), records
/// its proof's key in the shared replay table (a proof replayed to another
/// instance behind the same balancer is refused there), then restarts its
/// idle clock if the last restart is a minute old or more and
/// the account is active (the store checks the state again in the same
/// statement): a suspended account polling its session keeps nothing
/// alive. `Ok(Err(_))` is a rejection; `Err(_)` means the store could not
/// answer.
pub async fn authenticate_session(
    auth: &dyn AuthStore,
    cookie: &str,
    request: ProofRequest<'_>,
    now: DateTime<Utc>,
    replay: &std::sync::Mutex<rempart_auth::dpop::ReplayCache>,
) -> Result<Result<Caller, BadCredential>, StorageError> {
    let (id_digest, handle) = match parse_session(cookie) {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    let stored = auth.session(id_digest).await?;
    let checked = match check_session(stored, &handle, request, now, replay) {
        Ok(c) => c,
        Err(r) => return Ok(Err(r)),
    };
    let fresh = auth
        .insert_replay_if_new(
            *checked.replay_key.as_bytes(),
            replay_until(checked.replay_expires_at, now),
            now,
        )
        .await?;
    let CheckedSession {
        caller, session, ..
    } = checked;
    if !fresh {
        return Ok(Err(BadCredential::ProofRefused {
            account_id: caller.account.account_id,
            error: DpopError::Replayed,
        }));
    }
    if caller.account.state == AccountState::Active
        && (now - session.last_seen_at).num_seconds() >= TOUCH_EVERY_SECS
    {
        auth.touch_session(id_digest, now).await?;
    }
    Ok(Ok(caller))
}

/// Looks up and checks a DPoP-bound access token (RFC 9449 §7): the
/// `Authorization: DPoP <token>` header, the stored token (live, of a
/// client not revoked), then the request's proof, bound to the token's key
/// and to the token itself (`ath`), for this method and URL, its `jti`
/// recorded in the shared replay table last (a refused proof does not use
/// up its `jti`). `Ok(Err(_))` is a rejection; `Err(_)` means the store
/// could not answer. The account's state is the caller's to check.
pub async fn authenticate_access_token(
    auth: &dyn AuthStore,
    authorization: &str,
    request: ProofRequest<'_>,
    now: DateTime<Utc>,
) -> Result<Result<Caller, BadCredential>, StorageError> {
    let refused = |account_id, error| Ok(Err(BadCredential::TokenRefused { account_id, error }));
    let token = match access_token::parse_authorization(authorization) {
        Ok(token) => token,
        // A Bearer use of a DPoP-bound token (RFC 9449 §7.2): refused, but
        // looked up so that the ledger names the account it belongs to.
        Err(AccessTokenError::BearerScheme) => {
            let token = authorization
                .split_once(' ')
                .map_or("", |(_, t)| t.trim_start_matches(' '));
            let account_id = match TokenDigest::of(token) {
                Ok(digest) => auth
                    .access_token(*digest.as_bytes())
                    .await?
                    .map(|(_, account)| account.account_id),
                Err(_) => None,
            };
            return refused(account_id, AccessTokenError::BearerScheme);
        }
        Err(error) => return refused(None, error),
    };
    let digest = match TokenDigest::of(token) {
        Ok(d) => d,
        Err(error) => return refused(None, error),
    };
    let Some((row, account)) = auth.access_token(*digest.as_bytes()).await? else {
        return refused(None, AccessTokenError::Unknown);
    };
    let account_id = account.account_id;
    // A row that does not read back as a record binds to nothing: refused.
    let Some(record) = token_record(row).filter(|r| r.account_id == account_id) else {
        return refused(Some(account_id), AccessTokenError::Unknown);
    };
    if now >= record.expires_at {
        return refused(Some(account_id), AccessTokenError::Expired);
    }
    let proof_refused = |error| Ok(Err(BadCredential::TokenProofRefused { account_id, error }));
    let Some(proof) = request.proof else {
        return proof_refused(DpopError::Missing);
    };
    let expected = match Expected::new(request.method, request.url) {
        Ok(e) => e.bound_to(record.jkt).with_token(token),
        // The server's own URL does not normalise: nothing can match it.
        Err(_) => return proof_refused(DpopError::HtuMismatch),
    };
    let unrecorded = match DpopProof::check(proof, &expected, now) {
        Ok(u) => u,
        Err(error) => return proof_refused(error),
    };
    let fresh = auth
        .insert_replay_if_new(
            *unrecorded.replay_key().as_bytes(),
            replay_until(unrecorded.replay_expires_at(), now),
            now,
        )
        .await?;
    let verified = match unrecorded.recorded(Ok(fresh)) {
        Ok(v) => v,
        Err(error) => return proof_refused(error),
    };
    // The binding again, from the record's side: neither check alone lets
    // a token through.
    if let Err(error) = access_token::check(&record, token, Some(verified.jkt()), now) {
        return refused(Some(account_id), error);
    }
    Ok(Ok(Caller {
        account,
        via: Via::AccessToken {
            digest: *digest.as_bytes(),
            device: device_digest(&verified.jkt().to_string()),
        },
    }))
}

/// Until when a replay key is kept: its own expiry, but always after `now`
/// (a proof whose `iat` is exactly at the window's edge expires now, and
/// the store refuses keys that protect nothing).
pub(crate) fn replay_until(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    expires_at.max(now + Duration::seconds(1))
}

/// The stored token as the auth crate's record; `None` if a column does
/// not parse (then the token is refused, never half-trusted).
fn token_record(row: AccessTokenRow) -> Option<AccessTokenRecord> {
    Some(AccessTokenRecord {
        digest: TokenDigest::try_from(URL_SAFE_NO_PAD.encode(row.digest)).ok()?,
        jkt: Jkt::parse(&row.jkt).ok()?,
        client_id: ClientId::parse(&row.client_id).ok()?,
        account_id: row.account_id,
        scope: Scope::parse(&row.scope).ok()?,
        issued_at: row.issued_at,
        expires_at: row.expires_at,
    })
}

/// Splits a presented credential into (id, digest of the secret).
pub fn parse(token: &str) -> Result<(i64, [u8; 32]), BadCredential> {
    if token.len() > MAX_LEN {
        return Err(BadCredential::Malformed);
    }
    let rest = token.strip_prefix(PREFIX).ok_or(BadCredential::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(BadCredential::Malformed)?;
    if id.is_empty() || id.len() > 19 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadCredential::Malformed);
    }
    let id: i64 = id.parse().map_err(|_| BadCredential::Malformed)?;
    let secret = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| BadCredential::Malformed)?,
    );
    if secret.len() != 32 {
        return Err(BadCredential::Malformed);
    }
    Ok((id, digest(&secret)))
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Compares two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Issues a credential for `account_id`, valid for `ttl` from `now`.
pub async fn issue(
    store: &Store,
    account_id: AccountId,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<IssuedCredential, StorageError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(secret.as_mut());
    let expires_at = now + ttl;
    let id = store
        .insert_credential(account_id, digest(secret.as_ref()), now, expires_at)
        .await?;
    let token = Zeroizing::new(format!(
        "{PREFIX}{id}_{}",
        URL_SAFE_NO_PAD.encode(secret.as_ref())
    ));
    Ok(IssuedCredential {
        id,
        token,
        expires_at,
    })
}

/// Checks a presented credential against the store. `Ok(Err(_))` is a
/// rejection; `Err(_)` means the store could not answer.
pub async fn authenticate(
    store: &Store,
    token: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Result<Caller, BadCredential>, StorageError> {
    let Some(token) = token else {
        return Ok(Err(BadCredential::Malformed));
    };
    let (id, presented) = match parse(token) {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    let stored = store.credential(id).await?;
    Ok(check(stored, id, &presented, now))
}

/// Decides on a presented credential (its id and the digest of its secret)
/// given what the store holds under that id. The account's state is the
/// caller's to check: a suspension revokes the account's credentials
/// ([`AuthStore::suspend_account`]), yet a credential of a suspended
/// account still reads as that account, so that the refusal says
/// "suspended" (as before the revocation) rather than "revoked"; after a
/// reactivation it is revoked like any other.
pub fn check(
    stored: Option<(StoredCredential, AccountRecord)>,
    id: i64,
    presented: &[u8; 32],
    now: DateTime<Utc>,
) -> Result<Caller, BadCredential> {
    let Some((stored, account)) = stored else {
        return Err(BadCredential::Unknown);
    };
    let account_id = account.account_id;
    if stored.id != id || !same(&stored.secret_digest, presented) {
        Err(BadCredential::WrongSecret { account_id })
    } else if stored.revoked_at.is_some_and(|t| t <= now)
        && account.state != AccountState::Suspended
    {
        Err(BadCredential::Revoked { account_id })
    } else if stored.expires_at <= now {
        Err(BadCredential::Expired { account_id })
    } else {
        Ok(Caller {
            account,
            via: Via::Credential(id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn well_formed_tokens_parse_and_others_do_not() {
        let secret = [7u8; 32];
        let token = format!("rmp_42_{}", URL_SAFE_NO_PAD.encode(secret));
        assert_eq!(parse(&token), Ok((42, digest(&secret))));
        for bad in [
            "",
            "rmp_",
            "rmp_42",
            "rmp__abc",
            "xyz_42_AAAA",
            "rmp_-1_AAAA",
            "rmp_4x_AAAA",
            "rmp_42_!!!!",
            "rmp_42_AAAA",
            "rmp_99999999999999999999_AAAA",
        ] {
            assert_eq!(parse(bad), Err(BadCredential::Malformed), "{bad}");
        }
        let long = format!("{token}{}", "A".repeat(200));
        assert_eq!(parse(&long), Err(BadCredential::Malformed));
    }

    #[test]
    fn digests_compare_exactly() {
        let a = digest(b"a");
        let mut b = a;
        assert!(same(&a, &b));
        b[31] ^= 1;
        assert!(!same(&a, &b));
    }

    #[test]
    fn session_cookies_round_trip_and_others_do_not_parse() {
        let s = new_session();
        let (digest, handle) = parse_session(&s.cookie).unwrap();
        assert_eq!(digest, s.id_digest);
        assert_eq!(handle, s.handle);
        assert_eq!(handle.len(), 22, "16 bytes of base64url");
        assert_ne!(new_session().handle, s.handle);
        let secret = [9u8; 32];
        let cookie = format!("rms_{}", URL_SAFE_NO_PAD.encode(secret));
        assert_eq!(
            parse_session(&cookie).unwrap(),
            (digest_of(&secret), session_handle(&secret))
        );
        for bad in [
            "",
            "rms_",
            "rmp_AAAA",
            &format!("rms_{}", URL_SAFE_NO_PAD.encode([1u8; 31])),
            &format!("rms_{}", URL_SAFE_NO_PAD.encode([1u8; 33])),
            &format!("rms_{}=", URL_SAFE_NO_PAD.encode([1u8; 32])),
            &format!("{cookie}{}", "A".repeat(200)),
        ] {
            assert_eq!(
                parse_session(bad),
                Err(BadCredential::SessionMalformed),
                "{bad}"
            );
        }
        // The handle and the row key are different digests of the secret.
        assert_ne!(
            &digest_of(&secret)[..16],
            URL_SAFE_NO_PAD
                .decode(session_handle(&secret))
                .unwrap()
                .as_slice()
        );
    }

    fn digest_of(secret: &[u8; 32]) -> [u8; 32] {
        digest(secret)
    }

    #[test]
    fn session_rejections_are_told_apart_in_the_ledger_only() {
        let all = [
            BadCredential::SessionMalformed,
            BadCredential::SessionUnknown,
            BadCredential::SessionEnded {
                account_id: AccountId::new(1),
            },
            BadCredential::ProofMissing {
                account_id: AccountId::new(1),
            },
            BadCredential::ProofRefused {
                account_id: AccountId::new(1),
                error: DpopError::JktMismatch,
            },
        ];
        for r in all {
            assert!(r.is_session(), "{r:?}");
        }
        assert!(!BadCredential::Malformed.is_session());
        assert_eq!(all[0].account_id(), None);
        assert_eq!(all[4].account_id(), Some(AccountId::new(1)));
        let notes: std::collections::HashSet<_> = all.iter().map(|r| r.note()).collect();
        assert_eq!(notes.len(), all.len());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = parse(&s);
            let _ = parse_session(&s);
        }

        #[test]
        fn any_issued_shape_round_trips(id in 0i64..i64::MAX, secret in any::<[u8; 32]>()) {
            let token = format!("rmp_{id}_{}", URL_SAFE_NO_PAD.encode(secret));
            prop_assert_eq!(parse(&token), Ok((id, digest(&secret))));
        }
    }
}
