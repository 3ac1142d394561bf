//! The `settings` capability: the handler's own settings from its config
//! (`settings = { ... }`), so one component runs against different services
//! without a rebuild. It reaches nothing outside the host.

use crate::contract::bindings::settings;

use super::context::CapabilityCtx;

impl settings::Host for CapabilityCtx {
    async fn get(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.settings.get(&name).cloned())
    }
}
