//! The conformance suite on RabbitMQ (127.0.0.1:5672, or `AMQP_URL`).
//!
//! Needs the plugins (`make plugins`) and a running RabbitMQ; the broker
//! restart test uses `rabbitmqctl`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test
#![allow(clippy::await_holding_lock)] // see `BROKER`

mod support;

use std::sync::{Mutex, RwLock};

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use support::brokers::{self as conformance, Broker, DeadLetter, test_dir};
use support::unique;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Tests share RabbitMQ; the broker restart test takes it away from the
/// others, so it runs alone. Each test holds its guard across its awaits on
/// purpose: every test has a runtime and a thread of its own, so waiting on
/// this lock blocks only the test that waits.
static BROKER: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    BROKER.read().unwrap_or_else(|e| e.into_inner())
}

struct Rabbit {
    queue: String,
    link: tokio::sync::Mutex<(Connection, Channel)>,
    dead: Mutex<Vec<DeadLetter>>,
}

async fn connect() -> (Connection, Channel) {
    let connection = Connection::connect(&url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    (connection, channel)
}

impl Rabbit {
    /// A fresh queue, declared as the source declares it, so messages sent
    /// before the host starts are kept.
    async fn new(name: &str) -> Self {
        let queue = unique(name);
        let (connection, channel) = connect().await;
        let mut args = FieldTable::default();
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("switchyard.dead-letter".into()));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.as_str().into()));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(queue.as_str().into(), durable, args).await.unwrap();
        channel
            .queue_declare(format!("{queue}.dead-letter").as_str().into(), durable, FieldTable::default())
            .await
            .unwrap();
        Self { queue, link: tokio::sync::Mutex::new((connection, channel)), dead: Mutex::new(Vec::new()) }
    }

    /// The channel, reconnected if the broker restarted.
    async fn channel(&self) -> Channel {
        let mut link = self.link.lock().await;
        if !link.1.status().connected() {
            *link = connect().await;
        }
        link.1.clone()
    }

    async fn count(&self, queue: &str) -> u64 {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let q = self.channel().await.queue_declare(queue.into(), passive, FieldTable::default()).await.unwrap();
        q.message_count() as u64
    }
}

impl Broker for Rabbit {
    fn source(&self) -> String {
        format!("type = \"amqp\"\nurl = \"{}\"\nqueues = [\"{}\"]", url(), self.queue)
    }

    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        let mut headers = FieldTable::default();
        if let Some(key) = key {
            headers.insert("switchyard-key".into(), AMQPValue::LongString(key.into()));
        }
        let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        let confirm = self
            .channel()
            .await
            .basic_publish("".into(), self.queue.as_str().into(), BasicPublishOptions::default(), payload, props)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        let dlq = format!("{}.dead-letter", self.queue);
        loop {
            let got =
                self.channel().await.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap();
            let Some(m) = got else { break };
            let headers = m
                .delivery
                .properties
                .headers()
                .as_ref()
                .map(|t| {
                    t.inner()
                        .iter()
                        .map(|(k, v)| {
                            let text = match v {
                                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                                other => format!("{other:?}"),
                            };
                            (k.to_string(), text)
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.dead.lock().unwrap().push(DeadLetter { payload: m.delivery.data.clone(), headers });
        }
        self.dead.lock().unwrap().clone()
    }

    async fn backlog(&self) -> Option<u64> {
        // Unacked messages go back to ready when the host's channel closes.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        Some(self.count(&self.queue).await)
    }
}

#[tokio::test]
async fn ack() {
    let _shared = shared();
    conformance::ack(&Rabbit::new("ack").await, &test_dir("amqp-ack")).await;
}

#[tokio::test]
async fn retry_after_delay() {
    let _shared = shared();
    conformance::retry_after_delay(&Rabbit::new("retry").await, &test_dir("amqp-retry")).await;
}

#[tokio::test]
async fn reject_goes_to_dead_letter() {
    let _shared = shared();
    conformance::reject_goes_to_dead_letter(&Rabbit::new("reject").await, &test_dir("amqp-reject")).await;
}

#[tokio::test]
async fn trap_retried_then_dead_lettered() {
    let _shared = shared();
    conformance::trap_retried_then_dead_lettered(&Rabbit::new("trap").await, &test_dir("amqp-trap")).await;
}

#[tokio::test]
async fn order_per_key() {
    let _shared = shared();
    conformance::order_per_key(&Rabbit::new("order").await, &test_dir("amqp-order")).await;
}

#[tokio::test]
async fn sigkill_and_restart() {
    let _shared = shared();
    // At most the prefetch (twice the route's concurrency of 8) in flight.
    conformance::sigkill_and_restart(&Rabbit::new("kill").await, &test_dir("amqp-kill"), 16).await;
}

/// The suite's settlement, failure, order and crash checks again, with
/// bounded instance reuse on the route.
#[tokio::test]
async fn with_instance_reuse() {
    use conformance::Reusing;
    let _shared = shared();
    conformance::ack(&Reusing(Rabbit::new("reuse-ack").await), &test_dir("amqp-reuse-ack")).await;
    conformance::reject_goes_to_dead_letter(
        &Reusing(Rabbit::new("reuse-reject").await),
        &test_dir("amqp-reuse-reject"),
    )
    .await;
    let trap = Reusing(Rabbit::new("reuse-trap").await);
    conformance::trap_retried_then_dead_lettered(&trap, &test_dir("amqp-reuse-trap")).await;
    conformance::order_per_key(&Reusing(Rabbit::new("reuse-order").await), &test_dir("amqp-reuse-order")).await;
    let kill = Reusing(Rabbit::new("reuse-kill").await);
    conformance::sigkill_and_restart(&kill, &test_dir("amqp-reuse-kill"), 16).await;
}

#[tokio::test]
async fn sigterm_drains() {
    let _shared = shared();
    conformance::sigterm_drains(&Rabbit::new("drain").await, &test_dir("amqp-drain")).await;
}

#[tokio::test]
async fn scale_out() {
    let _shared = shared();
    conformance::scale_out(&Rabbit::new("scale").await, &test_dir("amqp-scale")).await;
}

#[tokio::test]
async fn down_at_start() {
    let _shared = shared();
    let port = support::free_port();
    let source = format!("type = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:{port}/%2f\"\nqueues = [\"nowhere\"]");
    conformance::down_at_start(&source, &test_dir("amqp-down"), &format!("127.0.0.1:{port}"), "RabbitMQ").await;
}

/// Stops and starts the shared RabbitMQ, alone: the other tests of this
/// file wait for it.
#[tokio::test]
async fn broker_restart() {
    let _alone = BROKER.write().unwrap_or_else(|e| e.into_inner());
    let rabbit = Rabbit::new("restart").await;
    conformance::broker_restart(&rabbit, &test_dir("amqp-restart"), 10, || async {
        let ctl = |cmd: &str| {
            let ok = std::process::Command::new("rabbitmqctl").arg(cmd).status().map(|s| s.success()).unwrap_or(false);
            assert!(ok, "rabbitmqctl {cmd} failed");
        };
        ctl("stop_app");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        ctl("start_app");
    })
    .await;
}
