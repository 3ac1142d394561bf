//! The conformance suite on Kafka, against tansu on 127.0.0.1:9092 (or
//! `KAFKA_BROKERS`). Each test has its own topic (four partitions, so two
//! hosts can share it) and its own consumer group.
//!
//! Not run here: the broker restart under load. The tansu broker these tests
//! run against keeps its data in its `memory://` storage engine, which loses
//! every topic and committed offset when the broker restarts, so a restart
//! cannot be told apart from data loss. The down-at-start check runs against
//! a port where nothing listens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use support::brokers::{self as conformance, Broker, DeadLetter, test_dir};
use support::unique;

const PARTITIONS: i32 = 4;
const TIMEOUT: Duration = Duration::from_secs(10);

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

struct Kafka {
    brokers: String,
    topic: String,
    group: String,
    producer: FutureProducer,
}

impl Kafka {
    async fn new(name: &str) -> Self {
        let brokers = brokers();
        let topic = unique(&format!("kafka-{name}"));
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
        let results = admin
            .create_topics(&[NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1))], &AdminOptions::new())
            .await
            .unwrap_or_else(|e| panic!("cannot create topic {topic} on {brokers}: {e}; is tansu running?"));
        for r in results {
            r.unwrap_or_else(|(t, code)| panic!("cannot create topic {t}: {code}"));
        }
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap();
        Self { brokers, group: format!("{topic}-group"), topic, producer }
    }

    fn reader(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .unwrap()
    }

    /// The partitions of `topic` and their (low, high) watermarks; empty if
    /// the topic does not exist (yet).
    fn watermarks(consumer: &BaseConsumer, topic: &str) -> Vec<(i32, i64, i64)> {
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), TIMEOUT) else { return Vec::new() };
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else { return Vec::new() };
        if t.error().is_some() {
            return Vec::new();
        }
        t.partitions()
            .iter()
            .filter_map(|p| {
                consumer.fetch_watermarks(topic, p.id(), TIMEOUT).ok().map(|(low, high)| (p.id(), low, high))
            })
            .collect()
    }
}

/// Every record of `topic`, read from the start to the current end.
fn read_all(consumer: &BaseConsumer, topic: &str) -> Vec<DeadLetter> {
    let ends: HashMap<i32, i64> = Kafka::watermarks(consumer, topic)
        .into_iter()
        .filter(|(_, low, high)| high > low)
        .map(|(p, _, high)| (p, high))
        .collect();
    if ends.is_empty() {
        return Vec::new();
    }
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut done: HashMap<i32, bool> = ends.keys().map(|p| (*p, false)).collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while done.values().any(|d| !d) {
        assert!(Instant::now() < deadline, "cannot read {topic} to its end");
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.unwrap();
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        records.push(DeadLetter { payload: m.payload().unwrap_or_default().to_vec(), headers });
        if m.offset() + 1 >= ends[&m.partition()] {
            done.insert(m.partition(), true);
        }
    }
    records
}

impl Broker for Kafka {
    fn source(&self) -> String {
        // A host killed mid-stream leaves the group after 6 s.
        format!(
            "type = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"{}\"]\ngroup = \"{}\"\nsession_timeout_ms = 6000",
            self.brokers, self.topic, self.group
        )
    }

    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        let mut record = FutureRecord::to(&self.topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .unwrap_or_else(|e| panic!("cannot publish to {}: {e}", self.topic));
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        let reader = self.reader(&unique("reader"));
        let topic = format!("{}.dead-letter", self.topic);
        tokio::task::spawn_blocking(move || read_all(&reader, &topic)).await.unwrap()
    }

    async fn backlog(&self) -> Option<u64> {
        // Records not yet committed by the host's group, over all partitions.
        let consumer = self.reader(&self.group);
        let topic = self.topic.clone();
        let backlog = tokio::task::spawn_blocking(move || {
            let marks = Kafka::watermarks(&consumer, &topic);
            let mut tpl = TopicPartitionList::new();
            for (p, _, _) in &marks {
                tpl.add_partition(&topic, *p);
            }
            let committed = consumer.committed_offsets(tpl, TIMEOUT).unwrap();
            marks
                .iter()
                .map(|(p, low, high)| {
                    let at = match committed.find_partition(&topic, *p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => *low,
                    };
                    (high - at).max(0) as u64
                })
                .sum()
        })
        .await
        .unwrap();
        Some(backlog)
    }
}

#[tokio::test]
async fn ack() {
    conformance::ack(&Kafka::new("ack").await, &test_dir("kafka-ack")).await;
}

#[tokio::test]
async fn retry_after_delay() {
    conformance::retry_after_delay(&Kafka::new("retry").await, &test_dir("kafka-retry")).await;
}

#[tokio::test]
async fn reject_goes_to_dead_letter() {
    conformance::reject_goes_to_dead_letter(&Kafka::new("reject").await, &test_dir("kafka-reject")).await;
}

#[tokio::test]
async fn trap_retried_then_dead_lettered() {
    conformance::trap_retried_then_dead_lettered(&Kafka::new("trap").await, &test_dir("kafka-trap")).await;
}

#[tokio::test]
async fn order_per_key() {
    conformance::order_per_key(&Kafka::new("order").await, &test_dir("kafka-order")).await;
}

#[tokio::test]
async fn sigkill_and_restart() {
    conformance::sigkill_and_restart(&Kafka::new("kill").await, &test_dir("kafka-kill"), 16).await;
}

#[tokio::test]
async fn sigterm_drains() {
    conformance::sigterm_drains(&Kafka::new("drain").await, &test_dir("kafka-drain")).await;
}

#[tokio::test]
async fn scale_out() {
    conformance::scale_out(&Kafka::new("scale").await, &test_dir("kafka-scale")).await;
}

// `conformance::broker_restart` is not run: see the module doc. tansu's
// `memory://` engine loses every topic and offset on restart.

#[tokio::test]
async fn down_at_start() {
    let port = support::free_port();
    let source = format!("type = \"kafka\"\nbrokers = \"127.0.0.1:{port}\"\ntopics = [\"nowhere\"]");
    conformance::down_at_start(&source, &test_dir("kafka-down"), &format!("127.0.0.1:{port}"), "Kafka").await;
}

/// The publisher handlers reach as `<source>:<topic>`: it produces the
/// record with its key and headers, and returns once the broker has it.
#[tokio::test]
async fn publisher_produces_to_the_topic() {
    use switchyard::contract::bindings::publish::Outgoing;

    let kafka = Kafka::new("publish").await;
    let config: switchyard::config::KafkaConfig =
        toml::from_str(&format!("brokers = \"{}\"\ntopics = [\"{}\"]", kafka.brokers, kafka.topic)).unwrap();
    let (_source, publisher) = switchyard::sources::kafka::source::build("out", &config, 1);
    publisher
        .publish(vec![Outgoing {
            destination: kafka.topic.clone(),
            payload: b"hello".to_vec(),
            headers: vec![("order-id".into(), "42".into())],
            key: Some("k1".into()),
        }])
        .await
        .unwrap();
    let reader = kafka.reader(&unique("reader"));
    let topic = kafka.topic.clone();
    let records = tokio::task::spawn_blocking(move || read_all(&reader, &topic)).await.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].payload, b"hello");
    assert_eq!(records[0].header("order-id"), Some("42"));

    // A topic that does not exist fails as `unavailable`, naming the source.
    let config: switchyard::config::KafkaConfig = toml::from_str(&format!(
        "brokers = \"{}\"\ntopics = [\"{}\"]\nproduce_timeout_ms = 2000",
        kafka.brokers, kafka.topic
    ))
    .unwrap();
    let (_source, publisher) = switchyard::sources::kafka::source::build("out", &config, 1);
    let missing = unique("missing-topic");
    let err = publisher
        .publish(vec![Outgoing {
            destination: missing.clone(),
            payload: b"x".to_vec(),
            headers: Vec::new(),
            key: None,
        }])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Kafka source out") && err.contains(&missing), "{err}");
}
