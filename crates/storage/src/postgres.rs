//! PostgreSQL backend: a pool of connections (deadpool-postgres, no TLS:
//! the server is expected on a trusted network or a local socket), all
//! working in one schema (`registry` by default) through their
//! `search_path`. Same tables, columns and meaning as the SQLite backend.
//!
//! Bulk person inserts go through binary `COPY`, bulk updates and lookups
//! through one statement over `UNNEST`ed arrays, so an import batch costs a
//! handful of round trips whatever its size.
//!
//! SQLite has one writer; here writers run concurrently, so the few
//! read-then-write sequences (upserts of organisations, accounts and
//! mandates) take table locks that serialise them against each other while
//! leaving readers alone.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rempart_domain::{
    Account, AccountState, FieldGroup, Organisation, OrganisationKind, Purpose, Reference, Role,
};
use rempart_sql::{describe, redact_url};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, IsolationLevel, NoTls, Row};

use crate::memory::{CredentialRow, Credentials, Named, Names};
use crate::{
    ACCOUNT_SELECT, AccountRecord, Blind, CREDENTIAL_SELECT, CaseloadEntry, ConsultationRows,
    ExistingPerson, Inventory, MANDATE_COLUMNS, MandateRow, NewBreakGlassReason, NewMandate,
    PersonIndex, RegistryStore, RowRefusal, SealedPerson, StorageError, StoredBreakGlassReason,
    StoredCredential, StoredMandate, StoredPerson, UpsertCount, WrappedKeyRow, blind,
    caseload_page, check_mandate_period, credential_period, digest, group_column, index_column,
    migrate, parse_code,
};

mod auth;
mod guard;

/// Schema the registry lives in unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "registry";

/// Connections kept by the pool.
const POOL_SIZE: usize = 16;
/// Applied when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Tables of the registry, for [`Inventory::bytes`].
const TABLES: &[&str] = &[
    "person",
    "organisation",
    "account",
    "mandate",
    "api_credential",
    "id_counter",
];

/// Binary COPY of new persons; its columns are, in order, [`PERSON_TYPES`].
const COPY_PERSONS: &str = "COPY person (id, ft_blind, nir_blind, name_blind, fingerprint, \
     kek_version, dek_version, wrapped_dek, identity, contact, nir, status, retain_until) \
     FROM STDIN (FORMAT binary)";
const PERSON_TYPES: &[Type] = &[
    Type::INT8,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::INT4,
    Type::INT4,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::DATE,
];

/// The PostgreSQL registry.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    schema: String,
    names: Arc<Names>,
    credentials: Arc<Credentials>,
}

impl PgStore {
    /// Connects to `url`, creates `schema` if needed, applies migrations
    /// and returns a shared handle.
    pub async fn connect(url: &str, schema: &str) -> Result<Arc<dyn RegistryStore>, StorageError> {
        Ok(Arc::new(Self::connect_store(url, schema).await?))
    }

    /// Same as [`PgStore::connect`], returning the concrete type.
    pub async fn connect_store(url: &str, schema: &str) -> Result<PgStore, StorageError> {
        check_schema_name(schema)?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StorageError::Open {
            path: redact_url(url),
            reason: describe(&e),
        })?;
        // Every connection of the pool works in the schema. The name was
        // checked above, so it needs neither quoting nor escaping here.
        let mut options = config.get_options().unwrap_or_default().to_string();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str("-c search_path=");
        options.push_str(schema);
        config.options(options);
        if config.get_application_name().is_none() {
            config.application_name("rempart");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StorageError::Pool(describe(&e)))?;
        let store = PgStore {
            pool,
            schema: schema.to_string(),
            names: Arc::default(),
            credentials: Arc::default(),
        };
        store.migrate().await.map_err(|e| match e {
            StorageError::Pool(reason) => StorageError::Open {
                path: redact_url(url),
                reason,
            },
            other => other,
        })?;
        store.end_bulk_load().await?;
        Ok(store)
    }

    /// The schema this store works in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drops the schema and everything in it (for tests).
    pub async fn drop_schema(&self) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.schema
            ))
            .await?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StorageError> {
        self.pool
            .get()
            .await
            .map_err(|e| StorageError::Pool(describe(&e)))
    }

    /// Creates the schema if missing and applies pending migrations, in one
    /// transaction under an advisory lock proper to the schema, so that
    /// concurrent openers wait for each other instead of racing.
    async fn migrate(&self) -> Result<(), StorageError> {
        let schema = self.schema.as_str();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        rempart_sql::migrate_postgres::<StorageError>(
            &tx,
            schema,
            lock_key(schema),
            migrate::POSTGRES,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Schema names are spliced into SQL and connection options: lowercase
/// ASCII letters, digits and underscores only, not starting with a digit,
/// at most 63 bytes, and not a system schema.
fn check_schema_name(schema: &str) -> Result<(), StorageError> {
    if rempart_sql::is_plain_name(schema) {
        Ok(())
    } else {
        Err(StorageError::Open {
            path: format!("schema {schema:?}"),
            reason: "a schema name is 1 to 63 lowercase letters, digits or underscores, \
                     not starting with a digit, and not a system schema"
                .into(),
        })
    }
}

/// Advisory lock key of a schema's migrations.
fn lock_key(schema: &str) -> i64 {
    rempart_sql::lock_key(&format!("rempart migrations {schema}"))
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Concurrent writers of the same persons may deadlock (SQLite, with one
/// writer, cannot): that is a conflict too, to run again.
fn contention(e: impl Into<StorageError>) -> StorageError {
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

fn to_i32(v: u32, what: &str) -> Result<i32, StorageError> {
    i32::try_from(v).map_err(|_| {
        StorageError::Corrupt(format!(
            "{what} {v} does not fit PostgreSQL's INTEGER column"
        ))
    })
}

fn to_u32(v: i32, what: &str) -> Result<u32, StorageError> {
    u32::try_from(v).map_err(|_| StorageError::Corrupt(format!("{what} is negative")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("{what} is negative")))
}

fn has_duplicates(ids: impl IntoIterator<Item = i64>) -> bool {
    let mut seen = HashSet::new();
    ids.into_iter().any(|id| !seen.insert(id))
}

async fn grouped<T>(
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

fn wrapped_key_row(r: &Row) -> Result<WrappedKeyRow, StorageError> {
    Ok(WrappedKeyRow {
        id: r.try_get(0)?,
        kek_version: to_u32(r.try_get(1)?, "kek_version")?,
        dek_version: to_u32(r.try_get(2)?, "dek_version")?,
        wrapped_dek: r.try_get(3)?,
    })
}

/// Inserts persons with one binary COPY.
async fn copy_persons(
    tx: &deadpool_postgres::Transaction<'_>,
    inserts: &[SealedPerson],
) -> Result<(), StorageError> {
    let conflict = |e: tokio_postgres::Error| {
        if is_unique_violation(&e) {
            // COPY does not say which row: the whole batch is refused.
            StorageError::Conflict(
                "a person of this batch was stored meanwhile by another writer".into(),
            )
        } else {
            e.into()
        }
    };
    let stmt = tx.prepare_cached(COPY_PERSONS).await?;
    let sink = tx.copy_in(&stmt).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, PERSON_TYPES));
    for p in inserts {
        let kek_version = to_i32(p.kek_version, "kek_version")?;
        let dek_version = to_i32(p.dek_version, "dek_version")?;
        let (ft, nir_b) = (&p.ft_blind[..], &p.nir_blind[..]);
        let (name_b, fp) = (&p.name_blind[..], &p.fingerprint[..]);
        writer
            .as_mut()
            .write(&[
                &p.id,
                &ft,
                &nir_b,
                &name_b,
                &fp,
                &kek_version,
                &dek_version,
                &p.wrapped_dek,
                &p.identity,
                &p.contact,
                &p.nir,
                &p.status,
                &p.retain_until,
            ])
            .await
            .map_err(conflict)?;
    }
    writer.as_mut().finish().await.map_err(conflict)?;
    Ok(())
}

const UPDATE_ONE_PERSON: &str =
    "UPDATE person SET nir_blind = $2, name_blind = $3, fingerprint = $4,
         identity = $5, contact = $6, nir = $7, status = $8, retain_until = $9
     WHERE id = $1 AND fingerprint = $10 AND dek_version = $11::int8
       AND wrapped_dek IS NOT NULL";

const UPDATE_PERSONS: &str =
    "UPDATE person AS p SET nir_blind = u.nir_blind, name_blind = u.name_blind,
         fingerprint = u.fingerprint, identity = u.identity, contact = u.contact, nir = u.nir,
         status = u.status, retain_until = u.retain_until
     FROM UNNEST($1::int8[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[],
                 $7::bytea[], $8::bytea[], $9::date[], $10::bytea[], $11::int8[])
          AS u(id, nir_blind, name_blind, fingerprint, identity, contact, nir, status,
               retain_until, previous, dek_version)
     WHERE p.id = u.id AND p.fingerprint = u.previous AND p.dek_version = u.dek_version
       AND p.wrapped_dek IS NOT NULL
     RETURNING p.id";

/// Applies updates, each only if the stored fingerprint and data key
/// version are still the ones read. The data key and its wrapping are left
/// alone: a concurrent key rotation may have rewrapped it.
async fn update_persons(
    tx: &deadpool_postgres::Transaction<'_>,
    updates: &[(SealedPerson, Blind)],
) -> Result<(), StorageError> {
    let changed = |id: i64| {
        StorageError::Conflict(format!("person {id} changed while this batch was prepared"))
    };
    if has_duplicates(updates.iter().map(|(p, _)| p.id)) {
        // One statement would apply only one of the rows of an id: go row
        // by row, in order, as SQLite does.
        let stmt = tx.prepare_cached(UPDATE_ONE_PERSON).await?;
        for (p, previous) in updates {
            let (nir_b, name_b) = (&p.nir_blind[..], &p.name_blind[..]);
            let (fp, prev) = (&p.fingerprint[..], &previous[..]);
            let n = tx
                .execute(
                    &stmt,
                    &[
                        &p.id,
                        &nir_b,
                        &name_b,
                        &fp,
                        &p.identity,
                        &p.contact,
                        &p.nir,
                        &p.status,
                        &p.retain_until,
                        &prev,
                        &i64::from(p.dek_version),
                    ],
                )
                .await?;
            if n != 1 {
                return Err(changed(p.id));
            }
        }
        return Ok(());
    }
    let ids: Vec<i64> = updates.iter().map(|(p, _)| p.id).collect();
    let col = |f: fn(&SealedPerson) -> &[u8]| -> Vec<&[u8]> {
        updates.iter().map(|(p, _)| f(p)).collect()
    };
    let nir_blinds = col(|p| &p.nir_blind);
    let name_blinds = col(|p| &p.name_blind);
    let fingerprints = col(|p| &p.fingerprint);
    let identities = col(|p| &p.identity);
    let contacts = col(|p| &p.contact);
    let nirs = col(|p| &p.nir);
    let statuses = col(|p| &p.status);
    let retain: Vec<Option<NaiveDate>> = updates.iter().map(|(p, _)| p.retain_until).collect();
    let previous: Vec<&[u8]> = updates.iter().map(|(_, b)| &b[..]).collect();
    let dek_versions: Vec<i64> = updates
        .iter()
        .map(|(p, _)| i64::from(p.dek_version))
        .collect();
    let stmt = tx.prepare_cached(UPDATE_PERSONS).await?;
    let params: [&(dyn ToSql + Sync); 11] = [
        &ids,
        &nir_blinds,
        &name_blinds,
        &fingerprints,
        &identities,
        &contacts,
        &nirs,
        &statuses,
        &retain,
        &previous,
        &dek_versions,
    ];
    let done = tx.query(&stmt, &params).await?;
    if done.len() != updates.len() {
        let done: HashSet<i64> = done
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let id = ids
            .iter()
            .copied()
            .find(|id| !done.contains(id))
            .unwrap_or_default();
        return Err(changed(id));
    }
    Ok(())
}

const STORE_ONE_REWRAPPED: &str = "UPDATE person SET kek_version = $2, wrapped_dek = $3
     WHERE id = $1 AND kek_version = $4::int8 AND dek_version = $5::int8
       AND wrapped_dek IS NOT NULL";

const STORE_REWRAPPED: &str =
    "UPDATE person AS p SET kek_version = u.kek_version, wrapped_dek = u.wrapped_dek
     FROM UNNEST($1::int8[], $2::int4[], $3::bytea[], $4::int8[], $5::int8[])
          AS u(id, kek_version, wrapped_dek, old_kek_version, dek_version)
     WHERE p.id = u.id AND p.kek_version = u.old_kek_version AND p.dek_version = u.dek_version
       AND p.wrapped_dek IS NOT NULL";

/// Stores rewrapped keys, each only if its KEK and data key versions are
/// still the ones read; returns how many applied.
async fn rewrap_persons(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[(WrappedKeyRow, u32)],
) -> Result<u64, StorageError> {
    Ok(if has_duplicates(rows.iter().map(|(r, _)| r.id)) {
        // Row by row, in order, as SQLite does.
        let stmt = tx.prepare_cached(STORE_ONE_REWRAPPED).await?;
        let mut n = 0;
        for (row, old_version) in rows {
            n += tx
                .execute(
                    &stmt,
                    &[
                        &row.id,
                        &to_i32(row.kek_version, "kek_version")?,
                        &row.wrapped_dek,
                        &i64::from(*old_version),
                        &i64::from(row.dek_version),
                    ],
                )
                .await?;
        }
        n
    } else {
        let ids: Vec<i64> = rows.iter().map(|(r, _)| r.id).collect();
        let versions = rows
            .iter()
            .map(|(r, _)| to_i32(r.kek_version, "kek_version"))
            .collect::<Result<Vec<i32>, _>>()?;
        let keys: Vec<&[u8]> = rows.iter().map(|(r, _)| &r.wrapped_dek[..]).collect();
        let old: Vec<i64> = rows.iter().map(|(_, v)| i64::from(*v)).collect();
        let deks: Vec<i64> = rows.iter().map(|(r, _)| i64::from(r.dek_version)).collect();
        let stmt = tx.prepare_cached(STORE_REWRAPPED).await?;
        tx.execute(&stmt, &[&ids, &versions, &keys, &old, &deks])
            .await?
    })
}

/// Reads a row of [`MANDATE_COLUMNS`], with the names from [`Names`].
/// The columns of a grant request, in [`grant_request_row`]'s order.
const GRANT_REQUEST_SELECT: &str = "SELECT id, reference, organisation_id, account_id, person_id,
     purpose, valid_from, valid_to, source, requested_by, requested_at FROM mandate_request";

fn grant_request_row(r: &Row) -> Result<crate::GrantRequest, StorageError> {
    Ok(crate::GrantRequest {
        id: r.try_get(0)?,
        mandate: NewMandate {
            reference: parse_code(r.try_get(1)?, Reference::parse)?,
            organisation_id: r.try_get(2)?,
            account_id: r.try_get(3)?,
            person_id: r.try_get(4)?,
            purpose: parse_code(r.try_get(5)?, Purpose::parse)?,
            valid_from: r.try_get(6)?,
            valid_to: r.try_get(7)?,
            source: parse_code(r.try_get(8)?, Reference::parse)?,
        },
        requested_by: r.try_get(9)?,
        requested_at: r.try_get(10)?,
    })
}

/// [`RegistryStore::decide_grant`] in `tx`, which the caller commits (or
/// rolls back, to rehearse).
async fn decide_grant_in(
    tx: &deadpool_postgres::Transaction<'_>,
    names: &Names,
    id: i64,
    officer_id: i64,
    approve: bool,
    at: DateTime<Utc>,
) -> Result<Option<crate::GrantDecision>, StorageError> {
    // Locked: a concurrent decision waits, then finds it decided.
    let request = tx
        .query_opt(
            &format!("{GRANT_REQUEST_SELECT} WHERE id = $1 AND decided_at IS NULL FOR UPDATE"),
            &[&id],
        )
        .await?
        .map(|r| grant_request_row(&r))
        .transpose()?;
    let Some(request) = request else {
        return Ok(None);
    };
    crate::check_grant_decider(
        auth::decider(&**tx, request.requested_by).await?.as_ref(),
        auth::decider(&**tx, officer_id).await?.as_ref(),
    )?;
    let n = tx
        .execute(
            "UPDATE mandate_request SET decided_by = $2, decided_at = $3, approved = $4
             WHERE id = $1 AND decided_at IS NULL",
            &[&id, &officer_id, &at, &approve],
        )
        .await?;
    if n != 1 {
        return Ok(None);
    }
    if !approve {
        return Ok(Some(crate::GrantDecision::Rejected));
    }
    check_mandate_period(&request.mandate)?;
    let stored = insert_mandate(tx, names, &request.mandate, None).await?;
    tx.execute(
        "UPDATE mandate_request SET mandate_id = $2 WHERE id = $1",
        &[&id, &stored.id],
    )
    .await?;
    Ok(Some(crate::GrantDecision::Granted(stored)))
}

async fn stored_mandate(
    client: &impl deadpool_postgres::GenericClient,
    names: &Names,
    r: &Row,
) -> Result<StoredMandate, StorageError> {
    let organisation_id: i64 = r.try_get(2)?;
    let account_id: Option<i64> = r.try_get(3)?;
    let account = match account_id {
        Some(a) => Some(name(client, names, Named::Account, a).await?),
        None => None,
    };
    Ok(StoredMandate {
        id: r.try_get(0)?,
        reference: parse_code(r.try_get(1)?, Reference::parse)?,
        organisation: name(client, names, Named::Organisation, organisation_id).await?,
        organisation_id,
        account,
        account_id,
        person_id: r.try_get(4)?,
        purpose: parse_code(r.try_get(5)?, Purpose::parse)?,
        valid_from: r.try_get(6)?,
        valid_to: r.try_get(7)?,
        source: parse_code(r.try_get(8)?, Reference::parse)?,
        revoked_at: r.try_get(9)?,
    })
}

/// One mandate by id.
static MANDATE_BY_ID_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {MANDATE_COLUMNS} FROM mandate WHERE id = $1"));

/// Every mandate on one person, on the consultation path: built once, not
/// per request.
static MANDATES_OF_PERSON_SQL: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {MANDATE_COLUMNS} FROM mandate WHERE person_id = $1 ORDER BY id")
});

/// The checks and the insertion of [`RegistryStore::grant_mandate`], in
/// the caller's transaction. With `dek_version` (break-glass), the person
/// must still hold a data key of that version.
async fn insert_mandate(
    tx: &deadpool_postgres::Transaction<'_>,
    names: &Names,
    m: &NewMandate,
    dek_version: Option<u32>,
) -> Result<StoredMandate, StorageError> {
    // Mandate writers go one at a time (see upsert_mandates); the
    // account and person rows checked are locked so that the account
    // stays in its organisation and the person unshredded until this
    // commits.
    tx.batch_execute("LOCK TABLE mandate IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    if tx
        .query_opt(
            "SELECT 1 FROM organisation WHERE id = $1",
            &[&m.organisation_id],
        )
        .await?
        .is_none()
    {
        return Err(crate::auth::not_found("organisation_id", "organisation"));
    }
    if let Some(account_id) = m.account_id {
        let org: Option<i64> = tx
            .query_opt(
                "SELECT organisation_id FROM account WHERE id = $1 FOR SHARE",
                &[&account_id],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
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
    let person: Option<i32> = tx
        .query_opt(
            "SELECT dek_version FROM person WHERE id = $1 AND wrapped_dek IS NOT NULL FOR SHARE",
            &[&m.person_id],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    match (person, dek_version) {
        (None, _) => {
            return Err(crate::auth::not_found(
                "person_id",
                "person in the registry",
            ));
        }
        (Some(stored), Some(sealed)) if to_u32(stored, "dek_version")? != sealed => {
            return Err(StorageError::Conflict(format!(
                "person {}'s data key changed while the reason was sealed",
                m.person_id
            )));
        }
        _ => {}
    }
    let taken = |e: tokio_postgres::Error| {
        if is_unique_violation(&e) {
            crate::auth::refuse("reference", "already used by another mandate")
        } else {
            e.into()
        }
    };
    if tx
        .query_opt(
            "SELECT 1 FROM mandate WHERE reference = $1",
            &[&m.reference.as_str()],
        )
        .await?
        .is_some()
    {
        return Err(crate::auth::refuse(
            "reference",
            "already used by another mandate",
        ));
    }
    let id: i64 = tx
        .query_one(
            "INSERT INTO mandate (reference, organisation_id, account_id, person_id, purpose,
                 valid_from, valid_to, source)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                &m.reference.as_str(),
                &m.organisation_id,
                &m.account_id,
                &m.person_id,
                &m.purpose.as_str(),
                &m.valid_from,
                &m.valid_to,
                &m.source.as_str(),
            ],
        )
        .await
        .map_err(taken)?
        .try_get(0)?;
    let stored = mandate_by_id(tx, names, id).await?.ok_or_else(|| {
        StorageError::Corrupt(format!("mandate {id} vanished after its insertion"))
    })?;
    Ok(stored)
}

/// One mandate by id.
async fn mandate_by_id(
    client: &impl deadpool_postgres::GenericClient,
    names: &Names,
    id: i64,
) -> Result<Option<StoredMandate>, StorageError> {
    let stmt = client.prepare_cached(&MANDATE_BY_ID_SQL).await?;
    match client.query_opt(&stmt, &[&id]).await? {
        Some(r) => Ok(Some(stored_mandate(client, names, &r).await?)),
        None => Ok(None),
    }
}

/// Reads the account columns of [`ACCOUNT_SELECT`], starting at column `at`.
fn account_record(r: &Row, at: usize) -> Result<AccountRecord, StorageError> {
    Ok(AccountRecord {
        account_id: r.try_get(at)?,
        login: parse_code(r.try_get(at + 1)?, Reference::parse)?,
        role: parse_code(r.try_get(at + 2)?, Role::parse)?,
        state: parse_code(r.try_get(at + 3)?, AccountState::parse)?,
        organisation_id: r.try_get(at + 4)?,
        organisation: parse_code(r.try_get(at + 5)?, Reference::parse)?,
        kind: parse_code(r.try_get(at + 6)?, OrganisationKind::parse)?,
        created_at: r.try_get(at + 7)?,
        departement: r.try_get(at + 8)?,
    })
}

/// The caseload: mandates held by the organisation as a whole, merged
/// with those naming the account, each part in person order from its own
/// index (`mandate_org_wide`, `mandate_account_person`), so a page costs
/// what it returns whatever the size of the organisation. `p.id > $3`
/// repeats the bound for the person side of a merge join.
const CASELOAD: &str = "
    (SELECT m.person_id, m.purpose, m.id, m.valid_to FROM mandate m
     JOIN person p ON p.id = m.person_id
     WHERE m.organisation_id = $1 AND m.account_id IS NULL AND m.person_id > $3 AND p.id > $3
       AND m.revoked_at IS NULL AND m.valid_from <= $4
       AND (m.valid_to IS NULL OR m.valid_to > $4)
       AND ($5::text IS NULL OR m.purpose = $5) AND p.wrapped_dek IS NOT NULL
     ORDER BY m.person_id, m.id LIMIT $6)
    UNION ALL
    (SELECT m.person_id, m.purpose, m.id, m.valid_to FROM mandate m
     JOIN person p ON p.id = m.person_id
     WHERE m.account_id = $2 AND m.organisation_id = $1 AND m.person_id > $3 AND p.id > $3
       AND m.revoked_at IS NULL AND m.valid_from <= $4
       AND (m.valid_to IS NULL OR m.valid_to > $4)
       AND ($5::text IS NULL OR m.purpose = $5) AND p.wrapped_dek IS NOT NULL
     ORDER BY m.person_id, m.id LIMIT $6)
    ORDER BY 1, 3 LIMIT $6";

#[async_trait]
impl RegistryStore for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn reserve_person_ids(&self, n: u64) -> Result<i64, StorageError> {
        let n = i64::try_from(n)
            .map_err(|_| crate::auth::refuse("count", format!("cannot reserve {n} ids at once")))?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE id_counter SET next = next + $1 WHERE name = 'person' RETURNING next - $1",
            )
            .await?;
        let row = client
            .query_opt(&stmt, &[&n])
            .await?
            .ok_or_else(|| StorageError::Corrupt("id_counter has no 'person' row".into()))?;
        Ok(row.try_get(0)?)
    }

    async fn lookup_persons(
        &self,
        ft_blinds: &[Blind],
    ) -> Result<Vec<Option<ExistingPerson>>, StorageError> {
        let mut out = vec![None; ft_blinds.len()];
        if ft_blinds.is_empty() {
            return Ok(out);
        }
        let blinds: Vec<&[u8]> = ft_blinds.iter().map(|b| &b[..]).collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT q.i, p.id, p.fingerprint, p.kek_version, p.dek_version, p.wrapped_dek
                 FROM UNNEST($1::bytea[]) WITH ORDINALITY AS q(b, i)
                 JOIN person AS p ON p.ft_blind = q.b
                 WHERE p.wrapped_dek IS NOT NULL",
            )
            .await?;
        for r in client.query(&stmt, &[&blinds]).await? {
            let i: i64 = r.try_get(0)?;
            let slot = usize::try_from(i - 1)
                .ok()
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| StorageError::Corrupt(format!("lookup ordinal {i} out of range")))?;
            *slot = Some(ExistingPerson {
                id: r.try_get(1)?,
                fingerprint: blind(r.try_get(2)?, "fingerprint")?,
                kek_version: to_u32(r.try_get(3)?, "kek_version")?,
                dek_version: to_u32(r.try_get(4)?, "dek_version")?,
                wrapped_dek: r.try_get(5)?,
            });
        }
        Ok(out)
    }

    async fn write_persons(
        &self,
        inserts: Vec<SealedPerson>,
        updates: Vec<(SealedPerson, Blind)>,
    ) -> Result<(), StorageError> {
        if inserts.is_empty() && updates.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(contention)?;
        if !inserts.is_empty() {
            copy_persons(&tx, &inserts).await.map_err(contention)?;
        }
        if !updates.is_empty() {
            update_persons(&tx, &updates).await.map_err(contention)?;
        }
        tx.commit().await.map_err(contention)?;
        Ok(())
    }

    async fn read_person(
        &self,
        id: i64,
        groups: &[FieldGroup],
    ) -> Result<Option<StoredPerson>, StorageError> {
        let client = self.client().await?;
        person_row(&client, id, groups).await
    }

    async fn find_persons(
        &self,
        index: PersonIndex,
        value: Blind,
    ) -> Result<Vec<i64>, StorageError> {
        let sql = format!(
            "SELECT id FROM person WHERE {} = $1 ORDER BY id",
            index_column(index)
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await?;
        let value: &[u8] = &value;
        client
            .query(&stmt, &[&value])
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }

    async fn keys_to_rewrap(
        &self,
        target: u32,
        after: i64,
        limit: u32,
    ) -> Result<Vec<WrappedKeyRow>, StorageError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, kek_version, dek_version, wrapped_dek FROM person
                 WHERE id > $1 AND kek_version <> $2::int8 AND wrapped_dek IS NOT NULL
                 ORDER BY id LIMIT $3",
            )
            .await?;
        client
            .query(&stmt, &[&after, &i64::from(target), &i64::from(limit)])
            .await?
            .iter()
            .map(wrapped_key_row)
            .collect()
    }

    async fn store_rewrapped(&self, rows: Vec<(WrappedKeyRow, u32)>) -> Result<u64, StorageError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(contention)?;
        let n = rewrap_persons(&tx, &rows).await.map_err(contention)?;
        tx.commit().await.map_err(contention)?;
        Ok(n)
    }

    async fn shred_person(&self, id: i64) -> Result<bool, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "UPDATE person SET wrapped_dek = NULL, ft_blind = NULL, nir_blind = NULL,
                     name_blind = NULL, fingerprint = NULL, shredded_at = now()
                 WHERE id = $1 AND wrapped_dek IS NOT NULL",
                &[&id],
            )
            .await?;
        // Sealed under the key just destroyed, and gone with it. A
        // break-glass holding the person's row (FOR SHARE) has committed
        // before the update above could run: its reason is deleted here.
        tx.execute(
            "DELETE FROM break_glass_reason WHERE person_id = $1",
            &[&id],
        )
        .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn upsert_organisations(
        &self,
        orgs: Vec<Organisation>,
    ) -> Result<UpsertCount, StorageError> {
        let mut count = UpsertCount::default();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE organisation IN SHARE ROW EXCLUSIVE MODE")
            .await?;
        let get = tx
            .prepare_cached("SELECT kind, name, departement FROM organisation WHERE code = $1")
            .await?;
        let ins = tx
            .prepare_cached(
                "INSERT INTO organisation (code, kind, name, departement) VALUES ($1, $2, $3, $4)",
            )
            .await?;
        let upd = tx
            .prepare_cached(
                "UPDATE organisation SET kind = $2, name = $3, departement = $4 WHERE code = $1",
            )
            .await?;
        for o in &orgs {
            let current: Option<(String, String, Option<String>)> = tx
                .query_opt(&get, &[&o.code.as_str()])
                .await?
                .map(|r| Ok::<_, StorageError>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .transpose()?;
            let new = (
                o.kind.as_str().to_string(),
                o.name.clone(),
                o.departement.clone(),
            );
            let p: [&(dyn ToSql + Sync); 4] = [&o.code.as_str(), &new.0, &new.1, &new.2];
            match current {
                None => {
                    tx.execute(&ins, &p).await?;
                    count.inserted += 1;
                }
                Some(cur) if cur == new => count.unchanged += 1,
                Some(_) => {
                    tx.execute(&upd, &p).await?;
                    count.updated += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(count)
    }

    async fn upsert_accounts(
        &self,
        accounts: Vec<Account>,
    ) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
        let mut count = UpsertCount::default();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE account IN SHARE ROW EXCLUSIVE MODE")
            .await?;
        // The link checks are synchronous: fetch what they may ask first.
        let codes: Vec<&str> = accounts.iter().map(|a| a.organisation.as_str()).collect();
        let org_ids: HashMap<String, (i64, String)> = tx
            .query(
                "SELECT code, id, kind FROM organisation WHERE code = ANY($1)",
                &[&codes],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
            .collect::<Result<_, StorageError>>()?;
        let linked: Vec<&str> = accounts
            .iter()
            .flat_map(|a| [&a.requested_by, &a.approved_by])
            .flatten()
            .map(Reference::as_str)
            .collect();
        let stored_accounts: HashMap<String, (i64, String)> = tx
            .query(
                "SELECT login, organisation_id, role FROM account WHERE login = ANY($1)",
                &[&linked],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
            .collect::<Result<_, StorageError>>()?;
        let stored_code = |s: &str| StorageError::Corrupt(format!("stored code {s:?} is unknown"));
        let (valid, mut refused) = crate::check_account_links(
            &accounts,
            |code| {
                org_ids
                    .get(code)
                    .map(|(id, kind)| {
                        Ok((
                            *id,
                            OrganisationKind::parse(kind).map_err(|_| stored_code(kind))?,
                        ))
                    })
                    .transpose()
            },
            |login| {
                stored_accounts
                    .get(login)
                    .map(|(org, role)| {
                        Ok((*org, Role::parse(role).map_err(|_| stored_code(role))?))
                    })
                    .transpose()
            },
        )?;
        let get = tx
            .prepare_cached(
                "SELECT a.organisation_id, a.role, a.state, r.login, p.login FROM account a
                 LEFT JOIN account r ON r.id = a.requested_by
                 LEFT JOIN account p ON p.id = a.approved_by
                 WHERE a.login = $1",
            )
            .await?;
        let ins = tx
            .prepare_cached(
                "INSERT INTO account (login, organisation_id, role, state) VALUES ($1, $2, $3, $4)",
            )
            .await?;
        let upd = tx
            .prepare_cached(
                "UPDATE account SET organisation_id = $2, role = $3, state = $4 WHERE login = $1",
            )
            .await?;
        let mut changed = Vec::new();
        for (a, org_id) in &valid {
            type Current = (i64, String, String, Option<String>, Option<String>);
            let current: Option<Current> = tx
                .query_opt(&get, &[&a.login.as_str()])
                .await?
                .map(|r| {
                    Ok::<_, StorageError>((
                        r.try_get(0)?,
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                    ))
                })
                .transpose()?;
            let p: [&(dyn ToSql + Sync); 4] = [
                &a.login.as_str(),
                org_id,
                &a.role.as_str(),
                &a.state.as_str(),
            ];
            let links = (
                a.requested_by.as_ref().map(|r| r.as_str().to_string()),
                a.approved_by.as_ref().map(|r| r.as_str().to_string()),
            );
            match current {
                None => {
                    tx.execute(&ins, &p).await?;
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
                    // Under the table lock: nothing moves between this
                    // check and the update.
                    if let Some(reason) = crate::import_state_refusal(state, a.state) {
                        refused.push(RowRefusal {
                            index: accounts
                                .iter()
                                .position(|x| std::ptr::eq(x, *a))
                                .unwrap_or_default(),
                            field: "state",
                            reason: reason.into(),
                        });
                        continue;
                    }
                    tx.execute(&upd, &p).await?;
                    count.updated += 1;
                }
            }
            changed.push(*a);
        }
        // Links last, so requester and approver may appear anywhere in the batch.
        let set = tx
            .prepare_cached(
                "UPDATE account SET
                     requested_by = (SELECT id FROM account WHERE login = $2),
                     approved_by = (SELECT id FROM account WHERE login = $3)
                 WHERE login = $1",
            )
            .await?;
        for a in changed {
            tx.execute(
                &set,
                &[
                    &a.login.as_str(),
                    &a.requested_by.as_ref().map(Reference::as_str),
                    &a.approved_by.as_ref().map(Reference::as_str),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        refused.sort_by_key(|r| r.index);
        Ok((count, refused))
    }

    async fn upsert_mandates(
        &self,
        mandates: Vec<MandateRow>,
    ) -> Result<(UpsertCount, Vec<RowRefusal>), StorageError> {
        let mut count = UpsertCount::default();
        let mut refused = Vec::new();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Accounts may not move to another organisation while mandates are
        // checked against them; mandate writers go one at a time.
        tx.batch_execute(
            "LOCK TABLE account IN SHARE MODE;
             LOCK TABLE mandate IN SHARE ROW EXCLUSIVE MODE;",
        )
        .await?;
        // Everything the checks need, in four round trips whatever the
        // batch size (row-by-row queries made large imports crawl).
        let codes: Vec<&str> = mandates.iter().map(|m| m.organisation.as_str()).collect();
        let orgs: HashMap<String, i64> = tx
            .query(
                "SELECT code, id FROM organisation WHERE code = ANY($1)",
                &[&codes],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, StorageError>>()?;
        let logins: Vec<&str> = mandates
            .iter()
            .filter_map(|m| m.account.as_ref().map(Reference::as_str))
            .collect();
        let accounts: HashMap<String, (i64, i64)> = tx
            .query(
                "SELECT login, id, organisation_id FROM account WHERE login = ANY($1)",
                &[&logins],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
            .collect::<Result<_, StorageError>>()?;
        let person_ids: Vec<i64> = mandates.iter().map(|m| m.person_id).collect();
        // FOR SHARE: these persons cannot be shredded before this commits.
        let live: std::collections::HashSet<i64> = tx
            .query(
                "SELECT id FROM person WHERE id = ANY($1) AND wrapped_dek IS NOT NULL FOR SHARE",
                &[&person_ids],
            )
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect::<Result<_, StorageError>>()?;
        type Fields = (
            i64,
            Option<i64>,
            i64,
            String,
            NaiveDate,
            Option<NaiveDate>,
            String,
        );
        let refs: Vec<&str> = mandates.iter().map(|m| m.reference.as_str()).collect();
        let mut state: HashMap<String, Fields> = tx
            .query(
                "SELECT reference, organisation_id, account_id, person_id, purpose, valid_from,
                        valid_to, source
                 FROM mandate WHERE reference = ANY($1)",
                &[&refs],
            )
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    (
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                        r.try_get(5)?,
                        r.try_get(6)?,
                        r.try_get(7)?,
                    ),
                ))
            })
            .collect::<Result<_, StorageError>>()?;
        // Rows are decided in batch order, as SQLite does one by one; what
        // is written is each reference's final state.
        let mut pending: Vec<(String, bool)> = Vec::new();
        let mut is_new: HashMap<String, bool> = HashMap::new();
        for (index, m) in mandates.iter().enumerate() {
            let refuse = |field, reason: &str| RowRefusal {
                index,
                field,
                reason: reason.into(),
            };
            let Some(&org_id) = orgs.get(m.organisation.as_str()) else {
                refused.push(refuse("organisation", "no such organisation"));
                continue;
            };
            let account_id = match &m.account {
                None => None,
                Some(login) => match accounts.get(login.as_str()) {
                    None => {
                        refused.push(refuse("account", "no such account"));
                        continue;
                    }
                    Some(&(_, o)) if o != org_id => {
                        refused.push(refuse(
                            "account",
                            "belongs to another organisation than the mandate",
                        ));
                        continue;
                    }
                    Some(&(id, _)) => Some(id),
                },
            };
            if !live.contains(&m.person_id) {
                refused.push(refuse("ft_id", "no such person in the registry"));
                continue;
            }
            let new: Fields = (
                org_id,
                account_id,
                m.person_id,
                m.purpose.as_str().to_string(),
                m.valid_from,
                m.valid_to,
                m.source.as_str().to_string(),
            );
            let key = m.reference.as_str().to_string();
            match state.get(&key) {
                Some(cur) if *cur == new => {
                    count.unchanged += 1;
                    continue;
                }
                Some(_) => count.updated += 1,
                None => count.inserted += 1,
            }
            if !is_new.contains_key(&key) {
                is_new.insert(key.clone(), !state.contains_key(&key));
                pending.push((key.clone(), !state.contains_key(&key)));
            }
            state.insert(key, new);
        }
        let mut cols: [Vec<&Fields>; 2] = [Vec::new(), Vec::new()];
        let mut keys: [Vec<&str>; 2] = [Vec::new(), Vec::new()];
        for (key, fresh) in &pending {
            if let Some(f) = state.get(key) {
                let side = usize::from(!fresh);
                cols[side].push(f);
                keys[side].push(key);
            }
        }
        for (side, sql) in [
            "INSERT INTO mandate (reference, organisation_id, account_id, person_id, purpose,
                 valid_from, valid_to, source)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                 $5::text[], $6::date[], $7::date[], $8::text[])",
            "UPDATE mandate m SET organisation_id = u.o, account_id = u.a, person_id = u.p,
                 purpose = u.pu, valid_from = u.f, valid_to = u.t, source = u.s
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                 $5::text[], $6::date[], $7::date[], $8::text[]) AS u(r, o, a, p, pu, f, t, s)
             WHERE m.reference = u.r",
        ]
        .into_iter()
        .enumerate()
        {
            let rows = &cols[side];
            if rows.is_empty() {
                continue;
            }
            let o: Vec<i64> = rows.iter().map(|f| f.0).collect();
            let a: Vec<Option<i64>> = rows.iter().map(|f| f.1).collect();
            let p: Vec<i64> = rows.iter().map(|f| f.2).collect();
            let pu: Vec<&str> = rows.iter().map(|f| f.3.as_str()).collect();
            let fr: Vec<NaiveDate> = rows.iter().map(|f| f.4).collect();
            let to: Vec<Option<NaiveDate>> = rows.iter().map(|f| f.5).collect();
            let so: Vec<&str> = rows.iter().map(|f| f.6.as_str()).collect();
            tx.execute(sql, &[&keys[side], &o, &a, &p, &pu, &fr, &to, &so])
                .await?;
        }
        tx.commit().await?;
        Ok((count, refused))
    }

    async fn mandates_of_person(&self, person_id: i64) -> Result<Vec<StoredMandate>, StorageError> {
        let client = self.client().await?;
        mandates_rows(&client, &self.names, person_id).await
    }

    async fn inventory(&self) -> Result<Inventory, StorageError> {
        let mut client = self.client().await?;
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
                &[&self.schema, &TABLES],
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

    async fn begin_bulk_load(&self) -> Result<bool, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Blocks concurrent writers until the decision is committed.
        tx.batch_execute("LOCK TABLE person IN SHARE ROW EXCLUSIVE MODE")
            .await?;
        let empty: bool = tx
            .query_one("SELECT NOT EXISTS (SELECT 1 FROM person)", &[])
            .await?
            .try_get(0)?;
        if empty {
            tx.batch_execute(
                "DROP INDEX IF EXISTS person_ft;
                 DROP INDEX IF EXISTS person_nir;
                 DROP INDEX IF EXISTS person_name;",
            )
            .await?;
        }
        tx.commit().await?;
        Ok(empty)
    }

    async fn refresh_statistics(&self) -> Result<(), StorageError> {
        self.client()
            .await?
            .batch_execute("ANALYZE organisation, account, person, mandate")
            .await?;
        Ok(())
    }

    async fn end_bulk_load(&self) -> Result<(), StorageError> {
        let client = self.client().await?;
        // Sorting memory for the index builds of a large first load.
        client
            .batch_execute(
                "SET maintenance_work_mem = '256MB';
                 CREATE UNIQUE INDEX IF NOT EXISTS person_ft ON person (ft_blind);
                 CREATE INDEX IF NOT EXISTS person_nir ON person (nir_blind);
                 CREATE INDEX IF NOT EXISTS person_name ON person (name_blind);
                 RESET maintenance_work_mem;",
            )
            .await
            .map_err(|e| match e.code() {
                Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
                    StorageError::Conflict(
                        "two persons with the same France Travail id were loaded at once".into(),
                    )
                }
                _ => e.into(),
            })?;
        Ok(())
    }

    async fn person_ids(&self, after: i64, limit: u32) -> Result<Vec<i64>, StorageError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id FROM person WHERE id > $1 ORDER BY id LIMIT $2")
            .await?;
        client
            .query(&stmt, &[&after, &i64::from(limit)])
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }

    async fn account_by_login(
        &self,
        login: &Reference,
    ) -> Result<Option<AccountRecord>, StorageError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{ACCOUNT_SELECT} WHERE a.login = $1"))
            .await?;
        client
            .query_opt(&stmt, &[&login.as_str()])
            .await?
            .map(|r| account_record(&r, 0))
            .transpose()
    }

    async fn account_by_id(&self, id: i64) -> Result<Option<AccountRecord>, StorageError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{ACCOUNT_SELECT} WHERE a.id = $1"))
            .await?;
        client
            .query_opt(&stmt, &[&id])
            .await?
            .map(|r| account_record(&r, 0))
            .transpose()
    }

    async fn accounts_of_organisation(
        &self,
        organisation_id: i64,
    ) -> Result<Vec<AccountRecord>, StorageError> {
        let client = self.client().await?;
        // Logins are ASCII: the C collation orders them as SQLite does.
        let stmt = client
            .prepare_cached(&format!(
                "{ACCOUNT_SELECT} WHERE a.organisation_id = $1 ORDER BY a.login COLLATE \"C\""
            ))
            .await?;
        client
            .query(&stmt, &[&organisation_id])
            .await?
            .iter()
            .map(|r| account_record(r, 0))
            .collect()
    }

    async fn organisations(&self) -> Result<Vec<(i64, Organisation)>, StorageError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, code, kind, name, departement FROM organisation
                 ORDER BY code COLLATE \"C\"",
            )
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Organisation {
                        code: parse_code(r.try_get(1)?, Reference::parse)?,
                        kind: parse_code(r.try_get(2)?, OrganisationKind::parse)?,
                        name: r.try_get(3)?,
                        departement: r.try_get(4)?,
                    },
                ))
            })
            .collect()
    }

    async fn set_account_state(
        &self,
        account_id: i64,
        state: AccountState,
    ) -> Result<bool, StorageError> {
        let action = crate::auth::state_change(state)?;
        let client = self.client().await?;
        // One compare-and-set carrying the state machine's rule.
        let stmt = client
            .prepare_cached(&format!(
                "UPDATE account SET state = $2 WHERE id = $1 AND {}",
                crate::auth::transition_sql("account", action)
            ))
            .await?;
        let n = client
            .execute(&stmt, &[&account_id, &state.as_str()])
            .await?;
        if n == 1 {
            return Ok(true);
        }
        match auth::subject(&**client, account_id).await? {
            None => Ok(false),
            Some(facts) => Err(crate::auth::refused_change(facts, action)),
        }
    }

    async fn insert_credential(
        &self,
        account_id: i64,
        secret_digest: [u8; 32],
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<i64, StorageError> {
        let (created_at, expires_at) = credential_period(created_at, expires_at)?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO api_credential (account_id, secret_digest, created_at, expires_at)
                 SELECT $1::int8, $2::bytea, $3::timestamptz, $4::timestamptz
                 WHERE EXISTS (SELECT 1 FROM account WHERE id = $1)
                 RETURNING id",
            )
            .await?;
        let digest: &[u8] = &secret_digest;
        let row = client
            .query_opt(&stmt, &[&account_id, &digest, &created_at, &expires_at])
            .await?
            .ok_or_else(|| crate::auth::not_found("account_id", "account"))?;
        Ok(row.try_get(0)?)
    }

    async fn credential(
        &self,
        id: i64,
    ) -> Result<Option<(StoredCredential, AccountRecord)>, StorageError> {
        let client = self.client().await?;
        let version = access_version(&client).await?;
        checked_credential(&client, &self.credentials, version, id).await
    }

    async fn consultation_rows(
        &self,
        credential_id: i64,
        person_id: i64,
    ) -> Result<ConsultationRows, StorageError> {
        // One connection, the queries pipelined: one round trip's wait
        // instead of three. The credential comes from memory while the
        // access version has not moved (a second trip when it has).
        let client = self.client().await?;
        let (version, mandates, person) = tokio::try_join!(
            access_version(&client),
            mandates_rows(&client, &self.names, person_id),
            person_row(&client, person_id, FieldGroup::ALL),
        )?;
        let credential = match credential_id {
            // No credential has id 0: the caller came another way.
            0 => None,
            id => checked_credential(&client, &self.credentials, version, id).await?,
        };
        Ok(ConsultationRows {
            credential,
            mandates,
            person,
        })
    }

    async fn revoke_credentials(
        &self,
        account_id: i64,
        id: Option<i64>,
        at: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        let at = crate::instant(at, "at")?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE api_credential SET revoked_at = $3
                 WHERE account_id = $1 AND ($2::int8 IS NULL OR id = $2) AND revoked_at IS NULL",
            )
            .await?;
        Ok(client.execute(&stmt, &[&account_id, &id, &at]).await?)
    }

    async fn grant_mandate(&self, m: NewMandate) -> Result<StoredMandate, StorageError> {
        check_mandate_period(&m)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stored = insert_mandate(&tx, &self.names, &m, None).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn rehearse_grant(&self, m: &NewMandate) -> Result<(), StorageError> {
        check_mandate_period(m)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        insert_mandate(&tx, &self.names, m, None).await?;
        tx.rollback().await?;
        Ok(())
    }

    async fn request_grant(
        &self,
        m: NewMandate,
        requested_by: i64,
        at: DateTime<Utc>,
    ) -> Result<crate::GrantRequest, StorageError> {
        check_mandate_period(&m)?;
        let at = crate::instant(at, "at")?;
        let client = self.client().await?;
        let id: i64 = client
            .query_one(
                "INSERT INTO mandate_request (reference, organisation_id, account_id,
                     person_id, purpose, valid_from, valid_to, source, requested_by,
                     requested_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                &[
                    &m.reference.as_str(),
                    &m.organisation_id,
                    &m.account_id,
                    &m.person_id,
                    &m.purpose.as_str(),
                    &m.valid_from,
                    &m.valid_to,
                    &m.source.as_str(),
                    &requested_by,
                    &at,
                ],
            )
            .await?
            .try_get(0)?;
        Ok(crate::GrantRequest {
            id,
            mandate: m,
            requested_by,
            requested_at: at,
        })
    }

    async fn decide_grant(
        &self,
        id: i64,
        officer_id: i64,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<crate::GrantDecision>, StorageError> {
        let at = crate::instant(at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let decided = decide_grant_in(&tx, &self.names, id, officer_id, approve, at).await?;
        tx.commit().await?;
        Ok(decided)
    }

    async fn rehearse_grant_decision(
        &self,
        id: i64,
        officer_id: i64,
        approve: bool,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let at = crate::instant(at, "at")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rehearsed = decide_grant_in(&tx, &self.names, id, officer_id, approve, at).await;
        tx.rollback().await?;
        Ok(rehearsed?.is_some())
    }

    async fn pending_grants(&self) -> Result<Vec<crate::GrantRequest>, StorageError> {
        let client = self.client().await?;
        client
            .query(
                &format!("{GRANT_REQUEST_SELECT} WHERE decided_at IS NULL ORDER BY id"),
                &[],
            )
            .await?
            .iter()
            .map(grant_request_row)
            .collect()
    }

    async fn grant_break_glass(
        &self,
        m: NewMandate,
        reason: NewBreakGlassReason,
    ) -> Result<StoredMandate, StorageError> {
        check_mandate_period(&m)?;
        let created_at = crate::instant(reason.created_at, "created_at")?;
        let dek_version = to_i32(reason.dek_version, "dek_version")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stored = insert_mandate(&tx, &self.names, &m, Some(reason.dek_version)).await?;
        tx.execute(
            "INSERT INTO break_glass_reason
                 (mandate_id, person_id, account_id, created_at, dek_version, sealed)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &stored.id,
                &m.person_id,
                &reason.account_id,
                &created_at,
                &dek_version,
                &reason.sealed,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn break_glass_reasons(
        &self,
        person_id: i64,
    ) -> Result<Vec<StoredBreakGlassReason>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, mandate_id, person_id, account_id, created_at, dek_version, sealed
                 FROM break_glass_reason WHERE person_id = $1 ORDER BY id",
                &[&person_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok::<_, StorageError>(StoredBreakGlassReason {
                    id: r.try_get(0)?,
                    mandate_id: r.try_get(1)?,
                    person_id: r.try_get(2)?,
                    account_id: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                    dek_version: to_u32(r.try_get(5)?, "dek_version")?,
                    sealed: r.try_get(6)?,
                })
            })
            .collect()
    }

    async fn revoke_mandate(&self, id: i64, at: DateTime<Utc>) -> Result<bool, StorageError> {
        let at = crate::instant(at, "at")?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE mandate SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .await?;
        Ok(client.execute(&stmt, &[&id, &at]).await? == 1)
    }

    async fn mandate(&self, id: i64) -> Result<Option<StoredMandate>, StorageError> {
        let client = self.client().await?;
        mandate_by_id(&client, &self.names, id).await
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
        let client = self.client().await?;
        let stmt = client.prepare_cached(CASELOAD).await?;
        // One row more than asked, to see whether the page splits a person.
        let rows = client
            .query(
                &stmt,
                &[
                    &organisation_id,
                    &account_id,
                    &after,
                    &on,
                    &purpose.map(Purpose::as_str),
                    &(i64::from(limit) + 1),
                ],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(CaseloadEntry {
                    person_id: r.try_get(0)?,
                    purpose: parse_code(r.try_get(1)?, Purpose::parse)?,
                    mandate_id: r.try_get(2)?,
                    valid_to: r.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(caseload_page(rows, limit))
    }
}

/// A person's key material and the sealed groups asked for.
async fn person_row(
    client: &deadpool_postgres::ClientWrapper,
    id: i64,
    groups: &[FieldGroup],
) -> Result<Option<StoredPerson>, StorageError> {
    let mut sql = String::from("SELECT kek_version, dek_version, wrapped_dek");
    for g in groups {
        sql.push_str(", ");
        sql.push_str(group_column(*g));
    }
    sql.push_str(" FROM person WHERE id = $1");
    let stmt = client.prepare_cached(&sql).await?;
    let Some(r) = client.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    let mut sealed = Vec::with_capacity(groups.len());
    for (i, g) in groups.iter().enumerate() {
        sealed.push((*g, r.try_get::<_, Vec<u8>>(3 + i)?));
    }
    Ok(Some(StoredPerson {
        id,
        kek_version: to_u32(r.try_get(0)?, "kek_version")?,
        dek_version: to_u32(r.try_get(1)?, "dek_version")?,
        wrapped_dek: r.try_get(2)?,
        groups: sealed,
    }))
}

/// Every mandate on one person, live or not.
async fn mandates_rows(
    client: &impl deadpool_postgres::GenericClient,
    names: &Names,
    person_id: i64,
) -> Result<Vec<StoredMandate>, StorageError> {
    let stmt = client.prepare_cached(&MANDATES_OF_PERSON_SQL).await?;
    let rows = client.query(&stmt, &[&person_id]).await?;
    let mut mandates = Vec::with_capacity(rows.len());
    for r in &rows {
        mandates.push(stored_mandate(client, names, r).await?);
    }
    Ok(mandates)
}

/// An organisation's code or an account's login, from [`Names`] or else
/// from its row (which the foreign key says exists).
async fn name(
    client: &impl deadpool_postgres::GenericClient,
    names: &Names,
    kind: Named,
    id: i64,
) -> Result<Reference, StorageError> {
    if let Some(known) = names.get(kind, id) {
        return Ok(known);
    }
    let sql = match kind {
        Named::Organisation => "SELECT code FROM organisation WHERE id = $1",
        Named::Account => "SELECT login FROM account WHERE id = $1",
    };
    let stmt = client.prepare_cached(sql).await?;
    let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
        return Err(StorageError::Corrupt(format!(
            "a mandate names {kind:?} {id}, which does not exist"
        )));
    };
    let found = parse_code(row.try_get(0)?, Reference::parse)?;
    names.put(kind, id, &found);
    Ok(found)
}

/// The access version (see [`Credentials`]).
async fn access_version(client: &deadpool_postgres::ClientWrapper) -> Result<i64, StorageError> {
    let stmt = client
        .prepare_cached("SELECT version FROM access_version WHERE id = 1")
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.try_get(0)?)
}

/// A credential and its account, from [`Credentials`] if it was read under
/// `version`, else from the rows (kept for the next request). `version`
/// must have been read before this call: a change committed since moves
/// it, so the copy kept can only be newer than its version, never older.
async fn checked_credential(
    client: &deadpool_postgres::ClientWrapper,
    credentials: &Credentials,
    version: i64,
    id: i64,
) -> Result<Option<CredentialRow>, StorageError> {
    if let Some(kept) = credentials.get(id, version) {
        return Ok(Some(kept));
    }
    let row = credential_row(client, id).await?;
    if let Some(row) = &row {
        credentials.put(version, row);
    }
    Ok(row)
}

/// A credential and its account.
async fn credential_row(
    client: &deadpool_postgres::ClientWrapper,
    id: i64,
) -> Result<Option<(StoredCredential, AccountRecord)>, StorageError> {
    let stmt = client
        .prepare_cached(&format!("{CREDENTIAL_SELECT} WHERE c.id = $1"))
        .await?;
    let Some(r) = client.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    let credential = StoredCredential {
        id: r.try_get(0)?,
        account_id: r.try_get(1)?,
        secret_digest: digest(r.try_get(2)?)?,
        created_at: r.try_get(3)?,
        expires_at: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
    };
    Ok(Some((credential, account_record(&r, 6)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for ok in ["registry", "t_1_2_3", "_x", "a9"] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Registry",
            "a-b",
            "a;drop",
            "a b",
            "9a",
            "pg_catalog",
            "information_schema",
            "\"x\"",
            &"a".repeat(64),
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("host=h password=x"),
            "PostgreSQL connection string"
        );
    }

    #[test]
    fn lock_keys_differ_by_schema() {
        assert_ne!(lock_key("a"), lock_key("b"));
        assert_eq!(lock_key("a"), lock_key("a"));
    }
}
