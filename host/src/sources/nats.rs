//! The `nats` and `jetstream` sources and their publisher, through async-nats.
//!
//! `nats` subscribes to core subjects, in a queue group when one is set, so
//! several hosts share the subjects. Core NATS keeps nothing: a message whose
//! handler fails is retried in place by the host and finally published to the
//! dead-letter subject with the reason headers. A message that carries a reply
//! subject gets `reply-to = "<source>:<reply subject>"`, and a handler's
//! publish to it answers the request.
//!
//! `jetstream` reads a durable pull consumer on a stream, both created if
//! missing. Settlement is JetStream's own: ack (confirmed by the server),
//! nak with the retry delay, and for a dead letter a publish to the
//! dead-letter subject (kept in its own stream) followed by term. The attempt
//! is the server's delivery count, so it survives a host restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_nats::{HeaderMap, Subject};
use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Backoff, Delivery, ID_HEADER, KEY_HEADER, Settle, Settlement, Source, SourceError, now_ms, redact};
use crate::capabilities::BackendError;
use crate::capabilities::publish::Publisher;
use crate::runtime::bindings::Message;
use crate::runtime::bindings::publish::Outgoing;

/// A core NATS source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The server. Example: `url = "nats://127.0.0.1:4222"`.
    pub url: String,
    /// Subjects to subscribe to; wildcards allowed. A message's topic is its
    /// subject. Example: `subjects = ["users.registered", "rpc.>"]`.
    pub subjects: Vec<String>,
    /// The queue group: hosts in one group share the messages. Unset, every
    /// host gets every message. Example: `queue_group = "mailer"`.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// Where dead letters are published, with the reason headers. Example:
    /// `dead_letter_subject = "dead-letter.mailer"`; default
    /// `switchyard.dead-letter.<source name>`.
    #[serde(default)]
    pub dead_letter_subject: Option<String>,
}

/// A JetStream source: a durable pull consumer on a stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The server. Example: `url = "nats://127.0.0.1:4222"`.
    pub url: String,
    /// The stream, created with `subjects` if it does not exist.
    /// Example: `stream = "ORDERS"`.
    pub stream: String,
    /// The stream's subjects, used when creating it. Example: `subjects = ["orders.>"]`.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The durable consumer's name; hosts using the same name share the
    /// work. Example: `consumer = "switchyard"` (the default).
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// How long the server waits for a settlement before delivering again,
    /// in milliseconds. Example: `ack_wait_ms = 30000` (the default).
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// The server's own limit on deliveries of one message, a backstop
    /// behind the routes' `max_attempts` (which dead-letter with a reason).
    /// Example: `max_deliver = 20`; default unlimited.
    #[serde(default)]
    pub max_deliver: Option<i64>,
    /// Messages pulled ahead and not yet settled, at most. Default: twice the
    /// sum of the routes' concurrency. Example: `max_ack_pending = 256`.
    #[serde(default)]
    pub max_ack_pending: Option<i64>,
    /// Where dead letters are published, with the reason headers; kept in
    /// the stream `<stream>-dead-letter`, created if missing. It must not be
    /// one of the stream's own subjects. Example:
    /// `dead_letter_subject = "dead-letter.orders"`; default `switchyard.dead-letter.<stream>`.
    #[serde(default)]
    pub dead_letter_subject: Option<String>,
}

fn default_consumer() -> String {
    "switchyard".into()
}
fn default_ack_wait_ms() -> u64 {
    30_000
}

impl NatsConfig {
    /// The dead-letter subject of source `name`.
    pub fn dead_letter_subject(&self, name: &str) -> String {
        self.dead_letter_subject.clone().unwrap_or_else(|| format!("switchyard.dead-letter.{name}"))
    }
}

impl JetStreamConfig {
    /// The dead-letter subject.
    pub fn dead_letter_subject(&self) -> String {
        self.dead_letter_subject.clone().unwrap_or_else(|| format!("switchyard.dead-letter.{}", self.stream))
    }
    /// The stream that keeps the dead letters.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}-dead-letter", self.stream)
    }
}

/// The source and publisher for one `nats` source config.
pub fn build_core(name: &str, config: &NatsConfig) -> (Box<dyn Source>, Arc<dyn Publisher>) {
    let source = CoreSource { name: name.to_string(), config: config.clone(), next_id: Arc::new(AtomicU64::new(1)) };
    (Box::new(source), Arc::new(NatsPublisher::new(name, &config.url, false)))
}

/// The source and publisher for one `jetstream` source config.
pub fn build_jetstream(
    name: &str,
    config: &JetStreamConfig,
    concurrency: usize,
) -> (Box<dyn Source>, Arc<dyn Publisher>) {
    let max_ack_pending = config.max_ack_pending.unwrap_or((concurrency.saturating_mul(2)).max(1) as i64);
    let source = JetStreamSource { name: name.to_string(), config: config.clone(), max_ack_pending };
    (Box::new(source), Arc::new(NatsPublisher::new(name, &config.url, true)))
}

/// Connect once, logging every later disconnect and reconnect with the
/// source and address; the client reconnects and resubscribes by itself.
/// `reconnected` is notified each time the client connects again after a
/// disconnect.
async fn connect(name: &str, url: &str, reconnected: Option<Arc<Notify>>) -> Result<async_nats::Client, String> {
    let (source, address) = (name.to_string(), redact(url));
    let disconnected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    async_nats::ConnectOptions::new()
        .name(format!("switchyard {name}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .event_callback(move |event| {
            let (source, address, reconnected, disconnected) =
                (source.clone(), address.clone(), reconnected.clone(), disconnected.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(%source, %address, "NATS: connection established");
                        if disconnected.swap(false, Ordering::Relaxed)
                            && let Some(reconnected) = reconnected
                        {
                            reconnected.notify_one();
                        }
                    }
                    async_nats::Event::Disconnected => {
                        disconnected.store(true, Ordering::Relaxed);
                        tracing::error!(%source, %address, "NATS: disconnected; reconnecting with backoff")
                    }
                    other => tracing::warn!(%source, %address, "NATS: {other}"),
                }
            }
        })
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

/// Connect, retrying with backoff and a log line per failure until it works
/// or shutdown. `None` on shutdown.
async fn connect_with_backoff(
    kind: &str,
    name: &str,
    url: &str,
    reconnected: Option<Arc<Notify>>,
    shutdown: &CancellationToken,
) -> Option<async_nats::Client> {
    let mut backoff = Backoff::default();
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            c = connect(name, url, reconnected.clone()) => c,
        };
        match attempt {
            Ok(client) => {
                tracing::info!(source = %name, address = %redact(url), "connected to {kind}");
                return Some(client);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(source = %name, address = %redact(url), retry_in_ms = delay.as_millis() as u64, "{kind}: {e}; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn headers_of(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(map) = map else { return Vec::new() };
    let mut headers = Vec::new();
    for (name, values) in map.iter() {
        for value in values {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    headers
}

fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(k.as_str(), v.as_str());
    }
    map
}

fn find(headers: &[(String, String)], name: &str) -> Option<String> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// The `nats` source: core subjects.
pub struct CoreSource {
    name: String,
    config: NatsConfig,
    next_id: Arc<AtomicU64>,
}

impl CoreSource {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "nats";
}

#[async_trait]
impl Source for CoreSource {
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError> {
        let Some(client) = connect_with_backoff("NATS", &self.name, &self.config.url, None, &shutdown).await else {
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
        loop {
            let m = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = messages.next() => match m { Some(m) => m, None => break },
            };
            let headers = headers_of(m.headers.as_ref());
            let id = find(&headers, "Nats-Msg-Id")
                .or_else(|| find(&headers, ID_HEADER))
                .unwrap_or_else(|| format!("{}-{started}-{}", self.name, self.next_id.fetch_add(1, Ordering::Relaxed)));
            let message = Message {
                id,
                source: self.name.clone(),
                topic: m.subject.to_string(),
                key: find(&headers, KEY_HEADER),
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
}

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
                all.push(("switchyard-subject".into(), message.topic.clone()));
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
            key: find(&headers, KEY_HEADER),
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

/// How long the server keeps a pull request that is not yet filled; an idle
/// consumer renews its pull this often.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Silence after which pull requests still owed messages are taken as lost
/// (the server restarted) and made again: the expiry, plus a margin for the
/// server's own expiry notice to arrive.
const PULL_LOST_AFTER: Duration = Duration::from_secs(10);

#[async_trait]
impl Source for JetStreamSource {
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError> {
        // A server that restarted has forgotten the pull requests it held.
        let reconnected = Arc::new(Notify::new());
        let Some(client) =
            connect_with_backoff("NATS JetStream", &self.name, &self.config.url, Some(reconnected.clone()), &shutdown)
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

/// What a [`Puller`] got.
pub(crate) enum Pulled {
    /// A message of the stream.
    Message(async_nats::Message),
    /// Nothing this time; pull again after a backoff.
    Retry(String),
    /// The consumer is gone or the connection closed: start over.
    Reset(String),
}

/// Pull requests on one inbox, with an exact count of the messages they are
/// still owed. async-nats' own pull stream adds a request to its count only
/// when the task that sent it reports back, which can be after the request's
/// first messages arrived; those are never subtracted, so it waits for
/// messages the server will not send, and the consumer stalls until the
/// request expires. Here a request is counted before it is sent, and one
/// inbox keeps the messages in stream order. The brokers benchmark's native
/// consumer pulls with it too, so both sides pull the same way.
pub(crate) struct Puller {
    client: async_nats::Client,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    subject: Subject,
    inbox: Subject,
    replies: async_nats::Subscriber,
    /// The request body: `batch` messages, expiring after [`PULL_EXPIRES`].
    request: String,
    batch: usize,
    /// Messages requested and neither delivered nor released by the server.
    owed: usize,
    /// When the server was last heard from on the inbox, or last asked.
    heard: tokio::time::Instant,
    /// Fires [`PULL_LOST_AFTER`] after `heard`; moved on only when it fires,
    /// so a message costs no timer update.
    lost: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Notified when the client has connected again: the server may have
    /// restarted and forgotten the requests, so they are made again at once
    /// rather than after [`PULL_LOST_AFTER`].
    reconnected: Arc<Notify>,
}

impl Puller {
    /// Pull from `consumer` on `stream`, `max_ack_pending` messages a request.
    pub(crate) async fn start(
        client: &async_nats::Client,
        stream: &str,
        consumer: &str,
        max_ack_pending: i64,
        reconnected: Arc<Notify>,
    ) -> Result<Self, String> {
        let inbox = Subject::from(client.new_inbox());
        let replies = client.subscribe(inbox.clone()).await.map_err(|e| format!("cannot subscribe to {inbox}: {e}"))?;
        let batch = usize::try_from(max_ack_pending).unwrap_or(1).clamp(1, 10_000);
        let request = serde_json::json!({ "batch": batch, "expires": PULL_EXPIRES.as_nanos() as u64 });
        Ok(Self {
            client: client.clone(),
            subject: Subject::from(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")),
            inbox,
            replies,
            request: request.to_string(),
            batch,
            owed: 0,
            heard: tokio::time::Instant::now(),
            lost: Box::pin(tokio::time::sleep(PULL_LOST_AFTER)),
            reconnected,
        })
    }

    /// The next message, asking for more first when half of what was asked
    /// for has come.
    pub(crate) async fn next(&mut self) -> Pulled {
        loop {
            if self.owed <= self.batch / 2 {
                self.owed += self.batch;
                self.heard = tokio::time::Instant::now();
                if let Err(e) = self
                    .client
                    .publish_with_reply(self.subject.clone(), self.inbox.clone(), self.request.clone().into())
                    .await
                {
                    self.owed -= self.batch;
                    return Pulled::Retry(format!("cannot request messages: {e}"));
                }
            }
            // Replies first: while messages flow, the other two branches are
            // never polled, so a message registers no waiter and no timer.
            let reply = tokio::select! {
                biased;
                reply = self.replies.next() => reply,
                _ = self.reconnected.notified() => {
                    tracing::info!(subject = %self.subject, "connected again; pulling again");
                    self.owed = 0;
                    continue;
                }
                _ = &mut self.lost => {
                    let now = tokio::time::Instant::now();
                    let deadline = self.heard + PULL_LOST_AFTER;
                    if deadline > now {
                        self.lost.as_mut().reset(deadline);
                        continue;
                    }
                    self.lost.as_mut().reset(now + PULL_LOST_AFTER);
                    self.owed = 0;
                    return Pulled::Retry(format!("no reply to pull requests for {} s", PULL_LOST_AFTER.as_secs()));
                }
            };
            let Some(m) = reply else { return Pulled::Reset("the connection closed".into()) };
            self.heard = tokio::time::Instant::now();
            match m.status {
                None | Some(async_nats::StatusCode::OK) => {
                    self.owed = self.owed.saturating_sub(1);
                    return Pulled::Message(m);
                }
                Some(async_nats::StatusCode::IDLE_HEARTBEAT) => {}
                // A request expired or was ended: the header says how many of
                // its messages it will no longer deliver.
                Some(async_nats::StatusCode::TIMEOUT | async_nats::StatusCode::REQUEST_TERMINATED) => {
                    let released = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Pending-Messages"))
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(self.batch);
                    self.owed = self.owed.saturating_sub(released);
                    let description = m.description.unwrap_or_default();
                    if description.contains("Consumer Deleted") || description.contains("Consumer is push based") {
                        return Pulled::Reset(description);
                    }
                    if m.status == Some(async_nats::StatusCode::REQUEST_TERMINATED) {
                        return Pulled::Retry(format!("the server ended a pull request: {description}"));
                    }
                }
                Some(async_nats::StatusCode::NO_RESPONDERS) => {
                    self.owed = self.owed.saturating_sub(self.batch);
                    return Pulled::Reset("no JetStream consumer answered the pull request".into());
                }
                Some(status) => {
                    return Pulled::Retry(format!(
                        "unexpected status {status} on a pull: {}",
                        m.description.unwrap_or_default()
                    ));
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
                all.push(("switchyard-subject".into(), message.topic.clone()));
                all.push(("switchyard-stream-sequence".into(), message.id.clone()));
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

/// Publishes to NATS over its own connection, opened on first use. For a
/// `jetstream` source each publish waits for the stream's ack; for a `nats`
/// source it is flushed to the server. Replies (`_INBOX.` subjects) are
/// always core publishes.
pub struct NatsPublisher {
    name: String,
    url: String,
    jetstream: bool,
    client: tokio::sync::OnceCell<async_nats::Client>,
}

impl NatsPublisher {
    fn new(name: &str, url: &str, jetstream: bool) -> Self {
        Self { name: name.to_string(), url: url.to_string(), jetstream, client: tokio::sync::OnceCell::new() }
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable(format!("NATS source {} at {}: {what}", self.name, redact(&self.url)))
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError> {
        let client = self
            .client
            .get_or_try_init(|| connect(&self.name, &self.url, None))
            .await
            .map_err(|e| self.unavailable(e))?;
        let js = jetstream::new(client.clone());
        let mut acks = Vec::new();
        for m in messages {
            let mut headers = m.headers.clone();
            if let Some(key) = &m.key {
                headers.push((KEY_HEADER.into(), key.clone()));
            }
            let subject = Subject::from(m.destination.as_str());
            if self.jetstream && !m.destination.starts_with("_INBOX.") {
                let ack = js
                    .publish_with_headers(subject, header_map(&headers), m.payload.into())
                    .await
                    .map_err(|e| self.unavailable(format!("cannot publish to {:?}: {e}", m.destination)))?;
                acks.push((m.destination, ack));
            } else {
                client
                    .publish_with_headers(subject, header_map(&headers), m.payload.into())
                    .await
                    .map_err(|e| self.unavailable(format!("cannot publish to {:?}: {e}", m.destination)))?;
            }
        }
        for (destination, ack) in acks {
            ack.await.map_err(|e| self.unavailable(format!("{destination:?} was not stored: {e}")))?;
        }
        client.flush().await.map_err(|e| self.unavailable(format!("cannot flush: {e}")))
    }
}
