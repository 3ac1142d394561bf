//! The `cache` capability: the host side of the WIT interface, and the trait
//! its backends implement (`memory`, `redis`).

use std::time::Duration;

use async_trait::async_trait;

use super::{BackendError, CapabilityFailure, Effect, check_size, has_prefix, printable};
use crate::runtime::bindings::cache;
use crate::runtime::state::HostState;

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

impl HostState {
    fn check_key(&self, key: &str) -> Result<(), CapabilityFailure> {
        if !has_prefix(&self.caps.grants.cache_prefixes, key) {
            return Err(CapabilityFailure::Denied(format!(
                "cache key {key:?} is outside the tenant's prefixes {:?}",
                self.caps.grants.cache_prefixes
            )));
        }
        check_size("cache key", key.len())
    }
}

impl cache::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, CapabilityFailure> {
        self.check_key(&key)?;
        Ok(self.caps.backends.cache.get(&key).await?)
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, CapabilityFailure> {
        for key in &keys {
            self.check_key(key)?;
        }
        Ok(self.caps.backends.cache.get_many(&keys).await?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), CapabilityFailure> {
        self.check_key(&key)?;
        check_size("cache value", value.len())?;
        self.record(|| Effect::CacheSet { key: key.clone(), value: printable(&value), ttl_ms });
        Ok(self.caps.backends.cache.set(&key, value, ttl_ms.map(Duration::from_millis)).await?)
    }

    async fn delete(&mut self, key: String) -> Result<bool, CapabilityFailure> {
        self.check_key(&key)?;
        self.record(|| Effect::CacheDelete { key: key.clone() });
        Ok(self.caps.backends.cache.delete(&key).await?)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, CapabilityFailure> {
        self.check_key(&key)?;
        self.record(|| Effect::CacheIncrement { key: key.clone(), delta });
        Ok(self.caps.backends.cache.increment(&key, delta).await?)
    }
}
