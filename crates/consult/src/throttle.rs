//! Login attempts reserved before they are evaluated, for password logins
//! and activation codes alike (the rule is `rempart_auth::lockout`'s
//! module doc).
//!
//! An attempt first takes one of its address's places (in memory, under
//! the lockout's lock), then reserves itself on the account: the stored
//! throttle state, read before, is replaced by the state counting this
//! attempt as a failure with one compare-and-set, and only an attempt whose
//! swap wrote goes on to argon2id or the code check. A lost swap reads
//! again, so N parallel attempts count N: each is either refused (the
//! backoff the winner started) or counted. A success clears the state with
//! another compare-and-set from what it stored, and when that state moved
//! meanwhile (other attempts counted) it clears it only if no lock is in
//! force: a late write never erases a lock.
//!
//! An account or an address that reaches its lock raises a guard alert
//! (kind `failed_logins`), so that a burst of failed logins reaches the
//! security console like a burst of reads.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rempart_auth::lockout::{
    AccountThrottle, AddressAdmission, AttemptEnd, Delay, Scope, Target, Wait,
};
use rempart_domain::{AccountId, OrganisationId};
use rempart_guard::{Alert, AlertKind, Evidence, Explanation, Feature, Verdict};
use rempart_ledger::LeafRef;
use rempart_storage::{AccountRecord, AuthStore, StorageError};

use crate::kernel::Consultation;
use crate::settings::{Web, locked};

/// Lost compare-and-sets tolerated before an attempt gives up and is
/// refused as if waiting: only a flood of attempts on one account loses
/// this often, and refusing it is the safe answer.
const MAX_SWAPS: usize = 8;

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
}

/// An attempt let through: it holds one place of its address until it is
/// settled (dropped unsettled, by an error or a cancelled request, it
/// counts as a failure) and, on a known account, the state it stored.
pub(crate) struct Attempt {
    web: Arc<Web>,
    admission: Option<AddressAdmission>,
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
    /// reserved; the address counts it now.
    pub(crate) fn failed(mut self) -> Settled {
        let address_locked = self.settle(AttemptEnd::Failed);
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
        self.settle(AttemptEnd::Succeeded);
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
                let lock = locked(&self.web.lockout).reserve(&state, self.now_unix);
                return Ok(lock.err());
            }
            expected = current;
        }
        // Still moving under other attempts, but not locked: let the
        // login through and leave their failures counted.
        Ok(None)
    }

    fn settle(&mut self, end: AttemptEnd) -> bool {
        match self.admission.take() {
            Some(a) => locked(&self.web.lockout).settle_address(a, end, self.now_unix),
            None => false,
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // Ended before anyone said how (an error, a cancelled request):
        // counted, failing closed.
        self.settle(AttemptEnd::Failed);
    }
}

/// Admits an attempt on `account` (with the throttle state read with it) or
/// on an unknown `login`, from `addr`: the attempt to evaluate, or the wait
/// that refuses it unevaluated.
pub(crate) async fn admit(
    web: &Arc<Web>,
    auth: &dyn AuthStore,
    counter: Counter,
    account: Option<(AccountId, String)>,
    login: &str,
    addr: IpAddr,
    now_unix: u64,
) -> Result<Result<Attempt, Delay>, ThrottleError> {
    let read = match &account {
        Some((_, json)) => Some(parse(json)?),
        None => None,
    };
    let target = match &read {
        Some(state) => Target::Account(state),
        None => Target::UnknownLogin(login),
    };
    let admitted = locked(&web.lockout).admit(target, addr, now_unix);
    let admission = match admitted {
        Ok(a) => a,
        Err(delay) => return Ok(Err(delay)),
    };
    let mut attempt = Attempt {
        web: Arc::clone(web),
        admission: Some(admission),
        now_unix,
        reserved: None,
    };
    let refused = |mut attempt: Attempt, delay: Delay| {
        attempt.settle(AttemptEnd::NotEvaluated);
        Ok(Err(delay))
    };
    let Some((account_id, mut read)) = account else {
        let reserved = locked(&web.lockout).reserve_unknown(login, now_unix);
        return match reserved {
            Ok(_) => Ok(Ok(attempt)),
            Err(delay) => refused(attempt, delay),
        };
    };
    for _ in 0..MAX_SWAPS {
        let before = parse(&read)?;
        // The lock is released before `refused` takes it again.
        let reserved = locked(&web.lockout).reserve(&before, now_unix);
        let next = match reserved {
            Ok(next) => next,
            Err(delay) => return refused(attempt, delay),
        };
        let stored = serde_json::to_string(&next).map_err(|_| ThrottleError::Unreadable)?;
        if counter.swap(auth, account_id, &read, &stored).await? {
            attempt.reserved = Some(Reserved {
                account_id,
                stored,
                locks: next.is_locked(now_unix) && !before.is_locked(now_unix),
                state: next,
            });
            return Ok(Ok(attempt));
        }
        // Another attempt wrote first: read what it wrote.
        match counter.read(auth, account_id).await? {
            Some(current) => read = current,
            // The password or code went meanwhile: nothing to try.
            None => break,
        }
    }
    refused(
        attempt,
        Delay {
            scope: Scope::Account,
            wait: Wait::Backoff {
                retry_after_secs: 1,
            },
        },
    )
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
