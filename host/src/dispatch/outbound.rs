//! Where a handler's published messages go: `<source>:<topic>` out through
//! the broker connection of that source, anything else back into this host
//! through the local loopback.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::contract::bindings::publish::Outgoing;
use crate::contract::errors::BackendError;
use crate::contract::publish::Publisher;

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
