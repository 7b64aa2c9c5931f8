//! What the guard persists, behind its own interface, [`GuardStore`]: the
//! counters every instance shares, the hourly activity baselines are made
//! of, the devices and networks seen per account, alerts, organisation
//! freezes and the suspension blocks of accounts. `rempart-storage` implements it on SQLite and PostgreSQL;
//! [`memory::MemoryStore`] keeps it in one process.
//!
//! Nothing here is a personal value: ids, counts, 16-byte digests.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::{AccountId, OrganisationId};

use crate::alert::Alert;

/// Whose counts a row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// An account.
    Account,
    /// An organisation.
    Organisation,
    /// A peer group ([`crate::PeerGroup::key`]).
    Peer,
}

impl Scope {
    /// The stored code.
    pub fn code(self) -> i16 {
        match self {
            Scope::Account => 1,
            Scope::Organisation => 2,
            Scope::Peer => 3,
        }
    }

    /// Parses a stored code.
    pub fn from_code(code: i16) -> Option<Scope> {
        match code {
            1 => Some(Scope::Account),
            2 => Some(Scope::Organisation),
            3 => Some(Scope::Peer),
            _ => None,
        }
    }
}

/// What a shared counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Metric {
    /// Attempts (checked or denied).
    Attempts = 0,
    /// Persons shown that were not shown in the hour before (hour stream).
    PersonsHour = 1,
    /// Persons shown that were not shown in the day before (day stream).
    PersonsDay = 2,
    /// NIRs shown in clear.
    Nir = 3,
    /// Search queries.
    Searches = 4,
    /// Denied or not-found attempts.
    Misses = 5,
    /// Searches that found nothing.
    SearchMisses = 6,
    /// Denied reads of ids next to the previous one.
    SequentialMisses = 7,
    /// Break-glass accesses.
    BreakGlass = 8,
    /// Attempts refused by the guard.
    Refusals = 9,
    /// Attempts outside working time.
    OffHours = 10,
    /// Accounts suspended (organisation scope).
    Suspensions = 11,
    /// Persons shown that were not shown in the hour before, through a new
    /// mandate (hour stream; see `Attempt::new_mandate`).
    NewMandatePersons = 12,
    /// Mandates granted by hand (officers).
    MandateGrants = 13,
}

/// How many metrics there are.
pub const METRICS: usize = 14;

impl Metric {
    /// Every metric, in code order.
    pub const ALL: [Metric; METRICS] = [
        Metric::Attempts,
        Metric::PersonsHour,
        Metric::PersonsDay,
        Metric::Nir,
        Metric::Searches,
        Metric::Misses,
        Metric::SearchMisses,
        Metric::SequentialMisses,
        Metric::BreakGlass,
        Metric::Refusals,
        Metric::OffHours,
        Metric::Suspensions,
        Metric::NewMandatePersons,
        Metric::MandateGrants,
    ];

    /// The stored code.
    pub fn code(self) -> i16 {
        self as u8 as i16
    }

    /// Parses a stored code.
    pub fn from_code(code: i16) -> Option<Metric> {
        usize::try_from(code)
            .ok()
            .and_then(|i| Metric::ALL.get(i).copied())
    }
}

/// Counts one instance adds to a shared counter bucket
/// ([`crate::BUCKET_SECS`] wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterDelta {
    /// Whose.
    pub scope: Scope,
    /// Account or organisation id.
    pub subject: i64,
    /// What.
    pub metric: Metric,
    /// Bucket index: Unix time / bucket width.
    pub bucket: i64,
    /// How many to add.
    pub count: u32,
}

/// What the other instances counted for one subject and metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteCount {
    /// Whose.
    pub scope: Scope,
    /// Account or organisation id.
    pub subject: i64,
    /// What.
    pub metric: Metric,
    /// Over the last hour (buckets from `hour_from`).
    pub hour: u64,
    /// Over the last day (buckets from `day_from`).
    pub day: u64,
}

/// Activity of one subject during one local hour: what baselines are made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActivityCounts {
    /// Attempts.
    pub attempts: u32,
    /// Distinct persons shown (hour stream).
    pub persons: u32,
    /// Denied or not-found attempts.
    pub misses: u32,
    /// Search queries.
    pub searches: u32,
    /// Searches that found nothing.
    pub search_misses: u32,
    /// NIRs shown in clear.
    pub nir: u32,
    /// Break-glass accesses.
    pub break_glass: u32,
    /// Accounts active during the hour (peer scope: how many accounts the
    /// other counts are spread over; account scope: 1).
    pub account_hours: u32,
}

impl ActivityCounts {
    /// Adds another hour's counts.
    pub fn add(&mut self, o: &ActivityCounts) {
        self.attempts = self.attempts.saturating_add(o.attempts);
        self.persons = self.persons.saturating_add(o.persons);
        self.misses = self.misses.saturating_add(o.misses);
        self.searches = self.searches.saturating_add(o.searches);
        self.search_misses = self.search_misses.saturating_add(o.search_misses);
        self.nir = self.nir.saturating_add(o.nir);
        self.break_glass = self.break_glass.saturating_add(o.break_glass);
        self.account_hours = self.account_hours.saturating_add(o.account_hours);
    }
}

/// One stored (or to-be-added) hour of activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityRow {
    /// Account or peer group.
    pub scope: Scope,
    /// Account id or peer key.
    pub subject: i64,
    /// Local day, days since 1970-01-01.
    pub day: i32,
    /// Local hour, 0–23.
    pub hour: u8,
    /// The counts.
    pub counts: ActivityCounts,
}

/// A device or a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KnownKind {
    /// A device key thumbprint digest.
    Device,
    /// A network prefix digest.
    Network,
}

impl KnownKind {
    /// The stored code.
    pub fn code(self) -> i16 {
        match self {
            KnownKind::Device => 1,
            KnownKind::Network => 2,
        }
    }

    /// Parses a stored code.
    pub fn from_code(code: i16) -> Option<KnownKind> {
        match code {
            1 => Some(KnownKind::Device),
            2 => Some(KnownKind::Network),
            _ => None,
        }
    }
}

/// A device or network an account was first seen using at `first_seen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The account.
    pub account_id: AccountId,
    /// Device or network.
    pub kind: KnownKind,
    /// Its digest.
    pub digest: [u8; 16],
    /// First seen (the earliest wins when instances disagree).
    pub first_seen: DateTime<Utc>,
}

/// What the guard loads about an account when it first meets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountHistory {
    /// Its activity rows from the requested day on.
    pub activity: Vec<ActivityRow>,
    /// Devices and networks it used.
    pub known: Vec<Known>,
    /// The end of its suspension block, if one was ever stored (it may be
    /// over: the guard compares it with the attempt's instant).
    pub blocked_until: Option<DateTime<Utc>>,
}

/// An organisation refused as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freeze {
    /// The organisation.
    pub organisation_id: OrganisationId,
    /// Since when.
    pub frozen_at: DateTime<Utc>,
}

/// An account the guard suspended: every instance refuses it with
/// [`crate::Verdict::Suspend`] until `until`, whatever the registry says
/// meanwhile (an officer reactivating it sooner sees it suspended again at
/// its first attempt). Stored blocks only ever lengthen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuspensionBlock {
    /// The account.
    pub account_id: AccountId,
    /// The end of the block.
    pub until: DateTime<Utc>,
}

/// Everything one sync writes, in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlushBatch {
    /// The writing instance.
    pub instance: i64,
    /// Counter increments.
    pub counters: Vec<CounterDelta>,
    /// Activity increments.
    pub activity: Vec<ActivityRow>,
    /// Devices and networks first seen.
    pub known: Vec<Known>,
    /// Alerts raised.
    pub alerts: Vec<Alert>,
    /// Organisations frozen.
    pub freezes: Vec<Freeze>,
    /// Suspension blocks set or lengthened (a block never shortens).
    pub blocks: Vec<SuspensionBlock>,
}

impl FlushBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
            && self.activity.is_empty()
            && self.known.is_empty()
            && self.alerts.is_empty()
            && self.freezes.is_empty()
            && self.blocks.is_empty()
    }

    /// Appends another batch (a failed flush is retried with the next one).
    pub fn append(&mut self, mut other: FlushBatch) {
        self.counters.append(&mut other.counters);
        self.activity.append(&mut other.activity);
        self.known.append(&mut other.known);
        self.alerts.append(&mut other.alerts);
        self.freezes.append(&mut other.freezes);
        self.blocks.append(&mut other.blocks);
    }

    /// Queues a suspension block, keeping one per account (the later end).
    pub fn push_block(&mut self, block: SuspensionBlock) {
        match self
            .blocks
            .iter_mut()
            .find(|b| b.account_id == block.account_id)
        {
            Some(b) => b.until = b.until.max(block.until),
            None => self.blocks.push(block),
        }
    }
}

/// Which stored alerts to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertQuery {
    /// From this instant (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// Until this instant (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Of this account only.
    pub account_id: Option<AccountId>,
    /// Of this organisation only.
    pub organisation_id: Option<OrganisationId>,
    /// Ids strictly greater than this (paging).
    pub after_id: i64,
    /// At most this many (0: none).
    pub limit: u32,
}

/// A stored alert and its id, in raising order.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAlert {
    /// Increasing id.
    pub id: i64,
    /// The alert.
    pub alert: Alert,
}

/// Failures of the guard's store. The guard turns any of them into a
/// refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (unreachable, constraint, I/O…).
    #[error("guard store: {0}")]
    Backend(String),
    /// Stored data cannot be read back.
    #[error("guard store: stored data is malformed: {0}")]
    Corrupt(String),
    /// A value cannot be stored (out of range…).
    #[error("guard store: invalid value: {0}")]
    Invalid(String),
}

/// The guard's persistent, shared state. Every method is one transaction.
#[async_trait]
pub trait GuardStore: Send + Sync {
    /// An account's activity from `from_day` (local day number) on, and the
    /// devices and networks it used.
    async fn load_account(
        &self,
        account_id: AccountId,
        from_day: i32,
    ) -> Result<AccountHistory, StoreError>;

    /// Every peer group's activity from `from_day` on.
    async fn load_peers(&self, from_day: i32) -> Result<Vec<ActivityRow>, StoreError>;
    /// An organisation's activity (its accounts' hours summed) from
    /// `from_day` on, in (day, hour) order.
    async fn load_organisation(
        &self,
        organisation_id: OrganisationId,
        from_day: i32,
    ) -> Result<Vec<ActivityRow>, StoreError>;

    /// Adds counters and activity, records devices (earliest first-seen
    /// wins), alerts, freezes (a freeze no later than the organisation's
    /// last lift is ignored: it was decided before that lift) and
    /// suspension blocks (the later end wins): all or nothing.
    async fn flush(&self, batch: &FlushBatch) -> Result<(), StoreError>;

    /// Per subject and metric, what instances other than `instance` counted
    /// in buckets from `hour_from` (hour) and from `day_from` (day).
    async fn remote_counts(
        &self,
        instance: i64,
        hour_from: i64,
        day_from: i64,
    ) -> Result<Vec<RemoteCount>, StoreError>;

    /// Records that `instance` is alive at `now`, and returns how many
    /// other instances recorded so since `since` (the instances sharing the
    /// store: an instance alone has no one to exchange with).
    async fn announce(
        &self,
        instance: i64,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> Result<u32, StoreError>;

    /// The synchronous exchange of one account near a limit (see
    /// [`crate::Sync::exchange_after`]): adds this instance's `deltas`,
    /// then returns what the other instances counted for `subjects` only,
    /// as [`GuardStore::remote_counts`] does for all. The deltas are added
    /// whole or not at all; the reading sees every delta another instance
    /// had added before. The default is a flush and a full read; backends
    /// make it one statement on the subjects' rows.
    async fn exchange(
        &self,
        instance: i64,
        deltas: &[CounterDelta],
        subjects: &[(Scope, i64)],
        hour_from: i64,
        day_from: i64,
    ) -> Result<Vec<RemoteCount>, StoreError> {
        if !deltas.is_empty() {
            self.flush(&FlushBatch {
                instance,
                counters: deltas.to_vec(),
                ..FlushBatch::default()
            })
            .await?;
        }
        let mut remote = self.remote_counts(instance, hour_from, day_from).await?;
        remote.retain(|r| subjects.contains(&(r.scope, r.subject)));
        Ok(remote)
    }

    /// Organisations frozen and not lifted.
    async fn frozen_organisations(&self) -> Result<Vec<Freeze>, StoreError>;

    /// Lifts an organisation's freeze; false if it was not frozen. The lift
    /// is recorded even when no freeze is stored, so that a freeze decided
    /// before it and flushed after it does not undo it.
    async fn lift_freeze(
        &self,
        organisation_id: OrganisationId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Stores a suspension block now, outside any flush: the guard writes
    /// one when it suspends an account, before its answer. A stored block
    /// is never shortened (the later end wins).
    async fn block_account(&self, block: SuspensionBlock) -> Result<(), StoreError>;

    /// Suspension blocks still running at `at` (ending after it), in
    /// account order.
    async fn suspension_blocks(
        &self,
        at: DateTime<Utc>,
    ) -> Result<Vec<SuspensionBlock>, StoreError>;

    /// Stored alerts, in id order.
    async fn alerts(&self, query: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError>;

    /// Removes counters in buckets before `bucket`, activity before `day`,
    /// suspension blocks that ended before `bucket` began and instances
    /// last seen before it; returns the rows removed.
    async fn prune(&self, bucket: i64, day: i32) -> Result<u64, StoreError>;
}

pub mod memory {
    //! [`GuardStore`] in one process's memory: for a single instance
    //! without a database, for tests and for benchmarks. It behaves like the
    //! database backends (same sums, same first-seen rule, same order).

    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[derive(Default)]
    struct State {
        counters: BTreeMap<(i64, i64, Scope, i64, i16), u64>,
        activity: BTreeMap<(Scope, i64, i32, u8), ActivityCounts>,
        known: HashMap<(AccountId, KnownKind, [u8; 16]), DateTime<Utc>>,
        alerts: Vec<Alert>,
        frozen: BTreeMap<OrganisationId, DateTime<Utc>>,
        lifted: BTreeMap<OrganisationId, DateTime<Utc>>,
        blocks: BTreeMap<AccountId, DateTime<Utc>>,
        instances: BTreeMap<i64, DateTime<Utc>>,
    }

    impl State {
        /// One subject's activity rows from `from_day` on, in order.
        fn subject_activity(&self, scope: Scope, subject: i64, from_day: i32) -> Vec<ActivityRow> {
            self.activity
                .range((scope, subject, from_day, 0)..=(scope, subject, i32::MAX, 23))
                .map(|(&(scope, subject, day, hour), counts)| ActivityRow {
                    scope,
                    subject,
                    day,
                    hour,
                    counts: *counts,
                })
                .collect()
        }

        fn block(&mut self, b: SuspensionBlock) {
            let until = self.blocks.entry(b.account_id).or_insert(b.until);
            *until = (*until).max(b.until);
        }
    }

    /// The in-memory store. [`MemoryStore::fail`] makes every call fail,
    /// to see the guard fail closed.
    #[derive(Default)]
    pub struct MemoryStore {
        state: Mutex<State>,
        failing: AtomicBool,
    }

    impl MemoryStore {
        /// An empty store.
        pub fn new() -> Self {
            Self::default()
        }

        /// From now on every call fails (or succeeds again with `false`).
        pub fn fail(&self, failing: bool) {
            self.failing.store(failing, Ordering::SeqCst);
        }

        fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Backend("unreachable (simulated)".into()));
            }
            Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()))
        }
    }

    #[async_trait]
    impl GuardStore for MemoryStore {
        async fn load_account(
            &self,
            account_id: AccountId,
            from_day: i32,
        ) -> Result<AccountHistory, StoreError> {
            let s = self.state()?;
            let activity = s.subject_activity(Scope::Account, account_id.get(), from_day);
            let mut known: Vec<Known> = s
                .known
                .iter()
                .filter(|((a, _, _), _)| *a == account_id)
                .map(|(&(account_id, kind, digest), &first_seen)| Known {
                    account_id,
                    kind,
                    digest,
                    first_seen,
                })
                .collect();
            known.sort_by_key(|k| (k.first_seen, k.digest));
            Ok(AccountHistory {
                activity,
                known,
                blocked_until: s.blocks.get(&account_id).copied(),
            })
        }

        async fn load_organisation(
            &self,
            organisation_id: OrganisationId,
            from_day: i32,
        ) -> Result<Vec<ActivityRow>, StoreError> {
            Ok(self
                .state()?
                .subject_activity(Scope::Organisation, organisation_id.get(), from_day))
        }

        async fn load_peers(&self, from_day: i32) -> Result<Vec<ActivityRow>, StoreError> {
            let s = self.state()?;
            Ok(s.activity
                .range((Scope::Peer, i64::MIN, i32::MIN, 0)..)
                .filter(|((scope, _, day, _), _)| *scope == Scope::Peer && *day >= from_day)
                .map(|(&(scope, subject, day, hour), counts)| ActivityRow {
                    scope,
                    subject,
                    day,
                    hour,
                    counts: *counts,
                })
                .collect())
        }

        async fn flush(&self, batch: &FlushBatch) -> Result<(), StoreError> {
            let mut s = self.state()?;
            for c in &batch.counters {
                *s.counters
                    .entry((
                        c.bucket,
                        batch.instance,
                        c.scope,
                        c.subject,
                        c.metric.code(),
                    ))
                    .or_default() += u64::from(c.count);
            }
            for a in &batch.activity {
                s.activity
                    .entry((a.scope, a.subject, a.day, a.hour))
                    .or_default()
                    .add(&a.counts);
            }
            for k in &batch.known {
                let e = s
                    .known
                    .entry((k.account_id, k.kind, k.digest))
                    .or_insert(k.first_seen);
                if k.first_seen < *e {
                    *e = k.first_seen;
                }
            }
            s.alerts.extend(batch.alerts.iter().cloned());
            for f in &batch.freezes {
                if s.lifted
                    .get(&f.organisation_id)
                    .is_some_and(|&lifted| f.frozen_at <= lifted)
                {
                    continue;
                }
                s.frozen.entry(f.organisation_id).or_insert(f.frozen_at);
            }
            for b in &batch.blocks {
                s.block(*b);
            }
            Ok(())
        }

        async fn remote_counts(
            &self,
            instance: i64,
            hour_from: i64,
            day_from: i64,
        ) -> Result<Vec<RemoteCount>, StoreError> {
            let s = self.state()?;
            let mut sums: BTreeMap<(Scope, i64, i16), (u64, u64)> = BTreeMap::new();
            for (&(bucket, inst, scope, subject, metric), &n) in s
                .counters
                .range((day_from, i64::MIN, Scope::Account, i64::MIN, i16::MIN)..)
            {
                if inst == instance {
                    continue;
                }
                let e = sums.entry((scope, subject, metric)).or_default();
                if bucket >= hour_from {
                    e.0 += n;
                }
                e.1 += n;
            }
            Ok(sums
                .into_iter()
                .filter_map(|((scope, subject, metric), (hour, day))| {
                    Some(RemoteCount {
                        scope,
                        subject,
                        metric: Metric::from_code(metric)?,
                        hour,
                        day,
                    })
                })
                .collect())
        }

        async fn announce(
            &self,
            instance: i64,
            now: DateTime<Utc>,
            since: DateTime<Utc>,
        ) -> Result<u32, StoreError> {
            let mut s = self.state()?;
            let seen = s.instances.entry(instance).or_insert(now);
            *seen = (*seen).max(now);
            let others = s
                .instances
                .iter()
                .filter(|&(&i, &at)| i != instance && at >= since)
                .count();
            Ok(u32::try_from(others).unwrap_or(u32::MAX))
        }

        async fn frozen_organisations(&self) -> Result<Vec<Freeze>, StoreError> {
            let s = self.state()?;
            Ok(s.frozen
                .iter()
                .map(|(&organisation_id, &frozen_at)| Freeze {
                    organisation_id,
                    frozen_at,
                })
                .collect())
        }

        async fn lift_freeze(
            &self,
            organisation_id: OrganisationId,
            at: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            let mut s = self.state()?;
            let lifted = s.lifted.entry(organisation_id).or_insert(at);
            *lifted = (*lifted).max(at);
            Ok(s.frozen.remove(&organisation_id).is_some())
        }

        async fn block_account(&self, block: SuspensionBlock) -> Result<(), StoreError> {
            self.state()?.block(block);
            Ok(())
        }

        async fn suspension_blocks(
            &self,
            at: DateTime<Utc>,
        ) -> Result<Vec<SuspensionBlock>, StoreError> {
            let s = self.state()?;
            Ok(s.blocks
                .iter()
                .filter(|(_, until)| **until > at)
                .map(|(&account_id, &until)| SuspensionBlock { account_id, until })
                .collect())
        }

        async fn alerts(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError> {
            let s = self.state()?;
            Ok(s.alerts
                .iter()
                .enumerate()
                .map(|(i, a)| StoredAlert {
                    id: i as i64 + 1,
                    alert: a.clone(),
                })
                .filter(|a| {
                    a.id > q.after_id
                        && q.from.is_none_or(|f| a.alert.at >= f)
                        && q.to.is_none_or(|t| a.alert.at < t)
                        && q.account_id.is_none_or(|x| a.alert.account_id == x)
                        && q.organisation_id
                            .is_none_or(|x| a.alert.organisation_id == x)
                })
                .take(q.limit as usize)
                .collect())
        }

        async fn prune(&self, bucket: i64, day: i32) -> Result<u64, StoreError> {
            let mut s = self.state()?;
            let before = s.counters.len() + s.activity.len() + s.blocks.len();
            s.counters.retain(|k, _| k.0 >= bucket);
            s.activity.retain(|k, _| k.2 >= day);
            let ended = bucket.saturating_mul(crate::BUCKET_SECS);
            s.blocks.retain(|_, until| until.timestamp() >= ended);
            s.instances.retain(|_, seen| seen.timestamp() >= ended);
            Ok((before - s.counters.len() - s.activity.len() - s.blocks.len()) as u64)
        }
    }
}
