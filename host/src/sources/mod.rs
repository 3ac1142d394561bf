//! Message sources, one file each, behind one small trait. A source yields
//! deliveries; each carries a settlement handle that acks, retries or
//! dead-letters the message on its own broker.

pub mod amqp;
pub mod dead_letter;
pub mod file;
pub mod http;
pub mod kafka;
pub mod local;
pub mod nats;
pub mod redis_streams;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capabilities::publish::Publisher;
use crate::config::SourceConfig;
use crate::runtime::bindings::Message;

/// The header that carries a message's ordering key on brokers without a key
/// of their own (RabbitMQ, NATS); publishers set it from the outgoing key.
pub const KEY_HEADER: &str = "switchyard-key";
/// The header that carries the attempt number of a redelivery that the host
/// sent itself (a RabbitMQ retry queue), where the broker does not count.
pub const ATTEMPT_HEADER: &str = "switchyard-attempt";
/// The header that carries the message id where the broker has none of its own.
pub const ID_HEADER: &str = "switchyard-id";

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
}

/// The source and publisher of a broker source config, or `None` for the
/// embedded sources, which the dispatcher builds itself. `concurrency` is the
/// sum of the concurrency of the routes reading from this source, which
/// sizes the broker's own flow control (prefetch, pull batch).
pub fn broker(name: &str, config: &SourceConfig, concurrency: usize) -> Option<(Box<dyn Source>, Arc<dyn Publisher>)> {
    Some(match config {
        SourceConfig::File { .. } | SourceConfig::Http { .. } => return None,
        SourceConfig::Amqp(c) => amqp::build(name, c, concurrency),
        SourceConfig::Nats(c) => nats::build_core(name, c),
        SourceConfig::JetStream(c) => nats::build_jetstream(name, c, concurrency),
        SourceConfig::Redis(c) => redis_streams::build(name, c, concurrency),
        SourceConfig::Kafka(c) => kafka::build(name, c, concurrency),
    })
}

/// Waits between reconnection attempts to a broker: doubling from 100 ms up
/// to 30 s, back to the start after a connection that worked.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    /// The next wait, longer each time.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// Connected: the next failure starts from the shortest wait again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Wait the next delay, or return false at once if `shutdown` comes first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// The current time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A URL with any password replaced, for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
