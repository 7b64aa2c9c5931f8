//! Throttling of failed logins, per account and per source address, and the
//! one refusal a login form may show.
//!
//! A pure state machine: the caller passes `now` (Unix seconds) and the
//! account's stored [`AccountThrottle`], and persists the one it gets back.
//! The per-address state, and the state of logins that name no account, live
//! in the [`Lockout`] value itself (memory only, bounded).
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
//!   succeeded, and on success replaces the stored state with
//!   [`Lockout::record_success`]'s, again by compare-and-set, so that a
//!   late write never erases a lock another attempt caused. Unknown logins
//!   do the same in memory ([`Lockout::reserve_unknown`]).
//! * the address's side with [`Lockout::admit`]: an admission holds
//!   one place among the failures the address has left before its lock, and
//!   [`Lockout::settle_address`] gives it back, counting a failure or not.
//!   An address with `k` failures left before the lock has at most `k`
//!   attempts evaluated at once (one once a timed lock has ended), so no
//!   burst gets more evaluations than a sequence would, and successful
//!   logins from a shared address (an agency behind one NAT) count nothing.
//!
//! # Addresses
//!
//! IPv4 addresses count one by one. IPv6 addresses count by /64: a single
//! customer line or host usually gets a whole /64, so counting single
//! addresses would give an attacker 2^64 fresh counters. IPv4-mapped IPv6
//! (`::ffff:a.b.c.d`) counts as the IPv4 address.
//!
//! The address table holds at most `max_addresses` entries. When it is full,
//! entries that may be forgotten are pruned; if none may, **the table does
//! not evict**: every address not in it shares a single overflow counter.
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
//! kept here under a keyed hash of the login (case-folded), and goes through exactly the same
//! functions ([`Lockout::check_unknown`], [`Lockout::record_unknown_failure`]),
//! so its delays, lock and refusals are those of a real account with the
//! same history. Like a stored account's counter, it is never forgotten
//! with time. When `max_unknown_logins` is reached, the entry whose last
//! failure is oldest is evicted: resetting the counter of a login that
//! opens nothing gives an attacker nothing to guess, and the only residual
//! (an evicted unknown login looks unlocked while a real one stays locked)
//! needs that many distinct failures first. A process restart forgets
//! these entries too.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
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

/// A lock on an account (or on an address or unknown login, in memory).
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
}

/// The throttle: a checked policy, the address table and the unknown-login
/// table. One per process, behind the caller's lock.
///
/// Unknown logins are kept as keyed 64-bit hashes (SipHash under a random
/// per-process key), never as text: what people type in the login field
/// is sometimes their password. Two logins sharing a hash would only share
/// a counter.
pub struct Lockout {
    policy: LockoutPolicy,
    addresses: HashMap<AddressKey, AccountThrottle>,
    /// Shared by every address not in the table while it is full.
    address_overflow: AccountThrottle,
    /// No address entry can be forgotten before this time: skips futile
    /// scans of a full table.
    prune_not_before: u64,
    unknown: HashMap<u64, AccountThrottle>,
    login_hasher: RandomState,
    /// Attempts admitted and not yet settled, per address: entries exist
    /// only while attempts run, so the map is bounded by concurrency.
    in_flight: HashMap<AddressKey, u32>,
}

/// What a login attempt names, for [`Lockout::admit`].
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A known account, with the throttle state read with it.
    Account(&'a AccountThrottle),
    /// A login that names no account (kept here).
    UnknownLogin(&'a str),
}

/// An attempt the address's counter let through ([`Lockout::admit`]).
/// It holds one of the address's places until [`Lockout::settle_address`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "settle the admission once the attempt has ended"]
pub struct AddressAdmission {
    key: AddressKey,
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

impl fmt::Debug for Lockout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lockout")
            .field("policy", &self.policy)
            .field("tracked_addresses", &self.addresses.len())
            .field("tracked_unknown_logins", &self.unknown.len())
            .finish_non_exhaustive()
    }
}

impl Lockout {
    /// A throttle with empty tables.
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
        Ok(Lockout {
            policy,
            addresses: HashMap::new(),
            address_overflow: AccountThrottle::default(),
            prune_not_before: 0,
            unknown: HashMap::new(),
            login_hasher: RandomState::new(),
            in_flight: HashMap::new(),
        })
    }

    /// Admits an attempt on `target` from `addr` before anything is
    /// evaluated, or says how long it must wait: the longer of the
    /// account's and the address's backoff or lock, or (scope address, a
    /// one-second backoff) that as many attempts as the address has
    /// failures left before its lock are already being evaluated. The
    /// account's side is then reserved with [`Self::reserve`] or
    /// [`Self::reserve_unknown`]. See the module doc.
    pub fn admit(
        &mut self,
        target: Target<'_>,
        addr: IpAddr,
        now_unix: u64,
    ) -> Result<AddressAdmission, Delay> {
        let account_wait = match target {
            Target::Account(state) => self.wait(state, now_unix),
            Target::UnknownLogin(login) => self
                .unknown
                .get(&self.login_key(login))
                .and_then(|state| self.wait(state, now_unix)),
        };
        self.combine(account_wait, addr, now_unix)?;
        let key = AddressKey::of(addr);
        let failures = self
            .live_address_state(key, now_unix)
            .map_or(0, |state| state.consecutive_failures);
        // Past a timed lock the next failure relocks: one at a time.
        let places = self.policy.lock_after.saturating_sub(failures).max(1);
        let running = self.in_flight.get(&key).copied().unwrap_or(0);
        if running >= places {
            return Err(Delay {
                scope: Scope::Address,
                wait: Wait::Backoff {
                    retry_after_secs: 1,
                },
            });
        }
        self.in_flight.insert(key, running + 1);
        Ok(AddressAdmission { key })
    }

    /// Gives back an admission's place; a failure counts against the
    /// address. Returns whether this failure locked the address.
    pub fn settle_address(
        &mut self,
        admission: AddressAdmission,
        end: AttemptEnd,
        now_unix: u64,
    ) -> bool {
        let key = admission.key;
        if let Some(running) = self.in_flight.get_mut(&key) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                self.in_flight.remove(&key);
            }
        }
        if end != AttemptEnd::Failed {
            return false;
        }
        let was_locked = self.address_locked(key, now_unix);
        self.record_address_failure(key, now_unix);
        !was_locked && self.address_locked(key, now_unix)
    }

    /// Reserves an attempt on a known account before anything is evaluated:
    /// the state to store first (this attempt counted as a failure), or the
    /// account's wait. The caller stores it by compare-and-set against
    /// `account` and evaluates only if that wrote (module doc).
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

    /// [`Self::reserve`] for a login that names no account, kept here: the
    /// attempt is counted at once (it can never succeed). Returns the state
    /// after it, which says whether it locked.
    pub fn reserve_unknown(
        &mut self,
        login: &str,
        now_unix: u64,
    ) -> Result<AccountThrottle, Delay> {
        let key = self.login_key(login);
        let current = self.unknown.get(&key).cloned().unwrap_or_default();
        let next = self.reserve(&current, now_unix)?;
        if !self.unknown.contains_key(&key) && self.unknown.len() >= self.policy.max_unknown_logins
        {
            self.evict_oldest_unknown();
        }
        self.unknown.insert(key, next.clone());
        Ok(next)
    }

    /// Attempts admitted and not yet settled, over every address (for
    /// metrics and tests).
    pub fn attempts_in_flight(&self) -> u32 {
        self.in_flight.values().sum()
    }

    /// The policy in force.
    pub fn policy(&self) -> &LockoutPolicy {
        &self.policy
    }

    /// Whether an attempt on a known account from `addr` may proceed to
    /// credential checks. On `Err`, refuse without evaluating anything and
    /// without recording a failure.
    ///
    /// This and [`Self::record_failure`] are the state machine in one step,
    /// for a caller that evaluates nothing between them (simulations); a
    /// login evaluates a password in between, and goes through
    /// [`Self::admit`] and [`Self::reserve`] instead.
    pub fn check(
        &self,
        account: &AccountThrottle,
        addr: IpAddr,
        now_unix: u64,
    ) -> Result<(), Delay> {
        let account_wait = self.wait(account, now_unix);
        self.combine(account_wait, addr, now_unix)
    }

    /// [`Self::check`] for a login that names no account: same answers as
    /// for an account with the same history.
    pub fn check_unknown(&self, login: &str, addr: IpAddr, now_unix: u64) -> Result<(), Delay> {
        let account_wait = self
            .unknown
            .get(&self.login_key(login))
            .and_then(|state| self.wait(state, now_unix));
        self.combine(account_wait, addr, now_unix)
    }

    /// A failed attempt on a known account (wrong password, wrong or
    /// replayed code): returns the state to store, and counts the failure
    /// against the address.
    #[must_use = "store the returned state with the account"]
    pub fn record_failure(
        &mut self,
        account: &AccountThrottle,
        addr: IpAddr,
        now_unix: u64,
    ) -> AccountThrottle {
        self.record_address_failure(AddressKey::of(addr), now_unix);
        self.after_failure(account, self.policy.account_lock, now_unix)
    }

    /// A failed attempt naming no account: counted exactly like
    /// [`Self::record_failure`], the state kept here.
    pub fn record_unknown_failure(&mut self, login: &str, addr: IpAddr, now_unix: u64) {
        self.record_address_failure(AddressKey::of(addr), now_unix);
        let key = self.login_key(login);
        let current = self.unknown.get(&key).cloned().unwrap_or_default();
        let next = self.after_failure(&current, self.policy.account_lock, now_unix);
        if !self.unknown.contains_key(&key) && self.unknown.len() >= self.policy.max_unknown_logins
        {
            self.evict_oldest_unknown();
        }
        self.unknown.insert(key, next);
    }

    /// A successful login (password and second factor): the account's
    /// counter starts again from zero. The address's counter is kept (see
    /// the module doc). Call only after [`Self::check`] allowed the attempt.
    #[must_use = "store the returned state with the account"]
    pub fn record_success(&self, _account: &AccountThrottle) -> AccountThrottle {
        AccountThrottle::default()
    }

    /// An officer lifts an account's lock (and its counter).
    #[must_use = "store the returned state with the account"]
    pub fn officer_unlock(&self, _account: &AccountThrottle) -> AccountThrottle {
        AccountThrottle::default()
    }

    /// An officer lifts the lock and counter of one source address.
    pub fn unlock_address(&mut self, addr: IpAddr) {
        self.addresses.remove(&AddressKey::of(addr));
    }

    /// Addresses tracked now (for metrics).
    pub fn tracked_addresses(&self) -> usize {
        self.addresses.len()
    }

    /// Unknown logins tracked now (for metrics).
    pub fn tracked_unknown_logins(&self) -> usize {
        self.unknown.len()
    }

    fn combine(
        &self,
        account_wait: Option<Wait>,
        addr: IpAddr,
        now_unix: u64,
    ) -> Result<(), Delay> {
        let address_wait = self.address_wait(AddressKey::of(addr), now_unix);
        let delay = match (account_wait, address_wait) {
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

    /// The address state in force: a forgettable entry counts as clean.
    fn live_address_state(&self, key: AddressKey, now: u64) -> Option<&AccountThrottle> {
        let state = match self.addresses.get(&key) {
            Some(state) => state,
            None if self.addresses.len() >= self.policy.max_addresses => &self.address_overflow,
            None => return None,
        };
        (now < forget_at(state, self.policy.address_forget_secs)).then_some(state)
    }

    fn address_locked(&self, key: AddressKey, now: u64) -> bool {
        self.live_address_state(key, now)
            .is_some_and(|state| state.is_locked(now))
    }

    fn address_wait(&self, key: AddressKey, now: u64) -> Option<Wait> {
        self.live_address_state(key, now)
            .and_then(|state| self.wait(state, now))
    }

    fn record_address_failure(&mut self, key: AddressKey, now: u64) {
        let release = LockRelease::After {
            secs: self.policy.address_lock_secs,
        };
        if !self.addresses.contains_key(&key) && self.addresses.len() >= self.policy.max_addresses {
            self.prune_addresses(now);
        }
        let tracked = self.addresses.contains_key(&key);
        if tracked || self.addresses.len() < self.policy.max_addresses {
            let current = self
                .live_address_state(key, now)
                .cloned()
                .unwrap_or_default();
            let next = self.after_failure(&current, release, now);
            self.addresses.insert(key, next);
        } else {
            let current =
                if now < forget_at(&self.address_overflow, self.policy.address_forget_secs) {
                    self.address_overflow.clone()
                } else {
                    AccountThrottle::default()
                };
            self.address_overflow = self.after_failure(&current, release, now);
        }
    }

    /// Drops forgettable address entries; when none can go, remembers when
    /// the first one will, so a full table is not rescanned on every failure.
    fn prune_addresses(&mut self, now: u64) {
        if now < self.prune_not_before {
            return;
        }
        let forget_secs = self.policy.address_forget_secs;
        self.addresses
            .retain(|_, state| now < forget_at(state, forget_secs));
        self.prune_not_before = self
            .addresses
            .values()
            .map(|state| forget_at(state, forget_secs))
            .min()
            .unwrap_or(0);
    }

    /// The key an unknown login is counted under: trimmed and lower-cased,
    /// then hashed.
    fn login_key(&self, login: &str) -> u64 {
        let mut hasher = self.login_hasher.build_hasher();
        for c in login.trim().chars().flat_map(char::to_lowercase) {
            hasher.write_u32(u32::from(c));
        }
        hasher.finish()
    }

    fn evict_oldest_unknown(&mut self) {
        let oldest = self
            .unknown
            .iter()
            .min_by_key(|(_, state)| state.last_failure_unix)
            .map(|(key, _)| *key);
        if let Some(key) = oldest {
            self.unknown.remove(&key);
        }
    }
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
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_790_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn lockout() -> Lockout {
        Lockout::new(LockoutPolicy::default()).unwrap()
    }

    /// Fails `n` times as soon as allowed; returns the state and the time
    /// of the last failure.
    fn fail_n(l: &mut Lockout, n: u32, addr: IpAddr) -> (AccountThrottle, u64) {
        let mut state = AccountThrottle::default();
        let mut now = T0;
        for _ in 0..n {
            now = wait_until_allowed(l, &state, addr, now);
            state = l.record_failure(&state, addr, now);
        }
        (state, now)
    }

    fn wait_until_allowed(l: &Lockout, state: &AccountThrottle, addr: IpAddr, now: u64) -> u64 {
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
        let mut l = lockout();
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
        let mut l = lockout();
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
        let ok = l.record_success(&state);
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
        let mut l = Lockout::new(policy).unwrap();
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
        let unlocked = l.officer_unlock(&state);
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
        let mut l = lockout();
        let addr = ip("192.0.2.1");
        let (state, now) = fail_n(&mut l, 3, addr);
        let state = l.record_success(&state);
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
        let mut l = lockout();
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
        let mut l = lockout();
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
        let mut l = lockout();
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
    fn a_full_address_table_shares_one_counter_and_never_evicts() {
        let policy = LockoutPolicy {
            max_addresses: 3,
            ..LockoutPolicy::default()
        };
        let mut l = Lockout::new(policy).unwrap();
        let fresh = AccountThrottle::default();
        let attacker = ip("192.0.2.66");
        // The attacker's address reaches 9 failures.
        let mut now = T0;
        for _ in 0..9 {
            now = wait_until_allowed(&l, &fresh, attacker, now);
            let _ = l.record_failure(&fresh, attacker, now);
        }
        // Then fills the table with fresh addresses, and more.
        for i in 1..=20u8 {
            let _ = l.record_failure(&fresh, IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), now);
        }
        assert_eq!(l.tracked_addresses(), 3);
        // The attacker's own counter was not evicted: still in backoff.
        assert!(matches!(
            l.check(&fresh, attacker, now + 1),
            Err(Delay {
                scope: Scope::Address,
                wait: Wait::Backoff { .. }
            })
        ));
        // Untracked addresses share the overflow counter: 18 failures → locked.
        assert_eq!(
            l.check(&fresh, ip("203.0.113.200"), now + 1),
            Err(Delay {
                scope: Scope::Address,
                wait: Wait::Locked {
                    retry_after_secs: 899
                }
            })
        );
        // Once entries may be forgotten, the table makes room again.
        let much_later = now + 3 * 3600;
        assert_eq!(l.check(&fresh, ip("203.0.113.200"), much_later), Ok(()));
        let _ = l.record_failure(&fresh, ip("203.0.113.200"), much_later);
        assert!(l.tracked_addresses() <= 3);
        assert!(
            l.addresses
                .contains_key(&AddressKey::of(ip("203.0.113.200")))
        );
    }

    #[test]
    fn unknown_accounts_are_throttled_exactly_like_known_ones() {
        // Same history on a known account and on an unknown login, from two
        // different addresses so the address counters are equal too.
        let mut l = lockout();
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
        assert_eq!(l.unknown.get(&l.login_key("nobody.here")), Some(&known));
        assert!(!format!("{l:?}").contains("nobody"));
        assert!(
            known.consecutive_failures >= 5,
            "the run should reach deep backoff"
        );
    }

    #[test]
    fn unknown_login_table_is_bounded_by_evicting_the_oldest() {
        let policy = LockoutPolicy {
            max_unknown_logins: 2,
            ..LockoutPolicy::default()
        };
        let mut l = Lockout::new(policy).unwrap();
        l.record_unknown_failure("a", ip("192.0.2.1"), T0);
        l.record_unknown_failure("b", ip("192.0.2.2"), T0 + 10);
        l.record_unknown_failure("c", ip("192.0.2.3"), T0 + 20);
        assert_eq!(l.tracked_unknown_logins(), 2);
        assert!(!l.unknown.contains_key(&l.login_key("a")));
        assert!(l.unknown.contains_key(&l.login_key("b")));
        assert!(l.unknown.contains_key(&l.login_key("c")));
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

    /// An attempt on a fresh account from `addr`.
    fn admit(l: &mut Lockout, addr: IpAddr, now: u64) -> Result<AddressAdmission, Delay> {
        l.admit(Target::Account(&AccountThrottle::default()), addr, now)
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
        let mut l = lockout();
        let addr = ip("192.0.2.1");
        let mut held: Vec<AddressAdmission> = (0..10)
            .map(|i| admit(&mut l, addr, T0).unwrap_or_else(|d| panic!("{i}: {d:?}")))
            .collect();
        assert_eq!(
            admit(&mut l, addr, T0),
            Err(Delay {
                scope: Scope::Address,
                wait: Wait::Backoff {
                    retry_after_secs: 1
                }
            })
        );
        // Another address is not held back.
        let other = admit(&mut l, ip("192.0.2.2"), T0).unwrap();
        assert!(!l.settle_address(other, AttemptEnd::Succeeded, T0));
        // Nine fail, the tenth too: the tenth failure locks the address.
        let locks: Vec<bool> = held
            .drain(..)
            .map(|a| l.settle_address(a, AttemptEnd::Failed, T0))
            .collect();
        assert_eq!(locks.iter().filter(|&&b| b).count(), 1);
        assert!(locks[9]);
        assert_eq!(l.attempts_in_flight(), 0);
        assert!(matches!(
            admit(&mut l, addr, T0 + 1),
            Err(Delay {
                wait: Wait::Locked { .. },
                ..
            })
        ));
        // After the timed lock: one attempt at a time.
        let after = T0 + 900;
        let one = admit(&mut l, addr, after).unwrap();
        assert!(admit(&mut l, addr, after).is_err());
        assert!(l.settle_address(one, AttemptEnd::Failed, after));
    }

    #[test]
    fn places_come_back_and_successes_count_nothing() {
        let mut l = lockout();
        let addr = ip("192.0.2.1");
        // An agency behind one address: a thousand logins, none failed.
        for _ in 0..1000 {
            let a = admit(&mut l, addr, T0).unwrap();
            assert!(!l.settle_address(a, AttemptEnd::Succeeded, T0));
        }
        let a = admit(&mut l, addr, T0).unwrap();
        assert!(!l.settle_address(a, AttemptEnd::NotEvaluated, T0));
        assert_eq!(l.tracked_addresses(), 0);
        // Three failures (after their backoffs) leave seven places.
        for at in [T0, T0 + 1, T0 + 3] {
            let a = admit(&mut l, addr, at).unwrap();
            let _ = l.settle_address(a, AttemptEnd::Failed, at);
        }
        let now = T0 + 7;
        let mut held: Vec<_> = (0..7).map(|_| admit(&mut l, addr, now).unwrap()).collect();
        assert!(admit(&mut l, addr, now).is_err());
        let _ = l.settle_address(held.pop().unwrap(), AttemptEnd::Succeeded, now);
        held.push(admit(&mut l, addr, now).unwrap());
        assert_eq!(l.attempts_in_flight(), 7);
    }

    #[test]
    fn unknown_logins_are_reserved_like_accounts() {
        let mut l = lockout();
        let first = l.reserve_unknown("Nobody", T0).unwrap();
        assert_eq!(first.consecutive_failures, 1);
        assert!(l.reserve_unknown("nobody ", T0).is_err());
        assert_eq!(l.reserve(&first, T0), l.reserve_unknown("NOBODY", T0));
    }

    #[test]
    fn account_throttle_serialises_for_storage() {
        let mut l = lockout();
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
            let mut l = lockout();
            let mut state = AccountThrottle::default();
            let mut now = T0;
            for (advance, fail, addr_byte) in steps {
                now += advance;
                let addr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, addr_byte));
                match l.check(&state, addr, now) {
                    Ok(()) => {
                        state = if fail { l.record_failure(&state, addr, now) } else { l.record_success(&state) };
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
