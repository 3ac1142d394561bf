//! What an instance's `Store` carries: a WASI context with no ambient
//! authority, the resource limiter, and the capability context, which also
//! holds what the handler asked to publish.

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::context::CapabilityCtx;

/// The data of one instance's store. The capability context is the
/// message's own: a reused instance gets a new one for each message.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Linear memory the instance may grow to, in bytes.
    memory_limit: usize,
    /// Set when the limiter refused a memory growth, so a resulting trap is
    /// reported as the memory limit rather than a generic trap.
    pub(crate) memory_exceeded: bool,
    /// The instance's linear memory, in bytes, summed over its memories: the
    /// high-water mark of a reused instance is checked against it.
    pub(crate) memory_bytes: usize,
    /// What the handler's capability calls run against, and what they left.
    pub caps: CapabilityCtx,
}

/// The largest table a handler may grow, in elements.
const TABLE_ELEMENTS_LIMIT: usize = 100_000;

impl HostState {
    /// A fresh state for one invocation.
    pub fn new(caps: CapabilityCtx, memory_limit: usize) -> Self {
        Self {
            // No preopened directories, no environment, no arguments, no
            // sockets: the handler's only way out is its capabilities.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            memory_limit,
            memory_exceeded: false,
            memory_bytes: 0,
            caps,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            return Ok(false);
        }
        // Called with `current` 0 when a memory is created, so this sums
        // every memory's size.
        self.memory_bytes = self.memory_bytes.saturating_add(desired.saturating_sub(current));
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_LIMIT)
    }
}
