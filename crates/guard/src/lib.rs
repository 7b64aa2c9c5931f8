//! The guard stage of the consultation path: hard quotas and explainable
//! behaviour scoring between authorization (the policy allowed the read)
//! and the vault (nothing decrypted yet), so that an allowed-but-abnormal
//! read is stopped before any data leaves.
//!
//! - [`Guard::check`] is asked about every attempt the policy allowed; its
//!   [`GuardDecision`] says whether to go on, and carries an [`Alert`] for
//!   every verdict other than [`Verdict::Allow`].
//! - [`Guard::observe`] is told about attempts that ended without data
//!   (policy denials, nothing found): they feed the enumeration and
//!   denied-share features and can suspend an account on their own.
//! - [`Guard::sync`], run every `sync.interval_secs` by the caller, flushes
//!   this instance's counters, activity, devices, alerts and freezes to the
//!   [`GuardStore`] and reads back what the other instances counted, the
//!   frozen organisations and the accounts' suspension blocks.
//!
//! **Organisations.** After the account's own stage, every attempt goes
//! through its organisation's (`organisation`): what several accounts do
//! together (at work off hours, bursting, waking, sharing a new network
//! or device, the organisation's volume against its busiest hours) makes
//! the organisation's score, added to the account's and able on its own
//! to step up, throttle or freeze the whole organisation with one alert
//! naming the accounts involved.
//!
//! **Suspensions are shared.** An account the guard suspends is refused
//! with [`Verdict::Suspend`] for a day by every instance, whatever the
//! registry says meanwhile (an officer reactivating it sooner sees it
//! suspended again at its first attempt): the block is stored before the
//! suspending decision returns, read with the account's history on every
//! other instance, and by each sync for the accounts they already hold.
//!
//! Hot counters live in memory, in sharded maps; the hot path allocates
//! nothing when it allows and does no I/O, except loading an account's
//! baseline the first time it is met each (local) day. The store is the
//! only way the guard touches the outside world; no clock is read
//! (attempts carry their instant, sync takes `now`).
//!
//! **Fail closed.** A store error on load, or a guard that has not synced
//! successfully for `sync.max_staleness_secs`, makes `check` and `observe`
//! return [`GuardError`]: the caller refuses.
//!
//! **Staleness across instances.** Each instance counts exactly what it
//! serves; other instances' counts arrive with each sync, so they are at
//! most `sync.interval_secs` (plus one flush) old. That is too slow for a
//! bulk reader: one credential spread round-robin over three instances
//! reads its whole quota on each within a second. So an account that
//! counted, towards one of its limits, `sync.exchange_after` it has not
//! shared and at least `sync.exchange_room_percent` of the room left under
//! that limit, or that (or whose organisation) is within
//! `sync.exchange_near_percent` of a limit, first *exchanges*: one store
//! call adds its unshared counts and reads the others' for the account and
//! its organisation, and the decision follows (one exchange per account at
//! a time on an instance). Each other instance then hides at most
//! `exchange_after` of the account's counts, plus its latest decision and
//! those in flight: across k instances a quota of q lets through at most
//! q + (k − 1)(exchange_after + 1) + what is in flight. A reader far below
//! its limits exchanges nothing. An instance that
//! has seen no other instance announce itself within
//! `sync.max_staleness_secs` (a single server) never exchanges: a new
//! instance is known to the others from their next sync. Distinct persons
//! are counted per instance, so the merged count is an upper bound (never
//! an undercount) of the truth. The organisation stage's accounts at work
//! and the networks and devices shared anew are seen per instance.

mod alert;
mod attempt;
mod baseline;
pub mod bench;
mod config;
mod engine;
mod organisation;
mod region;
pub mod store;
mod window;

pub use alert::{Alert, AlertKind, Evidence, Explanation, Feature, TOP_FEATURES, Verdict};
pub use attempt::{
    AccountFacts, Attempt, AttemptKind, Digest16, Fields, Observed, SearchKind, SessionFacts,
};
pub use config::{
    AccountQuotas, ConfigError, Containment, Format, GuardConfig, KindFactors, Limit,
    OrganisationQuotas, OrganisationScoring, OrganisationWeights, RiskyLimits, ScaledQuotas,
    Scoring, Sync, Weights,
};
pub use region::{LocalTime, OffHours, PeerGroup, Region, region_of};
pub use store::{GuardStore, StoreError};
pub use window::{BUCKET_SECS, bucket_of};

/// A mandate this many days old or younger is new (see
/// [`Attempt::new_mandate`]).
pub const NEW_MANDATE_DAYS: i64 = 2;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use chrono::{DateTime, TimeDelta, Utc};
use rempart_domain::{AccountId, OrganisationId};

use crate::baseline::{Baseline, OrgBaseline};
use crate::engine::{AccountState, AccountVerdict, is_quota};
use crate::organisation::{OrgState, Shared, Sightings};
use crate::store::{
    ActivityCounts, AlertQuery, FlushBatch, Freeze, KnownKind, Metric, Scope, StoredAlert,
    SuspensionBlock,
};
use crate::window::{DAY_BUCKETS, HOUR_BUCKETS};

/// Failures of the guard itself. The consultation path treats any of them
/// as a refusal: fail closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The store failed.
    #[error("guard state unavailable: {0}")]
    Store(#[from] StoreError),
    /// No successful sync for too long: other instances' counts are unknown.
    #[error("guard state unavailable: last successful sync {0} s ago")]
    Stale(i64),
}

/// The guard's answer to one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardDecision {
    /// What to do.
    pub verdict: Verdict,
    /// Present for every verdict but [`Verdict::Allow`]: pass it to
    /// [`Guard::raise`] (after filling its ledger range) to store it.
    pub alert: Option<Alert>,
    /// The account's own verdict is a suspension: the caller suspends it in
    /// the registry, also when the organisation's freeze is the verdict
    /// (the suspension that freezes it is still a suspension).
    pub suspends_account: bool,
}

impl GuardDecision {
    const ALLOW: GuardDecision = GuardDecision {
        verdict: Verdict::Allow,
        alert: None,
        suspends_account: false,
    };

    /// Whether the attempt may go on to the vault.
    pub fn lets_through(&self) -> bool {
        self.verdict.lets_through()
    }
}

/// What one [`Guard::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Counter deltas written.
    pub counters: usize,
    /// Activity rows written (account and peer).
    pub activity: usize,
    /// Alerts stored.
    pub alerts: usize,
    /// Subjects with counts from other instances.
    pub remote: usize,
    /// Organisations frozen.
    pub frozen: usize,
    /// Accounts held in memory after the sync.
    pub accounts: usize,
}

/// Other instances' (metric, hour, day) counts for one subject.
type RemoteRows = Vec<(Metric, u32, u32)>;

/// An account's exchange in flight on this instance: marks the account
/// (see [`AccountState::exchanging`]) and holds the counts taken, which go
/// back to the next sync unless [`Exchange::stored`] says the store has
/// them, also when the request is dropped halfway.
struct Exchange<'a> {
    inner: &'a Inner,
    id: AccountId,
    deltas: Vec<store::CounterDelta>,
    marked: bool,
}

impl<'a> Exchange<'a> {
    fn start(inner: &'a Inner, id: AccountId) -> Self {
        Exchange {
            inner,
            id,
            deltas: Vec::new(),
            marked: false,
        }
    }

    /// Marks the account and takes its and its organisation's unshared
    /// counts; `None` if the account is already being exchanged.
    fn take(&mut self, org_id: OrganisationId) -> Option<&[store::CounterDelta]> {
        {
            let mut shard = lock(self.inner.account_shard(self.id));
            let st = shard.get_mut(&self.id)?;
            if st.exchanging {
                return None;
            }
            st.exchanging = true;
            self.marked = true;
            st.take_counts(self.id.get(), &mut self.deltas);
        }
        if let Some(o) = lock(self.inner.org_shard(org_id)).get_mut(&org_id) {
            o.take_counts(org_id.get(), &mut self.deltas);
        }
        Some(&self.deltas)
    }

    /// The store added the counts.
    fn stored(&mut self) {
        self.deltas.clear();
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if !self.deltas.is_empty() {
            lock(&self.inner.pending).counters.append(&mut self.deltas);
        }
        if self.marked
            && let Some(st) = lock(self.inner.account_shard(self.id)).get_mut(&self.id)
        {
            st.exchanging = false;
        }
    }
}

/// Other instances' counts by subject.
fn remote_rows(remote: Vec<store::RemoteCount>) -> HashMap<(Scope, i64), RemoteRows> {
    let mut by_subject: HashMap<(Scope, i64), RemoteRows> = HashMap::new();
    for r in remote {
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        by_subject.entry((r.scope, r.subject)).or_default().push((
            r.metric,
            clamp(r.hour),
            clamp(r.day),
        ));
    }
    by_subject
}

/// Sets a subject's remote counts to the other instances' (none when
/// `rows` is `None`).
fn apply_remote(rates: &mut [window::Rate; store::METRICS], rows: Option<&RemoteRows>) {
    for r in rates.iter_mut() {
        r.remote_hour = 0;
        r.remote_day = 0;
    }
    for &(m, h, d) in rows.into_iter().flatten() {
        let r = &mut rates[m as usize];
        r.remote_hour = h;
        r.remote_day = d;
    }
}

const ACCOUNT_SHARDS: usize = 64;
const ORG_SHARDS: usize = 16;

/// The guard. Cheap to clone and share between request handlers.
#[derive(Clone)]
pub struct Guard {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("pass_through", &self.inner.is_none())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: GuardConfig,
    store: Arc<dyn GuardStore>,
    instance: i64,
    accounts: Vec<Mutex<HashMap<AccountId, AccountState>>>,
    orgs: Vec<Mutex<HashMap<OrganisationId, OrgState>>>,
    peers: RwLock<HashMap<i64, Baseline>>,
    peers_day: AtomicI32,
    /// Networks and devices accounts started using within the day.
    sightings: Sightings,
    /// Unix time of the last successful sync (or open); `i64::MIN` after a
    /// failed one.
    last_sync: AtomicI64,
    last_prune: AtomicI64,
    /// Other instances alive as of the last sync: with none, there is no
    /// one to exchange with.
    others: AtomicU32,
    /// Alerts raised, freezes decided and suspension blocks lengthened since
    /// the last sync, and whatever a failed write could not store.
    pending: Mutex<FlushBatch>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these locks can be left half-done by a panic in a way
    // that breaks an invariant worse than a lost count.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Guard {
    /// A guard that lets every attempt through and keeps nothing: for
    /// benchmarks with and without the guard, and for tests of other stages.
    pub fn pass_through() -> Self {
        Guard { inner: None }
    }

    /// Opens the guard on its store: loads the peer groups' baselines and
    /// the frozen organisations. `instance` identifies this server among
    /// those sharing the store (any value unique among them, e.g. random).
    pub async fn open(
        config: GuardConfig,
        store: Arc<dyn GuardStore>,
        instance: i64,
        now: DateTime<Utc>,
    ) -> Result<Guard, GuardError> {
        let inner = Inner {
            config,
            store,
            instance,
            accounts: (0..ACCOUNT_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            orgs: (0..ORG_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            peers: RwLock::new(HashMap::new()),
            peers_day: AtomicI32::new(i32::MIN),
            sightings: Sightings::new(),
            last_sync: AtomicI64::new(i64::MIN),
            last_prune: AtomicI64::new(i64::MIN),
            others: AtomicU32::new(0),
            pending: Mutex::new(FlushBatch {
                instance,
                ..FlushBatch::default()
            }),
        };
        // A first sync: the peers' baselines, the frozen organisations and
        // what the other instances counted, before the first attempt.
        inner.load_peers(now).await?;
        inner.sync(now).await?;
        inner.last_sync.store(now.timestamp(), Ordering::SeqCst);
        Ok(Guard {
            inner: Some(Arc::new(inner)),
        })
    }

    /// The configuration in force (the defaults for a pass-through guard).
    pub fn config(&self) -> GuardConfig {
        self.inner.as_ref().map(|i| i.config).unwrap_or_default()
    }

    /// Decides on an attempt the policy allowed, before the vault opens
    /// anything, and counts it.
    pub async fn check(&self, attempt: &Attempt) -> Result<GuardDecision, GuardError> {
        match &self.inner {
            None => Ok(GuardDecision::ALLOW),
            Some(inner) => inner.decide(attempt, None).await,
        }
    }

    /// Counts an attempt that ended without data (see [`Observed`]). The
    /// attempt is refused anyway; the decision says whether the account
    /// must now be throttled, suspended or its organisation frozen.
    pub async fn observe(
        &self,
        attempt: &Attempt,
        how: Observed,
    ) -> Result<GuardDecision, GuardError> {
        match &self.inner {
            None => Ok(GuardDecision::ALLOW),
            Some(inner) => inner.decide(attempt, Some(how)).await,
        }
    }

    /// Queues an alert (with its ledger range filled in) for the next sync.
    /// No I/O: alerts are stored by [`Guard::sync`].
    pub fn raise(&self, alert: Alert) {
        if let Some(inner) = &self.inner {
            lock(&inner.pending).alerts.push(alert);
        }
    }

    /// Flushes this instance's state to the store and reads the others'.
    /// On error the guard fails closed until a sync succeeds; nothing queued
    /// is lost (it is retried with the next sync).
    pub async fn sync(&self, now: DateTime<Utc>) -> Result<SyncReport, GuardError> {
        match &self.inner {
            None => Ok(SyncReport::default()),
            Some(inner) => {
                let r = inner.sync(now).await;
                match &r {
                    Ok(_) => inner.last_sync.store(now.timestamp(), Ordering::SeqCst),
                    Err(_) => inner.last_sync.store(i64::MIN, Ordering::SeqCst),
                }
                r
            }
        }
    }

    /// Lifts an organisation's freeze (an officer's decision); other
    /// instances follow at their next sync. `Ok(true)` when the
    /// organisation was frozen, in the store or only on this instance (a
    /// freeze decided since the last sync: it is dropped here, and the
    /// store keeps the lift, so that no flush brings it back).
    pub async fn lift_freeze(
        &self,
        organisation_id: OrganisationId,
        at: DateTime<Utc>,
    ) -> Result<bool, GuardError> {
        let Some(inner) = &self.inner else {
            return Ok(false);
        };
        let pending = {
            let mut p = lock(&inner.pending);
            let before = p.freezes.len();
            p.freezes.retain(|f| f.organisation_id != organisation_id);
            p.freezes.len() != before
        };
        let stored = inner.store.lift_freeze(organisation_id, at).await?;
        let here = lock(inner.org_shard(organisation_id))
            .get_mut(&organisation_id)
            .is_some_and(OrgState::lift);
        Ok(stored || pending || here)
    }

    /// Organisations frozen now, with the instant of each freeze: those the
    /// store holds (every instance's, as of their last sync) and those
    /// decided on this instance since its own. Empty for the pass-through.
    pub async fn frozen_organisations(&self) -> Result<Vec<Freeze>, GuardError> {
        let Some(inner) = &self.inner else {
            return Ok(Vec::new());
        };
        let mut frozen = inner.store.frozen_organisations().await?;
        for f in &lock(&inner.pending).freezes {
            if !frozen
                .iter()
                .any(|g| g.organisation_id == f.organisation_id)
            {
                frozen.push(*f);
            }
        }
        frozen.sort_by_key(|f| f.organisation_id);
        Ok(frozen)
    }

    /// Stored alerts.
    pub async fn alerts(&self, query: &AlertQuery) -> Result<Vec<StoredAlert>, GuardError> {
        match &self.inner {
            None => Ok(Vec::new()),
            Some(inner) => Ok(inner.store.alerts(query).await?),
        }
    }
}

impl Inner {
    fn account_shard(&self, id: AccountId) -> &Mutex<HashMap<AccountId, AccountState>> {
        &self.accounts[(id.get() as u64 % ACCOUNT_SHARDS as u64) as usize]
    }

    fn org_shard(&self, id: OrganisationId) -> &Mutex<HashMap<OrganisationId, OrgState>> {
        &self.orgs[(id.get() as u64 % ORG_SHARDS as u64) as usize]
    }

    fn healthy(&self, now: i64) -> Result<(), GuardError> {
        let last = self.last_sync.load(Ordering::SeqCst);
        let age = now.saturating_sub(last);
        if last == i64::MIN || age > i64::from(self.config.sync.max_staleness_secs) {
            return Err(GuardError::Stale(if last == i64::MIN { -1 } else { age }));
        }
        Ok(())
    }

    fn first_baseline_day(&self, day: i32) -> i32 {
        day.saturating_sub(self.config.scoring.baseline_days as i32)
    }

    /// Makes sure the account's baseline is loaded for its current local day.
    async fn ensure_loaded(&self, a: &Attempt, day: i32) -> Result<(), GuardError> {
        let id = a.account.account_id;
        if lock(self.account_shard(id))
            .get(&id)
            .is_some_and(|s| s.loaded_day == day)
        {
            return Ok(());
        }
        // The lock is not held across the store call; two requests may both
        // load, and the second simply refreshes the same baseline.
        let history = self
            .store
            .load_account(id, self.first_baseline_day(day))
            .await?;
        let s = &self.config.scoring;
        let own = Baseline::of(&history.activity, false, s.work_start_hour, s.work_end_hour);
        let mut shard = lock(self.account_shard(id));
        let st = shard.entry(id).or_insert_with(|| AccountState::new(a));
        st.own = own;
        st.loaded_day = day;
        st.merge_known(&history.known);
        // Suspended on another instance: refused here too, from the first
        // attempt, even if the registry was reactivated meanwhile.
        if let Some(until) = history.blocked_until {
            st.apply_block(until.timestamp(), a.at.timestamp());
        }
        Ok(())
    }

    /// Makes sure the organisation's usual is loaded for the local day.
    async fn ensure_org_loaded(
        &self,
        organisation_id: OrganisationId,
        day: i32,
    ) -> Result<(), GuardError> {
        if lock(self.org_shard(organisation_id))
            .get(&organisation_id)
            .is_some_and(|o| o.loaded_day == day)
        {
            return Ok(());
        }
        let rows = self
            .store
            .load_organisation(organisation_id, self.first_baseline_day(day))
            .await?;
        let s = &self.config.scoring;
        let own = OrgBaseline::of(&rows, s.work_start_hour, s.work_end_hour);
        let mut shard = lock(self.org_shard(organisation_id));
        let o = shard.entry(organisation_id).or_insert_with(OrgState::new);
        o.own = own;
        o.loaded_day = day;
        Ok(())
    }

    /// Records the attempt's network and device, and counts who else
    /// started using them (see [`Sightings::sight`]).
    fn sight(&self, a: &Attempt, account: &AccountVerdict) -> Shared {
        let now = a.at.timestamp();
        let who = (a.account.organisation_id, a.account.account_id);
        let stepped_up = a.session.stepped_up_at.map(|t| t.timestamp());
        let mut shared = Shared::default();
        if let Some(d) = a.session.network {
            let new = account.new_network.is_some();
            shared.network = self
                .sightings
                .sight(KnownKind::Network, d, new, who, stepped_up, now);
        }
        if let Some(d) = a.session.device {
            let new = account.new_device.is_some();
            shared.device = self
                .sightings
                .sight(KnownKind::Device, d, new, who, stepped_up, now);
        }
        shared
    }

    fn peer(&self, key: i64) -> Baseline {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
            .unwrap_or_default()
    }

    async fn decide(
        &self,
        a: &Attempt,
        observed: Option<Observed>,
    ) -> Result<GuardDecision, GuardError> {
        let now = a.at.timestamp();
        self.healthy(now)?;
        let local = LocalTime::of(a.at, a.account.region());
        self.ensure_loaded(a, local.day).await?;
        self.ensure_org_loaded(a.account.organisation_id, local.day)
            .await?;
        self.exchange_if_due(a).await?;
        let peer = self.peer(a.account.peer.key());
        let id = a.account.account_id;
        let account: AccountVerdict = {
            let mut shard = lock(self.account_shard(id));
            let st = shard.entry(id).or_insert_with(|| AccountState::new(a));
            st.organisation_id = a.account.organisation_id;
            st.peer = a.account.peer.key();
            st.decide(&self.config, a, observed, local, peer)
        };
        if let Some(until) = account.block {
            self.share_block(id, until, account.newly_suspended).await;
        }
        let org_id = a.account.organisation_id;
        let shared = self.sight(a, &account);
        let mut org = {
            let mut shard = lock(self.org_shard(org_id));
            let o = shard.entry(org_id).or_insert_with(OrgState::new);
            o.decide(&self.config, a, &account, observed.is_none(), peer, shared)
        };
        if org.newly_frozen {
            lock(&self.pending).freezes.push(Freeze {
                organisation_id: org_id,
                frozen_at: a.at,
            });
        }
        let by_org = org.verdict > account.verdict;
        let (verdict, kind, fresh, mut lines) = if by_org {
            (
                org.verdict,
                org.kind,
                org.fresh,
                org.lines.as_slice().to_vec(),
            )
        } else {
            (account.verdict, account.kind, account.fresh, Vec::new())
        };
        if verdict == Verdict::Allow {
            return Ok(GuardDecision::ALLOW);
        }
        // The rare path: the accounts an organisation's alert names.
        let mut accounts = if by_org {
            std::mem::take(&mut org.accounts)
        } else {
            Vec::new()
        };
        if by_org && kind == AlertKind::OrganisationBehaviour {
            let now = a.at.timestamp();
            for (kind, d) in [
                (KnownKind::Network, a.session.network),
                (KnownKind::Device, a.session.device),
            ] {
                if let Some(d) = d {
                    accounts.extend(self.sightings.accounts(kind, d, now));
                }
            }
            accounts.sort_unstable();
            accounts.dedup();
        }
        // The rare path: build the explanation.
        lines.extend_from_slice(account.lines.as_slice());
        lines.retain(|l| {
            l.contribution > 0.0
                || is_quota(l.feature)
                || matches!(l.feature, Feature::Blocked | Feature::OrganisationStepUp)
        });
        lines.sort_by(|x, y| y.contribution.total_cmp(&x.contribution));
        lines.truncate(TOP_FEATURES);
        let daily = lines.iter().any(|l| {
            matches!(
                l.feature,
                Feature::PersonsPerDay
                    | Feature::NirPerDay
                    | Feature::SearchesPerDay
                    | Feature::BreakGlassPerDay
                    | Feature::MandateGrantsPerDay
                    | Feature::BreakGlassRate
                    | Feature::Suspensions
                    | Feature::SharedNewNetwork
                    | Feature::SharedNewDevice
                    | Feature::CrossOrganisationNetwork
                    | Feature::CrossOrganisationDevice
            )
        });
        let window = if daily {
            TimeDelta::days(1)
        } else {
            TimeDelta::hours(1)
        };
        Ok(GuardDecision {
            verdict,
            suspends_account: account.verdict == Verdict::Suspend,
            alert: Some(Alert {
                at: a.at,
                kind,
                account_id: id,
                organisation_id: org_id,
                verdict,
                score: account.score + org.score,
                explanation: lines,
                fresh,
                evidence: Evidence {
                    from: a.at - window,
                    to: a.at,
                    first_seq: None,
                    last_seq: None,
                },
                accounts,
            }),
        })
    }

    /// The synchronous exchange (see `sync.exchange_after`): when the
    /// account counted enough attempts the other instances have not seen,
    /// or it or its organisation is near a limit, shares their counts and
    /// reads the others' for both, in one store call, before the decision.
    /// On error the counts taken wait for the next sync and the attempt is
    /// refused (fail closed).
    async fn exchange_if_due(&self, a: &Attempt) -> Result<(), GuardError> {
        if self.others.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let now = a.at.timestamp();
        let (id, org_id) = (a.account.account_id, a.account.organisation_id);
        {
            let mut shard = lock(self.account_shard(id));
            let st = shard.entry(id).or_insert_with(|| AccountState::new(a));
            // One exchange per account at a time on this instance: the
            // decisions meanwhile go on with the counts last read, and
            // what they count is shared by the next exchange. (Concurrent
            // exchanges of one hot account would queue on its counter rows.)
            if st.exchanging {
                return Ok(());
            }
            let due = st.needs_exchange(&self.config, a, now);
            drop(shard);
            let mut orgs = lock(self.org_shard(org_id));
            let o = orgs.entry(org_id).or_insert_with(OrgState::new);
            if !due && !o.needs_exchange(&self.config, a, now) {
                return Ok(());
            }
        }
        let mut exchange = Exchange::start(self, id);
        let Some(deltas) = exchange.take(org_id) else {
            return Ok(()); // another decision started one meanwhile
        };
        let b = bucket_of(now);
        let subjects = [
            (Scope::Account, id.get()),
            (Scope::Organisation, org_id.get()),
        ];
        let remote = match self
            .store
            .exchange(
                self.instance,
                deltas,
                &subjects,
                b - (HOUR_BUCKETS - 1),
                b - (DAY_BUCKETS - 1),
            )
            .await
        {
            Ok(r) => r,
            // The counts go back to the next sync (`Exchange`'s drop).
            Err(e) => return Err(e.into()),
        };
        exchange.stored();
        drop(exchange);
        let rows = remote_rows(remote);
        if let Some(st) = lock(self.account_shard(id)).get_mut(&id) {
            apply_remote(&mut st.rates, rows.get(&subjects[0]));
        }
        if let Some(o) = lock(self.org_shard(org_id)).get_mut(&org_id) {
            apply_remote(&mut o.rates, rows.get(&subjects[1]));
        }
        Ok(())
    }

    /// Shares a suspension block with the other instances. A new
    /// suspension is stored before the decision returns, so that no crash
    /// or reactivation before the next sync can lose it; a lengthened one
    /// waits for the sync, like the counts (a suspended account's attempts
    /// would otherwise each cost a write). A failed write is retried by
    /// the next sync, which fails closed until it succeeds; the decision
    /// stays a suspension meanwhile, so the registry is still suspended
    /// and the alert still raised.
    async fn share_block(&self, account_id: AccountId, until: i64, store_now: bool) {
        let block = SuspensionBlock {
            account_id,
            until: DateTime::from_timestamp(until, 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
        };
        if store_now && self.store.block_account(block).await.is_ok() {
            return;
        }
        lock(&self.pending).push_block(block);
    }

    /// Applies the stored suspension blocks to the accounts held here
    /// (the others read theirs when first met).
    async fn load_blocks(&self, now: DateTime<Utc>) -> Result<(), GuardError> {
        let t = now.timestamp();
        for b in self.store.suspension_blocks(now).await? {
            if let Some(st) = lock(self.account_shard(b.account_id)).get_mut(&b.account_id) {
                st.apply_block(b.until.timestamp(), t);
            }
        }
        Ok(())
    }

    async fn load_peers(&self, now: DateTime<Utc>) -> Result<(), GuardError> {
        let day = LocalTime::of(now, 0).day;
        let rows = self.store.load_peers(self.first_baseline_day(day)).await?;
        let mut by_peer: HashMap<i64, Vec<store::ActivityRow>> = HashMap::new();
        for r in rows {
            by_peer.entry(r.subject).or_default().push(r);
        }
        let s = &self.config.scoring;
        let baselines = by_peer
            .into_iter()
            .map(|(k, rows)| {
                (
                    k,
                    Baseline::of(&rows, true, s.work_start_hour, s.work_end_hour),
                )
            })
            .collect();
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = baselines;
        self.peers_day.store(day, Ordering::SeqCst);
        Ok(())
    }

    async fn load_frozen(&self) -> Result<usize, GuardError> {
        let frozen: std::collections::HashSet<OrganisationId> = self
            .store
            .frozen_organisations()
            .await?
            .into_iter()
            .map(|f| f.organisation_id)
            .collect();
        for shard in &self.orgs {
            for (id, o) in lock(shard).iter_mut() {
                if o.frozen && !frozen.contains(id) {
                    // Lifted on another instance.
                    o.lift();
                }
                o.frozen = frozen.contains(id);
            }
        }
        for id in &frozen {
            lock(self.org_shard(*id))
                .entry(*id)
                .or_insert_with(OrgState::new)
                .frozen = true;
        }
        Ok(frozen.len())
    }

    /// Takes everything pending out of the shards (peer rows summed from
    /// the accounts' rows) and forgets idle state.
    fn drain(&self, now: i64) -> (FlushBatch, usize) {
        let mut batch = std::mem::take(&mut *lock(&self.pending));
        batch.instance = self.instance;
        // Keyed by the rows' plain `subject`: a peer group's key, an
        // organisation's id.
        let mut peers: HashMap<(i64, i32, u8), ActivityCounts> = HashMap::new();
        let mut orgs: HashMap<(i64, i32, u8), ActivityCounts> = HashMap::new();
        let mut held = 0;
        for shard in &self.accounts {
            let mut shard = lock(shard);
            for (&id, st) in shard.iter_mut() {
                st.take_counts(id.get(), &mut batch.counters);
                for mut r in st.pending_activity.drain(..) {
                    r.subject = id.get();
                    peers
                        .entry((st.peer, r.day, r.hour))
                        .or_default()
                        .add(&r.counts);
                    orgs.entry((st.organisation_id.get(), r.day, r.hour))
                        .or_default()
                        .add(&r.counts);
                    batch.activity.push(r);
                }
                batch.known.append(&mut st.pending_known);
                st.prune(now);
            }
            shard.retain(|_, st| !st.is_idle(now));
            held += shard.len();
        }
        for (scope, rows) in [(Scope::Peer, peers), (Scope::Organisation, orgs)] {
            for ((subject, day, hour), counts) in rows {
                batch.activity.push(store::ActivityRow {
                    scope,
                    subject,
                    day,
                    hour,
                    counts,
                });
            }
        }
        self.sightings.prune(now);
        for shard in &self.orgs {
            let mut shard = lock(shard);
            for (&id, o) in shard.iter_mut() {
                o.take_counts(id.get(), &mut batch.counters);
                o.prune(now);
            }
            shard.retain(|_, o| !o.is_idle(now));
        }
        (batch, held)
    }

    async fn sync(&self, now: DateTime<Utc>) -> Result<SyncReport, GuardError> {
        let t = now.timestamp();
        let (batch, accounts) = self.drain(t);
        let mut report = SyncReport {
            counters: batch.counters.len(),
            activity: batch.activity.len(),
            alerts: batch.alerts.len(),
            accounts,
            ..SyncReport::default()
        };
        if !batch.is_empty()
            && let Err(e) = self.store.flush(&batch).await
        {
            // Keep it for the next attempt, before anything newer.
            let mut pending = lock(&self.pending);
            let newer = std::mem::take(&mut *pending);
            *pending = batch;
            pending.append(newer);
            return Err(e.into());
        }
        let since = now
            .checked_sub_signed(TimeDelta::seconds(i64::from(
                self.config.sync.max_staleness_secs,
            )))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let others = self.store.announce(self.instance, now, since).await?;
        self.others.store(others, Ordering::SeqCst);
        let b = bucket_of(t);
        let remote = self
            .store
            .remote_counts(self.instance, b - (HOUR_BUCKETS - 1), b - (DAY_BUCKETS - 1))
            .await?;
        report.remote = remote.len();
        let by_subject = remote_rows(remote);
        // Subjects counted elsewhere but not met here yet get a state now,
        // so that their first attempt here already sees those counts.
        for &(scope, subject) in by_subject.keys() {
            match scope {
                Scope::Account => {
                    let id = AccountId::new(subject);
                    lock(self.account_shard(id))
                        .entry(id)
                        .or_insert_with(|| AccountState::blank(OrganisationId::new(0), 0));
                }
                Scope::Organisation => {
                    let id = OrganisationId::new(subject);
                    lock(self.org_shard(id))
                        .entry(id)
                        .or_insert_with(OrgState::new);
                }
                Scope::Peer => {}
            }
        }
        for shard in &self.accounts {
            for (id, st) in lock(shard).iter_mut() {
                apply_remote(&mut st.rates, by_subject.get(&(Scope::Account, id.get())));
            }
        }
        for shard in &self.orgs {
            for (id, o) in lock(shard).iter_mut() {
                apply_remote(
                    &mut o.rates,
                    by_subject.get(&(Scope::Organisation, id.get())),
                );
            }
        }
        report.frozen = self.load_frozen().await?;
        self.load_blocks(now).await?;
        if self.peers_day.load(Ordering::SeqCst) != LocalTime::of(now, 0).day {
            self.load_peers(now).await?;
        }
        if t.saturating_sub(self.last_prune.load(Ordering::SeqCst)) >= 3600 {
            let day = LocalTime::of(now, 0).day;
            self.store
                .prune(
                    b - DAY_BUCKETS - HOUR_BUCKETS,
                    self.first_baseline_day(day) - 1,
                )
                .await?;
            self.last_prune.store(t, Ordering::SeqCst);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
