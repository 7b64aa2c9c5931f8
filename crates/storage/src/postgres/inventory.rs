//! What is in the store: counts and size.

use rempart_domain::{AccountState, OrganisationKind, Purpose, Role};
use tokio_postgres::IsolationLevel;

use super::PgStore;
use super::values::{grouped, to_u32, to_u64};
use crate::{Inventory, StorageError};

/// Tables of the registry, for [`Inventory::bytes`].
pub(super) const TABLES: &[&str] = &[
    "person",
    "organisation",
    "account",
    "mandate",
    "api_credential",
    "id_counter",
];

pub(super) async fn inventory(store: &PgStore) -> Result<Inventory, StorageError> {
    let mut client = store.client().await?;
    // One snapshot for all the counts.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let r = tx
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE wrapped_dek IS NULL) FROM person",
            &[],
        )
        .await?;
    let (persons, shredded): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
    let keys = tx
        .query(
            "SELECT kek_version, count(*) FROM person WHERE wrapped_dek IS NOT NULL
             GROUP BY kek_version ORDER BY kek_version",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                to_u32(r.try_get(0)?, "kek_version")?,
                to_u64(r.try_get(1)?, "count")?,
            ))
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    // Heap, indexes and TOAST of the registry's tables.
    let bytes: i64 = tx
        .query_one(
            "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::int8
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname = ANY($2)",
            &[&store.schema, &TABLES],
        )
        .await?
        .try_get(0)?;
    // Codes are ASCII: the C collation orders them as SQLite does.
    let inventory = Inventory {
        persons: to_u64(persons, "count")?,
        shredded: to_u64(shredded, "count")?,
        organisations_by_kind: grouped(
            &*tx,
            "SELECT kind, count(*) FROM organisation GROUP BY kind ORDER BY kind COLLATE \"C\"",
            OrganisationKind::parse,
        )
        .await?,
        accounts_by_role: grouped(
            &*tx,
            "SELECT role, count(*) FROM account GROUP BY role ORDER BY role COLLATE \"C\"",
            Role::parse,
        )
        .await?,
        accounts_by_state: grouped(
            &*tx,
            "SELECT state, count(*) FROM account GROUP BY state ORDER BY state COLLATE \"C\"",
            AccountState::parse,
        )
        .await?,
        mandates_by_purpose: grouped(
            &*tx,
            "SELECT purpose, count(*) FROM mandate GROUP BY purpose ORDER BY purpose COLLATE \"C\"",
            Purpose::parse,
        )
        .await?,
        keys_by_kek_version: keys,
        bytes: to_u64(bytes, "size")?,
    };
    tx.commit().await?;
    Ok(inventory)
}
