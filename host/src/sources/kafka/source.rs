//! The `kafka` source and publisher, through rdkafka (librdkafka).
//!
//! rdkafka rather than the pure-Rust rskafka: rskafka has no consumer
//! groups, and sharing topics between hosts through the broker's own
//! consumer groups is the point of a Kafka source.
//!
//! Each host is one member of the consumer group; the group spreads the
//! partitions over the hosts. Records are handed on in partition order; the
//! record key is the message's ordering key, and since a key always lands in
//! the same partition, per-key order is the partition's order. The host
//! commits offsets itself (auto-commit is off): per partition it commits only
//! up to the lowest offset not yet settled, so a committed offset never
//! passes a message whose effects are not durable, however the handlers
//! finish out of order. What was handled but not yet committed when a host
//! dies is delivered again, which at-least-once allows.
//!
//! Settlement:
//! - ack: the offset is marked settled and the commit advances;
//! - retry after a delay: once the delay has passed, the record is produced
//!   again (to `retry_topic`, or back to its own topic) with the next attempt
//!   in the `switchyard-attempt` header and its id in `switchyard-id`; once
//!   the broker has it, the original is settled. A retry goes behind records
//!   published after it, as with any Kafka retry topic;
//! - dead letter: the record is produced to the dead-letter topic with the
//!   reason headers, and settled once the broker has it.
//!
//! A broker that is down at start or goes away is logged with the source
//! name and the bootstrap address; the source retries with backoff, and
//! librdkafka reconnects by itself once connected.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Headers;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{Logger, client_config};
use super::offsets::{GroupContext, Tracker};
use super::producer::Producer;
use super::settle::{COMMIT_EVERY, KafkaSettle, Shared};
use crate::config::{KafkaConfig, StartFrom};
use crate::contract::bindings::Message;
use crate::contract::headers;
use crate::contract::publish::Publisher;
use crate::contract::source::{Delivery, Source, SourceError};
use crate::sources::backoff::Backoff;

/// How long one reachability check or admin call waits for the brokers.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait after a failed read before reading again.
const MAX_READ_ERROR_WAIT: Duration = Duration::from_secs(2);

/// The source and publisher for one `kafka` source config.
pub fn build(name: &str, config: &KafkaConfig, concurrency: usize) -> (Box<dyn Source>, Arc<dyn Publisher>) {
    let max_in_flight = config.max_in_flight.unwrap_or(concurrency.saturating_mul(2)).max(1);
    let producer = Arc::new(Producer::new(name, config));
    let source =
        KafkaSource { name: name.to_string(), config: config.clone(), max_in_flight, producer: producer.clone() };
    (Box::new(source), producer)
}

/// The `kafka` source.
pub struct KafkaSource {
    name: String,
    config: KafkaConfig,
    max_in_flight: usize,
    producer: Arc<Producer>,
}

impl KafkaSource {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "kafka";

    fn subscribed_topics(&self) -> Vec<String> {
        let mut topics = self.config.topics.clone();
        if let Some(retry) = &self.config.retry_topic
            && !topics.contains(retry)
        {
            topics.push(retry.clone());
        }
        topics
    }

    fn consumer(&self, tracker: &Arc<Tracker>) -> Result<StreamConsumer<GroupContext>, String> {
        let mut config = client_config(&self.config, &self.name);
        config
            .set("group.id", &self.config.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.config.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set("session.timeout.ms", self.config.session_timeout_ms.to_string())
            .set("enable.partition.eof", "false");
        let context = GroupContext {
            logger: Logger { source: self.name.clone(), address: self.config.brokers.clone() },
            tracker: tracker.clone(),
            assigned: AtomicBool::new(false),
        };
        config.create_with_context(context).map_err(|e| format!("cannot create a consumer: {e}"))
    }

    /// Whether the brokers answer a metadata request.
    async fn reachable(&self, consumer: &Arc<StreamConsumer<GroupContext>>) -> Result<(), String> {
        let consumer = consumer.clone();
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, BROKER_TIMEOUT).map(|_| ()))
            .await
            .map_err(|e| format!("metadata task failed: {e}"))?
            .map_err(|e| format!("cannot reach the brokers: {e}"))
    }

    /// Create the topics this source reads and writes, where missing.
    async fn create_topics(&self) -> Result<(), String> {
        let admin: AdminClient<Logger> = client_config(&self.config, &self.name)
            .create_with_context(Logger { source: self.name.clone(), address: self.config.brokers.clone() })
            .map_err(|e| format!("cannot create an admin client: {e}"))?;
        let mut names = self.subscribed_topics();
        for topic in &self.config.topics {
            let dead = self.config.dead_letter_topic(topic);
            if !names.contains(&dead) {
                names.push(dead);
            }
        }
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| NewTopic::new(n, self.config.partitions, TopicReplication::Fixed(self.config.replication_factor)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT)).request_timeout(Some(BROKER_TIMEOUT));
        let results = admin.create_topics(&topics, &options).await.map_err(|e| format!("cannot create topics: {e}"))?;
        for result in results {
            match result {
                Ok(topic) => {
                    tracing::info!(source = %self.name, %topic, partitions = self.config.partitions, "created Kafka topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(format!("cannot create topic {topic:?}: {code}")),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError> {
        let (source, address) = (self.name.as_str(), self.config.brokers.as_str());
        let failed = |message: String| SourceError::Failed { source_name: self.name.clone(), message };
        let tracker = Arc::new(Tracker::default());
        // A consumer that cannot be created is a config error: no retry helps.
        let consumer = Arc::new(self.consumer(&tracker).map_err(failed)?);

        // Wait for the brokers, logging each failed attempt.
        let mut backoff = Backoff::default();
        loop {
            let attempt = async {
                self.reachable(&consumer).await?;
                if self.config.create_topics {
                    self.create_topics().await?;
                }
                Ok::<(), String>(())
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = attempt => r,
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::error!(%source, %address, retry_in_ms = delay.as_millis() as u64, "Kafka: {e}; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        let topics = self.subscribed_topics();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| failed(format!("cannot subscribe to {topics:?}: {e}")))?;
        tracing::info!(%source, %address, ?topics, group = %self.config.group, "subscribed to Kafka topics");

        let shared = Arc::new(Shared {
            source: self.name.clone(),
            address: address.to_string(),
            consumer: consumer.clone(),
            tracker,
            commit_lock: tokio::sync::Mutex::new(()),
            held: AtomicUsize::new(0),
            room: tokio::sync::Notify::new(),
            commits: tokio::sync::Notify::new(),
            producer: self.producer.clone(),
            shutdown: shutdown.clone(),
        });
        let mut commit_tick = tokio::time::interval(COMMIT_EVERY);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut errors = Backoff::default();
        loop {
            // Flow control: no more than `max_in_flight` records ahead of
            // what is settled.
            if shared.held.load(Ordering::SeqCst) >= self.max_in_flight {
                let room = shared.room.notified();
                if shared.held.load(Ordering::SeqCst) >= self.max_in_flight {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = room => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
            }
            let received = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = commit_tick.tick() => {
                    // Retries commits that failed, and commits after a rebalance.
                    if let Err(e) = shared.commit().await {
                        tracing::warn!(%source, %address, "Kafka: {e}");
                    }
                    continue;
                }
                m = consumer.recv() => m,
            };
            // The record borrows the consumer; only owned data goes on.
            let record = match received {
                Ok(record) => (
                    kafka_message(&self.name, self.config.retry_topic.as_deref(), &record),
                    record.topic().to_string(),
                    record.partition(),
                    record.offset(),
                ),
                Err(e) => {
                    // librdkafka reconnects by itself, with its own backoff;
                    // this wait only keeps the log from flooding, and stays
                    // short so reading resumes soon after the broker is back.
                    let delay = errors.next_delay().min(MAX_READ_ERROR_WAIT);
                    tracing::error!(%source, %address, error = %e, retry_in_ms = delay.as_millis() as u64, "Kafka: cannot read; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            errors.reset();
            let (message, topic, partition, offset) = record;
            let generation = shared.tracker.delivered(&topic, partition, offset);
            shared.held.fetch_add(1, Ordering::SeqCst);
            let settle = Box::new(KafkaSettle {
                shared: shared.clone(),
                record_topic: topic,
                partition,
                offset,
                generation,
                dead_letter: self.config.dead_letter_topic(&message.topic),
                retry_topic: self.config.retry_topic.clone(),
                released: false,
            });
            if out.send(Delivery { message, settle }).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// A Kafka record as a message of source `source`: its headers, its key,
/// and, for a record on the route's `retry_topic`, the topic it first came
/// from (the `switchyard-topic` header).
pub fn kafka_message<M: rdkafka::Message>(source: &str, retry_topic: Option<&str>, m: &M) -> Message {
    let mut headers = Vec::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
            headers.push((h.key.to_string(), value));
        }
    }
    let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let attempt = find(headers::ATTEMPT).and_then(|a| a.parse::<u32>().ok()).unwrap_or(1).max(1);
    // An empty id is no id: inbox rows, dead letters and logs need one.
    let id = find(headers::ID)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("{}:{}:{}", m.topic(), m.partition(), m.offset()));
    let topic = match (retry_topic, find(headers::TOPIC)) {
        (Some(retry), Some(origin)) if retry == m.topic() => origin,
        _ => m.topic().to_string(),
    };
    Message {
        id,
        source: source.to_string(),
        topic,
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        attempt,
        reply_to: None,
        timestamp_ms: m.timestamp().to_millis().and_then(|t| u64::try_from(t).ok()),
    }
}
