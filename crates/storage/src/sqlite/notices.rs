//! [`NoticeStore`] on SQLite. Writes run on the writer connection, one
//! transaction each: the writer is single, so "find the notice
//! undelivered, then mark it" cannot interleave with another writer; the
//! statements are written as compare-and-sets all the same, as on
//! PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::PersonId;
use rempart_domain::incident::{IncidentId, NoticeChannel, NoticeRun, QueuedNotice, StoredNotice};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use crate::StorageError;
use crate::incidents::{RegisterError, register_error};
use crate::notices::{
    NOTICE_COLUMNS, NoticeProgress, NoticeStore, channel, channel_code, check_notice, check_run,
    from_micros, micros, stored,
};

/// `Ok(())` if the incident is open, else why not.
fn open_incident(
    c: &Connection,
    id: IncidentId,
) -> Result<Result<(), RegisterError>, StorageError> {
    let open: Option<bool> = c
        .prepare_cached("SELECT closed_at IS NULL FROM incident WHERE id = ?1")?
        .query_row([id.get()], |r| r.get(0))
        .optional()?;
    Ok(match open {
        None => Err(RegisterError::Unknown(id)),
        Some(false) => Err(RegisterError::Closed(id)),
        Some(true) => Ok(()),
    })
}

fn read_run(c: &Connection, id: IncidentId) -> Result<Option<NoticeRun>, StorageError> {
    c.prepare_cached(
        "SELECT controller, dpo, measures, wording, prepared_at FROM notice_run
         WHERE incident_id = ?1",
    )?
    .query_row([id.get()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })
    .optional()?
    .map(|(controller, dpo, measures, wording, at)| {
        Ok(NoticeRun {
            controller,
            dpo,
            measures,
            wording,
            prepared_at: from_micros(at, "prepared_at")?,
        })
    })
    .transpose()
}

fn notice_row(r: &rusqlite::Row<'_>) -> Result<StoredNotice, StorageError> {
    stored(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        &r.get::<_, Vec<u8>>(9)?,
        r.get(10)?,
        r.get(11)?,
    )
}

fn collect(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<StoredNotice>, StorageError> {
    let mut rows = stmt.query(params)?;
    let mut found = Vec::new();
    while let Some(r) = rows.next()? {
        found.push(notice_row(r)?);
    }
    Ok(found)
}

#[async_trait]
impl NoticeStore for SqliteStore {
    async fn prepare_notices(
        &self,
        id: IncidentId,
        run: &NoticeRun,
    ) -> Result<NoticeRun, RegisterError> {
        let run = check_run(run)?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Err(e) = open_incident(&tx, id)? {
                return Ok(Err(e));
            }
            tx.execute(
                "INSERT INTO notice_run (incident_id, controller, dpo, measures, wording, prepared_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (incident_id) DO NOTHING",
                params![
                    id.get(),
                    run.controller,
                    run.dpo,
                    run.measures,
                    run.wording,
                    micros(run.prepared_at)
                ],
            )?;
            let stored = read_run(&tx, id)?
                .ok_or_else(|| StorageError::Corrupt("notice run vanished".into()))?;
            tx.commit()?;
            Ok(Ok(stored))
        })
        .await
        .map_err(register_error)?
    }

    async fn queue_notices(
        &self,
        id: IncidentId,
        notices: &[QueuedNotice],
    ) -> Result<u64, RegisterError> {
        for n in notices {
            check_notice(n)?;
        }
        let notices = notices.to_vec();
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Err(e) = open_incident(&tx, id)? {
                return Ok(Err(e));
            }
            if read_run(&tx, id)?.is_none() {
                return Ok(Err(RegisterError::Invalid {
                    field: "notices",
                    reason: format!("incident {id}: the notices were not prepared"),
                }));
            }
            let mut added = 0u64;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO notice (incident_id, person_id, channel, departement, groups,
                            kinds, reads, first_at, last_at, digest)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (incident_id, person_id) DO NOTHING",
                )?;
                for n in &notices {
                    added += stmt.execute(params![
                        id.get(),
                        n.person.get(),
                        channel_code(n.channel),
                        n.departement,
                        n.groups,
                        n.kinds,
                        n.reads as i64,
                        micros(n.first),
                        micros(n.last),
                        &n.digest[..],
                    ])? as u64;
                }
            }
            tx.commit()?;
            Ok(Ok(added))
        })
        .await
        .map_err(register_error)?
    }

    async fn pending_notices(
        &self,
        id: IncidentId,
        channel: NoticeChannel,
        after: PersonId,
        limit: u32,
    ) -> Result<Vec<StoredNotice>, RegisterError> {
        self.read(move |c| {
            collect(
                &mut c.prepare_cached(&format!(
                    "SELECT {NOTICE_COLUMNS} FROM notice
                     WHERE incident_id = ?1 AND person_id > ?2 AND channel = ?3
                       AND sent_at IS NULL
                     ORDER BY person_id LIMIT ?4"
                ))?,
                params![id.get(), after.get(), channel_code(channel), limit],
            )
        })
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
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE notice SET attempts = attempts + 1, claimed_until = ?4
                 WHERE incident_id = ?1 AND person_id = ?2 AND sent_at IS NULL
                   AND (claimed_until IS NULL OR claimed_until <= ?3)",
            )?
            .execute(params![id.get(), person.get(), micros(now), micros(until)])?
                == 1)
        })
        .await
        .map_err(register_error)
    }

    async fn notice_to_letter(
        &self,
        id: IncidentId,
        person: PersonId,
    ) -> Result<bool, RegisterError> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE notice SET channel = 2, claimed_until = NULL
                 WHERE incident_id = ?1 AND person_id = ?2 AND channel = 1
                   AND sent_at IS NULL",
            )?
            .execute(params![id.get(), person.get()])?
                == 1)
        })
        .await
        .map_err(register_error)
    }

    async fn notice_sent(
        &self,
        id: IncidentId,
        person: PersonId,
        at: DateTime<Utc>,
    ) -> Result<bool, RegisterError> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE notice SET sent_at = ?3
                 WHERE incident_id = ?1 AND person_id = ?2 AND sent_at IS NULL",
            )?
            .execute(params![id.get(), person.get(), micros(at)])?
                == 1)
        })
        .await
        .map_err(register_error)
    }

    async fn notice_progress(&self, id: IncidentId) -> Result<NoticeProgress, RegisterError> {
        self.read(move |c| {
            let mut p = NoticeProgress::default();
            let mut stmt = c.prepare_cached(
                "SELECT channel, count(*), count(sent_at),
                        sum(attempts > 0 AND sent_at IS NULL)
                 FROM notice WHERE incident_id = ?1 GROUP BY channel",
            )?;
            let mut rows = stmt.query([id.get()])?;
            while let Some(r) = rows.next()? {
                let ch = channel(r.get(0)?)?;
                p.queued.insert(ch, r.get::<_, i64>(1)? as u64);
                p.sent.insert(ch, r.get::<_, i64>(2)? as u64);
                p.interrupted += r.get::<_, i64>(3)? as u64;
            }
            let mut stmt = c.prepare_cached(
                "SELECT departement, count(*) FROM notice WHERE incident_id = ?1
                 GROUP BY departement",
            )?;
            let mut rows = stmt.query([id.get()])?;
            while let Some(r) = rows.next()? {
                p.by_departement
                    .insert(r.get(0)?, r.get::<_, i64>(1)? as u64);
            }
            Ok(p)
        })
        .await
        .map_err(register_error)
    }

    async fn notice_run(&self, id: IncidentId) -> Result<Option<NoticeRun>, RegisterError> {
        self.read(move |c| read_run(c, id))
            .await
            .map_err(register_error)
    }

    async fn notices_of_person(
        &self,
        person: PersonId,
    ) -> Result<Vec<StoredNotice>, RegisterError> {
        self.read(move |c| {
            collect(
                &mut c.prepare_cached(&format!(
                    "SELECT {NOTICE_COLUMNS} FROM notice WHERE person_id = ?1
                     ORDER BY incident_id DESC"
                ))?,
                [person.get()],
            )
        })
        .await
        .map_err(register_error)
    }
}
