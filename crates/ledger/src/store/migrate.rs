//! Versioned migrations of the ledger's own schema: `migrations/<backend>/
//! NNNN_name.sql`, the same versions on both backends, recorded with a
//! checksum in the ledger's own `schema_migrations` table, so that an edited
//! migration or a schema newer than the program is refused.

pub(crate) use rempart_sql::Migration;

/// SQLite migrations, in order.
pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "ledger",
        sql: include_str!("../../migrations/sqlite/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "segment_indexes",
        sql: include_str!("../../migrations/sqlite/0002_segment_indexes.sql"),
    },
    Migration {
        version: 3,
        name: "staging",
        sql: include_str!("../../migrations/sqlite/0003_staging.sql"),
    },
    Migration {
        version: 4,
        name: "compact",
        sql: include_str!("../../migrations/sqlite/0004_compact.sql"),
    },
    Migration {
        version: 5,
        name: "multi_key_chunks",
        sql: include_str!("../../migrations/sqlite/0005_multi_key_chunks.sql"),
    },
    Migration {
        version: 6,
        name: "subtree_hashes",
        sql: include_str!("../../migrations/sqlite/0006_subtree_hashes.sql"),
    },
    Migration {
        version: 7,
        name: "postgres_compact",
        sql: include_str!("../../migrations/sqlite/0007_postgres_compact.sql"),
    },
    Migration {
        version: 8,
        name: "leaf_bundles",
        sql: include_str!("../../migrations/sqlite/0008_leaf_bundles.sql"),
    },
    Migration {
        version: 9,
        name: "upper_subtrees",
        sql: include_str!("../../migrations/sqlite/0009_upper_subtrees.sql"),
    },
    Migration {
        version: 10,
        name: "tile_level4",
        sql: include_str!("../../migrations/sqlite/0010_tile_level4.sql"),
    },
];

/// PostgreSQL migrations, in order.
pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "ledger",
        sql: include_str!("../../migrations/postgres/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "segment_indexes",
        sql: include_str!("../../migrations/postgres/0002_segment_indexes.sql"),
    },
    Migration {
        version: 3,
        name: "staging",
        sql: include_str!("../../migrations/postgres/0003_staging.sql"),
    },
    Migration {
        version: 4,
        name: "compact",
        sql: include_str!("../../migrations/postgres/0004_compact.sql"),
    },
    Migration {
        version: 5,
        name: "multi_key_chunks",
        sql: include_str!("../../migrations/postgres/0005_multi_key_chunks.sql"),
    },
    Migration {
        version: 6,
        name: "subtree_hashes",
        sql: include_str!("../../migrations/postgres/0006_subtree_hashes.sql"),
    },
    Migration {
        version: 7,
        name: "postgres_compact",
        sql: include_str!("../../migrations/postgres/0007_postgres_compact.sql"),
    },
    Migration {
        version: 8,
        name: "leaf_bundles",
        sql: include_str!("../../migrations/postgres/0008_leaf_bundles.sql"),
    },
    Migration {
        version: 9,
        name: "upper_subtrees",
        sql: include_str!("../../migrations/postgres/0009_upper_subtrees.sql"),
    },
    Migration {
        version: 10,
        name: "tile_level4",
        sql: include_str!("../../migrations/postgres/0010_tile_level4.sql"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    /// Given what the database says was applied, the migrations still to run
    /// (the shared rules of `rempart_sql::pending`, with this crate's errors).
    fn pending<'a>(
        known: &'a [Migration],
        applied: &[(u32, String)],
    ) -> Result<Vec<&'a Migration>, StoreError> {
        rempart_sql::pending(known, applied).map_err(Into::into)
    }

    #[test]
    fn same_versions_on_both_backends() {
        let v = |l: &[Migration]| l.iter().map(|m| (m.version, m.name)).collect::<Vec<_>>();
        assert_eq!(v(SQLITE), v(POSTGRES));
    }

    #[test]
    fn edited_and_newer_schemas_are_refused() {
        let m = SQLITE[0];
        assert_eq!(pending(SQLITE, &[]).unwrap().len(), SQLITE.len());
        let after_first = pending(SQLITE, &[(1, m.checksum())]).unwrap();
        assert_eq!(
            after_first.iter().map(|m| m.version).collect::<Vec<_>>(),
            (2..=SQLITE.len() as u32).collect::<Vec<_>>()
        );
        let all: Vec<(u32, String)> = SQLITE.iter().map(|m| (m.version, m.checksum())).collect();
        assert!(pending(SQLITE, &all).unwrap().is_empty());
        assert!(matches!(
            pending(SQLITE, &[(1, "x".into())]),
            Err(StoreError::Migration { version: 1, .. })
        ));
        assert!(matches!(
            pending(SQLITE, &[(99, "x".into())]),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }
}
