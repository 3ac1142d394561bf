//! The broker benchmark behind `switchyard bench brokers`: N product-change
//! messages moved from a broker into Redis, through the host running the
//! `cache-update` handler (a fresh instance per message, then with bounded
//! instance reuse) and through a native Rust consumer that does the same
//! work by hand, side by side in one run, for NATS JetStream and RabbitMQ.
//!
//! Both sides start from a fresh stream or queue pre-loaded with the same N
//! messages, use the same crates (async-nats, lapin, redis), the same pull
//! requests (the JetStream source's own puller, on both sides) or prefetch,
//! the same number of messages in flight, and ack each
//! message only after its Redis SET has returned (JetStream acks confirmed by
//! the server on both sides, as the host's source sends them). The clock runs
//! from the start of consuming until the last message is acked; afterwards
//! every key is checked in Redis, one value is compared field by field, and
//! the broker is asked whether anything is left unacked. Every stream, queue
//! and key the run made is removed at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use switchyard::config::AmqpConfig;
use switchyard::contract::util::redact;
use switchyard::sources::nats::puller::{Pulled, Puller};

/// The dead-letter exchange the `amqp` source names by default; the queues
/// pre-loaded for the host must be declared with it, as the source declares them.
const AMQP_DEAD_LETTER_EXCHANGE: &str = "switchyard.dead-letter";
/// Publishes awaiting their broker confirm at once while pre-loading.
const PRELOAD_WINDOW: usize = 2_000;
/// Keys per EXISTS and DEL when checking and cleaning up Redis.
const KEYS_PER_COMMAND: usize = 1_000;
/// A side that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(60);

/// What to run and where the services are.
#[derive(Debug, Clone)]
pub struct BrokersOptions {
    /// NATS with JetStream, or none to skip it.
    pub nats_url: Option<String>,
    /// RabbitMQ, or none to skip it.
    pub amqp_url: Option<String>,
    /// Redis, where both sides write.
    pub redis_url: String,
    /// The `cache-update` handler component.
    pub plugin: PathBuf,
    /// Messages per side.
    pub messages: usize,
    /// Approximate payload size in bytes.
    pub payload_bytes: usize,
    /// Messages handled at once: the route's concurrency on the host, the
    /// number of tasks in flight on the native side. The pull batch (JetStream
    /// `max_ack_pending`) and the prefetch (RabbitMQ) are twice this on both
    /// sides, as the host sizes them from its routes.
    pub concurrency: usize,
}

/// One side's figures.
#[derive(Debug, Clone, Copy)]
pub struct Side {
    /// From the start of consuming until the last ack.
    pub elapsed: Duration,
    /// Messages per second.
    pub rate: f64,
    /// Keys found in Redis afterwards.
    pub keys_found: usize,
}

/// One broker's comparison.
#[derive(Debug, Clone)]
pub struct BrokerReport {
    /// `NATS JetStream` or `RabbitMQ`.
    pub broker: &'static str,
    /// Messages per side.
    pub messages: usize,
    /// The host with the `cache-update` handler, a fresh instance per message.
    pub switchyard: Side,
    /// The same with bounded instance reuse on the route.
    pub reused: Side,
    /// The hand-written consumer.
    pub native: Side,
}

impl BrokerReport {
    /// Switchyard's rate over the native consumer's, fresh and with reuse.
    pub fn ratios(&self) -> (f64, f64) {
        let native = self.native.rate.max(f64::MIN_POSITIVE);
        (self.switchyard.rate / native, self.reused.rate / native)
    }
}

/// The benchmark could not run, or a side did not do its work.
#[derive(Debug, thiserror::Error)]
pub enum BrokersBenchError {
    /// A service refused or failed a step.
    #[error("{broker}: {what}: {message}")]
    Service {
        /// The broker (or Redis) being set up or measured.
        broker: &'static str,
        /// Which step.
        what: String,
        /// Why.
        message: String,
    },
    /// A side finished without doing all of its work.
    #[error("{broker}, {side}: {message}")]
    Incomplete {
        /// The broker.
        broker: &'static str,
        /// `switchyard` or `native`.
        side: &'static str,
        /// What was missing.
        message: String,
    },
    /// The generated config was refused.
    #[error(transparent)]
    Config(#[from] switchyard::config::ConfigError),
    /// The host could not be built.
    #[error(transparent)]
    Host(#[from] switchyard::wiring::HostError),
    /// A temporary file could not be written.
    #[error("benchmark file {0}: {1}")]
    Io(String, std::io::Error),
}

fn service(broker: &'static str, what: impl Into<String>) -> impl FnOnce(String) -> BrokersBenchError {
    let what = what.into();
    move |message| BrokersBenchError::Service { broker, what, message }
}

const NATS: &str = "NATS JetStream";
const AMQP: &str = "RabbitMQ";
const REDIS: &str = "Redis";

/// Run every broker whose URL was given; one report each.
pub async fn brokers(options: &BrokersOptions) -> Result<Vec<BrokerReport>, BrokersBenchError> {
    let plugin = std::fs::canonicalize(&options.plugin)
        .map_err(|e| BrokersBenchError::Io(options.plugin.display().to_string(), e))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tag = format!("{}_{}", std::process::id(), nanos % 1_000_000_000_000);
    let redis = Redis::connect(&options.redis_url).await?;
    let payloads = Arc::new(payloads(options.messages, options.payload_bytes));
    let mut reports = Vec::new();
    if let Some(url) = &options.nats_url {
        reports.push(jetstream_pair(url, options, &plugin, &tag, &redis, &payloads).await?);
    }
    if let Some(url) = &options.amqp_url {
        reports.push(amqp_pair(url, options, &plugin, &tag, &redis, &payloads).await?);
    }
    Ok(reports)
}

/// The product changes, `bytes` long or a little more each: what the
/// `cache-update` handler understands, padded with a description.
fn payloads(n: usize, bytes: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let head = format!(
                r#"{{"id":"p{i}","name":"product {i}","price":{}.{:02},"currency":"EUR","stock":{},"tags":["bench","widget"],"description":""#,
                i % 1000,
                i % 100,
                i % 50
            );
            let fill = bytes.saturating_sub(head.len() + 2);
            let mut text = head;
            text.extend(std::iter::repeat_n('x', fill));
            text.push_str("\"}");
            text.into_bytes()
        })
        .collect()
}

/// What the handler stores for a payload: the change without `deleted`.
fn expected_value(payload: &[u8]) -> Option<serde_json::Value> {
    let mut value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.as_object_mut()?.remove("deleted");
    Some(value)
}

/// What the native consumer did with one message.
enum Handled {
    Set(String, Vec<u8>),
    Delete(String),
}

/// The native counterpart of `plugins/cache-update`: parse, check, and say
/// which key to set to what (or delete).
fn native_handle(payload: &[u8]) -> Result<Handled, String> {
    let serde_json::Value::Object(mut change) =
        serde_json::from_slice(payload).map_err(|e| format!("malformed product change: {e}"))?
    else {
        return Err("malformed product change: not a JSON object".into());
    };
    let id = match change.get("id") {
        Some(serde_json::Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err("malformed product change: id must be a non-empty string".into()),
    };
    let deleted = match change.remove("deleted") {
        None => false,
        Some(serde_json::Value::Bool(deleted)) => deleted,
        Some(_) => return Err("malformed product change: deleted must be true or false".into()),
    };
    let key = format!("product:{id}");
    if deleted {
        return Ok(Handled::Delete(key));
    }
    let value = serde_json::to_vec(&change).map_err(|e| format!("cannot serialize: {e}"))?;
    Ok(Handled::Set(key, value))
}

/// Parse, write to Redis, and report whether to ack.
async fn native_effect(
    mut conn: ::redis::aio::MultiplexedConnection,
    prefix: &str,
    payload: &[u8],
) -> Result<(), String> {
    match native_handle(payload)? {
        Handled::Set(key, value) => ::redis::cmd("SET")
            .arg(format!("{prefix}{key}"))
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("redis SET {key:?}: {e}")),
        Handled::Delete(key) => ::redis::cmd("DEL")
            .arg(format!("{prefix}{key}"))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("redis DEL {key:?}: {e}")),
    }
}

/// Acks and failures of the native consumer, for the clock.
#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    failed: AtomicU64,
}

/// The benchmark's own Redis connection: checks and cleanup.
struct Redis {
    url: String,
    conn: ::redis::aio::MultiplexedConnection,
}

impl Redis {
    async fn connect(url: &str) -> Result<Self, BrokersBenchError> {
        let client = ::redis::Client::open(url).map_err(|e| service(REDIS, format!("url {url:?}"))(e.to_string()))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| service(REDIS, format!("cannot connect to {url}"))(e.to_string()))?;
        Ok(Self { url: url.to_string(), conn })
    }

    /// How many of the `n` keys `<prefix>product:p<i>` exist.
    async fn count(&self, prefix: &str, n: usize) -> Result<usize, BrokersBenchError> {
        let mut conn = self.conn.clone();
        let mut found = 0;
        for chunk in keys(prefix, n).chunks(KEYS_PER_COMMAND) {
            let exists: usize = ::redis::cmd("EXISTS")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(|e| service(REDIS, "EXISTS")(e.to_string()))?;
            found += exists;
        }
        Ok(found)
    }

    /// The stored value of message `i` against what the handler should store.
    async fn check_value(&self, prefix: &str, i: usize, payload: &[u8]) -> Result<bool, BrokersBenchError> {
        let mut conn = self.conn.clone();
        let stored: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(format!("{prefix}product:p{i}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| service(REDIS, "GET")(e.to_string()))?;
        let stored = stored.and_then(|s| serde_json::from_slice::<serde_json::Value>(&s).ok());
        Ok(stored.is_some() && stored == expected_value(payload))
    }

    /// Remove the `n` keys; failures are only logged.
    async fn remove(&self, prefix: &str, n: usize) {
        let mut conn = self.conn.clone();
        for chunk in keys(prefix, n).chunks(KEYS_PER_COMMAND) {
            if let Err(e) = ::redis::cmd("UNLINK").arg(chunk).query_async::<i64>(&mut conn).await {
                tracing::warn!(url = %self.url, %prefix, error = %e, "cannot remove the benchmark keys");
                return;
            }
        }
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}product:p{i}")).collect()
}

/// Check one side's work in Redis: every key present, and the values of the
/// first, a middle and the last message as the handler would store them.
async fn verify(
    redis: &Redis,
    broker: &'static str,
    side: &'static str,
    prefix: &str,
    payloads: &[Vec<u8>],
) -> Result<usize, BrokersBenchError> {
    let found = redis.count(prefix, payloads.len()).await?;
    if found != payloads.len() {
        return Err(BrokersBenchError::Incomplete {
            broker,
            side,
            message: format!("{found} of {} keys under {prefix:?} are in Redis", payloads.len()),
        });
    }
    for i in [0, payloads.len() / 2, payloads.len().saturating_sub(1)] {
        if let Some(payload) = payloads.get(i)
            && !redis.check_value(prefix, i, payload).await?
        {
            return Err(BrokersBenchError::Incomplete {
                broker,
                side,
                message: format!("key {prefix}product:p{i} does not hold the product change it should"),
            });
        }
    }
    Ok(found)
}

/// Wait until `progress` reports `n` done, or fail at the first failure it
/// reports or after a stall; returns the time it took.
async fn wait_for(
    broker: &'static str,
    side: &'static str,
    n: usize,
    mut progress: impl FnMut() -> (u64, u64),
) -> Result<Duration, BrokersBenchError> {
    let started = Instant::now();
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let (done, failed) = progress();
        if failed > 0 {
            return Err(BrokersBenchError::Incomplete { broker, side, message: format!("{failed} messages failed") });
        }
        if done >= n as u64 {
            return Ok(started.elapsed());
        }
        if done != last {
            (last, last_change) = (done, Instant::now());
        } else if last_change.elapsed() > STALL {
            return Err(BrokersBenchError::Incomplete {
                broker,
                side,
                message: format!("stalled at {done} of {n} messages for {} s", STALL.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn side(n: usize, elapsed: Duration, keys_found: usize) -> Side {
    Side { elapsed, rate: n as f64 / elapsed.as_secs_f64().max(1e-9), keys_found }
}

/// The host's config for one run: `source` (a `[sources.bench]` body), Redis
/// under `prefix`, and one route to the `cache-update` handler.
fn host_config(
    dir: &Path,
    source: &str,
    redis_url: &str,
    prefix: &str,
    plugin: &Path,
    concurrency: usize,
    reuse: Option<u32>,
) -> Result<switchyard::Config, BrokersBenchError> {
    let instances = reuse.map(|n| format!("instances = {{ reuse = {n} }}\n")).unwrap_or_default();
    let text = format!(
        "data_dir = \".\"\n\
         [sources.bench]\n{source}\n\
         [backends.cache]\ntype = \"redis\"\nurl = {redis_url:?}\nkey_prefix = {prefix:?}\ntimeout_ms = 10000\n\
         [tenants.shop.grants]\ncache_prefixes = [\"product:\"]\n\
         [tenants.shop.handlers.cache-update]\nwasm = {:?}\n\
         [[routes]]\nsource = \"bench\"\ntopic = \"*\"\ntenant = \"shop\"\nhandler = \"cache-update\"\nconcurrency = {concurrency}\n{instances}",
        plugin.display().to_string()
    );
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).map_err(|e| BrokersBenchError::Io(path.display().to_string(), e))?;
    Ok(switchyard::Config::load(&path)?)
}

/// Run the host until it has handled `n` messages, then stop it.
async fn run_host(config: &switchyard::Config, broker: &'static str, n: usize) -> Result<Duration, BrokersBenchError> {
    let host = switchyard::Host::build(config).await?;
    let stats = host.stats();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(host.run(shutdown.clone()));
    let elapsed = wait_for(broker, "switchyard", n, || {
        let s = stats.snapshot();
        (s.handled, s.dead_lettered + s.retried)
    })
    .await;
    shutdown.cancel();
    let _ = run.await;
    elapsed
}

fn temp_dir() -> Result<tempfile::TempDir, BrokersBenchError> {
    tempfile::tempdir().map_err(|e| BrokersBenchError::Io("temporary directory".into(), e))
}

// ---------------------------------------------------------------- JetStream

async fn jetstream_pair(
    url: &str,
    options: &BrokersOptions,
    plugin: &Path,
    tag: &str,
    redis: &Redis,
    payloads: &Arc<Vec<Vec<u8>>>,
) -> Result<BrokerReport, BrokersBenchError> {
    let client =
        async_nats::connect(url).await.map_err(|e| service(NATS, format!("cannot connect to {url}"))(e.to_string()))?;
    let js = jetstream::new(client);
    let n = payloads.len();
    let stream = |side: &str| format!("BENCH_BROKERS_{tag}_{side}").to_uppercase();
    let prefix = |side: &str| format!("bench-brokers:{tag}:jetstream:{side}:");

    // The host, fresh instances and then reused ones.
    let mut hosts = Vec::new();
    for (label, reuse) in [("switchyard", None), ("reused", Some(super::dispatch::REUSE))] {
        let (sy_stream, sy_prefix) = (stream(label), prefix(label));
        let result = async {
            preload_jetstream(&js, &sy_stream, payloads).await?;
            let dir = temp_dir()?;
            let source = format!(
                "type = \"jetstream\"\nurl = {url:?}\nstream = {sy_stream:?}\nsubjects = [\"{sy_stream}.>\"]\nconsumer = \"switchyard\""
            );
            let config = host_config(dir.path(), &source, &redis.url, &sy_prefix, plugin, options.concurrency, reuse)?;
            let elapsed = run_host(&config, NATS, n).await?;
            jetstream_drained(&js, &sy_stream, "switchyard", "switchyard").await?;
            let found = verify(redis, NATS, "switchyard", &sy_prefix, payloads).await?;
            Ok::<_, BrokersBenchError>(side(n, elapsed, found))
        }
        .await;
        for name in [sy_stream.clone(), format!("{sy_stream}-dead-letter")] {
            let _ = js.delete_stream(&name).await;
        }
        redis.remove(&sy_prefix, n).await;
        hosts.push(result?);
    }

    // The native consumer.
    let (nv_stream, nv_prefix) = (stream("native"), prefix("native"));
    let result = async {
        preload_jetstream(&js, &nv_stream, payloads).await?;
        let elapsed = native_jetstream(url, &nv_stream, &redis.url, &nv_prefix, n, options.concurrency).await?;
        jetstream_drained(&js, &nv_stream, "native", "native").await?;
        let found = verify(redis, NATS, "native", &nv_prefix, payloads).await?;
        Ok::<_, BrokersBenchError>(side(n, elapsed, found))
    }
    .await;
    let _ = js.delete_stream(&nv_stream).await;
    redis.remove(&nv_prefix, n).await;
    let native = result?;
    Ok(BrokerReport { broker: NATS, messages: n, switchyard: hosts[0], reused: hosts[1], native })
}

async fn preload_jetstream(
    js: &jetstream::Context,
    stream: &str,
    payloads: &[Vec<u8>],
) -> Result<(), BrokersBenchError> {
    js.create_stream(jetstream::stream::Config {
        name: stream.to_string(),
        subjects: vec![format!("{stream}.>")],
        ..Default::default()
    })
    .await
    .map_err(|e| service(NATS, format!("cannot create stream {stream:?}"))(e.to_string()))?;
    let subject = format!("{stream}.product.changed");
    for window in payloads.chunks(PRELOAD_WINDOW) {
        let mut acks = Vec::with_capacity(window.len());
        for payload in window {
            let ack = js
                .publish(subject.clone(), payload.clone().into())
                .await
                .map_err(|e| service(NATS, format!("cannot publish to {subject:?}"))(e.to_string()))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| service(NATS, format!("{subject:?} did not store a message"))(e.to_string()))?;
        }
    }
    Ok(())
}

/// Nothing pending or unacked on the consumer: every message was acked.
async fn jetstream_drained(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    side: &'static str,
) -> Result<(), BrokersBenchError> {
    let stream_handle =
        js.get_stream(stream).await.map_err(|e| service(NATS, format!("stream {stream:?}"))(e.to_string()))?;
    let mut consumer_handle: jetstream::consumer::PullConsumer = stream_handle
        .get_consumer(consumer)
        .await
        .map_err(|e| service(NATS, format!("consumer {consumer:?}"))(e.to_string()))?;
    // Acks are confirmed one by one on both sides; the info is read once more
    // after a short wait only in case the server is still applying the last.
    for attempt in 0..50 {
        let info = consumer_handle
            .info()
            .await
            .map_err(|e| service(NATS, format!("consumer {consumer:?} info"))(e.to_string()))?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return Ok(());
        }
        if attempt == 49 {
            return Err(BrokersBenchError::Incomplete {
                broker: NATS,
                side,
                message: format!(
                    "{} messages pending and {} unacked on the stream",
                    info.num_pending, info.num_ack_pending
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The hand-written JetStream consumer: a durable pull consumer configured as
/// the host's source configures it, one task per message bounded by a
/// semaphore, a shared multiplexed Redis connection, and a confirmed ack
/// after the SET.
async fn native_jetstream(
    url: &str,
    stream: &str,
    redis_url: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> Result<Duration, BrokersBenchError> {
    let redis = ::redis::Client::open(redis_url)
        .map_err(|e| e.to_string())
        .map_err(service(REDIS, "url"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| service(REDIS, "cannot connect")(e.to_string()))?;
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let consumer = {
        let (url, stream, prefix, counters, stop) =
            (url.to_string(), stream.to_string(), Arc::<str>::from(prefix), counters.clone(), stop.clone());
        tokio::spawn(async move {
            let client = async_nats::connect(&url).await.map_err(|e| format!("cannot connect: {e}"))?;
            let js = jetstream::new(client.clone());
            let max_ack_pending = concurrency.saturating_mul(2).max(1);
            js.get_stream(&stream)
                .await
                .map_err(|e| format!("stream {stream:?}: {e}"))?
                .get_or_create_consumer(
                    "native",
                    jetstream::consumer::pull::Config {
                        durable_name: Some("native".into()),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(30),
                        max_ack_pending: max_ack_pending as i64,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| format!("cannot create the consumer: {e}"))?;
            let mut puller = Puller::start(&client, &stream, "native", max_ack_pending as i64, Arc::default()).await?;
            let in_flight = Arc::new(Semaphore::new(concurrency));
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = puller.next() => next,
                };
                let m = match next {
                    Pulled::Message(m) => jetstream::Message { message: m, context: js.clone() },
                    Pulled::Retry(e) => {
                        tracing::warn!(error = %e, "native JetStream consumer: pull interrupted");
                        continue;
                    }
                    Pulled::Reset(e) => return Err(e),
                };
                let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                let (conn, prefix, counters) = (redis.clone(), prefix.clone(), counters.clone());
                tokio::spawn(async move {
                    let (m, acker) = m.split();
                    match native_effect(conn, &prefix, &m.payload).await {
                        Ok(()) => match acker.double_ack().await {
                            Ok(()) => counters.acked.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                tracing::warn!(error = %e, "native JetStream consumer: ack failed");
                                counters.failed.fetch_add(1, Ordering::Relaxed)
                            }
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "native JetStream consumer: message failed");
                            let _ = acker.ack_with(jetstream::AckKind::Term).await;
                            counters.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    drop(permit);
                });
            }
            Ok::<(), String>(())
        })
    };
    let elapsed = wait_for(NATS, "native", n, || {
        (counters.acked.load(Ordering::Relaxed), counters.failed.load(Ordering::Relaxed))
    })
    .await;
    stop.cancel();
    match consumer.await {
        Ok(Err(e)) => return Err(service(NATS, "native consumer")(e)),
        Err(e) => return Err(service(NATS, "native consumer")(e.to_string())),
        Ok(Ok(())) => {}
    }
    elapsed
}

// ---------------------------------------------------------------- RabbitMQ

async fn amqp_pair(
    url: &str,
    options: &BrokersOptions,
    plugin: &Path,
    tag: &str,
    redis: &Redis,
    payloads: &Arc<Vec<Vec<u8>>>,
) -> Result<BrokerReport, BrokersBenchError> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| service(AMQP, format!("cannot connect to {}", redact(url)))(e.to_string()))?;
    let channel =
        connection.create_channel().await.map_err(|e| service(AMQP, "cannot open a channel")(e.to_string()))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| service(AMQP, "cannot enable publisher confirms")(e.to_string()))?;
    let n = payloads.len();
    let queue = |side: &str| format!("bench-brokers.{tag}.{side}");
    let prefix = |side: &str| format!("bench-brokers:{tag}:amqp:{side}:");
    let delete = async |queue: &str| {
        let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
    };

    // The host, fresh instances and then reused ones.
    let mut hosts = Vec::new();
    for (label, reuse) in [("switchyard", None), ("reused", Some(super::dispatch::REUSE))] {
        let (sy_queue, sy_prefix) = (queue(label), prefix(label));
        let result = async {
            preload_amqp(&channel, &sy_queue, payloads).await?;
            let dir = temp_dir()?;
            let source = format!("type = \"amqp\"\nurl = {url:?}\nqueues = [{sy_queue:?}]");
            let config = host_config(dir.path(), &source, &redis.url, &sy_prefix, plugin, options.concurrency, reuse)?;
            let elapsed = run_host(&config, AMQP, n).await?;
            amqp_drained(&channel, &sy_queue, "switchyard").await?;
            let found = verify(redis, AMQP, "switchyard", &sy_prefix, payloads).await?;
            Ok::<_, BrokersBenchError>(side(n, elapsed, found))
        }
        .await;
        delete(&sy_queue).await;
        delete(&AmqpConfig::dead_letter_queue(&sy_queue)).await;
        redis.remove(&sy_prefix, n).await;
        hosts.push(result?);
    }

    // The native consumer.
    let (nv_queue, nv_prefix) = (queue("native"), prefix("native"));
    let result = async {
        preload_amqp(&channel, &nv_queue, payloads).await?;
        let elapsed = native_amqp(url, &nv_queue, &redis.url, &nv_prefix, n, options.concurrency).await?;
        amqp_drained(&channel, &nv_queue, "native").await?;
        let found = verify(redis, AMQP, "native", &nv_prefix, payloads).await?;
        Ok::<_, BrokersBenchError>(side(n, elapsed, found))
    }
    .await;
    delete(&nv_queue).await;
    redis.remove(&nv_prefix, n).await;
    let native = result?;
    let _ = connection.close(200, "benchmark done".into()).await;
    Ok(BrokerReport { broker: AMQP, messages: n, switchyard: hosts[0], reused: hosts[1], native })
}

/// A fresh durable queue, declared as the `amqp` source declares its queues,
/// holding `payloads` as persistent messages confirmed by the broker.
async fn preload_amqp(channel: &lapin::Channel, queue: &str, payloads: &[Vec<u8>]) -> Result<(), BrokersBenchError> {
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(AMQP_DEAD_LETTER_EXCHANGE.into()));
    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.into()));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .map_err(|e| service(AMQP, format!("cannot declare queue {queue:?}"))(e.to_string()))?;
    let properties = BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
    for window in payloads.chunks(PRELOAD_WINDOW) {
        let mut confirms = Vec::with_capacity(window.len());
        for payload in window {
            let confirm = channel
                .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), payload, properties.clone())
                .await
                .map_err(|e| service(AMQP, format!("cannot publish to {queue:?}"))(e.to_string()))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match confirm.await {
                Ok(Confirmation::Ack(_)) => {}
                Ok(other) => return Err(service(AMQP, format!("publish to {queue:?}"))(format!("refused: {other:?}"))),
                Err(e) => return Err(service(AMQP, format!("publish to {queue:?}"))(e.to_string())),
            }
        }
    }
    Ok(())
}

/// Nothing left in the queue once its consumer is gone: every message was
/// acked (an unacked one would be back in the queue).
async fn amqp_drained(channel: &lapin::Channel, queue: &str, side: &'static str) -> Result<(), BrokersBenchError> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    for attempt in 0..50 {
        let q = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .map_err(|e| service(AMQP, format!("queue {queue:?}"))(e.to_string()))?;
        if q.message_count() == 0 && q.consumer_count() == 0 {
            return Ok(());
        }
        if attempt == 49 {
            return Err(BrokersBenchError::Incomplete {
                broker: AMQP,
                side,
                message: format!(
                    "{} messages left in the queue, {} consumers still on it",
                    q.message_count(),
                    q.consumer_count()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The hand-written RabbitMQ consumer: manual acks with the prefetch the
/// host's source uses, one task per delivery bounded by a semaphore, a shared
/// multiplexed Redis connection, and `basic.ack` after the SET.
async fn native_amqp(
    url: &str,
    queue: &str,
    redis_url: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> Result<Duration, BrokersBenchError> {
    let redis = ::redis::Client::open(redis_url)
        .map_err(|e| e.to_string())
        .map_err(service(REDIS, "url"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| service(REDIS, "cannot connect")(e.to_string()))?;
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let consumer = {
        let (url, queue, prefix, counters, stop) =
            (url.to_string(), queue.to_string(), Arc::<str>::from(prefix), counters.clone(), stop.clone());
        tokio::spawn(async move {
            let connection = Connection::connect(&url, ConnectionProperties::default())
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            let channel = connection.create_channel().await.map_err(|e| format!("cannot open a channel: {e}"))?;
            let prefetch = concurrency.saturating_mul(2).clamp(1, u16::MAX as usize) as u16;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| format!("cannot set the prefetch: {e}"))?;
            let mut deliveries = channel
                .basic_consume(
                    queue.as_str().into(),
                    "bench-native".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("cannot consume {queue:?}: {e}"))?;
            let in_flight = Arc::new(Semaphore::new(concurrency));
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = deliveries.next() => next,
                };
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(format!("the connection failed: {e}")),
                    None => break,
                };
                let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                let (conn, prefix, counters) = (redis.clone(), prefix.clone(), counters.clone());
                tokio::spawn(async move {
                    match native_effect(conn, &prefix, &delivery.data).await {
                        Ok(()) => match delivery.acker.ack(BasicAckOptions::default()).await {
                            Ok(_) => counters.acked.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                tracing::warn!(error = %e, "native RabbitMQ consumer: ack failed");
                                counters.failed.fetch_add(1, Ordering::Relaxed)
                            }
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "native RabbitMQ consumer: message failed");
                            let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
                            counters.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    drop(permit);
                });
            }
            // Let the last acks reach the broker before the connection goes.
            let _ = channel.close(200, "done".into()).await;
            let _ = connection.close(200, "done".into()).await;
            Ok::<(), String>(())
        })
    };
    let elapsed = wait_for(AMQP, "native", n, || {
        (counters.acked.load(Ordering::Relaxed), counters.failed.load(Ordering::Relaxed))
    })
    .await;
    stop.cancel();
    match consumer.await {
        Ok(Err(e)) => return Err(service(AMQP, "native consumer")(e)),
        Err(e) => return Err(service(AMQP, "native consumer")(e.to_string())),
        Ok(Ok(())) => {}
    }
    elapsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_product_changes_of_the_size_asked() {
        let payloads = payloads(3, 1024);
        for (i, p) in payloads.iter().enumerate() {
            assert!((1024..1100).contains(&p.len()), "payload {i} is {} bytes", p.len());
            match native_handle(p).unwrap() {
                Handled::Set(key, value) => {
                    assert_eq!(key, format!("product:p{i}"));
                    let stored: serde_json::Value = serde_json::from_slice(&value).unwrap();
                    assert_eq!(Some(stored), expected_value(p));
                }
                Handled::Delete(_) => panic!("nothing is deleted"),
            }
        }
    }

    #[test]
    fn the_native_handler_refuses_what_cache_update_refuses() {
        assert!(native_handle(b"[1]").is_err());
        assert!(native_handle(br#"{"id": ""}"#).is_err());
        assert!(native_handle(br#"{"id": "p", "deleted": 1}"#).is_err());
        assert!(
            matches!(native_handle(br#"{"id": "p", "deleted": true}"#), Ok(Handled::Delete(k)) if k == "product:p")
        );
    }
}
