//! How values are written to and read from PostgreSQL: instants, days,
//! counts.

use std::collections::HashSet;

use rempart_sql::describe;
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use crate::{StorageError, parse_code};

pub(super) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Concurrent writers of the same persons may deadlock (SQLite, with one
/// writer, cannot): that is a conflict too, to run again.
pub(super) fn contention(e: impl Into<StorageError>) -> StorageError {
    match e.into() {
        StorageError::Postgres(e)
            if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) =>
        {
            StorageError::Conflict(format!("concurrent writers: {}", describe(&e)))
        }
        other => other,
    }
}

pub(super) fn to_i32(v: u32, what: &str) -> Result<i32, StorageError> {
    i32::try_from(v).map_err(|_| {
        StorageError::Corrupt(format!(
            "{what} {v} does not fit PostgreSQL's INTEGER column"
        ))
    })
}

pub(super) fn to_u32(v: i32, what: &str) -> Result<u32, StorageError> {
    u32::try_from(v).map_err(|_| StorageError::Corrupt(format!("{what} is negative")))
}

pub(super) fn to_u64(v: i64, what: &str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("{what} is negative")))
}

pub(super) fn has_duplicates(ids: impl IntoIterator<Item = i64>) -> bool {
    let mut seen = HashSet::new();
    ids.into_iter().any(|id| !seen.insert(id))
}

pub(super) async fn grouped<T>(
    c: &impl GenericClient,
    sql: &str,
    parse: impl Fn(&str) -> Result<T, rempart_domain::ValueError>,
) -> Result<Vec<(T, u64)>, StorageError> {
    c.query(sql, &[])
        .await?
        .iter()
        .map(|r| {
            Ok((
                parse_code(r.try_get(0)?, &parse)?,
                to_u64(r.try_get(1)?, "count")?,
            ))
        })
        .collect()
}
