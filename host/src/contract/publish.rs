//! The port every outgoing path implements: the broker publishers of the
//! sources, the local loopback, and the router that picks between them.

use async_trait::async_trait;

use super::bindings::publish::Outgoing;
use super::errors::BackendError;

/// Sends published messages to their destinations.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Send every message; returns once they are accepted durably (or, for
    /// the local loopback, queued into the router).
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError>;
}
