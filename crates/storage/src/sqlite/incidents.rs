//! [`IncidentStore`] on SQLite: the breach register in the registry's
//! file. Each method is one transaction on the writer (or a read).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::incident::{Compromised, Event, Incident, IncidentId, Milestone, NewIncident};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{SqliteStore, instant_text, parse_instant};
use crate::StorageError;
use crate::incidents::{
    CheckedEvent, IncidentStore, RegisterError, Row, check_event, check_new, milestone,
    register_error, subject, subject_columns, window_columns,
};

/// Whether a compromised subject is in the registry.
fn exists(c: &Connection, s: Compromised) -> Result<bool, StorageError> {
    let sql = match s {
        Compromised::Account(_) => "SELECT 1 FROM account WHERE id = ?1",
        Compromised::Organisation(_) => "SELECT 1 FROM organisation WHERE id = ?1",
    };
    Ok(c.prepare_cached(sql)?
        .query_row([subject_columns(s).1], |_| Ok(()))
        .optional()?
        .is_some())
}

fn load(c: &Connection, row: Row) -> Result<Incident, StorageError> {
    let id = row.id;
    let mut stmt = c.prepare_cached(
        "SELECT kind, subject_id FROM incident_subject WHERE incident_id = ?1
         ORDER BY kind, subject_id",
    )?;
    let mut rows = stmt.query([id])?;
    let mut compromised = Vec::new();
    while let Some(r) = rows.next()? {
        compromised.push(subject(r.get(0)?, r.get(1)?)?);
    }
    let mut stmt = c.prepare_cached(
        "SELECT at, milestone, note, recorded_at FROM incident_event
         WHERE incident_id = ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([id])?;
    let mut timeline = Vec::new();
    while let Some(r) = rows.next()? {
        timeline.push(Event {
            at: parse_instant(&r.get::<_, String>(0)?, "event at")?,
            milestone: milestone(&r.get::<_, String>(1)?)?,
            note: r.get(2)?,
            recorded_at: parse_instant(&r.get::<_, String>(3)?, "event recorded_at")?,
        });
    }
    row.into_incident(compromised, timeline)
}

const INCIDENT_COLUMNS: &str = "id, title, window_from, window_to, aware_at, opened_by";

fn incident_row(r: &rusqlite::Row<'_>) -> Result<Row, StorageError> {
    Ok(Row {
        id: r.get(0)?,
        title: r.get(1)?,
        window: (r.get(2)?, r.get(3)?),
        aware_at: parse_instant(&r.get::<_, String>(4)?, "aware_at")?,
        opened_by: r.get(5)?,
    })
}

/// A refusal found inside a transaction: nothing is committed, and the
/// caller hears it as the register's error.
enum Outcome<T> {
    Done(T),
    Refused(RegisterError),
}

#[async_trait]
impl IncidentStore for SqliteStore {
    async fn open_incident(
        &self,
        new: &NewIncident,
        now: DateTime<Utc>,
    ) -> Result<IncidentId, RegisterError> {
        let checked = check_new(new, now)?;
        let (from, to) = window_columns(new.window);
        let outcome = self
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                for s in &checked.subjects {
                    if !exists(&tx, *s)? {
                        return Ok(Outcome::Refused(RegisterError::UnknownSubject(*s)));
                    }
                }
                let now = instant_text(checked.now, "now")?;
                let id: i64 = tx.query_row(
                    "INSERT INTO incident (title, window_from, window_to, aware_at, opened_by, events)
                     VALUES (?1, ?2, ?3, ?4, ?5, 1) RETURNING id",
                    params![
                        checked.title,
                        from,
                        to,
                        instant_text(checked.aware_at, "aware_at")?,
                        checked.opened_by
                    ],
                    |r| r.get(0),
                )?;
                for s in &checked.subjects {
                    let (kind, subject) = subject_columns(*s);
                    tx.execute(
                        "INSERT INTO incident_subject (incident_id, kind, subject_id)
                         VALUES (?1, ?2, ?3)",
                        params![id, kind, subject],
                    )?;
                }
                tx.execute(
                    "INSERT INTO incident_event (incident_id, seq, at, milestone, note, recorded_at)
                     VALUES (?1, 1, ?2, 'opened', NULL, ?2)",
                    params![id, now],
                )?;
                tx.commit()?;
                Ok(Outcome::Done(IncidentId::new(id)))
            })
            .await
            .map_err(register_error)?;
        match outcome {
            Outcome::Done(id) => Ok(id),
            Outcome::Refused(e) => Err(e),
        }
    }

    async fn incident(&self, id: IncidentId) -> Result<Option<Incident>, RegisterError> {
        self.read(move |c| {
            let row = c
                .prepare_cached(&format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incident WHERE id = ?1"
                ))?
                .query_row([id.get()], |r| Ok(incident_row(r)))
                .optional()?
                .transpose()?;
            row.map(|row| load(c, row)).transpose()
        })
        .await
        .map_err(register_error)
    }

    async fn incidents(&self) -> Result<Vec<Incident>, RegisterError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {INCIDENT_COLUMNS} FROM incident ORDER BY id DESC"
            ))?;
            let mut rows = stmt.query([])?;
            let mut found = Vec::new();
            while let Some(r) = rows.next()? {
                found.push(incident_row(r)?);
            }
            found.into_iter().map(|row| load(c, row)).collect()
        })
        .await
        .map_err(register_error)
    }

    async fn record_event(&self, id: IncidentId, event: &Event) -> Result<(), RegisterError> {
        let CheckedEvent {
            at,
            note,
            recorded_at,
        } = check_event(event)?;
        let closing = event.milestone == Milestone::Closed;
        let code = event.milestone.as_str();
        let outcome = self
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let at = instant_text(at, "at")?;
                // The compare-and-set: only an open incident takes an event.
                let seq: Option<i64> = tx
                    .query_row(
                        "UPDATE incident SET events = events + 1,
                                closed_at = CASE WHEN ?2 THEN ?3 ELSE closed_at END
                         WHERE id = ?1 AND closed_at IS NULL RETURNING events",
                        params![id.get(), closing, at],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(seq) = seq else {
                    let known = tx
                        .query_row("SELECT 1 FROM incident WHERE id = ?1", [id.get()], |_| {
                            Ok(())
                        })
                        .optional()?
                        .is_some();
                    return Ok(Outcome::Refused(if known {
                        RegisterError::Closed(id)
                    } else {
                        RegisterError::Unknown(id)
                    }));
                };
                tx.execute(
                    "INSERT INTO incident_event (incident_id, seq, at, milestone, note, recorded_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        id.get(),
                        seq,
                        at,
                        code,
                        note,
                        instant_text(recorded_at, "recorded_at")?
                    ],
                )?;
                tx.commit()?;
                Ok(Outcome::Done(()))
            })
            .await
            .map_err(register_error)?;
        match outcome {
            Outcome::Done(()) => Ok(()),
            Outcome::Refused(e) => Err(e),
        }
    }
}
