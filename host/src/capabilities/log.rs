//! The `log` capability: a handler's log lines go into the host's log, tagged
//! with the tenant, handler and message.

use crate::runtime::bindings::log::{self, Level};
use crate::runtime::state::HostState;

/// Longer lines are cut, so a handler cannot flood the log with one call.
const MAX_LINE: usize = 4096;

impl log::Host for HostState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        let c = &self.log_context;
        let (tenant, handler, id) = (&*c.tenant, &*c.handler, c.message_id.as_str());
        match level {
            Level::Trace => tracing::trace!(target: "handler", tenant, handler, message_id = id, "{message}"),
            Level::Debug => tracing::debug!(target: "handler", tenant, handler, message_id = id, "{message}"),
            Level::Info => tracing::info!(target: "handler", tenant, handler, message_id = id, "{message}"),
            Level::Warn => tracing::warn!(target: "handler", tenant, handler, message_id = id, "{message}"),
            Level::Error => tracing::error!(target: "handler", tenant, handler, message_id = id, "{message}"),
        }
        Ok(())
    }
}
