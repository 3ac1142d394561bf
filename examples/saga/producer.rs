//! The saga scenario's producer: orders sent to `order-topic` with
//! RocketMQ's own client (`rocketmq-client-rust`), as the integration
//! guide's `rocketMQTemplate.convertAndSend("order-topic", orderInfo)` does.
//! Each order is sent with its id as key, to the queue the key picks, so an
//! order's later messages stay behind it.
//!
//!     cargo run --release --example saga-producer                  # the demo orders below
//!     cargo run --release --example saga-producer -- --text widget # the guide's: an order as plain text
//!     cargo run --release --example saga-producer -- --orders 500 --twice
//!
//! Of N generated orders (`--orders N`) most go through; every 5th asks for
//! 10 gadgets, more than there are, and every 7th is bob's and costs more
//! than he has. `--help` lists the options.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Parser;
use rocketmq_client_rust::{ClientRuntime, ClientRuntimeConfig, DefaultMQProducer};
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};
use serde_json::json;

/// Sends orders to the saga scenario's `order-topic`.
#[derive(Parser)]
pub struct Options {
    /// The RocketMQ name server.
    #[arg(long, default_value = "127.0.0.1:9876")]
    pub name_server: String,
    /// The topic the orders go to.
    #[arg(long, default_value = "order-topic")]
    pub topic: String,
    /// Send this many generated orders instead of the three demo ones.
    #[arg(long)]
    pub orders: Option<usize>,
    /// The start of every order id.
    #[arg(long, default_value = "order")]
    pub prefix: String,
    /// Send every order twice, as a producer retrying a send does.
    #[arg(long)]
    pub twice: bool,
    /// Send one order as the guide does: this text, an item, and no key.
    #[arg(long)]
    pub text: Option<String>,
}

/// The orders to send: `(key, body)`.
fn orders(o: &Options) -> Vec<(String, Vec<u8>)> {
    if let Some(text) = &o.text {
        // As the guide sends it: no key, the text as it is.
        return vec![(String::new(), text.clone().into_bytes())];
    }
    let order = |id: String, customer: &str, item: &str, qty: i64, amount: i64| {
        let body = json!({"order": id, "customer": customer, "item": item, "qty": qty, "amount": amount});
        (id, body.to_string().into_bytes())
    };
    let Some(n) = o.orders else {
        let p = &o.prefix;
        return vec![
            order(format!("{p}-1001"), "alice", "widget", 2, 30), // goes through
            order(format!("{p}-1002"), "alice", "gadget", 10, 10), // out of stock: cancelled
            order(format!("{p}-1003"), "bob", "widget", 1, 50),   // declined: stock back, cancelled
        ];
    };
    (1..=n)
        .map(|i| {
            let id = format!("{}-{i}", o.prefix);
            if i % 5 == 0 {
                order(id, "alice", "gadget", 10, 10)
            } else if i % 7 == 0 {
                order(id, "bob", "widget", 1, 50)
            } else {
                order(id, "alice", "widget", (i % 3 + 1) as i64, 1)
            }
        })
        .collect()
}

/// The queue of `key`: the same key, the same queue.
fn queue_of(queues: &[MessageQueue], key: &str) -> Option<MessageQueue> {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    queues.get(usize::try_from(hash % u64::try_from(queues.len()).ok()?).ok()?).cloned()
}

/// The client runtime, made once: it lives as long as the process.
fn runtime() -> anyhow::Result<Arc<ClientRuntime>> {
    static RUNTIME: Mutex<Option<Arc<ClientRuntime>>> = Mutex::new(None);
    let mut held = RUNTIME.lock().map_err(|_| anyhow::anyhow!("the client runtime's lock is poisoned"))?;
    if let Some(client) = &*held {
        return Ok(client.clone());
    }
    let owner: &'static RuntimeOwner =
        Box::leak(Box::new(RuntimeOwner::plan(RuntimeConfig::for_parallelism("producer", 2))?.build()?));
    let client = ClientRuntime::try_new(
        owner.root_context().component("client"),
        ClientRuntimeConfig::default(),
        rocketmq_observability::TelemetryHandle::noop(),
    )?;
    *held = Some(client.clone());
    Ok(client)
}

/// Send the orders `o` asks for; how many were sent.
pub async fn send(o: &Options) -> anyhow::Result<usize> {
    let mut producer = DefaultMQProducer::builder(runtime()?)
        .producer_group("saga-producer")
        .name_server_addr(o.name_server.as_str())
        .build();
    producer.start().await.with_context(|| format!("cannot reach the name server at {}", o.name_server))?;
    let mut sent = 0;
    for _ in 0..if o.twice { 2 } else { 1 } {
        for (key, body) in orders(o) {
            let mut message = Message::builder().topic(o.topic.as_str()).body_slice(&body);
            if key.is_empty() {
                producer.send(message.build()?).await.with_context(|| format!("cannot send to {}", o.topic))?;
            } else {
                message = message.key(key.as_str());
                producer
                    .send_with_selector(
                        message.build()?,
                        |queues: &[MessageQueue], _: &Message, key: &String| queue_of(queues, key),
                        key.clone(),
                    )
                    .await
                    .with_context(|| format!("cannot send to {}", o.topic))?;
            }
            sent += 1;
        }
    }
    producer.shutdown().await;
    Ok(sent)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Options::parse();
    let sent = send(&o).await?;
    println!("sent {sent} orders to {}", o.topic);
    Ok(())
}
