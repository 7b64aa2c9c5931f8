//! PostgreSQL backend (being written).
use crate::StorageError;
pub const DEFAULT_SCHEMA: &str = "registry";
pub struct PgStore;
impl PgStore {
    pub async fn connect(
        _url: &str,
        _schema: &str,
    ) -> Result<std::sync::Arc<dyn crate::RegistryStore>, StorageError> {
        Err(StorageError::Pool(
            "PostgreSQL backend not written yet".into(),
        ))
    }
}
