//! Where a deployment keeps its data, and the one place that opens it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rempart_ledger::store::postgres::{PgLedgerConfig, PgLedgerStore};
use rempart_ledger::store::sqlite::SqliteLedgerStore;
use rempart_ledger::{KEY_FILE_NAME, Ledger, LedgerConfig, LedgerKey, LedgerStore};
use rempart_storage::{Stores, postgres::PgStore, sqlite::SqliteStore};
use rempart_vault::{KEYS_ENV, KeySource};

use crate::BuildError;

/// A deployment's data as its operator names it: the data directory
/// (keys, and the SQLite registry and ledger) and, optionally, the
/// PostgreSQL database holding the registry and the ledger instead.
#[derive(Debug, Clone)]
pub struct Location {
    /// Data directory: keys, and the SQLite databases unless `database`.
    pub data: PathBuf,
    /// PostgreSQL URL (`postgres://…`) for the registry and the ledger.
    pub database: Option<String>,
}

impl Location {
    /// The registry's key ring file.
    pub fn key_path(&self) -> PathBuf {
        self.data.join("keys.json")
    }

    /// The ledger's signing key file.
    pub fn ledger_key_path(&self) -> PathBuf {
        self.data.join(KEY_FILE_NAME)
    }

    /// Where the key ring comes from: `REMPART_KEYS` when set, else the
    /// data directory's file.
    pub fn key_source(&self) -> KeySource {
        match std::env::var(KEYS_ENV) {
            Ok(json) if !json.trim().is_empty() => KeySource::Env(json),
            _ => KeySource::File(self.key_path()),
        }
    }

    /// The registry, for messages: never the credentials a URL may hold.
    pub fn describe(&self) -> String {
        match &self.database {
            Some(url) => format!("PostgreSQL {}", rempart_sql::redact_url(url)),
            None => format!("SQLite in {}", self.data.display()),
        }
    }

    /// The parts a server opens, at their production places.
    pub fn storage(&self) -> Storage {
        Storage {
            registry: match &self.database {
                Some(url) => RegistryAt::Postgres {
                    url: url.clone(),
                    schema: rempart_storage::postgres::DEFAULT_SCHEMA.to_string(),
                },
                None => RegistryAt::Sqlite(self.data.clone()),
            },
            ledger: LedgerSource::Own {
                at: self.ledger_at(),
                key: LedgerKeyFrom::File(self.ledger_key_path()),
            },
            keys: self.key_source(),
        }
    }

    /// Where the audit ledger lives.
    pub fn ledger_at(&self) -> LedgerAt {
        match &self.database {
            Some(url) => LedgerAt::Postgres(PgLedgerConfig::new(url)),
            None => LedgerAt::Sqlite(self.data.clone()),
        }
    }

    /// The registry's stores (registry, authentication, guard), migrated.
    pub async fn open_stores(&self) -> Result<Stores, BuildError> {
        self.storage().registry.open().await
    }

    /// The audit ledger's store.
    pub async fn open_ledger_store(&self) -> Result<Arc<dyn LedgerStore>, BuildError> {
        self.ledger_at().open().await
    }

    /// The ledger's signing key.
    pub fn load_ledger_key(&self) -> Result<LedgerKey, BuildError> {
        LedgerKeyFrom::File(self.ledger_key_path()).load()
    }
}

/// Where the registry (and the authentication and guard stores beside it)
/// lives.
#[derive(Debug, Clone)]
pub enum RegistryAt {
    /// `registry.db` in this directory.
    Sqlite(PathBuf),
    /// This schema of this database.
    Postgres {
        /// Connection URL.
        url: String,
        /// Schema (tests use one per run).
        schema: String,
    },
}

impl RegistryAt {
    fn describe(&self) -> String {
        match self {
            RegistryAt::Sqlite(dir) => format!("SQLite in {}", dir.display()),
            RegistryAt::Postgres { url, schema } => format!(
                "PostgreSQL {} (schema {schema})",
                rempart_sql::redact_url(url)
            ),
        }
    }

    /// Opens and migrates the registry's stores.
    pub async fn open(&self) -> Result<Stores, BuildError> {
        Ok(self.open_scratch().await?.stores)
    }

    /// Opens and migrates the registry's stores for a run that leaves
    /// nothing behind (`rempart simulate`): [`Scratch::discard`] drops a
    /// PostgreSQL schema afterwards.
    pub async fn open_scratch(&self) -> Result<Scratch, BuildError> {
        let opened = match self {
            RegistryAt::Sqlite(dir) => SqliteStore::open(dir).await.map(|s| Scratch {
                stores: s.into(),
                schema: None,
            }),
            RegistryAt::Postgres { url, schema } => {
                PgStore::connect_store(url, schema).await.map(|s| Scratch {
                    stores: s.clone().into(),
                    schema: Some(s),
                })
            }
        };
        opened.map_err(|source| BuildError::Registry {
            place: self.describe(),
            source,
        })
    }
}

/// Stores opened by [`RegistryAt::open_scratch`].
pub struct Scratch {
    /// The stores, as [`RegistryAt::open`] gives them.
    pub stores: Stores,
    /// The PostgreSQL store whose schema goes with the run.
    schema: Option<PgStore>,
}

impl Scratch {
    /// Drops the run's PostgreSQL schema, with everything in it; a SQLite
    /// directory is left to its owner (a temporary directory, or one the
    /// user named).
    pub async fn discard(self) -> Result<(), rempart_storage::StorageError> {
        match self.schema {
            Some(pg) => pg.drop_schema().await,
            None => Ok(()),
        }
    }
}

/// Where the audit ledger lives (kept apart from the registry).
#[derive(Clone)]
pub enum LedgerAt {
    /// `ledger.db` in this directory.
    Sqlite(PathBuf),
    /// A schema of a PostgreSQL database, under its INSERT-only role.
    Postgres(PgLedgerConfig),
}

/// The ledger a server records to.
pub enum LedgerSource {
    /// Opened by the server from `at`, signing checkpoints with `key`.
    Own {
        /// Where it lives.
        at: LedgerAt,
        /// Its signing key.
        key: LedgerKeyFrom,
    },
    /// A ledger this process already writes: a second server in the same
    /// process shares its single writer (and its key).
    Shared {
        /// The writer.
        ledger: Arc<Ledger>,
        /// Its store.
        store: Arc<dyn LedgerStore>,
    },
}

impl LedgerAt {
    /// Opens the ledger's store.
    pub async fn open(&self) -> Result<Arc<dyn LedgerStore>, BuildError> {
        match self {
            LedgerAt::Sqlite(dir) => match SqliteLedgerStore::open(dir).await {
                Ok(s) => Ok(Arc::new(s)),
                Err(source) => Err(BuildError::LedgerStore {
                    place: format!("SQLite in {}", dir.display()),
                    source,
                }),
            },
            LedgerAt::Postgres(config) => match PgLedgerStore::connect(config).await {
                Ok(s) => Ok(Arc::new(s)),
                Err(source) => Err(BuildError::LedgerStore {
                    place: format!("PostgreSQL schema {}", config.schema),
                    source,
                }),
            },
        }
    }
}

impl LedgerSource {
    /// The ledger's single writer and its store: opened (the key loaded,
    /// the store opened, the writer taken) or the shared ones.
    pub async fn open(self) -> Result<(Arc<Ledger>, Arc<dyn LedgerStore>), BuildError> {
        match self {
            LedgerSource::Shared { ledger, store } => Ok((ledger, store)),
            LedgerSource::Own { at, key } => {
                let key = key.load()?;
                let store = at.open().await?;
                let ledger = Ledger::open(store.clone(), key, LedgerConfig::default())
                    .await
                    .map_err(BuildError::Ledger)?;
                Ok((Arc::new(ledger), store))
            }
        }
    }
}

/// Where the ledger's signing key comes from.
pub enum LedgerKeyFrom {
    /// A key file written by `rempart init` (mode 0600).
    File(PathBuf),
    /// A key already in memory (tests generate one).
    Key(Box<LedgerKey>),
}

impl std::fmt::Debug for LedgerKeyFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerKeyFrom::File(p) => f.debug_tuple("File").field(p).finish(),
            LedgerKeyFrom::Key(_) => f.write_str("Key(..)"),
        }
    }
}

impl LedgerKeyFrom {
    /// The key.
    pub fn load(self) -> Result<LedgerKey, BuildError> {
        match self {
            LedgerKeyFrom::File(path) => load_key_file(&path),
            LedgerKeyFrom::Key(key) => Ok(*key),
        }
    }
}

fn load_key_file(path: &Path) -> Result<LedgerKey, BuildError> {
    LedgerKey::load(path).map_err(|source| BuildError::LedgerKey {
        path: path.to_path_buf(),
        source,
    })
}

/// Everything a server opens: the registry's stores, the ledger (with its
/// signing key) and the registry's key ring. No `Debug`: the key ring may
/// come from the environment as text.
pub struct Storage {
    /// The registry and the stores beside it.
    pub registry: RegistryAt,
    /// The audit ledger.
    pub ledger: LedgerSource,
    /// The registry's key ring.
    pub keys: KeySource,
}
