//! What is in the store: counts and size.

use rempart_domain::{AccountState, OrganisationKind, Purpose, Role};

use super::SqliteStore;
use super::values::grouped;
use crate::{Inventory, StorageError};

pub(super) async fn inventory(store: &SqliteStore) -> Result<Inventory, StorageError> {
    store
        .read(move |c| {
            let (persons, shredded): (i64, i64) = c.query_row(
                "SELECT count(*), count(*) FILTER (WHERE wrapped_dek IS NULL) FROM person",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let keys: Vec<(u32, i64)> = c
                .prepare(
                    "SELECT kek_version, count(*) FROM person WHERE wrapped_dek IS NOT NULL
                     GROUP BY kek_version ORDER BY kek_version",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            Ok(Inventory {
                persons: persons as u64,
                shredded: shredded as u64,
                organisations_by_kind: grouped(
                    c,
                    "SELECT kind, count(*) FROM organisation GROUP BY kind ORDER BY kind",
                    OrganisationKind::parse,
                )?,
                accounts_by_role: grouped(
                    c,
                    "SELECT role, count(*) FROM account GROUP BY role ORDER BY role",
                    Role::parse,
                )?,
                accounts_by_state: grouped(
                    c,
                    "SELECT state, count(*) FROM account GROUP BY state ORDER BY state",
                    AccountState::parse,
                )?,
                mandates_by_purpose: grouped(
                    c,
                    "SELECT purpose, count(*) FROM mandate GROUP BY purpose ORDER BY purpose",
                    Purpose::parse,
                )?,
                keys_by_kek_version: keys.into_iter().map(|(v, n)| (v, n as u64)).collect(),
                bytes: ((pages - free) * size) as u64,
            })
        })
        .await
}
