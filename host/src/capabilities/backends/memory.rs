//! The embedded cache: an in-process map with per-entry TTLs, sharded so
//! handlers on different threads rarely contend.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::contract::cache::CacheBackend;
use crate::contract::errors::BackendError;

const SHARDS: usize = 16;

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// The `memory` cache backend.
pub struct MemoryCache {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    hasher: RandomState,
    max_per_shard: usize,
}

impl MemoryCache {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "memory";

    /// An empty cache holding at most `max_entries` entries.
    pub fn new(max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_per_shard: max_entries.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> Result<std::sync::MutexGuard<'_, HashMap<String, Entry>>, BackendError> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().map_err(|_| BackendError::Unavailable("memory cache lock poisoned".into()))
    }

    fn get_now(&self, key: &str, now: Instant) -> Result<Option<Vec<u8>>, BackendError> {
        let mut shard = self.shard(key)?;
        match shard.get(key) {
            Some(e) if e.live(now) => Ok(Some(e.value.clone())),
            Some(_) => {
                shard.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn insert(&self, key: &str, entry: Entry) -> Result<(), BackendError> {
        let mut shard = self.shard(key)?;
        if shard.len() >= self.max_per_shard && !shard.contains_key(key) {
            let now = Instant::now();
            shard.retain(|_, e| e.live(now));
            if shard.len() >= self.max_per_shard {
                return Err(BackendError::TooLarge(format!(
                    "memory cache is full ({} entries per shard); raise backends.cache.max_entries",
                    self.max_per_shard
                )));
            }
        }
        shard.insert(key.to_string(), entry);
        Ok(())
    }
}

#[async_trait]
impl CacheBackend for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.get_now(key, Instant::now())
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        let now = Instant::now();
        keys.iter().map(|k| self.get_now(k, now)).collect()
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), BackendError> {
        self.insert(key, Entry { value, expires: ttl.map(|t| Instant::now() + t) })
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let now = Instant::now();
        Ok(self.shard(key)?.remove(key).is_some_and(|e| e.live(now)))
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, BackendError> {
        let now = Instant::now();
        let mut shard = self.shard(key)?;
        let (current, expires) = match shard.get(key) {
            Some(e) if e.live(now) => {
                let text = std::str::from_utf8(&e.value)
                    .map_err(|_| BackendError::Invalid(format!("value of {key:?} is not an integer")))?;
                let n = text
                    .parse::<i64>()
                    .map_err(|_| BackendError::Invalid(format!("value of {key:?} is not an integer: {text:?}")))?;
                (n, e.expires)
            }
            _ => (0, None),
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| BackendError::Invalid(format!("incrementing {key:?} by {delta} overflows")))?;
        shard.insert(key.to_string(), Entry { value: next.to_string().into_bytes(), expires });
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_get_delete_and_ttl() {
        let c = MemoryCache::new(100);
        c.set("a", b"1".to_vec(), None).await.unwrap();
        c.set("t", b"x".to_vec(), Some(Duration::from_millis(30))).await.unwrap();
        assert_eq!(c.get("a").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(c.get_many(&["t".into(), "zz".into()]).await.unwrap(), vec![Some(b"x".to_vec()), None]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(c.get("t").await.unwrap(), None, "entry outlived its TTL");
        assert!(c.delete("a").await.unwrap());
        assert!(!c.delete("a").await.unwrap());
    }

    #[tokio::test]
    async fn increment_counts_and_refuses_text() {
        let c = MemoryCache::new(100);
        assert_eq!(c.increment("n", 5).await.unwrap(), 5);
        assert_eq!(c.increment("n", -2).await.unwrap(), 3);
        assert_eq!(c.get("n").await.unwrap(), Some(b"3".to_vec()));
        c.set("s", b"abc".to_vec(), None).await.unwrap();
        assert!(matches!(c.increment("s", 1).await, Err(BackendError::Invalid(_))));
    }

    #[tokio::test]
    async fn full_cache_refuses_new_keys_but_keeps_old_ones() {
        let c = MemoryCache::new(SHARDS);
        let mut refused = 0;
        for i in 0..200 {
            if c.set(&format!("k{i}"), vec![0], None).await.is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert!(c.set("k0", vec![1], None).await.is_ok() || c.get("k0").await.unwrap().is_none());
    }
}
