//! Versioned schema migrations. Each backend has its own SQL files under
//! `migrations/<backend>/NNNN_name.sql` with the same version numbers. A
//! table `schema_migrations` records what was applied and a checksum of it,
//! so an edited migration or a database newer than the program is refused.

use sha2::{Digest, Sha256};

use crate::StorageError;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// SQLite migrations, in order.
pub const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "registry",
    sql: include_str!("../migrations/sqlite/0001_registry.sql"),
}];

/// PostgreSQL migrations, in order.
pub const POSTGRES: &[Migration] = &[Migration {
    version: 1,
    name: "registry",
    sql: include_str!("../migrations/postgres/0001_registry.sql"),
}];

impl Migration {
    /// Hex SHA-256 of the SQL text.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Given what the database says was applied, the migrations still to run.
pub fn pending<'a>(
    known: &'a [Migration],
    applied: &[(u32, String)],
) -> Result<Vec<&'a Migration>, StorageError> {
    let newest_known = known.last().map_or(0, |m| m.version);
    for (version, checksum) in applied {
        match known.iter().find(|m| m.version == *version) {
            None if *version > newest_known => {
                return Err(StorageError::SchemaTooNew {
                    found: *version,
                    known: newest_known,
                });
            }
            None => {
                return Err(StorageError::Corrupt(format!(
                    "schema_migrations lists version {version}, which this program does not know"
                )));
            }
            Some(m) if m.checksum() != *checksum => {
                return Err(StorageError::Migration {
                    version: m.version,
                    name: m.name,
                    reason: "was applied with different SQL (checksum mismatch)".into(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(known
        .iter()
        .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
        .collect())
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
