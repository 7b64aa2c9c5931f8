//! Throttling of failed logins, per account and per source address, and the
//! one refusal a login form may show.
//!
//! A pure state machine: the caller passes `now` (Unix seconds) and a
//! stored state (an account's [`AccountThrottle`], an address's
//! [`AddressThrottle`]), and persists the one it gets back by
//! compare-and-set. Every state lives in the store the instances share, so
//! an address or a login meets the same counters whichever instance its
//! attempts land on.
//!
//! # The rule
//!
//! * After the n-th consecutive failure, the next attempt must wait
//!   `base × 2^(n−1)` seconds (1, 2, 4, … with the default base), capped at
//!   `max_delay_secs`.
//! * At `lock_after` consecutive failures (10 by default, never more) the
//!   account is locked, either for `lock_secs` or until an officer unlocks
//!   it ([`LockRelease`]). When a timed lock ends the counter is *not*
//!   reset: the next failure locks again at once, so a patient attacker gets
//!   one guess per lock period, not ten. Only a successful login or an
//!   officer's unlock resets it.
//! * The same counter, backoff and lock (always timed) apply to each source
//!   address across all accounts, which is what stops one machine from
//!   trying one password on many accounts (password spraying). A successful
//!   login does **not** reset the address counter: otherwise an attacker
//!   holding one valid account could wipe their address's record between
//!   guesses. An address is forgotten after `address_forget_secs` without a
//!   failure (and not while it is locked).
//! * **Attempts during a delay or lock are refused without evaluating the
//!   password and are not counted.** Evaluating them would give a guess
//!   (and an argon2id run, a free amplifier for denial of service) to
//!   someone who is meant to be waiting; counting them would let anyone
//!   stretch a victim's lock forever by hammering the form.
//!
//! # Attempts in flight
//!
//! Checking a state, evaluating a password (argon2id, tens of
//! milliseconds) and then writing the state back lets every attempt that
//! arrives during the evaluation pass the same check: 30 parallel attempts
//! were once all evaluated and left one failure counted. So an attempt is
//! *reserved* before anything is evaluated:
//!
//! * the account's side with [`Lockout::reserve`]: the caller stores the
//!   returned state (the attempt counted as a failure) with one
//!   compare-and-set against the state it read, evaluates only if that
//!   succeeded, and on success clears the stored state, again by
//!   compare-and-set, so that a late write never erases a lock another
//!   attempt caused. Unknown logins do the same on their own stored state.
//! * the address's side with [`Lockout::admit`]: an admission holds
//!   one place among the failures the address has left before its lock, and
//!   [`Lockout::settle_address`] gives it back, counting a failure or not.
//!   An address with `k` failures left before the lock has at most `k`
//!   attempts evaluated at once (one once a timed lock has ended), so no
//!   burst gets more evaluations than a sequence would, and successful
//!   logins from a shared address (an agency behind one NAT) count nothing.
//!   A place lapses after [`ATTEMPT_LEASE_SECS`], so the places of an
//!   instance that died mid-attempt come back by themselves.
//!
//! # Addresses
//!
//! IPv4 addresses count one by one. IPv6 addresses count by /64: a single
//! customer line or host usually gets a whole /64, so counting single
//! addresses would give an attacker 2^64 fresh counters. IPv4-mapped IPv6
//! (`::ffff:a.b.c.d`) counts as the IPv4 address.
//!
//! The store holds at most `max_addresses` address states. When it is full,
//! states that may be forgotten are pruned; if none may, **the table does
//! not evict**: every address not in it shares a single overflow counter
//! ([`AddressKey::Overflow`]).
//! Evicting the oldest entry would let an attacker reset their own counter
//! by failing from enough fresh addresses (cheap with IPv6 prefixes or a
//! botnet). Sharing one counter fails closed instead: under such a flood,
//! new addresses are throttled together while the addresses already known
//! keep their own history, and the per-account limits still hold for
//! every account.
//!
//! # Unknown accounts
//!
//! A login that names no account gets an [`AccountThrottle`] of its own,
//! stored under a keyed digest of the login ([`fold_login`]), never as text
//! (what people type in the login field is sometimes their password), and
//! goes through exactly the same functions ([`Lockout::reserve`]), so its
//! delays, lock and refusals are those of a real account with the same
//! history. Like a stored account's counter, it is never forgotten with
//! time. When `max_unknown_logins` is reached, the state whose last
//! failure is oldest is evicted: resetting the counter of a login that
//! opens nothing gives an attacker nothing to guess, and the only residual
//! (an evicted unknown login looks unlocked while a real one stays locked)
//! needs that many distinct failures first.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// The most consecutive failures a policy may allow before locking.
pub const MAX_LOCK_AFTER: u32 = 10;

/// How a lock ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LockRelease {
    /// After this many seconds.
    After {
        /// Lock length.
        secs: u64,
    },
    /// Only when an officer unlocks the account.
    OfficerUnlock,
}

/// Throttling configuration. Check it with [`Lockout::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockoutPolicy {
    /// Wait after the first failure, in seconds (doubles with each failure).
    pub base_delay_secs: u64,
    /// Longest wait between two attempts, in seconds.
    pub max_delay_secs: u64,
    /// Consecutive failures that lock the account or address (1 to 10).
    pub lock_after: u32,
    /// How an account lock ends.
    pub account_lock: LockRelease,
    /// How long an address stays locked, in seconds.
    pub address_lock_secs: u64,
    /// An address with no failure for this long (and not locked) is forgotten.
    pub address_forget_secs: u64,
    /// Most addresses tracked at once.
    pub max_addresses: usize,
    /// Most unknown logins tracked at once.
    pub max_unknown_logins: usize,
}

impl Default for LockoutPolicy {
    /// 1 s doubling up to 5 min, lock at 10 failures for 30 min (accounts)
    /// or 15 min (addresses), addresses forgotten after 1 h, 100,000
    /// entries per table (a few MiB).
    ///
    /// Accounts are locked for a time rather than until an officer acts by
    /// default: with officer unlock, anyone who knows a list of logins can
    /// lock every advisor out in ten requests each. A password is never
    /// enough to log in here (the second factor is always required), so a
    /// timed lock that re-arms on the next failure is enough to stop
    /// guessing.
    fn default() -> Self {
        LockoutPolicy {
            base_delay_secs: 1,
            max_delay_secs: 300,
            lock_after: MAX_LOCK_AFTER,
            account_lock: LockRelease::After { secs: 30 * 60 },
            address_lock_secs: 15 * 60,
            address_forget_secs: 60 * 60,
            max_addresses: 100_000,
            max_unknown_logins: 100_000,
        }
    }
}

/// A [`LockoutPolicy`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockoutConfigError {
    /// `lock_after` is 0 or above [`MAX_LOCK_AFTER`].
    #[error("lock_after: must be between 1 and {MAX_LOCK_AFTER}, found {found}")]
    LockAfter {
        /// The value given.
        found: u32,
    },
    /// A duration or size that must not be zero.
    #[error("{field}: must be greater than zero")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// `max_delay_secs` below `base_delay_secs`.
    #[error("max_delay_secs: must be at least base_delay_secs")]
    MaxDelay,
}

/// A lock on an account, an address or an unknown login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lock {
    /// Locked until this Unix time.
    Until {
        /// End of the lock, Unix seconds.
        until_unix: u64,
    },
    /// Locked until an officer unlocks it.
    UntilOfficerUnlock {
        /// Start of the lock, Unix seconds.
        since_unix: u64,
    },
}

/// The throttling state of one account: the caller stores it with the
/// account and passes it back on the next attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountThrottle {
    /// Failures since the last success or unlock.
    pub consecutive_failures: u32,
    /// Time of the last failure, Unix seconds.
    pub last_failure_unix: Option<u64>,
    /// The current (or last, if timed and over) lock.
    pub lock: Option<Lock>,
}

impl AccountThrottle {
    /// Whether a lock is in force at `now_unix`.
    pub fn is_locked(&self, now_unix: u64) -> bool {
        match self.lock {
            Some(Lock::UntilOfficerUnlock { .. }) => true,
            Some(Lock::Until { until_unix }) => now_unix < until_unix,
            None => false,
        }
    }
}

/// Which counter imposed a delay (for logs; never shown to the person).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The account's counter (or the unknown login's, which mimics one).
    Account,
    /// The source address's counter.
    Address,
}

/// How long the attempt must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Backoff after a failure.
    Backoff {
        /// Seconds to wait, at least 1.
        retry_after_secs: u64,
    },
    /// A timed lock.
    Locked {
        /// Seconds to wait, at least 1.
        retry_after_secs: u64,
    },
    /// A lock only an officer can lift.
    LockedUntilUnlock,
}

impl Wait {
    /// Seconds to wait, `None` for an officer lock.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Wait::Backoff { retry_after_secs } | Wait::Locked { retry_after_secs } => {
                Some(*retry_after_secs)
            }
            Wait::LockedUntilUnlock => None,
        }
    }

    /// Orders waits by how long they hold the attempt back.
    fn severity(&self) -> u64 {
        self.retry_after_secs().unwrap_or(u64::MAX)
    }
}

/// An attempt refused before evaluating any credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    /// Whose counter.
    pub scope: Scope,
    /// How long.
    pub wait: Wait,
}

/// Where a login attempt comes from, as counted (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Prefix64(u64),
    /// Every address the table had no room for (see the module doc).
    Overflow,
}

impl AddressKey {
    /// The key an address counts under.
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(v4) => AddressKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4),
                None => AddressKey::V6Prefix64((v6.to_bits() >> 64) as u64),
            },
        }
    }

    /// The key as bytes, for the store's keyed digest: a tag, then the
    /// address or prefix (so no two keys share bytes).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            AddressKey::V4(v4) => [&[4u8][..], &v4.octets()].concat(),
            AddressKey::V6Prefix64(prefix) => [&[6u8][..], &prefix.to_be_bytes()].concat(),
            AddressKey::Overflow => vec![0],
        }
    }
}

/// How long an admitted attempt holds its address's place at most, in
/// seconds: an attempt settles in well under a second, and a place held by
/// a process that died comes back after this.
pub const ATTEMPT_LEASE_SECS: u64 = 60;

/// The throttling state of one source address (or of the overflow), which
/// the caller stores under a keyed digest of [`AddressKey::bytes`] and
/// changes by compare-and-set, like an account's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressThrottle {
    /// Failures from the address, its backoff and lock: the same rule as an
    /// account's, except that a success does not reset it.
    pub history: AccountThrottle,
    /// Attempts admitted and not settled yet.
    pub in_flight: u32,
    /// When those places lapse, Unix seconds (see [`ATTEMPT_LEASE_SECS`]).
    pub in_flight_until_unix: u64,
}

impl AddressThrottle {
    /// Attempts still holding a place at `now`.
    pub fn running(&self, now_unix: u64) -> u32 {
        if now_unix < self.in_flight_until_unix {
            self.in_flight
        } else {
            0
        }
    }
}

/// How an admitted attempt ended, as far as its address is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The credentials were evaluated and refused (or the attempt ended
    /// before anyone knows: counted, failing closed).
    Failed,
    /// The credentials were right.
    Succeeded,
    /// Refused before evaluation by the account's own wait: not counted,
    /// like any attempt refused during a wait.
    NotEvaluated,
}

/// A checked [`LockoutPolicy`] and the rule applied to stored states: pure
/// functions from a state read and `now` to the state to store, so that
/// every instance sharing the store applies the same counters.
#[derive(Debug, Clone)]
pub struct Lockout {
    policy: LockoutPolicy,
}

impl Lockout {
    /// Checks a policy.
    pub fn new(policy: LockoutPolicy) -> Result<Self, LockoutConfigError> {
        if !(1..=MAX_LOCK_AFTER).contains(&policy.lock_after) {
            return Err(LockoutConfigError::LockAfter {
                found: policy.lock_after,
            });
        }
        for (field, value) in [
            ("base_delay_secs", policy.base_delay_secs),
            ("address_lock_secs", policy.address_lock_secs),
            ("address_forget_secs", policy.address_forget_secs),
            ("max_addresses", policy.max_addresses as u64),
            ("max_unknown_logins", policy.max_unknown_logins as u64),
        ] {
            if value == 0 {
                return Err(LockoutConfigError::Zero { field });
            }
        }
        if let LockRelease::After { secs: 0 } = policy.account_lock {
            return Err(LockoutConfigError::Zero {
                field: "account_lock.secs",
            });
        }
        if policy.max_delay_secs < policy.base_delay_secs {
            return Err(LockoutConfigError::MaxDelay);
        }
        Ok(Lockout { policy })
    }

    /// The policy in force.
    pub fn policy(&self) -> &LockoutPolicy {
        &self.policy
    }

    /// Admits an attempt from an address whose stored state is `address`,
    /// on an account (or unknown login) whose state is `account`, before
    /// anything is evaluated: the address state to store (one more place
    /// taken), or how long the attempt must wait: the longer of the
    /// account's and the address's backoff or lock, or (scope address, a
    /// one-second backoff) that as many attempts as the address has
    /// failures left before its lock are already being evaluated. The
    /// account's side is then reserved with [`Self::reserve`]. See the
    /// module doc.
    pub fn admit(
        &self,
        account: &AccountThrottle,
        address: &AddressThrottle,
        now_unix: u64,
    ) -> Result<AddressThrottle, Delay> {
        let history = self.live_history(address, now_unix);
        combine(self.wait(account, now_unix), self.wait(&history, now_unix))?;
        // Past a timed lock the next failure relocks: one at a time.
        let places = self
            .policy
            .lock_after
            .saturating_sub(history.consecutive_failures)
            .max(1);
        let running = address.running(now_unix);
        if running >= places {
            return Err(Delay {
                scope: Scope::Address,
                wait: Wait::Backoff {
                    retry_after_secs: 1,
                },
            });
        }
        Ok(AddressThrottle {
            history,
            in_flight: running + 1,
            in_flight_until_unix: now_unix.saturating_add(ATTEMPT_LEASE_SECS),
        })
    }

    /// Gives back an admitted attempt's place in the stored `address`
    /// state; a failure counts against the address. Returns the state to
    /// store and whether this failure locked the address.
    pub fn settle_address(
        &self,
        address: &AddressThrottle,
        end: AttemptEnd,
        now_unix: u64,
    ) -> (AddressThrottle, bool) {
        let running = address.running(now_unix).saturating_sub(1);
        let mut next = AddressThrottle {
            history: self.live_history(address, now_unix),
            in_flight: running,
            in_flight_until_unix: if running > 0 {
                address.in_flight_until_unix
            } else {
                0
            },
        };
        if end != AttemptEnd::Failed {
            return (next, false);
        }
        let was_locked = next.history.is_locked(now_unix);
        let release = LockRelease::After {
            secs: self.policy.address_lock_secs,
        };
        next.history = self.after_failure(&next.history, release, now_unix);
        let locked = !was_locked && next.history.is_locked(now_unix);
        (next, locked)
    }

    /// When a stored address state may be forgotten (deleted): once its
    /// places have lapsed, `address_forget_secs` after its last failure,
    /// and not before its lock ends. At or before `now`, the state is
    /// no different from no state at all.
    pub fn address_forget_at(&self, address: &AddressThrottle) -> u64 {
        let places = if address.in_flight > 0 {
            address.in_flight_until_unix
        } else {
            0
        };
        forget_at(&address.history, self.policy.address_forget_secs).max(places)
    }

    /// Reserves an attempt on a known account, or on a login that names
    /// no account, before anything is evaluated: the state to store first
    /// (this attempt counted as a failure), or the wait. The caller stores
    /// it by compare-and-set against `account` and evaluates only if that
    /// wrote (module doc).
    pub fn reserve(
        &self,
        account: &AccountThrottle,
        now_unix: u64,
    ) -> Result<AccountThrottle, Delay> {
        if let Some(wait) = self.wait(account, now_unix) {
            return Err(Delay {
                scope: Scope::Account,
                wait,
            });
        }
        Ok(self.after_failure(account, self.policy.account_lock, now_unix))
    }

    /// Seconds to wait after `failures` consecutive failures.
    fn backoff_secs(&self, failures: u32) -> u64 {
        if failures == 0 {
            return 0;
        }
        let shift = (failures - 1).min(63);
        let factor = 1u64.checked_shl(shift).unwrap_or(u64::MAX);
        self.policy
            .base_delay_secs
            .saturating_mul(factor)
            .min(self.policy.max_delay_secs)
    }

    /// The wait a state imposes at `now`, if any.
    fn wait(&self, state: &AccountThrottle, now: u64) -> Option<Wait> {
        match state.lock {
            Some(Lock::UntilOfficerUnlock { .. }) => return Some(Wait::LockedUntilUnlock),
            Some(Lock::Until { until_unix }) if now < until_unix => {
                return Some(Wait::Locked {
                    retry_after_secs: until_unix - now,
                });
            }
            _ => {}
        }
        let last = state.last_failure_unix?;
        let allowed_at = last.saturating_add(self.backoff_secs(state.consecutive_failures));
        (now < allowed_at).then(|| Wait::Backoff {
            retry_after_secs: allowed_at - now,
        })
    }

    fn after_failure(
        &self,
        state: &AccountThrottle,
        release: LockRelease,
        now: u64,
    ) -> AccountThrottle {
        let failures = state.consecutive_failures.saturating_add(1);
        let lock = if failures >= self.policy.lock_after {
            Some(match release {
                LockRelease::After { secs } => Lock::Until {
                    until_unix: now.saturating_add(secs),
                },
                LockRelease::OfficerUnlock => Lock::UntilOfficerUnlock { since_unix: now },
            })
        } else {
            state.lock
        };
        AccountThrottle {
            consecutive_failures: failures,
            last_failure_unix: Some(now),
            lock,
        }
    }

    /// The address's failures in force: a forgettable history counts as
    /// clean.
    fn live_history(&self, address: &AddressThrottle, now: u64) -> AccountThrottle {
        if now < forget_at(&address.history, self.policy.address_forget_secs) {
            address.history.clone()
        } else {
            AccountThrottle::default()
        }
    }
}

/// The longer of an account's and an address's waits, if any.
fn combine(account: Option<Wait>, address: Option<Wait>) -> Result<(), Delay> {
    let delay = match (account, address) {
        (None, None) => return Ok(()),
        (Some(wait), None) => Delay {
            scope: Scope::Account,
            wait,
        },
        (None, Some(wait)) => Delay {
            scope: Scope::Address,
            wait,
        },
        (Some(account), Some(address)) => {
            if address.severity() > account.severity() {
                Delay {
                    scope: Scope::Address,
                    wait: address,
                }
            } else {
                Delay {
                    scope: Scope::Account,
                    wait: account,
                }
            }
        }
    };
    Err(delay)
}

/// A login as the unknown-login counter keys it: trimmed and lower-cased,
/// so that `Nobody ` and `nobody` share one counter.
pub fn fold_login(login: &str) -> String {
    login.trim().chars().flat_map(char::to_lowercase).collect()
}

/// When an address entry may be forgotten: `forget_secs` after its last
/// failure, and not before its lock ends.
fn forget_at(state: &AccountThrottle, forget_secs: u64) -> u64 {
    let after_failure = state
        .last_failure_unix
        .map_or(0, |t| t.saturating_add(forget_secs));
    let after_lock = match state.lock {
        Some(Lock::Until { until_unix }) => until_unix,
        Some(Lock::UntilOfficerUnlock { .. }) => u64::MAX,
        None => 0,
    };
    after_failure.max(after_lock)
}

/// The message shown for every credential failure.
pub const INVALID_CREDENTIALS_FR: &str = "Identifiant ou mot de passe incorrect, ou code invalide.";

/// Why a login was refused. The variants keep the true reason for the
/// audit log; what the person sees ([`Self::message_fr`], also `Display`)
/// is the same for every credential failure, so it never tells whether
/// the account exists, and the throttling messages are the same for
/// existing and unknown accounts (their counters behave alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// No account has this login.
    UnknownAccount,
    /// The account exists but may not log in (requested, suspended, disabled).
    AccountUnavailable,
    /// The password does not match (or could not be read).
    WrongPassword,
    /// The second-factor code does not match, is malformed, or was used before.
    WrongCode,
    /// Too many failures: wait.
    TooManyAttempts {
        /// Seconds to wait, at least 1.
        retry_after_secs: u64,
    },
    /// Too many failures: locked until an officer unlocks.
    LockedUntilUnlock,
}

impl LoginRefusal {
    /// What the login page shows, in French.
    pub fn message_fr(&self) -> String {
        match self {
            LoginRefusal::UnknownAccount
            | LoginRefusal::AccountUnavailable
            | LoginRefusal::WrongPassword
            | LoginRefusal::WrongCode => INVALID_CREDENTIALS_FR.to_owned(),
            LoginRefusal::TooManyAttempts { retry_after_secs } => {
                format!(
                    "Trop de tentatives. Réessayez dans {}.",
                    french_duration(*retry_after_secs)
                )
            }
            LoginRefusal::LockedUntilUnlock => "Trop de tentatives : l'accès est bloqué. \
                 Contactez votre référent sécurité pour le faire débloquer."
                .to_owned(),
        }
    }

    /// Whether this is a throttling refusal (the page may say so, and the
    /// answer may carry `Retry-After`).
    pub fn is_throttled(&self) -> bool {
        matches!(
            self,
            LoginRefusal::TooManyAttempts { .. } | LoginRefusal::LockedUntilUnlock
        )
    }

    /// Seconds for a `Retry-After` header, when there is a known end.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            LoginRefusal::TooManyAttempts { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

impl From<Delay> for LoginRefusal {
    fn from(delay: Delay) -> Self {
        match delay.wait {
            Wait::Backoff { retry_after_secs } | Wait::Locked { retry_after_secs } => {
                LoginRefusal::TooManyAttempts { retry_after_secs }
            }
            Wait::LockedUntilUnlock => LoginRefusal::LockedUntilUnlock,
        }
    }
}

impl fmt::Display for LoginRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message_fr())
    }
}

/// "1 seconde", "42 secondes", "5 minutes" (rounded up from 2 minutes on).
fn french_duration(secs: u64) -> String {
    if secs < 120 {
        let secs = secs.max(1);
        if secs == 1 {
            "1 seconde".to_owned()
        } else {
            format!("{secs} secondes")
        }
    } else {
        format!("{} minutes", secs.div_ceil(60))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_790_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn lockout() -> Lockout {
        Lockout::new(LockoutPolicy::default()).unwrap()
    }

    /// The rule over in-memory tables standing for the store's (the store
    /// and its bounds are tested with the store): an attempt checked and
    /// recorded in one step, nothing evaluated in between.
    struct Sim {
        l: Lockout,
        addresses: HashMap<AddressKey, AddressThrottle>,
        unknown: HashMap<String, AccountThrottle>,
    }

    impl Sim {
        fn new(policy: LockoutPolicy) -> Sim {
            Sim {
                l: Lockout::new(policy).unwrap(),
                addresses: HashMap::new(),
                unknown: HashMap::new(),
            }
        }

        fn address(&self, addr: IpAddr) -> AddressThrottle {
            let key = AddressKey::of(addr);
            self.addresses.get(&key).cloned().unwrap_or_default()
        }

        fn check(&self, state: &AccountThrottle, addr: IpAddr, now: u64) -> Result<(), Delay> {
            self.l.admit(state, &self.address(addr), now).map(|_| ())
        }

        /// A failure, after `check` allowed the attempt.
        fn record_failure(
            &mut self,
            state: &AccountThrottle,
            addr: IpAddr,
            now: u64,
        ) -> AccountThrottle {
            let admitted = self.l.admit(state, &self.address(addr), now).unwrap();
            let next = self.l.reserve(state, now).unwrap();
            let (settled, _) = self.l.settle_address(&admitted, AttemptEnd::Failed, now);
            self.addresses.insert(AddressKey::of(addr), settled);
            next
        }

        fn check_unknown(&self, login: &str, addr: IpAddr, now: u64) -> Result<(), Delay> {
            let state = self.unknown.get(&fold_login(login)).cloned();
            self.check(&state.unwrap_or_default(), addr, now)
        }

        fn record_unknown_failure(&mut self, login: &str, addr: IpAddr, now: u64) {
            let state = self.unknown.get(&fold_login(login)).cloned();
            let next = self.record_failure(&state.unwrap_or_default(), addr, now);
            self.unknown.insert(fold_login(login), next);
        }

        fn unlock_address(&mut self, addr: IpAddr) {
            self.addresses.remove(&AddressKey::of(addr));
        }
    }

    fn sim() -> Sim {
        Sim::new(LockoutPolicy::default())
    }

    /// Fails `n` times as soon as allowed; returns the state and the time
    /// of the last failure.
    fn fail_n(l: &mut Sim, n: u32, addr: IpAddr) -> (AccountThrottle, u64) {
        let mut state = AccountThrottle::default();
        let mut now = T0;
        for _ in 0..n {
            now = wait_until_allowed(l, &state, addr, now);
            state = l.record_failure(&state, addr, now);
        }
        (state, now)
    }

    fn wait_until_allowed(l: &Sim, state: &AccountThrottle, addr: IpAddr, now: u64) -> u64 {
        match l.check(state, addr, now) {
            Ok(()) => now,
            Err(Delay {
                wait: Wait::Backoff { retry_after_secs },
                ..
            }) => now + retry_after_secs,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_after_each_failure() {
        let mut l = sim();
        let addr = ip("192.0.2.1");
        let mut state = AccountThrottle::default();
        let mut now = T0;
        for (i, expected) in [1u64, 2, 4, 8, 16, 32, 64, 128, 256]
            .into_iter()
            .enumerate()
        {
            assert_eq!(l.check(&state, addr, now), Ok(()), "attempt {}", i + 1);
            state = l.record_failure(&state, addr, now);
            assert_eq!(
                l.check(&state, addr, now),
                Err(Delay {
                    scope: Scope::Account,
                    wait: Wait::Backoff {
                        retry_after_secs: expected
                    }
                }),
                "after failure {}",
                i + 1
            );
            assert!(l.check(&state, addr, now + expected - 1).is_err());
            now += expected;
        }
        assert_eq!(state.consecutive_failures, 9);
        assert!(!state.is_locked(now));
    }

    #[test]
    fn ten_wrong_passwords_lock_the_account() {
        let mut l = sim();
        let (state, now) = fail_n(&mut l, 10, ip("192.0.2.1"));
        assert_eq!(state.consecutive_failures, 10);
        assert_eq!(
            state.lock,
            Some(Lock::Until {
                until_unix: now + 1800
            })
        );
        // From another address too: the account itself is locked.
        assert_eq!(
            l.check(&state, ip("198.51.100.7"), now + 1),
            Err(Delay {
                scope: Scope::Account,
                wait: Wait::Locked {
                    retry_after_secs: 1799
                }
            })
        );
        // The lock ends; the next failure locks again at once.
        assert_eq!(l.check(&state, ip("198.51.100.7"), now + 1800), Ok(()));
        let again = l.record_failure(&state, ip("198.51.100.7"), now + 1800);
        assert!(again.is_locked(now + 1801));
        // A success after the lock resets the counter.
        let ok = AccountThrottle::default();
        assert_eq!(ok, AccountThrottle::default());
        assert_eq!(l.check(&ok, ip("198.51.100.8"), now + 1800), Ok(()));
    }

    #[test]
    fn officer_unlock_policy_locks_until_unlocked() {
        let policy = LockoutPolicy {
            account_lock: LockRelease::OfficerUnlock,
            lock_after: 5,
            ..LockoutPolicy::default()
        };
        let mut l = Sim::new(policy);
        let (state, now) = fail_n(&mut l, 5, ip("192.0.2.1"));
        assert_eq!(
            state.lock,
            Some(Lock::UntilOfficerUnlock { since_unix: now })
        );
        let years_later = now + 10 * 365 * 86_400;
        assert_eq!(
            l.check(&state, ip("198.51.100.7"), years_later),
            Err(Delay {
                scope: Scope::Account,
                wait: Wait::LockedUntilUnlock
            })
        );
        let unlocked = AccountThrottle::default();
        assert_eq!(l.check(&unlocked, ip("198.51.100.7"), years_later), Ok(()));
    }

    #[test]
    fn policy_is_validated() {
        for lock_after in [0, 11] {
            let p = LockoutPolicy {
                lock_after,
                ..LockoutPolicy::default()
            };
            assert_eq!(
                Lockout::new(p).unwrap_err(),
                LockoutConfigError::LockAfter { found: lock_after }
            );
        }
        let p = LockoutPolicy {
            max_addresses: 0,
            ..LockoutPolicy::default()
        };
        assert_eq!(
            Lockout::new(p).unwrap_err(),
            LockoutConfigError::Zero {
                field: "max_addresses"
            }
        );
        let p = LockoutPolicy {
            account_lock: LockRelease::After { secs: 0 },
            ..LockoutPolicy::default()
        };
        assert!(Lockout::new(p).is_err());
        let p = LockoutPolicy {
            base_delay_secs: 10,
            max_delay_secs: 5,
            ..LockoutPolicy::default()
        };
        assert_eq!(Lockout::new(p).unwrap_err(), LockoutConfigError::MaxDelay);
    }

    #[test]
    fn backoff_is_capped() {
        let policy = LockoutPolicy {
            max_delay_secs: 10,
            ..LockoutPolicy::default()
        };
        let l = Lockout::new(policy).unwrap();
        assert_eq!(l.backoff_secs(1), 1);
        assert_eq!(l.backoff_secs(4), 8);
        assert_eq!(l.backoff_secs(5), 10);
        assert_eq!(l.backoff_secs(u32::MAX), 10);
    }

    #[test]
    fn success_resets_the_account_but_not_the_address() {
        let mut l = sim();
        let addr = ip("192.0.2.1");
        let (_, now) = fail_n(&mut l, 3, addr);
        let state = AccountThrottle::default();
        // Another account from the same address still waits the address's
        // backoff (3 failures: 4 s).
        assert_eq!(
            l.check(&state, addr, now + 1),
            Err(Delay {
                scope: Scope::Address,
                wait: Wait::Backoff {
                    retry_after_secs: 3
                }
            })
        );
    }

    #[test]
    fn one_address_spraying_many_accounts_is_locked() {
        let mut l = sim();
        let addr = ip("203.0.113.9");
        let mut now = T0;
        for i in 0..10 {
            // A different fresh account each time.
            let fresh = AccountThrottle::default();
            loop {
                match l.check(&fresh, addr, now) {
                    Ok(()) => break,
                    Err(d) => {
                        assert_eq!(d.scope, Scope::Address, "try {i}");
                        now += d.wait.retry_after_secs().unwrap();
                    }
                }
            }
            let after = l.record_failure(&fresh, addr, now);
            assert_eq!(after.consecutive_failures, 1);
        }
        assert_eq!(
            l.check(&AccountThrottle::default(), addr, now + 1),
            Err(Delay {
                scope: Scope::Address,
                wait: Wait::Locked {
                    retry_after_secs: 899
                }
            })
        );
        // Other addresses are not affected.
        assert_eq!(
            l.check(&AccountThrottle::default(), ip("203.0.113.10"), now + 1),
            Ok(())
        );
        // An officer can lift it.
        l.unlock_address(addr);
        assert_eq!(l.check(&AccountThrottle::default(), addr, now + 1), Ok(()));
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            AddressKey::of(ip("2001:db8:1:2:aaaa::1")),
            AddressKey::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            AddressKey::of(ip("2001:db8:1:2::1")),
            AddressKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            AddressKey::of(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped())),
            AddressKey::V4(Ipv4Addr::new(192, 0, 2, 1))
        );
        let mut l = sim();
        let _ = l.record_failure(&AccountThrottle::default(), ip("2001:db8:1:2::1"), T0);
        // A neighbour in the same /64 inherits the backoff.
        assert!(matches!(
            l.check(&AccountThrottle::default(), ip("2001:db8:1:2::abcd"), T0),
            Err(Delay {
                scope: Scope::Address,
                ..
            })
        ));
    }

    #[test]
    fn addresses_are_forgotten_after_the_window_but_not_while_locked() {
        let mut l = sim();
        let addr = ip("192.0.2.1");
        let (_, now) = fail_n(&mut l, 10, addr);
        let fresh = AccountThrottle::default();
        // Locked 15 min although the forget window (1 h) counts from the
        // last failure: after the lock ends but inside the window, the
        // counter is still 10, so one more failure relocks.
        assert_eq!(l.check(&fresh, addr, now + 900), Ok(()));
        let _ = l.record_failure(&fresh, addr, now + 900);
        assert!(l.check(&fresh, addr, now + 901).is_err());
        // An hour without failure after the last lock: forgotten.
        let later = now + 900 + 900 + 3600;
        assert_eq!(l.check(&fresh, addr, later), Ok(()));
        let _ = l.record_failure(&fresh, addr, later);
        assert_eq!(
            l.check(&fresh, addr, later),
            Err(Delay {
                scope: Scope::Address,
                wait: Wait::Backoff {
                    retry_after_secs: 1
                }
            })
        );
    }

    #[test]
    fn unknown_accounts_are_throttled_exactly_like_known_ones() {
        // Same history on a known account and on an unknown login, from two
        // different addresses so the address counters are equal too.
        let mut l = sim();
        let known_addr = ip("192.0.2.1");
        let unknown_addr = ip("192.0.2.2");
        let mut known = AccountThrottle::default();
        let mut now = T0;
        for _ in 0..12 {
            let a = l.check(&known, known_addr, now);
            let b = l.check_unknown("Nobody.Here", unknown_addr, now);
            assert_eq!(a, b, "at {}", now - T0);
            let refusal_a = a.err().map(LoginRefusal::from).map(|r| r.message_fr());
            let refusal_b = b.err().map(LoginRefusal::from).map(|r| r.message_fr());
            assert_eq!(refusal_a, refusal_b);
            if a.is_ok() {
                known = l.record_failure(&known, known_addr, now);
                l.record_unknown_failure("nobody.here ", unknown_addr, now);
            }
            now += 1 + (now - T0) % 7;
        }
        assert_eq!(l.unknown.get("nobody.here"), Some(&known));
        assert!(
            known.consecutive_failures >= 5,
            "the run should reach deep backoff"
        );
    }

    #[test]
    fn refusal_messages_do_not_reveal_the_account() {
        let same = [
            LoginRefusal::UnknownAccount,
            LoginRefusal::AccountUnavailable,
            LoginRefusal::WrongPassword,
            LoginRefusal::WrongCode,
        ];
        for r in same {
            assert_eq!(r.message_fr(), INVALID_CREDENTIALS_FR);
            assert_eq!(r.to_string(), INVALID_CREDENTIALS_FR);
            assert!(!r.is_throttled());
        }
        let wait = LoginRefusal::TooManyAttempts {
            retry_after_secs: 42,
        };
        assert_eq!(
            wait.message_fr(),
            "Trop de tentatives. Réessayez dans 42 secondes."
        );
        assert_eq!(wait.retry_after_secs(), Some(42));
        assert!(wait.is_throttled());
        assert_eq!(
            LoginRefusal::TooManyAttempts {
                retry_after_secs: 1
            }
            .message_fr(),
            "Trop de tentatives. Réessayez dans 1 seconde."
        );
        assert_eq!(
            LoginRefusal::TooManyAttempts {
                retry_after_secs: 1799
            }
            .message_fr(),
            "Trop de tentatives. Réessayez dans 30 minutes."
        );
        assert_ne!(
            LoginRefusal::LockedUntilUnlock.message_fr(),
            INVALID_CREDENTIALS_FR
        );
        assert_eq!(
            LoginRefusal::from(Delay {
                scope: Scope::Address,
                wait: Wait::Locked {
                    retry_after_secs: 5
                }
            }),
            LoginRefusal::TooManyAttempts {
                retry_after_secs: 5
            }
        );
    }

    #[test]
    fn a_reserved_attempt_is_counted_before_it_is_evaluated() {
        let l = lockout();
        let read = AccountThrottle::default();
        // The first of many parallel attempts reserves: counted at once.
        let stored = l.reserve(&read, T0).unwrap();
        assert_eq!(stored.consecutive_failures, 1);
        // Every other one, having lost the compare-and-set and read again,
        // waits the backoff: refused unevaluated.
        assert_eq!(
            l.reserve(&stored, T0),
            Err(Delay {
                scope: Scope::Account,
                wait: Wait::Backoff {
                    retry_after_secs: 1
                }
            })
        );
        // Reserving as fast as allowed locks at the tenth evaluation.
        let mut state = AccountThrottle::default();
        let mut now = T0;
        let mut evaluated = 0;
        while !state.is_locked(now) {
            match l.reserve(&state, now) {
                Ok(next) => {
                    state = next;
                    evaluated += 1;
                }
                Err(d) => now += d.wait.retry_after_secs().unwrap(),
            }
        }
        assert_eq!(evaluated, 10);
    }

    #[test]
    fn an_address_evaluates_at_once_no_more_than_its_failures_left() {
        let l = lockout();
        let fresh = AccountThrottle::default();
        let mut address = AddressThrottle::default();
        for i in 0..10 {
            address = l
                .admit(&fresh, &address, T0)
                .unwrap_or_else(|d| panic!("{i}: {d:?}"));
        }
        assert_eq!(address.running(T0), 10);
        assert_eq!(
            l.admit(&fresh, &address, T0),
            Err(Delay {
                scope: Scope::Address,
                wait: Wait::Backoff {
                    retry_after_secs: 1
                }
            })
        );
        // Another address is not held back.
        let other = l.admit(&fresh, &AddressThrottle::default(), T0).unwrap();
        let (other, locked) = l.settle_address(&other, AttemptEnd::Succeeded, T0);
        assert!(!locked);
        assert_eq!(l.address_forget_at(&other), 0, "nothing left to keep");
        // Nine fail, the tenth too: the tenth failure locks the address.
        let mut locks = Vec::new();
        for _ in 0..10 {
            let (next, locked) = l.settle_address(&address, AttemptEnd::Failed, T0);
            address = next;
            locks.push(locked);
        }
        assert_eq!(locks.iter().filter(|&&b| b).count(), 1);
        assert!(locks[9]);
        assert_eq!(address.running(T0), 0);
        assert!(matches!(
            l.admit(&fresh, &address, T0 + 1),
            Err(Delay {
                wait: Wait::Locked { .. },
                ..
            })
        ));
        // After the timed lock: one attempt at a time.
        let after = T0 + 900;
        let one = l.admit(&fresh, &address, after).unwrap();
        assert!(l.admit(&fresh, &one, after).is_err());
        assert!(l.settle_address(&one, AttemptEnd::Failed, after).1);
    }

    #[test]
    fn places_come_back_and_successes_count_nothing() {
        let l = lockout();
        let fresh = AccountThrottle::default();
        let mut address = AddressThrottle::default();
        // An agency behind one address: a thousand logins, none failed.
        for _ in 0..1000 {
            let held = l.admit(&fresh, &address, T0).unwrap();
            let (next, locked) = l.settle_address(&held, AttemptEnd::Succeeded, T0);
            assert!(!locked);
            address = next;
        }
        let held = l.admit(&fresh, &address, T0).unwrap();
        address = l.settle_address(&held, AttemptEnd::NotEvaluated, T0).0;
        assert_eq!(address, AddressThrottle::default());
        // Three failures (after their backoffs) leave seven places.
        for at in [T0, T0 + 1, T0 + 3] {
            let held = l.admit(&fresh, &address, at).unwrap();
            address = l.settle_address(&held, AttemptEnd::Failed, at).0;
        }
        let now = T0 + 7;
        for _ in 0..7 {
            address = l.admit(&fresh, &address, now).unwrap();
        }
        assert!(l.admit(&fresh, &address, now).is_err());
        address = l.settle_address(&address, AttemptEnd::Succeeded, now).0;
        address = l.admit(&fresh, &address, now).unwrap();
        assert_eq!(address.running(now), 7);
        // Kept while places are held, then forgettable an hour after the
        // last failure.
        assert_eq!(l.address_forget_at(&address), T0 + 3 + 3600);
    }

    #[test]
    fn places_of_an_attempt_that_never_settles_lapse() {
        let l = lockout();
        let fresh = AccountThrottle::default();
        let mut address = AddressThrottle::default();
        for _ in 0..10 {
            address = l.admit(&fresh, &address, T0).unwrap();
        }
        // The instance holding them died: refused until the lease lapses.
        let lapse = T0 + ATTEMPT_LEASE_SECS;
        assert!(l.admit(&fresh, &address, lapse - 1).is_err());
        assert_eq!(l.address_forget_at(&address), lapse);
        let again = l.admit(&fresh, &address, lapse).unwrap();
        assert_eq!(again.running(lapse), 1);
        // A late settlement of a lapsed place never goes below zero.
        let (settled, _) = l.settle_address(&address, AttemptEnd::Succeeded, lapse);
        assert_eq!(settled.running(lapse), 0);
    }

    #[test]
    fn unknown_logins_are_folded_before_they_are_keyed() {
        assert_eq!(fold_login("  Nobody.HERE "), "nobody.here");
        assert_eq!(fold_login("ÉLODIE"), "élodie");
        assert_ne!(
            AddressKey::of(ip("0.0.0.0")).bytes(),
            AddressKey::Overflow.bytes()
        );
        assert_ne!(
            AddressKey::of(ip("0.0.0.4")).bytes(),
            AddressKey::of(ip("::4:0:0:0:0")).bytes()
        );
    }

    #[test]
    fn account_throttle_serialises_for_storage() {
        let mut l = sim();
        let (state, _) = fail_n(&mut l, 10, ip("192.0.2.1"));
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"kind\":\"until\""), "{json}");
        let back: AccountThrottle = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
    }

    proptest! {
        /// Whatever the history, a checked attempt is never refused for
        /// longer than the policy allows, and a refusal always says how long.
        #[test]
        fn waits_stay_within_policy(
            steps in proptest::collection::vec((0u64..400, any::<bool>(), 0u8..4), 1..60)
        ) {
            let mut l = sim();
            let mut state = AccountThrottle::default();
            let mut now = T0;
            for (advance, fail, addr_byte) in steps {
                now += advance;
                let addr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, addr_byte));
                match l.check(&state, addr, now) {
                    Ok(()) => {
                        state = if fail { l.record_failure(&state, addr, now) } else { AccountThrottle::default() };
                    }
                    Err(d) => {
                        let secs = d.wait.retry_after_secs().unwrap();
                        prop_assert!(secs >= 1);
                        prop_assert!(secs <= 1800);
                    }
                }
                prop_assert!(state.consecutive_failures <= 60);
            }
        }
    }
}
