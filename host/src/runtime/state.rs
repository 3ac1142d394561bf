//! What one invocation's `Store` carries: a WASI context with no ambient
//! authority, the capability context, the resource limiter, and what the
//! handler asked to publish.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::db::DbTransaction;
use crate::capabilities::{Capabilities, Effect};
use crate::runtime::bindings::publish::Outgoing;

/// The data of one invocation's store. Nothing in it outlives the message.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Linear memory the instance may grow to, in bytes.
    memory_limit: usize,
    /// Set when the limiter refused a memory growth, so a resulting trap is
    /// reported as the memory limit rather than a generic trap.
    pub(crate) memory_exceeded: bool,
    /// The backends and the tenant's grants.
    pub(crate) caps: Arc<Capabilities>,
    /// The incoming message's reply-to, which the handler may always publish to.
    pub(crate) reply_to: Option<String>,
    /// Messages to publish once the handler returns ok.
    pub(crate) outbox: Vec<Outgoing>,
    /// Messages to publish if the message finally fails.
    pub(crate) compensations: Vec<Outgoing>,
    /// The invocation's SQL transaction, on a transactional route: db calls
    /// run inside it, and the dispatcher commits it after the handler returns.
    pub(crate) transaction: Option<Box<dyn DbTransaction>>,
    /// Every capability call, when the caller asked for a record (`invoke`).
    pub(crate) effects: Option<Vec<Effect>>,
    /// Identifies the invocation in the handler's log lines.
    pub(crate) log_context: LogContext,
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

/// The largest table a handler may grow, in elements.
const TABLE_ELEMENTS_LIMIT: usize = 100_000;

impl HostState {
    /// A fresh state for one invocation.
    pub fn new(
        caps: Arc<Capabilities>,
        memory_limit: usize,
        reply_to: Option<String>,
        log_context: LogContext,
    ) -> Self {
        Self {
            // No preopened directories, no environment, no arguments, no
            // sockets: the handler's only way out is its capabilities.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            memory_limit,
            memory_exceeded: false,
            caps,
            reply_to,
            outbox: Vec::new(),
            compensations: Vec::new(),
            transaction: None,
            effects: None,
            log_context,
        }
    }

    /// Record a capability call, if a record was asked for.
    pub(crate) fn record(&mut self, effect: impl FnOnce() -> Effect) {
        if let Some(effects) = &mut self.effects {
            effects.push(effect());
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_LIMIT)
    }
}
