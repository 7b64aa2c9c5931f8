//! SQLite backend: one file `registry.db` in the data directory, WAL mode,
//! one writer connection and a few reader connections, each used on
//! tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rempart_domain::{
    Account, AccountState, FieldGroup, Organisation, OrganisationKind, Purpose, Reference, Role,
};
use rempart_sql::SqliteReaders;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::memory::{CredentialRow, Credentials, Named, Names};
use crate::{
    ACCOUNT_SELECT, AccountRecord, Blind, CREDENTIAL_SELECT, CaseloadEntry, ConsultationRows,
    ExistingPerson, Inventory, MANDATE_COLUMNS, MandateRow, NewBreakGlassReason, NewMandate,
    PersonIndex, RegistryStore, RowRefusal, SealedPerson, StorageError, StoredBreakGlassReason,
    StoredCredential, StoredMandate, StoredPerson, UpsertCount, WrappedKeyRow, blind,
    caseload_page, check_mandate_period, credential_period, digest, group_column, index_column,
    migrate, parse_code,
};
use crate::{GrantDecision, GrantRequest, check_grant_decider};

mod auth;
mod guard;

/// File name of the registry inside the data directory.
pub const FILE_NAME: &str = "registry.db";
const READERS: usize = 4;

/// The SQLite registry.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: SqliteReaders,
    names: Names,
    credentials: Credentials,
}

use rempart_sql::lock_connection as lock;

impl SqliteStore {
    /// Opens (creating if needed) `dir/registry.db` and applies migrations.
    /// The directory must exist.
    pub async fn open(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join(FILE_NAME);
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }

    fn open_blocking(path: PathBuf) -> Result<Self, StorageError> {
        if !path.parent().is_some_and(Path::is_dir) {
            return Err(StorageError::Open {
                path: path.display().to_string(),
                reason: "the data directory does not exist (run `rempart init` first)".into(),
            });
        }
        let mut writer = Connection::open(&path)?;
        // Larger pages: fewer page splits and less per-page overhead for
        // rows of ~400 bytes. Only takes effect when the file is created.
        writer.execute_batch("PRAGMA page_size = 16384;")?;
        writer.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 10000;
             PRAGMA cache_size = -65536;
             PRAGMA secure_delete = ON;",
        )?;
        migrate_sqlite(&mut writer)?;
        writer.execute_batch(PERSON_INDEXES)?;
        let readers = SqliteReaders::open(
            &path,
            READERS,
            "PRAGMA busy_timeout = 10000; PRAGMA cache_size = -16384;",
        )?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers,
                names: Names::default(),
                credentials: Credentials::default(),
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer)))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// A point read (one indexed lookup, tens of microseconds): run on the
    /// calling thread with a free reader connection, which saves the two
    /// thread hand-offs of the blocking pool on every request of the
    /// consultation path. Falls back to the pool when every reader is busy.
    async fn read_point<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        match self.inner.readers.try_with(f) {
            Ok(done) => done,
            Err(f) => self.read(f).await,
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }
}

/// The person indexes, idempotent. Bulk loads drop and rebuild them.
const PERSON_INDEXES: &str = "
    CREATE UNIQUE INDEX IF NOT EXISTS person_ft ON person (ft_blind);
    CREATE INDEX IF NOT EXISTS person_nir ON person (nir_blind);
    CREATE INDEX IF NOT EXISTS person_name ON person (name_blind);";

fn migrate_sqlite(conn: &mut Connection) -> Result<(), StorageError> {
    rempart_sql::migrate_sqlite(conn, migrate::SQLITE)
}

fn grouped<T>(
    conn: &Connection,
    sql: &str,
    parse: impl Fn(&str) -> Result<T, rempart_domain::ValueError>,
) -> Result<Vec<(T, u64)>, StorageError> {
    let rows: Vec<(String, i64)> = conn
        .prepare(sql)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(k, n)| Ok((parse_code(k, &parse)?, n as u64)))
        .collect()
}

/// An instant as SQLite keeps it: RFC 3339 UTC text with microseconds,
/// fixed width so that text order is time order.
fn instant_text(at: DateTime<Utc>, what: &'static str) -> Result<String, StorageError> {
    Ok(crate::instant(at, what)?.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn parse_instant(s: &str, what: &str) -> Result<DateTime<Utc>, StorageError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| StorageError::Corrupt(format!("stored {what} is not an RFC 3339 instant")))
}

/// A text column, borrowed from the row (`None` for NULL).
fn text<'r>(r: &'r Row<'_>, i: usize, what: &str) -> Result<Option<&'r str>, StorageError> {
    r.get_ref(i)?
        .as_str_or_null()
        .map_err(|_| StorageError::Corrupt(format!("stored {what} is not text")))
}

/// A stored `YYYY-MM-DD` day. Read by hand: chrono's format-string parser
/// (which rusqlite uses) showed in profiles of the consultation path.
fn day(s: &str, what: &str) -> Result<NaiveDate, StorageError> {
    let corrupt = || StorageError::Corrupt(format!("stored {what} is not a YYYY-MM-DD day"));
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(corrupt());
    }
    let (Some(y), Some(m), Some(d)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return Err(corrupt());
    };
    i32::try_from(y)
        .ok()
        .and_then(|y| NaiveDate::from_ymd_opt(y, m, d))
        .ok_or_else(corrupt)
}

fn optional_instant(s: Option<String>, what: &str) -> Result<Option<DateTime<Utc>>, StorageError> {
    s.map(|s| parse_instant(&s, what)).transpose()
}

// The hot-path lookups below compare with `+?1`, not `?1`. With a bare
// parameter in these joins, SQLite marks the prepared statement as
// depending on the bound value and re-prepares it on every call (measured
// under load: 17% of the server's CPU for the mandates, 11% for the
// credential). The unary plus keeps the index or rowid lookup (checked by
// `hot_lookups_are_never_re_prepared`).

/// The credential and its account, by credential id.
static CREDENTIAL_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{CREDENTIAL_SELECT} WHERE c.id = +?1"));

/// Every mandate on one person, from the covering index `mandate_person`
/// alone (one seek, no row fetched). In index order: `mandates_rows` sorts
/// the few rows by id itself, which spares SQLite a temporary B-tree per
/// call.
static MANDATES_OF_PERSON_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {MANDATE_COLUMNS} FROM mandate WHERE person_id = +?1"));

/// The SQL of [`person_row`] for these groups.
fn person_sql(groups: &[FieldGroup]) -> String {
    let mut sql = String::from("SELECT kek_version, dek_version, wrapped_dek");
    for g in groups {
        sql.push_str(", ");
        sql.push_str(group_column(*g));
    }
    sql.push_str(" FROM person WHERE id = +?1");
    sql
}

/// A person's key material and the sealed groups asked for.
fn person_row(
    c: &Connection,
    id: i64,
    groups: &[FieldGroup],
) -> Result<Option<StoredPerson>, StorageError> {
    // The consultation path asks for every group: its SQL is built once.
    static ALL_GROUPS_SQL: LazyLock<String> = LazyLock::new(|| person_sql(FieldGroup::ALL));
    let built;
    let sql = if groups == FieldGroup::ALL {
        &*ALL_GROUPS_SQL
    } else {
        built = person_sql(groups);
        &built
    };
    let mut stmt = c.prepare_cached(sql)?;
    stmt.query_row([id], |r| {
        let mut sealed = Vec::with_capacity(groups.len());
        for (i, g) in groups.iter().enumerate() {
            sealed.push((*g, r.get::<_, Vec<u8>>(3 + i)?));
        }
        Ok(StoredPerson {
            id,
            kek_version: r.get(0)?,
            dek_version: r.get(1)?,
            wrapped_dek: r.get(2)?,
            groups: sealed,
        })
    })
    .optional()
    .map_err(Into::into)
}

/// A credential and its account.
fn credential_row(
    c: &Connection,
    id: i64,
) -> Result<Option<(StoredCredential, AccountRecord)>, StorageError> {
    c.prepare_cached(&CREDENTIAL_SQL)?
        .query_and_then([id], |r| {
            let credential = StoredCredential {
                id: r.get(0)?,
                account_id: r.get(1)?,
                secret_digest: digest(r.get(2)?)?,
                created_at: parse_instant(&r.get::<_, String>(3)?, "created_at")?,
                expires_at: parse_instant(&r.get::<_, String>(4)?, "expires_at")?,
                revoked_at: optional_instant(r.get(5)?, "revoked_at")?,
            };
            Ok((credential, account_record(r, 6)?))
        })?
        .next()
        .transpose()
}

/// A credential and its account, from [`Credentials`] while the access
/// version has not moved, else from the rows (kept for the next request).
/// The version is read first: a change committed between the two reads
/// moves it, so the copy can only be newer than its version, never older.
fn checked_credential(
    c: &Connection,
    credentials: &Credentials,
    id: i64,
) -> Result<Option<CredentialRow>, StorageError> {
    let version: i64 = c
        .prepare_cached("SELECT version FROM access_version WHERE id = 1")?
        .query_row([], |r| r.get(0))?;
    if let Some(kept) = credentials.get(id, version) {
        return Ok(Some(kept));
    }
    let row = credential_row(c, id)?;
    if let Some(row) = &row {
        credentials.put(version, row);
    }
    Ok(row)
}

/// Every mandate on one person, live or not.
fn mandates_rows(
    c: &Connection,
    names: &Names,
    person_id: i64,
) -> Result<Vec<StoredMandate>, StorageError> {
    let mut rows: Vec<StoredMandate> = c
        .prepare_cached(&MANDATES_OF_PERSON_SQL)?
        .query_and_then([person_id], |r| stored_mandate(c, names, r))?
        .collect::<Result<_, StorageError>>()?;
    rows.sort_unstable_by_key(|m| m.id);
    Ok(rows)
}

/// An organisation's code or an account's login, from [`Names`] or else
/// from its row (which the foreign key says exists).
fn name(c: &Connection, names: &Names, kind: Named, id: i64) -> Result<Reference, StorageError> {
    if let Some(known) = names.get(kind, id) {
        return Ok(known);
    }
    let sql = match kind {
        Named::Organisation => "SELECT code FROM organisation WHERE id = ?1",
        Named::Account => "SELECT login FROM account WHERE id = ?1",
    };
    let found: Option<String> = c
        .prepare_cached(sql)?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let Some(found) = found else {
        return Err(StorageError::Corrupt(format!(
            "a mandate names {kind:?} {id}, which does not exist"
        )));
    };
    let found = parse_code(found, Reference::parse)?;
    names.put(kind, id, &found);
    Ok(found)
}

/// Reads a row of [`MANDATE_COLUMNS`], with the names from [`Names`].
fn stored_mandate(
    c: &Connection,
    names: &Names,
    r: &Row<'_>,
) -> Result<StoredMandate, StorageError> {
    let organisation_id = r.get(2)?;
    let account_id: Option<i64> = r.get(3)?;
    Ok(StoredMandate {
        id: r.get(0)?,
        reference: parse_code(r.get(1)?, Reference::parse)?,
        organisation: name(c, names, Named::Organisation, organisation_id)?,
        organisation_id,
        account: account_id
            .map(|a| name(c, names, Named::Account, a))
            .transpose()?,
        account_id,
        person_id: r.get(4)?,
        purpose: parse_code(r.get(5)?, Purpose::parse)?,
        valid_from: match text(r, 6, "valid_from")? {
            Some(s) => day(s, "valid_from")?,
            None => return Err(StorageError::Corrupt("stored valid_from is NULL".into())),
        },
        valid_to: text(r, 7, "valid_to")?
            .map(|s| day(s, "valid_to"))
            .transpose()?,
        source: parse_code(r.get(8)?, Reference::parse)?,
        revoked_at: optional_instant(r.get(9)?, "revoked_at")?,
    })
}

/// One mandate by id.
static MANDATE_BY_ID_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {MANDATE_COLUMNS} FROM mandate WHERE id = ?1"));

/// The checks and the insertion of [`RegistryStore::grant_mandate`], in
/// the caller's transaction. With `dek_version` (break-glass), the person
/// must still hold a data key of that version.
fn insert_mandate(
    tx: &rusqlite::Transaction<'_>,
    names: &Names,
    m: &NewMandate,
    dek_version: Option<u32>,
) -> Result<StoredMandate, StorageError> {
    let known = tx
        .prepare_cached("SELECT 1 FROM organisation WHERE id = ?1")?
        .query_row([m.organisation_id], |_| Ok(()))
        .optional()?;
    if known.is_none() {
        return Err(crate::auth::not_found("organisation_id", "organisation"));
    }
    if let Some(account_id) = m.account_id {
        let org = tx
            .prepare_cached("SELECT organisation_id FROM account WHERE id = ?1")?
            .query_row([account_id], |r| r.get::<_, i64>(0))
            .optional()?;
        match org {
            None => return Err(crate::auth::not_found("account_id", "account")),
            Some(o) if o != m.organisation_id => {
                return Err(crate::auth::refuse(
                    "account_id",
                    "belongs to another organisation than the mandate",
                ));
            }
            Some(_) => {}
        }
    }
    let person: Option<u32> = tx
        .prepare_cached("SELECT dek_version FROM person WHERE id = ?1 AND wrapped_dek IS NOT NULL")?
        .query_row([m.person_id], |r| r.get(0))
        .optional()?;
    match (person, dek_version) {
        (None, _) => {
            return Err(crate::auth::not_found(
                "person_id",
                "person in the registry",
            ));
        }
        (Some(stored), Some(sealed)) if stored != sealed => {
            return Err(StorageError::Conflict(format!(
                "person {}'s data key changed while the reason was sealed",
                m.person_id
            )));
        }
        _ => {}
    }
    let taken = tx
        .prepare_cached("SELECT 1 FROM mandate WHERE reference = ?1")?
        .query_row([m.reference.as_str()], |_| Ok(()))
        .optional()?;
    if taken.is_some() {
        return Err(crate::auth::refuse(
            "reference",
            "already used by another mandate",
        ));
    }
    let id: i64 = tx
        .prepare_cached(
            "INSERT INTO mandate (reference, organisation_id, account_id, person_id,
                 purpose, valid_from, valid_to, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        )?
        .query_row(
            params![
                m.reference.as_str(),
                m.organisation_id,
                m.account_id,
                m.person_id,
                m.purpose.as_str(),
                m.valid_from,
                m.valid_to,
                m.source.as_str()
            ],
            |r| r.get(0),
        )?;
    let stored = mandate_by_id(tx, names, id)?.ok_or_else(|| {
        StorageError::Corrupt(format!("mandate {id} vanished after its insertion"))
    })?;
    Ok(stored)
}

/// The columns of a grant request, in [`grant_request_row`]'s order.
const GRANT_REQUEST_SELECT: &str = "SELECT id, reference, organisation_id, account_id, person_id,
     purpose, valid_from, valid_to, source, requested_by, requested_at FROM mandate_request";

fn grant_request_row(r: &Row<'_>) -> Result<GrantRequest, StorageError> {
    Ok(GrantRequest {
        id: r.get(0)?,
        mandate: NewMandate {
            reference: parse_code(r.get(1)?, Reference::parse)?,
            organisation_id: r.get(2)?,
            account_id: r.get(3)?,
            person_id: r.get(4)?,
            purpose: parse_code(r.get(5)?, Purpose::parse)?,
            valid_from: match text(r, 6, "valid_from")? {
                Some(s) => day(s, "valid_from")?,
                None => return Err(StorageError::Corrupt("stored valid_from is NULL".into())),
            },
            valid_to: text(r, 7, "valid_to")?
                .map(|s| day(s, "valid_to"))
                .transpose()?,
            source: parse_code(r.get(8)?, Reference::parse)?,
        },
        requested_by: r.get(9)?,
        requested_at: parse_instant(&r.get::<_, String>(10)?, "requested_at")?,
    })
}

/// [`RegistryStore::decide_grant`] in `tx`, which the caller commits (or
/// drops, to rehearse).
fn decide_grant_in(
    tx: &rusqlite::Transaction<'_>,
    names: &Names,
    id: i64,
    officer_id: i64,
    approve: bool,
    at: &str,
) -> Result<Option<GrantDecision>, StorageError> {
    let request = tx
        .prepare_cached(&format!(
            "{GRANT_REQUEST_SELECT} WHERE id = ?1 AND decided_at IS NULL"
        ))?
        .query_and_then([id], grant_request_row)?
        .next()
        .transpose()?;
    let Some(request) = request else {
        return Ok(None);
    };
    check_grant_decider(
        auth::decider(tx, request.requested_by)?.as_ref(),
        auth::decider(tx, officer_id)?.as_ref(),
    )?;
    let n = tx
        .prepare_cached(
            "UPDATE mandate_request SET decided_by = ?2, decided_at = ?3, approved = ?4
             WHERE id = ?1 AND decided_at IS NULL",
        )?
        .execute(params![id, officer_id, at, approve])?;
    if n != 1 {
        return Ok(None);
    }
    if !approve {
        return Ok(Some(GrantDecision::Rejected));
    }
    check_mandate_period(&request.mandate)?;
    let stored = insert_mandate(tx, names, &request.mandate, None)?;
    tx.prepare_cached("UPDATE mandate_request SET mandate_id = ?2 WHERE id = ?1")?
        .execute([id, stored.id])?;
    Ok(Some(GrantDecision::Granted(stored)))
}

fn mandate_by_id(
    c: &Connection,
    names: &Names,
    id: i64,
) -> Result<Option<StoredMandate>, StorageError> {
    c.prepare_cached(&MANDATE_BY_ID_SQL)?
        .query_and_then([id], |r| stored_mandate(c, names, r))?
        .next()
        .transpose()
}

/// Reads the account columns of [`ACCOUNT_SELECT`], starting at column `at`.
fn account_record(r: &Row<'_>, at: usize) -> Result<AccountRecord, StorageError> {
    Ok(AccountRecord {
        account_id: r.get(at)?,
        login: parse_code(r.get(at + 1)?, Reference::parse)?,
        role: parse_code(r.get(at + 2)?, Role::parse)?,
        state: parse_code(r.get(at + 3)?, AccountState::parse)?,
        organisation_id: r.get(at + 4)?,
        organisation: parse_code(r.get(at + 5)?, Reference::parse)?,
        kind: parse_code(r.get(at + 6)?, OrganisationKind::parse)?,
        created_at: optional_instant(r.get(at + 7)?, "created_at")?,
        departement: r.get(at + 8)?,
    })
}

/// The caseload: mandates held by the organisation as a whole, merged
/// with those naming the account, each part in person order from its own
/// index (`mandate_org_wide`, `mandate_account_person`), so a page costs
/// what it returns whatever the size of the organisation. Without
/// statistics SQLite would take `mandate_org` for both parts (same cost
/// to its eyes): the indexes are named.
const CASELOAD: &str = "
    SELECT m.person_id, m.purpose, m.id, m.valid_to FROM mandate m INDEXED BY mandate_org_wide
    JOIN person p ON p.id = m.person_id
    WHERE m.organisation_id = ?1 AND m.account_id IS NULL AND m.person_id > ?3
      AND m.revoked_at IS NULL AND m.valid_from <= ?4
      AND (m.valid_to IS NULL OR m.valid_to > ?4)
      AND (?5 IS NULL OR m.purpose = ?5) AND p.wrapped_dek IS NOT NULL
    UNION ALL
    SELECT m.person_id, m.purpose, m.id, m.valid_to
    FROM mandate m INDEXED BY mandate_account_person
    JOIN person p ON p.id = m.person_id
    WHERE m.account_id = ?2 AND m.organisation_id = ?1 AND m.person_id > ?3
      AND m.revoked_at IS NULL AND m.valid_from <= ?4
      AND (m.valid_to IS NULL OR m.valid_to > ?4)
      AND (?5 IS NULL OR m.purpose = ?5) AND p.wrapped_dek IS NOT NULL
    ORDER BY 1, 3 LIMIT ?6";

#[async_trait]
impl RegistryStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn reserve_person_ids(&self, n: u64) -> Result<i64, StorageError> {
        let n = i64::try_from(n)
            .map_err(|_| crate::auth::refuse("count", format!("cannot reserve {n} ids at once")))?;
        self.write(move |c| {
            let first: i64 = c.query_row(
                "UPDATE id_counter SET next = next + ?1 WHERE name = 'person' RETURNING next - ?1",
                [n],
                |r| r.get(0),
            )?;
            Ok(first)
        })
        .await
    }

    async fn lookup_persons(
        &self,
        ft_blinds: &[Blind],
    ) -> Result<Vec<Option<ExistingPerson>>, StorageError> {
        let blinds = ft_blinds.to_vec();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, fingerprint, kek_version, dek_version, wrapped_dek
                 FROM person WHERE ft_blind = ?1 AND wrapped_dek IS NOT NULL",
            )?;
            let mut out = Vec::with_capacity(blinds.len());
            for b in &blinds {
                let row = stmt
                    .query_row([&b[..]], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, u32>(2)?,
                            r.get::<_, u32>(3)?,
                            r.get::<_, Vec<u8>>(4)?,
                        ))
                    })
                    .optional()?;
                out.push(match row {
                    None => None,
                    Some((id, fp, kek_version, dek_version, wrapped_dek)) => Some(ExistingPerson {
                        id,
                        fingerprint: blind(fp, "fingerprint")?,
                        kek_version,
                        dek_version,
                        wrapped_dek,
                    }),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn write_persons(
        &self,
        inserts: Vec<SealedPerson>,
        updates: Vec<(SealedPerson, Blind)>,
    ) -> Result<(), StorageError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO person (id, ft_blind, nir_blind, name_blind, fingerprint,
                         kek_version, dek_version, wrapped_dek, identity, contact, nir, status,
                         retain_until)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )?;
                for p in &inserts {
                    ins.execute(params![
                        p.id,
                        &p.ft_blind[..],
                        &p.nir_blind[..],
                        &p.name_blind[..],
                        &p.fingerprint[..],
                        p.kek_version,
                        p.dek_version,
                        p.wrapped_dek,
                        p.identity,
                        p.contact,
                        p.nir,
                        p.status,
                        p.retain_until,
                    ])
                    .map_err(|e| match e {
                        rusqlite::Error::SqliteFailure(f, _)
                            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                        {
                            StorageError::Conflict(
                                "a person of this batch was stored meanwhile by another writer"
                                    .into(),
                            )
                        }
                        other => other.into(),
                    })?;
                }
                // The data key and its wrapping are left alone: a concurrent
                // key rotation may have rewrapped it.
                let mut upd = tx.prepare_cached(
                    "UPDATE person SET nir_blind = ?2, name_blind = ?3, fingerprint = ?4,
                         identity = ?5, contact = ?6, nir = ?7, status = ?8, retain_until = ?9
                     WHERE id = ?1 AND fingerprint = ?10 AND dek_version = ?11
                       AND wrapped_dek IS NOT NULL",
                )?;
                for (p, previous) in &updates {
                    let n = upd.execute(params![
                        p.id,
                        &p.nir_blind[..],
                        &p.name_blind[..],
                        &p.fingerprint[..],
                        p.identity,
                        p.contact,
                        p.nir,
                        p.status,
                        p.retain_until,
                        &previous[..],
                        p.dek_version,
                    ])?;
                    if n != 1 {
                        return Err(StorageError::Conflict(format!(
                            "person {} changed while this batch was prepared",
                            p.id
                        )));
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn read_person(
        &self,
        id: i64,
        groups: &[FieldGroup],
    ) -> Result<Option<StoredPerson>, StorageError> {
        let groups = groups.to_vec();
        self.read_point(move |c| person_row(c, id, &groups)).await
    }

    async fn find_persons(
        &self,
        index: PersonIndex,
        value: Blind,
    ) -> Result<Vec<i64>, StorageError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT id FROM person WHERE {} = ?1 ORDER BY id",
                index_column(index)
            );
            let ids = c
                .prepare_cached(&sql)?
                .query_map([&value[..]], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
    }

    async fn keys_to_rewrap(
        &self,
        target: u32,
        after: i64,
        limit: u32,
    ) -> Result<Vec<WrappedKeyRow>, StorageError> {
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT id, kek_version, dek_version, wrapped_dek FROM person
                     WHERE id > ?1 AND kek_version <> ?2 AND wrapped_dek IS NOT NULL
                     ORDER BY id LIMIT ?3",
                )?
                .query_map(params![after, target, limit], |r| {
                    Ok(WrappedKeyRow {
                        id: r.get(0)?,
                        kek_version: r.get(1)?,
                        dek_version: r.get(2)?,
                        wrapped_dek: r.get(3)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn store_rewrapped(&self, rows: Vec<(WrappedKeyRow, u32)>) -> Result<u64, StorageError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut n = 0u64;
            {
                let mut upd = tx.prepare_cached(
                    "UPDATE person SET kek_version = ?2, wrapped_dek = ?3
                     WHERE id = ?1 AND kek_version = ?4 AND dek_version = ?5
                       AND wrapped_dek IS NOT NULL",
                )?;
                for (row, old_version) in &rows {
                    n += upd.execute(params![
                        row.id,
                        row.kek_version,
                        row.wrapped_dek,
                        old_version,
                        row.dek_version
                    ])? as u64;
                }
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn shred_person(&self, id: i64) -> Result<bool, StorageError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE person SET wrapped_dek = NULL, ft_blind = NULL, nir_blind = NULL,
                     name_blind = NULL, fingerprint = NULL, shredded_at = datetime('now')
                 WHERE id = ?1 AND wrapped_dek IS NOT NULL",
                [id],
            )?;
            // Sealed under the key just destroyed, and gone with it.
            tx.execute("DELETE FROM break_glass_reason WHERE person_id = ?1", [id])?;
            tx.commit()?;
            // secure_delete zeroes the old cells in the database file; the
            // checkpoint moves the WAL's copy there and truncates the WAL.
            // Readers may keep a snapshot alive: best effort.
            let _: (i64, i64, i64) = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            Ok(n == 1)
        })
        .await
    }

    async fn upsert_organisations(
        &self,
        orgs: Vec<Organisation>,
    ) -> Result<UpsertCount, StorageError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut count = UpsertCount::default();
            {
                let mut get = tx.prepare_cached(
                    "SELECT kind, name, departement FROM organisation WHERE code = ?1",
                )?;
                let mut ins = tx.prepare_cached(
                    "INSERT INTO organisation (code, kind, name, departement) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let mut upd = tx.prepare_cached(
                    "UPDATE organisation SET kind = ?2, name = ?3, departement = ?4 WHERE code = ?1",
                )?;
                for o in &orgs {
                    let current: Option<(String, String, Option<String>)> = get
                        .query_row([o.code.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()?;
                    let new = (o.kind.as_str().to_string(), o.name.clone(), o.departement.clone());
                    let p = params![o.code.as_str(), new.0, new.1, new.2];
                    match current {
                        None => {
                            ins.execute(p)?;
                            count.inserted += 1;
                        }
                        Some(cur) if cur == new => count.unchanged += 1,
                        Some(_) => {
                            upd.execute(p)?;
                            count.updated += 1;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(count)
        })
        .await
    }

    async fn upsert_accounts(
        &self,
        accounts: Vec<Account>,
    ) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut count = UpsertCount::default();
            let mut refused;
            {
                let mut org =
                    tx.prepare_cached("SELECT id, kind FROM organisation WHERE code = ?1")?;
                let mut who =
                    tx.prepare_cached("SELECT organisation_id, role FROM account WHERE login = ?1")?;
                let (valid, r) = crate::check_account_links(
                    &accounts,
                    |code| {
                        org.query_row([code], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                            .optional()?
                            .map(|(id, kind)| Ok((id, parse_code(kind, OrganisationKind::parse)?)))
                            .transpose()
                    },
                    |login| {
                        who.query_row([login], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                            .optional()?
                            .map(|(id, role)| Ok((id, parse_code(role, Role::parse)?)))
                            .transpose()
                    },
                )?;
                refused = r;
                let mut moved = Vec::new();
                let mut get = tx.prepare_cached(
                    "SELECT a.organisation_id, a.role, a.state, r.login, p.login FROM account a
                     LEFT JOIN account r ON r.id = a.requested_by
                     LEFT JOIN account p ON p.id = a.approved_by
                     WHERE a.login = ?1",
                )?;
                let mut ins = tx.prepare_cached(
                    "INSERT INTO account (login, organisation_id, role, state) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let mut upd = tx.prepare_cached(
                    "UPDATE account SET organisation_id = ?2, role = ?3, state = ?4 WHERE login = ?1",
                )?;
                let mut changed = Vec::new();
                for (a, org_id) in &valid {
                    let current: Option<(i64, String, String, Option<String>, Option<String>)> =
                        get.query_row([a.login.as_str()], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                        })
                        .optional()?;
                    let p = params![a.login.as_str(), org_id, a.role.as_str(), a.state.as_str()];
                    let links = (
                        a.requested_by.as_ref().map(|r| r.as_str().to_string()),
                        a.approved_by.as_ref().map(|r| r.as_str().to_string()),
                    );
                    match current {
                        None => {
                            ins.execute(p)?;
                            count.inserted += 1;
                        }
                        Some((o, ref role, ref state, ref req, ref app))
                            if o == *org_id
                                && role == a.role.as_str()
                                && state == a.state.as_str()
                                && (req, app) == (&links.0, &links.1) =>
                        {
                            count.unchanged += 1;
                            continue;
                        }
                        Some((_, _, ref state, _, _)) => {
                            // In the write transaction: nothing moves
                            // between this check and the update.
                            if let Some(reason) = crate::import_state_refusal(state, a.state) {
                                moved.push(RowRefusal {
                                    index: accounts
                                        .iter()
                                        .position(|x| std::ptr::eq(x, *a))
                                        .unwrap_or_default(),
                                    field: "state",
                                    reason: reason.into(),
                                });
                                continue;
                            }
                            upd.execute(p)?;
                            count.updated += 1;
                        }
                    }
                    changed.push(*a);
                }
                // Links last, so requester and approver may appear anywhere in the batch.
                let mut set = tx.prepare_cached(
                    "UPDATE account SET
                         requested_by = (SELECT id FROM account WHERE login = ?2),
                         approved_by = (SELECT id FROM account WHERE login = ?3)
                     WHERE login = ?1",
                )?;
                refused.extend(moved);
                refused.sort_by_key(|r| r.index);
                for a in changed {
                    set.execute(params![
                        a.login.as_str(),
                        a.requested_by.as_ref().map(Reference::as_str),
                        a.approved_by.as_ref().map(Reference::as_str)
                    ])?;
                }
            }
            tx.commit()?;
            Ok((count, refused))
        })
        .await
    }

    async fn upsert_mandates(
        &self,
        mandates: Vec<MandateRow>,
    ) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut count = UpsertCount::default();
            let mut refused = Vec::new();
            {
                let mut org = tx.prepare_cached("SELECT id FROM organisation WHERE code = ?1")?;
                let mut acc =
                    tx.prepare_cached("SELECT id, organisation_id FROM account WHERE login = ?1")?;
                let mut person = tx.prepare_cached(
                    "SELECT 1 FROM person WHERE id = ?1 AND wrapped_dek IS NOT NULL",
                )?;
                let mut get = tx.prepare_cached(
                    "SELECT organisation_id, account_id, person_id, purpose, valid_from, valid_to, source
                     FROM mandate WHERE reference = ?1",
                )?;
                let mut ins = tx.prepare_cached(
                    "INSERT INTO mandate (reference, organisation_id, account_id, person_id, purpose,
                         valid_from, valid_to, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                let mut upd = tx.prepare_cached(
                    "UPDATE mandate SET organisation_id = ?2, account_id = ?3, person_id = ?4,
                         purpose = ?5, valid_from = ?6, valid_to = ?7, source = ?8
                     WHERE reference = ?1",
                )?;
                for (index, m) in mandates.iter().enumerate() {
                    let refuse = |field, reason: &str| RowRefusal {
                        index,
                        field,
                        reason: reason.into(),
                    };
                    let Some(org_id) = org
                        .query_row([m.organisation.as_str()], |r| r.get::<_, i64>(0))
                        .optional()?
                    else {
                        refused.push(refuse("organisation", "no such organisation"));
                        continue;
                    };
                    let account_id = match &m.account {
                        None => None,
                        Some(login) => match acc
                            .query_row([login.as_str()], |r| {
                                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                            })
                            .optional()?
                        {
                            None => {
                                refused.push(refuse("account", "no such account"));
                                continue;
                            }
                            Some((_, o)) if o != org_id => {
                                refused.push(refuse(
                                    "account",
                                    "belongs to another organisation than the mandate",
                                ));
                                continue;
                            }
                            Some((id, _)) => Some(id),
                        },
                    };
                    if person.query_row([m.person_id], |_| Ok(())).optional()?.is_none() {
                        refused.push(refuse("ft_id", "no such person in the registry"));
                        continue;
                    }
                    let new = (
                        org_id,
                        account_id,
                        m.person_id,
                        m.purpose.as_str().to_string(),
                        m.valid_from,
                        m.valid_to,
                        m.source.as_str().to_string(),
                    );
                    let current: Option<(i64, Option<i64>, i64, String, NaiveDate, Option<NaiveDate>, String)> =
                        get.query_row([m.reference.as_str()], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                        })
                        .optional()?;
                    let p = params![
                        m.reference.as_str(),
                        new.0,
                        new.1,
                        new.2,
                        new.3,
                        new.4,
                        new.5,
                        new.6
                    ];
                    match current {
                        None => {
                            ins.execute(p)?;
                            count.inserted += 1;
                        }
                        Some(cur) if cur == new => count.unchanged += 1,
                        Some(_) => {
                            upd.execute(p)?;
                            count.updated += 1;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok((count, refused))
        })
        .await
    }

    async fn mandates_of_person(&self, person_id: i64) -> Result<Vec<StoredMandate>, StorageError> {
        let inner = self.inner.clone();
        self.read_point(move |c| mandates_rows(c, &inner.names, person_id))
            .await
    }

    async fn inventory(&self) -> Result<Inventory, StorageError> {
        self.read(move |c| {
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

    async fn begin_bulk_load(&self) -> Result<bool, StorageError> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let empty: bool =
                tx.query_row("SELECT NOT EXISTS (SELECT 1 FROM person)", [], |r| r.get(0))?;
            if empty {
                tx.execute_batch(
                    "DROP INDEX IF EXISTS person_ft;
                     DROP INDEX IF EXISTS person_nir;
                     DROP INDEX IF EXISTS person_name;",
                )?;
            }
            tx.commit()?;
            Ok(empty)
        })
        .await
    }

    async fn end_bulk_load(&self) -> Result<(), StorageError> {
        self.write(|c| {
            // A small sort memory makes SQLite split the sort into runs that
            // its worker threads sort in parallel: about twice as fast here
            // as one in-memory sort.
            c.execute_batch("PRAGMA threads = 2; PRAGMA cache_size = -4096;")?;
            let built = c.execute_batch(PERSON_INDEXES);
            c.execute_batch("PRAGMA cache_size = -65536;")?;
            built.map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StorageError::Conflict(
                        "two persons with the same France Travail id were loaded at once".into(),
                    )
                }
                other => other.into(),
            })
        })
        .await
    }

    async fn person_ids(&self, after: i64, limit: u32) -> Result<Vec<i64>, StorageError> {
        self.read(move |c| {
            let ids = c
                .prepare_cached("SELECT id FROM person WHERE id > ?1 ORDER BY id LIMIT ?2")?
                .query_map(params![after, limit], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
    }

    async fn account_by_login(
        &self,
        login: &Reference,
    ) -> Result<Option<AccountRecord>, StorageError> {
        let login = login.as_str().to_string();
        self.read(move |c| {
            c.prepare_cached(&format!("{ACCOUNT_SELECT} WHERE a.login = ?1"))?
                .query_and_then([login], |r| account_record(r, 0))?
                .next()
                .transpose()
        })
        .await
    }

    async fn account_by_id(&self, id: i64) -> Result<Option<AccountRecord>, StorageError> {
        self.read_point(move |c| {
            c.prepare_cached(&format!("{ACCOUNT_SELECT} WHERE a.id = ?1"))?
                .query_and_then([id], |r| account_record(r, 0))?
                .next()
                .transpose()
        })
        .await
    }

    async fn accounts_of_organisation(
        &self,
        organisation_id: i64,
    ) -> Result<Vec<AccountRecord>, StorageError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "{ACCOUNT_SELECT} WHERE a.organisation_id = ?1 ORDER BY a.login"
            ))?
            .query_and_then([organisation_id], |r| account_record(r, 0))?
            .collect()
        })
        .await
    }

    async fn organisations(&self) -> Result<Vec<(i64, Organisation)>, StorageError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, code, kind, name, departement FROM organisation ORDER BY code",
            )?
            .query_and_then([], |r| {
                Ok((
                    r.get(0)?,
                    Organisation {
                        code: parse_code(r.get(1)?, Reference::parse)?,
                        kind: parse_code(r.get(2)?, OrganisationKind::parse)?,
                        name: r.get(3)?,
                        departement: r.get(4)?,
                    },
                ))
            })?
            .collect()
        })
        .await
    }

    async fn set_account_state(
        &self,
        account_id: i64,
        state: AccountState,
    ) -> Result<bool, StorageError> {
        let action = crate::auth::state_change(state)?;
        self.write(move |c| {
            // One compare-and-set carrying the state machine's rule.
            let n = c
                .prepare_cached(&format!(
                    "UPDATE account SET state = ?2 WHERE id = ?1 AND {}",
                    crate::auth::transition_sql("account", action)
                ))?
                .execute(params![account_id, state.as_str()])?;
            if n == 1 {
                return Ok(true);
            }
            match auth::subject(c, account_id)? {
                None => Ok(false),
                Some(facts) => Err(crate::auth::refused_change(facts, action)),
            }
        })
        .await
    }

    async fn insert_credential(
        &self,
        account_id: i64,
        secret_digest: [u8; 32],
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<i64, StorageError> {
        let (created_at, expires_at) = credential_period(created_at, expires_at)?;
        let created_at = instant_text(created_at, "created_at")?;
        let expires_at = instant_text(expires_at, "expires_at")?;
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO api_credential (account_id, secret_digest, created_at, expires_at)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM account WHERE id = ?1)
                 RETURNING id",
            )?
            .query_row(
                params![account_id, &secret_digest[..], created_at, expires_at],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .ok_or_else(|| crate::auth::not_found("account_id", "account"))
        })
        .await
    }

    async fn credential(
        &self,
        id: i64,
    ) -> Result<Option<(StoredCredential, AccountRecord)>, StorageError> {
        let inner = self.inner.clone();
        self.read_point(move |c| checked_credential(c, &inner.credentials, id))
            .await
    }

    async fn consultation_rows(
        &self,
        credential_id: i64,
        person_id: i64,
    ) -> Result<ConsultationRows, StorageError> {
        let inner = self.inner.clone();
        self.read_point(move |c| {
            // One read transaction: one snapshot, one round of WAL locks
            // instead of three.
            c.prepare_cached("BEGIN")?.execute([])?;
            let rows = (|| -> Result<ConsultationRows, StorageError> {
                Ok(ConsultationRows {
                    credential: match credential_id {
                        // No credential has id 0: the caller came another way.
                        0 => None,
                        id => checked_credential(c, &inner.credentials, id)?,
                    },
                    mandates: mandates_rows(c, &inner.names, person_id)?,
                    person: person_row(c, person_id, FieldGroup::ALL)?,
                })
            })();
            let end = c.prepare_cached("COMMIT").and_then(|mut s| s.execute([]));
            let rows = rows?;
            end?;
            Ok(rows)
        })
        .await
    }

    async fn revoke_credentials(
        &self,
        account_id: i64,
        id: Option<i64>,
        at: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE api_credential SET revoked_at = ?3
                     WHERE account_id = ?1 AND (?2 IS NULL OR id = ?2) AND revoked_at IS NULL",
                )?
                .execute(params![account_id, id, at])?;
            Ok(n as u64)
        })
        .await
    }

    async fn grant_mandate(&self, m: NewMandate) -> Result<StoredMandate, StorageError> {
        check_mandate_period(&m)?;
        let inner = self.inner.clone();
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stored = insert_mandate(&tx, &inner.names, &m, None)?;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn rehearse_grant(&self, m: &NewMandate) -> Result<(), StorageError> {
        check_mandate_period(m)?;
        let inner = self.inner.clone();
        let m = m.clone();
        self.write(move |c| {
            // Dropped, not committed: rolled back.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            insert_mandate(&tx, &inner.names, &m, None)?;
            Ok(())
        })
        .await
    }

    async fn request_grant(
        &self,
        m: NewMandate,
        requested_by: i64,
        at: DateTime<Utc>,
    ) -> Result<GrantRequest, StorageError> {
        check_mandate_period(&m)?;
        let at_text = instant_text(at, "at")?;
        self.write(move |c| {
            let id: i64 = c
                .prepare_cached(
                    "INSERT INTO mandate_request (reference, organisation_id, account_id,
                         person_id, purpose, valid_from, valid_to, source, requested_by,
                         requested_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
                )?
                .query_row(
                    params![
                        m.reference.as_str(),
                        m.organisation_id,
                        m.account_id,
                        m.person_id,
                        m.purpose.as_str(),
                        m.valid_from,
                        m.valid_to,
                        m.source.as_str(),
                        requested_by,
                        at_text
                    ],
                    |r| r.get(0),
                )?;
            Ok(GrantRequest {
                id,
                mandate: m,
                requested_by,
                requested_at: at,
            })
        })
        .await
    }

    async fn decide_grant(
        &self,
        id: i64,
        officer_id: i64,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<GrantDecision>, StorageError> {
        let at = instant_text(at, "at")?;
        let inner = self.inner.clone();
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let decided = decide_grant_in(&tx, &inner.names, id, officer_id, approve, &at)?;
            tx.commit()?;
            Ok(decided)
        })
        .await
    }

    async fn rehearse_grant_decision(
        &self,
        id: i64,
        officer_id: i64,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let at = instant_text(at, "at")?;
        let inner = self.inner.clone();
        self.write(move |c| {
            // Dropped, not committed: rolled back.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            Ok(decide_grant_in(&tx, &inner.names, id, officer_id, approve, &at)?.is_some())
        })
        .await
    }

    async fn pending_grants(&self) -> Result<Vec<GrantRequest>, StorageError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "{GRANT_REQUEST_SELECT} WHERE decided_at IS NULL ORDER BY id"
            ))?
            .query_and_then([], grant_request_row)?
            .collect()
        })
        .await
    }

    async fn grant_break_glass(
        &self,
        m: NewMandate,
        reason: NewBreakGlassReason,
    ) -> Result<StoredMandate, StorageError> {
        check_mandate_period(&m)?;
        let created_at = instant_text(reason.created_at, "created_at")?;
        let inner = self.inner.clone();
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stored = insert_mandate(&tx, &inner.names, &m, Some(reason.dek_version))?;
            tx.prepare_cached(
                "INSERT INTO break_glass_reason
                     (mandate_id, person_id, account_id, created_at, dek_version, sealed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                stored.id,
                m.person_id,
                reason.account_id,
                created_at,
                reason.dek_version,
                reason.sealed
            ])?;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn break_glass_reasons(
        &self,
        person_id: i64,
    ) -> Result<Vec<StoredBreakGlassReason>, StorageError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, mandate_id, person_id, account_id, created_at, dek_version, sealed
                 FROM break_glass_reason WHERE person_id = ?1 ORDER BY id",
            )?;
            let rows = stmt
                .query_and_then([person_id], |r| {
                    Ok::<_, StorageError>(StoredBreakGlassReason {
                        id: r.get(0)?,
                        mandate_id: r.get(1)?,
                        person_id: r.get(2)?,
                        account_id: r.get(3)?,
                        created_at: parse_instant(&r.get::<_, String>(4)?, "created_at")?,
                        dek_version: r.get(5)?,
                        sealed: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn revoke_mandate(&self, id: i64, at: DateTime<Utc>) -> Result<bool, StorageError> {
        let at = instant_text(at, "at")?;
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE mandate SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![id, at])?;
            Ok(n == 1)
        })
        .await
    }

    async fn mandate(&self, id: i64) -> Result<Option<StoredMandate>, StorageError> {
        let inner = self.inner.clone();
        self.read(move |c| mandate_by_id(c, &inner.names, id)).await
    }

    async fn caseload(
        &self,
        organisation_id: i64,
        account_id: i64,
        purpose: Option<Purpose>,
        on: NaiveDate,
        after: i64,
        limit: u32,
    ) -> Result<Vec<CaseloadEntry>, StorageError> {
        self.read(move |c| {
            // One row more than asked, to see whether the page splits a person.
            let rows = c
                .prepare_cached(CASELOAD)?
                .query_and_then(
                    params![
                        organisation_id,
                        account_id,
                        after,
                        on,
                        purpose.map(Purpose::as_str),
                        i64::from(limit) + 1
                    ],
                    |r| {
                        Ok::<_, StorageError>(CaseloadEntry {
                            person_id: r.get(0)?,
                            purpose: parse_code(r.get(1)?, Purpose::parse)?,
                            mandate_id: r.get(2)?,
                            valid_to: r.get(3)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(caseload_page(rows, limit))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_read_as_chrono_reads_them() {
        for ok in ["2026-12-02", "0001-01-01", "2024-02-29", "9999-12-31"] {
            assert_eq!(
                day(ok, "d").unwrap(),
                NaiveDate::parse_from_str(ok, "%Y-%m-%d").unwrap(),
                "{ok}"
            );
        }
        for bad in [
            "",
            "2026-12-2",
            "2026-13-01",
            "2025-02-29",
            "2026/12/02",
            "2026-12-02T00",
            "+026-12-02",
            "２０２６-12-02",
            "2026-00-10",
        ] {
            let e = day(bad, "valid_from").unwrap_err().to_string();
            assert!(
                e.contains("valid_from") && !e.contains(bad) || bad.is_empty(),
                "{e}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_day_exactly_when_it_is_one(s in "[0-9+-]{0,4}-?[0-9]{0,3}-?[0-9]{0,3}") {
            let ours = day(&s, "d").ok();
            let strict = (s.len() == 10)
                .then(|| NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok())
                .flatten()
                .filter(|d| d.format("%Y-%m-%d").to_string() == s);
            proptest::prop_assert_eq!(ours, strict);
        }
    }

    fn plan(c: &Connection, sql: &str, p: impl rusqlite::Params) -> String {
        let lines: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(p, |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        lines.join("\n")
    }

    /// The read path's queries search indexes and sort nothing, whatever
    /// the size of an organisation.
    #[test]
    fn read_path_queries_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_blocking(dir.path().join(FILE_NAME)).unwrap();
        let c = lock(&store.inner.writer);
        let day = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let caseload = plan(&c, CASELOAD, params![1, 2, 0, day, None::<&str>, 51]);
        assert!(
            caseload.contains(
                "SEARCH m USING INDEX mandate_org_wide (organisation_id=? AND person_id>?)"
            ),
            "{caseload}"
        );
        assert!(
            caseload.contains(
                "SEARCH m USING INDEX mandate_account_person (account_id=? AND person_id>?)"
            ),
            "{caseload}"
        );
        assert!(!caseload.contains("B-TREE"), "{caseload}");
        // One seek in the covering index, no row fetched per mandate.
        let of_person = plan(&c, &MANDATES_OF_PERSON_SQL, [1]);
        assert!(
            of_person.contains("SEARCH mandate USING COVERING INDEX mandate_person (person_id=?)"),
            "{of_person}"
        );
        let credential = plan(&c, &CREDENTIAL_SQL, [1]);
        assert!(
            credential.contains("SEARCH c USING INTEGER PRIMARY KEY (rowid=?)"),
            "{credential}"
        );
    }

    /// The consultation path's lookups keep their compiled plan from one
    /// call to the next: SQLite re-prepares a statement whose plan it thinks
    /// depends on a bound value, which cost a sixth of the server's CPU.
    #[test]
    fn hot_lookups_are_never_re_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_blocking(dir.path().join(FILE_NAME)).unwrap();
        store.inner.readers.with(|c| {
            for sql in [&*MANDATES_OF_PERSON_SQL, &*CREDENTIAL_SQL] {
                let mut stmt = c.prepare(sql).unwrap();
                for id in 1..=5i64 {
                    let mut rows = stmt.query([id]).unwrap();
                    while rows.next().unwrap().is_some() {}
                }
                assert_eq!(
                    stmt.get_status(rusqlite::StatementStatus::RePrepare),
                    0,
                    "{sql}"
                );
            }
        });
    }
}
