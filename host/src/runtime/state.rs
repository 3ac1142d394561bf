//! What one invocation's `Store` carries: a WASI context with no ambient
//! authority, the resource limiter, and the capability context, which also
//! holds what the handler asked to publish.

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::context::CapabilityCtx;

/// The data of one invocation's store. Nothing in it outlives the message.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Linear memory the instance may grow to, in bytes.
    memory_limit: usize,
    /// Set when the limiter refused a memory growth, so a resulting trap is
    /// reported as the memory limit rather than a generic trap.
    pub(crate) memory_exceeded: bool,
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
