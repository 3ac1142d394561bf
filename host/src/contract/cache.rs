//! The port a cache backend implements (`memory`, `redis`).

use std::time::Duration;

use async_trait::async_trait;

use super::errors::BackendError;

/// A key-value store. Keys reach it already checked against grants.
#[async_trait]
pub trait CacheBackend: Send + Sync {
    /// The value under `key`.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// The values under each key, in order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, BackendError>;
    /// Store a value, with an optional time to live.
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), BackendError>;
    /// Remove a key; true if it was there.
    async fn delete(&self, key: &str) -> Result<bool, BackendError>;
    /// Add to the integer under a key and return the new value.
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, BackendError>;
}
