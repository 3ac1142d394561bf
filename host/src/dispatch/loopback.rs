//! The `local` source and publisher: messages a handler publishes loop back
//! into the router, so one handler can trigger another inside one host.
//!
//! The loopback is in memory. A local message that the host could not finish
//! before shutting down is written to the local dead-letter file with the
//! reason, so it is never lost silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stats::Stats;
use crate::contract::bindings::Message;
use crate::contract::bindings::publish::Outgoing;
use crate::contract::errors::BackendError;
use crate::contract::headers;
use crate::contract::publish::Publisher;
use crate::contract::source::{Delivery, Settle, Settlement, Source, SourceError};
use crate::sources::dead_letter::DeadLetterFile;

/// The source name of looped-back messages.
pub const LOCAL: &str = "local";

/// How many published messages may wait for the router; past that a publish
/// to `local` fails as `unavailable` (and is retried) instead of waiting.
const CAPACITY: usize = 4096;

/// The `local` publisher: sends published messages into the local source.
pub struct LocalPublisher {
    tx: mpsc::Sender<Message>,
    /// Counted as pending from the moment it is published, so the host does
    /// not consider itself idle while a message is in the loopback.
    stats: Arc<Stats>,
    next_id: AtomicU64,
    run: u128,
}

/// The `local` source: yields what the [`LocalPublisher`] sends.
pub struct LocalSource {
    rx: mpsc::Receiver<Message>,
    dead_letter: Arc<DeadLetterFile>,
}

/// A connected publisher and source.
pub fn loopback(dead_letter: Arc<DeadLetterFile>, stats: Arc<Stats>) -> (LocalPublisher, LocalSource) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    (LocalPublisher { tx, stats, next_id: AtomicU64::new(1), run }, LocalSource { rx, dead_letter })
}

#[async_trait]
impl Publisher for LocalPublisher {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).ok();
        // Room for all of them now, or the publish fails: a handler whose
        // messages loop back to itself would otherwise wait on itself, and
        // with it every other publisher to `local`.
        let permits = match self.tx.try_reserve_many(messages.len()) {
            Ok(permits) => permits,
            Err(mpsc::error::TrySendError::Full(())) => {
                return Err(BackendError::Unavailable(format!(
                    "the local loopback is full ({} of {CAPACITY} places free for {} messages)",
                    self.tx.capacity(),
                    messages.len()
                )));
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                return Err(BackendError::Unavailable("the local loopback has stopped".into()));
            }
        };
        for (permit, m) in permits.zip(messages) {
            let message = Message {
                id: format!("local-{}-{}", self.run, self.next_id.fetch_add(1, Ordering::Relaxed)),
                source: LOCAL.to_string(),
                topic: m.destination,
                key: m.key,
                headers: m.headers,
                payload: m.payload,
                attempt: 1,
                reply_to: None,
                timestamp_ms: now,
            };
            self.stats.pending.fetch_add(1, Ordering::SeqCst);
            permit.send(message);
        }
        Ok(())
    }
}

struct LocalSettle {
    dead_letter: Arc<DeadLetterFile>,
    /// The message, kept until settled so it can be saved if it never is.
    pending: Option<Message>,
}

#[async_trait]
impl Settle for LocalSettle {
    async fn settle(mut self: Box<Self>, message: &Message, settlement: Settlement) -> Result<(), SourceError> {
        self.pending = None;
        match settlement {
            Settlement::Ack => Ok(()),
            Settlement::DeadLetter { headers, .. } => self.dead_letter.append(message, &headers).await,
            Settlement::Retry { .. } => Err(SourceError::Failed {
                source_name: LOCAL.into(),
                message: "the local source does not redeliver; the host retries in place".into(),
            }),
        }
    }
}

impl Drop for LocalSettle {
    fn drop(&mut self) {
        if let Some(message) = self.pending.take() {
            let reason = "the host stopped before this local message was handled".to_string();
            tracing::warn!(message_id = %message.id, topic = %message.topic, file = %self.dead_letter.path().display(), "{reason}; saved to the dead-letter file");
            if let Err(e) = self.dead_letter.write(&message, &[(headers::DEAD_LETTER_REASON.into(), reason)]) {
                tracing::error!(message_id = %message.id, error = %e, "cannot save unhandled local message");
            }
        }
    }
}

#[async_trait]
impl Source for LocalSource {
    async fn run(
        mut self: Box<Self>,
        out: mpsc::Sender<Delivery>,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = self.rx.recv() => match m { Some(m) => m, None => break },
            };
            let settle =
                Box::new(LocalSettle { dead_letter: self.dead_letter.clone(), pending: Some(message.clone()) });
            if out.send(Delivery { message, settle }).await.is_err() {
                break;
            }
        }
        // Whatever is still queued was published by a handler that finished:
        // it must not vanish.
        self.rx.close();
        while let Ok(message) = self.rx.try_recv() {
            drop(LocalSettle { dead_letter: self.dead_letter.clone(), pending: Some(message) });
        }
        Ok(())
    }
}
