//! Routes: which messages go to which handler, and how failures are treated.

use schemars::JsonSchema;
use serde::Deserialize;

use super::defaults;
use super::tenants::Limits;

/// A route: which messages go to which handler, and how failures are treated.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
    /// Opt in to bounded instance reuse: one instance serves up to `reuse`
    /// messages of this route, one at a time, instead of a fresh instance per
    /// message. A handler may then see globals an earlier message left; it
    /// must not rely on them. Example: `instances = { reuse = 128 }` (unset:
    /// a fresh instance per message).
    #[serde(default)]
    pub instances: Option<Instances>,
}

/// Bounded instance reuse on a route. An instance is retired, never to serve
/// again, after `reuse` messages, after `idle_ms` without one, once its
/// linear memory has grown past `max_memory_mib`, and after any message that
/// did not return ok (a trap, a timeout, a memory or fuel overrun, a retry or
/// a reject).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Instances {
    /// Messages one instance serves before it is retired; 1 means a fresh
    /// instance per message. Example: `reuse = 128`.
    pub reuse: u32,
    /// Milliseconds an instance may wait for its next message before it is
    /// retired. Example: `idle_ms = 1000` (the default).
    #[serde(default = "defaults::idle_ms")]
    pub idle_ms: u64,
    /// The memory high-water mark, in MiB: an instance whose linear memory
    /// has grown past it is retired after its message. Unset: half the
    /// route's memory limit. Example: `max_memory_mib = 32`.
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
}
