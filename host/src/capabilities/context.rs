//! What a handler's capability calls run against: the shared backends seen
//! through one tenant's grants, and the state of one message (what it asked
//! to publish, its transaction, the record of its calls). The store of each
//! invocation holds one [`CapabilityCtx`]; every capability's WIT host trait
//! is implemented on it, so the runtime links them without knowing them.

use std::sync::Arc;

use serde::Serialize;

use crate::config::{Grants, HostPattern};
use crate::contract::bindings::publish::Outgoing;
use crate::contract::bindings::{CapabilityError, types};
use crate::contract::cache::CacheBackend;
use crate::contract::db::{DbBackend, DbTransaction};
use crate::contract::errors::CapabilityFailure;
use crate::contract::http::HttpClient;
use crate::contract::search::SearchBackend;

/// The largest cache value, search document or published payload a handler
/// may pass in one call.
pub const MAX_VALUE_BYTES: usize = 16 << 20;

/// The backends behind every capability, shared by all tenants.
pub struct Backends {
    /// The cache backend.
    pub cache: Arc<dyn CacheBackend>,
    /// The database backend.
    pub db: Arc<dyn DbBackend>,
    /// The search backend.
    pub search: Arc<dyn SearchBackend>,
    /// The outbound HTTP client, its connection pool shared by every tenant.
    pub http: Arc<dyn HttpClient>,
}

/// What one tenant's handlers can reach: the shared backends, seen through the
/// tenant's grants.
pub struct Capabilities {
    /// The backends.
    pub backends: Arc<Backends>,
    /// The tenant's grants.
    pub grants: Grants,
    /// `grants.allowed_hosts`, parsed once (`Grants::validate` refused any
    /// that does not parse).
    pub allowed_hosts: Vec<HostPattern>,
    /// What one message may publish and log.
    pub output: OutputLimits,
    /// The search indexes the tenant has written to since the host started,
    /// held to `output.max_indexes`.
    pub indexes: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// What one message may publish and log: the host keeps everything a
/// handler publishes until it returns, and writes every line it logs, so
/// both are bounded per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Publishes and compensations, counted together.
    pub max_publishes: usize,
    /// Their payloads, headers and keys, in bytes, summed.
    pub max_publish_bytes: usize,
    /// Bytes of log lines; lines past it are dropped and counted.
    pub max_log_bytes: usize,
    /// Search indexes the tenant may write to (per host, not per message):
    /// each open index costs the backend threads and files.
    pub max_indexes: usize,
    /// HTTP requests, redirects included.
    pub max_http_requests: usize,
    /// The largest HTTP response body, in bytes.
    pub max_http_response_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self {
            max_publishes: 1000,
            max_publish_bytes: MAX_VALUE_BYTES,
            max_log_bytes: 64 << 10,
            max_indexes: 64,
            max_http_requests: 100,
            max_http_response_bytes: 4 << 20,
        }
    }
}

/// The longest key a published message may have.
pub const MAX_KEY_BYTES: usize = 4 << 10;
/// The most bytes of headers a published message may have.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

impl Capabilities {
    /// What a tenant with `grants` reaches of `backends`, within `output`.
    pub fn new(backends: Arc<Backends>, grants: Grants, output: OutputLimits) -> Self {
        let allowed_hosts = grants.allowed_hosts.iter().filter_map(|p| HostPattern::parse(p).ok()).collect();
        Self { backends, grants, allowed_hosts, output, indexes: Default::default() }
    }

    /// Every capability granted without limit; for `switchyard invoke` and tests.
    pub fn unrestricted(backends: Arc<Backends>) -> Self {
        let all = vec![String::new()];
        let grants = Grants {
            cache_prefixes: all.clone(),
            db_tables: vec!["*".into()],
            search_prefixes: all,
            publish: vec!["*".into()],
            allowed_hosts: vec!["http://*:*".into(), "https://*:*".into()],
        };
        Self::new(backends, grants, OutputLimits { max_indexes: usize::MAX, ..OutputLimits::default() })
    }
}

/// The fields every log line a handler writes is tagged with.
#[derive(Debug, Clone, Default)]
pub struct LogContext {
    /// The tenant that owns the handler.
    pub tenant: Arc<str>,
    /// The handler's name.
    pub handler: Arc<str>,
    /// The message id.
    pub message_id: String,
}

/// The capability state of one invocation. Nothing in it outlives the message.
pub struct CapabilityCtx {
    /// The backends and the tenant's grants.
    pub(crate) access: Arc<Capabilities>,
    /// The incoming message's reply-to, which the handler may always publish to.
    pub(crate) reply_to: Option<String>,
    /// Messages to publish once the handler returns ok.
    pub outbox: Vec<Outgoing>,
    /// Messages to publish if the message finally fails.
    pub compensations: Vec<Outgoing>,
    /// The invocation's SQL transaction, on a transactional route: db calls
    /// run inside it, and the dispatcher commits it after the handler returns.
    pub transaction: Option<Box<dyn DbTransaction>>,
    /// Every capability call, when the caller asked for a record (`invoke`).
    pub effects: Option<Vec<Effect>>,
    /// Identifies the invocation in the handler's log lines.
    pub(crate) log: LogContext,
    /// Bytes published so far (payloads, headers, keys).
    pub(crate) published_bytes: usize,
    /// Bytes logged so far.
    pub(crate) logged_bytes: usize,
    /// Log lines dropped past the limit.
    pub log_lines_dropped: u64,
    /// When the handler's time is up: HTTP requests end by then.
    pub deadline: Option<std::time::Instant>,
    /// HTTP requests sent so far, redirects included.
    pub(crate) http_requests: usize,
    /// The handler's configuration variables.
    pub variables: Arc<std::collections::BTreeMap<String, String>>,
}

impl CapabilityCtx {
    /// The state of one invocation with `access`, answering `reply_to`.
    pub fn new(access: Arc<Capabilities>, reply_to: Option<String>, log: LogContext) -> Self {
        Self {
            access,
            reply_to,
            outbox: Vec::new(),
            compensations: Vec::new(),
            transaction: None,
            effects: None,
            log,
            published_bytes: 0,
            logged_bytes: 0,
            log_lines_dropped: 0,
            deadline: None,
            http_requests: 0,
            variables: Default::default(),
        }
    }

    /// Record a capability call, if a record was asked for.
    pub(crate) fn record(&mut self, effect: impl FnOnce() -> Effect) {
        if let Some(effects) = &mut self.effects {
            effects.push(effect());
        }
    }
}

impl types::Host for CapabilityCtx {
    fn convert_capability_error(&mut self, err: CapabilityFailure) -> wasmtime::Result<CapabilityError> {
        if !matches!(err, CapabilityFailure::Trap(_)) {
            tracing::debug!(
                tenant = %self.log.tenant,
                handler = %self.log.handler,
                message_id = %self.log.message_id,
                error = %err,
                "capability call failed"
            );
        }
        Ok(match err {
            CapabilityFailure::Denied(m) => CapabilityError::Denied(m),
            CapabilityFailure::Unavailable(m) => CapabilityError::Unavailable(m),
            CapabilityFailure::Invalid(m) => CapabilityError::Invalid(m),
            CapabilityFailure::TooLarge(m) => CapabilityError::TooLarge(m),
            CapabilityFailure::Trap(m) => return Err(wasmtime::Error::msg(m)),
        })
    }
}

/// One capability call, as `switchyard invoke` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "effect", rename_all = "kebab-case")]
pub enum Effect {
    /// `cache.set`.
    CacheSet {
        /// The key.
        key: String,
        /// The value, as text where it is UTF-8.
        value: String,
        /// Its time to live.
        ttl_ms: Option<u64>,
    },
    /// `cache.delete`.
    CacheDelete {
        /// The key.
        key: String,
    },
    /// `cache.increment`.
    CacheIncrement {
        /// The key.
        key: String,
        /// The amount added.
        delta: i64,
    },
    /// `db.execute`.
    DbExecute {
        /// The statement.
        sql: String,
        /// Its parameters, as JSON.
        params: Vec<serde_json::Value>,
    },
    /// `search.index-document`.
    SearchIndex {
        /// The index.
        index: String,
        /// The document id.
        id: String,
    },
    /// `search.delete-document`.
    SearchDelete {
        /// The index.
        index: String,
        /// The document id.
        id: String,
    },
    /// `http.send`, one per hop.
    Http {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The response's status.
        status: u16,
    },
    /// `publish.publish`.
    Publish {
        /// Where to.
        destination: String,
        /// The payload, as text where it is UTF-8.
        payload: String,
    },
    /// `publish.compensate-on-failure`.
    Compensate {
        /// Where to.
        destination: String,
        /// The payload, as text where it is UTF-8.
        payload: String,
    },
}

/// Bytes as text for reports: UTF-8 as is, anything else as a hex dump.
pub(crate) fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => format!("0x{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

/// Whether `name` starts with one of `prefixes`.
pub(crate) fn has_prefix(prefixes: &[String], name: &str) -> bool {
    prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

/// Refuse an argument over [`MAX_VALUE_BYTES`].
pub(crate) fn check_size(what: &str, len: usize) -> Result<(), CapabilityFailure> {
    if len > MAX_VALUE_BYTES {
        return Err(CapabilityFailure::TooLarge(format!("{what} is {len} bytes; the limit is {MAX_VALUE_BYTES}")));
    }
    Ok(())
}
