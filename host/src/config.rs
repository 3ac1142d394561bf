//! The TOML configuration: sources, backends, tenants with their handlers and
//! grants, and the routes between them.
//!
//! Every table rejects unknown fields, so a typo is an error that names the
//! field rather than a setting silently ignored. Relative paths are resolved
//! against the directory of the config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema; the message names the field.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },
    /// The file parses but refers to something that does not exist, or sets
    /// something that cannot work.
    #[error("invalid config {path}: {field}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The dotted path of the field, such as `routes[2].handler`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the host keeps its state: the compiled-code cache, and the default
    /// places of the embedded database, search index and dead-letter files.
    /// Example: `data_dir = ".switchyard"` (the default).
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,

    /// Message sources by name. Example: `[sources.samples] type = "file"`.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,

    /// The backend behind each capability. Every capability has an embedded
    /// default, so this table may be left out.
    #[serde(default)]
    pub backends: BackendsConfig,

    /// Tenants by name, each with its handlers and grants.
    /// Example: `[tenants.shop.handlers.cache-update] wasm = "cache_update.wasm"`.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,

    /// Routes from (source, topic pattern) to a tenant's handler, tried in
    /// order; the first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,

    /// The admin API and the watched deploy directory. Off unless set.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
}

/// The admin API: deploys, metrics and probes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the HTTP API listens. Example: `listen = "127.0.0.1:9090"`.
    #[serde(default)]
    pub listen: Option<String>,
    /// The bearer token that deploy, list and rollback calls must carry.
    /// Without it those calls answer 401. Example: `token = "change-me"`.
    #[serde(default)]
    pub token: Option<String>,
    /// A directory watched for deploys: `<watch_dir>/<tenant>/<handler>.wasm`
    /// is deployed whenever it changes. Example: `watch_dir = "deploy"`.
    #[serde(default)]
    pub watch_dir: Option<PathBuf>,
}

/// One message source, chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Reads JSON lines from a file: one message per line,
    /// `{"topic": "...", "payload": {...}, "key": "...", "headers": {...}, "id": "..."}`.
    /// Progress is checkpointed beside the file, so a restart resumes after
    /// the last settled line.
    File {
        /// The JSON-lines file. Example: `path = "messages.jsonl"`.
        path: PathBuf,
        /// Start from the first line even if a checkpoint exists (replay).
        /// Example: `replay = true`. Default false.
        #[serde(default)]
        replay: bool,
        /// Keep reading lines appended after the end, like `tail -f`.
        /// Default false: the source ends at the end of the file.
        #[serde(default)]
        follow: bool,
        /// Where dead-lettered messages are appended as JSON lines. Default
        /// `<data_dir>/dead-letter/<source>.jsonl`.
        #[serde(default)]
        dead_letter: Option<PathBuf>,
    },
    /// Accepts messages over HTTP: `POST /topics/<topic>` with the payload as
    /// the body. The response waits until the message is settled: 200 when
    /// handled, 422 when dead-lettered.
    Http {
        /// The address to listen on. Example: `listen = "127.0.0.1:8080"`.
        listen: String,
        /// Where dead-lettered messages are appended as JSON lines. Default
        /// `<data_dir>/dead-letter/<source>.jsonl`.
        #[serde(default)]
        dead_letter: Option<PathBuf>,
    },
    /// Consumes RabbitMQ queues; see [`AmqpConfig`](crate::sources::amqp::AmqpConfig).
    Amqp(crate::sources::amqp::AmqpConfig),
    /// Subscribes to core NATS subjects; see [`NatsConfig`](crate::sources::nats::NatsConfig).
    Nats(crate::sources::nats::NatsConfig),
    /// Reads a JetStream durable pull consumer; see
    /// [`JetStreamConfig`](crate::sources::nats::JetStreamConfig).
    JetStream(crate::sources::nats::JetStreamConfig),
    /// Reads Redis streams in a consumer group; see
    /// [`RedisStreamsConfig`](crate::sources::redis_streams::RedisStreamsConfig).
    Redis(crate::sources::redis_streams::RedisStreamsConfig),
    /// Reads Kafka topics in a consumer group; see
    /// [`KafkaConfig`](crate::sources::kafka::KafkaConfig).
    Kafka(crate::sources::kafka::KafkaConfig),
}

/// Which backend serves each capability.
#[derive(Debug, Clone, Default, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
    Postgres {
        /// The server. Example: `url = "postgres://app:secret@127.0.0.1:5432/shop"`.
        url: String,
        /// Statements run once at start. Example:
        /// `init = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)"]`.
        #[serde(default)]
        init: Vec<String>,
        /// Connections in the pool. Example: `max_connections = 8` (the default).
        #[serde(default = "defaults::sql_max_connections")]
        max_connections: u32,
        /// The most writes group-committed in one transaction. Example:
        /// `max_batch = 1000` (the default).
        #[serde(default = "defaults::sql_max_batch")]
        max_batch: usize,
        /// How long a call waits for a connection, in milliseconds, before it
        /// fails as `unavailable`. Example: `timeout_ms = 5000` (the default).
        #[serde(default = "defaults::sql_timeout_ms")]
        timeout_ms: u64,
    },
    /// MySQL or MariaDB. Parameters bind to `?`. Sessions run in UTC.
    Mysql {
        /// The server. Example: `url = "mysql://app:secret@127.0.0.1:3306/shop"`.
        url: String,
        /// Statements run once at start. Example:
        /// `init = ["CREATE TABLE IF NOT EXISTS orders (id VARCHAR(64) PRIMARY KEY)"]`.
        #[serde(default)]
        init: Vec<String>,
        /// Connections in the pool. Example: `max_connections = 8` (the default).
        #[serde(default = "defaults::sql_max_connections")]
        max_connections: u32,
        /// The most writes group-committed in one transaction. Example:
        /// `max_batch = 1000` (the default).
        #[serde(default = "defaults::sql_max_batch")]
        max_batch: usize,
        /// How long a call waits for a connection, in milliseconds, before it
        /// fails as `unavailable`. Example: `timeout_ms = 5000` (the default).
        #[serde(default = "defaults::sql_timeout_ms")]
        timeout_ms: u64,
    },
}

impl Default for DbBackendConfig {
    fn default() -> Self {
        Self::Sqlite { path: None, init: Vec::new() }
    }
}

/// The search backend.
#[derive(Debug, Clone, Deserialize)]
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

/// A tenant: a team or customer whose handlers share grants.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// What the tenant's handlers may touch. Default: nothing.
    #[serde(default)]
    pub grants: Grants,
    /// Limits on everything the tenant runs. Default: none beyond each
    /// handler's own limits.
    #[serde(default)]
    pub quotas: Quotas,
    /// The tenant's handlers by name.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerConfig>,
}

/// What a tenant's handlers may reach through their capabilities. Anything
/// not granted is refused with `denied`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Cache keys must start with one of these. Example: `cache_prefixes = ["product:"]`.
    #[serde(default)]
    pub cache_prefixes: Vec<String>,
    /// Tables the handler may read and write. `"*"` allows every table.
    /// Example: `db_tables = ["orders"]`.
    #[serde(default)]
    pub db_tables: Vec<String>,
    /// Search index names must start with one of these. Example: `search_prefixes = ["orders"]`.
    #[serde(default)]
    pub search_prefixes: Vec<String>,
    /// Destinations the handler may publish to; a trailing `*` matches any
    /// suffix. Replies to the message's own `reply-to` are always allowed.
    /// Example: `publish = ["order.*"]`.
    #[serde(default)]
    pub publish: Vec<String>,
}

/// A tenant's quotas. The resource limits cap every handler's and route's
/// own limits; the flow limits apply across all the tenant's routes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// The most linear memory any invocation may use, in MiB. Example: `memory_mib = 32`.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// The longest any invocation may run, in milliseconds. Example: `timeout_ms = 1000`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The most fuel any invocation may use. Example: `fuel = 50000000`.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Invocations running at once across the tenant's routes. Example: `max_in_flight = 8`.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Invocations started per second across the tenant's routes, with a
    /// burst of one second's worth. Example: `rate_per_sec = 500.0`.
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
}

impl Quotas {
    /// `limits`, capped by these quotas.
    pub fn cap(&self, limits: Limits) -> Limits {
        let min = |a: u64, b: Option<u64>| b.map_or(a, |b| a.min(b));
        Limits {
            memory_mib: min(limits.memory_mib, self.memory_mib),
            timeout_ms: min(limits.timeout_ms, self.timeout_ms),
            fuel: match (limits.fuel, self.fuel) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// One handler: a component and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The component file. Example: `wasm = "plugins/dist/cache_update.wasm"`.
    pub wasm: PathBuf,
    /// Resource limits for each invocation.
    #[serde(default)]
    pub limits: Limits,
}

/// Resource limits applied to every invocation of a handler.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory an instance may grow to, in MiB. Example: `memory_mib = 64` (the default).
    #[serde(default = "defaults::memory_mib")]
    pub memory_mib: u64,
    /// Wall time for one invocation, including capability calls, in
    /// milliseconds. Example: `timeout_ms = 5000` (the default).
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// WebAssembly fuel for one invocation, a deterministic bound on work.
    /// Unset means no fuel limit. Example: `fuel = 100000000`.
    #[serde(default)]
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory_mib: defaults::memory_mib(), timeout_ms: defaults::timeout_ms(), fuel: None }
    }
}

/// A route: which messages go to which handler, and how failures are treated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The source name, or `local` for messages handlers publish.
    /// Example: `source = "samples"`.
    pub source: String,
    /// The topic pattern: exact, or ending in `*` to match any suffix, or `*`
    /// for every topic. Example: `topic = "product.*"`.
    pub topic: String,
    /// The tenant that owns the handler. Example: `tenant = "shop"`.
    pub tenant: String,
    /// The handler, by its name in the tenant. Example: `handler = "cache-update"`.
    pub handler: String,
    /// How many messages of this route run at once. Example: `concurrency = 16` (the default).
    #[serde(default = "defaults::concurrency")]
    pub concurrency: usize,
    /// Keep messages with the same key in order, one at a time. Messages
    /// without a key are not ordered. Default true.
    #[serde(default = "defaults::yes")]
    pub ordered: bool,
    /// Deliveries before a failing message is dead-lettered. Example:
    /// `max_attempts = 5` (the default).
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// The first retry delay in milliseconds; each later retry doubles it, up
    /// to `retry_max_ms`. A handler's own requested delay is used when longer.
    /// Example: `retry_base_ms = 100` (the default).
    #[serde(default = "defaults::retry_base_ms")]
    pub retry_base_ms: u64,
    /// The longest retry delay in milliseconds. Example: `retry_max_ms = 60000` (the default).
    #[serde(default = "defaults::retry_max_ms")]
    pub retry_max_ms: u64,
    /// Messages larger than this many bytes are dead-lettered without running
    /// the handler. Example: `max_message_bytes = 1048576` (the default).
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    /// Limits for this route's invocations, replacing the handler's own.
    /// Example: `limits = { memory_mib = 16, timeout_ms = 200 }`.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// Run each invocation's db writes in one SQL transaction that also
    /// records the message in the `switchyard_inbox` table and what the
    /// handler published in `switchyard_outbox`; a relay publishes the outbox
    /// after commit. A redelivered message that already committed is acked
    /// without running again, so its effects apply exactly once. Needs the
    /// `postgres` or `mysql` db backend. Example: `transactional = true`
    /// (default false).
    #[serde(default)]
    pub transactional: bool,
}

mod defaults {
    use std::path::PathBuf;

    pub fn data_dir() -> PathBuf {
        PathBuf::from(".switchyard")
    }
    pub fn cache_max_entries() -> usize {
        1_000_000
    }
    pub fn backend_timeout_ms() -> u64 {
        2_000
    }
    pub fn sql_max_connections() -> u32 {
        8
    }
    pub fn sql_max_batch() -> usize {
        1_000
    }
    pub fn sql_timeout_ms() -> u64 {
        5_000
    }
    pub fn search_timeout_ms() -> u64 {
        10_000
    }
    pub fn memory_mib() -> u64 {
        64
    }
    pub fn timeout_ms() -> u64 {
        5_000
    }
    pub fn concurrency() -> usize {
        16
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_attempts() -> u32 {
        5
    }
    pub fn retry_base_ms() -> u64 {
        100
    }
    pub fn retry_max_ms() -> u64 {
        60_000
    }
    pub fn max_message_bytes() -> usize {
        1 << 20
    }
}

/// The largest memory limit a handler may ask for, in MiB. The pooling
/// allocator reserves address space for this much per instance slot.
pub const MAX_MEMORY_MIB: u64 = 4096;

impl Config {
    /// Read, parse and check a config file. Relative paths in it become
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config = Self::parse(path, &text)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.resolve_paths(&base);
        Ok(config)
    }

    /// Parse and check config text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |field: String, message: String| ConfigError::Invalid { path: path.to_path_buf(), field, message };
        for (name, source) in &self.sources {
            if name == "local" {
                return Err(invalid(
                    format!("sources.{name}"),
                    "the name `local` is reserved for the loopback source".into(),
                ));
            }
            if let SourceConfig::Http { listen, .. } = source {
                listen.parse::<std::net::SocketAddr>().map_err(|e| {
                    invalid(format!("sources.{name}.listen"), format!("{listen:?} is not an address: {e}"))
                })?;
            }
        }
        let check_limits = |field: String, limits: &Limits| {
            if limits.memory_mib == 0 || limits.memory_mib > MAX_MEMORY_MIB {
                return Err(invalid(format!("{field}.memory_mib"), format!("must be between 1 and {MAX_MEMORY_MIB}")));
            }
            if limits.timeout_ms == 0 {
                return Err(invalid(format!("{field}.timeout_ms"), "must be at least 1".into()));
            }
            Ok(())
        };
        for (tenant, t) in &self.tenants {
            for (handler, h) in &t.handlers {
                check_limits(format!("tenants.{tenant}.handlers.{handler}.limits"), &h.limits)?;
            }
            let q = &t.quotas;
            let field = |f: &str| format!("tenants.{tenant}.quotas.{f}");
            if q.max_in_flight == Some(0) {
                return Err(invalid(field("max_in_flight"), "must be at least 1".into()));
            }
            if q.rate_per_sec.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return Err(invalid(field("rate_per_sec"), "must be a positive number".into()));
            }
            if q.memory_mib == Some(0) || q.timeout_ms == Some(0) {
                return Err(invalid(field("memory_mib"), "memory_mib and timeout_ms must be at least 1".into()));
            }
        }
        if let Some(admin) = &self.admin
            && let Some(listen) = &admin.listen
        {
            listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("admin.listen".into(), format!("{listen:?} is not an address: {e}")))?;
            if admin.token.as_deref().is_none_or(str::is_empty) {
                return Err(invalid("admin.token".into(), "the admin API needs a token to authorize deploys".into()));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let field = |f: &str| format!("routes[{i}].{f}");
            if route.source != "local" && !self.sources.contains_key(&route.source) {
                return Err(invalid(field("source"), format!("no source named {:?}", route.source)));
            }
            let Some(tenant) = self.tenants.get(&route.tenant) else {
                return Err(invalid(field("tenant"), format!("no tenant named {:?}", route.tenant)));
            };
            if !tenant.handlers.contains_key(&route.handler) {
                return Err(invalid(
                    field("handler"),
                    format!("tenant {:?} has no handler named {:?}", route.tenant, route.handler),
                ));
            }
            if route.concurrency == 0 {
                return Err(invalid(field("concurrency"), "must be at least 1".into()));
            }
            if route.max_attempts == 0 {
                return Err(invalid(field("max_attempts"), "must be at least 1".into()));
            }
            if let Some(limits) = &route.limits {
                check_limits(field("limits"), limits)?;
            }
            if route.transactional && matches!(self.backends.db, DbBackendConfig::Sqlite { .. }) {
                return Err(invalid(
                    field("transactional"),
                    "a transactional route needs the postgres or mysql db backend".into(),
                ));
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.data_dir);
        for source in self.sources.values_mut() {
            match source {
                SourceConfig::File { path, dead_letter, .. } => {
                    join(path);
                    dead_letter.iter_mut().for_each(join);
                }
                SourceConfig::Http { dead_letter, .. } => dead_letter.iter_mut().for_each(join),
                _ => {}
            }
        }
        if let Some(dir) = self.admin.as_mut().and_then(|a| a.watch_dir.as_mut()) {
            join(dir);
        }
        if let DbBackendConfig::Sqlite { path, .. } = &mut self.backends.db {
            path.iter_mut().for_each(join);
        }
        if let SearchBackendConfig::Tantivy { path } = &mut self.backends.search {
            path.iter_mut().for_each(join);
        }
        for tenant in self.tenants.values_mut() {
            for handler in tenant.handlers.values_mut() {
                join(&mut handler.wasm);
            }
        }
    }

    /// The dead-letter file of an embedded source.
    pub fn dead_letter_path(&self, source: &str) -> PathBuf {
        let configured = match self.sources.get(source) {
            Some(SourceConfig::File { dead_letter, .. } | SourceConfig::Http { dead_letter, .. }) => {
                dead_letter.clone()
            }
            _ => None,
        };
        configured.unwrap_or_else(|| self.data_dir.join("dead-letter").join(format!("{source}.jsonl")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [sources.in]
        type = "file"
        path = "m.jsonl"

        [tenants.shop.handlers.h]
        wasm = "h.wasm"

        [[routes]]
        source = "in"
        topic = "product.*"
        tenant = "shop"
        handler = "h"
    "#;

    #[test]
    fn parses_and_applies_defaults() {
        let c = Config::parse(Path::new("c.toml"), GOOD).unwrap();
        assert_eq!(c.routes[0].max_attempts, 5);
        assert_eq!(c.tenants["shop"].handlers["h"].limits, Limits::default());
        assert!(matches!(c.backends.cache, CacheBackendConfig::Memory { .. }));
    }

    #[test]
    fn unknown_field_is_named() {
        let text = GOOD.replace("handler = \"h\"", "handler = \"h\"\nconcurency = 3");
        let err = Config::parse(Path::new("c.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("c.toml"), "{err}");
        assert!(err.contains("unknown field `concurency`"), "{err}");
    }

    #[test]
    fn dangling_handler_is_named() {
        let text = GOOD.replace("handler = \"h\"", "handler = \"nope\"");
        let err = Config::parse(Path::new("c.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("routes[0].handler"), "{err}");
        assert!(err.contains("\"nope\""), "{err}");
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, GOOD).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.tenants["shop"].handlers["h"].wasm, dir.path().join("h.wasm"));
        assert_eq!(c.data_dir, dir.path().join(".switchyard"));
    }
}
