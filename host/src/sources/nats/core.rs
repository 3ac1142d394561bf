//! The `nats` source: core subjects, in a queue group when one is set, so
//! several hosts share the subjects. Core NATS keeps nothing: a message whose
//! handler fails is retried in place by the host and finally published to the
//! dead-letter subject with the reason headers. A message that carries a reply
//! subject gets `reply-to = "<source>:<reply subject>"`, and a handler's
//! publish to it answers the request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{connect_with_backoff, find, header_map, headers_of};
use super::publisher::NatsPublisher;
use crate::config::NatsConfig;
use crate::contract::bindings::Message;
use crate::contract::headers;
use crate::contract::publish::Publisher;
use crate::contract::source::{Delivery, Settle, Settlement, Source, SourceError};
use crate::contract::util::{now_ms, redact};
use crate::sources::backoff::Backoff;

/// The source and publisher for one `nats` source config.
pub fn build(name: &str, config: &NatsConfig) -> (Box<dyn Source>, Arc<dyn Publisher>) {
    let source = CoreSource {
        name: name.to_string(),
        config: config.clone(),
        next_id: Arc::new(AtomicU64::new(1)),
        lost: Arc::new(AtomicU64::new(0)),
    };
    (Box::new(source), Arc::new(NatsPublisher::new(name, &config.url, false)))
}

/// The `nats` source: core subjects.
pub struct CoreSource {
    name: String,
    config: NatsConfig,
    next_id: Arc<AtomicU64>,
    /// Messages the client received and dropped, its buffer being full.
    lost: Arc<AtomicU64>,
}

impl CoreSource {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "nats";
}

#[async_trait]
impl Source for CoreSource {
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError> {
        let pending = Some(self.config.pending_messages);
        let Some(client) = connect_with_backoff("NATS", &self.name, &self.config.url, None, pending, &shutdown).await
        else {
            return Ok(());
        };
        let mut subscriptions = Vec::new();
        let mut backoff = Backoff::default();
        for subject in &self.config.subjects {
            loop {
                let sub = match &self.config.queue_group {
                    Some(group) => client.queue_subscribe(subject.clone(), group.clone()).await,
                    None => client.subscribe(subject.clone()).await,
                };
                match sub {
                    Ok(s) => {
                        subscriptions.push(s);
                        break;
                    }
                    Err(e) => {
                        tracing::error!(source = %self.name, address = %redact(&self.config.url), %subject, error = %e, "NATS: cannot subscribe; retrying");
                        if !backoff.wait(&shutdown).await {
                            return Ok(());
                        }
                    }
                }
            }
        }
        // The server has the subscriptions once it answers a flush.
        if let Err(e) = client.flush().await {
            tracing::warn!(source = %self.name, address = %redact(&self.config.url), error = %e, "NATS: flush after subscribing failed");
        }
        tracing::info!(source = %self.name, address = %redact(&self.config.url), subjects = ?self.config.subjects, queue_group = ?self.config.queue_group, "subscribed to NATS subjects");
        let dead_letter = Arc::new(self.config.dead_letter_subject(&self.name));
        let mut messages = futures::stream::select_all(subscriptions);
        let started = now_ms();
        // What the client received less what reached the host is what it
        // dropped, once its buffer is empty: whenever no message came for a
        // moment.
        let statistics = client.statistics();
        let mut delivered = 0;
        loop {
            let m = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = tokio::time::timeout(IDLE, messages.next()) => match m {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_idle) => {
                        let dropped = statistics.in_messages.load(Ordering::Relaxed).saturating_sub(delivered);
                        if dropped > 0 {
                            delivered += dropped;
                            let total = self.lost.fetch_add(dropped, Ordering::Relaxed) + dropped;
                            tracing::error!(
                                source = %self.name,
                                subjects = ?self.config.subjects,
                                lost = dropped,
                                lost_in_all = total,
                                pending_messages = self.config.pending_messages,
                                "core NATS dropped messages the host could not take in time (at most once); raise pending_messages, add hosts to the queue group, or use JetStream"
                            );
                        }
                        continue;
                    }
                },
            };
            delivered += 1;
            let headers = headers_of(m.headers.as_ref());
            let id = find(&headers, "Nats-Msg-Id")
                .or_else(|| find(&headers, headers::ID))
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| format!("{}-{started}-{}", self.name, self.next_id.fetch_add(1, Ordering::Relaxed)));
            let message = Message {
                id,
                source: self.name.clone(),
                topic: m.subject.to_string(),
                key: find(&headers, headers::KEY),
                headers,
                payload: m.payload.to_vec(),
                attempt: 1,
                reply_to: m.reply.as_ref().map(|r| format!("{}:{r}", self.name)),
                timestamp_ms: None,
            };
            let settle = Box::new(CoreSettle { client: client.clone(), dead_letter: dead_letter.clone() });
            if out.send(Delivery { message, settle }).await.is_err() {
                break;
            }
        }
        // Dropping the subscriptions unsubscribes; the client stays open for
        // the settlements still running.
        Ok(())
    }

    fn lost(&self) -> Option<Arc<AtomicU64>> {
        Some(self.lost.clone())
    }
}

/// How long no message must come before the source counts what its client
/// dropped.
const IDLE: std::time::Duration = std::time::Duration::from_millis(250);

struct CoreSettle {
    client: async_nats::Client,
    dead_letter: Arc<String>,
}

#[async_trait]
impl Settle for CoreSettle {
    async fn settle(self: Box<Self>, message: &Message, settlement: Settlement) -> Result<(), SourceError> {
        match settlement {
            Settlement::Ack => Ok(()),
            Settlement::Retry { .. } => Err(SourceError::Failed {
                source_name: message.source.clone(),
                message: "core NATS does not redeliver; the host retries in place".into(),
            }),
            Settlement::DeadLetter { headers, .. } => {
                let mut all = message.headers.clone();
                all.extend(headers);
                all.push((headers::SUBJECT.into(), message.topic.clone()));
                let fail = |e: String| SourceError::Failed {
                    source_name: message.source.clone(),
                    message: format!(
                        "cannot publish the dead letter of {:?} to {:?}: {e}",
                        message.topic, self.dead_letter
                    ),
                };
                self.client
                    .publish_with_headers(
                        self.dead_letter.to_string(),
                        header_map(&all),
                        message.payload.clone().into(),
                    )
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                self.client.flush().await.map_err(|e| fail(e.to_string()))
            }
        }
    }
}
