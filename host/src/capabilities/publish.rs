//! The `publish` capability. Publishes are held in the invocation's outbox
//! and sent only after the handler returns ok; compensations are held until
//! the message finally fails. The [`Publisher`] trait sends them.

use std::collections::HashMap;
use std::sync::Arc;

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

/// Sends each published message through the publisher its destination
/// names: `<source>:<topic>` goes out through the broker connection of the
/// configured source `<source>` (a RabbitMQ exchange or queue, a NATS subject,
/// a Kafka topic, a Redis stream); a destination without a known source
/// prefix loops back into this host as a `local` message.
pub struct PublishRouter {
    local: Arc<dyn Publisher>,
    brokers: HashMap<String, Arc<dyn Publisher>>,
}

impl PublishRouter {
    /// A router that sends everything to `local` until brokers are added.
    pub fn new(local: Arc<dyn Publisher>) -> Self {
        Self { local, brokers: HashMap::new() }
    }

    /// Send destinations prefixed `<source>:` through `publisher`.
    pub fn add_broker(&mut self, source: &str, publisher: Arc<dyn Publisher>) {
        self.brokers.insert(source.to_string(), publisher);
    }

    /// The publisher for `destination`, and the destination as that
    /// publisher names it (without the source prefix).
    fn resolve<'d>(&self, destination: &'d str) -> (&Arc<dyn Publisher>, &'d str) {
        if let Some((source, rest)) = destination.split_once(':')
            && let Some(publisher) = self.brokers.get(source)
        {
            return (publisher, rest);
        }
        (&self.local, destination)
    }
}

#[async_trait]
impl Publisher for PublishRouter {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError> {
        // Group by publisher, keeping each group's order, and send each group
        // as one batch.
        let mut groups: Vec<(usize, &Arc<dyn Publisher>, Vec<Outgoing>)> = Vec::new();
        for mut message in messages {
            let (publisher, destination) = self.resolve(&message.destination);
            message.destination = destination.to_string();
            let id = Arc::as_ptr(publisher) as *const () as usize;
            match groups.iter_mut().find(|(p, _, _)| *p == id) {
                Some((_, _, batch)) => batch.push(message),
                None => groups.push((id, publisher, vec![message])),
            }
        }
        for (_, publisher, batch) in groups {
            publisher.publish(batch).await?;
        }
        Ok(())
    }
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
