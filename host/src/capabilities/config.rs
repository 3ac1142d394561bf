//! The `config` capability: the handler's configuration variables, the
//! tenant's with the handler's own over them, so one component runs against
//! different services without a rebuild. It reaches nothing outside the host.

use crate::contract::bindings::config;

use super::context::CapabilityCtx;

impl config::Host for CapabilityCtx {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.variables.get(&key).cloned())
    }
}
