//! The port a search backend implements (`tantivy`, `elasticsearch`).

use async_trait::async_trait;

use super::bindings::search::Hit;
use super::errors::BackendError;

/// A full-text index. Index names reach it already checked against grants,
/// and documents already checked to be JSON objects.
#[async_trait]
pub trait SearchBackend: Send + Sync {
    /// Add or replace a document.
    async fn index(
        &self,
        index: &str,
        id: &str,
        document: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), BackendError>;
    /// Remove a document.
    async fn delete(&self, index: &str, id: &str) -> Result<(), BackendError>;
    /// Search; best hits first.
    async fn query(&self, index: &str, query: &str, limit: usize) -> Result<Vec<Hit>, BackendError>;
}
