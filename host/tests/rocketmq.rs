//! The conformance suite on RocketMQ, against the Rust implementation of
//! RocketMQ's name server on 127.0.0.1:9876 (or `ROCKETMQ_NAMESRV`) and its
//! broker, which `scripts/rocketmq.sh` installs and starts. Each test has
//! its own topic (four queues, so two hosts can share it) and its own
//! consumer group. The messages are sent, and the dead letters and the
//! group's offsets read, with the stock RocketMQ client.
//!
//! Not run here: the broker restart under load, since the broker is shared
//! by every test running at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// a failed assumption in a test is a failed test
// The classic pull consumer reads a queue from a given offset, which is what
// reading a dead-letter queue back needs.
#![allow(deprecated)]

mod support;

use rocketmq_client_rust::{DefaultMQAdminExt, DefaultMQProducer, DefaultMQPullConsumer, MQAdminReadExt};
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use support::brokers::{self as conformance, Broker, DeadLetter, test_dir};
use support::unique;
use switchyard::sources::rocketmq::client::{is_system_property, runtime};

const QUEUES: i32 = 4;

fn name_server() -> String {
    std::env::var("ROCKETMQ_NAMESRV").unwrap_or_else(|_| "127.0.0.1:9876".into())
}

struct RocketMq {
    name_server: String,
    topic: String,
    group: String,
    producer: DefaultMQProducer,
}

impl RocketMq {
    async fn new(name: &str) -> Self {
        let name_server = name_server();
        // Topic and group names allow letters, digits, `_`, `-` and `%`.
        let topic = unique(&format!("rocketmq-{name}"));
        let mut producer = DefaultMQProducer::builder(runtime().unwrap())
            .producer_group(format!("{topic}-producer"))
            .name_server_addr(name_server.as_str())
            .build();
        producer.start().await.unwrap();
        producer
            .create_topic("TBW102", &topic, QUEUES, Default::default())
            .await
            .unwrap_or_else(|e| panic!("cannot create topic {topic} at {name_server}: {e}; is the broker running?"));
        Self { name_server, group: format!("{topic}-group"), topic, producer }
    }

    /// Every message on `topic`, read from the start of each queue.
    async fn read_all(&self, topic: &str) -> Vec<DeadLetter> {
        let reader = DefaultMQPullConsumer::builder(runtime().unwrap())
            .consumer_group(unique("reader"))
            .name_server_addr(self.name_server.as_str())
            .build()
            .unwrap();
        reader.start().await.unwrap();
        let mut found = Vec::new();
        // A topic nobody sent to yet does not exist.
        if let Ok(queues) = reader.fetch_subscribe_message_queues(topic).await {
            for queue in queues {
                let mut offset = 0;
                loop {
                    let result = reader.pull(&queue, "*", offset, 32).await.unwrap();
                    let Some(messages) = result.msg_found_list().filter(|l| !l.is_empty()) else { break };
                    for m in messages {
                        let headers = m
                            .properties()
                            .iter()
                            .filter(|(k, _)| !is_system_property(k))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect();
                        found.push(DeadLetter { payload: m.body().map(|b| b.to_vec()).unwrap_or_default(), headers });
                    }
                    offset = i64::try_from(result.next_begin_offset()).unwrap();
                }
            }
        }
        let _ = reader.shutdown().await;
        found
    }
}

impl Broker for RocketMq {
    fn source(&self) -> String {
        format!(
            "type = \"rocketmq\"\nname_server = \"{}\"\ntopics = [\"{}\"]\ngroup = \"{}\"",
            self.name_server, self.topic, self.group
        )
    }

    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        let mut message = Message::builder().topic(self.topic.as_str()).body_slice(payload);
        if let Some(key) = key {
            message = message.key(key);
        }
        let message = message.build().unwrap();
        let sent = match key {
            // The stock way to keep a key's messages in order: one queue per key.
            Some(key) => {
                self.producer
                    .send_with_selector(
                        message,
                        |queues: &[MessageQueue], _: &Message, key: &String| {
                            let hash = key.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
                            queues.get(hash as usize % queues.len()).cloned()
                        },
                        key.to_string(),
                    )
                    .await
            }
            None => self.producer.send(message).await,
        };
        sent.unwrap_or_else(|e| panic!("cannot send to {}: {e}", self.topic));
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.read_all(&format!("%DLQ%{}", self.group)).await
    }

    async fn backlog(&self) -> Option<u64> {
        // What the group has not yet committed, over the topic's queues.
        let mut admin = DefaultMQAdminExt::new(runtime().unwrap());
        admin.set_namesrv_addr(self.name_server.as_str());
        admin.start().await.unwrap();
        let stats = admin
            .examine_consume_stats(self.group.as_str().into(), Some(self.topic.as_str().into()), None, None, None)
            .await
            .unwrap_or_else(|e| panic!("cannot read the offsets of group {}: {e}", self.group));
        Some(u64::try_from(stats.compute_total_diff()).unwrap())
    }

    fn counts_deliveries(&self) -> bool {
        // An orderly consumer counts redeliveries itself, in memory.
        false
    }
}

#[tokio::test]
async fn ack() {
    conformance::ack(&RocketMq::new("ack").await, &test_dir("rocketmq-ack")).await;
}

#[tokio::test]
async fn retry_after_delay() {
    conformance::retry_after_delay(&RocketMq::new("retry").await, &test_dir("rocketmq-retry")).await;
}

#[tokio::test]
async fn reject_goes_to_dead_letter() {
    let broker = RocketMq::new("reject").await;
    conformance::reject_goes_to_dead_letter(&broker, &test_dir("rocketmq-reject")).await;
}

#[tokio::test]
async fn trap_retried_then_dead_lettered() {
    let broker = RocketMq::new("trap").await;
    conformance::trap_retried_then_dead_lettered(&broker, &test_dir("rocketmq-trap")).await;
}

#[tokio::test]
async fn order_per_key() {
    conformance::order_per_key(&RocketMq::new("order").await, &test_dir("rocketmq-order")).await;
}

#[tokio::test]
async fn sigkill_and_restart() {
    let broker = RocketMq::new("kill").await;
    conformance::sigkill_and_restart(&broker, &test_dir("rocketmq-kill"), 16).await;
}

#[tokio::test]
async fn sigterm_drains() {
    conformance::sigterm_drains(&RocketMq::new("drain").await, &test_dir("rocketmq-drain")).await;
}

#[tokio::test]
async fn scale_out() {
    conformance::scale_out(&RocketMq::new("scale").await, &test_dir("rocketmq-scale")).await;
}

#[tokio::test]
async fn down_at_start() {
    let port = support::free_port();
    let source = format!("type = \"rocketmq\"\nname_server = \"127.0.0.1:{port}\"\ntopics = [\"nowhere\"]");
    conformance::down_at_start(&source, &test_dir("rocketmq-down"), &format!("127.0.0.1:{port}"), "RocketMQ").await;
}

/// The publisher handlers reach as `<source>:<topic>`: it sends the message
/// with its key and properties, and returns once the broker has it; a
/// header named like a system property is refused, naming it.
#[tokio::test]
async fn publisher_sends_to_the_topic() {
    use switchyard::contract::bindings::publish::Outgoing;

    let broker = RocketMq::new("publish").await;
    let config: switchyard::config::RocketMqConfig =
        toml::from_str(&format!("name_server = \"{}\"\ntopics = [\"{}\"]", broker.name_server, broker.topic)).unwrap();
    let (_source, publisher) = switchyard::sources::rocketmq::source::build("out", &config, 1);
    publisher
        .publish(vec![Outgoing {
            destination: broker.topic.clone(),
            payload: b"hello".to_vec(),
            headers: vec![("order-id".into(), "42".into())],
            key: Some("k1".into()),
        }])
        .await
        .unwrap();
    let sent = broker.read_all(&broker.topic).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].payload, b"hello");
    assert_eq!(sent[0].header("order-id"), Some("42"));

    let err = publisher
        .publish(vec![Outgoing {
            destination: broker.topic.clone(),
            payload: b"x".to_vec(),
            headers: vec![("UNIQ_KEY".into(), "forged".into())],
            key: None,
        }])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("RocketMQ source out") && err.contains("UNIQ_KEY"), "{err}");
}
