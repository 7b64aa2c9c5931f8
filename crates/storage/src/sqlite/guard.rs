//! [`GuardStore`] on SQLite: the registry's file and connections. A flush
//! is one transaction on the writer; reads use the reader connections.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::{AccountId, OrganisationId};
use rempart_guard::store::{
    AccountHistory, ActivityRow, AlertQuery, CounterDelta, FlushBatch, Freeze, GuardStore, Known,
    KnownKind, Metric, RemoteCount, Scope, StoredAlert, SuspensionBlock,
};
use rempart_guard::{Alert, BUCKET_SECS, Evidence, StoreError};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{SqliteStore, instant_text, parse_instant};
use crate::StorageError;
use crate::guard::{
    ACTIVITY_COLUMNS, ALERT_COLUMNS, accounts_text, activity_columns, activity_counts, alert_kind,
    blocks_ended, check_alert, explanation, merged, merged_counters, parse_accounts, scope,
    seq_from_i64, seq_to_i64, store_error, verdict,
};

fn activity_row(r: &Row<'_>) -> Result<ActivityRow, StorageError> {
    let mut v = [0i64; 8];
    for (i, x) in v.iter_mut().enumerate() {
        *x = r.get(4 + i)?;
    }
    Ok(ActivityRow {
        scope: scope(r.get(0)?)?,
        subject: r.get(1)?,
        day: r.get(2)?,
        hour: u8::try_from(r.get::<_, i64>(3)?)
            .map_err(|_| StorageError::Corrupt("activity hour".into()))?,
        counts: activity_counts(v)?,
    })
}

fn activity_from(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<ActivityRow>, StorageError> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(p)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(activity_row(r)?);
    }
    Ok(out)
}

/// One account's or organisation's activity rows from `from_day` on, in
/// (day, hour) order.
fn subject_activity(
    c: &Connection,
    scope: Scope,
    subject: i64,
    from_day: i32,
) -> Result<Vec<ActivityRow>, StorageError> {
    activity_from(
        c,
        &format!(
            "SELECT {ACTIVITY_COLUMNS} FROM guard_activity
             WHERE scope = ?1 AND subject = ?2 AND day >= ?3 ORDER BY day, hour"
        ),
        params![scope.code(), subject, from_day],
    )
}

/// Stores a suspension block; the later end wins (instants are stored as
/// fixed-width RFC 3339 text in UTC, so text order is time order).
fn block(c: &Connection, b: &SuspensionBlock) -> Result<(), StorageError> {
    c.prepare_cached(
        "INSERT INTO guard_block (account_id, blocked_until) VALUES (?1, ?2)
         ON CONFLICT (account_id)
         DO UPDATE SET blocked_until = max(blocked_until, excluded.blocked_until)",
    )?
    .execute(params![b.account_id.get(), instant_text(b.until, "until")?])?;
    Ok(())
}

/// Adds one instance's counter deltas to the stored ones.
fn add_counters(
    tx: &rusqlite::Transaction<'_>,
    instance: i64,
    counters: &[CounterDelta],
) -> Result<(), StorageError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO guard_counter (bucket, instance, scope, subject, metric, count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (bucket, instance, scope, subject, metric)
         DO UPDATE SET count = count + excluded.count",
    )?;
    for d in counters {
        stmt.execute(params![
            d.bucket,
            instance,
            d.scope.code(),
            d.subject,
            d.metric.code(),
            i64::from(d.count)
        ])?;
    }
    Ok(())
}

/// A row of (scope, subject, metric, hour sum, day sum); `None` for a
/// metric written by a newer guard (not ours to read).
fn remote_count(r: &Row<'_>) -> Result<Option<RemoteCount>, StorageError> {
    let Some(metric) = Metric::from_code(r.get(2)?) else {
        return Ok(None);
    };
    let n = |v: i64| u64::try_from(v).map_err(|_| StorageError::Corrupt("counter sum".into()));
    Ok(Some(RemoteCount {
        scope: scope(r.get(0)?)?,
        subject: r.get(1)?,
        metric,
        hour: n(r.get(3)?)?,
        day: n(r.get(4)?)?,
    }))
}

fn flush(c: &mut Connection, batch: &FlushBatch) -> Result<(), StorageError> {
    let (counters, activity) = merged(batch);
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    add_counters(&tx, batch.instance, &counters)?;
    {
        let mut stmt = tx.prepare_cached(&format!(
            "INSERT INTO guard_activity ({ACTIVITY_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (scope, subject, day, hour) DO UPDATE SET
                 attempts = attempts + excluded.attempts,
                 persons = persons + excluded.persons,
                 misses = misses + excluded.misses,
                 searches = searches + excluded.searches,
                 search_misses = search_misses + excluded.search_misses,
                 nir = nir + excluded.nir,
                 break_glass = break_glass + excluded.break_glass,
                 account_hours = CASE WHEN scope = 1
                     THEN max(account_hours, excluded.account_hours)
                     ELSE account_hours + excluded.account_hours END"
        ))?;
        for a in &activity {
            let v = activity_columns(&a.counts);
            stmt.execute(params![
                a.scope.code(),
                a.subject,
                a.day,
                a.hour,
                v[0],
                v[1],
                v[2],
                v[3],
                v[4],
                v[5],
                v[6],
                v[7]
            ])?;
        }
        let mut stmt = tx.prepare_cached(
            "INSERT INTO guard_known (account_id, kind, digest, first_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (account_id, kind, digest)
             DO UPDATE SET first_seen = min(first_seen, excluded.first_seen)",
        )?;
        for k in &batch.known {
            stmt.execute(params![
                k.account_id.get(),
                k.kind.code(),
                &k.digest[..],
                instant_text(k.first_seen, "first_seen")?
            ])?;
        }
        let mut alert = tx.prepare_cached(
            "INSERT INTO guard_alert (at, kind, account_id, organisation_id, verdict, score, fresh,
                 evidence_from, evidence_to, first_seq, last_seq, instance, accounts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING id",
        )?;
        let mut feature = tx.prepare_cached(
            "INSERT INTO guard_alert_feature (alert_id, rank, feature, value, baseline, contribution)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for a in &batch.alerts {
            check_alert(a)?;
            let id: i64 = alert.query_row(
                params![
                    instant_text(a.at, "at")?,
                    a.kind.as_str(),
                    a.account_id.get(),
                    a.organisation_id.get(),
                    a.verdict.as_str(),
                    a.score,
                    a.fresh,
                    instant_text(a.evidence.from, "evidence.from")?,
                    instant_text(a.evidence.to, "evidence.to")?,
                    seq_to_i64(a.evidence.first_seq)?,
                    seq_to_i64(a.evidence.last_seq)?,
                    batch.instance,
                    accounts_text(&a.accounts)
                ],
                |r| r.get(0),
            )?;
            for (rank, e) in a.explanation.iter().enumerate() {
                feature.execute(params![
                    id,
                    rank as i64,
                    e.feature.as_str(),
                    e.value,
                    e.baseline,
                    e.contribution
                ])?;
            }
        }
        let mut stmt = tx.prepare_cached(
            "INSERT INTO guard_freeze (organisation_id, frozen_at) VALUES (?1, ?2)
             ON CONFLICT (organisation_id) DO UPDATE SET frozen_at = excluded.frozen_at, lifted_at = NULL
             WHERE guard_freeze.lifted_at IS NOT NULL AND excluded.frozen_at > guard_freeze.lifted_at",
        )?;
        for f in &batch.freezes {
            stmt.execute(params![
                f.organisation_id.get(),
                instant_text(f.frozen_at, "frozen_at")?
            ])?;
        }
        for b in &batch.blocks {
            block(&tx, b)?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn alert_row(r: &Row<'_>) -> Result<StoredAlert, StorageError> {
    Ok(StoredAlert {
        id: r.get(0)?,
        alert: Alert {
            at: parse_instant(&r.get::<_, String>(1)?, "at")?,
            kind: alert_kind(&r.get::<_, String>(2)?)?,
            account_id: AccountId::new(r.get(3)?),
            organisation_id: OrganisationId::new(r.get(4)?),
            verdict: verdict(&r.get::<_, String>(5)?)?,
            score: r.get(6)?,
            fresh: r.get(7)?,
            evidence: Evidence {
                from: parse_instant(&r.get::<_, String>(8)?, "evidence_from")?,
                to: parse_instant(&r.get::<_, String>(9)?, "evidence_to")?,
                first_seq: seq_from_i64(r.get(10)?)?,
                last_seq: seq_from_i64(r.get(11)?)?,
            },
            explanation: Vec::new(),
            accounts: parse_accounts(&r.get::<_, String>(12)?)?,
        },
    })
}

fn alerts(c: &Connection, q: &AlertQuery) -> Result<Vec<StoredAlert>, StorageError> {
    let from = q.from.map(|t| instant_text(t, "from")).transpose()?;
    let to = q.to.map(|t| instant_text(t, "to")).transpose()?;
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {ALERT_COLUMNS} FROM guard_alert
         WHERE id > ?1 AND (?2 IS NULL OR at >= ?2) AND (?3 IS NULL OR at < ?3)
           AND (?4 IS NULL OR account_id = ?4) AND (?5 IS NULL OR organisation_id = ?5)
         ORDER BY id LIMIT ?6"
    ))?;
    let mut rows = stmt.query(params![
        q.after_id,
        from,
        to,
        q.account_id.map(AccountId::get),
        q.organisation_id.map(OrganisationId::get),
        i64::from(q.limit)
    ])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(alert_row(r)?);
    }
    let (Some(first), Some(last)) = (out.first().map(|a| a.id), out.last().map(|a| a.id)) else {
        return Ok(out);
    };
    let at: HashMap<i64, usize> = out.iter().enumerate().map(|(i, a)| (a.id, i)).collect();
    let mut stmt = c.prepare_cached(
        "SELECT alert_id, feature, value, baseline, contribution FROM guard_alert_feature
         WHERE alert_id BETWEEN ?1 AND ?2 ORDER BY alert_id, rank",
    )?;
    let mut rows = stmt.query(params![first, last])?;
    while let Some(r) = rows.next()? {
        if let Some(&i) = at.get(&r.get::<_, i64>(0)?) {
            out[i].alert.explanation.push(explanation(
                &r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            )?);
        }
    }
    Ok(out)
}

#[async_trait]
impl GuardStore for SqliteStore {
    async fn load_account(
        &self,
        account_id: AccountId,
        from_day: i32,
    ) -> Result<AccountHistory, StoreError> {
        let id = account_id.get();
        self.read(move |c| {
            let activity = subject_activity(c, Scope::Account, id, from_day)?;
            let mut stmt = c.prepare_cached(
                "SELECT kind, digest, first_seen FROM guard_known WHERE account_id = ?1
                 ORDER BY first_seen, digest",
            )?;
            let mut rows = stmt.query([id])?;
            let mut known = Vec::new();
            while let Some(r) = rows.next()? {
                let digest: Vec<u8> = r.get(1)?;
                known.push(Known {
                    account_id,
                    kind: KnownKind::from_code(r.get(0)?)
                        .ok_or_else(|| StorageError::Corrupt("known kind code".into()))?,
                    digest: digest.try_into().map_err(|_| {
                        StorageError::Corrupt("known digest is not 16 bytes".into())
                    })?,
                    first_seen: parse_instant(&r.get::<_, String>(2)?, "first_seen")?,
                });
            }
            let blocked_until = c
                .prepare_cached("SELECT blocked_until FROM guard_block WHERE account_id = ?1")?
                .query_row([id], |r| r.get::<_, String>(0))
                .optional()?
                .map(|t| parse_instant(&t, "blocked_until"))
                .transpose()?;
            Ok(AccountHistory {
                activity,
                known,
                blocked_until,
            })
        })
        .await
        .map_err(store_error)
    }

    async fn load_peers(&self, from_day: i32) -> Result<Vec<ActivityRow>, StoreError> {
        self.read(move |c| {
            activity_from(
                c,
                &format!(
                    "SELECT {ACTIVITY_COLUMNS} FROM guard_activity
                     WHERE scope = 3 AND day >= ?1 ORDER BY subject, day, hour"
                ),
                [from_day],
            )
        })
        .await
        .map_err(store_error)
    }

    async fn load_organisation(
        &self,
        organisation_id: OrganisationId,
        from_day: i32,
    ) -> Result<Vec<ActivityRow>, StoreError> {
        self.read(move |c| {
            subject_activity(c, Scope::Organisation, organisation_id.get(), from_day)
        })
        .await
        .map_err(store_error)
    }

    async fn flush(&self, batch: &FlushBatch) -> Result<(), StoreError> {
        let batch = batch.clone();
        self.write(move |c| flush(c, &batch))
            .await
            .map_err(store_error)
    }

    async fn exchange(
        &self,
        instance: i64,
        deltas: &[CounterDelta],
        subjects: &[(Scope, i64)],
        hour_from: i64,
        day_from: i64,
    ) -> Result<Vec<RemoteCount>, StoreError> {
        let counters = merged_counters(deltas);
        let subjects = subjects.to_vec();
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            add_counters(&tx, instance, &counters)?;
            let mut out = Vec::new();
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT scope, subject, metric,
                            SUM(CASE WHEN bucket >= ?4 THEN count ELSE 0 END), SUM(count)
                     FROM guard_counter
                     WHERE scope = ?2 AND subject = ?3 AND bucket >= ?5 AND instance <> ?1
                     GROUP BY scope, subject, metric",
                )?;
                for (s, subject) in &subjects {
                    let mut rows =
                        stmt.query(params![instance, s.code(), subject, hour_from, day_from])?;
                    while let Some(r) = rows.next()? {
                        if let Some(rc) = remote_count(r)? {
                            out.push(rc);
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(store_error)
    }

    async fn remote_counts(
        &self,
        instance: i64,
        hour_from: i64,
        day_from: i64,
    ) -> Result<Vec<RemoteCount>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT scope, subject, metric,
                        SUM(CASE WHEN bucket >= ?2 THEN count ELSE 0 END), SUM(count)
                 FROM guard_counter WHERE bucket >= ?3 AND instance <> ?1
                 GROUP BY scope, subject, metric",
            )?;
            let mut rows = stmt.query(params![instance, hour_from, day_from])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                if let Some(rc) = remote_count(r)? {
                    out.push(rc);
                }
            }
            Ok(out)
        })
        .await
        .map_err(store_error)
    }

    async fn announce(
        &self,
        instance: i64,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> Result<u32, StoreError> {
        let (now, since) = (now.timestamp(), since.timestamp());
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "INSERT INTO guard_instance (instance, seen_at) VALUES (?1, ?2)
                 ON CONFLICT (instance) DO UPDATE SET seen_at = max(seen_at, excluded.seen_at)",
            )?
            .execute(params![instance, now])?;
            let n: i64 = tx
                .prepare_cached(
                    "SELECT count(*) FROM guard_instance WHERE instance <> ?1 AND seen_at >= ?2",
                )?
                .query_row(params![instance, since], |r| r.get(0))?;
            tx.commit()?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
        .map_err(store_error)
    }

    async fn frozen_organisations(&self) -> Result<Vec<Freeze>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT organisation_id, frozen_at FROM guard_freeze WHERE lifted_at IS NULL
                 ORDER BY organisation_id",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(Freeze {
                    organisation_id: OrganisationId::new(r.get(0)?),
                    frozen_at: parse_instant(&r.get::<_, String>(1)?, "frozen_at")?,
                });
            }
            Ok(out)
        })
        .await
        .map_err(store_error)
    }

    async fn lift_freeze(
        &self,
        organisation_id: OrganisationId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let organisation_id = organisation_id.get();
        let at = instant_text(at, "at").map_err(store_error)?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let frozen = tx
                .prepare_cached(
                    "SELECT lifted_at IS NULL FROM guard_freeze WHERE organisation_id = ?1",
                )?
                .query_row([organisation_id], |r| r.get::<_, bool>(0))
                .optional()?;
            // Recorded even without a row: a freeze decided before the
            // lift and still on its way from an instance's flush must not
            // undo it (the flush re-freezes only after the lift).
            tx.prepare_cached(
                "INSERT INTO guard_freeze (organisation_id, frozen_at, lifted_at) VALUES (?1, ?2, ?2)
                 ON CONFLICT (organisation_id) DO UPDATE SET lifted_at = excluded.lifted_at
                 WHERE guard_freeze.lifted_at IS NULL OR guard_freeze.lifted_at < excluded.lifted_at",
            )?
            .execute(params![organisation_id, at])?;
            tx.commit()?;
            Ok(frozen == Some(true))
        })
        .await
        .map_err(store_error)
    }

    async fn block_account(&self, b: SuspensionBlock) -> Result<(), StoreError> {
        self.write(move |c| block(c, &b)).await.map_err(store_error)
    }

    async fn suspension_blocks(
        &self,
        at: DateTime<Utc>,
    ) -> Result<Vec<SuspensionBlock>, StoreError> {
        let at = instant_text(at, "at").map_err(store_error)?;
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT account_id, blocked_until FROM guard_block WHERE blocked_until > ?1
                 ORDER BY account_id",
            )?;
            let mut rows = stmt.query([at])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(SuspensionBlock {
                    account_id: AccountId::new(r.get(0)?),
                    until: parse_instant(&r.get::<_, String>(1)?, "blocked_until")?,
                });
            }
            Ok(out)
        })
        .await
        .map_err(store_error)
    }

    async fn alerts(&self, query: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError> {
        let q = *query;
        self.read(move |c| alerts(c, &q)).await.map_err(store_error)
    }

    async fn prune(&self, bucket: i64, day: i32) -> Result<u64, StoreError> {
        let ended = instant_text(blocks_ended(bucket)?, "bucket").map_err(store_error)?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute("DELETE FROM guard_counter WHERE bucket < ?1", [bucket])?
                + tx.execute("DELETE FROM guard_activity WHERE day < ?1", [day])?
                + tx.execute("DELETE FROM guard_block WHERE blocked_until < ?1", [ended])?;
            tx.execute(
                "DELETE FROM guard_instance WHERE seen_at < ?1",
                [bucket.saturating_mul(BUCKET_SECS)],
            )?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
        .map_err(store_error)
    }
}
