//! The `jetstream` source: a durable pull consumer on a stream, both created
//! if missing. Settlement is JetStream's own: ack (confirmed by the server),
//! nak with the retry delay, and for a dead letter a publish to the
//! dead-letter subject (kept in its own stream) followed by term. The attempt
//! is the server's delivery count, so it survives a host restart.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::client::{connect_with_backoff, find, header_map, headers_of};
use super::publisher::NatsPublisher;
use super::puller::{Pulled, Puller};
use crate::config::JetStreamConfig;
use crate::contract::bindings::Message;
use crate::contract::headers;
use crate::contract::publish::Publisher;
use crate::contract::source::{Delivery, Settle, Settlement, Source, SourceError};
use crate::contract::util::redact;
use crate::sources::backoff::Backoff;

/// The source and publisher for one `jetstream` source config.
pub fn build(name: &str, config: &JetStreamConfig, concurrency: usize) -> (Box<dyn Source>, Arc<dyn Publisher>) {
    let max_ack_pending = config.max_ack_pending.unwrap_or((concurrency.saturating_mul(2)).max(1) as i64);
    let source = JetStreamSource { name: name.to_string(), config: config.clone(), max_ack_pending };
    (Box::new(source), Arc::new(NatsPublisher::new(name, &config.url, true)))
}

/// The `jetstream` source: a durable pull consumer.
pub struct JetStreamSource {
    name: String,
    config: JetStreamConfig,
    max_ack_pending: i64,
}

impl JetStreamSource {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "jetstream";

    async fn consumer(&self, js: &jetstream::Context) -> Result<PullConsumer, String> {
        let c = &self.config;
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: c.stream.clone(),
                subjects: c.subjects.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot get or create stream {:?}: {e}", c.stream))?;
        js.get_or_create_stream(jetstream::stream::Config {
            name: c.dead_letter_stream(),
            subjects: vec![c.dead_letter_subject()],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot get or create dead-letter stream {:?}: {e}", c.dead_letter_stream()))?;
        stream
            .get_or_create_consumer(
                &c.consumer,
                jetstream::consumer::pull::Config {
                    durable_name: Some(c.consumer.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_millis(c.ack_wait_ms),
                    max_deliver: c.max_deliver.unwrap_or(-1),
                    max_ack_pending: self.max_ack_pending,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("cannot get or create consumer {:?} on stream {:?}: {e}", c.consumer, c.stream))
    }

    fn message(&self, m: &jetstream::Message) -> Result<Message, String> {
        let info = m.info().map_err(|e| format!("not a JetStream delivery: {e}"))?;
        let headers = headers_of(m.headers.as_ref());
        Ok(Message {
            id: info.stream_sequence.to_string(),
            source: self.name.clone(),
            topic: m.subject.to_string(),
            key: find(&headers, headers::KEY),
            headers,
            payload: m.payload.to_vec(),
            attempt: u32::try_from(info.delivered).unwrap_or(1).max(1),
            // The message's own reply subject is JetStream's ack subject: not
            // for handlers.
            reply_to: None,
            timestamp_ms: u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).ok(),
        })
    }
}

#[async_trait]
impl Source for JetStreamSource {
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError> {
        // A server that restarted has forgotten the pull requests it held.
        let reconnected = Arc::new(Notify::new());
        let Some(client) = connect_with_backoff(
            "NATS JetStream",
            &self.name,
            &self.config.url,
            Some(reconnected.clone()),
            None,
            &shutdown,
        )
        .await
        else {
            return Ok(());
        };
        let js = jetstream::new(client.clone());
        let dead_letter = Arc::new(self.config.dead_letter_subject());
        let mut backoff = Backoff::default();
        let address = redact(&self.config.url);
        loop {
            let puller = match self.consumer(&js).await {
                Ok(_) => {
                    Puller::start(
                        &client,
                        &self.config.stream,
                        &self.config.consumer,
                        self.max_ack_pending,
                        reconnected.clone(),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let mut puller = match puller {
                Ok(p) => {
                    backoff.reset();
                    tracing::info!(source = %self.name, %address, stream = %self.config.stream, consumer = %self.config.consumer, "pulling from JetStream");
                    p
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::error!(source = %self.name, %address, retry_in_ms = delay.as_millis() as u64, "NATS JetStream: {e}; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    m = puller.next() => m,
                };
                let m = match next {
                    Pulled::Message(m) => {
                        backoff.reset();
                        m
                    }
                    Pulled::Retry(e) => {
                        tracing::warn!(source = %self.name, %address, "NATS JetStream: {e}; pulling again");
                        if !backoff.wait(&shutdown).await {
                            return Ok(());
                        }
                        continue;
                    }
                    Pulled::Reset(e) => {
                        tracing::warn!(source = %self.name, %address, "NATS JetStream: {e}; looking up the consumer again");
                        break;
                    }
                };
                let m = jetstream::Message { message: m, context: js.clone() };
                let message = match self.message(&m) {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::warn!(source = %self.name, subject = %m.subject, "skipping: {e}");
                        continue;
                    }
                };
                let (_, acker) = m.split();
                let settle = Box::new(JetStreamSettle { js: js.clone(), acker, dead_letter: dead_letter.clone() });
                if out.send(Delivery { message, settle }).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

struct JetStreamSettle {
    js: jetstream::Context,
    acker: jetstream::message::Acker,
    dead_letter: Arc<String>,
}

#[async_trait]
impl Settle for JetStreamSettle {
    fn retries_natively(&self) -> bool {
        true
    }

    async fn settle(self: Box<Self>, message: &Message, settlement: Settlement) -> Result<(), SourceError> {
        let fail = |what: &str, e: String| SourceError::Failed {
            source_name: message.source.clone(),
            message: format!("subject {:?} sequence {}: {what}: {e}", message.topic, message.id),
        };
        match settlement {
            Settlement::Ack => self.acker.double_ack().await.map_err(|e| fail("ack failed", e.to_string())),
            Settlement::Retry { delay } => {
                self.acker.ack_with(AckKind::Nak(Some(delay))).await.map_err(|e| fail("nak failed", e.to_string()))
            }
            Settlement::DeadLetter { headers, .. } => {
                let mut all = message.headers.clone();
                all.extend(headers);
                all.push((headers::SUBJECT.into(), message.topic.clone()));
                all.push((headers::STREAM_SEQUENCE.into(), message.id.clone()));
                self.js
                    .publish_with_headers(
                        self.dead_letter.to_string(),
                        header_map(&all),
                        message.payload.clone().into(),
                    )
                    .await
                    .map_err(|e| fail("cannot publish the dead letter", e.to_string()))?
                    .await
                    .map_err(|e| fail("the dead letter was not stored", e.to_string()))?;
                self.acker.double_ack_with(AckKind::Term).await.map_err(|e| fail("term failed", e.to_string()))
            }
        }
    }
}
