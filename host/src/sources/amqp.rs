//! The `amqp` source and publisher: RabbitMQ, through lapin.
//!
//! The source declares its exchanges, queues and bindings (all durable), and
//! consumes its queues with manual acks and a prefetch sized from its routes'
//! concurrency. Several hosts on one queue are competing consumers.
//!
//! Settlement uses RabbitMQ's own mechanisms, each step confirmed by the
//! broker (publisher confirms) before the delivery is acked:
//! - ack: `basic.ack`;
//! - retry after a delay: the message is republished into the retry queue
//!   `<queue>.retry.<delay_ms>`, whose TTL dead-letters it back into
//!   `<queue>` when the delay has passed; the `switchyard-attempt` header
//!   counts the attempts;
//! - dead letter: the message is published to the dead-letter exchange with
//!   the reason headers, routed by the queue name into `<queue>.dead-letter`.
//!   Each queue also names that exchange as its `x-dead-letter-exchange`, so
//!   what the broker itself drops (a TTL, a length limit) lands there too.
//!
//! A delivery whose connection died before it was settled is redelivered by
//! the broker, which at-least-once allows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use crate::config::{AmqpConfig, AmqpQueueMode};
use crate::contract::bindings::Message;
use crate::contract::bindings::publish::Outgoing;
use crate::contract::errors::BackendError;
use crate::contract::headers;
use crate::contract::publish::Publisher;
use crate::contract::source::{Delivery, Settle, Settlement, Source, SourceError};
use crate::contract::util::{now_ms, redact};

/// The source and publisher for one `amqp` source config.
pub fn build(name: &str, config: &AmqpConfig, concurrency: usize) -> (Box<dyn Source>, Arc<dyn Publisher>) {
    let prefetch =
        config.prefetch.unwrap_or_else(|| (concurrency.saturating_mul(2)).clamp(1, u16::MAX as usize) as u16);
    let source = AmqpSource { name: name.to_string(), config: config.clone(), prefetch };
    let publisher = AmqpPublisher::new(name, &config.url);
    (Box::new(source), Arc::new(publisher))
}

/// The `amqp` source.
pub struct AmqpSource {
    name: String,
    config: AmqpConfig,
    prefetch: u16,
}

/// Why a consuming session ended.
enum Ended {
    Shutdown,
    Failed(String),
}

fn failed(what: &str, e: impl std::fmt::Display) -> Ended {
    Ended::Failed(format!("{what}: {e}"))
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

impl AmqpSource {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "amqp";

    fn connection_properties(&self) -> ConnectionProperties {
        ConnectionProperties::default().with_connection_name(format!("switchyard source {}", self.name).into())
    }

    /// Declare the topology: exchanges, the dead-letter exchange, the queues
    /// with their dead-letter queues, and the bindings.
    async fn declare(&self, channel: &Channel) -> Result<(), Ended> {
        let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        for exchange in &self.config.exchanges {
            channel
                .exchange_declare(
                    exchange.name.as_str().into(),
                    exchange_kind(&exchange.kind),
                    durable_exchange,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| failed(&format!("cannot declare exchange {:?}", exchange.name), e))?;
        }
        let dlx = self.config.dead_letter_exchange.as_str();
        channel
            .exchange_declare(dlx.into(), ExchangeKind::Direct, durable_exchange, FieldTable::default())
            .await
            .map_err(|e| failed(&format!("cannot declare dead-letter exchange {dlx:?}"), e))?;
        for queue in &self.config.queues {
            let dlq = AmqpConfig::dead_letter_queue(queue);
            channel
                .queue_declare(dlq.as_str().into(), durable_queue(), FieldTable::default())
                .await
                .map_err(|e| failed(&format!("cannot declare dead-letter queue {dlq:?}"), e))?;
            channel
                .queue_bind(
                    dlq.as_str().into(),
                    dlx.into(),
                    queue.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| failed(&format!("cannot bind {dlq:?} to {dlx:?}"), e))?;
            let mut args = FieldTable::default();
            let options = match self.config.queue_mode {
                AmqpQueueMode::Durable => {
                    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx.into()));
                    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.as_str().into()));
                    durable_queue()
                }
                AmqpQueueMode::Plain => QueueDeclareOptions::default(),
            };
            channel.queue_declare(queue.as_str().into(), options, args).await.map_err(|e| {
                failed(
                    &format!("cannot declare queue {queue:?} (if it exists with other arguments, it must name {dlx:?} as its x-dead-letter-exchange)"),
                    e,
                )
            })?;
        }
        for b in &self.config.bindings {
            channel
                .queue_bind(
                    b.queue.as_str().into(),
                    b.exchange.as_str().into(),
                    b.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    failed(
                        &format!(
                            "cannot bind queue {:?} to exchange {:?} with {:?}",
                            b.queue, b.exchange, b.routing_key
                        ),
                        e,
                    )
                })?;
        }
        Ok(())
    }

    /// One connection's life: connect, declare, consume until shutdown or
    /// until the connection fails.
    async fn session(
        &self,
        out: &mpsc::Sender<Delivery>,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        current: &mut Option<Arc<Link>>,
    ) -> Ended {
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            c = Connection::connect(&self.config.url, self.connection_properties()) => match c {
                Ok(c) => Arc::new(c),
                Err(e) => return failed("cannot connect", e),
            },
        };
        let setup = async {
            let consume = connection.create_channel().await.map_err(|e| failed("cannot open a channel", e))?;
            let publish = connection.create_channel().await.map_err(|e| failed("cannot open a channel", e))?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| failed("cannot enable publisher confirms", e))?;
            self.declare(&publish).await?;
            consume
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| failed("cannot set the prefetch", e))?;
            let mut consumers = Vec::new();
            for queue in &self.config.queues {
                let tag = format!("switchyard-{}-{}-{queue}", self.name, std::process::id());
                let consumer = consume
                    .basic_consume(
                        queue.as_str().into(),
                        tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| failed(&format!("cannot consume queue {queue:?}"), e))?;
                let queue: Arc<str> = queue.as_str().into();
                consumers.push((tag, consumer.map(move |d| (queue.clone(), d))));
            }
            Ok::<_, Ended>((consume, Arc::new(publish), consumers))
        };
        let (consume, publish, consumers) = match setup.await {
            Ok(parts) => parts,
            Err(e) => return e,
        };
        tracing::info!(source = %self.name, address = %redact(&self.config.url), queues = ?self.config.queues, prefetch = self.prefetch, "connected to RabbitMQ");
        backoff.reset();
        let tags: Vec<String> = consumers.iter().map(|(t, _)| t.clone()).collect();
        let mut deliveries = futures::stream::select_all(consumers.into_iter().map(|(_, c)| c));
        let link = Arc::new(Link {
            connection,
            consume: consume.clone(),
            publish,
            dlx: self.config.dead_letter_exchange.clone(),
        });
        *current = Some(link.clone());
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    // Stop the broker sending more; what was prefetched and not
                    // handed on goes back to the queue when the channel closes.
                    for tag in &tags {
                        let _ = consume.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    }
                    return Ended::Shutdown;
                }
                next = deliveries.next() => next,
            };
            let (queue, delivery) = match next {
                Some((queue, Ok(d))) => (queue, d),
                Some((_, Err(e))) => return failed("the connection failed", e),
                None => return Ended::Failed("the broker cancelled the consumers".into()),
            };
            let message = self.message(&queue, &delivery);
            let settle = Box::new(AmqpSettle {
                link: link.clone(),
                acker: delivery.acker,
                queue,
                properties: delivery.properties,
            });
            if out.send(Delivery { message, settle }).await.is_err() {
                return Ended::Shutdown;
            }
        }
    }

    fn message(&self, queue: &str, d: &lapin::message::Delivery) -> Message {
        let headers = d.properties.headers().as_ref().map(headers_of).unwrap_or_default();
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let attempt = find(headers::ATTEMPT)
            .and_then(|a| a.parse().ok())
            // Quorum queues count deliveries themselves.
            .or_else(|| find("x-delivery-count").and_then(|c| c.parse::<u32>().ok()).map(|c| c.saturating_add(1)))
            .unwrap_or(1);
        let id = d
            .properties
            .message_id()
            .as_ref()
            .map(|i| i.to_string())
            .filter(|i| !i.is_empty())
            .or_else(|| find(headers::ID).filter(|i| !i.is_empty()))
            .unwrap_or_else(|| format!("{queue}:{}", d.delivery_tag));
        Message {
            id,
            source: self.name.clone(),
            topic: queue.to_string(),
            key: find(headers::KEY),
            headers,
            payload: d.data.clone(),
            attempt,
            reply_to: d.properties.reply_to().as_ref().map(|r| format!("{}:{r}", self.name)),
            timestamp_ms: d.properties.timestamp().map(|s| s.saturating_mul(1000)),
        }
    }
}

/// AMQP headers as text. Nested tables and arrays (such as `x-death`) are
/// kept in their debug form, since a handler can only read them.
pub fn headers_of(table: &FieldTable) -> Vec<(String, String)> {
    table.inner().iter().map(|(k, v)| (k.to_string(), value_text(v))).collect()
}

fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        other => format!("{other:?}"),
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError> {
        let mut backoff = Backoff::default();
        let mut link = None;
        loop {
            match self.session(&out, &shutdown, &mut backoff, &mut link).await {
                Ended::Shutdown => {
                    drop(out);
                    if let Some(link) = link {
                        link.close(&self.name).await;
                    }
                    return Ok(());
                }
                Ended::Failed(reason) => {
                    let delay = backoff.next_delay();
                    tracing::error!(
                        source = %self.name,
                        address = %redact(&self.config.url),
                        retry_in_ms = delay.as_millis() as u64,
                        "RabbitMQ: {reason}; reconnecting"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// What the settlements of one connection share. Holding it keeps the
/// connection open until the last delivery on it is settled.
struct Link {
    connection: Arc<Connection>,
    /// The channel the deliveries came on: dropping it would close it, and
    /// their acks would fail.
    consume: Channel,
    /// A channel in confirm mode, for retries and dead letters.
    publish: Arc<Channel>,
    dlx: String,
}

impl Link {
    /// Once every delivery on this connection is settled, close it cleanly,
    /// so the acks still buffered reach the broker before the host exits.
    async fn close(self: Arc<Self>, source: &str) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        while Arc::strong_count(&self) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = self.consume.close(200, "switchyard shutting down".into()).await;
        if let Err(e) = self.connection.close(200, "switchyard shutting down".into()).await {
            tracing::warn!(%source, error = %e, "RabbitMQ: closing the connection failed");
        }
    }
}

struct AmqpSettle {
    link: Arc<Link>,
    acker: lapin::Acker,
    queue: Arc<str>,
    properties: BasicProperties,
}

impl AmqpSettle {
    fn error(&self, message: &Message, what: String) -> SourceError {
        SourceError::Failed { source_name: message.source.clone(), message: format!("queue {:?}: {what}", self.queue) }
    }

    /// Publish a copy of the message with `extra` headers, wait for the
    /// broker's confirm, then ack the original.
    async fn move_to(
        &self,
        message: &Message,
        exchange: &str,
        routing_key: &str,
        extra: Vec<(String, String)>,
    ) -> Result<(), SourceError> {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        for (k, v) in extra {
            headers.insert(k.into(), AMQPValue::LongString(v.into()));
        }
        let mut properties = self.properties.clone().with_headers(headers).with_delivery_mode(2);
        if properties.message_id().is_none() {
            // Keep the id stable across the retry, since the original had none.
            properties = properties.with_message_id(message.id.as_str().into());
        }
        let confirm = self
            .link
            .publish
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &message.payload,
                properties,
            )
            .await
            .map_err(|e| self.error(message, format!("cannot publish to {exchange:?}/{routing_key:?}: {e}")))?
            .await
            .map_err(|e| self.error(message, format!("no confirm from {exchange:?}/{routing_key:?}: {e}")))?;
        if !matches!(confirm, Confirmation::Ack(_)) {
            return Err(self.error(
                message,
                format!("the broker refused the message for {exchange:?}/{routing_key:?}: {confirm:?}"),
            ));
        }
        self.ack(message).await
    }

    async fn ack(&self, message: &Message) -> Result<(), SourceError> {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                Err(self.error(message, "the channel closed before the ack; the broker will redeliver".into()))
            }
            Err(e) => Err(self.error(message, format!("ack failed: {e}"))),
        }
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    fn retries_natively(&self) -> bool {
        true
    }

    async fn settle(self: Box<Self>, message: &Message, settlement: Settlement) -> Result<(), SourceError> {
        match settlement {
            Settlement::Ack => self.ack(message).await,
            Settlement::Retry { delay } => {
                let ms = delay.as_millis().max(1) as u64;
                let retry_queue = format!("{}.retry.{ms}", self.queue);
                let mut args = FieldTable::default();
                args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
                args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
                args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(self.queue.as_ref().into()));
                // Declaring renews the lease; the queue outlives its last
                // message's TTL, then goes away by itself.
                args.insert("x-expires".into(), AMQPValue::LongLongInt(ms as i64 + 60_000));
                self.link
                    .publish
                    .queue_declare(retry_queue.as_str().into(), durable_queue(), args)
                    .await
                    .map_err(|e| self.error(message, format!("cannot declare retry queue {retry_queue:?}: {e}")))?;
                let next = (message.attempt + 1).to_string();
                self.move_to(message, "", &retry_queue, vec![(headers::ATTEMPT.into(), next)]).await
            }
            Settlement::DeadLetter { headers, .. } => {
                let dlx = self.link.dlx.clone();
                let queue = self.queue.clone();
                self.move_to(message, &dlx, &queue, headers).await
            }
        }
    }
}

/// Publishes to RabbitMQ over its own connection, opened on first use and
/// again after a failure. A destination `exchange/routing.key` goes to that
/// exchange; a bare name goes through the default exchange to that queue
/// (which is how a `reply-to` is answered). Each publish waits for the
/// broker's confirm.
pub struct AmqpPublisher {
    name: String,
    url: String,
    link: tokio::sync::Mutex<Option<(Connection, Channel)>>,
    next_id: AtomicU64,
}

impl AmqpPublisher {
    fn new(name: &str, url: &str) -> Self {
        Self {
            name: name.to_string(),
            url: url.to_string(),
            link: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable(format!("RabbitMQ source {} at {}: {what}", self.name, redact(&self.url)))
    }

    async fn channel(&self, link: &mut Option<(Connection, Channel)>) -> Result<Channel, BackendError> {
        if let Some((c, ch)) = link.as_ref()
            && c.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let props =
            ConnectionProperties::default().with_connection_name(format!("switchyard publisher {}", self.name).into());
        let connection = Connection::connect(&self.url, props)
            .await
            .map_err(|e| self.unavailable(format!("cannot connect: {e}")))?;
        let channel = connection.create_channel().await.map_err(|e| self.unavailable(e))?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| self.unavailable(e))?;
        *link = Some((connection, channel.clone()));
        Ok(channel)
    }
}

#[async_trait]
impl Publisher for AmqpPublisher {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError> {
        let mut link = self.link.lock().await;
        let channel = self.channel(&mut link).await?;
        let mut confirms = Vec::with_capacity(messages.len());
        let run = std::process::id();
        for m in &messages {
            let (exchange, routing_key) = m.destination.split_once('/').unwrap_or(("", m.destination.as_str()));
            let mut headers = FieldTable::default();
            for (k, v) in &m.headers {
                headers.insert(ShortString::from(k.as_str()), AMQPValue::LongString(LongString::from(v.as_str())));
            }
            if let Some(key) = &m.key {
                headers.insert(headers::KEY.into(), AMQPValue::LongString(key.as_str().into()));
            }
            let id = format!("{}-{run}-{}-{}", self.name, now_ms(), self.next_id.fetch_add(1, Ordering::Relaxed));
            let properties = BasicProperties::default()
                .with_headers(headers)
                .with_delivery_mode(2)
                .with_message_id(id.into())
                .with_timestamp(now_ms() / 1000);
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &m.payload,
                    properties,
                )
                .await;
            match confirm {
                Ok(c) => confirms.push((m.destination.as_str(), c)),
                Err(e) => {
                    *link = None;
                    return Err(self.unavailable(format!("cannot publish to {:?}: {e}", m.destination)));
                }
            }
        }
        for (destination, confirm) in confirms {
            match confirm.await {
                Ok(Confirmation::Ack(_)) => {}
                Ok(other) => {
                    return Err(
                        self.unavailable(format!("the broker refused the message for {destination:?}: {other:?}"))
                    );
                }
                Err(e) => {
                    *link = None;
                    return Err(self.unavailable(format!("no confirm for {destination:?}: {e}")));
                }
            }
        }
        Ok(())
    }
}
