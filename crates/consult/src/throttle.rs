//! Login attempts reserved before they are evaluated, for password logins
//! and activation codes alike (the rule is `rempart_auth::lockout`'s
//! module doc). Every state is in the store every instance shares, so
//! attempts spread over instances meet the same counters.
//!
//! An attempt first takes one of its address's places: the address's
//! stored state (under a keyed digest of the address) is replaced by the
//! one holding one more place with one compare-and-set. Then it reserves
//! itself on the account: the stored throttle state, read before, is
//! replaced by the state counting this attempt as a failure, again with one
//! compare-and-set, and only an attempt whose swaps wrote goes on to
//! argon2id or the code check. A lost swap reads again, so N parallel
//! attempts count N: each is either refused (the backoff the winner
//! started) or counted. A success clears the state with another
//! compare-and-set from what it stored, and when that state moved
//! meanwhile (other attempts counted) it clears it only if no lock is in
//! force: a late write never erases a lock. A login that names no account
//! reserves on its own stored state the same way.
//!
//! Address states are bounded: when the table is full, states that may be
//! forgotten are pruned, and if none may, the address counts on the shared
//! overflow state (never evicting: an attacker cannot reset their own
//! counter by failing from fresh addresses). Unknown-login states evict the
//! oldest when full.
//!
//! An account or an address that reaches its lock raises a guard alert
//! (kind `failed_logins`), so that a burst of failed logins reaches the
//! security console like a burst of reads.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rempart_auth::lockout::{
    AccountThrottle, AddressKey, AddressThrottle, AttemptEnd, Delay, Lockout, Scope, Wait,
    fold_login,
};
use rempart_domain::{AccountId, OrganisationId};
use rempart_guard::{Alert, AlertKind, Evidence, Explanation, Feature, Verdict};
use rempart_ledger::LeafRef;
use rempart_storage::{
    AccountRecord, AuthStore, StorageError, ThrottleEntry, ThrottleInsert, ThrottleScope,
};

use crate::kernel::Consultation;
use crate::settings::Web;

/// Lost compare-and-sets tolerated before an attempt gives up and is
/// refused as if waiting: only a flood of attempts on one account or
/// address loses this often, and refusing it is the safe answer.
const MAX_SWAPS: usize = 8;

/// Lost compare-and-sets tolerated when an attempt gives its address's
/// place back: its failure must count, so it tries much longer.
const MAX_SETTLE_SWAPS: usize = 64;

/// Which stored throttle state an attempt counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// The account's password logins.
    Password,
    /// The account's activation code.
    Activation,
    /// The password logins of one browser the account trusts (the digest
    /// of its device token): its own counter, so that failures elsewhere
    /// never lock it out (`rempart_storage::AuthStore::trust_login_device`).
    Device([u8; 32]),
}

impl Counter {
    async fn read(
        self,
        auth: &dyn AuthStore,
        account_id: AccountId,
    ) -> Result<Option<String>, StorageError> {
        Ok(match self {
            Counter::Password => auth.password(account_id).await?.map(|(_, t)| t),
            Counter::Activation => auth.activation(account_id).await?.map(|a| a.throttle),
            // Read again after a lost swap: expiry was checked when the
            // browser was recognised.
            Counter::Device(digest) => {
                auth.login_device_throttle(&digest, account_id, DateTime::UNIX_EPOCH)
                    .await?
            }
        })
    }

    async fn swap(
        self,
        auth: &dyn AuthStore,
        account_id: AccountId,
        expected: &str,
        next: &str,
    ) -> Result<bool, StorageError> {
        match self {
            Counter::Password => auth.swap_throttle(account_id, expected, next).await,
            Counter::Activation => {
                auth.swap_activation_throttle(account_id, expected, next)
                    .await
            }
            Counter::Device(digest) => {
                auth.swap_login_device_throttle(&digest, account_id, expected, next)
                    .await
            }
        }
    }
}

/// Why an attempt could not be admitted or settled: the store failed or
/// holds a state nobody can read. Fail closed: the caller refuses.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ThrottleError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// The stored state is not a throttle state.
    #[error("throttle: stored state is not readable")]
    Unreadable,
    /// The address's state kept changing under other attempts.
    #[error("throttle: the address's state kept changing")]
    Contended,
}

/// An attempt let through: it holds one place of its address until it is
/// settled (dropped unsettled, by an error or a cancelled request, it
/// counts as a failure) and, on a known account, the state it stored.
pub(crate) struct Attempt {
    web: Arc<Web>,
    auth: Arc<dyn AuthStore>,
    /// The stored key of the address state holding the place.
    place: Option<Vec<u8>>,
    now_unix: u64,
    reserved: Option<Reserved>,
}

/// What a known account's reservation wrote.
struct Reserved {
    account_id: AccountId,
    stored: String,
    state: AccountThrottle,
    locks: bool,
}

/// How an attempt on an account was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Settled {
    /// This attempt's reservation locked the account.
    pub(crate) account_locked: Option<u32>,
    /// This attempt's failure locked its address.
    pub(crate) address_locked: bool,
}

impl Attempt {
    /// The attempt failed: the account's failure was counted when it was
    /// reserved; the address counts it now. A store failure here is
    /// logged: the attempt is refused anyway.
    pub(crate) async fn failed(mut self) -> Settled {
        let address_locked = self.settle(AttemptEnd::Failed).await;
        Settled {
            account_locked: self
                .reserved
                .as_ref()
                .filter(|r| r.locks)
                .map(|r| r.state.consecutive_failures),
            address_locked,
        }
    }

    /// The credentials were right: the address counts nothing and the
    /// account's counter starts again, unless a lock came into force since
    /// the reservation (then its wait: the attempt is refused as locked).
    pub(crate) async fn succeeded(
        mut self,
        auth: &dyn AuthStore,
        counter: Counter,
    ) -> Result<Option<Delay>, ThrottleError> {
        self.settle(AttemptEnd::Succeeded).await;
        let Some(reserved) = self.reserved.take() else {
            return Ok(None);
        };
        let cleared = serde_json::to_string(&AccountThrottle::default())
            .map_err(|_| ThrottleError::Unreadable)?;
        // From what this attempt stored: its own lock (the tenth attempt,
        // right) is its to clear.
        let mut expected = reserved.stored;
        for _ in 0..MAX_SWAPS {
            if counter
                .swap(auth, reserved.account_id, &expected, &cleared)
                .await?
            {
                return Ok(None);
            }
            let Some(current) = counter.read(auth, reserved.account_id).await? else {
                // The factor went meanwhile (a reset): nothing to log into.
                return Ok(Some(Delay {
                    scope: Scope::Account,
                    wait: Wait::Backoff {
                        retry_after_secs: 1,
                    },
                }));
            };
            let state = parse(&current)?;
            if state.is_locked(self.now_unix) {
                let lock = self.web.lockout.reserve(&state, self.now_unix);
                return Ok(lock.err());
            }
            expected = current;
        }
        // Still moving under other attempts, but not locked: let the
        // login through and leave their failures counted.
        Ok(None)
    }

    /// Gives the address's place back; whether this failure locked it.
    async fn settle(&mut self, end: AttemptEnd) -> bool {
        let Some(key) = self.place.take() else {
            return false;
        };
        match settle_place(
            &self.web.lockout,
            self.auth.as_ref(),
            &key,
            end,
            self.now_unix,
        )
        .await
        {
            Ok(locked) => locked,
            Err(e) => {
                tracing::warn!(error = %e, "login throttle: an address's place was not given back");
                false
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // Ended before anyone said how (an error, a cancelled request):
        // counted, failing closed, by a task of its own (a drop cannot
        // wait). Without a runtime the place lapses by itself.
        let Some(key) = self.place.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (web, auth, now_unix) = (Arc::clone(&self.web), Arc::clone(&self.auth), self.now_unix);
        runtime.spawn(async move {
            let settled = settle_place(
                &web.lockout,
                auth.as_ref(),
                &key,
                AttemptEnd::Failed,
                now_unix,
            )
            .await;
            if let Err(e) = settled {
                tracing::warn!(error = %e, "login throttle: an address's place was not given back");
            }
        });
    }
}

impl Consultation {
    /// Admits an attempt on `account` (with the throttle state read with
    /// it) or on an unknown `login`, from `addr`: the attempt to evaluate,
    /// or the wait that refuses it unevaluated.
    pub(crate) async fn admit_attempt(
        &self,
        web: &Arc<Web>,
        counter: Counter,
        account: Option<(AccountId, String)>,
        login: &str,
        addr: IpAddr,
        now_unix: u64,
    ) -> Result<Result<Attempt, Delay>, ThrottleError> {
        let auth = self.auth.as_ref();
        let lockout = &web.lockout;
        let target = match account {
            Some((account_id, json)) => Target::Account(account_id, json),
            None => Target::Unknown(self.vault.unknown_login_key(&fold_login(login)).to_vec()),
        };
        // The account's side as read now: its wait counts in the admission.
        let read = match &target {
            Target::Account(_, json) => parse(json)?,
            Target::Unknown(key) => match auth
                .login_throttle(ThrottleScope::UnknownLogin, key)
                .await?
            {
                Some(json) => parse(&json)?,
                None => AccountThrottle::default(),
            },
        };
        let address_key = self.vault.login_address_key(&AddressKey::of(addr).bytes());
        let overflow_key = self.vault.login_address_key(&AddressKey::Overflow.bytes());
        let place = take_place(lockout, auth, &address_key, &overflow_key, &read, now_unix).await?;
        let mut attempt = Attempt {
            web: Arc::clone(web),
            auth: Arc::clone(&self.auth),
            place: match place {
                Ok(key) => Some(key),
                Err(delay) => return Ok(Err(delay)),
            },
            now_unix,
            reserved: None,
        };
        let reserved = match target {
            Target::Account(account_id, json) => {
                reserve_account(lockout, auth, counter, account_id, json, now_unix).await?
            }
            Target::Unknown(key) => reserve_unknown(lockout, auth, &key, now_unix).await?,
        };
        match reserved {
            Ok(reserved) => {
                attempt.reserved = reserved;
                Ok(Ok(attempt))
            }
            Err(delay) => {
                attempt.settle(AttemptEnd::NotEvaluated).await;
                Ok(Err(delay))
            }
        }
    }
}

/// What an attempt's account side counts against.
enum Target {
    /// A known account, with the throttle state read with it.
    Account(AccountId, String),
    /// A login that names no account: the stored key of its own state.
    Unknown(Vec<u8>),
}

/// The refusal of an attempt whose compare-and-sets kept losing.
fn contended() -> Delay {
    Delay {
        scope: Scope::Account,
        wait: Wait::Backoff {
            retry_after_secs: 1,
        },
    }
}

/// Takes one of the address's places: the stored key holding it, or the
/// wait (the account's `account` state counted in it).
async fn take_place(
    lockout: &Lockout,
    auth: &dyn AuthStore,
    address_key: &[u8],
    overflow_key: &[u8],
    account: &AccountThrottle,
    now_unix: u64,
) -> Result<Result<Vec<u8>, Delay>, ThrottleError> {
    let scope = ThrottleScope::Address;
    let max = u64::try_from(lockout.policy().max_addresses).unwrap_or(u64::MAX);
    let mut key = address_key;
    let mut pruned = false;
    for _ in 0..MAX_SWAPS {
        let read = auth.login_throttle(scope, key).await?;
        let current = match &read {
            Some(json) => parse_address(json)?,
            None => AddressThrottle::default(),
        };
        let next = match lockout.admit(account, &current, now_unix) {
            Ok(next) => next,
            Err(delay) => return Ok(Err(delay)),
        };
        let entry = address_entry(lockout, &next, now_unix)?;
        let wrote = match &read {
            Some(json) => {
                auth.swap_login_throttle(scope, key, json, Some(&entry))
                    .await?
            }
            None => {
                let bound = (key != overflow_key).then_some(max);
                match auth
                    .insert_login_throttle(scope, key, &entry, bound)
                    .await?
                {
                    ThrottleInsert::Inserted => true,
                    ThrottleInsert::Exists => false,
                    // Make room once; if none can be made, count on the
                    // overflow state.
                    ThrottleInsert::Full if !pruned => {
                        auth.prune_login_throttles(scope, unix_i64(now_unix))
                            .await?;
                        pruned = true;
                        false
                    }
                    ThrottleInsert::Full => {
                        key = overflow_key;
                        false
                    }
                }
            }
        };
        if wrote {
            return Ok(Ok(key.to_vec()));
        }
    }
    Ok(Err(Delay {
        scope: Scope::Address,
        wait: Wait::Backoff {
            retry_after_secs: 1,
        },
    }))
}

/// Gives back a place taken by [`take_place`] under `key`, counting a
/// failure or not; whether this failure locked the address.
async fn settle_place(
    lockout: &Lockout,
    auth: &dyn AuthStore,
    key: &[u8],
    end: AttemptEnd,
    now_unix: u64,
) -> Result<bool, ThrottleError> {
    let scope = ThrottleScope::Address;
    for _ in 0..MAX_SETTLE_SWAPS {
        let read = auth.login_throttle(scope, key).await?;
        let current = match &read {
            Some(json) => parse_address(json)?,
            // Pruned once the place lapsed: a failure still counts.
            None if end == AttemptEnd::Failed => AddressThrottle::default(),
            None => return Ok(false),
        };
        let (next, locked) = lockout.settle_address(&current, end, now_unix);
        let keep = lockout.address_forget_at(&next) > now_unix;
        let entry = address_entry(lockout, &next, now_unix)?;
        let wrote = match &read {
            Some(json) => {
                auth.swap_login_throttle(scope, key, json, keep.then_some(&entry))
                    .await?
            }
            None => {
                auth.insert_login_throttle(scope, key, &entry, None).await?
                    == ThrottleInsert::Inserted
            }
        };
        if wrote {
            return Ok(locked);
        }
    }
    Err(ThrottleError::Contended)
}

/// Reserves an attempt on a known account (module doc).
async fn reserve_account(
    lockout: &Lockout,
    auth: &dyn AuthStore,
    counter: Counter,
    account_id: AccountId,
    mut read: String,
    now_unix: u64,
) -> Result<Result<Option<Reserved>, Delay>, ThrottleError> {
    for _ in 0..MAX_SWAPS {
        let before = parse(&read)?;
        let next = match lockout.reserve(&before, now_unix) {
            Ok(next) => next,
            Err(delay) => return Ok(Err(delay)),
        };
        let stored = serde_json::to_string(&next).map_err(|_| ThrottleError::Unreadable)?;
        if counter.swap(auth, account_id, &read, &stored).await? {
            return Ok(Ok(Some(Reserved {
                account_id,
                stored,
                locks: next.is_locked(now_unix) && !before.is_locked(now_unix),
                state: next,
            })));
        }
        // Another attempt wrote first: read what it wrote.
        match counter.read(auth, account_id).await? {
            Some(current) => read = current,
            // The password or code went meanwhile: nothing to try.
            None => break,
        }
    }
    Ok(Err(contended()))
}

/// Reserves an attempt on a login that names no account, on the state
/// stored under its keyed digest: counted at once (it can never succeed).
async fn reserve_unknown(
    lockout: &Lockout,
    auth: &dyn AuthStore,
    key: &[u8],
    now_unix: u64,
) -> Result<Result<Option<Reserved>, Delay>, ThrottleError> {
    let scope = ThrottleScope::UnknownLogin;
    let max = u64::try_from(lockout.policy().max_unknown_logins).unwrap_or(u64::MAX);
    for _ in 0..MAX_SWAPS {
        let read = auth.login_throttle(scope, key).await?;
        let current = match &read {
            Some(json) => parse(json)?,
            None => AccountThrottle::default(),
        };
        let next = match lockout.reserve(&current, now_unix) {
            Ok(next) => next,
            Err(delay) => return Ok(Err(delay)),
        };
        let entry = ThrottleEntry {
            entry: serde_json::to_string(&next).map_err(|_| ThrottleError::Unreadable)?,
            // Never forgotten with time, like an account's (module doc).
            forget_at: i64::MAX,
            touched: unix_i64(now_unix),
        };
        let wrote = match &read {
            Some(json) => {
                auth.swap_login_throttle(scope, key, json, Some(&entry))
                    .await?
            }
            None => match auth
                .insert_login_throttle(scope, key, &entry, Some(max))
                .await?
            {
                ThrottleInsert::Inserted => true,
                ThrottleInsert::Exists => false,
                ThrottleInsert::Full => {
                    auth.evict_login_throttle(scope).await?;
                    false
                }
            },
        };
        if wrote {
            return Ok(Ok(None));
        }
    }
    Ok(Err(contended()))
}

/// An address state as stored, with its forget time and last change.
fn address_entry(
    lockout: &Lockout,
    state: &AddressThrottle,
    now_unix: u64,
) -> Result<ThrottleEntry, ThrottleError> {
    Ok(ThrottleEntry {
        entry: serde_json::to_string(state).map_err(|_| ThrottleError::Unreadable)?,
        forget_at: unix_i64(lockout.address_forget_at(state)),
        touched: unix_i64(now_unix),
    })
}

fn unix_i64(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn parse_address(json: &str) -> Result<AddressThrottle, ThrottleError> {
    serde_json::from_str(json).map_err(|_| ThrottleError::Unreadable)
}

/// A stored throttle state; the store starts new rows with `{}`.
pub(crate) fn parse(json: &str) -> Result<AccountThrottle, ThrottleError> {
    if json.trim() == "{}" {
        return Ok(AccountThrottle::default());
    }
    serde_json::from_str(json).map_err(|_| ThrottleError::Unreadable)
}

impl Consultation {
    /// Raises the guard's alert for what a failed attempt locked, if
    /// anything: the account (its failures against the lock threshold) or
    /// the address the attempts came from. `last` is the attempt's own
    /// leaf (see `raise_with_leaf`: a staged leaf's index is waited for
    /// off the request path). The guard stores the alerts at its next
    /// sync.
    pub(crate) async fn raise_login_alerts(
        &self,
        account: Option<&AccountRecord>,
        settled: Settled,
        lock_after: u32,
        now: DateTime<Utc>,
        last: Option<LeafRef>,
    ) {
        if settled.account_locked.is_none() && !settled.address_locked {
            return;
        }
        let alert = |feature: Feature, value: u32| {
            let alert = Alert {
                at: now,
                kind: AlertKind::FailedLogins,
                account_id: account.map_or(AccountId::UNKNOWN, |a| a.account_id),
                organisation_id: account.map_or(OrganisationId::UNKNOWN, |a| a.organisation_id),
                verdict: Verdict::Throttle,
                score: 0.0,
                explanation: vec![Explanation {
                    feature,
                    value: f64::from(value),
                    baseline: f64::from(lock_after),
                    contribution: 0.0,
                }],
                fresh: true,
                evidence: Evidence {
                    from: now,
                    to: now,
                    first_seq: None,
                    last_seq: None,
                },
                accounts: Vec::new(),
            };
            self.raise_with_leaf(alert, last);
        };
        if let Some(failures) = settled.account_locked {
            alert(Feature::AccountLoginFailures, failures);
        }
        if settled.address_locked {
            alert(Feature::AddressLoginFailures, lock_after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_states_read_back() {
        assert_eq!(parse("{}").unwrap(), AccountThrottle::default());
        let t = AccountThrottle {
            consecutive_failures: 4,
            last_failure_unix: Some(1_790_000_000),
            lock: None,
        };
        assert_eq!(parse(&serde_json::to_string(&t).unwrap()).unwrap(), t);
        assert!(matches!(parse("[1]"), Err(ThrottleError::Unreadable)));
    }
}
