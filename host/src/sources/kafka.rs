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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ATTEMPT_HEADER, Backoff, Delivery, ID_HEADER, KEY_HEADER, Settle, Settlement, Source, SourceError};
use crate::capabilities::BackendError;
use crate::capabilities::publish::Publisher;
use crate::runtime::bindings::Message;
use crate::runtime::bindings::publish::Outgoing;

/// The header naming the topic a retried or dead-lettered record came from,
/// so a record read back from a retry topic is routed as its original topic.
pub const TOPIC_HEADER: &str = "switchyard-topic";

/// How long one reachability check or admin call waits for the brokers.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait after a failed read before reading again.
const MAX_READ_ERROR_WAIT: Duration = Duration::from_secs(2);
/// How often settled offsets are committed when no settlement did it.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// A Kafka source: topics read in a consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// The bootstrap brokers, comma-separated `host:port`.
    /// Example: `brokers = "127.0.0.1:9092"`.
    pub brokers: String,
    /// Topics to read. A message's topic is the topic its record came from
    /// (for a record read back from `retry_topic`, the topic it was first
    /// read from). Example: `topics = ["orders"]`.
    pub topics: Vec<String>,
    /// The consumer group; hosts in one group share the partitions.
    /// Example: `group = "switchyard"` (the default).
    #[serde(default = "default_group")]
    pub group: String,
    /// Where a record asking for a retry is produced again, with the next
    /// attempt in its `switchyard-attempt` header, once the delay has
    /// passed; the source reads this topic too. Unset, the record goes back
    /// to its own topic. Example: `retry_topic = "orders.retry"`.
    #[serde(default)]
    pub retry_topic: Option<String>,
    /// Where dead letters are produced, with the reason headers. Unset, each
    /// topic has its own: `<topic>` + `dead_letter_suffix`.
    /// Example: `dead_letter_topic = "switchyard.dead-letter"`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Appended to a topic's name to name its dead-letter topic when
    /// `dead_letter_topic` is unset. Example: `dead_letter_suffix = ".dead-letter"` (the default).
    #[serde(default = "default_dead_letter_suffix")]
    pub dead_letter_suffix: String,
    /// Create the topics, the retry topic and the dead-letter topics at start
    /// if they do not exist. Example: `create_topics = true` (the default).
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions of each topic the source creates. Example: `partitions = 4`; default 1.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replicas of each topic the source creates. Example: `replication_factor = 3`; default 1.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Where a group with no committed offset starts: `earliest` or
    /// `latest`. Example: `start_from = "latest"`; default `earliest`, so
    /// nothing published before the first start is missed.
    #[serde(default)]
    pub start_from: StartFrom,
    /// How long the group waits for a silent host before giving its
    /// partitions to the others, in milliseconds. Example:
    /// `session_timeout_ms = 10000` (the default).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Records handed on and not yet settled, at most. Default: twice the
    /// sum of the routes' concurrency. Example: `max_in_flight = 256`.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// How long producing one record (a publish, a retry, a dead letter) may
    /// take before it fails, in milliseconds. Example:
    /// `produce_timeout_ms = 30000` (the default).
    #[serde(default = "default_produce_timeout_ms")]
    pub produce_timeout_ms: u64,
    /// Further librdkafka properties, passed as they are to the consumer,
    /// producer and admin client, such as TLS and SASL settings. Example:
    /// `options = { "security.protocol" = "ssl" }`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_group() -> String {
    "switchyard".into()
}
fn default_dead_letter_suffix() -> String {
    ".dead-letter".into()
}
fn default_true() -> bool {
    true
}
fn default_partitions() -> i32 {
    1
}
fn default_replication() -> i32 {
    1
}
fn default_session_timeout_ms() -> u64 {
    10_000
}
fn default_produce_timeout_ms() -> u64 {
    30_000
}

/// Where a consumer group with no committed offset starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest record the broker keeps.
    #[default]
    Earliest,
    /// Only records published after the group first joined.
    Latest,
}

impl KafkaConfig {
    /// The dead-letter topic of records from `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{topic}{}", self.dead_letter_suffix))
    }

    fn client_config(&self, name: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("switchyard-{name}"))
            // The same backoff as the other sources: from 100 ms up to 30 s.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "30000");
        for (k, v) in &self.options {
            config.set(k, v);
        }
        config
    }
}

/// The source and publisher for one `kafka` source config.
pub fn build(name: &str, config: &KafkaConfig, concurrency: usize) -> (Box<dyn Source>, Arc<dyn Publisher>) {
    let max_in_flight = config.max_in_flight.unwrap_or(concurrency.saturating_mul(2)).max(1);
    let producer = Arc::new(Producer::new(name, config));
    let source =
        KafkaSource { name: name.to_string(), config: config.clone(), max_in_flight, producer: producer.clone() };
    (Box::new(source), producer)
}

/// Logs what librdkafka reports, with the source and the brokers' address.
#[derive(Clone)]
struct Logger {
    source: String,
    address: String,
}

impl ClientContext for Logger {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let (source, address) = (&self.source, &self.address);
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(%source, %address, facility = fac, "Kafka: {log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(%source, %address, facility = fac, "Kafka: {log_message}"),
            RDKafkaLogLevel::Notice => tracing::info!(%source, %address, facility = fac, "Kafka: {log_message}"),
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(%source, %address, facility = fac, "Kafka: {log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let (source, address) = (&self.source, &self.address);
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            tracing::error!(%source, %address, "Kafka: all brokers are down ({reason}); reconnecting with backoff");
        } else {
            tracing::error!(%source, %address, "Kafka: {error}: {reason}");
        }
    }
}

/// Per partition, which delivered offsets are not settled yet, and so how
/// far the group's offset may be committed.
#[derive(Default)]
struct Tracker {
    partitions: Mutex<HashMap<(String, i32), PartitionState>>,
    /// Bumped on every assignment, so a settlement of a record read before a
    /// rebalance does not touch the state of the partition's new assignment.
    generation: AtomicUsize,
}

struct PartitionState {
    generation: usize,
    /// Delivered, not yet settled.
    unsettled: BTreeSet<i64>,
    /// One past the highest offset delivered; `None` before the first.
    next: Option<i64>,
    /// The last offset committed by this host.
    committed: Option<i64>,
}

impl PartitionState {
    /// The offset the group may commit: below it, every record is settled.
    fn position(&self) -> Option<i64> {
        self.unsettled.first().copied().or(self.next)
    }
}

impl Tracker {
    fn assign(&self, tpl: &TopicPartitionList) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(mut partitions) = self.partitions.lock() {
            for e in tpl.elements() {
                partitions.insert(
                    (e.topic().to_string(), e.partition()),
                    PartitionState { generation, unsettled: BTreeSet::new(), next: None, committed: None },
                );
            }
        }
    }

    /// Forget revoked partitions; returns what was settled and not committed.
    fn revoke(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let mut commit = TopicPartitionList::new();
        if let Ok(mut partitions) = self.partitions.lock() {
            for e in tpl.elements() {
                if let Some(state) = partitions.remove(&(e.topic().to_string(), e.partition()))
                    && let Some(position) = state.position()
                    && Some(position) != state.committed
                {
                    let _ = commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(position));
                }
            }
        }
        commit
    }

    /// Record a delivery; returns the generation it belongs to.
    fn delivered(&self, topic: &str, partition: i32, offset: i64) -> usize {
        let Ok(mut partitions) = self.partitions.lock() else { return 0 };
        let generation = self.generation.load(Ordering::SeqCst);
        let state = partitions.entry((topic.to_string(), partition)).or_insert_with(|| PartitionState {
            generation,
            unsettled: BTreeSet::new(),
            next: None,
            committed: None,
        });
        state.unsettled.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
        state.generation
    }

    fn settled(&self, topic: &str, partition: i32, offset: i64, generation: usize) {
        if let Ok(mut partitions) = self.partitions.lock()
            && let Some(state) = partitions.get_mut(&(topic.to_string(), partition))
            && state.generation == generation
        {
            state.unsettled.remove(&offset);
        }
    }

    /// Positions that moved since they were last committed.
    fn due(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        if let Ok(partitions) = self.partitions.lock() {
            for ((topic, partition), state) in partitions.iter() {
                if let Some(position) = state.position()
                    && Some(position) != state.committed
                {
                    let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(position));
                }
            }
        }
        tpl
    }

    /// Whether `offset` is behind the partition's committed position, or the
    /// partition has moved on to another assignment (nothing left to wait for).
    fn is_committed(&self, topic: &str, partition: i32, offset: i64, generation: usize) -> bool {
        let Ok(partitions) = self.partitions.lock() else { return true };
        match partitions.get(&(topic.to_string(), partition)) {
            Some(state) if state.generation == generation => state.committed.is_some_and(|c| c > offset),
            _ => true,
        }
    }

    fn committed(&self, tpl: &TopicPartitionList) {
        if let Ok(mut partitions) = self.partitions.lock() {
            for e in tpl.elements() {
                if let (Some(state), Offset::Offset(position)) =
                    (partitions.get_mut(&(e.topic().to_string(), e.partition())), e.offset())
                {
                    state.committed = Some(state.committed.map_or(position, |c| c.max(position)));
                }
            }
        }
    }
}

/// The consumer's context: logging, and offset bookkeeping on rebalances.
struct GroupContext {
    logger: Logger,
    tracker: Arc<Tracker>,
    /// Set once the first assignment arrived: the source is consuming.
    assigned: AtomicBool,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.logger.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logger.error(error, reason);
    }
}

fn partition_names(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect()
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (source, address) = (&self.logger.source, &self.logger.address);
        if let Rebalance::Revoke(tpl) = rebalance {
            // What is settled is committed before another host takes over;
            // what is still in flight here will be delivered there again.
            let commit = self.tracker.revoke(tpl);
            if commit.count() > 0
                && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
            {
                tracing::warn!(%source, %address, error = %e, "Kafka: cannot commit the offsets of revoked partitions");
            }
            tracing::info!(%source, %address, partitions = ?partition_names(tpl), "Kafka partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (source, address) = (&self.logger.source, &self.logger.address);
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.tracker.assign(tpl);
                if tpl.count() > 0 {
                    self.assigned.store(true, Ordering::SeqCst);
                    tracing::info!(%source, %address, partitions = ?partition_names(tpl), "consuming Kafka partitions");
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(%source, %address, error = %e, "Kafka: rebalance failed"),
        }
    }
}

/// The producer shared by a source's settlements and its publisher, created
/// on first use.
pub struct Producer {
    name: String,
    config: KafkaConfig,
    producer: tokio::sync::OnceCell<FutureProducer<Logger>>,
}

impl Producer {
    fn new(name: &str, config: &KafkaConfig) -> Self {
        Self { name: name.to_string(), config: config.clone(), producer: tokio::sync::OnceCell::new() }
    }

    async fn get(&self) -> Result<&FutureProducer<Logger>, String> {
        self.producer
            .get_or_try_init(|| async {
                let mut config = self.config.client_config(&self.name);
                config.set("message.timeout.ms", self.config.produce_timeout_ms.to_string()).set("acks", "all");
                config
                    .create_with_context(Logger { source: self.name.clone(), address: self.config.brokers.clone() })
                    .map_err(|e| format!("cannot create a producer: {e}"))
            })
            .await
    }

    /// Produce every record and wait until the broker has them all.
    async fn produce(&self, records: &[Record]) -> Result<(), String> {
        let producer = self.get().await?;
        let timeout = Duration::from_millis(self.config.produce_timeout_ms);
        let sends = records.iter().map(|r| {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
            }
            let mut record = FutureRecord::to(&r.topic).payload(&r.payload[..]).headers(headers);
            if let Some(key) = &r.key {
                record = record.key(key.as_bytes());
            }
            async move {
                producer.send(record, timeout).await.map_err(|(e, _)| format!("cannot produce to {:?}: {e}", r.topic))
            }
        });
        for result in futures::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }
}

/// A record to produce.
struct Record {
    topic: String,
    key: Option<String>,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

#[async_trait]
impl Publisher for Producer {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError> {
        let records: Vec<Record> = messages
            .into_iter()
            .map(|m| Record {
                topic: m.destination,
                key: m.key,
                headers: m.headers.into_iter().filter(|(k, _)| k != KEY_HEADER).collect(),
                payload: m.payload,
            })
            .collect();
        self.produce(&records).await.map_err(|e| {
            BackendError::Unavailable(format!("Kafka source {} at {}: {e}", self.name, self.config.brokers))
        })
    }
}

/// The `kafka` source.
pub struct KafkaSource {
    name: String,
    config: KafkaConfig,
    max_in_flight: usize,
    producer: Arc<Producer>,
}

/// What the settlements of one consumer share.
struct Shared {
    source: String,
    address: String,
    consumer: Arc<StreamConsumer<GroupContext>>,
    tracker: Arc<Tracker>,
    /// Commits one at a time, so a later position is never overwritten by
    /// an earlier one that was slower to arrive.
    commit_lock: tokio::sync::Mutex<()>,
    /// Records handed on and not yet settled.
    held: AtomicUsize,
    room: tokio::sync::Notify,
    /// Woken after every commit, for settlements waiting for theirs.
    commits: tokio::sync::Notify,
    producer: Arc<Producer>,
    /// Cancelled when the host stops taking messages; ends retry waits.
    shutdown: CancellationToken,
}

impl Shared {
    /// Commit every position that moved.
    async fn commit(&self) -> Result<(), String> {
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
        let mut config = self.config.client_config(&self.name);
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
        let admin: AdminClient<Logger> = self
            .config
            .client_config(&self.name)
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

    fn message(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Message {
        let mut headers = Vec::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                headers.push((h.key.to_string(), value));
            }
        }
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let attempt = find(ATTEMPT_HEADER).and_then(|a| a.parse::<u32>().ok()).unwrap_or(1).max(1);
        let id = find(ID_HEADER).unwrap_or_else(|| format!("{}:{}:{}", m.topic(), m.partition(), m.offset()));
        let topic = match (&self.config.retry_topic, find(TOPIC_HEADER)) {
            (Some(retry), Some(origin)) if retry == m.topic() => origin,
            _ => m.topic().to_string(),
        };
        Message {
            id,
            source: self.name.clone(),
            topic,
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            attempt,
            reply_to: None,
            timestamp_ms: m.timestamp().to_millis().and_then(|t| u64::try_from(t).ok()),
        }
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
                Ok(record) => (self.message(&record), record.topic().to_string(), record.partition(), record.offset()),
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

struct KafkaSettle {
    shared: Arc<Shared>,
    /// The topic the record was read from (the retry topic, for a retry).
    record_topic: String,
    partition: i32,
    offset: i64,
    generation: usize,
    dead_letter: String,
    retry_topic: Option<String>,
    released: bool,
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
                    with_header(message.headers.clone(), ATTEMPT_HEADER, (message.attempt + 1).to_string());
                headers = with_header(headers, ID_HEADER, message.id.clone());
                headers = with_header(headers, TOPIC_HEADER, message.topic.clone());
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
                all = with_header(all, TOPIC_HEADER, message.topic.clone());
                all.push(("switchyard-partition".into(), self.partition.to_string()));
                all.push(("switchyard-offset".into(), self.offset.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker_with(partitions: &[(&str, i32)]) -> Tracker {
        let tracker = Tracker::default();
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, *p);
        }
        tracker.assign(&tpl);
        tracker
    }

    fn due(tracker: &Tracker) -> Vec<(String, i32, i64)> {
        let mut v: Vec<_> = tracker
            .due()
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commits_only_below_the_lowest_unsettled_offset() {
        let tracker = tracker_with(&[("t", 0)]);
        let g = (10..15).map(|o| tracker.delivered("t", 0, o)).collect::<Vec<_>>();
        assert!(due(&tracker).iter().all(|(_, _, o)| *o == 10), "nothing settled yet: commit stays at 10");
        // Settled out of order: 11, 12 and 14 are done, 10 and 13 are not.
        for o in [11, 12, 14] {
            tracker.settled("t", 0, o, g[0]);
        }
        assert_eq!(due(&tracker), [("t".to_string(), 0, 10)]);
        tracker.settled("t", 0, 10, g[0]);
        assert_eq!(due(&tracker), [("t".to_string(), 0, 13)], "10 to 12 settled; 13 is not");
        tracker.committed(&tracker.due());
        assert!(due(&tracker).is_empty(), "nothing new to commit");
        tracker.settled("t", 0, 13, g[0]);
        assert_eq!(due(&tracker), [("t".to_string(), 0, 15)], "everything settled: commit past the last");
    }

    #[test]
    fn a_settlement_from_before_a_rebalance_does_not_touch_the_new_assignment() {
        let tracker = tracker_with(&[("t", 0)]);
        let old = tracker.delivered("t", 0, 5);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 0);
        let revoked = tracker.revoke(&tpl);
        assert_eq!(revoked.count(), 1, "the position at revocation is committed");
        tracker.assign(&tpl);
        let new = tracker.delivered("t", 0, 5);
        tracker.settled("t", 0, 5, old);
        assert_eq!(due(&tracker), [("t".to_string(), 0, 5)], "the stale settlement must not settle the redelivery");
        tracker.settled("t", 0, 5, new);
        assert_eq!(due(&tracker), [("t".to_string(), 0, 6)]);
    }

    #[test]
    fn partitions_are_tracked_apart() {
        let tracker = tracker_with(&[("t", 0), ("t", 1)]);
        let g = tracker.delivered("t", 0, 0);
        tracker.delivered("t", 1, 0);
        tracker.settled("t", 0, 0, g);
        assert_eq!(due(&tracker), [("t".to_string(), 0, 1), ("t".to_string(), 1, 0)]);
    }

    #[test]
    fn config_rejects_unknown_fields_and_fills_defaults() {
        let c: KafkaConfig = toml::from_str("brokers = \"127.0.0.1:9092\"\ntopics = [\"orders\"]").unwrap();
        assert_eq!(c.group, "switchyard");
        assert_eq!(c.dead_letter_topic("orders"), "orders.dead-letter");
        assert_eq!(c.start_from, StartFrom::Earliest);
        let bad = toml::from_str::<KafkaConfig>("brokers = \"x\"\ntopics = []\ngroup_id = \"g\"");
        assert!(bad.unwrap_err().to_string().contains("group_id"));
    }
}
