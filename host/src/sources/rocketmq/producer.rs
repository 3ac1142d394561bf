//! The producer a RocketMQ source's settlements and its publisher share.
//!
//! A message with a key goes to the queue the key's hash picks, so that
//! every message of one key lands in one queue and an orderly consumer
//! handles them in the order sent; the key is also its `KEYS`, for lookups
//! in the console. Headers become user properties; a header named like one
//! of the broker's own properties is refused rather than dropped.

use async_trait::async_trait;
use rocketmq_client_rust::DefaultMQProducer;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message as RocketMessage;

use super::client::{is_system_property, runtime};
use crate::config::RocketMqConfig;
use crate::contract::bindings::publish::Outgoing;
use crate::contract::errors::BackendError;
use crate::contract::headers;
use crate::contract::publish::Publisher;

/// One message to send: a publish or a dead letter.
pub struct Record {
    /// The topic.
    pub topic: String,
    /// The sharding key, which picks the queue.
    pub key: Option<String>,
    /// User properties.
    pub properties: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a record could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The record itself is malformed; sending it again will not help.
    #[error("{0}")]
    Invalid(String),
    /// The broker did not take it.
    #[error("{0}")]
    Unavailable(String),
}

/// The queue of `key` among `queues`: the same key, the same queue, as
/// long as the topic's queue count stays the same.
pub fn queue_of<'a>(queues: &'a [MessageQueue], key: &str) -> Option<&'a MessageQueue> {
    // FNV-1a: stable across processes and releases, unlike the std hasher.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let count = u64::try_from(queues.len()).ok().filter(|n| *n > 0)?;
    queues.get(usize::try_from(hash % count).ok()?)
}

/// The producer shared by a source's settlements and its publisher, started
/// on first use.
pub struct Producer {
    name: String,
    config: RocketMqConfig,
    producer: tokio::sync::OnceCell<DefaultMQProducer>,
}

impl Producer {
    /// A producer for source `name`, started on first use.
    pub fn new(name: &str, config: &RocketMqConfig) -> Self {
        Self { name: name.to_string(), config: config.clone(), producer: tokio::sync::OnceCell::new() }
    }

    async fn get(&self) -> Result<&DefaultMQProducer, SendError> {
        self.producer
            .get_or_try_init(|| async {
                let runtime = runtime().map_err(SendError::Unavailable)?;
                let mut producer = DefaultMQProducer::builder(runtime)
                    .producer_group(format!("switchyard-{}-producer", self.name))
                    .name_server_addr(self.config.name_server.as_str())
                    .build();
                producer.set_send_msg_timeout(u32::try_from(self.config.send_timeout_ms).unwrap_or(u32::MAX));
                producer.start().await.map_err(|e| SendError::Unavailable(format!("cannot start a producer: {e}")))?;
                Ok(producer)
            })
            .await
    }

    /// The queues of `topic`, asked of the name server: fails when it is down
    /// or does not know the topic.
    pub async fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>, SendError> {
        let mut producer = self.get().await?.clone();
        producer
            .fetch_publish_message_queues(topic)
            .await
            .map_err(|e| SendError::Unavailable(format!("cannot look up topic {topic:?}: {e}")))
    }

    /// Create `topic` with `queues` queues where it does not exist.
    pub async fn create_topic(&self, topic: &str, queues: i32) -> Result<(), SendError> {
        // A clone shares the started producer; these calls want `&mut`.
        let mut producer = self.get().await?.clone();
        if producer.fetch_publish_message_queues(topic).await.is_ok_and(|q| !q.is_empty()) {
            return Ok(());
        }
        // The key is the broker's template topic for new ones.
        producer
            .create_topic("TBW102", topic, queues, Default::default())
            .await
            .map_err(|e| SendError::Unavailable(format!("cannot create topic {topic:?}: {e}")))
    }

    /// Send one record and wait until the broker has stored it.
    pub async fn send(&self, record: Record) -> Result<(), SendError> {
        let topic = record.topic.clone();
        let message = build(record.topic.as_str(), &record)?;
        let producer = self.get().await?;
        let timeout = self.config.send_timeout_ms;
        let result = match &record.key {
            Some(key) => {
                producer
                    .send_with_selector_timeout(
                        message,
                        |queues: &[MessageQueue], _: &RocketMessage, key: &String| queue_of(queues, key).cloned(),
                        key.clone(),
                        timeout,
                    )
                    .await
            }
            None => producer.send_with_timeout(message, timeout).await,
        };
        result.map(|_| ()).map_err(|e| SendError::Unavailable(format!("cannot send to {topic:?}: {e}")))
    }
}

/// The RocketMQ message of a record.
fn build(topic: &str, record: &Record) -> Result<RocketMessage, SendError> {
    let mut builder = RocketMessage::builder().topic(topic).body_slice(&record.body);
    if let Some(key) = &record.key {
        builder = builder.key(key.as_str());
    }
    for (name, value) in &record.properties {
        if name.is_empty() || value.is_empty() {
            // RocketMQ keeps no empty properties.
            continue;
        }
        if is_system_property(name) {
            return Err(SendError::Invalid(format!("header {name:?} is a RocketMQ system property")));
        }
        builder = builder.raw_property(name.as_str(), value.as_str()).map_err(|e| SendError::Invalid(e.to_string()))?;
    }
    builder.build().map_err(|e| SendError::Invalid(format!("cannot build a message for {topic:?}: {e}")))
}

#[async_trait]
impl Publisher for Producer {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError> {
        let fail = |e: SendError| {
            let text = format!("RocketMQ source {} at {}: {e}", self.name, self.config.name_server);
            match e {
                SendError::Invalid(_) => BackendError::Invalid(text),
                SendError::Unavailable(_) => BackendError::Unavailable(text),
            }
        };
        let records: Vec<Record> = messages
            .into_iter()
            .map(|m| Record {
                topic: m.destination,
                key: m.key,
                properties: m.headers.into_iter().filter(|(k, _)| k != headers::KEY).collect(),
                body: m.payload,
            })
            .collect();
        for result in futures::future::join_all(records.into_iter().map(|r| self.send(r))).await {
            result.map_err(fail)?;
        }
        Ok(())
    }
}
