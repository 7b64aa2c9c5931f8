//! Versioned migrations of the ledger's own schema: `migrations/<backend>/
//! NNNN_name.sql`, the same versions on both backends, recorded with a
//! checksum in the ledger's own `schema_migrations` table, so that an edited
//! migration or a schema newer than the program is refused.

use sha2::{Digest, Sha256};

use super::StoreError;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// SQLite migrations, in order.
pub(crate) const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "ledger",
    sql: include_str!("../../migrations/sqlite/0001_ledger.sql"),
}];

/// PostgreSQL migrations, in order.
pub(crate) const POSTGRES: &[Migration] = &[Migration {
    version: 1,
    name: "ledger",
    sql: include_str!("../../migrations/postgres/0001_ledger.sql"),
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
pub(crate) fn pending<'a>(
    known: &'a [Migration],
    applied: &[(u32, String)],
) -> Result<Vec<&'a Migration>, StoreError> {
    let newest = known.last().map_or(0, |m| m.version);
    for (version, checksum) in applied {
        match known.iter().find(|m| m.version == *version) {
            None if *version > newest => {
                return Err(StoreError::SchemaTooNew {
                    found: *version,
                    known: newest,
                });
            }
            None => {
                return Err(StoreError::Corrupt(format!(
                    "schema_migrations lists version {version}, which this program does not know"
                )));
            }
            Some(m) if m.checksum() != *checksum => {
                return Err(StoreError::Migration {
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
    fn same_versions_on_both_backends() {
        let v = |l: &[Migration]| l.iter().map(|m| (m.version, m.name)).collect::<Vec<_>>();
        assert_eq!(v(SQLITE), v(POSTGRES));
    }

    #[test]
    fn edited_and_newer_schemas_are_refused() {
        let m = SQLITE[0];
        assert_eq!(pending(SQLITE, &[]).unwrap().len(), 1);
        assert!(pending(SQLITE, &[(1, m.checksum())]).unwrap().is_empty());
        assert!(matches!(
            pending(SQLITE, &[(1, "x".into())]),
            Err(StoreError::Migration { version: 1, .. })
        ));
        assert!(matches!(
            pending(SQLITE, &[(7, "x".into())]),
            Err(StoreError::SchemaTooNew { found: 7, .. })
        ));
    }
}
