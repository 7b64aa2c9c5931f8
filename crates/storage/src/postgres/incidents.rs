//! [`IncidentStore`] on PostgreSQL: the breach register in the registry's
//! schema. Each write is one transaction; adding an event is a
//! compare-and-set on the incident's row (`… WHERE closed_at IS NULL`),
//! which PostgreSQL re-checks after waiting for a concurrent writer.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::incident::{Compromised, Event, Incident, IncidentId, Milestone, NewIncident};
use tokio_postgres::GenericClient;

use super::PgStore;
use crate::StorageError;
use crate::incidents::{
    CheckedEvent, IncidentStore, RegisterError, Row, check_event, check_new, milestone,
    register_error, subject, subject_columns, window_columns,
};

const INCIDENT_COLUMNS: &str = "id, title, window_from, window_to, aware_at, opened_by";

fn incident_row(r: &tokio_postgres::Row) -> Result<Row, StorageError> {
    Ok(Row {
        id: r.try_get(0)?,
        title: r.try_get(1)?,
        window: (r.try_get(2)?, r.try_get(3)?),
        aware_at: r.try_get(4)?,
        opened_by: r.try_get(5)?,
    })
}

async fn load(c: &impl GenericClient, row: Row) -> Result<Incident, StorageError> {
    let id = row.id;
    let mut compromised = Vec::new();
    for r in c
        .query(
            "SELECT kind::int8, subject_id FROM incident_subject WHERE incident_id = $1
             ORDER BY kind, subject_id",
            &[&id],
        )
        .await?
    {
        compromised.push(subject(r.try_get(0)?, r.try_get(1)?)?);
    }
    let mut timeline = Vec::new();
    for r in c
        .query(
            "SELECT at, milestone, note, recorded_at FROM incident_event
             WHERE incident_id = $1 ORDER BY seq",
            &[&id],
        )
        .await?
    {
        timeline.push(Event {
            at: r.try_get(0)?,
            milestone: milestone(r.try_get(1)?)?,
            note: r.try_get(2)?,
            recorded_at: r.try_get(3)?,
        });
    }
    row.into_incident(compromised, timeline)
}

impl PgStore {
    async fn open_incident_tx(
        &self,
        new: &NewIncident,
        now: DateTime<Utc>,
    ) -> Result<Result<IncidentId, RegisterError>, StorageError> {
        let checked = match check_new(new, now) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for s in &checked.subjects {
            let sql = match s {
                Compromised::Account(_) => "SELECT 1 FROM account WHERE id = $1",
                Compromised::Organisation(_) => "SELECT 1 FROM organisation WHERE id = $1",
            };
            if tx
                .query_opt(sql, &[&subject_columns(*s).1])
                .await?
                .is_none()
            {
                return Ok(Err(RegisterError::UnknownSubject(*s)));
            }
        }
        let (from, to) = window_columns(new.window);
        let id: i64 = tx
            .query_one(
                "INSERT INTO incident (title, window_from, window_to, aware_at, opened_by, events)
                 VALUES ($1, $2, $3, $4, $5, 1) RETURNING id",
                &[
                    &checked.title,
                    &from,
                    &to,
                    &checked.aware_at,
                    &checked.opened_by,
                ],
            )
            .await?
            .try_get(0)?;
        let (kinds, ids): (Vec<i16>, Vec<i64>) =
            checked.subjects.iter().map(|s| subject_columns(*s)).unzip();
        tx.execute(
            "INSERT INTO incident_subject (incident_id, kind, subject_id)
             SELECT $1, k, s FROM UNNEST($2::int2[], $3::int8[]) AS u (k, s)",
            &[&id, &kinds, &ids],
        )
        .await?;
        tx.execute(
            "INSERT INTO incident_event (incident_id, seq, at, milestone, note, recorded_at)
             VALUES ($1, 1, $2, 'opened', NULL, $2)",
            &[&id, &checked.now],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(IncidentId::new(id)))
    }

    async fn record_event_tx(
        &self,
        id: IncidentId,
        event: &Event,
    ) -> Result<Result<(), RegisterError>, StorageError> {
        let CheckedEvent {
            at,
            note,
            recorded_at,
        } = match check_event(event) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let closing = event.milestone == Milestone::Closed;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The compare-and-set: only an open incident takes an event.
        let seq: Option<i32> = tx
            .query_opt(
                "UPDATE incident SET events = events + 1,
                        closed_at = CASE WHEN $2 THEN $3 ELSE closed_at END
                 WHERE id = $1 AND closed_at IS NULL RETURNING events",
                &[&id.get(), &closing, &at],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let Some(seq) = seq else {
            let known = tx
                .query_opt("SELECT 1 FROM incident WHERE id = $1", &[&id.get()])
                .await?
                .is_some();
            return Ok(Err(if known {
                RegisterError::Closed(id)
            } else {
                RegisterError::Unknown(id)
            }));
        };
        tx.execute(
            "INSERT INTO incident_event (incident_id, seq, at, milestone, note, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id.get(),
                &seq,
                &at,
                &event.milestone.as_str(),
                &note,
                &recorded_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }
}

#[async_trait]
impl IncidentStore for PgStore {
    async fn open_incident(
        &self,
        new: &NewIncident,
        now: DateTime<Utc>,
    ) -> Result<IncidentId, RegisterError> {
        self.open_incident_tx(new, now)
            .await
            .map_err(register_error)?
    }

    async fn incident(&self, id: IncidentId) -> Result<Option<Incident>, RegisterError> {
        async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!("SELECT {INCIDENT_COLUMNS} FROM incident WHERE id = $1"),
                    &[&id.get()],
                )
                .await?;
            match row {
                Some(r) => Ok(Some(load(&**client, incident_row(&r)?).await?)),
                None => Ok(None),
            }
        }
        .await
        .map_err(register_error)
    }

    async fn incidents(&self) -> Result<Vec<Incident>, RegisterError> {
        async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!("SELECT {INCIDENT_COLUMNS} FROM incident ORDER BY id DESC"),
                    &[],
                )
                .await?;
            let mut found = Vec::with_capacity(rows.len());
            for r in &rows {
                found.push(load(&**client, incident_row(r)?).await?);
            }
            Ok(found)
        }
        .await
        .map_err(register_error)
    }

    async fn record_event(&self, id: IncidentId, event: &Event) -> Result<(), RegisterError> {
        self.record_event_tx(id, event)
            .await
            .map_err(register_error)?
    }
}
