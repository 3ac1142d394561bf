//! The `publish` capability. Publishes are held in the invocation's outbox
//! and sent by the dispatcher only after the handler returns ok;
//! compensations are held until the message finally fails.

use crate::contract::bindings::publish::{self, Outgoing};
use crate::contract::errors::CapabilityFailure;

use super::context::{CapabilityCtx, Effect, check_size, printable};

impl CapabilityCtx {
    fn check_destination(&self, message: &Outgoing) -> Result<(), CapabilityFailure> {
        check_size("published payload", message.payload.len())?;
        let d = message.destination.as_str();
        if self.reply_to.as_deref() == Some(d) || destination_granted(&self.access.grants.publish, d) {
            return Ok(());
        }
        Err(CapabilityFailure::Denied(format!(
            "destination {d:?} is not among the tenant's publish grants {:?}",
            self.access.grants.publish
        )))
    }
}

/// Whether a grant list allows `destination`: an exact entry, or one ending in
/// `*` that matches any suffix.
pub fn destination_granted(grants: &[String], destination: &str) -> bool {
    grants.iter().any(|g| match g.strip_suffix('*') {
        Some(prefix) => destination.starts_with(prefix),
        None => g == destination,
    })
}

impl publish::Host for CapabilityCtx {
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
