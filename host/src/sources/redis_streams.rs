//! The `redis` source and publisher: Redis Streams consumer groups.
//!
//! Each host is one consumer in the group; hosts in one group share the
//! streams. An entry's `payload` field is the message body, `key` its
//! ordering key, and every other field a header; its id is the entry id.
//!
//! Settlement: ack is `XACK`, once the effects are durable. A dead letter is
//! `XADD` to the dead-letter stream (with the reason fields) and `XACK` in
//! one `MULTI`, so the entry is never lost between the two. Redis has no
//! delayed redelivery, so the host retries in place. Entries left pending by
//! a consumer that died are taken over with `XAUTOCLAIM` once idle for
//! `claim_idle_ms`; their attempt is Redis's own delivery count.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadOptions, StreamReadReply,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use crate::config::RedisStreamsConfig;
use crate::contract::bindings::Message;
use crate::contract::bindings::publish::Outgoing;
use crate::contract::errors::BackendError;
use crate::contract::headers;
use crate::contract::publish::Publisher;
use crate::contract::source::{Delivery, Settle, Settlement, Source, SourceError};
use crate::contract::util::redact;

/// How long one `XREADGROUP` blocks waiting for entries.
const BLOCK: Duration = Duration::from_millis(1000);

/// The source and publisher for one `redis` source config.
pub fn build(name: &str, config: &RedisStreamsConfig, concurrency: usize) -> (Box<dyn Source>, Arc<dyn Publisher>) {
    let consumer = config.consumer.clone().unwrap_or_else(|| {
        let host =
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
        format!("{host}-{}", std::process::id())
    });
    let batch = config.batch.unwrap_or((concurrency.saturating_mul(2)).max(1));
    let source = RedisStreamsSource { name: name.to_string(), config: config.clone(), consumer, batch };
    (
        Box::new(source),
        Arc::new(RedisPublisher {
            name: name.to_string(),
            url: config.url.clone(),
            conn: tokio::sync::OnceCell::new(),
        }),
    )
}

async fn connect(url: &str) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| format!("bad url: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        // Longer than a blocking read.
        .set_response_timeout(Some(BLOCK + Duration::from_secs(5)))
        .set_max_delay(Duration::from_secs(5))
        // Fail fast, so each failed attempt is logged by the source's own backoff.
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, config).await.map_err(|e| format!("cannot connect: {e}"))
}

/// The `redis` source.
pub struct RedisStreamsSource {
    name: String,
    config: RedisStreamsConfig,
    consumer: String,
    batch: usize,
}

struct Shared {
    conn: ConnectionManager,
    group: String,
    /// Entries of this host not yet settled, so a claim does not hand this
    /// host an entry it is still holding.
    in_flight: Mutex<HashSet<String>>,
}

impl RedisStreamsSource {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "redis";

    fn dead_letter(&self, stream: &str) -> String {
        self.config.dead_letter(stream)
    }

    async fn create_groups(&self, conn: &mut ConnectionManager) -> Result<(), String> {
        for stream in &self.config.streams {
            let created: Result<(), redis::RedisError> =
                conn.xgroup_create_mkstream(stream, &self.config.group, "0").await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => {
                    return Err(format!("cannot create group {:?} on stream {:?}: {e}", self.config.group, stream));
                }
            }
        }
        Ok(())
    }

    /// Redis's delivery count of each entry, for entries delivered before.
    async fn delivery_counts(&self, conn: &mut ConnectionManager, stream: &str, ids: &[StreamId]) -> Vec<u32> {
        let mut counts = Vec::with_capacity(ids.len());
        for entry in ids {
            let reply: Result<StreamPendingCountReply, _> =
                conn.xpending_count(stream, &self.config.group, &entry.id, &entry.id, 1).await;
            let count = reply.ok().and_then(|r| r.ids.first().map(|p| p.times_delivered as u32)).unwrap_or(1);
            counts.push(count.max(1));
        }
        counts
    }

    async fn send(
        &self,
        out: &mpsc::Sender<Delivery>,
        shared: &Arc<Shared>,
        stream: &str,
        entries: Vec<StreamId>,
        counts: Option<Vec<u32>>,
    ) -> bool {
        for (i, entry) in entries.into_iter().enumerate() {
            if entry.map.is_empty() {
                // Deleted while pending: nothing to handle; drop it from the PEL.
                let mut conn = shared.conn.clone();
                let _: Result<i64, _> = conn.xack(stream, &shared.group, &[&entry.id]).await;
                continue;
            }
            let newly = shared.in_flight.lock().map(|mut f| f.insert(entry.id.clone())).unwrap_or(true);
            if !newly {
                continue;
            }
            let attempt = counts.as_ref().and_then(|c| c.get(i).copied()).unwrap_or(1);
            let id = entry.id.clone();
            let message = stream_message(&self.name, stream, entry, attempt);
            let settle = Box::new(RedisSettle { shared: shared.clone(), dead_letter: self.dead_letter(stream), id });
            if out.send(Delivery { message, settle }).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Read and hand on entries until shutdown or a failure.
    async fn session(
        &self,
        out: &mpsc::Sender<Delivery>,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        let mut reader = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connect(&self.config.url) => c?,
        };
        self.create_groups(&mut reader).await?;
        let settler = connect(&self.config.url).await?;
        let shared =
            Arc::new(Shared { conn: settler, group: self.config.group.clone(), in_flight: Mutex::new(HashSet::new()) });
        tracing::info!(source = %self.name, address = %redact(&self.config.url), streams = ?self.config.streams, group = %self.config.group, consumer = %self.consumer, "reading Redis streams");
        backoff.reset();

        // What this consumer left pending before a restart comes first.
        for stream in &self.config.streams {
            let opts = StreamReadOptions::default().group(&self.config.group, &self.consumer).count(10_000);
            let reply: StreamReadReply = reader
                .xread_options(&[stream], &["0"], &opts)
                .await
                .map_err(|e| format!("cannot read pending entries of {stream:?}: {e}"))?;
            for key in reply.keys {
                let counts = self.delivery_counts(&mut reader, stream, &key.ids).await;
                if !self.send(out, &shared, stream, key.ids, Some(counts)).await {
                    return Ok(());
                }
            }
        }

        let claim_every = Duration::from_millis((self.config.claim_idle_ms / 2).max(100));
        let mut last_claim = tokio::time::Instant::now();
        let ids: Vec<&str> = self.config.streams.iter().map(|_| ">").collect();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if last_claim.elapsed() >= claim_every {
                last_claim = tokio::time::Instant::now();
                for stream in &self.config.streams {
                    let opts = StreamAutoClaimOptions::default().count(self.batch);
                    let reply: StreamAutoClaimReply = reader
                        .xautoclaim_options(
                            stream,
                            &self.config.group,
                            &self.consumer,
                            self.config.claim_idle_ms,
                            "0-0",
                            opts,
                        )
                        .await
                        .map_err(|e| format!("cannot claim idle entries of {stream:?}: {e}"))?;
                    if !reply.claimed.is_empty() {
                        tracing::info!(source = %self.name, %stream, count = reply.claimed.len(), "claimed entries left pending by another consumer");
                        let counts = self.delivery_counts(&mut reader, stream, &reply.claimed).await;
                        if !self.send(out, &shared, stream, reply.claimed, Some(counts)).await {
                            return Ok(());
                        }
                    }
                }
            }
            // Flow control: read no more than `batch` ahead of what is settled.
            let held = shared.in_flight.lock().map(|f| f.len()).unwrap_or(0);
            let room = self.batch.saturating_sub(held);
            if room == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(5)) => continue,
                }
            }
            let opts = StreamReadOptions::default()
                .group(&self.config.group, &self.consumer)
                .count(room)
                .block(BLOCK.as_millis() as usize);
            let read = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = reader.xread_options::<_, _, Option<StreamReadReply>>(&self.config.streams, &ids, &opts) => r,
            };
            let reply = read.map_err(|e| format!("cannot read: {e}"))?;
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                let stream = key.key.clone();
                if !self.send(out, &shared, &stream, key.ids, None).await {
                    return Ok(());
                }
            }
        }
    }
}

#[async_trait]
impl Source for RedisStreamsSource {
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError> {
        let mut backoff = Backoff::default();
        loop {
            match self.session(&out, &shutdown, &mut backoff).await {
                Ok(()) => return Ok(()),
                Err(reason) => {
                    let delay = backoff.next_delay();
                    tracing::error!(source = %self.name, address = %redact(&self.config.url), retry_in_ms = delay.as_millis() as u64, "Redis: {reason}; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

struct RedisSettle {
    shared: Arc<Shared>,
    dead_letter: String,
    id: String,
}

impl Drop for RedisSettle {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.shared.in_flight.lock() {
            in_flight.remove(&self.id);
        }
    }
}

#[async_trait]
impl Settle for RedisSettle {
    async fn settle(self: Box<Self>, message: &Message, settlement: Settlement) -> Result<(), SourceError> {
        let fail = |what: &str, e: redis::RedisError| SourceError::Failed {
            source_name: message.source.clone(),
            message: format!("stream {:?} entry {}: {what}: {e}", message.topic, message.id),
        };
        let mut conn = self.shared.conn.clone();
        match settlement {
            Settlement::Ack => {
                let _: i64 = conn
                    .xack(&message.topic, &self.shared.group, &[&message.id])
                    .await
                    .map_err(|e| fail("XACK failed", e))?;
                Ok(())
            }
            Settlement::Retry { .. } => Err(SourceError::Failed {
                source_name: message.source.clone(),
                message: "Redis Streams has no delayed redelivery; the host retries in place".into(),
            }),
            Settlement::DeadLetter { headers, .. } => {
                let mut fields: Vec<(String, Vec<u8>)> = vec![("payload".into(), message.payload.clone())];
                if let Some(key) = &message.key {
                    fields.push(("key".into(), key.clone().into_bytes()));
                }
                for (k, v) in message.headers.iter().chain(headers.iter()) {
                    fields.push((k.clone(), v.clone().into_bytes()));
                }
                fields.push((headers::STREAM.into(), message.topic.clone().into_bytes()));
                fields.push((headers::ENTRY_ID.into(), message.id.clone().into_bytes()));
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .xadd(&self.dead_letter, "*", &fields)
                    .ignore()
                    .xack(&message.topic, &self.shared.group, &[&message.id])
                    .ignore();
                let _: () = pipe
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| fail(&format!("cannot move it to {:?}", self.dead_letter), e))?;
                Ok(())
            }
        }
    }
}

/// Adds published messages to Redis streams: the destination is the
/// stream, the payload goes in the field `payload`, the key in `key`, and
/// headers as further fields.
pub struct RedisPublisher {
    name: String,
    url: String,
    conn: tokio::sync::OnceCell<ConnectionManager>,
}

#[async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError> {
        let unavailable = |what: String| {
            BackendError::Unavailable(format!("Redis source {} at {}: {what}", self.name, redact(&self.url)))
        };
        let mut conn = self.conn.get_or_try_init(|| connect(&self.url)).await.map_err(unavailable)?.clone();
        let mut pipe = redis::pipe();
        for m in &messages {
            let mut fields: Vec<(String, Vec<u8>)> = vec![("payload".into(), m.payload.clone())];
            if let Some(key) = &m.key {
                fields.push(("key".into(), key.clone().into_bytes()));
            }
            for (k, v) in &m.headers {
                if k != "payload" && k != "key" && k != headers::KEY {
                    fields.push((k.clone(), v.clone().into_bytes()));
                }
            }
            pipe.xadd(&m.destination, "*", &fields).ignore();
        }
        let _: () =
            pipe.query_async(&mut conn).await.map_err(|e| unavailable(format!("cannot add to streams: {e}")))?;
        Ok(())
    }
}

/// A stream entry as a message of source `source`: the `payload` and `key`
/// fields, every other field a header, the time from the entry's id.
pub fn stream_message(source: &str, stream: &str, entry: StreamId, attempt: u32) -> Message {
    let mut payload = Vec::new();
    let mut key = None;
    let mut headers = Vec::new();
    let mut fields: Vec<_> = entry.map.into_iter().collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    for (field, value) in fields {
        let bytes: Vec<u8> = redis::from_redis_value(value).unwrap_or_default();
        match field.as_str() {
            "payload" => payload = bytes,
            "key" => key = Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => headers.push((field, String::from_utf8_lossy(&bytes).into_owned())),
        }
    }
    let timestamp_ms = entry.id.split_once('-').and_then(|(ms, _)| ms.parse().ok());
    Message {
        id: entry.id,
        source: source.to_string(),
        topic: stream.to_string(),
        key,
        headers,
        payload,
        attempt,
        reply_to: None,
        timestamp_ms,
    }
}
