//! The TOML configuration: sources, backends, tenants with their handlers and
//! grants, and the routes between them.
//!
//! Every table rejects unknown fields, so a typo is an error that names the
//! field rather than a setting silently ignored. Relative paths are resolved
//! against the directory of the config file.

mod backends;
mod defaults;
pub mod reference;
mod routes;
mod secrets;
mod sources;
mod tenants;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

pub use backends::{BackendsConfig, CacheBackendConfig, DbBackendConfig, SearchBackendConfig, SqlServerConfig};
pub use routes::{Instances, RouteConfig};
pub use sources::{
    AmqpBinding, AmqpConfig, AmqpExchange, AmqpQueueMode, FileConfig, HttpConfig, JetStreamConfig, KafkaConfig,
    NatsConfig, RedisStreamsConfig, RocketMqConfig, SourceConfig, StartFrom,
};
pub use tenants::{
    Grants, HandlerConfig, HostMatch, HostPattern, Limits, MAX_MEMORY_MIB, Quotas, TableGrant, TenantConfig,
};

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
#[derive(Debug, Clone, Deserialize, JsonSchema)]
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

    /// How long, after a stop signal, messages in flight may take to finish
    /// and settle, in milliseconds. What is still unsettled then is left to
    /// its broker, which delivers it again, and the host exits. Example:
    /// `shutdown_grace_ms = 30000` (the default).
    #[serde(default = "defaults::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,

    /// The values the config took from the environment or from files
    /// (`${NAME}`, `file:<path>`), for the binary to keep out of what it
    /// prints and logs. Not a config field.
    #[serde(skip)]
    pub secrets: Vec<String>,
}

/// The admin API: deploys, metrics and probes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
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

    /// Parse and check config text; `path` is only used in errors, and its
    /// directory is where `file:` secrets are found from.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() };
        // Straight from the text where nothing is to be replaced, so that
        // errors keep their line and column.
        let config =
            if secrets::mentions(text) {
                let mut tree: toml::Value = toml::from_str(text).map_err(parse_error)?;
                let base = path.parent().unwrap_or(Path::new("."));
                let secrets = secrets::expand(&mut tree, "", base)
                    .map_err(|(field, message)| ConfigError::Invalid { path: path.to_path_buf(), field, message })?;
                let mut config = Config::deserialize(tree).map_err(parse_error)?;
                config.secrets = secrets.into_iter().filter(|s| !s.is_empty()).collect();
                config
            } else {
                toml::from_str(text).map_err(parse_error)?
            };
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
            if let SourceConfig::Http(HttpConfig { listen, .. }) = source {
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
            t.grants
                .validate()
                .map_err(|(grant, message)| invalid(format!("tenants.{tenant}.grants.{grant}"), message))?;
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
            if let Some(instances) = &route.instances {
                if instances.reuse == 0 {
                    return Err(invalid(field("instances.reuse"), "must be at least 1".into()));
                }
                if instances.idle_ms == 0 {
                    return Err(invalid(field("instances.idle_ms"), "must be at least 1".into()));
                }
                let handler_limits = tenant.handlers.get(&route.handler).map(|h| h.limits).unwrap_or_default();
                let memory = route.limits.unwrap_or(handler_limits).memory_mib;
                if instances.max_memory_mib.is_some_and(|m| m == 0 || m > memory) {
                    return Err(invalid(
                        field("instances.max_memory_mib"),
                        format!("must be between 1 and the route's memory limit of {memory} MiB"),
                    ));
                }
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
                SourceConfig::File(FileConfig { path, dead_letter, .. }) => {
                    join(path);
                    dead_letter.iter_mut().for_each(join);
                }
                SourceConfig::Http(HttpConfig { dead_letter, .. }) => dead_letter.iter_mut().for_each(join),
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

    #[test]
    fn config_rejects_unknown_fields_and_fills_defaults() {
        let c: KafkaConfig = toml::from_str("brokers = \"127.0.0.1:9092\"\ntopics = [\"orders\"]").unwrap();
        assert_eq!(c.group, "switchyard");
        assert_eq!(c.dead_letter_topic("orders"), "orders.dead-letter");
        assert_eq!(c.start_from, StartFrom::Earliest);
        let bad = toml::from_str::<KafkaConfig>("brokers = \"x\"\ntopics = []\ngroup_id = \"g\"");
        assert!(bad.unwrap_err().to_string().contains("group_id"));
    }
}
