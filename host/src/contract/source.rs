//! The port every message source implements, and the settlement handle each
//! delivery carries back to its broker.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::bindings::Message;

/// A source or settlement failure. Each case names the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading or writing the source's own files failed.
    #[error("source {source_name}: {path}: {error}")]
    Io {
        /// The source.
        source_name: String,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The source could not start or went away.
    #[error("source {source_name}: {message}")]
    Failed {
        /// The source.
        source_name: String,
        /// What happened.
        message: String,
    },
}

/// How a message is settled on its source.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Handled: remove it from the source.
    Ack,
    /// Deliver it again after `delay`, through the broker. Only sent to
    /// settlements whose [`Settle::retries_natively`] is true; for the others
    /// the host waits and runs the message again itself.
    Retry {
        /// How long to wait.
        delay: Duration,
    },
    /// Move it to the dead-letter destination, with these headers added
    /// (reason, attempts, tenant, handler).
    DeadLetter {
        /// Why, in one line.
        reason: String,
        /// Headers to add to the dead-lettered message.
        headers: Vec<(String, String)>,
    },
}

/// The settlement handle of one delivery.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Whether the broker can redeliver after a delay by itself.
    fn retries_natively(&self) -> bool {
        false
    }
    /// Settle the message. Called at most once.
    async fn settle(self: Box<Self>, message: &Message, settlement: Settlement) -> Result<(), SourceError>;
}

/// One message from a source, with its settlement handle.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// How to settle it.
    pub settle: Box<dyn Settle>,
}

/// A message source. `run` yields deliveries into `out` until the source ends
/// or `shutdown` is cancelled; a full `out` is the source's back-pressure.
#[async_trait]
pub trait Source: Send {
    /// Run until done or shut down.
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError>;

    /// The count of messages this source knows it lost, for a source whose
    /// broker delivers at most once (core NATS drops what its client cannot
    /// buffer). The progress line and `/metrics` report it.
    fn lost(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicU64>> {
        None
    }
}
