//! The notices of the breach register (GDPR Art. 34) behind
//! [`NoticeStore`]: one per person and incident, queued once (a second
//! queueing of the same person keeps the first), each delivery begun and
//! recorded by a compare-and-set on its row, so that a dispatcher killed
//! at any moment and started again delivers every notice and records
//! each once. Here what both backends share.
//!
//! A queued notice holds codes (field groups shown, organisation kinds),
//! counts, instants, the person's département and a digest: no personal
//! value. The address it goes to is read from the vault when it is sent.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rempart_domain::PersonId;
pub use rempart_domain::incident::NoticeProgress;
use rempart_domain::incident::{IncidentId, NoticeChannel, NoticeRun, QueuedNotice, StoredNotice};

use crate::StorageError;
use crate::incidents::{RegisterError, checked_text, register_error};

/// The notices' persistence. Every method is one transaction.
#[async_trait]
pub trait NoticeStore: Send + Sync {
    /// Fixes what an incident's notices share, once: the stored run is
    /// returned (the first one, if the notices were already prepared).
    /// Refused if the incident is unknown or closed.
    async fn prepare_notices(
        &self,
        id: IncidentId,
        run: &NoticeRun,
    ) -> Result<NoticeRun, RegisterError>;

    /// Queues notices of a prepared, open incident; a person already
    /// queued keeps their notice. Returns how many were added.
    async fn queue_notices(
        &self,
        id: IncidentId,
        notices: &[QueuedNotice],
    ) -> Result<u64, RegisterError>;

    /// Up to `limit` undelivered notices of a channel, by person id, after
    /// `after`.
    async fn pending_notices(
        &self,
        id: IncidentId,
        channel: NoticeChannel,
        after: PersonId,
        limit: u32,
    ) -> Result<Vec<StoredNotice>, RegisterError>;

    /// Claims a notice for delivery until `until`, if it is undelivered
    /// and no other dispatcher's claim runs at `now` (`false`: send
    /// nothing now; it was delivered, or another dispatcher is on it).
    async fn begin_notice(
        &self,
        id: IncidentId,
        person: PersonId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, RegisterError>;

    /// Sends an undelivered e-mail notice by letter instead (its address
    /// is gone or refused for good), its claim released so that the
    /// letters' pass takes it at once; `false` if it was not an
    /// undelivered e-mail notice.
    async fn notice_to_letter(
        &self,
        id: IncidentId,
        person: PersonId,
    ) -> Result<bool, RegisterError>;

    /// Records a notice delivered at `at`, if it was not yet (`false`:
    /// another dispatcher recorded it first).
    async fn notice_sent(
        &self,
        id: IncidentId,
        person: PersonId,
        at: DateTime<Utc>,
    ) -> Result<bool, RegisterError>;

    /// Where an incident's notices stand.
    async fn notice_progress(&self, id: IncidentId) -> Result<NoticeProgress, RegisterError>;

    /// The run of an incident's notices, if they were prepared.
    async fn notice_run(&self, id: IncidentId) -> Result<Option<NoticeRun>, RegisterError>;

    /// A person's notices, newest incident first: what their personal
    /// space shows.
    async fn notices_of_person(&self, person: PersonId)
    -> Result<Vec<StoredNotice>, RegisterError>;
}

/// Checks a run before it is stored.
pub(crate) fn check_run(run: &NoticeRun) -> Result<NoticeRun, RegisterError> {
    // The controller's name goes into the e-mails' subject line: one line.
    let one_line = |field: &'static str, text: &str| {
        let text = checked_text(field, text)?;
        if text.contains('\n') {
            return Err(RegisterError::Invalid {
                field,
                reason: "must be one line".into(),
            });
        }
        Ok(text)
    };
    Ok(NoticeRun {
        controller: one_line("controller", &run.controller)?,
        dpo: one_line("dpo", &run.dpo)?,
        measures: checked_text("measures", &run.measures)?,
        wording: run.wording,
        prepared_at: crate::instant(run.prepared_at, "prepared_at").map_err(register_error)?,
    })
}

/// Checks a notice before it is stored.
pub(crate) fn check_notice(n: &QueuedNotice) -> Result<(), RegisterError> {
    let invalid = |field: &'static str, reason: &str| RegisterError::Invalid {
        field,
        reason: reason.to_string(),
    };
    let d = n.departement.as_str();
    if !(2..=3).contains(&d.len()) || !d.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid("departement", "expected 2 or 3 letters or digits"));
    }
    if n.reads == 0 || n.reads > i64::MAX as u64 {
        return Err(invalid("reads", "must be at least 1"));
    }
    if n.last < n.first {
        return Err(invalid("last", "is before first"));
    }
    Ok(())
}

/// A channel's stored code.
pub(crate) fn channel_code(c: NoticeChannel) -> i16 {
    match c {
        NoticeChannel::Email => 1,
        NoticeChannel::Letter => 2,
    }
}

/// A stored channel.
pub(crate) fn channel(code: i64) -> Result<NoticeChannel, StorageError> {
    match code {
        1 => Ok(NoticeChannel::Email),
        2 => Ok(NoticeChannel::Letter),
        _ => Err(StorageError::Corrupt(format!("notice channel {code}"))),
    }
}

/// Microseconds since the Unix epoch, as stored.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// A stored instant.
pub(crate) fn from_micros(us: i64, what: &str) -> Result<DateTime<Utc>, StorageError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StorageError::Corrupt(format!("notice {what} out of range")))
}

/// A stored digest.
pub(crate) fn digest(bytes: &[u8]) -> Result<[u8; 32], StorageError> {
    bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("notice digest is not 32 bytes".into()))
}

/// The columns a stored notice is read from, in this order.
pub(crate) const NOTICE_COLUMNS: &str = "incident_id, person_id, channel, departement, groups, kinds, reads, first_at, last_at, digest, attempts, sent_at";

/// A stored notice from its columns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stored(
    incident: i64,
    person: i64,
    channel_code: i64,
    departement: String,
    groups: i64,
    kinds: i64,
    reads: i64,
    first: i64,
    last: i64,
    digest_bytes: &[u8],
    attempts: i64,
    sent_at: Option<i64>,
) -> Result<StoredNotice, StorageError> {
    Ok(StoredNotice {
        incident: IncidentId::new(incident),
        notice: QueuedNotice {
            person: PersonId::new(person),
            channel: channel(channel_code)?,
            departement,
            groups,
            kinds,
            reads: u64::try_from(reads)
                .map_err(|_| StorageError::Corrupt("notice reads".into()))?,
            first: from_micros(first, "first_at")?,
            last: from_micros(last, "last_at")?,
            digest: digest(digest_bytes)?,
        },
        attempts: u32::try_from(attempts)
            .map_err(|_| StorageError::Corrupt("notice attempts".into()))?,
        sent_at: sent_at.map(|s| from_micros(s, "sent_at")).transpose()?,
    })
}
