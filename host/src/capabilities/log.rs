//! The `log` capability: a handler's log lines go into the host's log, tagged
//! with the tenant, handler and message.

use crate::contract::bindings::log::{self, Level};
use crate::contract::util::truncate;

use super::context::CapabilityCtx;

/// Longer lines are cut, so a handler cannot flood the log with one call.
const MAX_LINE: usize = 4096;

impl log::Host for CapabilityCtx {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let message = truncate(message, MAX_LINE);
        let limit = self.access.output.max_log_bytes;
        if self.logged_bytes + message.len() > limit {
            if self.log_lines_dropped == 0 {
                let c = &self.log;
                tracing::warn!(
                    tenant = %c.tenant,
                    handler = %c.handler,
                    message_id = %c.message_id,
                    max_log_bytes = limit,
                    "the handler logged past its max_log_bytes for this message; its further lines are dropped and counted"
                );
            }
            self.log_lines_dropped += 1;
            return Ok(());
        }
        self.logged_bytes += message.len();
        let c = &self.log;
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
