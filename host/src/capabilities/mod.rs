//! The capabilities a handler may call: one file per WIT interface, each
//! holding the host implementation and the small trait its backends implement.
//! Every call is checked against the tenant's grants before it reaches a backend.

pub mod backends;
pub mod cache;
pub mod db;
pub mod log;
pub mod publish;
pub mod search;

use std::sync::Arc;

use serde::Serialize;

use crate::config::Grants;
use crate::runtime::bindings::{CapabilityError, types};
use crate::runtime::state::HostState;
pub use backends::BackendError;

/// The largest cache value, search document or published payload a handler
/// may pass in one call.
pub const MAX_VALUE_BYTES: usize = 16 << 20;

/// A failed capability call. The first four reach the guest as its
/// `capability-error`; `Trap` ends the instance.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityFailure {
    /// Outside the tenant's grants.
    #[error("denied: {0}")]
    Denied(String),
    /// The backend is down or slow.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call is malformed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// An argument is over a size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A host failure: the instance cannot go on.
    #[error("host failure: {0}")]
    Trap(String),
}

impl From<BackendError> for CapabilityFailure {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(m) => Self::Unavailable(m),
            BackendError::Invalid(m) => Self::Invalid(m),
            BackendError::TooLarge(m) => Self::TooLarge(m),
        }
    }
}

impl types::Host for HostState {
    fn convert_capability_error(&mut self, err: CapabilityFailure) -> wasmtime::Result<CapabilityError> {
        if !matches!(err, CapabilityFailure::Trap(_)) {
            tracing::debug!(
                tenant = %self.log_context.tenant,
                handler = %self.log_context.handler,
                message_id = %self.log_context.message_id,
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

/// The backends behind every capability, shared by all tenants.
pub struct Backends {
    /// The cache backend.
    pub cache: Arc<dyn cache::CacheBackend>,
    /// The database backend.
    pub db: Arc<dyn db::DbBackend>,
    /// The search backend.
    pub search: Arc<dyn search::SearchBackend>,
}

/// What one tenant's handlers can reach: the shared backends, seen through the
/// tenant's grants.
pub struct Capabilities {
    /// The backends.
    pub backends: Arc<Backends>,
    /// The tenant's grants.
    pub grants: Grants,
}

impl Capabilities {
    /// Every capability granted without limit; for `switchyard invoke` and tests.
    pub fn unrestricted(backends: Arc<Backends>) -> Self {
        let all = vec![String::new()];
        Self {
            backends,
            grants: Grants {
                cache_prefixes: all.clone(),
                db_tables: vec!["*".into()],
                search_prefixes: all,
                publish: vec!["*".into()],
            },
        }
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
