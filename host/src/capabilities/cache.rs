//! The `cache` capability: the host side of the WIT interface. Keys are
//! checked against the tenant's prefixes before they reach the backend.

use crate::contract::bindings::cache;
use crate::contract::errors::CapabilityFailure;

use super::context::{CapabilityCtx, Effect, check_size, has_prefix, printable};

impl CapabilityCtx {
    fn check_key(&self, key: &str) -> Result<(), CapabilityFailure> {
        if !has_prefix(&self.access.grants.cache_prefixes, key) {
            return Err(CapabilityFailure::Denied(format!(
                "cache key {key:?} is outside the tenant's prefixes {:?}",
                self.access.grants.cache_prefixes
            )));
        }
        check_size("cache key", key.len())
    }
}

impl cache::Host for CapabilityCtx {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, CapabilityFailure> {
        self.check_key(&key)?;
        Ok(self.access.backends.cache.get(&key).await?)
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, CapabilityFailure> {
        for key in &keys {
            self.check_key(key)?;
        }
        Ok(self.access.backends.cache.get_many(&keys).await?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), CapabilityFailure> {
        self.check_key(&key)?;
        check_size("cache value", value.len())?;
        self.record(|| Effect::CacheSet { key: key.clone(), value: printable(&value), ttl_ms });
        Ok(self.access.backends.cache.set(&key, value, ttl_ms.map(std::time::Duration::from_millis)).await?)
    }

    async fn delete(&mut self, key: String) -> Result<bool, CapabilityFailure> {
        self.check_key(&key)?;
        self.record(|| Effect::CacheDelete { key: key.clone() });
        Ok(self.access.backends.cache.delete(&key).await?)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, CapabilityFailure> {
        self.check_key(&key)?;
        self.record(|| Effect::CacheIncrement { key: key.clone(), delta });
        Ok(self.access.backends.cache.increment(&key, delta).await?)
    }
}
