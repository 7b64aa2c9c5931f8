//! [`NoticeStore`] on PostgreSQL. Queueing locks the incident's row
//! (`FOR SHARE`) so that closing it waits for the queue's commit; a
//! delivery is begun and recorded by compare-and-sets on the notice's row
//! (`… WHERE sent_at IS NULL`), which PostgreSQL re-checks after waiting
//! for a concurrent writer: two dispatchers never both record one notice.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::PersonId;
use rempart_domain::incident::{IncidentId, NoticeChannel, NoticeRun, QueuedNotice, StoredNotice};
use tokio_postgres::GenericClient;

use super::PgStore;
use crate::StorageError;
use crate::incidents::{RegisterError, register_error};
use crate::notices::{
    NOTICE_COLUMNS, NoticeProgress, NoticeStore, channel, channel_code, check_notice, check_run,
    from_micros, micros, stored,
};

/// `Ok(())` if the incident is open (its row then locked against closing
/// until the transaction ends), else why not.
async fn open_incident(
    c: &impl GenericClient,
    id: IncidentId,
) -> Result<Result<(), RegisterError>, StorageError> {
    let open: Option<bool> = c
        .query_opt(
            "SELECT closed_at IS NULL FROM incident WHERE id = $1 FOR SHARE",
            &[&id.get()],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(match open {
        None => Err(RegisterError::Unknown(id)),
        Some(false) => Err(RegisterError::Closed(id)),
        Some(true) => Ok(()),
    })
}

async fn read_run(
    c: &impl GenericClient,
    id: IncidentId,
) -> Result<Option<NoticeRun>, StorageError> {
    let Some(r) = c
        .query_opt(
            "SELECT controller, dpo, measures, wording, prepared_at FROM notice_run
             WHERE incident_id = $1",
            &[&id.get()],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(NoticeRun {
        controller: r.try_get(0)?,
        dpo: r.try_get(1)?,
        measures: r.try_get(2)?,
        wording: r.try_get(3)?,
        prepared_at: from_micros(r.try_get(4)?, "prepared_at")?,
    }))
}

fn notice_row(r: &tokio_postgres::Row) -> Result<StoredNotice, StorageError> {
    stored(
        r.try_get(0)?,
        r.try_get(1)?,
        i64::from(r.try_get::<_, i16>(2)?),
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get(5)?,
        r.try_get(6)?,
        r.try_get(7)?,
        r.try_get(8)?,
        r.try_get::<_, &[u8]>(9)?,
        i64::from(r.try_get::<_, i32>(10)?),
        r.try_get(11)?,
    )
}

impl PgStore {
    async fn prepare_tx(
        &self,
        id: IncidentId,
        run: NoticeRun,
    ) -> Result<Result<NoticeRun, RegisterError>, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Err(e) = open_incident(&*tx, id).await? {
            return Ok(Err(e));
        }
        tx.execute(
            "INSERT INTO notice_run (incident_id, controller, dpo, measures, wording, prepared_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (incident_id) DO NOTHING",
            &[
                &id.get(),
                &run.controller,
                &run.dpo,
                &run.measures,
                &run.wording,
                &micros(run.prepared_at),
            ],
        )
        .await?;
        let stored = read_run(&*tx, id)
            .await?
            .ok_or_else(|| StorageError::Corrupt("notice run vanished".into()))?;
        tx.commit().await?;
        Ok(Ok(stored))
    }

    async fn queue_tx(
        &self,
        id: IncidentId,
        notices: &[QueuedNotice],
    ) -> Result<Result<u64, RegisterError>, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Err(e) = open_incident(&*tx, id).await? {
            return Ok(Err(e));
        }
        if read_run(&*tx, id).await?.is_none() {
            return Ok(Err(RegisterError::Invalid {
                field: "notices",
                reason: format!("incident {id}: the notices were not prepared"),
            }));
        }
        let persons: Vec<i64> = notices.iter().map(|n| n.person.get()).collect();
        let channels: Vec<i16> = notices.iter().map(|n| channel_code(n.channel)).collect();
        let deps: Vec<&str> = notices.iter().map(|n| n.departement.as_str()).collect();
        let groups: Vec<i64> = notices.iter().map(|n| n.groups).collect();
        let kinds: Vec<i64> = notices.iter().map(|n| n.kinds).collect();
        let reads: Vec<i64> = notices.iter().map(|n| n.reads as i64).collect();
        let firsts: Vec<i64> = notices.iter().map(|n| micros(n.first)).collect();
        let lasts: Vec<i64> = notices.iter().map(|n| micros(n.last)).collect();
        let digests: Vec<&[u8]> = notices.iter().map(|n| &n.digest[..]).collect();
        let added = tx
            .execute(
                "INSERT INTO notice (incident_id, person_id, channel, departement, groups, kinds,
                        reads, first_at, last_at, digest)
                 SELECT $1, p, c, d, g, k, r, f, l, h
                 FROM UNNEST($2::int8[], $3::int2[], $4::text[], $5::int8[], $6::int8[],
                             $7::int8[], $8::int8[], $9::int8[], $10::bytea[])
                      AS u (p, c, d, g, k, r, f, l, h)
                 ON CONFLICT (incident_id, person_id) DO NOTHING",
                &[
                    &id.get(),
                    &persons,
                    &channels,
                    &deps,
                    &groups,
                    &kinds,
                    &reads,
                    &firsts,
                    &lasts,
                    &digests,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(Ok(added))
    }

    async fn notices_where(
        &self,
        condition: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<StoredNotice>, StorageError> {
        let client = self.client().await?;
        client
            .query(
                &format!("SELECT {NOTICE_COLUMNS} FROM notice WHERE {condition}"),
                params,
            )
            .await?
            .iter()
            .map(notice_row)
            .collect()
    }

    async fn mark(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<bool, StorageError> {
        let client = self.client().await?;
        Ok(client.execute(sql, params).await? == 1)
    }

    async fn progress(&self, id: IncidentId) -> Result<NoticeProgress, StorageError> {
        let client = self.client().await?;
        let mut p = NoticeProgress::default();
        for r in client
            .query(
                "SELECT channel::int8, count(*), count(sent_at),
                        count(*) FILTER (WHERE attempts > 0 AND sent_at IS NULL)
                 FROM notice WHERE incident_id = $1 GROUP BY channel",
                &[&id.get()],
            )
            .await?
        {
            let ch = channel(r.try_get(0)?)?;
            p.queued.insert(ch, r.try_get::<_, i64>(1)? as u64);
            p.sent.insert(ch, r.try_get::<_, i64>(2)? as u64);
            p.interrupted += r.try_get::<_, i64>(3)? as u64;
        }
        for r in client
            .query(
                "SELECT departement, count(*) FROM notice WHERE incident_id = $1
                 GROUP BY departement",
                &[&id.get()],
            )
            .await?
        {
            p.by_departement
                .insert(r.try_get(0)?, r.try_get::<_, i64>(1)? as u64);
        }
        Ok(p)
    }
}

#[async_trait]
impl NoticeStore for PgStore {
    async fn prepare_notices(
        &self,
        id: IncidentId,
        run: &NoticeRun,
    ) -> Result<NoticeRun, RegisterError> {
        let run = check_run(run)?;
        self.prepare_tx(id, run).await.map_err(register_error)?
    }

    async fn queue_notices(
        &self,
        id: IncidentId,
        notices: &[QueuedNotice],
    ) -> Result<u64, RegisterError> {
        for n in notices {
            check_notice(n)?;
        }
        self.queue_tx(id, notices).await.map_err(register_error)?
    }

    async fn pending_notices(
        &self,
        id: IncidentId,
        channel: NoticeChannel,
        after: PersonId,
        limit: u32,
    ) -> Result<Vec<StoredNotice>, RegisterError> {
        self.notices_where(
            "incident_id = $1 AND person_id > $2 AND channel = $3 AND sent_at IS NULL
             ORDER BY person_id LIMIT $4",
            &[
                &id.get(),
                &after.get(),
                &channel_code(channel),
                &i64::from(limit),
            ],
        )
        .await
        .map_err(register_error)
    }

    async fn begin_notice(
        &self,
        id: IncidentId,
        person: PersonId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, RegisterError> {
        self.mark(
            "UPDATE notice SET attempts = attempts + 1, claimed_until = $4
             WHERE incident_id = $1 AND person_id = $2 AND sent_at IS NULL
               AND (claimed_until IS NULL OR claimed_until <= $3)",
            &[&id.get(), &person.get(), &micros(now), &micros(until)],
        )
        .await
        .map_err(register_error)
    }

    async fn notice_to_letter(
        &self,
        id: IncidentId,
        person: PersonId,
    ) -> Result<bool, RegisterError> {
        self.mark(
            "UPDATE notice SET channel = 2, claimed_until = NULL
             WHERE incident_id = $1 AND person_id = $2 AND channel = 1 AND sent_at IS NULL",
            &[&id.get(), &person.get()],
        )
        .await
        .map_err(register_error)
    }

    async fn notice_sent(
        &self,
        id: IncidentId,
        person: PersonId,
        at: DateTime<Utc>,
    ) -> Result<bool, RegisterError> {
        self.mark(
            "UPDATE notice SET sent_at = $3
             WHERE incident_id = $1 AND person_id = $2 AND sent_at IS NULL",
            &[&id.get(), &person.get(), &micros(at)],
        )
        .await
        .map_err(register_error)
    }

    async fn notice_progress(&self, id: IncidentId) -> Result<NoticeProgress, RegisterError> {
        self.progress(id).await.map_err(register_error)
    }

    async fn notice_run(&self, id: IncidentId) -> Result<Option<NoticeRun>, RegisterError> {
        async {
            let client = self.client().await?;
            read_run(&**client, id).await
        }
        .await
        .map_err(register_error)
    }

    async fn notices_of_person(
        &self,
        person: PersonId,
    ) -> Result<Vec<StoredNotice>, RegisterError> {
        self.notices_where("person_id = $1 ORDER BY incident_id DESC", &[&person.get()])
            .await
            .map_err(register_error)
    }
}
