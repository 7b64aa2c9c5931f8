//! What the exfiltration guard persists: [`rempart_guard::GuardStore`],
//! implemented by both backends on the registry's database and
//! connections (`sqlite::guard`, `postgres::guard`).
//!
//! Tables (migration 4): `guard_counter` (5-minute buckets per subject,
//! metric and instance, for the last day: instances read each other's),
//! `guard_activity` (hourly activity per account and peer group, local
//! time: the baselines), `guard_known` (device and network digests per
//! account, earliest sighting wins), `guard_alert` and
//! `guard_alert_feature` (alerts and their explanations), `guard_freeze`
//! (frozen organisations); migration 9: `guard_block` (the end of each
//! guard-suspended account's block, only ever moved later). Ids, counts,
//! instants and digests only.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rempart_domain::AccountId;
use rempart_guard::store::{ActivityCounts, ActivityRow, CounterDelta, FlushBatch, Scope};
use rempart_guard::{Alert, AlertKind, BUCKET_SECS, Explanation, Feature, StoreError, Verdict};

use crate::StorageError;

/// The guard's view of a storage failure: the text, never a value (the
/// store holds none).
pub(crate) fn store_error(e: StorageError) -> StoreError {
    match e {
        e @ (StorageError::Refused { .. } | StorageError::NotFound { .. }) => {
            // `field: reason`, as the guard's own refusals read.
            StoreError::Invalid(
                e.refused()
                    .map_or_else(|| e.to_string(), |(f, r)| format!("{f}: {r}")),
            )
        }
        StorageError::Corrupt(m) => StoreError::Corrupt(m),
        other => StoreError::Backend(other.to_string()),
    }
}

/// The instant `bucket` begins: suspension blocks that ended before it are
/// pruned with the counters before it.
pub(crate) fn blocks_ended(bucket: i64) -> Result<DateTime<Utc>, StoreError> {
    bucket
        .checked_mul(BUCKET_SECS)
        .and_then(|t| DateTime::from_timestamp(t, 0))
        .ok_or_else(|| StoreError::Invalid("prune: bucket out of range".into()))
}

/// A batch's counters and activity with duplicate keys added together (a
/// retried batch joins the next one), so each key is written once.
pub(crate) fn merged(batch: &FlushBatch) -> (Vec<CounterDelta>, Vec<ActivityRow>) {
    let counters = merged_counters(&batch.counters);
    let mut activity: HashMap<(Scope, i64, i32, u8), ActivityRow> = HashMap::new();
    for a in &batch.activity {
        activity
            .entry((a.scope, a.subject, a.day, a.hour))
            .and_modify(|x| x.counts.add(&a.counts))
            .or_insert(*a);
    }
    let mut activity: Vec<_> = activity.into_values().collect();
    activity.sort_by_key(|a| (a.scope, a.subject, a.day, a.hour));
    (counters, activity)
}

/// Counter deltas with one row per key (a statement may not update a row
/// twice), in key order (concurrent writers lock rows in the same order).
pub(crate) fn merged_counters(deltas: &[CounterDelta]) -> Vec<CounterDelta> {
    let mut counters: HashMap<(i64, Scope, i64, i16), CounterDelta> = HashMap::new();
    for c in deltas {
        counters
            .entry((c.bucket, c.scope, c.subject, c.metric.code()))
            .and_modify(|x| x.count = x.count.saturating_add(c.count))
            .or_insert(*c);
    }
    let mut counters: Vec<_> = counters.into_values().collect();
    counters.sort_by_key(|c| (c.bucket, c.scope, c.subject, c.metric));
    counters
}

/// Checks what an alert stores: finite numbers only.
pub(crate) fn check_alert(a: &Alert) -> Result<(), StorageError> {
    let finite = a.score.is_finite()
        && a.explanation
            .iter()
            .all(|e| e.value.is_finite() && e.baseline.is_finite() && e.contribution.is_finite());
    if finite {
        Ok(())
    } else {
        Err(crate::auth::checks::refuse(
            "alert",
            "score and explanation must be finite numbers",
        ))
    }
}

/// A stored count back to the guard's width.
pub(crate) fn count(v: i64, what: &str) -> Result<u32, StorageError> {
    u32::try_from(v).map_err(|_| StorageError::Corrupt(format!("{what}: count out of range")))
}

pub(crate) fn scope(code: i16) -> Result<Scope, StorageError> {
    Scope::from_code(code).ok_or_else(|| StorageError::Corrupt("guard scope code".into()))
}

pub(crate) fn alert_kind(code: &str) -> Result<AlertKind, StorageError> {
    AlertKind::parse(code).ok_or_else(|| StorageError::Corrupt("alert kind code".into()))
}

pub(crate) fn verdict(code: &str) -> Result<Verdict, StorageError> {
    Verdict::parse(code).ok_or_else(|| StorageError::Corrupt("alert verdict code".into()))
}

pub(crate) fn explanation(
    feature: &str,
    value: f64,
    baseline: f64,
    contribution: f64,
) -> Result<Explanation, StorageError> {
    Ok(Explanation {
        feature: Feature::parse(feature)
            .ok_or_else(|| StorageError::Corrupt("alert feature code".into()))?,
        value,
        baseline,
        contribution,
    })
}

/// Activity counts from the eight stored columns, in table order.
pub(crate) fn activity_counts(v: [i64; 8]) -> Result<ActivityCounts, StorageError> {
    Ok(ActivityCounts {
        attempts: count(v[0], "attempts")?,
        persons: count(v[1], "persons")?,
        misses: count(v[2], "misses")?,
        searches: count(v[3], "searches")?,
        search_misses: count(v[4], "search_misses")?,
        nir: count(v[5], "nir")?,
        break_glass: count(v[6], "break_glass")?,
        account_hours: count(v[7], "account_hours")?,
    })
}

/// The eight stored columns of activity counts, in table order.
pub(crate) fn activity_columns(c: &ActivityCounts) -> [i64; 8] {
    [
        c.attempts,
        c.persons,
        c.misses,
        c.searches,
        c.search_misses,
        c.nir,
        c.break_glass,
        c.account_hours,
    ]
    .map(i64::from)
}

/// Columns of an activity row, same on both backends.
pub(crate) const ACTIVITY_COLUMNS: &str = "scope, subject, day, hour, attempts, persons, misses, \
     searches, search_misses, nir, break_glass, account_hours";

/// Columns of an alert, same on both backends.
pub(crate) const ALERT_COLUMNS: &str = "id, at, kind, account_id, organisation_id, verdict, \
     score, fresh, evidence_from, evidence_to, first_seq, last_seq, accounts";

/// The accounts an organisation's alert names, as stored: decimal ids
/// separated by commas.
pub(crate) fn accounts_text(ids: &[AccountId]) -> String {
    ids.iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses [`accounts_text`].
pub(crate) fn parse_accounts(text: &str) -> Result<Vec<AccountId>, StorageError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|id| {
            id.parse()
                .map(AccountId::new)
                .map_err(|_| StorageError::Corrupt("alert accounts".into()))
        })
        .collect()
}

/// A ledger sequence number as stored (BIGINT).
pub(crate) fn seq_to_i64(v: Option<u64>) -> Result<Option<i64>, StorageError> {
    v.map(|n| {
        i64::try_from(n)
            .map_err(|_| crate::auth::checks::refuse("alert", "ledger sequence out of range"))
    })
    .transpose()
}

pub(crate) fn seq_from_i64(v: Option<i64>) -> Result<Option<u64>, StorageError> {
    v.map(|n| u64::try_from(n).map_err(|_| StorageError::Corrupt("alert ledger sequence".into())))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reaches_the_guard_as_field_and_reason() {
        let e = store_error(crate::auth::checks::refuse("alert", "too many features"));
        assert!(
            matches!(&e, StoreError::Invalid(m) if m == "alert: too many features"),
            "{e:?}"
        );
    }
}
