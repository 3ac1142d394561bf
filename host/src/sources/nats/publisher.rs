//! The publisher of the `nats` and `jetstream` sources.

use async_nats::{Subject, jetstream};
use async_trait::async_trait;

use super::client::{connect, header_map};
use crate::contract::bindings::publish::Outgoing;
use crate::contract::errors::BackendError;
use crate::contract::headers;
use crate::contract::publish::Publisher;
use crate::contract::util::redact;

/// Publishes to NATS over its own connection, opened on first use. For a
/// `jetstream` source each publish waits for the stream's ack; for a `nats`
/// source it is flushed to the server. Replies (`_INBOX.` subjects) are
/// always core publishes.
pub struct NatsPublisher {
    name: String,
    url: String,
    jetstream: bool,
    client: tokio::sync::OnceCell<async_nats::Client>,
}

impl NatsPublisher {
    pub fn new(name: &str, url: &str, jetstream: bool) -> Self {
        Self { name: name.to_string(), url: url.to_string(), jetstream, client: tokio::sync::OnceCell::new() }
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable(format!("NATS source {} at {}: {what}", self.name, redact(&self.url)))
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError> {
        let client = self
            .client
            .get_or_try_init(|| connect(&self.name, &self.url, None, None))
            .await
            .map_err(|e| self.unavailable(e))?;
        let js = jetstream::new(client.clone());
        let mut acks = Vec::new();
        for m in messages {
            let mut headers = m.headers.clone();
            if let Some(key) = &m.key {
                headers.push((headers::KEY.into(), key.clone()));
            }
            let subject = Subject::from(m.destination.as_str());
            if self.jetstream && !m.destination.starts_with("_INBOX.") {
                let ack = js
                    .publish_with_headers(subject, header_map(&headers), m.payload.into())
                    .await
                    .map_err(|e| self.unavailable(format!("cannot publish to {:?}: {e}", m.destination)))?;
                acks.push((m.destination, ack));
            } else {
                client
                    .publish_with_headers(subject, header_map(&headers), m.payload.into())
                    .await
                    .map_err(|e| self.unavailable(format!("cannot publish to {:?}: {e}", m.destination)))?;
            }
        }
        for (destination, ack) in acks {
            ack.await.map_err(|e| self.unavailable(format!("{destination:?} was not stored: {e}")))?;
        }
        client.flush().await.map_err(|e| self.unavailable(format!("cannot flush: {e}")))
    }
}
