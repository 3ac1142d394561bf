//! The `publish` capability. Publishes are held in the invocation's outbox
//! and sent by the dispatcher only after the handler returns ok;
//! compensations are held until the message finally fails.

use crate::contract::bindings::publish::{self, Outgoing};
use crate::contract::errors::CapabilityFailure;

use super::context::{CapabilityCtx, Effect, MAX_HEADER_BYTES, MAX_KEY_BYTES, check_size, printable};

impl CapabilityCtx {
    /// Refuse a message to a destination not granted, or one past what a
    /// message may publish in all; count it against that otherwise.
    fn check_publish(&mut self, message: &Outgoing) -> Result<(), CapabilityFailure> {
        check_size("published payload", message.payload.len())?;
        let d = message.destination.as_str();
        if self.reply_to.as_deref() != Some(d) && !destination_granted(&self.access.grants.publish, d) {
            return Err(CapabilityFailure::Denied(format!(
                "destination {d:?} is not among the tenant's publish grants {:?}",
                self.access.grants.publish
            )));
        }
        let key = message.key.as_ref().map_or(0, String::len);
        if key > MAX_KEY_BYTES {
            return Err(CapabilityFailure::TooLarge(format!(
                "message key is {key} bytes; the limit is {MAX_KEY_BYTES}"
            )));
        }
        let headers: usize = message.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if headers > MAX_HEADER_BYTES {
            return Err(CapabilityFailure::TooLarge(format!(
                "message headers are {headers} bytes; the limit is {MAX_HEADER_BYTES}"
            )));
        }
        let limits = self.access.output;
        let count = self.outbox.len() + self.compensations.len();
        if count >= limits.max_publishes {
            return Err(CapabilityFailure::TooLarge(format!(
                "this message already published {count} messages, the tenant's max_publishes"
            )));
        }
        let bytes = message.payload.len() + headers + key + d.len();
        if self.published_bytes + bytes > limits.max_publish_bytes {
            return Err(CapabilityFailure::TooLarge(format!(
                "this message would publish {} bytes in all, past the tenant's max_publish_bytes of {}",
                self.published_bytes + bytes,
                limits.max_publish_bytes
            )));
        }
        self.published_bytes += bytes;
        Ok(())
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
        self.check_publish(&message)?;
        self.record(|| Effect::Publish {
            destination: message.destination.clone(),
            payload: printable(&message.payload),
        });
        self.outbox.push(message);
        Ok(())
    }

    async fn compensate_on_failure(&mut self, message: Outgoing) -> Result<(), CapabilityFailure> {
        self.check_publish(&message)?;
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
