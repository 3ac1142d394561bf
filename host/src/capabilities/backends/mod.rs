//! Capability backends, one file each. A backend only speaks its store; grants
//! and the WIT types' checks stay in the capability.

pub mod batch;
pub mod elasticsearch;
pub mod memory;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod sqlite;
pub mod tantivy;

use std::sync::Arc;
use std::time::Duration;

use super::Backends;
use crate::config::{CacheBackendConfig, Config, DbBackendConfig, SearchBackendConfig};

/// A backend call that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot be reached or failed to answer; worth a retry.
    #[error("{0}")]
    Unavailable(String),
    /// The backend refused the request as malformed.
    #[error("{0}")]
    Invalid(String),
    /// The backend refused the request as too large.
    #[error("{0}")]
    TooLarge(String),
}

/// The backends named in the config, opened and ready.
pub async fn open(config: &Config) -> Result<Backends, BackendError> {
    let cache: Arc<dyn super::cache::CacheBackend> = match &config.backends.cache {
        CacheBackendConfig::Memory { max_entries } => Arc::new(memory::MemoryCache::new(*max_entries)),
        CacheBackendConfig::Redis { url, key_prefix, timeout_ms } => {
            Arc::new(redis::RedisCache::open(url, key_prefix, Duration::from_millis(*timeout_ms)).await?)
        }
    };
    let db: Arc<dyn super::db::DbBackend> = match &config.backends.db {
        DbBackendConfig::Sqlite { path, init } => {
            let path = path.clone().unwrap_or_else(|| config.data_dir.join("switchyard.db"));
            Arc::new(sqlite::SqliteDb::open(&path, init).await?)
        }
        DbBackendConfig::Postgres { url, init, max_connections, max_batch, timeout_ms } => {
            let options = sql::ServerOptions {
                init: init.clone(),
                max_connections: *max_connections,
                max_batch: *max_batch,
                timeout_ms: *timeout_ms,
            };
            Arc::new(postgres::PostgresDb::open(url, &options).await?)
        }
        DbBackendConfig::Mysql { url, init, max_connections, max_batch, timeout_ms } => {
            let options = sql::ServerOptions {
                init: init.clone(),
                max_connections: *max_connections,
                max_batch: *max_batch,
                timeout_ms: *timeout_ms,
            };
            Arc::new(mysql::MySqlDb::open(url, &options).await?)
        }
    };
    let search = open_search(config)?;
    Ok(Backends { cache, db, search })
}

/// The search backend named in the config, alone.
pub fn open_search(config: &Config) -> Result<Arc<dyn super::search::SearchBackend>, BackendError> {
    Ok(match &config.backends.search {
        SearchBackendConfig::Tantivy { path } => {
            let path = path.clone().unwrap_or_else(|| config.data_dir.join("search"));
            Arc::new(tantivy::TantivySearch::open(&path)?)
        }
        SearchBackendConfig::Elasticsearch { url, username, password, refresh, timeout_ms, max_batch } => {
            Arc::new(elasticsearch::ElasticsearchSearch::open(&elasticsearch::ElasticsearchOptions {
                url: url.clone(),
                credentials: username.clone().map(|user| (user, password.clone().unwrap_or_default())),
                refresh: *refresh,
                timeout: Duration::from_millis(*timeout_ms),
                max_batch: *max_batch,
            })?)
        }
    })
}
