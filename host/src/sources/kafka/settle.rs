//! Settling a Kafka record: commits only up to the lowest unsettled offset,
//! retries and dead letters as records produced to their topics.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use super::offsets::{GroupContext, Tracker};
use super::producer::{Producer, Record};
use crate::contract::bindings::Message;
use crate::contract::headers;
use crate::contract::source::{Settle, Settlement, SourceError};

/// How often settled offsets are committed when no settlement did it.
pub const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// What the settlements of one consumer share.
pub struct Shared {
    pub source: String,
    pub address: String,
    pub consumer: Arc<StreamConsumer<GroupContext>>,
    pub tracker: Arc<Tracker>,
    /// Commits one at a time, so a later position is never overwritten by
    /// an earlier one that was slower to arrive.
    pub commit_lock: tokio::sync::Mutex<()>,
    /// Records handed on and not yet settled.
    pub held: AtomicUsize,
    pub room: tokio::sync::Notify,
    /// Woken after every commit, for settlements waiting for theirs.
    pub commits: tokio::sync::Notify,
    pub producer: Arc<Producer>,
    /// Cancelled when the host stops taking messages; ends retry waits.
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Commit every position that moved.
    pub async fn commit(&self) -> Result<(), String> {
        let _turn = self.commit_lock.lock().await;
        let due = self.tracker.due();
        if due.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let result = tokio::task::spawn_blocking(move || consumer.commit(&due, CommitMode::Sync).map(|()| due))
            .await
            .map_err(|e| format!("commit task failed: {e}"))?;
        match result {
            Ok(due) => {
                self.tracker.committed(&due);
                self.commits.notify_waiters();
                Ok(())
            }
            Err(e) => Err(format!("cannot commit offsets: {e}")),
        }
    }
}

pub struct KafkaSettle {
    pub shared: Arc<Shared>,
    /// The topic the record was read from (the retry topic, for a retry).
    pub record_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub generation: usize,
    pub dead_letter: String,
    pub retry_topic: Option<String>,
    pub released: bool,
}

impl KafkaSettle {
    /// Give back the flow-control slot, once.
    fn release(&mut self) {
        if !self.released {
            self.released = true;
            self.shared.held.fetch_sub(1, Ordering::SeqCst);
            self.shared.room.notify_one();
        }
    }

    /// Mark the record settled, and wait until a commit covers it: its
    /// flow-control slot is given back only then, so the records a host has
    /// handled without their offsets committed stay within `max_in_flight`,
    /// and a crash delivers no more than those again. A record settled above
    /// one still running waits for that one.
    async fn done(mut self: Box<Self>, message: &Message) -> Result<(), SourceError> {
        let (topic, partition, offset, generation) = (&self.record_topic, self.partition, self.offset, self.generation);
        self.shared.tracker.settled(topic, partition, offset, generation);
        let committed = loop {
            let next_commit = self.shared.commits.notified();
            let result = self.shared.commit().await;
            if result.is_err() || self.shared.tracker.is_committed(topic, partition, offset, generation) {
                break result;
            }
            tokio::select! {
                _ = next_commit => {}
                _ = tokio::time::sleep(COMMIT_EVERY) => {}
                _ = self.shared.shutdown.cancelled() => break Ok(()),
            }
        };
        self.release();
        committed.map_err(|e| SourceError::Failed {
            source_name: message.source.clone(),
            message: format!("topic {:?} partition {} offset {}: {e}", self.record_topic, self.partition, self.offset),
        })
    }

    fn fail(&self, message: &Message, what: String) -> SourceError {
        SourceError::Failed {
            source_name: message.source.clone(),
            message: format!(
                "topic {:?} partition {} offset {}: {what}",
                self.record_topic, self.partition, self.offset
            ),
        }
    }
}

impl Drop for KafkaSettle {
    fn drop(&mut self) {
        // Unsettled, its offset stays uncommitted and it is delivered again
        // after a restart; only the flow-control slot is given back.
        self.release();
    }
}

/// `headers` with `name` set to `value`, replacing any earlier value.
fn with_header(mut headers: Vec<(String, String)>, name: &str, value: String) -> Vec<(String, String)> {
    headers.retain(|(k, _)| k != name);
    headers.push((name.to_string(), value));
    headers
}

#[async_trait]
impl Settle for KafkaSettle {
    fn retries_natively(&self) -> bool {
        true
    }

    async fn settle(self: Box<Self>, message: &Message, settlement: Settlement) -> Result<(), SourceError> {
        match settlement {
            Settlement::Ack => self.done(message).await,
            Settlement::Retry { delay } => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.shared.shutdown.cancelled() => {
                        tracing::info!(source = %self.shared.source, message_id = %message.id, "shutdown during the retry delay; leaving the record uncommitted for redelivery");
                        return Ok(());
                    }
                }
                let mut headers =
                    with_header(message.headers.clone(), headers::ATTEMPT, (message.attempt + 1).to_string());
                headers = with_header(headers, headers::ID, message.id.clone());
                headers = with_header(headers, headers::TOPIC, message.topic.clone());
                let record = Record {
                    topic: self.retry_topic.clone().unwrap_or_else(|| self.record_topic.clone()),
                    key: message.key.clone(),
                    headers,
                    payload: message.payload.clone(),
                };
                self.shared.producer.produce(&[record]).await.map_err(|e| self.fail(message, format!("retry: {e}")))?;
                self.done(message).await
            }
            Settlement::DeadLetter { headers, .. } => {
                let mut all = message.headers.clone();
                all.extend(headers);
                all = with_header(all, headers::TOPIC, message.topic.clone());
                all.push((headers::PARTITION.into(), self.partition.to_string()));
                all.push((headers::OFFSET.into(), self.offset.to_string()));
                let record = Record {
                    topic: self.dead_letter.clone(),
                    key: message.key.clone(),
                    headers: all,
                    payload: message.payload.clone(),
                };
                self.shared.producer.produce(&[record]).await.map_err(|e| {
                    tracing::error!(source = %self.shared.source, address = %self.shared.address, "Kafka: {e}");
                    self.fail(message, format!("dead letter: {e}"))
                })?;
                self.done(message).await
            }
        }
    }
}
