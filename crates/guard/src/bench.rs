//! Figures for `rempart bench guard`: what one [`Guard::check`] costs on
//! the hot path (account state in memory, no store round trip). Not a
//! test: it reads the clock and prints nothing; the command prints.
//!
//! The guard runs over [`MemoryStore`], whose calls complete at once, so
//! the futures are polled to completion here without a runtime.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rempart_domain::{
    AccountId, FieldGroup, OrganisationId, OrganisationKind, PersonId, Purpose, Role,
};

use crate::store::memory::MemoryStore;
use crate::{
    AccountFacts, Attempt, AttemptKind, Fields, Guard, GuardConfig, GuardError, PeerGroup,
    SessionFacts,
};

/// Median cost of one check, with and without the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckFigures {
    /// Samples taken.
    pub samples: usize,
    /// Checks per sample.
    pub calls_per_sample: usize,
    /// Accounts the calls are spread over.
    pub accounts: usize,
    /// Median time of one check by the real guard.
    pub check_median: Duration,
    /// Median time of one check by [`Guard::pass_through`].
    pub pass_through_median: Duration,
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::hint::spin_loop();
    }
}

/// Runs `samples` × `calls_per_sample` checks of ordinary reads by
/// `accounts` accounts (at least 1 each), each account reading persons of
/// its own caseload of 200 at a working-day pace, and returns the medians.
pub fn check_cost(
    samples: usize,
    calls_per_sample: usize,
    accounts: usize,
) -> Result<CheckFigures, GuardError> {
    let samples = samples.max(1);
    let calls = calls_per_sample.max(1);
    let accounts = accounts.max(1);
    let start: DateTime<Utc> = DateTime::from_timestamp(1_768_291_200, 0).unwrap_or_default(); // a Tuesday, 09:00 Paris
    // Thresholds far away: the figure is the cost of deciding, not of refusing.
    let mut config = GuardConfig::default();
    config.account.persons.per_hour = 1_000_000;
    config.account.persons.per_day = 1_000_000;
    config.account.nir_reveals = config.account.persons;
    config.organisation.persons.per_hour = 1_000_000_000;
    config.organisation.persons.per_day = 1_000_000_000;
    config.organisation.nir_reveals = config.organisation.persons;
    config.sync.max_staleness_secs = u32::MAX;
    let guard = block_on(Guard::open(config, Arc::new(MemoryStore::new()), 1, start))?;
    let groups = [
        FieldGroup::Identity,
        FieldGroup::Contact,
        FieldGroup::Status,
    ];
    let attempt = |i: usize| {
        let account = (i % accounts) as i64 + 1;
        Attempt {
            at: start + TimeDelta::milliseconds((i / accounts) as i64 * 50),
            account: AccountFacts {
                account_id: AccountId::new(account),
                organisation_id: OrganisationId::new(account / 20 + 1),
                role: Role::Agent,
                created_at: None,
                peer: PeerGroup::of(OrganisationKind::CapEmploi, Some("38")),
            },
            session: SessionFacts {
                device: Some([account as u8; 16]),
                ..SessionFacts::default()
            },
            kind: AttemptKind::ReadPerson,
            person_id: Some(PersonId::new(
                account * 1000 + ((i / accounts) % 200) as i64,
            )),
            purpose: Some(Purpose::FollowUp),
            fields: Fields::of(&groups, false),
            new_mandate: false,
        }
    };
    let attempts: Vec<Attempt> = (0..calls).map(attempt).collect();
    // Warm up: every account loaded once.
    for a in attempts.iter().take(accounts) {
        block_on(guard.check(a))?;
    }
    let pass = Guard::pass_through();
    let mut real = Vec::with_capacity(samples);
    let mut none = Vec::with_capacity(samples);
    for k in 0..samples {
        let shift = TimeDelta::seconds(k as i64);
        let batch: Vec<Attempt> = attempts
            .iter()
            .map(|a| Attempt {
                at: a.at + shift,
                ..a.clone()
            })
            .collect();
        let t = Instant::now();
        for a in &batch {
            block_on(guard.check(a))?;
        }
        real.push(t.elapsed() / calls as u32);
        let t = Instant::now();
        for a in &batch {
            block_on(pass.check(a))?;
        }
        none.push(t.elapsed() / calls as u32);
    }
    real.sort();
    none.sort();
    Ok(CheckFigures {
        samples,
        calls_per_sample: calls,
        accounts,
        check_median: real[samples / 2],
        pass_through_median: none[samples / 2],
    })
}
