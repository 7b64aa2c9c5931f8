//! What the registry's and the ledger's stores share, so that each keeps
//! only its own SQL: versioned migrations (the rules, and the one runner
//! per backend both stores use) and a few PostgreSQL helpers.

use sha2::{Digest, Sha256};

mod readers;
mod run;

pub use readers::{SqliteReaders, lock_connection};
pub use run::{migrate_postgres, migrate_sqlite};

/// One schema step: same version numbers on every backend of a store.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// Hex SHA-256 of the SQL text, recorded when applied.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Why the applied migrations do not fit the program's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "the database schema is at version {found}, newer than this program knows ({known}): upgrade Rempart"
    )]
    TooNew { found: u32, known: u32 },
    #[error("schema_migrations lists version {version}, which this program does not know")]
    Unknown { version: u32 },
    #[error("migration {version} ({name}) was applied with different SQL (checksum mismatch)")]
    Edited { version: u32, name: &'static str },
    #[error("migration {version} ({name}): {reason}")]
    Failed {
        version: u32,
        name: &'static str,
        reason: String,
    },
    #[error("schema_migrations lists version {0}, which no migration can have")]
    BadVersion(i64),
}

/// Given what the database says was applied (version, checksum), the
/// migrations still to run, in order. Refuses an edited migration and a
/// database newer than the program.
pub fn pending<'a>(
    known: &'a [Migration],
    applied: &[(u32, String)],
) -> Result<Vec<&'a Migration>, MigrationError> {
    let newest = known.last().map_or(0, |m| m.version);
    for (version, checksum) in applied {
        match known.iter().find(|m| m.version == *version) {
            None if *version > newest => {
                return Err(MigrationError::TooNew {
                    found: *version,
                    known: newest,
                });
            }
            None => return Err(MigrationError::Unknown { version: *version }),
            Some(m) if m.checksum() != *checksum => {
                return Err(MigrationError::Edited {
                    version: m.version,
                    name: m.name,
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

/// Whether `name` may be spliced into SQL as a schema or role name without
/// quoting: 1–63 lowercase letters, digits or underscores, not starting
/// with a digit, not a system name.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !name.starts_with("pg_")
        && name != "information_schema"
}

/// An advisory lock key derived from a text (first 8 bytes of its SHA-256).
pub fn lock_key(text: &str) -> i64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

/// The connection URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "PostgreSQL connection string".into();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            let password = if userinfo.contains(':') { ":***" } else { "" };
            format!("{}{user}{password}{}", &url[..scheme_end + 3], &rest[at..])
        }
        None => url.to_string(),
    }
}

/// An error and its causes, one after the other (tokio-postgres says only
/// "db error" or "error connecting to server" at the top level).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &[Migration] = &[
        Migration {
            version: 1,
            name: "one",
            sql: "CREATE TABLE a (x INT);",
        },
        Migration {
            version: 2,
            name: "two",
            sql: "CREATE TABLE b (x INT);",
        },
    ];

    #[test]
    fn pending_refuses_edited_unknown_and_newer_schemas() {
        assert_eq!(pending(M, &[]).unwrap().len(), 2);
        let done = [(1, M[0].checksum())];
        assert_eq!(pending(M, &done).unwrap()[0].version, 2);
        assert_eq!(
            pending(M, &[(1, "0".into())]).unwrap_err(),
            MigrationError::Edited {
                version: 1,
                name: "one"
            }
        );
        assert_eq!(
            pending(M, &[(9, "x".into())]).unwrap_err(),
            MigrationError::TooNew { found: 9, known: 2 }
        );
        let gap = &[M[1]];
        assert_eq!(
            pending(gap, &[(1, "x".into())]).unwrap_err(),
            MigrationError::Unknown { version: 1 }
        );
    }

    #[test]
    fn names_that_need_no_quoting() {
        for ok in ["registry", "t_1_2", "_x", "ledger"] {
            assert!(is_plain_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Registry",
            "a-b",
            "a;drop",
            "1a",
            "pg_x",
            &"a".repeat(64),
        ] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("postgres://bob:secret@db:5432/x?sslmode=disable"),
            "postgres://bob:***@db:5432/x?sslmode=disable"
        );
        assert_eq!(redact_url("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(
            redact_url("host=db password=x"),
            "PostgreSQL connection string"
        );
        assert_ne!(lock_key("a"), lock_key("b"));
    }
}
