//! Where a command's data is (`--data`, `--database`), and opening it:
//! every command goes through `rempart_server::Location`, the one place a
//! data directory or URL becomes opened stores.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use rempart_ledger::{LedgerKey, LedgerStore};
use rempart_storage::{Store, Stores};
use rempart_vault::Vault;

/// Where the registry lives.
#[derive(Args, Clone)]
pub struct Location {
    /// Data directory: keys, and the SQLite registry unless --database is given.
    #[arg(long, env = "REMPART_DATA", default_value = "rempart-data")]
    pub data: PathBuf,
    /// PostgreSQL URL (postgres://…) for the registry instead of SQLite.
    #[arg(long, env = "REMPART_DATABASE_URL")]
    pub database: Option<String>,
}

impl Location {
    /// The same place, as the server crate names it.
    pub fn server(&self) -> rempart_server::Location {
        rempart_server::Location {
            data: self.data.clone(),
            database: self.database.clone(),
        }
    }

    /// The registry, for messages (no credentials).
    pub fn describe(&self) -> String {
        self.server().describe()
    }

    /// The registry's stores (registry, authentication, guard).
    pub async fn open_stores(&self) -> Result<Stores> {
        Ok(self.server().open_stores().await?)
    }

    /// The registry.
    pub async fn open_store(&self) -> Result<Store> {
        Ok(self.open_stores().await?.registry)
    }

    /// The registry with its keys.
    pub async fn open_vault(&self) -> Result<Vault> {
        let store = self.open_store().await?;
        Vault::new(self.server().key_source(), store)
            .context("loading the keys (run `rempart init` first?)")
    }

    /// The audit ledger's store.
    pub async fn open_ledger_store(&self) -> Result<Arc<dyn LedgerStore>> {
        Ok(self.server().open_ledger_store().await?)
    }

    /// The ledger's signing key.
    pub fn load_ledger_key(&self) -> Result<LedgerKey> {
        Ok(self.server().load_ledger_key()?)
    }
}
