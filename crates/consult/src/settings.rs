//! What a [`Consultation`](crate::kernel::Consultation) is configured with for
//! browser login and API clients, checked, and the state built from it
//! that every request shares ([`Web`], [`Clients`]); and the breach
//! register's stores ([`Register`]). The settings types are public under
//! `login` and `clients` too; the state is the kernel's to hold and the
//! operations' to use. Nothing here touches the store or the ledger.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration as StdDuration;

use chrono::Duration;
use rempart_auth::access_token;
use rempart_auth::client_assertion::AssertionPolicy;
use rempart_auth::dpop::ReplayCache;
use rempart_auth::lockout::{Lockout, LockoutPolicy};
use rempart_auth::passkey::{Passkeys, RP_NAME};
use rempart_auth::password::{HashParams, PasswordHasher};
use rempart_storage::{IncidentStore, NoticeStore};

// -------------------------------------------------------------------------
// Browser login
// -------------------------------------------------------------------------

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
    pub(crate) passkeys: Passkeys,
    pub(crate) hasher: PasswordHasher,
    /// The login throttle's rule (its states are in the store).
    pub(crate) lockout: Lockout,
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
            lockout,
            replay: Mutex::new(replay),
            login_replay: Mutex::new(login_replay),
        })
    }
}

impl Web {
    /// Failures that lock an account or an address (the alerts' baseline).
    pub(crate) fn lockout_after(&self) -> u32 {
        self.lockout.policy().lock_after
    }
}

pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Both guarded values stay consistent if a holder panicked: every
    // update completes before the guard is released.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// -------------------------------------------------------------------------
// API clients
// -------------------------------------------------------------------------

/// Where the token endpoint is served, under the public URL.
pub const TOKEN_PATH: &str = "/api/v1/token";

/// API client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// The public URL clients reach the server at (scheme, host, port; no
    /// path): the issuer assertions name, and the base of every `htu`.
    pub public_url: String,
    /// How long an access token lives (1 s to 1 h; 5 min by default).
    pub token_ttl: StdDuration,
}

/// A [`ClientSettings`] value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientConfigError {
    /// The public URL is not `http(s)://host[:port]`.
    #[error("public_url: {0}")]
    PublicUrl(&'static str),
    /// The token lifetime is out of range.
    #[error("token_ttl: must be 1 s to {} s", access_token::MAX_TTL.as_secs())]
    TokenTtl,
}

impl ClientSettings {
    /// Settings for a server reached at `public_url` (e.g.
    /// `https://rempart.example`), tokens living 5 minutes.
    pub fn new(public_url: &str) -> Result<Self, ClientConfigError> {
        let url = public_url.trim_end_matches('/');
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or(ClientConfigError::PublicUrl(
                "must start with https:// or http://",
            ))?;
        if rest.is_empty() || rest.starts_with(':') {
            return Err(ClientConfigError::PublicUrl("has no host"));
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(ClientConfigError::PublicUrl(
                "must be scheme, host and port only",
            ));
        }
        // The same normalisation proofs get: a URL it refuses would make
        // every proof fail.
        rempart_auth::dpop::Htu::parse(&format!("{url}{TOKEN_PATH}"))
            .map_err(|_| ClientConfigError::PublicUrl("is not a valid http(s) URL"))?;
        Ok(ClientSettings {
            public_url: url.to_owned(),
            token_ttl: access_token::DEFAULT_TTL,
        })
    }
}

/// What the token endpoint needs at run time.
pub(crate) struct Clients {
    pub(crate) settings: ClientSettings,
    pub(crate) token_endpoint: String,
    pub(crate) policy: AssertionPolicy,
}

impl Clients {
    /// Checks the settings and builds what they describe.
    pub(crate) fn new(settings: ClientSettings) -> Result<Clients, ClientConfigError> {
        if settings.token_ttl.is_zero() || settings.token_ttl > access_token::MAX_TTL {
            return Err(ClientConfigError::TokenTtl);
        }
        let token_endpoint = format!("{}{TOKEN_PATH}", settings.public_url);
        let policy = AssertionPolicy::new(&settings.public_url, &token_endpoint);
        Ok(Clients {
            settings,
            token_endpoint,
            policy,
        })
    }
}

/// The breach register's stores, on the registry's database.
#[derive(Clone)]
pub struct Register {
    /// Incidents and their timelines.
    pub incidents: Arc<dyn IncidentStore>,
    /// Their notices (for where delivery stands).
    pub notices: Arc<dyn NoticeStore>,
}
