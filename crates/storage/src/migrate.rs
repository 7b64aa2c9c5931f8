//! Versioned schema migrations. Each backend has its own SQL files under
//! `migrations/<backend>/NNNN_name.sql` with the same version numbers. A
//! table `schema_migrations` records what was applied and a checksum of it,
//! so an edited migration or a database newer than the program is refused.

pub use rempart_sql::Migration;

use crate::StorageError;

/// SQLite migrations, in order.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "registry",
        sql: include_str!("../migrations/sqlite/0001_registry.sql"),
    },
    Migration {
        version: 2,
        name: "consultation",
        sql: include_str!("../migrations/sqlite/0002_consultation.sql"),
    },
    Migration {
        version: 3,
        name: "authentication",
        sql: include_str!("../migrations/sqlite/0003_authentication.sql"),
    },
    Migration {
        version: 4,
        name: "guard",
        sql: include_str!("../migrations/sqlite/0004_guard.sql"),
    },
    Migration {
        version: 5,
        name: "activation",
        sql: include_str!("../migrations/sqlite/0005_activation.sql"),
    },
    Migration {
        version: 6,
        name: "federation",
        sql: include_str!("../migrations/sqlite/0006_federation.sql"),
    },
    Migration {
        version: 7,
        name: "kept_in_memory",
        sql: include_str!("../migrations/sqlite/0007_kept_in_memory.sql"),
    },
    Migration {
        version: 8,
        name: "break_glass_reason",
        sql: include_str!("../migrations/sqlite/0008_break_glass_reason.sql"),
    },
    Migration {
        version: 9,
        name: "guard_block",
        sql: include_str!("../migrations/sqlite/0009_guard_block.sql"),
    },
    Migration {
        version: 10,
        name: "login_device",
        sql: include_str!("../migrations/sqlite/0010_login_device.sql"),
    },
    Migration {
        version: 11,
        name: "mandate_request",
        sql: include_str!("../migrations/sqlite/0011_mandate_request.sql"),
    },
    Migration {
        version: 12,
        name: "organisation_alert",
        sql: include_str!("../migrations/sqlite/0012_organisation_alert.sql"),
    },
    Migration {
        version: 13,
        name: "guard_exchange",
        sql: include_str!("../migrations/sqlite/0013_guard_exchange.sql"),
    },
    Migration {
        version: 14,
        name: "login_throttle",
        sql: include_str!("../migrations/sqlite/0014_login_throttle.sql"),
    },
    Migration {
        version: 15,
        name: "import_progress",
        sql: include_str!("../migrations/sqlite/0015_import_progress.sql"),
    },
    Migration {
        version: 16,
        name: "incident",
        sql: include_str!("../migrations/sqlite/0016_incident.sql"),
    },
    Migration {
        version: 17,
        name: "notice",
        sql: include_str!("../migrations/sqlite/0017_notice.sql"),
    },
];

/// PostgreSQL migrations, in order.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "registry",
        sql: include_str!("../migrations/postgres/0001_registry.sql"),
    },
    Migration {
        version: 2,
        name: "consultation",
        sql: include_str!("../migrations/postgres/0002_consultation.sql"),
    },
    Migration {
        version: 3,
        name: "authentication",
        sql: include_str!("../migrations/postgres/0003_authentication.sql"),
    },
    Migration {
        version: 4,
        name: "guard",
        sql: include_str!("../migrations/postgres/0004_guard.sql"),
    },
    Migration {
        version: 5,
        name: "activation",
        sql: include_str!("../migrations/postgres/0005_activation.sql"),
    },
    Migration {
        version: 6,
        name: "federation",
        sql: include_str!("../migrations/postgres/0006_federation.sql"),
    },
    Migration {
        version: 7,
        name: "kept_in_memory",
        sql: include_str!("../migrations/postgres/0007_kept_in_memory.sql"),
    },
    Migration {
        version: 8,
        name: "break_glass_reason",
        sql: include_str!("../migrations/postgres/0008_break_glass_reason.sql"),
    },
    Migration {
        version: 9,
        name: "guard_block",
        sql: include_str!("../migrations/postgres/0009_guard_block.sql"),
    },
    Migration {
        version: 10,
        name: "login_device",
        sql: include_str!("../migrations/postgres/0010_login_device.sql"),
    },
    Migration {
        version: 11,
        name: "mandate_request",
        sql: include_str!("../migrations/postgres/0011_mandate_request.sql"),
    },
    Migration {
        version: 12,
        name: "organisation_alert",
        sql: include_str!("../migrations/postgres/0012_organisation_alert.sql"),
    },
    Migration {
        version: 13,
        name: "guard_exchange",
        sql: include_str!("../migrations/postgres/0013_guard_exchange.sql"),
    },
    Migration {
        version: 14,
        name: "login_throttle",
        sql: include_str!("../migrations/postgres/0014_login_throttle.sql"),
    },
    Migration {
        version: 15,
        name: "import_progress",
        sql: include_str!("../migrations/postgres/0015_import_progress.sql"),
    },
    Migration {
        version: 16,
        name: "incident",
        sql: include_str!("../migrations/postgres/0016_incident.sql"),
    },
    Migration {
        version: 17,
        name: "notice",
        sql: include_str!("../migrations/postgres/0017_notice.sql"),
    },
];

/// Given what the database says was applied, the migrations still to run
/// (the shared rules of `rempart_sql::pending`, with this crate's errors).
pub fn pending<'a>(
    known: &'a [Migration],
    applied: &[(u32, String)],
) -> Result<Vec<&'a Migration>, StorageError> {
    rempart_sql::pending(known, applied).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_versions_in_order() {
        let v = |l: &[Migration]| l.iter().map(|m| (m.version, m.name)).collect::<Vec<_>>();
        assert_eq!(v(SQLITE), v(POSTGRES));
        for w in SQLITE.windows(2) {
            assert!(w[0].version < w[1].version);
        }
    }

    #[test]
    fn pending_refuses_edited_and_newer_schemas() {
        let m = SQLITE[0];
        assert_eq!(pending(SQLITE, &[]).unwrap().len(), SQLITE.len());
        assert_eq!(
            pending(SQLITE, &[(1, m.checksum())]).unwrap().len(),
            SQLITE.len() - 1
        );
        assert!(matches!(
            pending(SQLITE, &[(1, "0".into())]),
            Err(StorageError::Migration { version: 1, .. })
        ));
        assert!(matches!(
            pending(SQLITE, &[(1, m.checksum()), (999, "x".into())]),
            Err(StorageError::SchemaTooNew { found: 999, .. })
        ));
    }
}
