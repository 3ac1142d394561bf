//! Which backend serves each capability, with each backend's settings.
//! Every capability has an embedded default.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use super::defaults;

/// Which backend serves each capability.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    /// The cache backend. Default `{ type = "memory" }`.
    #[serde(default)]
    pub cache: CacheBackendConfig,
    /// The database backend. Default `{ type = "sqlite" }` in the data dir.
    #[serde(default)]
    pub db: DbBackendConfig,
    /// The search backend. Default `{ type = "tantivy" }` in the data dir.
    #[serde(default)]
    pub search: SearchBackendConfig,
}

/// The cache backend.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum CacheBackendConfig {
    /// An in-process map with TTLs. Lost when the host stops.
    Memory {
        /// The most entries it holds; past that, a set is refused as
        /// `too-large`. Example: `max_entries = 1000000` (the default).
        #[serde(default = "defaults::cache_max_entries")]
        max_entries: usize,
    },
    /// Redis (or a Redis-protocol server such as Valkey), on one shared,
    /// multiplexed connection that pipelines concurrent commands and
    /// reconnects by itself.
    Redis {
        /// The server. Example: `url = "redis://127.0.0.1:6379"`; a database
        /// and a password go in the URL: `redis://:secret@host:6379/2`.
        url: String,
        /// Prepended to every key, to share one Redis between deployments;
        /// grants apply to the key before it. Example: `key_prefix = "prod:"`.
        /// Default none.
        #[serde(default)]
        key_prefix: String,
        /// A connect or command slower than this, in milliseconds, fails as
        /// `unavailable`. Example: `timeout_ms = 2000` (the default).
        #[serde(default = "defaults::backend_timeout_ms")]
        timeout_ms: u64,
    },
}

impl Default for CacheBackendConfig {
    fn default() -> Self {
        Self::Memory { max_entries: defaults::cache_max_entries() }
    }
}

/// The database backend.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DbBackendConfig {
    /// An SQLite database file, written in WAL mode.
    Sqlite {
        /// The database file. Default `<data_dir>/switchyard.db`.
        #[serde(default)]
        path: Option<PathBuf>,
        /// Statements run once at start, such as `CREATE TABLE IF NOT EXISTS`.
        /// Example: `init = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)"]`.
        #[serde(default)]
        init: Vec<String>,
    },
    /// PostgreSQL. Parameters bind to `$1, $2, ...` (or `?`, numbered in order).
    Postgres(SqlServerConfig),
    /// MySQL or MariaDB. Parameters bind to `?`. Sessions run in UTC.
    Mysql(SqlServerConfig),
}

/// A PostgreSQL or MySQL/MariaDB server.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlServerConfig {
    /// The server. Example: `url = "postgres://app:secret@127.0.0.1:5432/shop"`
    /// or `url = "mysql://app:secret@127.0.0.1:3306/shop"`.
    pub url: String,
    /// Statements run once at start. Example:
    /// `init = ["CREATE TABLE IF NOT EXISTS orders (id VARCHAR(64) PRIMARY KEY)"]`.
    #[serde(default)]
    pub init: Vec<String>,
    /// Connections in the pool. Example: `max_connections = 8` (the default).
    #[serde(default = "defaults::sql_max_connections")]
    pub max_connections: u32,
    /// The most writes group-committed in one transaction. Example:
    /// `max_batch = 1000` (the default).
    #[serde(default = "defaults::sql_max_batch")]
    pub max_batch: usize,
    /// How long a call waits for a connection, in milliseconds, before it
    /// fails as `unavailable`. Example: `timeout_ms = 5000` (the default).
    #[serde(default = "defaults::sql_timeout_ms")]
    pub timeout_ms: u64,
    /// Run each tenant's statements as a login of its own, which the host
    /// creates (or updates) at start and grants exactly the tenant's
    /// `db_tables`, so the server enforces the grant. The login in `url`
    /// then needs to create logins and grant them (PostgreSQL: `CREATEROLE`
    /// and ownership of the granted tables; MySQL: `CREATE USER` and the
    /// granted privileges `WITH GRANT OPTION`). `false` runs every tenant as
    /// the login in `url`, held by the host's statement check alone. Example:
    /// `tenant_logins = true` (the default).
    #[serde(default = "defaults::yes")]
    pub tenant_logins: bool,
    /// The start of the name of every login the host creates for a tenant.
    /// Example: `login_prefix = "switchyard_"` (the default).
    #[serde(default = "defaults::login_prefix")]
    pub login_prefix: String,
}

impl SqlServerConfig {
    /// A server at `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            init: Vec::new(),
            max_connections: defaults::sql_max_connections(),
            max_batch: defaults::sql_max_batch(),
            timeout_ms: defaults::sql_timeout_ms(),
            tenant_logins: true,
            login_prefix: defaults::login_prefix(),
        }
    }
}

impl Default for DbBackendConfig {
    fn default() -> Self {
        Self::Sqlite { path: None, init: Vec::new() }
    }
}

/// The search backend.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SearchBackendConfig {
    /// Tantivy indexes on disk, one directory per index.
    Tantivy {
        /// The directory holding the indexes. Default `<data_dir>/search`.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// Elasticsearch, or OpenSearch (`type = "opensearch"` is the same
    /// backend): `_bulk` for writes, `query_string` for queries.
    #[serde(alias = "opensearch")]
    Elasticsearch {
        /// The server's base URL. Example: `url = "http://127.0.0.1:9200"`.
        url: String,
        /// The Basic-auth user, if the server wants one. Example: `username = "switchyard"`.
        #[serde(default)]
        username: Option<String>,
        /// The Basic-auth password. Example: `password = "secret"`.
        #[serde(default)]
        password: Option<String>,
        /// Wait until each bulk's changes are visible to search before the
        /// calls return (`refresh=wait_for`); slower. Example: `refresh = true`.
        /// Default false: visible within the index's refresh interval.
        #[serde(default)]
        refresh: bool,
        /// A request slower than this, in milliseconds, fails as `unavailable`.
        /// Example: `timeout_ms = 10000` (the default).
        #[serde(default = "defaults::search_timeout_ms")]
        timeout_ms: u64,
        /// The most index and delete calls in one `_bulk` request. Example:
        /// `max_batch = 1000` (the default).
        #[serde(default = "defaults::sql_max_batch")]
        max_batch: usize,
    },
}

impl Default for SearchBackendConfig {
    fn default() -> Self {
        Self::Tantivy { path: None }
    }
}
