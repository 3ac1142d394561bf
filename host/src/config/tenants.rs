//! Tenants: their handlers, what they are granted and what they may use.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::defaults;

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

/// The largest memory limit a handler may ask for, in MiB. The pooling
/// allocator reserves address space for this much per instance slot.
pub const MAX_MEMORY_MIB: u64 = 4096;
