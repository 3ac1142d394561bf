//! The `rocketmq` source: a clustering push consumer in the configured
//! group, its listener bridged to the host's deliveries.
//!
//! The consumer is orderly: each queue is locked to one host and consumed
//! one message at a time in queue order, so messages sent with one sharding
//! key (which picks their queue) are handled in the order sent. The client
//! calls its listener on a blocking thread, one queue at a time per thread.
//! The listener hands each message on as a delivery and blocks until the
//! host settles it, then tells the client what became of it:
//!
//! - ack: the queue's consume offset is set past the message and written
//!   to the broker before the listener returns, so a host killed after an
//!   ack does not see that message again;
//! - retry after a delay: the queue is suspended for the delay and the
//!   message is consumed again in place, before anything behind it, so
//!   per-key order holds through retries;
//! - dead letter: the message is sent to the group's dead-letter queue
//!   `%DLQ%<group>` (or `dead_letter_topic`) with the reason properties,
//!   then acked.
//!
//! A message the host could not settle (a send that failed, a shutdown
//! before it was handled) is left to the broker: the queue is suspended and
//! it is consumed again.
//!
//! A name server that is down at start is logged with the source name and
//! its address, and the source retries with backoff; once started, the
//! client reconnects by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rocketmq_client_rust::{
    ClientResult, ConsumeOrderlyContext, ConsumeOrderlyStatus, DefaultMQPushConsumer, MQPushConsumer,
    MessageListenerOrderly, OffsetStore,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::client::{message, runtime};
use super::producer::{Producer, Record};
use crate::config::{RocketMqConfig, StartFrom};
use crate::contract::bindings::Message;
use crate::contract::headers;
use crate::contract::publish::Publisher;
use crate::contract::source::{Delivery, Settle, Settlement, Source, SourceError};
use crate::sources::backoff::Backoff;

/// How long a queue waits before a message the host left unsettled is
/// consumed again.
const UNSETTLED_WAIT: Duration = Duration::from_secs(1);
/// How long the client may take to write offsets and leave the group at shutdown.
const CLIENT_SHUTDOWN: Duration = Duration::from_secs(10);

/// The source and publisher for one `rocketmq` source config.
pub fn build(name: &str, config: &RocketMqConfig, concurrency: usize) -> (Box<dyn Source>, Arc<dyn Publisher>) {
    let producer = Arc::new(Producer::new(name, config));
    let source = RocketMqSource {
        name: name.to_string(),
        config: config.clone(),
        concurrency: concurrency.max(1),
        producer: producer.clone(),
    };
    (Box::new(source), producer)
}

/// The `rocketmq` source.
pub struct RocketMqSource {
    name: String,
    config: RocketMqConfig,
    concurrency: usize,
    producer: Arc<Producer>,
}

/// What became of a delivery, for the listener to tell the client.
enum Outcome {
    /// Acked (or dead-lettered, then acked).
    Done,
    /// Consume it again after the delay, in place.
    Again(Duration),
}

/// What the listener and the settlements share.
struct Shared {
    source: String,
    address: String,
    dead_letter_topic: String,
    producer: Arc<Producer>,
    out: mpsc::Sender<Delivery>,
    /// Set once the consumer has started; orderly acks write through it.
    offsets: std::sync::OnceLock<Arc<OffsetStore>>,
    /// Deliveries handed on and not yet answered.
    in_flight: AtomicUsize,
    drained: tokio::sync::Notify,
    intake: CancellationToken,
}

impl Shared {
    /// Hand one message on and wait for what the host made of it; `None`
    /// if it was not settled (shutdown, a failed send).
    fn hand_on(self: &Arc<Self>, m: &MessageExt, queue: &MessageQueue) -> Option<Outcome> {
        if self.intake.is_cancelled() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let settle = Box::new(RocketSettle {
            shared: self.clone(),
            reply: Some(tx),
            queue: queue.clone(),
            offset: m.queue_offset(),
        });
        let delivery = Delivery { message: message(&self.source, m), settle };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let outcome = match self.out.blocking_send(delivery) {
            Ok(()) => rx.blocking_recv().ok(),
            Err(_) => None,
        };
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
        outcome
    }
}

struct Orderly(Arc<Shared>);

impl MessageListenerOrderly for Orderly {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        context: &mut ConsumeOrderlyContext,
    ) -> ClientResult<ConsumeOrderlyStatus> {
        for m in msgs {
            let wait = match self.0.hand_on(m, context.get_message_queue()) {
                Some(Outcome::Done) => continue,
                Some(Outcome::Again(delay)) => delay,
                None => UNSETTLED_WAIT,
            };
            context.set_suspend_current_queue_time_millis(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            return Ok(ConsumeOrderlyStatus::SuspendCurrentQueueAMoment);
        }
        Ok(ConsumeOrderlyStatus::Success)
    }
}

impl RocketMqSource {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "rocketmq";

    /// Reach the name server, creating the topics where asked to.
    async fn prepare(&self) -> Result<(), String> {
        for topic in &self.config.topics {
            if self.config.create_topics {
                self.producer.create_topic(topic, self.config.queues).await.map_err(|e| e.to_string())?;
            } else {
                self.producer.queues(topic).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    async fn consumer(&self, shared: &Arc<Shared>) -> Result<DefaultMQPushConsumer, String> {
        let runtime = runtime()?;
        let threads = u32::try_from(self.concurrency).unwrap_or(u32::MAX);
        let mut consumer = DefaultMQPushConsumer::builder(runtime)
            .consumer_group(self.config.group.as_str())
            .name_server_addr(self.config.name_server.as_str())
            .message_model(MessageModel::Clustering)
            .consume_from_where(match self.config.start_from {
                StartFrom::Earliest => ConsumeFromWhere::ConsumeFromFirstOffset,
                StartFrom::Latest => ConsumeFromWhere::ConsumeFromLastOffset,
            })
            .consume_thread_min(threads)
            .consume_thread_max(threads)
            .consume_message_batch_max_size(1)
            // The routes' `max_attempts` dead-letters with a reason; this
            // is only the broker's backstop.
            .max_reconsume_times(1000)
            .build();
        for topic in &self.config.topics {
            consumer
                .subscribe(topic.as_str(), self.config.tags.as_str())
                .await
                .map_err(|e| format!("cannot subscribe to {topic:?}: {e}"))?;
        }
        consumer.register_message_listener_orderly(Orderly(shared.clone()));
        consumer.start().await.map_err(|e| format!("cannot start the consumer: {e}"))?;
        if let Some(store) = consumer.offset_store() {
            let _ = shared.offsets.set(store);
        }
        Ok(consumer)
    }
}

#[async_trait]
impl Source for RocketMqSource {
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError> {
        let (source, address) = (self.name.as_str(), self.config.name_server.as_str());
        let failed = |message: String| SourceError::Failed { source_name: self.name.clone(), message };
        let mut backoff = Backoff::default();
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.prepare() => r,
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::error!(%source, %address, retry_in_ms = delay.as_millis() as u64, "RocketMQ: {e}; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        let shared = Arc::new(Shared {
            source: self.name.clone(),
            address: address.to_string(),
            dead_letter_topic: self.config.dead_letter_topic(),
            producer: self.producer.clone(),
            out,
            offsets: std::sync::OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
            intake: shutdown.clone(),
        });
        let mut consumer = self.consumer(&shared).await.map_err(failed)?;
        tracing::info!(%source, %address, topics = ?self.config.topics, group = %self.config.group, "subscribed to RocketMQ topics");
        shutdown.cancelled().await;
        // Intake has stopped: let what was handed on settle, then write the
        // offsets and leave the group.
        loop {
            let drained = shared.drained.notified();
            if shared.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), drained).await;
        }
        if tokio::time::timeout(CLIENT_SHUTDOWN, consumer.shutdown()).await.is_err() {
            tracing::warn!(%source, %address, "RocketMQ: the consumer did not shut down in time");
        }
        Ok(())
    }
}

/// The settlement of one RocketMQ message.
struct RocketSettle {
    shared: Arc<Shared>,
    reply: Option<oneshot::Sender<Outcome>>,
    queue: MessageQueue,
    offset: i64,
}

impl RocketSettle {
    fn fail(&self, message: &Message, what: String) -> SourceError {
        tracing::error!(source = %self.shared.source, address = %self.shared.address, message_id = %message.id, "RocketMQ: {what}");
        SourceError::Failed {
            source_name: message.source.clone(),
            message: format!("queue {} offset {}: {what}", self.queue, self.offset),
        }
    }

    /// Acked: write the offset past it to the broker first.
    async fn done(mut self: Box<Self>) -> Result<(), SourceError> {
        if let Some(store) = self.shared.offsets.get() {
            store.update_offset(&self.queue, self.offset + 1, true).await;
            store.persist(&self.queue).await;
        }
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Outcome::Done);
        }
        Ok(())
    }

    /// The message's user properties with `extra` set, for a copy.
    fn properties(message: &Message, extra: Vec<(String, String)>) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = message
            .headers
            .iter()
            .filter(|(k, _)| !super::client::is_system_property(k) && !extra.iter().any(|(e, _)| e == k))
            .cloned()
            .collect();
        all.extend(extra);
        all
    }
}

#[async_trait]
impl Settle for RocketSettle {
    fn retries_natively(&self) -> bool {
        true
    }

    async fn settle(mut self: Box<Self>, message: &Message, settlement: Settlement) -> Result<(), SourceError> {
        match settlement {
            Settlement::Ack => self.done().await,
            Settlement::Retry { delay } => {
                if let Some(reply) = self.reply.take() {
                    let _ = reply.send(Outcome::Again(delay));
                }
                Ok(())
            }
            Settlement::DeadLetter { headers: reasons, .. } => {
                let mut extra = reasons;
                extra.push((headers::TOPIC.into(), message.topic.clone()));
                extra.push((headers::ID.into(), message.id.clone()));
                extra.push((headers::QUEUE.into(), self.queue.queue_id().to_string()));
                extra.push((headers::OFFSET.into(), self.offset.to_string()));
                let record = Record {
                    topic: self.shared.dead_letter_topic.clone(),
                    key: message.key.clone(),
                    properties: Self::properties(message, extra),
                    body: message.payload.clone(),
                };
                self.shared.producer.send(record).await.map_err(|e| self.fail(message, format!("dead letter: {e}")))?;
                self.done().await
            }
        }
    }
}
