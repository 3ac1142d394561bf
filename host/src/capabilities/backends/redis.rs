//! The Redis cache backend: one multiplexed connection shared by every
//! handler, which reconnects by itself.
//!
//! Commands from handlers running at the same time are pipelined: the
//! multiplexed connection writes each command as it is issued, without
//! waiting for earlier replies, and matches the replies back in order. A
//! handler never opens a connection of its own. While Redis is down every call
//! fails at once as `unavailable`, and one log line names the backend and its
//! address when it goes down and when it is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{ErrorKind, RedisError, ServerErrorKind};

use super::BackendError;
use crate::capabilities::cache::CacheBackend;

/// The `redis` cache backend.
pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
    address: String,
    down: AtomicBool,
}

impl RedisCache {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "redis";

    /// Connect to `url`. Every key is stored under `prefix` + the handler's
    /// key. A connect or a command slower than `timeout` fails as `unavailable`.
    pub async fn open(url: &str, prefix: &str, timeout: Duration) -> Result<Self, BackendError> {
        let client =
            ::redis::Client::open(url).map_err(|e| BackendError::Invalid(format!("redis url {url:?}: {e}")))?;
        let info = client.get_connection_info();
        let address = format!("redis at {}", info.addr());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnect in the background; a call while down fails at once
            // rather than waiting through a long backoff.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| BackendError::Unavailable(format!("cannot connect to {address}: {e}")))?;
        Ok(Self { conn, prefix: prefix.to_string(), address, down: AtomicBool::new(false) })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn run<T: ::redis::FromRedisValue>(&self, what: &str, key: &str, cmd: ::redis::Cmd) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        match cmd.query_async::<T>(&mut conn).await {
            Ok(value) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(backend = "redis", address = %self.address, "cache backend is reachable again");
                }
                Ok(value)
            }
            Err(e) => Err(self.failure(what, key, e)),
        }
    }

    fn failure(&self, what: &str, key: &str, e: RedisError) -> BackendError {
        let invalid = matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ResponseError) | ErrorKind::UnexpectedReturnType)
            || e.code() == Some("WRONGTYPE");
        if invalid {
            return BackendError::Invalid(format!("redis {what} {key:?}: {e}"));
        }
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(backend = "redis", address = %self.address, error = %e, "cache backend is unreachable; calls fail as unavailable until it is back");
        }
        BackendError::Unavailable(format!("{} {what} {key:?}: {e}", self.address))
    }
}

#[async_trait]
impl CacheBackend for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(self.key(key));
        self.run("get", key, cmd).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = ::redis::cmd("MGET");
        for key in keys {
            cmd.arg(self.key(key));
        }
        self.run("get-many", &keys[0], cmd).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), BackendError> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ttl) = ttl {
            // Redis refuses PX 0; the shortest TTL it takes is 1 ms.
            cmd.arg("PX").arg(ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64);
        }
        self.run("set", key, cmd).await
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(self.key(key));
        Ok(self.run::<i64>("delete", key, cmd).await? > 0)
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, BackendError> {
        let mut cmd = ::redis::cmd("INCRBY");
        cmd.arg(self.key(key)).arg(delta);
        self.run("increment", key, cmd).await
    }
}
