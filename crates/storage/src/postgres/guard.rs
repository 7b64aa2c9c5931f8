//! [`GuardStore`] on PostgreSQL: the registry's schema and pool. A flush
//! is one transaction; counters and activity go in one statement each
//! over `UNNEST`ed arrays, added to what other instances wrote (`ON
//! CONFLICT … DO UPDATE SET count = count + EXCLUDED.count` is atomic
//! against concurrent flushes).

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::{AccountId, OrganisationId};
use rempart_guard::store::{
    AccountHistory, ActivityRow, AlertQuery, CounterDelta, FlushBatch, Freeze, GuardStore, Known,
    KnownKind, Metric, RemoteCount, Scope, StoredAlert, SuspensionBlock,
};
use rempart_guard::{Alert, BUCKET_SECS, Evidence, StoreError};
use tokio_postgres::Row;

use super::PgStore;
use crate::guard::{
    ACTIVITY_COLUMNS, ALERT_COLUMNS, accounts_text, activity_columns, activity_counts, alert_kind,
    blocks_ended, check_alert, explanation, merged, merged_counters, parse_accounts, scope,
    seq_from_i64, seq_to_i64, store_error, verdict,
};
use crate::{StorageError, instant};

fn activity_row(r: &Row) -> Result<ActivityRow, StorageError> {
    let mut v = [0i64; 8];
    for (i, x) in v.iter_mut().enumerate() {
        *x = r.try_get(4 + i)?;
    }
    Ok(ActivityRow {
        scope: scope(r.try_get(0)?)?,
        subject: r.try_get(1)?,
        day: r.try_get(2)?,
        hour: u8::try_from(r.try_get::<_, i16>(3)?)
            .map_err(|_| StorageError::Corrupt("activity hour".into()))?,
        counts: activity_counts(v)?,
    })
}

/// Rows of (scope, subject, metric, hour sum, day sum).
fn remote_counts(rows: &[Row]) -> Result<Vec<RemoteCount>, StorageError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(metric) = Metric::from_code(r.try_get(2)?) else {
            continue; // written by a newer guard: not ours to read
        };
        let n = |v: i64| u64::try_from(v).map_err(|_| StorageError::Corrupt("counter sum".into()));
        out.push(RemoteCount {
            scope: scope(r.try_get(0)?)?,
            subject: r.try_get(1)?,
            metric,
            hour: n(r.try_get(3)?)?,
            day: n(r.try_get(4)?)?,
        });
    }
    Ok(out)
}

fn alert_row(r: &Row) -> Result<StoredAlert, StorageError> {
    Ok(StoredAlert {
        id: r.try_get(0)?,
        alert: Alert {
            at: r.try_get(1)?,
            kind: alert_kind(r.try_get(2)?)?,
            account_id: AccountId::new(r.try_get(3)?),
            organisation_id: OrganisationId::new(r.try_get(4)?),
            verdict: verdict(r.try_get(5)?)?,
            score: r.try_get(6)?,
            fresh: r.try_get(7)?,
            evidence: Evidence {
                from: r.try_get(8)?,
                to: r.try_get(9)?,
                first_seq: seq_from_i64(r.try_get(10)?)?,
                last_seq: seq_from_i64(r.try_get(11)?)?,
            },
            explanation: Vec::new(),
            accounts: parse_accounts(r.try_get(12)?)?,
        },
    })
}

/// Stores a suspension block; the later end wins.
const BLOCK_SQL: &str = "INSERT INTO guard_block (account_id, blocked_until) VALUES ($1, $2)
     ON CONFLICT (account_id)
     DO UPDATE SET blocked_until = GREATEST(guard_block.blocked_until, EXCLUDED.blocked_until)";

impl PgStore {
    /// One statement, so one round trip: the upsert of this instance's
    /// rows and the sum of the others' (which the upsert does not touch)
    /// for the subjects, through the (scope, subject, bucket) index.
    async fn guard_exchange(
        &self,
        instance: i64,
        deltas: &[CounterDelta],
        subjects: &[(Scope, i64)],
        hour_from: i64,
        day_from: i64,
    ) -> Result<Vec<RemoteCount>, StorageError> {
        let counters = merged_counters(deltas);
        let bucket: Vec<i64> = counters.iter().map(|d| d.bucket).collect();
        let scope_code: Vec<i16> = counters.iter().map(|d| d.scope.code()).collect();
        let subject: Vec<i64> = counters.iter().map(|d| d.subject).collect();
        let metric: Vec<i16> = counters.iter().map(|d| d.metric.code()).collect();
        let count: Vec<i64> = counters.iter().map(|d| i64::from(d.count)).collect();
        let wanted_scope: Vec<i16> = subjects.iter().map(|s| s.0.code()).collect();
        let wanted: Vec<i64> = subjects.iter().map(|s| s.1).collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "WITH added AS (
                     INSERT INTO guard_counter (bucket, instance, scope, subject, metric, count)
                     SELECT b, $1, s, x, m, n
                     FROM UNNEST($2::int8[], $3::int2[], $4::int8[], $5::int2[], $6::int8[])
                         AS u(b, s, x, m, n)
                     ON CONFLICT (bucket, instance, scope, subject, metric)
                     DO UPDATE SET count = guard_counter.count + EXCLUDED.count
                     RETURNING 1)
                 SELECT c.scope, c.subject, c.metric,
                        SUM(CASE WHEN c.bucket >= $9 THEN c.count ELSE 0 END)::int8,
                        SUM(c.count)::int8
                 FROM UNNEST($7::int2[], $8::int8[]) AS w(scope, subject)
                 JOIN guard_counter c ON c.scope = w.scope AND c.subject = w.subject
                 WHERE c.bucket >= $10 AND c.instance <> $1
                 GROUP BY c.scope, c.subject, c.metric",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &instance,
                    &bucket,
                    &scope_code,
                    &subject,
                    &metric,
                    &count,
                    &wanted_scope,
                    &wanted,
                    &hour_from,
                    &day_from,
                ],
            )
            .await?;
        remote_counts(&rows)
    }

    async fn guard_flush(&self, batch: &FlushBatch) -> Result<(), StorageError> {
        let (counters, activity) = merged(batch);
        for a in &batch.alerts {
            check_alert(a)?;
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !counters.is_empty() {
            let bucket: Vec<i64> = counters.iter().map(|d| d.bucket).collect();
            let scope: Vec<i16> = counters.iter().map(|d| d.scope.code()).collect();
            let subject: Vec<i64> = counters.iter().map(|d| d.subject).collect();
            let metric: Vec<i16> = counters.iter().map(|d| d.metric.code()).collect();
            let count: Vec<i64> = counters.iter().map(|d| i64::from(d.count)).collect();
            tx.execute(
                "INSERT INTO guard_counter (bucket, instance, scope, subject, metric, count)
                 SELECT b, $1, s, x, m, n
                 FROM UNNEST($2::int8[], $3::int2[], $4::int8[], $5::int2[], $6::int8[]) AS u(b, s, x, m, n)
                 ON CONFLICT (bucket, instance, scope, subject, metric)
                 DO UPDATE SET count = guard_counter.count + EXCLUDED.count",
                &[&batch.instance, &bucket, &scope, &subject, &metric, &count],
            )
            .await?;
        }
        if !activity.is_empty() {
            let scope: Vec<i16> = activity.iter().map(|a| a.scope.code()).collect();
            let subject: Vec<i64> = activity.iter().map(|a| a.subject).collect();
            let day: Vec<i32> = activity.iter().map(|a| a.day).collect();
            let hour: Vec<i16> = activity.iter().map(|a| i16::from(a.hour)).collect();
            let cols: Vec<[i64; 8]> = activity
                .iter()
                .map(|a| activity_columns(&a.counts))
                .collect();
            let col = |i: usize| cols.iter().map(|c| c[i]).collect::<Vec<i64>>();
            let (c0, c1, c2, c3, c4, c5, c6, c7) = (
                col(0),
                col(1),
                col(2),
                col(3),
                col(4),
                col(5),
                col(6),
                col(7),
            );
            tx.execute(
                &format!(
                    "INSERT INTO guard_activity ({ACTIVITY_COLUMNS})
                     SELECT * FROM UNNEST($1::int2[], $2::int8[], $3::int4[], $4::int2[],
                         $5::int8[], $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
                         $11::int8[], $12::int8[])
                     ON CONFLICT (scope, subject, day, hour) DO UPDATE SET
                         attempts = guard_activity.attempts + EXCLUDED.attempts,
                         persons = guard_activity.persons + EXCLUDED.persons,
                         misses = guard_activity.misses + EXCLUDED.misses,
                         searches = guard_activity.searches + EXCLUDED.searches,
                         search_misses = guard_activity.search_misses + EXCLUDED.search_misses,
                         nir = guard_activity.nir + EXCLUDED.nir,
                         break_glass = guard_activity.break_glass + EXCLUDED.break_glass,
                         account_hours = CASE WHEN guard_activity.scope = 1
                             THEN GREATEST(guard_activity.account_hours, EXCLUDED.account_hours)
                             ELSE guard_activity.account_hours + EXCLUDED.account_hours END"
                ),
                &[
                    &scope, &subject, &day, &hour, &c0, &c1, &c2, &c3, &c4, &c5, &c6, &c7,
                ],
            )
            .await?;
        }
        let known = tx
            .prepare_cached(
                "INSERT INTO guard_known (account_id, kind, digest, first_seen) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account_id, kind, digest)
                 DO UPDATE SET first_seen = LEAST(guard_known.first_seen, EXCLUDED.first_seen)",
            )
            .await?;
        for k in &batch.known {
            let first_seen = instant(k.first_seen, "first_seen")?;
            tx.execute(
                &known,
                &[
                    &k.account_id.get(),
                    &k.kind.code(),
                    &&k.digest[..],
                    &first_seen,
                ],
            )
            .await?;
        }
        if !batch.alerts.is_empty() {
            let alert = tx
                .prepare_cached(
                    "INSERT INTO guard_alert (at, kind, account_id, organisation_id, verdict, score,
                         fresh, evidence_from, evidence_to, first_seq, last_seq, instance, accounts)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
                )
                .await?;
            let feature = tx
                .prepare_cached(
                    "INSERT INTO guard_alert_feature (alert_id, rank, feature, value, baseline, contribution)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await?;
            for a in &batch.alerts {
                let (at, from, to) = (
                    instant(a.at, "at")?,
                    instant(a.evidence.from, "evidence.from")?,
                    instant(a.evidence.to, "evidence.to")?,
                );
                let (first, last) = (
                    seq_to_i64(a.evidence.first_seq)?,
                    seq_to_i64(a.evidence.last_seq)?,
                );
                let id: i64 = tx
                    .query_one(
                        &alert,
                        &[
                            &at,
                            &a.kind.as_str(),
                            &a.account_id.get(),
                            &a.organisation_id.get(),
                            &a.verdict.as_str(),
                            &a.score,
                            &a.fresh,
                            &from,
                            &to,
                            &first,
                            &last,
                            &batch.instance,
                            &accounts_text(&a.accounts),
                        ],
                    )
                    .await?
                    .try_get(0)?;
                for (rank, e) in a.explanation.iter().enumerate() {
                    let rank = i16::try_from(rank)
                        .map_err(|_| crate::auth::checks::refuse("alert", "too many features"))?;
                    tx.execute(
                        &feature,
                        &[
                            &id,
                            &rank,
                            &e.feature.as_str(),
                            &e.value,
                            &e.baseline,
                            &e.contribution,
                        ],
                    )
                    .await?;
                }
            }
        }
        for f in &batch.freezes {
            let at = instant(f.frozen_at, "frozen_at")?;
            tx.execute(
                "INSERT INTO guard_freeze (organisation_id, frozen_at) VALUES ($1, $2)
                 ON CONFLICT (organisation_id) DO UPDATE SET frozen_at = EXCLUDED.frozen_at, lifted_at = NULL
                 WHERE guard_freeze.lifted_at IS NOT NULL AND EXCLUDED.frozen_at > guard_freeze.lifted_at",
                &[&f.organisation_id.get(), &at],
            )
            .await?;
        }
        for b in &batch.blocks {
            let until = instant(b.until, "until")?;
            tx.execute(BLOCK_SQL, &[&b.account_id.get(), &until])
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn guard_alerts(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>, StorageError> {
        let from = q.from.map(|t| instant(t, "from")).transpose()?;
        let to = q.to.map(|t| instant(t, "to")).transpose()?;
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM guard_alert
                     WHERE id > $1 AND ($2::timestamptz IS NULL OR at >= $2)
                       AND ($3::timestamptz IS NULL OR at < $3)
                       AND ($4::int8 IS NULL OR account_id = $4)
                       AND ($5::int8 IS NULL OR organisation_id = $5)
                     ORDER BY id LIMIT $6"
                ),
                &[
                    &q.after_id,
                    &from,
                    &to,
                    &q.account_id.map(AccountId::get),
                    &q.organisation_id.map(OrganisationId::get),
                    &i64::from(q.limit),
                ],
            )
            .await?;
        let mut out = rows.iter().map(alert_row).collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<i64> = out.iter().map(|a| a.id).collect();
        if ids.is_empty() {
            return Ok(out);
        }
        let at: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let rows = client
            .query(
                "SELECT alert_id, feature, value, baseline, contribution FROM guard_alert_feature
                 WHERE alert_id = ANY($1) ORDER BY alert_id, rank",
                &[&ids],
            )
            .await?;
        for r in rows {
            if let Some(&i) = at.get(&r.try_get::<_, i64>(0)?) {
                out[i].alert.explanation.push(explanation(
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                )?);
            }
        }
        Ok(out)
    }
}

/// One account's or organisation's activity rows from `from_day` on, in
/// (day, hour) order.
async fn subject_activity(
    client: &tokio_postgres::Client,
    scope: Scope,
    subject: i64,
    from_day: i32,
) -> Result<Vec<ActivityRow>, StorageError> {
    client
        .query(
            &format!(
                "SELECT {ACTIVITY_COLUMNS} FROM guard_activity
                 WHERE scope = $1 AND subject = $2 AND day >= $3 ORDER BY day, hour"
            ),
            &[&scope.code(), &subject, &from_day],
        )
        .await?
        .iter()
        .map(activity_row)
        .collect()
}

#[async_trait]
impl GuardStore for PgStore {
    async fn load_account(
        &self,
        account_id: AccountId,
        from_day: i32,
    ) -> Result<AccountHistory, StoreError> {
        let id = account_id.get();
        async {
            let client = self.client().await?;
            let activity = subject_activity(&client, Scope::Account, id, from_day).await?;
            let mut known = Vec::new();
            for r in client
                .query(
                    "SELECT kind, digest, first_seen FROM guard_known WHERE account_id = $1
                     ORDER BY first_seen, digest",
                    &[&id],
                )
                .await?
            {
                let digest: Vec<u8> = r.try_get(1)?;
                known.push(Known {
                    account_id,
                    kind: KnownKind::from_code(r.try_get(0)?)
                        .ok_or_else(|| StorageError::Corrupt("known kind code".into()))?,
                    digest: digest.try_into().map_err(|_| {
                        StorageError::Corrupt("known digest is not 16 bytes".into())
                    })?,
                    first_seen: r.try_get(2)?,
                });
            }
            let blocked_until = client
                .query_opt(
                    "SELECT blocked_until FROM guard_block WHERE account_id = $1",
                    &[&id],
                )
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
            Ok::<_, StorageError>(AccountHistory {
                activity,
                known,
                blocked_until,
            })
        }
        .await
        .map_err(store_error)
    }

    async fn load_organisation(
        &self,
        organisation_id: OrganisationId,
        from_day: i32,
    ) -> Result<Vec<ActivityRow>, StoreError> {
        async {
            let client = self.client().await?;
            subject_activity(
                &client,
                Scope::Organisation,
                organisation_id.get(),
                from_day,
            )
            .await
        }
        .await
        .map_err(store_error)
    }

    async fn load_peers(&self, from_day: i32) -> Result<Vec<ActivityRow>, StoreError> {
        async {
            let client = self.client().await?;
            client
                .query(
                    &format!(
                        "SELECT {ACTIVITY_COLUMNS} FROM guard_activity
                         WHERE scope = 3 AND day >= $1 ORDER BY subject, day, hour"
                    ),
                    &[&from_day],
                )
                .await?
                .iter()
                .map(activity_row)
                .collect::<Result<Vec<_>, StorageError>>()
        }
        .await
        .map_err(store_error)
    }

    async fn flush(&self, batch: &FlushBatch) -> Result<(), StoreError> {
        self.guard_flush(batch).await.map_err(store_error)
    }

    async fn remote_counts(
        &self,
        instance: i64,
        hour_from: i64,
        day_from: i64,
    ) -> Result<Vec<RemoteCount>, StoreError> {
        async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT scope, subject, metric,
                            SUM(CASE WHEN bucket >= $2 THEN count ELSE 0 END)::int8, SUM(count)::int8
                     FROM guard_counter WHERE bucket >= $3 AND instance <> $1
                     GROUP BY scope, subject, metric",
                    &[&instance, &hour_from, &day_from],
                )
                .await?;
            remote_counts(&rows)
        }
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
        self.guard_exchange(instance, deltas, subjects, hour_from, day_from)
            .await
            .map_err(store_error)
    }

    async fn announce(
        &self,
        instance: i64,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> Result<u32, StoreError> {
        async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "WITH me AS (
                         INSERT INTO guard_instance (instance, seen_at) VALUES ($1, $2)
                         ON CONFLICT (instance)
                         DO UPDATE SET seen_at = GREATEST(guard_instance.seen_at, EXCLUDED.seen_at)
                         RETURNING 1)
                     SELECT count(*) FROM guard_instance WHERE instance <> $1 AND seen_at >= $3",
                    &[&instance, &now.timestamp(), &since.timestamp()],
                )
                .await?;
            let n: i64 = row.try_get(0)?;
            Ok::<_, StorageError>(u32::try_from(n).unwrap_or(u32::MAX))
        }
        .await
        .map_err(store_error)
    }

    async fn frozen_organisations(&self) -> Result<Vec<Freeze>, StoreError> {
        async {
            let client = self.client().await?;
            client
                .query(
                    "SELECT organisation_id, frozen_at FROM guard_freeze WHERE lifted_at IS NULL
                     ORDER BY organisation_id",
                    &[],
                )
                .await?
                .iter()
                .map(|r| {
                    Ok(Freeze {
                        organisation_id: OrganisationId::new(r.try_get(0)?),
                        frozen_at: r.try_get(1)?,
                    })
                })
                .collect::<Result<Vec<_>, StorageError>>()
        }
        .await
        .map_err(store_error)
    }

    async fn lift_freeze(
        &self,
        organisation_id: OrganisationId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let organisation_id = organisation_id.get();
        async {
            let at = instant(at, "at")?;
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let frozen: Option<bool> = tx
                .query_opt(
                    "SELECT lifted_at IS NULL FROM guard_freeze WHERE organisation_id = $1 FOR UPDATE",
                    &[&organisation_id],
                )
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
            // Recorded even without a row: a freeze decided before the
            // lift and still on its way from an instance's flush must not
            // undo it (the flush re-freezes only after the lift).
            tx.execute(
                "INSERT INTO guard_freeze (organisation_id, frozen_at, lifted_at) VALUES ($1, $2, $2)
                 ON CONFLICT (organisation_id) DO UPDATE SET lifted_at = EXCLUDED.lifted_at
                 WHERE guard_freeze.lifted_at IS NULL OR guard_freeze.lifted_at < EXCLUDED.lifted_at",
                &[&organisation_id, &at],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, StorageError>(frozen == Some(true))
        }
        .await
        .map_err(store_error)
    }

    async fn block_account(&self, b: SuspensionBlock) -> Result<(), StoreError> {
        async {
            let until = instant(b.until, "until")?;
            let client = self.client().await?;
            client
                .execute(BLOCK_SQL, &[&b.account_id.get(), &until])
                .await?;
            Ok::<_, StorageError>(())
        }
        .await
        .map_err(store_error)
    }

    async fn suspension_blocks(
        &self,
        at: DateTime<Utc>,
    ) -> Result<Vec<SuspensionBlock>, StoreError> {
        async {
            let at = instant(at, "at")?;
            let client = self.client().await?;
            client
                .query(
                    "SELECT account_id, blocked_until FROM guard_block WHERE blocked_until > $1
                     ORDER BY account_id",
                    &[&at],
                )
                .await?
                .iter()
                .map(|r| {
                    Ok(SuspensionBlock {
                        account_id: AccountId::new(r.try_get(0)?),
                        until: r.try_get(1)?,
                    })
                })
                .collect::<Result<Vec<_>, StorageError>>()
        }
        .await
        .map_err(store_error)
    }

    async fn alerts(&self, query: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError> {
        self.guard_alerts(query).await.map_err(store_error)
    }

    async fn prune(&self, bucket: i64, day: i32) -> Result<u64, StoreError> {
        let ended = blocks_ended(bucket)?;
        async {
            let ended = instant(ended, "bucket")?;
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let n = tx
                .execute("DELETE FROM guard_counter WHERE bucket < $1", &[&bucket])
                .await?
                + tx.execute("DELETE FROM guard_activity WHERE day < $1", &[&day])
                    .await?
                + tx.execute(
                    "DELETE FROM guard_block WHERE blocked_until < $1",
                    &[&ended],
                )
                .await?;
            tx.execute(
                "DELETE FROM guard_instance WHERE seen_at < $1",
                &[&bucket.saturating_mul(BUCKET_SECS)],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, StorageError>(n)
        }
        .await
        .map_err(store_error)
    }
}
