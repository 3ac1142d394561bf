//! The `publish` capability. Publishes are held in the invocation's outbox
//! and sent only after the handler returns ok; compensations are held until
//! the message finally fails. The [`Publisher`] trait sends them.

use async_trait::async_trait;

use super::{BackendError, CapabilityFailure, Effect, check_size, printable};
use crate::runtime::bindings::publish::{self, Outgoing};
use crate::runtime::state::HostState;

/// Sends published messages to their destinations.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Send every message; returns once they are accepted durably (or, for
    /// the local loopback, queued into the router).
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError>;
}

impl HostState {
    fn check_destination(&self, message: &Outgoing) -> Result<(), CapabilityFailure> {
        check_size("published payload", message.payload.len())?;
        let d = message.destination.as_str();
        if self.reply_to.as_deref() == Some(d) || destination_granted(&self.caps.grants.publish, d) {
            return Ok(());
        }
        Err(CapabilityFailure::Denied(format!(
            "destination {d:?} is not among the tenant's publish grants {:?}",
            self.caps.grants.publish
        )))
    }
}

/// Whether a grant list allows `destination`: an exact entry, or one ending in
/// `*` that matches any suffix.
pub(crate) fn destination_granted(grants: &[String], destination: &str) -> bool {
    grants.iter().any(|g| match g.strip_suffix('*') {
        Some(prefix) => destination.starts_with(prefix),
        None => g == destination,
    })
}

impl publish::Host for HostState {
    async fn publish(&mut self, message: Outgoing) -> Result<(), CapabilityFailure> {
        self.check_destination(&message)?;
        self.record(|| Effect::Publish {
            destination: message.destination.clone(),
            payload: printable(&message.payload),
        });
        self.outbox.push(message);
        Ok(())
    }

    async fn compensate_on_failure(&mut self, message: Outgoing) -> Result<(), CapabilityFailure> {
        self.check_destination(&message)?;
        self.record(|| Effect::Compensate {
            destination: message.destination.clone(),
            payload: printable(&message.payload),
        });
        self.compensations.push(message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::destination_granted;

    #[test]
    fn grants_match_exactly_or_by_prefix() {
        let grants = vec!["order.*".to_string(), "audit".to_string()];
        assert!(destination_granted(&grants, "order.created"));
        assert!(destination_granted(&grants, "audit"));
        assert!(!destination_granted(&grants, "audit.x"));
        assert!(!destination_granted(&grants, "payments"));
    }
}
